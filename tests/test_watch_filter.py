"""Which paths `devbus watch` reports: globs with braces and comma lists, ignores, roots."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from support import WAIT
from watchfiles import Change

from devbus.watch.globs import expand_braces, glob_regex, split_patterns
from devbus.watch.watcher import FileChange, WatchFilter, _net_changes, batch_data, watch_changes


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


class Watching:
    """watch_changes running in a thread, its bursts collected; stopped on exit."""

    def __init__(self, root: Path, **filter_options: Any) -> None:
        self.ready = threading.Event()
        self.bursts: list[list[FileChange]] = []
        self._arrived = threading.Condition()
        watch_filter = WatchFilter([str(root)], **filter_options)
        self._bursts, self.stop = watch_changes(
            [str(root)], watch_filter=watch_filter, debounce_ms=50, on_ready=self.ready.set
        )
        self._thread = threading.Thread(target=self._collect)

    def _collect(self) -> None:
        for burst in self._bursts:
            with self._arrived:
                self.bursts.append(burst)
                self._arrived.notify_all()

    def __enter__(self) -> Watching:
        self._thread.start()
        assert self.ready.wait(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def wait_for(self, change: FileChange) -> list[FileChange]:
        """Wait until ``change`` is reported; return every change so far."""

        def seen() -> list[FileChange]:
            return [c for burst in self.bursts for c in burst]

        with self._arrived:
            assert self._arrived.wait_for(lambda: change in seen(), WAIT), seen()
            return seen()


def test_bursts_report_one_net_change_per_file(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "kept.ts").write_text("1")
    (tmp_path / "src" / "gone.ts").write_text("1")
    with Watching(tmp_path) as watching:
        (tmp_path / "src" / "new.ts").write_text("created and written")
        (tmp_path / "src" / "new.ts").write_text("written again")
        assert watching.wait_for(("src/new.ts", "added")) == [("src/new.ts", "added")]

        # An editor's save: write a temp file, rename it over the original.
        (tmp_path / "src" / "kept.ts.tmp").write_text("2")
        os.replace(tmp_path / "src" / "kept.ts.tmp", tmp_path / "src" / "kept.ts")
        (tmp_path / "src" / "sub").mkdir()
        (tmp_path / "src" / "gone.ts").unlink()
        (tmp_path / "node_modules").mkdir()
        (tmp_path / "node_modules" / "x.js").write_text("ignored")
        (tmp_path / "zz.ts").write_text("last")
        changes = watching.wait_for(("zz.ts", "added"))
    # The rename lands on an existing name, which inotify reports as a creation.
    assert ("src/kept.ts", "added") in changes
    assert ("src/gone.ts", "deleted") in changes
    unwanted = ("src/kept.ts.tmp", "src/sub", "node_modules", "node_modules/x.js")
    assert not [c for c in changes if c[0] in unwanted], "temp file, directory or ignored path reported"


def test_files_written_into_a_new_directory_at_once_are_all_reported(tmp_path: Path) -> None:
    """Regression: inotify watches a new directory only after seeing it, and lost files written at once."""
    with Watching(tmp_path, globs=["*.ts"]) as watching:
        (tmp_path / "checkout" / "deep").mkdir(parents=True)
        (tmp_path / "checkout" / "node_modules").mkdir()
        names = [f"checkout/f{i:03d}.ts" for i in range(300)] + ["checkout/deep/g.ts"]
        for name in [*names, "checkout/deep/g.js", "checkout/node_modules/h.ts"]:
            (tmp_path / name).write_text("x")
        (tmp_path / "zz.ts").write_text("last")
        changes = watching.wait_for(("zz.ts", "added"))
    assert sorted(changes) == sorted([(name, "added") for name in names] + [("zz.ts", "added")])


def test_a_file_found_by_a_scan_is_not_reported_again_by_its_own_late_event(tmp_path: Path) -> None:
    """A file written after its directory's burst closed shows up in the scan and, later, in its own event."""
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "same.ts").write_text("x")
    (tmp_path / "new" / "changed.ts").write_text("x")
    watch_filter = WatchFilter([str(tmp_path)])
    scanned: dict[str, tuple[int, int] | None] = {}
    first = _net_changes({(Change.added, str(tmp_path / "new"))}, watch_filter, scanned)
    assert first == [("new/changed.ts", "added"), ("new/same.ts", "added")]

    (tmp_path / "new" / "changed.ts").write_text("written again")
    late = {(Change.added, str(tmp_path / "new" / name)) for name in ("same.ts", "changed.ts")}
    assert _net_changes(late, watch_filter, scanned) == [("new/changed.ts", "added")]
    assert _net_changes({(Change.modified, str(tmp_path / "new" / "same.ts"))}, watch_filter, scanned) == [
        ("new/same.ts", "modified")
    ]
