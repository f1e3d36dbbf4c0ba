"""Rows padded on the right through a linear-attention layer: each row's padding moved before its tokens and back.

A batch whose rows hold different numbers of tokens is padded on the right (the exported prefill's
``prompt_lengths``). An attention layer never lets a token see the padding after it, but a linear-attention layer's
convolution and recurrence run on through it, so the states it keeps for decode would end at the padding instead of
at the row's last token. Moved before the row's tokens and zeroed (the layer's own mask of padding), the padding
leaves the zero initial state zero and fills the convolution window with the zeros it starts with: the states end at
the row's last token exactly as for the row alone. Every other part of a decoder layer works token by token, so the
whole layer runs on the moved rows, and its output is moved back.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class LeftAligned:
    """Each row of a ``(B, S, ...)`` batch turned so that its ``S - n_b`` padding positions come first: ``order``
    gathers the turned rows from the right-padded ones, ``restore`` gathers them back, ``tokens (B, S)`` is ``True``
    where a turned row holds one of its tokens."""

    order: torch.Tensor
    restore: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor, sequence: int) -> LeftAligned:
        """The turn of rows of ``sequence`` positions holding ``lengths (B,)`` tokens each (then padding)."""
        positions = torch.arange(sequence, device=lengths.device)[None, :]
        lengths = lengths.view(-1, 1)
        order = torch.remainder(positions + lengths, sequence)  # turned position i holds padded position i + n_b
        restore = torch.remainder(positions - lengths, sequence)
        return cls(order, restore, positions >= sequence - lengths)

    @staticmethod
    def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(hidden, 1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))

    def turn(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden (B, S, D)`` with each row's padding moved before its tokens."""
        return self._gather(hidden, self.order)

    def turn_back(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden (B, S, D)`` of turned rows, back in the right-padded order."""
        return self._gather(hidden, self.restore)


class RowTurns:
    """The turns of a prefill's rows, holding ``row_lengths (B,)`` of its ``length`` tokens each (``None``: rows not
    padded), one per sequence length: every cut shortens each row by the same number of tokens."""

    def __init__(self, row_lengths: torch.Tensor | None, length: int) -> None:
        self.row_lengths, self.length = row_lengths, length
        self.turns: dict[int, LeftAligned] = {}

    def at(self, hidden: torch.Tensor) -> LeftAligned | None:
        """The turn of ``hidden (B, S', D)`` (``S'`` after the cuts so far); ``None`` for rows that are not padded or
        hold one token each (a decode step)."""
        if self.row_lengths is None or self.length == 1:
            return None
        current = hidden.shape[1]
        if current not in self.turns:
            self.turns[current] = LeftAligned.of(self.row_lengths - (self.length - current), current)
        return self.turns[current]
