"""What the memory and SQLite stores remember to make appends idempotent: producers' seqs and keys.

Both stores are the only writer of their log, so this bookkeeping, held in
memory beside the log, decides at once (on the loop, when an append is
numbered) what a :class:`~devbus.bus.store.base.Claim` lets through. The SQLite
store writes the same changes in the transaction that commits the events, and
undoes them here if that transaction fails (:meth:`Claims.undo`), so that what
is remembered is always what is committed. (The Redis store, shared by several
buses, keeps the same in Redis and decides in its Lua call.)

Bounds: the newest ``MAX_PRODUCERS`` producers by last use, and the newest
``MAX_KEYS`` keys no older than ``KEY_WINDOW`` seconds.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from devbus.bus.record import Record
from devbus.bus.store.base import KEY_WINDOW, MAX_KEYS, MAX_PRODUCERS, Claim
from devbus.errors import KeyReused

__all__ = ["Claims", "KeyUse", "Undo", "key_reused"]


class KeyUse:
    """What one key was first used for: its request's fingerprint, the ids its append got, and when."""

    __slots__ = ("created", "fingerprint", "ids")

    def __init__(self, fingerprint: bytes, ids: list[str], created: float) -> None:
        self.fingerprint = fingerprint
        self.ids = ids
        self.created = created


# One change to undo: (producers or keys, name, what it held before, None if absent).
Undo = list[tuple[str, str, int | KeyUse | None]]


def key_reused(key: str) -> KeyReused:
    """The refusal of a key sent again with another request."""
    return KeyReused(
        f"Idempotency-Key {key[:80]!r} was first used with another request (method, path or body); "
        "use a new key for a new request"
    )


class Claims:
    """Producers' last seqs and recent keys, bounded; ``clock`` gives wall-clock seconds (kept across restarts)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.producers: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.keys: OrderedDict[str, KeyUse] = OrderedDict()  # oldest first

    def load(self, producers: Iterable[tuple[str, int]], keys: Iterable[tuple[str, KeyUse]]) -> None:
        """Take what a file held, oldest first."""
        self.producers.update(producers)
        now = self._clock()
        self.keys.update((key, use) for key, use in keys if use.created > now - KEY_WINDOW)
        self._trim()

    def seq(self, producer: str) -> int:
        """The last seq stored for ``producer`` (0 if unknown)."""
        return self.producers.get(producer, 0)

    def check(self, claim: Claim) -> tuple[int, list[str] | None]:
        """What ``claim`` lets through: (leading drafts already stored, the ids of a key used before).

        Raises KeyReused for a key first used with another fingerprint.
        """
        if claim.key is not None:
            use = self.keys.get(claim.key)
            if use is not None and use.created > self._clock() - KEY_WINDOW:
                if use.fingerprint != claim.fingerprint:
                    raise key_reused(claim.key)
                return 0, use.ids
        if claim.producer is None:
            return 0, None
        # Seqs increase within a claim: those stored before are the ones up to the last stored.
        return bisect.bisect_right(claim.seqs, self.seq(claim.producer)), None

    def record(self, claim: Claim, records: Sequence[Record], undo: Undo) -> None:
        """Remember that ``claim`` stored ``records`` (noting in ``undo`` what it replaced)."""
        if claim.producer is not None and claim.seqs:
            previous = self.producers.pop(claim.producer, None)
            undo.append(("producers", claim.producer, previous))
            self.producers[claim.producer] = max(claim.seqs[-1], previous or 0)
        if claim.key is not None:
            undo.append(("keys", claim.key, self.keys.pop(claim.key, None)))
            self.keys[claim.key] = KeyUse(claim.fingerprint, [record.id for record in records], self._clock())
        self._trim()

    def undo(self, undo: Undo) -> None:
        """Take back the changes noted in ``undo`` (their transaction failed), newest first."""
        for table, name, previous in reversed(undo):
            if table == "producers":
                self.producers.pop(name, None)
                if isinstance(previous, int):
                    self.producers[name] = previous
            else:
                self.keys.pop(name, None)
                if isinstance(previous, KeyUse):
                    self.keys[name] = previous

    def _trim(self) -> None:
        # Evicted entries are not undone: forgetting an old producer or key is within the bounds.
        while len(self.producers) > MAX_PRODUCERS:
            self.producers.popitem(last=False)
        horizon = self._clock() - KEY_WINDOW
        while self.keys and (len(self.keys) > MAX_KEYS or next(iter(self.keys.values())).created <= horizon):
            self.keys.popitem(last=False)
