"""The catalogue and record/replay in a real Chromium: the dashboard's types panel, "send again",
"copy as curl", and a recorded bulk import replayed into a fresh bus while a page watches."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import PageServer, emit
from playwright.sync_api import Locator, Page, expect
from support import ROOT, WAIT, BusProcess, assert_agent_types, bus_env, devbus_cli, start_recorder

pytestmark = pytest.mark.browser


def open_dashboard(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#status")).to_have_text("Live")


def type_item(page: Page, event_type: str) -> Locator:
    return page.locator(f'#types > li[data-type="{event_type}"]')


def event_rows(page: Page, event_type: str) -> Locator:
    return page.locator("#events > li").filter(
        has=page.locator(".type", has_text=re.compile(f"^{re.escape(event_type)}$"))
    )


@pytest.mark.slow
def test_dashboard_lists_types_with_counts_and_schema(page: Page, shared_bus: BusProcess) -> None:
    open_dashboard(page, shared_bus.url)
    emit(shared_bus, "panel.created", {"name": "Ada", "age": 3})
    emit(shared_bus, "panel.created", {"name": "Bo", "age": 2.5, "tags": ["x"]})

    item = type_item(page, "panel.created")
    expect(item.locator(".count")).to_have_text("2")
    item.locator("summary").click()
    schema = item.locator("pre")
    expect(schema).to_be_visible()
    shown = json.loads(schema.inner_text())
    assert shown["properties"]["age"] == {"type": "number"}
    assert shown["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert sorted(shown["required"]) == ["age", "name"]
    expect(item.locator(".meta")).to_contain_text("from http")

    # The panel refreshes in place: an open type stays open as its count grows.
    emit(shared_bus, "panel.created", {"name": "Cy", "age": 1})
    expect(item.locator(".count")).to_have_text("3")
    expect(schema).to_be_visible()


def test_send_again_and_copy_as_curl(page: Page, shared_bus: BusProcess) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=shared_bus.url)
    open_dashboard(page, shared_bus.url)
    original = emit(shared_bus, "again.hello", {"text": 'it\'s "quoted"', "n": [1, {"deep": None}]})
    row = event_rows(page, "again.hello")
    expect(row).to_have_count(1)
    row.locator(":scope > button").click()

    row.get_by_role("button", name="Send again").click()
    expect(row.locator(".actions .result")).to_have_text(re.compile(r"^Sent again as \S+$"))
    expect(event_rows(page, "again.hello")).to_have_count(2)
    resent = json.loads(
        urllib.request.urlopen(f"{shared_bus.url}/api/dev/history?types=again.hello", timeout=WAIT).read()
    )["events"]
    assert [e["data"] for e in resent] == [{"text": 'it\'s "quoted"', "n": [1, {"deep": None}]}] * 2
    assert resent[0]["id"] == original != resent[1]["id"]
    assert resent[1]["source"] == resent[0]["source"] == "http"

    row.get_by_role("button", name="Copy as curl").click()
    expect(row.locator(".actions .result")).to_have_text("Copied")
    command = page.evaluate("navigator.clipboard.readText()")
    # The copied command, as a shell would split it, is a POST that the bus takes.
    words = shlex.split(command)
    assert words[:4] == ["curl", "-X", "POST", f"{shared_bus.url}/api/dev/webhook"]
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    body = words[words.index("-d") + 1].encode()
    request = urllib.request.Request(words[3], data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert json.load(response)["success"] is True
    expect(event_rows(page, "again.hello")).to_have_count(3)


WATCHER_PAGE = """<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
  import {{ createDevbus }} from "{module}";
  window.received = [];
  window.opened = false;
  createDevbus().subscribe(null, (event) => received.push(event), {{
    onStatus: (status) => {{ if (status.state === "open") window.opened = true; }},
  }});
</script>"""


def test_recorded_bulk_import_replays_into_a_fresh_bus_as_the_page_saw_it(
    bus_process: Callable[..., BusProcess], page: Page, other_origin: PageServer, tmp_path: Path
) -> None:
    count = 25
    original_bus = bus_process("--quiet")
    recording = tmp_path / "bulk.jsonl"
    recorder = start_recorder(original_bus, recording, "--count", str(count + 1))
    seeded = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bulk_create_agents.py"), "--count", str(count)],
        env=bus_env(DEVBUS_INGEST=original_bus.endpoints["ingest"]),
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    assert recorder.wait(timeout=WAIT) == 0
    assert recorder.stderr is not None
    recorder.stderr.close()
    recorded = [json.loads(line) for line in recording.read_text().splitlines()]
    assert [e["type"] for e in recorded] == ["agent.created"] * count + ["agents.bulk_created"]

    fresh_bus = bus_process("--quiet")
    page.goto(other_origin.add("index.html", WATCHER_PAGE.format(module=f"{fresh_bus.url}/devbus.js")))
    page.wait_for_function("window.opened === true")
    replayed = devbus_cli(fresh_bus, "replay", str(recording))
    assert replayed.exit_code == 0, replayed.output

    page.wait_for_function("(n) => received.length >= n", arg=len(recorded))
    seen: list[dict[str, Any]] = page.evaluate("received")
    assert [(e["type"], e["data"]) for e in seen] == [(e["type"], e["data"]) for e in recorded]
    assert {e["source"] for e in seen} == {"replay"}

    typescript = devbus_cli(fresh_bus, "types", "--ts")
    assert typescript.exit_code == 0, typescript.output
    assert_agent_types(typescript.stdout)
    # Only the two types the script sent: the union holds them and nothing else.
    assert typescript.stdout.count("  | DevbusEventOf<") == 2
