"""A store's background task that must not end: restarted after any failure, and said so in health.

A store's reader (the Redis stream's) or watcher (the SQLite file's) runs for as
long as the store is open; if it ended, the bus would stop delivering or noticing
while health still said ``up``. So it runs under :class:`Supervised`: whatever it
raises (a bug, a reply nobody expected) is logged (a traceback the first time,
then one line a minute at most), counted in health, and the task is started again
after a short backoff. Its body must be safe to start again: the Redis reader
goes on from the position it had delivered to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Supervised", "stop_task"]

log = logging.getLogger(__name__)

RESTART_FIRST = 0.05  # seconds before the first restart, doubling while it keeps failing
RESTART_MAX = 2.0
STEADY = 10.0  # seconds a task must run for its next failure to restart it quickly again
LOG_EVERY = 60.0  # seconds between lines about a task that keeps failing


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended.

    A single cancel is not enough for a task that calls Redis: redis-py sends each
    command under ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation
    that arrives as the send completes (CPython gh-86296, fixed in 3.12), and the
    task would carry on, e.g. reading the stream for ever. Measured: closing a store
    right after an append hung its reader in about one close in three.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s ended with %r", task.get_name(), task.exception())


class Supervised:
    """Run ``body`` as a task until :meth:`stop`, starting it again whenever it ends."""

    def __init__(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._body = body
        self.restarts = 0
        self.error = ""  # the last failure, for health
        self.failing = False  # between a failure and the restart
        self._task: asyncio.Task[None] | None = None
        self._logged = 0.0

    def start(self) -> None:
        """Start the task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop the task (it is not restarted) and wait for it."""
        if self._task is not None:
            await stop_task(self._task)

    async def _run(self) -> None:
        delay = RESTART_FIRST
        while True:
            started = time.monotonic()
            try:
                await self._body()
                failure: BaseException = RuntimeError("it returned")
            except Exception as exc:
                failure = exc
            self.failing = True
            self.restarts += 1
            self.error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
            if time.monotonic() - started > STEADY:
                delay = RESTART_FIRST
            self._log(failure, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            self.failing = False

    def _log(self, failure: BaseException, delay: float) -> None:
        now = time.monotonic()
        if self.restarts == 1:
            log.error("%s stopped (%s); starting it again in %gs", self.name, self.error, delay, exc_info=failure)
        elif now - self._logged >= LOG_EVERY:
            log.error("%s stopped again (%s), %d times in all; starting it again", self.name, self.error, self.restarts)
        else:
            return
        self._logged = now

    def status(self) -> dict[str, Any]:
        """What health says about the task: whether it runs, and how often it had to be started again."""
        status: dict[str, Any] = {"state": "restarting" if self.failing else "up", "restarts": self.restarts}
        if self.error:
            status["error"] = self.error
        return status
