import json

from PIL import Image

from luvc.cli.main import main
from tests.conftest import perturb_weight


def test_parity_passes_on_a_folder_of_images_and_prompts(exports, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (320, 240), (40, 120, 200)).save(data / "photo.jpg")
    (data / "prompts.txt").write_text("What is this?\n")
    out = tmp_path / "report"
    assert main(["parity", str(exports("tiny-llava")), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed and str(out / "report.md") in printed
    assert json.loads((out / "parity.json").read_text())["samples"] == ["photo.jpg"]


def test_parity_exits_1_on_a_perturbed_export(copied_export, tmp_path, capsys):
    folder = copied_export("tiny-qwen2-vl")
    perturb_weight(folder, "prefill_224x224.onnx", "/llm/layers.0/mlp/down_proj/MatMul")
    assert main(["parity", str(folder), "--num-samples", "2", "--max-new-tokens", "4"]) == 1
    assert "first diverging layer: llm.layers.0" in capsys.readouterr().out
    assert (tmp_path / f"{folder.name}-parity" / "report.md").is_file()  # default: beside the export


def test_parity_names_an_empty_data_folder_and_writes_nothing(exports, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "report"
    assert main(["parity", str(exports("tiny-qwen2-vl")), "--data", str(empty), "--out", str(out)]) == 2
    assert "holds no image" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_parity_refuses_a_taken_report_folder_before_checking(exports, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "parity.json").write_text("{}")

    def must_not_run(self):
        raise AssertionError("parity ran although the report folder was taken")

    monkeypatch.setattr("luvc.parity.checker.ParityFromExport.call_impl", must_not_run)
    assert main(["parity", str(exports("tiny-qwen2-vl")), "--out", str(out)]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (out / "parity.json").read_text() == "{}"
