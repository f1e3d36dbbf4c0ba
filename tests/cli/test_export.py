import numpy as np
import pytest
import torch

from luvc.cli.main import main
from luvc.compress.config import LUVCConfig
from luvc.export.manifest import ExportManifest
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.generation import greedy_generate
from luvc.runtime.pipeline import Pipeline


@pytest.mark.slow
def test_export_without_luvc_is_the_uncompressed_baseline(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"  # a local checkpoint folder, as users pass it
    tiny = load_model("tiny-qwen2.5-vl")
    for part in (tiny.model, tiny.tokenizer, tiny.image_processor):
        part.save_pretrained(checkpoint)
    out = tmp_path / "baseline"
    argv = ["export", "--model", str(checkpoint), "--out", str(out), "--image-size", "224x224", "--no-luvc"]
    assert main(argv) == 0
    assert f"Exported {checkpoint}" in capsys.readouterr().out.replace("\n", "")
    manifest = ExportManifest.load(out)
    bucket = manifest.buckets["224x224"]
    assert manifest.luvc.spu_variant == "none" and manifest.luvc.oim_layers == ()
    assert bucket.budgets == (bucket.tokens_per_image,) * 4 and bucket.prune_layers == ()
    assert all(graph.node_prefixes == () for graph in manifest.graphs.values())

    adapter = load_model(checkpoint)
    adapter.apply_luvc(LUVCConfig.off())
    inputs = adapter.prepare_inputs([synthetic_image(224, 224, 1)], "Describe it.")
    with torch.no_grad():
        expected = greedy_generate(adapter.model, inputs, 8)
    pipeline = Pipeline(out)
    prepared = pipeline.preparer.from_arrays(inputs["input_ids"].numpy(), inputs["pixel_values"].numpy(), (224, 224))
    tokens, *_ = pipeline.greedy(prepared, 8)
    np.testing.assert_array_equal(tokens, expected.numpy())


def test_export_rejects_an_image_size_that_is_not_a_bucket(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["export", "--model", "tiny-qwen2-vl", "--out", str(out), "--image-size", "230x230"]) == 2
    assert "use --image-size 224x224" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_a_malformed_image_size(tmp_path, capsys):
    assert main(["export", "--model", "tiny-llava", "--out", str(tmp_path / "x"), "--image-size", "224"]) == 2
    assert "is not HxW" in capsys.readouterr().err


def test_image_size_takes_named_sets_beside_sizes():
    from luvc.cli.args.export import ExportArgs
    from luvc.cli.main import build_parser
    from luvc.export.buckets import BucketSet

    parser, _ = build_parser(["export"])
    args = parser.parse_args(
        [
            "export",
            "--model",
            "m",
            "--out",
            "o",
            "--image-size",
            "aspects:672",
            "--image-size",
            "224x224",
            "--image-size",
            "cameras",
        ]
    )
    group = ExportArgs()
    group.parse(args)
    assert group.profile.image_sizes == (BucketSet("aspects", 672), (224, 224), BucketSet("cameras"))


@pytest.mark.parametrize("command", ["export", "calibrate"])
@pytest.mark.parametrize("out", [".", "..", "ABSOLUTE"])
def test_out_as_the_folder_the_command_runs_in_is_refused_before_any_work(
    command, out, exports, tmp_path, capsys, monkeypatch
):
    """Issue 77: `--out . --overwrite` exported the whole model, then failed with a traceback ('Device or resource
    busy') and left the result hidden inside the folder."""
    import shutil

    from tests.conftest import one_line_error

    here = shutil.copytree(exports("tiny-llava"), tmp_path / "outer" / "export")
    monkeypatch.chdir(here)
    before = sorted(path.name for path in tmp_path.rglob("*"))
    target = str(here) if out == "ABSOLUTE" else out
    if command == "export":
        argv = ["export", "--model", "tiny-llava", "--out", target, "--overwrite"]
    else:
        argv = ["calibrate", str(exports("tiny-llava")), "--out", target, "--overwrite", "--precision", "int8w"]
    if out == "..":  # not an export: refused as such, before the working-folder check
        assert "is not an export (no luvc-export manifest.json in it)" in one_line_error(argv, capsys)
    else:
        error = one_line_error(argv, capsys)
        assert "is the folder this command runs in, which --overwrite would replace under your shell" in error
        assert f"(cd {tmp_path / 'outer'}) and pass --out export" in error
    assert sorted(path.name for path in tmp_path.rglob("*")) == before
