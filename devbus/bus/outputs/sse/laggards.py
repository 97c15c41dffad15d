"""Which SSE subscribers are behind, and when one of them moves: the signal a burst input waits on."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Laggards"]


class Laggards:
    """Subscribers whose socket is backed up, and callbacks waiting for one of them to make progress.

    An outlet reports itself behind when its socket cannot take a flush (the
    stream's task then writes and waits for the socket to drain), reports progress
    each time that task has written a chunk, and leaves once it has nothing pending
    or is closed. An input that can wait (the ZeroMQ ingest's burst gate) asks
    :meth:`when_moved` instead of summing every subscriber's buffers over and over.
    """

    def __init__(self) -> None:
        self._behind: dict[object, None] = {}
        self._waiting: list[Callable[[], None]] = []

    @property
    def behind(self) -> int:
        """How many subscribers are behind now."""
        return len(self._behind)

    def fell_behind(self, outlet: object) -> None:
        """Record that ``outlet``'s socket is backed up."""
        self._behind[outlet] = None

    def moved(self, outlet: object, *, caught_up: bool) -> None:
        """Record that ``outlet`` wrote a chunk (and, if ``caught_up``, has nothing left pending)."""
        if caught_up:
            self._behind.pop(outlet, None)
        self._notify()

    def when_moved(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once, on the next progress of any subscriber; return a function that cancels it."""
        self._waiting.append(callback)
        return lambda: self._waiting.remove(callback) if callback in self._waiting else None

    def _notify(self) -> None:
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for callback in waiting:
                callback()
