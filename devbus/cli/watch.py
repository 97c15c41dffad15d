"""`devbus watch`: emit an event for every file that changes."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from devbus.cli.pipes import on_stdout_closed
from devbus.client.publisher import Publisher
from devbus.envelope import MAX_SOURCE_LENGTH, MAX_TYPE_LENGTH, check_name
from devbus.errors import InvalidEvent
from devbus.logs import configure_logging
from devbus.watch.globs import split_patterns
from devbus.watch.watcher import DEFAULT_IGNORES, StopWatch, WatchFilter, emit_changes

__all__ = ["watch"]


@click.command()
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--glob",
    "globs",
    envvar="DEVBUS_WATCH_GLOB",
    multiple=True,
    help="Only report files matching these globs (repeatable, comma lists, {a,b}), e.g. 'src/**/*.{ts,tsx}'.",
)
@click.option(
    "--ignore",
    "ignores",
    envvar="DEVBUS_WATCH_IGNORE",
    multiple=True,
    help=f"Also ignore these names or paths (repeatable, comma lists); always ignored: {', '.join(DEFAULT_IGNORES)}.",
)
@click.option(
    "--type",
    "event_type",
    envvar="DEVBUS_WATCH_TYPE",
    default="frontend.file_changed",
    show_default=True,
    help="Type of the events.",
)
@click.option(
    "--debounce-ms",
    envvar="DEVBUS_WATCH_DEBOUNCE_MS",
    type=click.IntRange(1, 60_000),
    default=50,
    show_default=True,
    help="Quiet time that ends a burst of changes.",
)
@click.option(
    "--source", envvar="DEVBUS_WATCH_SOURCE", default="watch", show_default=True, help="Source of the events."
)
@click.option("--batch", envvar="DEVBUS_WATCH_BATCH", is_flag=True, help="One event per burst: {changes: [...]}.")
@click.option("--quiet", "-q", envvar="DEVBUS_QUIET", is_flag=True, help="Do not print a line per event.")
@click.option("--ingest", envvar="DEVBUS_INGEST", default=None, help="The bus's ZeroMQ ingest (DEVBUS_INGEST).")
@click.option("--token", envvar="DEVBUS_TOKEN", default=None, help="The bus's token, if it has one (DEVBUS_TOKEN).")
@click.option("--timeout", type=click.FloatRange(0.1), default=5.0, show_default=True, help="Seconds to find the bus.")
def watch(
    paths: tuple[str, ...],
    globs: tuple[str, ...],
    ignores: tuple[str, ...],
    event_type: str,
    debounce_ms: int,
    source: str,
    batch: bool,
    quiet: bool,
    ingest: str | None,
    token: str | None,
    timeout: float,
) -> None:
    """Emit an event for every file that changes under PATH."""
    for value, name in ((event_type, "--type"), (source, "--source")):
        try:
            check_name(value, field=name, max_length=MAX_SOURCE_LENGTH if name == "--source" else MAX_TYPE_LENGTH)
        except InvalidEvent as exc:
            raise click.BadParameter(str(exc), param_hint=name) from exc
    configure_logging("warning", secrets=[token])  # the client's own warnings: bus gone, bus back
    roots = [os.path.abspath(path) for path in paths]
    watch_filter = WatchFilter(roots, globs=split_patterns(globs), ignores=split_patterns(ignores))
    output = _Output()
    try:
        with Publisher(ingest=ingest, token=token, source=source, timeout=timeout) as publisher:
            # Wait for the bus (BusUnavailable after --timeout), so "ready" means both ends are live.
            publisher.wait_for_bus()

            def ready() -> None:
                output(f"watching {', '.join(roots)} → {event_type} on {publisher.address}")
                output("ready (Ctrl-C to stop)")

            emit_changes(
                roots,
                publisher=publisher,
                event_type=event_type,
                source=source,
                batch=batch,
                watch_filter=watch_filter,
                debounce_ms=debounce_ms,
                on_ready=ready,
                write=None if quiet else output,
                stop_when=output.on_reader_gone,
            )
    except KeyboardInterrupt:
        # Only a second Ctrl-C gets here: the user chose not to wait for the last burst.
        raise click.exceptions.Exit(130) from None
    finally:
        output.close()


class _Output:
    """Stdout, which like any filter's ends the command when its reader goes (`| head`).

    Then the watch stops at once (the burst being sent is finished, as after Ctrl-C,
    but it does not wait for changes still in flight) and nothing more is written.
    """

    def __init__(self) -> None:
        self.gone = False
        self._stop: StopWatch | None = None
        self._stop_watching = on_stdout_closed(self._reader_gone)

    def on_reader_gone(self, stop: StopWatch) -> None:
        """Call ``stop`` once the reader has gone (at once if it already has)."""
        self._stop = stop
        if self.gone:
            stop(at_once=True)

    def __call__(self, line: str) -> None:
        if self.gone:
            return
        try:
            click.echo(line)
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        self.gone = True
        if self._stop is not None:
            self._stop(at_once=True)

    def close(self) -> None:
        self._stop_watching()
        if self.gone:
            # Python would report the broken pipe again when it flushes stdout at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
