"""The README's install lines, run as written in fresh venvs: the quick start, the client, every extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from readme import Addresses, commands, example, free_addresses, localize, readme_example
from readme_shell import Running, run, shell_env
from support import ROOT, WAIT, BusProcess, wait_for_history

pytestmark = pytest.mark.slow

INSTALL_WAIT = 600.0  # a fresh venv and its packages: seconds from pip's cache, minutes on a busy machine
# What a checkout holds beyond its tracked files: a copy leaves them out.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "bench-results"
)


def checkout_copy(tmp_path: Path) -> Path:
    """A copy of this checkout without its venv, as a fresh clone is."""
    copy = tmp_path / "devbus"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    return copy


def python_in(venv: Path, code: str, *, env: dict[str, str]) -> str:
    """Run ``code`` with the venv's own interpreter (not this checkout); return its stdout."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(2 * INSTALL_WAIT)
@readme_example("quick-start", "install", "install-dev")
def test_the_install_lines_work_as_written_in_fresh_venvs(
    tmp_path: Path, background: Callable[..., Running], bus_process: Callable[..., BusProcess]
) -> None:
    """One test, so that the venvs it makes serve the next lines as they would serve a user."""
    checkout = checkout_copy(tmp_path)
    addresses = free_addresses()
    env = shell_env(addresses, checkout=False)

    [quick_start] = commands(example("quick-start"))
    started = background(quick_start, env=env, cwd=checkout)
    # The URLs come from DEVBUS_URL, DEVBUS_INGEST and DEVBUS_EGRESS: free ports, not the defaults.
    started.wait_for(rf"^devbus \S+ on {addresses.url}$", timeout=INSTALL_WAIT)
    started.wait_for(r"^ready \(Ctrl-C to stop\)$")
    with urllib.request.urlopen(f"{addresses.url}/api/dev/health", timeout=WAIT) as reply:
        assert json.load(reply)["status"] == "ok"
    assert started.interrupt() == 0
    started.wait_for(r"^devbus stopped after 0 events$")

    # Another project's venv: the client, then the Redis extra two ways.
    app = tmp_path / "your-app"
    app.mkdir()
    run("python3 -m venv .venv", env=env, cwd=app)
    venv = app / ".venv"
    where = {"/path/to/your-app": str(app), "/path/to/devbus": str(ROOT), "/path/to/venv": str(venv)}
    plain, with_redis, extra_only = (localize(line, addresses, **where) for line in commands(example("install")))
    run(plain, env=env, cwd=tmp_path, timeout=INSTALL_WAIT)
    bus = bus_process("--quiet")
    # The project's own interpreter finds the bus from DEVBUS_INGEST and delivers.
    python_in(
        venv,
        "import devbus; devbus.emit('app.started', {'from': 'your-app'})",
        env=shell_env(Addresses.of(bus), checkout=False),
    )
    assert [e["data"] for e in wait_for_history(bus, 1, types="app.started")] == [{"from": "your-app"}]
    assert python_in(venv, "import importlib.util as u; print(u.find_spec('redis'))", env=env) == "None\n"
    run(with_redis, env=env, cwd=tmp_path, timeout=INSTALL_WAIT)
    python_in(venv, "import redis, hiredis", env=env)
    # With devbus installed, the extra by name alone is satisfied: nothing is looked up for devbus.
    result = run(extra_only, env=env, cwd=tmp_path, timeout=INSTALL_WAIT)
    assert "Requirement already satisfied: devbus[redis]" in result.stdout, result.stdout

    # The test dependencies: [dev] in the checkout, [test] in the other venv.
    dev, test_extra = (localize(line, addresses, **where) for line in commands(example("install-dev")))
    run(dev, env=env, cwd=checkout, timeout=INSTALL_WAIT)
    for tool in ("ruff", "mypy", "pytest"):
        run(f".venv/bin/{tool} --version", env=env, cwd=checkout)
    run(test_extra, env=env, cwd=tmp_path, timeout=INSTALL_WAIT)
    python_in(venv, "import fastapi, httpx, httpx_sse, hypothesis, playwright, pytest, uvicorn", env=env)
