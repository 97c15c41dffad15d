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
            try:
                committed = self._dispatcher.publish(drafts)
            except Exception:
                # Never let one bad batch stop the ingest: log it and keep reading.
                log.exception("could not publish %d events from ZeroMQ", len(drafts))
            else:
                if not committed.done():
                    # A message is taken once the store has it: read no more until then.
                    self._scheduled = True
                    committed.add_done_callback(lambda done: self._committed(done, more))
                    return
                self._committed(committed, None)
        self._next(more)

    def _committed(self, committed: asyncio.Future[list[Record]], more: bool | None) -> None:
        if committed.cancelled() or committed.exception() is not None:
            log.error("could not store %s", committed.exception() if not committed.cancelled() else "a batch")
        if more is not None:
            self._scheduled = False
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
