import copy

import pytest

from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model

FAMILIES = list(TINY_MODELS)


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
