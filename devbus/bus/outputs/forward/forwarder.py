"""Forward events to HTTP targets (`devbus run --forward URL`), like a webhook relay.

The forwarder only appends to each target's bounded queue (see ``target``), so a
slow or dead target never holds up the bus. On a log of one bus it is an output of
the dispatcher; on a stream that several buses share, ``cluster`` feeds the same
targets once for all of them instead, one bus at a time under a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from devbus.bus.metrics import Metrics
from devbus.bus.outputs.forward.target import FLUSH_TIMEOUT, REQUEST_TIMEOUT, Target, parse_target
from devbus.bus.record import Record
from devbus.typefilter import TypeFilter
from devbus.version import __version__

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)


class Forwarder:
    """Feed every matching event to each target; a dispatcher output and a cleanup_ctx."""

    def __init__(self, targets: Sequence[str], *, types: TypeFilter, limit: int, metrics: Metrics) -> None:
        self.types = types
        self.targets = [Target(*parse_target(value), limit=limit, metrics=metrics) for value in targets]
        self._metrics = metrics

    def __call__(self, batch: Sequence[Record]) -> None:
        """Queue each matching event of a delivered batch; never waits."""
        for record in batch:
            for target in self.targets:
                if self.wants(target, record):
                    # The JSON the store encoded once, shared with every other output.
                    target.offer(record.event, record.json)

    def wants(self, target: Target, record: Record) -> bool:
        """Whether ``record`` goes to ``target``: it matches --forward-types and did not come from there."""
        if not self.types(record.type):
            return False
        if record.event.source == target.name:
            self._metrics.forward_skipped.labels(target.label).inc()
            return False
        return True

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """Run one delivery task per target while the app runs (an aiohttp cleanup_ctx)."""
        if not self.targets:
            yield
            return
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            headers={"User-Agent": f"devbus/{__version__}"},
        )
        for target in self.targets:
            target.session = session
        tasks = [asyncio.create_task(target.run(), name=f"forward {target.label}") for target in self.targets]
        try:
            yield
        finally:
            # Give reachable targets a moment to take what is queued, then stop regardless.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await asyncio.gather(*(t.drained() for t in self.targets if t.up))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
            for target in self.targets:
                if target.queued:
                    log.warning("%d events were not forwarded to %s before shutdown", target.queued, target.label)
