"""bf16 checkpoints (how most current VLM checkpoints ship) through export and parity, and weights that do not fit
float16."""

import pytest
import torch

from luvc.cli.main import main
from luvc.models import load_model


def save_bf16_checkpoint(folder, large_weight: str | None = None):
    adapter = load_model("tiny-qwen2-vl")
    model = adapter.model.to(torch.bfloat16)
    if large_weight is not None:
        with torch.no_grad():
            model.get_parameter(large_weight)[0, 0] = 1.0e6  # bf16 holds it, float16 (max 65504) does not
    for part in (model, adapter.tokenizer, adapter.image_processor):
        part.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_a_bf16_checkpoint_exports_and_passes_parity(tmp_path, precision, capsys):
    checkpoint = save_bf16_checkpoint(tmp_path / "checkpoint")
    export = tmp_path / f"export-{precision}"
    argv = ["export", "--model", str(checkpoint), "--out", str(export), "--image-size", "224x224"]
    assert main([*argv, "--precision", precision]) == 0
    # parity loads the checkpoint in fp32: the same model as the fp16 export (the loading dtype is not its identity)
    report = tmp_path / f"parity-{precision}"
    assert main(["parity", str(export), "--num-samples", "2", "--max-new-tokens", "4", "--out", str(report)]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_a_weight_beyond_float16_is_named_with_the_fix(tmp_path, capsys):
    checkpoint = save_bf16_checkpoint(tmp_path / "checkpoint", "model.language_model.layers.1.mlp.up_proj.weight")
    out = tmp_path / "export"
    argv = ["export", "--model", str(checkpoint), "--out", str(out), "--image-size", "224x224", "--precision", "fp16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Weight model.language_model.layers.1.mlp.up_proj.weight does not fit float16" in err
    assert "from the checkpoint's bfloat16" in err and "--precision fp32" in err
    assert not out.exists()


def rotary_tables(rotary, x: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(cos, inv_freq)`` of each rotary table of a text model's ``rotary`` embedding: one, or (Gemma 3) one per kind
    of layer."""
    kinds = getattr(rotary, "layer_types", None)
    if kinds is None:
        return [(rotary(x, positions)[0], rotary.inv_freq)]
    return [(rotary(x, positions, kind)[0], getattr(rotary, f"{kind}_inv_freq")) for kind in kinds]


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-internvl", "tiny-gemma3"])
def test_rotary_angles_stay_float32_in_a_float16_model(family, tmp_path):
    """A float16 model keeps its rotary frequencies in float32 (loaded by name and from a bf16 checkpoint; Gemma 3:
    both tables): at position 3000 a float16 ``inv_freq`` puts cos/sin off by more than 0.05; float32 ones by float16
    rounding only."""
    reference = load_model(family)
    text_rotary = reference.model.model.language_model.rotary_emb
    positions = torch.arange(3000)[None]
    x = torch.zeros(1, 1, 8)
    references = rotary_tables(text_rotary, x, positions)
    last = positions[0, -1].float()
    wrong = [
        ((last * inv_freq.half().float()).cos() - (last * inv_freq).cos()).abs().max() for _, inv_freq in references
    ]
    assert max(wrong) > 0.05  # what .to(float16) did (to one table at least)
    folder = tmp_path / "bf16"
    for part in (reference.model.to(torch.bfloat16), reference.tokenizer, reference.image_processor):
        part.save_pretrained(folder)
    for source in (family, folder):
        half = load_model(source, dtype=torch.float16).model
        frequencies = {name: buffer.dtype for name, buffer in half.named_buffers() if name.endswith("inv_freq")}
        assert frequencies and set(frequencies.values()) == {torch.float32}, frequencies
        tables = rotary_tables(half.model.language_model.rotary_emb, x.half(), positions)
        assert len(tables) == len(references)
        for (cos, _), (cos_reference, _) in zip(tables, references):
            assert cos.dtype == torch.float16
            assert (cos.float() - cos_reference).abs().max() < 1e-3
