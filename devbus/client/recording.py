"""Recordings: JSON lines of event envelopes, as `devbus record` writes them, read back for replay.

A line is one envelope ``{"id", "type", "data", "timestamp", "source"}``, the same as
`devbus listen --json` and `devbus history --json` print, so their output replays too.
Each line is checked with the bus's own rules (``decode_recorded_event``: a valid type and
source, `data` an object nesting at most MAX_DEPTH levels) and against the largest body the
bus takes, so that what passes here is what the bus accepts. A file is read one line at a
time, and a line longer than any event that fits in a body is skipped without being held.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from devbus.envelope import decode_recorded_event
from devbus.errors import InvalidEvent

__all__ = ["BadLine", "Recorded", "batches", "read_lines", "read_recording"]

# One POST /batch stays well under the bus's default --max-body (1 MiB).
BATCH_EVENTS = 1000
BATCH_BYTES = 256 * 1024
BATCH_WRAPPING = len(json.dumps({"events": []}))  # the bytes of a batch body around its events
# A line holds its id and timestamp besides the event (they are not sent): this much more
# than the largest body is read before a line is known to be too long.
LINE_SLACK = 4096
SKIP_READ = 64 * 1024  # bytes read at a time while skipping the rest of a line that is too long


@dataclass(frozen=True)
class Recorded:
    """One event read back from a recording."""

    line: int
    id: str | None
    type: str
    data: dict[str, Any]
    source: str  # the recorded source, or `replay` without one
    at: float | None  # the original timestamp, as seconds since the epoch
    size: int  # bytes of the event in a POST /batch body, its separator included

    def body(self, *, keep_source: bool) -> dict[str, Any]:
        """The event as POST /batch takes it."""
        return {"event_type": self.type, "data": self.data, "source": self.source if keep_source else "replay"}


@dataclass(frozen=True)
class BadLine:
    """A line that is not an event the bus would take, and why."""

    line: int
    reason: str


def read_lines(file: IO[bytes], *, max_length: int) -> Iterator[bytes | None]:
    """Yield each line of ``file``; ``None`` for one longer than ``max_length`` bytes, which is never held."""
    while line := file.readline(max_length + 1):
        if len(line) > max_length and not line.endswith(b"\n"):
            while (rest := file.readline(SKIP_READ)) and not rest.endswith(b"\n"):
                pass
            yield None
        else:
            yield line


def read_recording(lines: Iterable[bytes | None], *, max_body: int, keep_source: bool) -> Iterator[Recorded | BadLine]:
    """Yield each line's event, or why it is not one the bus would take; blank lines are skipped.

    ``lines`` come from ``read_lines`` with ``max_length=max_body + LINE_SLACK``.
    """
    for number, line in enumerate(lines, start=1):
        if line is None:
            yield BadLine(
                number,
                f"longer than {max_body + LINE_SLACK} bytes, so no event in it fits in a body of "
                f"--max-body {max_body} bytes; skipped unread",
            )
            continue
        if not line.strip():
            continue
        try:
            yield _parse(number, line, max_body=max_body, keep_source=keep_source)
        except InvalidEvent as exc:
            yield BadLine(number, str(exc))


def _parse(number: int, line: bytes, *, max_body: int, keep_source: bool) -> Recorded:
    draft, recorded = decode_recorded_event(line)
    at = None
    if recorded.timestamp is not None:
        try:
            at = datetime.fromisoformat(recorded.timestamp).timestamp()
        except (ValueError, OverflowError) as exc:
            raise InvalidEvent(f"`timestamp` is not ISO-8601 ({recorded.timestamp[:40]!r})") from exc
    event = Recorded(number, recorded.id, draft.type, draft.data, draft.source, at, 0)
    # Measured as the HTTP client encodes it (json.dumps), the separator after it included.
    size = len(json.dumps(event.body(keep_source=keep_source))) + len(", ")
    if BATCH_WRAPPING + size > max_body:
        raise InvalidEvent(f"the event is {size} bytes as JSON, over --max-body ({max_body} bytes)")
    return Recorded(number, recorded.id, draft.type, draft.data, draft.source, at, size)


def batches(events: Iterable[Recorded], *, keep_timing: bool, max_bytes: int = BATCH_BYTES) -> Iterator[list[Recorded]]:
    """Group events for POST /batch: those the bus accepted together (same timestamp), or as
    many as fit when timing does not matter; a batch body stays within ``max_bytes``."""
    batch: list[Recorded] = []
    size = BATCH_WRAPPING
    for event in events:
        if batch and (
            len(batch) >= BATCH_EVENTS or size + event.size > max_bytes or (keep_timing and event.at != batch[0].at)
        ):
            yield batch
            batch, size = [], BATCH_WRAPPING
        batch.append(event)
        size += event.size
    if batch:
        yield batch
