"""Logging for the CLI: a formatter that never shows the token."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["LOG_FORMAT", "REDACTED", "RedactingFormatter", "configure_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"
# A library error may quote a cut-off piece of a request line: any run of this
# many characters of a secret is hidden, so no part long enough to help guess it shows.
MIN_FRAGMENT = 6


class RedactingFormatter(logging.Formatter):
    """Replace every secret in the final text, tracebacks and library messages included."""

    def __init__(self, fmt: str, *, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        pieces: set[str] = set()
        for secret in {s for s in secrets if s}:
            size = min(MIN_FRAGMENT, len(secret))
            pieces.update(secret[i : i + size] for i in range(len(secret) - size + 1))
        self._pieces = pieces

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record``, then hide every secret and every piece of one."""
        return self.redact(super().format(record))

    def redact(self, text: str) -> str:
        """Replace each run of ``text`` made of overlapping pieces of a secret."""
        hidden = [False] * len(text)
        found = False
        for piece in self._pieces:
            start = text.find(piece)
            while start != -1:
                found = True
                hidden[start : start + len(piece)] = [True] * len(piece)
                start = text.find(piece, start + 1)
        if not found:
            return text
        out: list[str] = []
        for index, char in enumerate(text):
            if not hidden[index]:
                out.append(char)
            elif index == 0 or not hidden[index - 1]:
                out.append(REDACTED)
        return "".join(out)


def configure_logging(level: str, *, secrets: Iterable[str | None] = ()) -> None:
    """Log to stderr at ``level``, with ``secrets`` hidden from every line."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    formatter = RedactingFormatter(LOG_FORMAT, secrets=[s for s in secrets if s])
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
