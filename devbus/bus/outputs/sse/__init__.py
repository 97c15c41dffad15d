"""The SSE output: every subscriber of GET {prefix}/events, fed by one fan-out.

``fanout`` groups like subscribers and frames each record once per group;
``outlet`` holds one subscriber's bounded buffer; ``stream`` is the view;
``replay`` resumes a stream from the store; ``laggards`` tells a burst input who
is behind; ``heartbeat`` keeps idle streams alive.
"""

from devbus.bus.outputs.sse.fanout import Fanout
from devbus.bus.outputs.sse.stream import EventStream

__all__ = ["EventStream", "Fanout"]
