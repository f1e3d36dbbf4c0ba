"""``luvc-export cache``: where the start-up cache is, what it holds, and clearing it."""

import numpy as np
import pytest

from luvc import cache
from luvc.cli.main import main


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(folder))
    cache.cache_root.cache_clear()
    yield folder
    cache.cache_root.cache_clear()


def test_cache_shows_where_and_what_then_clears_it(cache_folder, capsys):
    cache.keep_conversion("d" * 64, 0, 32, np.ones((4, 4), np.float32))
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache_folder) in out and "1 converted weights of 1 weights files" in out
    assert main(["cache", "--clear"]) == 0
    assert f"Cleared the start-up cache at {cache_folder}" in capsys.readouterr().out
    assert not list(cache_folder.rglob("*.f32"))
    assert main(["cache"]) == 0 and "0 converted weights" in capsys.readouterr().out


def test_cache_off_says_so(monkeypatch, capsys):
    monkeypatch.setenv(cache.ENV, "off")
    cache.cache_root.cache_clear()
    try:
        assert main(["cache", "--clear"]) == 0
        assert "is off (LUVC_CACHE_DIR=off)" in capsys.readouterr().out
    finally:
        cache.cache_root.cache_clear()
