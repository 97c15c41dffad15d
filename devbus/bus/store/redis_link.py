"""Reaching Redis for the Redis store: its URL, one connection pool, stream ids, and up/down state.

The pool never retries a command by itself (redis-py's default would): a retried
XADD whose first try did reach Redis would store the event twice. The store
decides what to retry, and a sender told 503 decides whether to send again.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from devbus.errors import ConfigError, StoreUnavailable

__all__ = [
    "FAILURES",
    "Link",
    "StreamId",
    "display_url",
    "format_stream_id",
    "id_before",
    "parse_stream_id",
]

log = logging.getLogger(__name__)

# What a Redis call may fail with when Redis is gone, restarting (LOADING) or refusing writes.
FAILURES = (RedisError, OSError)

CONNECT_TIMEOUT = 2.0  # seconds to open a connection
SOCKET_TIMEOUT = 10.0  # seconds any reply may take (longer than any blocking read)
MAX_CONNECTIONS = 32  # per bus: the stream reader, the writer, forward groups and page reads share them

StreamId = tuple[int, int]
_STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MAX_SEQ = 2**64 - 1


def parse_stream_id(event_id: str) -> StreamId | None:
    """Split a stream id ``<ms>-<n>`` into numbers that compare in stream order, or None."""
    match = _STREAM_ID.match(event_id)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    return (ms, seq) if ms <= _MAX_SEQ and seq <= _MAX_SEQ else None


def format_stream_id(stream_id: StreamId) -> str:
    """The text form of a stream id."""
    return f"{stream_id[0]}-{stream_id[1]}"


def id_before(stream_id: StreamId) -> StreamId:
    """The greatest stream id smaller than ``stream_id`` (what to read after to start at it)."""
    ms, seq = stream_id
    if seq:
        return ms, seq - 1
    return (ms - 1, _MAX_SEQ) if ms else (0, 0)


def display_url(url: str) -> str:
    """``url`` checked and shown without credentials or query: how the store is named in logs and health."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--store {url!r} is not a Redis URL: {exc}") from exc
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"--store {url!r} names no socket: use unix:///path/to/redis.sock?db=0")
        return f"unix://{parts.path}"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"--store {url!r} must look like redis://host:port/db (or rediss://, unix:///path)")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"--store {url!r}: the database after the port must be a number, e.g. redis://host:6379/0")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or 6379}/{int(db)}"


class Link:
    """The store's connection pool and whether Redis answers, logged once per outage."""

    def __init__(self, url: str) -> None:
        self.name = display_url(url)
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--store {self.name}: {exc}") from exc
        self.redis: Redis = Redis(connection_pool=pool)
        self.up = True
        self.error = ""
        self._down_since = 0.0

    def unavailable(self) -> StoreUnavailable:
        """The error a sender gets while Redis does not answer."""
        return StoreUnavailable(
            f"The store {self.name} is unreachable ({self.error}); events are refused until it is back, "
            "so send this one again later"
        )

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Note that a call failed (logged once per outage) and return the error for senders."""
        self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            log.warning("store %s is unreachable (%s); reconnecting with backoff", self.name, self.error)
        return self.unavailable()

    def recovered(self) -> None:
        """Note that Redis answers again."""
        if not self.up:
            self.up = True
            log.warning("store %s is back after %.1fs", self.name, time.monotonic() - self._down_since)

    def status(self) -> dict[str, Any]:
        """The state health reports."""
        status: dict[str, Any] = {"state": "up" if self.up else "down"}
        if not self.up:
            status["error"] = self.error
            status["down_s"] = round(time.monotonic() - self._down_since, 3)
        return status

    async def close(self) -> None:
        """Close every connection."""
        await self.redis.aclose(close_connection_pool=True)
