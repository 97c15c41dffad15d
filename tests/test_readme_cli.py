"""The README's `devbus` commands, run as written: emit, listen, history, watch, seeding, types, record and replay."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from readme import Addresses, commands, example, free_addresses, readme_example, shown
from readme_shell import Running, require_command, run, shell_env
from support import ROOT, WAIT, BusProcess, fetch_history, wait_for_history

Background = Callable[..., Running]
SEED = "python scripts/bulk_create_agents.py --count 100"  # run from the checkout, as the README does

# Each test starts several processes (buses, commands, a compiler): minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@readme_example("cli-emit")
def test_emit_from_arguments_a_file_stdin_and_over_http(running_bus: BusProcess, tmp_path: Path) -> None:
    require_command("jq")
    # The files the block reads.
    (tmp_path / "agent.json").write_text('{"id": 2, "name": "Bo"}')
    (tmp_path / "agents.json").write_text('[{"id": 3}, {"id": 4}]')
    env = shell_env(Addresses.of(running_bus))
    *over_zeromq, over_http = commands(example("cli-emit"))
    for command in over_zeromq:
        run(command, env=env, cwd=tmp_path)
    wait_for_history(running_bus, 4)
    # The last line assigns $id: print it, to see what it holds.
    assigned = run(f'{over_http}\nprintf "%s" "$id"', env=env, cwd=tmp_path).stdout
    events = wait_for_history(running_bus, 5)
    assert [(e["data"], e["source"]) for e in events] == [
        ({"id": 1, "name": "Ada"}, "zmq"),
        ({"id": 2, "name": "Bo"}, "seed"),
        ({"id": 3}, "zmq"),
        ({"id": 4}, "zmq"),
        ({"id": 1}, "trigger"),
    ]
    assert {e["type"] for e in events} == {"agent.created"}
    assert assigned == events[-1]["id"]


@readme_example("cli-listen")
def test_listen_live_filtered_piped_and_since_an_id(
    running_bus: BusProcess, tmp_path: Path, background: Background
) -> None:
    require_command("jq")
    earlier = running_bus.post_batch([("agent.created", {"id": n}) for n in range(3)])
    env = shell_env(Addresses.of(running_bus))
    live, filtered, piped, since = commands(example("cli-listen"))

    listener = background(live, env=env, cwd=tmp_path)
    listener.wait_for(r"^listening to ")
    [new] = running_bus.post_batch([("agent.created", {"id": 9})])
    listener.wait_for(rf'^\d\d:\d\d:\d\d\.\d{{3}}  agent\.created +http +{new} +\{{"id":9\}}$')

    jq = background(filtered, env=env, cwd=tmp_path)
    jq.wait_for(r"^listening to ")
    running_bus.post_batch([("other.thing", {"x": 1}), ("agent.created", {"id": 10})])
    jq.wait_for(r'^  "id": 10$')
    assert not [line for line in jq.lines if '"x"' in line]

    head = background(piped, env=env, cwd=tmp_path)
    head.wait_for(r"^listening to ")
    running_bus.post_batch([("agent.created", {"id": 11}), ("agent.created", {"id": 12})])
    assert head.exited() == 0
    assert [json.loads(line)["data"] for line in head.lines if line.startswith("{")] == [{"id": 11}, {"id": 12}]

    # The README's example id stands for one of this bus's: the first event above.
    replaying = background(since.replace("3f9a1c2e-42", earlier[0]), env=env, cwd=tmp_path)
    for n in (1, 2, 9, 10, 11, 12):
        replaying.wait_for(rf'\{{"id":{n}\}}$')
    running_bus.post_batch([("agent.created", {"id": 13})])
    replaying.wait_for(r'\{"id":13\}$')
    assert not [line for line in replaying.lines if line.endswith('{"id":0}')]


@readme_example("cli-history")
def test_history_filtered_limited_and_piped(running_bus: BusProcess, tmp_path: Path) -> None:
    require_command("jq")
    running_bus.post_batch([("agent.created" if n % 5 else "rental.created", {"n": n}) for n in range(30)])
    env = shell_env(Addresses.of(running_bus))
    limited, piped = commands(example("cli-history"))
    newest = run(limited, env=env, cwd=tmp_path)
    agents = [n for n in range(30) if n % 5]
    assert [int(re.search(r'\{"n":(\d+)\}$', line).group(1)) for line in newest.stdout.splitlines()] == agents[-20:]  # type: ignore[union-attr]
    assert newest.stderr == "showing the newest 20 matching events; the bus retains more: raise --limit to see them\n"
    data = run(piped, env=env, cwd=tmp_path).stdout
    assert [json.loads(obj) for obj in re.findall(r"^\{\n.*?\n\}$", data, re.MULTILINE | re.DOTALL)] == [
        {"n": n} for n in range(30)
    ]


@readme_example("watch", "watch-output")
def test_watch_reports_matching_files_as_the_readme_shows(
    running_bus: BusProcess, tmp_path: Path, background: Background
) -> None:
    app = tmp_path / "app"
    (app / "src" / "components").mkdir(parents=True)
    (app / "src" / "hooks").mkdir()
    button = app / "src" / "components" / "Button.tsx"
    button.write_text("export const Button = 1;\n")
    where = Addresses.of(running_bus)
    [command] = commands(example("watch"))
    watcher = background(command, env=shell_env(where), cwd=app)
    intro, ready, modified, added = example("watch-output").text.splitlines()
    watcher.wait_for("^" + shown(intro, where, **{"/home/me/app": str(app)}).pattern + "$")
    watcher.wait_for("^" + shown(ready).pattern + "$")
    button.write_text("export const Button = 2;\n")
    watcher.wait_for("^" + shown(modified).pattern + "$")
    (app / "README.md").write_text("not matched by the globs\n")
    (app / "src" / "hooks" / "useAgents.ts").write_text("export {};\n")
    watcher.wait_for("^" + shown(added).pattern + "$")
    events = wait_for_history(running_bus, 2)
    assert [(e["type"], e["data"], e["source"]) for e in events] == [
        ("frontend.file_changed", {"file": "src/components/Button.tsx", "change": "modified"}, "watch"),
        ("frontend.file_changed", {"file": "src/hooks/useAgents.ts", "change": "added"}, "watch"),
    ]
    assert watcher.interrupt() == 0


@readme_example("seed")
def test_seeding_beside_a_bus_started_in_the_background(tmp_path: Path, background: Background) -> None:
    where = free_addresses()
    block = example("seed")
    # One script, as typed in one terminal: `devbus run &`, then the script.
    seeding = background("\n".join(commands(block)), env=shell_env(where), cwd=ROOT)
    [said] = re.findall(r"^# (.*)$", block.text, re.MULTILINE)
    seeding.wait_for("^" + shown(said, where).pattern + "$", timeout=3 * WAIT)
    events = wait_for_history(where.url, 101)
    assert [e["type"] for e in events] == ["agent.created"] * 100 + ["agents.bulk_created"]
    assert events[-1]["data"]["count"] == 100


@readme_example("types", "types-ts", "types-json")
def test_types_describes_what_the_seeding_script_sent(running_bus: BusProcess, tmp_path: Path) -> None:
    env = shell_env(Addresses.of(running_bus))
    run(SEED, env=env, cwd=ROOT)
    wait_for_history(running_bus, 101)
    (tmp_path / "src" / "lib").mkdir(parents=True)  # a Next.js app's layout
    lines, typescript, schema, as_json = commands(example("types"))
    listed = run(lines, env=env, cwd=tmp_path).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["agent.created", "100"], ["agents.bulk_created", "1"]]
    run(typescript, env=env, cwd=tmp_path)
    generated = (tmp_path / "src" / "lib" / "devbus-events.ts").read_text().splitlines()
    # The README shows part of the file: its lines come in the file, in order.
    rest = iter(generated)
    for line in example("types-ts").text.splitlines():
        assert line in rest, f"{line!r} is not in devbus types --ts, in that order"
    run(schema, env=env, cwd=tmp_path)
    schemas = json.loads((tmp_path / "events.schema.json").read_text())["properties"]
    assert sorted(schemas) == ["agent.created", "agents.bulk_created"]
    catalogue = json.loads(run(as_json, env=env, cwd=tmp_path).stdout)
    shown_json = example("types-json").text
    # The README abridges the answer (…): every field it names is in it, the limits as shown.
    for key in set(re.findall(r'"(\w+)":', shown_json)):
        assert f'"{key}":' in json.dumps(catalogue), key
    limits = json.loads(re.search(r'"limits": (\{.*?\})', shown_json).group(1))  # type: ignore[union-attr]
    assert catalogue["limits"] == limits
    [created] = [entry for entry in catalogue["types"] if entry["type"] == "agent.created"]
    assert (created["count"], created["sources"], created["schema_complete"]) == (100, ["seed"], True)


@readme_example("record")
def test_record_the_seeding_script_and_replay_it(
    running_bus: BusProcess, tmp_path: Path, background: Background
) -> None:
    """`devbus record … --types 'agent.*' --count 101` never ended: `agent.*` does not match `agents.bulk_created`."""
    env = shell_env(Addresses.of(running_bus))
    everything, counted, since, seed, *replays = commands(example("record"))
    assert seed.startswith(SEED)

    first = tmp_path / "everything"
    first.mkdir()
    recorder = background(everything, env=env, cwd=first)
    recorder.wait_for(r"^recording ")
    run(seed, env=env, cwd=ROOT)
    wait_for_history(running_bus, 101)
    _wait_for_lines(first / "import.jsonl", 101)
    assert recorder.interrupt() == 0
    recorder.wait_for(r"^recorded 101 events to import\.jsonl$")

    second = tmp_path / "counted"
    second.mkdir()
    stopping = background(counted, env=env, cwd=second)
    stopping.wait_for(r"^recording ")
    run(seed, env=env, cwd=ROOT)
    assert stopping.exited() == 0  # by itself, after the script's 101 events
    recorded = [json.loads(line) for line in (second / "import.jsonl").read_text().splitlines()]
    assert [e["type"] for e in recorded] == ["agent.created"] * 100 + ["agents.bulk_created"]

    third = tmp_path / "since"
    third.mkdir()
    retained = fetch_history(running_bus)
    after = background(since.replace("3f9a1c2e-42", retained[-3]["id"]), env=env, cwd=third)
    after.wait_for(r"^recording ")
    _wait_for_lines(third / "import.jsonl", 2)
    assert after.interrupt() == 0
    assert [json.loads(line)["id"] for line in (third / "import.jsonl").read_text().splitlines()] == [
        e["id"] for e in retained[-2:]
    ]

    before = len(fetch_history(running_bus))
    for command in replays:
        replayed = run(command, env=env, cwd=second, timeout=3 * WAIT)
        rows = [line.split("\t") for line in replayed.stdout.splitlines()]
        assert [(row[0], row[1], row[2], row[4]) for row in rows] == [
            (str(n), e["id"], "->", e["type"]) for n, e in enumerate(recorded, start=1)
        ]
        assert replayed.stderr == "replayed 101 events from import.jsonl\n"
    copies = wait_for_history(running_bus, before + 101 * len(replays))[before:]
    assert [e["data"] for e in copies] == [e["data"] for e in recorded] * len(replays)
    sources = [copies[n * 101]["source"] for n in range(len(replays))]
    assert sources == ["seed" if "--keep-source" in command else "replay" for command in replays]


def _wait_for_lines(path: Path, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists() or len(path.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"{path} has not {count} lines"
        time.sleep(0.02)
