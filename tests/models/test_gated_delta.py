"""The chunked gated delta rule the exported graphs compute (``luvc.models.gated_delta``) against transformers' own."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_5 import modeling_qwen3_5

from luvc.models.gated_delta import chunk_gated_delta_rule, traced_by_squaring, unit_lower_inverse


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_the_inverse_by_squaring_inverts_a_unit_lower_triangular_matrix(size):
    strict = 0.3 * torch.randn(3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    strict = strict.tril(-1)
    identity = torch.eye(size, dtype=torch.float64)
    torch.testing.assert_close(unit_lower_inverse(strict) @ (identity + strict), identity.expand(3, -1, -1))


@pytest.mark.parametrize(
    ("batch", "length", "key_heads", "value_heads", "key_dim", "value_dim"),
    [(2, 20, 2, 4, 8, 8), (1, 130, 2, 2, 16, 32), (2, 64, 4, 8, 128, 128)],  # a chunk and a bit; padded; grouped
)
@pytest.mark.parametrize("initial", [False, True])
def test_the_rule_computes_what_transformers_computes(
    batch, length, key_heads, value_heads, key_dim, value_dim, initial
):
    generator = torch.Generator().manual_seed(length)
    query, key = (torch.randn(batch, length, key_heads, key_dim, generator=generator) for _ in range(2))
    value = torch.randn(batch, length, value_heads, value_dim, generator=generator)
    decay = -2 * F.softplus(torch.randn(batch, length, value_heads, generator=generator))
    rate = torch.rand(batch, length, value_heads, generator=generator)
    state = 0.1 * torch.randn(batch, value_heads, key_dim, value_dim, generator=generator) if initial else None
    arguments = dict(initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=True)
    expected = modeling_qwen3_5.torch_chunk_gated_delta_rule(query, key, value, decay, rate, **arguments)
    ours = chunk_gated_delta_rule(query, key, value, decay, rate, **arguments)
    torch.testing.assert_close(ours[0], expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours[1], expected[1], atol=1e-6, rtol=1e-5)


def test_tracing_swaps_the_rule_in_and_back():
    original = modeling_qwen3_5.torch_chunk_gated_delta_rule
    with traced_by_squaring():
        assert modeling_qwen3_5.torch_chunk_gated_delta_rule is chunk_gated_delta_rule
    assert modeling_qwen3_5.torch_chunk_gated_delta_rule is original
