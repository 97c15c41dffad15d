"""What the Redis store writes to a stream entry, and the records it reads back from one.

An entry is ``{t: type, j: JSON}`` where ``j`` is the envelope's JSON after its
id: the event's JSON is ``{"id":"<entry id>",`` + ``j``, so the ids are the
stream's and a client resumes at any bus with the id it has. :data:`FORMAT` names
this layout; the store keeps it in ``K:meta`` and refuses a stream written in
another. Every entry read is checked as an event (``checked.py``): one that
another program wrote (``XADD``) and that is not one is skipped by every reader,
and counted.
"""

from __future__ import annotations

from typing import Any

from devbus.bus.record import Record
from devbus.bus.store.checked import Checker
from devbus.envelope import Draft, Event, encode_json

__all__ = [
    "FORMAT",
    "Entry",
    "checked",
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
    """The record of an entry this bus wrote itself from ``event_type`` and ``tail`` (validated as input)."""
    return Record(entry_id.decode(), event_type.decode(), b'{"id":"' + entry_id + b'",' + tail)


def checked(checker: Checker, entry_id: bytes, fields: dict[bytes, bytes]) -> Record | None:
    """The record of an entry read from the stream, checked (``checked.py``); None if it is not an event.

    An entry counts only with exactly the fields ``t`` and ``j``; one with no fields
    (trimmed while a consumer group still named it) is skipped without a count. The
    id is the entry's, made by Redis (digits and a dash); the envelope must carry the
    same, which an id holding a quote or a line break could not (JSON holds neither raw).
    """
    if not fields:
        return None
    event_id = entry_id.decode()
    event_type, tail = fields.get(b"t"), fields.get(b"j")
    if len(fields) != 2 or event_type is None or tail is None:
        names = b", ".join(sorted(fields)).decode("ascii", "backslashreplace")
        checker.skipped(event_id, "fields", f"expected the fields t and j, found {names[:80]}")
        return None
    return checker.record(event_id, event_type, b'{"id":"' + entry_id + b'",' + tail)


def records_of(checker: Checker, entries: list[Entry]) -> list[Record]:
    """The records of ``entries`` as redis-py returns them (XRANGE, XREVRANGE), checked."""
    records = []
    for entry_id, fields in entries:
        made = checked(checker, entry_id, fields or {})
        if made is not None:
            records.append(made)
    return records


def raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that leaves an XREAD reply as Redis sent it (see :func:`read_reply`)."""
    # redis-py would turn each entry into a tuple and a dict; the reader reads every
    # entry of the stream, and that costs more than the rest of taking it in.
    return response


def read_reply(checker: Checker, reply: Any) -> tuple[bytes, list[Record]] | None:
    """The last id and the checked records of a raw XREAD reply of one stream, or None if it is empty."""
    if not reply:
        return None
    # RESP3 answers a map of stream to entries, RESP2 a list of [stream, entries].
    [entries] = reply.values() if isinstance(reply, dict) else [stream[1] for stream in reply]
    records = []
    check = checker.record
    for entry_id, fields in entries:
        if fields is not None and len(fields) == 4 and fields[0] == b"t" and fields[2] == b"j":
            # Fields as the append script writes them: t, type, j, JSON.
            made = check(entry_id.decode(), fields[1], b'{"id":"' + entry_id + b'",' + fields[3])
        else:
            # Any other layout is judged as XRANGE's dict of it is (the last value of a field repeated).
            pairs = fields or []
            made = checked(checker, entry_id, dict(zip(pairs[::2], pairs[1::2], strict=False)))
        if made is not None:
            records.append(made)
    return entries[-1][0], records
