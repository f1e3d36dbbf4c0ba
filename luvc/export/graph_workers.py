"""Graphs exported side by side in worker processes forked from the exporter.

Tracing (``torch.export``) and conversion (``torch.onnx.export``) are single-threaded Python, so an export runs one
core while the others idle, and its time is the sum of its graphs'. ``GraphWorkers`` forks its processes once the
model is loaded: each inherits the model and the graph specs as they are in memory (weights shared copy-on-write,
nothing pickled), takes the next job (the dearest first), and sends back its progress and its result; the exporter
keeps the progress display, the hashing thread and every file that all graphs share. Forking happens before any of
the exporter's own threads start; a worker runs PyTorch on one thread, ignores Ctrl-C and SIGTERM (the exporter
stops it) and, on Linux, dies with the exporter even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from luvc.errors import LuvcError, critical, is_disk_full

MAX_DEFAULT_WORKERS = 4  # the default's cap: each worker holds one graph's trace and conversion beside the weights
POLL_SECONDS = 0.5  # how often the exporter checks that its workers are alive while it waits for news

Job = Callable[[Callable[[str], None]], Any]  # job(report) -> a picklable result; report(step) shows progress


class GraphWorkerError(RuntimeError):
    """A graph worker failed on something that is not the user's to fix; the message carries its traceback."""


def cuda_initialized(maps: str = "/proc/self/maps") -> bool:
    """Whether this process has started CUDA, which a forked child cannot use again ("Cannot re-initialize CUDA in
    forked subprocess", seen on an H200 when a test had run a pipeline on the GPU before exporting): PyTorch's own
    initialization, or any call that loaded the driver (``libcuda``, listed in ``maps``: a device count, ONNX Runtime's
    CUDA EP), after which PyTorch refuses CUDA in every child."""
    import torch

    if torch.cuda.is_initialized():
        return True
    try:
        with open(maps) as mapped:
            return any("/libcuda.so" in line for line in mapped)
    except OSError:  # not Linux: graph workers are Linux-only by default
        return False


def default_workers(graphs: int) -> int:
    """How many processes export ``graphs`` graphs by default: on Linux the CPUs this process may run on, at most
    ``MAX_DEFAULT_WORKERS`` and one per graph; elsewhere 1, the graphs exported in this process (forking a process
    that has run PyTorch or ONNX Runtime is only tested on Linux; ``--jobs`` still asks for workers there); 1 too once
    this process has initialized CUDA, or while another thread runs in it."""
    if not sys.platform.startswith("linux") or cuda_initialized() or other_threads():
        return 1
    return max(1, min(usable_cpus(), graphs, MAX_DEFAULT_WORKERS))


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def asked_workers_note(jobs: int, graphs: int) -> str | None:
    """A note when ``--jobs jobs`` asks for more workers than there are ``graphs`` (one per graph runs) or usable
    CPUs (the workers share them); None when it asks for no more than both."""
    workers, cpus = min(jobs, graphs), usable_cpus()
    if jobs <= graphs and jobs <= cpus:
        return None
    run = (
        f"this export has {graphs} graphs, so {workers} graph workers run"
        if jobs > graphs
        else f"{jobs} graph workers run"
    )
    shared = f"; they share this machine's {cpus} usable CPUs, each with memory of its own" if workers > cpus else ""
    return f"--jobs {jobs}: {run}{shared}."


# threads that are stopped before forking, and start again by themselves: tqdm's monitor (a progress bar of
# transformers' loading starts it; it only sleeps and checks bars)
STOPPED_BEFORE_FORK = frozenset({"tqdm_monitor"})


def other_threads() -> list[str]:
    """The names of the threads running in this process beside the calling one (but ``STOPPED_BEFORE_FORK``): a fork
    copies only the caller, so a lock another thread holds stays held in every child."""
    return [
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.current_thread() and thread.name not in STOPPED_BEFORE_FORK
    ]


def _stop_tqdm_monitor() -> None:
    """Stop tqdm's monitor thread, if it runs (its next bar starts one again)."""
    tqdm = sys.modules.get("tqdm")
    monitor = getattr(getattr(tqdm, "tqdm", None), "monitor", None)
    if monitor is not None and monitor.is_alive():
        monitor.exit()


FEEDER_EXIT_S = 2.0  # how long a closed queue's feeder thread may take to end (blocked on a reader that died: more)


def _wait_for_feeders(timeout_s: float) -> None:
    """Give the queues' feeder threads, told to end by ``close``, the moment they take: one still running would stop
    the next ``GraphWorkers`` of this process from forking (``other_threads``)."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name == "QueueFeederThread":  # multiprocessing.queues names its feeders so
            thread.join(max(0.0, deadline - time.monotonic()))


class GraphWorkers:
    """``jobs`` run by ``workers`` processes, forked when it is entered (``start``), the dearest (by ``costs``) first;
    a context manager that stops whatever still runs when it exits."""

    def __init__(self, jobs: Sequence[Job], costs: Sequence[int], workers: int) -> None:
        self._jobs, self._costs, self._workers = list(jobs), list(costs), workers
        self._processes: list = []
        self._pending: set[int] = set()

    def start(self) -> GraphWorkers:
        """Fork the workers; refused while another thread runs here (``other_threads``)."""
        _stop_tqdm_monitor()
        running = other_threads()
        if running:
            raise GraphWorkerError(f"graph workers fork from one thread; these run beside it: {', '.join(running)}")
        jobs, costs, workers = self._jobs, self._costs, self._workers
        context = multiprocessing.get_context("fork")
        self._tasks, self._messages = context.Queue(), context.Queue()
        for index in sorted(range(len(jobs)), key=lambda index: -costs[index]):
            self._tasks.put(index)
        for _ in range(workers):
            self._tasks.put(None)  # one stop sign per worker, after every job
        arguments = (jobs, self._tasks, self._messages, os.getpid())
        self._processes = [
            context.Process(target=_serve, args=arguments, name=f"luvc-graph-worker-{n}", daemon=True)
            for n in range(workers)
        ]
        # What the workers inherit stays out of their garbage collector: a cycle collected there could finalize an
        # object whose threads the fork left behind (an ONNX Runtime session of an earlier run in this process
        # waits forever for its thread pool). Frozen here, and thawed once forked; fewer pages copied as well.
        gc.freeze()
        try:
            for process in self._processes:
                process.start()
        finally:
            gc.unfreeze()
        self._pending = set(range(len(jobs)))
        return self

    def __enter__(self) -> GraphWorkers:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        for process in self._processes:
            if process.is_alive() and self._pending:
                process.kill()
            process.join()
        for channel in (self._tasks, self._messages):
            channel.close()
            channel.cancel_join_thread()
        _wait_for_feeders(FEEDER_EXIT_S)

    def wait(self, on_step: Callable[[int, str], None], on_done: Callable[[int, Any], None]) -> None:
        """Call ``on_step(index, step)`` for each step a job reports and ``on_done(index, result)`` as each job
        finishes, here, until all have. A job that raised ``LuvcError`` stops the export with its message; any other
        failure raises ``GraphWorkerError`` with the worker's traceback; a worker that died (out of memory, killed)
        is named with the fix."""
        while self._pending:
            try:
                kind, index, payload = self._messages.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _check_alive(self._processes)
                exited = all(process.exitcode is not None for process in self._processes)
                if exited and self._messages.empty():  # all gone, the last news read: a result was lost on the way
                    lost = len(self._pending)
                    raise GraphWorkerError(f"the graph workers ended with {lost} graphs unreported") from None
                continue
            if kind == "step":
                on_step(index, payload)
            elif kind == "done":
                self._pending.discard(index)
                on_done(index, payload)
            elif kind == "refused":
                critical(payload)
            elif kind == "disk full":
                raise OSError(errno.ENOSPC, payload)
            else:
                raise GraphWorkerError(f"a graph worker failed:\n{payload}")


def _check_alive(processes) -> None:
    """Stop the export when a worker died without reporting (the kernel's OOM killer, a signal)."""
    for process in processes:
        if process.exitcode not in (None, 0):
            how = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
            critical(
                f"A graph worker process died ({how}), most likely out of memory; export with --jobs 1 (one graph at "
                "a time, the least memory)."
            )


def _serve(jobs: Sequence[Job], tasks, messages, parent: int) -> None:
    """A worker's loop: run the jobs it is given until the stop sign, reporting each one's steps and result."""
    _die_with_parent(parent)
    _own_tqdm_locks()
    for stop in (signal.SIGINT, signal.SIGTERM):  # the exporter decides what an interrupt stops, and stops them
        signal.signal(stop, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)  # one core per worker; and OpenMP's pool does not survive a fork
    while (index := tasks.get()) is not None:
        try:
            result = jobs[index](lambda step, index=index: messages.put(("step", index, step)))
        except LuvcError as error:
            messages.put(("refused", index, str(error)))
            return
        except OSError as error:
            if not is_disk_full(error):
                messages.put(("failed", index, traceback.format_exc()))
            else:  # the user's to fix: raised again in the exporter, which names its folder
                messages.put(("disk full", index, error.strerror))
            return
        except BaseException:
            messages.put(("failed", index, traceback.format_exc()))
            return
        messages.put(("done", index, result))


def _own_tqdm_locks() -> None:
    """Give tqdm in this worker locks of its own. The one it inherits by the fork is a multiprocessing semaphore shared
    with the exporter (tqdm makes it so that forked processes share a terminal), and torch.onnx makes progress bars
    while it converts: a worker killed while a bar held it (the exporter stops the others when one fails) left the
    exporter's next bar waiting on it forever, which hung a test run in a later in-process export."""
    std = sys.modules.get("tqdm.std")
    if std is None:  # not imported before the fork: the worker makes its own
        return
    std.TqdmDefaultWriteLock.mp_lock = None  # a write lock made from now on holds only a thread lock
    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if "_lock" in vars(cls):  # a class that made its lock before the fork
            cls.set_lock(std.TqdmDefaultWriteLock())


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the exporter (pid ``parent``) dies (Linux's ``PR_SET_PDEATHSIG``);
    elsewhere a no-op. An exporter that died before the request was made is caught by its pid."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
