"""A publisher's outbox: the events not yet acknowledged by the bus, and what is owed to whom.

A publisher starts whether or not a bus is running. ``emit`` only appends to an
ordered, bounded window (microseconds) and never raises because the bus is
away; the publisher's link (``devbus.client.link``, a thread that owns the
DEALER socket) sends the window in order and removes what the bus acknowledges.
How the guarantees are kept:

- acknowledged: an event leaves the window only when the bus says it is stored
  (or refused for good); after a reconnect or a bus restart the link sends again
  everything after what the bus says it has, and the bus stores nothing twice;
- backpressure: while the bus is there (or still being reached) a full window
  makes ``emit`` wait instead of dropping;
- outages: while the bus is known to be away, the window holds up to ``hold``
  events and newer ones are dropped (counted in ``dropped``); one warning per
  outage, one on return;
- exit: ``close`` waits a bounded time for the window to be acknowledged and says
  in one warning (and in ``undelivered``) what was not.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from devbus.client.config import resolve
from devbus.errors import BusUnavailable, InvalidEvent
from devbus.frames import SEQ_SIZE, encode_frames

__all__ = ["Held", "Outbox", "State"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting emit or close re-checks the state
AWAY_LINGER_S = 5.0  # longest close() waits for a bus that went away (a restart)
OUTAGE_GRACE_S = 1.0  # an outage shorter than this is not worth a warning


class State(enum.Enum):
    CONNECTING = "connecting"  # just started: neither a welcome nor a refusal seen yet
    UP = "up"  # the bus answered this connection's hello: events go out and come back acknowledged
    AWAY = "away"  # refused, gone, or silent past ``timeout``: events are held


# One event in the window: its seq, type frame and body frame.
Held = tuple[int, bytes, bytes]


class Outbox:
    """The window of unacknowledged events and the publisher's counts; every field is guarded by ``lock``.

    The link thread is the only one that touches the socket; it changes ``state``,
    takes what to send with :meth:`unsent` and reports acks with :meth:`acknowledged`.
    """

    def __init__(
        self, *, ingest: str | None, token: str | None, hold: int, max_message: int, source: str | None, timeout: float
    ) -> None:
        config = resolve(ingest=ingest, token=token)
        self.address = config.ingest
        self.token = config.token
        self.hold = hold
        self.max_message = max_message
        self.source = source
        self.timeout = timeout
        self.state = State.CONNECTING
        self.dropped = 0
        self.undelivered = 0
        self.rejected = 0
        self.closed = False
        self.welcomed_once = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # the window shrank or the state changed
        self._window: deque[Held] = deque()
        self._next_seq = 1  # given to the next event
        self._sent = 0  # every seq up to this was handed to the socket on this connection
        self._dropped_in_outage = 0
        self._refusals: set[str] = set()
        self._warned = False
        self._away_since = 0.0
        self._away_reason = ""
        self.wake: Callable[[], None] | None = None  # set by the link: called under the lock, something to send

    # -- the caller's side -------------------------------------------------------

    def frames(self, event_type: str, data: dict[str, Any] | None, source: str | None) -> list[bytes]:
        """Encode one event, refusing what the bus would refuse for its size."""
        frames = encode_frames(event_type, data, source=source or self.source, token=self.token)
        size = len(frames[0]) + len(frames[1]) + SEQ_SIZE
        if size > self.max_message:
            raise InvalidEvent(
                f"event {event_type!r} is {size} bytes, over the bus's --max-message of {self.max_message}"
            )
        return frames

    def offer(self, frames: list[bytes], *, block: bool) -> bool:
        """Queue ``frames``; False only without ``block`` when the bus is there but behind (retry)."""
        with self.lock:
            if self.closed:
                raise BusUnavailable(f"This publisher to {self.address} is closed")
            while True:
                if len(self._window) < self.hold:
                    self._window.append((self._next_seq, frames[0], frames[1]))
                    self._next_seq += 1
                    if self.wake is not None and self.state is State.UP:
                        self.wake()
                    return True
                if self.state is State.AWAY:
                    self.dropped += 1
                    self._dropped_in_outage += 1
                    return True
                if not block:
                    return False
                self.changed.wait(POLL_S)

    def wait_until_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the bus's welcome."""
        with self.lock:
            return self.changed.wait_for(lambda: self.state is State.UP, timeout)

    def settle(self, linger: float) -> None:
        """Close to new events and wait (bounded) until the bus has acknowledged the window; count the rest."""
        deadline = time.monotonic() + linger
        with self.lock:
            self.closed = True
            while self._window and (remaining := deadline - time.monotonic()) > 0:
                if self.state is not State.AWAY:
                    self.changed.wait(min(POLL_S, remaining))
                # A bus seen before is probably restarting: give it a few seconds.
                # One never seen is not coming; a script's exit must not hang on it.
                elif not self.welcomed_once or not self.changed.wait_for(
                    lambda: self.state is not State.AWAY, min(AWAY_LINGER_S, remaining)
                ):
                    break
            self.undelivered = len(self._window)
            self._window.clear()

    def unavailable(self) -> BusUnavailable:
        """The error for a caller that asked to wait and waited ``timeout`` in vain."""
        return BusUnavailable(
            f"No devbus at {self.address} (waited {self.timeout:g}s for its ingest socket); "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    def report(self) -> str:
        """One line: what this publisher could not deliver (held at close, dropped, refused), and why."""
        lost = self.undelivered + self.dropped
        noun = "event" if lost == 1 else "events"
        if self.welcomed_once:
            line = f"{lost} {noun} not delivered: the devbus at {self.address} went away and did not come back in time"
        else:
            line = (
                f"{lost} {noun} not delivered: no devbus at {self.address}; "
                "start one with `devbus run`, or point DEVBUS_INGEST at it"
            )
        if self.rejected:
            line += f" ({self.rejected} more refused by the bus, see above)"
        return line if lost else f"{self.rejected} events refused by the devbus at {self.address} (see above)"

    @property
    def owes_report(self) -> bool:
        """Whether close should warn: something was not delivered, or dropped in an outage not yet over."""
        return bool(self.undelivered or self._dropped_in_outage)

    # -- the link's side (under the lock) ----------------------------------------------

    def hello_next(self) -> int:
        """The first seq this publisher still holds (what the bus may resume from)."""
        return self._window[0][0] if self._window else self._next_seq

    def unsent(self, limit: int) -> list[Held]:
        """Up to ``limit`` events not handed to the socket on this connection yet, oldest first."""
        if not self._window or self.state is not State.UP:
            return []
        start = max(0, self._sent + 1 - self._window[0][0])
        end = min(len(self._window), start + limit)
        return [self._window[i] for i in range(start, end)]

    def handed(self, seq: int) -> None:
        """Everything up to ``seq`` was handed to the socket."""
        self._sent = seq

    def acknowledged(self, seq: int, *, resend: bool, rejected: list[tuple[int, str, str]]) -> None:
        """The bus settled everything up to ``seq`` (``resend``: and wants everything after it again)."""
        window = self._window
        while window and window[0][0] <= seq:
            window.popleft()
        for rejected_seq, reason, text in rejected:
            self.rejected += 1
            if reason not in self._refusals:
                self._refusals.add(reason)
                log.warning("the devbus at %s refused event %d (%s): %s", self.address, rejected_seq, reason, text)
        if resend:
            self._sent = seq
            if self.state is not State.UP:
                self._set_up()
        self.changed.notify_all()

    def lost_connection(self) -> None:
        """The connection is gone: nothing in flight on it will be acknowledged; send it all again later."""
        self._sent = self._window[0][0] - 1 if self._window else self._next_seq - 1

    def set_away(self, why: str) -> None:
        """The bus refused us, went away, or never answered."""
        if self.state is not State.AWAY:
            self.state = State.AWAY
            self._away_since = time.monotonic()
            self._away_reason = why
            self.changed.notify_all()

    def _set_up(self) -> None:
        self.state = State.UP
        self.welcomed_once = True
        lost, self._dropped_in_outage = self._dropped_in_outage, 0
        if lost:
            log.warning("devbus at %s is back; %d events were dropped while it was away", self.address, lost)
        elif self._warned:
            log.info("devbus at %s is back; delivering %d held events", self.address, len(self._window))
        self._warned = False

    def warn_once_per_outage(self) -> None:
        """Say so if the bus has been away for a while (a restart, or a script that exits at once, stays quiet)."""
        if self._warned or self.state is not State.AWAY or time.monotonic() - self._away_since < OUTAGE_GRACE_S:
            return
        self._warned = True
        log.warning(
            "devbus at %s is not reachable (%s); emit carries on, holding up to %d events and then dropping "
            "new ones (counted in Publisher.dropped) until a bus is there",
            self.address,
            self._away_reason,
            self.hold,
        )
