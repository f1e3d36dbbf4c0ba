"""Argument groups: each defines ``add_parser_args`` and ``parse``; subcommands list the groups they use."""

from luvc.cli.args.base import BaseArgs
from luvc.cli.args.budget import LuvcArgs
from luvc.cli.args.build import BuildArgs
from luvc.cli.args.export import ExportArgs
from luvc.cli.args.model import ModelArgs
from luvc.cli.args.runtime import RuntimeArgs

__all__ = ["BaseArgs", "BuildArgs", "ExportArgs", "LuvcArgs", "ModelArgs", "RuntimeArgs"]
