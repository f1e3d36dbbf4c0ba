"""The span arithmetic of SPU: where each image's visual tokens sit in a prompt (spans), the one gather index of a cut
(the kept tokens in causal order, the text around them, rows whose visual block sits at an offset of their own), the
cut itself (``spu_prune``) and DeepStack's planes added to the tokens still there. Plain functions of tensors and
Python spans: the decoder loop (``luvc.models.decoder``) and the exported graphs run the same ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from luvc.compress.scorers import Grid, Scorer, reads_ids
from luvc.compress.spu import select_tokens
from luvc.errors import critical

Span = tuple[int, int]  # (start, length) of one image's visual tokens in the current sequence


def visual_spans(visual_mask: torch.Tensor, tokens_per_image: Sequence[int]) -> tuple[Span, ...]:
    """Contiguous ``(start, length)`` spans of each image's tokens, identical for every batch row."""
    if visual_mask.shape[0] > 1 and not bool((visual_mask == visual_mask[:1]).all()):
        critical(
            "Batch rows place their image tokens differently; LUVC batches need the same prompt layout and the "
            "same image size in every row. Run such requests one at a time."
        )
    positions = torch.nonzero(visual_mask[0]).flatten().tolist()
    spans: list[Span] = []
    cursor = 0
    for count in tokens_per_image:
        chunk = positions[cursor : cursor + count]
        if len(chunk) != count or (count and chunk[-1] - chunk[0] != count - 1):
            critical(
                f"Image {len(spans)} should have {count} contiguous placeholder tokens in the prompt; build the "
                "inputs with the adapter's prepare_inputs() so the placeholder count matches the compressed grid."
            )
        spans.append((chunk[0] if chunk else 0, count))
        cursor += count
    return tuple(spans)


@dataclasses.dataclass(frozen=True)
class PlacedVisuals:
    """A prompt with its visual tokens in place (``scatter_visual_features``): the embeddings, the spans of one batch
    row in prompt order (rows share a layout), and in the spans' order the DeepStack planes
    ``(B, N, D)``, the vision side's ranking ``(B, N)`` (VisionZip; ``None`` for other criteria) and each span's
    token grid (``None`` where a family gives none)."""

    inputs_embeds: torch.Tensor
    spans: tuple[Span, ...]
    deepstack: tuple[torch.Tensor, ...]
    ranking: torch.Tensor | None
    grids: tuple[Grid, ...] | None = None


def scatter_visual_features(
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor,
    groups: Sequence,
    image_token_id: int,
) -> PlacedVisuals:
    """Put the LUVC visual tokens of every feature group (``ImageFeatures``: images, videos) into their placeholders
    (a group's ``token_id``, else ``image_token_id``)."""
    rows = inputs_embeds.shape[0]
    placed = []  # (span, group, offset of the span in the group's row, its grid)
    for index, group in enumerate(groups):
        mask = input_ids == (image_token_id if group.token_id is None else group.token_id)
        if int(mask.sum()) != group.embeds.shape[0]:
            critical(
                f"The prompt holds {int(mask.sum())} placeholder tokens but the LUVC vision side yields "
                f"{group.embeds.shape[0]} visual tokens; build inputs with prepare_inputs() for the applied LUVCConfig."
            )
        inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], group.embeds.to(inputs_embeds))
        per_row = list(group.tokens_per_image)[: len(group.tokens_per_image) // rows]
        offsets = [sum(per_row[:k]) for k in range(len(per_row))]
        group_grids = list(group.grids or [None] * len(per_row))[: len(per_row)]
        placed += list(zip(visual_spans(mask, per_row), [index] * len(per_row), offsets, group_grids))
    placed.sort(key=lambda entry: entry[0][0])

    def in_span_order(values: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, N, ...)`` from each group's rows ``(B x n, ...)``, cut into the spans and put in prompt order."""
        return torch.cat(
            [
                values[index].reshape(rows, -1, *values[index].shape[1:])[:, offset : offset + count]
                for (_, count), index, offset, _ in placed
            ],
            dim=1,
        )

    spans = tuple(entry[0] for entry in placed)
    grids: tuple[Grid | None, ...] = tuple(entry[3] for entry in placed)
    planes = tuple(in_span_order(group_planes) for group_planes in zip(*(group.deepstack for group in groups)))
    rankings = [group.ranking for group in groups]
    ranking = in_span_order(rankings) if groups and all(r is not None for r in rankings) else None
    known = tuple(grid for grid in grids if grid is not None)
    return PlacedVisuals(inputs_embeds, spans, planes, ranking, known if len(known) == len(grids) else None)


def pruned_spans(spans: Sequence[Span], budgets: Sequence[int]) -> tuple[Span, ...]:
    """The visual spans after each image keeps its budget: starts move up by the tokens pruned before them."""
    new_spans, removed = [], 0
    for (start, count), budget in zip(spans, budgets):
        new_spans.append((start - removed, budget))
        removed += count - budget
    return tuple(new_spans)


def span_rows(values: torch.Tensor, start: int, count: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``values[b, start + shift[b] : + count]`` of a ``(B, S, ...)`` tensor: a slice, or with a per-row ``shift``
    ``(B,)`` one gather."""
    if shift is None:
        return values[:, start : start + count]
    index = shift[:, None] + torch.arange(start, start + count, device=values.device)
    return gather_tokens(values, index)


def block_relative(length: int, block_start: int, shift: torch.Tensor) -> torch.Tensor:
    """``(B, length)``: each position of a sequence whose rows hold a visual block ``shift[b]`` tokens after
    ``block_start``, relative to its row's block start (negative before the block)."""
    return torch.arange(length, device=shift.device) - (shift[:, None] + block_start)


Piece = tuple[torch.Tensor, int]  # (B, w) values and the constant that makes them template positions


def shifted_index(
    pieces: Sequence[Piece], block_start: int, length: int, removed: int, shift: torch.Tensor
) -> torch.Tensor:
    """``(B, length)`` gather index of a sequence whose rows hold the visual block ``shift[b]`` tokens after
    ``block_start``: the text before the block maps to itself, the block's positions to the template positions of
    ``pieces`` (in order, moved by the row's shift), and the text after the block to its index plus the ``removed``
    tokens.

    Written as each position plus what its slot adds (one lookup): slot 0 before the block (adds 0), slots 1..n its
    positions (add their template position minus where they now sit), slot n + 1 after it (adds ``removed``)."""
    position = torch.arange(length, device=shift.device)
    before_block = shift[:, None] + (block_start - 1)  # slot = position - before_block, clamped
    inside, placed = [], block_start
    for values, offset in pieces:
        if values.shape[1]:
            inside.append(values - (torch.arange(values.shape[1], device=values.device) + (placed - offset)))
            placed += values.shape[1]
    if not inside:  # the block keeps nothing: the text after it follows the text before
        return torch.where(position > before_block, position + removed, position)
    # slot 0 adds 0, the last slot ``removed``: concatenated, not padded (ONNX Runtime's CUDA EP has no int64 Pad,
    # and one CPU node between device tensors keeps the whole graph from being captured as a CUDA graph)
    edge = before_block * 0  # (B, 1) zeros from a tensor at hand: one node
    adds = torch.cat([edge, *inside, edge + removed], dim=1)
    slot = (position - before_block).clamp(0, adds.shape[1] - 1)
    return position + torch.gather(adds, 1, slot)


def original_ids(batch: int, count: int, device: torch.device, start: int = 0) -> torch.Tensor:
    """``(B, count)``: the original indices ``start, start + 1, ...`` of visual tokens no cut has removed yet (a
    ``visual_ids`` of ``None`` stands for them, so that the first cut gathers nothing it already knows)."""
    return torch.arange(start, start + count, device=device).expand(batch, -1)


@dataclasses.dataclass(frozen=True)
class TokenPlacement:
    """Where a decoder layer's tokens came from: the prompt's ``original`` visual spans, the current ``spans`` and the
    ``(B, k)`` original indices of the visual tokens still there (``visual_ids``; ``None``: no cut yet), in a call
    whose first token is position ``start`` of the request; in an exported graph each row's spans sit ``shift[b]``
    tokens after ``spans`` (``spu_gather_index``)."""

    start: int
    original: tuple[Span, ...]
    spans: tuple[Span, ...]
    visual_ids: torch.Tensor | None
    shift: torch.Tensor | None = None

    def positions(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """``(B, length)``: the request position of each token of the current sequence (text keeps its own; a kept
        visual token the position it had before any cut; a row's spans moved by its ``shift``). Each token's position
        is looked up where it sits, no value read back to the host, so an exported graph computes it too."""
        index = torch.arange(length, device=device)
        if self.visual_ids is None or not self.original:
            return (index + self.start).expand(batch, length)
        relative = index[None, :] if self.shift is None else index[None, :] - self.shift[:, None]  # (1 or B, length)
        found = relative.expand(batch, length)
        offset, kept = 0, 0
        for (original_start, original_count), (start, count) in zip(self.original, self.spans):
            # text after this span sat its pruned tokens further on; a kept visual token where its id says
            found = torch.where(relative >= start + count, found + (original_count - count), found)
            if count:
                slot = (relative - start).clamp(0, count - 1).expand(batch, length)
                visual = torch.gather(self.visual_ids[:, kept : kept + count], 1, slot) - offset + original_start
                found = torch.where((relative >= start) & (relative < start + count), visual, found)
            offset, kept = offset + original_count, kept + count
        if self.shift is not None:
            found = found + self.shift[:, None]
        return found + self.start

    def blocks(self, length: int, device: torch.device) -> torch.Tensor:
        """``(B, length)`` (``(1, length)`` without ``shift``): the index of the span each token belongs to, ``-1``
        for text."""
        index = torch.arange(length, device=device)[None, :]
        if self.shift is not None:
            index = index - self.shift[:, None]
        block = torch.full_like(index, -1)
        for span, (start, count) in enumerate(self.spans):
            block = torch.where((index >= start) & (index < start + count), span, block)
        return block


def spu_gather_index(
    hidden: torch.Tensor,
    visual_ids: torch.Tensor | None,
    spans: Sequence[Span],
    budgets: Sequence[int],
    scorer: Scorer,
    score_input: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[Span, ...], torch.Tensor | None]:
    """Plan one pruning step: ``(B, S_new)`` gather index into the current sequence (``(S_new,)`` when every row
    takes the same positions: a cut that keeps nothing, in eager PyTorch), the new spans, and the
    ``(B, k)`` kept positions within the current visual tokens (all images concatenated; ``None`` when nothing is
    kept). ``visual_ids (B, N)``: the original indices of the current visual tokens, which the scorer also takes
    (``None``: all of them, in order);
    ``score_input (B, S, D)``: what the scorer reads at the spans (default ``hidden``); ``shift (B,)``: how far each
    row's spans sit after ``spans`` (a prompt with more or less text before its visuals; ``None``: not at all). A zero
    budget adds no scores and no empty pieces, so traced graphs hold no TopK with k = 0."""
    score_input = hidden if score_input is None else score_input
    batch, length = hidden.shape[:2]
    device = hidden.device
    if shift is None and spans and not torch.compiler.is_compiling():
        if not any(budgets):
            return _text_index(spans, length, device), pruned_spans(spans, budgets), None
        if len(spans) == 1:
            return _one_span_index(score_input, visual_ids, spans[0], budgets[0], scorer, length)
    block_start = spans[0][0] if spans else 0
    pieces: list[Piece] = []  # the new block: text between spans and the kept tokens of each span
    kept, cursor, visual_offset = [], block_start, 0
    for span, ((start, count), budget) in enumerate(zip(spans, budgets)):
        if start > cursor:
            pieces.append((torch.arange(cursor, start, device=device).expand(batch, -1), 0))
        if budget:
            ids = _span_ids(visual_ids, scorer, batch, visual_offset, count, device)
            keep = select_tokens(scorer(span_rows(score_input, start, count, shift), ids, span), budget)
            pieces.append((keep, start))
            kept.append(keep + visual_offset)
        cursor, visual_offset = start + count, visual_offset + count
    removed = sum(count for _, count in spans) - sum(budgets)
    kept_index = torch.cat(kept, dim=1) if kept else None
    if shift is not None:
        index = shifted_index(pieces, block_start, length - removed, removed, shift)
        return index, pruned_spans(spans, budgets), kept_index
    before = torch.arange(0, block_start, device=device).expand(batch, -1)
    after = torch.arange(cursor, length, device=device).expand(batch, -1)
    block = [values + offset if offset else values for values, offset in pieces]
    return torch.cat([before, *block, after], dim=1), pruned_spans(spans, budgets), kept_index


def _span_ids(
    visual_ids: torch.Tensor | None, scorer: Scorer, batch: int, offset: int, count: int, device: torch.device
) -> torch.Tensor | None:
    """The original indices of one span's visual tokens for ``scorer`` (``None`` for a scorer that reads only the
    tokens, ``reads_ids(scorer)`` false)."""
    if not reads_ids(scorer):
        return None
    if visual_ids is None:
        return original_ids(batch, count, device, offset)
    return visual_ids[:, offset : offset + count]


def _text_index(spans: Sequence[Span], length: int, device: torch.device) -> torch.Tensor:
    """``(S_new,)``: the positions outside ``spans`` (a cut that keeps no visual token; the same for every row)."""
    segments, cursor = [], 0
    for start, count in [*spans, (length, 0)]:
        if start > cursor:
            segments.append(torch.arange(cursor, start, device=device))
        cursor = start + count
    if len(segments) == 1:
        return segments[0]
    return torch.cat(segments) if segments else torch.zeros(0, dtype=torch.long, device=device)


def _one_span_index(
    score_input: torch.Tensor,
    visual_ids: torch.Tensor | None,
    span: Span,
    budget: int,
    scorer: Scorer,
    length: int,
) -> tuple[torch.Tensor, tuple[Span, ...], torch.Tensor]:
    """``spu_gather_index`` of one image in eager PyTorch: the text around it scores +inf, so one TopK over the whole
    sequence keeps the text and the span's ``budget`` best tokens, and a second puts them in order. Fewer operators
    (each a launch on a GPU) than building the index piece by piece; the same tokens are kept."""
    start, count = span
    ids = _span_ids(visual_ids, scorer, score_input.shape[0], 0, count, score_input.device)
    scores = scorer(score_input[:, start : start + count], ids, 0)
    index = select_tokens(F.pad(scores, (start, length - start - count), value=math.inf), length - count + budget)
    return index, pruned_spans([span], [budget]), index[:, start : start + budget] - start


def gather_tokens(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b]]`` for a ``(B, S, ...)`` tensor and a ``(B, S_new)`` index."""
    # unsqueezed, not viewed: a view exports with its shape computed from the sequence length
    trailing = index
    for _ in range(tensor.dim() - 2):
        trailing = trailing.unsqueeze(-1)
    expanded = trailing.expand(-1, -1, *tensor.shape[2:])
    return torch.gather(tensor, 1, expanded)


def take_tokens(tensors: Sequence[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``t[b, index[b]]`` of each ``(B, S, ...)`` tensor for a ``(B, S_new)`` index, or ``t[:, index]`` for an
    ``(S_new,)`` one (eager only). Traced: a gather each (``gather_tokens``); eager: one indexing operator each."""
    if torch.compiler.is_compiling():  # traced, ``spu_gather_index`` always gives a (B, S_new) index
        return tuple(gather_tokens(tensor, index) for tensor in tensors)
    if index.dim() == 1:
        return tuple(tensor.index_select(1, index) for tensor in tensors)
    rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
    return tuple(tensor[rows, index] for tensor in tensors)


def spu_prune(
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    visual_ids: torch.Tensor | None,
    spans: Sequence[Span],
    budgets: Sequence[int],
    scorer: Scorer,
    score_input: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[Span, ...]]:
    """One SPU unit: score (``score_input``, default ``hidden``), select and gather the hidden states and rotary
    cos/sin with one index. Returns the pruned tensors, the ``(B, k)`` original visual indices still kept, and the new
    spans (``visual_ids`` ``None``: no cut before this one; ``shift``: see ``spu_gather_index``)."""
    index, spans, kept = spu_gather_index(hidden, visual_ids, spans, budgets, scorer, score_input, shift)
    hidden, cos, sin = take_tokens((hidden, cos, sin), index)
    if kept is None:
        visual_ids = index.new_zeros((hidden.shape[0], 0))
    elif visual_ids is not None:
        visual_ids = torch.gather(visual_ids, 1, kept)
    else:  # the first cut: what it keeps are original indices already
        visual_ids = kept
    return hidden, cos, sin, visual_ids, spans


def add_visual_plane(
    hidden: torch.Tensor,
    spans: Sequence[Span],
    visual_ids: torch.Tensor | None,
    plane: torch.Tensor,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """DeepStack (Qwen3-VL): ``hidden`` with the rows of ``plane (B, N, D)`` (one per original visual token) of the
    visual tokens still in the sequence (``visual_ids``, after any pruning; ``None``: all) added at their ``spans``
    (moved by each row's ``shift``, see ``spu_gather_index``)."""
    rows = plane.to(hidden.dtype) if visual_ids is None else gather_tokens(plane.to(hidden.dtype), visual_ids)
    if shift is not None:
        if not spans:
            return hidden
        # each position's row of ``rows``, or the zero row after them: the block's table, then the shift
        zero = rows.shape[1]
        table, cursor, offset = [], spans[0][0], 0
        for start, count in spans:
            table += [zero] * (start - cursor) + list(range(offset, offset + count))
            cursor, offset = start + count, offset + count
        padded = torch.cat([rows, rows.new_zeros(rows.shape[0], 1, rows.shape[2])], dim=1)
        block = torch.tensor(table, device=hidden.device).expand(hidden.shape[0], -1)
        relative = block_relative(hidden.shape[1], spans[0][0], shift)
        inside = (relative >= 0) & (relative < len(table))
        source = torch.where(inside, torch.gather(block, 1, relative.clamp(0, len(table) - 1)), zero)
        return hidden + gather_tokens(padded, source)
    pieces, cursor, offset = [], 0, 0
    for start, count in spans:
        pieces += [hidden[:, cursor:start], hidden[:, start : start + count] + rows[:, offset : offset + count]]
        cursor, offset = start + count, offset + count
    pieces.append(hidden[:, cursor:])
    return torch.cat(pieces, dim=1)
