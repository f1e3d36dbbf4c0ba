from luvc.cli.main import main
from luvc.images import synthetic_image
from luvc.runtime.pipeline import Pipeline
from tests.conftest import write_clip


def test_run_prints_text_and_timings(exports, capsys):
    assert main(["run", str(exports("tiny-qwen2-vl")), "--prompt", "Describe it.", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    for label in (
        "Output:",
        "vision",
        "prefill",
        "time to first token",
        "tokens/s",
        "KV cache",
        "CPUExecutionProvider",
    ):
        assert label in out


def test_run_streams_the_text_that_generate_returns(exports, capsys):
    folder = exports("tiny-llava")
    argv = ["run", str(folder), "--prompt", "hi", "--max-new-tokens", "6"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--stream"]) == 0
    streamed = capsys.readouterr().out
    expected = Pipeline(folder).generate(synthetic_image(224, 224), "hi", max_new_tokens=6).texts[0]
    assert plain.startswith(f"Output: {expected}\n") and streamed.startswith(f"Output: {expected}\n")
    assert "\r" not in streamed and "time to first token" in streamed


def test_run_on_a_video_file(video_exports, capsys, tmp_path):
    clip = str(write_clip(tmp_path / "clip.mp4", frames=30, size=(112, 168)))
    export = str(video_exports("tiny-qwen2.5-vl"))
    assert (
        main(
            ["run", export, "--prompt", "What moves?", "--max-new-tokens", "3", "--video", clip, "--video-frames", "8"]
        )
        == 0
    )
    assert "Output: " in capsys.readouterr().out
    image = tmp_path / "image.png"
    synthetic_image(224, 224).save(image)
    argv = ["run", export, "--prompt", "Same scene?", "--max-new-tokens", "3", "--image", str(image), "--video", clip]
    assert main([*argv, "--video-frames", "8"]) == 0  # the mixed bucket 224x224+8x112x168
    assert "Output: " in capsys.readouterr().out
    # 2 frames a second of a 3-second clip: 6 frames, not a bucket
    assert main(["run", export, "--prompt", "What moves?", "--video", clip]) == 2
    buckets = "['224x224', '224x224+8x112x168', '8x112x168']"
    assert f"6x112x168 is outside this export's profile (buckets: {buckets})" in capsys.readouterr().err
