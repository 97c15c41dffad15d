"""Client commands: `devbus emit`, `devbus listen` and `devbus history`."""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from devbus.cli.lines import CUT_NOTE, EventLines
from devbus.cli.pipes import exit_when_stdout_closes
from devbus.client.config import ClientConfig, resolve
from devbus.client.http import get_json, post_json, stream
from devbus.client.publisher import Publisher
from devbus.errors import BusUnavailable, DevbusError
from devbus.text import plural

__all__ = ["emit", "history", "listen"]

F = TypeVar("F", bound=Callable[..., Any])
RECONNECT_S = 1.0


def _client_options(function: F) -> F:
    """Add --url/--token (HTTP) options, read from DEVBUS_URL and DEVBUS_TOKEN too."""
    function = click.option(
        "--token", envvar="DEVBUS_TOKEN", default=None, help="The bus's token, if it has one (DEVBUS_TOKEN)."
    )(function)
    function = click.option(
        "--url",
        envvar="DEVBUS_URL",
        default=None,
        help="The bus's HTTP base (DEVBUS_URL, default http://127.0.0.1:8765).",
    )(function)
    return function


def _parse_object(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{where} is not valid JSON: {exc}", param_hint="DATA") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{where} must be a JSON object such as '{{\"id\": 1}}'", param_hint="DATA")
    return data


def _read_data(value: str | None) -> Iterator[dict[str, Any]]:
    """Yield the DATA of each event: a JSON object, `@file`, or `-`: stdin, one object per line (NDJSON).

    Stdin whose first line is not a whole object is read as one (pretty-printed) object.
    """
    if value is None:
        yield {}
    elif value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror}", param_hint="DATA") from exc
        yield _parse_object(text, value[1:])
    elif value != "-":
        yield _parse_object(value, "DATA")
    else:
        yield from _stdin_data()


def _stdin_data() -> Iterator[dict[str, Any]]:
    numbered = enumerate(sys.stdin, start=1)
    first = next(((number, line) for number, line in numbered if line.strip()), None)
    if first is None:
        raise click.BadParameter("stdin is empty; give one JSON object per line", param_hint="DATA")
    try:
        parsed = json.loads(first[1])
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        # Not one object per line: a single (pretty-printed) object.
        yield _parse_object(first[1] + "".join(line for _, line in numbered), "stdin")
        return
    yield parsed
    for number, line in numbered:
        if line.strip():
            yield _parse_object(line, f"stdin line {number}")


@click.command()
@click.argument("event_type", metavar="TYPE")
@click.argument("data", required=False)
@click.option("--source", default=None, help="Who sent it (default: zmq, or trigger with --http).")
@click.option("--http", "over_http", is_flag=True, help="POST to /trigger instead of sending over ZeroMQ.")
@click.option("--ingest", envvar="DEVBUS_INGEST", default=None, help="The bus's ZeroMQ ingest (DEVBUS_INGEST).")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds to find the bus.")
@_client_options
def emit(
    event_type: str,
    data: str | None,
    source: str | None,
    over_http: bool,
    ingest: str | None,
    timeout: float,
    url: str | None,
    token: str | None,
) -> None:
    """Send events of TYPE: DATA is a JSON object, `@file`, or `-` for stdin (one JSON object per line).

    With --http, stdout gets each event's id (one per line); messages for people go to stderr.
    """
    config = resolve(url=url, ingest=ingest, token=token)
    if over_http:
        for payload in _read_data(data):
            body: dict[str, Any] = {"event_type": event_type, "data": payload}
            if source:
                body["source"] = source
            answer = post_json(config, "/trigger", body)
            click.echo(answer["id"])
            click.echo(f"{event_type} → {plural(answer['subscribers_notified'], 'subscriber')}", err=True)
        return
    publisher = Publisher(ingest=config.ingest, token=config.token, timeout=timeout)
    sent = 0
    try:
        for payload in _read_data(data):
            publisher.emit(event_type, payload, source=source)
            sent += 1
    finally:
        publisher.close(warn=False)
    if publisher.undelivered or publisher.dropped:
        raise click.ClickException(publisher.report())
    click.echo(f"sent {sent} × {event_type} to {config.ingest}", err=True)


@click.command()
@click.option("--types", default=None, help="Comma-separated globs, e.g. 'agent.*,rental.created'.")
@click.option("--since", default=None, help="Replay retained events after this id first.")
@click.option("--json", "as_json", is_flag=True, help="Print one envelope JSON per line.")
@_client_options
def listen(types: str | None, since: str | None, as_json: bool, url: str | None, token: str | None) -> None:
    """Print events as they arrive (over the SSE stream, so --since can replay)."""
    config = resolve(url=url, token=token)
    # The bus judges --since: an id it does not know gets devbus.gap, one of no id's form a 422.
    last = since
    ever_connected = False
    lines = EventLines()
    with exit_when_stdout_closes():
        try:
            while True:
                try:
                    # Closed here, not when collected: a generator closed by the collector reports
                    # an exception raised in its `finally` (the reader's departure) as a traceback.
                    with contextlib.closing(stream(config, types=types, since=last)) as events:
                        for event_id, raw in events:
                            if not event_id:
                                ever_connected = True
                                click.echo(f"listening to {config.api}/events (Ctrl-C to stop)", err=True)
                                continue
                            last = event_id
                            if as_json:
                                click.echo(raw.decode())
                                continue
                            cut_before = lines.cut_any
                            click.echo(lines(json.loads(raw)))
                            if lines.cut_any and not cut_before:
                                click.echo(CUT_NOTE, err=True)
                except BusUnavailable:
                    if not ever_connected:
                        raise
                except BrokenPipeError:
                    raise
                except (OSError, http.client.HTTPException):
                    pass
                # The bus went away (a restart, say): resume after the last id, as
                # EventSource does, so nothing it retained is missed.
                click.echo(f"devbus at {config.url} went away; reconnecting…", err=True)
                _wait_for_bus(config)
        except KeyboardInterrupt:
            pass


def _wait_for_bus(config: ClientConfig) -> None:
    while True:
        try:
            get_json(config, "/health")
            return
        except BusUnavailable:
            time.sleep(RECONNECT_S)


@click.command()
@click.option("--types", default=None, help="Comma-separated globs, e.g. 'agent.*'.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="The newest N events.")
@click.option("--json", "as_json", is_flag=True, help="Print one envelope JSON per line.")
@_client_options
def history(types: str | None, limit: int, as_json: bool, url: str | None, token: str | None) -> None:
    """Print the newest events the bus retains, oldest first; say on stderr if it retains more."""
    config = resolve(url=url, token=token)
    events, more = _newest(config, types=types, limit=limit)
    lines = EventLines()
    with exit_when_stdout_closes():
        for event in events:
            click.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False) if as_json else lines(event))
    if more:
        click.echo(_more_note(config, shown=len(events), types=types), err=True)
    if lines.cut_any:
        click.echo(CUT_NOTE, err=True)


def _newest(config: ClientConfig, *, types: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The newest ``limit`` events (of ``types``), oldest first, and whether the bus retains more."""
    query = {"limit": str(limit + 1)}
    if types:
        query["types"] = types
    try:
        events: list[dict[str, Any]] = get_json(config, "/history", query)["events"]
    except BusUnavailable:
        raise
    except DevbusError:
        # One more than the bus's --history is refused: then there cannot be more.
        query["limit"] = str(limit)
        events = get_json(config, "/history", query)["events"]
    return events[-limit:], len(events) > limit


def _more_note(config: ClientConfig, *, shown: int, types: str | None) -> str:
    if types:
        return f"showing the newest {plural(shown, 'matching event')}; the bus retains more: raise --limit to see them"
    retained = int(get_json(config, "/health").get("retained", 0))
    return f"showing the newest {shown} of {plural(retained, 'retained event')}; --limit {retained} shows them all"
