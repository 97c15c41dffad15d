"""What a release carries: one version, bounds on every dependency, a licence and a changelog."""

from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib
from typing import Any

import pytest
from oldest_constraints import constraints, lower_bounds
from support import ROOT

import devbus


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_the_installed_version_is_the_one_written_in_the_package() -> None:
    """Regression: the version was written twice (pyproject.toml and devbus/__init__.py) and they differed."""
    assert importlib.metadata.version("devbus") == devbus.__version__
    assert "version" not in pyproject()["project"]


def test_the_browser_package_carries_the_same_version() -> None:
    """The npm package in js/ is released with the Python one: 0.3.0.dev0 is 0.3.0-dev.0 in npm's semver."""
    package = json.loads((ROOT / "js" / "package.json").read_text())
    release, _, dev = devbus.__version__.partition(".dev")
    assert package["version"] == (f"{release}-dev.{dev}" if dev else release)


def test_every_dependency_has_a_lower_bound_that_the_oldest_run_pins() -> None:
    project = pyproject()["project"]
    pins = dict(line.split("==") for line in constraints(lower_bounds(pyproject())))
    for group in [project["dependencies"], *project["optional-dependencies"].values()]:
        for requirement in group:
            parsed = re.match(r"([\w.-]+)(?:\[[^\]]*\])?(.*)", requirement)
            assert parsed is not None, requirement
            name, spec = parsed.groups()
            if name != "devbus":
                assert f">={pins[name.lower()]}" in spec, requirement


def test_aiohttp_stays_below_the_next_major() -> None:
    """devbus/bus/connections.py reads aiohttp internals that a major release may change."""
    [aiohttp] = [r for r in pyproject()["project"]["dependencies"] if r.startswith("aiohttp")]
    assert "<4" in aiohttp


@pytest.mark.parametrize(
    ("requirement", "message"),
    [("redis", "has no lower bound"), ("redis<6", "has no lower bound"), ("=nonsense", "cannot read")],
    ids=["bare", "upper-only", "unreadable"],
)
def test_a_dependency_without_a_lower_bound_is_refused(requirement: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lower_bounds({"project": {"name": "devbus", "dependencies": ["click>=8.2.0", requirement]}})


def test_two_lower_bounds_for_one_dependency_are_refused() -> None:
    project = {"name": "devbus", "dependencies": ["click>=8.2.0"], "optional-dependencies": {"x": ["Click>=8.1"]}}
    with pytest.raises(ValueError, match="two lower bounds"):
        lower_bounds({"project": project})


def test_the_licence_and_the_changelog_are_there() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert pyproject()["project"]["license"] == "MIT"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "\n## [Unreleased]\n" in changelog
    assert re.search(r"^## \[0\.2\.0\] - \d{4}-\d\d-\d\d$", changelog, re.MULTILINE)
