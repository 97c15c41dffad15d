"""The HTTP inputs: POST {prefix}/webhook, /trigger and /batch, answered once the store has the events.

The guard in front of them has checked Host, Origin, token and media type; the
body is read here, within --max-body bytes and --body-timeout seconds. A request
with an ``Idempotency-Key`` is stored at most once per key (``idempotency.py``).

An answer tells the truth about the store: 200 once it has the events, 503 only
when it stored none of them, and 504 when it could not say within
``PUBLISH_WAIT`` seconds (Redis went away after the call reached it): then the
event may be stored, and only a retry with the same key is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devbus.bus.dispatcher import Dispatcher
from devbus.bus.inputs.idempotency import HEADER, Answers, claim_of, json_answer
from devbus.bus.inputs.reach import ReachCounts
from devbus.bus.record import Record
from devbus.bus.store.base import Appended, Claim
from devbus.envelope import Draft, decode_batch, decode_http_event
from devbus.errors import BodyTooLarge, OutcomeUnknown, RequestTimeout
from devbus.text import plural

__all__ = ["PUBLISH_WAIT", "HttpInput", "read_body", "too_large"]

# Seconds a request waits for the store to say whether it stored its events. SQLite
# answers within a commit; Redis asks again after losing its connection, and answers
# within a second of coming back: ten seconds covers a restart.
PUBLISH_WAIT = 10.0


def too_large(limit: int) -> BodyTooLarge:
    """The refusal of a body over ``limit`` bytes."""
    return BodyTooLarge(f"Body is larger than the limit of {limit} bytes (--max-body); send less or raise the limit")


async def read_body(request: web.Request, *, limit: int, time_limit: float) -> bytes:
    """Read a POST body of at most ``limit`` bytes, all of it within ``time_limit`` seconds."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    content = request.content
    if content.is_eof():
        # The whole body came with the head, as a small POST's does: nothing to wait for,
        # so no timer either (arming and cancelling one costs 3-5 µs, reading the body 0.5 µs).
        body = content.read_nowait()
        if len(body) > limit:
            raise too_large(limit)
        return body
    # Count what actually arrives too: a chunked body declares no length.
    chunks = []
    size = 0
    try:
        # A client that stalls part-way would otherwise hold up to --max-body for ever.
        async with asyncio.timeout(time_limit):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"Body not received within {time_limit:g} seconds (--body-timeout); send the whole body at once"
        ) from None
    return b"".join(chunks)


class HttpInput:
    """The three POST views, as bound methods over the dispatcher and the fan-out's reach counts."""

    def __init__(self, dispatcher: Dispatcher, reach: ReachCounts, *, max_body: int, body_timeout: float) -> None:
        self._dispatcher = dispatcher
        self._reach = reach
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._answers = Answers()

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, limit=self._max_body, time_limit=self._body_timeout)

    async def _publish(self, drafts: list[Draft], claim: Claim | None) -> Appended:
        """Publish and wait (bounded) for the store's word; the append goes on if the request gives up."""
        committed = self._dispatcher.publish(drafts, claim)
        if committed.done():
            return committed.result()  # a store of this process's memory answers at once
        return await self._committed(committed, claim)

    async def _committed(self, committed: asyncio.Future[Appended], claim: Claim | None) -> Appended:
        try:
            async with asyncio.timeout(PUBLISH_WAIT):
                return await asyncio.shield(committed)
        except TimeoutError:
            again = "with the same Idempotency-Key" if claim is not None else "with an Idempotency-Key next time"
            raise OutcomeUnknown(
                f"The store {self._dispatcher.store.name} did not say within {PUBLISH_WAIT:g} s whether it stored "
                f"the event(s): they may be stored; send them again only {again}"
            ) from None

    async def _respond(
        self,
        request: web.Request,
        drafts: list[Draft],
        body: bytes,
        answer: Callable[[list[Record]], dict[str, Any]],
        rebuild: Callable[[list[str]], dict[str, Any]],
    ) -> web.Response:
        """Publish ``drafts`` and answer with ``answer(records)``, once per Idempotency-Key (``rebuild(ids)``
        answers a replay that this process did not answer first)."""
        claim = claim_of(request, body)

        async def publish() -> tuple[dict[str, Any], list[str] | None]:
            with self._reach.waiting():
                records = await self._publish(drafts, claim)
                if records.replayed is not None:
                    return {}, records.replayed
                return answer(records), None

        if claim is None:
            return json_answer((await publish())[0])
        return await self._answers.answer(claim, publish, rebuild)

    async def _one(
        self, request: web.Request, body: bytes, draft: Draft, shape: Callable[[str, int], dict[str, Any]]
    ) -> web.Response:
        """Publish one event and answer with ``shape(id, subscribers reached)``."""
        if HEADER not in request.headers:
            # The common case, kept short: a request without a key is published and answered here.
            with self._reach:
                committed = self._dispatcher.publish([draft])
                record = (committed.result() if committed.done() else await self._committed(committed, None))[0]
                return json_answer(shape(record.id, self._reach.of(record)))
        return await self._respond(
            request,
            [draft],
            body,
            lambda records: shape(records[0].id, self._reach.of(records[0])),
            lambda ids: shape(ids[0], self._reach.now(draft.type)),
        )

    async def webhook(self, request: web.Request) -> web.Response:
        """Broadcast one event (the old dev-webhook contract)."""
        body = await self._body(request)
        draft = decode_http_event(body, default_source="http")

        def shape(event_id: str, reached: int) -> dict[str, Any]:
            message = f"Event {draft.type} broadcasted to {plural(reached, 'subscriber')}"
            return {"success": True, "id": event_id, "message": message, "subscribers": reached}

        return await self._one(request, body, draft, shape)

    async def trigger(self, request: web.Request) -> web.Response:
        """Broadcast one event sent by a backend or script."""
        body = await self._body(request)
        draft = decode_http_event(body, default_source="trigger")

        def shape(event_id: str, reached: int) -> dict[str, Any]:
            return {"success": True, "id": event_id, "subscribers_notified": reached}

        return await self._one(request, body, draft, shape)

    async def batch(self, request: web.Request) -> web.Response:
        """Broadcast many events in order, all or none."""
        body = await self._body(request)
        drafts = decode_batch(body, default_source="http")
        return await self._respond(
            request,
            drafts,
            body,
            lambda records: {"success": True, "ids": [r.id for r in records]},
            lambda ids: {"success": True, "ids": ids},
        )
