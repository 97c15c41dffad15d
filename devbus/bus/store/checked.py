"""Records read back from a store, checked as events before any output sees them.

Nothing a store reads back is trusted. Any program can ``XADD`` to the stream
several buses share, and a SQLite file can be edited by hand; what either holds
reaches SSE frames (``id:``, ``event:`` and ``data:`` lines, where a line break
would start a frame of its own), ``/history`` bodies, ZeroMQ egress and the
console. So every record a store hands on (delivered live, read by a cursor or
by ``/history``) is made here, from what the store read, with the rules input is
held to (``devbus.envelope.decode_stored_event``): a type that is UTF-8 and a
valid name, JSON that is an event envelope with an object ``data``, the id and
type the store keeps beside it, a source that is a valid name, nesting within
the limit. JSON spread over several lines (valid, but not one SSE ``data:``
line) is encoded again on one.

Checking costs about 1.9 µs a record (measured on a Redis reader's page of
2,000 ordinary events: 2.2 µs each where making them cost 0.4), half of it
msgspec decoding the envelope; the record keeps the envelope, so the outputs
that need it (ZeroMQ egress, forwarding, the console) no longer decode it again.

A record that fails is skipped by every reader, counted by reason (health's
``store.skipped``, ``devbus_store_skipped`` in /metrics) and logged: the first
of each reason at once, then at most once a minute per reason, with the count.
A record read again (by each resume, each ``/history``) is counted once, as long
as it is among the last ``REMEMBERED`` skipped ones.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from typing import Any

from devbus.bus.record import Record
from devbus.envelope import INVALID_TYPE, decode_stored_event, encode_json
from devbus.errors import InvalidEvent, MalformedInput
from devbus.nesting import TOO_DEEP

__all__ = ["REASONS", "Checker"]

log = logging.getLogger(__name__)

# Why a record is skipped, as counted in health and /metrics.
REASONS = {
    "fields": "it lacks the type or the JSON",
    "type": "its type is not a valid event type",
    "json": "its JSON is not valid UTF-8 JSON",
    "event": "its JSON is not a devbus event",
    "depth": "its data nests too deep",
}
REMEMBERED = 4096  # ids of skipped records kept, so that one read again is not counted again
_REASONS = {INVALID_TYPE: "type", TOO_DEEP: "depth"}  # InvalidEvent's reasons, as counted here
LOG_EVERY = 60.0  # seconds between log lines about skipped records, per reason
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Skip(Exception):
    """Why one record cannot be delivered: a key of ``REASONS`` and what is wrong, in one line."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason


def _kind(value: object) -> str:
    """What a column edited by hand holds instead of text (SQLite's storage classes)."""
    return {int: "an integer", float: "a real number"}.get(type(value), "NULL")


def check(event_id: str, event_type: object, json: object) -> Record:
    """The record of ``json`` (bytes) stored with ``event_id`` and ``event_type`` (bytes), or Skip."""
    if not isinstance(event_type, bytes):
        raise Skip("fields", f"its type is {_kind(event_type)}, not text")
    if not isinstance(json, bytes):
        raise Skip("fields", f"its JSON is {_kind(json)}, not text")
    try:
        name = event_type.decode()
    except UnicodeDecodeError as exc:
        raise Skip("type", f"its type is not UTF-8 ({exc})") from exc
    try:
        event = decode_stored_event(json, event_id=event_id, event_type=name)
    except MalformedInput as exc:
        raise Skip("json", str(exc)) from exc
    except InvalidEvent as exc:
        raise Skip(_REASONS.get(exc.reason, "event"), str(exc)) from exc
    # Valid JSON holds line breaks only between its tokens: one line says the same. (Bytes
    # searched by value: 20 ns each, where a bytes needle took 220 ns.)
    if 10 in json or 13 in json:
        json = encode_json(event)
    return Record(event_id, name, json, event)


class Checker:
    """Make records from what one store read, skipping (and counting) those that are not events."""

    def __init__(self, store: str) -> None:
        self._store = store  # the store's name, for the log
        self.counts: dict[str, int] = {}
        self.last = ""  # the latest record skipped and why, for health
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._logged: dict[str, float] = {}  # reason -> when a line about it was logged
        self._unlogged: dict[str, int] = {}  # reason -> skipped since that line

    def record(self, event_id: str, event_type: object, json: object) -> Record | None:
        """The checked record, or None (counted and logged) if it is not one to deliver."""
        try:
            return check(event_id, event_type, json)
        except Skip as skip:
            self.skipped(event_id, skip.reason, str(skip))
        except Exception as exc:  # a record no rule foresaw: skipped too, never a reader stopped on it for good
            self.skipped(event_id, "event", f"it could not be checked ({type(exc).__name__}: {exc})")
        return None

    def skipped(self, event_id: str, reason: str, problem: str) -> None:
        """Count and log (as the module docstring says) the record ``event_id``, skipped for ``reason``."""
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return
        self._seen[event_id] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        # Nothing read from the store reaches a log line or health raw.
        problem = _CONTROL.sub(lambda found: repr(found.group())[1:-1], problem)
        self.last = f"{event_id}: {problem}"
        now = time.monotonic()
        logged = self._logged.get(reason)
        if logged is not None and now - logged < LOG_EVERY:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        log.warning(
            "skipped record %s of %s: %s; not delivered (%s%d skipped so far, see store.skipped in /health)",
            event_id,
            self._store,
            problem,
            f"{more} more like it in the last minute, " if more else "",
            sum(self.counts.values()),
        )

    def status(self) -> dict[str, Any]:
        """What health says about skipped records: how many, by reason, and the latest."""
        return {"count": sum(self.counts.values()), "reasons": dict(self.counts), "last": self.last}
