"""The ZeroMQ backplane of a running bus: ingest and egress listeners in one cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from devbus.bus.inputs.zeromq import Ingest
from devbus.bus.keys import BUDGET, CONNECTIONS, DISPATCHER, ENDPOINTS, FANOUT, METRICS, SETTINGS
from devbus.bus.outputs.egress import Egress

__all__ = ["backplane"]


async def backplane(app: web.Application) -> AsyncIterator[None]:
    """Bind ingest and egress (those configured), run them while the app runs, then close them."""
    settings = app[SETTINGS]
    ingest: Ingest | None = None
    egress: Egress | None = None
    remove_output = None
    try:
        if settings.ingest:
            ingest = Ingest(
                dispatcher=app[DISPATCHER],
                readers=app[FANOUT].laggards,
                metrics=app[METRICS],
                budget=app[BUDGET],
                max_size=settings.max_message,
                token=settings.token,
                message_timeout=settings.body_timeout,
                connections=app[CONNECTIONS],
            )
            app[ENDPOINTS]["ingest"] = await ingest.bind(settings.ingest)
        if settings.egress:
            egress = Egress(
                metrics=app[METRICS],
                budget=app[BUDGET],
                connections=app[CONNECTIONS],
                listener_buffer=settings.egress_buffer,
                message_timeout=settings.body_timeout,
            )
            app[ENDPOINTS]["egress"] = await egress.bind(settings.egress)
            remove_output = app[DISPATCHER].add_output(egress)
        yield
    finally:
        # Ingest first: what it drains still reaches the egress listeners.
        if ingest is not None:
            await ingest.close()
        if remove_output is not None:
            remove_output()
        if egress is not None:
            egress.close()
        app[CONNECTIONS].close()
