"""Ids for the stores that number events themselves (memory, SQLite): ``<run>-<seq>``.

The invariant both keep: retained records have consecutive sequence numbers
1, 2, 3, … of one run, so that resolving an id and finding a page is arithmetic.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

from devbus.bus.record import Record
from devbus.bus.store.base import Resume
from devbus.envelope import Draft, Event, encode_json

__all__ = ["format_id", "new_run", "number", "parse_id", "resume", "resume_for", "take_page"]


def new_run() -> str:
    """A fresh run identity: eight hex digits."""
    return secrets.token_hex(4)


def format_id(run: str, seq: int) -> str:
    """Build the opaque event id for sequence number ``seq`` of ``run``."""
    return f"{run}-{seq}"


def parse_id(event_id: str) -> tuple[str, int] | None:
    """Split an event id into (run, seq), or None if it is not one of ours."""
    run, sep, seq = event_id.rpartition("-")
    if not sep or not run or not seq.isdigit() or len(seq) > 18:
        return None
    return run, int(seq)


def number(run: str, first_seq: int, drafts: Sequence[Draft], timestamp: str) -> list[Record]:
    """Turn ``drafts`` into records numbered from ``first_seq``, each encoded once."""
    records = []
    seq = first_seq
    for draft in drafts:
        event = Event(id=f"{run}-{seq}", type=draft.type, data=draft.data, timestamp=timestamp, source=draft.source)
        records.append(Record(event.id, event.type, encode_json(event), event))
        seq += 1
    return records


def resume_for(run: str, event_id: str, *, first: int | None, last: int) -> tuple[int, bool]:
    """Return (the seq to read after, whether that is a gap) for a client's ``event_id``.

    ``first`` is the oldest retained seq (None if nothing is), ``last`` the newest
    seq ever given. An id of this run from ``first - 1`` to ``last`` resumes where
    it stopped; anything else resumes before the oldest retained record, as a gap.
    """
    parsed = parse_id(event_id)
    oldest = (first if first is not None else last + 1) - 1
    if parsed is not None and parsed[0] == run and oldest <= parsed[1] <= last:
        return parsed[1], False
    return oldest, True


def resume(run: str, event_id: str, *, first: int | None, last: int) -> Resume:
    """:func:`resume_for` as the store interface's :class:`Resume`."""
    seq, gap = resume_for(run, event_id, first=first, last=last)
    return Resume(after=format_id(run, seq), gap=gap)


def take_page(records: Iterable[Record], *, limit: int, max_bytes: int) -> list[Record]:
    """Take records until ``limit`` of them or ``max_bytes`` of JSON (always at least one)."""
    page: list[Record] = []
    size = 0
    for record in records:
        size += len(record.json)
        if page and size > max_bytes:
            break
        page.append(record)
        if len(page) >= limit:
            break
    return page
