"""Shared fixtures: an in-process bus, a ZeroMQ context, real `devbus run` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from support import BusFactory, BusProcess, Client, Receiver, RedisServer, free_port, start_bus, start_redis

from devbus.bus.app import create_app
from devbus.bus.settings import Settings

pytest_plugins = ["browser_fixtures", "readme", "readme_shell"]


@pytest.fixture
async def make_bus(aiohttp_client: Any) -> BusFactory:
    """Build an in-process bus (ZeroMQ off unless asked) and a client for it."""

    async def factory(**overrides: Any) -> Client:
        overrides.setdefault("ingest", None)
        overrides.setdefault("egress", None)
        app = create_app(Settings(**overrides))
        client: Client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
        return client

    return factory


@pytest.fixture
async def bus(make_bus: BusFactory) -> Client:
    """An in-process bus with default settings."""
    return await make_bus()


@pytest.fixture
async def zmq_context() -> AsyncIterator[zmq.asyncio.Context]:
    """An asyncio ZeroMQ context whose sockets are all closed after the test."""
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def bus_process() -> Iterator[Callable[..., BusProcess]]:
    """Start real buses; every one is stopped at the end of the test."""
    started: list[BusProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None, open_files: int | None = None) -> BusProcess:
        bus = start_bus(*args, env=env, open_files=open_files)
        started.append(bus)
        return bus

    yield factory
    for bus in started:
        bus.close()


@pytest.fixture
def running_bus(bus_process: Callable[..., BusProcess]) -> BusProcess:
    """A real `devbus run --quiet` on free loopback ports, stopped after the test."""
    return bus_process("--quiet")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port with an fsynced AOF, killed after the test."""
    server = start_redis(tmp_path)
    yield server
    server.kill()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Start receivers on free ports (or on a given one); all are stopped at the end."""
    started: list[Receiver] = []

    async def factory(port: int = 0, **kwargs: Any) -> Receiver:
        receiver = Receiver(port or free_port(), **kwargs)
        started.append(receiver)
        await receiver.start()
        return receiver

    yield factory
    for receiver in started:
        await receiver.stop()
