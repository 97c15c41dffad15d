"""The ZeroMQ egress: every event sent to each SUB listener that subscribed to a prefix of its type.

``listeners`` holds the output and one connection per listener, each written
within its byte budget; ``subscriptions`` holds what one listener subscribed to,
bounded, and matches a type against it.
"""

from devbus.bus.outputs.egress.listeners import Egress

__all__ = ["Egress"]
