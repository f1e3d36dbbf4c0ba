"""Argument groups: each defines ``add_parser_args`` and ``parse``; subcommands list the groups they use.

Groups load on first use, so a subcommand imports only what it needs (``build`` runs without PyTorch).
"""

from __future__ import annotations

from luvc.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "luvc.cli.args.base": ("BaseArgs",),
        "luvc.cli.args.budget": ("LuvcArgs",),
        "luvc.cli.args.build": ("BuildArgs",),
        "luvc.cli.args.calibrate": ("CalibrateArgs",),
        "luvc.cli.args.data": ("DataArgs",),
        "luvc.cli.args.eval": ("EvalArgs",),
        "luvc.cli.args.export": ("ExportArgs",),
        "luvc.cli.args.model": ("ModelArgs",),
        "luvc.cli.args.parity": ("ParityArgs",),
        "luvc.cli.args.request": ("RequestArgs",),
        "luvc.cli.args.runtime": ("RuntimeArgs",),
    },
)
