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
from devbus.client.config import ClientConfig, resolve
from devbus.client.http import post_json, stream
from devbus.client.recording import BadLine, Recorded, batches, read_recording
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
        with to_stdout, target:
            for event_id, raw in stream(config, types=types, since=since):
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


def _events(path: Path) -> Iterator[Recorded | BadLine]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        yield from read_recording(lines)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--speed", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True, help="Go N× faster.")
@click.option("--no-wait", is_flag=True, help="Send as fast as the bus takes them, ignoring the timing.")
@click.option("--keep-source", is_flag=True, help="Keep each event's source (default: `replay`).")
@click.option("--strict", is_flag=True, help="Send nothing if any line is not an event.")
@_client_options
def replay(
    file: Path, speed: float, no_wait: bool, keep_source: bool, strict: bool, url: str | None, token: str | None
) -> None:
    """Publish the events of FILE again, in order, keeping their relative timing.

    Each gets a new id; stdout says which: `LINE ORIGINAL-ID -> NEW-ID TYPE`, one line per event.
    """
    bad = [item for item in _events(file) if isinstance(item, BadLine)]
    for problem in bad:
        click.echo(f"{file}:{problem.line}: {problem.reason}", err=True)
    if bad and strict:
        raise DevbusError(f"{plural(len(bad), 'bad line')} in {file} (--strict): nothing sent")
    events = (item for item in _events(file) if isinstance(item, Recorded))
    config = resolve(url=url, token=token)
    sent = _send(config, events, speed=None if no_wait else speed, keep_source=keep_source)
    skipped = f", skipped {plural(len(bad), 'bad line')}" if bad else ""
    click.echo(f"replayed {plural(sent, 'event')} from {file}{skipped}", err=True)


def _send(config: ClientConfig, events: Iterator[Recorded], *, speed: float | None, keep_source: bool) -> int:
    """POST ``events`` in batches, waiting between them as the recording did; return how many were sent."""
    sent = 0
    start = first = None
    batch: list[Recorded] = []
    try:
        for batch in batches(events, keep_timing=speed is not None):
            at = batch[0].at
            if speed is not None and at is not None:
                if first is None or start is None:
                    first, start = at, time.monotonic()
                delay = start + (at - first) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            answer = post_json(config, "/batch", {"events": [e.body(keep_source=keep_source) for e in batch]})
            for event, new_id in zip(batch, answer["ids"], strict=True):
                click.echo(f"{event.line}\t{event.id or '-'}\t->\t{new_id}\t{event.type}")
            sent += len(batch)
    except (DevbusError, KeyboardInterrupt) as exc:
        # A batch is all or nothing, so everything from its first line on was not sent.
        where = f"line {batch[0].line}" if batch else "the first line"
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        raise DevbusError(f"replay stopped after {sent} events; {where} and after were not sent: {reason}") from exc
    return sent
