"""The Redis store's appends on their way to Redis: queued, joined into calls, one call in flight.

Appends made while a call is in flight wait and go in the next one (at most
``SCRIPT_EVENTS`` events per call, a larger single append still goes whole), so
calls stay in the order of the appends. A call whose answer is lost (Redis went
away after it was sent) is sent again with the same token once Redis answers:
the script then answers what the first one did (``redis_script``), so nothing is
stored twice and nothing stored is answered as refused. What waits behind it is
refused at once with StoreUnavailable: it was never sent.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence

from redis.exceptions import ResponseError

from devbus.bus.store.base import Appended, Claim
from devbus.bus.store.redis_appends import Append, AppendTracker
from devbus.bus.store.redis_link import FAILURES, Link
from devbus.bus.store.redis_reader import StreamReader
from devbus.bus.store.redis_script import APPEND_SCRIPT, append_argument, parse_answer, script_args, script_keys
from devbus.bus.store.supervised import stop_task
from devbus.envelope import Draft
from devbus.errors import OutcomeUnknown

__all__ = ["SCRIPT_EVENTS", "AppendWriter"]

SCRIPT_EVENTS = 5000  # appends joined into one Lua call (a larger single batch still goes whole)


class AppendWriter:
    """Send appends to Redis in order, one call at a time, and hand each call's answer to the tracker."""

    def __init__(
        self, link: Link, reader: StreamReader, tracker: AppendTracker, *, key: str, history: int, bus: str
    ) -> None:
        self._link = link
        self._reader = reader
        self._tracker = tracker
        self._history = history
        self._bus = bus  # this bus's name: the script keeps its last answer under it
        self._script = link.redis.register_script(APPEND_SCRIPT)
        self._keys = script_keys(key)
        self._queue: list[Append] = []
        self._calling: list[Append] = []  # the batch of the call in flight
        self._task: asyncio.Task[None] | None = None

    def append(self, drafts: Sequence[Draft], timestamp: str, claim: Claim | None) -> asyncio.Future[Appended]:
        """Queue one append; its future resolves once Redis has it and this bus delivered it."""
        append = Append(drafts, timestamp, claim)
        if not self._link.up:
            # Refuse at once while the reader reconnects, instead of one timeout per sender.
            append.future.set_exception(self._link.unavailable())
            return append.future
        self._queue.append(append)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write(), name=f"write {self._link.name}")
        return append.future

    async def drain(self) -> None:
        """Wait until every queued append was sent and answered."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop: a call still asking what it did fails as OutcomeUnknown, what waits behind it as unavailable."""
        if self._task is not None and not self._task.done():
            await stop_task(self._task)
            unknown = OutcomeUnknown(
                f"The store {self._link.name} went away while storing the event(s) and did not come back before "
                "the bus stopped: they may be stored; send them again only with the same Idempotency-Key"
            )
            for append in self._calling:
                if not append.future.done():
                    append.future.set_exception(unknown)
        self._fail([], self._link.unavailable())

    async def _write(self) -> None:
        # One call in flight at a time: calls stay in order, what arrives meanwhile goes
        # in the next one, and the bus's last call is the only one it may ask again.
        while self._queue:
            batch: list[Append] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0]) <= SCRIPT_EVENTS):
                append = self._queue.pop(0)
                batch.append(append)
                size += len(append)
            self._calling = batch
            argument = append_argument([(append.claim, append.types, append.tails) for append in batch])
            token = secrets.token_hex(8)
            while True:
                self._tracker.writing()
                try:
                    args = script_args(
                        history=self._history,
                        now_ms=int(time.time() * 1000),
                        token=token,
                        bus=self._bus,
                        batch=argument,
                    )
                    answer = await self._script(keys=self._keys, args=args)
                except ResponseError as exc:
                    # Redis ran the script and refused it (out of memory, a bug): nothing was stored.
                    self._tracker.written(batch, None)
                    self._calling = []
                    self._fail(batch, self._reader.failed(exc))
                    return
                except FAILURES as exc:
                    # The call may have run before the connection broke: ask again, with the same
                    # token, once Redis answers. What waits behind it is refused: it was never sent.
                    self._tracker.written(batch, None)
                    self._fail([], self._reader.failed(exc))
                    await asyncio.shield(self._reader.recovering())
                    continue
                except BaseException:
                    self._tracker.written(batch, None)
                    raise
                break
            self._tracker.written(batch, parse_answer(answer, [len(append) for append in batch]))
            self._calling = []

    def _fail(self, batch: list[Append], error: Exception) -> None:
        """Fail ``batch`` and everything queued behind it with ``error``: none of it was stored."""
        for append in batch + self._queue:
            if not append.future.done():
                append.future.set_exception(error)
        self._queue.clear()
