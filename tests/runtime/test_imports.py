"""What the runtime loads: no model adapter and no ``transformers`` model code, so that ``luvc-export run`` and
``serve`` start without them (a device needs the tokenizer and the export's image rules alone)."""

import ast
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

# a family's modeling module (transformers.models.qwen2_vl.modeling_qwen2_vl); auto.modeling_auto is the registry
MODEL_CODE = (
    "[m for m in sys.modules if m.startswith('luvc.models')"
    " or (m.startswith('transformers.models.') and '.modeling_' in m and '.auto.' not in m)]"
)


def _modules_after(code: str) -> dict:
    script = f"import json, sys\n{code}\nprint(json.dumps({{'model_code': {MODEL_CODE}, 'all': list(sys.modules)}}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_runtime_loads_neither_transformers_nor_the_model_adapters():
    loaded = _modules_after("import luvc.runtime.pipeline")
    assert loaded["model_code"] == []
    assert not [name for name in loaded["all"] if name.split(".")[0] == "transformers"]


def test_a_generation_loads_no_model_code(exports):
    folder = exports("tiny-qwen2-vl")
    loaded = _modules_after(
        "from luvc.images import synthetic_image\n"
        "from luvc.runtime.pipeline import GenerationOptions, Pipeline\n"
        f"Pipeline({str(folder)!r}).generate(synthetic_image(224, 224), 'hi', GenerationOptions(2))"
    )
    assert loaded["model_code"] == []
    assert "transformers.models.qwen2_vl.modeling_qwen2_vl" not in loaded["all"]
    # nor the image processors' modules, which load transformers' model code (about 2 s of a start): the export's
    # recorded rules fit the image and make its pixels
    assert "transformers.image_processing_utils" not in loaded["all"]
    assert "transformers.modeling_utils" not in loaded["all"]


# what run, serve and the Triton model import, eagerly or in the functions a generation calls
DEVICE_MODULES = (
    "luvc.cli.run luvc.cli.serve luvc.cli.triton luvc.runtime.pipeline luvc.runtime.ort_session "
    "luvc.runtime.trt_session luvc.serve.app luvc.serve.triton_model luvc.engines.manifest "
    "luvc.engines.plugin_library luvc.engines.trt_module luvc.engines.cuda_device"
).split()
FLOOR_NAMES = Path(__file__).with_name("torch_floor_names.txt")


def _torch_names(source: str) -> set[str]:
    """Every ``torch.X`` and ``torch.cuda.X`` a module's source names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
            names.add(f"torch.{node.attr}")
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "torch.cuda":
            names.add(f"torch.cuda.{node.attr}")
    return names


def test_run_and_serve_name_only_torch_apis_the_floor_has():
    """The base install's PyTorch floor (pyproject) holds every torch API the device's modules name, checked against
    the names of that release (tests/runtime/torch_floor_names.txt); a real run on it is test_device_floor.py."""
    floor = next(
        requirement.specifier
        for requirement in map(Requirement, importlib.metadata.requires("luvc-export"))
        if requirement.name == "torch" and requirement.marker is None
    )
    lines = FLOOR_NAMES.read_text().splitlines()
    listed_version = re.search(r"PyTorch (\d+\.\d+)", lines[0]).group(1)
    assert str(floor) == f">={listed_version}", "regenerate torch_floor_names.txt with the new floor"
    available = {line for line in lines if not line.startswith("#")}
    loaded = _modules_after(f"import {', '.join(DEVICE_MODULES)}")["all"]
    named = {
        (module, name)
        for module in loaded
        if module.split(".")[0] == "luvc"
        for name in _torch_names(Path(importlib.util.find_spec(module).origin).read_text())
    }
    assert {"torch.from_numpy", "torch.cuda.Stream"} <= {name for _, name in named}  # the scan sees the runtime
    assert sorted((module, name) for module, name in named if name not in available) == []


def test_build_plan_and_inspect_import_neither_torch_nor_transformers():
    loaded = _modules_after(
        "import luvc.cli.build, luvc.cli.plan, luvc.cli.inspect, luvc.engines.memory, luvc.export.lint\n"
        "from luvc.engines.builder import build_engines\n"
        "from luvc.engines.cuda_device import device_capability\n"
        "device_capability()"
    )["all"]
    assert not {name.split(".")[0] for name in loaded} & {"torch", "transformers"}


def test_building_planning_and_inspecting_an_export_load_no_torch(exports, tmp_path):
    folder = str(exports("tiny-qwen2-vl"))
    loaded = _modules_after(
        "from luvc.cli.main import main\n"
        f"assert main(['inspect', {folder!r}]) == 0\n"
        f"assert main(['plan', {folder!r}, '--target', 'orin-8gb']) == 0\n"
        f"assert main(['build', {folder!r}, '--target', 'ada', '--out', {str(tmp_path / 'engines')!r}]) == 0"
    )["all"]
    assert (tmp_path / "engines" / "manifest.json").is_file()
    assert not {name.split(".")[0] for name in loaded} & {"torch", "transformers"}
