"""Which model an export came from: what the manifest records of it (``ModelEntry``), and the check that a model
loaded later (by ``parity``, ``calibrate``, ``eval``) is that model.

The identity is what defines the model: its architecture, its sizes (the manifest's ``geometry``) and its weights
(``luvc.models.weights.weights_sha256``), not its serialized config, which ``transformers`` releases write
differently; so an export made under one supported release is checked under another. Exports made before weights
were hashed are matched by their config hash, as then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from luvc.errors import critical
from luvc.export.manifest import ExportManifest, geometry_entry
from luvc.export.manifest_entries import ModelEntry

if TYPE_CHECKING:
    from luvc.models.base import VLMAdapter


def config_hash(adapter: VLMAdapter, with_dtype: bool = False) -> str:
    """sha256 of the model config (the manifest's ``model.config_sha256``). The dtype the weights were loaded in is
    left out (an fp16 export and an fp32 parity run use the same model); ``with_dtype`` gives the hash exports of
    earlier versions recorded, which kept it."""
    config = adapter.model.config.to_dict()
    text = json.dumps(config if with_dtype else _without_dtypes(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_dtypes(value):
    if isinstance(value, dict):
        return {key: _without_dtypes(item) for key, item in value.items() if key not in ("dtype", "torch_dtype")}
    return value


def source_folder(adapter: VLMAdapter) -> Path | None:
    """The checkpoint folder an adapter was loaded from (``None``: a built-in or in-memory model)."""
    folder = Path(adapter.name)
    return folder if folder.is_dir() else None


def adapter_weights_sha256(adapter: VLMAdapter) -> str:
    """The hash of an adapter's weights: its checkpoint folder's files, or (a built-in or in-memory model) its
    parameters."""
    from luvc.models.weights import weights_sha256

    return weights_sha256(adapter.model, source_folder(adapter))


def model_entry(adapter: VLMAdapter) -> ModelEntry:
    """What an export records of the model it is made from."""
    return ModelEntry(adapter.name, adapter.architecture, config_hash(adapter), adapter_weights_sha256(adapter))


class ModelEntryInBackground:
    """``model_entry(adapter)``, its checkpoint files hashed in a daemon thread beside tracing (file reads and hashing
    release the GIL; nothing there touches PyTorch, whose tracing patches global state); ``result()`` waits for it.
    A built-in or in-memory model's parameters are hashed by ``result()`` itself. An export that stops early leaves
    the thread behind without waiting."""

    def __init__(self, adapter: VLMAdapter) -> None:
        from luvc.models.weights import files_sha256

        self.adapter = adapter
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = None
        folder = source_folder(adapter)
        if folder is not None:

            def run() -> None:
                try:
                    self._digest = files_sha256(folder)
                except BaseException as error:  # raised again by result(), in the caller's thread
                    self._error = error

            self._thread = threading.Thread(target=run, name="luvc-weights-hash", daemon=True)
            self._thread.start()

    def result(self) -> ModelEntry:
        from luvc.models.weights import parameters_sha256

        if self._thread is not None:
            self._thread.join()
            if self._error is not None:
                raise self._error
        adapter = self.adapter
        weights = self._digest or parameters_sha256(adapter.model)
        return ModelEntry(adapter.name, adapter.architecture, config_hash(adapter), weights)


def source_mismatch(manifest: ExportManifest, adapter: VLMAdapter) -> str | None:
    """Why ``adapter`` is not the model ``manifest`` was exported from, in a few words; ``None`` when it is."""
    recorded = manifest.model
    if adapter.architecture != recorded.architecture:
        return f"it is a {adapter.architecture}, the export a {recorded.architecture}"
    geometry = geometry_entry(adapter)
    if geometry != manifest.geometry:
        sizes = [
            f"{field.name} {getattr(geometry, field.name)}, the export's {getattr(manifest.geometry, field.name)}"
            for field in dataclasses.fields(geometry)
            if getattr(geometry, field.name) != getattr(manifest.geometry, field.name)
        ]
        return "its sizes differ: " + "; ".join(sizes)
    if recorded.weights_sha256 is None:  # an export made before weights were hashed
        if recorded.config_sha256 in {config_hash(adapter), config_hash(adapter, with_dtype=True)}:
            return None
        return "its config differs (this export predates weight hashes: re-export it to compare weights instead)"
    if adapter_weights_sha256(adapter) != recorded.weights_sha256:
        return "its weights differ"
    return None


def same_source(first: ExportManifest, second: ExportManifest) -> bool:
    """Whether two exports were made from the same model (by weights where both recorded them)."""
    a, b = first.model, second.model
    if a.architecture != b.architecture or first.geometry != second.geometry:
        return False
    if a.weights_sha256 is not None and b.weights_sha256 is not None:
        return a.weights_sha256 == b.weights_sha256
    return a.config_sha256 == b.config_sha256


def export_source_model(manifest: ExportManifest, model: str | None = None) -> VLMAdapter:
    """The model an export came from, loaded in float32: the manifest's checkpoint, or ``model`` (a checkpoint folder,
    when it has moved since), which must be that model (``source_mismatch``)."""
    from luvc.models import load_model

    source = model or manifest.model.id
    adapter = load_model(source)
    mismatch = source_mismatch(manifest, adapter)
    if mismatch is not None:
        critical(
            f"The model at {source!r} is not the one this export was made from ({manifest.model.id!r}): {mismatch}; "
            "pass --model with the checkpoint folder used for the export."
        )
    return adapter
