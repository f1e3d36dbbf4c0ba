"""``--cuda-graphs auto|on|off``: whether a run captures its static shapes as CUDA graphs and replays them, for every
front end (``run``, ``serve``, Triton, ``eval``, ``generate``) and both paths (the runtime's sessions,
``luvc.runtime.replay``; PyTorch's compiled LLM prefill, ``luvc.models.compiled``). No import beyond the standard
library: ``plan`` and the CLI's parsers read it without PyTorch.
"""

from __future__ import annotations

from luvc.errors import critical

CUDA_GRAPH_CHOICES = ("auto", "on", "off")
DEFAULT_CUDA_GRAPHS = "auto"
# device bytes of persistent input and output buffers one replayed session keeps at most (a prefill holds its presents,
# the keys and values of its padded prompt, for each batch and length it captured); past it a new shape runs plain
MAX_BUFFER_BYTES = 1 << 30
# captured graphs one replayed session keeps at most: decode has one per (batch size, attention window), and a window
# grows by 64 tokens (luvc.engines.static_shapes.WINDOW_STEP); past this a new shape runs plain, with one warning
MAX_CAPTURED = 256
# the replay buffers capture at load (``luvc.runtime.capture_at_load``; serve's --capture-mib) fills at most by default:
# the shapes past it are captured when a request first meets them
DEFAULT_CAPTURE_MIB = 256
# The GPU check of 2026-11-26 (an H200, onnxruntime-gpu 1.31.1, tests/runtime/test_replay_gpu.py) found the runtime
# sessions' replay giving other decode tokens than their plain runs, for every tiny family tried, fp16 and fp32 (the
# first token right, the next one not, at no near tie): until that check passes again, ``auto`` runs the sessions
# plainly and only ``on`` replays them. (The compiled PyTorch prefill is not affected by this switch.)
RUNTIME_REPLAY_BY_DEFAULT = False
RUNTIME_AUTO_OFF = "auto: off until replay passes its GPU check again; --cuda-graphs on replays"


def replays(choice: str | None, device_type: str, pays_back: bool = True) -> bool:
    """Whether ``choice`` (``auto`` when None, ``on``, ``off``) replays CUDA graphs on a device of ``device_type``:
    ``on`` needs a CUDA device (refused otherwise), ``auto`` replays on one where the capture ``pays_back`` (a
    one-shot PyTorch ``generate`` would not pay a compile back)."""
    choice = DEFAULT_CUDA_GRAPHS if choice is None else choice
    if choice not in CUDA_GRAPH_CHOICES:
        critical(f"--cuda-graphs {choice!r} is not one of {list(CUDA_GRAPH_CHOICES)}.")
    if choice == "on" and device_type != "cuda":
        critical(f"--cuda-graphs on replays CUDA graphs, which need a CUDA device; it runs on {device_type}.")
    return device_type == "cuda" and (choice == "on" or (choice == "auto" and pays_back))


def runtime_replays(choice: str | None, device_type: str) -> bool:
    """Whether the runtime's sessions replay under ``choice`` on a device of ``device_type``: ``replays``, with
    ``auto`` at ``RUNTIME_REPLAY_BY_DEFAULT``."""
    return replays(choice, device_type, pays_back=RUNTIME_REPLAY_BY_DEFAULT)
