"""ZeroMQ ingest: a bound SUB socket drained in batches on the event loop."""

from __future__ import annotations

import asyncio
import logging
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

# While the store is unreachable a batch taken from the socket is held and stored
# again after these delays (doubling); the socket's queue and the senders' wait.
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
        self._hold: asyncio.TimerHandle | None = None
        self._holding: list[Draft] | None = None
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
        if self._holding:
            log.warning("%d events taken from ZeroMQ were not stored: the store was unreachable", len(self._holding))

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
        if drafts and self._publish(drafts, more):
            return
        self._next(more)

    def _publish(self, drafts: list[Draft], more: bool) -> bool:
        """Hand ``drafts`` to the store; True while they are not stored yet (nothing more is read until then)."""
        try:
            committed = self._dispatcher.publish(drafts)
        except Exception:
            # Never let one bad batch stop the ingest: log it and keep reading.
            log.exception("could not publish %d events from ZeroMQ", len(drafts))
            return False
        if committed.done():
            return self._held(committed, drafts, more)
        # A message is taken once the store has it: read no more until then.
        self._scheduled = True
        committed.add_done_callback(lambda done: self._committed(done, drafts, more))
        return True

    def _committed(self, committed: asyncio.Future[list[Record]], drafts: list[Draft], more: bool) -> None:
        self._scheduled = False
        if not self._held(committed, drafts, more):
            self._next(more)

    def _held(self, committed: asyncio.Future[list[Record]], drafts: list[Draft], more: bool) -> bool:
        """Whether the batch is held to be stored again because the store is unreachable."""
        error = None if committed.cancelled() else committed.exception()
        if isinstance(error, StoreUnavailable):
            # Taken from the socket but not stored: keep it and read nothing more, so
            # senders see backpressure, and store it again with backoff (the store
            # logs the outage once).
            self._scheduled = True
            if self._holding is None:
                log.info("holding %d events from ZeroMQ until the store is back", len(drafts))
            self._holding = drafts
            self._hold = self._loop.call_later(self._hold_delay, self._store_again, drafts, more)
            self._hold_delay = min(self._hold_delay * 2, HOLD_MAX)
            return True
        self._holding = None
        self._hold_delay = HOLD_FIRST
        if committed.cancelled() or error is not None:
            log.error("could not store %s", error or "a batch")
        return False

    def _store_again(self, drafts: list[Draft], more: bool) -> None:
        self._hold = None
        self._scheduled = False
        if not self.socket.closed and not self._publish(drafts, more):
            self._next(more)

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
