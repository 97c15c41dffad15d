"""A real `devbus run`: non-loopback binds need a token or --insecure; the token is never printed."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support import WAIT, BusProcess, run_devbus

from devbus.bus.serve import check_exposure
from devbus.bus.settings import Settings
from devbus.errors import ConfigError

SECRET = "tok-7f3a9c1e5b"
LOOPBACK = {"ingest": "tcp://127.0.0.1:8766", "egress": "tcp://127.0.0.1:8767"}


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"host": "0.0.0.0"}, "HTTP on 0.0.0.0"),
        ({"host": "::"}, "HTTP on ::"),
        ({"host": "192.168.1.5"}, "HTTP on 192.168.1.5"),
        ({"ingest": "tcp://*:8766"}, "ZeroMQ ingest"),
        ({"ingest": "tcp://0.0.0.0:8766"}, "ZeroMQ ingest"),
        ({"ingest": "epgm://eth0;239.1.1.1:5555"}, "ZeroMQ ingest"),
        ({"egress": "tcp://0.0.0.0:8767"}, "ZeroMQ egress"),
        ({"egress": "tcp://0.0.0.0:8767", "token": SECRET}, "token or not"),
    ],
    ids=["any-ipv4", "any-ipv6", "lan-ip", "ingest-star", "ingest-any", "ingest-multicast", "egress", "egress-token"],
)
def test_exposed_binds_are_refused(settings: dict[str, Any], refused: str) -> None:
    with pytest.raises(ConfigError, match="--insecure") as error:
        check_exposure(Settings(**{**LOOPBACK, **settings}))
    assert refused in str(error.value)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"host": "localhost", "ingest": "tcp://[::1]:1", "egress": "ipc:///tmp/devbus-egress"},
        {"host": "0.0.0.0", "ingest": "tcp://0.0.0.0:8766", "token": SECRET},
        {"host": "0.0.0.0", "egress": "tcp://*:8767", "insecure": True},
    ],
    ids=["defaults", "loopback-and-ipc", "token", "insecure"],
)
def test_loopback_or_opted_in_binds_start(settings: dict[str, Any]) -> None:
    check_exposure(Settings(**{**LOOPBACK, **settings}))


def test_run_refuses_public_bind_and_says_what_to_do() -> None:
    result = run_devbus("run", "--host", "0.0.0.0", "--port", "0", "--ingest", "", "--egress", "")
    assert result.returncode != 0
    assert "Refusing to listen beyond this machine (HTTP on 0.0.0.0)" in result.stderr
    assert "--token" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("opt_in", [["--insecure"], ["--token", SECRET]], ids=["insecure", "token"])
def test_run_starts_on_a_public_bind_when_opted_in(bus_process: Callable[..., BusProcess], opt_in: list[str]) -> None:
    # Bind check only: no traffic goes to the non-loopback address.
    bus = bus_process("--host", "0.0.0.0", *opt_in)
    assert bus.url.startswith("http://0.0.0.0:")
    assert bus.stop() == 0
    assert not any(SECRET in line for line in bus.lines)


def _request(url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def test_token_never_appears_in_the_output(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--log-level", "debug", "--token", SECRET)
    assert "token" in bus.endpoints  # the banner says a token is needed, without showing it
    event = json.dumps({"event_type": "t.ok", "data": {}}).encode()
    json_type = {"Content-Type": "application/json"}
    assert _request(f"{bus.url}/api/dev/webhook?token={SECRET}", headers=json_type, body=event) == 200
    assert _request(f"{bus.url}/api/dev/history?limit=5&token={SECRET}") == 200
    assert _request(f"{bus.url}/api/dev/history", headers={"Authorization": f"Bearer {SECRET}"}) == 200
    assert _request(f"{bus.url}/api/dev/history?token={SECRET}x") == 401
    assert _request(f"{bus.url}/api/dev/history?since={SECRET}&token={SECRET}") == 422
    # A request aiohttp cannot parse is logged with its bytes: the token must not survive that either.
    port = int(bus.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            f"GET /api/dev/events?token={SECRET} HTTP/1.1\r\nHost: localhost\r\nBad\x01: {SECRET}\r\n\r\n".encode()
        )
        assert sock.recv(4096).split(b" ", 2)[1] == b"400"
    bus.wait_for_line(r"GET /api/dev/history\?since=\*\*\*&token=\*\*\* -> 422")
    bus.wait_for_line(r"Error handling request")
    assert bus.stop() == 0
    output = "\n".join(bus.lines)
    assert "token=***" in output  # the access log ran, and scrubbed
    assert SECRET not in output
