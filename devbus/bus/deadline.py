"""A ZMTP connection's deadline: for its handshake, then for each message, counted only while it is read.

A message in progress holds up to its size limit, so it must end in bounded
time: ``message_timeout`` from its own first byte (not from the first byte of
the one before: a sender that keeps sending whole messages, each read ending
inside the next one, is never late). The time the bus does not read the
connection (paused while a batch commits, or subscribers catch up) does not
count: a sender the bus keeps waiting is not late either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """One timer that calls ``expired`` when the handshake or the message in progress takes too long."""

    def __init__(self, expired: Callable[[], None], *, message_timeout: float) -> None:
        self._expired = expired
        self._message_timeout = message_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._left = message_timeout  # what the message in progress has left
        self._since = 0.0  # when the timer last started
        self._paused = False

    def start(self, seconds: float) -> None:
        """Expire in ``seconds`` (the handshake's deadline)."""
        self.stop()
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._timer = loop.call_later(seconds, self._expired)

    def stop(self) -> None:
        """No deadline (the handshake is done, no message is in progress, or the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def read(self, *, in_progress: bool, new: bool) -> None:
        """After a read: a message is ``in_progress`` or not; ``new`` if it began in this read."""
        if not in_progress:
            self.stop()
            self._left = self._message_timeout
        elif new:
            self._left = self._message_timeout
            if not self._paused:
                self.start(self._left)

    def pause(self) -> None:
        """The bus stops reading the connection: the message in progress waits without losing time."""
        self._paused = True
        if self._timer is not None:
            self._left -= asyncio.get_running_loop().time() - self._since
            self.stop()

    def resume(self, *, in_progress: bool) -> None:
        """The bus reads the connection again: the message in progress has what it had left."""
        self._paused = False
        if in_progress:
            self.start(max(0.0, self._left))
