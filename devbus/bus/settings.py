"""Settings of a running bus, with the defaults the spec names."""

from __future__ import annotations

from dataclasses import dataclass

from devbus.defaults import DEFAULT_EGRESS, DEFAULT_HOST, DEFAULT_INGEST, DEFAULT_PORT, DEFAULT_PREFIX, MIB

__all__ = ["Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything `devbus run` can be told; the tests build these directly."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    prefix: str = DEFAULT_PREFIX
    ingest: str | None = DEFAULT_INGEST
    egress: str | None = DEFAULT_EGRESS
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    insecure: bool = False
    store: str = "memory"
    store_key: str = "devbus"
    history: int = 10_000
    history_bytes: int = 64 * MIB
    heartbeat: float = 15.0
    retry_ms: int = 1000
    max_body: int = MIB
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_message: int = MIB
    max_subscribers: int = 1000
    max_connections: int | None = None  # None: as many as the open-file limit allows (connection_budget.py)
    zmq_idle_timeout: float = 300.0
    subscriber_buffer: int = 4 * MIB
    egress_buffer: int = 16 * MIB
    memory_budget: int = 128 * MIB
    forward: tuple[str, ...] = ()
    forward_types: tuple[str, ...] = ()
    forward_queue: int = 10_000

    @property
    def api(self) -> str:
        """The API prefix without a trailing slash ('' for the root)."""
        return self.prefix.rstrip("/")
