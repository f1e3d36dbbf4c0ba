"""What a PyTorch forward asks of the host: the aten operators it dispatches, and those among them that wait for the
device (a value read back to the host: ``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing, ``unique``).

On a GPU each dispatch is a launch the host must issue and each sync stalls the host until the device catches up, so
a compressed forward that adds either loses at batch 1 what its smaller matrices save. Counted on the CPU, the same
calls are made, which lets CI hold the line without a GPU (``tests/models/test_host_sync.py``,
``benchmarks/graph_overhead.py``).
"""

from __future__ import annotations

import collections
import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten overloads that copy a value to the host (or size an output by the data) and so synchronise with the device
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",  # .item(), .tolist(), bool(tensor), int(tensor)
        "aten.nonzero.default",
        "aten.masked_select.default",
        "aten.unique.default",
        "aten._unique2.default",
        "aten.unique_consecutive.default",
        "aten.index.Tensor",  # with a boolean mask among its indices; counted only then (see ``_is_masked_index``)
    }
)


@dataclasses.dataclass
class DispatchCount:
    """The operators one forward dispatched, by aten overload, and those that synchronise with the device."""

    ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    syncs: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = DispatchCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.count.ops[name] += 1
        if name in SYNC_OPS and (name != "aten.index.Tensor" or _is_masked_index(args)):
            self.count.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def _is_masked_index(args) -> bool:
    """Whether an ``aten.index.Tensor`` call indexes by a boolean mask (its output size depends on the data)."""
    indices = args[1] if len(args) > 1 else ()
    return any(index is not None and index.dtype == torch.bool for index in indices)


def count_dispatches(forward, *args, **kwargs) -> DispatchCount:
    """Run ``forward(*args, **kwargs)`` once without gradients and count what it dispatched."""
    counter = _Counter()
    with torch.no_grad(), counter:
        forward(*args, **kwargs)
    return counter.count
