"""Loaders: arguments checked once, a loader as an argument runs first, function twins take the loader's arguments."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from luvc.engines.builder import EnginesFromExport, build_engines
from luvc.errors import LuvcError, critical
from luvc.export.exporter import OnnxFromCompressedModel, export_model
from luvc.loaders import BaseLoader, as_path, functional


@dataclasses.dataclass
class MakeFolder(BaseLoader[Path]):
    parent: str | Path
    runs: list = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.parent = as_path(self.parent)

    def call_impl(self) -> Path:
        self.runs.append(self.parent)
        return self.parent / "made"


@dataclasses.dataclass
class FolderName(BaseLoader[str]):
    folder: str | Path | BaseLoader[Path]
    suffix: str = ""
    checks: list = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = as_path(self.folder)
        self.checks.append(type(self.folder).__name__)
        if self.suffix.startswith("."):
            critical(f"Suffix {self.suffix!r} starts with a dot; give it without one.")

    def call_impl(self) -> str:
        return self.folder.name + self.suffix


def test_a_loader_argument_runs_first_and_the_arguments_are_checked_with_its_value():
    inner = MakeFolder("/data")
    outer = FolderName(inner, "-x")
    assert inner.runs == [] and outer.checks == ["MakeFolder"]  # nothing runs while loaders are composed
    assert outer() == "made-x"
    assert inner.runs == [Path("/data")] and outer.checks == ["MakeFolder", "PosixPath"]
    assert outer() == "made-x" and len(inner.runs) == 1  # the value is kept: the inner loader ran once


def test_arguments_are_checked_when_the_loader_is_made():
    with pytest.raises(LuvcError, match="starts with a dot"):
        FolderName("/data", ".x")


def test_a_function_twin_takes_the_loaders_arguments_and_returns_its_result():
    folder_name = functional(FolderName, "folder_name")
    assert folder_name(MakeFolder("/data"), suffix="-y") == "made-y"
    assert folder_name.__name__ == "folder_name"
    parameters = list(inspect.signature(folder_name).parameters)
    assert parameters == ["folder", "suffix", "checks"]
    assert inspect.signature(folder_name).return_annotation is str
    for twin, loader in ((export_model, OnnxFromCompressedModel), (build_engines, EnginesFromExport)):
        assert list(inspect.signature(twin).parameters) == [field.name for field in dataclasses.fields(loader)]
        assert inspect.signature(twin).return_annotation is Path
