"""The attention probe: its probabilities equal eager attention's weights, the module's output is unchanged, and the
module is restored afterwards."""

import copy

import pytest
import torch

from luvc.models import attention_probe as probe_module
from luvc.models import load_model
from luvc.models.attention_probe import attention_probe
from luvc.models.decoder import causal_mask


@pytest.fixture(scope="module")
def llava():
    return load_model("tiny-llava").model


def _eager(model):
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


def _decoder_call(model, layer: int = 1):
    text = model.model.language_model
    hidden = torch.randn(2, 9, text.config.hidden_size, generator=torch.Generator().manual_seed(0))
    cos, sin = text.rotary_emb(hidden, torch.arange(9).expand(2, 9))
    attention = text.layers[layer].self_attn
    mask = causal_mask(2, 9, hidden.dtype, hidden.device)
    return attention, dict(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=mask)


@torch.no_grad()
def test_last_query_probabilities_are_eager_attentions_last_row(llava):
    attention, kwargs = _decoder_call(_eager(llava))
    config = attention.config
    output, weights = attention(**kwargs)
    with attention_probe(attention, "last-query") as record:
        probed, _ = attention(**kwargs)
    assert torch.equal(probed, output)  # the module's own (eager) implementation computed the output
    torch.testing.assert_close(record.concatenated(), weights[:, :, -1].mean(dim=1))
    assert attention.config is config and attention not in probe_module._RECORDS
    assert config._attn_implementation == "eager"


@torch.no_grad()
def test_probe_leaves_sdpa_outputs_bit_identical(llava):
    attention, kwargs = _decoder_call(llava)
    kwargs["attention_mask"] = None  # SDPA's causal path, as the LUVC decoder calls it
    output, _ = attention(**kwargs)
    with attention_probe(attention, "last-query"):
        probed, _ = attention(**kwargs)
    assert torch.equal(probed, output)
    assert attention.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("chunk", [1024, 4])
@torch.no_grad()
def test_first_query_and_received_probabilities_of_a_vision_layer(llava, monkeypatch, chunk):
    monkeypatch.setattr(probe_module, "QUERY_CHUNK", chunk)  # "received" sums the queries in chunks
    tower = _eager(llava).model.vision_tower
    attention = getattr(tower, "vision_model", tower).encoder.layers[1].self_attn
    hidden = torch.randn(2, 10, tower.config.hidden_size, generator=torch.Generator().manual_seed(1))
    _, weights = attention(hidden)
    with attention_probe(attention, "first-query") as first:
        attention(hidden)
    with attention_probe(attention, "received") as received:
        attention(hidden)
    torch.testing.assert_close(first.concatenated(), weights[:, :, 0].mean(dim=1))
    torch.testing.assert_close(received.concatenated(), weights.mean(dim=1).mean(dim=1))
