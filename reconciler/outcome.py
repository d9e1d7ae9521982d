"""What a pass did: one Outcome per change executed, and the PassResult around them.
Values only, so that views (render) and the daemon's bookkeeping read them without
importing the node client."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.desired import Desired
from reconciler.plan import Change, Plan


@dataclass(frozen=True)
class Outcome:
    change: Change
    ok: bool
    message: str
    name: str | None = None  # the name the plugin has now (for a load: the node's answer)
    unloaded: str | None = None  # what this change really took off the node
    loaded: str | None = None  # and what it really put on, whether or not it succeeded


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    outcomes: tuple[Outcome, ...] = ()
    live: tuple[str, ...] = ()
    desired: Desired | None = None
    stopped: bool = False  # a stop request ended the pass between two calls

    @property
    def live_after(self) -> frozenset[str]:
        """The node's plugins once the pass is done, from what each call really did."""
        live = set(self.live)
        for outcome in self.outcomes:
            live.discard(outcome.unloaded)
            if outcome.loaded is not None:
                live.add(outcome.loaded)
        return frozenset(live)

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def changed(self) -> bool:
        return any(o.ok for o in self.outcomes)

    @property
    def converged(self) -> bool:
        waiting = any(h.state in ("failed-replace", "stalled") for h in self.plan.held)
        return (not self.failures and not self.plan.invalid and self.plan.blocked is None
                and not waiting)
