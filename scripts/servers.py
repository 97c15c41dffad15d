"""Start and stop the servers the benchmark measures: `devbus run` and the reference app."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from loadgen import Probe

ROOT = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\s+(\w+)\s+(\S+)")
_BASE = re.compile(r" on (http://\S+)")


class Server:
    """A child process that prints a ready line; stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], *, ready: str, timeout: float = 30.0) -> None:
        self.name = name
        self.lines: list[str] = []
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVBUS_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True, start_new_session=True
        )
        self.probe = Probe(self.proc.pid)
        self._ready = threading.Event()
        self._pattern = ready
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{name} did not start: {self.lines} {self.errors()}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._pattern in line:
                self._ready.set()
        self._ready.set()

    def errors(self) -> str:
        """The last lines the server wrote to stderr."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def stop(self, *, timeout: float = 10.0) -> int:
        """SIGTERM the server and wait for it; kill it if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()
        return self.proc.returncode


class Devbus(Server):
    """`python -m devbus run` on free loopback ports, quiet; under cProfile if ``profile`` names a file."""

    profile: Path | None = None

    def __init__(self, *options: str) -> None:
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        command = [sys.executable, *profiler, "-m", "devbus", "run", "--port", "0", "--quiet"]
        command += ["--ingest", "tcp://127.0.0.1:*", "--egress", "tcp://127.0.0.1:*", *options]
        super().__init__("devbus", command, ready="ready")
        self.endpoints = {m.group(1): m.group(2) for line in self.lines if (m := _ROW.match(line))}
        base = next(m.group(1) for line in self.lines if (m := _BASE.search(line)))
        self.port = int(base.rsplit(":", 1)[1])

    @property
    def ingest(self) -> str | None:
        """The ZeroMQ ingest endpoint, if this bus has one."""
        return self.endpoints.get("ingest")


class Reference(Server):
    """The FastAPI + uvicorn dev-webhook app devbus replaces."""

    def __init__(self) -> None:
        command = [sys.executable, str(ROOT / "scripts" / "reference_app.py")]
        super().__init__("reference", command, ready="listening on")
        self.port = int(next(line for line in self.lines if "listening on" in line).split()[-1])
