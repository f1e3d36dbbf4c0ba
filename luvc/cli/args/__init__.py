"""Argument groups: each defines ``add_parser_args`` and ``parse``; subcommands list the groups they use.

Groups load on first use, so a subcommand imports only what it needs (``build`` runs without PyTorch).
"""

from __future__ import annotations

import importlib

GROUPS = {
    "BaseArgs": "luvc.cli.args.base",
    "BuildArgs": "luvc.cli.args.build",
    "CalibrateArgs": "luvc.cli.args.calibrate",
    "DataArgs": "luvc.cli.args.data",
    "EvalArgs": "luvc.cli.args.eval",
    "ExportArgs": "luvc.cli.args.export",
    "LuvcArgs": "luvc.cli.args.budget",
    "ModelArgs": "luvc.cli.args.model",
    "ParityArgs": "luvc.cli.args.parity",
    "RequestArgs": "luvc.cli.args.request",
    "RuntimeArgs": "luvc.cli.args.runtime",
}
__all__ = list(GROUPS)


def __getattr__(name: str):
    if name not in GROUPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(GROUPS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *GROUPS])
