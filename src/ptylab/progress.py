"""Progress of long loops in the log, for work no progress bar shows (evaluation, the offset fit,
refinement; training too when its bar is off, as in sweeps and on clusters, whose logs are files)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)
# Seconds between two lines of one loop.
EVERY_S = 30.0


class Progress:
    """Logs ``done / total`` and the time left, at most every ``EVERY_S`` seconds: a loop shorter
    than that logs nothing, a 200k-position evaluation or a 1000-step refinement a line every half
    minute."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= EVERY_S and 0 < done < self.total:
            self.last = now
            rate = done / (now - self.start)
            log.info("%s: %d / %d (%.0f%%), about %.0f s left", self.what, done, self.total, 100 * done / self.total,
                     (self.total - done) / max(rate, 1e-9))
