"""Text for people: counts with the right noun, and values cut to fit a column."""

from __future__ import annotations

__all__ = ["ELLIPSIS", "cut", "cut_left", "plural"]

ELLIPSIS = "…"


def plural(number: int, noun: str, plural: str | None = None) -> str:
    """``1 subscriber``, ``2 subscribers`` (``plural`` for nouns that do not just take an s)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def cut(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its start and an ellipsis, ``width`` in all."""
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


def cut_left(text: str, width: int) -> str:
    """Like :func:`cut`, keeping the end (where an id's sequence number is)."""
    if len(text) <= width:
        return text
    return ELLIPSIS + text[len(text) - max(width - 1, 0) :]
