"""One sender's connection to the ZeroMQ ingest: a PUB or XPUB socket, or an acknowledged DEALER.

The ingest (``inputs/zeromq.py``) decides what to do with what a connection
brings; the connection decides when it is read (:meth:`Sender.update`): never
while a batch of its own is being committed, while the burst gate is closed or
the ingest is stopping, nor, for an acknowledged sender, while its hello waits
for an answer. Like every ZMTP peer, it is not read either while its socket does
not take what is written to it (``zmtp_peer.py``): a sender that reads none of its
acks (or PONGs) is read no more, so what waits for it stays bounded.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.inputs.acks import Producer
from devbus.bus.zmtp_peer import PUBLISHERS, Item, ZmtpPeer

__all__ = ["FRAMES", "IngestSide", "Sender"]

FRAMES = 2  # [type, MessagePack body]
ACKED_FRAMES = 3  # [type, MessagePack body, seq] from a DEALER
DEALER = b"DEALER"


class IngestSide(Protocol):
    """What a connection needs of the ingest it belongs to."""

    max_size: int
    token: str | None
    last_read: float
    loop: asyncio.AbstractEventLoop

    @property
    def gate_closed(self) -> bool:
        """Whether every sender waits for subscribers to catch up."""

    def reads(self, peer: Sender) -> bool:
        """Whether ``peer`` may be read now."""

    def joined(self, peer: Sender) -> None:
        """Track a connection."""

    def left(self, peer: Sender) -> None:
        """Forget a connection."""

    def accept(self, peer: Sender, items: list[Item]) -> None:
        """Take one read of a PUB sender."""

    def accept_acknowledged(self, peer: Sender, producer: Producer, items: list[Item]) -> None:
        """Take one read of an acknowledged sender."""

    def reject(self, reason: str, text: str) -> None:
        """Count (and log once per reason a minute) a message refused."""

    def refused(self, reason: str, text: str) -> None:
        """Count (and log once per reason a minute) a connection refused or closed."""

    def repeated(self, count: int) -> None:
        """Count events an acknowledged sender sent again."""


class Sender(ZmtpPeer):
    """One sender's connection: a PUB or XPUB socket, or an acknowledged DEALER; read at most READ_SIZE at a time."""

    SOCKET_TYPE = b"SUB"
    ACCEPTS = PUBLISHERS | {DEALER}
    ROLE = "ingest"

    def __init__(
        self,
        ingest: IngestSide,
        *,
        max_message: int,
        message_timeout: float,
        read_buffer: memoryview,
        budget: MemoryBudget,
        connections: ConnectionBudget,
    ) -> None:
        super().__init__(
            max_message=max_message,
            max_frames=FRAMES,
            message_timeout=message_timeout,
            read_buffer=read_buffer,
            budget=budget,
            connections=connections,
        )
        self.ingest = ingest
        self.committing = 0  # batches read from this sender not committed yet
        self.producer: Producer | None = None  # for an acknowledged sender
        self.welcoming: asyncio.Task[None] | None = None  # answering its hello

    def update(self) -> None:
        """Read while no batch of ours is being committed, the burst gate is open, and, for an acknowledged
        sender, its hello is answered."""
        ingest = self.ingest
        paused = bool(self.committing) or ingest.gate_closed or not ingest.reads(self)
        if self.producer is not None:
            paused = paused or self.producer.waiting
        self.pause_reading(paused)

    def socket_type_for(self, peer_type: bytes) -> bytes:
        return b"ROUTER" if peer_type == DEALER else self.SOCKET_TYPE

    def on_connected(self) -> None:
        self.ingest.joined(self)

    def on_lost(self) -> None:
        self.ingest.left(self)

    def on_ready(self) -> None:
        if self.peer_type == DEALER:
            ingest = self.ingest
            self.producer = Producer(
                max_size=ingest.max_size, token=ingest.token, reject=ingest.reject, repeated=ingest.repeated
            )
            self.reader.max_frames = ACKED_FRAMES
            self.update()
        else:
            self.subscribe()  # every topic: the bus takes every event

    def on_read(self) -> None:
        self.ingest.last_read = self.ingest.loop.time()

    def on_messages(self, items: list[Item]) -> None:
        if self.producer is not None:
            self.ingest.accept_acknowledged(self, self.producer, items)
        else:
            self.ingest.accept(self, items)

    def on_refused(self, kind: str, text: str) -> None:
        self.ingest.refused(f"zmq_{kind}", text)
