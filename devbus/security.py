"""Request guards: Host and Origin allowlists, CORS, token, media type and body size.

A dev server on localhost is reachable from every page the user opens, so every
request is checked before any work: DNS rebinding (Host), cross-site requests
(Origin, Sec-Fetch-*), "simple" POSTs without preflight (media type) and oversized
bodies. Refusals are JSON errors that say what to change.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from devbus.errors import BodyTooLarge, DevbusError, Forbidden, Unauthorized, UnsupportedMediaType
from devbus.keys import METRICS, SETTINGS
from devbus.settings import Settings

__all__ = [
    "add_cors_headers",
    "error_response",
    "guard",
    "host_allowed",
    "is_loopback_host",
    "origin_allowed",
    "read_body",
]

LOOPBACK_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, Cache-Control"
PREFLIGHT_MAX_AGE = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (no port, IPv6 without brackets) names this machine only."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host_header(value: str) -> str | None:
    """Return the host part of a Host header, or None if it is malformed."""
    try:
        parts = urlsplit(f"//{value}")
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if not hostname or parts.username is not None or parts.path or parts.query:
        return None
    return hostname


def host_allowed(value: str | None, settings: Settings) -> bool:
    """Whether a Host header names the bus itself (guards against DNS rebinding)."""
    if not value:
        return False
    hostname = _split_host_header(value)
    if hostname is None:
        return False
    return is_loopback_host(hostname) or hostname in settings.allow_hosts or value in settings.allow_hosts


def origin_allowed(origin: str, settings: Settings) -> bool:
    """Whether a browser Origin is a loopback page or one given with --allow-origin."""
    if origin in settings.allow_origins:
        return True
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        return False
    netloc = parts.netloc.lower()
    host = netloc.rsplit(":", 1)[0] if port is not None else netloc
    rebuilt = f"{parts.scheme}://{netloc}"
    # Compare the whole origin as rebuilt from its parts, so that no path, query,
    # userinfo or trailing text can ride along ("http://localhost.evil.com" fails).
    return host in LOOPBACK_ORIGIN_HOSTS and rebuilt == origin


def _token_ok(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        value = request.query.get("token", "")
    return hmac.compare_digest(value.strip().encode(), token.encode())


def error_response(request: web.Request, error: DevbusError) -> web.Response:
    """Turn a domain error into the JSON error response, counting the refusal."""
    request.app[METRICS].reject(error.reason)
    return web.json_response({"success": False, "error": str(error)}, status=error.status)


def _check(request: web.Request, settings: Settings) -> None:
    host = request.headers.get("Host")
    if not host_allowed(host, settings):
        raise Forbidden(
            f"Host {host!r} is not allowed; use localhost or a loopback address, "
            "or start the bus with --allow-host NAME",
            reason="forbidden_host",
        )
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, settings):
        raise Forbidden(
            f"Origin {origin!r} is not allowed; pages on http(s)://localhost, 127.0.0.1 or [::1] "
            "are, and others can be added with --allow-origin",
            reason="forbidden_origin",
        )
    if request.headers.get("Sec-Fetch-Site") == "cross-site" and request.headers.get("Sec-Fetch-Mode") == "no-cors":
        raise Forbidden(
            "Cross-site no-cors requests are refused; use fetch() with CORS from an allowed origin",
            reason="forbidden_origin",
        )


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse disallowed requests before any work; answer preflights; map errors."""
    settings = request.app[SETTINGS]
    try:
        _check(request, settings)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204)
        if settings.token and not request.path.endswith("/health") and not _token_ok(request, settings.token):
            raise Unauthorized(
                "Missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token> "
                "(the token the bus was started with, DEVBUS_TOKEN)"
            )
        return await handler(request)
    except DevbusError as error:
        return error_response(request, error)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Echo an allowed Origin (never '*'), on every response including streams."""
    response.headers["Vary"] = "Origin"
    origin = request.headers.get("Origin")
    if origin is None or not origin_allowed(origin, request.app[SETTINGS]):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE


async def read_body(request: web.Request) -> bytes:
    """Read a JSON POST body, refusing other media types and bodies over --max-body."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {request.headers.get('Content-Type', 'none')!r})"
        )
    limit = request.app[SETTINGS].max_body
    too_large = BodyTooLarge(f"Body is larger than the limit of {limit} bytes (--max-body)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
