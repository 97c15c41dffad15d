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
from support import ROOT, BusProcess, assert_agent_types, devbus_cli, require_file

from devbus.client.typescript import MAX_SCHEMA_DEPTH, to_json_schema, to_typescript

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
def bus(running_bus: BusProcess) -> BusProcess:
    """A real bus that has seen the payloads."""
    running_bus.post_batch(PAYLOADS)
    return running_bus


def require_tsc() -> None:
    """Skip without the TypeScript compiler, except in CI (`.ci/run` installs it)."""
    require_file(TSC, f"tsc not found at {TSC} (run `npm ci --prefix tests/ts`)")


def compile_ts(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    flags = ["--strict", "--noEmit", "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler"]
    return subprocess.run(
        [str(TSC), *flags, source], cwd=folder, capture_output=True, text=True, timeout=TSC_WAIT, check=False
    )


@pytest.mark.slow
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


# Event types the bus accepts (no whitespace or control characters) that are code if they
# land outside a string literal, and characters that are invisible in a source file.
HOSTILE_TYPES = [
    'x*/;console.log("INJECTED");/*',  # closes the doc comment it was written in
    'y*/;require("fs").writeFileSync("pwned","");/*',
    'z"];console.log("INJECTED");//',  # closes a string literal
    "w</script><script>console.log('INJECTED')</script>",
    "v`${console.log('INJECTED')}`",
    "u\\u2028\\*/\u3164\u2800\u115f",  # a backslash, Hangul and braille fillers (letters, so allowed)
]


def test_event_types_stay_string_literals_in_generated_typescript(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    """Regression: a type with `*/` ended the doc comment it was written in, and tsc compiled what followed."""
    require_tsc()
    bus = bus_process("--quiet")
    bus.post_batch([(event_type, {"n": 1}) for event_type in HOSTILE_TYPES])
    written = devbus_cli(bus, "types", "--ts", "--out", str(tmp_path / "devbus-events.ts"))
    assert written.exit_code == 0, written.output
    generated = (tmp_path / "devbus-events.ts").read_text(encoding="utf-8")
    assert "*/;" not in generated and "</script" not in generated and "\u3164" not in generated
    # A consumer that names each type as it is: the literals in the generated file mean the same strings.
    calls = "".join(f"console.log(read({json.dumps(t)}, {{ n: 1 }}));\n" for t in HOSTILE_TYPES)
    (tmp_path / "consumer.ts").write_text(
        'import "./devbus-events";\n'  # run the generated module itself, not only its types
        'import type { DevbusEventMap } from "./devbus-events";\n'
        "function read<K extends keyof DevbusEventMap>(type: K, data: DevbusEventMap[K]): string {\n"
        "  const n: number = data.n;\n"
        "  return JSON.stringify([type, n]);\n"
        "}\n" + calls,
        encoding="utf-8",
    )
    flags = ["--strict", "--target", "es2022", "--module", "commonjs", "--outDir", "out"]
    built = subprocess.run(
        [str(TSC), *flags, "consumer.ts"], cwd=tmp_path, capture_output=True, text=True, timeout=TSC_WAIT, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    ran = subprocess.run(
        ["node", "out/consumer.js"], cwd=tmp_path, capture_output=True, text=True, timeout=TSC_WAIT, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert [json.loads(line) for line in ran.stdout.splitlines()] == [[t, 1] for t in HOSTILE_TYPES]
    assert not (tmp_path / "pwned").exists()


def test_json_schema_keeps_hostile_types_as_escaped_keys(bus_process: Callable[..., BusProcess]) -> None:
    bus = bus_process("--quiet")
    bus.post_batch([(event_type, {"n": 1}) for event_type in HOSTILE_TYPES])
    result = devbus_cli(bus, "types", "--json-schema")
    assert result.exit_code == 0, result.output
    assert "</script" not in result.stdout and "\u3164" not in result.stdout
    assert sorted(json.loads(result.stdout)["properties"]) == sorted(HOSTILE_TYPES)


def test_a_schema_of_any_depth_is_written_without_recursing_past_a_bound() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(10_000):  # what no bus infers (it refuses data past MAX_DEPTH), read from elsewhere
        schema = {"type": "object", "properties": {"k": schema}, "required": ["k"]}
    catalogue = {"types": [{"type": "deep.schema", "schema": schema, "schema_complete": False}]}
    typescript = to_typescript(catalogue)
    assert "export interface DeepSchemaData {" in typescript and "k: unknown;" in typescript
    assert typescript.count("k: {") == MAX_SCHEMA_DEPTH
