"""The SQLite store: the log in one WAL-mode database file, kept across restarts.

Writes happen in one writer thread: everything appended during a loop turn goes
in one transaction, and the records are delivered and their futures resolved
(HTTP 200, a ZeroMQ batch taken) only after that transaction has committed, so
a ``kill -9`` loses nothing acknowledged. Reads run in a reader thread of their
own (``sqlite_reads.py``) and see only delivered records, so a cursor never
reads past what the outputs have been handed; a row that is not an event (edited
by hand) is skipped and counted (``checked.py``).

One bus owns the file, and notices when the file goes (``sqlite_owner.py``): a
second bus refuses to start; while the file is deleted or replaced, appends and
reads answer 503. A commit that fails (disk full, read-only, corrupt) is said in
one line, once per outage, and fails its appends with 503; the next tries again.

Invariant: retained records hold consecutive seqs ``_first`` to ``_delivered``,
in the ``events`` table; the run identity is kept in ``meta``, so ids continue
across restarts and a client resumes after one with no gap.

Idempotency: what a claim lets through is decided on the loop from the
producers and keys held in memory (``sqlite_claims.py``), which mirror the
``producers`` and ``keys`` tables: each change is written in the transaction of
the events it belongs to, and taken back in memory if that transaction fails.
An append resolves with its transaction, also one that stores nothing (a repeat
of an event still being committed is answered only once that commit is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devbus.bus.record import Deliver, Record
from devbus.bus.store.base import Appended, Claim, Resume, Store
from devbus.bus.store.checked import Checker
from devbus.bus.store.sequence import format_id, number, parse_id, resume
from devbus.bus.store.sqlite_claims import ClaimRows, FileClaims, Transaction
from devbus.bus.store.sqlite_file import load
from devbus.bus.store.sqlite_owner import FileGone, FileHold, describe
from devbus.bus.store.sqlite_reads import FileReader
from devbus.envelope import Draft
from devbus.errors import ConfigError, KeyReused, StoreUnavailable

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

# Bytes committed between checkpoints of the WAL into the database file.
CHECKPOINT_BYTES = 4 * 1024 * 1024


class SqliteStore(Store):
    """The newest ``history`` records (at most ``history_bytes`` of JSON) in a SQLite file."""

    def __init__(self, path: str, *, history: int, history_bytes: int | None = None) -> None:
        self.path = path
        self.name = f"sqlite:{path}"
        self._maxlen = history
        self._max_bytes = history_bytes
        self._run = ""
        self._seq = 0  # the newest seq numbered (maybe not committed yet)
        self._delivered = 0  # the newest seq committed and delivered
        self._first = 1  # the oldest seq retained
        self._sizes: deque[int] = deque()  # JSON sizes of the retained records, oldest first
        self._bytes = 0
        self._deliver: Deliver | None = None
        self._pending = Transaction()
        self._writing: asyncio.Future[None] | None = None
        self._scheduled = False
        self._unchecked = 0  # bytes committed since the last checkpoint
        self._claims = FileClaims()
        self._checker = Checker(self.name)
        self._hold = FileHold(path, self.name)
        self._files = FileReader(self.name, self._checker)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="devbus-sqlite-writer")
        self._write_db: sqlite3.Connection | None = None

    @property
    def run(self) -> str:
        """The identity stored in the file: the same after a restart."""
        return self._run

    @property
    def last_id(self) -> str | None:
        """The id of the newest record delivered."""
        return format_id(self._run, self._delivered) if self._delivered else None

    def __len__(self) -> int:
        return len(self._sizes)

    def status(self) -> dict[str, Any]:
        """Name, state and what is retained, for health; why it is down, the watcher, what was skipped."""
        return {"name": self.name, "retained": len(self), **self._hold.status(), "skipped": self._checker.status()}

    async def open(self, deliver: Deliver) -> None:
        """Lock the file (one bus per file), open or create it, check it, load the bounds; then start delivering."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._hold.take)
            self._write_db = await loop.run_in_executor(self._writer, self._open_writer)
            await self._files.open(self.path)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise ConfigError(
                f"Cannot use --store {self.name}: {describe(exc)}; fix that, move the file away or pass another --store"
            ) from exc
        except ConfigError:
            await self.close()
            raise
        self._deliver = deliver
        self._hold.watch()

    def announce(self, url: str) -> None:
        """Name this bus's URL in the file, for a second bus that finds the file taken."""
        db = self._write_db
        if db is not None:
            written = asyncio.get_running_loop().run_in_executor(self._writer, self._hold.own, db, url)

            def done(written: asyncio.Future[None]) -> None:
                # Best effort: the lock, not this row, keeps a second bus out; the row only names the first.
                if not written.cancelled() and written.exception() is not None:
                    log.debug("could not name this bus in %s: %s", self.name, written.exception())

            written.add_done_callback(done)

    def _open_writer(self) -> sqlite3.Connection:
        # Runs in the writer thread: creating, checking and loading the file may take a while.
        loaded = load(self.path, name=self.name, history=self._maxlen)
        self._run = loaded.run
        if loaded.sizes:
            self._first = loaded.sizes[0][0]
            self._seq = self._delivered = loaded.sizes[-1][0]
            self._sizes.extend(size for _, size in loaded.sizes)
            self._bytes = sum(self._sizes)
        self._claims.load_file(loaded)
        try:
            self._hold.own(loaded.db)  # at open: a file this bus cannot write to is said now
        except BaseException:
            loaded.db.close()
            raise
        return loaded.db

    async def close(self) -> None:
        """Commit what is pending, then close the file."""
        while self._writing is not None or self._pending.answers:
            if self._writing is None:
                self._submit()
            writing = self._writing
            if writing is not None:
                await asyncio.shield(writing)
        self._deliver = None
        if self._write_db is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write_db.close)
            self._write_db = None
        self._writer.shutdown(wait=False)
        await self._files.close()
        await self._hold.release()  # last: closing its descriptor would drop SQLite's locks on the file

    def append(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None = None) -> asyncio.Future[Appended]:
        """Number ``drafts`` now; commit them with the rest of this loop turn's in the writer thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Appended] = loop.create_future()
        if self._write_db is None:
            future.set_exception(StoreUnavailable(f"The store {self.name} is closed"))
            return future
        if (gone := self._hold.unavailable()) is not None:
            future.set_exception(gone)
            return future
        skipped, replayed = 0, None
        if claim is not None:
            try:
                skipped, replayed = self._claims.check(claim)
            except KeyReused as exc:
                future.set_exception(exc)
                return future
            if replayed is not None:
                drafts = ()
            elif skipped:
                drafts = drafts[skipped:]
        records = number(self._run, self._seq + 1, drafts, timestamp)
        self._pending.add(future, records, skipped, replayed)
        if claim is not None and records:
            self._claims.stored(claim, records, self._seq + 1, self._pending)
        self._seq += len(records)
        if self._writing is None and not self._scheduled:
            # One loop turn later: appends made together share one transaction.
            self._scheduled = True
            loop.call_soon(self._submit)
        return future

    async def producer_seq(self, producer: str) -> int:
        """The last seq stored for ``producer``, once committed (kept across restarts)."""
        seq = self._claims.seq(producer)
        if self._writing is not None or self._pending.answers:
            # It may be in a transaction still to commit: answer once everything numbered so far is.
            await self.append((), "")
        return seq

    def _keep_from(self, sizes: list[int]) -> int:
        """The oldest seq to keep once records of ``sizes`` are added (the bounds of memory)."""
        count = len(self._sizes) + len(sizes)
        total = self._bytes + sum(sizes)
        first = self._first
        old = iter(self._sizes)
        while count > self._maxlen or (self._max_bytes is not None and total > self._max_bytes and count > 1):
            dropped = next(old, None)
            total -= dropped if dropped is not None else sizes[first - self._first - len(self._sizes)]
            count -= 1
            first += 1
        return first

    def _submit(self) -> None:
        self._scheduled = False
        if self._writing is not None or not self._pending.answers:
            return
        pending, self._pending = self._pending, Transaction()
        if not pending.records:
            pending.answer()  # only appends that store nothing (repeats): what they repeat is committed by now
            return
        start = self._delivered + 1
        rows = [(start + i, r.type, r.json) for i, r in enumerate(pending.records)]
        sizes = [len(r.json) for r in pending.records]
        keep_from = self._keep_from(sizes)
        claims = self._claims.rows(pending)
        loop = asyncio.get_running_loop()
        self._writing = writing = loop.run_in_executor(self._writer, self._write, rows, keep_from, claims)
        writing.add_done_callback(lambda done: self._write_done(done, pending, sizes, keep_from))

    def _write_done(self, done: asyncio.Future[None], pending: Transaction, sizes: list[int], keep_from: int) -> None:
        self._writing = None
        error = done.exception() if not done.cancelled() else StoreUnavailable("write cancelled")
        if error is not None:
            self._fail(error, pending)
        else:
            self._written(pending, sizes, keep_from)

    def _write(self, rows: list[tuple[int, str, bytes]], keep_from: int, claims: ClaimRows) -> None:
        db = self._write_db
        assert db is not None  # closed only after the last write
        # A commit into a file deleted or replaced meanwhile would be acknowledged into nothing.
        gone = self._hold.missing()
        if gone is not None:
            raise FileGone(gone)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
            db.execute("DELETE FROM events WHERE seq < ?", (keep_from,))
            claims.write(db)
            db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk): a ROLLBACK then
            # fails with "no transaction is active", which must not hide what happened.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _written(self, pending: Transaction, sizes: list[int], keep_from: int) -> None:
        self._hold.wrote()
        self._sizes.extend(sizes)
        self._bytes += sum(sizes)
        while self._first < keep_from:
            self._bytes -= self._sizes.popleft()
            self._first += 1
        self._delivered += len(pending.records)
        if self._deliver is not None and pending.records:
            self._deliver(pending.records)
        pending.answer()
        self._unchecked += sum(sizes)
        if self._unchecked > CHECKPOINT_BYTES and not self._files.checkpointing:
            # The writer never checkpoints (that would fsync in the middle of a commit).
            self._unchecked = 0
            self._files.checkpoint()
        if self._pending.answers:
            self._submit()

    def _fail(self, error: BaseException, pending: Transaction) -> None:
        what = self._hold.write_failed(error)
        failure = StoreUnavailable(f"The store {self.name} could not save the event(s): {what}")
        # Records numbered after the failed ones fail with them, so that seqs stay consecutive.
        later, self._pending = self._pending, Transaction()
        pending.fail(failure)
        later.fail(failure)
        self._seq = self._delivered
        # What they claimed was not committed: forget it, the newest first.
        self._claims.undo(pending.undo + later.undo)

    async def resolve(self, event_id: str) -> Resume:
        """Resume after ``event_id`` if it is this file's and nothing after it was dropped, else a gap."""
        first = self._first if self._sizes else None
        return resume(self._run, event_id, first=first, last=self._delivered)

    def _after_seq(self, after: str) -> int:
        parsed = parse_id(after)
        if parsed is None or parsed[0] != self._run:
            return self._first - 1
        return max(parsed[1], self._first - 1)

    async def read_after(self, after: str, *, limit: int, max_bytes: int) -> list[Record]:
        """A page of the delivered records after ``after``, oldest first."""
        query = "SELECT seq, type, json FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        return await self._read(query, (self._after_seq(after), self._delivered, limit), max_bytes, newest=False)

    async def read_before(self, before: str | None, *, limit: int, max_bytes: int) -> list[Record]:
        """A page of the newest delivered records before ``before`` (None: the newest), oldest first."""
        end = self._delivered + 1 if before is None else self._after_seq(before)
        query = "SELECT seq, type, json FROM events WHERE seq < ? AND seq <= ? ORDER BY seq DESC LIMIT ?"
        return await self._read(query, (end, self._delivered, limit), max_bytes, newest=True)

    async def _read(self, query: str, args: tuple[int, int, int], max_bytes: int, *, newest: bool) -> list[Record]:
        if (gone := self._hold.unavailable()) is not None:
            raise gone
        return await self._files.page(self._run, query, args, max_bytes, newest=newest)
