"""HTTP ``Idempotency-Key``: a POST sent again with the same key is answered as the first, and stores nothing.

The header (IETF httpapi "The Idempotency-Key HTTP Header Field"; Stripe's API)
names one request. The store records the key with the append it made, in the
same transaction (``store/base.py``, Idempotency), for ``KEY_WINDOW`` seconds
(the newest ``MAX_KEYS``), so a retry after a timeout, a dropped connection or a
bus restart (SQLite, Redis) gets the ids of the first request and adds nothing.
This module reads the header, names the request it came with (a fingerprint of
method, path and body: the same key on another request is refused with 422), keeps
the first answers this process gave so a replay is byte for byte the same, and
makes a request with a key wait while another with the same key is in flight
here (instead of answering 409 as the draft allows: a client that timed out and
retried then gets the real answer).

A replay carries ``Idempotent-Replayed: true``. One answered by another bus of a
cluster, or after a restart, says the same ids; its subscriber count is how many
subscribers the event's type would reach now (the first count was not stored).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devbus.bus.store.base import KEY_WINDOW, MAX_KEYS, Claim
from devbus.envelope import encode_json
from devbus.errors import MalformedInput

__all__ = ["HEADER", "REPLAYED", "Answers", "claim_of", "json_answer"]

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def json_answer(answer: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """The JSON answer to a POST, encoded by msgspec (0.2 µs, where web.json_response's json.dumps takes 2 µs)."""
    return web.Response(body=encode_json(answer), content_type="application/json", charset="utf-8", headers=headers)


def _key(value: str) -> str:
    """The key a header value names: a Structured Field string (``"…"``, as the draft writes it) or a bare token."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all("!" <= char <= "~" for char in value):
        raise MalformedInput(
            f"{HEADER} must be 1-{MAX_KEY_LENGTH} visible ASCII characters without spaces "
            f'(e.g. a UUID, or "8e03978e-40d5-43e8-bc93-6894a57f9324" quoted); got {value[:80]!r}',
            reason="idempotency_key",
        )
    return value


def claim_of(request: web.Request, body: bytes) -> Claim | None:
    """The claim of a request that carries an Idempotency-Key (None without one)."""
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise MalformedInput(f"send one {HEADER} header, not {len(values)}", reason="idempotency_key")
    digest = hashlib.blake2b(digest_size=16)
    for part in (request.method.encode(), request.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return Claim(key=_key(values[0].strip()), fingerprint=digest.digest())


class Answers:
    """The first answers this process gave to requests with a key (bounded), and the keys in flight."""

    def __init__(self) -> None:
        self._given: OrderedDict[str, tuple[bytes, dict[str, Any], float]] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[None]] = {}

    async def answer(
        self,
        claim: Claim,
        publish: Callable[[], Awaitable[tuple[dict[str, Any], list[str] | None]]],
        rebuild: Callable[[list[str]], dict[str, Any]],
    ) -> web.Response:
        """Answer a request with ``claim``: ``publish`` it (which says the answer, or the ids of a replay)."""
        key = claim.key
        assert key is not None
        while (earlier := self._in_flight.get(key)) is not None:
            await asyncio.shield(earlier)  # the store decides once it is done; its answer is kept below
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = done
        try:
            answer, replayed = await publish()
        finally:
            del self._in_flight[key]
            done.set_result(None)
        if replayed is None:
            self._keep(key, claim.fingerprint, answer)
            return json_answer(answer)
        given = self._given.get(key)
        first = given[1] if given is not None and given[0] == claim.fingerprint else rebuild(replayed)
        return json_answer(first, headers={REPLAYED: "true"})

    def _keep(self, key: str, fingerprint: bytes, answer: dict[str, Any]) -> None:
        given = self._given
        now = time.monotonic()
        given[key] = (fingerprint, answer, now)
        given.move_to_end(key)
        while given and (len(given) > MAX_KEYS or next(iter(given.values()))[2] < now - KEY_WINDOW):
            given.popitem(last=False)
