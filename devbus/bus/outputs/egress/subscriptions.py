"""One ZeroMQ egress listener's subscriptions: bounded in count and bytes, matched at a cost their number does not set.

A ZeroMQ SUB subscribes to prefixes of the first frame (the event type). An event
matches if any prefix of its type is subscribed, so matching looks up the type's
own prefixes (one per distinct subscribed length, at most one per byte of the
type) in a set, instead of comparing the type with every subscription: 100,000
subscriptions cost what one does. The egress matches each type once per change
of subscriptions, not once per event (``egress.py``).

Unbounded, a listener's subscriptions held the bus's memory (746,240 distinct
4 KiB prefixes took 3 GB in 6 s): past MAX_SUBSCRIPTIONS or MAX_BYTES one more is
refused, and what they cost is charged to the memory budget.
"""

from __future__ import annotations

__all__ = ["ENTRY_COST", "MAX_BYTES", "MAX_SUBSCRIPTIONS", "Subscriptions", "TooManySubscriptions"]

MAX_SUBSCRIPTIONS = 100_000  # distinct prefixes one listener may subscribe to
MAX_BYTES = 1024 * 1024  # bytes of those prefixes, together
# Memory one subscription costs beyond its prefix's bytes: the bytes object and its
# slot in the set (measured with tracemalloc: 66-85 bytes for 1,000-100,000 prefixes).
ENTRY_COST = 96


class TooManySubscriptions(Exception):
    """A subscription past a listener's bounds; the message says which."""


class Subscriptions:
    """A listener's distinct subscribed prefixes, and the lengths they come in."""

    __slots__ = ("_lengths", "_prefixes", "_sorted", "size")

    def __init__(self) -> None:
        self._prefixes: set[bytes] = set()
        self._lengths: dict[int, int] = {}  # prefix length -> how many prefixes have it
        self._sorted: list[int] | None = []  # the lengths in order; None until needed again
        self.size = 0  # bytes of every prefix together

    def __len__(self) -> int:
        return len(self._prefixes)

    @property
    def cost(self) -> int:
        """Bytes of memory the subscriptions hold, for the memory budget."""
        return self.size + len(self._prefixes) * ENTRY_COST

    def add(self, prefix: bytes) -> bool:
        """Subscribe to ``prefix``; True if it is new; TooManySubscriptions past a bound."""
        if prefix in self._prefixes:
            return False
        if len(self._prefixes) >= MAX_SUBSCRIPTIONS or self.size + len(prefix) > MAX_BYTES:
            raise TooManySubscriptions(
                f"a listener may subscribe to {MAX_SUBSCRIPTIONS} prefixes, {MAX_BYTES // 1024} KiB in all (this one "
                f"has {len(self._prefixes)}, {self.size} bytes): it gets no events for the one past that"
            )
        self._prefixes.add(prefix)
        self.size += len(prefix)
        length = len(prefix)
        count = self._lengths.get(length, 0)
        self._lengths[length] = count + 1
        if not count:
            self._sorted = None
        return True

    def remove(self, prefix: bytes) -> bool:
        """Cancel the subscription to ``prefix``; True if there was one."""
        if prefix not in self._prefixes:
            return False
        self._prefixes.discard(prefix)
        self.size -= len(prefix)
        length = len(prefix)
        count = self._lengths[length] - 1
        if count:
            self._lengths[length] = count
        else:
            del self._lengths[length]
            self._sorted = None
        return True

    def match(self, head: bytes) -> bool:
        """Whether an event whose type frame is ``head`` matches a subscription."""
        lengths = self._sorted
        if lengths is None:
            lengths = self._sorted = sorted(self._lengths)
        prefixes = self._prefixes
        size = len(head)
        for length in lengths:
            if length > size:
                return False
            if head[:length] in prefixes:
                return True
        return False
