"""`devbus record` and `devbus replay` against real buses: round trip, timing, bad lines, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, WAIT, BusProcess, bus_env, devbus_cli, start_recorder

from devbus.client.recording import BadLine, Recorded, batches, read_recording

MIB = 1024 * 1024


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
    assert "got `array` - at `$.data`" in problems[2]
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


def parsed(lines: list[str]) -> list[Recorded | BadLine]:
    return list(read_recording([line.encode() for line in lines], max_body=MIB, keep_source=False))


def test_batches_keep_same_moment_events_together_and_bound_the_size() -> None:
    items = parsed([envelope("a", {}, "2026-01-01T00:00:00Z", seq=n) for n in range(2500)])
    assert all(isinstance(item, Recorded) for item in items)
    events = [item for item in items if isinstance(item, Recorded)]
    assert [len(batch) for batch in batches(events, keep_timing=True)] == [1000, 1000, 500]
    timed = parsed([envelope("a", {}, f"2026-01-01T00:00:0{n}Z") for n in range(3)])
    assert [len(b) for b in batches([e for e in timed if isinstance(e, Recorded)], keep_timing=True)] == [1, 1, 1]
    assert [len(b) for b in batches([e for e in timed if isinstance(e, Recorded)], keep_timing=False)] == [3]
    assert parsed(['{"type": "x", "timestamp": "yesterday"}']) == [
        BadLine(1, "`timestamp` is not ISO-8601 ('yesterday')")
    ]


# ---------------------------------------------------------------- hostile recordings, real processes


@dataclass
class Replayed:
    code: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: the kernel's high-water mark of the process's RSS (VmHWM)
    seconds: float


# `devbus replay`, writing its VmHWM (its peak resident memory, as /proc/self/status says) on
# exit to the file PEAK_FILE names: once the process is gone, /proc has no record of it.
REPLAY_REPORTING_PEAK = """
import atexit, os
def report_peak():
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")))
atexit.register(report_peak)
from devbus.cli import main
main(prog_name="devbus")
"""


def replay_process(bus: BusProcess, *args: str, env: dict[str, str] | None = None) -> Replayed:
    """Run `devbus replay` as its own process, as a user does, and measure its peak memory."""
    with tempfile.NamedTemporaryFile(mode="r") as peak:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", REPLAY_REPORTING_PEAK, "replay", *args],
            capture_output=True,
            text=True,
            env=bus_env(DEVBUS_URL=bus.url, PEAK_FILE=peak.name, **(env or {})),
            cwd=ROOT,
            timeout=WAIT * 6,
            check=False,
        )
        seconds = time.monotonic() - started
        kib = int(peak.read().split()[1])
    return Replayed(proc.returncode, proc.stdout, proc.stderr, kib * 1024, seconds)


def lines_of(*lines: str) -> str:
    return "\n".join(lines) + "\n"


DEEP_LINE = '{"type": "deep.one", "data": {"tree": ' + "[" * 100_000 + "]" * 100_000 + "}}"


@pytest.mark.parametrize(
    ("last", "max_body", "problem"),
    [
        (DEEP_LINE, "1MiB", "`data` nests deeper than 64 levels of objects and arrays, the limit (at $.data.tree[0]"),
        (
            envelope("big", {"blob": "x" * 3000}, "2026-01-01T00:00:03Z"),
            "2000",
            "the event is 3065 bytes as JSON, over",
        ),
        ('{"type": "no space", "data": {}}', "1MiB", "`type` must not contain whitespace"),
    ],
    ids=["100000-deep", "over-max-body", "bad-type"],
)
def test_replay_strict_checks_every_line_before_sending_any(
    bus_process: Callable[..., BusProcess], tmp_path: Path, last: str, max_body: str, problem: str
) -> None:
    """Regression: a line the bus refuses (too deep, too large) at the end of the file was found only
    after the events before it had been sent; a 100,000-deep line was a traceback."""
    bus = bus_process("--quiet", "--max-body", max_body)
    recording = tmp_path / "ends-badly.jsonl"
    good = [envelope(f"ok.{n}", {"n": n}, f"2026-01-01T00:00:0{n}Z", seq=n) for n in range(3)]
    recording.write_text(lines_of(*good, last))
    result = replay_process(bus, str(recording), "--strict", "--no-wait", env={"DEVBUS_MAX_BODY": max_body})
    assert result.code == 1
    assert f"{recording}:4: {problem}" in result.stderr
    assert "1 bad line in" in result.stderr and "nothing sent" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert history(bus) == []
    # Without --strict the good lines go, the bad one is said and skipped.
    result = replay_process(bus, str(recording), "--no-wait", env={"DEVBUS_MAX_BODY": max_body})
    assert result.code == 0, result.stderr
    assert f"{recording}:4: {problem}" in result.stderr and "Traceback" not in result.stderr
    assert [event["type"] for event in history(bus)] == ["ok.0", "ok.1", "ok.2"]


def test_replay_reads_a_huge_line_in_bounded_memory(bus_process: Callable[..., BusProcess], tmp_path: Path) -> None:
    """Regression: a 600 MB line took 1.86 GB: the line was read whole, then decoded."""
    bus = bus_process("--quiet")
    recording = tmp_path / "huge.jsonl"
    size = 80 * MIB
    with recording.open("w") as file:
        file.write(envelope("before", {}, "2026-01-01T00:00:00Z") + "\n")
        file.write('{"type": "huge", "data": {"blob": "')
        for _ in range(size // MIB):
            file.write("x" * MIB)
        file.write('"}}\n' + envelope("after", {}, "2026-01-01T00:00:00Z") + "\n")
    result = replay_process(bus, str(recording), "--no-wait")
    assert result.code == 0, result.stderr
    assert f"{recording}:2: longer than " in result.stderr and "skipped unread" in result.stderr
    assert [event["type"] for event in history(bus)] == ["before", "after"]
    # The interpreter and devbus's imports take about 32 MiB; a line is read up to --max-body (1 MiB).
    assert result.peak_rss < 56 * MIB < size, f"replay peaked at {result.peak_rss / MIB:.0f} MiB"


def test_replay_shortens_long_pauses_and_keeps_speed(bus_process: Callable[..., BusProcess], tmp_path: Path) -> None:
    """Regression: a 100-year gap between two timestamps slept for a hundred years."""
    bus = bus_process("--quiet")
    recording = tmp_path / "century.jsonl"
    recording.write_text(
        lines_of(
            envelope("then", {}, "2000-01-01T00:00:00Z", seq=1),
            envelope("century.later", {}, "2100-01-01T00:00:00Z", seq=2),
            envelope("back.in.time", {}, "1999-01-01T00:00:00Z", seq=3),  # a clock set back: no wait at all
        )
    )
    # The default pause bound (10 s), at 20 times the speed: half a second.
    result = replay_process(bus, str(recording), "--speed", "20")
    assert result.code == 0, result.stderr
    assert result.seconds >= 10 / 20
    assert result.seconds < WAIT
    assert [event["type"] for event in history(bus)] == ["then", "century.later", "back.in.time"]
    result = replay_process(bus, str(recording), "--max-gap", "0")
    assert result.code == 0 and result.seconds < WAIT


def test_replay_prints_control_characters_escaped(bus_process: Callable[..., BusProcess], tmp_path: Path) -> None:
    """Regression: an ESC in an original id reached the terminal raw (it could rewrite the screen)."""
    bus = bus_process("--quiet")
    recording = tmp_path / "escapes.jsonl"
    hostile_id = "\x1b[2J\x1b]0;owned\x07\u202eid"
    recording.write_text(
        lines_of(
            json.dumps({"id": hostile_id, "type": "esc.id", "data": {}}),
            json.dumps({"id": "ok", "type": "esc.stamp", "data": {}, "timestamp": "\x1b[31mnoon"}),
        )
    )
    result = replay_process(bus, str(recording))
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout
    assert result.stdout.split("\t")[1] == "\\x1b[2J\\x1b]0;owned\\x07\\u202eid"
    assert f"{recording}:2: `timestamp` is not ISO-8601 ('\\x1b[31mnoon')" in result.stderr
