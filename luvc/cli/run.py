"""``luvc-export run``: generate text for an image and a prompt from an export (ONNX Runtime) or its engines."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from luvc.cli.args.base import user_text
from luvc.cli.args.request import RequestArgs
from luvc.cli.args.runtime import RuntimeArgs
from luvc.cuda_graphs import RUNTIME_AUTO_OFF
from luvc.errors import critical
from luvc.startup import StartUp, ready_after

FINISH_REASONS = {
    "stop": "stop (the model's end of sequence or a --stop string)",
    "length": "length (--max-new-tokens)",
}

if TYPE_CHECKING:
    from luvc.export.manifest import ExportManifest
    from luvc.runtime.pipeline import Pipeline, Prepared
    from luvc.runtime.request import Request


class Run:
    """Run the exported graphs (or engines) on an image (or a video) and a prompt; print the text and a timing
    breakdown."""

    name = "run"
    install = "base"
    subscriptions = (RuntimeArgs, RequestArgs)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Request")
        group.add_argument("--prompt", required=True, type=user_text, help="the user prompt")
        group.add_argument(
            "--system",
            type=user_text,
            default=None,
            help="a system prompt before the user turn (rendered by the export's chat template)",
        )
        group.add_argument(
            "--text-only",
            action="store_true",
            help="send no image or video: the export's text prefill answers the prompt",
        )
        group.add_argument("--stream", action="store_true", help="print tokens as they are generated")

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        runtime, request = groups[RuntimeArgs], groups[RequestArgs]
        if args.text_only and (request.image or request.video):
            critical("--text-only sends no image or video; drop --image/--video, or drop --text-only.")
        # the sessions open beside the runtime's import and the tokenizer's loading
        pipeline = runtime.opening_pipeline(functools.partial(first_graphs, text_only=args.text_only))
        from luvc.prompt import Conversation, Turn
        from luvc.runtime.user_text import UserTextGuard

        console = Console()
        try:
            options = runtime.generation_options()
            pipeline.manifest.profile.check_max_new_tokens(options.max_new_tokens)
            visuals = None
            if not args.text_only:  # default: a synthetic image of a bucket's size
                visuals = [request.load(next(iter(pipeline.manifest.buckets.values())).size)]
            prompt = args.prompt
            with console.status("Loading the tokenizer"):  # what serve checks in a client's text
                guard = UserTextGuard.for_pipeline(pipeline, "in --image")
            guard.check(args.prompt, "--prompt")
            if args.system is not None:
                guard.check(args.system, "--system")
                turn = Turn("user", args.prompt, visual=not args.text_only)
                prompt = Conversation((Turn("system", args.system), turn))
            with console.status("Loading the tokenizer and image rules"):
                pipeline.preparer.load()
            prepared = pipeline.prepare(visuals, [prompt])  # fitted to a bucket once; the timings count it
            with console.status("Loading sessions"):
                pipeline.load(prepared.bucket, text_only=prepared.bucket is None)
        except BaseException:  # the process ends without opening the sessions not begun
            pipeline.sessions.cancel_opening()
            raise
        ready = ready_after(pipeline.sessions.opening_seconds())
        generation = pipeline.request(prepared, options)
        # on a terminal, a character it would act on (a control, an escape sequence) is shown as its escape; a pipe
        # or a file gets the text as generated
        shown = terminal_safe if sys.stdout.isatty() else str
        escaped = False
        if args.stream:  # plain writes: the pieces join into one line, as the non-streaming output prints it
            sys.stdout.write("Output: ")
            for piece in generation.pieces():
                sys.stdout.write(shown(piece))
                escaped = escaped or shown(piece) != piece
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            text = "".join(generation.pieces())
            sys.stdout.write(f"Output: {shown(text)}\n")
            escaped = shown(text) != text
        if escaped:
            sys.stdout.write(f"({ESCAPED_NOTE})\n")
        sys.stdout.write(f"Finish reason: {FINISH_REASONS[generation.finish_reasons[0]]}\n")
        console.print(timing_table(pipeline, generation, prepared, ready))
        if visuals is not None and request.image is None and request.video is None:
            sys.stdout.write(f"{SYNTHETIC_NOTE}\n")
        sys.stdout.write(fit_line(pipeline.fit_policy, prepared) + "\n")  # unwrapped: it names sizes
        sys.stdout.write(cuda_graphs_line(pipeline) + "\n")
        return 0


def first_graphs(manifest: ExportManifest, backend: str, text_only: bool) -> list[str]:
    """The graphs ``run`` opens before its visual is fitted: the request's own where they are known already (one
    bucket, or no visual), else those every request runs (``luvc.runtime.opening.request_graphs``)."""
    from luvc.runtime.opening import EVERY_REQUEST_GRAPHS, request_graphs

    buckets = list(manifest.buckets.values())
    if text_only:
        return request_graphs(manifest, backend, text_only=True)
    if len(buckets) == 1:
        return request_graphs(manifest, backend, buckets[0])
    return list(EVERY_REQUEST_GRAPHS)


def _resident() -> str:
    """This process's resident memory (Linux), or 'n/a'."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
    except (OSError, ValueError, IndexError):
        return "n/a"
    return f"{pages * os.sysconf('SC_PAGE_SIZE') / (1 << 30):.2f} GiB"


def _weights(pipeline: Pipeline) -> str:
    """What the pipeline's sessions and engines share: on a GPU the weights resident there; on the CPU file-mapped
    tensors and float32 conversions."""
    weights, gib = pipeline.sessions.weights, 1 << 30
    if pipeline.backend == "openvino":
        return "each compiled graph its own copy (OpenVINO; docs/run.md)"
    if weights.device_bytes:
        return f"one copy for all sessions: {weights.device_bytes / gib:.2f} GiB on {pipeline.device}"
    if not (weights.mapped_bytes or weights.converted_bytes):
        return "each session its own"  # weights inside the graphs (exports under 256 MiB) or engines
    parts = [f"{weights.mapped_bytes / gib:.2f} GiB file-mapped"]
    if weights.converted_bytes:
        cached = " (converted by an earlier start)" if weights.cached_bytes == weights.converted_bytes else ""
        parts.append(f"{weights.converted_bytes / gib:.2f} GiB float32{cached}")
    return "one copy for all sessions: " + " + ".join(parts)


SYNTHETIC_NOTE = "Input: no --image or --video given, so a built-in synthetic scene of the bucket's size was used"
ESCAPED_NOTE = "characters a terminal would act on are shown as escapes like \\x11; pipe the output for the raw text"


def terminal_safe(text: str) -> str:
    """``text`` with each character that is not printable (controls but newline and tab, escape sequences'
    ESC, bidirectional overrides, separators a terminal may act on) written as its Python escape."""
    return "".join(
        char if char in "\n\t" or char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text
    )


def cuda_graphs_line(pipeline: Pipeline) -> str:
    """What was captured as CUDA graphs and replayed, in one line."""
    sessions = pipeline.sessions
    if not sessions.cuda_graphs:
        why = f"{pipeline.device} runs no CUDA graphs"
        if pipeline.device.type == "cuda":
            why = "--cuda-graphs off" if pipeline.cuda_graphs_choice == "off" else RUNTIME_AUTO_OFF
        return f"CUDA graphs: off ({why})"
    return "CUDA graphs: " + sessions.replay_summary()


def fit_line(policy: str, prepared: Prepared) -> str:
    """What fitting the request to its bucket did, in one line."""
    if prepared.bucket is None:
        return "Fit: nothing (no image or video: the text prefill ran)"
    done = prepared.fit_change or "nothing (the processor's own size is the bucket)"
    return f"Fit ({policy}) to bucket {prepared.bucket.name}: {done}"


def timing_table(pipeline: Pipeline, request: Request, prepared: Prepared, ready: StartUp) -> Table:
    """The table of what ``request`` (finished) took, stage by stage, and what it held."""
    timings = request.timings
    prefill_tokens = request.prefill_feeds["inputs_embeds"].shape[1]  # the prompt padded to the graph that ran
    backend = pipeline.backend_description()
    table = Table(title=f"{pipeline.manifest.model.id} on {backend}, {pipeline.device}")
    table.add_column("stage")
    table.add_column("value", justify="right")
    rows = (
        ("start to ready (process start to sessions loaded)", str(ready)),
        ("bucket", prepared.bucket_name),
        ("preprocess", f"{timings.preprocess_ms:.1f} ms ({prepared.pixels_made})"),
        ("vision", f"{timings.vision_ms:.1f} ms"),
        ("prefill (embed + LLM)", f"{timings.prefill_ms:.1f} ms ({request.prefill_graph}, {prefill_tokens} tokens)"),
        ("time to first token", f"{timings.preprocess_ms + timings.first_token_ms:.1f} ms"),
        ("decode", f"{timings.decode_tokens_per_second:.1f} tokens/s ({timings.new_tokens} tokens)"),
        ("KV cache after the prompt", f"{timings.kv_cache_bytes:,} bytes"),
        ("KV cache buffers (capacity, as `plan`)", f"{pipeline.sessions.kv_buffer_bytes():,} bytes"),
        ("weights in memory", _weights(pipeline)),
        ("process memory (RSS, sessions loaded)", _resident()),
    )
    for stage, value in rows:
        table.add_row(stage, value)
    return table
