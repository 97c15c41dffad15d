"""Logging for the CLI: a formatter that never shows the token."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["LOG_FORMAT", "REDACTED", "RedactingFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"


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
