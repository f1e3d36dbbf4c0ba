"""Triton Inference Server: the model repository ``luvc-export triton`` writes, and ``TritonModel``, what its
Python-backend model runs inside the server.

The repository holds one model: ``config.pbtxt`` (a decoupled Python-backend model, so one request can stream
many responses; dynamic batching; one instance group) and ``1/model.py`` (``luvc/serve/triton_model.py``, which
imports this module). Each model instance opens its own ``Pipeline`` on its device, so instances scale like any
Triton model: ``count`` per GPU, several GPUs, several servers behind a load balancer (README, "Serving").

Inputs (per request, batch dimension first): ``prompt`` and ``image`` (the encoded image file) as BYTES, and the
optional ``max_tokens`` INT32, ``temperature`` and ``top_p`` FP32, ``seed`` INT64, ``stop`` BYTES (one or more
strings) and ``stream`` BOOL. Outputs: ``text`` (a piece when streaming, else the whole answer) and
``finish_reason`` (empty until the last response).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np

from luvc.errors import LuvcError, critical
from luvc.export.manifest import ExportManifest
from luvc.images import decode_image
from luvc.serve.batching import Delta, Event, Failed, Finished, GenerationParams, Job, JobQueue, run_batch
from luvc.staging import output_claim, staged_folder

MODEL_FILE = Path(__file__).with_name("triton_model.py")
INPUTS = (  # name, Triton type, dims, optional
    ("prompt", "TYPE_STRING", "[ 1 ]", False),
    ("image", "TYPE_STRING", "[ 1 ]", False),
    ("max_tokens", "TYPE_INT32", "[ 1 ]", True),
    ("temperature", "TYPE_FP32", "[ 1 ]", True),
    ("top_p", "TYPE_FP32", "[ 1 ]", True),
    ("seed", "TYPE_INT64", "[ 1 ]", True),
    ("stop", "TYPE_STRING", "[ -1 ]", True),
    ("stream", "TYPE_BOOL", "[ 1 ]", True),
)
OUTPUTS = (("text", "TYPE_STRING", "[ 1 ]"), ("finish_reason", "TYPE_STRING", "[ 1 ]"))


@dataclasses.dataclass(frozen=True)
class RepositoryOptions:
    """How ``luvc-export triton`` lays out the model: ``gpus`` empty means CPU instances (ONNX Runtime on the CPU);
    ``copy`` puts the export (and engines) inside the repository instead of referencing them by absolute path."""

    model_name: str = "luvc"
    backend: str = "ort"
    engines_dir: Path | None = None
    instances: int = 1
    gpus: tuple[int, ...] = ()
    copy: bool = False
    max_batch: int | None = None
    max_new_tokens: int = 64
    max_queue_delay_us: int = 2000


def write_repository(export_dir: Path, out: Path, options: RepositoryOptions, overwrite: bool = False) -> Path:
    """Write the model repository for ``export_dir`` to ``out`` (staged: complete or absent). Returns ``out``."""
    export_dir, out = Path(export_dir), Path(out)
    manifest = ExportManifest.load(export_dir)
    limit = manifest.profile.max_batch
    if options.max_batch is not None and not 1 <= options.max_batch <= limit:
        critical(f"--max-batch {options.max_batch} must be between 1 and the export profile's {limit}.")
    manifest.profile.check_max_new_tokens(options.max_new_tokens, f"--max-new-tokens {options.max_new_tokens}")
    if options.instances < 1:
        critical(f"--instances {options.instances}: run at least 1 model instance.")
    if options.backend == "trt":
        if options.engines_dir is None:
            critical("--backend trt needs the engine folder built from this export: pass --engines ENGINE_DIR.")
        if not options.gpus:
            critical("TensorRT engines run on GPUs; pass --gpus (e.g. --gpus 0) or use --backend ort.")
    with output_claim(out, overwrite), staged_folder(out, overwrite) as staging:
        version = staging / options.model_name / "1"
        version.mkdir(parents=True)
        shutil.copyfile(MODEL_FILE, version / "model.py")
        export_ref, engines_ref = export_dir.resolve(), options.engines_dir and Path(options.engines_dir).resolve()
        if options.copy:
            shutil.copytree(export_dir, version / "export")
            export_ref = Path("export")
            if engines_ref is not None:
                shutil.copytree(engines_ref, version / "engines")
                engines_ref = Path("engines")
        config = model_config(options, export_ref, engines_ref, options.max_batch or limit)
        (staging / options.model_name / "config.pbtxt").write_text(config)
    return out


def model_config(options: RepositoryOptions, export_ref: Path, engines_ref: Path | None, max_batch: int) -> str:
    """The ``config.pbtxt`` text: I/O, decoupled transactions, dynamic batching, instances, and the parameters
    ``TritonModel`` reads (paths relative to the version folder when copied)."""
    inputs = ",\n".join(
        f'  {{ name: "{name}" data_type: {kind} dims: {dims}{" optional: true" if optional else ""} }}'
        for name, kind, dims, optional in INPUTS
    )
    outputs = ",\n".join(f'  {{ name: "{name}" data_type: {kind} dims: {dims} }}' for name, kind, dims in OUTPUTS)
    if options.gpus:
        group = f"count: {options.instances} kind: KIND_GPU gpus: [ {', '.join(map(str, options.gpus))} ]"
    else:
        group = f"count: {options.instances} kind: KIND_CPU"
    parameters = {
        "export_dir": str(export_ref),
        "engines_dir": str(engines_ref or ""),
        "backend": options.backend,
        "max_new_tokens": str(options.max_new_tokens),
        # where luvc-export is installed for the Python that wrote this; the backend's Python adds them when it
        # cannot import luvc itself (edit them when the server runs another environment)
        "python_paths": ":".join(python_paths()),
    }
    parameter_text = ",\n".join(
        f'  {{ key: "{key}" value: {{ string_value: {json.dumps(value)} }} }}' for key, value in parameters.items()
    )
    return (
        f'name: "{options.model_name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch}\n"
        "model_transaction_policy { decoupled: true }\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"instance_group [ {{ {group} }} ]\n"
        f"parameters [\n{parameter_text}\n]\n"
    )


def python_paths() -> list[str]:
    """The site folders this Python imports luvc-export and its dependencies from."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding luvc/ (a checkout or site-packages)
    return list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], package_root]))


def params_from_inputs(inputs: dict[str, np.ndarray], defaults: GenerationParams) -> tuple[GenerationParams, bool]:
    """Generation settings and the stream flag of one request's optional inputs (absent: ``defaults``)."""

    def scalar(name: str):
        return inputs[name].reshape(-1)[0].item() if name in inputs else None

    stop = [_text(value) for value in inputs["stop"].reshape(-1)] if "stop" in inputs else None
    params = defaults.with_overrides(scalar("max_tokens"), scalar("temperature"), scalar("top_p"), scalar("seed"), stop)
    return params, bool(scalar("stream"))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonModel:
    """What one Triton model instance runs: a ``Pipeline`` on the instance's device and the batching loop of
    ``luvc.serve.batching`` over the requests Triton hands to ``execute``."""

    def __init__(self, args: dict, parameters: dict[str, str]) -> None:
        from luvc.runtime.pipeline import Pipeline

        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        export_dir = version_dir / parameters["export_dir"]  # an absolute path stays as it is
        engines = parameters.get("engines_dir") or None
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        self.pipeline = Pipeline(
            export_dir,
            parameters.get("backend", "ort"),
            version_dir / engines if engines else None,
            device=device,
        ).load()
        self.defaults = GenerationParams(int(parameters.get("max_new_tokens", "64")))
        self.max_batch = json.loads(args["model_config"])["max_batch_size"] or 1

    def execute(self, requests: list) -> None:
        """Prepare every request (a bad one gets its error response at once), then run the batches; responses
        go through each request's sender, ending with the final flag."""
        import triton_python_backend_utils as pb_utils

        queue = JobQueue(max(len(requests), 1))
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = {
                    name: tensor.as_numpy()
                    for name, *_ in INPUTS
                    if (tensor := pb_utils.get_input_tensor_by_name(request, name)) is not None
                }
                params, stream = params_from_inputs(inputs, self.defaults)
                self.pipeline.check_max_new_tokens(params.max_tokens)
                image = decode_image(bytes(inputs["image"].reshape(-1)[0]), "the image input")
                prepared = self.pipeline.prepare([image], [_text(inputs["prompt"].reshape(-1)[0])])
            except LuvcError as error:
                _send_error(pb_utils, sender, str(error))
                continue
            queue.put(Job(prepared, params, _responder(pb_utils, sender, stream)))
        while jobs := queue.take(self.max_batch, timeout=0):
            run_batch(self.pipeline, jobs)

    def finalize(self) -> None:
        self.pipeline = None


def _responder(pb_utils, sender, stream: bool):
    """The event callback of one request: text pieces as responses when streaming, else one response at the end."""

    def respond(event: Event) -> None:
        if isinstance(event, Delta) and stream:
            sender.send(_response(pb_utils, event.text, ""))
        elif isinstance(event, Finished):
            sender.send(
                _response(pb_utils, "" if stream else event.text, event.finish_reason),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
        elif isinstance(event, Failed):
            _send_error(pb_utils, sender, event.message)

    return respond


def _response(pb_utils, text: str, finish_reason: str):
    tensors = [
        pb_utils.Tensor("text", np.array([[text.encode("utf-8")]], dtype=np.object_)),  # (batch 1, 1)
        pb_utils.Tensor("finish_reason", np.array([[finish_reason.encode("utf-8")]], dtype=np.object_)),
    ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _send_error(pb_utils, sender, message: str) -> None:
    sender.send(
        pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    )
