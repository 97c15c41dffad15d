"""Client commands: `devbus emit`, `devbus listen` and `devbus history`."""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from devbus.client.config import ClientConfig, resolve
from devbus.client.http import get_json, post_json, stream
from devbus.client.publisher import Publisher
from devbus.errors import BusUnavailable

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


def _read_data(value: str | None) -> dict[str, Any]:
    """Parse DATA: JSON object text, `-` for stdin, or `@file`."""
    if value is None:
        return {}
    where = "DATA"
    if value == "-":
        text, where = sys.stdin.read(), "stdin"
    elif value.startswith("@"):
        try:
            text, where = Path(value[1:]).read_text(), value[1:]
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]!r}: {exc.strerror}", param_hint="DATA") from exc
    else:
        text = value
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{where} is not valid JSON: {exc}", param_hint="DATA") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{where} must be a JSON object such as '{{\"id\": 1}}'", param_hint="DATA")
    return data


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
    """Send one event: DATA is a JSON object, `-` (stdin) or `@file`."""
    payload = _read_data(data)
    config = resolve(url=url, ingest=ingest, token=token)
    if over_http:
        body: dict[str, Any] = {"event_type": event_type, "data": payload}
        if source:
            body["source"] = source
        answer = post_json(config, "/trigger", body)
        click.echo(f"{answer['id']}  {event_type} → {answer['subscribers_notified']} subscribers")
        return
    with Publisher(ingest=config.ingest, token=config.token, timeout=timeout) as publisher:
        publisher.emit(event_type, payload, source=source)
    click.echo(f"sent {event_type} to {config.ingest}", err=True)


def _line(raw: bytes, *, as_json: bool) -> str:
    if as_json:
        return raw.decode()
    event = json.loads(raw)
    clock = str(event.get("timestamp", ""))[11:23]
    data = json.dumps(event.get("data", {}), separators=(",", ":"), ensure_ascii=False)
    return f"{clock}  {event.get('type', ''):<28} {event.get('source', ''):<8} {event.get('id', ''):<14} {data}"


@click.command()
@click.option("--types", default=None, help="Comma-separated globs, e.g. 'agent.*,rental.created'.")
@click.option("--since", default=None, help="Replay retained events after this id first.")
@click.option("--json", "as_json", is_flag=True, help="Print one envelope JSON per line.")
@_client_options
def listen(types: str | None, since: str | None, as_json: bool, url: str | None, token: str | None) -> None:
    """Print events as they arrive (over the SSE stream, so --since can replay)."""
    config = resolve(url=url, token=token)
    last = since
    ever_connected = False
    try:
        while True:
            try:
                for event_id, raw in stream(config, types=types, since=last):
                    if not event_id:
                        ever_connected = True
                        click.echo(f"listening to {config.api}/events (Ctrl-C to stop)", err=True)
                        continue
                    last = event_id
                    click.echo(_line(raw, as_json=as_json))
            except BusUnavailable:
                if not ever_connected:
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
    """Print the events the bus retains, oldest first."""
    query = {"limit": str(limit)}
    if types:
        query["types"] = types
    answer = get_json(resolve(url=url, token=token), "/history", query)
    for event in answer["events"]:
        click.echo(_line(json.dumps(event, separators=(",", ":")).encode(), as_json=as_json))
