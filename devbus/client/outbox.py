"""A publisher's outbox: what ``emit`` hands over, what the bus has not acknowledged, and what is owed to whom.

A publisher starts whether or not a bus is running. ``emit`` only appends the
encoded event to ``incoming`` (microseconds, no lock while there is room) and
never raises because the bus is away; the publisher's link
(``devbus.client.link``, the one thread that owns the socket) numbers what comes
in, sends it in order, and keeps each event until the bus acknowledges it. How
the guarantees are kept:

- acknowledged: an event leaves the link's window only when the bus says it is
  stored (or refused for good); after a reconnect or a bus restart the link sends
  again everything after what the bus says it has, and the bus stores nothing twice;
- backpressure: ``hold`` bounds the events not yet acknowledged; while the bus is
  there (or still being reached) a full outbox makes ``emit`` wait instead of dropping;
- outages: while the bus is known to be away, up to ``hold`` events are held and
  newer ones dropped (counted in ``dropped``); one warning per outage, one on return;
- exit: ``close`` waits a bounded time for everything to be acknowledged (for a bus
  that is away, only while it may be restarting) and says in one warning (and in
  ``undelivered``) what was not.
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
from devbus.text import plural

__all__ = ["Outbox", "State"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting emit or close re-checks the state
# How long after a bus went away close() still waits for it, as it may be restarting: `devbus
# run` is ready 0.6-0.8 s after it starts (measured on 2 busy cores), plus the time to run it
# again (Ctrl-C, up, Enter). A bus away for longer is not waited for.
AWAY_LINGER_S = 5.0
OUTAGE_GRACE_S = 1.0  # an outage shorter than this is not worth a warning


class State(enum.Enum):
    CONNECTING = "connecting"  # just started: neither a welcome nor a refusal seen yet
    UP = "up"  # the bus answered this connection's hello: events go out and come back acknowledged
    AWAY = "away"  # refused, gone, or silent past ``timeout``: events are held


class Outbox:
    """What emit hands over (``incoming``), the counts, and the connection's state as the link sees it.

    Only the link thread takes from ``incoming``, numbers events and changes
    ``state`` and ``in_flight`` (the events it holds, unacknowledged); single
    appends, pops and assignments need no lock under the GIL. ``lock`` (with
    ``changed``) is for waiting: an emit for room, a close for acknowledgements,
    a caller for the bus.
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
        self.incoming: deque[list[bytes]] = deque()
        self.in_flight = 0  # events the link holds, not acknowledged yet
        self.dropped = 0
        self.undelivered = 0
        self.rejected = 0
        self.closed = False
        self.welcomed_once = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # room, an acknowledgement, or the state changed
        self.wake: Callable[[], None] = lambda: None  # the link's: called after an append, cheap when it is busy
        self._dropped_in_outage = 0
        self._refusals: set[str] = set()
        self._warned = False
        self._away_since = 0.0
        self._away_reason = ""

    # -- the caller's side -------------------------------------------------------

    def frames(self, event_type: str, data: dict[str, Any] | None, source: str | None) -> list[bytes]:
        """Encode one event, refusing what the bus would refuse for its size."""
        frames = encode_frames(event_type, data, source=source or self.source, token=self.token)
        if len(frames[0]) + len(frames[1]) + SEQ_SIZE > self.max_message:
            size = len(frames[0]) + len(frames[1]) + SEQ_SIZE
            raise InvalidEvent(
                f"event {event_type!r} is {size} bytes, over the bus's --max-message of {self.max_message}"
            )
        return frames

    def offer(self, frames: list[bytes], *, block: bool) -> bool:
        """Queue ``frames``; False only without ``block`` when the bus is there but behind (retry)."""
        if self.closed:
            raise BusUnavailable(f"This publisher to {self.address} is closed")
        if len(self.incoming) + self.in_flight < self.hold:
            self.incoming.append(frames)
            self.wake()
            return True
        with self.lock:
            while len(self.incoming) + self.in_flight >= self.hold:
                if self.state is State.AWAY:
                    self.dropped += 1
                    self._dropped_in_outage += 1
                    return True
                if not block:
                    return False
                self.changed.wait(POLL_S)
        self.incoming.append(frames)
        self.wake()
        return True

    def wait_until_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the bus's welcome."""
        with self.lock:
            return self.changed.wait_for(lambda: self.state is State.UP, timeout)

    def settle(self, linger: float) -> None:
        """Take no more events and wait (bounded) until the bus has acknowledged them all."""
        deadline = time.monotonic() + linger
        with self.lock:
            self.closed = True
            while (self.incoming or self.in_flight) and (remaining := deadline - time.monotonic()) > 0:
                if self.state is not State.AWAY:
                    self.changed.wait(min(POLL_S, remaining))
                elif (wait := self._restart_wait(deadline)) <= 0 or not self.changed.wait_for(
                    lambda: self.state is not State.AWAY, wait
                ):
                    break

    def _restart_wait(self, deadline: float) -> float:
        """How long ``settle`` still waits for a bus that is away: only while it may be restarting.

        A bus seen before that went away less than AWAY_LINGER_S ago (or during the close)
        may be restarting: it is waited for until AWAY_LINGER_S after it went, so a script
        that ends during a restart loses nothing. One away for longer, or never seen, is not
        coming: a backend's shutdown or a script's exit does not wait for it at all.
        """
        if not self.welcomed_once:
            return 0.0
        return min(self._away_since + AWAY_LINGER_S, deadline) - time.monotonic()

    def unavailable(self) -> BusUnavailable:
        """The error for a caller that asked to wait and waited ``timeout`` in vain."""
        return BusUnavailable(
            f"No devbus at {self.address} (waited {self.timeout:g}s for its ingest socket); "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    def report(self) -> str:
        """One line: what this publisher could not deliver (unacknowledged at close, or dropped), and why."""
        lost = self.undelivered + self.dropped
        if self.welcomed_once:
            return f"{plural(lost, 'event')} not delivered: the devbus at {self.address} went away and was not back"
        return (
            f"{plural(lost, 'event')} not delivered: no devbus at {self.address}; "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    @property
    def owes_report(self) -> bool:
        """Whether close should warn: something was not delivered, or dropped in an outage not yet over."""
        return bool(self.undelivered or self._dropped_in_outage)

    # -- the link's side -------------------------------------------------------------

    def refused(self, seq: int, reason: str, text: str) -> None:
        """The bus refused event ``seq`` for good: count it, and say so once per reason."""
        self.rejected += 1
        if reason not in self._refusals:
            self._refusals.add(reason)
            log.warning(
                "the devbus at %s refused an event (%s): %s; further ones are counted in Publisher.rejected",
                self.address,
                reason,
                text,
            )

    def set_up(self) -> None:
        """Under the lock: the bus answered this connection's hello."""
        if self.state is State.UP:
            return
        self.state = State.UP
        self.welcomed_once = True
        lost, self._dropped_in_outage = self._dropped_in_outage, 0
        # At the level of "not reachable", so that a log that said one says the other (uvicorn
        # shows warnings, not info).
        if lost:
            dropped = f"{plural(lost, 'event')} {'was' if lost == 1 else 'were'} dropped"
            log.warning("devbus at %s is back; %s while it was away", self.address, dropped)
        elif self._warned:
            held = plural(len(self.incoming) + self.in_flight, "held event")
            log.warning("devbus at %s is back; delivering %s", self.address, held)
        self._warned = False
        self.changed.notify_all()

    def set_away(self, why: str) -> None:
        """Under the lock: the bus refused us, went away, or never answered."""
        if self.state is not State.AWAY:
            self.state = State.AWAY
            self._away_since = time.monotonic()
            self._away_reason = why
            self.changed.notify_all()

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
