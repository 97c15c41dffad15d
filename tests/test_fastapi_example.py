"""The README's FastAPI backend, run as written under uvicorn: without a bus, then with one."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WAIT, BusProcess, bus_env, wait_for_history
from test_client import free_endpoint

SNIPPET = re.compile(r"```python\n(from contextlib import asynccontextmanager\n.*?)```", re.DOTALL)


class Uvicorn:
    """A uvicorn child serving the README's app (its output read like a bus's)."""

    def __init__(self, app_dir: Path, ingest: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--port", "0", "--app-dir", str(app_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=bus_env(DEVBUS_INGEST=ingest),
            cwd=ROOT,
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


@pytest.fixture
def uvicorn(tmp_path: Path) -> Iterator[Callable[[str], Uvicorn]]:
    """Serve the README's FastAPI snippet, verbatim, with uvicorn."""
    [snippet] = SNIPPET.findall((ROOT / "README.md").read_text())
    (tmp_path / "app.py").write_text(snippet)
    started: list[Uvicorn] = []

    def start(ingest: str) -> Uvicorn:
        server = Uvicorn(tmp_path, ingest)
        started.append(server)
        return server

    yield start
    for server in started:
        server.output.close()


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
    # uvicorn re-raises the SIGTERM once it has shut down cleanly.
    assert server.output.stop() in (0, -signal.SIGTERM)
    server.output.wait_for_line("Application shutdown complete")
    assert not [line for line in server.output.lines if "Traceback" in line or "ERROR" in line]
