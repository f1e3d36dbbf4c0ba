"""TensorRT engines from an export folder: targets, profiles from the manifest, builder, engine manifest."""
