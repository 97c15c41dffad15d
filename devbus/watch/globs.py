"""Path globs as shells and bundlers write them: ``src/**/*.{ts,tsx}``, comma lists."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

__all__ = ["expand_braces", "glob_regex", "split_patterns"]


def split_patterns(values: Iterable[str]) -> list[str]:
    """Split comma lists, keeping commas inside braces: 'a/*.{ts,tsx},b' → ['a/*.{ts,tsx}', 'b']."""
    patterns = []
    for value in values:
        depth, start = 0, 0
        for index, char in enumerate(value):
            if char == "{":
                depth += 1
            elif char == "}" and depth:
                depth -= 1
            elif char == "," and not depth:
                patterns.append(value[start:index])
                start = index + 1
        patterns.append(value[start:])
    return [p.strip() for p in patterns if p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """Expand the first (and then every) brace group: '*.{ts,tsx}' → ['*.ts', '*.tsx']."""
    depth, open_at = 0, -1
    commas: list[int] = []
    for index, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                open_at, commas = index, []
            depth += 1
        elif char == "," and depth == 1:
            commas.append(index)
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                if not commas:
                    continue  # '{x}' is not a list; keep it literal and look further
                bounds = [open_at, *commas, index]
                head, tail = pattern[:open_at], pattern[index + 1 :]
                options = [pattern[a + 1 : b] for a, b in itertools.pairwise(bounds)]
                return [out for option in options for out in expand_braces(head + option + tail)]
    return [pattern]


def glob_regex(pattern: str) -> str:
    """Translate a path glob to a regex: ``**`` spans directories, ``*`` and ``?`` do not."""
    parts = []
    segments = pattern.strip("/").split("/")
    for number, segment in enumerate(segments):
        last = number == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
            continue
        out, index = "", 0
        while index < len(segment):
            char = segment[index]
            if char == "*":
                out += "[^/]*"
            elif char == "?":
                out += "[^/]"
            elif char == "[" and (end := segment.find("]", index + 2)) != -1:
                body = segment[index + 1 : end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
                index = end
            else:
                out += re.escape(char)
            index += 1
        parts.append(out if last else out + "/")
    return "".join(parts)
