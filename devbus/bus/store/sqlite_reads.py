"""The SQLite store's reads: pages of the events table in a reader thread, checked, and the WAL checkpoints.

Reads run on a connection of their own in a thread of their own (WAL lets them
run beside the writer), which also copies the WAL back into the file now and
then (:meth:`FileReader.checkpoint`): the writer never does, so that no commit
waits for an fsync of the whole file. Every row read becomes a record only once
checked (``checked.py``): a row edited by hand that is not an event is skipped,
and a page whose rows were all skipped is read on past them, so that a cursor
never takes a run of bad rows for the end of the log.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from devbus.bus.record import Record
from devbus.bus.store.checked import Checker
from devbus.bus.store.sqlite_file import connect, fetch_page
from devbus.bus.store.sqlite_owner import describe
from devbus.errors import StoreUnavailable

__all__ = ["FileReader"]

log = logging.getLogger(__name__)


class FileReader:
    """The reader thread's connection to one store file."""

    def __init__(self, name: str, checker: Checker) -> None:
        self._name = name
        self._checker = checker
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="devbus-sqlite-reader")
        self._db: sqlite3.Connection | None = None
        self.checkpointing = False

    async def open(self, path: str) -> None:
        """Connect, in the reader thread."""
        self._db = await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(connect, path, raw_text=True)
        )

    async def close(self) -> None:
        """Close the connection and the thread."""
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
            self._db = None
        self._executor.shutdown(wait=False)

    async def page(
        self, run: str, query: str, args: tuple[int, int, int], max_bytes: int, *, newest: bool
    ) -> list[Record]:
        """The checked records of ``query`` (``seq``, ``type``, ``json`` rows, moving away from ``args[0]``).

        ``args`` is (the bound the rows start after, the newest seq delivered, the limit).
        """
        db = self._db
        if db is None:
            raise StoreUnavailable(f"The store {self._name} is closed")
        loop = asyncio.get_running_loop()
        bound, end, limit = args
        while True:
            try:
                rows = await loop.run_in_executor(self._executor, fetch_page, db, query, (bound, end, limit), max_bytes)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"The store {self._name} could not be read: {describe(exc)}") from exc
            check = self._checker.record
            page = [r for seq, type_, json in rows if (r := check(f"{run}-{seq}", type_, json)) is not None]
            if page or not rows:
                if newest:
                    page.reverse()
                return page
            bound = rows[-1][0]  # every row was skipped: read on past them

    def checkpoint(self) -> None:
        """Copy the WAL back into the file, in the reader thread, unless a checkpoint is under way."""
        db = self._db
        if db is None or self.checkpointing:
            return
        self.checkpointing = True
        checkpoint = asyncio.get_running_loop().run_in_executor(
            self._executor, db.execute, "PRAGMA wal_checkpoint(PASSIVE)"
        )

        def done(future: asyncio.Future[Any]) -> None:
            self.checkpointing = False
            if not future.cancelled() and future.exception() is not None:
                log.warning("could not checkpoint %s: %s", self._name, describe(future.exception() or Exception()))

        checkpoint.add_done_callback(done)
