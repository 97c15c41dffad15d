"""Pin every dependency in pyproject.toml to its lower bound: the oldest set devbus says it supports.

    python3 scripts/oldest_constraints.py > oldest.txt
    pip install -c oldest.txt -e '.[test]'

``scripts/install --oldest`` does this, so that CI runs the suite at the lowest allowed
versions too. A dependency without a ``>=`` lower bound is an error: what it is not
tested at, devbus cannot claim to support.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["lower_bounds", "main"]

ROOT = Path(__file__).resolve().parent.parent
# name[extras] >=version (other clauses, e.g. <4, after a comma); markers after a semicolon.
_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)")
_LOWER = re.compile(r">=\s*(?P<version>[^,\s]+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bounds(pyproject: dict[str, object]) -> dict[str, str]:
    """Map each dependency (runtime and every extra) to its lower bound; raise ValueError if one has none."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    own = _normalise(str(project["name"]))
    requirements: list[str] = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        requirements += group
    bounds: dict[str, str] = {}
    for requirement in requirements:
        parsed = _REQUIREMENT.match(requirement)
        if parsed is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name = _normalise(parsed["name"])
        if name == own:  # devbus[redis] in an extra: its requirements are listed above
            continue
        lower = _LOWER.search(parsed["spec"])
        if lower is None:
            raise ValueError(f"{requirement!r} has no lower bound (>=): write the oldest version devbus works with")
        if name in bounds and bounds[name] != lower["version"]:
            raise ValueError(f"{name} has two lower bounds ({bounds[name]}, {lower['version']}): keep one")
        bounds[name] = lower["version"]
    return bounds


def constraints(bounds: dict[str, str]) -> Iterable[str]:
    """Lines of a pip constraints file pinning each dependency to its lower bound."""
    for name in sorted(bounds):
        yield f"{name}=={bounds[name]}"


def main() -> int:
    """Print the constraints for this checkout's pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        pyproject = tomllib.load(file)
    try:
        lines = list(constraints(lower_bounds(pyproject)))
    except ValueError as exc:
        print(f"pyproject.toml: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
