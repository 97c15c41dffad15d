"""Typed keys for the shared state of the aiohttp app, declared in one place."""

from __future__ import annotations

from aiohttp import web

from devbus.bus.budget import MemoryBudget
from devbus.bus.connection_budget import ConnectionBudget
from devbus.bus.dispatcher import Dispatcher
from devbus.bus.metrics import Metrics
from devbus.bus.outputs.catalogue import Catalogue
from devbus.bus.outputs.forward import Forwarder
from devbus.bus.outputs.sse import Fanout
from devbus.bus.settings import Settings

__all__ = [
    "BUDGET",
    "CATALOGUE",
    "CONNECTIONS",
    "DISPATCHER",
    "ENDPOINTS",
    "FANOUT",
    "FORWARDER",
    "METRICS",
    "SETTINGS",
    "STARTED",
]

SETTINGS = web.AppKey("settings", Settings)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
# The SSE output: every subscriber's outlet.
FANOUT = web.AppKey("fanout", Fanout)
STARTED = web.AppKey("started", float)  # time.monotonic() at start
# What every connection holds for its peer, bounded together (--memory-budget).
BUDGET = web.AppKey("budget", MemoryBudget)

# Where background services listen (name → bound address), for the banner.
ENDPOINTS = web.AppKey("endpoints", dict[str, str])

# Forward targets (devbus run --forward), for the health endpoint.
FORWARDER = web.AppKey("forwarder", Forwarder)

# The seats of every HTTP and ZeroMQ connection (--max-connections, --zmq-idle-timeout).
CONNECTIONS = web.AppKey("connections", ConnectionBudget)

# What each event type looks like (GET /types).
CATALOGUE = web.AppKey("catalogue", Catalogue)
