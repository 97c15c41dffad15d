"""The `devbus` command line: run the bus, and talk to it from a shell."""

from devbus.cli.main import main

__all__ = ["main"]
