"""The SQLite store's hold on its file: one bus per file, and a file deleted or replaced under it noticed.

One bus owns a file. While its store is open it holds an exclusive ``flock`` on
the database file and names itself in the file's ``meta`` table (``owner``: pid,
host, since when and, once the bus listens, its URL). A second bus on the same
file finds the lock taken and refuses to start, with one line that names the
first, before it reads or writes anything. ``flock`` rather than SQLite's own
locks: SQLite takes and drops POSIX locks per transaction (so two buses would
both start and then fight over seqs), while a ``flock`` is held as long as the
descriptor is open and released by the kernel when the process dies, so a bus
killed with ``kill -9`` leaves no stale lock. On Linux the two kinds of lock do
not interact; the descriptor stays open until the store's connections are closed
(closing a descriptor of a file drops the process's POSIX locks on it).

The file's identity (device and inode) is noted when it is locked. A file
deleted, or moved away, or replaced by another one under a running bus would
take every later commit into a file nobody can open again: :meth:`FileHold.missing`
compares what the path names now with what the bus holds, before every commit
and every ``WATCH_EVERY`` seconds (a supervised task), and the store refuses
appends and reads (503) while they differ. What is wrong with the file, missing
or failing to commit (disk full, read-only, corrupt), is health's ``state`` and
``error``, and one log line per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import sqlite3
import time
from typing import Any
from urllib.parse import quote

from devbus.bus.store.supervised import Supervised
from devbus.errors import ConfigError, StoreUnavailable

__all__ = ["FileGone", "FileHold", "describe"]

log = logging.getLogger(__name__)

# Seconds between checks that the path still names the file this bus holds (a stat each).
WATCH_EVERY = 1.0

# What SQLite's primary result codes mean to a user (``sqlite3.Error.sqlite_errorname``,
# whose extended names such as SQLITE_IOERR_WRITE start with these).
_SQLITE_MEANINGS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the file is read-only (its mode, its directory's or a read-only file system)",
    "SQLITE_CORRUPT": "the file is corrupt",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_IOERR": "the disk failed to read or write it",
    "SQLITE_CANTOPEN": "the file cannot be opened (its directory must exist and be writable)",
    "SQLITE_BUSY": "another process holds the file locked",
    "SQLITE_PERM": "permission denied",
}
_OS_MEANINGS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file reached the size limit (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "the file or its directory does not exist",
}


class FileGone(Exception):
    """The path no longer names the file this bus holds (the message says how)."""


def describe(exc: BaseException) -> str:
    """What went wrong with the file, in words a user acts on, then the error itself (one line)."""
    meaning = None
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        meaning = next((text for code, text in _SQLITE_MEANINGS.items() if name.startswith(code)), None)
    elif isinstance(exc, OSError) and exc.errno is not None:
        meaning = _OS_MEANINGS.get(exc.errno)
    detail = str(exc).replace("\n", " ") or type(exc).__name__
    return f"{meaning} ({detail})" if meaning else detail


def owner(url: str | None = None) -> str:
    """How this bus names itself to another one that finds its file taken."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    serving = f", serving {url}" if url else ""
    return f"pid {os.getpid()} on {socket.gethostname()}{serving}, since {since}"


class FileHold:
    """The lock on one store file, the identity of the file it locks, and whether that file works."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name  # the store's name, for messages
        self._fd: int | None = None
        self._identity = (0, 0)
        self.gone: str | None = None  # why the path no longer names the file held
        self.failed: str | None = None  # why the last commit failed, until one succeeds
        self._down_since = 0.0
        self._watcher = Supervised(f"the watcher of {name}", self._watch)

    def take(self) -> None:
        """Lock the file (creating it if need be), or raise ConfigError naming the bus that holds it."""
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            raise ConfigError(
                f"Cannot use --store {self.name}: directory {directory!r} does not exist; create it first"
            )
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"Cannot use --store {self.name}: {describe(exc)}; pass another --store") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"Cannot lock --store {self.name}: {describe(exc)}; pass another --store") from exc
            raise ConfigError(
                f"--store {self.name} is in use by another bus ({self._holder()}); "
                "stop it, or pass another --store (one bus per file)"
            ) from None
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        why = self._read_only(directory)
        if why is not None:
            raise ConfigError(
                f"Cannot use --store {self.name}: {why}; devbus writes every event there: make it writable "
                "or pass another --store"
            )

    def _read_only(self, directory: str) -> str | None:
        """Why the file cannot be written (SQLite would only say "unable to open database file"), or None."""
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "the file system is read-only"
        if not os.access(self.path, os.W_OK):
            return f"the file is read-only (mode {os.stat(self.path).st_mode & 0o777:o})"
        if not os.access(directory, os.W_OK):
            return f"its directory {directory!r} is read-only (SQLite keeps a -wal and a -shm file beside it)"
        return None

    def _holder(self) -> str:
        """The owner the file's meta table names (best effort: the holder may not have written it yet)."""
        try:
            db = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, timeout=1.0)
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            row = None
        if not row or not isinstance(row[0], str):
            return "a process that has not said which"
        return row[0].encode("unicode_escape").decode()[:200]

    def missing(self) -> str | None:
        """Why the path no longer names the file this bus holds (deleted, replaced), or None if it does."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return "the file was deleted (or moved away) under this bus"
        except OSError as exc:
            return f"the file cannot be checked: {describe(exc)}"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return "the file was replaced by another one under this bus"
        return None

    def own(self, db: sqlite3.Connection, url: str | None = None) -> None:
        """Name this bus (and ``url``, once it listens) in the file's meta table, for a bus that finds it taken."""
        db.execute("INSERT OR REPLACE INTO meta VALUES ('owner', ?)", (owner(url),))

    def watch(self) -> None:
        """Start checking the file every WATCH_EVERY seconds."""
        self._watcher.start()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            gone = self.missing()
            if gone is not None:
                self.lost(gone)
            elif self.gone is not None:
                self.gone = None
                log.warning("store %s is back after %.1fs", self.name, time.monotonic() - self._down_since)

    def lost(self, why: str) -> None:
        """The path no longer names the file held: say so once; appends and reads are refused until it does."""
        if self.gone is None:
            self._down_since = time.monotonic()
            log.error(
                "store %s is down: %s; publishing answers 503 until that file is back at the path "
                "(restart devbus run to start on what is there now)",
                self.name,
                why,
            )
        self.gone = why

    def write_failed(self, error: BaseException) -> str:
        """A commit failed with ``error``: say so once per outage; return what happened, in words."""
        if isinstance(error, FileGone):
            self.lost(str(error))
            return str(error)
        what = describe(error)
        if self.failed is None:
            self._down_since = self._down_since if self.gone else time.monotonic()
            log.error("could not write to %s: %s; publishing answers 503 until a write succeeds", self.name, what)
        self.failed = what
        return what

    def wrote(self) -> None:
        """A commit succeeded."""
        if self.failed is not None:
            log.warning("store %s takes events again after %.1fs", self.name, time.monotonic() - self._down_since)
            self.failed = None

    def unavailable(self) -> StoreUnavailable | None:
        """The error appends and reads get while the file is missing, else None."""
        if self.gone is None:
            return None
        return StoreUnavailable(f"The store {self.name} is unavailable: {self.gone}; try again once it is back")

    def status(self) -> dict[str, Any]:
        """Health's state of the file, why it is down and since when, and its watcher."""
        down = self.gone or self.failed
        status: dict[str, Any] = {"state": "down" if down else "up"}
        if down:
            status["error"] = down
            status["down_s"] = round(time.monotonic() - self._down_since, 3)
        status["watcher"] = self._watcher.status()
        return status

    async def release(self) -> None:
        """Stop watching and drop the lock (call once the store's connections are closed)."""
        await self._watcher.stop()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
