"""The handle on the stream that several buses share, for what reads it beside the store.

A ``--forward`` on a Redis store feeds each target once for the whole cluster,
under a lease, from a cursor kept beside the stream (``devbus.bus.outputs.forward.cluster``).
That output gets this handle, built by the store and passed on by the app: the
client, the keys, this bus's name and how to read an entry; nothing else of the
store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from devbus.bus.record import Record
from devbus.bus.store.checked import Checker
from devbus.bus.store.redis_codec import Entry, records_of

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SharedStream"]


@dataclass(frozen=True, kw_only=True)
class SharedStream:
    """The stream's client and keys, as the store uses them."""

    redis: Redis
    stream: str  # the stream's key, K:events
    key: str  # the --store-key K, under which a reader may keep keys of its own (K:forward:<name>)
    consumer: str  # this bus's name among the buses of the cluster (a lease holder's name)
    checker: Checker  # the store's: entries are checked (and skipped ones counted) as the store's own reads are

    def records(self, entries: list[Entry]) -> list[Record]:
        """The records of ``entries`` as redis-py returns them, skipping (and counting) those that are not events."""
        return records_of(self.checker, entries)
