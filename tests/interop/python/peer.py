"""pyzmq as a peer of the bus, for tests/test_zmtp_interop.py (the same contract as peer.c and peer.mjs).

    python peer.py pub|xpub|sub ENDPOINT HEARTBEAT_MS [PREFIX]

A message is one line of its frames in hex, separated by spaces.
- pub: the first stdin line is a warm-up message, sent every 20 ms until the line ``go``
  (a PUB drops what it sends before the bus's subscription arrives); then every line is sent.
- xpub: prints ``subscribed`` once the bus's subscription arrived (XPUB_NODROP: a full
  queue waits instead of dropping), then sends every stdin line.
- sub: subscribes to PREFIX and prints every message it receives.
Every role stops at the end of stdin, closing its socket with a linger so nothing queued is lost.
ZMTP heartbeats are on: a PING every HEARTBEAT_MS, a TTL of thirty and a timeout of ten intervals
(generous, for a busy machine: a bus that never answers still fails in one second).
"""

from __future__ import annotations

import sys

import zmq

WARM_UP_MS = 20


def main(role: str, endpoint: str, heartbeat_ms: int, prefix: str = "") -> None:
    context = zmq.Context()
    socket = context.socket({"pub": zmq.PUB, "xpub": zmq.XPUB, "sub": zmq.SUB}[role])
    socket.setsockopt(zmq.LINGER, 0 if role == "sub" else 10_000)  # a publisher flushes what it queued
    socket.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
    socket.setsockopt(zmq.HEARTBEAT_TTL, heartbeat_ms * 30)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 10)
    if role == "xpub":
        socket.setsockopt(zmq.XPUB_NODROP, 1)
    if role == "sub":
        socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    socket.connect(endpoint)
    try:
        if role == "sub":
            receive(socket)
        else:
            if role == "pub":
                warm_up(socket)
            else:
                assert socket.recv() == b"\x01", "the bus did not subscribe to everything"
                say("subscribed")
            for line in sys.stdin:
                socket.send_multipart(frames(line))
    finally:
        socket.close()
        context.term()


def warm_up(socket: zmq.Socket[bytes]) -> None:
    """Send the first line's message every WARM_UP_MS until stdin says ``go``."""
    warm = frames(sys.stdin.readline())
    poller = zmq.Poller()
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        socket.send_multipart(warm)
        if poller.poll(WARM_UP_MS) and sys.stdin.readline().strip() == "go":
            return


def receive(socket: zmq.Socket[bytes]) -> None:
    """Print every message until stdin ends."""
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if socket in ready:
            say(" ".join(frame.hex() for frame in socket.recv_multipart()))
        elif not sys.stdin.readline():
            return


def frames(line: str) -> list[bytes]:
    return [bytes.fromhex(frame) for frame in line.split()]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
