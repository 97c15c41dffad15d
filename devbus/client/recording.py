"""Recordings: JSON lines of event envelopes, as `devbus record` writes them, read back for replay.

A line is one envelope ``{"id", "type", "data", "timestamp", "source"}``, the same as
`devbus listen --json` and `devbus history --json` print, so their output replays too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devbus.envelope import check_name
from devbus.errors import InvalidEvent

__all__ = ["BadLine", "Recorded", "batches", "read_recording"]

# One POST /batch stays well under the bus's default --max-body (1 MiB).
BATCH_EVENTS = 1000
BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class Recorded:
    """One event read back from a recording."""

    line: int
    id: str | None
    type: str
    data: dict[str, Any]
    source: str | None
    at: float | None  # the original timestamp, as seconds since the epoch
    size: int  # bytes of the line, to keep batches small

    def body(self, *, keep_source: bool) -> dict[str, Any]:
        """The event as POST /batch takes it."""
        return {
            "event_type": self.type,
            "data": self.data,
            "source": (self.source if keep_source else None) or "replay",
        }


@dataclass(frozen=True)
class BadLine:
    """A line that is not an event, and why."""

    line: int
    reason: str


def _parse(number: int, text: str) -> Recorded:
    try:
        envelope = json.loads(text)
    except ValueError as exc:
        raise InvalidEvent(f"not JSON ({exc})") from exc
    if not isinstance(envelope, dict):
        raise InvalidEvent("not a JSON object; expected an envelope such as devbus record writes")
    event_type = envelope.get("type")
    if not isinstance(event_type, str):
        raise InvalidEvent('`type` is missing or not a string; expected {"type", "data", ...}')
    check_name(event_type, field="type")
    data = envelope.get("data", {})
    if not isinstance(data, dict):
        raise InvalidEvent(f"`data` must be a JSON object (got {type(data).__name__})")
    source = envelope.get("source")
    if source is not None and not isinstance(source, str):
        raise InvalidEvent("`source` must be a string")
    event_id = envelope.get("id")
    stamp = envelope.get("timestamp")
    at = None
    if stamp is not None:
        try:
            at = datetime.fromisoformat(str(stamp)).timestamp()
        except ValueError as exc:
            raise InvalidEvent(f"`timestamp` is not ISO-8601 ({stamp!r})") from exc
    return Recorded(number, event_id if isinstance(event_id, str) else None, event_type, data, source, at, len(text))


def read_recording(lines: Iterable[str]) -> Iterator[Recorded | BadLine]:
    """Yield each line's event, or why it is not one; blank lines are skipped."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield _parse(number, text)
        except InvalidEvent as exc:
            yield BadLine(number, str(exc))


def batches(events: Iterable[Recorded], *, keep_timing: bool) -> Iterator[list[Recorded]]:
    """Group events for POST /batch: those the bus accepted together (same timestamp), or as
    many as fit when timing does not matter."""
    batch: list[Recorded] = []
    size = 0
    for event in events:
        if batch and (
            len(batch) >= BATCH_EVENTS or size + event.size > BATCH_BYTES or (keep_timing and event.at != batch[0].at)
        ):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += event.size
    if batch:
        yield batch
