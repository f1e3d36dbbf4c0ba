"""``luvc-export``: the command-line entry point. Subcommands subscribe to argument groups."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys
import threading

from luvc import __version__, interrupts, requirements
from luvc.errors import LuvcError, disk_full_message, is_disk_full

DESCRIPTION = (
    "Compress a vision-language model's visual tokens with LUVC and ship it: PyTorch generation, ONNX export, "
    "TensorRT engines, a runtime, parity checks and INT8/FP8 calibration."
)
# subcommand -> ("module:class", one-line summary); only the subcommand being run is imported (``build`` needs no
# PyTorch, and the top-level help imports none of them). A tool's ``install`` says what it needs installed, checked
# before it runs (luvc.requirements): "base" (a device's install), an extra ("export", "serve"), or None (nothing
# beyond what importing luvc needs: build, plan, inspect)
TOOLS = {
    "generate": ("luvc.cli.generate:Generate", "run the LUVC-compressed model in PyTorch on an image and a prompt"),
    "export": ("luvc.cli.export:Export", "export the compressed model to ONNX graphs and a manifest"),
    "inspect": ("luvc.cli.inspect:Inspect", "show an export's graphs, budgets, FLOPs and lint findings"),
    "build": ("luvc.cli.build:Build", "build TensorRT engines from an export for a target GPU"),
    "plan": ("luvc.cli.plan:Plan", "estimate an export's device memory on a target (Jetson or GiB)"),
    "run": ("luvc.cli.run:Run", "generate text from an export (ONNX Runtime) or its engines (TensorRT)"),
    "parity": ("luvc.cli.parity:Parity", "check an export (and engines) against PyTorch LUVC"),
    "calibrate": (
        "luvc.cli.calibrate:Calibrate",
        "quantize an export: INT8 or FP8 (compression in the loop), or weights only to INT4 or INT8 (int8w)",
    ),
    "eval": (
        "luvc.cli.eval:Eval",
        "accuracy against speed on your questions: LUVC beside other methods at equal budgets, or an export",
    ),
    "serve": ("luvc.cli.serve:Serve", "serve an export over an OpenAI-compatible HTTP API"),
    "triton": ("luvc.cli.triton:Triton", "write a Triton Inference Server model repository for an export"),
    "cache": ("luvc.cli.cache:Cache", "show or clear the start-up cache (hashes and float32 weights kept per export)"),
}
INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where the options are listed, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _tool_class(name: str) -> type:
    module, cls = TOOLS[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def build_parser(names: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser with the subcommands ``names`` (default: all) fully defined; the others are listed by summary."""
    parser = _Parser(prog="luvc-export", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"luvc-export {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tools = {}
    for name, (_, summary) in TOOLS.items():
        if names is not None and name not in names:
            subparsers.add_parser(name, help=summary)
            continue
        tool_cls = _tool_class(name)
        tool = tool_cls()
        sub = subparsers.add_parser(tool.name, help=summary, description=tool_cls.__doc__)
        groups = {group_cls: group_cls() for group_cls in tool.subscriptions}
        for group in groups.values():
            group.add_parser_args(sub)
        tool.add_parser_args(sub)
        tools[tool.name] = (tool, groups)
    return parser, tools


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(message, highlight=False)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.CRITICAL)  # errors reach the user through the console below
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, tools = build_parser([argv[0]] if argv and argv[0] in TOOLS else [])
    args = parser.parse_args(argv)
    if args.command not in tools:  # only reachable when argv[0] was not the subcommand (e.g. after an option)
        parser, tools = build_parser([args.command])
        args = parser.parse_args(argv)
    tool, groups = tools[args.command]
    try:
        with interrupts.handled():
            return _run(tool, groups, args)
    except LuvcError as error:
        from rich.markup import escape

        _error(f"[bold red]error:[/] {escape(str(error))}")
        return 2
    except OSError as error:
        if not is_disk_full(error):
            raise
        from rich.markup import escape

        _error(f"[bold red]error:[/] {escape(disk_full_message(error, getattr(args, 'out', None)))}")
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        _error("interrupted" + (f"; nothing was written to {out}" if out else ""))
        return INTERRUPTED


def _run(tool, groups: dict, args: argparse.Namespace) -> int:
    """Check what ``tool`` needs installed, parse its argument groups and run it."""
    if tool.install is not None:
        requirements.require(tool.name, None if tool.install == "base" else tool.install)
    for group in groups.values():
        group.parse(args)
    code = tool.run(args, groups)
    interrupts.raise_if_requested()  # one that landed where its exception was lost (a __del__)
    return code


def entry() -> None:
    """The ``luvc-export`` program: ``main``, then the process ends without tearing the interpreter down."""
    exit_process(main() or 0)


def exit_process(code: int) -> None:
    """End the process with ``code`` once its work is done: the ``atexit`` handlers run and the standard streams are
    flushed, then ``os._exit`` skips the interpreter's teardown, which frees every module and object one by one (about
    a second once PyTorch, transformers and onnxscript are loaded; a tenth of a tiny model's export). Where a
    non-daemon thread still runs, the interpreter exits as usual, waiting for it."""
    if any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away (`| head`), a closed stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
