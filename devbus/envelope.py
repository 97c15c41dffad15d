"""Event envelopes: the msgspec structs, their encoders and the SSE framing."""

from __future__ import annotations

import hmac
import math
import re
import unicodedata
from typing import Any

import msgspec

from devbus.errors import InvalidEvent, MalformedInput, Unauthorized
from devbus.nesting import MAX_DEPTH, deep_path, json_deep_path, json_nests_deeper, too_deep

__all__ = [
    "INVALID_TYPE",
    "MAX_DEPTH",
    "BatchIn",
    "Draft",
    "Event",
    "HttpEventIn",
    "RecordedIn",
    "WireEventIn",
    "check_event_id",
    "check_name",
    "decode_batch",
    "decode_http_event",
    "decode_recorded_event",
    "decode_stored_event",
    "decode_wire_event",
    "encode_json",
    "encode_msgpack",
    "sse_frame",
]

MAX_TYPE_LENGTH = 200
MAX_SOURCE_LENGTH = 100
MAX_BATCH = 10_000
INVALID_TYPE = "invalid_type"  # the reason of a stored event's refusal for its type

# Whitespace or control characters (C0, DEL, C1) would let a type break SSE
# framing or a terminal line, so they are refused everywhere a name enters.
_BAD_NAME_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# Unicode format characters (bidi overrides such as U+202E, zero-width joiners,
# BOM), private-use, unassigned and surrogate code points: invisible or
# reordering in a terminal or page, so a name could pass for another one.
_BAD_NAME_CATEGORIES = frozenset({"Cf", "Co", "Cn", "Cs", "Zl", "Zp"})

# Senders reuse a handful of types and sources; remembering the valid ones takes
# the regex off the per-event path. Bounded, so invented names cannot grow it.
MAX_CACHED_NAMES = 4096
_valid_names: set[str] = set()


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the bus delivers it."""

    id: str
    type: str
    data: dict[str, Any] = {}
    timestamp: str
    source: str


class Draft(msgspec.Struct, frozen=True):
    """A validated event that the dispatcher has not yet numbered."""

    type: str
    data: dict[str, Any]
    source: str


class HttpEventIn(msgspec.Struct, frozen=True):
    """The body of POST /webhook and /trigger (the old dev-webhook shape)."""

    event_type: str
    data: dict[str, Any] | None = None
    source: str | None = None


class BatchIn(msgspec.Struct, frozen=True):
    """The body of POST /batch."""

    events: list[HttpEventIn]


class RecordedIn(msgspec.Struct, frozen=True):
    """One line of a recording: an envelope as the SSE stream carries it and `devbus record` writes it."""

    type: str
    data: dict[str, Any] | None = None
    source: str | None = None
    id: str | None = None
    timestamp: str | None = None


class WireEventIn(msgspec.Struct, frozen=True, omit_defaults=True):
    """The MessagePack body of a ZeroMQ ingest message (senders encode it, the bus decodes it)."""

    type: str
    data: dict[str, Any] | None = None
    source: str | None = None
    token: str | None = None  # the bus's --token, when it has one


def check_name(value: str, *, field: str, max_length: int = MAX_TYPE_LENGTH) -> str:
    """Return ``value`` if it is a valid event type or source, else raise InvalidEvent."""
    if value in _valid_names and len(value) <= max_length:
        return value
    if not 1 <= len(value) <= max_length:
        raise InvalidEvent(f"`{field}` must be 1-{max_length} characters long (got {len(value)})")
    bad = _BAD_NAME_CHAR.search(value)
    if bad is not None:
        raise InvalidEvent(
            f"`{field}` must not contain whitespace or control characters "
            f"(found {bad.group()!r} at position {bad.start()}); use e.g. 'agent.created'"
        )
    if not value.isascii():
        for position, char in enumerate(value):
            if unicodedata.category(char) in _BAD_NAME_CATEGORIES:
                raise InvalidEvent(
                    f"`{field}` must not contain invisible, bidi or unassigned Unicode characters "
                    f"(found U+{ord(char):04X} at position {position}); use e.g. 'agent.created'"
                )
    if len(_valid_names) < MAX_CACHED_NAMES:
        _valid_names.add(value)
    return value


# The ids every store gives: ``<run>-<seq>`` (memory, SQLite: eight hex digits, a number)
# and ``<ms>-<seq>`` (Redis stream ids). A resume id of that form from another run or
# store is a stale bookmark (a gap, then everything retained); anything else is a mistake.
_EVENT_ID = re.compile(r"[0-9A-Za-z]{1,32}-[0-9]{1,20}\Z")


def check_event_id(value: str, *, field: str, example: str | None) -> str:
    """Return ``value`` if it has the form of a devbus event id, else raise InvalidEvent naming ``field``."""
    if _EVENT_ID.match(value) is None:
        raise InvalidEvent(
            f"{field} must be an event id such as {example or '3f9a1c2e-1'!r} (got {value[:80]!r}); "
            "take one from an event's `id`"
        )
    return value


def _draft(type_: str, data: dict[str, Any] | None, source: str | None, *, default_source: str, at: str) -> Draft:
    check_name(type_, field=at)
    if source is not None:
        check_name(source, field="source", max_length=MAX_SOURCE_LENGTH)
    return Draft(type_, data if data is not None else {}, source or default_source)


def _convert(obj: object, type_: type[msgspec.Struct], what: str) -> Any:
    try:
        return msgspec.convert(obj, type=type_)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"{what}: {exc}") from exc


def _decode_json(body: bytes, *, above_data: int, what: str = "Body") -> object:
    """Decode a JSON body whose events' `data` sit ``above_data`` levels down; refuse one nesting past MAX_DEPTH."""
    depth = above_data + MAX_DEPTH
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports a string that is not UTF-8 as UnicodeDecodeError, not DecodeError.
        raise MalformedInput(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError:
        pass  # nests deeper than the interpreter allows, so far deeper than MAX_DEPTH
    else:
        if not json_nests_deeper(body, depth):
            return value
    path = json_deep_path(body, depth)
    raise too_deep(path[above_data - 1 :], within=path[: above_data - 1])


_HTTP_SHAPE = 'expected {"event_type": str, "data": object, "source"?: str}'


def decode_http_event(body: bytes, *, default_source: str) -> Draft:
    """Decode and validate the JSON body of a webhook or trigger POST."""
    try:
        # Parsing straight into the struct validates in the same pass: 0.9 µs with the depth
        # measured on the bytes, where parsing, measuring, then converting takes 1.8 µs.
        incoming: HttpEventIn = _http_event_decoder.decode(body)
        accepted = not json_nests_deeper(body, 1 + MAX_DEPTH)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        accepted = False
    if not accepted:
        # Refused: the general path says why, in the words every other input uses.
        incoming = _convert(_decode_json(body, above_data=1), HttpEventIn, _HTTP_SHAPE)
    return _draft(incoming.event_type, incoming.data, incoming.source, default_source=default_source, at="event_type")


def decode_batch(body: bytes, *, default_source: str) -> list[Draft]:
    """Decode and validate a batch body; any invalid event rejects the whole batch."""
    batch: BatchIn = _convert(
        _decode_json(body, above_data=3), BatchIn, 'expected {"events": [{"event_type", "data"}, ...]}'
    )
    if not 1 <= len(batch.events) <= MAX_BATCH:
        raise InvalidEvent(f"`events` must hold 1-{MAX_BATCH} events (got {len(batch.events)})")
    drafts = []
    for index, item in enumerate(batch.events):
        try:
            drafts.append(
                _draft(item.event_type, item.data, item.source, default_source=default_source, at="event_type")
            )
        except InvalidEvent as exc:
            raise InvalidEvent(f"events[{index}]: {exc}") from exc
    return drafts


def decode_recorded_event(line: bytes) -> tuple[Draft, RecordedIn]:
    """Decode one line of a recording; validate its event as a POSTed one is (source default `replay`)."""
    recorded: RecordedIn = _convert(
        _decode_json(line, above_data=1, what="Line"),
        RecordedIn,
        'expected an envelope {"type", "data", "id"?, "timestamp"?, "source"?} as `devbus record` writes',
    )
    return _draft(recorded.type, recorded.data, recorded.source, default_source="replay", at="type"), recorded


def decode_wire_event(payload: bytes, *, default_source: str = "zmq", token: str | None = None) -> Draft:
    """Decode and validate the MessagePack body of a ZeroMQ ingest message (and its token, if one is set)."""
    try:
        # Decoding straight into the struct validates in the same pass, which
        # matters at a hundred thousand messages a second.
        incoming: WireEventIn = _wire_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f'expected {{"type": str, "data": map, "source"?: str}}: {exc}') from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports a string that is not UTF-8 as UnicodeDecodeError, not DecodeError.
        raise MalformedInput(f"Body is not valid MessagePack: {exc}") from exc
    except RecursionError:
        raise too_deep([]) from None  # deeper than the interpreter allows, so far deeper than MAX_DEPTH
    if token is not None and not hmac.compare_digest((incoming.token or "").encode(), token.encode()):
        raise Unauthorized(
            "missing or wrong `token`: this bus was started with --token, so send it in the message's "
            "`token` field (devbus clients take it from DEVBUS_TOKEN)"
        )
    draft = _draft(incoming.type, incoming.data, incoming.source, default_source=default_source, at="type")
    try:
        # MessagePack can carry what JSON cannot (extension types, maps keyed by
        # null or bool); refuse it here rather than fail while fanning out.
        as_json = _json_encoder.encode(draft.data)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"`data` must hold only JSON values: {exc}") from exc
    except RecursionError:
        raise too_deep([]) from None
    # Measured on the JSON just made: two byte counts for an ordinary event, where the
    # MessagePack bytes would need a walk (any UTF-8 text holds map and array header bytes).
    if json_nests_deeper(as_json, MAX_DEPTH):
        raise too_deep(["data", *(deep_path(draft.data, MAX_DEPTH) or [])])
    # JSON encodes NaN and Infinity as null; HTTP input cannot carry them at all,
    # so refuse them here too. Only data with a null in it is walked.
    if b"null" in as_json and _has_non_finite(draft.data):
        raise InvalidEvent(
            "`data` must hold only JSON values: NaN and Infinity are not numbers JSON can carry"
        ) from ValueError("non-finite number")  # a shape error to the ZeroMQ ingest's counters
    return draft


def decode_stored_event(json: bytes, *, event_id: str, event_type: str) -> Event:
    """Validate an event read back from a store with the rules input is held to; InvalidEvent says what is wrong.

    ``event_id`` and ``event_type`` are what the store keeps beside the JSON (a stream
    entry's id and ``t`` field, a row's seq and ``type`` column): the envelope must carry
    the same, so that what an output frames from them is what the JSON says. Raises
    InvalidEvent with reason ``invalid_type`` for a type that is not a valid name,
    MalformedInput for bytes that are not UTF-8 JSON, InvalidEvent with reason
    ``too_deep`` for data nested past MAX_DEPTH, and InvalidEvent for anything else.
    """
    # Every entry a bus reads from a shared stream comes here: the names are checked
    # against the cache of valid ones first, as check_name does, for one lookup each.
    if event_type not in _valid_names:
        try:
            check_name(event_type, field="type")
        except InvalidEvent as exc:
            exc.reason = INVALID_TYPE
            raise
    try:
        event: Event = _event_decoder.decode(json)
    except msgspec.ValidationError as exc:  # a DecodeError too: caught first
        raise InvalidEvent(
            f'expected an envelope {{"id", "type", "data": object, "timestamp", "source"}}: {exc}'
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise too_deep(["data"]) from None  # deeper than the decoder goes, so far deeper than MAX_DEPTH
    if event.id != event_id:
        raise InvalidEvent(f"`id` is {_shown(event.id)} in the record of {_shown(event_id)}")
    if event.type != event_type:
        raise InvalidEvent(f"`type` is {_shown(event.type)} in a record of type {_shown(event_type)}")
    source = event.source
    if source not in _valid_names or len(source) > MAX_SOURCE_LENGTH:
        check_name(source, field="source", max_length=MAX_SOURCE_LENGTH)
    # Fewer brackets than levels allowed (an ordinary event) cannot nest too deep: counted
    # here, json_nests_deeper's own first test, to spare most entries a call.
    if json.count(b"{") + json.count(b"[") > MAX_DEPTH and json_nests_deeper(json, 1 + MAX_DEPTH):
        raise too_deep(json_deep_path(json, 1 + MAX_DEPTH))
    return event


def _shown(value: str) -> str:
    """``value`` quoted for a message: escaped, and cut to a length that fits a log line."""
    return repr(value[:60]) + ("…" if len(value) > 60 else "")


def _has_non_finite(value: object) -> bool:
    """Whether ``value`` holds a float that is NaN or infinite, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


_json_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_http_event_decoder = msgspec.json.Decoder(HttpEventIn)
_wire_decoder = msgspec.msgpack.Decoder(WireEventIn)
_msgpack_encoder = msgspec.msgpack.Encoder()
encode_json = _json_encoder.encode
encode_msgpack = _msgpack_encoder.encode


def sse_frame(
    data: bytes, *, event_id: str | None = None, name: str | None = None, retry_ms: int | None = None
) -> bytes:
    """Frame one SSE message; ``data`` must be a single line (compact JSON is)."""
    if event_id is not None and name is None and retry_ms is None:
        # Every event to an unnamed stream takes this path: one formatting step.
        return b"id: %b\ndata: %b\n\n" % (event_id.encode(), data)
    head = b""
    if retry_ms is not None:
        head += b"retry: %d\n" % retry_ms
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"
