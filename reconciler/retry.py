"""Retrying without hammering: exponential backoff with full jitter for the pass as a
whole, and per-config attempt counts that mark a load as stalled when it keeps failing
for the same reason (controller-runtime's per-item backoff, with a global cap)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.outcome import Outcome
from reconciler.plan import Hold, Load, Replace

STALL_AFTER = 5


class Backoff:
    """Full jitter (AWS's name for it): a uniform draw in [0, min(cap, base * 2^n)]."""

    def __init__(self, base: float = 0.5, cap: float = 60.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rand = base, cap, rand
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** self.failures)
        self.failures += 1
        return max(0.05, ceiling * self._rand())

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class Attempts:
    reason: str
    count: int


class Stalls:
    """Counts failed loads per (config file, config hash, library hash): a changed file or
    rebuilt library is a new key, so it is retried at once."""

    def __init__(self, stall_after: int = STALL_AFTER) -> None:
        self.stall_after = stall_after
        self._attempts: dict[tuple[str, str, str], Attempts] = {}

    def record(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            if not isinstance(outcome.change, Load | Replace):
                continue
            desired = outcome.change.desired
            key = (desired.config_file, desired.config_sha256, desired.library_sha256)
            if outcome.ok:
                self._attempts.pop(key, None)
                continue
            previous = self._attempts.get(key)
            count = previous.count + 1 if previous and previous.reason == outcome.message else 1
            self._attempts[key] = Attempts(outcome.message, count)

    def holds(self) -> tuple[Hold, ...]:
        return tuple(Hold(*key, f"{a.reason} ({a.count} tries; edit the file, rebuild the "
                                "library or restart the node to retry)")
                     for key, a in self._attempts.items() if a.count >= self.stall_after)

    def attempts(self, config_file: str) -> Attempts | None:
        for key, attempts in self._attempts.items():
            if key[0] == config_file:
                return attempts
        return None

    def clear(self) -> None:
        """The node changed (restarted): everything may work now."""
        self._attempts.clear()
