"""``luvc-export``: the command-line entry point. Subcommands subscribe to argument groups."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rich.console import Console

from luvc import __version__
from luvc.errors import LuvcError

# subcommand -> "module:class"; only the subcommand being run is imported (``build`` needs no PyTorch)
TOOLS = {
    "generate": "luvc.cli.generate:Generate",
    "export": "luvc.cli.export:Export",
    "build": "luvc.cli.build:Build",
    "run": "luvc.cli.run:Run",
    "inspect": "luvc.cli.inspect:Inspect",
    "parity": "luvc.cli.parity:Parity",
    "calibrate": "luvc.cli.calibrate:Calibrate",
}


def _tool_class(name: str) -> type:
    module, cls = TOOLS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_parser(names: list[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="luvc-export", description=__doc__)
    parser.add_argument("--version", action="version", version=f"luvc-export {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    tools = {}
    for tool_cls in (_tool_class(name) for name in (names or TOOLS)):
        tool = tool_cls()
        sub = subparsers.add_parser(tool.name, help=tool_cls.__doc__, description=tool_cls.__doc__)
        groups = {group_cls: group_cls() for group_cls in tool.subscriptions}
        for group in groups.values():
            group.add_parser_args(sub)
        tool.add_parser_args(sub)
        tools[tool.name] = (tool, groups)
    return parser, tools


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.CRITICAL)  # errors reach the user through the console below
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, tools = build_parser([argv[0]] if argv and argv[0] in TOOLS else None)
    args = parser.parse_args(argv)
    tool, groups = tools[args.command]
    try:
        for group in groups.values():
            group.parse(args)
        return tool.run(args, groups)
    except LuvcError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
