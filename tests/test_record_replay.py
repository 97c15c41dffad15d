"""`devbus record` and `devbus replay` against real buses: round trip, timing, bad lines, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from support import WAIT, BusProcess, devbus_cli, start_recorder

from devbus.client.recording import BadLine, Recorded, batches, read_recording


def history(running_bus: BusProcess) -> list[dict[str, Any]]:
    result = devbus_cli(running_bus, "history", "--json", "--limit", "10000")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def envelope(event_type: str, data: dict[str, Any], at: str, *, source: str = "seed", seq: int = 1) -> str:
    return json.dumps({"id": f"old-{seq}", "type": event_type, "data": data, "timestamp": at, "source": source})


def test_record_then_replay_into_a_fresh_bus_gives_the_same_events_with_new_ids(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    first = bus_process("--quiet")
    recording = tmp_path / "events.jsonl"
    recorder = start_recorder(first, recording, "--count", "5")
    first.post_batch([("a.one", {"n": 1, "tags": [["x"], []]}), ("b.two", {"ok": None})])
    first.post_batch([("a.one", {"n": 2.5}), ("c.three", {}), ("a.one", {"n": 3, "extra": "x"})])
    assert recorder.wait(timeout=WAIT) == 0
    assert recorder.stderr is not None and "recorded 5 events" in recorder.stderr.read()
    recorder.stderr.close()
    original = history(first)
    assert [json.loads(line) for line in recording.read_text().splitlines()] == original

    second = bus_process("--quiet")
    result = devbus_cli(second, "replay", str(recording))
    assert result.exit_code == 0, result.output
    replayed = history(second)
    assert [(e["type"], e["data"]) for e in replayed] == [(e["type"], e["data"]) for e in original]
    assert {e["source"] for e in replayed} == {"replay"}
    assert not {e["id"] for e in replayed} & {e["id"] for e in original}
    # stdout maps each line's original id to the new one.
    mapping = [line.split("\t") for line in result.stdout.splitlines()]
    pairs = enumerate(zip(original, replayed, strict=True), start=1)
    assert mapping == [[str(line), o["id"], "->", r["id"], r["type"]] for line, (o, r) in pairs]
    # Events the bus accepted together are replayed together.
    assert replayed[0]["timestamp"] == replayed[1]["timestamp"] != replayed[2]["timestamp"]


def test_record_filters_by_type_and_starts_after_an_id(running_bus: BusProcess, tmp_path: Path) -> None:
    ids = running_bus.post_batch([("agent.old", {}), ("agent.kept", {"n": 1}), ("other.x", {})])
    recording = tmp_path / "agents.jsonl"
    recorder = start_recorder(running_bus, recording, "--types", "agent.*", "--since", ids[0], "--count", "2")
    running_bus.post_batch([("other.y", {}), ("agent.live", {"n": 2})])
    assert recorder.wait(timeout=WAIT) == 0
    assert recorder.stderr is not None
    recorder.stderr.close()
    assert [json.loads(line)["type"] for line in recording.read_text().splitlines()] == ["agent.kept", "agent.live"]


def test_replay_keeps_relative_timing_scaled_by_speed(running_bus: BusProcess, tmp_path: Path) -> None:
    recording = tmp_path / "timed.jsonl"
    lines = [
        envelope("t.a", {}, "2026-01-01T00:00:00.000000Z", seq=1),
        envelope("t.b", {}, "2026-01-01T00:00:00.000000Z", seq=2),
        envelope("t.c", {}, "2026-01-01T00:00:02.000000Z", seq=3),
    ]
    recording.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    assert devbus_cli(running_bus, "replay", str(recording), "--speed", "4").exit_code == 0
    assert time.monotonic() - started >= 2.0 / 4  # two seconds at four times the speed
    assert devbus_cli(running_bus, "replay", str(recording), "--no-wait").exit_code == 0
    events = history(running_bus)
    stamps = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in events]
    assert [e["type"] for e in events] == ["t.a", "t.b", "t.c"] * 2
    assert stamps[0] == stamps[1] < stamps[2]  # accepted together, as recorded; then later
    assert stamps[3] == stamps[4] == stamps[5]  # --no-wait: one batch


def test_replay_keep_source(running_bus: BusProcess, tmp_path: Path) -> None:
    recording = tmp_path / "sources.jsonl"
    recording.write_text(envelope("s.a", {"x": 1}, "2026-01-01T00:00:00Z", source="backend") + "\n")
    assert devbus_cli(running_bus, "replay", str(recording), "--keep-source").exit_code == 0
    assert [e["source"] for e in history(running_bus)] == ["backend"]


BAD_LINES = [
    envelope("ok.first", {"n": 1}, "2026-01-01T00:00:00Z"),
    "not json",
    "",
    json.dumps({"type": "has space", "data": {}}),
    json.dumps({"type": "ok.list", "data": [1]}),
    json.dumps(["an", "array"]),
    envelope("ok.last", {"n": 2}, "2026-01-01T00:00:00Z"),
]


def test_replay_reports_bad_lines_by_number_and_skips_them(running_bus: BusProcess, tmp_path: Path) -> None:
    recording = tmp_path / "bad.jsonl"
    recording.write_text("\n".join(BAD_LINES) + "\n")
    result = devbus_cli(running_bus, "replay", str(recording))
    assert result.exit_code == 0, result.output
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(recording))]
    assert [p.split(":")[1] for p in problems] == ["2", "4", "5", "6"]
    assert "`type` must not contain whitespace" in problems[1]
    assert "`data` must be a JSON object" in problems[2]
    assert "skipped 4 bad lines" in result.stderr
    assert [e["type"] for e in history(running_bus)] == ["ok.first", "ok.last"]


def test_replay_strict_sends_nothing_when_a_line_is_bad(running_bus: BusProcess, tmp_path: Path) -> None:
    recording = tmp_path / "bad.jsonl"
    recording.write_text("\n".join(BAD_LINES) + "\n")
    result = devbus_cli(running_bus, "replay", str(recording), "--strict")
    assert result.exit_code == 1
    assert "4 bad lines" in result.stderr and "nothing sent" in result.stderr
    assert history(running_bus) == []


def test_replay_says_how_far_it_got_when_the_bus_refuses(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    running_bus = bus_process("--quiet", "--max-body", "2000")
    recording = tmp_path / "big.jsonl"
    recording.write_text(
        "\n".join(
            [
                envelope("s.one", {}, "2026-01-01T00:00:00.00Z", seq=1),
                envelope("s.two", {}, "2026-01-01T00:00:00.01Z", seq=2),
                envelope("s.big", {"blob": "x" * 5000}, "2026-01-01T00:00:00.02Z", seq=3),
                envelope("s.never", {}, "2026-01-01T00:00:00.03Z", seq=4),
            ]
        )
        + "\n"
    )
    result = devbus_cli(running_bus, "replay", str(recording), "--speed", "100")
    assert result.exit_code == 1
    assert "replay stopped after 2 events; line 3 and after were not sent" in result.stderr
    assert "(413)" in result.stderr
    assert [e["type"] for e in history(running_bus)] == ["s.one", "s.two"]


def test_batches_keep_same_moment_events_together_and_bound_the_size() -> None:
    items = list(read_recording([envelope("a", {}, "2026-01-01T00:00:00Z", seq=n) for n in range(2500)]))
    assert all(isinstance(item, Recorded) for item in items)
    events = [item for item in items if isinstance(item, Recorded)]
    assert [len(batch) for batch in batches(events, keep_timing=True)] == [1000, 1000, 500]
    timed = list(read_recording([envelope("a", {}, f"2026-01-01T00:00:0{n}Z") for n in range(3)]))
    assert [len(b) for b in batches([e for e in timed if isinstance(e, Recorded)], keep_timing=True)] == [1, 1, 1]
    assert [len(b) for b in batches([e for e in timed if isinstance(e, Recorded)], keep_timing=False)] == [3]
    assert list(read_recording(['{"type": "x", "timestamp": "yesterday"}'])) == [
        BadLine(1, "`timestamp` is not ISO-8601 ('yesterday')")
    ]
