"""README commands run as a user runs them: with bash, from this checkout's venv, against a bus on free ports.

How README blocks are marked and read is in tests/readme.py; this module runs what they say.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from readme import Addresses
from support import ROOT, WAIT, bus_env

__all__ = ["START", "Running", "require_command", "run", "shell_env"]

# What a README command may take to print what it shows, or to end: each is a new process
# (Python and its imports, Node, a compiler), slow to start on a machine shared with others.
START = 3 * WAIT


def require_command(name: str) -> None:
    """Skip a test whose block needs ``name`` (jq, say) where it is missing, except in CI, where that fails."""
    if shutil.which(name) is not None:
        return
    message = f"the README's example needs `{name}` (Debian: apt-get install {name})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def shell_env(bus: Addresses | None = None, *, checkout: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a README command: this interpreter's bin first on PATH, and ``bus``'s addresses.

    ``checkout=False`` leaves this checkout off PYTHONPATH, for commands that must use what they installed.
    """
    env = bus_env(**extra)
    if not checkout:
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p and p != str(ROOT))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if bus is not None:
        env.update(DEVBUS_URL=bus.url, DEVBUS_INGEST=bus.ingest, DEVBUS_EGRESS=bus.egress)
    return env


def run(
    command: str, *, env: dict[str, str], cwd: Path, timeout: float = 2 * START, status: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run one command with bash (``pipefail``: a failing stage fails it); fail the test unless it exits ``status``."""
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == status, (
        f"`{command}` exited with {result.returncode}, not {status}:\n{result.stdout}{result.stderr}"
    )
    return result


class Running:
    """A README command running in the background, as in a terminal.

    Its stdout and stderr are a pseudo-terminal (200 columns), as a user's are, so that
    commands behave as the README shows (`jq` flushes each line to a terminal, not to a
    pipe); what it prints is read line by line, without colours. It runs in its own
    process group, so Ctrl-C (:meth:`interrupt`) reaches a whole pipeline.
    """

    def __init__(self, command: str, *, env: dict[str, str], cwd: Path) -> None:
        self.command = command
        self.lines: list[str] = []
        self._seen = threading.Condition()
        terminal, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=child,
            stderr=child,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_interruptible,
        )
        os.close(child)
        self._reader = threading.Thread(target=self._read, args=(terminal,), daemon=True)
        self._reader.start()

    def _read(self, terminal: int) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # EIO: every process holding the terminal has exited
                    chunk = b""
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                with self._seen:
                    self.lines.extend(_ANSI.sub("", line.decode(errors="replace")).rstrip("\r") for line in complete)
                    self._seen.notify_all()
        finally:
            os.close(terminal)
            with self._seen:
                if pending:
                    self.lines.append(_ANSI.sub("", pending.decode(errors="replace")).rstrip("\r"))
                self._seen.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], *, timeout: float = START) -> re.Match[str]:
        """Wait until it prints a line matching ``pattern``; fail, showing what it printed, if it does not."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := regex.search(line)) is not None), None)

        with self._seen:
            self._seen.wait_for(lambda: find() is not None or not self._reader.is_alive(), timeout)
            match = find()
        assert match is not None, f"`{self.command}` printed no line matching {regex.pattern!r}:\n" + "\n".join(
            self.lines
        )
        return match

    def exited(self, *, timeout: float = START) -> int:
        """Wait for it to end by itself; return its exit status."""
        status = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)  # its last output read
        return status

    def interrupt(self, *, timeout: float = START) -> int:
        """Ctrl-C: SIGINT to its process group; return its exit status."""
        self._signal(signal.SIGINT)
        return self.exited(timeout=timeout)

    def kill(self) -> None:
        """Kill its process group, if anything of it still runs."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT)

    def _signal(self, signum: int) -> None:
        # The whole group: bash may have left children behind (a pipeline, `devbus run &`).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


def _interruptible() -> None:
    """In the child: Ctrl-C stops it, as in a terminal.

    A test run started in the background of a shell inherits SIGINT ignored, and an
    ignored signal stays ignored across exec: the command would never see its Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def background() -> Iterator[Callable[..., Running]]:
    """Start README commands in the background; every one still running is killed after the test."""
    started: list[Running] = []

    def start(command: str, *, env: dict[str, str], cwd: Path) -> Running:
        running = Running(command, env=env, cwd=cwd)
        started.append(running)
        return running

    yield start
    for running in started:
        running.kill()
