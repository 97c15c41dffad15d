"""The devbus exception tree.

DevbusError
├── InvalidEvent            an event or request of the wrong shape (HTTP 422)
│   ├── MalformedInput      bytes that are not JSON / MessagePack at all (HTTP 400)
│   └── KeyReused           an Idempotency-Key sent again with another request (HTTP 422)
├── BodyTooLarge            a request body over --max-body (HTTP 413)
├── RequestTimeout          a request body slower than --body-timeout (HTTP 408)
├── UnsupportedMediaType    a POST that is not application/json (HTTP 415)
├── Unauthorized            a missing or wrong token (HTTP 401)
├── Forbidden               a disallowed Host or Origin (HTTP 403)
├── TooManySubscribers      over --max-subscribers (HTTP 503)
├── StoreUnavailable        the store (--store) cannot take or read events now: nothing was stored (HTTP 503)
├── OutcomeUnknown          the store did not say whether it stored the events (HTTP 504)
├── ConfigError             settings that devbus refuses to start with
└── BusUnavailable          a client that cannot reach the bus
"""

from __future__ import annotations


class DevbusError(Exception):
    """Base class of every error devbus raises on purpose."""

    status = 500
    reason = "error"
    retry_after: int | None = None  # seconds, sent as Retry-After when set

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidEvent(DevbusError):
    """An event or request body of the wrong shape."""

    status = 422
    reason = "invalid_event"


class MalformedInput(InvalidEvent):
    """Input that cannot be decoded at all."""

    status = 400
    reason = "malformed_json"


class KeyReused(InvalidEvent):
    """An Idempotency-Key that was first used with another request (method, path or body)."""

    status = 422
    reason = "idempotency_key_reused"


class BodyTooLarge(DevbusError):
    """A request body larger than the configured limit."""

    status = 413
    reason = "body_too_large"


class RequestTimeout(DevbusError):
    """A request body that did not arrive in time."""

    status = 408
    reason = "body_timeout"


class UnsupportedMediaType(DevbusError):
    """A POST whose content type is not exactly application/json."""

    status = 415
    reason = "unsupported_media_type"


class Unauthorized(DevbusError):
    """A request without the right token."""

    status = 401
    reason = "unauthorized"


class Forbidden(DevbusError):
    """A request from a disallowed Host or Origin."""

    status = 403
    reason = "forbidden"


class TooManySubscribers(DevbusError):
    """A subscription past the subscriber cap."""

    status = 503
    reason = "too_many_subscribers"


class StoreUnavailable(DevbusError):
    """The store cannot take or read events right now (it is named in the message)."""

    status = 503
    reason = "store_unavailable"
    # Seconds a client should wait before trying again (HTTP Retry-After): the Redis store
    # tries to reconnect at least this often (its backoff is capped at 2 s).
    retry_after = 2


class OutcomeUnknown(DevbusError):
    """The store was asked to store events and did not answer whether it did (it went away meanwhile).

    Unlike :class:`StoreUnavailable`, the events may be stored: sending them again is
    safe only with the same Idempotency-Key (or, over ZeroMQ, the same producer and seq).
    """

    status = 504
    reason = "outcome_unknown"


class ConfigError(DevbusError):
    """Settings that the bus refuses to start with."""


class BusUnavailable(DevbusError):
    """The bus could not be reached at the address tried."""
