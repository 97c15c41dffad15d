"""Refusals of one listener, counted by reason and logged once per reason a minute.

A refusal is always counted (``devbus_rejected_total{reason}``) and never silent,
but one misconfigured peer that reconnects at once is refused thousands of times
a second: logging each buried everything else (7,802 identical lines in 3 s from
one ZeroMQ peer). So the first refusal of each reason is logged at WARNING, and
then at most one line per reason every LOG_EVERY seconds, saying how many were
only counted since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from devbus.bus.metrics import Metrics

__all__ = ["LOG_EVERY", "Refusals"]

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # seconds between two log lines of one reason


class Refusals:
    """Refusals of one listener (messages or connections): each counted by reason, logged once per reason a minute.

    Reasons are a fixed set of metrics labels, so what is kept per reason is bounded.
    """

    def __init__(self, metrics: Metrics, *, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._what = what
        self._clock = clock
        self._logged: dict[str, float] = {}  # reason -> when its last line was logged
        self._unlogged: dict[str, int] = {}  # reason -> refusals since that line

    def __call__(self, reason: str, text: str) -> None:
        """Count one refusal for ``reason`` (a metrics label); log it unless one of its kind was, this minute."""
        self._metrics.reject(reason)
        now = self._clock()
        last = self._logged.get(reason)
        if last is not None and now - last < LOG_EVERY:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            log.debug("refused %s (%s): %s", self._what, reason, text)
            return
        self._logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        log.warning(
            "refused %s (%s): %s;%s more like it are counted in devbus_rejected_total and logged once a minute",
            self._what,
            reason,
            text,
            f" {more} more since the last line;" if more else "",
        )
