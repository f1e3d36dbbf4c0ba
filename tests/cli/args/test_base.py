"""Options built from parsed arguments by name: each field the arguments hold arrives, the rest keep defaults."""

import argparse
import dataclasses

from luvc.cli.args.base import same_named
from luvc.cli.args.export import ExportArgs
from luvc.export.profile import ExportProfile


@dataclasses.dataclass(frozen=True)
class _Options:
    width: int = 1
    height: int = 2
    label: str = "none"


def test_same_named_takes_the_fields_the_arguments_hold_and_given_wins():
    args = argparse.Namespace(width=7, label="arg", unrelated=3)
    assert same_named(args, _Options) == {"width": 7, "label": "arg"}
    assert _Options(**same_named(args, _Options, label="given")) == _Options(width=7, height=2, label="given")


def test_every_export_option_reaches_the_profile():
    group = ExportArgs()
    parser = argparse.ArgumentParser()
    group.add_parser_args(parser)
    argv = ["--out", "x", "--image-size", "224x336", "--precision", "fp16", "--max-batch", "3"]
    argv += ["--max-text-tokens", "96", "--max-new-tokens", "40", "--external-data", "always"]
    argv += ["--kv-update", "scatter-elements"]
    group.parse(parser.parse_args(argv))
    assert group.profile == ExportProfile(
        image_sizes=((224, 336),),
        precision="fp16",
        max_batch=3,
        max_text_tokens=96,
        max_new_tokens=40,
        external_data="always",
        kv_update="scatter-elements",
    )
