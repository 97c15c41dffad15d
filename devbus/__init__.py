"""devbus: a local development event bus."""

from devbus.client.publisher import AsyncPublisher, Publisher, emit
from devbus.client.subscriber import AsyncSubscriber, Subscriber
from devbus.envelope import Event
from devbus.errors import (
    BusUnavailable,
    DevbusError,
    InvalidEvent,
)
from devbus.version import __version__

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
