"""Every example's README commands run as written (in a copy of its folder) and produce what they say."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.examples

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def readme_commands(folder: Path) -> list[list[str]]:
    """The commands of the first ```bash block of ``folder``'s README, split into words."""
    block = re.search(r"```bash\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir() if re.fullmatch(r"\d\d_\w+", p.name)))
def test_readme_commands_run(name, tmp_path, monkeypatch, capsys):
    """``python`` commands run with this Python; ``luvc-export`` ones through the CLI's entry point in this process
    (what the console script calls), in a copy of the example's folder."""
    from luvc.cli.main import main

    folder = shutil.copytree(EXAMPLES / name, tmp_path / name)
    monkeypatch.chdir(folder)
    shipped = {path.name for path in folder.iterdir()}
    for _ in range(2):  # the commands run again over their own output, as a user re-running them does
        for program, *words in readme_commands(folder):
            if program == "luvc-export":
                assert main(words) == 0, capsys.readouterr().err[-2000:]
                continue
            assert program == "python", f"{name}: README command {program} is neither python nor luvc-export"
            result = subprocess.run([sys.executable, *words], capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{words}: {result.stderr[-2000:]}"
    written = sorted({path.name for path in folder.iterdir()} - shipped)
    assert written, f"{name}: the commands wrote nothing"
    if shutil.which("git") and (EXAMPLES.parent / ".git").exists():  # what they write is git-ignored
        paths = [f"examples/{name}/{entry}/file" for entry in written]
        ignored = subprocess.run(["git", "check-ignore", *paths], cwd=EXAMPLES.parent, capture_output=True, text=True)
        assert sorted(ignored.stdout.split()) == sorted(paths)
    if name == "01_eval_pope":
        questions = [json.loads(line) for line in (folder / "out/pope-eval/questions.jsonl").read_text().splitlines()]
        assert len(questions) == 6 and {q["type"] for q in questions} == {"yes-no"}
        assert (folder / "out/pope-eval" / questions[0]["image"]).resolve().is_file()
        report = (folder / "out/pope-report/report.md").read_text()
        assert "## Yes/no questions (POPE metrics" in report and "fastv @ ratio 0.25 (pytorch)" in report
