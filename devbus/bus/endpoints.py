"""Listen on a ZeroMQ-style endpoint (tcp://HOST:PORT or ipc://PATH) with asyncio.

An ipc:// endpoint is a socket file: one that a live process serves is refused
(binding over it would silently take its senders away), one that a dead bus
left behind is removed first, and the file is removed again on close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable
from contextlib import suppress
from urllib.parse import urlsplit

from devbus.errors import ConfigError

__all__ = ["Listening", "listen"]

log = logging.getLogger(__name__)


class Listening:
    """A bound endpoint: the asyncio server, the address to connect to, and any socket file."""

    def __init__(self, server: asyncio.Server, address: str, socket_file: tuple[str, int] | None = None) -> None:
        self.server = server
        self.address = address
        self._socket_file = socket_file  # (path, inode): removed only while it is still ours

    def close(self) -> None:
        """Stop accepting connections and remove the socket file, if any."""
        self.server.close()
        if self._socket_file is not None:
            path, inode = self._socket_file
            with suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)


async def listen(endpoint: str, factory: Callable[[], asyncio.BaseProtocol], *, role: str, option: str) -> Listening:
    """Bind ``endpoint`` for the ZeroMQ ``role`` (ingest, egress); ConfigError names ``option``."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(endpoint)
    try:
        if parts.scheme == "tcp":
            host, _, port = parts.netloc.rpartition(":")
            host = host.strip("[]")
            server = await loop.create_server(
                factory, "0.0.0.0" if host == "*" else host, 0 if port == "*" else int(port), reuse_address=True
            )
            bound = server.sockets[0].getsockname()
            return Listening(server, f"tcp://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}")
        if parts.scheme == "ipc":
            path = endpoint.removeprefix("ipc://")
            _claim_socket_file(path, option)
            server = await loop.create_unix_server(factory, path)
            return Listening(server, endpoint, (path, os.stat(path).st_ino))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"Cannot bind the ZeroMQ {role} to {endpoint}: {reason}; pass another {option}") from exc
    raise ConfigError(f"{option} {endpoint!r}: the bus listens on tcp://HOST:PORT or ipc://PATH")


def _claim_socket_file(path: str, option: str) -> None:
    """Refuse a socket file another live process serves; remove one a dead bus left behind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{option} ipc://{path}: that path exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a bus that died
        log.info("removed the stale socket file %s", path)
        return
    except OSError:
        return  # bind will say what is wrong
    finally:
        probe.close()
    raise ConfigError(
        f"Another process (a running devbus?) already serves ipc://{path}; stop it or pass another {option}"
    )
