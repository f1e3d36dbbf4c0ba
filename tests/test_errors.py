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
