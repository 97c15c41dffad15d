"""Where a bus listens unless told otherwise, and sizes both sides agree on.

`devbus run` binds these addresses and clients look for a bus at them, so they live
here, apart from both: the clients never import the bus to learn them.
"""

from __future__ import annotations

__all__ = ["DEFAULT_EGRESS", "DEFAULT_HOST", "DEFAULT_INGEST", "DEFAULT_PORT", "DEFAULT_PREFIX", "DEFAULT_URL", "MIB"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DEFAULT_PREFIX = "/api/dev"
DEFAULT_INGEST = "tcp://127.0.0.1:8766"
DEFAULT_EGRESS = "tcp://127.0.0.1:8767"
MIB = 1024 * 1024  # --max-body and --max-message default to one
