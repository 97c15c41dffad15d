"""The SQLite store's file from the outside: rows edited by hand, two buses, a file deleted, a read-only or full disk.

Before: a row edited by hand (bad JSON) stopped `devbus run` with a raw traceback, a `\\n` in
its type added lines to `?named=1` streams; two buses on one file both started and the second
answered 503 forever; a file deleted under a bus went unnoticed (events acknowledged into
nothing, health "up"); a full disk logged "cannot rollback - no transaction is active".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from blackbox import SSEFrames, expected_frame, history, metric, post_event
from support import WAIT, BusProcess, bus_env_running_first, run_devbus, wait_until


def publish(bus: BusProcess, event_type: str, data: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST one event; return the status, headers and body, whatever the status."""
    body = json.dumps({"event_type": event_type, "data": data}).encode()
    call = urllib.request.Request(
        bus.url + "/api/dev/webhook", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(call, timeout=WAIT * 3) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.load(error)


def get_status(bus: BusProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(bus.url + path, timeout=WAIT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def store_state(bus: BusProcess) -> dict[str, Any]:
    state: dict[str, Any] = bus.health()["store"]
    return state


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a `devbus run` that refused to start printed."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


# ---------------------------------------------------------------- rows edited by hand


def test_rows_edited_by_hand_are_skipped_at_start_at_resume_and_in_history(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    path = tmp_path / "bus.sqlite"
    first = bus_process("--store", f"sqlite:{path}", "--quiet")
    ids = [post_event(first, "good.event", {"n": n}) for n in range(10)]
    assert first.stop() == 0
    run = ids[0].rsplit("-", 1)[0]

    def envelope(seq: int, event_type: str, data: str = "{}", *, extra: str = "") -> str:
        return (
            f'{{"id":"{run}-{seq}","type":"{event_type}","data":{data},'
            f'"timestamp":"2026-01-01T00:00:00Z","source":"hand"{extra}}}'
        )

    edits: dict[int, tuple[object, object]] = {
        2: ("good.event", b'{"id":"x", nope'),  # not JSON
        3: ("evil\nevent: forged", envelope(3, "evil\\nevent: forged").encode()),  # a line break in the type
        4: ("pretty.event", envelope(4, "pretty.event", '{"a":\n1}').replace(",", ",\r\n")),  # valid, as text
        5: ("good.event", 42),  # not text at all
        6: ("good.event", envelope(6, "good.event", "[1]").encode()),  # data is not an object
        7: ("good.event", envelope(7, "good.event", extra=',"id":"1-1"').encode()),  # another id
        8: ("good.event", envelope(8, "other.event").encode()),  # another type
        9: (b"\xff\xfe", envelope(9, "good.event").encode()),  # a type that is not UTF-8
    }
    with sqlite3.connect(path) as db:
        for seq, (event_type, json_) in edits.items():
            db.execute("UPDATE events SET type = ?, json = ? WHERE seq = ?", (event_type, json_, seq))
    db.close()
    skipped = len(edits) - 1  # all but the pretty one

    # At start: the catalogue reads every row, and the bus starts.
    bus = bus_process("--store", f"sqlite:{path}", "--quiet")
    assert not any("Traceback" in line for line in bus.lines)
    events = history(bus)  # valid JSON, or json.load raises
    assert [event["id"] for event in events] == [ids[0], ids[3], ids[9]]
    assert events[1] == {
        "id": ids[3],
        "type": "pretty.event",
        "data": {"a": 1},
        "timestamp": "2026-01-01T00:00:00Z",
        "source": "hand",
    }
    types = bus.request("GET", "/api/dev/types")
    assert "evil" not in json.dumps(types) and "other.event" not in json.dumps(types)
    # At resume: a plain and a named stream replay the good rows only, each framed on its lines.
    live = post_event(bus, "after.restart", {"n": 10})
    events.append(history(bus)[-1])
    for named in (False, True):
        stream = SSEFrames(bus, named=named, last_event_id=ids[0])
        try:
            assert stream.until(live) == [expected_frame(event, named=named) for event in events[1:]]
        finally:
            stream.close()
    health = store_state(bus)["skipped"]
    assert health["count"] == skipped
    assert health["reasons"] == {"json": 1, "type": 2, "fields": 1, "event": 3}
    assert metric(bus, "devbus_store_skipped_total") == skipped


# ---------------------------------------------------------------- one bus per file


def test_a_second_bus_on_the_same_file_refuses_to_start_with_one_line_naming_the_first(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    store = f"sqlite:{tmp_path / 'bus.sqlite'}"
    first = bus_process("--store", store, "--quiet")
    first_id = post_event(first, "first.event", {})
    # The first bus names its URL once it listens: wait for that write (it takes a moment).
    wait_until(lambda: first.url in (run_devbus_second(store).stderr), what="the first bus's URL in the refusal")
    line = one_error_line(run_devbus_second(store))
    assert line.startswith(f"Error: --store {store} is in use by another bus (pid {first.proc.pid} on ")
    assert f"serving {first.url}" in line
    # The first goes on, untouched.
    assert history(first)[-1]["id"] == first_id
    assert post_event(first, "still.first", {}).startswith(first_id.rsplit("-", 1)[0])

    # Killed, the first holds nothing: a new bus takes the file and goes on with its ids.
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=WAIT)
    after = bus_process("--store", store, "--quiet")
    assert [event["type"] for event in history(after)] == ["first.event", "still.first"]


def run_devbus_second(store: str) -> subprocess.CompletedProcess[str]:
    args = ["--port", "0", "--ingest", "tcp://127.0.0.1:*", "--egress", "tcp://127.0.0.1:*"]
    return run_devbus("run", "--quiet", "--store", store, *args)


# ---------------------------------------------------------------- the file goes away


def delete(path: Path) -> Callable[[], None] | None:
    path.unlink()
    return None  # nothing brings it back


def move_away(path: Path) -> Callable[[], None] | None:
    away = path.with_name("moved.sqlite")
    path.rename(away)

    def back() -> None:
        away.rename(path)

    return back


def replace(path: Path) -> Callable[[], None] | None:
    copy = path.with_name("copy.sqlite")
    shutil.copyfile(path, copy)
    copy.replace(path)
    return None


@pytest.mark.parametrize(
    ("change", "said"),
    [(delete, "deleted"), (move_away, "moved away"), (replace, "replaced by another one")],
    ids=["deleted", "moved-away-and-back", "replaced"],
)
def test_a_file_gone_from_under_a_running_bus_is_down_and_503_until_it_is_back(
    bus_process: Callable[..., BusProcess],
    tmp_path: Path,
    change: Callable[[Path], Callable[[], None] | None],
    said: str,
) -> None:
    path = tmp_path / "bus.sqlite"
    bus = bus_process("--store", f"sqlite:{path}", "--quiet")
    before = [post_event(bus, "before", {"n": n}) for n in range(3)]
    back = change(path)
    # At once, before the bus has looked: nothing is acknowledged into a file nobody can open again.
    for n in range(20):
        status, headers, body = publish(bus, "while.gone", {"n": n})
        assert status == 503, body
        assert headers["Retry-After"] == "2"
        assert f"sqlite:{path}" in body["error"] and said in body["error"]
    wait_until(lambda: store_state(bus)["state"] == "down", what="health says the store is down")
    assert said in store_state(bus)["error"]
    assert get_status(bus, "/api/dev/history") == 503
    assert metric(bus, "devbus_store_up") == 0
    if back is None:
        return
    back()
    wait_until(lambda: store_state(bus)["state"] == "up", what="health says the store is back")
    after = post_event(bus, "after", {})
    assert [event["id"] for event in history(bus)] == [*before, after]
    assert sum("is down: " in line and said in line for line in bus.lines) == 1
    assert sum("is back after" in line for line in bus.lines) == 1


# ---------------------------------------------------------------- a read-only, full or corrupt file


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (root only; the test is skipped where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def test_a_read_only_file_is_said_in_one_line(
    bus_process: Callable[..., BusProcess], tmpfs: Callable[[str], Path]
) -> None:
    """Linux refuses to remount a file system read-only while a bus writes to it: read-only is said at start."""
    disk = tmpfs("4m")
    store = f"sqlite:{disk / 'bus.sqlite'}"
    bus = bus_process("--store", store, "--quiet")
    post_event(bus, "kept", {})
    assert bus.stop() == 0
    remount(disk, "ro")
    line = one_error_line(run_devbus_second(store))
    assert line == (
        f"Error: Cannot use --store {store}: the file system is read-only; devbus writes every event there: "
        "make it writable or pass another --store"
    )
    new = f"sqlite:{disk / 'new.sqlite'}"
    line = one_error_line(run_devbus_second(new))
    assert line.startswith(f"Error: Cannot use --store {new}: the file system is read-only ([Errno 30] ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a file whatever its mode (the tmpfs test covers root)")
def test_a_file_of_mode_444_is_said_in_one_line(bus_process: Callable[..., BusProcess], tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = bus_process("--store", f"sqlite:{path}", "--quiet")
    post_event(bus, "kept", {})
    assert bus.stop() == 0
    path.chmod(0o444)
    line = one_error_line(run_devbus_second(f"sqlite:{path}"))
    assert line.startswith(f"Error: Cannot use --store sqlite:{path}: the file is read-only (mode 444); ")


def fill(disk: Path, bus: BusProcess) -> tuple[list[str], int]:
    """Publish 64 KiB events until the disk is full; return the ids acknowledged and the refusals."""
    acknowledged: list[str] = []
    refused = 0
    pad = "x" * 65_536
    for n in range(10_000):
        status, _, body = publish(bus, "filler", {"n": n, "pad": pad})
        if status == 200:
            acknowledged.append(body["id"])
        else:
            assert status == 503, body
            refused += 1
            if refused == 5:
                return acknowledged, refused
    raise AssertionError(f"{disk} never filled up")


def test_a_full_disk_is_said_in_one_line_and_events_are_taken_again_once_there_is_room(
    bus_process: Callable[..., BusProcess], tmpfs: Callable[[str], Path]
) -> None:
    disk = tmpfs("2m")
    store = f"sqlite:{disk / 'bus.sqlite'}"
    room = disk / "room"
    room.write_bytes(b"\0" * 512 * 1024)  # what is freed once the disk is full
    bus = bus_process("--store", store, "--quiet", "--history-bytes", "64MB")
    acknowledged, _ = fill(disk, bus)
    state = store_state(bus)
    assert state["state"] == "down" and state["error"].startswith("the disk is full"), state
    room.unlink()
    taken = post_event(bus, "after.room", {})
    assert store_state(bus)["state"] == "up"
    # Every event acknowledged is there; none of those refused.
    assert [event["id"] for event in history(bus)] == [*acknowledged, taken]
    [said] = [line for line in bus.lines if "could not write to" in line]
    assert f"could not write to {store}: the disk is full (database or disk is full)" in said
    assert sum("takes events again" in line for line in bus.lines) == 1
    assert not any("Traceback" in line or "cannot rollback" in line for line in bus.lines)


@pytest.fixture
def size_limited(tmp_path: Path) -> dict[str, str]:
    """The environment of a bus whose files may grow to 1 MiB (ulimit -f), and that is not killed past it."""
    return bus_env_running_first(
        tmp_path,
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, resource.RLIM_INFINITY))\n",
    )


def test_a_file_past_the_size_limit_is_said_in_one_line_and_events_are_taken_again_once_it_is_raised(
    bus_process: Callable[..., BusProcess], tmp_path: Path, size_limited: dict[str, str]
) -> None:
    """Where no small disk can be mounted: `ulimit -f` fails writes as a full disk does."""
    store = f"sqlite:{tmp_path / 'bus.sqlite'}"
    bus = bus_process("--store", store, "--quiet", "--history-bytes", "64MB", env=size_limited)
    acknowledged, _ = fill(tmp_path, bus)
    assert store_state(bus)["state"] == "down"
    import resource

    resource.prlimit(bus.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    taken = post_event(bus, "after.limit", {})
    assert store_state(bus)["state"] == "up"
    assert [event["id"] for event in history(bus)] == [*acknowledged, taken]
    [said] = [line for line in bus.lines if "could not write to" in line]
    assert f"could not write to {store}: the disk" in said  # full, or failed to write: SQLite cannot tell
    assert not any("Traceback" in line or "cannot rollback" in line for line in bus.lines)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda path: path.write_bytes(b"not a database, " * 512), "the file is not a SQLite database"),
        (
            lambda path: (
                sqlite3.connect(path).execute("UPDATE meta SET value = 'a\nb' WHERE key = 'run'").connection.commit()
            ),
            "is corrupt: its run identity 'a\\nb' is not one devbus writes",
        ),
    ],
    ids=["not-sqlite", "run-edited"],
)
def test_a_file_that_is_not_a_store_is_said_in_one_line(
    bus_process: Callable[..., BusProcess], tmp_path: Path, damage: Callable[[Path], object], said: str
) -> None:
    path = tmp_path / "bus.sqlite"
    store = f"sqlite:{path}"
    first = bus_process("--store", store, "--quiet")
    post_event(first, "before", {})
    assert first.stop() == 0
    damage(path)
    line = one_error_line(run_devbus_second(store))
    assert said in line, line


def test_a_run_of_bad_rows_longer_than_a_page_is_read_past_not_taken_for_the_end(
    bus_process: Callable[..., BusProcess], tmp_path: Path
) -> None:
    path = tmp_path / "bus.sqlite"
    first = bus_process("--store", f"sqlite:{path}", "--quiet")
    ids = first.post_batch([("row.event", {"n": n}) for n in range(1200)])
    assert first.stop() == 0
    with sqlite3.connect(path) as db:  # 1,099 rows: more than a page (1,000 rows or 32 KiB) of them
        db.execute("UPDATE events SET json = CAST('not json' AS BLOB) WHERE seq BETWEEN 2 AND 1100")
    db.close()
    good = [ids[0], *ids[1100:]]

    bus = bus_process("--store", f"sqlite:{path}", "--quiet")
    assert [event["id"] for event in history(bus, limit=10_000)] == good
    assert [event["id"] for event in history(bus, since=ids[0], limit=10_000)] == good[1:]
    stream = SSEFrames(bus, last_event_id=ids[0])
    try:
        assert [frame[0] for frame in stream.until(ids[-1])] == [b"id: " + i.encode() for i in good[1:]]
    finally:
        stream.close()
    assert store_state(bus)["skipped"]["count"] == 1099
