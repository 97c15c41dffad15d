"""ZeroMQ ingest: senders connect here and the bus reads the ZMTP wire itself.

libzmq would hold an unfinished multipart message without bound and drop a
whole connection for one frame over the limit (see devbus/zmtp.py), so the
bus listens with asyncio and speaks ZMTP 3 itself (``devbus.bus.zmtp_peer``):
each message is bounded as a whole, and a message that breaks a rule is skipped
alone. Two kinds of senders connect:

- PUB and XPUB sockets (any language): the bus is their SUB and takes what they
  send, fire-and-forget as ZeroMQ PUB always is;
- DEALER sockets (the devbus clients, and any sender following the README's wire
  format): the bus is their ROUTER and acknowledges what it stored
  (``inputs/acks.py``).

A message is taken once the store has committed it, so a sender's connection is
not read while a batch it sent is being committed; while the store is away, the
batch is held and stored again (the sender sees backpressure, not loss); during
a burst, every sender waits while subscribers catch up (``inputs/burst.py``).

On stop the ingest reads no more from acknowledged senders (they send it again
to the next bus), reads what PUB senders already wrote until they are quiet,
commits what it read, acknowledges it, and closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.dispatcher import Dispatcher
from devbus.bus.endpoints import Listening, listen
from devbus.bus.inputs.acks import Batch, Producer
from devbus.bus.inputs.burst import BurstGate, Readers
from devbus.bus.inputs.sender import Sender
from devbus.bus.metrics import Metrics
from devbus.bus.store.base import Appended, Claim
from devbus.bus.zmtp_peer import Item, Refusals
from devbus.envelope import Draft
from devbus.errors import StoreUnavailable
from devbus.frames import WireReject, decode_frames, encode_ack
from devbus.zmtp import Rejected, error, message

__all__ = ["Ingest"]

log = logging.getLogger(__name__)

# Bytes read from a sender at a time, so one read is one batch: small enough that a batch
# never buffers much per subscriber, large enough that a burst costs one publish per
# few hundred events.
READ_SIZE = 64 * 1024

# On stop: read until every sender has been quiet this long, for at most DRAIN.
DRAIN = 2.0
DRAIN_QUIET = 0.1
# On stop: how long batches already read may take to be committed. A store that is away
# (Redis down) does not answer in time; closing it then fails those batches, logged and counted.
COMMIT_WAIT = 5.0

# While the store is unreachable a batch taken from a sender is stored again after these
# delays (doubling); that sender is not read meanwhile.
HOLD_FIRST = 0.05
HOLD_MAX = 1.0

# Called with what a batch stored once it is committed (an acknowledged sender's ack).
Then = Callable[[Appended], None]


class Ingest:
    """Accept senders, validate each message, and publish the valid ones in batches."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        readers: Readers,
        metrics: Metrics,
        budget: MemoryBudget,
        max_size: int,
        token: str | None = None,
        message_timeout: float = 30.0,
        connections: ConnectionBudget,
    ) -> None:
        self._dispatcher = dispatcher
        self._connections = connections
        self._message_timeout = message_timeout
        self._metrics = metrics
        self._budget = budget
        self.max_size = max_size
        self.token = token
        self.loop = asyncio.get_running_loop()
        self._listening: Listening | None = None
        self._peers: set[Sender] = set()
        self.read_buffer = memoryview(bytearray(READ_SIZE))  # shared by every sender's reads
        # Every sender waits while the subscribers that keep up catch up.
        self.gate = BurstGate(readers, on_change=self._update_peers)
        self._committing: set[asyncio.Future[Appended]] = set()
        self._hellos: set[asyncio.Task[None]] = set()  # answering acknowledged senders' hellos
        self._store_away = False  # a batch waits for the store to come back (logged once per outage)
        self._closing = False
        self._drained = False  # stopping, and what senders wrote before is read: read no more
        self.reject = Refusals(metrics, what="a ZeroMQ message")
        self.refused = Refusals(metrics, what="a ZeroMQ ingest connection")
        self.last_read = 0.0

    async def bind(self, endpoint: str) -> str:
        """Listen on ``endpoint`` (tcp:// or ipc://); return the address senders should use."""
        self._listening = await listen(
            endpoint, self._peer, role="ingest", option="--ingest", connections=self._connections, refused=self.refused
        )
        return self._listening.address

    def _peer(self) -> Sender:
        return Sender(
            self,
            max_message=self.max_size,
            message_timeout=self._message_timeout,
            read_buffer=self.read_buffer,
            budget=self._budget,
            connections=self._connections,
        )

    async def close(self) -> None:
        """Stop accepting, read what PUB senders already sent (bounded in time), commit and acknowledge, close."""
        if self._listening is not None:
            self._listening.close()
        self._closing = True
        self.gate.stop()
        self._update_peers()  # acknowledged senders are read no more: they send it again to the next bus
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
        self._drained = True
        self._update_peers()
        unfinished = sum(1 for peer in self._peers if peer.producer is None and peer.reader.buffered)
        if unfinished:
            log.warning("stopped with %d ZeroMQ messages only partly received; they are lost", unfinished)
        if self._committing:
            # What was read is committed (and reaches the outputs still open) and acknowledged before
            # the ingest is gone.
            await asyncio.wait(list(self._committing), timeout=COMMIT_WAIT)
        for task in list(self._hellos):
            # Cancelled until it ends: a store call may swallow one cancellation (see store/redis_link.py).
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        for peer in list(self._peers):
            peer.close()

    @property
    def gate_closed(self) -> bool:
        """Whether every sender waits for subscribers to catch up."""
        return self.gate.closed

    def reads(self, peer: Sender) -> bool:
        """Whether ``peer`` may be read now (not while stopping, except PUB senders until drained)."""
        return not self._closing or (peer.producer is None and not self._drained)

    # -- per message -------------------------------------------------------------

    def accept(self, peer: Sender, items: list[Item]) -> None:
        """Validate and publish the messages one read of a PUB ``peer`` brought; count what was refused."""
        drafts: list[Draft] = []
        for item in items:
            if isinstance(item, Rejected):
                self.reject(item.reason, item.text)
                continue
            try:
                drafts.append(decode_frames(item, max_size=self.max_size, token=self.token))
            except WireReject as exc:
                self.reject(exc.reason, str(exc))
        if drafts:
            self.store(peer, drafts, None, None)

    def accept_acknowledged(self, peer: Sender, producer: Producer, items: list[Item]) -> None:
        """Take one read of an acknowledged ``peer``: answer its hello, or store its events and acknowledge them."""
        try:
            batch = producer.take(items)
        except WireReject as exc:  # a hello that says nothing usable: the connection cannot be acknowledged
            self.reject(exc.reason, str(exc))
            peer.write(error(str(exc)))
            peer.close()
            return
        if producer.waiting and peer.welcoming is None:
            task = peer.welcoming = self.loop.create_task(self._welcome(peer, producer))
            self._hellos.add(task)
            task.add_done_callback(self._hellos.discard)
            peer.update()
        elif batch is not None and batch.drafts:
            claim = Claim(producer=producer.id, seqs=tuple(batch.seqs))
            self.store(peer, batch.drafts, claim, lambda _: self._acknowledge(peer, batch))
        elif batch is not None and batch.answered:
            self._acknowledge(peer, batch)

    async def _welcome(self, peer: Sender, producer: Producer) -> None:
        """Answer a producer's hello with its last stored seq (asking the store until it answers)."""
        assert producer.hello is not None
        delay = HOLD_FIRST
        while True:
            try:
                last = await self._dispatcher.producer_seq(producer.hello.producer)
            except StoreUnavailable:
                await asyncio.sleep(delay)  # the store is away: the sender waits, holding its events
                delay = min(delay * 2, HOLD_MAX)
                continue
            break
        peer.write(message(encode_ack(producer.welcome(last))))
        peer.welcoming = None
        peer.update()

    def _acknowledge(self, peer: Sender, batch: Batch) -> None:
        # Through the peer's one write path; a peer that reads none of its acks is read no more
        # once its socket backs up (see Sender.update), so what waits for it stays bounded.
        peer.write(message(encode_ack(batch.ack())))

    def store(self, peer: Sender, drafts: list[Draft], claim: Claim | None, then: Then | None) -> None:
        """Hand ``drafts`` to the store; they are taken (``then`` called, ``peer`` read again) once it has them."""
        self._store(peer, drafts, claim, then, HOLD_FIRST)

    def _store(self, peer: Sender, drafts: list[Draft], claim: Claim | None, then: Then | None, delay: float) -> None:
        try:
            committed = self._dispatcher.publish(drafts, claim)
        except Exception:
            # Never let one bad batch stop the ingest: log it and keep reading.
            log.exception("could not publish %d events from ZeroMQ", len(drafts))
            return
        peer.committing += 1
        peer.update()
        if committed.done() and not committed.cancelled() and committed.exception() is None:
            # Stored at once (memory store). The SSE output flushes a batch two loop turns
            # later (so that requests arriving together share a write); only then can the
            # burst gate tell whether subscribers took it, so this sender waits until then.
            self.loop.call_soon(self.loop.call_soon, self._flushed, peer, committed, then)
            return
        # Read no more from this sender until the store has answered for its batch.
        self._committing.add(committed)
        committed.add_done_callback(lambda done: self._committed(done, peer, drafts, claim, then, delay))

    def _committed(
        self,
        committed: asyncio.Future[Appended],
        peer: Sender,
        drafts: list[Draft],
        claim: Claim | None,
        then: Then | None,
        delay: float,
    ) -> None:
        self._committing.discard(committed)
        error = None if committed.cancelled() else committed.exception()
        if isinstance(error, StoreUnavailable) and not self._closing:
            # Taken from the socket but not stored: hold it and store it again, in order, with
            # backoff; the sender stays unread meanwhile, so it sees backpressure, not loss.
            if not self._store_away:
                self._store_away = True
                log.info("holding events from ZeroMQ until the store is back")
            self.loop.call_later(delay, self._store_again, peer, drafts, claim, then, min(delay * 2, HOLD_MAX))
            return
        self._store_away = False
        if committed.cancelled() or error is not None:
            self._metrics.reject("zmq_store")
            log.error("could not store %d events from ZeroMQ: %s", len(drafts), error or "cancelled")
        elif then is not None:
            then(committed.result())
        # The sender is read again from now: its quiet period (on stop) starts here, not at its last read.
        self.last_read = self.loop.time()
        peer.committing -= 1
        peer.update()
        self.gate.check()

    def _flushed(self, peer: Sender, committed: asyncio.Future[Appended], then: Then | None) -> None:
        if then is not None:
            then(committed.result())
        self.gate.check()
        peer.committing -= 1
        peer.update()

    def _store_again(
        self, peer: Sender, drafts: list[Draft], claim: Claim | None, then: Then | None, delay: float
    ) -> None:
        peer.committing -= 1
        if self._closing:
            self._metrics.reject("zmq_store")
            if claim is None:
                log.error("%d events taken from ZeroMQ were not stored before the bus stopped", len(drafts))
        else:
            self._store(peer, drafts, claim, then, delay)
        peer.update()

    def _update_peers(self) -> None:
        for peer in self._peers:
            peer.update()

    def joined(self, peer: Sender) -> None:
        """Track a sender's connection."""
        self._peers.add(peer)
        peer.update()

    def left(self, peer: Sender) -> None:
        """Forget a sender whose connection closed."""
        self._peers.discard(peer)

    def repeated(self, count: int) -> None:
        """Count events an acknowledged sender sent again after they were taken."""
        self._metrics.repeats.inc(count)
