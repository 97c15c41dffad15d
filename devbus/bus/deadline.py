"""A ZMTP connection's deadlines (handshake, each message, a PING's TTL), counted only while it is read.

A message in progress holds up to its size limit, so it must end in bounded
time: ``message_timeout`` from its own first byte (not from the first byte of
the one before: a sender that keeps sending whole messages, each read ending
inside the next one, is never late). The time the bus does not read the
connection (paused while a batch commits, or subscribers catch up) does not
count: a sender the bus keeps waiting is not late either.

A PING may carry a TTL (ZMTP 3.1): the time its sender may then stay silent
before the connection is dropped. libzmq sets it from the first PING after the
peer was last heard and clears it on anything received; so does :class:`Silence`,
which also stops counting while the bus does not read the connection (what the
peer sent meanwhile waits unread), and starts over when it reads again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadline", "Silence"]


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


class Silence:
    """One timer that calls ``expired`` if the peer sends nothing within the TTL of its last PING."""

    def __init__(self, expired: Callable[[], None]) -> None:
        self._expired = expired
        self.seconds = 0.0  # the TTL in force (0: none)
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False

    def ping(self, seconds: float) -> None:
        """A PING with a TTL of ``seconds`` (0: none) arrived; the first since the peer was last heard counts."""
        if seconds and not self.seconds:
            self.seconds = seconds
            self._start()

    def heard(self) -> None:
        """Bytes arrived: the TTL is met."""
        self.seconds = 0.0
        self.stop()

    def pause(self) -> None:
        """The bus stops reading the connection: silence no longer counts."""
        self._paused = True
        self.stop()

    def resume(self) -> None:
        """The bus reads the connection again: the TTL starts over."""
        self._paused = False
        self._start()

    def stop(self) -> None:
        """Cancel the timer (the TTL stays in force, for :meth:`resume`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start(self) -> None:
        if self.seconds and self._timer is None and not self._paused:
            self._timer = asyncio.get_running_loop().call_later(self.seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._expired()
