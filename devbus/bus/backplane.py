"""The ZeroMQ backplane of a running bus: ingest and egress sockets in one cleanup context."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import zmq
from aiohttp import web

from devbus.bus.inputs.zeromq import Ingest
from devbus.bus.keys import DISPATCHER, ENDPOINTS, FANOUT, METRICS, SETTINGS
from devbus.bus.outputs.egress import Egress
from devbus.errors import ConfigError

__all__ = ["EGRESS_HWM", "backplane"]

log = logging.getLogger(__name__)

LINGER_MS = 100
# Egress messages queued per listener before ZeroMQ drops for that listener only.
EGRESS_HWM = 100_000


def _bind(socket: zmq.Socket[bytes], endpoint: str, *, role: str, option: str) -> str:
    """Bind and return the resolved address (``tcp://127.0.0.1:*`` becomes a real port)."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"Cannot bind the ZeroMQ {role} socket to {endpoint}: {exc}; pass another {option}") from exc
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


async def backplane(app: web.Application) -> AsyncIterator[None]:
    """Bind ingest and egress (those configured), run them while the app runs, then close them."""
    settings = app[SETTINGS]
    if not settings.ingest and not settings.egress:
        yield
        return
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    ingest: Ingest | None = None
    egress: Egress | None = None
    remove_listener = None
    try:
        if settings.ingest:
            sub = context.socket(zmq.SUB)
            sockets.append(sub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.setsockopt(zmq.RCVHWM, settings.ingest_queue)
            # A frame over the limit makes ZeroMQ drop that sender's connection
            # before the bytes are buffered; decode_frames checks the whole message.
            sub.setsockopt(zmq.MAXMSGSIZE, settings.max_message)
            app[ENDPOINTS]["ingest"] = _bind(sub, settings.ingest, role="ingest", option="--ingest")
            ingest = Ingest(
                sub,
                dispatcher=app[DISPATCHER],
                backlog=app[FANOUT].backlog,
                metrics=app[METRICS],
                max_size=settings.max_message,
                token=settings.token,
            )
            ingest.start()
        if settings.egress:
            pub = context.socket(zmq.XPUB)
            sockets.append(pub)
            pub.setsockopt(zmq.SNDHWM, EGRESS_HWM)
            app[ENDPOINTS]["egress"] = _bind(pub, settings.egress, role="egress", option="--egress")
            egress = Egress(pub, metrics=app[METRICS])
            egress.start()
            remove_listener = app[DISPATCHER].add_output(egress)
        yield
    finally:
        if ingest is not None:
            ingest.stop()
        if egress is not None:
            egress.stop()
        if remove_listener is not None:
            remove_listener()
        for socket in sockets:
            socket.close(linger=LINGER_MS)
        with contextlib.suppress(zmq.ZMQError):
            context.term()
