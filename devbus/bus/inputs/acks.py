"""The bus's side of acknowledged ZeroMQ publishing: one producer's connection, read in seq order.

A devbus Publisher (or any sender following the README's wire format) connects a
DEALER, says who it is (``devbus.hello``: its producer id and the first seq it
still holds) and numbers its events 1, 2, 3, … in a third frame. The bus answers
the hello with the producer's last stored seq, read from the store, and asks for
everything after it (``resend``); from then on it takes the seqs of that
connection in order, and after each read's batch is committed it acknowledges
the highest seq settled (stored, or refused for good and listed once in
``rejected``). The store drops a (producer, seq) it already has, so a resend
after any failure stores nothing twice.

On one connection, :class:`Producer` keeps the next seq to take:

- a lower seq is a repeat (the store has it): skipped, counted;
- a higher one is a gap (events after a reconnect that followed others the bus
  never read, or were sent before the sender learnt where to resume): nothing
  is taken, and the bus asks once for everything after the last seq settled;
  until the asked-for seq arrives, the rest is skipped.
- events before the hello is answered are skipped the same way: the sender
  resends them when it learns where to resume.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from devbus.envelope import Draft
from devbus.frames import HELLO, SEQ_SIZE, Ack, Hello, WireReject, decode_event, decode_hello
from devbus.zmtp import Rejected

__all__ = ["Batch", "Producer"]

NOT_SEQUENCED = "an acknowledged sender's event is [type, MessagePack body, seq as 8 bytes big-endian, from 1]"

_seq_frame = struct.Struct(">Q").pack


class Batch:
    """What one read of a producer's connection brought: drafts to store, refusals, and the seq it settles."""

    __slots__ = ("drafts", "rejected", "repeats", "resend", "seqs", "settled")

    def __init__(self) -> None:
        self.drafts: list[Draft] = []
        self.seqs: Sequence[int] = []  # one per draft, increasing
        self.rejected: list[tuple[int, str, str]] = []
        self.settled = 0  # every seq up to this is stored or refused once the drafts are committed
        self.resend = False  # ask for everything after ``settled`` again
        self.repeats = 0  # seqs taken before, sent again

    @property
    def answered(self) -> bool:
        """Whether the sender is owed an ack for this read even if it stored nothing."""
        return bool(self.drafts or self.rejected or self.resend or self.repeats)

    def ack(self) -> Ack:
        """The acknowledgement to send once the drafts are committed."""
        return Ack(self.settled, resend=self.resend, rejected=self.rejected)


class Producer:
    """One acknowledged sender's connection: who it is, the next seq it takes, whether it waits for a resend.

    ``reject`` counts (and logs once per reason) what the bus refuses, as for any
    ZeroMQ message; ``repeated`` counts seqs skipped because they were taken before.
    """

    def __init__(
        self,
        *,
        max_size: int,
        token: str | None,
        reject: Callable[[str, str], None],
        repeated: Callable[[int], None],
    ) -> None:
        self._max_size = max_size
        self._token = token
        self._reject = reject
        self._repeated = repeated
        self.id: str | None = None
        self.hello: Hello | None = None  # read, and not answered yet
        self.expected = 0  # the next seq taken (once the hello is answered)
        self._resending = False

    @property
    def waiting(self) -> bool:
        """Whether its hello is read and not answered yet (nothing more is read meanwhile)."""
        return self.hello is not None

    def welcome(self, last: int) -> Ack:
        """Answer the hello with ``last``, the producer's last stored seq: take what follows, sent again."""
        assert self.hello is not None
        # A sender that holds nothing before ``next`` had it all acknowledged (by a bus whose
        # memory store is gone, or that forgot this producer): what it still holds comes next.
        settled = max(last, self.hello.next - 1)
        self.id = self.hello.producer
        self.hello = None
        self.expected = settled + 1
        self._resending = True
        return Ack(settled, resend=True)

    def take(self, items: list[list[bytes] | Rejected]) -> Batch | None:
        """Sort one read in seq order; None if it held no event for this producer yet (or a hello to answer)."""
        if self.id is None:
            if self.hello is None:
                self._take_hello(items)
            return None  # events before the hello is answered are resent after it
        batch = Batch()
        if not self._resending and self._take_in_order(batch, items):
            return batch
        drafts: list[Draft] = batch.drafts
        seqs: list[int] = []
        batch.seqs = seqs
        max_size, token = self._max_size, self._token
        # Locals, written back at the end: a read that is not in order (a resend, a refusal) may be long.
        expected, resending = self.expected, self._resending
        for item in items:
            if isinstance(item, Rejected):  # by the reader (too large, too many frames), before its seq
                # could be read: in order, it is the one expected; out of order, it is resent later.
                if not resending:
                    self._settle(batch, expected, item.reason, item.text)
                    expected += 1
                continue
            if len(item) == 3 and len(item[2]) == SEQ_SIZE:
                seq = int.from_bytes(item[2], "big")
            elif item[0] == HELLO:
                continue  # one hello per connection: a second one changes nothing
            else:
                if not resending:
                    self._settle(batch, expected, "zmq_frames", NOT_SEQUENCED)
                    expected += 1
                continue
            if seq != expected:
                if seq < expected:
                    batch.repeats += 1
                elif not resending:
                    resending = batch.resend = True
                continue
            resending = False
            try:
                draft = decode_event(item[0], item[1], max_size=max_size, token=token)
            except WireReject as exc:
                self._settle(batch, seq, exc.reason, str(exc))
            else:
                drafts.append(draft)
                seqs.append(seq)
            expected += 1
        self.expected, self._resending = expected, resending
        if batch.repeats:
            self._repeated(batch.repeats)
        batch.settled = expected - 1
        return batch

    def _take_in_order(self, batch: Batch, items: list[list[bytes] | Rejected]) -> bool:
        """Take a read that is exactly the next seqs, each a valid event (what a sender nearly always
        sends); False, having taken nothing, for anything else, which :meth:`take` sorts one by one.

        Checked a read at a time (one comparison of its seq frames with the seqs expected,
        one comprehension of decodes) rather than event by event: measured on reads of 64 KiB,
        sorting cost 15.5k instructions an event, this 14.4k, less than taking a PUB sender's
        message (14.8k); nearly all of it is decoding.
        """
        expected = self.expected
        end = expected + len(items)
        messages = [item for item in items if isinstance(item, list) and len(item) == 3]
        # One seq frame per item, each the next seq's 8 bytes: with a refusal or a hello among
        # the items, there are fewer seq frames than seqs.
        if [frames[2] for frames in messages] != list(map(_seq_frame, range(expected, end))):
            return False  # a refusal, a hello, a repeat, a gap, or a seq frame that is not 8 bytes
        max_size, token = self._max_size, self._token
        try:
            batch.drafts = [decode_event(head, body, max_size=max_size, token=token) for head, body, _ in messages]
        except WireReject:
            return False  # refused for good: settled, in order, by the slow path
        batch.seqs = range(expected, end)
        batch.settled = end - 1
        self.expected = end
        return True

    def _settle(self, batch: Batch, seq: int, reason: str, text: str) -> None:
        """Refuse ``seq`` for good: counted here, reported in the ack, never taken again."""
        self._reject(reason, text)
        batch.rejected.append((seq, reason, text))

    def _take_hello(self, items: list[list[bytes] | Rejected]) -> None:
        for item in items:
            if isinstance(item, list) and item[0] == HELLO and len(item) == 2:
                self.hello = decode_hello(item[1])  # WireReject: the caller refuses the connection
                return
