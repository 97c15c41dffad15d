"""ZeroMQ ingest: a bound SUB socket drained in batches on the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.backlog import Backlog
from devbus.bus.store.base import Record
from devbus.envelope import Draft
from devbus.errors import StoreUnavailable
from devbus.frames import WireReject, decode_frames

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's enum flags cost per call

# Messages taken per loop turn: large enough that a burst costs one dispatcher
# call per thousands of events, small enough that HTTP and SSE stay responsive.
BATCH = 2000

# Bytes taken per loop turn, so that one batch never buffers much per subscriber.
BATCH_BYTES = 64 * 1024

# Flow control for bursts: while input is waiting and subscribers are behind (their
# sockets backed up) but keep taking what they were sent, wait for them before
# reading more. Readers get a whole burst without the bus buffering it for them;
# the outputs say when a subscriber moves (no polling). One that moves nothing for
# STALLED seconds is not waited for (its buffer bound evicts it), and no batch
# waits more than CATCH_UP, so a slow reader cannot hold a burst back for long.
CATCH_UP = 1.0
STALLED = 0.03

# Batches handed to the store at once: a store across the network (Redis) answers
# after a round trip, and reading the next batch meanwhile keeps ingest going. What
# the bus holds is bounded: IN_FLIGHT batches of at most BATCH_BYTES.
IN_FLIGHT = 4

# While the store is unreachable the batches taken from the socket are held and
# stored again, in order, after these delays (doubling); the socket's queue and
# the senders wait.
HOLD_FIRST = 0.05
HOLD_MAX = 1.0


class Ingest:
    """Read every pending message, validate it, and publish the valid ones as one batch.

    The socket's FD is edge-triggered: it only signals a change of state, so after
    each drain ZMQ_EVENTS is checked and the drain is rescheduled while input remains.
    """

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        *,
        dispatcher: Dispatcher,
        backlog: Backlog,
        metrics: Metrics,
        max_size: int,
        token: str | None = None,
    ) -> None:
        self.socket = socket
        self._dispatcher = dispatcher
        self._backlog = backlog
        self._waited_since = 0.0
        self._stall: asyncio.TimerHandle | None = None
        self._cancel_wait: Callable[[], None] | None = None
        self._metrics = metrics
        self._max_size = max_size
        self._token = token
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        # Batches handed to the store and not answered yet, and those it could not take.
        self._storing: deque[tuple[list[Draft], asyncio.Future[list[Record]]]] = deque()
        self._holding: deque[list[Draft]] = deque()
        self._blocked = False
        self._hold: asyncio.TimerHandle | None = None
        self._hold_delay = HOLD_FIRST
        self._logged: set[str] = set()
        self._fd = int(socket.getsockopt(zmq.FD))

    def start(self) -> None:
        """Watch the socket on the running loop."""
        self._loop.add_reader(self._fd, self._wake)
        self._wake()

    def stop(self) -> None:
        """Stop watching the socket (the owner closes it)."""
        self._loop.remove_reader(self._fd)
        if self._stall is not None:
            self._stall.cancel()
        if self._cancel_wait is not None:
            self._cancel_wait()
        if self._hold is not None:
            self._hold.cancel()
        lost = sum(len(drafts) for drafts in self._holding) + sum(len(drafts) for drafts, _ in self._storing)
        if lost:
            log.warning("%d events taken from ZeroMQ were not stored before the bus stopped", lost)

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self.socket.closed:
            return
        drafts: list[Draft] = []
        more = True
        size = 0
        recv = self.socket.recv
        for _ in range(BATCH):
            if size >= BATCH_BYTES:
                break
            try:
                # Frames, not recv_multipart: asking ZMQ_RCVMORE through getsockopt
                # costs more than the rest of taking a message in.
                frame = recv(NOBLOCK, copy=False)
            except zmq.Again:
                more = False
                break
            frames = [frame.bytes]
            while frame.more:
                # A multipart message arrives whole, so its next frame is there.
                frame = recv(NOBLOCK, copy=False)
                frames.append(frame.bytes)
            size += len(frames[-1])
            try:
                drafts.append(decode_frames(frames, max_size=self._max_size, token=self._token))
            except WireReject as exc:
                self._reject(exc)
        if drafts:
            self._publish(drafts)
        if self._holding or len(self._storing) >= IN_FLIGHT:
            # Read on once the store has taken a batch (or is back); meanwhile the
            # socket's queue fills and senders wait.
            self._scheduled = self._blocked = True
            return
        self._next(more)

    def _publish(self, drafts: list[Draft]) -> None:
        """Hand ``drafts`` to the store; they count as taken once it has them."""
        try:
            committed = self._dispatcher.publish(drafts)
        except Exception:
            # Never let one bad batch stop the ingest: log it and keep reading.
            log.exception("could not publish %d events from ZeroMQ", len(drafts))
            return
        self._storing.append((drafts, committed))
        if committed.done():
            self._stored(resume=False)
        else:
            committed.add_done_callback(lambda _: self._stored(resume=True))

    def _stored(self, *, resume: bool) -> None:
        """Settle the batches the store has answered, in order; hold the ones it could not take."""
        storing = self._storing
        while storing and storing[0][1].done():
            drafts, committed = storing.popleft()
            error = None if committed.cancelled() else committed.exception()
            if isinstance(error, StoreUnavailable):
                # Taken from the socket but not stored: keep it, in order, and store it
                # again with backoff (the store logs the outage once).
                if not self._holding:
                    log.info("holding events from ZeroMQ until the store is back")
                self._holding.append(drafts)
            elif committed.cancelled() or error is not None:
                log.error("could not store %d events from ZeroMQ: %s", len(drafts), error or "cancelled")
            else:
                self._hold_delay = HOLD_FIRST
        if self._holding:
            if self._hold is None and not storing and not self.socket.closed:
                self._hold = self._loop.call_later(self._hold_delay, self._store_again)
                self._hold_delay = min(self._hold_delay * 2, HOLD_MAX)
        elif resume and self._blocked and len(storing) < IN_FLIGHT:
            self._scheduled = self._blocked = False
            self._next(True)

    def _store_again(self) -> None:
        self._hold = None
        held, self._holding = self._holding, deque()
        for drafts in held:
            self._publish(drafts)
        self._stored(resume=True)

    def _next(self, more: bool) -> None:
        if self.socket.closed:
            return
        # Reading EVENTS also lets libzmq process pending commands (new peers),
        # which is what re-arms the edge-triggered FD.
        if not (more or int(self.socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN):
            return
        if self._backlog.behind:
            # Still marked scheduled, so the socket's wake-ups wait for this too.
            self._scheduled = True
            self._waited_since = self._loop.time()
            self._wait_for_readers()
        else:
            self._wake()

    def _wait_for_readers(self) -> None:
        self._stall = self._loop.call_later(STALLED, self._stop_waiting)
        self._cancel_wait = self._backlog.when_moved(self._readers_moved)

    def _readers_moved(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
        if self._backlog.behind and self._loop.time() - self._waited_since < CATCH_UP:
            self._wait_for_readers()
        else:
            self._cancel_wait = None
            self._drain()

    def _stop_waiting(self) -> None:
        # Nobody moved for STALLED seconds: read on; the stalled ones will be evicted.
        if self._cancel_wait is not None:
            self._cancel_wait()
            self._cancel_wait = None
        self._drain()

    def _reject(self, exc: WireReject) -> None:
        self._metrics.reject(exc.reason)
        if exc.reason not in self._logged:
            self._logged.add(exc.reason)
            log.warning("refused a ZeroMQ message (%s): %s; further ones are only counted", exc.reason, exc)
        else:
            log.debug("refused a ZeroMQ message (%s): %s", exc.reason, exc)
