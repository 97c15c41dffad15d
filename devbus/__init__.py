"""devbus: a local development event bus."""

from devbus.envelope import Event
from devbus.errors import (
    BusUnavailable,
    DevbusError,
    InvalidEvent,
)

__version__ = "0.1.0"

__all__ = [
    "BusUnavailable",
    "DevbusError",
    "Event",
    "InvalidEvent",
    "__version__",
]
