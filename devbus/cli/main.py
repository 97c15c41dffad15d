"""The `devbus` command group: one clear line and a non-zero exit for every DevbusError."""

from __future__ import annotations

from typing import Any

import click

from devbus import __version__
from devbus.cli.clients import emit, history, listen
from devbus.cli.record import record, replay
from devbus.cli.run import run
from devbus.cli.types import types
from devbus.cli.watch import watch
from devbus.errors import DevbusError

__all__ = ["main"]


class DevbusGroup(click.Group):
    """Turn every DevbusError into one clear line and a non-zero exit, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DevbusError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=DevbusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devbus")
def main() -> None:
    """devbus: a local development event bus (HTTP + SSE + ZeroMQ)."""


for _command in (run, watch, emit, listen, history):
    main.add_command(_command)
main.add_command(types)
main.add_command(record)
main.add_command(replay)
