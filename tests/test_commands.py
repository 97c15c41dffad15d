"""`devbus emit`, `devbus listen` and `devbus history` against a real `devbus run`."""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner, Result
from support import ROOT, WAIT, BusProcess, bus_env, fetch_history, run_devbus, wait_for_history

from devbus.cli import main


def devbus(running_bus: BusProcess, *args: str, stdin: str | None = None) -> Result:
    env = {"DEVBUS_URL": running_bus.url, "DEVBUS_INGEST": running_bus.endpoints["ingest"], "DEVBUS_TOKEN": ""}
    before = len(fetch_history(running_bus))
    result = CliRunner().invoke(main, list(args), input=stdin, env=env, catch_exceptions=False)
    if (sent := re.search(r"^sent (\d+) ×", result.stderr, re.MULTILINE)) is not None:
        # Over ZeroMQ the bus records the events a moment after `emit` exits.
        wait_for_history(running_bus, before + int(sent.group(1)))
    return result


def history_json(running_bus: BusProcess, *args: str) -> list[dict[str, object]]:
    result = devbus(running_bus, "history", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_emit_over_zeromq_http_stdin_and_file(running_bus: BusProcess, tmp_path: Path) -> None:
    assert devbus(running_bus, "emit", "agent.created", '{"id": 1}', "--source", "shell").exit_code == 0
    assert devbus(running_bus, "emit", "agent.renamed", "-", stdin='{"id": 1, "name": "Ada"}').exit_code == 0
    (tmp_path / "data.json").write_text('{"id": 2}')
    assert devbus(running_bus, "emit", "agent.loaded", f"@{tmp_path / 'data.json'}").exit_code == 0
    posted = devbus(running_bus, "emit", "agent.deleted", '{"id": 1}', "--http")
    assert posted.exit_code == 0, posted.output
    events = history_json(running_bus)
    assert [(e["type"], e["data"], e["source"]) for e in events] == [
        ("agent.created", {"id": 1}, "shell"),
        ("agent.renamed", {"id": 1, "name": "Ada"}, "zmq"),
        ("agent.loaded", {"id": 2}, "zmq"),
        ("agent.deleted", {"id": 1}, "trigger"),
    ]
    # Stdout is data: `id=$(devbus emit … --http)` captures the id alone.
    assert posted.stdout == f"{events[-1]['id']}\n"
    assert "1 subscribers" not in posted.stdout and "agent.deleted" in posted.stderr


def test_emit_reads_ndjson_from_stdin_one_event_per_line(running_bus: BusProcess) -> None:
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(3))
    assert devbus(running_bus, "emit", "row.imported", "-", stdin=lines).exit_code == 0
    posted = devbus(running_bus, "emit", "row.posted", "-", "--http", stdin=lines + "\n")
    assert posted.exit_code == 0, posted.output
    events = history_json(running_bus)
    assert [(e["type"], e["data"]) for e in events] == [("row.imported", {"n": n}) for n in range(3)] + [
        ("row.posted", {"n": n}) for n in range(3)
    ]
    assert posted.stdout.splitlines() == [e["id"] for e in events[3:]]
    pretty = devbus(running_bus, "emit", "row.pretty", "-", stdin='{\n  "n": 9\n}\n')
    assert pretty.exit_code == 0
    assert history_json(running_bus, "--types", "row.pretty")[0]["data"] == {"n": 9}
    bad = devbus(running_bus, "emit", "row.bad", "-", stdin='{"n": 1}\n[2]\n')
    assert bad.exit_code == 2 and "stdin line 2 must be a JSON object" in bad.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [("[1, 2]", "must be a JSON object"), ("{oops", "not valid JSON"), ("@/nonexistent/x.json", "cannot read")],
    ids=["array", "broken-json", "missing-file"],
)
def test_emit_refuses_bad_data_naming_it(running_bus: BusProcess, data: str, message: str) -> None:
    result = devbus(running_bus, "emit", "x.y", data)
    assert result.exit_code == 2
    assert message in result.stderr


def test_history_filters_limits_and_prints_lines(running_bus: BusProcess) -> None:
    for n in range(5):
        devbus(running_bus, "emit", "rental.created" if n % 2 else "agent.created", json.dumps({"n": n}))
    assert [e["data"] for e in history_json(running_bus, "--types", "agent.*")] == [{"n": 0}, {"n": 2}, {"n": 4}]
    assert [e["data"] for e in history_json(running_bus, "--limit", "2")] == [{"n": 3}, {"n": 4}]
    lines = devbus(running_bus, "history").stdout.splitlines()
    assert len(lines) == 5
    assert "rental.created" in lines[1] and '{"n":1}' in lines[1]


def test_history_says_when_the_bus_retains_more_than_it_shows(running_bus: BusProcess) -> None:
    """`devbus history` showed the newest 100 of 436 events without saying so."""
    running_bus.post_batch([("agent.created" if n % 3 else "rental.created", {"n": n}) for n in range(150)])
    shown = devbus(running_bus, "history")
    assert len(shown.stdout.splitlines()) == 100
    assert shown.stderr == "showing the newest 100 of 150 retained events; --limit 150 shows them all\n"
    assert [e["data"] for e in history_json(running_bus, "--limit", "150")] == [{"n": n} for n in range(150)]
    assert devbus(running_bus, "history", "--limit", "150").stderr == ""
    matching = devbus(running_bus, "history", "--json", "--types", "rental.*", "--limit", "20")
    assert [json.loads(line)["data"]["n"] for line in matching.stdout.splitlines()] == list(range(90, 150, 3))
    assert matching.stderr == "showing the newest 20 matching events; the bus retains more: raise --limit to see them\n"
    assert devbus(running_bus, "history", "--types", "rental.*", "--limit", "50").stderr == ""


def test_the_bus_maximum_as_limit_shows_everything_without_a_note(bus_process: Callable[..., BusProcess]) -> None:
    small = bus_process("--quiet", "--history", "5")
    small.post_batch([("t.x", {"n": n}) for n in range(8)])
    env = {"DEVBUS_URL": small.url}
    shown = CliRunner().invoke(main, ["history", "--limit", "5"], env=env)
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.splitlines()) == 5 and shown.stderr == ""


def test_long_data_is_cut_to_the_terminal_in_lines_and_whole_in_json(
    running_bus: BusProcess, listen: Callable[..., Listener]
) -> None:
    """`devbus listen` printed 4 KB single lines."""
    listener = listen(COLUMNS="100")
    big = {"text": "x" * 4000}
    running_bus.post_batch([("doc.saved", big), ("doc.small", {"n": 1})])
    line = listener.line().rstrip("\n")
    assert len(line) == 100 and line.endswith('{"text":"' + "x" * 23 + "…") and "doc.saved" in line, line
    assert listener.line(err=True) == "long data was cut to fit the terminal; --json prints whole events\n"
    assert listener.line().rstrip("\n").endswith('{"n":1}')
    shown = CliRunner().invoke(main, ["history"], env={"DEVBUS_URL": running_bus.url, "COLUMNS": "100"})
    assert len(shown.stdout.splitlines()[0]) == 100
    assert shown.stderr.endswith("long data was cut to fit the terminal; --json prints whole events\n")
    assert history_json(running_bus)[0]["data"] == big


def test_data_that_would_drive_the_terminal_is_shown_escaped(running_bus: BusProcess) -> None:
    """JSON escapes ESC but not CSI (U+009B) or a bidi override: `devbus history` printed them raw."""
    data = {"note": "\x9b31m red \u202e desrever \x1b[2J"}
    running_bus.post_batch([("doc.saved", data)])
    shown = CliRunner().invoke(main, ["history"], env={"DEVBUS_URL": running_bus.url, "COLUMNS": "200"})
    [line] = shown.stdout.splitlines()
    assert line.endswith('{"note":"\\x9b31m red \\u202e desrever \\u001b[2J"}'), line
    assert line.isprintable()
    assert history_json(running_bus)[0]["data"] == data


class Listener:
    """A `devbus listen` child whose output lines are read with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        for stream, lines in ((proc.stdout, self.stdout), (proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            lines.put(line)

    def line(self, *, err: bool = False) -> str:
        """The next line printed, waiting at most WAIT seconds."""
        return (self.stderr if err else self.stdout).get(timeout=WAIT)


@pytest.fixture
def listen(running_bus: BusProcess) -> Iterator[Callable[..., Listener]]:
    """Start `devbus listen` processes; every one is stopped after the test."""
    started: list[Listener] = []

    def start(*args: str, **env: str) -> Listener:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devbus", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=bus_env(DEVBUS_URL=running_bus.url, **env),
            cwd=ROOT,
        )
        listener = Listener(proc)
        started.append(listener)
        assert listener.line(err=True).startswith("listening to"), "listen did not connect"
        return listener

    yield start
    for listener in started:
        listener.proc.kill()
        listener.proc.wait(timeout=WAIT)
        for stream in (listener.proc.stdout, listener.proc.stderr):
            if stream is not None:
                stream.close()


def test_listen_replays_since_an_id_then_prints_live_events(
    running_bus: BusProcess, listen: Callable[..., Listener]
) -> None:
    for n in range(3):
        devbus(running_bus, "emit", "step.done", json.dumps({"n": n}))
    first = history_json(running_bus)[0]["id"]
    listener = listen("--json", "--since", str(first), "--types", "step.*")
    devbus(running_bus, "emit", "other.thing")
    devbus(running_bus, "emit", "step.done", '{"n": 3}')
    received = [json.loads(listener.line()) for _ in range(3)]
    assert [e["data"] for e in received] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert set(received[0]) == {"id", "type", "data", "timestamp", "source"}


def test_listen_prints_a_readable_line_per_event(running_bus: BusProcess, listen: Callable[..., Listener]) -> None:
    listener = listen()
    devbus(running_bus, "emit", "agent.created", '{"name": "Ada"}', "--source", "seed")
    line = listener.line()
    assert line.split()[1:4] == ["agent.created", "seed", history_json(running_bus)[0]["id"]]
    assert line.rstrip().endswith('{"name":"Ada"}')


def test_listen_exits_quietly_when_its_reader_leaves(running_bus: BusProcess) -> None:
    """`devbus listen --json | head -n 2` used to reconnect forever on a closed stdout."""
    for n in range(5):
        devbus(running_bus, "emit", "piped.event", json.dumps({"n": n}))
    listen = subprocess.Popen(
        [sys.executable, "-m", "devbus", "listen", "--json", "--since", str(history_json(running_bus)[0]["id"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=bus_env(DEVBUS_URL=running_bus.url),
        cwd=ROOT,
    )
    assert listen.stdout is not None and listen.stderr is not None
    with listen, listen.stdout, listen.stderr:
        first = listen.stdout.readline()
        listen.stdout.close()  # what `head -n 1` does after its line
        # An event that comes meanwhile must not bring a traceback either (test_pipes.py: a quiet bus).
        devbus(running_bus, "emit", "piped.after")
        assert listen.wait(timeout=WAIT) == 0
        err = listen.stderr.read().decode()
    assert json.loads(first)["data"] == {"n": 1}
    assert "Traceback" not in err and "reconnecting" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("command", ["listen", "record"])
def test_a_since_of_no_id_form_is_refused_as_the_http_api_refuses_it(running_bus: BusProcess, command: str) -> None:
    """`?since=42` was a gap and a full replay on the stream, while `listen --since 42` exited with a 422."""
    devbus(running_bus, "emit", "x.y")
    last = history_json(running_bus)[-1]["id"]
    args = [command, "--since", "42"] + (["-"] if command == "record" else [])
    result = devbus(running_bus, *args)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: The bus at {running_bus.url} refused the stream (422): `since` must be an event id such as "
        f"{last!r} (got '42'); take one from an event's `id`\n"
    )


def test_listen_since_an_id_of_another_run_prints_the_gap_then_everything(
    running_bus: BusProcess, listen: Callable[..., Listener]
) -> None:
    for n in range(2):
        devbus(running_bus, "emit", "x.y", json.dumps({"n": n}))
    listener = listen("--json", "--since", "0badc0de-7")
    gap, first, second = (json.loads(listener.line()) for _ in range(3))
    assert (gap["type"], gap["data"]["last_event_id"]) == ("devbus.gap", "0badc0de-7")
    assert [first["data"], second["data"]] == [{"n": 0}, {"n": 1}]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "args",
    [["emit", "x.y", "--timeout", "0.3"], ["emit", "x.y", "--http"], ["listen"], ["history"]],
    ids=["emit", "emit-http", "listen", "history"],
)
def test_an_unreachable_bus_is_one_line_naming_the_address(args: list[str]) -> None:
    port = closed_port()
    env = bus_env(DEVBUS_URL=f"http://127.0.0.1:{port}", DEVBUS_INGEST=f"tcp://127.0.0.1:{port}")
    result = run_devbus(*args, env=env)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_emit_over_zeromq_without_a_bus_answers_about_as_fast_as_over_http() -> None:
    """It used to take 5 s to say so, against 0.15 s with --http."""
    port = closed_port()
    env = bus_env(DEVBUS_URL=f"http://127.0.0.1:{port}", DEVBUS_INGEST=f"tcp://127.0.0.1:{port}")

    def timed(*args: str) -> float:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "devbus", "emit", "x.y", *args], capture_output=True, env=env, cwd=ROOT, timeout=60
        )
        assert result.returncode == 1
        return time.monotonic() - started

    over_http = min(timed("--http") for _ in range(2))
    over_zeromq = min(timed() for _ in range(2))
    # Both are mostly Python's start-up; waiting for a bus would add seconds.
    assert over_zeromq < over_http * 2 + 0.5, (over_zeromq, over_http)


def test_commands_send_the_token_and_a_wrong_one_is_one_line(bus_process: Callable[..., BusProcess]) -> None:
    running_bus = bus_process("--quiet", "--token", "t0ken")
    env = {"DEVBUS_URL": running_bus.url, "DEVBUS_INGEST": running_bus.endpoints["ingest"], "DEVBUS_TOKEN": "t0ken"}
    runner = CliRunner()
    assert runner.invoke(main, ["emit", "secure.zmq"], env=env).exit_code == 0
    assert runner.invoke(main, ["emit", "secure.http", "--http"], env=env).exit_code == 0
    listed = runner.invoke(main, ["history", "--json"], env=env)
    assert [json.loads(line)["type"] for line in listed.stdout.splitlines()] == ["secure.zmq", "secure.http"]
    refused = runner.invoke(main, ["history"], env={**env, "DEVBUS_TOKEN": "n0t-1t"})
    assert refused.exit_code == 1
    assert "(401)" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "n0t-1t" not in refused.stderr


def test_listen_survives_a_bus_restart_and_reports_the_gap(
    bus_process: Callable[..., BusProcess], listen: Callable[..., Listener], running_bus: BusProcess
) -> None:
    listener = listen("--json")
    devbus(running_bus, "emit", "before.restart")
    before = json.loads(listener.line())
    assert running_bus.stop() == 0
    assert "went away; reconnecting" in listener.line(err=True)
    port = running_bus.url.rsplit(":", 1)[1]
    second = bus_process("--quiet", "--port", port)
    assert listener.line(err=True).startswith("listening to")
    devbus(second, "emit", "after.restart")
    gap, after = json.loads(listener.line()), json.loads(listener.line())
    # The new run no longer has what followed the old id: a gap event says so first.
    assert (gap["type"], gap["data"]["last_event_id"]) == ("devbus.gap", before["id"])
    assert after["type"] == "after.restart"
