"""Progress: plain lines when stderr is not a terminal (logs, CI), nothing when asked for none."""

from luvc.progress import progress_steps


def test_progress_prints_one_plain_line_per_step_off_a_terminal(capsys):
    with progress_steps(None, 2, "calibrating") as advance:
        advance("calibration feeds: synthetic-0")
        advance("agreement with fp32")
    assert capsys.readouterr().err.splitlines() == [
        "calibrating: [1/2] calibration feeds: synthetic-0",
        "calibrating: [2/2] agreement with fp32",
    ]
    with progress_steps(False, 1, "silent") as advance:
        advance("step")
    assert capsys.readouterr().err == ""
