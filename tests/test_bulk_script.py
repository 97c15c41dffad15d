"""scripts/bulk_create_agents.py: records written, events announced, a browser page told."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from browser_fixtures import PageServer
from playwright.sync_api import Page
from readme import Addresses, example, localize, readme_example
from support import ROOT, BusProcess, bus_env, wait_for_history, wait_until

SCRIPT = ROOT / "scripts" / "bulk_create_agents.py"


def run_script(*args: str, ingest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=bus_env(DEVBUS_INGEST=ingest),
        cwd=ROOT,
        timeout=60,
    )


def test_creates_records_and_announces_each_then_the_batch(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    bus = bus_process("--quiet")
    db = tmp_path / "agents.sqlite3"
    result = run_script("--count", "5", "--db", str(db), ingest=bus.endpoints["ingest"])
    assert result.returncode == 0, result.stderr
    assert "created 5 agents" in result.stdout
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT id, name FROM agents ORDER BY rowid").fetchall()
    assert len(rows) == 5
    events = wait_for_history(bus, 6)
    created, summary = events[:5], events[5]
    assert [(e["data"]["id"], e["data"]["name"]) for e in created] == rows
    assert all(e["type"] == "agent.created" and e["data"]["bulk"] is True for e in created)
    assert summary["type"] == "agents.bulk_created"
    assert summary["data"] == {"count": 5, "agent_ids": [row[0] for row in rows]}
    assert {e["source"] for e in events} == {"seed"}


def test_no_bus_is_one_line_and_a_failing_exit() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "3", "--timeout", "0.3"],
        capture_output=True,
        text=True,
        env=bus_env(DEVBUS_INGEST=f"tcp://127.0.0.1:{port}"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"tcp://127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.browser
@readme_example("seed-page")
def test_a_browser_subscriber_prints_100_new_agents(
    shared_bus: BusProcess, other_origin: PageServer, page: Page
) -> None:
    """The README's page, verbatim apart from the bus address."""
    snippet = localize(example("seed-page").text, Addresses.of(shared_bus))
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    before = shared_bus.health()["subscribers"]
    page.goto(other_origin.add("agents.html", f'<!doctype html><meta charset="utf-8"><title>agents</title>\n{snippet}'))
    wait_until(lambda: shared_bus.health()["subscribers"] > before, what="the page's stream to open")
    with page.expect_console_message(lambda message: message.text.endswith("new agents")):
        result = run_script(ingest=shared_bus.endpoints["ingest"])
        assert result.returncode == 0, result.stderr
    # (The page server has no favicon, so Chromium also logs a 404.)
    assert [text for text in console if "agents" in text] == ["100 new agents"]
