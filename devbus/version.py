"""The version of devbus, in one place for the package, the bus, the command line and pyproject.toml."""

__version__ = "0.3.0.dev0"
