"""Model options."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from luvc.cli.args.base import BaseArgs
from luvc.errors import critical

if TYPE_CHECKING:
    from luvc.models import VLMAdapter

DTYPES = ("float32", "float16", "bfloat16")  # torch dtype names


class ModelArgs(BaseArgs):
    """Model: which VLM to load (a built-in tiny model or a local checkpoint folder) and in which dtype.

    Depends on: nothing.
    """

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Model", "Which VLM to load")
        group.add_argument(
            "--model",
            required=True,
            help="a built-in tiny model (tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-qwen3-vl, tiny-qwen3.5, tiny-internvl, "
            "tiny-llava, tiny-gemma3) or a local checkpoint folder",
        )
        group.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype (default float32)")

    def parse(self, args: argparse.Namespace) -> None:
        self.model = args.model
        self.dtype = args.dtype or "float32"  # a torch dtype name; PyTorch loads with the model
        self.explicit_dtype = args.dtype is not None

    def load(self) -> VLMAdapter:
        import torch

        from luvc.models import load_model

        if self.explicit_dtype and self.dtype != "float32" and not torch.cuda.is_available():
            critical(f"--dtype {self.dtype} needs a GPU for PyTorch runs here; use --dtype float32 on CPU.")
        return load_model(self.model, dtype=getattr(torch, self.dtype))
