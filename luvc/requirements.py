"""What a command needs installed, read from the package's own metadata, so that pyproject's extras are the one list.

The base install is what a device needs (``run``, ``serve``'s core, ``build``, ``plan``, ``inspect``, ``triton``),
with the oldest PyTorch the runtime works with; the ``export`` extra adds what exporting, parity, calibration and
eval need (a newer PyTorch among it). A command whose extra is not met stops with one line naming what is missing
and the ``pip install`` that fixes it, before it imports any of it.
"""

from __future__ import annotations

import importlib.metadata
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

DISTRIBUTION = "luvc-export"
# (package, its versions, another package, what that one must then be, why): what pip's metadata cannot say
CONFLICTS = (("torch", "<2.3", "numpy", "<2", "PyTorch before 2.3 is built against NumPy 1"),)


def _requirements(extra: str | None) -> list[Requirement]:
    """The distribution's requirements for the base install and ``extra``; none when it is not installed (a source
    tree on ``sys.path``)."""
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    wanted = []
    for requirement in map(Requirement, declared):
        if requirement.name == DISTRIBUTION:  # an extra made of other extras (test = [..., "luvc-export[serve]"])
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": extra or ""}):
            wanted.append(requirement)
    return wanted


def declared_specifier(package: str, extra: str | None = None) -> SpecifierSet | None:
    """What ``extra`` itself (``None``: the base install) requires of ``package``; ``None`` when it names no such
    requirement or luvc-export is not installed."""
    for requirement in _requirements(extra):
        if requirement.name == package and (requirement.marker is not None) == (extra is not None):
            return requirement.specifier
    return None


def unmet(extra: str | None = None) -> list[str]:
    """The requirements of the base install and ``extra`` that this environment does not meet, each with what it
    has (``"torch>=2.9 (found 2.1.2)"``, ``"onnxscript>=0.5 (not installed)"``)."""
    problems = []
    for requirement in _requirements(extra):
        try:
            found = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name}{requirement.specifier} (not installed)")
            continue
        # an installed pre-release counts (NVIDIA's Jetson wheels are versioned 2.5.0a0+...nv24.08), as pip counts it
        if not requirement.specifier.contains(found, prereleases=True):
            problems.append(f"{requirement.name}{requirement.specifier} (found {found})")
    return problems


def conflicts() -> list[tuple[str, str]]:
    """Installed pairs that are each fine alone but do not work together, as (problem, the ``pip install`` argument
    that fixes it): ``("numpy<2 with torch 1.13.1 (found numpy 2.4.6; ...)", "'numpy<2'")``."""
    found = []
    for package, versions, other, needs, why in CONFLICTS:
        try:
            version, other_version = importlib.metadata.version(package), importlib.metadata.version(other)
        except importlib.metadata.PackageNotFoundError:
            continue
        if SpecifierSet(versions).contains(version, prereleases=True) and not SpecifierSet(needs).contains(
            other_version, prereleases=True
        ):
            found.append(
                (f"{other}{needs} with {package} {version} (found {other} {other_version}; {why})", other + needs)
            )
    return found


def require(command: str, extra: str | None = None) -> None:
    """Stop ``luvc-export command`` with one line when the base install or ``extra`` is not met."""
    from luvc.errors import critical

    problems = unmet(extra)
    if problems:
        what, target = (f"the {extra} extra", f"'.[{extra}]'") if extra else ("the base install", ".")
        critical(
            f"`luvc-export {command}` needs {', '.join(problems)}; install {what}: "
            f"`{sys.executable} -m pip install -e {target}` in the luvc-export checkout."
        )
    for problem, fix in conflicts():
        critical(f"`luvc-export {command}` needs {problem}; run `{sys.executable} -m pip install '{fix}'`.")
