"""critical(): one error type, logged once, carrying the message unchanged."""

import logging

import pytest

from luvc.errors import LuvcError, critical


def test_critical_logs_and_raises_the_message(caplog):
    with caplog.at_level(logging.ERROR, logger="luvc"), pytest.raises(LuvcError) as error:
        critical("Image size '0x0' is not HxW; use --image-size 448x448.")
    assert str(error.value) == "Image size '0x0' is not HxW; use --image-size 448x448."
    assert [record.getMessage() for record in caplog.records] == [str(error.value)]
    assert isinstance(error.value, Exception) and not isinstance(error.value, ValueError)


def test_a_library_call_prints_a_warning_once_and_no_error_without_logging_configured():
    """Used as a library (no logging configured), ``warn`` prints its one line and ``critical`` only raises: logging's
    last-resort handler printed both messages to standard error as well."""
    import subprocess
    import sys

    code = (
        "from luvc.errors import LuvcError, critical, warn\n"
        "warn('the disk is nearly full')\n"
        "try:\n    critical('bad input')\nexcept LuvcError as error:\n    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stderr.splitlines() == ["warning: the disk is nearly full"]
    assert result.stdout.splitlines() == ["bad input"]
