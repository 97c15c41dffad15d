"""Turn file changes into events (`devbus watch PATH...`), on top of watchfiles.

watchfiles (inotify, FSEvents, ...) does the watching and the debouncing; this
module decides which paths count (globs, ignores), names each change relative to
its watched root, and reduces a burst to one change per file.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from watchfiles import Change, DefaultFilter, watch

from devbus.watch.globs import expand_braces, glob_regex

__all__ = [
    "DEFAULT_IGNORES",
    "Emitter",
    "FileChange",
    "StopWatch",
    "WatchFilter",
    "batch_data",
    "emit_changes",
    "watch_changes",
]

DEFAULT_IGNORES = ("node_modules", ".git", "__pycache__", ".next", "dist")
STOP_GRACE_S = 0.5  # on top of the debounce: how long a stop waits for changes already made
MAX_GROUP_MS = 1600  # a change is reported at most this long after it happened, even mid-burst
BATCH_BYTES = 256 * 1024  # keeps a --batch event well under the bus's 1 MiB message limit

FileChange = tuple[str, str]  # (path relative to its root, POSIX style; "added" | "modified" | "deleted")

_CHANGE_NAMES = {Change.added: "added", Change.modified: "modified", Change.deleted: "deleted"}
_WILDCARD = re.compile(r"[*?\[{]")


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    regexes = [glob_regex(p) for pattern in patterns for p in expand_braces(pattern)]
    return re.compile("(?:" + "|".join(regexes) + r")\Z") if regexes else None


class WatchFilter(DefaultFilter):
    """watchfiles' DefaultFilter, applied below each root, plus our ignores and globs.

    A pattern without ``/`` matches a file or directory name at any depth (``*.log``,
    ``build``); one with ``/`` matches the path from the watched root (``src/**/*.ts``).
    An ignored directory hides everything below it.
    """

    def __init__(self, roots: Sequence[str], *, globs: Sequence[str] = (), ignores: Sequence[str] = ()) -> None:
        names = [p for p in ignores if "/" not in p and not _WILDCARD.search(p)]
        name_globs = [p for p in ignores if "/" not in p and p not in names]
        super().__init__(
            ignore_dirs=(*DefaultFilter.ignore_dirs, *DEFAULT_IGNORES, *names),
            ignore_entity_patterns=(
                *DefaultFilter.ignore_entity_patterns,
                *(glob_regex(p) + r"\Z" for g in name_globs for p in expand_braces(g)),
            ),
        )
        self.roots = sorted({os.path.abspath(r) for r in roots} | {os.path.realpath(r) for r in roots}, key=len)[::-1]
        self._ignored_paths = _compile(p for p in ignores if "/" in p)
        self._name_globs = _compile(p for p in globs if "/" not in p)
        self._path_globs = _compile(p for p in globs if "/" in p)
        self._any_glob = bool(globs)

    def relative(self, path: str) -> str | None:
        """The path below its watched root, POSIX style; None outside every root."""
        for root in self.roots:
            if path.startswith(root + os.sep):
                return path[len(root) + 1 :].replace(os.sep, "/")
            if path == root:
                return os.path.basename(path)  # a single watched file
        return None

    def ignored(self, relative: str) -> bool:
        """Whether a path below a root (POSIX style) is ignored, by name or by path."""
        # Apply the name rules below the root only, so a project inside ~/dist still works.
        if not super().__call__(Change.modified, relative.replace("/", os.sep)):
            return True
        if self._ignored_paths is not None:
            parts = relative.split("/")
            return any(self._ignored_paths.match("/".join(parts[: n + 1])) for n in range(len(parts)))
        return False

    def wanted(self, relative: str) -> bool:
        """Whether a file's path below a root (POSIX style) matches the globs, if any."""
        if not self._any_glob:
            return True
        name = relative.rpartition("/")[2]
        return bool(
            (self._name_globs is not None and self._name_globs.match(name))
            or (self._path_globs is not None and self._path_globs.match(relative))
        )

    def __call__(self, change: Change, path: str) -> bool:
        relative = self.relative(path)
        if relative is None or self.ignored(relative):
            return False
        # A new directory is let through whatever the globs say: its files get scanned.
        return self.wanted(relative) or (change is Change.added and os.path.isdir(path))

    def scan(self, directory: str) -> Iterator[str]:
        """Yield every wanted file below ``directory``, pruning ignored directories."""
        for parent, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if (r := self.relative(os.path.join(parent, d))) and not self.ignored(r)]
            for name in files:
                path = os.path.join(parent, name)
                relative = self.relative(path)
                if relative is not None and not self.ignored(relative) and self.wanted(relative):
                    yield path


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _net_changes(
    changes: set[tuple[Change, str]], watch_filter: WatchFilter, scanned: dict[str, tuple[int, int] | None]
) -> list[FileChange]:
    """Reduce a burst to one change per file, sorted by path; directories are left out.

    ``scanned`` holds the files found in new directories by the previous burst and
    is replaced by this burst's: a file's own event that arrives one burst after the
    scan that reported it is not reported again unless the file changed since.
    """
    kinds: dict[str, set[Change]] = {}
    for change, path in changes:
        kinds.setdefault(path, set()).add(change)
    previous = dict(scanned)
    scanned.clear()
    net: dict[str, Change] = {}
    for path, seen in kinds.items():
        if Change.added in seen and os.path.isdir(path):
            # inotify only watches a new directory once it has seen it, so files
            # written into it right away (git checkout, cp -r, mv) may have no event
            # of their own: the directory's contents are the truth.
            for file in watch_filter.scan(path):
                net[file] = Change.added
                scanned[file] = _stamp(file)
    for path, seen in kinds.items():
        if path in previous and Change.deleted not in seen and _stamp(path) == previous[path]:
            continue
        if Change.added in seen and Change.deleted in seen:
            # Deleted and written again, or a temp file that came and went: the disk says which.
            if not os.path.exists(path):
                continue
            change = Change.modified
        elif Change.added in seen:
            change = Change.added  # a new file's first write is part of its creation
        elif Change.deleted in seen:
            change = Change.deleted
        else:
            change = Change.modified
        if path in net or (change is not Change.deleted and os.path.isdir(path)):
            continue
        net[path] = change
    named = ((watch_filter.relative(path), _CHANGE_NAMES[change]) for path, change in net.items())
    return sorted((relative, change) for relative, change in named if relative is not None)


class StopWatch(Protocol):
    """Ends a watch after the burst being reported (``at_once``: without waiting for changes in flight)."""

    def __call__(self, *, at_once: bool = False) -> None: ...


class _Stop:
    """The stop flag watchfiles polls between steps; its first poll means the watch is live.

    A stop takes effect ``grace`` seconds after it is requested: watchfiles drops the
    changes it is still grouping when it stops, so a Ctrl-C right after a burst (a
    checkout, a build) would lose all of it. The grace lets that burst be reported first.
    """

    def __init__(self, on_ready: Callable[[], None], *, grace: float) -> None:
        self._stop_at: float | None = None
        self._grace = grace
        self._on_ready: Callable[[], None] | None = on_ready

    def request(self, *, at_once: bool = False) -> None:
        stop_at = time.monotonic() + (0.0 if at_once else self._grace)
        if self._stop_at is None or stop_at < self._stop_at:
            self._stop_at = stop_at

    def is_set(self) -> bool:
        if self._on_ready is not None:
            on_ready, self._on_ready = self._on_ready, None
            on_ready()
        return self._stop_at is not None and time.monotonic() >= self._stop_at


def watch_changes(
    roots: Sequence[str],
    *,
    watch_filter: WatchFilter,
    debounce_ms: int,
    on_ready: Callable[[], None],
) -> tuple[Iterator[list[FileChange]], StopWatch]:
    """Return (bursts of changes, a function that ends them after the current burst).

    The stop waits for changes already made unless asked to stop ``at_once``.
    """
    # Long enough for changes already made to reach the watcher and for their burst to end.
    stop = _Stop(on_ready, grace=debounce_ms / 1000 + STOP_GRACE_S)

    def bursts() -> Iterator[list[FileChange]]:
        scanned: dict[str, tuple[int, int] | None] = {}
        for changes in watch(
            *roots,
            watch_filter=watch_filter,
            step=debounce_ms,
            debounce=max(MAX_GROUP_MS, debounce_ms),
            stop_event=stop,
            rust_timeout=0,
            raise_interrupt=False,
        ):
            burst = _net_changes(changes, watch_filter, scanned)
            if burst:
                yield burst

    return bursts(), stop.request


def batch_data(burst: Sequence[FileChange]) -> Iterator[dict[str, Any]]:
    """Split a burst into `--batch` event bodies, each well under the message size limit."""
    changes: list[dict[str, str]] = []
    size = 0
    for file, change in burst:
        if changes and size + len(file) + 32 > BATCH_BYTES:
            yield {"changes": changes}
            changes, size = [], 0
        changes.append({"file": file, "change": change})
        size += len(file) + 32
    if changes:
        yield {"changes": changes}


class Emitter(Protocol):
    """What sends the events: a devbus Publisher."""

    def emit(self, event_type: str, /, data: dict[str, Any] | None = None, *, source: str | None = None) -> object: ...


def _clock() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def emit_changes(
    roots: Sequence[str],
    *,
    publisher: Emitter,
    event_type: str,
    source: str,
    batch: bool,
    watch_filter: WatchFilter,
    debounce_ms: int,
    on_ready: Callable[[], None],
    write: Callable[[str], None] | None,
    stop_when: Callable[[StopWatch], None] | None = None,
) -> int:
    """Emit an event per changed file (per burst with ``batch``) until SIGINT or SIGTERM; return the count.

    ``stop_when`` is given the function that stops the watch as SIGTERM does, to call from any thread.
    """
    bursts, request_stop = watch_changes(roots, watch_filter=watch_filter, debounce_ms=debounce_ms, on_ready=on_ready)
    if stop_when is not None:
        stop_when(request_stop)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        stopping = True
        # Finish the burst being sent (so no change is half reported), then stop.
        request_stop()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    emitted = 0
    try:
        for burst in bursts:
            if batch:
                for data in batch_data(burst):
                    publisher.emit(event_type, data, source=source)
                    emitted += 1
                    if write is not None:
                        first = data["changes"][0]
                        more = f" (+{len(data['changes']) - 1} more)" if len(data["changes"]) > 1 else ""
                        write(f"{_clock()}  batch     {len(data['changes'])} changes: {first['file']}{more}")
                continue
            for file, change in burst:
                publisher.emit(event_type, {"file": file, "change": change}, source=source)
                emitted += 1
                if write is not None:
                    write(f"{_clock()}  {change:<9} {file}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return emitted
