"""Argument groups: each defines ``add_parser_args`` and ``parse``; subcommands list the groups they use.

Groups load on first use, so a subcommand imports only what it needs (``build`` runs without PyTorch).
"""

from __future__ import annotations

from luvc.lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, GROUPS)
