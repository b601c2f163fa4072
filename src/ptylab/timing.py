"""Wall-clock seconds per named section, each section's own time only.

An evaluation reports the method's time apart from the references it computes beside it, some of
which run inside the method's own work (the patch scores are a callback of the stitching). Timing
each by hand meant subtracting one from another; here a section nested inside another is counted
to the inner one alone, so each key holds exactly the time spent in its own code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Stopwatch:
    """Exclusive section times: ``with watch("key"): ...`` adds the seconds spent in that block,
    less those of any section opened inside it, to ``key``; a key timed in several blocks sums them.
    ``clock`` is the time source (``time.perf_counter``)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._seconds: dict[str, float] = {}
        self._open: list[str] = []
        self._since = 0.0

    def _charge(self) -> float:
        """Add the time since the last event to the innermost open section; return the time now."""
        now = self._clock()
        if self._open:
            key = self._open[-1]
            self._seconds[key] = self._seconds.get(key, 0.0) + now - self._since
        self._since = now
        return now

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        self._charge()
        self._seconds.setdefault(key, 0.0)
        self._open.append(key)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def seconds(self, *keys: str, digits: int = 3) -> float | None:
        """The seconds timed under ``keys`` together, rounded; None if no section of theirs ran."""
        ran = [self._seconds[key] for key in keys if key in self._seconds]
        return round(sum(ran), digits) if ran else None
