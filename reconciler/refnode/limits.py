"""Per-client rate limiting, shaped like snarkOS's tower_governor layer.

snarkOS configures governor with one request every 1/rps seconds and a burst equal to
rps; governor implements that with GCRA (the generic cell rate algorithm). We use the same
algorithm so the reconciler's pacing is tested against the limiter it will meet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from reconciler.gcra import next_slot


class RateLimiter:
    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._tolerance = self._interval * (max(1, round(rps)) - 1) if rps > 0 else 0.0
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    def admit(self, client: str) -> float:
        """0.0 when the request may pass, else the seconds until it would."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            wait, tat = next_slot(self._tat.get(client, now), now, self._interval,
                                  self._tolerance)
            if wait > 0:
                return wait
            self._tat[client] = tat
            return 0.0
