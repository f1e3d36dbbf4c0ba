"""``SharedActivations``: one device buffer for the scratch memory of every TensorRT execution context of a pipeline.

A context made the default way allocates its own activation memory for as long as it lives, so a pipeline with the
engines of three buckets and decode held four. The engines of one request run one after another on the pipeline's
one CUDA stream, so no two of them need their scratch memory at the same time: each context is made with the
user-managed strategy and given the same buffer, sized to the largest need of the engines opened so far.
"""

from __future__ import annotations

import torch


class SharedActivations:
    """The activation buffer of the TensorRT engines opened on ``device`` (``tensorrt``: the module wrapper)."""

    def __init__(self, device: torch.device, tensorrt) -> None:
        self.device = device
        self.tensorrt = tensorrt
        self.buffer: torch.Tensor | None = None
        self._contexts: list[tuple[object, int]] = []  # (context, bytes it needs)

    @property
    def supported(self) -> bool:
        """Whether this TensorRT lets the caller own a context's memory (TensorRT >= 10.1 and TensorRT-RTX)."""
        trt = self.tensorrt.module
        owned = hasattr(trt, "ExecutionContextAllocationStrategy")
        return owned and hasattr(trt.IExecutionContext, "set_device_memory")

    def context(self, engine, runtime_config=None):
        """An execution context of ``engine`` whose scratch memory is the shared buffer (grown when the engine needs
        more than the buffer holds); a context with its own memory where this TensorRT cannot share it.
        ``runtime_config``: an ``IRuntimeConfig`` of the engine to make it with (TensorRT-RTX's CUDA graphs)."""
        if not self.supported:
            return (
                engine.create_execution_context(runtime_config) if runtime_config else engine.create_execution_context()
            )
        strategy = self.tensorrt.module.ExecutionContextAllocationStrategy.USER_MANAGED
        if runtime_config is not None:
            runtime_config.set_execution_context_allocation_strategy(strategy)
            context = engine.create_execution_context(runtime_config)
        else:
            context = engine.create_execution_context(strategy)
        need = int(engine.device_memory_size_v2)
        self._contexts.append((context, need))
        if self.buffer is None or self.buffer.numel() < need:
            # stream-ordered: the old buffer returns to PyTorch's allocator after the work queued on it
            self.buffer = torch.empty(max(need, 256), dtype=torch.uint8, device=self.device)
            for known, size in self._contexts:
                known.set_device_memory(self.buffer.data_ptr(), size)
        else:
            context.set_device_memory(self.buffer.data_ptr(), need)
        return context

    def forget(self, context) -> None:
        """Stop tracking ``context`` (its engine was closed)."""
        self._contexts = [(known, size) for known, size in self._contexts if known is not context]

    @property
    def bytes(self) -> int:
        """Size of the shared buffer now."""
        return 0 if self.buffer is None else self.buffer.numel()

    def release(self) -> None:
        self._contexts.clear()
        self.buffer = None
