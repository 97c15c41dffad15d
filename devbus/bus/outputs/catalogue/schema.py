"""What the catalogue learns of a payload: its shape (a cache key), and a JSON Schema merged by genson.

Also the token bucket that keeps that learning within its share of the loop's time.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from genson import SchemaBuilder

from devbus.nesting import MAX_DEPTH

__all__ = ["Rate", "TooDeep", "merged_schema", "shape"]

# A list's shape is taken from its first and last items only: the shape is a cache key,
# and every item is still read by genson when the payload is merged.
LIST_ENDS = 8

_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode


class TooDeep(Exception):
    """A payload nesting past MAX_DEPTH: its schema would nest past what is read back safely."""


def shape(value: Any, depth: int = 1) -> Any:
    """A hashable summary of ``value``'s structure (keys and value types, not values).

    Raises TooDeep, rather than recursing on, past MAX_DEPTH levels (``value`` is level 1).
    """
    kind = type(value)
    if kind is dict or kind is list:
        if depth > MAX_DEPTH:
            raise TooDeep(f"its data nests deeper than {MAX_DEPTH} levels")
        if kind is dict:
            return (dict, tuple([(key, shape(item, depth + 1)) for key, item in value.items()]))
        ends = value if len(value) <= 2 * LIST_ENDS else value[:LIST_ENDS] + value[-LIST_ENDS:]
        return (list, frozenset([shape(item, depth + 1) for item in ends]))
    return kind


def _with_required(node: Any, *, empty: bool = True) -> Any:
    """``node`` with an empty ``required`` on every object schema that has none (or without any).

    genson reads a schema without ``required`` as "not known yet", so a field once optional
    would turn required again when a stored schema is read back: it is given one to read,
    and stored (and shown) without the empty ones.
    """
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind):
            if empty:
                node.setdefault("required", [])
            elif node.get("required") == []:
                del node["required"]
        for value in node.values():
            _with_required(value, empty=empty)
    elif isinstance(node, list):
        for item in node:
            _with_required(item, empty=empty)
    return node


def merged_schema(schema: bytes, data: dict[str, Any]) -> bytes:
    """``schema`` (encoded) widened to describe ``data`` too, encoded."""
    builder = SchemaBuilder(schema_uri=None)
    builder.add_schema(_with_required(_decode(schema)))
    builder.add_object(data)
    return _encode(_with_required(builder.to_schema(), empty=False))


class Rate:
    """A token bucket: ``per_second`` tokens a second, holding at most ``burst``."""

    __slots__ = ("_burst", "_per_second", "_refilled", "_tokens")

    def __init__(self, per_second: float, *, burst: float) -> None:
        self._per_second = per_second
        self._burst = burst
        self._tokens = burst
        self._refilled = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._per_second)
        self._refilled = now

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; return how many were taken."""
        self._refill()
        taken = min(wanted, max(0, int(self._tokens)))
        self._tokens -= taken
        return taken

    def take_one(self) -> bool:
        """Take one token if there is one: :meth:`take` for one event, without reading the clock while tokens last.

        Refilling only once the bucket is empty still allows ``per_second`` over time,
        and never more than ``burst`` at once.
        """
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return self.take(1) == 1

    def available(self) -> bool:
        """Whether any token is left."""
        self._refill()
        return self._tokens > 0

    def spend(self, amount: float) -> None:
        """Take ``amount`` after the fact (the bucket may go below zero and must refill first)."""
        self._tokens -= amount
