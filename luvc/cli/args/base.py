"""``BaseArgs``: one group of command-line options (Polygraphy ``BaseArgs``)."""

from __future__ import annotations

import argparse


class BaseArgs:
    """Base: a group of options. Docstrings of groups read ``Title: description`` then ``Depends on: ...``."""

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def parse(self, args: argparse.Namespace) -> None:
        """Read this group's options from ``args`` into attributes."""
        raise NotImplementedError
