"""Where order and history live: one ordered log of events behind a small interface (see ``base``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from devbus.bus.record import Record
from devbus.bus.store.base import Resume, Store
from devbus.errors import ConfigError

if TYPE_CHECKING:
    from devbus.bus.store.redis_shared import SharedStream

__all__ = ["Record", "Resume", "Store", "create_store", "shared_stream"]

STORE_URLS = "memory, sqlite:PATH or redis://host:port/db"


def create_store(url: str, *, history: int, history_bytes: int, key: str = "devbus") -> Store:
    """Build the store that ``url`` (``--store``) names; a bad URL is a ConfigError saying what is allowed.

    ``key`` (``--store-key``) names the stream in a shared store, so that buses sharing one Redis
    without sharing events can use different ones.
    """
    scheme, sep, rest = url.partition(":")
    scheme = scheme.strip().lower()
    if url.strip().lower() == "memory":
        from devbus.bus.store.memory import MemoryStore

        return MemoryStore(history=history, history_bytes=history_bytes)
    if sep and scheme == "sqlite":
        from devbus.bus.store.sqlite import SqliteStore

        # sqlite:PATH, or sqlite:///abs/path as in SQLAlchemy-style URLs.
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ConfigError(f"--store {url!r} names no file: use sqlite:PATH, e.g. sqlite:.devbus/events.db")
        return SqliteStore(path, history=history, history_bytes=history_bytes)
    if sep and scheme in ("redis", "rediss", "unix"):
        try:
            from devbus.bus.store.redis import RedisStore
        except ImportError as exc:
            raise ConfigError(
                f"--store {scheme}:// needs the Redis extra: pip install 'devbus[redis]' ({exc})"
            ) from exc
        return RedisStore(url, key=key, history=history, history_bytes=history_bytes)
    raise ConfigError(f"--store {url!r} is not a store URL: use {STORE_URLS}")


def shared_stream(store: Store) -> SharedStream | None:
    """The handle on the stream ``store`` shares with other buses, if it is one (a Redis store)."""
    try:
        from devbus.bus.store.redis import RedisStore
    except ImportError:
        return None  # without the Redis extra no store shares a stream
    return store.shared_stream() if isinstance(store, RedisStore) else None
