"""Where clients find the bus: options first, then DEVBUS_* variables, then the defaults."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from devbus.addresses import check_base_url, check_endpoint, check_prefix
from devbus.defaults import DEFAULT_EGRESS, DEFAULT_INGEST, DEFAULT_PREFIX, DEFAULT_URL

__all__ = ["ClientConfig", "connectable", "resolve"]

# A bind address such as tcp://*:8766 or tcp://0.0.0.0:8766 (what `devbus run`
# may be given through the same variable) is reached through loopback.
_WILDCARD_HOST = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\]|\[\*\])(?=:)")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """The addresses and token a client uses."""

    url: str
    ingest: str
    egress: str
    token: str | None
    prefix: str = DEFAULT_PREFIX

    @property
    def api(self) -> str:
        """The HTTP API base, e.g. ``http://127.0.0.1:8765/api/dev``."""
        return f"{self.url}{self.prefix.rstrip('/')}"


def connectable(endpoint: str) -> str:
    """Turn a bind address into one a client can connect to."""
    return _WILDCARD_HOST.sub("tcp://127.0.0.1", endpoint.strip())


def resolve(
    *,
    url: str | None = None,
    ingest: str | None = None,
    egress: str | None = None,
    token: str | None = None,
    prefix: str | None = None,
) -> ClientConfig:
    """Resolve the bus's addresses from options, DEVBUS_URL/INGEST/EGRESS/TOKEN/PREFIX, or defaults."""
    env = os.environ
    return ClientConfig(
        url=check_base_url(url or env.get("DEVBUS_URL") or DEFAULT_URL, option="--url (DEVBUS_URL)"),
        ingest=check_endpoint(
            connectable(ingest or env.get("DEVBUS_INGEST") or DEFAULT_INGEST), option="--ingest (DEVBUS_INGEST)"
        ),
        egress=check_endpoint(
            connectable(egress or env.get("DEVBUS_EGRESS") or DEFAULT_EGRESS), option="--egress (DEVBUS_EGRESS)"
        ),
        token=token or env.get("DEVBUS_TOKEN") or None,
        prefix=check_prefix(prefix or env.get("DEVBUS_PREFIX") or DEFAULT_PREFIX, option="DEVBUS_PREFIX"),
    )
