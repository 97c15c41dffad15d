"""The version of devbus, in one place for the package, the bus and the command line."""

__version__ = "0.1.0"
