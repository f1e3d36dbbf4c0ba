"""Model options."""

from __future__ import annotations

import argparse

import torch

from luvc.cli.args.base import BaseArgs
from luvc.errors import critical
from luvc.models import TINY_MODELS, VLMAdapter, load_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelArgs(BaseArgs):
    """Model: which VLM to load (a built-in tiny model or a local checkpoint folder) and in which dtype.

    Depends on: nothing.
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Model", "Which VLM to load")
        group.add_argument(
            "--model", required=True, help=f"built-in model {list(TINY_MODELS)} or a local checkpoint folder"
        )
        group.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weights dtype (default float32)")

    def parse(self, args: argparse.Namespace) -> None:
        self.model = args.model
        self.dtype = DTYPES[args.dtype or "float32"]
        if self.dtype is not torch.float32 and not torch.cuda.is_available():
            critical(f"--dtype {args.dtype} needs a GPU for PyTorch runs here; use --dtype float32 on CPU.")

    def load(self) -> VLMAdapter:
        return load_model(self.model, dtype=self.dtype)
