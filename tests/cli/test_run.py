from luvc.cli.main import main


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


def test_run_streams(exports, capsys):
    argv = ["run", str(exports("tiny-llava")), "--prompt", "hi", "--stream", "--max-new-tokens", "4", "--seed", "1"]
    assert main(argv) == 0
    assert "time to first token" in capsys.readouterr().out
