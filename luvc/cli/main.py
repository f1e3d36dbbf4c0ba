"""``luvc-export``: the command-line entry point. Subcommands subscribe to argument groups."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console

from luvc import __version__
from luvc.cli.build import Build
from luvc.cli.export import Export
from luvc.cli.generate import Generate
from luvc.cli.run import Run
from luvc.errors import LuvcError

TOOLS = (Generate, Export, Build, Run)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="luvc-export", description=__doc__)
    parser.add_argument("--version", action="version", version=f"luvc-export {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    tools = {}
    for tool_cls in TOOLS:
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
    parser, tools = build_parser()
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
