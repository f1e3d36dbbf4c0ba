"""``luvc-export cache``: what the start-up cache holds (where, how much), and clearing it."""

from __future__ import annotations

import argparse

from rich.console import Console


class Cache:
    """Show the start-up cache (``luvc.cache``: files already hashed, fp16 weights already converted to float32 for
    the CPU, OpenVINO's compiled models), or clear it with ``--clear``. Nothing in it is needed: a cleared cache only
    makes the next start of each export slower."""

    name = "cache"
    install = None
    subscriptions = ()

    def add_parser_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--clear", action="store_true", help="remove what the cache holds (the folder's other files stay)"
        )

    def run(self, args: argparse.Namespace, groups: dict) -> int:
        from luvc import cache

        console = Console(soft_wrap=True, highlight=False)
        held = cache.clear_cache() if args.clear else cache.cache_contents()
        if held is None:
            console.print(f"The start-up cache is off ({cache.ENV}=off) or its folder cannot be made.")
            return 0
        what = (
            f"{held.verified} files hashed, {held.conversions} converted weights of {held.weights_files} weights "
            f"files, {held.compiled} OpenVINO compiled models, {held.bytes / 2**20:.1f} MiB"
        )
        if args.clear:
            console.print(f"Cleared the start-up cache at {held.root}: {what}.")
        else:
            limit = cache.max_kept_bytes() / cache.GiB
            console.print(f"Start-up cache at {held.root} (set {cache.ENV} to move it, or to off): {what}.")
            console.print(
                f"Converted weights and compiled models are kept up to {limit:g} GiB ({cache.MAX_ENV}); the least "
                "recently used go first."
            )
        return 0
