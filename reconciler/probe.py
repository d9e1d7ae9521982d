"""The probe: a thread that looks at the node between passes and says what it saw.

Every --probe-interval it lists the node's plugins and reports the list, with the time it
started looking; every few ticks it asks for a directory scan. It decides nothing: the
daemon's loop is the only thread that knows what the node should hold (what the last pass
left, which plugins are managed, which loads are stalled), so the loop compares, and drops
a list that started before the last pass ended (it may show the node half-way through
that pass). A probe that judged for itself raced the loop's bookkeeping: it once called
the daemon's own planned unload "missing from the node" and cleared the stall counters
while the loop read them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.errors import NodeError, ReconcilerError
from reconciler.nodeclient import NodeClient

log = logging.getLogger("slipstream-reconciler")


@dataclass(frozen=True)
class Listed:
    """The node answered with these plugin names; the list was asked for at started_at
    (monotonic)."""
    started_at: float
    live: frozenset[str]


@dataclass(frozen=True)
class Unanswered:
    """Listing the node failed with error; asked for at started_at (monotonic)."""
    started_at: float
    error: NodeError


@dataclass(frozen=True)
class ScanDue:
    """Time to compare the directory with its fingerprint (what inotify may miss)."""


Report = Listed | Unanswered | ScanDue


class Probe:
    """Lists the node every `interval` seconds, except while `paused()` (a pass is running,
    or the node cannot do this at all and the pass asks it again, slowly), and reports a
    ScanDue every `scan_every` ticks."""

    def __init__(self, client: NodeClient, interval: float, scan_every: int,
                 paused: Callable[[], bool], report: Callable[[Report], None],
                 stopping: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.interval, self.scan_every = client, interval, scan_every
        self.paused, self.report, self.stopping, self.clock = paused, report, stopping, clock

    def run(self) -> None:
        ticks = 0
        while not self.stopping.wait(self.interval):
            if self.paused():
                continue
            ticks += 1
            if ticks % self.scan_every == 0:
                self.report(ScanDue())
            sighting = self.look()
            if sighting is not None:
                self.report(sighting)

    def look(self) -> Listed | Unanswered | None:
        started = self.clock()
        try:
            return Listed(started, frozenset(self.client.list()))
        except NodeError as exc:
            return Unanswered(started, exc)
        except ReconcilerError as exc:
            log.debug("probe: %s", exc)
            return None
