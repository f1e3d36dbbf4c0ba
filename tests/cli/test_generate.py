import inspect
import re

import pytest

from luvc.cli import args as args_module
from luvc.cli.args.base import BaseArgs
from luvc.cli.main import main
from luvc.images import synthetic_image
from tests.conftest import write_clip


def test_generate_prints_text_and_token_tables(capsys):
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "What is here?", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "Output:" in out and "decoder layer 3" in out and "LLM prefill GFLOPs" in out
    row = re.search(r"decoder layer 3\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert row and int(row.group(1)) == 0 and int(row.group(2)) > 0


@pytest.mark.parametrize("method", ["fastv", "visionzip", "oim-only"])
def test_generate_runs_another_method_and_names_it(capsys, method):
    argv = ["generate", "--model", "tiny-internvl", "--prompt", "hi", "--method", method, "--max-new-tokens", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"(method {method})" in out
    assert re.search(rf"┃ stage\s*┃\s*{method}\s*┃ uncompressed ┃", out) and "LUVC" not in out  # its own column
    rows = re.findall(r"decoder layer (\d)\s*│\s*(\d+)\s*│\s*(\d+)", out)
    visual = [int(kept) for _, kept, _ in rows]
    assert visual[-1] == (visual[0] if method == "oim-only" else 0)  # only oim-only keeps tokens to the last layer


def test_generate_without_luvc_keeps_every_token(capsys):
    assert main(["generate", "--model", "tiny-llava", "--prompt", "hi", "--no-luvc", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"decoder layer 3\s*│\s*(\d+)\s*│\s*(\d+)", out)
    assert row and row.group(1) == row.group(2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budgets", "10,20,0"], "must not increase"),
        (["--oim-layers", "9"], "outside the encoder"),
        (["--image", "/nonexistent.png"], "does not exist"),
        (["--option", "rho"], "KEY=VALUE"),
    ],
)
def test_generate_errors_name_the_fix(capsys, extra, message):
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", *extra]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_generate_on_a_video_file_merges_in_time(capsys, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=20, size=(112, 168))
    argv = ["generate", "--model", "tiny-qwen2.5-vl", "--prompt", "What moves?", "--video", str(clip)]
    options = ["--video-frames", "8", "--oim-layers", "0", "--option", "oim_temporal=true", "--option"]
    assert main([*argv, *options, "oim_first_axis=T", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    # 8 frames: 4 temporal slices of 8 x 12 patches; the T merge after block 0 halves the slices
    assert re.search(r"encoder block 1\s*│\s*192\s*│\s*384", out), out
    assert re.search(r"decoder layer 0\s*│\s*48\s*│\s*96", out), out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--video-frames", "4"], "pass --video PATH too"),
        (["--video", "/nonexistent.mp4"], "does not exist"),
        (["--video", "CLIP", "--image", "CLIP"], "Cannot read"),  # a clip is no image
        (["--video", "CLIP", "--video-frames", "400"], "the video has 20 frames; sample between 1 and 20"),
    ],
)
def test_video_errors_name_the_fix(capsys, tmp_path, extra, message):
    clip = str(write_clip(tmp_path / "clip.mp4", frames=20))
    argv = ["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", *(clip if a == "CLIP" else a for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and len(err.strip().splitlines()) == 1


def test_generate_on_an_image_and_a_video_in_one_prompt(capsys, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=8, size=(112, 168))
    image = tmp_path / "image.png"
    synthetic_image(224, 224).save(image)
    argv = ["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", "--image", str(image), "--video", str(clip)]
    assert main([*argv, "--video-frames", "8", "--no-luvc", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out  # 64 image tokens and 96 video tokens reach the LLM
    assert re.search(r"decoder layer 0\s*│\s*160\s*│\s*160", out), out


def test_generate_on_a_qwen3_vl_video(capsys, tmp_path):
    clip = str(write_clip(tmp_path / "clip.mp4", frames=8))  # 64x96: 4 slices of 4 x 6 patches of 16 px
    assert main(["generate", "--model", "tiny-qwen3-vl", "--prompt", "hi", "--video", clip, "--video-frames", "8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"decoder layer 0\s*│\s*16\s*│\s*24", out), out  # W merge: 4 slices of 2 x 2 units


def test_unreadable_image(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", "--image", str(bad)]) == 2
    assert "Cannot read" in capsys.readouterr().err


def test_argument_group_docstrings():
    groups = [obj for _, obj in inspect.getmembers(args_module, inspect.isclass) if issubclass(obj, BaseArgs)]
    assert len(groups) >= 2
    for group in groups:
        if group is BaseArgs:
            continue
        doc = inspect.getdoc(group)
        assert re.match(r"^\w[\w ]*: \S", doc), group
        assert "Depends on:" in doc, group


def test_generate_refuses_cuda_graphs_on_where_pytorch_runs_on_the_cpu(capsys):
    assert main(["generate", "--model", "tiny-qwen2-vl", "--prompt", "hi", "--cuda-graphs", "on"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs on replays CUDA graphs, which need a CUDA device; it runs on cpu." in err


def test_generate_with_pan_and_scan_takes_a_wide_images_crops_on_gemma3_only(capsys, tmp_path):
    image = tmp_path / "wide.png"
    synthetic_image(400, 1000).save(image)  # Gemma 3's processor: its view and 3 crops of 334 x 400
    argv = ["generate", "--model", "tiny-gemma3", "--prompt", "hi", "--image", str(image), "--max-new-tokens", "2"]
    assert main([*argv, "--no-luvc"]) == 0
    assert re.search(r"decoder layer 0\s*│\s*16\s*│\s*16", capsys.readouterr().out)  # one view of 16 tokens
    assert main([*argv, "--no-luvc", "--pan-and-scan"]) == 0
    assert re.search(r"decoder layer 0\s*│\s*64\s*│\s*64", capsys.readouterr().out)  # four views
    assert main([*argv[:2], "tiny-llava", *argv[3:], "--pan-and-scan"]) == 2
    err = capsys.readouterr().err
    assert "tiny-llava has no pan-and-scan crops (Gemma 3 has); leave pan-and-scan off for it." in err
