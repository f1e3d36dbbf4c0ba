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


@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-internvl"])
def test_rotary_angles_stay_float32_in_a_float16_model(family, tmp_path):
    """A float16 model keeps its rotary frequencies in float32 (loaded by name and from a bf16 checkpoint): at
    position 3000 a float16 ``inv_freq`` puts cos/sin off by more than 0.05; float32 ones by float16 rounding only."""
    reference = load_model(family)
    text_rotary = reference.model.model.language_model.rotary_emb
    positions = torch.arange(3000)[None]
    x = torch.zeros(1, 1, 8)
    cos_reference, _ = text_rotary(x, positions)
    exact = text_rotary.inv_freq.clone()
    last = positions[0, -1].float()
    assert ((last * exact.half().float()).cos() - (last * exact).cos()).abs().max() > 0.05  # what .to(float16) did
    folder = tmp_path / "bf16"
    for part in (reference.model.to(torch.bfloat16), reference.tokenizer, reference.image_processor):
        part.save_pretrained(folder)
    for source in (family, folder):
        half = load_model(source, dtype=torch.float16).model
        frequencies = {name: buffer.dtype for name, buffer in half.named_buffers() if name.endswith("inv_freq")}
        assert frequencies and set(frequencies.values()) == {torch.float32}, frequencies
        cos, _ = half.model.language_model.rotary_emb(x.half(), positions)
        assert cos.dtype == torch.float16
        assert (cos.float() - cos_reference).abs().max() < 1e-3
