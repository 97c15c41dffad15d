"""Start and stop the servers the benchmark measures: `devbus run` and the reference app."""

from __future__ import annotations

import itertools
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

    port: int  # the HTTP port, read from its output once it is ready
    numbered = False  # whether its SSE frames carry ids that count up (sinks can check their order)

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
        if not self._ready.wait(timeout) or self.proc.poll() is not None or not self._started():
            errors = self.errors()
            self.stop()
            raise RuntimeError(f"{name} did not start: {self.lines} {errors}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._pattern in line:
                self._ready.set()
        self._ready.set()

    def _started(self) -> bool:
        return any(self._pattern in line for line in self.lines)

    def errors(self) -> str:
        """The last lines the server wrote to stderr."""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it."""
        self.proc.kill()
        self.proc.wait()
        self.stop()

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


def is_shared(store: str | None) -> bool:
    """Whether ``store`` is one that several buses share (Redis)."""
    return (store or "").split(":", 1)[0] in ("redis", "rediss", "unix")


class Devbus(Server):
    """`python -m devbus run` on free loopback ports, quiet; under cProfile if ``profile`` names a file.

    ``store`` is passed as ``--store``; for ``sqlite:PATH`` every bus gets a fresh
    database next to PATH (``PATH-1.sqlite``, ``PATH-2.sqlite``, … in a temporary
    folder if PATH is empty), removed when it stops, so no scenario sees another's events;
    ``keep`` names a SQLite file to use instead, kept when the bus stops (a restart).
    On Redis every bus gets a fresh ``--store-key`` unless ``shared_key`` names one (buses
    of one cluster). ``store=`` overrides the class's store for one bus.
    """

    profile: Path | None = None
    store: str | None = None
    numbered = True
    _numbers = itertools.count(1)
    _scratch: Path | None = None

    def __init__(
        self, *options: str, store: str | None = None, shared_key: str | None = None, keep: Path | None = None
    ) -> None:
        if store is not None:
            self.store = store
        if keep is not None:
            self.store = f"sqlite:{keep}"
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        command = [sys.executable, *profiler, "-m", "devbus", "run", "--port", "0", "--quiet"]
        command += ["--ingest", "tcp://127.0.0.1:*", "--egress", "tcp://127.0.0.1:*"]
        self.database = self._fresh_database() if keep is None else None
        if self.database is not None:
            command += ["--store", f"sqlite:{self.database}"]
        elif self.store:
            command += ["--store", self.store]
            if self.shared:
                command += ["--store-key", shared_key or f"bench-{os.getpid()}-{next(self._numbers)}"]
        command += options
        super().__init__("devbus", command, ready="ready")
        self.endpoints = {m.group(1): m.group(2) for line in self.lines if (m := _ROW.match(line))}
        base = next(m.group(1) for line in self.lines if (m := _BASE.search(line)))
        self.port = int(base.rsplit(":", 1)[1])

    def _fresh_database(self) -> Path | None:
        if not self.store or not self.store.startswith("sqlite:"):
            return None
        path = self.store.removeprefix("sqlite:")
        if not path:
            if Devbus._scratch is None:
                Devbus._scratch = Path(tempfile.mkdtemp(prefix="devbus-bench-"))
            path = str(Devbus._scratch / "bench.sqlite")
        base = Path(path)
        fresh = base.with_name(f"{base.stem}-{next(self._numbers)}{base.suffix or '.sqlite'}")
        self._remove_database(fresh)
        return fresh

    @staticmethod
    def _remove_database(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def stop(self, *, timeout: float = 10.0) -> int:
        code = super().stop(timeout=timeout)
        if self.database is not None:
            self._remove_database(self.database)
        return code

    @property
    def shared(self) -> bool:
        """Whether this bus's store is one that several buses share (Redis)."""
        return is_shared(self.store)

    @property
    def ingest(self) -> str | None:
        """The ZeroMQ ingest endpoint, if this bus has one."""
        return self.endpoints.get("ingest")


class Bare(Server):
    """The bare stack (``scripts/bare_stack.py``): aiohttp, msgspec and pyzmq doing the least devbus does."""

    numbered = True  # its SSE ids count up as devbus's do, so the sinks check their order

    def __init__(self, mode: str) -> None:
        command = [sys.executable, str(ROOT / "scripts" / "bare_stack.py"), mode]
        super().__init__(f"bare {mode}", command, ready="listening on")
        self.port = int(next(line for line in self.lines if "listening on" in line).split()[-1])
        self.ingest = next((line.split()[-1] for line in self.lines if line.startswith("ingest ")), None)


class Reference(Server):
    """The FastAPI + uvicorn dev-webhook app devbus replaces."""

    def __init__(self) -> None:
        command = [sys.executable, str(ROOT / "scripts" / "reference_app.py")]
        super().__init__("reference", command, ready="listening on")
        self.port = int(next(line for line in self.lines if "listening on" in line).split()[-1])
