"""What `devbus run` prints per event: a line each, bursts folded into one summary line per second."""

from __future__ import annotations

import asyncio
import time

import pytest
from support import WAIT

from devbus.bus.outputs.console import LINES_PER_SECOND, EventPrinter
from devbus.bus.record import Record
from devbus.envelope import Event, encode_json


def record(n: int, event_type: str) -> Record:
    event = Event(id=f"run-{n}", type=event_type, data={}, timestamp="2026-11-28T14:44:36.480879Z", source="zmq")
    return Record(event.id, event.type, encode_json(event), event)


def reaching(count: int, records: list[Record]) -> tuple[list[Record], list[int]]:
    """A batch as the SSE fan-out reports it: each record reached ``count`` subscribers."""
    return records, [count] * len(records)


async def test_a_burst_prints_the_first_lines_then_one_summary_when_the_second_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.2]
    monkeypatch.setattr(time, "time", lambda: now[0])  # the clock the console's per-second lines read
    lines: list[str] = []
    printer = EventPrinter(lines.append)
    printer(*reaching(2, [record(n, "agent.created") for n in range(LINES_PER_SECOND + 25)]))
    printer(*reaching(2, [record(100 + n, "rental.created") for n in range(5)]))
    assert len(lines) == LINES_PER_SECOND
    assert lines[0] == "14:44:36.480  agent.created                    zmq        run-0            → 2 subscribers"
    now[0] = 1001.1  # the next second: the folded ones are summed up first
    printer(*reaching(1, [record(200, "late")]))
    assert lines[LINES_PER_SECOND] == "… +30 more events this second (agent.created ×25, rental.created ×5)"
    assert lines[-1].endswith("→ 1 subscriber")


async def test_the_summary_comes_on_its_own_when_the_burst_stops() -> None:
    lines: list[str] = []
    summarized = asyncio.Event()

    def write(line: str) -> None:
        lines.append(line)
        if line.startswith("…"):
            summarized.set()

    printer = EventPrinter(write)
    printer(*reaching(2, [record(n, f"t.{n % 5}") for n in range(LINES_PER_SECOND + 10)]))
    # No later event: the timer set for the end of this second prints the summary.
    async with asyncio.timeout(WAIT):
        await summarized.wait()
    assert len(lines) == LINES_PER_SECOND + 1
    assert lines[-1].startswith("… +10 more events this second (")
    assert lines[-1].endswith(", +2 more types)")


def test_long_types_ids_and_sources_are_cut_so_the_columns_stay_put() -> None:
    """A 60-character type pushed every later column of its line to the right."""
    lines: list[str] = []
    printer = EventPrinter(lines.append)
    event = Event(
        id="1764412345678901-12345",
        type="agent.profile.picture.thumbnail.regenerated_after_upload",
        data={},
        timestamp="2026-11-28T14:44:36.480879Z",
        source="zmq",
    )
    printer([record(1, "agent.created"), Record(event.id, event.type, encode_json(event), event)], [1, 3])
    assert lines == [
        "14:44:36.480  agent.created                    zmq        run-1            → 1 subscriber",
        "14:44:36.480  agent.profile.picture.thumbnail… zmq        …345678901-12345 → 3 subscribers",
    ]
    assert lines[0].index("→") == lines[1].index("→")
