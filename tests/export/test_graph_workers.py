"""Graphs exported by worker processes: the same files as one process writes, failures named, nothing left behind."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from luvc.errors import LuvcError, critical
from luvc.export import convert, exporter
from luvc.export.graph_workers import GraphWorkerError
from luvc.export.profile import ExportProfile
from luvc.export.stage_times import StageTimes
from luvc.models import load_model

PROFILE = ExportProfile(image_sizes=((224, 224),))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_workers_write_the_files_one_process_writes_byte_for_byte(tmp_path, monkeypatch):
    # tensors above 2 KiB leave the graph as it is converted, as a real checkpoint's do above 1 MiB: the weights file
    # then holds them in conversion order, and the bytes of those the passes fold away (with external data "never",
    # the graph files hold the same tensors inline and there is no order to keep: not exported twice more here)
    monkeypatch.setattr(convert, "INLINE_BYTES", 2048)
    profile = ExportProfile(image_sizes=((224, 224),), external_data="always")
    model = "tiny-qwen2-vl"
    exports = {
        jobs: exporter.export_model(load_model(model), tmp_path / str(jobs), profile, jobs=jobs, show_progress=False)
        for jobs in (1, 3)
    }
    one, three = (_files(exports[jobs]) for jobs in (1, 3))
    assert one.keys() == three.keys()
    assert "weights.data" in one
    assert not any(name.endswith(".part") for name in three)
    assert [name for name in one if one[name] != three[name]] == []


def _failing_at(name: str, fail, monkeypatch) -> None:
    """Make graph ``name``'s tracing call ``fail()`` first (the workers are forked with the patch)."""
    trace = convert.OnnxFromGraphSpec.call_impl

    def call_impl(self):
        if self.spec.name == name:
            fail()
        return trace(self)

    monkeypatch.setattr(convert.OnnxFromGraphSpec, "call_impl", call_impl)


def _export_with_workers(folder: Path) -> Path:
    return exporter.export_model(load_model("tiny-qwen2-vl"), folder, PROFILE, show_progress=False, jobs=2)


def test_a_workers_refusal_is_the_exports_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    _failing_at("decode", lambda: critical("the decode graph is refused here; export it another way."), monkeypatch)
    with pytest.raises(LuvcError, match=r"^the decode graph is refused here; export it another way\.$"):
        _export_with_workers(tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


def test_a_workers_bug_comes_back_with_its_traceback(tmp_path, monkeypatch):
    def bug():
        raise ValueError("a bug in the exporter")

    _failing_at("prefill_224x224", bug, monkeypatch)
    with pytest.raises(GraphWorkerError, match=r"(?s)Traceback.*ValueError: a bug in the exporter"):
        _export_with_workers(tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_is_named_with_the_fix(tmp_path, monkeypatch):
    _failing_at("prefill_224x224", lambda: os.kill(os.getpid(), signal.SIGKILL), monkeypatch)  # as the OOM killer
    with pytest.raises(LuvcError, match=r"died \(signal 9\).*export with --jobs 1"):
        _export_with_workers(tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
def test_an_interrupt_while_workers_run_stops_them_and_leaves_nothing(tmp_path, monkeypatch):
    real_wait = exporter.GraphWorkers.wait

    def interrupted_once_a_graph_is_traced(self, on_step, on_done):
        def step(index, label):
            on_step(index, label)
            if label == "converting":  # a graph traced: Ctrl-C reaches the exporter, not its workers (they ignore it)
                raise KeyboardInterrupt

        real_wait(self, step, on_done)

    monkeypatch.setattr(exporter.GraphWorkers, "wait", interrupted_once_a_graph_is_traced)
    with pytest.raises(KeyboardInterrupt):
        _export_with_workers(tmp_path / "export")
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []


EXPORT_WITH_SLOW_WORKERS = """
import sys, time
from luvc.export import convert, exporter
from luvc.export.profile import ExportProfile
from luvc.export.stage_times import StageTimes
from luvc.models import load_model
exporter.check_graph = lambda *args: time.sleep(120)  # each worker outlives the test unless it dies with its parent
exporter.export_model(load_model("tiny-qwen2-vl"), sys.argv[1], ExportProfile(image_sizes=((224, 224),)),
                      show_progress=False, jobs=2)
"""


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow  # traces a tiny model's graphs (3-10 s)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; workers die with the exporter on Linux")
def test_workers_die_with_a_killed_exporter(tmp_path):
    exporting = subprocess.Popen([sys.executable, "-c", EXPORT_WITH_SLOW_WORKERS, str(tmp_path / "export")])
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(exporting.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) >= 2, "the exporter never started its workers"
    finally:
        exporting.kill()  # kill -9: no handler of the exporter's runs
        exporting.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)
    assert not (tmp_path / "export").exists()


def _two_steps(value):
    def job(report):
        report("half")
        report("all")
        return value

    return job


def test_each_jobs_steps_come_before_its_result_and_every_result_comes_back():
    from luvc.export.graph_workers import GraphWorkers

    seen = []
    with GraphWorkers([_two_steps(n * 10) for n in range(5)], costs=[1, 5, 2, 4, 3], workers=2) as workers:
        workers.wait(lambda index, step: seen.append((index, step)), lambda index, result: seen.append((index, result)))
    for index in range(5):
        assert [event for event in seen if event[0] == index] == [(index, "half"), (index, "all"), (index, index * 10)]
    assert multiprocessing.active_children() == []


def test_workers_leave_no_thread_that_would_stop_the_next_fork():
    """The queues' feeder threads end with the workers: a second GraphWorkers right after forks (once it was refused,
    'these run beside it: QueueFeederThread')."""
    from luvc.export.graph_workers import GraphWorkers, other_threads

    for _ in range(3):
        with GraphWorkers([_two_steps(1), _two_steps(2)], costs=[1, 2], workers=2) as workers:
            workers.wait(lambda index, step: None, lambda index, result: None)
        assert other_threads() == []


def test_a_result_lost_on_the_way_is_an_error_not_a_wait_forever():
    from luvc.export.graph_workers import GraphWorkers

    unpicklable = _two_steps(lambda: None)  # the worker's queue cannot send it back
    with pytest.raises(GraphWorkerError, match=r"ended with [12] graphs unreported"):  # a worker may have run both
        with GraphWorkers([unpicklable, _two_steps(1)], costs=[2, 1], workers=2) as workers:
            workers.wait(lambda index, step: None, lambda index, result: None)
    assert multiprocessing.active_children() == []


def _disk_with(free: int):
    def usage(path):
        return shutil._ntuple_diskusage(total=free * 2, used=free, free=free)

    return usage


def test_workers_the_disk_cannot_hold_are_refused_when_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter.shutil, "disk_usage", _disk_with(10_000))  # less than the tiny model's weights
    profile = ExportProfile(image_sizes=((224, 224),), external_data="always")
    refused = r"^--jobs 2 writes each graph's smaller tensors .* GB are free; .* pass --jobs 1"
    with pytest.raises(LuvcError, match=refused):
        exporter.export_model(load_model("tiny-qwen2-vl"), tmp_path / "refused", profile, show_progress=False, jobs=2)
    assert list(tmp_path.iterdir()) == []


def test_workers_the_disk_cannot_hold_are_left_out_by_default(tmp_path, monkeypatch):
    """Without ``--jobs`` the exporter takes one process where the disk would not hold the workers' files (the test
    above shows that the tiny model's need exceeds these 10 kB, as an error when workers are asked for); the export
    in one process is every other test's. Decided here without exporting (an export costs 40-50 s of CI)."""
    monkeypatch.setattr(exporter.shutil, "disk_usage", _disk_with(10_000))
    unasked = exporter.OnnxFromCompressedModel(load_model("tiny-qwen2-vl"), tmp_path / "export")
    assert unasked._workers_the_disk_holds(2, tmp_path, need=10_001) == 1
    assert unasked._workers_the_disk_holds(2, tmp_path, need=10_000) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_workers_need_room_for_their_graphs_weights_not_a_model_per_graph(tmp_path, monkeypatch):
    """The tiny Qwen2-VL's graphs hold 0.03 MB (embed), 0.30 MB (vision) and 0.22 MB (each of the three LLM graphs)
    of its 0.52 MB of parameters: with 2 MB free, the parts and the merged file fit (1.5 MB), one copy of the whole
    model per graph (3.1 MB) would not."""
    monkeypatch.setattr(exporter.shutil, "disk_usage", _disk_with(2_000_000))
    profile = ExportProfile(image_sizes=((224, 224),), external_data="always")
    times = StageTimes()
    adapter = load_model("tiny-qwen2-vl")
    exporter.export_model(adapter, tmp_path / "export", profile, show_progress=False, times=times, jobs=2)
    assert times.workers == 2
    assert (tmp_path / "export" / "weights.data").stat().st_size < 2_000_000


@pytest.mark.slow
def test_workers_leave_the_models_memory_to_the_exporter_and_need_room_for_little_more(tmp_path, monkeypatch):
    """Tensors above 2 KiB leave a graph while it is converted, as a real checkpoint's do above 1 MiB, and those that
    view the model's memory (every weight) are written by the exporter, once, not by the workers: the three LLM
    graphs' files hold none of their 0.22 MB of weights each, the vision graph's its computed constants (rotary
    tables). So the tiny Qwen2-VL needs room for its 0.52 MB of parameters and about 10 kB of tensors under 2 KiB,
    and two workers export it with 1 MB free (a copy of each graph's weights, 1.5 MB, is not written). The torchlib
    registry is built once, by the exporter before it forks, not by each worker (their builds are counted in a
    file, since each runs in a process of its own)."""
    from torch.onnx._internal.exporter import _registration

    from luvc.export import converter_settings

    builds = tmp_path / "registry-builds"
    from_torchlib = _registration.ONNXRegistry.from_torchlib.__func__

    def counted(cls, *args, **kwargs):
        with builds.open("a") as file:
            file.write(f"{os.getpid()}\n")
        return from_torchlib(cls, *args, **kwargs)

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(counted))
    converter_settings._built_registry.cache_clear()  # as in a new process
    monkeypatch.setattr(convert, "INLINE_BYTES", 2048)
    monkeypatch.setattr(exporter.shutil, "disk_usage", _disk_with(1_000_000))
    parts = []
    merged_into = exporter.GraphResult.merged_into

    def measured(self, weights, staging, stable):
        parts.append((staging / self.part.file).stat().st_size)
        return merged_into(self, weights, staging, stable)

    monkeypatch.setattr(exporter.GraphResult, "merged_into", measured)
    profile = ExportProfile(image_sizes=((224, 224),), external_data="always")
    times = StageTimes()
    out = tmp_path / "export"
    exporter.export_model(load_model("tiny-qwen2-vl"), out, profile, show_progress=False, times=times, jobs=2)
    assert times.workers == 2 and len(parts) == 5  # embed, vision, prefill, decode, prefill_text
    assert all(size < 8192 for size in parts[2:]), parts
    assert sum(parts) < 0.5 * (out / "weights.data").stat().st_size
    assert builds.read_text().split() == [str(os.getpid())]


def test_a_worker_leaves_alone_what_it_inherited_from_an_earlier_onnx_runtime_run():
    """An ONNX Runtime session with a thread pool, held only by a reference cycle in this process: a worker whose
    garbage collector finalized its copy would wait forever for threads the fork did not copy."""
    import gc
    import threading

    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    from luvc.export.graph_workers import GraphWorkers

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2  # a pool thread,
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # which blocks as soon as it is idle
    gc.disable()  # the cycle must still be there when the workers are forked
    try:
        session = onnxruntime.InferenceSession(onnx.helper.make_model(graph).SerializeToString(), options)
        session.run(None, {"x": np.ones(4, np.float32)})
        time.sleep(0.2)  # its pool thread now waits for work, on a condition variable the fork copies
        holder = {"session": session, "self": None}
        holder["self"] = holder
        del session
        del holder

        def collect(report):
            return gc.collect() >= 0

        with GraphWorkers([collect], costs=[1], workers=1) as workers:
            hung = threading.Timer(30, lambda: [child.kill() for child in multiprocessing.active_children()])
            hung.start()
            try:
                results = []
                workers.wait(lambda index, step: None, lambda index, result: results.append(result))
            finally:
                hung.cancel()
    finally:
        gc.enable()
    assert results == [True]


def test_a_process_that_started_cuda_exports_in_one_process(tmp_path, monkeypatch):
    """Once the CUDA driver is loaded here (a device count, an ONNX Runtime CUDA session), a forked graph worker cannot
    use CUDA (PyTorch refuses it in every child): the default is one process, and --jobs 2 is refused with the fix."""
    from luvc.export import graph_workers

    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 00:00 1 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04\n")
    assert graph_workers.cuda_initialized(str(maps))
    maps.write_text("7f00-7f01 r-xp 00000000 00:00 1 /opt/torch/lib/libcudart.so.13\n")  # linked, not started
    assert not graph_workers.cuda_initialized(str(maps))
    assert not graph_workers.cuda_initialized(str(tmp_path / "absent"))

    monkeypatch.setattr(graph_workers, "cuda_initialized", lambda maps="": True)
    monkeypatch.setattr(exporter, "cuda_initialized", lambda maps="": True)
    assert graph_workers.default_workers(5) == 1
    with pytest.raises(LuvcError, match=r"^--jobs 2 forks graph workers, which cannot use CUDA .* --jobs 1"):
        exporter.export_model(load_model("tiny-qwen2-vl"), tmp_path / "out", PROFILE, show_progress=False, jobs=2)
    assert not (tmp_path / "out").exists()


def test_workers_fork_only_from_a_process_with_one_thread(tmp_path):
    """A fork copies only the calling thread (a lock another holds stays held in every child): while another thread
    runs, the default is one process, GraphWorkers refuses to fork, and --jobs 2 is refused with the fix."""
    import threading

    from luvc.export import graph_workers

    stop = threading.Event()
    beside = threading.Thread(target=stop.wait, name="hashing-beside", daemon=True)
    beside.start()
    try:
        assert graph_workers.other_threads() == ["hashing-beside"]
        assert graph_workers.default_workers(5) == 1
        with pytest.raises(GraphWorkerError, match="graph workers fork from one thread; these run beside it: hashing"):
            with graph_workers.GraphWorkers([_two_steps(1)], costs=[1], workers=1):
                pass
        with pytest.raises(LuvcError, match=r"^--jobs 2 forks graph workers, which is not safe while other threads"):
            exporter.export_model(load_model("tiny-qwen2-vl"), tmp_path / "out", PROFILE, show_progress=False, jobs=2)
    finally:
        stop.set()
        beside.join()
    assert graph_workers.other_threads() == []
    assert not (tmp_path / "out").exists()


def test_jobs_beyond_the_graphs_or_the_cpus_are_noted():
    from luvc.export.graph_workers import asked_workers_note, usable_cpus

    cpus = usable_cpus()
    assert asked_workers_note(1, 5) is None
    assert asked_workers_note(cpus, cpus) is None
    assert asked_workers_note(cpus + 59, cpus + 3) == (
        f"--jobs {cpus + 59}: this export has {cpus + 3} graphs, so {cpus + 3} graph workers run; they share this "
        f"machine's {cpus} usable CPUs, each with memory of its own."
    )
    assert asked_workers_note(cpus + 1, cpus + 1) == (
        f"--jobs {cpus + 1}: {cpus + 1} graph workers run; they share this machine's {cpus} usable CPUs, each with "
        "memory of its own."
    )


_TQDM_SCENARIO = """
import multiprocessing, os, sys
import tqdm
from luvc.export.graph_workers import _own_tqdm_locks
tqdm.tqdm(total=1, disable=True).close()  # the exporter's lock exists before the fork, as after a first export

def worker(own):
    if own:
        _own_tqdm_locks()
    tqdm.tqdm.get_lock().acquire()  # a bar holds the lock when the worker is killed
    os._exit(1)

child = multiprocessing.get_context("fork").Process(target=worker, args=(sys.argv[1] == "own",))
child.start()
child.join()
tqdm.tqdm(total=1, disable=True).close()  # the exporter's next bar
print("not blocked")
"""


@pytest.mark.slow  # a fresh interpreter each (the premise waits 20 s)
@pytest.mark.parametrize("own", [True, False])
def test_a_worker_killed_while_a_progress_bar_holds_its_lock_never_blocks_the_exporter(own):
    """A full test run hung in an in-process export: a graph worker killed inside a tqdm bar (torch.onnx makes them
    while converting) had left tqdm's inherited multiprocessing lock held in the exporter. Each worker now makes
    its own (``_own_tqdm_locks``); without it the exporter's next bar waits forever, the premise checked here."""
    command = [sys.executable, "-c", _TQDM_SCENARIO, "own" if own else "inherited"]
    try:
        # the blocked case waits forever: 20 s tells it; the other is an interpreter start and imports
        result = subprocess.run(command, capture_output=True, text=True, timeout=120 if own else 20)
    except subprocess.TimeoutExpired:
        assert not own, "the exporter blocked on a lock its killed worker held"
        return
    assert own, "the premise: a worker holding the inherited lock blocks the exporter"
    assert result.returncode == 0 and "not blocked" in result.stdout, result.stderr
