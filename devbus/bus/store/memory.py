"""Bounded replay: the last N events of this run, addressable by id."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

__all__ = ["Entry", "History", "format_id", "parse_id"]


def format_id(run: str, seq: int) -> str:
    """Build the opaque event id for sequence number ``seq`` of ``run``."""
    return f"{run}-{seq}"


def parse_id(event_id: str) -> tuple[str, int] | None:
    """Split an event id into (run, seq), or None if it is not one of ours."""
    run, sep, seq = event_id.rpartition("-")
    if not sep or not run or not seq.isdigit() or len(seq) > 18:
        return None
    return run, int(seq)


class Entry:
    """One retained event: what replay and GET /history need, encoded once."""

    __slots__ = ("id", "json", "seq", "type")

    def __init__(self, seq: int, event_id: str, event_type: str, json: bytes) -> None:
        self.seq = seq
        self.id = event_id
        self.type = event_type
        self.json = json


class History:
    """The newest ``maxlen`` entries, oldest first, with consecutive seq numbers."""

    def __init__(self, maxlen: int, *, max_bytes: int | None = None) -> None:
        self._entries: deque[Entry] = deque()
        self._maxlen = maxlen
        # Count alone would let 10,000 events of 1 MiB each hold 10 GiB.
        self._max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of encoded events retained."""
        return self._bytes

    def append(self, entry: Entry) -> None:
        """Retain ``entry``, dropping the oldest ones past the count or byte limit."""
        entries = self._entries
        entries.append(entry)
        self._bytes += len(entry.json)
        while len(entries) > self._maxlen or (
            self._max_bytes is not None and self._bytes > self._max_bytes and len(entries) > 1
        ):
            self._bytes -= len(entries.popleft().json)

    @property
    def first_seq(self) -> int | None:
        """The seq of the oldest retained entry."""
        return self._entries[0].seq if self._entries else None

    def after(self, seq: int) -> list[Entry]:
        """Return the retained entries with a seq greater than ``seq``, oldest first."""
        if not self._entries:
            return []
        start = max(0, seq + 1 - self._entries[0].seq)
        return list(itertools.islice(self._entries, start, None))

    def retains_after(self, seq: int) -> bool:
        """Whether every event after ``seq`` is still retained (no gap)."""
        first = self.first_seq
        return first is None or seq + 1 >= first

    def query(self, *, after: int | None, limit: int, match: Callable[[str], bool]) -> list[Entry]:
        """Return up to ``limit`` matching entries: the first after ``after``, else the newest."""
        if after is not None:
            found = (e for e in self.after(after) if match(e.type))
            return list(itertools.islice(found, limit))
        newest = (e for e in reversed(self._entries) if match(e.type))
        picked = list(itertools.islice(newest, limit))
        picked.reverse()
        return picked
