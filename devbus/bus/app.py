"""create_app(settings): the whole aiohttp application, for `devbus run` and the tests.

Everything is built here from the settings alone and wired by hand: the store
under the dispatcher, the inputs over it, the outputs it feeds, and what one part
needs of another (the fan-out's reach counts for the HTTP answers, its laggards
for the ZeroMQ ingest, the shared stream for a cluster-wide forward) passed in
explicitly. Views get their state as bound methods; the typed keys in ``keys.py``
hold what the views at this level read (health, metrics, types).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from devbus.bus import views
from devbus.bus.backplane import backplane
from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget, connection_limit
from devbus.bus.dispatcher import Dispatcher
from devbus.bus.guard import Gate, Handler
from devbus.bus.history import History
from devbus.bus.inputs.http import HttpInput
from devbus.bus.inputs.reach import ReachCounts
from devbus.bus.keys import (
    BUDGET,
    CATALOGUE,
    CONNECTIONS,
    DISPATCHER,
    ENDPOINTS,
    FANOUT,
    FORWARDER,
    METRICS,
    SETTINGS,
    STARTED,
)
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.catalogue import Catalogue
from devbus.bus.outputs.forward import Forwarder
from devbus.bus.outputs.sse import EventStream, Fanout
from devbus.bus.settings import Settings
from devbus.bus.store import Store, create_store, shared_stream
from devbus.bus.unrouted import CATCH_ALL, unrouted
from devbus.typefilter import TypeFilter, parse_patterns

__all__ = ["create_app"]


async def _close_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open handlers, so ending the
    # outlets here lets every SSE stream finish instead of holding the exit.
    app[FANOUT].close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    # First in, last out: inputs and outputs start after the store is open and stop before it closes.
    await app[DISPATCHER].start()
    try:
        yield
    finally:
        await app[DISPATCHER].stop()


def _forward(app: web.Application, settings: Settings, store: Store, dispatcher: Dispatcher) -> None:
    forwarder = app[FORWARDER] = Forwarder(
        settings.forward,
        types=TypeFilter(parse_patterns(settings.forward_types)),
        limit=settings.forward_queue,
        metrics=app[METRICS],
    )
    if not forwarder.targets:
        return
    app.cleanup_ctx.append(forwarder.run)
    shared = shared_stream(store)
    if shared is None:
        dispatcher.add_output(forwarder)
    else:
        # Buses sharing a log forward each event once between them, not once each. (A
        # shared stream means the Redis extra is installed, which the feed needs.)
        from devbus.bus.outputs.forward.cluster import ClusterFeed

        feed = ClusterFeed(shared, forwarder)
        dispatcher.add_output(feed)  # wakes the feed when the stream has new entries
        app.cleanup_ctx.append(feed.run)


def create_app(settings: Settings | None = None) -> web.Application:
    """Build the bus: dispatcher, routes, guards and background services."""
    settings = settings or Settings()
    gate = Gate(settings)
    # No middleware: every route is added behind the gate (Gate.guarded says why).
    app = web.Application(client_max_size=settings.max_body)
    metrics = Metrics()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[STARTED] = time.monotonic()
    app[ENDPOINTS] = {}
    # Built from the open-file limit as it is now: `devbus run` raises it before building the app.
    app[CONNECTIONS] = ConnectionBudget(
        connection_limit(settings.max_connections), idle_timeout=settings.zmq_idle_timeout, metrics=metrics
    )
    store = create_store(
        settings.store, history=settings.history, history_bytes=settings.history_bytes, key=settings.store_key
    )
    dispatcher = app[DISPATCHER] = Dispatcher(store, metrics=metrics)
    metrics.store_up.labels(store.name).set_function(lambda: 1 if store.status()["state"] == "up" else 0)
    metrics.count_from(
        "devbus_store_skipped",
        "Records read back from the store that were not events (another program wrote them), skipped, by reason.",
        "reason",
        lambda: store.status().get("skipped", {}).get("reasons", {}),
    )
    metrics.count_from(
        "devbus_store_restarts",
        "Times a store's background task (the Redis reader, the SQLite file's watcher) failed and was started again.",
        "task",
        lambda: {
            name: part["restarts"]
            for name, part in store.status().items()
            if isinstance(part, dict) and "restarts" in part
        },
    )
    app.cleanup_ctx.append(_store)

    budget = app[BUDGET] = MemoryBudget(settings.memory_budget, metrics=metrics)
    fanout = app[FANOUT] = Fanout(
        subscriber_buffer=settings.subscriber_buffer,
        max_subscribers=settings.max_subscribers,
        metrics=metrics,
        budget=budget,
    )
    dispatcher.add_output(fanout)
    catalogue = app[CATALOGUE] = Catalogue(metrics)
    dispatcher.add_output(catalogue)
    app.cleanup_ctx.append(catalogue.seeded_from(store))
    _forward(app, settings, store, dispatcher)

    # The HTTP answers say how many subscribers each event reached: the fan-out tells them.
    reach = ReachCounts(now=fanout.would_reach)
    fanout.report_to(reach)
    inputs = HttpInput(dispatcher, reach, max_body=settings.max_body, body_timeout=settings.body_timeout)
    events = EventStream(fanout, store, now=dispatcher.now, heartbeat=settings.heartbeat, retry_ms=settings.retry_ms)
    api = settings.api
    for name, take in (("webhook", inputs.webhook), ("trigger", inputs.trigger), ("batch", inputs.batch)):
        app.router.add_post(f"{api}/{name}", gate.guarded(take, json_body=True), expect_handler=gate.expect_continue)
    reads: list[tuple[str, Handler]] = [
        (f"{api}/events", events.handle),
        (f"{api}/history", History(store, max_limit=settings.history).handle),
        (f"{api}/health", views.health),
        (f"{api}/types", views.types),
        ("/metrics", views.metrics),
        ("/", views.static_file("dashboard.html", prefix=api)),
    ]
    reads += [
        (f"/{name}", views.static_file(name, prefix=api)) for name in ("dashboard.js", "devbus.js", "devbus.d.ts")
    ]
    for path, read in reads:
        app.router.add_get(path, gate.guarded(read))
    app.router.add_route("*", CATCH_ALL, gate.guarded(unrouted))
    app.on_response_prepare.append(gate.add_cors_headers)
    app.on_shutdown.append(_close_streams)
    if settings.ingest or settings.egress:
        app.cleanup_ctx.append(backplane)
    return app
