"""How deeply an event's data nests: measured where data enters, cheaply, without recursion.

Every reader of an event walks its data recursively somewhere (msgspec's decoders and
encoders, the catalogue's schema inference, the TypeScript writer, a browser's
``JSON.parse``), and Python's recursion limit is 1000 frames for all of them together, so
data that nests deeper than ``MAX_DEPTH`` is refused at the door. Measuring must not cost
the ingest rate, so it is done on JSON bytes (the body as received, or a ZeroMQ event's data
as the bus encodes it anyway) with C-level operations: two ``bytes.count`` for an ordinary
event; ``translate`` and ``replace`` for one with more brackets than levels allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from devbus.errors import InvalidEvent

__all__ = [
    "MAX_DEPTH",
    "TOO_DEEP",
    "deep_path",
    "format_key",
    "format_path",
    "json_deep_path",
    "json_nests_deeper",
    "too_deep",
]

# Levels of objects and arrays in an event's `data`, `data` itself being level 1. Real app
# data (API responses, ORM objects with relations, GraphQL results, component trees) stays
# well under 20; 64 leaves room for that and keeps every recursive reader of an event far
# below Python's 1000 frames (genson takes 3 frames a level: it fails past 332 levels; the
# catalogue's schemas and the TypeScript writer take 2 to 3 schema levels per level of data).
MAX_DEPTH = 64

PathPart = str | int
TOO_DEEP = "too_deep"  # the reason of a refusal for nesting past MAX_DEPTH

# Every byte but the ones JSON structure is made of, and curly brackets made square.
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_SQUARE = bytes.maketrans(b"{}", b"[]")
# One JSON token that matters for a path: a string (a key when a colon follows), or structure.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?|[\[\]{},]', re.DOTALL)
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
PATH_SHOWN = 8  # parts of a path shown in an error message, the rest elided


def json_nests_deeper(body: bytes, depth: int) -> bool:
    """Whether the valid JSON document ``body`` nests objects and arrays more than ``depth`` deep."""
    if len(body) < 2 * (depth + 1) or body.count(b"{") + body.count(b"[") <= depth:
        # Too short to nest that deep (a level takes two brackets), or fewer brackets than
        # levels: an ordinary event, for a length or two byte counts (1 ns a byte).
        return False
    # Drop escaped backslashes, then escaped quotes (JSON pairs backslashes from the left, as
    # replace does), keep only quotes and brackets, then drop what was inside strings.
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = body.translate(_SQUARE, _NOT_STRUCTURE)
    # Strings without brackets are `""` now; if removing those pairs leaves no quote, each
    # pair was one string (the first quote can only pair with its own string's end, and so
    # on), else split them off: 0.2 ms instead of 1.6 for a batch of 10,000 events.
    without_strings = shape.replace(b'""', b"")
    shape = without_strings if b'"' not in without_strings else b"".join(shape.split(b'"')[::2])
    # What is left is balanced; each pass removes exactly the innermost level (replace does not
    # rescan what it produced), so it is empty after `depth` passes if and only if it fits.
    for _ in range(depth):
        if not shape:
            return False
        shape = shape.replace(b"[]", b"")
    return bool(shape)


def json_deep_path(body: bytes, depth: int) -> list[PathPart]:
    """The keys and indexes down to the first object or array of ``body`` nested past ``depth``.

    For an error message only: it reads token by token (about 0.3 µs each) up to that point,
    and reads ``body`` as far as it is JSON (it may not be, past a point msgspec gave up at).
    """
    stack: list[list[Any]] = []  # [opener, the key or index being read in it]
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token[:1] == b'"':
            if match.group(1) is not None and stack:
                stack[-1][1] = _key(token[: match.start(1) - match.start()])
        elif token in (b"{", b"["):
            if len(stack) == depth:
                return [part for _, part in stack]
            stack.append([token, 0 if token == b"[" else ""])
        elif token == b",":
            if stack and stack[-1][0] == b"[":
                stack[-1][1] += 1
        elif stack:
            stack.pop()
    return []


def _key(literal: bytes) -> str:
    try:
        key = msgspec.json.decode(literal)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return literal[1:-1].decode("utf-8", "replace")
    return key if isinstance(key, str) else str(key)


def deep_path(value: object, depth: int) -> list[PathPart] | None:
    """The keys and indexes down to the first dict or list of ``value`` past ``depth`` levels, or None.

    ``value`` itself (a dict or a list) is level 1. Iterative: any depth is walked without recursion.
    """
    stack: list[tuple[object, int, tuple[Any, ...]]] = [(value, 1, ())] if isinstance(value, dict | list) else []
    while stack:
        item, level, path = stack.pop()
        if level > depth:
            parts: list[PathPart] = []
            while path:
                path, part = path
                parts.append(part)
            return parts[::-1]
        pairs: Iterable[tuple[PathPart, object]]
        if isinstance(item, dict):
            pairs = item.items()
        elif isinstance(item, list):
            pairs = enumerate(item)
        else:
            continue
        for key, child in pairs:
            if isinstance(child, dict | list):
                stack.append((child, level + 1, (path, key)))
    return None


def format_path(path: Sequence[PathPart]) -> str:
    """A path as msgspec writes one (``$.data.items[0]``), elided past PATH_SHOWN parts."""
    text = "$"
    for part in path[:PATH_SHOWN]:
        text += f"[{part}]" if isinstance(part, int) else f".{format_key(part)}"
    return text + ("…" if len(path) > PATH_SHOWN else "")


def format_key(key: str) -> str:
    """``key`` as it is, if it is an identifier; else quoted, ASCII only (no key reaches a terminal raw)."""
    return key if _IDENTIFIER.match(key) else json.dumps(key[:40])


def too_deep(path: Sequence[PathPart], *, within: Sequence[PathPart] = ()) -> InvalidEvent:
    """The refusal of an event whose ``path`` (from its top: `data` first) nests past MAX_DEPTH.

    ``within`` leads to the event in its body (``["events", 3]`` in a batch).
    """
    if not path:
        field = "`data`"  # not measured (deeper than the decoder goes): `data` is what may nest
    elif isinstance(path[0], str):
        field = f"`{format_key(path[0])}`"
    else:
        field = "the body"
    where = f" (at {format_path([*within, *path])})" if path else ""
    event = format_path(within)[1:].lstrip(".") + ": " if within else ""
    return InvalidEvent(
        f"{event}{field} nests deeper than {MAX_DEPTH} levels of objects and arrays, the limit{where}; "
        "flatten it, or send the deep part as a JSON string",
        reason=TOO_DEEP,
    )
