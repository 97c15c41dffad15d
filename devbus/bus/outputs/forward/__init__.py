"""The forward output: events POSTed to HTTP targets (`devbus run --forward URL`)."""

from devbus.bus.outputs.forward.forwarder import Forwarder
from devbus.bus.outputs.forward.target import (
    EPOCH_HEADER,
    FORWARDED_HEADER,
    IDEMPOTENCY_HEADER,
    Target,
    parse_target,
)

__all__ = ["EPOCH_HEADER", "FORWARDED_HEADER", "IDEMPOTENCY_HEADER", "Forwarder", "Target", "parse_target"]
