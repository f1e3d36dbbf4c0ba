"""The LUVC LLM prefill compiled (``VLMAdapter.compile_llm``: ``torch.compile``, one graph, inductor) against eager
PyTorch on the CPU, for LUVC and for the same model with compression off, in one run: a figure to read, not a target
(on a GPU the compiled prefill also replays as a CUDA graph: ``gpu_speedup.py``).

For each of LUVC and off: the text model's prefill of one image and a prompt (``--model``, default the built-in tiny
Qwen2-VL; ``--image-size``), eager, then compiled: the compile (the plan's first prefill runs eagerly, the second
compiles), then ``--repeats`` prefills each way taking turns, medians compared. Last lines:
``cpu_compile_seconds_luvc=``, ``cpu_compiled_prefill_speedup_luvc=`` and ``cpu_compiled_prefill_speedup_off=``
(eager over compiled time), ``cpu_compiled_luvc_over_off=`` (off over LUVC, both compiled). Usage:
    python benchmarks/compile_speedup.py [--model tiny-qwen2-vl] [--image-size 224] [--repeats 20]
"""

from __future__ import annotations

import statistics
import time

import torch
from common import arguments

from luvc.compress.config import LUVCConfig
from luvc.images import synthetic_image
from luvc.models import load_model
from luvc.models.cache import LuvcCache
from luvc.models.compiled import llm_arguments


def prefill_times(model: str, config: LUVCConfig | None, side: int, repeats: int) -> dict[str, float]:
    """Median eager and compiled prefill milliseconds of ``model`` under ``config``, and the compile's seconds."""
    adapter = load_model(model)
    adapter.apply_luvc(config)
    inputs = adapter.prepare_inputs([synthetic_image(side, side)], "Describe the image in a few words.")
    args, kwargs = llm_arguments(adapter, inputs)
    text_model = adapter.language_model
    kwargs.pop("past_key_values", None)

    def prefill() -> float:
        began = time.perf_counter()
        with torch.no_grad():
            text_model(*args, **kwargs, past_key_values=LuvcCache())
        return (time.perf_counter() - began) * 1e3

    prefill()  # eager warm-up
    adapter.compile_llm(cuda_graphs=False)
    prefill()  # the plan's first prefill: eager, its constants
    began = time.perf_counter()
    prefill()  # compiles
    compile_seconds = time.perf_counter() - began
    compiled_loop, eager, compiled = text_model.luvc_compiled, [], []
    for _ in range(repeats):  # taking turns, so that drift cancels
        text_model.luvc_compiled = None
        eager.append(prefill())
        text_model.luvc_compiled = compiled_loop
        compiled.append(prefill())
    return dict(eager_ms=statistics.median(eager), compiled_ms=statistics.median(compiled), compile_s=compile_seconds)


def main() -> None:
    parser = arguments(__doc__, image_size=224, repeats=20)
    parser.add_argument("--model", default="tiny-qwen2-vl", help="a built-in model or a checkpoint folder")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, {args.image_size} px")
    rows = {}
    for label, config in (("luvc", None), ("off", LUVCConfig.off())):
        rows[label] = prefill_times(args.model, config, args.image_size, args.repeats)
        row = rows[label]
        print(
            f"{label}: eager {row['eager_ms']:.2f} ms, compiled {row['compiled_ms']:.2f} ms "
            f"(compile {row['compile_s']:.1f} s)"
        )
    print(f"cpu_compile_seconds_luvc={rows['luvc']['compile_s']:.1f}")
    for label in ("luvc", "off"):
        print(f"cpu_compiled_prefill_speedup_{label}={rows[label]['eager_ms'] / rows[label]['compiled_ms']:.2f}")
    print(f"cpu_compiled_luvc_over_off={rows['off']['compiled_ms'] / rows['luvc']['compiled_ms']:.2f}")


if __name__ == "__main__":
    main()
