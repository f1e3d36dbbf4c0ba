"""Spectrum Pruning Unit (DESIGN.md section 2.2), as model-agnostic pure functions.

Scores need no attention probabilities and no similarity matrix: each variant is a product with constant
matrices (no FFT op), computed in float32 whatever the input dtype.

- ``spectral-residual``: low-pass the visual tokens along the token axis with the lowest ``ceil(rho * n)`` DCT-II
  frequencies; a token's score is its residual (high-frequency) energy. Tokens the low-pass explains well are
  redundant and are pruned first.
  With ``spu_lowpass="grid"`` the low-pass is separable over each image's 2-D token grid instead (per frame or tile),
  with the tokens an earlier cut removed counted as zeros.
- ``channel-spectrum``: each token's spectrum over the hidden dimension; its score is the share of energy in the
  lowest ``ceil(rho * (D // 2 + 1))`` frequencies.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from luvc.compress.constants import constant_maker, constant_tensor

Scorer = Callable[[torch.Tensor], torch.Tensor]


@constant_maker
def _dct_rows(n: int, num_frequencies: int) -> np.ndarray:
    k = np.arange(num_frequencies, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    basis = np.cos(np.pi * (i + 0.5) * k / n) * np.sqrt(2.0 / n)
    basis[0] = np.sqrt(1.0 / n)
    basis = basis.astype(np.float32)
    basis.flags.writeable = False
    return basis


def dct_basis(n: int, num_frequencies: int) -> torch.Tensor:
    """The first ``num_frequencies`` rows of the orthonormal DCT-II matrix of size ``n``: ``(m, n)`` float32.

    The cache holds NumPy arrays, never tensors: a tensor cached while ``torch.export`` traces would be a fake one.
    """
    return torch.tensor(_dct_rows(n, num_frequencies))


def low_frequency_count(variant: str, rho: float, tokens: int, dim: int) -> int:
    """How many low frequencies a ``variant`` score keeps for ``tokens`` visual tokens of width ``dim``: the DCT rows
    of the token-axis low-pass (``spectral-residual``) or the lowest channel frequencies (``channel-spectrum``)."""
    if variant == "spectral-residual":
        return max(1, min(tokens, math.ceil(rho * tokens)))
    return max(1, math.ceil(rho * (dim // 2 + 1)))


def _lowpass_rows(n: int, rho: float) -> np.ndarray:
    return _dct_rows(n, low_frequency_count("spectral-residual", rho, n, 0))


def lowpass_basis(n: int, rho: float) -> torch.Tensor:
    """``C_m`` with ``m = ceil(rho * n)``: the low-pass filter is ``P_n = C_m^T C_m``."""
    return torch.tensor(_lowpass_rows(n, rho))


@constant_maker
def _residual_projection(n: int, rho: float) -> np.ndarray:
    basis = _lowpass_rows(n, rho).astype(np.float64)
    projection = (np.eye(n) - basis.T @ basis).astype(np.float32)
    projection.flags.writeable = False
    return projection


def residual_projection(n: int, rho: float) -> torch.Tensor:
    """``I - P_n``: ``(n, n)`` float32, what the low-pass leaves of ``n`` tokens (symmetric)."""
    return torch.tensor(_residual_projection(n, rho))


def residual_projection_on(n: int, rho: float, device: torch.device) -> torch.Tensor:
    """``residual_projection`` on ``device``, as ``luvc.compress.constants`` makes constants (kept per device in eager
    PyTorch, a graph constant under ``torch.compile``, made afresh while exporting)."""
    return constant_tensor("_residual_projection", n, rho, device=device)


def spectral_residual_scores(tokens: torch.Tensor, rho: float) -> torch.Tensor:
    """``tokens``: ``(B, n, D)`` -> ``(B, n)`` float32 high-frequency energy ``||V_i - (P_n V)_i||^2``.

    One product with the constant ``I - P_n`` and a sum of squares. Exported, the token axis goes last, where
    ``linear`` applies the matrix: one MatMul with a constant weight for any batch size (a batched product over the
    token axis exports with an Expand of the matrix to the batch). It costs ``n^2 D`` multiply-adds against
    ``2 m n D`` for ``P_n`` as two products with ``C_m``: about 0.1% of a 2B model's prefill at the default ``rho``, for
    three nodes fewer per cut."""
    values = tokens.float()
    projection = residual_projection_on(tokens.shape[-2], rho, tokens.device)
    if torch.compiler.is_exporting():
        residual = F.linear(values.transpose(1, 2), projection)  # (B, D, n); the projection is symmetric
        return residual.square().sum(dim=1)
    # eager PyTorch: one batched product, fewer operator dispatches (each a launch on a GPU) than linear's reshapes
    residual = torch.bmm(projection.expand(values.shape[0], -1, -1), values)
    return residual.square().sum(dim=-1)


@constant_maker
def _axis_lowpass(n: int, rho: float) -> np.ndarray:
    """``(n, n)`` low-pass of one grid axis: ``C_m^T C_m`` with ``m = ceil(sqrt(rho) * n)``, so a 2-D grid keeps
    about ``rho`` of its frequencies."""
    basis = _dct_rows(n, max(1, min(n, math.ceil(math.sqrt(rho) * n))))
    projection = (basis.T @ basis).astype(np.float32)
    projection.flags.writeable = False
    return projection


def grid_residual_scores(tokens: torch.Tensor, local_ids: torch.Tensor, grid: tuple[int, int, int], rho: float):
    """``tokens (B, n, D)`` at positions ``local_ids (B, n)`` of a ``(blocks, rows, cols)`` token grid (frames or
    tiles of ``rows x cols`` in raster order) -> ``(B, n)`` float32 high-frequency energy after the separable 2-D
    low-pass ``P_rows (x) P_cols`` within each block, the grid's other tokens (pruned earlier) taken as zeros: the
    projection restricted to the tokens present, ``P[ids][:, ids]``, built from two small constant tables."""
    blocks, rows, cols = grid
    values = tokens.float()
    row_pass = constant_tensor("_axis_lowpass", rows, rho, device=values.device)
    col_pass = constant_tensor("_axis_lowpass", cols, rho, device=values.device)
    block, row, col = local_ids // (rows * cols), (local_ids // cols) % rows, local_ids % cols
    same_block = block[:, :, None] == block[:, None, :]
    projection = row_pass[row[:, :, None], row[:, None, :]] * col_pass[col[:, :, None], col[:, None, :]]
    projection = torch.where(same_block, projection, torch.zeros((), device=values.device))
    return (values - torch.bmm(projection, values)).square().sum(dim=-1)


@constant_maker
def _real_dft_cosines(dim: int, num_frequencies: int) -> np.ndarray:
    angle = 2.0 * np.pi * np.arange(dim, dtype=np.float64)[:, None] * np.arange(num_frequencies)[None, :] / dim
    return np.cos(angle).astype(np.float32)


@constant_maker
def _real_dft_sines(dim: int, num_frequencies: int) -> np.ndarray:
    angle = 2.0 * np.pi * np.arange(dim, dtype=np.float64)[:, None] * np.arange(num_frequencies)[None, :] / dim
    return np.sin(angle).astype(np.float32)


def real_dft_basis(
    dim: int, num_frequencies: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine matrices ``(dim, num_frequencies)`` of the real DFT over ``dim`` samples, on ``device``."""
    cosines, sines = (
        constant_tensor(name, dim, num_frequencies, device=device) for name in ("_real_dft_cosines", "_real_dft_sines")
    )
    return cosines, sines


def channel_spectrum_scores(tokens: torch.Tensor, rho: float) -> torch.Tensor:
    """``tokens``: ``(B, n, D)`` -> ``(B, n)`` float32 share of each token's energy in its lowest channel
    frequencies (an rFFT over the hidden dimension written as two matrix products)."""
    values = tokens.float()
    num_frequencies = values.shape[-1] // 2 + 1
    cosine, sine = real_dft_basis(values.shape[-1], num_frequencies, values.device)
    energy = (values @ cosine).square() + (values @ sine).square()
    low = low_frequency_count("channel-spectrum", rho, values.shape[-2], values.shape[-1])
    return energy[..., :low].sum(dim=-1) / energy.sum(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)


def get_scorer(variant: str, rho: float) -> Scorer:
    """The scoring function of an SPU ``variant``, with ``rho`` bound."""
    if variant == "spectral-residual":
        return functools.partial(spectral_residual_scores, rho=rho)
    if variant == "channel-spectrum":
        return functools.partial(channel_spectrum_scores, rho=rho)
    raise ValueError(f"SPU variant {variant!r} has no scorer; use 'spectral-residual' or 'channel-spectrum'.")


def select_tokens(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the ``budget`` highest-scoring tokens, in ascending (causal) order: ``(B, n)`` -> ``(B, budget)``.

    A budget of ``n`` (nothing to prune) returns ``arange(n)``, so callers never branch.
    """
    batch, n = scores.shape
    if budget >= n:
        return torch.arange(n, device=scores.device).expand(batch, n)
    kept = torch.topk(scores, budget, dim=-1, sorted=False).indices
    # ascending order by a second TopK with the same constant k (a Sort would export with a shape-derived k)
    return torch.topk(kept, budget, dim=-1, largest=False, sorted=True).values
