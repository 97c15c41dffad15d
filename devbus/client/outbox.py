"""A publisher's outbox: the XPUB socket, the thread that watches it, and the events not yet handed over.

A publisher starts whether or not a bus is running. ``emit`` only appends to an
ordered, bounded outbox (microseconds) and never raises because the bus is away; a
background thread watches the connection and delivers what is held, in order, as
soon as a bus listens. How the guarantees are kept:

- slow joiner: the socket is an XPUB, so the bus's subscription arrives as a
  message; nothing is sent before it, so nothing is lost to a bus not yet listening;
- backpressure: ZMQ_XPUB_NODROP turns a full queue into EAGAIN, and while a bus is
  there (or still being reached) a full outbox makes ``emit`` wait instead of dropping;
- outages: while the bus is known to be away, up to ``hold`` events are held and
  newer ones dropped (counted in ``dropped``); one warning per outage, one on return;
- exit: ``close`` delivers what is held, waiting a bounded time, and says in one
  warning (and in ``undelivered``) what it could not deliver.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from devbus.client.config import resolve
from devbus.errors import BusUnavailable, ConfigError, InvalidEvent
from devbus.frames import encode_frames
from devbus.text import plural

__all__ = ["Outbox", "State"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting send, and the watcher thread, re-check the connection
BUSY_POLL_S = 0.01  # the watcher's pace while it waits for a subscription or has events to deliver
OUTAGE_GRACE_S = 1.0  # an outage shorter than this is not worth a warning
AWAY_LINGER_S = 5.0  # longest close() waits, from when it went, for a bus that is restarting
DRAIN_CHUNK = 1000  # events the watcher hands to ZeroMQ per hold of the lock, so emit is never held long
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost per call
SNDMORE = int(zmq.SNDMORE)
_WATCHED = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class State(enum.Enum):
    CONNECTING = "connecting"  # just started: neither a subscription nor a refusal seen yet
    UP = "up"  # the bus subscribed: events go straight to ZeroMQ
    AWAY = "away"  # refused, gone, or silent past ``timeout``: events are held


class Outbox:
    """The XPUB socket, its watcher thread and the bounded queue of events not yet handed over.

    The socket is only touched under ``_lock``; the monitor only by the watcher thread,
    which is also the only writer of ``state`` (so a send waiting under the lock still
    sees the bus go away).
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
        self.closed = False
        self._dropped_in_outage = 0
        self._subscribed_once = False
        self._warned = False
        self._away_since = 0.0
        self._away_reason = ""
        self._pending: deque[list[bytes]] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # the outbox shrank or the state changed
        self._stop = threading.Event()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        # Every subscription, also the one a restarted bus sends on a kept pipe, is a sign of life.
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._socket.setsockopt(zmq.SNDHWM, hold)
        self._socket.setsockopt(zmq.SNDTIMEO, int(POLL_S * 1000))
        self._monitor = self._socket.get_monitor_socket(_WATCHED)
        try:
            self._socket.connect(self.address)
        except zmq.ZMQError as exc:
            self._teardown(0)
            raise ConfigError(
                f"{self.address!r} is not a ZeroMQ address such as tcp://127.0.0.1:8766 ({exc}); check DEVBUS_INGEST"
            ) from exc
        self._started = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name=f"devbus-publisher {self.address}", daemon=True)
        self._watcher.start()

    def frames(self, event_type: str, data: dict[str, Any] | None, source: str | None) -> list[bytes]:
        """Encode one event, refusing what the bus would refuse for its size."""
        frames = encode_frames(event_type, data, source=source or self.source, token=self.token)
        size = len(frames[0]) + len(frames[1])
        if size > self.max_message:
            raise InvalidEvent(
                f"event {event_type!r} is {size} bytes, over the bus's --max-message of {self.max_message}"
            )
        return frames

    def offer(self, frames: list[bytes], *, block: bool) -> bool:
        """Queue ``frames``; False only without ``block`` when the bus is there but full (retry)."""
        with self._lock:
            if self.closed:
                raise BusUnavailable(f"This publisher to {self.address} is closed")
            while True:
                if self.state is State.UP:
                    if self._pending:
                        self._drain(DRAIN_CHUNK)
                    if not self._pending and self._send(frames, NOBLOCK):
                        return True
                if len(self._pending) < self.hold:
                    self._pending.append(frames)
                    return True
                if self.state is State.AWAY:
                    self._drop()
                    return True
                if not block:
                    return False
                self._wait_for_room()

    def wait_until_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the bus's subscription."""
        with self._lock:
            return self._changed.wait_for(lambda: self.state is State.UP, timeout)

    def close(self, linger: float, *, warn: bool) -> None:
        """Deliver what is held (bounded in time), stop the watcher; ``warn`` of what was not delivered."""
        started = time.monotonic()
        deadline = started + linger
        with self._lock:
            if self.closed:
                return
            self.closed = True
            while self._pending and time.monotonic() < deadline:
                if self.state is State.AWAY:
                    wait = self._restart_wait(started, deadline)
                    if wait <= 0 or not self._changed.wait_for(lambda: self.state is not State.AWAY, wait):
                        break
                self._wait_for_room()
            self.undelivered = len(self._pending)
            self._pending.clear()
        self._stop.set()
        self._watcher.join()
        up = self.state is State.UP
        # A bus that is away cannot take what ZeroMQ still queues: do not wait for it.
        self._teardown(int(max(0.0, deadline - time.monotonic()) * 1000) if up else 0)
        if warn and (self.undelivered or self._dropped_in_outage):
            log.warning("%s", self.report())

    def _restart_wait(self, closing_since: float, deadline: float) -> float:
        """How long ``close`` still waits for a bus that is away: only one that is restarting.

        A bus that went away less than OUTAGE_GRACE_S before the close began (or during it)
        is probably restarting: it gets up to AWAY_LINGER_S from when it went. One away for
        longer (the log has already said it is not reachable), or never seen, is not
        coming: a backend's shutdown or a script's exit does not wait for it.
        """
        if not self._subscribed_once or self._away_since < closing_since - OUTAGE_GRACE_S:
            return 0.0
        return min(self._away_since + AWAY_LINGER_S, deadline) - time.monotonic()

    def unavailable(self) -> BusUnavailable:
        """The error for a caller that asked to wait and waited ``timeout`` in vain."""
        return BusUnavailable(
            f"No devbus at {self.address} (waited {self.timeout:g}s for its ingest socket); "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    def report(self) -> str:
        """One line: what this publisher could not deliver (held at close, or dropped), and why."""
        lost = self.undelivered + self.dropped
        if self._subscribed_once:
            return f"{plural(lost, 'event')} not delivered: the devbus at {self.address} went away and was not back"
        return (
            f"{plural(lost, 'event')} not delivered: no devbus at {self.address}; "
            "start one with `devbus run`, or point DEVBUS_INGEST at it"
        )

    def _send(self, frames: list[bytes], flags: int) -> bool:
        try:
            # Two plain sends rather than send_multipart, whose per-call overhead is
            # several times the send; an XPUB checks its queue on the first frame only.
            self._socket.send(frames[0], flags | SNDMORE)
            self._socket.send(frames[1], flags)
        except zmq.Again:
            return False
        return True

    def _drain(self, limit: int) -> None:
        pending = self._pending
        while pending and limit and self._send(pending[0], NOBLOCK):
            pending.popleft()
            limit -= 1

    def _wait_for_room(self) -> None:
        """Under the lock: wait (at most POLL_S) until the outbox can take one more event."""
        if self.state is State.UP and self._pending:
            # A blocking send sleeps until ZeroMQ has room; poll() cannot, an XPUB always reports POLLOUT.
            if self._send(self._pending[0], 0):
                self._pending.popleft()
                self._changed.notify_all()
        else:
            self._changed.wait(POLL_S)

    def _drop(self) -> None:
        self.dropped += 1
        self._dropped_in_outage += 1

    def _watch(self) -> None:
        """The watcher thread: follow the connection and deliver what is held."""
        while not self._stop.is_set():
            busy = self.state is State.CONNECTING or (self.state is State.UP and bool(self._pending))
            events = []
            if self._monitor.poll(int((BUSY_POLL_S if busy else POLL_S) * 1000)):
                while self._monitor.poll(0):
                    events.append(parse_monitor_message(self._monitor.recv_multipart())["event"])
            if events and self.state is not State.AWAY:
                # Without the lock: a send that waits under it for room must see the bus go away.
                self._set_away("nothing listens there" if self.state is State.CONNECTING else "it went away")
            with self._lock:
                # The bus is up once it subscribes, also after a restart (XPUB_VERBOSE). A
                # subscription read after a disconnect it preceded is corrected by the next retry.
                self._read_subscriptions()
                if self.state is State.CONNECTING and time.monotonic() - self._started > self.timeout:
                    self._set_away(f"it did not answer within {self.timeout:g}s")
                if self.state is State.UP:
                    self._drain(DRAIN_CHUNK)
                self._warn_once_per_outage()
                self._changed.notify_all()

    def _read_subscriptions(self) -> None:
        while True:
            try:
                message = self._socket.recv(NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._subscribed_once = True
                if self.state is not State.UP:
                    self._set_up()

    def _set_up(self) -> None:
        self.state = State.UP
        lost, self._dropped_in_outage = self._dropped_in_outage, 0
        # At the level of "not reachable", so that a log that said one says the other (uvicorn
        # shows warnings, not info).
        if lost:
            dropped = f"{plural(lost, 'event')} {'was' if lost == 1 else 'were'} dropped"
            log.warning("devbus at %s is back; %s while it was away", self.address, dropped)
        elif self._warned:
            log.warning("devbus at %s is back; delivering %s", self.address, plural(len(self._pending), "held event"))
        self._warned = False

    def _set_away(self, why: str) -> None:
        self.state = State.AWAY
        self._away_since = time.monotonic()
        self._away_reason = why

    def _warn_once_per_outage(self) -> None:
        # Only an outage that lasts says so: a bus restart, or a script that
        # exits at once (close() reports that one), stays quiet.
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

    def _teardown(self, linger_ms: int) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=linger_ms)
        # term() is what waits for the linger: without it a script that exits
        # right after its last emit would lose whatever was still queued.
        self._context.term()
