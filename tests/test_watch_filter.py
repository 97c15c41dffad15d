"""Which paths `devbus watch` reports: globs with braces and comma lists, ignores, roots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from watchfiles import Change

from devbus.globs import expand_braces, glob_regex, split_patterns
from devbus.watch import WatchFilter, batch_data


def test_comma_lists_keep_commas_inside_braces() -> None:
    assert split_patterns(["src/**/*.{ts,tsx},*.css", " lib/** ,", "a"]) == [
        "src/**/*.{ts,tsx}",
        "*.css",
        "lib/**",
        "a",
    ]


@pytest.mark.parametrize(
    ("pattern", "expanded"),
    [
        ("*.{ts,tsx}", ["*.ts", "*.tsx"]),
        ("{src,lib}/*.{js,jsx}", ["src/*.js", "src/*.jsx", "lib/*.js", "lib/*.jsx"]),
        ("*.{j{s,sx},css}", ["*.js", "*.jsx", "*.css"]),
        ("{x}/*.{a,b}", ["{x}/*.a", "{x}/*.b"]),
        ("a{b", ["a{b"]),
    ],
    ids=["simple", "two-groups", "nested", "single-literal", "unclosed"],
)
def test_brace_expansion(pattern: str, expanded: list[str]) -> None:
    assert expand_braces(pattern) == expanded


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("src/**/*.ts", "src/a.ts", True),
        ("src/**/*.ts", "src/a/b/c.ts", True),
        ("src/**/*.ts", "lib/src/a.ts", False),
        ("src/**/*.ts", "src/a.tsx", False),
        ("src/*.ts", "src/a/b.ts", False),
        ("src/**", "src/a/b.ts", True),
        ("src/?.ts", "src/ab.ts", False),
        ("src/[ab].ts", "src/b.ts", True),
        ("src/[!ab].ts", "src/b.ts", False),
        ("a+b/(x).ts", "a+b/(x).ts", True),
    ],
)
def test_glob_regex(pattern: str, path: str, matches: bool) -> None:
    assert bool(re.match(glob_regex(pattern) + r"\Z", path)) is matches


def check(watch_filter: WatchFilter, root: Path, relative: str) -> bool:
    return watch_filter(Change.modified, os.path.join(root, *relative.split("/")))


@pytest.mark.parametrize(
    "relative",
    ["node_modules/react/index.js", ".git/HEAD", "src/__pycache__/x.pyc", ".next/cache/a.js", "dist/app.js", "a.swp"],
)
def test_default_ignores(tmp_path: Path, relative: str) -> None:
    watch_filter = WatchFilter([str(tmp_path)])
    assert not check(watch_filter, tmp_path, relative)
    assert check(watch_filter, tmp_path, "src/app.tsx")


def test_ignores_apply_below_the_root_only(tmp_path: Path) -> None:
    """A project that itself lives in a directory named like an ignore must still be watched."""
    root = tmp_path / "dist" / "node_modules" / "project"
    watch_filter = WatchFilter([str(root)])
    assert check(watch_filter, root, "src/app.ts")
    assert watch_filter.relative(str(root / "src" / "app.ts")) == "src/app.ts"
    assert not watch_filter(Change.modified, str(tmp_path / "elsewhere.ts"))


def test_user_ignores_by_name_glob_and_path(tmp_path: Path) -> None:
    watch_filter = WatchFilter([str(tmp_path)], ignores=["coverage", "*.log", "src/generated", "*.{tmp,bak}"])
    for relative in ("coverage/index.html", "logs/x.log", "src/generated/api.ts", "a.tmp", "b/c.bak"):
        assert not check(watch_filter, tmp_path, relative), relative
    for relative in ("src/generated.ts", "src/app.ts", "logs/x.txt"):
        assert check(watch_filter, tmp_path, relative), relative


def test_globs_by_path_and_by_name(tmp_path: Path) -> None:
    watch_filter = WatchFilter([str(tmp_path)], globs=split_patterns(["src/**/*.{ts,tsx},*.css"]))
    for relative in ("src/a.ts", "src/ui/b.tsx", "styles/site.css", "site.css"):
        assert check(watch_filter, tmp_path, relative), relative
    for relative in ("src/a.js", "lib/a.ts", "README.md", "node_modules/x/y.css"):
        assert not check(watch_filter, tmp_path, relative), relative


def test_nested_roots_name_paths_from_the_deepest(tmp_path: Path) -> None:
    inner = tmp_path / "packages" / "web"
    single = tmp_path / "config.json"
    watch_filter = WatchFilter([str(tmp_path), str(inner), str(single)])
    assert watch_filter.relative(str(inner / "src" / "a.ts")) == "src/a.ts"
    assert watch_filter.relative(str(tmp_path / "b.ts")) == "b.ts"
    assert watch_filter.relative(str(single)) == "config.json"


def test_batches_stay_under_the_message_limit() -> None:
    burst = [(f"src/{'x' * 200}/{i}.ts", "added") for i in range(5000)]
    bodies = list(batch_data(burst))
    assert len(bodies) > 1
    assert [c["file"] for body in bodies for c in body["changes"]] == [file for file, _ in burst]
    assert all(len(str(body)) < 512 * 1024 for body in bodies)
