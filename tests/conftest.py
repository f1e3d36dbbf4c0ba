import copy
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

# pytest-xdist runs one worker more than the CPUs (pytest_xdist_auto_num_workers below), and an OpenMP pool (PyTorch's,
# MKL's) of one thread per CPU in each oversubscribes the cores: with the CPUs shared out among the workers instead,
# tests/parity and tests/models/test_decoder.py took 332 and 339 s against 392 and 375 s (2 cores, 3 workers, runs in
# turns, docs/benchmarks.md). Set before PyTorch is imported (below: graph_workers imports none), and inherited by the
# CLI processes tests start.
from luvc.export.graph_workers import usable_cpus

if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import numpy as np
import onnx
import pytest
from filelock import FileLock

from luvc.compress.config import LUVCConfig
from luvc.export.exporter import export_model
from luvc.export.manifest import content_digest, sha256_file
from luvc.export.profile import ExportProfile
from luvc.images import synthetic_image
from luvc.models import EXPORTED_TINY_MODELS, TINY_MODELS, load_model

FAMILIES = list(TINY_MODELS)
# Qwen3.5: transformers' reference kernels for its linear attention make each PyTorch run slow on the CPU. As a
# parameter of the shared PyTorch tests it is in the slow tier (its own module, tests/models/test_qwen3_5.py, stays in
# the fast one)
SLOW_FAMILIES = frozenset({"tiny-qwen3.5"})
FAMILY_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_FAMILIES else name for name in FAMILIES]
# families the all-family export tests leave out, each taken through the stages once by a module of its own
# (tests/export/test_qwen3_5_export.py, test_gemma3_export.py): CI's time holds the matrix at five families
OWN_EXPORT_MODULES = frozenset({"tiny-qwen3.5", "tiny-gemma3"})
EXPORT_MATRIX = [name for name in EXPORTED_TINY_MODELS if name not in OWN_EXPORT_MODULES]
# tests that need an exported model, compile the plugins, run the examples or the eval runner are the slow tier;
# `pytest -m "not slow"` runs the rest (README, "Quick start"); `-m toolchain`, `examples` or `eval` picks one part
SLOW_FIXTURES = frozenset(
    {"exports", "copied_export", "references", "bad_inputs", "video_exports", "uncompressed_export"}
)
OWN_MARKERS = {"plugin_builds": "toolchain"}  # a fixture that puts a test under a marker of its own
SLOW_MARKERS = frozenset({"toolchain", "examples", "eval"})


@pytest.hookimpl(optionalhook=True)  # pytest without pytest-xdist (the floor environment's) knows no such hook
def pytest_xdist_auto_num_workers(config) -> int | None:
    """``-n auto`` (pyproject's addopts): one worker more than the CPUs. Part of a test's time is spent waiting (CLI
    subprocesses starting, servers coming up, one worker waiting on the lock of an export another is making), and the
    extra worker fills it: the whole suite on 2 cores took 27:32 with 3 workers against 31:18 with 2 (2026-11-28,
    docs/benchmarks.md). ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides where it is set (pytest-xdist's own rule)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return usable_cpus() + 1


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for fixture, marker in OWN_MARKERS.items():
            if fixture in fixtures:
                item.add_marker(getattr(pytest.mark, marker))
        if SLOW_FIXTURES & fixtures or any(item.get_closest_marker(name) for name in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)


QWEN_BUCKETS = ((224, 224), (168, 252))  # two buckets: the second is exercised by tests/export/test_buckets.py
# images of other sizes, (W, H) as PIL has them, and the bucket (HxW) of QWEN_BUCKETS that --fit nearest gives each,
# worked out by hand: the bucket nearest the image's aspect ratio, unless the processor keeps the image's size
FIT_CASES = [
    ((640, 480), "168x252"),
    ((480, 640), "224x224"),
    ((1920, 1080), "168x252"),
    ((300, 300), "224x224"),
    ((252, 168), "168x252"),
    ((5000, 2000), "168x252"),
]


def fit_case(size: tuple[int, int], bucket: str, seed: int = 0):
    """A synthetic image of ``size`` (W, H) and the image the engine should see: resized by hand (bicubic, as
    Qwen-VL's processor) to ``bucket`` when it is not already that size."""
    from PIL import Image

    image = synthetic_image(size[1], size[0], seed)
    height, width = (int(side) for side in bucket.split("x"))
    by_hand = image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BICUBIC)
    return image, by_hand


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """The run's own cache folder (``luvc.cache``), for this process and the CLIs it starts: tests never read or
    write the user's."""
    from luvc import cache

    os.environ[cache.ENV] = str(tmp_path_factory.mktemp("luvc-cache"))
    cache.cache_root.cache_clear()
    yield
    cache.cache_root.cache_clear()


@pytest.fixture(scope="session")
def image():
    return synthetic_image()


@pytest.fixture(scope="session")
def _pristine():
    return {name: load_model(name) for name in FAMILIES}


@pytest.fixture(params=FAMILY_PARAMS)
def adapter(request, _pristine):
    """A fresh copy of each tiny family (tests patch the model in place)."""
    pristine = _pristine[request.param]
    return type(pristine)(copy.deepcopy(pristine.model), pristine.tokenizer, pristine.image_processor, pristine.name)


@pytest.fixture
def stock(adapter):
    """An unpatched deep copy of the adapter's model: the stock transformers model."""
    return copy.deepcopy(adapter.model)


def write_clip(path: Path, frames: int = 25, fps: int = 10, size=(64, 96)) -> Path:
    """An MPEG-4 clip whose frame ``i`` is flat grey level ``10 * i % 250`` (written with PyAV)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 10 * index % 250, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels and holds almost none: what a decompression bomb looks like to
    a reader that checks the header before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def one_line_error(argv: list[str], capsys) -> str:
    """Run ``luvc-export argv``, which must fail on bad input: exit code 2 and one line on stderr with no traceback;
    returns that line."""
    from luvc.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    """Leftovers of a run beside its output: lock files and partial folders."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def stock_inputs(adapter, inputs: dict) -> dict:
    """What the stock transformers forward needs besides our inputs (Qwen-VL wants mm_token_type_ids)."""
    inputs = dict(inputs)
    if "image_grid_thw" in inputs:
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == adapter.image_token_id).int()
    return inputs


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """The folder ``name``, made by ``make(folder)`` once in the whole test run: with pytest-xdist, by whichever worker
    asks first while the others wait on a lock file (the workers share their base folder's parent); a folder that a
    worker was killed making is made again. Tests read it; a test that changes one works on a copy."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent / "shared"
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    done = target.with_name(target.name + ".done")
    with FileLock(str(target) + ".lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            make(target)
            done.touch()
    return target


# a hybrid model's prefill is a ladder of graphs, each traced at its one length (luvc.export.graphs.ladder_lengths):
# prompts of up to 257 text tokens keep the three rungs a kind (64, 256 and the longest) that the ladder tests need,
# with the longest traced at 257 text tokens instead of the default 512: the tiny Qwen3.5's export took 63 s instead
# of 79 s (2 cores, alone; 47 s with 128 tokens, but two rungs)
LADDER_FAMILIES = frozenset({"tiny-qwen3.5"})
LADDER_TEXT_TOKENS = 257


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """``exports(family, precision, passes)``: the folder of a default-LUVC export, made once per test run."""
    made = {}

    def get(family: str, precision: str = "fp32", passes: bool = True):
        key = (family, precision, passes)
        if key not in made:
            sizes = QWEN_BUCKETS if key == ("tiny-qwen2-vl", "fp32", True) else ((224, 224),)
            external = "always" if key == ("tiny-llava", "fp32", True) else None
            text = LADDER_TEXT_TOKENS if family in LADDER_FAMILIES else None
            profile = ExportProfile(
                image_sizes=sizes, precision=precision, external_data=external, max_text_tokens=text
            )
            made[key] = made_once(
                tmp_path_factory,
                f"exports/{family}-{precision}-{'passes' if passes else 'raw'}",
                lambda out: export_model(load_model(family), out, profile, show_progress=False, passes=passes),
            )
        return made[key]

    return get


@pytest.fixture(scope="session")
def uncompressed_export(tmp_path_factory):
    """The tiny Qwen2-VL exported at 224x224 with compression off, through the CLI (``--no-luvc``), once per test
    run: the baseline of parity's compression cost and of the graph-overhead tests."""
    from luvc.cli.main import main

    def make(out: Path) -> None:
        argv = ["export", "--model", "tiny-qwen2-vl", "--out", str(out), "--image-size", "224x224", "--no-luvc"]
        assert main(argv) == 0

    return made_once(tmp_path_factory, "exports/tiny-qwen2-vl-no-luvc", make)


VIDEO_FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]  # those that export
PYTORCH_VIDEO_FAMILIES = [*VIDEO_FAMILIES, pytest.param("tiny-qwen3.5", marks=pytest.mark.slow)]
# frames, H, W: 4 temporal slices of 8 x 12 patches (14 px; Qwen3-VL and Qwen3.5 16 px)
VIDEO_BUCKETS = {
    "tiny-qwen2-vl": (8, 112, 168),
    "tiny-qwen2.5-vl": (8, 112, 168),
    "tiny-qwen3-vl": (8, 128, 192),
    "tiny-qwen3.5": (8, 128, 192),
}
VIDEO_LUVC = LUVCConfig(oim_layers=(0, 1), oim_temporal=True, oim_first_axis="T")  # a T merge, then a W merge


@pytest.fixture(scope="session")
def video_exports(tmp_path_factory):
    """``video_exports(family)``: an export under ``VIDEO_LUVC`` with an image bucket (224x224), a video bucket
    (``VIDEO_BUCKETS``) and the mixed bucket of both (one prompt, the image then the video), made once per session."""
    made = {}

    def get(family: str):
        if family not in made:
            video = VIDEO_BUCKETS[family]
            profile = ExportProfile(image_sizes=((224, 224),), video_sizes=(video,), mixed_sizes=(((224, 224), video),))
            made[family] = made_once(
                tmp_path_factory,
                f"video-exports/{family}",
                lambda out: export_model(load_model(family), out, profile, VIDEO_LUVC, show_progress=False),
            )
        return made[family]

    return get


@pytest.fixture
def copied_export(exports, tmp_path):
    def copy(family: str, precision: str = "fp32") -> Path:
        target = tmp_path / f"{family}-{precision}"
        shutil.copytree(exports(family, precision), target)
        return target

    return copy


def perturb_weight(folder: Path, graph_file: str, node_name: str, scale: float = 0.5) -> str:
    """Add seeded noise to the weight input of ``node_name`` in ``graph_file`` and re-hash it in the manifest (an
    export that is internally consistent but numerically wrong). Returns the initializer's name."""
    path = folder / graph_file
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == node_name)
    initializers = {init.name: init for init in model.graph.initializer}
    name = next(i for i in node.input if i in initializers)
    weight = onnx.numpy_helper.to_array(initializers[name])
    noise = np.random.default_rng(0).normal(0.0, scale * float(weight.std()), weight.shape).astype(weight.dtype)
    initializers[name].CopyFrom(onnx.numpy_helper.from_array(weight + noise, name))
    onnx.save(model, str(path))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][graph_file] = sha256_file(path)
    manifest["content_sha256"] = content_digest(manifest)  # sealed again, as a re-export would
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return name
