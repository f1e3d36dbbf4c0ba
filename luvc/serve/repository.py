"""The Triton Inference Server model repository ``luvc-export triton`` writes for an export.

The repository holds one model: ``config.pbtxt`` (a decoupled Python-backend model, so one request can stream
many responses; dynamic batching; one instance group) and ``1/model.py`` (``luvc/serve/triton_model.py``, which
hands the work to ``luvc.serve.triton.TritonModel``), and ``luvc-repository.json`` at its root, which marks the
folder as ours (``--overwrite`` replaces nothing else; Triton reads only the model folders).

Inputs (per request, batch dimension first): ``prompt`` as BYTES, and the optional ``image`` (the encoded image
file; without it a text-only request) and ``system`` (a system message before the prompt) as BYTES, ``max_tokens``
INT32, ``temperature``, ``top_p``, ``presence_penalty`` and ``frequency_penalty`` FP32, ``seed`` INT64, ``stop`` BYTES
(one or more strings) and ``stream`` BOOL.
Outputs: ``text`` (a piece when streaming, else the whole answer) and
``finish_reason`` (empty until the last response).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sysconfig
from pathlib import Path

from luvc.cuda_graphs import DEFAULT_CUDA_GRAPHS, replays
from luvc.engines.manifest import EngineManifest
from luvc.errors import critical
from luvc.export.manifest import ExportManifest
from luvc.runtime import DEFAULT_FIT
from luvc.runtime.fit import check_policy
from luvc.staging import OutputKind, output_claim, staged_folder

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
REPOSITORY_MARKER = "luvc-repository.json"
REPOSITORY_FORMAT = "luvc-export/triton-repository"
REPOSITORY_OUTPUT = OutputKind("a Triton model repository", REPOSITORY_MARKER, REPOSITORY_FORMAT)
MODEL_FILE = Path(__file__).with_name("triton_model.py")
INPUTS = (  # name, Triton type, dims, optional
    ("prompt", "TYPE_STRING", "[ 1 ]", False),
    ("image", "TYPE_STRING", "[ 1 ]", True),
    ("system", "TYPE_STRING", "[ 1 ]", True),
    ("max_tokens", "TYPE_INT32", "[ 1 ]", True),
    ("temperature", "TYPE_FP32", "[ 1 ]", True),
    ("top_p", "TYPE_FP32", "[ 1 ]", True),
    ("seed", "TYPE_INT64", "[ 1 ]", True),
    ("presence_penalty", "TYPE_FP32", "[ 1 ]", True),
    ("frequency_penalty", "TYPE_FP32", "[ 1 ]", True),
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
    fit: str = DEFAULT_FIT
    cuda_graphs: str = DEFAULT_CUDA_GRAPHS

    def __post_init__(self) -> None:
        if not MODEL_NAME.fullmatch(self.model_name):
            critical(
                f"--model-name {self.model_name!r} is not a Triton model name: use letters, digits, '_', '-' and '.', "
                "starting with a letter or digit, at most 128 characters (it becomes a folder and a URL part)."
            )
        check_policy(self.fit)
        # refuses a value that is none of CUDA_GRAPH_CHOICES, and ``on`` for CPU instances (as run, serve and eval do)
        replays(self.cuda_graphs, "cuda" if self.gpus else "cpu")
        if self.instances < 1:
            critical(f"--instances {self.instances}: run at least 1 model instance.")
        if any(gpu < 0 for gpu in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            critical(f"--gpus {','.join(map(str, self.gpus))}: give distinct GPU ids >= 0, e.g. --gpus 0,1.")
        if self.backend == "trt":
            if self.engines_dir is None:
                critical("--backend trt needs the engine folder built from this export: pass --engines ENGINE_DIR.")
            if not self.gpus:
                critical("TensorRT engines run on GPUs; pass --gpus (e.g. --gpus 0) or use --backend ort.")
        elif self.engines_dir is not None:
            critical("--engines are TensorRT engines; pass --backend trt with them (or drop --engines).")
        if self.backend == "openvino" and self.gpus:
            critical("--backend openvino runs on the CPU; drop --gpus, or use --backend ort/trt for GPU instances.")


def write_repository(export_dir: Path, out: Path, options: RepositoryOptions, overwrite: bool = False) -> Path:
    """Write the model repository for ``export_dir`` to ``out`` (staged: complete or absent). Returns ``out``."""
    export_dir, out = Path(export_dir), Path(out)
    manifest = ExportManifest.load(export_dir)
    limit = manifest.profile.max_batch
    if options.max_batch is not None and not 1 <= options.max_batch <= limit:
        critical(f"--max-batch {options.max_batch} must be between 1 and the export profile's {limit}.")
    manifest.profile.check_max_new_tokens(options.max_new_tokens, f"--max-new-tokens {options.max_new_tokens}")
    if options.engines_dir is not None:  # every engine present, intact and built from this export
        EngineManifest.load(options.engines_dir).check_files(options.engines_dir, manifest)
    inputs = (export_dir, options.engines_dir)
    with (
        output_claim(out, overwrite, REPOSITORY_OUTPUT, inputs),
        staged_folder(out, overwrite, REPOSITORY_OUTPUT, inputs) as staging,
    ):
        (staging / REPOSITORY_MARKER).write_text(
            json.dumps({"format": REPOSITORY_FORMAT, "model": options.model_name}, indent=2) + "\n"
        )
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
        "fit": options.fit,
        "cuda_graphs": options.cuda_graphs,
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
