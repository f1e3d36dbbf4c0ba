"""Image files: a missing or unreadable file gets one line naming it."""

import pytest

from luvc.cli.main import main
from luvc.errors import LuvcError
from luvc.images import load_image


def test_missing_and_unreadable_image_files(tmp_path, exports, capsys):
    with pytest.raises(LuvcError, match="does not exist; pass an existing file to --image"):
        load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(LuvcError, match="Cannot read .*garbage.png as an image"):
        load_image(garbage)
    assert main(["run", str(exports("tiny-llava")), "--image", str(garbage), "--prompt", "hi"]) == 2
    assert "garbage.png as an image" in capsys.readouterr().err
