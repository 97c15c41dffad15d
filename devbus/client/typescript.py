"""Write the bus's event catalogue (GET /types) as TypeScript or as JSON Schemas.

The output is stable: types, properties and unions are sorted, so the same catalogue gives
the same bytes and the file can be committed and diffed. Only the JSON Schema the catalogue
infers (genson's subset: type, properties, required, items, anyOf) needs translating.

The output is safe by construction, whatever the catalogue holds: an event type or a field
name appears only as a string literal (``_literal``) or as an identifier made of ASCII
letters and digits, never as raw text, in a comment or anywhere else.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["summary", "to_json_schema", "to_typescript"]

_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_PRIMITIVES = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}
INDENT = "  "
# Schema nodes nested deeper than this are typed `unknown`, well within Python's recursion
# limit (three frames a node). The bus infers none deeper than MAX_DEPTH levels of data, at
# most three nodes each (a union, a list of types, an object); a catalogue read from
# elsewhere may hold anything.
MAX_SCHEMA_DEPTH = 200
# Written as escapes in every string literal: `/` so that `*/` cannot end a comment, and `<`,
# `>` and `&` so that `</script>` or `<!--` mean nothing in a page. Everything past ASCII is
# a \u escape too (json.dumps' default), so no character can end a line (U+2028), reorder
# the text (U+202E) or hide (U+3164) in the generated file.
_ESCAPED = {"/": "\\/", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_UNSAFE = re.compile("[/<>&]")
_UNSAFE_IN_JSON = re.compile("[<>&]")  # a JSON document has no comments: `/` stays readable (URLs)

HEADER = """\
// Event types seen by devbus, written by `devbus types --ts`. Do not edit: run it again.
//
//   import { createDevbus } from "./devbus";
//   import type { DevbusEventMap } from "./devbus-events";
//   const bus = createDevbus<DevbusEventMap>();
//   bus.subscribe("agent.created", (event) => event.data.name);
"""


def to_json_schema(catalogue: dict[str, Any]) -> str:
    """One JSON document: each type's inferred JSON Schema of ``data``, keyed by type, sorted."""
    schemas = {entry["type"]: _normalized(entry["schema"]) for entry in catalogue["types"]}
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "devbus event data, by event type",
        "type": "object",
        "properties": schemas,
    }
    return _escape(json.dumps(document, indent=2, sort_keys=True), _UNSAFE_IN_JSON) + "\n"


def _escape(text: str, unsafe: re.Pattern[str] = _UNSAFE) -> str:
    """ASCII JSON ``text`` with the characters that could end a comment or a script escaped."""
    return unsafe.sub(lambda match: _ESCAPED[match.group()], text)


def _literal(text: str) -> str:
    """``text`` as a string literal that stays one anywhere in a TypeScript file (comments included)."""
    return _escape(json.dumps(text))


def _normalized(node: Any) -> Any:
    """``node`` with its lists in a fixed order (genson keeps the order types arrived in)."""
    if isinstance(node, dict):
        out = {key: _normalized(value) for key, value in node.items()}
        for key in ("type", "required"):
            if isinstance(out.get(key), list):
                out[key] = sorted(out[key])
        if isinstance(out.get("anyOf"), list):
            out["anyOf"] = sorted(out["anyOf"], key=lambda option: json.dumps(option, sort_keys=True))
        return out
    if isinstance(node, list):
        return [_normalized(item) for item in node]
    return node


def _interface_names(types: list[str]) -> dict[str, str]:
    """A distinct PascalCase name per event type: `agent.created` → `AgentCreatedData`."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for event_type in sorted(types):
        words = re.findall(r"[A-Za-z0-9]+", event_type)
        base = "".join(word[:1].upper() + word[1:] for word in words) or "Event"
        if base[0].isdigit():
            base = "T" + base
        name, suffix = f"{base}Data", 2
        while name in taken:
            name, suffix = f"{base}{suffix}Data", suffix + 1
        taken.add(name)
        names[event_type] = name
    return names


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else _literal(name)


def _union(members: list[str]) -> str:
    unique = sorted(set(members))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique) if unique else "unknown"


def _type_of(schema: dict[str, Any], depth: int, nesting: int = 0) -> str:
    """The TypeScript type for one JSON Schema node (``depth`` objects and ``nesting`` nodes down)."""
    if nesting > MAX_SCHEMA_DEPTH or not isinstance(schema, dict):
        return "unknown"
    if "anyOf" in schema:
        return _union([_type_of(option, depth, nesting + 1) for option in schema["anyOf"]])
    kinds = schema.get("type")
    if kinds is None:
        return "unknown"
    if isinstance(kinds, list):
        return _union([_type_of({**schema, "type": kind}, depth, nesting + 1) for kind in kinds])
    if kinds == "object":
        return _object(schema, depth, nesting)
    if kinds == "array":
        items = schema.get("items")
        if not isinstance(items, dict) or not items:
            return "unknown[]"
        item = _type_of(items, depth, nesting + 1)
        return f"({item})[]" if " " in item and not item.startswith("{") else f"{item}[]"
    return _PRIMITIVES.get(kinds, "unknown") if isinstance(kinds, str) else "unknown"


def _object(schema: dict[str, Any], depth: int, nesting: int) -> str:
    properties: dict[str, Any] = schema.get("properties") or {}
    if not properties:
        # No field was ever seen: `{}` lets no field be read, so a typo still fails to compile.
        return "{}"
    required = set(schema.get("required", []))
    pad = INDENT * (depth + 1)
    lines = [
        f"{pad}{_key(name)}{'' if name in required else '?'}: {_type_of(properties[name], depth + 1, nesting + 1)};"
        for name in sorted(properties)
    ]
    return "{\n" + "\n".join(lines) + "\n" + INDENT * depth + "}"


def to_typescript(catalogue: dict[str, Any]) -> str:
    """A module with one data interface per type, `DevbusEventMap` and the union `DevbusEvent`."""
    entries = sorted(catalogue["types"], key=lambda entry: str(entry["type"]))
    names = _interface_names([entry["type"] for entry in entries])
    out = [HEADER]
    for entry in entries:
        event_type = entry["type"]
        note = "" if entry.get("schema_complete", True) else " The schema stopped learning at a bound of the bus."
        out.append(f"/** Data of {_literal(event_type)}.{note} */")
        body = _type_of(entry["schema"], 0)
        if body.startswith("{"):
            out.append(f"export interface {names[event_type]} {body}\n")
        else:
            out.append(f"export type {names[event_type]} = {body};\n")
    out.append("/** Event type → the type of its `data`. */")
    out.append("export interface DevbusEventMap {")
    out.extend(f"{INDENT}{_literal(entry['type'])}: {names[entry['type']]};" for entry in entries)
    out.append("}\n")
    out.append("export type DevbusEventType = keyof DevbusEventMap;\n")
    out.append("/** One event of type `K` as the bus delivers it. */")
    out.append("export interface DevbusEventOf<K extends DevbusEventType> {")
    out.append(f"{INDENT}id: string;")
    out.append(f"{INDENT}type: K;")
    out.append(f"{INDENT}data: DevbusEventMap[K];")
    out.append(f"{INDENT}timestamp: string;")
    out.append(f"{INDENT}source: string;")
    out.append("}\n")
    out.append("/** Every event the bus has seen, discriminated by `type`. */")
    if entries:
        members = "".join(f"\n{INDENT}| DevbusEventOf<{_literal(entry['type'])}>" for entry in entries)
        out.append(f"export type DevbusEvent ={members};")
    else:
        out.append("export type DevbusEvent = never;")
    return "\n".join(out) + "\n"


def summary(schema: dict[str, Any]) -> str:
    """The TypeScript type of a schema on one line, for a terminal."""
    return re.sub(r"\s*\n\s*", " ", _type_of(schema, 0)).replace("; }", " }")
