"""The human form of an event, one line each, as `devbus listen` and `devbus history` print it."""

from __future__ import annotations

import json
import shutil
from typing import Any

from devbus.cli.terminal import escaped
from devbus.text import cut

__all__ = ["CUT_NOTE", "EventLines"]

CUT_NOTE = "long data was cut to fit the terminal; --json prints whole events"
MIN_DATA = 20  # however narrow the terminal, this much of the data shows
FALLBACK_WIDTH = 120  # the line's width when stdout is not a terminal (a pipe, a file)


class EventLines:
    """Format events as ``time  type  source  id  data``, the data cut to the terminal's width.

    What the data holds that a terminal would act on (CSI, bidi overrides) shows as escapes.

    ``cut_any`` says whether any line lost data, so the command can say so once.
    """

    def __init__(self, *, width: int | None = None) -> None:
        self.width = width or shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
        self.cut_any = False

    def __call__(self, event: dict[str, Any]) -> str:
        clock = str(event.get("timestamp", ""))[11:23]
        head = f"{clock}  {event.get('type', ''):<28} {event.get('source', ''):<8} {event.get('id', ''):<14} "
        # JSON escapes C0 controls but not C1 (CSI U+009B) or bidi overrides: data is anyone's.
        data = escaped(json.dumps(event.get("data", {}), separators=(",", ":"), ensure_ascii=False))
        room = max(self.width - len(head), MIN_DATA)
        if len(data) > room:
            self.cut_any = True
            data = cut(data, room)
        return head + data
