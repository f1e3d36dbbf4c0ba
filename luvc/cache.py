"""What a second start of the same export need not do again: hash its files, and convert its float16 weights.

A start used to hash every file of the export (1.5 GB for a 2B-widths model with 8 layers) and convert every float16
weight to float32 for ONNX Runtime's CPU kernels (6.7 s of its 8.9 s of loading, on 2 cores). Both are kept in a
cache folder of the user's (``LUVC_CACHE_DIR``, else ``$XDG_CACHE_HOME/luvc-export``, else ``~/.cache/luvc-export``):

- ``verified/``: for each file hashed, its size, inode and modification and change times when it matched its recorded
  sha256, as git keeps its index: a file whose ``stat`` is unchanged is not hashed again;
- ``float32/<sha256 of the weights file>/<offset>-<length>.f32``: each converted tensor, written once (under a
  temporary name, then renamed) and memory-mapped afterwards: pages of the file cache, shared by every process that
  runs the export, instead of anonymous memory per process. Beside it, ``<offset>-<length>.f32.sum`` holds the CRC-32
  of its bytes as written and the ``stat`` at which they last matched: a start maps an entry only when its ``stat`` is
  unchanged since, or when its bytes match the CRC again (about 4 GB/s on one core). A cache exists to make a start
  quick, never to change a result: an entry whose bytes do not match is dropped, said in one line, and converted again.

- ``matmul_nbits/<sha256 of the weights file>/<offset>-<length>.u8``: weight-only INT8 weights in the layout of ONNX
  Runtime's ``MatMulNBits`` (``luvc.runtime.matmul_nbits``), kept and checked the same way.

- ``openvino/<key>/``: OpenVINO's compiled models (``--backend openvino``), a folder per graph and compile
  (``openvino_entry``: the key hashes the graph's and its weights files' paths, sizes and modification times, the
  compile settings and OpenVINO's release), given to OpenVINO as its ``CACHE_DIR`` for that compile: a warm start
  imports them instead of compiling (1.3 s against 12 s for the graphs of a 2B-widths export with 8 layers). OpenVINO
  trusts what it imports, so each blob is sealed as the conversions are (``seal_openvino_blobs`` after a compile;
  ``check_openvino_blobs`` before one): a blob whose bytes no longer match its seal, or that has no seal (a compile
  killed while writing it), is dropped before OpenVINO can read it, and compiled again. Blobs of the earlier flat
  layout (directly in ``openvino/``) are never read again and are removed.

- ``backends/<key>.json``: what ``--backend auto`` measured on this machine for an export (``kept_record``), so
  that only the first start measures.

Nothing here is needed: a cache folder that cannot be made or written to (read-only home, full disk) only means the
work is done again, said once. ``LUVC_CACHE_DIR=off`` turns it off.

The converted weights and the compiled models are bounded together: ``LUVC_CACHE_MAX_GB`` (default 20) GiB in all.
A start that would pass it first removes the conversions of other weights files and the compiled models of other
graphs, the least recently used first (a weights file's or a graph's folder is touched by every start that maps,
imports or writes it), said in one line; where that is not enough, the rest of its conversions are not kept (a
compiled model OpenVINO has written stays: it is the start's own). A process that mapped a removed file keeps its pages
until it ends. Re-exporting to the same folder makes new entries (other modification times), and the old ones go
the same way once the limit is reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import uuid
import zlib
from pathlib import Path

import numpy as np

from luvc.errors import warn

ENV = "LUVC_CACHE_DIR"
# free bytes a float32 copy leaves on the cache's disk at least (the copy is skipped below it)
MIN_FREE_BYTES = 1 << 30
# what the cache holds (``clear_cache`` removes these, nothing else of the folder)
FOLDERS = ("verified", "float32", "matmul_nbits", "openvino", "backends")
# a kind of conversion -> the type of its values and its files' suffix (a folder of the cache each)
CONVERSIONS = {"float32": (np.float32, ".f32"), "matmul_nbits": (np.uint8, ".u8")}
MAX_ENV = "LUVC_CACHE_MAX_GB"
DEFAULT_MAX_GIB = 20.0  # about four 2B-widths exports' float32 conversions
GiB = 1 << 30
SEAL_SUFFIX = ".sum"  # beside a conversion: its CRC-32 and the stat it last matched at
CRC_CHUNK = 64 << 20


@functools.cache
def cache_root() -> Path | None:
    """The cache folder (made if needed), or None where it is off or cannot be made (said once)."""
    setting = os.environ.get(ENV)
    if setting == "off":
        return None
    if setting:
        root = Path(setting)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "luvc-export"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocked = next((folder for folder in (root, *root.parents) if folder.exists() and not folder.is_dir()), None)
        why = f"{blocked} is a file, not a folder" if blocked is not None else error.strerror
        fix = f"point {ENV} at a folder, or set it to off" if setting else f"set {ENV} to a folder, or to off"
        warn(f"no cache folder at {root} ({why}); each start hashes and converts again: {fix}.")
        return None
    return root


def _stat_key(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "inode": stat.st_ino, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _record(path: Path) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    return root / "verified" / f"{name}.json"


def known_digest(path: Path, digest: str) -> bool:
    """Whether ``path`` was found to have sha256 ``digest`` and has not changed since (same size, inode, modification
    and change times)."""
    record = _record(path)
    if record is None or not record.is_file():
        return False
    try:
        seen = json.loads(record.read_text())
        return seen.get("sha256") == digest and seen.get("stat") == _stat_key(path)
    except (OSError, ValueError):
        return False


def remember_digest(path: Path, digest: str) -> None:
    """Record that ``path`` has sha256 ``digest`` as it is now (nothing when the cache cannot be written)."""
    record = _record(path)
    if record is None:
        return
    _write_atomically(record, json.dumps({"sha256": digest, "stat": _stat_key(path)}).encode())


def _conversion_path(file_digest: str, offset: int, length: int, kind: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / kind / file_digest / f"{offset}-{length}{CONVERSIONS[kind][1]}"


def cached_conversion(
    file_digest: str, offset: int, length: int, shape: tuple[int, ...], kind: str = "float32"
) -> np.memmap | None:
    """The conversion (``kind``, of ``CONVERSIONS``) of the tensor at ``offset`` (``length`` stored bytes) of the
    weights file with sha256 ``file_digest``, memory-mapped read-only, where an earlier start kept it
    (``keep_conversion``); else None."""
    path = _conversion_path(file_digest, offset, length, kind)
    dtype = np.dtype(CONVERSIONS[kind][0])
    size = int(np.prod(shape, dtype=np.int64))
    if path is None or size == 0:
        return None  # an empty tensor costs nothing to convert, and an empty file cannot be mapped
    if not path.is_file() or path.stat().st_size != dtype.itemsize * size:
        return None
    if not _intact(path):
        return None
    _room(path.parents[2]).use(path.parent)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def _seal_of(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def _crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _intact(path: Path) -> bool:
    """Whether conversion ``path`` holds the bytes it was written with: unchanged since its seal last matched, or
    matching the seal's CRC-32 now (the seal then records the new stat). An entry that does not match, or whose seal
    is unreadable, is dropped (said once); one without a seal (a start killed before writing it) is made again."""
    seal_path = _seal_of(path)
    try:
        seal = json.loads(seal_path.read_bytes())
        crc, seen = int(seal["crc32"]), seal["stat"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, TypeError, KeyError):
        crc, seen = None, None
    if seen is not None and seen == _stat_key(path):
        return True
    if crc is not None and _crc32_of(path) == crc:
        _write_atomically(seal_path, json.dumps({"crc32": crc, "stat": _stat_key(path)}).encode())
        return True
    with contextlib.suppress(OSError):
        path.unlink()
        seal_path.unlink()
    _say_once(f"damaged entries of the start-up cache in {path.parent} were dropped and are made again")
    return False


def keep_conversion(file_digest: str, offset: int, length: int, array: np.ndarray, kind: str = "float32") -> np.ndarray:
    """Keep ``array``, the conversion (``kind``) of that tensor, for the next start, and return it memory-mapped from
    the cache (pages the kernel can share and drop); ``array`` itself where it cannot be kept (said once)."""
    path = _conversion_path(file_digest, offset, length, kind)
    if path is None or array.size == 0:
        return array
    dtype = CONVERSIONS[kind][0]
    array = np.ascontiguousarray(array, dtype=dtype)
    root = path.parents[2]
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = 0
    if free - array.nbytes < MIN_FREE_BYTES:
        _say_once(f"the cache's disk ({root}) is nearly full: converted weights are not kept; each start converts")
        return array
    if not _room(root).make(path.parent, array.nbytes):
        return array
    data = array.data.cast("B")
    if not _write_atomically(path, data):
        return array
    seal = {"crc32": zlib.crc32(data), "stat": _stat_key(path)}
    if not _write_atomically(_seal_of(path), json.dumps(seal).encode()):
        return array
    return np.memmap(path, dtype=dtype, mode="r", shape=array.shape)


def max_kept_bytes() -> int:
    """The most bytes of converted weights and compiled models the cache keeps (``LUVC_CACHE_MAX_GB``; a bad value is
    said once and the default taken)."""
    setting = os.environ.get(MAX_ENV)
    if setting:
        with contextlib.suppress(ValueError):
            value = float(setting)
            if math.isfinite(value) and value > 0:
                return int(value * GiB)
        _say_once(
            f"{MAX_ENV}={setting!r} is not a positive number of GiB; the cache keeps at most {DEFAULT_MAX_GIB:g} GiB "
            f"of converted weights and compiled models: set it to e.g. 40, or {ENV}=off."
        )
    return int(DEFAULT_MAX_GIB * GiB)


def _kept_folders(root: Path) -> list[Path]:
    """The cache's folders the limit counts: converted weights, one per kind and weights file, and compiled models,
    one per graph and compile."""
    return [folder for kind in (*CONVERSIONS, OPENVINO) for folder in (root / kind).glob("*") if folder.is_dir()]


def _bytes_under(folder: Path) -> int:
    total = 0
    for path in folder.iterdir():
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            total += path.stat().st_size
    return total


class _Room:
    """This process's account of the converted weights and compiled models under one cache ``root``: their bytes
    (measured once, then counted as written) and the folders it uses, which it never removes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.used: set[Path] = set()
        self.held: int | None = None

    def use(self, folder: Path) -> None:
        """Note that this process maps, imports or writes ``folder``; its time is the folder's last use."""
        if folder not in self.used:
            self.used.add(folder)
            with contextlib.suppress(OSError):  # not made yet: its first write makes it, now
                os.utime(folder)

    def make(self, folder: Path, incoming: int) -> bool:
        """Whether ``incoming`` more bytes for ``folder`` fit under ``max_kept_bytes``, after removing what other
        weights files and graphs keep, least recently used first (said once); False: they are not kept."""
        self.use(folder)
        limit = max_kept_bytes()
        if self.held is None:
            self.held = sum(_bytes_under(found) for found in _kept_folders(self.root))
        self._free(limit, incoming)
        if self.held + incoming > limit:
            _say_once(f"converted weights past {limit / GiB:g} GiB are not kept ({MAX_ENV}); each start converts them")
            return False
        self.held += incoming
        return True

    def written(self, folder: Path) -> None:
        """Account for what another program wrote into ``folder`` (OpenVINO's blobs: their size is known only once
        written), and get back under ``max_kept_bytes`` by removing what other folders keep (said once)."""
        self.use(folder)
        self.held = sum(_bytes_under(found) for found in _kept_folders(self.root))
        self._free(max_kept_bytes(), 0)

    def _free(self, limit: int, incoming: int) -> None:
        """Remove the folders this process does not use, least recently used first, until ``incoming`` more bytes fit
        under ``limit`` or none is left."""
        if self.held is None or self.held + incoming <= limit:
            return
        unused = [found for found in _kept_folders(self.root) if found not in self.used]
        for oldest in sorted(unused, key=_last_use):
            freed = _bytes_under(oldest)
            shutil.rmtree(oldest, ignore_errors=True)
            self.held -= freed
            _say_once(
                f"the start-up cache keeps at most {limit / GiB:g} GiB of converted weights and compiled models "
                f"({MAX_ENV}): those of the exports started least recently were removed"
            )
            if self.held + incoming <= limit:
                break


def _last_use(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0


@functools.cache
def _room(root: Path) -> _Room:
    return _Room(root)


OPENVINO = "openvino"  # the cache's folder of OpenVINO's compiled models
OPENVINO_BLOB = "*.blob"  # what OpenVINO writes in its CACHE_DIR


def openvino_folder(weights_bytes: int = 0) -> Path | None:
    """The folder of OpenVINO's compiled models (made; blobs of the earlier flat layout removed); None where the cache
    is off, cannot be made, or its disk has under ``weights_bytes`` (about what one compiled graph of the export
    takes) + ``MIN_FREE_BYTES`` free (said once)."""
    root = cache_root()
    if root is None:
        return None
    folder = root / OPENVINO
    try:
        folder.mkdir(exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as error:
        _say_once(f"the cache folder cannot be written ({error.strerror}): {folder}")
        return None
    _remove_flat_blobs(folder)
    if free - weights_bytes < MIN_FREE_BYTES:
        _say_once(f"the cache's disk ({root}) is nearly full: OpenVINO's compiled models are not kept")
        return None
    return folder


def _remove_flat_blobs(folder: Path) -> None:
    """Remove the blobs (and seals) an earlier release kept directly in ``folder``: no compile reads them now."""
    flat = [path for path in folder.iterdir() if path.is_file()]
    if not flat:
        return
    size = 0
    for path in flat:
        with contextlib.suppress(OSError):
            size += path.stat().st_size
        with contextlib.suppress(OSError):
            path.unlink()
    _say_once(f"removed {size / 2**20:.0f} MiB of OpenVINO compiled models an earlier release kept in {folder}")


def openvino_entry(folder: Path, graph: Path, settings: dict[str, str]) -> Path | None:
    """The cache folder of ``graph``'s compiled model under ``folder`` (``openvino_folder``) with ``settings`` (the
    compile's, and OpenVINO's release), made and noted as used now, its blobs checked (``check_openvino_blobs``); None
    where it cannot be made. Its key hashes the graph's and its weights files' (``*.data`` beside it) paths, sizes and
    modification times, and the settings: a re-exported graph or another release gets a new entry, and the old one
    ages out."""
    graph = graph.resolve()
    files = [graph, *sorted(graph.parent.glob("*.data"))]
    stats = {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in files}
    key = json.dumps({"files": stats, "settings": settings}, sort_keys=True)
    entry = folder / hashlib.sha256(key.encode()).hexdigest()[:32]
    try:
        entry.mkdir(exist_ok=True)
    except OSError as error:
        _say_once(f"the cache folder cannot be written ({error.strerror}): {folder}")
        return None
    _room(folder.parent).use(entry)
    check_openvino_blobs(entry)
    return entry


def kept_openvino_compile(entry: Path) -> None:
    """After OpenVINO compiled into (or imported from) ``entry``: seal what it wrote and keep the cache under its
    limit (``LUVC_CACHE_MAX_GB``), removing other folders, least recently used first."""
    seal_openvino_blobs(entry)
    _room(entry.parents[1]).written(entry)


def check_openvino_blobs(folder: Path) -> None:
    """Drop every blob of ``folder`` that has no seal or whose bytes no longer match it (said once), and every seal
    whose blob is gone (removed by hand, or by OpenVINO)."""
    for blob in folder.glob(OPENVINO_BLOB):
        if not _seal_of(blob).is_file():
            with contextlib.suppress(OSError):
                blob.unlink()
            continue
        _intact(blob)
    for seal in folder.glob(OPENVINO_BLOB + SEAL_SUFFIX):
        if not seal.with_name(seal.name.removesuffix(SEAL_SUFFIX)).exists():
            with contextlib.suppress(OSError):
                seal.unlink()


def seal_openvino_blobs(folder: Path) -> None:
    """Seal the blobs of ``folder`` that OpenVINO wrote since the last seal (their CRC-32 and stat)."""
    for blob in folder.glob(OPENVINO_BLOB):
        seal = _seal_of(blob)
        if seal.is_file():
            continue
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            record = {"crc32": _crc32_of(blob), "stat": _stat_key(blob)}
            _write_atomically(seal, json.dumps(record).encode())


def kept_record(kind: str, key: str) -> dict | None:
    """The JSON record ``key`` of ``kind`` an earlier start kept (``keep_record``), or None (none, unreadable, off)."""
    root = cache_root()
    if root is None:
        return None
    try:
        record = json.loads((root / kind / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def keep_record(kind: str, key: str, record: dict) -> None:
    """Keep the JSON ``record`` under ``key`` of ``kind`` for the next start (nothing when the cache is off)."""
    root = cache_root()
    if root is not None:
        _write_atomically(root / kind / f"{key}.json", json.dumps(record).encode())


@dataclasses.dataclass(frozen=True)
class CacheContents:
    """What the cache folder holds: the files whose hash it keeps, the converted weights (of how many weights
    files), OpenVINO's compiled models, and the bytes of all of it."""

    root: Path
    verified: int
    conversions: int
    weights_files: int
    bytes: int
    compiled: int = 0


def cache_contents() -> CacheContents | None:
    """What the cache holds now, or None where the cache is off or cannot be made."""
    root = cache_root()
    if root is None:
        return None
    verified = list((root / "verified").glob("*.json"))
    conversions = [path for kind, (_, suffix) in CONVERSIONS.items() for path in (root / kind).glob(f"*/*{suffix}")]
    size = 0
    for path in (file for name in FOLDERS for file in (root / name).rglob("*")):
        with contextlib.suppress(OSError):  # removed by another process meanwhile
            size += path.stat().st_size if path.is_file() else 0
    compiled = len(list((root / OPENVINO).glob(f"*/{OPENVINO_BLOB}")))
    files = len({path.parent.name for path in conversions})  # a weights file by its digest
    return CacheContents(root, len(verified), len(conversions), files, size, compiled)


def clear_cache() -> CacheContents | None:
    """Remove everything the cache holds (its ``FOLDERS``; any other file of the folder stays); returns what it held.
    Processes running now keep the conversions they mapped until they end."""
    held = cache_contents()
    if held is not None:
        for name in FOLDERS:
            shutil.rmtree(held.root / name, ignore_errors=True)
        _room.cache_clear()
    return held


def _write_atomically(path: Path, data) -> bool:
    """Write ``data`` to ``path`` under a temporary name, then rename it (a reader sees the whole file or none);
    False, said once, when it cannot be written."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # its folder may be what could not be made
            partial.unlink(missing_ok=True)
        _say_once(f"the cache folder cannot be written ({error.strerror}): {path.parent}")
        return False
    return True


@functools.cache
def _say_once(message: str) -> None:
    warn(message)
