"""The SQLite store's file: connecting, the schema and its version, loading what it holds, reading pages.

Schema versions: 1 held the events and the meta table; 2 adds what makes appends
idempotent (``producers``: each producer's last stored seq; ``keys``: recent
idempotency keys and the seqs their append got). A version-1 file is migrated in
place when it is opened; a file of a later version is refused.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from devbus.bus.store.sequence import new_run
from devbus.errors import ConfigError

__all__ = ["SCHEMA_VERSION", "Loaded", "connect", "fetch_page", "load"]

SCHEMA_VERSION = 2
_READABLE = ("1", str(SCHEMA_VERSION))  # versions this one opens (1 is migrated)
# A run identity as new_run makes one: it is part of every id, so of every SSE `id:` line.
_RUN = re.compile(r"[0-9a-f]{8}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, json BLOB NOT NULL);
"""
# Version 2: written in the same transaction as the events they describe.
_CLAIMS = """
CREATE TABLE IF NOT EXISTS producers (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key TEXT PRIMARY KEY, fingerprint BLOB NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_created ON keys (created);
"""


def connect(path: str, *, raw_text: bool = False) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, for use by one thread at a time.

    With ``raw_text`` text comes back as bytes, as it is in the file: a row edited by
    hand may hold text that is not UTF-8, which is then skipped as the record it is
    part of (``checked.py``) rather than failing the whole page it is read with.
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if raw_text:
        connection.text_factory = bytes
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process being killed (it is in the
    # WAL file); only a power loss could take the last transactions back.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    # Checkpoints run in the reader's thread (see SqliteStore._checkpoint), never in a commit.
    connection.execute("PRAGMA wal_autocheckpoint=0")
    return connection


class Loaded:
    """An open file: its connection, its run identity, the (seq, JSON size) of each event it holds,
    the (id, seq) of each producer, least recently seen first, and the (key, fingerprint, first seq,
    count, created) of each key, oldest first.

    ``sizes`` holds consecutive seqs (the stores' invariant): a seq missing from the
    file (a row deleted by hand) is there with size 0, and reads skip it.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        run: str,
        sizes: list[tuple[int, int]],
        producers: list[tuple[str, int]],
        keys: list[tuple[str, bytes, int, int, float]],
    ) -> None:
        self.db = db
        self.run = run
        self.sizes = sizes
        self.producers = producers
        self.keys = keys


def load(path: str, *, name: str, history: int) -> Loaded:
    """Open (or create) the store file at ``path`` and check its version; ConfigError says what to do if not.

    Only the newest ``history`` seqs are loaded: older rows are trimmed by the next commit.
    """
    db = connect(path)
    try:
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version is None:
            run = new_run()
            db.executescript(_CLAIMS)
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", str(SCHEMA_VERSION)), ("run", run)])
        elif version not in _READABLE or "run" not in meta:
            raise ConfigError(
                f"--store {name} was written by another devbus version (schema {version}, "
                f"this one reads {' and '.join(_READABLE)}); move the file away or pass another --store"
            )
        else:
            run = meta["run"]
            if _RUN.fullmatch(run) is None:
                raise ConfigError(
                    f"--store {name} is corrupt: its run identity {run[:40]!r} is not one devbus writes; "
                    "move the file away or pass another --store"
                )
            if version != str(SCHEMA_VERSION):
                _migrate(db)
        sizes = _consecutive(db.execute("SELECT seq, length(json) FROM events ORDER BY seq").fetchall(), history)
        producers = db.execute("SELECT id, seq FROM producers ORDER BY seen").fetchall()
        keys = db.execute("SELECT key, fingerprint, first, count, created FROM keys ORDER BY created").fetchall()
    except BaseException:
        db.close()
        raise
    return Loaded(db, run, sizes, producers, keys)


def _consecutive(rows: list[tuple[int, int]], history: int) -> list[tuple[int, int]]:
    """The newest ``history`` seqs up to the newest row's, with size 0 for those no row holds."""
    if not rows:
        return []
    last = rows[-1][0]
    first = max(rows[0][0], last - history + 1)
    sizes = [(seq, 0) for seq in range(first, last + 1)]
    for seq, size in rows:
        if seq >= first:
            sizes[seq - first] = (seq, size or 0)
    return sizes


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a version-1 file to version 2 in one transaction: its events stay as they are."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _CLAIMS.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def fetch_page(db: sqlite3.Connection, query: str, args: tuple[int, int, int], max_bytes: int) -> list[Any]:
    """Run ``query`` and return its (seq, type, json) rows up to ``max_bytes`` of JSON (at least one)."""
    # Rows are fetched one by one so that a page stops at max_bytes without reading more.
    rows: list[Any] = []
    size = 0
    for row in db.execute(query, args):
        size += len(row[2]) if isinstance(row[2], bytes) else 0  # not bytes: a row edited by hand, skipped
        if rows and size > max_bytes:
            break
        rows.append(row)
    return rows
