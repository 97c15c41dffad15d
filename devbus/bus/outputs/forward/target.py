"""One forward target: its URL and name, its bounded queue, and the POSTs that drain it in order.

Each target has a bounded queue and one task that POSTs the queued envelopes in
order, retrying connection errors and 5xx with capped exponential backoff. On a
shared stream the cluster feed calls :meth:`Target.send` itself instead, one
event at a time, under its lease. Loop safety: every forwarded POST carries
``X-Devbus-Forwarded: <name>``, and the forwarder never sends a target events
whose ``source`` is that name. Every POST also carries ``Idempotency-Key: <event
id>``, so that a receiver can drop an event it already took (a retry whose first
answer was lost, or a page sent again after another bus took over the lease).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from devbus.bus.metrics import Metrics
from devbus.envelope import MAX_SOURCE_LENGTH, Event, check_name
from devbus.errors import ConfigError, InvalidEvent

__all__ = ["EPOCH_HEADER", "FLUSH_TIMEOUT", "FORWARDED_HEADER", "IDEMPOTENCY_HEADER", "Target", "parse_target"]

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Devbus-Forwarded"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the event's id: the same on every attempt and from every bus
EPOCH_HEADER = "X-Devbus-Epoch"  # on a shared stream: the lease's fencing token, growing with each holder
BACKOFF_FIRST = 0.1  # seconds before the first retry
BACKOFF_MAX = 5.0  # a target that comes back is noticed within this long
REQUEST_TIMEOUT = 10.0
FLUSH_TIMEOUT = 1.0  # on shutdown, how long a reachable target may take to drain
RETRY_STATUSES = frozenset({408, 429})  # worth another try, like any 5xx

_NAMED = re.compile(r"^([^=:/\s]+)=(.+)$")


def parse_target(value: str) -> tuple[str, str]:
    """Split ``URL`` or ``NAME=URL`` into (name, url); the name defaults to the URL's host:port."""
    name = None
    if (named := _NAMED.match(value)) is not None:
        name, value = named.groups()
    try:
        parts = urlsplit(value)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"--forward {value!r} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--forward {value!r} must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/events")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    name = name or f"{host}:{port}"
    try:
        check_name(name, field="--forward name", max_length=MAX_SOURCE_LENGTH)
    except InvalidEvent as exc:
        raise ConfigError(str(exc)) from exc
    return name, value


def _display(url: str) -> str:
    """The URL without credentials or query, which may hold secrets, for logs and metrics."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _Retry(Exception):
    """An attempt that failed in a way worth retrying."""


def _always() -> bool:
    return True


class Target:
    """One forward URL: its queue, its state and the task that drains it."""

    def __init__(self, name: str, url: str, *, limit: int, metrics: Metrics) -> None:
        self.name = name
        self.url = url
        self.label = _display(url)
        self.limit = limit
        self.up = True
        self.forwarded = 0
        self.rejected = 0
        self.dropped = 0
        self.lease: str | None = None  # on a shared stream: "held" by this bus or "waiting"
        self._queue: deque[tuple[Event, bytes]] = deque()
        self.session: aiohttp.ClientSession | None = None  # set by the forwarder before anything is sent
        self._in_flight = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._down_since = 0.0
        self._overflowing = False
        self._metrics = metrics
        metrics.forward_up.labels(self.label).set_function(lambda: 1 if self.up else 0)
        metrics.forward_queue.labels(self.label).set_function(lambda: self.queued)

    @property
    def queued(self) -> int:
        """Events waiting for this target, the one being sent included."""
        return len(self._queue) + self._in_flight

    def status(self) -> dict[str, Any]:
        """This target's state, for the health endpoint and the dashboard."""
        status = {
            "url": self.label,
            "name": self.name,
            "state": "up" if self.up else "down",
            "queued": self.queued,
            "forwarded": self.forwarded,
            "rejected": self.rejected,
            "dropped": self.dropped,
        }
        if self.lease is not None:
            status["lease"] = self.lease
        return status

    def offer(self, event: Event, body: bytes) -> None:
        """Queue one event without waiting; past the limit the oldest waiting one is dropped."""
        if len(self._queue) >= self.limit:
            dropped, _ = self._queue.popleft()
            self.dropped += 1
            self._metrics.forward_dropped.labels(self.label).inc()
            if not self._overflowing:
                # One line per overflow episode; the exact count is in /metrics and health.
                self._overflowing = True
                log.warning(
                    "forward queue for %s is full (%d events); dropping the oldest, starting with %s",
                    self.label,
                    self.limit,
                    dropped.id,
                )
        self._queue.append((event, body))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Deliver queued events in order, forever."""
        while True:
            if not self._queue:
                self._overflowing = False
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            event, body = self._queue.popleft()
            try:
                await self.send(event, body)
            except asyncio.CancelledError:
                self._queue.appendleft((event, body))  # not delivered: count it as still queued
                raise

    async def drained(self) -> None:
        """Return once nothing is queued or in flight."""
        await self._idle.wait()

    async def send(
        self, event: Event, body: bytes, *, allowed: Callable[[], bool] = _always, epoch: int | None = None
    ) -> bool:
        """POST one event until the target takes or refuses it; False, unsent, if ``allowed()`` says no first.

        ``allowed`` is asked right before every attempt, retries included: a bus
        that cannot prove it still holds a shared target's lease sends nothing more.
        """
        assert self.session is not None, "send() before the forwarder started"
        headers = {
            "Content-Type": "application/json",
            FORWARDED_HEADER: self.name,
            IDEMPOTENCY_HEADER: event.id,
            "X-Devbus-Event-Id": event.id,
            "X-Devbus-Event-Type": event.type,
        }
        if epoch is not None:
            headers[EPOCH_HEADER] = str(epoch)
        delay = BACKOFF_FIRST
        self._in_flight = True
        try:
            while True:
                if not allowed():
                    return False
                try:
                    status = await self._post(self.session, body, headers)
                except _Retry as exc:
                    self._metrics.forward_failures.labels(self.label).inc()
                    self._went_down(str(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                self._came_up()
                self._count(event, status)
                return True
        finally:
            self._in_flight = False

    def _count(self, event: Event, status: int) -> None:
        if 200 <= status < 300:
            self.forwarded += 1
            self._metrics.forwarded.labels(self.label).inc()
            return
        self.rejected += 1
        self._metrics.forward_rejected.labels(self.label).inc()
        log.warning(
            "forward target %s refused event %s (%s) with HTTP %d; not retried",
            self.label,
            event.id,
            event.type,
            status,
        )

    async def _post(self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> int:
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc
        if status >= 500 or status in RETRY_STATUSES:
            raise _Retry(f"HTTP {status}")
        return status

    def _went_down(self, reason: str) -> None:
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            log.warning(
                "forward target %s is down (%s); retrying with backoff (queued: %d)",
                self.label,
                reason,
                self.queued,
            )

    def _came_up(self) -> None:
        if not self.up:
            self.up = True
            log.warning(
                "forward target %s is back after %.1fs; sending what is queued (%d)",
                self.label,
                time.monotonic() - self._down_since,
                self.queued,
            )
