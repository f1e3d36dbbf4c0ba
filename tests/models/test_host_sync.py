"""The LUVC compress path adds no host synchronisation to a forward: OIM and SPU read no value back from the device
(no ``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing or ``unique``), so a GPU never waits on the host
for them; and it dispatches at most 10% more operators (each a launch the host issues on a GPU). Measured against the
same forward with compression off, for every family."""

import pytest
import torch

from luvc.compress.config import LUVCConfig
from luvc.images import synthetic_image
from luvc.models import TINY_MODELS, load_model
from luvc.models.dispatches import count_dispatches

MAX_DISPATCH_RATIO = 1.1


def _forward_counts(family: str, config: LUVCConfig | None):
    adapter = load_model(family)
    adapter.apply_luvc(config)
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], "Describe the image.")
    count_dispatches(adapter.model, **inputs)  # a first forward initialises lazily (plans, tables): not per request
    return count_dispatches(adapter.model, **inputs)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_compression_adds_no_host_sync(family):
    off = _forward_counts(family, LUVCConfig.off())
    on = _forward_counts(family, None)  # the family's default LUVC config
    assert on.total > off.total  # the compress path ran (it dispatches its own operators)
    assert on.syncs == off.syncs
    assert on.total <= MAX_DISPATCH_RATIO * off.total, f"{on.total} operators with LUVC, {off.total} without"


def test_the_count_sees_a_sync_and_a_masked_index():
    def reads_back(x):
        mask = x > 0
        return x[mask].sum().item() + int(torch.nonzero(x).shape[0])

    count = count_dispatches(reads_back, torch.tensor([1.0, -1.0, 2.0]))
    assert count.syncs["aten._local_scalar_dense.default"] == 1
    assert count.syncs["aten.nonzero.default"] == 1
    assert count.syncs["aten.index.Tensor"] == 1
