"""`devbus types`: the event catalogue, as a table, TypeScript or JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import click

from devbus.cli.clients import _client_options
from devbus.client.config import resolve
from devbus.client.http import get_json
from devbus.client.typescript import summary, to_json_schema, to_typescript

__all__ = ["types"]


@click.command()
@click.option("--ts", "as_ts", is_flag=True, help="Write TypeScript: DevbusEventMap and the union DevbusEvent.")
@click.option("--json-schema", "as_schema", is_flag=True, help="Write each type's JSON Schema of `data`.")
@click.option("--json", "as_json", is_flag=True, help="Write the catalogue as the bus answers it (GET /types).")
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to FILE, not stdout."
)
@_client_options
def types(as_ts: bool, as_schema: bool, as_json: bool, out: Path | None, url: str | None, token: str | None) -> None:
    """Print every event type the bus has seen: count, sources, last seen and the shape of `data`."""
    if as_ts + as_schema + as_json > 1:
        raise click.UsageError("choose one of --ts, --json-schema and --json")
    catalogue = get_json(resolve(url=url, token=token), "/types")
    if as_ts:
        text = to_typescript(catalogue)
    elif as_schema:
        text = to_json_schema(catalogue)
    elif as_json:
        text = json.dumps(catalogue, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    else:
        text = _table(catalogue)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(catalogue['types'])} event types to {out}", err=True)


def _table(catalogue: dict[str, object]) -> str:
    entries = catalogue["types"]
    assert isinstance(entries, list)
    if not entries:
        return "no events seen yet\n"
    width = max(len(entry["type"]) for entry in entries)
    lines = []
    for entry in entries:
        sources = ",".join(entry["sources"])
        partial = "" if entry["schema_complete"] else "  (schema stopped learning at a bound)"
        lines.append(
            f"{entry['type']:<{width}}  {entry['count']:>7}  {sources:<12} last {entry['last_seen']}"
            f"  {summary(entry['schema'])}{partial}"
        )
    return "\n".join(lines) + "\n"
