"""The request guards: forged Host, foreign Origin, media type, body size, injection, caps."""

from __future__ import annotations

import asyncio

import pytest
from rawhttp import exchange, request_bytes
from support import WAIT, BusFactory, Client, open_stream

from devbus.bus.allowlists import check_allowlists
from devbus.bus.settings import Settings
from devbus.errors import ConfigError

EVENT = b'{"event_type":"t.ok","data":{}}'
PREFLIGHT = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}


async def counts(client: Client) -> tuple[int, int]:
    """(events recorded, subscribers connected), as health reports them."""
    health = await (await client.get("/api/dev/health")).json()
    return health["events"], health["subscribers"]


def raw(client: Client) -> int:
    port = client.server.port
    assert port is not None
    return port


FORGED_HOSTS = {
    "evil.com": "evil.com",
    "localhost.evil.com": "localhost.evil.com:8765",
    "nip.io": "127.0.0.1.nip.io",
    "empty": "",
    "userinfo": "user@localhost",
    "path": "localhost/api",
    "bad-port": "localhost:99999",
    "other-ipv6": "[::2]",
    "any-address": "0.0.0.0",
}
REQUESTS = {
    "post": ("POST", "/api/dev/webhook", {"Content-Type": "application/json"}, EVENT),
    "stream": ("GET", "/api/dev/events", {"Accept": "text/event-stream"}, b""),
    "preflight": ("OPTIONS", "/api/dev/webhook", PREFLIGHT, b""),
}


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("host", list(FORGED_HOSTS.values()), ids=list(FORGED_HOSTS))
async def test_forged_host_is_refused_and_nothing_happens(bus: Client, host: str | None, request_name: str) -> None:
    method, path, headers, body = REQUESTS[request_name]
    response = await exchange(raw(bus), request_bytes(method, path, host=host, headers=headers, body=body))
    assert response.status == 403
    assert "--allow-host" in response.json()["error"]
    assert "access-control-allow-origin" not in response.headers
    assert await counts(bus) == (0, 0)


@pytest.mark.parametrize("request_name", list(REQUESTS))
async def test_missing_host_is_refused_and_nothing_happens(bus: Client, request_name: str) -> None:
    """HTTP/1.0 may omit Host and reaches the guard; HTTP/1.1 without one is a protocol error."""
    method, path, headers, body = REQUESTS[request_name]
    request = request_bytes(method, path, host=None, headers=headers, body=body)
    assert (await exchange(raw(bus), request.replace(b"HTTP/1.1", b"HTTP/1.0", 1))).status == 403
    assert (await exchange(raw(bus), request)).status == 400
    assert await counts(bus) == (0, 0)


async def test_two_host_headers_are_refused(bus: Client) -> None:
    request = request_bytes("GET", "/api/dev/history", host="localhost", headers={"Host": "evil.com"})
    assert (await exchange(raw(bus), request)).status == 400


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8765",
        "LOCALHOST",
        "localhost.",
        "app.localhost:3000",
        "127.0.0.1:1",
        "127.9.9.9",
        "[::1]:8765",
    ],
)
async def test_loopback_hosts_are_served(bus: Client, host: str) -> None:
    request = request_bytes(
        "POST", "/api/dev/webhook", host=host, headers={"Content-Type": "application/json"}, body=EVENT
    )
    assert (await exchange(raw(bus), request)).status == 200
    assert await counts(bus) == (1, 0)


async def test_allow_host_adds_a_name(make_bus: BusFactory) -> None:
    client = await make_bus(allow_hosts=("dev.example.test",))
    ok = request_bytes("GET", "/api/dev/history", host="dev.example.test:8765")
    assert (await exchange(raw(client), ok)).status == 200
    other = request_bytes("GET", "/api/dev/history", host="dev.example.test.evil.com")
    assert (await exchange(raw(client), other)).status == 403


ORIGINS = [
    ("http://localhost:3000", True),
    ("http://127.0.0.1:5173", True),
    ("http://[::1]:8080", True),
    ("https://localhost", True),
    ("http://app.localhost:3000", True),
    ("HTTP://LOCALHOST:3000", True),
    ("null", False),
    ("http://localhost.evil.com", False),
    ("http://evil.com", False),
    ("https://127.0.0.1.evil.com", False),
    ("http://localhost:3000.evil.com", False),
    ("http://user@localhost:3000", False),
    ("http://localhost:3000/", False),
    ("http://localhost:3000/path", False),
    ("localhost:3000", False),
    ("http://", False),
    ("http://localhost:abc", False),
    ("ftp://localhost", False),
    ("", False),
]
ORIGIN_IDS = [
    "localhost-port",
    "ipv4-port",
    "ipv6-port",
    "https-default-port",
    "sub-localhost",
    "uppercase",
    "null",
    "localhost.evil.com",
    "evil.com",
    "https-127.0.0.1.evil.com",
    "port-then-domain",
    "userinfo",
    "trailing-slash",
    "path",
    "no-scheme",
    "no-host",
    "bad-port",
    "ftp",
    "empty",
]


@pytest.mark.parametrize(("origin", "allowed"), ORIGINS, ids=ORIGIN_IDS)
async def test_origin_matrix(bus: Client, origin: str, allowed: bool) -> None:
    headers = {"Origin": origin}
    preflight = await bus.options("/api/dev/webhook", headers={**PREFLIGHT, **headers})
    post = await bus.post("/api/dev/webhook", data=EVENT, headers={**headers, "Content-Type": "application/json"})
    stream = await bus.get("/api/dev/events", headers=headers)
    try:
        if allowed:
            assert (preflight.status, post.status, stream.status) == (204, 200, 200)
            for response in (preflight, post, stream):
                assert response.headers["Access-Control-Allow-Origin"] == origin
                assert response.headers["Vary"] == "Origin"
                assert "Access-Control-Allow-Credentials" not in response.headers
        else:
            assert (preflight.status, post.status, stream.status) == (403, 403, 403)
            assert "--allow-origin" in (await post.json())["error"]
            assert "Access-Control-Allow-Origin" not in post.headers
            assert await counts(bus) == (0, 0)
    finally:
        stream.close()


async def test_the_bus_own_page_is_allowed_through_an_allowed_host(make_bus: BusFactory) -> None:
    """The dashboard opened as http://devbox.lan:8765 (with --allow-host) may use the API it came from."""
    client = await make_bus(allow_hosts=("devbox.lan",))
    port = raw(client)

    def webhook(host: str, origin: str) -> bytes:
        headers = {"Content-Type": "application/json", "Origin": origin}
        return request_bytes("POST", "/api/dev/webhook", host=host, headers=headers, body=EVENT)

    assert (await exchange(port, webhook("devbox.lan:8765", "http://devbox.lan:8765"))).status == 200
    for origin in ["http://devbox.lan:9999", "https://devbox.lan:8765", "http://evil.com:8765"]:
        assert (await exchange(port, webhook("devbox.lan:8765", origin))).status == 403, origin
    # A rebound name is same-origin with itself, and still refused: the Host check comes first.
    assert (await exchange(port, webhook("evil.com:8765", "http://evil.com:8765"))).status == 403
    assert await counts(client) == (1, 0)


async def test_allow_origin_matches_exactly_after_parsing(make_bus: BusFactory) -> None:
    client = await make_bus(allow_origins=("https://app.example.test",))
    for origin, status in [
        ("https://app.example.test", 200),
        ("https://app.example.test:443", 200),
        ("http://app.example.test", 403),
        ("https://app.example.test.evil.com", 403),
        ("https://app.example.test:8443", 403),
    ]:
        response = await client.get("/api/dev/history", headers={"Origin": origin})
        assert response.status == status, origin


async def test_private_network_preflight_is_granted_only_to_allowed_origins(make_bus: BusFactory) -> None:
    """Chrome asks before a public page may reach localhost; only an --allow-origin page gets a yes."""
    client = await make_bus(allow_origins=("https://app.example.test",))
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"}
    granted = await client.options("/api/dev/webhook", headers={**ask, "Origin": "https://app.example.test"})
    assert granted.headers["Access-Control-Allow-Private-Network"] == "true"
    refused = await client.options("/api/dev/webhook", headers={**ask, "Origin": "https://evil.example"})
    assert refused.status == 403
    assert "Access-Control-Allow-Private-Network" not in refused.headers


@pytest.mark.parametrize("value", ["null", "*", "https://app.example.test/", "app.example.test"])
def test_allowlist_that_cannot_work_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match="--allow-origin"):
        check_allowlists(Settings(allow_origins=(value,)))


async def test_cross_site_no_cors_request_is_refused(bus: Client) -> None:
    """An <img> or <script> pointed at the bus sends no Origin, but does send Sec-Fetch-*."""
    fetch = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    assert (await bus.get("/api/dev/events", headers=fetch)).status == 403
    same = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"}
    assert (await bus.get("/api/dev/history", headers=same)).status == 200
    assert await counts(bus) == (0, 0)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        None,
        "application/json; charset=utf-16",
        "application/jsonx",
        "application/json, text/plain",
    ],
    ids=["text-plain", "text-plain-then-json", "form", "multipart", "none", "utf-16", "jsonx", "list"],
)
async def test_non_json_media_type_is_415_and_records_nothing(bus: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    request = request_bytes("POST", "/api/dev/webhook", host="127.0.0.1", headers=headers, body=EVENT)
    response = await exchange(raw(bus), request)
    assert response.status == 415
    assert "application/json" in response.json()["error"]
    assert await counts(bus) == (0, 0)


async def test_json_with_utf8_charset_is_accepted(bus: Client) -> None:
    headers = {"Content-Type": "Application/JSON; charset=UTF-8"}
    assert (await bus.post("/api/dev/webhook", data=EVENT, headers=headers)).status == 200


async def test_declared_oversized_body_is_413_before_it_is_sent(make_bus: BusFactory) -> None:
    client = await make_bus(max_body=1024)
    headers = {"Content-Type": "application/json", "Content-Length": str(100 * 1024 * 1024)}
    # Only the headers and a first kilobyte go out; a bus that waited for the
    # declared 100 MiB would never answer.
    request = request_bytes("POST", "/api/dev/webhook", host="localhost", headers=headers) + b"{" + b" " * 1023
    response = await exchange(raw(client), request, then=b" " * 65536)
    assert response.status == 413
    assert "1024 bytes" in response.json()["error"]
    assert response.closed
    assert await counts(client) == (0, 0)


async def test_streamed_oversized_body_is_413_without_reading_it_all(make_bus: BusFactory) -> None:
    client = await make_bus(max_body=1024)
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    chunk = b"800\r\n" + b" " * 2048 + b"\r\n"  # one 2 KiB chunk, and no final chunk ever
    request = request_bytes("POST", "/api/dev/webhook", host="localhost", headers=headers) + chunk
    response = await exchange(raw(client), request, then=chunk * 16)
    assert response.status == 413
    assert response.closed
    assert await counts(client) == (0, 0)


async def test_expect_continue_is_answered_only_when_the_body_is_wanted(make_bus: BusFactory) -> None:
    client = await make_bus(max_body=1024)
    big = {"Content-Type": "application/json", "Content-Length": "4096", "Expect": "100-continue"}
    refused = await exchange(raw(client), request_bytes("POST", "/api/dev/webhook", host="localhost", headers=big))
    assert (refused.interim, refused.status) == ([], 413)
    small = {"Content-Type": "application/json", "Content-Length": str(len(EVENT)), "Expect": "100-continue"}
    head = request_bytes("POST", "/api/dev/webhook", host="localhost", headers=small)
    accepted = await exchange(raw(client), head + EVENT)
    assert (accepted.interim, accepted.status) == ([100], 200)


@pytest.mark.parametrize(
    "event_type",
    ["a\nb", "a\rb", "a\r\nevent: admin", "a\x00b", "t\n\ndata: {}", "a\u2028b", "a\x85b", "a b"],
    ids=["newline", "carriage-return", "crlf-event-line", "nul", "blank-line-frame", "line-separator", "nel", "space"],
)
async def test_sse_injection_in_event_type_is_422(bus: Client, event_type: str) -> None:
    stream = await open_stream(bus, "/api/dev/events?named=1")
    for path, body in [
        ("/api/dev/webhook", {"event_type": event_type}),
        ("/api/dev/trigger", {"event_type": "ok", "source": event_type}),
        ("/api/dev/batch", {"events": [{"event_type": "ok"}, {"event_type": event_type}]}),
    ]:
        response = await bus.post(path, json=body)
        assert response.status == 422, path
        assert "control characters" in (await response.json())["error"]
    sent = await (await bus.post("/api/dev/webhook", json={"event_type": "after"})).json()
    # The next frame on the wire is the valid event, framed exactly: nothing got in before it.
    frame = await stream.frame()
    assert frame.split(b"\n")[:2] == [f"id: {sent['id']}".encode(), b"event: after"]
    assert await counts(bus) == (1, 1)


async def test_invalid_utf8_body_is_400_not_a_crash(bus: Client) -> None:
    """Regression: a string that is not UTF-8 raised UnicodeDecodeError, answered as a 500."""
    body = b'{"event_type":"t","data":{"x":"\xff\xfe"}}'
    response = await bus.post("/api/dev/webhook", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["error"]
    assert await counts(bus) == (0, 0)


async def test_deeply_nested_body_is_422_not_a_crash(bus: Client) -> None:
    body = b'{"event_type":"t","data":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    response = await bus.post("/api/dev/webhook", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 422
    assert "`data` nests deeper than 64 levels" in (await response.json())["error"]


async def test_subscribers_over_the_cap_get_503(make_bus: BusFactory) -> None:
    client = await make_bus(max_subscribers=2)
    first = await open_stream(client)
    await open_stream(client)
    refused = await client.get("/api/dev/events")
    assert refused.status == 503
    assert "--max-subscribers" in (await refused.json())["error"]
    first.response.close()
    # The slot frees once the bus notices the disconnect; then a new stream is let in.
    async with asyncio.timeout(WAIT):
        # No event marks an unsubscribe from outside, so poll the count health reports.
        while (await counts(client))[1] != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await open_stream(client)


async def test_refusals_are_counted_by_reason(make_bus: BusFactory) -> None:
    client = await make_bus(max_body=64, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    port = raw(client)
    await exchange(port, request_bytes("GET", "/api/dev/history", host="evil.com", headers=auth))
    await client.get("/api/dev/history", headers={**auth, "Origin": "http://evil.com"})
    await client.get("/api/dev/history", headers={**auth, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
    await client.get("/api/dev/history")
    await client.post("/api/dev/webhook", data=EVENT, headers={**auth, "Content-Type": "text/plain"})
    await client.post("/api/dev/webhook", json={"event_type": "t", "data": {"x": "y" * 100}}, headers=auth)
    await client.post("/api/dev/webhook", json={"event_type": "a\nb"}, headers=auth)
    text = await (await client.get("/metrics", headers=auth)).text()
    for reason in [
        "forbidden_host",
        "forbidden_origin",
        "forbidden_cross_site",
        "unauthorized",
        "unsupported_media_type",
        "body_too_large",
        "invalid_event",
    ]:
        assert f'devbus_rejected_total{{reason="{reason}"}} 1.0' in text, reason


async def test_history_is_bounded_in_bytes_as_well_as_count(make_bus: BusFactory) -> None:
    client = await make_bus(history_bytes=2000)
    ids = []
    for i in range(30):
        body = {"event_type": "big", "data": {"i": i, "pad": "x" * 150}}
        ids.append((await (await client.post("/api/dev/webhook", json=body)).json())["id"])
    response = await client.get("/api/dev/history?limit=100")
    kept = (await response.json())["events"]
    # Each event encodes to ~250 bytes: the newest few are kept, in order, the rest dropped.
    assert 4 <= len(kept) <= 8
    assert [e["id"] for e in kept] == ids[-len(kept) :]
    health = await (await client.get("/api/dev/health")).json()
    assert (health["events"], health["retained"]) == (30, len(kept))
