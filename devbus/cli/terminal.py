"""Text from files and from the bus, made safe to print on a terminal."""

from __future__ import annotations

__all__ = ["printable"]

ELLIPSIS = "…"


def printable(text: str, *, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, every character that is not printable written as an escape.

    Control characters (ESC would start a terminal sequence), format characters (bidi
    overrides reorder a line), line separators, surrogates and unassigned code points all
    show as Python writes them in a string literal: ``\\x1b``, ``\\u202e``, ``\\t``.
    """
    if len(text) > limit:
        text = text[:limit] + ELLIPSIS
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
