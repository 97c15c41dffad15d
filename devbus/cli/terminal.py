"""Text from files and from the bus, made safe to print on a terminal."""

from __future__ import annotations

from devbus.text import ELLIPSIS

__all__ = ["escaped", "printable"]


def escaped(text: str) -> str:
    """``text`` with every character that is not printable written as an escape.

    Control characters (ESC, or CSI U+009B, would start a terminal sequence), format
    characters (bidi overrides reorder a line), line separators, surrogates and unassigned
    code points all show as Python writes them in a string literal: ``\\x1b``, ``\\u202e``, ``\\t``.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def printable(text: str, *, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, then :func:`escaped`."""
    if len(text) > limit:
        text = text[:limit] + ELLIPSIS
    return escaped(text)
