"""The start-up cache (luvc.cache): hashes kept by stat, float32 conversions kept by the weights file's sha256, and
every way the cache folder can fail only costing the work again."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from luvc import cache


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    """A cache folder of the test's own (``LUVC_CACHE_DIR``)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(folder))
    cache.cache_root.cache_clear()
    cache._say_once.cache_clear()
    yield folder
    cache.cache_root.cache_clear()
    cache._say_once.cache_clear()


def _file(folder, data: bytes = b"weights" * 100):
    path = folder / "weights.data"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_digest_is_known_until_the_file_changes(cache_folder, tmp_path):
    path, digest = _file(tmp_path)
    assert not cache.known_digest(path, digest)
    cache.remember_digest(path, digest)
    assert cache.known_digest(path, digest)
    assert not cache.known_digest(path, "0" * 64)  # another digest: the manifest changed
    path.write_bytes(path.read_bytes())  # the same bytes, written again: its change time moved, so it is hashed again
    assert not cache.known_digest(path, digest)


def test_a_digest_is_not_known_for_a_replaced_file_of_the_same_size(cache_folder, tmp_path):
    path, digest = _file(tmp_path, b"a" * 64)
    cache.remember_digest(path, digest)
    stat = path.stat()
    replacement = tmp_path / "other"
    replacement.write_bytes(b"b" * 64)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and modification time
    os.replace(replacement, path)
    assert not cache.known_digest(path, digest)  # its inode and change time differ


def test_a_conversion_is_made_once_and_mapped_after(cache_folder):
    values = np.arange(12, dtype=np.float16).reshape(3, 4)
    digest = "d" * 64
    assert cache.cached_conversion(digest, 128, values.nbytes, values.shape) is None
    kept = cache.keep_conversion(digest, 128, values.nbytes, values.astype(np.float32))
    assert isinstance(kept, np.memmap) and not kept.flags.writeable
    again = cache.cached_conversion(digest, 128, values.nbytes, values.shape)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, np.arange(12, dtype=np.float32).reshape(3, 4))
    # another tensor of the file, or the same offset in another file, is another conversion
    assert cache.cached_conversion(digest, 0, values.nbytes, values.shape) is None
    assert cache.cached_conversion("e" * 64, 128, values.nbytes, values.shape) is None


def test_an_empty_tensor_is_converted_in_memory_and_not_kept(cache_folder):
    empty = np.zeros((0, 4), dtype=np.float32)
    kept = cache.keep_conversion("d" * 64, 64, 0, empty)
    assert kept.shape == (0, 4) and kept.dtype == np.float32
    assert cache.cached_conversion("d" * 64, 64, 0, (0, 4)) is None


def test_a_truncated_or_partial_conversion_is_made_again(cache_folder):
    digest, shape = "d" * 64, (4, 4)
    kept = cache.keep_conversion(digest, 0, 32, np.ones(shape, np.float32))
    path = kept.filename
    del kept
    with open(path, "r+b") as file:
        file.truncate(20)  # as a copy cut short would leave it
    assert cache.cached_conversion(digest, 0, 32, shape) is None
    os.unlink(path)
    partial = cache_folder / "float32" / digest / ".0-32.f32.1234abcd.partial"  # a writer killed before its rename
    partial.write_bytes(b"\0" * 64)
    assert cache.cached_conversion(digest, 0, 32, shape) is None


def test_off_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, "off")
    cache.cache_root.cache_clear()
    try:
        path, digest = _file(tmp_path)
        cache.remember_digest(path, digest)
        assert not cache.known_digest(path, digest)
        array = np.ones(3, np.float32)
        assert cache.keep_conversion("d" * 64, 0, 6, array) is array
        assert cache.cached_conversion("d" * 64, 0, 6, (3,)) is None
    finally:
        cache.cache_root.cache_clear()


def test_a_cache_folder_that_cannot_be_made_only_warns(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cache.ENV, str(blocker / "cache"))  # a folder inside a file: mkdir fails, even as root
    cache.cache_root.cache_clear()
    try:
        assert cache.cache_root() is None
        assert cache.cache_root() is None
        said = capsys.readouterr().err.splitlines()
        assert len(said) == 1 and "no cache folder at" in said[0]  # once
        assert f"({blocker} is a file, not a folder)" in said[0] and "point LUVC_CACHE_DIR at a folder" in said[0]
        path, digest = _file(tmp_path)
        cache.remember_digest(path, digest)
        assert not cache.known_digest(path, digest)
    finally:
        cache.cache_root.cache_clear()


def test_a_cache_folder_that_cannot_be_written_keeps_the_conversion_in_memory(cache_folder, capsys):
    cache_folder.mkdir()
    (cache_folder / "float32").write_text("")  # where the conversions' folder should be
    array = np.ones((2, 2), np.float32)
    kept = cache.keep_conversion("d" * 64, 0, 8, array)
    assert kept is array and not isinstance(kept, np.memmap)
    assert cache.keep_conversion("d" * 64, 8, 8, array) is array
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "cannot be written" in said[0]  # once
    assert not list(cache_folder.rglob("*.partial"))


def test_a_nearly_full_disk_keeps_no_conversion(cache_folder, monkeypatch, capsys):
    monkeypatch.setattr(cache, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has free
    array = np.ones((2, 2), np.float32)
    assert cache.keep_conversion("d" * 64, 0, 8, array) is array
    assert "nearly full" in capsys.readouterr().err
    assert not (cache_folder / "float32").exists()


def _kept(digest="d" * 64, shape=(4, 4)):
    values = np.arange(16, dtype=np.float32).reshape(shape)
    kept = cache.keep_conversion(digest, 0, values.nbytes // 2, values)
    path = Path(kept.filename)
    del kept
    return path, values


@pytest.mark.parametrize("damage", [lambda size: os.urandom(size), lambda size: bytes(size)])
def test_a_damaged_conversion_is_dropped_and_said_once(cache_folder, capsys, damage):
    path, values = _kept()
    path.write_bytes(damage(path.stat().st_size))  # the same size: only its bytes tell
    assert cache.cached_conversion("d" * 64, 0, 32, values.shape) is None
    assert not path.exists()
    assert cache.cached_conversion("d" * 64, 0, 32, values.shape) is None  # gone: converted again by its reader
    err = capsys.readouterr().err
    assert err.count("damaged entries of the start-up cache") == 1 and str(path.parent) in err


def test_a_damaged_seal_drops_its_entry(cache_folder, capsys):
    path, values = _kept()
    seal = path.with_name(path.name + cache.SEAL_SUFFIX)
    seal.write_bytes(os.urandom(seal.stat().st_size))
    assert cache.cached_conversion("d" * 64, 0, 32, values.shape) is None
    assert "damaged entries" in capsys.readouterr().err


def test_an_entry_without_its_seal_is_made_again_silently(cache_folder, capsys):
    path, values = _kept()
    path.with_name(path.name + cache.SEAL_SUFFIX).unlink()  # a writer killed between the entry and its seal
    assert cache.cached_conversion("d" * 64, 0, 32, values.shape) is None
    assert capsys.readouterr().err == ""


def test_an_unchanged_entry_is_not_hashed_and_a_touched_one_is_checked_again(cache_folder, monkeypatch):
    path, values = _kept()
    checked = []
    crc32_of = cache._crc32_of
    monkeypatch.setattr(cache, "_crc32_of", lambda file: checked.append(file) or crc32_of(file))
    np.testing.assert_array_equal(cache.cached_conversion("d" * 64, 0, 32, values.shape), values)
    assert checked == []  # its stat is the one its seal recorded: mapped without reading it
    path.write_bytes(path.read_bytes())  # the same bytes written again: a new change time
    np.testing.assert_array_equal(cache.cached_conversion("d" * 64, 0, 32, values.shape), values)
    assert checked == [path]
    cache.cached_conversion("d" * 64, 0, 32, values.shape)
    assert checked == [path]  # the seal now records the new stat


def test_clear_removes_what_the_cache_holds_and_nothing_else(cache_folder):
    _kept()
    cache.remember_digest(*_file(cache_folder))
    (cache_folder / "notes.txt").write_text("mine")
    held = cache.cache_contents()
    assert (held.verified, held.conversions, held.weights_files) == (1, 1, 1) and held.bytes > 64
    assert cache.clear_cache() == held
    assert sorted(path.name for path in cache_folder.iterdir()) == ["notes.txt", "weights.data"]
    assert cache.cache_contents().conversions == 0


def test_a_cache_setting_that_names_a_file_says_so(tmp_path, monkeypatch, capsys):
    """Issue 77: LUVC_CACHE_DIR set to a file said only "Set LUVC_CACHE_DIR", which it was."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cache.ENV, str(blocker))
    cache.cache_root.cache_clear()
    try:
        assert cache.cache_root() is None
        said = capsys.readouterr().err
        assert f"no cache folder at {blocker} ({blocker} is a file, not a folder)" in said
        assert "point LUVC_CACHE_DIR at a folder, or set it to off" in said
    finally:
        cache.cache_root.cache_clear()


def test_openvino_compiled_models_are_kept_sealed_and_a_damaged_one_never_changes_an_answer(
    cache_folder, exports, caplog
):
    """OpenVINO imports what its cache holds unchecked: a blob overwritten with other bytes of the same size must be
    dropped (one warning) and compiled again, and one without a seal (a compile killed while writing) too."""
    pytest.importorskip("openvino")
    from luvc.images import synthetic_image
    from luvc.runtime.pipeline import GenerationOptions, Pipeline

    folder = exports("tiny-qwen2-vl")
    options = GenerationOptions(6, stop_token_ids=())

    def answer() -> list:
        pipeline = Pipeline(folder, backend="openvino", openvino_precision="f32")
        tokens = pipeline.generate(synthetic_image(224, 224, 5), "Describe it.", options).tokens[0].tolist()
        pipeline.release()
        return tokens

    expected = answer()
    blobs = sorted((cache_folder / "openvino").glob("*/*.blob"))
    assert blobs and all(Path(f"{blob}.sum").is_file() for blob in blobs)  # every compiled graph kept and sealed
    assert len({blob.parent for blob in blobs}) == len(blobs)  # a folder per graph
    assert cache.cache_contents().compiled == len(blobs)
    assert answer() == expected  # imported from the cache
    largest = max(blobs, key=lambda blob: blob.stat().st_size)
    largest.chmod(0o644)
    largest.write_bytes(np.random.default_rng(0).bytes(largest.stat().st_size))
    unsealed = min(blobs, key=lambda blob: blob.stat().st_size)
    Path(f"{unsealed}.sum").unlink()
    caplog.clear()
    assert answer() == expected
    warnings = [record.message for record in caplog.records if "damaged entries" in record.message]
    assert len(warnings) == 1
    assert all(Path(f"{blob}.sum").is_file() for blob in (cache_folder / "openvino").glob("*/*.blob"))


def test_a_seal_whose_openvino_blob_is_gone_is_removed_and_a_sealed_blob_stays(cache_folder):
    folder = cache.openvino_folder() / "entry"
    folder.mkdir()
    kept, gone = folder / "1.blob", folder / "2.blob"
    for blob in (kept, gone):
        blob.write_bytes(b"compiled" * 10)
    cache.seal_openvino_blobs(folder)
    gone.unlink()  # removed by hand
    cache.check_openvino_blobs(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["1.blob", f"1.blob{cache.SEAL_SUFFIX}"]


def _new_process():
    """What a new process starts from: no account of the converted weights yet, and nothing said."""
    cache._room.cache_clear()
    cache._say_once.cache_clear()


def _keep(digest: str, values: np.ndarray) -> np.ndarray:
    return cache.keep_conversion(digest, 0, values.nbytes, values)


def test_the_converted_weights_stay_under_the_limit_by_removing_the_least_recently_used(
    cache_folder, monkeypatch, capsys
):
    values = np.arange(1024, dtype=np.float32)  # 4 KiB a weights file
    monkeypatch.setenv(cache.MAX_ENV, str(10_000 / cache.GiB))  # room for two of them, not three
    folders = {name: cache_folder / "float32" / (name * 64) for name in "abc"}
    _keep("a" * 64, values)
    _new_process()
    _keep("b" * 64, values)
    os.utime(folders["a"], (1, 1))
    os.utime(folders["b"], (2, 2))
    _new_process()
    assert cache.cached_conversion("a" * 64, 0, values.nbytes, values.shape) is not None  # a start maps a: used now
    kept = _keep("c" * 64, values)
    assert isinstance(kept, np.memmap)
    assert folders["a"].is_dir() and folders["c"].is_dir() and not folders["b"].exists()  # b was used least recently
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and cache.MAX_ENV in said[0] and "removed" in said[0]


def test_a_start_never_removes_what_it_uses_and_keeps_nothing_past_the_limit(cache_folder, monkeypatch, capsys):
    values = np.arange(1024, dtype=np.float32)
    monkeypatch.setenv(cache.MAX_ENV, str(6_000 / cache.GiB))  # room for one tensor
    first = _keep("a" * 64, values)
    second = cache.keep_conversion("a" * 64, 8192, values.nbytes, values)  # the same weights file's next tensor
    assert isinstance(first, np.memmap) and not isinstance(second, np.memmap)
    np.testing.assert_array_equal(second, values)  # given back in memory, converted all the same
    assert sorted(path.name for path in (cache_folder / "float32" / ("a" * 64)).glob("*.f32")) == [
        f"0-{values.nbytes}.f32"
    ]
    assert "not kept" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["lots", "-1", "0", "nan"])
def test_a_bad_limit_is_said_once_and_the_default_taken(cache_folder, monkeypatch, capsys, setting):
    monkeypatch.setenv(cache.MAX_ENV, setting)
    assert cache.max_kept_bytes() == cache.max_kept_bytes() == int(cache.DEFAULT_MAX_GIB * cache.GiB)
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and f"{cache.MAX_ENV}={setting!r}" in said[0]


def _graph(folder: Path, name: str = "decode") -> Path:
    """A graph file and a weights file beside it, as an export holds them (their bytes are not read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.data").write_bytes(b"w" * 64)
    path = folder / f"{name}.onnx"
    path.write_bytes(b"graph")
    return path


def _compiled(entry: Path, size: int) -> None:
    """What OpenVINO writes into an entry when it compiles: one blob of ``size`` bytes; then sealed and accounted."""
    (entry / f"{entry.name}.blob").write_bytes(b"b" * size)
    cache.kept_openvino_compile(entry)


def test_openvino_entries_are_keyed_by_the_graph_its_weights_and_the_settings(cache_folder, tmp_path):
    folder = cache.openvino_folder()
    graph = _graph(tmp_path / "export")
    settings = {"INFERENCE_PRECISION_HINT": "f32"}
    entry = cache.openvino_entry(folder, graph, settings)
    assert entry.parent == folder and entry.is_dir()
    assert cache.openvino_entry(folder, graph, settings) == entry  # the same graph: the same entry
    assert cache.openvino_entry(folder, graph, {"INFERENCE_PRECISION_HINT": "bf16"}) != entry
    assert cache.openvino_entry(folder, _graph(tmp_path / "export", "prefill_text"), settings) != entry
    os.utime(graph.parent / "weights.data", ns=(1, 1))  # re-written weights (a re-export, a calibration)
    assert cache.openvino_entry(folder, graph, settings) != entry


def test_openvino_models_count_against_the_limit_and_the_least_recently_used_go_first(
    cache_folder, tmp_path, monkeypatch, capsys
):
    """Every re-export makes new entries: without a bound, a user's disk would fill with compiled models no start
    reads again."""
    monkeypatch.setenv(cache.MAX_ENV, str(10_000 / cache.GiB))  # room for two 4 kB models, not three
    folder = cache.openvino_folder()
    settings = {"INFERENCE_PRECISION_HINT": "f32"}
    entries = []
    for name in "ab":
        _new_process()
        entries.append(cache.openvino_entry(folder, _graph(tmp_path / name), settings))
        _compiled(entries[-1], 4096)
    os.utime(entries[0], (2, 2))  # a was started again after b: b is the least recently used
    os.utime(entries[1], (1, 1))
    _new_process()
    entries.append(cache.openvino_entry(folder, _graph(tmp_path / "c"), settings))
    _compiled(entries[-1], 4096)
    assert entries[0].is_dir() and entries[2].is_dir() and not entries[1].exists()
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and cache.MAX_ENV in said[0] and "compiled models" in said[0]


def test_converted_weights_and_compiled_models_share_one_limit(cache_folder, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.MAX_ENV, str(6_000 / cache.GiB))
    values = np.arange(1024, dtype=np.float32)  # 4 KiB
    _keep("a" * 64, values)
    os.utime(cache_folder / "float32" / ("a" * 64), (1, 1))
    _new_process()
    entry = cache.openvino_entry(cache.openvino_folder(), _graph(tmp_path / "export"), {})
    _compiled(entry, 4096)
    assert entry.is_dir() and not (cache_folder / "float32" / ("a" * 64)).exists()


def test_a_start_keeps_its_own_compiled_model_past_the_limit(cache_folder, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.MAX_ENV, str(1_000 / cache.GiB))
    entry = cache.openvino_entry(cache.openvino_folder(), _graph(tmp_path / "export"), {})
    _compiled(entry, 4096)
    assert (entry / f"{entry.name}.blob").is_file()


def test_blobs_of_the_flat_layout_are_removed_in_one_line(cache_folder, capsys):
    folder = cache_folder / "openvino"
    folder.mkdir(parents=True)
    for name in ("1.blob", f"1.blob{cache.SEAL_SUFFIX}"):
        (folder / name).write_bytes(b"x" * 1000)
    assert cache.openvino_folder() == folder
    assert list(folder.iterdir()) == []
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and "earlier release" in said[0]
