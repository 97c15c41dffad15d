"""What the Redis store writes to a stream entry, and the records it reads back from one.

An entry is ``{t: type, j: JSON}`` where ``j`` is the envelope's JSON after its
id: the event's JSON is ``{"id":"<entry id>",`` + ``j``, so the ids are the
stream's and a client resumes at any bus with the id it has. :data:`FORMAT` names
this layout; the store keeps it in ``K:meta`` and refuses a stream written in
another. An entry that devbus did not write (or that Redis trimmed: it has no
fields left) is skipped by every reader.
"""

from __future__ import annotations

from typing import Any

from devbus.bus.record import Record
from devbus.envelope import Draft, Event, encode_json

__all__ = [
    "FORMAT",
    "Entry",
    "entry_tail",
    "raw_reply",
    "read_reply",
    "record",
    "records_of",
]

FORMAT = "1"

# A stream entry as redis-py returns it (bytes, as no decoding is asked for; no fields if trimmed).
Entry = tuple[bytes, dict[bytes, bytes] | None]

_NO_ID = b'{"id":"",'  # how an envelope's JSON starts when its id is empty


def entry_tail(draft: Draft, timestamp: str) -> bytes:
    """The envelope's JSON after its id (the ``j`` field), which Redis completes with the entry's id."""
    event = Event(id="", type=draft.type, data=draft.data, timestamp=timestamp, source=draft.source)
    return encode_json(event)[len(_NO_ID) :]


def record(entry_id: bytes, event_type: bytes, tail: bytes) -> Record:
    """The record of the entry ``entry_id`` holding ``event_type`` and ``tail``."""
    return Record(entry_id.decode(), event_type.decode(), b'{"id":"' + entry_id + b'",' + tail)


def records_of(entries: list[Entry]) -> list[Record]:
    """The records of ``entries`` as redis-py returns them (XRANGE, XREVRANGE)."""
    records = []
    for entry_id, fields in entries:
        if not fields:
            continue
        event_type, tail = fields.get(b"t"), fields.get(b"j")
        if event_type is not None and tail is not None:
            records.append(record(entry_id, event_type, tail))
    return records


def raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that leaves an XREAD reply as Redis sent it (see :func:`read_reply`)."""
    # redis-py would turn each entry into a tuple and a dict; the reader reads every
    # entry of the stream, and that costs more than the rest of taking it in.
    return response


def read_reply(reply: Any) -> tuple[bytes, list[Record]] | None:
    """The last id and the records of a raw XREAD reply of one stream, or None if it is empty."""
    if not reply:
        return None
    # RESP3 answers a map of stream to entries, RESP2 a list of [stream, entries].
    [entries] = reply.values() if isinstance(reply, dict) else [stream[1] for stream in reply]
    records = []
    for entry_id, fields in entries:
        # Fields as the append script writes them: t, type, j, JSON.
        if len(fields) == 4 and fields[0] == b"t" and fields[2] == b"j":
            records.append(record(entry_id, fields[1], fields[3]))
    return entries[-1][0], records
