"""devbus: a local development event bus."""

from devbus.client.publisher import AsyncPublisher, Publisher, emit
from devbus.client.subscriber import AsyncSubscriber, Subscriber
from devbus.envelope import Event
from devbus.errors import (
    BusUnavailable,
    DevbusError,
    InvalidEvent,
)

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.3.0.dev0"

__all__ = [
    "AsyncPublisher",
    "AsyncSubscriber",
    "BusUnavailable",
    "DevbusError",
    "Event",
    "InvalidEvent",
    "Publisher",
    "Subscriber",
    "__version__",
    "emit",
]
