import pytest

from luvc.errors import LuvcError
from luvc.staging import staged_folder


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and (out / "old.txt").exists()
    with staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    with pytest.raises(LuvcError, match="already exists"), staged_folder(out, overwrite=False):
        pass
