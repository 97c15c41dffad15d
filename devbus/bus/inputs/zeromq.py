"""ZeroMQ ingest: senders' PUB sockets connect here and the bus reads the ZMTP wire itself.

libzmq would hold an unfinished multipart message without bound and drop a
whole connection for one frame over the limit (see devbus/zmtp.py), so the
bus listens with asyncio and speaks ZMTP 3 as a SUB peer: each message is
bounded as a whole, a message that breaks a rule is skipped alone, and on stop
what senders already wrote is read before the connections close.
"""

from __future__ import annotations

import asyncio
import logging

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.endpoints import Listening, listen
from devbus.bus.inputs.burst import BurstGate, Readers
from devbus.bus.metrics import Metrics
from devbus.bus.record import Record
from devbus.envelope import Draft
from devbus.errors import StoreUnavailable
from devbus.frames import WireReject, decode_frames
from devbus.zmtp import GREETING, FrameReader, Greeting, HandshakeError, Rejected, check_ready, pong, ready

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

# Acknowledgement: a message is taken once the store has committed it, so a
# sender's connection is not read while a batch it sent is being committed.
# Flow control for bursts: see inputs/burst.py.

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

HANDSHAKE_TIMEOUT = 10.0  # seconds a sender has to greet and say READY before it is closed
SUBSCRIBE_ALL = b"\x00\x01\x01"  # a one-byte message frame: subscribe to every topic (ZMTP 3.0)
PUBLISHERS = frozenset({b"PUB", b"XPUB"})
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
        self.message_timeout = message_timeout
        self._metrics = metrics
        self._max_size = max_size
        self._token = token
        self._loop = asyncio.get_running_loop()
        self._listening: Listening | None = None
        self._peers: set[_Peer] = set()
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every sender's reads
        # Every sender waits while the subscribers that keep up catch up.
        self.gate = BurstGate(readers, on_change=self._update_peers)
        self._committing: set[asyncio.Future[list[Record]]] = set()
        self._store_away = False  # a batch waits for the store to come back (logged once per outage)
        self._closing = False
        self._logged: set[str] = set()
        self.last_read = 0.0

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address senders should use."""
        self._listening = await listen(endpoint, self._peer, role="ingest", option="--ingest")
        return self._listening.address

    def _peer(self) -> _Peer:
        return _Peer(self)

    async def close(self) -> None:
        """Stop accepting, read what senders already sent (bounded in time), then close."""
        if self._listening is not None:
            self._listening.close()
        self._closing = True
        self.gate.stop()
        deadline = self._loop.time() + DRAIN
        self.last_read = self._loop.time()
        while self._peers and self._loop.time() < deadline:
            # Quiet: nothing read for DRAIN_QUIET and no sender waiting for its batch to be committed.
            if self._loop.time() - self.last_read >= DRAIN_QUIET and not self._committing:
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

    def accept(self, peer: _Peer, messages: list[list[bytes]], rejected: list[Rejected]) -> None:
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

    def _store(self, peer: _Peer, drafts: list[Draft], delay: float) -> None:
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
            self._loop.call_soon(self._loop.call_soon, self._flushed, peer)
            return
        # Read no more from this sender until the store has answered for its batch.
        self._committing.add(committed)
        peer.committing += 1
        peer.update()
        committed.add_done_callback(lambda done: self._committed(done, peer, drafts, delay))

    def _committed(
        self, committed: asyncio.Future[list[Record]], peer: _Peer, drafts: list[Draft], delay: float
    ) -> None:
        self._committing.discard(committed)
        error = None if committed.cancelled() else committed.exception()
        if isinstance(error, StoreUnavailable) and not self._closing:
            # Taken from the socket but not stored: hold it and store it again, in order, with
            # backoff; the sender stays unread meanwhile, so it sees backpressure, not loss.
            if not self._store_away:
                self._store_away = True
                log.info("holding events from ZeroMQ until the store is back")
            self._loop.call_later(delay, self._store_again, peer, drafts, min(delay * 2, HOLD_MAX))
            return
        self._store_away = False
        if committed.cancelled() or error is not None:
            self._metrics.reject("zmq_store")
            log.error("could not store %d events from ZeroMQ: %s", len(drafts), error or "cancelled")
        # The sender is read again from now: its quiet period (on stop) starts here, not at its last read.
        self.last_read = self._loop.time()
        peer.committing -= 1
        peer.update()
        self.gate.check()

    def _flushed(self, peer: _Peer) -> None:
        self.gate.check()
        peer.committing -= 1
        peer.update()

    def _store_again(self, peer: _Peer, drafts: list[Draft], delay: float) -> None:
        peer.committing -= 1
        if self._closing:
            self._metrics.reject("zmq_store")
            log.error("%d events taken from ZeroMQ were not stored before the bus stopped", len(drafts))
        else:
            self._store(peer, drafts, delay)
        peer.update()

    def reject(self, reason: str, text: str) -> None:
        """Count a refused message (or connection); log the first of each kind."""
        self._metrics.reject(reason)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("refused a ZeroMQ message (%s): %s; further ones are only counted", reason, text)
        else:
            log.debug("refused a ZeroMQ message (%s): %s", reason, text)

    def _update_peers(self) -> None:
        for peer in self._peers:
            peer.update()

    def joined(self, peer: _Peer) -> None:
        """Track a sender's connection."""
        self._peers.add(peer)
        peer.update()

    def left(self, peer: _Peer) -> None:
        """Forget a sender whose connection closed."""
        self._peers.discard(peer)


class _Peer(asyncio.BufferedProtocol):
    """One sender's connection: greeting, READY, then messages, read at most READ_SIZE at a time."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.reader = FrameReader(max_message=ingest._max_size, max_frames=FRAMES)
        self.transport: asyncio.Transport | None = None
        self._greeting = Greeting()
        self._ready = False
        self._paused = False
        self.committing = 0  # batches read from this sender not committed yet
        self._deadline: asyncio.TimerHandle | None = None  # for the handshake, then for a message in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(GREETING + ready(b"SUB"))
        self.ingest.joined(self)
        self._deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ingest.left(self)
        self.transport = None
        if self._deadline is not None:
            self._deadline.cancel()

    def _too_slow(self) -> None:
        if self._ready:
            self.ingest.reject(
                "zmq_timeout",
                f"closed a connection whose message took over {self.ingest.message_timeout:g} s (--body-timeout)",
            )
        else:
            self.ingest.reject(
                "zmq_handshake", f"closed a connection that sent no READY within {HANDSHAKE_TIMEOUT:g} s"
            )
        self.close()

    def _time_message(self) -> None:
        # A message in progress holds up to --max-message: it must finish in bounded time.
        if not self._ready:
            return
        if not self.reader.in_progress:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(self.ingest.message_timeout, self._too_slow)

    def update(self) -> None:
        """Read while no batch of ours is being committed and subscribers are not being waited for."""
        if self.transport is None:
            return
        paused = bool(self.committing) or self.ingest.gate.closed
        if paused != self._paused:
            self._paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.ingest.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # asyncio fills the buffer and calls this at once, so every sender can share one.
        self.data_received(bytes(self.ingest.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.ingest.last_read = self.ingest._loop.time()
        try:
            rest = self._greeting.take(data)
            if rest is None:
                return
            messages: list[list[bytes]] = []
            rejected: list[Rejected] = []
            for item in self.reader.feed(rest):
                if isinstance(item, list):
                    messages.append(item)
                elif isinstance(item, Rejected):
                    rejected.append(item)
                else:
                    self._command(*item)
            if not self._ready and messages:
                raise HandshakeError("sent a message before READY")
            if messages or rejected:
                self.ingest.accept(self, messages, rejected)
            self._time_message()
        except HandshakeError as exc:
            self.ingest.reject("zmq_handshake", f"closed a connection: {exc}")
            self.close()

    def _command(self, name: bytes, body: bytes) -> None:
        assert self.transport is not None
        if name == b"READY" and not self._ready:
            check_ready(body, allowed=PUBLISHERS, role="ingest")
            self._ready = True
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self.transport.write(SUBSCRIBE_ALL)
        elif name == b"PING":
            self.transport.write(pong(body))
