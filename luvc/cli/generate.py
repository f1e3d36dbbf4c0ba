"""``luvc-export generate``: run a (compressed) VLM in PyTorch, print the text and where the tokens went."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from luvc.cli.args.base import int_in, user_text
from luvc.cli.args.budget import LuvcArgs
from luvc.cli.args.model import ModelArgs
from luvc.cli.args.request import RequestArgs
from luvc.compress.config import LUVCConfig
from luvc.compress.methods import method_of
from luvc.cuda_graphs import CUDA_GRAPH_CHOICES, DEFAULT_CUDA_GRAPHS

if TYPE_CHECKING:
    from luvc.compress.cost import CostReport


class Generate:
    """Generate text for an image (or a video) and a prompt; print token counts per block/layer and the cost
    model."""

    name = "generate"
    install = "export"
    subscriptions = (ModelArgs, LuvcArgs, RequestArgs)

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Generation")
        group.add_argument("--prompt", required=True, type=user_text, help="the user prompt")
        group.add_argument("--max-new-tokens", type=int_in(1), default=16, help="tokens to generate (default 16)")
        group.add_argument(
            "--pan-and-scan",
            action="store_true",
            help="Gemma 3: a wide or tall image's crops too, each a view of its own, as its processor makes them with "
            "do_pan_and_scan=True (off by default, as upstream; PyTorch only: an export takes one view an image)",
        )
        group.add_argument(
            "--cuda-graphs",
            choices=CUDA_GRAPH_CHOICES,
            default=DEFAULT_CUDA_GRAPHS,
            help="compile the LLM prefill (torch.compile, one graph) and replay it as a CUDA graph: auto (default: "
            "off for one request, which the compile would not pay back), on (a CUDA device), off",
        )

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc.models.compiled import compiles
        from luvc.models.generation import greedy_generate

        console = Console()
        with console.status(f"Loading {args.model}"):
            adapter = groups[ModelArgs].load()
        adapter.pan_and_scan = args.pan_and_scan
        adapter.apply_luvc(groups[LuvcArgs].config)
        if compiles(args.cuda_graphs, next(adapter.model.parameters()).device, many_requests=False):
            adapter.compile_llm(cuda_graphs=True)
        inputs = adapter.prepare_inputs([groups[RequestArgs].load()], args.prompt)
        with console.status("Generating"):
            tokens = greedy_generate(
                adapter.model, inputs, args.max_new_tokens, eos_token_id=adapter.tokenizer.eos_token_id
            )
        console.print(f"[bold]{adapter.name}[/] ({method_label(adapter.luvc_config)})")
        console.print(f"[bold]Output:[/] {adapter.tokenizer.decode(tokens[0], skip_special_tokens=True)!r}")
        report = adapter.cost(inputs)
        column = method_column(adapter.luvc_config)
        console.print(token_table(report, column))
        console.print(cost_table(report, column))
        return 0


def method_label(config: LUVCConfig) -> str:
    """How a run's config reads in a title: ``LUVC off``, ``LUVC``, or ``method NAME``."""
    column = method_column(config)
    return column if column.startswith("LUVC") else f"method {column}"


def method_column(config: LUVCConfig) -> str:
    """The heading of a run's column beside the uncompressed one: ``LUVC``, ``LUVC off``, or the method's name."""
    name = method_of(config)
    if name is None:  # a combination no method names: its criterion
        return str(config.spu_variant)
    return {"none": "LUVC off", "luvc": "LUVC"}.get(name, name)


def token_table(report: CostReport, column: str = "LUVC") -> Table:
    """Visual tokens per encoder block and per decoder layer: the run's method (``column``) vs uncompressed."""
    table = Table(title="Visual tokens per stage")
    for heading in ("stage", column, "uncompressed"):
        table.add_column(heading, justify="right" if heading != "stage" else "left")
    for block, (ours, base) in enumerate(zip(report.encoder_tokens, report.encoder_tokens_baseline)):
        table.add_row(f"encoder block {block}", str(ours), str(base))
    for layer, (ours, base) in enumerate(zip(report.decoder_tokens, report.decoder_tokens_baseline)):
        table.add_row(f"decoder layer {layer}", str(ours - report.text_tokens), str(base - report.text_tokens))
    return table


def cost_table(report: CostReport, column: str = "LUVC") -> Table:
    """FLOPs, KV bytes and the theoretical speedups of the cost model: the run's method (``column``) vs uncompressed."""
    table = Table(title="Cost model (per request)")
    for heading in ("quantity", column, "uncompressed", "speedup"):
        table.add_column(heading, justify="right" if heading != "quantity" else "left")
    table.add_row(
        "encoder GFLOPs",
        f"{report.encoder_flops / 1e9:.3f}",
        f"{report.encoder_flops_baseline / 1e9:.3f}",
        f"{report.encoder_speedup:.2f}x",
    )
    table.add_row(
        "LLM prefill GFLOPs",
        f"{report.llm_prefill_flops / 1e9:.3f}",
        f"{report.llm_prefill_flops_baseline / 1e9:.3f}",
        f"{report.llm_prefill_speedup:.2f}x",
    )
    table.add_row(
        "KV cache KiB (fp16)",
        f"{report.kv_cache_bytes / 1024:.1f}",
        f"{report.kv_cache_bytes_baseline / 1024:.1f}",
        f"{report.kv_cache_reduction:.2f}x",
    )
    return table
