"""The README's fenced blocks, as the tests that run them read them.

Every fenced block in README.md has a marker on the line before it, an HTML comment
(GitHub does not show it):

    <!-- example: NAME -->       a command or code a user runs: a test runs it
    <!-- output: NAME -->        what an example prints, as the README shows it: a test compares it
    <!-- illustration: WHY -->   not run, for the reason given (a Docker setup, a usage synopsis)

A test claims the names it runs and checks with ``@readme_example("NAME", ...)`` and reads
the blocks with ``example(NAME)``. tests/test_readme.py fails on a block without a marker,
on a NAME that no test claims, and on a claimed NAME the README no longer has, so a new
block cannot slip in untested and an example that stops working fails CI.

How a block is run:

- The README uses the default addresses: ``http://127.0.0.1:8765`` (HTTP) and
  ``tcp://127.0.0.1:8766`` / ``:8767`` (ZeroMQ ingest and egress). Tests run every block
  against a bus on free ports: :func:`localize` replaces those literal addresses in the
  block's text, and commands get ``DEVBUS_URL``, ``DEVBUS_INGEST`` and ``DEVBUS_EGRESS`` in
  their environment, which every client and ``devbus run`` read. A test may replace more
  (the example id ``3f9a1c2e-42`` by a real one, ``/path/to/devbus`` by this checkout);
  each says so where it does.
- Shell blocks run with bash (tests/readme_shell.py), one command (a line, with its ``\\``
  continuations, from :func:`commands`) at a time, with this interpreter's bin directory
  first on ``PATH`` (so ``devbus``, ``python`` and ``uvicorn`` are the ones under test).
  Commands that run until stopped (``devbus run``, ``devbus listen``, ``curl -N``) run in
  the background (``readme_shell.Running``), and the test waits, bounded, for the output
  the README shows.
- Shown output (an output block, or a ``# …`` comment under a command) is compared with
  :func:`shown`: the README's times, ids and addresses stand for any of their kind.
"""

from __future__ import annotations

import ast
import json
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from support import ROOT, WAIT, BusProcess, free_port

__all__ = [
    "Addresses",
    "Block",
    "blocks",
    "claimed",
    "commands",
    "example",
    "free_addresses",
    "localize",
    "readme_example",
    "shown",
]

README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_INGEST = "tcp://127.0.0.1:8766"
DEFAULT_EGRESS = "tcp://127.0.0.1:8767"
KINDS = ("example", "output", "illustration")

_FENCE = re.compile(r"^(```+)(\S*)")
_MARKER = re.compile(r"^<!--\s*(\w+):\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README and its marker (``kind`` "unmarked" without one)."""

    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str
    name: str  # the example or output's name, or why an illustration is not run

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'}) {self.kind}: {self.name}"


@cache
def blocks() -> tuple[Block, ...]:
    """Every fenced block of the README, in order."""
    found: list[Block] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(fence.group(1)))
        before = next((lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marker = _MARKER.match(before)
        kind, name = (marker.group(1), marker.group(2)) if marker else ("unmarked", "")
        found.append(Block(start + 1, fence.group(2), "\n".join(lines[start + 1 : end]) + "\n", kind, name))
        index = end + 1
    return tuple(found)


def example(name: str) -> Block:
    """The example or output block called ``name``."""
    matches = [b for b in blocks() if b.kind in ("example", "output") and b.name == name]
    assert len(matches) == 1, f"README.md has {len(matches)} blocks marked {name!r}; a test runs exactly one"
    return matches[0]


F = TypeVar("F", bound=Callable[..., Any])


def readme_example(*names: str) -> Callable[[F], F]:
    """Mark a test as the one that runs (or checks) the README blocks called ``names``."""

    def mark(test: F) -> F:
        return test

    return mark


def claimed() -> dict[str, str]:
    """Every name claimed with ``@readme_example`` in the tests, and the test that claims it."""
    names: dict[str, str] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "readme_example":
                    for arg in decorator.args:
                        assert isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                        names[arg.value] = f"{path.name}::{node.name}"
    return names


@dataclass(frozen=True)
class Addresses:
    """Where a bus listens: its HTTP base and ZeroMQ endpoints."""

    url: str
    ingest: str
    egress: str

    @classmethod
    def of(cls, bus: BusProcess) -> Addresses:
        """The addresses a running bus printed in its banner."""
        return cls(bus.url, bus.endpoints["ingest"], bus.endpoints["egress"])

    def post_batch(self, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """POST ``(type, data)`` pairs to the bus a README command started, as one batch; return their ids."""
        body = json.dumps({"events": [{"event_type": t, "data": d} for t, d in events]}).encode()
        call = urllib.request.Request(
            f"{self.url}/api/dev/batch", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(call, timeout=WAIT) as reply:
            ids: list[str] = json.load(reply)["ids"]
        assert len(ids) == len(events)
        return ids


def free_addresses() -> Addresses:
    """Free loopback addresses for a `devbus run` that a README block starts."""
    return Addresses(
        f"http://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    )


def localize(text: str, bus: Addresses, **also: str) -> str:
    """``text`` with the default addresses replaced by ``bus``'s, and each key of ``also`` by its value."""
    for default, actual in ((DEFAULT_URL, bus.url), (DEFAULT_INGEST, bus.ingest), (DEFAULT_EGRESS, bus.egress)):
        text = text.replace(default, actual)
    for old, new in also.items():
        text = text.replace(old, new)
    return text


def commands(block: Block) -> list[str]:
    """The commands of a shell block: one per line, continuation lines joined, comment lines left out."""
    found: list[str] = []
    pending = ""
    for line in block.text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        found.append(pending.strip())
        pending = ""
    return found


# What stands for "any" in output the README shows: its times, and its example run id.
_VARIABLE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z|\b\d\d:\d\d:\d\d\.\d{3}\b|\b3f9a1c2e\b")
_ANY = {
    "timestamp": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
    "clock": r"\d\d:\d\d:\d\d\.\d{3}",
    "run": r"[0-9a-f]{8}",
}


def shown(text: str, bus: Addresses | None = None, **also: str) -> re.Pattern[str]:
    """A pattern for output as the README shows it: its times and run id stand for any, its addresses for ``bus``'s."""
    if bus is not None:
        text = localize(text, bus, **also)
    parts: list[str] = []
    at = 0
    for match in _VARIABLE.finditer(text):
        parts.append(re.escape(text[at : match.start()]))
        value = match.group()
        kind = "timestamp" if "T" in value else "clock" if ":" in value else "run"
        parts.append(_ANY[kind])
        at = match.end()
    parts.append(re.escape(text[at:]))
    return re.compile("".join(parts))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """After a run that checked the README's blocks, list them and what runs each (CI's log keeps it)."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    if not any(getattr(r, "nodeid", "").startswith("tests/test_readme.py::") for r in reports):
        return
    runners = claimed()
    terminalreporter.section("README blocks")
    for block in blocks():
        runner = runners.get(block.name, "no test") if block.kind in ("example", "output") else "not run"
        terminalreporter.write_line(f"{block}  <- {runner}")
