"""Artifacts survive kills and concurrent runs; every bad input gets one line naming the fix, exit code 2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from luvc.cli.main import TOOLS, main
from luvc.engines.manifest import EngineManifest
from luvc.export.manifest import ExportManifest
from luvc.models import load_model
from tests.conftest import leftovers, one_line_error, png_header

CLI = [sys.executable, "-m", "luvc.cli.main"]


def _wait_for(predicate, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _export_argv(out: Path, model: str = "tiny-qwen2-vl") -> list[str]:
    return ["export", "--model", model, "--out", str(out), "--image-size", "224x224"]


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


@pytest.mark.slow
def test_two_exports_to_one_folder_one_wins_and_the_export_is_intact(tmp_path):
    out = tmp_path / "export"
    first = subprocess.Popen([*CLI, *_export_argv(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / ".export.lock").exists(), first)
    second = subprocess.run([*CLI, *_export_argv(out)], capture_output=True, text=True, timeout=300)
    _, first_errors = first.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 2)
    assert "torchvision" not in first_errors  # torch.onnx's registry warnings stay out of an export's output
    assert f"{out} is being written by another luvc-export run (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    ExportManifest.load(out, verify=True)  # every file present with its hash
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_killed_export_leaves_a_partial_folder_that_the_next_run_removes(tmp_path, capsys):
    out = tmp_path / "export"
    run = subprocess.Popen([*CLI, *_export_argv(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: bool(_partials(out)), run)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    (stale,) = _partials(out)
    assert not out.exists()
    assert main(_export_argv(out)) == 0
    assert f"removed {stale}, a partial folder left by an interrupted run (pid {run.pid})" in capsys.readouterr().err
    ExportManifest.load(out, verify=True)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_leave_nothing_and_say_so_in_one_line(signum, tmp_path):
    out = tmp_path / "export"
    run = subprocess.Popen([*CLI, *_export_argv(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(_partials(out)), run)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted; nothing was written to {out}"
    assert not out.exists() and leftovers(tmp_path) == []


# a 1x1 GIF of 37 bytes
TINY_GIF = bytes.fromhex("4749463839610100010080000000000000ffffff2c00000000010001000002024401003b")


def checkpoint_with_template(folder: Path, template: bytes) -> str:
    adapter = load_model("tiny-qwen2-vl")
    for part in (adapter.model, adapter.tokenizer, adapter.image_processor):
        part.save_pretrained(folder)
    (folder / "chat_template.jinja").write_bytes(template)
    return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_exits_130_and_leaves_nothing(signum, exports, tmp_path):
    out = tmp_path / "engines"
    argv = [*CLI, "build", str(exports("tiny-qwen2-vl")), "--target", "ampere", "--out", str(out)]
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(_partials(out)), run)
    time.sleep(1.0)  # inside TensorRT's build of the first engine
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "failed to build" not in err
    assert err.strip().splitlines()[-1] == f"interrupted; nothing was written to {out}"
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, exports):
    """Paths the bad-input table refers to: an export, engine folders (fake, real, truncated, of another export),
    broken checkpoints and chat templates, hostile images, a prompts file."""
    root = tmp_path_factory.mktemp("bad-inputs")
    engines = root / "engines"
    engines.mkdir()
    (engines / "manifest.json").write_text(json.dumps({"format": "luvc-export/engines", "format_version": 1}))
    not_json = root / "not-json"
    not_json.mkdir()
    (not_json / "config.json").write_text("{ this is not json")
    (not_json / "model.safetensors").write_bytes(b"")
    truncated = root / "truncated"
    adapter = load_model("tiny-llava")
    adapter.model.save_pretrained(truncated)
    adapter.tokenizer.save_pretrained(truncated)
    adapter.image_processor.save_pretrained(truncated)
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "prompts.txt").write_text("What is this?\n")
    (root / "one-image").mkdir()
    Image.new("RGB", (224, 224), (90, 120, 150)).save(root / "one-image" / "a.png")
    (root / "long-prompts.txt").write_text("word " * 3000 + "\n")  # 512 text tokens fit the export
    (root / "latin1-prompts.txt").write_bytes("Qu'est-ce que c'est, café?\n".encode("latin-1"))
    os.mkfifo(root / "a-fifo")
    (root / "loop.png").symlink_to(root / "loop.png")  # a link to itself
    (root / "a-folder").mkdir()
    (root / "a-file.txt").write_text("not a folder")
    (root / "huge.png").write_bytes(png_header(30000, 30000))
    (root / "big.png").write_bytes(png_header(12000, 12000))
    Image.new("RGB", (5000, 20)).save(root / "wide.png")
    Image.new("RGB", (1, 1)).save(root / "dot.png")
    (root / "tiny.gif").write_bytes(TINY_GIF)
    broken = checkpoint_with_template(root / "broken-template", b"{% for m in messages %}{{ m.content[ }}")
    text_only = b"{% for m in messages %}{{ m.role }}: {% for c in m.content %}{{ c.text }}{% endfor %}{% endfor %}"
    no_image = checkpoint_with_template(root / "no-image-template", text_only)
    export = exports("tiny-qwen2-vl")
    from luvc.engines.builder import build_engines

    built = build_engines(export, "ampere", root / "built", module="tensorrt_rtx", show_progress=False)
    cut = shutil.copytree(built, root / "truncated-engines")
    engine = cut / EngineManifest.load(cut).engines["decode"].file
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    export_copy = shutil.copytree(export, root / "export-copy")
    edited = shutil.copytree(export, root / "edited-export")
    manifest = json.loads((edited / "manifest.json").read_text())
    for bucket in manifest["buckets"].values():
        bucket["budgets"] = [bucket["budgets"][0]] * len(bucket["budgets"])  # what the graphs do not prune to
    (edited / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (root / "link-to-export").symlink_to(export_copy, target_is_directory=True)
    foreign = shutil.copytree(built, root / "foreign-engines")
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["engines"]["decode"]["source"]["sha256"] = "0" * 64  # as built from another export's decode graph
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    made = {
        "EXPORT": export,
        "ENGINES": engines,
        "BUILT": built,
        "TRUNCATED_ENGINES": cut,
        "FOREIGN_ENGINES": foreign,
        "BROKEN_TEMPLATE": broken,
        "NO_IMAGE_TEMPLATE": no_image,
        "NOT_JSON": not_json,
        "TRUNCATED": truncated,
        "EXPORT_COPY": export_copy,
        "EDITED_EXPORT": edited,
    }
    return {name: str(path) for name, path in made.items()} | {
        name: str(root / relative) for name, relative in ROOT_FILES.items()
    }


# the table's files and folders directly under the fixture's folder
ROOT_FILES = {
    "HUGE_PNG": "huge.png",
    "BIG_PNG": "big.png",
    "WIDE_PNG": "wide.png",
    "DOT_PNG": "dot.png",
    "TINY_GIF": "tiny.gif",
    "PROMPTS": "prompts.txt",
    "ONE_IMAGE": "one-image",
    "LONG_PROMPTS": "long-prompts.txt",
    "LATIN1_PROMPTS": "latin1-prompts.txt",
    "FIFO": "a-fifo",
    "LOOP_PNG": "loop.png",
    "FOLDER": "a-folder",
    "FILE_SUB": "a-file.txt/sub",
    "LINK_TO_EXPORT": "link-to-export",
}


# arguments of the table that are text, not paths; NOT_UTF8: the bytes b"caf\xe9" of a Latin-1 terminal, as Python
# hands a command line's undecodable bytes over (lone surrogates)
TEXTS = {"LONG_SYSTEM": "word " * 20000, "EMPTY": "", "NOT_UTF8": b"caf\xe9".decode("utf-8", "surrogateescape")}


BAD_INPUTS = [  # argv (OUT: a fresh output folder) -> what the one-line error must say
    ("export --model tiny-qwen2-vl --out OUT --image-size 0x0", "each side must be between 28 and 8192 pixels"),
    ("export --model tiny-qwen2-vl --out OUT --image-size 100000x100000", "each side must be between 28 and 8192"),
    ("export --model tiny-qwen2-vl --out OUT --image-size 224", "is not HxW"),
    ("export --model tiny-qwen2-vl --out OUT --max-new-tokens -2", "-2 is not an integer in [1, 32768]"),
    ("export --model tiny-qwen2-vl --out OUT --max-text-tokens 100000000", "is not an integer in [1, 32768]"),
    ("generate --model tiny-llava --prompt hi --max-new-tokens 0", "--max-new-tokens: 0 is not an integer >= 1"),
    ("export --model tiny-qwen2-vl --out OUT --no-luvc --budgets 4,2", "so --budgets would be ignored"),
    ("export --model tiny-qwen2-vl --out OUT --kv-update bogus", "argument --kv-update: invalid choice: 'bogus'"),
    ("export --model NOT_JSON --out OUT", "config.json is not valid JSON"),
    ("export --model TRUNCATED --out OUT", "a weight file is truncated or does not match config.json"),
    ("export --model FOLDER --out OUT", "has no config.json"),
    ("run EXPORT --prompt hi --max-new-tokens 0", "argument --max-new-tokens: 0 is not an integer >= 1"),
    ("run EXPORT --prompt hi --max-new-tokens 300 --stream", "must be between 1 and the export profile's 256"),
    ("run ENGINES --prompt hi", "is an engine folder (made by `luvc-export build`), not an export"),
    ("run EXPORT --prompt hi --image FOLDER", "is a folder, not an image"),
    ("run EXPORT --prompt hi --video FOLDER", "holds no frames"),
    ("export --model tiny-qwen2-vl --out OUT --video-size 8x224", "is not FRAMESxHxW, e.g. 16x448x448"),
    ("export --model tiny-llava --out OUT --video-size 8x224x224", "Leave out --video-size"),
    ("export --model tiny-qwen2-vl --out OUT --video-size 5x224x224", "use --video-size 6x224x224"),
    ("export --model tiny-qwen2-vl --out OUT --mixed-size 224x224", "is not HxW+FRAMESxHxW"),
    ("export --model tiny-llava --out OUT --mixed-size 224x224+8x224x224", "Leave out --mixed-size"),
    ("run EXPORT --prompt hi --device tpu", "is not a torch device; use cpu or cuda:N (--device)"),
    ("run EXPORT --prompt hi --device meta", "is not supported; use cpu or cuda:N (--device)"),
    ("parity EXPORT --prompts PROMPTS --out OUT", "--prompts pairs prompts with the images of --data"),
    ("parity EXPORT --num-samples 0 --out OUT", "--num-samples 0: ask for at least 1 sample"),
    ("run EXPORT --prompt hi --providers Bogus", "ONNX Runtime here has no ['Bogus']"),
    ("calibrate EXPORT --prompts PROMPTS --out OUT", "--prompts pairs prompts with the images of --data"),
    ("build EXPORT --target ampere --out OUT --bogus", "unrecognized arguments: --bogus"),
    ("build ENGINES --target ampere --out OUT", "is an engine folder (made by `luvc-export build`), not an export"),
    ("inspect FOLDER", "has no manifest.json; it is not a finished export"),
    (
        "export --model tiny-qwen2-vl --out OUT --method fastv",
        "fastv ranks by a decoder layer's attention probabilities",
    ),
    ("export --model tiny-llava --out OUT --method visionzip", "so it runs in PyTorch only (luvc-export generate"),
    ("export --model tiny-qwen2-vl --out OUT --method dart --plugin-nodes", "export dart without --plugin-nodes"),
    ("export --model tiny-qwen2-vl --out OUT --method spu-only --oim-layers 0", "does not merge in the encoder"),
    ("eval --model tiny-qwen2-vl --data FOLDER --out OUT", "has no questions.jsonl"),
    ("eval --data FOLDER --export EXPORT --ratios 0.5 --out OUT", "so --ratios would be ignored"),
    # issue 37: the reconstruction's options, the peers, the sweep and the protocol
    ("eval --data FOLDER --export EXPORT --sweep --out OUT", "so --sweep would be ignored"),
    ("eval --data FOLDER --model tiny-qwen2-vl --sweep keep,colour --out OUT", "['colour'] is not among"),
    ("eval --data FOLDER --model tiny-qwen2-vl --sweep --oim-layers 0 --out OUT", "--sweep oim chooses the OIM steps"),
    ("eval --data FOLDER --model tiny-qwen2-vl --sweep --spu channel-spectrum --out OUT", "--sweep lowpass tries"),
    ("eval --data FOLDER --model tiny-qwen2-vl --protocol unipruning --ratios 0.5 --out OUT", "sets the budget points"),
    ("eval --data FOLDER --model tiny-qwen2-vl --protocol bogus --out OUT", "invalid choice: 'bogus'"),
    ("export --model tiny-qwen2-vl --out OUT --method pdrop", "pdrop ranks by decoder layers' attention"),
    ("export --model tiny-qwen2-vl --out OUT --method todre", "todre's first cut is a greedy loop"),
    ("export --model tiny-qwen2-vl --out OUT --option spu_keep=middle", "spu_keep='middle' is not one of"),
    ("export --model tiny-qwen2-vl --out OUT --method dart --option spu_keep=low", "change how SPU scores tokens"),
    (
        "export --model tiny-qwen2-vl --out OUT --spu channel-spectrum --option spu_lowpass=grid",
        "spectral-residual low-pass",
    ),
    (
        "export --model tiny-qwen2-vl --out OUT --option spu_input=normed --plugin-nodes",
        "exports without --plugin-nodes",
    ),
    # round 2: --overwrite never replaces the command's input or a folder that is not an output of the same kind
    ("parity EXPORT --out EXPORT --overwrite", "overlaps this command's input"),
    ("triton EXPORT --out EXPORT --overwrite", "overlaps this command's input"),
    ("calibrate EXPORT --out EXPORT --overwrite", "overlaps this command's input"),
    ("build EXPORT --target ampere --out EXPORT --overwrite", "overlaps this command's input"),
    ("parity EXPORT --engines BUILT --out BUILT --overwrite", "overlaps this command's input"),
    ("eval --data FOLDER --model tiny-qwen2-vl --out FOLDER --overwrite", "overlaps this command's input"),
    (
        "export --model tiny-qwen2-vl --out FOLDER --overwrite",
        "is not an export (no luvc-export manifest.json in it), so --overwrite will not replace it",
    ),
    ("parity EXPORT --out FOLDER --overwrite", "is not a parity report (no luvc-export parity.json in it)"),
    ("build EXPORT --target ampere --out FOLDER --overwrite", "is not an engine folder (no luvc-export manifest.json"),
    ("triton EXPORT --out BUILT --overwrite", "is an engine folder, not a Triton model repository"),
    # Triton: names that become paths, GPUs, engines
    ("triton EXPORT --out OUT --model-name ../escaped", "'../escaped' is not a Triton model name"),
    ("triton EXPORT --out OUT --model-name=", "'' is not a Triton model name"),
    ('triton EXPORT --out OUT --model-name "luvc"', "'\"luvc\"' is not a Triton model name"),
    ("triton EXPORT --out OUT --gpus -1", "--gpus -1: give distinct GPU ids >= 0"),
    ("triton EXPORT --out OUT --gpus 0,0", "--gpus 0,0: give distinct GPU ids >= 0"),
    ("triton EXPORT --out OUT --instances 0", "argument --instances: 0 is not an integer >= 1"),
    ("triton EXPORT --out OUT --backend trt --gpus 0 --engines FOLDER", "has no manifest.json; it is not a finished"),
    ("triton EXPORT --out OUT --backend trt --gpus 0 --engines FOREIGN_ENGINES", "was built from another export"),
    ("triton EXPORT --out OUT --backend trt --gpus 0 --engines TRUNCATED_ENGINES", "is truncated or padded"),
    ("triton EXPORT --out OUT --engines BUILT", "--engines are TensorRT engines; pass --backend trt with them"),
    # images: checked from the header, before decoding
    ("run EXPORT --prompt hi --image HUGE_PNG", "has more than 67 MP, the most an image may have; downscale it"),
    ("run EXPORT --prompt hi --image BIG_PNG", "is 12000x12000 (144 MP), more than the 67 MP an image may have"),
    ("run EXPORT --prompt hi --image WIDE_PNG", "is 5000x20, an aspect ratio beyond 200:1 that no model takes"),
    ("generate --model tiny-llava --prompt hi --image WIDE_PNG", "an aspect ratio beyond 200:1"),
    ("generate --model tiny-qwen2-vl --prompt hi --image HUGE_PNG", "has more than 67 MP"),
    ("run EXPORT --prompt hi --image DOT_PNG", "is 1x1; an image needs at least 8 pixels a side"),
    ("run EXPORT --prompt hi --image TINY_GIF", "is 1x1; an image needs at least 8 pixels a side"),
    # numbers: finite and in range before any work
    ("run EXPORT --prompt hi --temperature nan", "Sampling needs a finite temperature >= 0"),
    ("run EXPORT --prompt hi --temperature inf", "got temperature=inf, top_k=0, top_p=1.0"),
    ("run EXPORT --prompt hi --top-p 0", "and 0 < top_p <= 1; got temperature=0.0, top_k=0, top_p=0.0"),
    ("run EXPORT --prompt hi --seed 100000000000000000000000", "seed=100000000000000000000000 must be an integer"),
    ("run EXPORT --prompt hi --seed -1", "seed=-1 must be an integer between 0 and 9223372036854775807"),
    ("run EXPORT --prompt hi --video FOLDER --video-fps 1e9", "1e9 is not a finite number in (0, 240]"),
    ("run EXPORT --prompt hi --video FOLDER --video-fps nan", "nan is not a finite number in (0, 240]"),
    ("generate --model tiny-qwen2-vl --prompt hi --video FOLDER --video-fps inf", "inf is not a finite number"),
    ("run EXPORT --prompt hi --video FOLDER --video-frames 0", "--video-frames: 0 is not an integer >= 1"),
    ("calibrate EXPORT --decode-steps 0 --out OUT", "argument --decode-steps: 0 is not an integer >= 1"),
    ("calibrate EXPORT --decode-steps 256 --out OUT", "calibrate the decode graph on 1 to 255 steps per sample"),
    ("plan EXPORT --target nan", "Target 'nan' is neither a device"),
    ("plan EXPORT --target inf", "Target 'inf' is neither a device"),
    ("plan EXPORT --target orin-8gb --engines TRUNCATED_ENGINES", "is truncated or padded"),
    ("plan EXPORT --target orin-8gb --engines FOREIGN_ENGINES", "was built from another export"),
    ("export --model tiny-qwen2-vl --out OUT --option seed=-1", "seed must be an integer between 0 and"),
    ("export --model tiny-qwen2-vl --out OUT --option rho=nan", "rho must be in (0, 1), got nan"),
    ("export --model tiny-qwen2-vl --out OUT --option spu_start=-1", "spu_start must be an integer >= 0, got -1"),
    ("export --model tiny-qwen2-vl --out OUT --max-batch 0", "argument --max-batch: 0 is not an integer in [1, 256]"),
    ("export --model tiny-qwen2-vl --out OUT --jobs 0", "argument --jobs: 0 is not an integer in [1, 64]"),
    (
        "export --model tiny-qwen2-vl --out OUT --spu none --budgets 8",
        "spu_variant 'none' prunes nothing, so budgets [8] would be ignored",
    ),
    # round 3: outputs under a file, advice the tool itself accepts, what a user's text may hold
    ("export --model tiny-qwen2-vl --out FILE_SUB", "a-file.txt is a file, not a folder; choose an --out inside"),
    ("triton EXPORT --out FILE_SUB", "a-file.txt is a file, not a folder; choose an --out inside a folder"),
    ("build EXPORT --target ampere --out FILE_SUB", "a-file.txt is a file, not a folder"),
    ("plan ENGINES --target orin-8gb", "not an export; pass the export folder it was built from and add --engines "),
    ("build ENGINES --target ampere --out OUT", "not an export; pass the export folder it was built from."),
    ("run EXPORT --prompt hi --system <|image_pad|>", "--system holds '<|image_pad|>', one of the model's control"),
    ("run EXPORT --text-only --prompt <|image_pad|>", "--prompt holds '<|image_pad|>', one of the model's control"),
    ("run EXPORT --prompt <|im_end|>", "--prompt holds '<|im_end|>', one of the model's control tokens"),
    ("run EXPORT --prompt hi --system LONG_SYSTEM", "--system has 100000 characters, more than this export's prompt"),
    # round 4: knobs that would do nothing
    ("generate --model tiny-qwen2-vl --prompt hi --method luvc --option seed=5", "--option seed seeds the random"),
    ("generate --model tiny-qwen2-vl --prompt hi --option rho=0.5 --spu none", "--option rho is SPU's low-pass"),
    ("export --model tiny-qwen2-vl --out OUT --method v2drop --option dart_pivots=4", "--method v2drop does not read"),
    ("export --model tiny-qwen2-vl --out OUT --budgets 8,0 --option spu_start=1", "--option spu_start shapes the"),
    ("export --model tiny-qwen2-vl --out OUT --method random --option oim_positions=mean", "shapes OIM's merges"),
    ("generate --model tiny-qwen2-vl --prompt hi --method dart --option dart_pivots=100000", "more than the 64 visual"),
    ("eval --data FOLDER --model tiny-qwen2-vl --methods luvc,dart --option seed=1 --out OUT", "none of the compared"),
    ("calibrate EXPORT --precision int4 --block-size 1048576 --out OUT", "more than the 32 input channels"),
    ("build EXPORT --target ampere --out OUT --weights shared", "has none (its graphs hold their weights), so every"),
    # round 4: a prompt the export cannot take is refused before PyTorch runs on it
    (
        "parity EXPORT --data ONE_IMAGE --prompts LONG_PROMPTS --out OUT",
        "Sample a.png: The prompt has 15013 text tokens beyond the template's prefix and the visual tokens",
    ),
    # round 4: a manifest edited after the export is not trusted over its graphs
    ("inspect EDITED_EXPORT", "manifest.json was edited after luvc-export wrote it"),
    ("parity EDITED_EXPORT --out OUT", "manifest.json was edited after luvc-export wrote it"),
    ("run EDITED_EXPORT --prompt hi", "manifest.json was edited after luvc-export wrote it"),
    # round 4: messages that name the right thing
    ("eval --data FOLDER --model tiny-qwen2-vl --sweep all,keep --out OUT", "'all' already names every axis; give all"),
    (
        "export --model tiny-qwen2-vl --out LINK_TO_EXPORT --overwrite",
        "link-to-export is a link to ",
    ),
    (
        "build EXPORT --target ampere --out EXPORT_COPY --overwrite",
        "is an export, not an engine folder, so --overwrite",
    ),
    ("triton EXPORT --out EXPORT_COPY --overwrite", "is an export, not a Triton model repository, so --overwrite"),
    # round 5: text that is not UTF-8, and a folder as a prompts file
    ("run EXPORT --prompt NOT_UTF8", "argument --prompt: is not valid UTF-8 text (byte b'\\xe9' at character 3)"),
    ("run EXPORT --prompt hi --system NOT_UTF8", "argument --system: is not valid UTF-8 text"),
    ("run EXPORT --prompt hi --stop NOT_UTF8", "argument --stop: is not valid UTF-8 text"),
    ("generate --model tiny-llava --prompt NOT_UTF8", "argument --prompt: is not valid UTF-8 text"),
    ("parity EXPORT --data ONE_IMAGE --prompts LATIN1_PROMPTS --out OUT", "latin1-prompts.txt is not UTF-8 text (byte"),
    ("calibrate EXPORT --data ONE_IMAGE --prompts LATIN1_PROMPTS --out OUT", "is not UTF-8 text (byte b'\\xe9' at"),
    ("parity EXPORT --data ONE_IMAGE --prompts FOLDER --out OUT", "is a folder; pass a text file with one prompt per"),
    # round 5: messages that name the right cause, and what was taken silently
    ("run EXPORT --prompt hi --image /dev/zero", "Image file /dev/zero is a device, not a file; pass an image file"),
    ("run EXPORT --prompt hi --image FIFO", "a-fifo is a pipe (FIFO), not a file; pass an image file to --image"),
    ("run EXPORT --prompt hi --image LOOP_PNG", "loop.png is a link that leads back to itself; pass an image file"),
    ("run EXPORT --prompt hi --video FIFO", "a-fifo is a pipe (FIFO), not a file; pass a video file or a folder"),
    ("parity EXPORT --data ONE_IMAGE --prompts FIFO --out OUT", "a-fifo is a pipe (FIFO), not a file; pass a text"),
    ("run EXPORT --prompt hi --image TINY_GIF --image WIDE_PNG", "argument --image: given twice; a request takes one"),
    ("inspect TINY_GIF", "tiny.gif is a file, not an export folder"),
    ("calibrate EXPORT --precision int4 --block-size 100 --out OUT", "is not a power of two; pass 16, 32."),
    ("calibrate EXPORT --precision int8w --target-agreement 0.99 --out OUT", "--target-agreement is for --precision"),
    ("eval --data FOLDER --model tiny-qwen2-vl --ratios 0.5,0.5 --out OUT", "gives 0.5 twice; give each point once"),
    ("eval --data FOLDER --model tiny-qwen2-vl --budgets 4,0 --budgets 4,0 --out OUT", "is given twice; give each"),
    ("export --model tiny-qwen2-vl --out OUT --budgets EMPTY", "argument --budgets: is empty; give the visual tokens"),
    ("triton EXPORT --out OUT --cuda-graphs on", "--cuda-graphs on replays CUDA graphs, which need a CUDA device"),
    # chat templates the checkpoint ships
    ("generate --model BROKEN_TEMPLATE --prompt hi", "The checkpoint's chat template does not render an image turn"),
    ("export --model BROKEN_TEMPLATE --out OUT", "The checkpoint's chat template does not render an image turn"),
    ("generate --model NO_IMAGE_TEMPLATE --prompt hi", "renders 0 image placeholders '<|image_pad|>' and 1 prompts"),
]


@pytest.mark.parametrize(("command", "message"), BAD_INPUTS, ids=[argv for argv, _ in BAD_INPUTS])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(command, message, bad_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        TEXTS[word] if word in TEXTS else bad_inputs.get(word, str(out) if word == "OUT" else word)
        for word in command.split()
    ]
    before = _inventory(bad_inputs)
    assert message in one_line_error(argv, capsys)
    assert not out.exists() and leftovers(tmp_path) == []
    assert _inventory(bad_inputs) == before  # no input or user folder was touched


def _inventory(paths: dict) -> dict:
    """Every file under the table's folders with its size and modification time."""
    found = {}
    for path in map(Path, paths.values()):
        for item in path.rglob("*") if path.is_dir() else [path]:
            if item.is_file():
                found[str(item)] = (item.stat().st_size, item.stat().st_mtime_ns)
    return found


def test_triton_overwrites_the_repository_it_wrote(bad_inputs, tmp_path, capsys):
    """--overwrite still does its job on a folder of its own kind: a repository replaces a repository."""
    out = tmp_path / "repo"
    assert main(["triton", bad_inputs["EXPORT"], "--out", str(out)]) == 0
    assert main(["triton", bad_inputs["EXPORT"], "--out", str(out), "--model-name", "second", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".luvc-files", "luvc-repository.json", "second"]


@pytest.mark.parametrize("name", list(TOOLS))
def test_every_subcommand_parses_without_pytorch_transformers_or_onnx_runtime(name):
    """Help and argument errors come at once: building a subcommand's parser imports none of the heavy libraries."""
    code = (
        "import sys\n"
        "from luvc.cli.main import build_parser\n"
        f"parser, tools = build_parser([{name!r}])\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'tensorrt_rtx', 'onnx_graphsurgeon', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_model_option_names_every_built_in_model():
    from luvc.cli.args.model import ModelArgs
    from luvc.models import TINY_MODELS

    parser = __import__("argparse").ArgumentParser()
    ModelArgs().add_parser_args(parser)
    help_text = next(action.help for action in parser._actions if action.dest == "model")
    assert all(name in help_text for name in TINY_MODELS)


def test_cuda_device_without_cuda_is_named(bad_inputs, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", bad_inputs["EXPORT"], "--prompt", "hi", "--device", "cuda:0"]) == 2
    assert "needs CUDA, which this PyTorch does not see; use --device cpu" in capsys.readouterr().err


def test_top_level_help_imports_no_subcommand_and_describes_the_tool():
    code = (
        "import sys\n"
        "from luvc.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'luvc.cli.export') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "Compress a vision-language model's visual tokens with LUVC" in result.stdout
    for command in ("generate", "export", "inspect", "build", "run", "parity", "calibrate"):
        assert command in result.stdout
    calibrate = " ".join(result.stdout.split("calibrate", 1)[1].split("eval", 1)[0].split())
    for precision in ("INT8", "FP8", "INT4", "int8w"):  # every precision calibrate writes
        assert precision in calibrate, calibrate


def test_build_command_does_not_import_pytorch_or_transformers():
    """Jetson users build engines with JetPack's TensorRT; the build path must not need PyTorch."""
    code = (
        "import sys\n"
        "from luvc.cli.main import build_parser\n"
        "parser, tools = build_parser(['build'])\n"
        "assert list(tools) == ['build']\n"
        "import luvc.engines.builder, luvc.engines.profiles\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


_EXIT_SCRIPT = """
import atexit, sys, threading, time
from luvc.cli.main import exit_process

class Teardown:
    def __del__(self):
        print("torn down", flush=True)

KEPT = Teardown()  # a module global: freed only by the interpreter's teardown
atexit.register(lambda: print("atexit ran", flush=True))
sys.stdout.write("buffered, no newline")  # still in the buffer when the process ends
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), print(" thread done", flush=True))).start()
exit_process(3)
"""


@pytest.mark.parametrize("case", ["plain", "thread"])
def test_exit_process_keeps_the_code_output_and_atexit_and_skips_teardown_unless_a_thread_runs(case):
    result = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, case], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stdout.startswith("buffered, no newline")
    assert "atexit ran" in result.stdout
    if case == "plain":  # os._exit: the interpreter's teardown never runs
        assert "torn down" not in result.stdout
    else:  # a non-daemon thread: the interpreter waits for it and then tears down as usual
        assert " thread done" in result.stdout and "torn down" in result.stdout


def test_the_luvc_export_program_exits_through_exit_process():
    from importlib.metadata import entry_points

    (script,) = [point for point in entry_points(group="console_scripts") if point.name == "luvc-export"]
    assert script.value == "luvc.cli.main:entry"
    result = subprocess.run([*CLI, "inspect", "/nonexistent/export"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_an_export_to_an_unusable_out_is_refused_before_pytorch_loads(tmp_path):
    """A taken --out, or one under a file, costs no model load (issue 66: it took 14 s)."""
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "taken").mkdir()
    for out, message in ((tmp_path / "a-file" / "sub", "is a file, not a folder"), (tmp_path / "taken", "exists")):
        code = (
            "import sys\n"
            "from luvc.cli.main import main\n"
            f"code = main(['export', '--model', 'tiny-qwen2-vl', '--out', {str(out)!r}])\n"
            "print(code, 'torch' in sys.modules)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip().splitlines()[-1] == "2 False" and message in result.stderr


def test_inspect_names_what_a_killed_run_left_beside_the_folder(tmp_path, capsys):
    """kill -9 leaves .OUT.partial-PID-XXXX (the next run to OUT removes it): inspect OUT says so."""
    out = tmp_path / "export"
    (tmp_path / ".export.partial-4242-0a1b2c3d").mkdir()
    error = one_line_error(["inspect", str(out)], capsys)
    assert "has no manifest.json; it is not a finished export" in error
    assert ".export.partial-4242-0a1b2c3d beside it was left by a run that was stopped (the next run" in error
