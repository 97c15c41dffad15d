"""Property-based fuzz of the HTTP inputs against a real `devbus run`."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import WAIT, BusProcess

MAX_BODY = 4096
VALID_NAME = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,200}")
EXPECTED = {200, 400, 401, 403, 404, 405, 413, 415, 422}

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
names = st.one_of(
    st.sampled_from(["agent.created", "a", "x" * 200, "x" * 201, "", "a\nb", "a\rb", "\x00", "é.ü"]),
    st.text(max_size=30),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
event_objects = st.fixed_dictionaries(
    {"event_type": names | json_values},
    optional={"data": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | json_values, "source": names},
)
bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda obj, pad: json.dumps(obj).encode() + b" " * pad, event_objects, st.sampled_from([0, 0, 0, MAX_BODY])
    ),
    st.builds(lambda events: json.dumps({"events": events}).encode(), st.lists(event_objects, max_size=4)),
    # Strings that are not UTF-8.
    st.builds(lambda raw: b'{"event_type": "t", "data": {"x": "' + raw + b'\xff"}}', st.binary(max_size=8)),
    st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"event_type": "t", "data": ' + b"[" * 200_000 + b"}"]),
)


def _split(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One raw HTTP/1.1 request on its own connection; return (status, body)."""
    head = [f"{method} {path} HTTP/1.1", "Connection: close", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


def check_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is one the bus may record."""
    assert set(event) == {"id", "type", "data", "timestamp", "source"}
    assert VALID_NAME.fullmatch(event["type"]), event["type"]
    assert VALID_NAME.fullmatch(event["source"]), event["source"]
    assert isinstance(event["data"], dict)


@pytest.mark.slow
def test_http_inputs_never_crash_the_bus_nor_record_an_invalid_event(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--max-body", str(MAX_BODY), "--quiet")
    port = _split(bus.url)
    good_host = f"127.0.0.1:{port}"
    stream = urllib.request.urlopen(f"{bus.url}/api/dev/events", timeout=WAIT)
    accepted: list[str] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        path=st.sampled_from(["/api/dev/webhook", "/api/dev/trigger", "/api/dev/batch"]),
        host=st.sampled_from([good_host, "localhost", "[::1]", "evil.com", "localhost.evil.com"]) | header_text,
        origin=st.none() | st.sampled_from(["http://localhost:3000", "null", "http://evil.com"]) | header_text,
        content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"])
        | header_text,
        body=bodies,
        plain=st.booleans(),
    )
    def check(path: str, host: str, origin: str | None, content_type: str, body: bytes, plain: bool) -> None:
        # Half the examples send well-formed headers, so that the body reaches the decoder.
        if plain:
            host, origin, content_type = good_host, None, "application/json"
        headers = {"Host": host, "Content-Type": content_type}
        if origin is not None:
            headers["Origin"] = origin
        status, answer = send(port, "POST", path, headers, body)
        assert status in EXPECTED, (status, answer)
        if status == 200:
            assert content_type.split(";")[0].strip().lower() == "application/json"
            assert len(body) <= MAX_BODY
            result = json.loads(answer)
            accepted.extend(result.get("ids") or [result["id"]])
        # Whatever came before, a well-formed event still goes through.
        valid = json.dumps({"event_type": "fuzz.ok", "data": {}}).encode()
        status, answer = send(
            port, "POST", "/api/dev/webhook", {"Host": good_host, "Content-Type": "application/json"}, valid
        )
        assert status == 200, answer
        accepted.append(json.loads(answer)["id"])

    try:
        check()
        history = json.load(urllib.request.urlopen(f"{bus.url}/api/dev/history?limit=10000", timeout=WAIT))["events"]
        for event in history:
            check_event(event)
        assert [event["id"] for event in history] == accepted
        # The live stream carried exactly the accepted events, each in one well-formed frame
        # (heartbeats, comment lines, may fall between frames on a slow run).
        lines = (line for line in stream if not line.startswith(b":"))
        assert next(lines) == b"retry: 1000\n"
        assert b'"connected"' in next(lines) and next(lines) == b"\n"
        for event_id in accepted:
            assert next(lines) == f"id: {event_id}\n".encode()
            line = next(lines)
            assert line.startswith(b"data: ") and next(lines) == b"\n"
            check_event(json.loads(line.removeprefix(b"data: ")))
    finally:
        stream.close()
    assert bus.stop() == 0
