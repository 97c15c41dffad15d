"""Hand-written HTTP/1.1 over a plain socket, so every header is exactly as sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

WAIT = 10.0


@dataclass
class RawResponse:
    """A parsed response, plus whether the server announced it will close the connection."""

    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]
    closed: bool

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


def request_bytes(
    method: str, path: str, *, host: str | None, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """Build one request; ``host=None`` leaves the Host header out."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, list[int]]:
    interim = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        if status >= 200:
            break
        interim.append(status)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body, interim


async def exchange(port: int, request: bytes, *, then: bytes = b"") -> RawResponse:
    """Send ``request`` to 127.0.0.1:``port`` and read one response.

    ``then`` is sent after the response arrives (e.g. the rest of a body the server
    should never have waited for); a closing connection may refuse it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(WAIT):
            writer.write(request)
            await writer.drain()
            status, headers, body, interim = await _read_response(reader)
            if then:
                with contextlib.suppress(ConnectionError):
                    writer.write(then)
                    await writer.drain()
            closed = headers.get("connection", "").lower() == "close"
        return RawResponse(status, headers, body, interim, closed)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
