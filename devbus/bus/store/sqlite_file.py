"""The SQLite store's file: connecting, the schema and its version, loading what it holds, reading pages."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from devbus.bus.store.sequence import new_run
from devbus.errors import ConfigError

__all__ = ["SCHEMA_VERSION", "Loaded", "connect", "fetch_page", "load"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, json BLOB NOT NULL);
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
    """An open file: its connection, its run identity, and the (seq, JSON size) of each event it holds."""

    def __init__(self, db: sqlite3.Connection, run: str, sizes: list[tuple[int, int]]) -> None:
        self.db = db
        self.run = run
        self.sizes = sizes


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
            db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", str(SCHEMA_VERSION)), ("run", run)])
        elif version != str(SCHEMA_VERSION) or "run" not in meta:
            raise ConfigError(
                f"--store {name} was written by another devbus version (schema {version}, "
                f"this one reads {SCHEMA_VERSION}); move the file away or pass another --store"
            )
        else:
            run = meta["run"]
        sizes = db.execute("SELECT seq, length(json) FROM events ORDER BY seq").fetchall()
    except BaseException:
        db.close()
        raise
    return Loaded(db, run, sizes)


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
