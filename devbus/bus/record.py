"""Records: the events of the log, as the store hands them to every other layer of the bus.

A record is numbered by the store and encoded once; every output reads the same
bytes, and none writes to a record (what one output learns, such as how many SSE
subscribers a record reached, is passed on explicitly to whoever needs it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from devbus.envelope import Event

__all__ = ["Deliver", "ReachReport", "Record"]

_event_decoder = msgspec.json.Decoder(Event)


class Record:
    """One event in the log: its id, type and JSON (encoded once, shared by every output).

    ``event`` is the decoded :class:`~devbus.envelope.Event`; a store that has it
    at hand passes it, else it is decoded from ``json`` the first time an output
    asks.
    """

    __slots__ = ("_event", "id", "json", "type")

    def __init__(self, event_id: str, event_type: str, json: bytes, event: Event | None = None) -> None:
        self.id = event_id
        self.type = event_type
        self.json = json
        self._event = event

    @property
    def event(self) -> Event:
        """The envelope, decoded from ``json`` on first use if the store did not pass it."""
        event = self._event
        if event is None:
            event = self._event = _event_decoder.decode(self.json)
        return event

    def drop_event(self) -> None:
        """Forget the decoded envelope (it is decoded again if asked), so a retained record costs its JSON only."""
        self._event = None

    def __repr__(self) -> str:
        return f"Record({self.id!r}, {self.type!r})"


# What the store calls with each committed batch, in log order, and the dispatcher
# hands on to every output: on the loop, never awaited, never blocking.
Deliver = Callable[[Sequence[Record]], None]

# What the SSE fan-out tells those who asked, for each batch it queued: the records
# and, for each, how many subscribers it was queued for (the console prints it,
# POST /webhook answers it).
ReachReport = Callable[[Sequence[Record], Sequence[int]], None]
