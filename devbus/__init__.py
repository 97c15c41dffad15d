"""devbus: a local development event bus."""

from devbus.envelope import Event
from devbus.errors import (
    BusUnavailable,
    DevbusError,
    InvalidEvent,
)
from devbus.publisher import AsyncPublisher, Publisher, emit
from devbus.subscriber import AsyncSubscriber, Subscriber

__version__ = "0.1.0"

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
