"""When to run the next pass (consul-template's watch/quiescence, kept apart from the
pass itself). Event sources call in from any thread and say only *that* something may
have changed; the loop asks wait() for the next pass and gets the reasons. A source that
saw something the loop must judge (the probe's plugin list) posts it as a report: wait()
returns early and the loop, the only thread that keeps the reconciler's state, takes the
reports and decides what they mean.

- file events: a quiet period of `debounce` after the last one, but never later than
  `max_wait` after the first (an editor that keeps writing cannot starve the node);
- requests (start, probe, SIGHUP, a node back up): at once;
- a retry after a failure, at the time the backoff chose;
- a full resync every `resync_interval`, with +-10 % jitter so a fleet does not pulse.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Wake:
    reasons: frozenset[str]
    first_event_at: float | None  # monotonic time of the first file event in this batch

    @property
    def primary(self) -> str:
        for reason in ("start", "sighup", "probe", "file", "retry", "resync"):
            if reason in self.reasons:
                return reason
        return next(iter(self.reasons), "unknown")


class Trigger(Generic[R]):
    def __init__(self, debounce: float = 0.25, max_wait: float = 2.0,
                 resync_interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.debounce, self.max_wait, self.resync_interval = debounce, max_wait, resync_interval
        self._clock, self._rand = clock, rand
        self._cond = threading.Condition()
        self._requests: set[str] = set()
        self._first: float | None = None
        self._last: float | None = None
        self._retry_at: float | None = None
        self._interrupted = False
        self._reports: list[R] = []
        self._resync_at = self._clock() + self._jittered()

    def _jittered(self) -> float:
        return self.resync_interval * (0.9 + 0.2 * self._rand())

    # -- event sources (any thread) ------------------------------------------------
    def file_event(self) -> None:
        with self._cond:
            now = self._clock()
            if self._first is None:
                self._first = now
            self._last = now
            self._cond.notify()

    def request(self, reason: str) -> None:
        with self._cond:
            self._requests.add(reason)
            self._cond.notify()

    def report(self, report: R) -> None:
        """Hands the loop something to judge; wait() returns at once so that it can."""
        with self._cond:
            self._reports.append(report)
            self._cond.notify()

    def retry_in(self, seconds: float) -> None:
        with self._cond:
            self._retry_at = self._clock() + seconds
            self._cond.notify()

    def interrupt(self) -> None:
        """Makes wait() return None now (the daemon is stopping)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify()

    def cancel_retry(self) -> None:
        with self._cond:
            self._retry_at = None

    @property
    def files_pending(self) -> bool:
        return self._first is not None

    @property
    def retry_at(self) -> float | None:
        return self._retry_at

    # -- the loop ------------------------------------------------------------------
    def take_reports(self) -> list[R]:
        """The reports posted since the last call, oldest first."""
        with self._cond:
            reports, self._reports = self._reports, []
            return reports

    def due_at(self) -> float:
        """The monotonic time of the next pass, as things stand."""
        if self._requests:
            return float("-inf")  # at once
        due = [self._resync_at]
        if self._first is not None and self._last is not None:
            due.append(min(self._last + self.debounce, self._first + self.max_wait))
        if self._retry_at is not None:
            due.append(self._retry_at)
        return min(due)

    def wait(self, max_block: float = 1.0) -> Wake | None:
        """Blocks until a pass is due (its reasons), or returns None: max_block passed, the
        daemon is stopping, or reports wait to be taken. Reports come first, so that what
        the loop makes of them (a request) joins the pass that is due anyway."""
        with self._cond:
            deadline = self._clock() + max_block
            while True:
                now = self._clock()
                due = self.due_at()
                if self._interrupted or self._reports:
                    return None
                if due <= now:
                    return self._take(now)
                if now >= deadline:
                    return None
                self._cond.wait(min(due, deadline) - now)

    def _take(self, now: float) -> Wake:
        reasons = set(self._requests)
        first = self._first
        if self._first is not None and self._last is not None and now >= min(
                self._last + self.debounce, self._first + self.max_wait):
            reasons.add("file")
            self._first = self._last = None
        if self._retry_at is not None and now >= self._retry_at:
            reasons.add("retry")
            self._retry_at = None
        if now >= self._resync_at:
            reasons.add("resync")
        # Every pass reads everything, so whatever it was woken for, the resync clock and
        # pending file events it covers start again from here.
        self._resync_at = now + self._jittered()
        if "file" not in reasons and self._first is not None:
            first = None  # those events keep their own quiet period
        self._requests.clear()
        return Wake(frozenset(reasons), first if "file" in reasons else None)
