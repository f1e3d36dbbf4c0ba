"""The SPU gather index of a prefill whose rows hold their visual block at different offsets (``visual_shift``, as
exported graphs take it) against the index each row gets with its spans simply moved by its shift."""

import pytest
import torch

from luvc.models.spans import spu_gather_index


def _energy(tokens: torch.Tensor, ids: torch.Tensor, span: int) -> torch.Tensor:
    return tokens.square().sum(dim=-1)


CASES = [
    (((3, 6),), (4,)),  # one image
    (((3, 6),), (0,)),  # one image, the final cut
    (((3, 6), (11, 5)), (4, 2)),  # two images with text between them
    (((3, 6), (11, 5)), (0, 3)),  # the first image keeps nothing
    (((3, 6), (11, 5)), (0, 0)),  # the final cut: nothing kept
]


def _rows(index: torch.Tensor, batch: int) -> torch.Tensor:
    """A ``(B, S_new)`` index (eager gives ``(S_new,)`` when every row takes the same positions)."""
    return index if index.dim() == 2 else index.expand(batch, -1)


@pytest.mark.parametrize(("spans", "budgets"), CASES)
def test_shifted_index_equals_each_row_moved_by_its_shift(spans, budgets):
    torch.manual_seed(0)
    shift = torch.tensor([0, 2, 5])
    length = 24
    hidden = torch.randn(len(shift), length, 8)
    visual_ids = torch.arange(sum(c for _, c in spans)).expand(len(shift), -1)
    index, new_spans, _ = spu_gather_index(hidden, visual_ids, spans, budgets, _energy, shift=shift)
    removed = sum(c for _, c in spans) - sum(budgets)
    assert index.shape == (len(shift), length - removed)
    for row, moved_by in enumerate(shift.tolist()):
        moved = tuple((start + moved_by, count) for start, count in spans)
        expected, _, _ = spu_gather_index(hidden[row : row + 1], visual_ids[:1], moved, budgets, _energy)
        assert index[row].tolist() == _rows(expected, 1)[0, : length - removed].tolist(), f"row {row}"


@pytest.mark.parametrize(("spans", "budgets"), CASES)
def test_eager_index_equals_the_traced_one(spans, budgets):
    """Eager PyTorch builds the index with fewer operators (one TopK over the sequence for one image, the text
    positions alone for a cut that keeps nothing); the graphs build it piece by piece. Same positions, same kept."""
    torch.manual_seed(1)
    batch, length = 3, 24
    hidden = torch.randn(batch, length, 8)
    visual_ids = torch.arange(sum(c for _, c in spans)).expand(batch, -1)
    eager, eager_spans, eager_kept = spu_gather_index(hidden, visual_ids, spans, budgets, _energy)
    traced, traced_spans, traced_kept = spu_gather_index(
        hidden, visual_ids, spans, budgets, _energy, shift=torch.zeros(batch, dtype=torch.long)
    )
    assert _rows(eager, batch).tolist() == traced.tolist()
    assert eager_spans == traced_spans
    assert (eager_kept is None) == (traced_kept is None)
    if eager_kept is not None:
        assert eager_kept.tolist() == traced_kept.tolist()
