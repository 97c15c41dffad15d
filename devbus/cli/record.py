"""`devbus record FILE` and `devbus replay FILE`: keep what a page saw, and show it to it again."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import click

from devbus.cli.clients import _client_options
from devbus.cli.pipes import exit_when_stdout_closes
from devbus.cli.run import DEFAULTS, _size, _size_text
from devbus.cli.terminal import printable
from devbus.client.config import ClientConfig, resolve
from devbus.client.http import post_json, stream
from devbus.client.recording import BATCH_BYTES, LINE_SLACK, Recorded, batches, read_lines, read_recording
from devbus.errors import DevbusError
from devbus.text import plural

__all__ = ["record", "replay"]

GAP = "devbus.gap"


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path))
@click.option("--types", default=None, help="Comma-separated globs, e.g. 'agent.*,rental.created'.")
@click.option("--since", default=None, help="Start with the retained events after this id.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N events (default: Ctrl-C).")
@_client_options
def record(
    file: Path, types: str | None, since: str | None, count: int | None, url: str | None, token: str | None
) -> None:
    """Write every event (one envelope JSON per line) to FILE until Ctrl-C or --count."""
    config = resolve(url=url, token=token)
    written = 0
    target = click.open_file(str(file), "w", encoding="utf-8")
    # Recording to stdout (FILE `-`) ends, like any filter, when its reader goes.
    to_stdout = exit_when_stdout_closes() if str(file) == "-" else contextlib.nullcontext()
    try:
        # The stream is closed here, not when collected (see `devbus listen`).
        with to_stdout, target, contextlib.closing(stream(config, types=types, since=since)) as events:
            for event_id, raw in events:
                if not event_id:
                    click.echo(f"recording {config.api}/events to {file} (Ctrl-C to stop)", err=True)
                    continue
                if json.loads(raw).get("type") == GAP:
                    # A control event, not something a sender published: note it, do not replay it.
                    click.echo(
                        f"the bus no longer retains everything after {since}: the recording starts later", err=True
                    )
                    continue
                target.write(raw.decode() + "\n")
                target.flush()
                written += 1
                if count is not None and written >= count:
                    break
            else:
                raise DevbusError(
                    f"The bus at {config.url} closed the stream; recorded {plural(written, 'event')} to {file}"
                )
    except KeyboardInterrupt:
        pass
    click.echo(f"recorded {plural(written, 'event')} to {file}", err=True)


# Recordings are replayed in their own time, with every pause longer than this shortened to
# it (before --speed): a recording left running over lunch replays without the lunch.
MAX_GAP = 10.0


class _Reader:
    """Read FILE's events a line at a time, saying on stderr which lines are bad (and counting them)."""

    def __init__(self, path: Path, *, max_body: int, keep_source: bool) -> None:
        self.path = path
        self.name = printable(str(path))
        self.max_body = max_body
        self.keep_source = keep_source
        self.bad = 0

    def events(self) -> Iterator[Recorded]:
        self.bad = 0
        with self.path.open("rb") as file:
            lines = read_lines(file, max_length=self.max_body + LINE_SLACK)
            for item in read_recording(lines, max_body=self.max_body, keep_source=self.keep_source):
                if isinstance(item, Recorded):
                    yield item
                else:
                    self.bad += 1
                    click.echo(f"{self.name}:{item.line}: {printable(item.reason, limit=1000)}", err=True)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--speed", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True, help="Go N× faster.")
@click.option("--no-wait", is_flag=True, help="Send as fast as the bus takes them, ignoring the timing.")
@click.option(
    "--max-gap",
    type=click.FloatRange(0),
    default=MAX_GAP,
    show_default=True,
    help="Shorten every pause in the recording longer than this many seconds to it (before --speed).",
)
@click.option("--keep-source", is_flag=True, help="Keep each event's source (default: `replay`).")
@click.option("--strict", is_flag=True, help="Check the whole file first; send nothing if any line is bad.")
@click.option(
    "--max-body",
    envvar="DEVBUS_MAX_BODY",
    callback=_size,
    default=_size_text(DEFAULTS.max_body),
    show_default=True,
    help="The bus's --max-body (DEVBUS_MAX_BODY): a line whose event is larger is bad.",
)
@_client_options
def replay(
    file: Path,
    speed: float,
    no_wait: bool,
    max_gap: float,
    keep_source: bool,
    strict: bool,
    max_body: int,
    url: str | None,
    token: str | None,
) -> None:
    """Publish the events of FILE again, in order, keeping their relative timing.

    Each gets a new id; stdout says which: `LINE ORIGINAL-ID -> NEW-ID TYPE`, one line per event.
    """
    reader = _Reader(file, max_body=max_body, keep_source=keep_source)
    if strict:
        for _ in reader.events():
            pass  # every line checked, nothing held, before anything is sent
        if reader.bad:
            raise DevbusError(f"{plural(reader.bad, 'bad line')} in {reader.name} (--strict): nothing sent")
    config = resolve(url=url, token=token)
    timing = None if no_wait else _Timing(speed=speed, max_gap=max_gap)
    sent = _send(config, reader.events(), timing=timing, keep_source=keep_source, max_body=max_body)
    skipped = f", skipped {plural(reader.bad, 'bad line')}" if reader.bad else ""
    click.echo(f"replayed {plural(sent, 'event')} from {reader.name}{skipped}", err=True)


class _Timing:
    """When to send each batch: the recording's own time, pauses shortened to ``max_gap``, divided by ``speed``."""

    def __init__(self, *, speed: float, max_gap: float) -> None:
        self._speed = speed
        self._max_gap = max_gap
        self._start: float | None = None  # when the first timed batch was sent
        self._last: float | None = None  # the recorded time of the last timed batch
        self._elapsed = 0.0  # recorded seconds since the first, pauses shortened

    def delay(self, at: float | None) -> float:
        """Seconds to wait before sending a batch recorded at ``at`` (None: send at once)."""
        if at is None:
            return 0.0
        now = time.monotonic()
        if self._start is None or self._last is None:
            self._start = now
        else:
            self._elapsed += min(max(at - self._last, 0.0), self._max_gap)
        self._last = at
        return max(self._start + self._elapsed / self._speed - now, 0.0)


def _send(
    config: ClientConfig,
    events: Iterator[Recorded],
    *,
    timing: _Timing | None,
    keep_source: bool,
    max_body: int,
) -> int:
    """POST ``events`` in batches, waiting between them as ``timing`` says; return how many were sent."""
    sent = 0
    batch: list[Recorded] = []
    try:
        for batch in batches(events, keep_timing=timing is not None, max_bytes=min(BATCH_BYTES, max_body)):
            if timing is not None and (delay := timing.delay(batch[0].at)) > 0:
                time.sleep(delay)
            answer = post_json(config, "/batch", {"events": [e.body(keep_source=keep_source) for e in batch]})
            for event, new_id in zip(batch, answer["ids"], strict=True):
                click.echo(
                    f"{event.line}\t{printable(event.id or '-')}\t->\t{printable(new_id)}\t{printable(event.type)}"
                )
            sent += len(batch)
    except (DevbusError, KeyboardInterrupt) as exc:
        # A batch is all or nothing, so everything from its first line on was not sent.
        where = f"line {batch[0].line}" if batch else "the first line"
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else printable(str(exc), limit=1000)
        raise DevbusError(f"replay stopped after {sent} events; {where} and after were not sent: {reason}") from exc
    return sent
