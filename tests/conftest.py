import copy

import pytest

from luvc.export.exporter import export_model
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model

FAMILIES = list(TINY_MODELS)
QWEN_BUCKETS = ((224, 224), (168, 252))  # two buckets: the second is exercised by tests/export/test_buckets.py


@pytest.fixture(scope="session")
def image():
    return synthetic_image()


@pytest.fixture(scope="session")
def _pristine():
    return {name: load_model(name) for name in FAMILIES}


@pytest.fixture(params=FAMILIES)
def adapter(request, _pristine):
    """A fresh copy of each tiny family (tests patch the model in place)."""
    pristine = _pristine[request.param]
    return type(pristine)(copy.deepcopy(pristine.model), pristine.tokenizer, pristine.image_processor, pristine.name)


@pytest.fixture
def stock(adapter):
    """An unpatched deep copy of the adapter's model: the stock transformers model."""
    return copy.deepcopy(adapter.model)


def stock_inputs(adapter, inputs: dict) -> dict:
    """What the stock transformers forward needs besides our inputs (Qwen-VL wants mm_token_type_ids)."""
    inputs = dict(inputs)
    if "image_grid_thw" in inputs:
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == adapter.image_token_id).int()
    return inputs


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """``exports(family, precision, passes)``: the folder of a default-LUVC export, made once per session."""
    made = {}

    def get(family: str, precision: str = "fp32", passes: bool = True):
        key = (family, precision, passes)
        if key not in made:
            sizes = QWEN_BUCKETS if key == ("tiny-qwen2-vl", "fp32", True) else ((224, 224),)
            external = "always" if key == ("tiny-llava", "fp32", True) else None
            profile = ExportProfile(image_sizes=sizes, precision=precision, external_data=external)
            out = tmp_path_factory.mktemp("exports") / f"{family}-{precision}-{'passes' if passes else 'raw'}"
            made[key] = export_model(load_model(family), out, profile, show_progress=False, passes=passes)
        return made[key]

    return get
