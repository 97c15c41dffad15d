"""The README's FastAPI backend, served as the README says: without a bus, with one, and when it goes away."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from readme import commands, example, readme_example
from readme_shell import run, shell_env
from support import WAIT, BusProcess, wait_for_history
from test_client import free_endpoint, past_a_restart

SHUTDOWN_S = 1.5  # what a Ctrl-C or `uvicorn --reload` of the backend may take while the bus is away


class Uvicorn:
    """The README's `uvicorn app:app --port 8000`, on a free port (0) instead, its log read like a bus's."""

    def __init__(self, app_dir: Path, ingest: str) -> None:
        _, serve = commands(example("fastapi-run"))
        proc = subprocess.Popen(
            shlex.split(serve.replace("--port 8000", "--port 0")),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=shell_env(DEVBUS_INGEST=ingest),
            cwd=app_dir,
        )
        self.output = BusProcess(proc)
        threading.Thread(target=self.output._pump, daemon=True).start()
        self.url = self.output.wait_for_line(r"Uvicorn running on (http://\S+)").group(1)

    def create_agent(self, name: str) -> tuple[dict[str, Any], float]:
        """POST /agents; return the answer and how long it took."""
        request = urllib.request.Request(
            f"{self.url}/agents", data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=WAIT) as reply:
            assert reply.status == 200
            answer: dict[str, Any] = json.load(reply)
        return answer, time.monotonic() - started

    def stop(self) -> float:
        """SIGTERM (what Ctrl-C and `--reload` do); return how long uvicorn took to exit."""
        started = time.monotonic()
        # uvicorn re-raises the SIGTERM once it has shut down cleanly.
        assert self.output.stop() in (0, -signal.SIGTERM)
        took = time.monotonic() - started
        self.output.wait_for_line("Application shutdown complete")
        assert not [line for line in self.output.lines if "Traceback" in line or "ERROR" in line], self.output.lines
        return took


@pytest.fixture
def uvicorn(tmp_path: Path) -> Iterator[Callable[[str], Uvicorn]]:
    """Serve the README's FastAPI app, verbatim, as the README serves it."""
    (tmp_path / "app.py").write_text(example("fastapi-backend").text)
    install, _ = commands(example("fastapi-run"))
    # This venv has them (devbus's [test] extra): pip finds them installed and changes nothing.
    assert "Requirement already satisfied: uvicorn" in run(install, env=shell_env(), cwd=tmp_path, timeout=120).stdout
    started: list[Uvicorn] = []

    def start(ingest: str) -> Uvicorn:
        server = Uvicorn(tmp_path, ingest)
        started.append(server)
        return server

    yield start
    for server in started:
        server.output.close()


@readme_example("fastapi-backend", "fastapi-run")
def test_the_readme_backend_works_without_a_bus_and_delivers_once_one_starts(
    uvicorn: Callable[[str], Uvicorn], bus_process: Callable[..., BusProcess]
) -> None:
    """With no bus, startup used to fail after 5 s, then every POST took 5 s and answered 500."""
    ingest = free_endpoint()
    server = uvicorn(ingest)
    server.output.wait_for_line("Application startup complete")
    timings = []
    for name in ("Ada", "Brook", "Cyd"):
        answer, took = server.create_agent(name)
        assert answer["name"] == name
        timings.append(took)
    # No waiting for the bus: far under the 5 s each request used to take.
    assert max(timings) < WAIT / 4, timings
    bus = bus_process("--quiet", "--ingest", ingest)
    server.create_agent("Dara")
    events = wait_for_history(bus, 4)
    assert [(e["type"], e["data"]["name"], e["source"]) for e in events] == [
        ("agent.created", name, "api") for name in ("Ada", "Brook", "Cyd", "Dara")
    ]
    server.stop()


def served_by_a_bus_that_went_away(
    uvicorn: Callable[[str], Uvicorn], bus_process: Callable[..., BusProcess]
) -> tuple[Uvicorn, str, float]:
    """The README's backend, after one event reached a bus that then stopped, once its log says so.

    Returns the backend, the bus's ingest address and when the bus had stopped.
    """
    bus = bus_process("--quiet")
    ingest = bus.endpoints["ingest"]
    server = uvicorn(ingest)
    server.create_agent("Ada")
    wait_for_history(bus, 1)
    assert bus.stop() == 0
    gone = time.monotonic()
    server.output.wait_for_line(rf"devbus at {ingest} is not reachable")
    return server, ingest, gone


def test_shutdown_with_the_bus_away_does_not_wait_for_it_and_reports_what_it_held(
    uvicorn: Callable[[str], Uvicorn], bus_process: Callable[..., BusProcess]
) -> None:
    """Every Ctrl-C and `uvicorn --reload` stalled 6-7 s while the bus was away and events were held."""
    server, ingest, gone = served_by_a_bus_that_went_away(uvicorn, bus_process)
    for name in ("Brook", "Cyd", "Dara"):
        server.create_agent(name)
    past_a_restart(gone)  # before, the publisher waits for the bus, as it may be restarting
    took = server.stop()
    assert took < SHUTDOWN_S, f"shutdown took {took:.2f}s with the bus away"
    server.output.wait_for_line(rf"3 events not delivered: the devbus at {ingest} went away and was not back")


def test_the_log_says_at_its_default_level_when_the_bus_is_back(
    uvicorn: Callable[[str], Uvicorn], bus_process: Callable[..., BusProcess]
) -> None:
    """The backend said "not reachable" and never "back": that line was at info level, which uvicorn hides."""
    server, ingest, _ = served_by_a_bus_that_went_away(uvicorn, bus_process)
    server.create_agent("Brook")
    second = bus_process("--quiet", "--ingest", ingest)
    server.output.wait_for_line(rf"devbus at {ingest} is back; delivering 1 held event$")
    assert [e["data"]["name"] for e in wait_for_history(second, 1)] == ["Brook"]
    server.stop()
