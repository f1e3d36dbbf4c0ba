import re
import subprocess
import sys

import numpy as np
from PIL import Image

from luvc.cli.main import main
from luvc.images import synthetic_image
from luvc.prompt import Conversation, Turn
from luvc.runtime.pipeline import GenerationOptions, Pipeline
from tests import generation_cases as shared
from tests.conftest import FIT_CASES, fit_case, write_clip

STARTUP_ROW = "start to ready (process start to sessions loaded)"


def _table_rows(out: str) -> dict[str, str]:
    """The stage -> value rows of the timing table ``run`` prints (rich's box characters)."""
    return {stage.strip(): value.strip() for stage, value in re.findall(r"^│ (.+?)│(.+?)│$", out, re.MULTILINE)}


def test_run_prints_the_text_and_a_timing_table_of_this_request(exports, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row a line
    folder = exports("tiny-qwen2-vl")
    assert main(["run", str(folder), "--prompt", "Describe it.", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    pipeline = Pipeline(folder)
    expected = pipeline.generate(synthetic_image(224, 224), "Describe it.", GenerationOptions(4))
    assert out.startswith(f"Output: {expected.texts[0]}\n")
    rows = _table_rows(out)
    assert rows["bucket"] == "224x224"
    assert rows["KV cache after the prompt"] == f"{expected.timings.kv_cache_bytes:,} bytes"
    assert rows["decode"].endswith(f"({expected.tokens.shape[1]} tokens)")
    prompt_tokens = pipeline.prepare([synthetic_image(224, 224)], ["Describe it."]).input_ids.shape[1]
    prefill_ms, prefill_graph = rows["prefill (embed + LLM)"].split(" ms ", 1)
    assert prefill_graph == f"(prefill_224x224, {prompt_tokens} tokens)"  # the CPU runs a prompt at its own length
    timed = {"vision": float(rows["vision"].removesuffix(" ms")), "prefill": float(prefill_ms)}
    assert all(ms > 0 for ms in timed.values())
    assert float(rows["time to first token"].removesuffix(" ms")) >= sum(timed.values())
    assert rows["KV cache buffers (capacity, as `plan`)"] == f"{pipeline.sessions.kv_cache(1).capacity_bytes():,} bytes"
    assert "CPUExecutionProvider" in out
    assert "Input: no --image or --video given, so a built-in synthetic scene" in out  # said, not silent
    since_start, sessions = re.fullmatch(r"([\d.]+) s \(sessions ([\d.]+) s\)", rows[STARTUP_ROW]).groups()
    assert float(since_start) >= float(sessions) >= 0


def test_seconds_since_start_counts_from_the_process_start():
    """The 'start to ready' row counts the interpreter's own start and imports, not only the CLI's work."""
    script = "import time; time.sleep(1.5); from luvc import startup; print(startup.seconds_since_start())"
    seconds = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert 1.5 <= seconds < 30


def test_run_streams_the_text_that_generate_returns(exports, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one table row a line
    folder = exports("tiny-llava")
    argv = ["run", str(folder), "--prompt", "hi", "--max-new-tokens", "6"]
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert main([*argv, "--preprocessing", "processor"]) == 0
    by_processor = capsys.readouterr().out
    expected = Pipeline(folder).generate(synthetic_image(224, 224), "hi", GenerationOptions(6)).texts[0]
    assert plain.startswith(f"Output: {expected}\n") and streamed.startswith(f"Output: {expected}\n")
    assert by_processor.startswith(f"Output: {expected}\n")
    assert "\r" not in streamed and "time to first token" in streamed
    assert "ms (on the device from 8-bit pixels)" in plain
    assert "ms (by the transformers image processor)" in by_processor


def test_run_with_a_system_prompt_and_text_only(exports, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    folder = exports("tiny-qwen2-vl")
    pipeline = Pipeline(folder)
    argv = ["run", str(folder), "--prompt", "Describe it.", "--system", "Be brief.", "--max-new-tokens", "5"]
    assert main(argv) == 0
    conversation = Conversation((Turn("system", "Be brief."), Turn("user", "Describe it.", visual=True)))
    expected = pipeline.generate(synthetic_image(224, 224), conversation, GenerationOptions(5)).texts[0]
    assert capsys.readouterr().out.startswith(f"Output: {expected}\n")
    assert main([*argv, "--text-only"]) == 0
    out = capsys.readouterr().out
    text_only = Conversation((Turn("system", "Be brief."), Turn("user", "Describe it.")))
    assert out.startswith(f"Output: {pipeline.generate(None, text_only, GenerationOptions(5)).texts[0]}\n")
    assert _table_rows(out)["bucket"] == "text" and "the text prefill ran" in out
    assert main(["run", str(folder), "--prompt", "Hi", "--text-only", "--image", "x.png"]) == 2
    assert "--text-only sends no image or video" in capsys.readouterr().err


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
    # 2 frames a second of a 3-second clip: 6 frames, fitted to the 8-frame bucket, or refused with --fit exact
    assert main(["run", export, "--prompt", "What moves?", "--video", clip]) == 0
    assert "6 frames resampled to 8" in capsys.readouterr().out
    assert main(["run", export, "--prompt", "What moves?", "--video", clip, "--fit", "exact"]) == 2
    buckets = "['224x224', '224x224+8x112x168', '8x112x168']"
    assert f"6x112x168 is outside this export's profile (buckets: {buckets})" in capsys.readouterr().err


def test_run_fits_an_image_of_any_size_to_a_bucket_and_says_so(exports, tmp_path, capsys):
    """Each image lands in the bucket worked out by hand, and the answer is the one for the image resized by hand."""
    export = exports("tiny-qwen2-vl")
    reference = Pipeline(export, fit="exact")
    for index, (size, bucket) in enumerate(FIT_CASES):
        image, by_hand = fit_case(size, bucket, seed=index)
        path = tmp_path / f"{index}.png"
        image.save(path)
        assert main(["run", str(export), "--prompt", "Describe.", "--image", str(path), "--max-new-tokens", "4"]) == 0
        out = capsys.readouterr().out
        expected = reference.generate(by_hand, "Describe.", GenerationOptions(4)).texts[0]
        assert out.startswith(f"Output: {expected}\n"), size
        change = f"resized to {bucket}" if by_hand is not image else "nothing (the processor's own size is the bucket)"
        assert f"Fit (nearest) to bucket {bucket}: " in out and change in out, out
        assert "synthetic scene" not in out  # the image given


def test_run_turns_a_phone_photo_upright_and_says_so(exports, tmp_path, capsys):
    """A portrait photo stored on its side (EXIF orientation 6) is run upright: --fit exact accepts it at the bucket's
    size, and the fit line says what was done."""
    from PIL import Image

    upright = synthetic_image(168, 252, seed=4)  # 252 wide, 168 tall: bucket 168x252 of the export
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    argv = ["run", str(exports("tiny-qwen2-vl")), "--prompt", "Describe.", "--image", str(path), "--fit", "exact"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "Fit (exact) to bucket 168x252: turned upright: rotated 90° clockwise per its EXIF orientation" in out


def test_run_says_it_took_the_first_frame_of_an_animated_gif(exports, tmp_path, capsys):
    frames = [synthetic_image(168, 252, seed=seed) for seed in range(3)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    argv = ["run", str(exports("tiny-qwen2-vl")), "--prompt", "Describe.", "--image", str(path), "--fit", "exact"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "Fit (exact) to bucket 168x252: the first of 3 frames of an animated GIF (to run them all, save" in out


def test_run_pads_with_fit_pad(exports, tmp_path, capsys):
    export = exports("tiny-qwen2-vl")
    image = synthetic_image(480, 640, 5)  # 4:3 -> inside the 168x252 bucket at 168x224, bars of 14 px each side
    path = tmp_path / "wide.png"
    image.save(path)
    argv = ["run", str(export), "--prompt", "Describe.", "--image", str(path), "--max-new-tokens", "4", "--fit", "pad"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    mean = tuple(round(255 * m) for m in (0.48145466, 0.4578275, 0.40821073))  # Qwen-VL's image mean
    by_hand = Image.new("RGB", (252, 168), mean)
    by_hand.paste(image.resize((224, 168), Image.Resampling.BICUBIC), (14, 0))
    expected = Pipeline(export, fit="exact").generate(by_hand, "Describe.", GenerationOptions(4)).texts[0]
    assert out.startswith(f"Output: {expected}\n") and "scaled to 168x224 and padded to 168x252" in out
    assert not np.array_equal(np.asarray(by_hand), np.asarray(image.resize((252, 168))))


def test_run_ends_at_the_length_or_stop_string_and_applies_the_penalty_as_the_loop_does(exports, capsys, tmp_path):
    """The generation cases every front end shares (tests.generation_cases), one ``run`` each."""
    folder = exports("tiny-qwen2-vl")
    reference = shared.Reference.of(Pipeline(folder))
    shared.image().save(tmp_path / "image.png")
    argv = ["run", str(folder), "--image", str(tmp_path / "image.png"), "--prompt", shared.PROMPT]
    for case in reference.cases():
        flags = ["--max-new-tokens", str(case.max_new_tokens), "--presence-penalty", str(case.presence_penalty)]
        for stop in case.stop:
            flags += ["--stop", stop]
        assert main([*argv, *flags]) == 0
        out = capsys.readouterr().out
        text = out.split("\n", 1)[0].removeprefix("Output: ")
        reason = re.search(r"^Finish reason: (\w+) ", out, re.MULTILINE).group(1)
        reference.check(case, shared.Answer(text, reason))


def test_run_refuses_stop_strings_the_server_refuses(exports, capsys):
    argv = ["run", str(exports("tiny-llava")), "--prompt", "hi"]
    assert main([*argv, *[flag for stop in "abcde" for flag in ("--stop", stop)]]) == 2
    assert capsys.readouterr().err.strip() == "error: stop has 5 strings; give at most 4."


def test_run_says_whether_it_replays_cuda_graphs_and_refuses_on_without_a_gpu(exports, capsys):
    """--cuda-graphs reaches the pipeline: on the CPU the default runs plain and says so in one line; `on` asks for a
    CUDA device and is refused with one line (exit 2)."""
    folder = str(exports("tiny-qwen2-vl"))
    assert main(["run", folder, "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert "CUDA graphs: off (cpu runs no CUDA graphs)\n" in capsys.readouterr().out
    assert main(["run", folder, "--prompt", "hi", "--cuda-graphs", "on"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs on replays CUDA graphs, which need a CUDA device; it runs on cpu." in err
    assert err.count("\n") == 1


def test_terminal_safe_escapes_what_a_terminal_acts_on():
    from luvc.cli.run import terminal_safe

    assert terminal_safe("a\x11b\rc\x1b[31md") == "a\\x11b\\rc\\x1b[31md"
    assert terminal_safe("line\nnext\ttab é 中") == "line\nnext\ttab é 中"  # printable text as it is
    assert terminal_safe("\u202eevil") == "\\u202eevil"  # a right-to-left override


def test_run_on_a_terminal_shows_control_characters_escaped_and_a_pipe_gets_them_raw(exports):
    """The tiny models' byte-level tokenizer writes control bytes (^Q, ^M, ...), as a real model may write an escape
    sequence: on a terminal they are shown escaped, with a note; the text itself is what generate returns."""
    import os
    import pty
    import tty

    from luvc.cli.run import ESCAPED_NOTE, terminal_safe

    folder = exports("tiny-qwen2-vl")
    text = Pipeline(folder).generate(synthetic_image(224, 224), "Hi", GenerationOptions(16)).texts[0]
    assert terminal_safe(text) != text  # this prompt's answer holds characters a terminal acts on
    argv = [sys.executable, "-m", "luvc.cli.main", "run", str(folder), "--prompt", "Hi", "--max-new-tokens", "16"]
    piped = subprocess.run(argv, capture_output=True, check=True).stdout.decode()  # bytes: no newline translation
    assert piped.startswith(f"Output: {text}\n") and ESCAPED_NOTE not in piped

    leader, follower = pty.openpty()
    tty.setraw(follower)  # no newline translation: the bytes as written
    process = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(timeout=300) == 0
    os.close(leader)
    output = shown.decode()
    answer = output[output.index("Output: ") :].split("\n", 1)[0]  # after the spinners a terminal gets
    assert answer == f"Output: {terminal_safe(text)}"
    assert f"({ESCAPED_NOTE})" in output


def test_run_on_openvino_says_what_it_computes_in_and_why_and_answers_as_the_pipeline(exports, capsys, monkeypatch):
    from luvc.runtime.openvino_graph import choose_precision, new_core

    monkeypatch.setenv("COLUMNS", "200")
    folder = exports("tiny-qwen2-vl")
    argv = ["run", str(folder), "--prompt", "Describe it.", "--max-new-tokens", "4", "--backend", "openvino"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = Pipeline(folder, backend="openvino").generate(
        synthetic_image(224, 224), "Describe it.", GenerationOptions(4)
    )
    assert out.startswith(f"Output: {expected.texts[0]}\n")
    chosen = choose_precision(new_core())
    assert f"on openvino {chosen.precision} ({chosen.reason}), cpu" in out  # what it chose and why
    assert _table_rows(out)["weights in memory"].startswith("each compiled graph its own copy")
    assert main([*argv, "--openvino-precision", "f32"]) == 0
    assert "on openvino f32 (as asked), cpu" in capsys.readouterr().out


def test_openvino_options_that_cannot_apply_are_refused_in_one_line(exports, capsys, tmp_path):
    folder = str(exports("tiny-qwen2-vl"))
    assert main(["run", folder, "--prompt", "hi", "--openvino-precision", "f32"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --openvino-precision applies to --backend openvino; add it, or drop --openvino-precision."
    )
    assert main(["run", folder, "--prompt", "hi", "--backend", "openvino", "--device", "cuda:0"]) == 2
    assert "The OpenVINO backend runs on the CPU" in capsys.readouterr().err
    assert main(["triton", folder, "--out", str(tmp_path / "repo"), "--backend", "openvino", "--gpus", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --backend openvino runs on the CPU; drop --gpus, or use --backend ort/trt for GPU instances."
    )
    assert not (tmp_path / "repo").exists()
