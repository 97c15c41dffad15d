"""The dashboard at GET / in a real Chromium: live list, form, filter, pause, bounds, tabs."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from browser_fixtures import WAIT_MS, emit, post_json
from playwright.sync_api import Locator, Page, expect
from support import ROOT, WAIT, BusProcess, bus_env

pytestmark = pytest.mark.browser

ROWS_RENDERED = 500


def open_dashboard(page: Page, url: str) -> None:
    """Open the dashboard and wait until its stream is live and the history it loads at open is shown."""
    page.goto(url)
    expect(page.locator("#status")).to_have_text("Live")
    expect(page.locator("body")).to_have_attribute("data-history", "loaded")


def rows(page: Page, event_type: str | None = None) -> Locator:
    """The rendered event rows, optionally only those of one type."""
    locator = page.locator("#events > li")
    if event_type is None:
        return locator
    return locator.filter(has=page.locator(".type", has_text=re.compile(f"^{re.escape(event_type)}$")))


def send_from_form(page: Page, event_type: str, data: str) -> None:
    """Fill in and submit the send form."""
    page.get_by_label("Type", exact=True).fill(event_type)
    page.get_by_label("Data (a JSON object)").fill(data)
    page.get_by_role("button", name="Send event").click()


def count(page: Page, selector: str) -> int:
    """Read a counter of the header."""
    return int(page.locator(selector).inner_text().replace(",", ""))


def test_event_sent_from_one_tab_appears_in_another(new_page: Callable[[], Page], shared_bus: BusProcess) -> None:
    sender, watcher = new_page(), new_page()
    open_dashboard(sender, shared_bus.url)
    open_dashboard(watcher, shared_bus.url)

    send_from_form(sender, "tabs.hello", '{"from": "tab 1", "n": 42}')

    expect(sender.locator("#send-result")).to_have_text(re.compile(r"^Sent tabs\.hello as \S+$"))
    row = rows(watcher, "tabs.hello")
    expect(row).to_have_count(1)
    expect(row.locator(".source")).to_have_text("dashboard")
    expect(row.locator(".data")).to_have_text('{"from":"tab 1","n":42}')
    sent_id = sender.locator("#send-result").inner_text().rsplit(" ", 1)[1]
    expect(row.locator(".id")).to_have_text(sent_id)


def test_send_form_shows_the_servers_validation_error_inline(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    error = page.locator("#send-error")

    send_from_form(page, "has space", "{}")
    expect(error).to_contain_text("`event_type` must not contain whitespace")
    expect(page.get_by_label("Type", exact=True)).to_have_attribute("aria-invalid", "true")

    send_from_form(page, "form.list", "[1, 2]")
    expect(error).to_contain_text("at `$.data`")
    expect(page.get_by_label("Data (a JSON object)")).to_have_attribute("aria-invalid", "true")

    send_from_form(page, "form.broken", "{not json")
    expect(error).to_contain_text("Data is not valid JSON")

    send_from_form(page, "form.fixed", '{"ok": true}')
    expect(error).to_have_text("")
    expect(rows(page, "form.fixed")).to_have_count(1)
    for name in ("Type", "Data (a JSON object)"):
        expect(page.get_by_label(name, exact=True)).to_have_attribute("aria-invalid", "false")


def test_recent_history_is_shown_on_open_once(page: Page, shared_bus: BusProcess) -> None:
    earlier = emit(shared_bus, "history.earlier", {"k": "v"})
    open_dashboard(page, shared_bus.url)
    later = emit(shared_bus, "history.later")

    expect(rows(page, "history.later")).to_have_count(1)
    expect(rows(page, "history.earlier")).to_have_count(1)
    # Newest first.
    ids = rows(page).locator(".id").all_inner_texts()
    assert ids.index(later) < ids.index(earlier)


def test_filter_pause_resume_clear_and_expand_with_the_keyboard(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    emit(shared_bus, "keys.alpha", {"letter": "a"})
    emit(shared_bus, "other.beta")
    expect(rows(page, "other.beta")).to_have_count(1)

    page.keyboard.press("/")
    expect(page.get_by_label("Filter by type")).to_be_focused()
    page.keyboard.type("keys.*")
    expect(rows(page, "other.beta")).to_have_count(0)
    expect(rows(page)).to_have_count(1)

    pause = page.locator("#pause")
    expect(pause).to_have_accessible_name("Pause")
    pause.focus()
    page.keyboard.press("Enter")
    expect(pause).to_have_attribute("aria-pressed", "true")
    emit(shared_bus, "keys.gamma")
    expect(pause).to_have_text("Resume (1 new)")
    expect(rows(page, "keys.gamma")).to_have_count(0)
    page.keyboard.press("Enter")
    expect(rows(page, "keys.gamma")).to_have_count(1)
    expect(rows(page).first.locator(".type")).to_have_text("keys.gamma")

    summary = rows(page, "keys.alpha").locator(":scope > button")
    summary.focus()
    page.keyboard.press("Enter")
    expect(summary).to_have_attribute("aria-expanded", "true")
    detail = rows(page, "keys.alpha").locator("pre")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text('"type": "keys.alpha"')
    expect(detail).to_contain_text('"letter": "a"')
    page.keyboard.press("Enter")
    expect(detail).to_be_hidden()

    page.get_by_role("button", name="Clear").click()
    expect(rows(page)).to_have_count(0)
    page.get_by_label("Filter by type").fill("")
    expect(rows(page)).to_have_count(0)


def test_event_list_is_one_tab_stop_with_arrow_keys_inside(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    page.get_by_label("Filter by type").fill("nav.*")
    for n in range(3):
        emit(shared_bus, f"nav.e{n}")
    expect(rows(page)).to_have_count(3)

    def row_button(event_type: str) -> Locator:
        return rows(page, event_type).get_by_role("button")

    page.locator("#clear").focus()
    page.keyboard.press("Tab")
    expect(row_button("nav.e2")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(row_button("nav.e1")).to_be_focused()
    page.keyboard.press("End")
    expect(row_button("nav.e0")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Type", exact=True)).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(row_button("nav.e0")).to_be_focused()


def test_dom_stays_bounded_with_ten_thousand_events(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    seen_before = count(page, "#count-seen")
    events = [{"event_type": "load.tick", "data": {"n": n}} for n in range(10_000)]
    assert post_json(f"{shared_bus.url}/api/dev/batch", {"events": events})["success"]

    expect(page.locator("#count-seen")).to_have_text(f"{seen_before + 10_000:,}", timeout=WAIT_MS * 2)
    expect(rows(page).first.locator(".data")).to_have_text('{"n":9999}')
    expect(rows(page)).to_have_count(ROWS_RENDERED)
    expect(rows(page).last.locator(".data")).to_have_text(f'{{"n":{10_000 - ROWS_RENDERED}}}')
    expect(page.locator("#count-rate")).not_to_have_text("0")
    expect(page.locator("#count-subscribers")).to_have_text(re.compile(r"^[1-9]"))


def test_events_per_second_does_not_count_the_history_loaded_at_open(
    page: Page, bus_process: Callable[..., BusProcess]
) -> None:
    """The 200 events of history read as 200 events/s for the first second."""
    bus = bus_process("--quiet")
    events = [{"event_type": "old.tick", "data": {"n": n}} for n in range(200)]
    assert post_json(f"{bus.url}/api/dev/batch", {"events": events})["success"]
    open_dashboard(page, bus.url)
    expect(rows(page, "old.tick")).to_have_count(200)
    emit(bus, "live.tick")
    expect(rows(page, "live.tick")).to_have_count(1)
    expect(page.locator("#count-rate")).not_to_have_text("0")
    # One live event, averaged over one to five seconds.
    assert float(page.locator("#count-rate").inner_text()) <= 1
    assert count(page, "#count-seen") == 201


def test_dashboard_passes_its_token_on(page: Page, bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--token", "dash-token")
    open_dashboard(page, f"{bus.url}/?token=dash-token")
    send_from_form(page, "token.ok", "{}")
    expect(rows(page, "token.ok")).to_have_count(1)


def test_event_emitted_over_zeromq_by_a_python_process_appears(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    script = "import devbus; devbus.emit('backend.agent_created', {'id': 7, 'via': 'zmq'})"
    env = bus_env(DEVBUS_INGEST=shared_bus.endpoints["ingest"])
    subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True, timeout=WAIT)

    row = rows(page, "backend.agent_created")
    expect(row).to_have_count(1)
    expect(row.locator(".source")).to_have_text("zmq")
    expect(row.locator(".data")).to_have_text('{"id":7,"via":"zmq"}')


@pytest.mark.slow
def test_a_forward_target_that_is_down_is_shown(page: Page, bus_process: Callable[..., BusProcess]) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bus = bus_process("--forward", f"api=http://127.0.0.1:{port}/hook")
    open_dashboard(page, bus.url)
    send_from_form(page, "forward.me", "{}")

    target = page.locator("#forward li")
    expect(target).to_have_count(1)
    expect(target).to_have_attribute("data-state", "down")
    expect(target).to_have_text(re.compile(r"^→ api down · 1 queued$"))
