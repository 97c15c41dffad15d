"""Logging for `devbus run`: a debug access log and a formatter that never shows the token."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["LOG_FORMAT", "AccessLogger", "RedactingFormatter", "configure_logging", "redacted_path"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"


def redacted_path(request: web.BaseRequest) -> str:
    """The path and query of ``request`` with any ?token= value hidden."""
    url = request.rel_url
    if "token" in url.query:
        url = url.update_query(token=REDACTED)
    return str(url)


class AccessLogger(AbstractAccessLogger):
    """Log one debug line per request; never headers, never a token."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line for one finished request."""
        self.logger.debug(
            "%s %s %s -> %d (%.1f ms)",
            request.remote,
            request.method,
            redacted_path(request),
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        """Only pay for access logging when debug output is on."""
        return self.logger.isEnabledFor(logging.DEBUG)


class RedactingFormatter(logging.Formatter):
    """Replace every secret in the final text, tracebacks and library messages included."""

    def __init__(self, fmt: str, *, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        # Longest first, so that a secret containing another is hidden whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record``, then hide the secrets."""
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def configure_logging(level: str, *, secrets: Iterable[str | None] = ()) -> None:
    """Log to stderr at ``level``, with ``secrets`` hidden from every line."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    formatter = RedactingFormatter(LOG_FORMAT, secrets=[s for s in secrets if s])
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
