"""The language-model graphs of a hybrid model (Qwen3.5: three linear-attention layers, then attention): the prefill
keeps each right-padded row's convolution and recurrent states as the row alone would, SPU cuts included, and a decode
step carries them on as a prefill one token longer does (the exported graphs in ONNX Runtime against PyTorch:
tests/export/test_qwen3_5_export.py)."""

import pytest
import torch

from luvc.export.bucket_plan import plan_bucket
from luvc.export.llm import DecodeGraph, PrefillGraph
from luvc.export.manifest_entries import kv_names
from luvc.models import load_model

SHORTER = 5  # the second row's tokens fewer than the first's: padding on its right
CAPACITY = 96  # the attention layer's decode cache


@pytest.fixture(scope="module")
def qwen35():
    adapter = load_model("tiny-qwen3.5")
    adapter.apply_luvc()
    assert adapter.linear_layers == {0, 1, 2}
    return adapter


@pytest.fixture(scope="module")
def bucket(qwen35):
    bucket = plan_bucket(qwen35, (224, 224))
    assert set(bucket.budget_plan.prune_layers()) & qwen35.linear_layers  # a cut before a linear-attention layer
    return bucket


def _prompt(qwen35, bucket, text: int = 6) -> dict[str, torch.Tensor]:
    """Two rows of a bucket's prompt with ``text`` tokens after the visuals, the second ``SHORTER`` tokens shorter
    (random embeddings: the graphs never read the ids)."""
    generator = torch.Generator().manual_seed(0)
    length = bucket.visual_end + text
    positions = torch.cat([bucket.prompt_position_ids, bucket.next_position + torch.arange(text).expand(3, -1)], dim=1)
    return {
        "inputs_embeds": torch.randn(2, length, qwen35.language_model.config.hidden_size, generator=generator),
        "position_ids": positions[:, None].expand(-1, 2, -1).contiguous(),
        "prompt_lengths": torch.tensor([length, length - SHORTER]),
        "visual_shift": torch.zeros(2, dtype=torch.long),
    }


def _row(feeds: dict[str, torch.Tensor], row: int, length: int) -> dict[str, torch.Tensor]:
    """Row ``row`` of a prompt alone, its first ``length`` tokens."""
    return {
        "inputs_embeds": feeds["inputs_embeds"][row : row + 1, :length],
        "position_ids": feeds["position_ids"][:, row : row + 1, :length].contiguous(),
        "prompt_lengths": torch.tensor([length]),
        "visual_shift": feeds["visual_shift"][row : row + 1],
    }


def _prefill(qwen35, bucket) -> PrefillGraph:
    return PrefillGraph(qwen35, bucket.visual_spans, bucket.budget_plan, bucket.plan.vision.span_grids).eval()


def _names(qwen35, bucket, prefix: str = "present") -> list[str]:
    kept = [f"kept.{layer}" for layer in bucket.budget_plan.prune_layers() if bucket.budget_plan.total[layer] > 0]
    return ["logits", *kv_names(prefix, qwen35.num_layers, qwen35.linear_layers), *kept]


@torch.no_grad()
def test_a_padded_row_keeps_the_states_it_keeps_alone(qwen35, bucket):
    graph = _prefill(qwen35, bucket)
    feeds = _prompt(qwen35, bucket)
    names = _names(qwen35, bucket)
    assert "present.0.conv" in names and "present.3.key" in names and "present.0.key" not in names
    both = dict(zip(names, graph(*feeds.values())))
    length = feeds["inputs_embeds"].shape[1] - SHORTER
    alone = dict(zip(names, graph(*_row(feeds, 1, length).values())))
    for name, value in alone.items():
        padded = both[name][1:]
        if name.endswith((".key", ".value")):  # the padded row's keys and values run on past its own
            padded = padded[:, :, : value.shape[2]]
        torch.testing.assert_close(padded, value, atol=1e-5, rtol=1e-5, msg=name)
    # the states are the last tokens': the convolution window holds the row's last inputs, not its padding
    assert not torch.equal(both["present.0.conv"][0], both["present.0.conv"][1])


def _decode_feeds(qwen35, prefill: dict[str, torch.Tensor], lengths: torch.Tensor, step: dict) -> dict:
    """The decode graph's feeds after ``prefill``: each attention layer's keys and values in a ``CAPACITY`` cache, the
    states as they are, every row writing at its own length."""
    feeds = {**step, "kv_write_index": lengths.expand(qwen35.num_layers, -1).contiguous()}
    feeds["attention_window"] = torch.zeros(CAPACITY, dtype=torch.bool)
    for layer in range(qwen35.num_layers):
        if layer in qwen35.linear_layers:
            pair = (prefill[f"present.{layer}.conv"], prefill[f"present.{layer}.recurrent"])
        else:
            pair = []
            for kind in ("key", "value"):
                held = prefill[f"present.{layer}.{kind}"]
                cache = torch.zeros(*held.shape[:2], CAPACITY, held.shape[3])
                cache[:, :, : held.shape[2]] = held
                pair.append(cache)
        names = kv_names("past_key_values", qwen35.num_layers, qwen35.linear_layers)[2 * layer : 2 * layer + 2]
        feeds.update(zip(names, pair))
    return feeds


@torch.no_grad()
def test_a_decode_step_carries_the_states_as_a_prefill_one_token_longer(qwen35, bucket):
    graph = _prefill(qwen35, bucket)
    feeds = _prompt(qwen35, bucket)
    names = _names(qwen35, bucket)
    width = feeds["inputs_embeds"].shape[1]
    lengths = torch.tensor([width - 1, width - SHORTER])  # each row's prompt; its next token is the step's
    prefill = dict(zip(names, graph(*{**feeds, "prompt_lengths": lengths}.values())))
    held = prefill["present.3.key"].shape[2] - (width - lengths)  # the tokens the attention layer keeps of each row
    rows = torch.arange(2)
    step = {
        "inputs_embeds": feeds["inputs_embeds"][rows, lengths][:, None],
        "position_ids": feeds["position_ids"][:, rows, lengths][:, :, None].contiguous(),
    }
    decoded = DecodeGraph(qwen35).eval()(*_decode_feeds(qwen35, prefill, held, step).values())
    for row, length in enumerate(lengths.tolist()):
        longer = graph(*_row(feeds, row, length + 1).values())[0]
        torch.testing.assert_close(decoded[0][row : row + 1], longer, atol=1e-5, rtol=1e-5)
