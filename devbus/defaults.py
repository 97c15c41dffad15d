"""Where a bus listens unless told otherwise, and sizes both sides agree on.

`devbus run` binds these addresses and clients look for a bus at them, so they live
here, apart from both: the clients never import the bus to learn them.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_EGRESS",
    "DEFAULT_HOST",
    "DEFAULT_INGEST",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "MIB",
    "ZMQ_HEARTBEAT_MS",
    "ZMQ_HEARTBEAT_TIMEOUT_MS",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_PREFIX = "/api/dev"
DEFAULT_INGEST = "tcp://127.0.0.1:8766"
DEFAULT_EGRESS = "tcp://127.0.0.1:8767"
MIB = 1024 * 1024  # --max-body and --max-message default to one
# The clients' ZeroMQ sockets PING the bus this often (ZMQ_HEARTBEAT_IVL), well inside the
# bus's default --zmq-idle-timeout (300 s), so that a quiet publisher or subscriber is not
# closed as idle; and give up on a bus that answers nothing for this long.
ZMQ_HEARTBEAT_MS = 30_000
ZMQ_HEARTBEAT_TIMEOUT_MS = 90_000
