"""A publisher's link to the bus: its DEALER socket and the one thread that owns it.

ZeroMQ sockets are not thread-safe, so one thread does every socket call: it
says hello on each new connection (the socket's monitor reports each handshake),
sends the outbox's window in order once the bus has answered the hello, hands
the bus's acks to the outbox, and follows the connection's state. ``emit`` only
touches the outbox, and wakes the thread through a pipe when it sleeps.

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

import zmq
from zmq.utils.monitor import parse_monitor_message

from devbus.client.outbox import Outbox, State
from devbus.errors import ConfigError, MalformedInput
from devbus.frames import ACK, decode_ack, encode_hello, seq_frame

__all__ = ["Link"]

POLL_S = 0.1  # how long the thread sleeps with nothing to do (it also checks the connection's state)
BUSY_POLL_S = 0.01  # its pace while the socket has no room (the connection is about to be reported gone)
SEND_CHUNK = 1000  # events sent per turn, between which acks are read
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost per call
SNDMORE = int(zmq.SNDMORE)
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_WATCHED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | _REFUSED


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
        self._monitor = self._socket.get_monitor_socket(_WATCHED)
        try:
            self._socket.connect(outbox.address)
        except zmq.ZMQError as exc:
            self._teardown()
            raise ConfigError(
                f"{outbox.address!r} is not a ZeroMQ address such as tcp://127.0.0.1:8766 ({exc}); check DEVBUS_INGEST"
            ) from exc
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

    def close(self) -> None:
        """Stop the thread and close the socket (what the window still holds is the outbox's to count)."""
        self._stop.set()
        with self._outbox.lock:
            self._idle = True
            self._wake()
        self._thread.join()
        self._teardown()
        os.close(self._wake_in)
        os.close(self._wake_out)

    def _wake(self) -> None:
        """Under the outbox's lock: wake the thread if it sleeps (an event to send, or stop)."""
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
            with outbox.lock:
                if outbox.state is State.CONNECTING and time.monotonic() - self._started > outbox.timeout:
                    outbox.set_away(f"it did not answer within {outbox.timeout:g}s")
                outbox.warn_once_per_outage()
                unsent = outbox.unsent(SEND_CHUNK)
                self._idle = not unsent
            sleep = POLL_S if not unsent else (0.0 if self._send(unsent) else BUSY_POLL_S)

    def _send(self, unsent: list[tuple[int, bytes, bytes]]) -> bool:
        """Hand ``unsent`` to the socket in order; False if it had no room for all of them."""
        socket = self._socket
        last = 0
        try:
            for seq, event_type, body in unsent:
                # Frame by frame with plain-int flags: send_multipart's checks cost more than the send.
                # Past the first frame a message is never refused.
                socket.send(event_type, NOBLOCK | SNDMORE)
                socket.send(body, SNDMORE)
                socket.send(seq_frame(seq))
                last = seq
        except zmq.Again:
            pass
        if last:
            with self._outbox.lock:
                self._outbox.handed(last)
        return last == unsent[-1][0]

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
            with self._outbox.lock:
                self._outbox.acknowledged(ack.seq, resend=ack.resend, rejected=ack.rejected)

    def _follow_connection(self) -> None:
        outbox = self._outbox
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            with outbox.lock:
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    # A new connection: nothing sent before reached this bus; say hello first.
                    outbox.lost_connection()
                    self._hello_due = True
                elif event == zmq.EVENT_DISCONNECTED:
                    outbox.lost_connection()
                    outbox.set_away("it went away")
                elif event == zmq.EVENT_CONNECT_RETRIED:
                    if outbox.state is State.CONNECTING:
                        outbox.set_away("nothing listens there")
                elif event & _REFUSED:
                    outbox.set_away("it refused the connection (is it an older devbus, without acknowledgements?)")

    def _hello(self) -> None:
        with self._outbox.lock:
            next_seq = self._outbox.hello_next()
        try:
            self._socket.send_multipart(encode_hello(self.producer, next_seq), NOBLOCK)
        except zmq.Again:
            return  # the connection is not attached yet: next turn
        self._hello_due = False

    def _teardown(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()
