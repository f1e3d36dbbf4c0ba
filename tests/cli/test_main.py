"""Artifacts survive kills and concurrent runs; every bad input gets one line naming the fix, exit code 2."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from luvc.cli.main import main
from luvc.export.manifest import ExportManifest
from luvc.models import load_model
from tests.conftest import leftovers, one_line_error

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
    first.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 2)
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


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, exports):
    """Paths the bad-input table refers to: an export, an engine folder, broken checkpoints, a prompts file."""
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
    (root / "a-folder").mkdir()
    return {
        "EXPORT": str(exports("tiny-qwen2-vl")),
        "ENGINES": str(engines),
        "NOT_JSON": str(not_json),
        "TRUNCATED": str(truncated),
        "PROMPTS": str(root / "prompts.txt"),
        "FOLDER": str(root / "a-folder"),
    }


BAD_INPUTS = [  # argv (OUT: a fresh output folder) -> what the one-line error must say
    ("export --model tiny-qwen2-vl --out OUT --image-size 0x0", "each side must be between 28 and 8192 pixels"),
    ("export --model tiny-qwen2-vl --out OUT --image-size 100000x100000", "each side must be between 28 and 8192"),
    ("export --model tiny-qwen2-vl --out OUT --image-size 224", "is not HxW"),
    ("export --model tiny-qwen2-vl --out OUT --max-batch 0", "max_batch=0 must be between 1 and 256 (--max-batch)"),
    ("export --model tiny-qwen2-vl --out OUT --max-new-tokens -2", "max_new_tokens=-2 must be between 1 and 32768"),
    ("export --model tiny-qwen2-vl --out OUT --max-text-tokens 100000000", "must be between 1 and 32768"),
    ("generate --model tiny-llava --prompt hi --max-new-tokens 0", "--max-new-tokens 0: generate at least 1 token"),
    ("export --model tiny-qwen2-vl --out OUT --no-luvc --budgets 4,2", "so --budgets would be ignored"),
    ("export --model tiny-qwen2-vl --out OUT --kv-update bogus", "argument --kv-update: invalid choice: 'bogus'"),
    ("export --model NOT_JSON --out OUT", "config.json is not valid JSON"),
    ("export --model TRUNCATED --out OUT", "a weight file is truncated or does not match config.json"),
    ("export --model FOLDER --out OUT", "has no config.json"),
    ("run EXPORT --prompt hi --max-new-tokens 0", "must be between 1 and the export profile's 256"),
    ("run EXPORT --prompt hi --max-new-tokens -3 --stream", "must be between 1 and the export profile's 256"),
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
]


@pytest.mark.parametrize(("command", "message"), BAD_INPUTS, ids=[argv for argv, _ in BAD_INPUTS])
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(command, message, bad_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [bad_inputs.get(word, str(out) if word == "OUT" else word) for word in command.split()]
    assert message in one_line_error(argv, capsys)
    assert not out.exists() and leftovers(tmp_path) == []


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
