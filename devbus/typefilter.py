"""Event type filters: comma-separated glob patterns such as ``agent.*,rental.created``."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from devbus.errors import InvalidEvent

__all__ = ["TypeFilter", "parse_patterns"]


def parse_patterns(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Split comma lists, drop blanks and duplicates, keep a stable order."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    seen: dict[str, None] = {}
    for value in values:
        for pattern in value.split(","):
            pattern = pattern.strip()
            if pattern:
                if len(pattern) > 200 or any(ord(c) < 32 for c in pattern):
                    raise InvalidEvent(f"`types` pattern {pattern[:40]!r} is not a valid glob")
                seen[pattern] = None
    return tuple(sorted(seen))


class TypeFilter:
    """Match event types against glob patterns; no pattern (or ``*``) matches all."""

    __slots__ = ("_match", "patterns")

    def __init__(self, patterns: tuple[str, ...] = ()) -> None:
        self.patterns = patterns
        if not patterns or "*" in patterns:
            self._match = None
        else:
            regex = "|".join(fnmatch.translate(p) for p in patterns)
            self._match = re.compile(regex).match

    def __call__(self, event_type: str) -> bool:
        return self._match is None or self._match(event_type) is not None
