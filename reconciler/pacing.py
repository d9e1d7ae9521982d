"""Our own request pace towards a node that limits requests per client (snarkOS's
tower_governor), kept with the same GCRA the node uses (reconciler.gcra)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from reconciler.gcra import next_slot


class Pacer:
    """Keeps our own request rate under the node's limit (GCRA, burst = rate), so that a
    large apply meets no 429 in the first place.

    The node's limiter is per client IP and per prefix, shared with every other REST call
    from this host (a monitoring script eats the same budget), so the pace adapts: a 429
    halves our rate and drops the burst, and each answered request wins back a fiftieth
    of the configured rate. A long, contended run slows down instead of failing.
    """

    RECOVERY_STEPS = 50
    FLOOR_RPS = 0.2

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.max_rps = rps
        self.rps = rps
        self._clock, self._sleep = clock, sleep
        self._tat = 0.0
        self._lock = threading.Lock()
        self._set(rps, burst=True)

    def _set(self, rps: float, burst: bool) -> None:
        # 2 % slower than the node lets us go, and one request of its burst kept in
        # reserve: clocks, queues and a busy host are not exact, and a request that
        # arrives late brings the next one closer than we sent it.
        self.rps = rps
        self._interval = 1.02 / rps if rps > 0 else 0.0
        self._tolerance = self._interval * max(0, int(rps) - 2) if burst else 0.0

    @property
    def interval(self) -> float:
        return self._interval

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            delay, self._tat = next_slot(self._tat, self._clock(), self._interval,
                                         self._tolerance)
        if delay > 0:
            self._sleep(delay)

    def hold(self, seconds: float) -> None:
        """The node said wait: nobody from this client sends before then."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds + self._tolerance)

    def slow_down(self) -> None:
        """A 429 (or what may be one): half the rate, no burst."""
        with self._lock:
            base = self.rps if self.rps > 0 else 10.0  # unpaced until the node objected
            self._set(max(self.FLOOR_RPS, base / 2), burst=False)

    def answered(self) -> None:
        """A request got through: creep back towards the configured rate."""
        if self.rps == self.max_rps:
            return
        with self._lock:
            if self.max_rps <= 0:
                step = 10.0 / self.RECOVERY_STEPS
                rps = self.rps + step
                if rps >= 10.0:
                    self._set(0.0, burst=True)  # back to unpaced, as configured
                    return
            else:
                rps = min(self.max_rps, self.rps + self.max_rps / self.RECOVERY_STEPS)
            self._set(rps, burst=rps == self.max_rps)
