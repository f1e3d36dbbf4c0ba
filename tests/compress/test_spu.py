import torch

from luvc.compress.spu import (
    channel_spectrum_scores,
    dct_basis,
    lowpass_basis,
    select_tokens,
    spectral_residual_scores,
)


def edge_grid(rows: int = 8, cols: int = 8, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Raster tokens of a grid whose top half is one flat region and bottom half another: one sharp edge."""
    generator = torch.Generator().manual_seed(seed)
    top, bottom = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)
    tokens = torch.stack([top if r < rows // 2 else bottom for r in range(rows) for _ in range(cols)])
    return tokens[None]


def test_dct_basis_is_orthonormal():
    basis = dct_basis(12, 12).double()
    torch.testing.assert_close(basis @ basis.T, torch.eye(12, dtype=torch.float64), atol=1e-6, rtol=0)


def test_full_band_lowpass_leaves_no_residual():
    tokens = torch.randn(2, 9, 5)
    assert lowpass_basis(9, 0.99).shape == (9, 9)
    assert spectral_residual_scores(tokens, rho=0.999).abs().max() < 1e-8


def test_spectral_residual_keeps_the_edge_tokens():
    tokens = edge_grid()
    kept = select_tokens(spectral_residual_scores(tokens, rho=0.25), 16)[0]
    # rows 3 and 4 touch the edge (tokens 24..39); the flat interiors are explained by the low-pass.
    assert 31 in kept and 32 in kept
    assert kept.min() >= 16 and kept.max() < 48


def test_flat_tokens_score_zero_residual():
    tokens = torch.ones(1, 10, 4) * 3.0
    assert spectral_residual_scores(tokens, rho=0.2).abs().max() < 1e-10


def test_scores_are_float32_for_half_inputs():
    tokens = edge_grid().half()
    assert spectral_residual_scores(tokens, 0.25).dtype == torch.float32
    assert channel_spectrum_scores(tokens, 0.25).dtype == torch.float32


def test_channel_spectrum_prefers_smooth_channel_profiles():
    dim = 32
    smooth = torch.cos(torch.arange(dim) * 2 * torch.pi / dim)  # all energy at frequency 1
    alternating = torch.tensor([(-1.0) ** i for i in range(dim)])  # all energy at the Nyquist frequency
    scores = channel_spectrum_scores(torch.stack([alternating, smooth])[None], rho=0.25)[0]
    assert scores[1] > 0.99 and scores[0] < 0.01


def test_select_tokens_ascending_and_identity_when_nothing_to_prune():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.8, 0.2]])
    assert select_tokens(scores, 3).tolist() == [[1, 2, 3]]
    assert select_tokens(scores, 5).tolist() == [[0, 1, 2, 3, 4]]
    assert select_tokens(scores, 0).shape == (1, 0)
