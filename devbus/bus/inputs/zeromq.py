"""ZeroMQ ingest: senders' PUB sockets connect here and the bus reads the ZMTP wire itself.

libzmq would hold an unfinished multipart message without bound and drop a
whole connection for one frame over the limit (see devbus/zmtp.py), so the
bus listens with asyncio and speaks ZMTP 3 as a SUB peer (``devbus.bus.zmtp_peer``):
each message is bounded as a whole, a message that breaks a rule is skipped
alone, and on stop what senders already wrote is read before the connections
close.

A message is taken once the store has committed it, so a sender's connection is
not read while a batch it sent is being committed; while the store is away, the
batch is held and stored again (the sender sees backpressure, not loss); during
a burst, every sender waits while subscribers catch up (``inputs/burst.py``).
"""

from __future__ import annotations

import asyncio
import logging

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.endpoints import Listening, listen
from devbus.bus.inputs.burst import BurstGate, Readers
from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.bus.zmtp_peer import PUBLISHERS, Refusals, ZmtpPeer
from devbus.envelope import Draft
from devbus.errors import StoreUnavailable
from devbus.frames import WireReject, decode_frames
from devbus.zmtp import Rejected

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

# Bytes read from a sender at a time, so one read is one batch: small enough that a batch
# never buffers much per subscriber, large enough that a burst costs one publish per
# few hundred events.
READ_SIZE = 64 * 1024

# On stop: read until every sender has been quiet this long, for at most DRAIN.
DRAIN = 2.0
DRAIN_QUIET = 0.1

# While the store is unreachable a batch taken from a sender is stored again after these
# delays (doubling); that sender is not read meanwhile.
HOLD_FIRST = 0.05
HOLD_MAX = 1.0

FRAMES = 2  # [type, MessagePack body]


class Ingest:
    """Accept senders, validate each message, and publish the valid ones in batches."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        readers: Readers,
        metrics: Metrics,
        max_size: int,
        token: str | None = None,
        message_timeout: float = 30.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._message_timeout = message_timeout
        self._metrics = metrics
        self._max_size = max_size
        self._token = token
        self.loop = asyncio.get_running_loop()
        self._listening: Listening | None = None
        self._peers: set[_Sender] = set()
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every sender's reads
        # Every sender waits while the subscribers that keep up catch up.
        self.gate = BurstGate(readers, on_change=self._update_peers)
        self._committing: set[asyncio.Future[list[Record]]] = set()
        self._store_away = False  # a batch waits for the store to come back (logged once per outage)
        self._closing = False
        self.reject = Refusals(metrics, what="a ZeroMQ message")
        self.last_read = 0.0

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address senders should use."""
        self._listening = await listen(endpoint, self._peer, role="ingest", option="--ingest")
        return self._listening.address

    def _peer(self) -> _Sender:
        return _Sender(
            self, max_message=self._max_size, message_timeout=self._message_timeout, read_buffer=self.read_buffer
        )

    async def close(self) -> None:
        """Stop accepting, read what senders already sent (bounded in time), then close."""
        if self._listening is not None:
            self._listening.close()
        self._closing = True
        self.gate.stop()
        deadline = self.loop.time() + DRAIN
        self.last_read = self.loop.time()
        while self._peers and self.loop.time() < deadline:
            # Quiet: nothing read for DRAIN_QUIET and no sender waiting for its batch to be committed.
            if self.loop.time() - self.last_read >= DRAIN_QUIET and not self._committing:
                break
            await asyncio.sleep(DRAIN_QUIET / 4)  # polling the quiet period, bounded by DRAIN
        else:
            if self._peers:
                log.warning("ZeroMQ senders were still sending after %g s; what they sent since is not read", DRAIN)
        unfinished = sum(1 for peer in self._peers if peer.reader.buffered)
        for peer in list(self._peers):
            peer.close()
        if unfinished:
            log.warning("stopped with %d ZeroMQ messages only partly received; they are lost", unfinished)
        if self._committing:
            # What was read is committed (and reaches the outputs still open) before the ingest is gone.
            await asyncio.wait(list(self._committing))

    # -- per message -------------------------------------------------------------

    def accept(self, peer: _Sender, messages: list[list[bytes]], rejected: list[Rejected]) -> None:
        """Validate and publish the messages one read of ``peer`` brought; count what was refused."""
        drafts: list[Draft] = []
        for frames in messages:
            try:
                drafts.append(decode_frames(frames, max_size=self._max_size, token=self._token))
            except WireReject as exc:
                self.reject(exc.reason, str(exc))
        for item in rejected:
            self.reject(item.reason, item.text)
        if drafts:
            self._store(peer, drafts, HOLD_FIRST)

    def _store(self, peer: _Sender, drafts: list[Draft], delay: float) -> None:
        """Hand ``drafts`` to the store; they are taken (and ``peer`` read again) once it has them."""
        try:
            committed = self._dispatcher.publish(drafts)
        except Exception:
            # Never let one bad batch stop the ingest: log it and keep reading.
            log.exception("could not publish %d events from ZeroMQ", len(drafts))
            return
        if committed.done() and not committed.cancelled() and committed.exception() is None:
            # Stored at once (memory store). The SSE output flushes a batch two loop turns
            # later (so that requests arriving together share a write); only then can the
            # burst gate tell whether subscribers took it, so this sender waits until then.
            peer.committing += 1
            peer.update()
            self.loop.call_soon(self.loop.call_soon, self._flushed, peer)
            return
        # Read no more from this sender until the store has answered for its batch.
        self._committing.add(committed)
        peer.committing += 1
        peer.update()
        committed.add_done_callback(lambda done: self._committed(done, peer, drafts, delay))

    def _committed(
        self, committed: asyncio.Future[list[Record]], peer: _Sender, drafts: list[Draft], delay: float
    ) -> None:
        self._committing.discard(committed)
        error = None if committed.cancelled() else committed.exception()
        if isinstance(error, StoreUnavailable) and not self._closing:
            # Taken from the socket but not stored: hold it and store it again, in order, with
            # backoff; the sender stays unread meanwhile, so it sees backpressure, not loss.
            if not self._store_away:
                self._store_away = True
                log.info("holding events from ZeroMQ until the store is back")
            self.loop.call_later(delay, self._store_again, peer, drafts, min(delay * 2, HOLD_MAX))
            return
        self._store_away = False
        if committed.cancelled() or error is not None:
            self._metrics.reject("zmq_store")
            log.error("could not store %d events from ZeroMQ: %s", len(drafts), error or "cancelled")
        # The sender is read again from now: its quiet period (on stop) starts here, not at its last read.
        self.last_read = self.loop.time()
        peer.committing -= 1
        peer.update()
        self.gate.check()

    def _flushed(self, peer: _Sender) -> None:
        self.gate.check()
        peer.committing -= 1
        peer.update()

    def _store_again(self, peer: _Sender, drafts: list[Draft], delay: float) -> None:
        peer.committing -= 1
        if self._closing:
            self._metrics.reject("zmq_store")
            log.error("%d events taken from ZeroMQ were not stored before the bus stopped", len(drafts))
        else:
            self._store(peer, drafts, delay)
        peer.update()

    def _update_peers(self) -> None:
        for peer in self._peers:
            peer.update()

    def joined(self, peer: _Sender) -> None:
        """Track a sender's connection."""
        self._peers.add(peer)
        peer.update()

    def left(self, peer: _Sender) -> None:
        """Forget a sender whose connection closed."""
        self._peers.discard(peer)


class _Sender(ZmtpPeer):
    """One sender's connection (a PUB or XPUB socket): messages read at most READ_SIZE at a time."""

    SOCKET_TYPE = b"SUB"
    ACCEPTS = PUBLISHERS
    ROLE = "ingest"

    def __init__(self, ingest: Ingest, *, max_message: int, message_timeout: float, read_buffer: memoryview) -> None:
        super().__init__(
            max_message=max_message, max_frames=FRAMES, message_timeout=message_timeout, read_buffer=read_buffer
        )
        self.ingest = ingest
        self.committing = 0  # batches read from this sender not committed yet

    def update(self) -> None:
        """Read while no batch of ours is being committed and the burst gate is open."""
        self.pause_reading(bool(self.committing) or self.ingest.gate.closed)

    def on_connected(self) -> None:
        self.ingest.joined(self)

    def on_lost(self) -> None:
        self.ingest.left(self)

    def on_ready(self) -> None:
        self.subscribe()  # every topic: the bus takes every event

    def on_read(self) -> None:
        self.ingest.last_read = self.ingest.loop.time()

    def on_messages(self, messages: list[list[bytes]], rejected: list[Rejected]) -> None:
        self.ingest.accept(self, messages, rejected)

    def on_refused(self, kind: str, text: str) -> None:
        self.ingest.reject(f"zmq_{kind}", text)
