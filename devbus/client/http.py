"""A small blocking HTTP client for the bus's API: POST, GET JSON, and read the SSE stream."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator
from typing import Any

from devbus.client.config import ClientConfig
from devbus.errors import BusUnavailable, DevbusError

__all__ = ["get_json", "post_json", "stream"]

TIMEOUT = 10.0


def _request(config: ClientConfig, path: str, *, body: Any = None, query: dict[str, str] | None = None) -> Any:
    url = f"{config.api}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    return urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")


def _open(request: urllib.request.Request, config: ClientConfig, *, timeout: float) -> Any:
    """Open ``request``; turn refusals and unreachable buses into one-line DevbusErrors."""
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            message = _error_message(exc.read(), fallback=exc.reason)
        raise DevbusError(f"The bus at {config.url} refused the request ({exc.code}): {message}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _unreachable(config, getattr(exc, "reason", exc)) from exc


def _error_message(body: bytes, *, fallback: str) -> str:
    """The ``error`` of a JSON refusal from the bus, else ``fallback``."""
    try:
        return str(json.loads(body).get("error") or fallback)
    except (ValueError, AttributeError):
        return fallback


def _unreachable(config: ClientConfig, reason: object) -> BusUnavailable:
    return BusUnavailable(
        f"No devbus at {config.url} ({reason}); start one with `devbus run`, or point DEVBUS_URL at it"
    )


def post_json(config: ClientConfig, path: str, body: Any) -> Any:
    """POST ``body`` as JSON to ``{api}{path}`` and return the decoded answer."""
    with _open(_request(config, path, body=body), config, timeout=TIMEOUT) as response:
        return json.load(response)


def get_json(config: ClientConfig, path: str, query: dict[str, str] | None = None) -> Any:
    """GET ``{api}{path}`` and return the decoded answer."""
    with _open(_request(config, path, query=query), config, timeout=TIMEOUT) as response:
        return json.load(response)


def stream(
    config: ClientConfig, *, types: str | None = None, since: str | None = None
) -> Generator[tuple[str, bytes], None, None]:
    """Yield ``(id, data)`` for each frame of the SSE stream until it ends.

    The first is the connected frame, whose id is ``""``; heartbeats are comments.
    """
    query = {key: value for key, value in (("types", types), ("since", since)) if value}
    request = _request(config, "/events", query=query)
    parts = urllib.parse.urlsplit(request.full_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=TIMEOUT)
    try:
        try:
            connection.request("GET", request.selector, headers={**request.headers, "Accept": "text/event-stream"})
            response = connection.getresponse()
        except OSError as exc:
            raise _unreachable(config, exc) from exc
        if response.status != 200:
            message = _error_message(response.read(), fallback=response.reason)
            raise DevbusError(f"The bus at {config.url} refused the stream ({response.status}): {message}")
        # An idle stream is normal (heartbeats keep it alive), so reads never time out.
        assert connection.sock is not None
        connection.sock.settimeout(None)
        event_id, data = "", b""
        for line in response:
            if line in (b"\n", b"\r\n"):
                if data:
                    yield event_id, data
                event_id, data = "", b""
            elif line.startswith(b"id:"):
                event_id = line[3:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
    finally:
        connection.close()
