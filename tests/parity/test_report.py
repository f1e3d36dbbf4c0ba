"""Report files: parity.json reloads to the same verdict, the plots are valid PNGs, the Markdown names the layer."""

import dataclasses

import pytest
from PIL import Image

from luvc.parity import ParityResults, check_parity, write_report
from luvc.parity.report import PLOTS
from tests.conftest import perturb_weight

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_report_files_exist_and_reload(parity_of, tmp_path):
    results = parity_of("tiny-qwen2-vl")
    out = write_report(results, tmp_path / "report")
    written = sorted(["parity.json", "report.md", *PLOTS.values()])
    assert sorted(p.name for p in out.iterdir()) == [".luvc-files", *written]
    assert sorted((out / ".luvc-files").read_text().split()) == written
    for name in PLOTS.values():
        _assert_valid_png(out / name)
    reloaded = ParityResults.load(out / "parity.json")
    assert dataclasses.asdict(reloaded) == dataclasses.asdict(results)
    assert bool(reloaded) == bool(results)
    text = (out / "report.md").read_text()
    assert "PASSED" in text and "first diverging layer: **none**" in text
    assert "What compression costs" in text and "What export costs" in text


def test_failed_report_names_the_first_diverging_layer(copied_export, tmp_path):
    folder = copied_export("tiny-qwen2-vl")
    perturb_weight(folder, "prefill_224x224.onnx", "/llm/layers.2/mlp/down_proj/MatMul")
    out = write_report(check_parity(folder, show_progress=False), tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "FAILED" in text and "first diverging layer: **llm.layers.2**" in text
    assert ParityResults.load(out / "parity.json").to_dict()["backends"][0]["first_diverging_layer"] == "llm.layers.2"
    _assert_valid_png(out / PLOTS["layer_error"])


def test_report_refuses_to_overwrite_and_leaves_nothing_half_written(parity_of, tmp_path, monkeypatch):
    results = parity_of("tiny-qwen2-vl")
    out = write_report(results, tmp_path / "report")
    with pytest.raises(Exception, match="already exists"):
        write_report(results, out)

    def broken(*args):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("luvc.parity.report.plot_kept_overlap", broken)
    with pytest.raises(RuntimeError):
        write_report(results, tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
