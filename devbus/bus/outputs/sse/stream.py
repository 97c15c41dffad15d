"""The SSE stream: GET {prefix}/events, fed by the fan-out through an outlet."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import hdrs, web

from devbus.bus.outputs.sse.fanout import Fanout
from devbus.bus.outputs.sse.heartbeat import HeartbeatResponse
from devbus.bus.outputs.sse.replay import Replay
from devbus.bus.store.base import Store
from devbus.envelope import check_event_id, encode_json, sse_frame
from devbus.typefilter import TypeFilter, parse_patterns

__all__ = ["EventStream"]

log = logging.getLogger(__name__)

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def _resume_id(request: web.Request, *, example: str | None) -> str | None:
    """The id to resume after, checked as `/history?since=` checks it: the same form, the same 422."""
    # EventSource sends Last-Event-ID on reconnect; the query forms serve a first
    # connection that already knows where it stopped.
    for value, field in (
        (request.headers.get("Last-Event-ID"), "the Last-Event-ID header"),
        (request.query.get("since"), "`since`"),
        (request.query.get("last_event_id"), "`last_event_id`"),
    ):
        if value:
            return check_event_id(value, field=field, example=example)
    return None


class _ChunkFramer:
    """HTTP/1.1 chunked framing, remembering the last chunk framed.

    A flush hands the same chunk object to every subscriber of a group in turn,
    so framing it once per flush instead of once per subscriber saves copying a
    whole burst per subscriber.
    """

    def __init__(self) -> None:
        self._chunk = b""
        self._framed = b""

    def __call__(self, chunk: bytes) -> bytes:
        if chunk is not self._chunk:
            self._chunk, self._framed = chunk, b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return self._framed


_frame_chunk = _ChunkFramer()


class SocketWriter:
    """Write chunks straight to a stream's socket, framed as aiohttp frames them."""

    __slots__ = ("_chunked", "_protocol", "_transport")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._transport = request.transport
        self._protocol = request.protocol
        self._chunked = response.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"

    @property
    def buffered(self) -> int:
        """Bytes written but still waiting in the socket's send buffer."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def __call__(self, chunk: bytes) -> bool:
        transport = self._transport
        # A paused protocol means the buffer is over its high-water mark: then the
        # stream's task writes through aiohttp instead, which waits for it to drain.
        # (writing_paused: aiohttp >= 3.11; without it every SSE test fails, test_sse.py first.)
        if transport is None or transport.is_closing() or self._protocol.writing_paused:
            return False
        transport.write(_frame_chunk(chunk) if self._chunked else chunk)
        return True


class EventStream:
    """The view of GET {prefix}/events: a connected frame, a replay after a resume id, then live events.

    ``now`` stamps control events (a gap) as the dispatcher stamps events.
    """

    def __init__(
        self, fanout: Fanout, store: Store, *, now: Callable[[], str], heartbeat: float, retry_ms: int
    ) -> None:
        self._fanout = fanout
        self._store = store
        self._now = now
        self._heartbeat = heartbeat
        self._retry_ms = retry_ms

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Stream events as SSE: connected frame, replay after a resume id, then live."""
        fanout = self._fanout
        type_filter = TypeFilter(parse_patterns(request.query.getall("types", [])))
        named = request.query.get("named", "").lower() in TRUE_VALUES
        since = _resume_id(request, example=self._store.last_id)
        # Where to resume is known before the 200 goes out: a store that is away is a plain 503.
        resume = await self._store.resolve(since) if since is not None else None
        outlet = fanout.subscribe(type_filter, named=named)
        response = HeartbeatResponse(interval=self._heartbeat)
        try:
            connected = encode_json(
                {
                    "type": "connected",
                    "message": "SSE connected",
                    "run": self._store.run,
                    "last_id": self._store.last_id,
                    "types": list(type_filter.patterns),
                }
            )
            outlet.preload(sse_frame(connected, retry_ms=self._retry_ms))
            if resume is None:
                fanout.join(outlet)
            await response.prepare(request)
            transport = request.transport
            if transport is None:
                return response
            outlet.attach(transport)
            if since is not None and resume is not None:
                replay = Replay(
                    self._store, fanout, now=self._now, response=response, transport=transport, outlet=outlet
                )
                await replay.run(since, resume)
                if outlet.evicted:
                    return response
            outlet.write_now = SocketWriter(request, response)
            charge = fanout.budget.charge  # what the socket may keep (a flush's writes, the fan-out charges)
            while (chunk := await outlet.take(idle=self._heartbeat)) is not None:
                if chunk:
                    charge(len(chunk))
                    await response.write(chunk)
                elif transport.is_closing():
                    break
        except ConnectionResetError:
            log.debug("subscriber went away")
        finally:
            fanout.release(outlet)
            await response.stop()
        return response
