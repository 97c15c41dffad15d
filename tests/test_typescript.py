"""`devbus types --ts` / `--json-schema`: stable output that `tsc --strict` accepts, and refuses typos with."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, BusProcess, assert_agent_types, devbus_cli, post_batch, require_file

from devbus.client.typescript import to_json_schema, to_typescript

TS_DIR = ROOT / "tests" / "ts"
TSC = TS_DIR / "node_modules" / ".bin" / "tsc"
TSC_WAIT = 300.0  # tsc takes seconds on an idle machine, much longer on a busy one

PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("agent.created", {"id": "a1", "name": "Ada", "created_at": "2026-01-01T00:00:00Z", "bulk": True}),
    ("agent.created", {"id": "a2", "name": "Bo", "created_at": "2026-01-01T00:00:00Z", "bulk": False}),
    ("agents.bulk_created", {"count": 2, "agent_ids": ["a1", "a2"]}),
    ("misc.thing", {"a": None, "b": [1, 2.5], "c": {"d": [[1], []]}}),
    ("misc.thing", {"a": "text", "e": True}),
    ("misc.empty", {}),
]


@pytest.fixture
def bus(bus_process: Callable[..., BusProcess]) -> BusProcess:
    bus = bus_process("--quiet")
    post_batch(bus.url, PAYLOADS)
    return bus


def require_tsc() -> None:
    """Skip without the TypeScript compiler, except in CI (`.ci/run` installs it)."""
    require_file(TSC, f"tsc not found at {TSC} (run `npm ci --prefix tests/ts`)")


def compile_ts(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    flags = ["--strict", "--noEmit", "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler"]
    return subprocess.run(
        [str(TSC), *flags, source], cwd=folder, capture_output=True, text=True, timeout=TSC_WAIT, check=False
    )


def test_generated_types_compile_strictly_and_refuse_a_wrong_field(bus: BusProcess, tmp_path: Path) -> None:
    require_tsc()
    written = devbus_cli(bus, "types", "--ts", "--out", str(tmp_path / "devbus-events.ts"))
    assert written.exit_code == 0, written.output
    shutil.copy(ROOT / "js" / "devbus.d.ts", tmp_path)
    for name in ("uses_events.ts", "wrong_field.ts"):
        shutil.copy(TS_DIR / name, tmp_path)

    good = compile_ts(tmp_path, "uses_events.ts")
    assert good.returncode == 0, good.stdout + good.stderr

    bad = compile_ts(tmp_path, "wrong_field.ts")
    assert bad.returncode != 0
    assert "Property 'nmae' does not exist" in bad.stdout
    assert "wrong_field.ts(6," in bad.stdout


def test_typescript_names_every_type_with_its_fields(bus: BusProcess) -> None:
    result = devbus_cli(bus, "types", "--ts")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert_agent_types(text)
    assert "  a: null | string;\n  b?: number[];\n  c?: {\n    d: number[][];\n  };\n  e?: boolean;\n" in text
    assert "export interface MiscEmptyData {}" in text
    assert '  | DevbusEventOf<"misc.empty">\n  | DevbusEventOf<"misc.thing">;' in text


def test_outputs_are_stable_bytes(bus: BusProcess) -> None:
    for flag in ("--ts", "--json-schema"):
        first, second = devbus_cli(bus, "types", flag), devbus_cli(bus, "types", flag)
        assert first.exit_code == 0, first.output
        assert first.stdout == second.stdout
    catalogue = json.loads(devbus_cli(bus, "types", "--json").stdout)
    shuffled = {**catalogue, "types": random.Random(7).sample(catalogue["types"], len(catalogue["types"]))}
    assert to_typescript(shuffled) == to_typescript(catalogue)
    assert to_json_schema(shuffled) == to_json_schema(catalogue)


def test_json_schema_holds_each_types_schema(bus: BusProcess) -> None:
    result = devbus_cli(bus, "types", "--json-schema")
    document = json.loads(result.stdout)
    schemas = document["properties"]
    assert sorted(schemas) == ["agent.created", "agents.bulk_created", "misc.empty", "misc.thing"]
    assert schemas["agents.bulk_created"]["properties"]["agent_ids"] == {"type": "array", "items": {"type": "string"}}
    assert schemas["misc.thing"]["required"] == ["a"]


def test_types_prints_a_line_per_type(bus: BusProcess) -> None:
    result = devbus_cli(bus, "types")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["agent.created", "agents.bulk_created", "misc.empty", "misc.thing"]
    assert lines[0].split()[1] == "2"
    assert "{ bulk: boolean; created_at: string; id: string; name: string }" in lines[0]


def test_types_says_which_bus_it_could_not_reach(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from devbus.cli import main

    result = CliRunner().invoke(main, ["types", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0
    assert "No devbus at http://127.0.0.1:9" in result.output
