"""What the runtime loads: no model adapter and no ``transformers`` model code, so that ``luvc-export run`` and
``serve`` start without them (a device needs the tokenizer and image processor alone)."""

import json
import subprocess
import sys

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
