"""A publisher's link to the bus: its DEALER socket, the window of unacknowledged events, and the thread.

ZeroMQ sockets are not thread-safe, so one thread does every socket call: it
numbers what ``emit`` put in the outbox (1, 2, 3, … for the publisher's life),
says hello on each new connection (the socket's monitor reports each
handshake), sends the window in order once the bus has answered the hello,
removes what the bus acknowledges, goes back to what the bus asks for again,
and follows the connection's state. ``emit`` only appends to the outbox, and
wakes the thread through a pipe when it sleeps.

The socket sets ZMQ_IMMEDIATE: nothing is queued for a connection not yet made,
and what was queued for one that breaks is thrown away with it (it is still in
the window, unacknowledged, and goes out again after the next hello), so the
hello is the first message on every connection.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections import deque

import zmq
from zmq.utils.monitor import parse_monitor_message

from devbus.client.outbox import Outbox, State
from devbus.defaults import ZMQ_HEARTBEAT_MS, ZMQ_HEARTBEAT_TIMEOUT_MS
from devbus.errors import ConfigError, MalformedInput
from devbus.frames import ACK, Ack, decode_ack, encode_hello, seq_frame

__all__ = ["Link"]

POLL_S = 0.1  # how long the thread sleeps with nothing to do (it also checks the connection's state)
BUSY_POLL_S = 0.01  # its pace while the socket has no room (the connection is about to be reported gone)
SEND_CHUNK = 1000  # events sent per turn, between which acks are read
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost per call
SNDMORE = int(zmq.SNDMORE)
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _REFUSED

# One event in the window: its seq (and that seq as the third frame), its type frame and body frame.
Held = tuple[int, bytes, bytes, bytes]


class Link:
    """The DEALER connected to ``outbox.address`` and the thread that sends, says hello and reads acks."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        # Random per publisher and kept for its lifetime: the bus keeps the last seq it stored per producer.
        self.producer = secrets.token_urlsafe(16)
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        # The window bounds what is in flight; the socket's queue never refuses less.
        self._socket.setsockopt(zmq.SNDHWM, outbox.hold + 16)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_MS)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        self._monitor = self._socket.get_monitor_socket(_WATCHED)
        try:
            self._socket.connect(outbox.address)
        except zmq.ZMQError as exc:
            self._teardown()
            raise ConfigError(
                f"{outbox.address!r} is not a ZeroMQ address such as tcp://127.0.0.1:8766 ({exc}); check DEVBUS_INGEST"
            ) from exc
        self._window: deque[Held] = deque()  # unacknowledged, in order
        self._unsent: deque[Held] = deque()  # the end of the window not handed to the socket on this connection
        self._next_seq = 1
        self._wake_in, self._wake_out = os.pipe()
        os.set_blocking(self._wake_out, False)
        self._idle = False
        self._hello_due = False
        self._poller = zmq.Poller()
        for watched in (self._socket, self._monitor, self._wake_in):
            self._poller.register(watched, zmq.POLLIN)
        self._started = time.monotonic()
        self._stop = threading.Event()
        outbox.wake = self._wake
        self._thread = threading.Thread(target=self._run, name=f"devbus-publisher {outbox.address}", daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Stop the thread and close the socket; return how many events were never acknowledged."""
        self._stop.set()
        self._idle = True
        self._wake()
        self._thread.join()
        self._teardown()
        os.close(self._wake_in)
        os.close(self._wake_out)
        return len(self._window) + len(self._outbox.incoming)

    def _wake(self) -> None:
        """Wake the thread if it sleeps (after an emit appended, or to stop)."""
        # The thread says it is idle before it looks at the outbox a last time, so an
        # append it did not see finds it idle here: no wake-up is lost.
        if self._idle:
            self._idle = False
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_out, b"w")

    def _run(self) -> None:
        outbox = self._outbox
        sleep = 0.0
        while not self._stop.is_set():
            ready = dict(self._poller.poll(int(sleep * 1000)))
            if self._monitor in ready:
                self._follow_connection()
            if self._wake_in in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_in, 4096)
            if self._socket in ready:
                self._read_acks()
            if self._hello_due:
                self._hello()
            if outbox.state is State.CONNECTING and time.monotonic() - self._started > outbox.timeout:
                with outbox.lock:
                    outbox.set_away(f"it did not answer within {outbox.timeout:g}s")
            outbox.warn_once_per_outage()
            self._take_incoming()
            if outbox.state is State.UP and self._unsent:
                sleep = 0.0 if self._send() else BUSY_POLL_S
            else:
                self._idle = True
                # Looked at after saying so: an emit that came before is seen here, one after wakes us.
                sleep = 0.0 if outbox.incoming else POLL_S
                self._idle = not outbox.incoming

    def _take_incoming(self) -> None:
        """Number what emit handed over, into the window, to be sent."""
        incoming, window, unsent = self._outbox.incoming, self._window, self._unsent
        seq = self._next_seq
        while incoming:
            event_type, body = incoming.popleft()
            held = (seq, seq_frame(seq), event_type, body)
            window.append(held)
            unsent.append(held)
            seq += 1
        self._next_seq = seq
        self._outbox.in_flight = len(window)

    def _send(self) -> bool:
        """Hand the next unsent events to the socket in order; False if it had no room for them."""
        socket, unsent = self._socket, self._unsent
        send = socket.send
        try:
            for _ in range(min(SEND_CHUNK, len(unsent))):
                _, seq, event_type, body = unsent[0]
                # Frame by frame with plain-int flags: send_multipart's checks cost more than the send.
                # Past the first frame a message is never refused.
                send(event_type, NOBLOCK | SNDMORE)
                send(body, SNDMORE)
                send(seq)
                unsent.popleft()
        except zmq.Again:
            return False
        return True

    def _resend_after(self, seq: int) -> None:
        """Send again, in order, everything in the window after ``seq``."""
        self._unsent = deque(held for held in self._window if held[0] > seq)

    def _read_acks(self) -> None:
        while True:
            try:
                frames = self._socket.recv_multipart(NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or frames[0] != ACK:
                continue  # nothing else is sent to a producer; a future bus may say more
            try:
                ack = decode_ack(frames[1])
            except MalformedInput:
                continue
            self._acknowledged(ack)

    def _acknowledged(self, ack: Ack) -> None:
        """The bus settled everything up to ``ack.seq`` (and, with ``resend``, wants what follows again)."""
        outbox, window = self._outbox, self._window
        while window and window[0][0] <= ack.seq:
            window.popleft()
        outbox.in_flight = len(window)
        for seq, reason, text in ack.rejected:
            outbox.refused(seq, reason, text)
        if ack.resend:
            # Go back: what was sent after ack.seq on this connection was not taken.
            self._resend_after(ack.seq)
        with outbox.lock:
            if ack.resend:
                outbox.set_up()
            outbox.changed.notify_all()

    def _follow_connection(self) -> None:
        outbox = self._outbox
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED):
                # Nothing sent on the connection before is acknowledged any more: send it again after the hello.
                self._resend_after(0)
            with outbox.lock:
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._hello_due = True  # the first message on a new connection
                elif event == zmq.EVENT_DISCONNECTED:
                    outbox.set_away("it went away")
                elif event == zmq.EVENT_CONNECT_RETRIED:
                    if outbox.state is State.CONNECTING:
                        outbox.set_away("nothing listens there")
                elif event & _REFUSED:
                    outbox.set_away("it refused the connection (is it an older devbus, without acknowledgements?)")

    def _hello(self) -> None:
        first = self._window[0][0] if self._window else self._next_seq
        try:
            self._socket.send_multipart(encode_hello(self.producer, first), NOBLOCK)
        except zmq.Again:
            return  # the connection is not attached yet: next turn
        self._hello_due = False

    def _teardown(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()
