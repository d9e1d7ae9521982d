"""The planner: a pure function from (desired, live, ledger, policy) to a Plan.

Every rule about what to load, replace, unload, adopt or forget lives here and nowhere
else; apply() only executes a Plan and the daemon only decides when to make one. Same
inputs, same plan: that is what makes saved plans, dry runs and property tests possible.

The rules that keep plugins safe:
- only what the ledger says we applied is ever unloaded (unless --prune all);
- a plugin whose config file is invalid stays exactly as it is, whatever the ledger says;
- a pass that would unload everything because the directory looks empty, or more than
  --max-unloads, is blocked as a whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import StrEnum

from reconciler.desired import UNCHECKED, Desired, DesiredPlugin, Problem
from reconciler.ledger import Entry, Ledger


class Action(StrEnum):
    LOAD = "load"
    REPLACE = "replace"  # unload, then load: the node cannot reload in place
    UNLOAD = "unload"
    ADOPT = "adopt"  # record a live plugin a file declares; no node call
    FORGET = "forget"  # drop a ledger entry for a plugin neither desired nor live
    NOOP = "no-op"


class Prune(StrEnum):
    MANAGED = "managed"
    ALL = "all"
    NONE = "none"


@dataclass(frozen=True)
class Hold:
    """A load that keeps failing for the same config and library: not retried until one
    of them (or the node) changes. The daemon keeps these; plan() only honours them."""

    config_file: str
    config_sha256: str
    library_sha256: str
    reason: str


@dataclass(frozen=True)
class Policy:
    prune: Prune = Prune.MANAGED
    allow_empty: bool = False
    max_unloads: int | None = None
    hold: tuple[Hold, ...] = ()


@dataclass(frozen=True)
class Change:
    action: Action
    name: str | None  # None: known after apply
    config_file: str | None
    reason: str
    desired: DesiredPlugin | None = field(default=None, compare=False, repr=False)
    entry: Entry | None = field(default=None, compare=False, repr=False)
    intent_seq: int | None = field(default=None, compare=False, repr=False)
    held_as: str | None = None  # for a held change: the state it leaves its plugin in

    @property
    def label(self) -> str:
        return self.name if self.name is not None else "(known after apply)"


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]  # in execution order
    in_sync: tuple[Change, ...] = ()
    held: tuple[Change, ...] = ()  # what policy keeps from running (reported only)
    protected: tuple[Change, ...] = ()  # managed plugins whose file is invalid
    unmanaged: tuple[str, ...] = ()
    invalid: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    blocked: str | None = None

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    @property
    def changes_node(self) -> bool:
        """Whether applying would change the node (adopt and forget touch the ledger only):
        what `plan --detailed-exitcode` reports."""
        return any(c.action in (Action.LOAD, Action.REPLACE, Action.UNLOAD)
                   for c in self.changes)


ORDER = (Action.FORGET, Action.ADOPT, Action.UNLOAD, Action.REPLACE, Action.LOAD)


def plan(desired: Desired, live: list[str] | tuple[str, ...], ledger: Ledger,
         policy: Policy = Policy()) -> Plan:
    live_set = set(live)
    declared = {p.name for p in desired.plugins if p.name is not None}
    files = {p.config_file for p in desired.plugins} | desired.invalid_files
    by_config = ledger.by_config()
    # The node holds one plugin per library: an entry on the same library whose file is
    # gone is this file's plugin, renamed or moved.
    by_library = {e.libpath: e for e in ledger.entries.values() if e.config_file not in files}
    holds = {(h.config_file, h.config_sha256, h.library_sha256): h for h in policy.hold}
    claimed: set[str] = set()
    changes: list[Change] = []
    in_sync: list[Change] = []
    held: list[Change] = []

    for plugin in desired.plugins:
        entry = ledger.entries.get(plugin.name) if plugin.name is not None else None
        if plugin.name is None:
            entry = by_config.get(plugin.config_file) or by_library.get(plugin.libpath)
            if entry is not None and (entry.name in declared or entry.name in claimed):
                entry = None  # that name now belongs to another file's declaration
        if entry is not None:
            claimed.add(entry.name)
        change = _for_desired(plugin, entry, live_set)
        hold = holds.get((plugin.config_file, plugin.config_sha256, plugin.library_sha256))
        failed = entry.failed_replace if entry is not None else None
        if hold is not None and change.action in (Action.LOAD, Action.REPLACE):
            held.append(replace(change, reason=f"stalled: {hold.reason}", held_as="stalled"))
        elif (change.action is Action.REPLACE and failed is not None
              and (failed.config_sha256, failed.library_sha256)
              == (plugin.config_sha256, plugin.library_sha256)):
            held.append(replace(change, held_as="failed-replace",
                                reason=f"the new config failed to load and the previous one "
                                       f"runs again: {failed.reason}; edit the file or "
                                       "rebuild the library to try again"))
        else:
            (in_sync if change.action is Action.NOOP else changes).append(change)

    protected: list[Change] = []
    invalid_files = desired.invalid_files
    for entry in ledger.entries.values():
        if entry.name in claimed:
            continue
        if entry.config_file in invalid_files:
            protected.append(Change(Action.NOOP, entry.name, entry.config_file,
                                    "config file is invalid: left as it is", entry=entry))
        elif entry.name in live_set:
            unload = Change(Action.UNLOAD, entry.name, entry.config_file,
                            f"{_short(entry.config_file)} no longer declares it", entry=entry)
            (held if policy.prune is Prune.NONE else changes).append(unload)
        else:
            changes.append(Change(Action.FORGET, entry.name, entry.config_file,
                                  "neither declared nor loaded", entry=entry))

    warnings = list(desired.warnings)
    for intent in ledger.pending:
        if intent.config_file not in files:
            changes.append(Change(Action.FORGET, None, intent.config_file,
                                  "an interrupted load of a file since removed; if it loaded, "
                                  "it is listed as unmanaged", intent_seq=intent.seq))
        elif intent.config_file in by_config:
            # The node holds one plugin per library: the interrupted load is that plugin,
            # or was refused.
            changes.append(Change(Action.FORGET, None, intent.config_file,
                                  "an interrupted load; the file's plugin is known",
                                  intent_seq=intent.seq))

    managed = set(ledger.entries) | declared
    unmanaged = sorted(n for n in live_set - managed if n not in claimed)
    if policy.prune is Prune.ALL:
        for name in unmanaged:
            unload = Change(Action.UNLOAD, name, None, "unmanaged (--prune all)")
            if invalid_files:
                held.append(Change(Action.UNLOAD, name, None,
                                   "unmanaged, held: an invalid file may declare it"))
            else:
                changes.append(unload)

    changes.sort(key=lambda c: (ORDER.index(c.action), c.name or "\uffff", c.config_file or ""))
    blocked = _brakes(desired, changes, policy, len(ledger.entries))
    return Plan(tuple(changes), tuple(in_sync), tuple(held), tuple(protected),
                tuple(unmanaged), desired.invalid, tuple(warnings), blocked)


def _for_desired(plugin: DesiredPlugin, entry: Entry | None, live: set[str]) -> Change:
    name = plugin.name if plugin.name is not None else (entry.name if entry else None)

    def change(action: Action, reason: str) -> Change:
        shown = name if action is not Action.LOAD or plugin.name is not None else None
        return Change(action, shown, plugin.config_file, reason, desired=plugin, entry=entry)

    if entry is None:
        if plugin.name is not None and plugin.name in live:
            return change(Action.ADOPT, "loaded on the node, declared here, not yet managed")
        return change(Action.LOAD, "new")
    if entry.name not in live:
        return change(Action.LOAD, "missing from the node (restarted, or unloaded by hand)")
    if entry.config_sha256 != plugin.config_sha256:
        return change(Action.REPLACE, "config changed")
    if entry.library_sha256 != plugin.library_sha256 and plugin.library_sha256 != UNCHECKED:
        return change(Action.REPLACE, "library changed")
    if entry.config_file != plugin.config_file:
        return change(Action.REPLACE, f"config file moved from {_short(entry.config_file)}")
    return change(Action.NOOP, "in sync")


def _brakes(desired: Desired, changes: list[Change], policy: Policy,
            managed: int) -> str | None:
    unloads = sum(1 for c in changes if c.action is Action.UNLOAD)
    if unloads and desired.file_count == 0 and not policy.allow_empty:
        return (f"the config directory {desired.directory} holds no config files while "
                f"{managed} plugin(s) are managed; refusing to unload them all (a failed mount, "
                "a half-done checkout or a wrong --config-dir?). Pass --allow-empty if an "
                "empty directory is what you mean")
    if policy.max_unloads is not None and unloads > policy.max_unloads:
        return (f"this pass would unload {unloads} plugins, more than --max-unloads "
                f"{policy.max_unloads}; nothing was changed")
    return None


def _short(path: str | None) -> str:
    return path.rsplit("/", 1)[-1] if path else "?"


def fingerprint(desired: Desired, live: list[str] | tuple[str, ...], ledger: Ledger) -> str:
    """What a saved plan was computed from: a plan is stale when this changes."""
    state = {
        "live": sorted(live),
        "desired": sorted((p.config_file, p.config_sha256, p.library_sha256)
                          for p in desired.plugins),
        "invalid": sorted(desired.invalid_files),
        "ledger": sorted((e.name, e.config_file, e.config_sha256, e.library_sha256)
                         for e in ledger.entries.values()),
    }
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


# -- status: where each plugin stands, derived from the plan ---------------------------
STATE_OF = {
    Action.LOAD: "pending-load",
    Action.REPLACE: "pending-replace",
    Action.UNLOAD: "pending-unload",
    Action.ADOPT: "pending-adopt",
}


@dataclass(frozen=True)
class PluginStatus:
    name: str | None
    config_file: str | None
    state: str
    detail: str


def _state(change: Change, p: Plan, held: bool) -> str:
    if held and change.held_as is not None:
        return change.held_as
    if p.blocked is not None and change.action is Action.UNLOAD:
        return "blocked"
    return STATE_OF[change.action]


def statuses(p: Plan) -> tuple[PluginStatus, ...]:
    rows = [PluginStatus(c.name, c.config_file, "in-sync", "") for c in p.in_sync]
    rows += [PluginStatus(c.name, c.config_file, _state(c, p, held), c.reason)
             for held, group in ((False, p.changes), (True, p.held))
             for c in group if c.action in STATE_OF]
    protected = {c.config_file: c.name for c in p.protected}
    rows += [PluginStatus(protected.get(problem.file), problem.file, "invalid", problem.brief)
             for problem in p.invalid]
    rows += [PluginStatus(name, None, "unmanaged", "live on the node, not declared, not managed")
             for name in p.unmanaged if not any(c.name == name for c in p.changes)]
    return tuple(sorted(rows, key=lambda r: (r.name or "\uffff", r.config_file or "")))


def count_states(rows: tuple[PluginStatus, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


def in_sync(rows: tuple[PluginStatus, ...]) -> bool:
    return all(r.state in ("in-sync", "unmanaged") for r in rows)

