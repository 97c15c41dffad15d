"""The SQLite store's file: connecting, the schema and its version, loading what it holds, reading pages.

Schema versions: 1 held the events and the meta table; 2 adds what makes appends
idempotent (``producers``: each producer's last stored seq; ``keys``: recent
idempotency keys and the seqs their append got). A version-1 file is migrated in
place when it is opened; a file of a later version is refused.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from devbus.bus.store.sequence import new_run
from devbus.errors import ConfigError

__all__ = ["SCHEMA_VERSION", "Loaded", "connect", "fetch_page", "load"]

SCHEMA_VERSION = 2
_READABLE = ("1", str(SCHEMA_VERSION))  # versions this one opens (1 is migrated)

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


def connect(path: str) -> sqlite3.Connection:
    """Open ``path`` in WAL mode, for use by one thread at a time."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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
    count, created) of each key, oldest first."""

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


def load(path: str, *, name: str) -> Loaded:
    """Open (or create) the store file at ``path`` and check its version; ConfigError says what to do if not."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"Cannot use --store {name}: directory {directory!r} does not exist; create it first")
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
            if version != str(SCHEMA_VERSION):
                _migrate(db)
        sizes = db.execute("SELECT seq, length(json) FROM events ORDER BY seq").fetchall()
        producers = db.execute("SELECT id, seq FROM producers ORDER BY seen").fetchall()
        keys = db.execute("SELECT key, fingerprint, first, count, created FROM keys ORDER BY created").fetchall()
    except BaseException:
        db.close()
        raise
    return Loaded(db, run, sizes, producers, keys)


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
        size += len(row[2])
        if rows and size > max_bytes:
            break
        rows.append(row)
    return rows
