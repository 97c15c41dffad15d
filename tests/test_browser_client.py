"""devbus.js in a real Chromium: cross-origin send and receive, resume, gaps, drop-in helpers."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from browser_fixtures import CuttableProxy, PageServer, emit
from playwright.sync_api import Page
from support import BusProcess, free_port

pytestmark = pytest.mark.browser

TOKEN = "s3cret-token"


def open_app(page: Page, server: PageServer, module_url: str) -> None:
    """Open a page on ``server``'s origin that imports devbus.js from ``module_url``."""
    html = f"""<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
  import * as devbus from "{module_url}";
  window.devbus = devbus;
  window.received = [];
  window.statuses = [];
  window.ready = true;
</script>"""
    page.goto(server.add("index.html", html))
    page.wait_for_function("window.ready === true")


def subscribe(page: Page, patterns: str | None = None, **options: Any) -> None:
    """Create a client in the page and subscribe, recording events and statuses."""
    page.evaluate(
        """([patterns, options]) => {
            window.bus = devbus.createDevbus(options.client);
            window.stop = bus.subscribe(patterns, (event) => received.push(event), {
                since: options.since,
                onStatus: (status) => statuses.push(status),
            });
        }""",
        [patterns, {"client": options.get("client", {}), "since": options.get("since")}],
    )


def wait_for_status(page: Page, state: str, *, count: int = 1) -> None:
    """Wait until the client has reported ``state`` ``count`` times."""
    page.wait_for_function(
        "([state, count]) => statuses.filter((s) => s.state === state).length >= count", arg=[state, count]
    )


def received_after(page: Page, sentinel: str) -> list[dict[str, Any]]:
    """Wait for the event with id ``sentinel``; return everything received up to it."""
    page.wait_for_function("(id) => received.some((e) => e.id === id)", arg=sentinel)
    events: list[dict[str, Any]] = page.evaluate("received")
    return events


def test_page_on_another_origin_sends_and_receives(
    page: Page, shared_bus: BusProcess, other_origin: PageServer
) -> None:
    open_app(page, other_origin, f"{shared_bus.url}/devbus.js")
    assert page.evaluate("location.origin") == other_origin.origin != shared_bus.url
    subscribe(page, "cors.*")
    wait_for_status(page, "open")

    sent = page.evaluate("bus.send('cors.hello', {n: 1, text: 'héllo'})")
    emit(shared_bus, "other.ignored")
    last = emit(shared_bus, "cors.last")

    events = received_after(page, last)
    assert [(e["id"], e["type"], e["data"], e["source"]) for e in events] == [
        (sent, "cors.hello", {"n": 1, "text": "héllo"}, "http"),
        (last, "cors.last", {}, "http"),
    ]
    # With no url given, the client talks to the bus it was loaded from.
    assert page.evaluate("bus.url") == shared_bus.url


def test_send_rejects_with_the_servers_message(page: Page, shared_bus: BusProcess, other_origin: PageServer) -> None:
    open_app(page, other_origin, f"{shared_bus.url}/devbus.js")
    error = page.evaluate(
        """() => devbus.createDevbus().send('has space', {}).then(
            () => null, (error) => ({message: error.message, status: error.status}))"""
    )
    assert error["status"] == 422
    assert "`event_type` must not contain whitespace" in error["message"]


def test_subscribe_since_replays_only_what_came_after(
    page: Page, shared_bus: BusProcess, other_origin: PageServer
) -> None:
    first = emit(shared_bus, "since.one")
    second = emit(shared_bus, "since.two")
    open_app(page, other_origin, f"{shared_bus.url}/devbus.js")
    subscribe(page, "since.*", since=first)
    third = emit(shared_bus, "since.three")
    assert [e["id"] for e in received_after(page, third)] == [second, third]


def test_reconnect_after_network_loss_misses_nothing_and_repeats_nothing(
    page: Page, shared_bus: BusProcess, other_origin: PageServer, cuttable_proxy: CuttableProxy
) -> None:
    open_app(page, other_origin, f"{shared_bus.url}/devbus.js")
    subscribe(page, "drop.*", client={"url": cuttable_proxy.url})
    wait_for_status(page, "open")
    before = emit(shared_bus, "drop.before")
    received_after(page, before)

    cuttable_proxy.cut()
    wait_for_status(page, "reconnecting")
    during = [emit(shared_bus, "drop.during", {"n": n}) for n in range(3)]
    cuttable_proxy.restore()
    wait_for_status(page, "open", count=2)
    after = emit(shared_bus, "drop.after")

    assert [e["id"] for e in received_after(page, after)] == [before, *during, after]
    assert page.evaluate("statuses.some((s) => s.state === 'gap')") is False


def test_bus_restart_reconnects_by_itself_and_reports_a_gap(
    page: Page, bus_process: Callable[..., BusProcess], other_origin: PageServer
) -> None:
    first = bus_process()
    port = urllib.parse.urlsplit(first.url).port
    open_app(page, other_origin, f"{first.url}/devbus.js")
    subscribe(page, "restart.*")
    wait_for_status(page, "open")
    before = emit(first, "restart.before")
    received_after(page, before)

    assert first.stop() == 0
    wait_for_status(page, "reconnecting")
    second = bus_process("--port", str(port))
    assert second.url == first.url
    wait_for_status(page, "gap")
    after = emit(second, "restart.after")

    events = received_after(page, after)
    assert [e["type"] for e in events] == ["restart.before", "devbus.gap", "restart.after"]
    gap = events[1]
    assert gap["data"]["last_event_id"] == before
    assert page.evaluate("statuses.find((s) => s.state === 'gap').event.id") == gap["id"]


def test_token_goes_as_query_to_the_stream_and_as_bearer_to_the_api(
    page: Page, bus_process: Callable[..., BusProcess], other_origin: PageServer
) -> None:
    bus = bus_process("--token", TOKEN)
    # The token in the module's URL becomes the client's default.
    open_app(page, other_origin, f"{bus.url}/devbus.js?token={TOKEN}")
    subscribe(page, "secret.*")
    wait_for_status(page, "open")
    sent = page.evaluate("bus.send('secret.hello', {ok: true})")
    assert [e["id"] for e in received_after(page, sent)] == [sent]

    page.evaluate("stop(); statuses.length = 0")
    subscribe(page, "secret.*", client={"token": "wrong"})
    page.wait_for_function("statuses.some((s) => s.state === 'reconnecting' && /token/.test(s.error))")
    rejected = page.evaluate("bus.send('secret.no', {}).then(() => null, (e) => e.status)")
    assert rejected == 401


def test_drop_in_helpers_keep_the_old_call_shapes(page: Page, shared_bus: BusProcess, other_origin: PageServer) -> None:
    open_app(page, other_origin, f"{shared_bus.url}/devbus.js")
    page.evaluate(
        """() => {
            window.calls = [];
            window.cleanup = devbus.subscribeToBackendEvents((eventType, data) => calls.push([eventType, data]));
        }"""
    )
    page.wait_for_function("calls.length >= 1")
    assert page.evaluate("devbus.sendDevWebhook('dropin.hello', {message: 'Hello'})") is None
    page.wait_for_function("calls.some(([type]) => type === 'dropin.hello')")
    calls = page.evaluate("calls")
    # Like the old helper: the connected frame comes through first, with no data.
    assert calls[0] == ["connected", None]
    assert ["dropin.hello", {"message": "Hello"}] in calls
    page.evaluate("cleanup()")


def test_drop_in_helpers_warn_instead_of_throwing_when_the_bus_is_down(page: Page, other_origin: PageServer) -> None:
    # As in an app that copied devbus.js into its sources and runs without the bus.
    source = resources.files("devbus").joinpath("static", "devbus.js").read_text()
    module_url = other_origin.add("src/lib/devbus.js", source)
    open_app(page, other_origin, module_url)
    page.evaluate("(url) => devbus.configure({url})", f"http://127.0.0.1:{free_port()}")

    with page.expect_console_message(lambda m: m.type == "warning" and "could not send down.ping" in m.text):
        assert page.evaluate("devbus.sendDevWebhook('down.ping', {n: 1})") is None
    with page.expect_console_message(lambda m: m.type == "warning" and "is down" in m.text):
        assert page.evaluate("typeof (window.cleanup = devbus.subscribeToBackendEvents(() => {}))") == "function"
    page.evaluate("cleanup()")
