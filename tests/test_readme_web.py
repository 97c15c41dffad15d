"""The README's browser and TypeScript examples: run in Chromium, or compiled with `tsc --strict` as an app would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from browser_fixtures import PageServer
from playwright.sync_api import Page
from readme import Addresses, commands, example, localize, readme_example
from readme_shell import run, shell_env
from support import ROOT, WAIT, BusProcess, devbus_cli, wait_for_history, wait_until
from test_node_publisher import require_npm
from test_typescript import TS_DIR, TSC, TSC_WAIT, require_tsc

FLAGS = ["--strict", "--noEmit", "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler"]
# What a Next.js app has that the README's fragments take for granted.
NEXT_GLOBALS = "declare const process: { env: Record<string, string | undefined> };\n"
# What the README's component takes from the rest of the app.
HOOK_GIVENS = """
interface Agent { id: string; name: string }
declare function mutate(key: string): void;
declare function AgentList(props: { agents: Agent[]; live: boolean }): null;
"""

# Each test starts several processes (buses, commands, a compiler): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def tsc(folder: Path, *sources: str, link_types: bool = True) -> subprocess.CompletedProcess[str]:
    """Compile ``sources`` in ``folder`` with the pinned compiler (and its node_modules, unless told not to)."""
    require_tsc()
    if link_types:
        (folder / "node_modules").symlink_to(TS_DIR / "node_modules", target_is_directory=True)
    return subprocess.run(
        [str(TSC), *FLAGS, *sources], cwd=folder, capture_output=True, text=True, timeout=TSC_WAIT, check=False
    )


def seeded(bus: BusProcess) -> None:
    """Run the README's seeding script against ``bus``: 100 `agent.created`, one `agents.bulk_created`."""
    run("python scripts/bulk_create_agents.py --count 100", env=shell_env(Addresses.of(bus)), cwd=ROOT)
    wait_for_history(bus, 101)


@readme_example("typed-ts")
def test_the_typed_client_compiles_except_for_the_misspelt_field(
    tmp_path: Path, bus_process: Callable[..., BusProcess]
) -> None:
    bus = bus_process("--quiet")
    seeded(bus)
    assert devbus_cli(bus, "types", "--ts", "-o", str(tmp_path / "devbus-events.ts")).exit_code == 0
    (tmp_path / "devbus.d.ts").write_bytes((ROOT / "devbus" / "static" / "devbus.d.ts").read_bytes())
    block = example("typed-ts").text
    (tmp_path / "main.ts").write_text(block)
    compiled = tsc(tmp_path, "main.ts")
    # The one error is the one the README's comment announces, on its line.
    [line] = [n for n, text in enumerate(block.splitlines(), start=1) if "error TS2339" in text]
    errors = [text for text in compiled.stdout.splitlines() if ": error " in text]
    assert len(errors) == 1, compiled.stdout
    assert errors[0].startswith(f"main.ts({line},")
    assert "error TS2339: Property 'nmae' does not exist on type 'AgentCreatedData | " in errors[0]


@readme_example("nextjs-install", "nextjs-reexport", "nextjs-configure", "nextjs-hook")
def test_the_package_installs_into_an_app_whose_files_compile_strictly(tmp_path: Path) -> None:
    require_npm()
    app = tmp_path / "app"
    (app / "src" / "lib").mkdir(parents=True)
    (app / "src" / "app").mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    [install] = commands(example("nextjs-install"))
    run(install.replace("/path/to/devbus", str(ROOT)), env=shell_env(), cwd=app, timeout=TSC_WAIT)
    installed = app / "node_modules" / "devbus"

    def copied() -> bool:
        """Whether the app holds a copy of js/, not a link to it."""
        shipped = (installed / "devbus.js").read_bytes() == (ROOT / "js" / "devbus.js").read_bytes()
        return not installed.is_symlink() and shipped

    assert copied()
    manifest = json.loads((app / "package.json").read_text())
    assert manifest["dependencies"] == {"devbus": f"file:{os.path.relpath(ROOT / 'js', app)}"}
    # The README's .npmrc: a clean install from the lock file copies the package again.
    (app / ".npmrc").write_text("install-links=true\n")
    shutil.rmtree(app / "node_modules")
    run("npm ci --offline --no-audit --no-fund", env=shell_env(), cwd=app, timeout=TSC_WAIT)
    assert copied()
    (app / "src" / "lib" / "dev-webhook.ts").write_text(example("nextjs-reexport").text)
    (app / "src" / "lib" / "dev-webhook-configured.ts").write_text(example("nextjs-configure").text)
    (app / "src" / "app" / "agents.tsx").write_text(example("nextjs-hook").text + HOOK_GIVENS)
    (app / "src" / "next-env.d.ts").write_text(NEXT_GLOBALS)
    # React's types, as the app would have them with React installed.
    (app / "node_modules" / "@types").symlink_to(TS_DIR / "node_modules" / "@types", target_is_directory=True)
    sources = ["src/next-env.d.ts", "src/lib/dev-webhook.ts", "src/lib/dev-webhook-configured.ts", "src/app/agents.tsx"]
    compiled = tsc(app, *sources, "--jsx", "react-jsx", link_types=False)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


@pytest.mark.browser
@readme_example("browser-import")
def test_a_page_imports_the_client_from_the_bus_sends_and_gets_what_follows(
    shared_bus: BusProcess, other_origin: PageServer, page: Page
) -> None:
    script = localize(example("browser-import").text, Addresses.of(shared_bus))
    before = shared_bus.health()["subscribers"]
    logged: list[list[Any]] = []
    page.on("console", lambda message: logged.append([arg.json_value() for arg in message.args]))
    page.goto(
        other_origin.add(
            "app.html", f'<!doctype html><meta charset="utf-8">\n<script type="module">\n{script}</script>'
        )
    )
    [sent] = wait_for_history(shared_bus, 1, types="agent.created")
    assert (sent["data"], sent["source"]) == ({"id": 7}, "http")
    wait_until(lambda: shared_bus.health()["subscribers"] > before, what="the page's stream to open")
    later = shared_bus.post_batch([("agent.created", {"id": 8})])
    deadline = time.monotonic() + WAIT
    while ["agent.created", {"id": 8}, *later] not in logged:
        assert time.monotonic() < deadline, f"the page logged {logged}"
        page.wait_for_timeout(20)  # lets the page run while this polls what it logged
    # Whether the page's own event came before its stream was open is up to timing (see the README).
    assert [entry for entry in logged if entry and entry[0] != "agent.created"] == []
