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
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, assert_never

from reconciler.desired import UNCHECKED, Desired, DesiredPlugin, Problem, file_name, label
from reconciler.ledger import Entry, Intent, Ledger
from reconciler.noderules import SNARKOS, NodeRules


class Action(StrEnum):
    """Each change type's `action`: its word in output and its place in ORDER. Code that
    decides by action matches on the change's type (Load, Replace, ...), not on this."""

    LOAD = "load"
    REPLACE = "replace"  # unload, then load: the node cannot reload in place
    UNLOAD = "unload"
    ADOPT = "adopt"  # record a live plugin a file declares; no node call
    FORGET = "forget"  # drop a ledger entry for a plugin neither desired nor live
    NOOP = "no-op"  # InSync and Protected: reported, never executed


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


# -- the changes: one value per action, each carrying exactly what its action needs -----
@dataclass(frozen=True)
class Load:
    """Put a declared plugin on the node: new, or missing from it (restarted, unloaded by
    hand). Its name is the file's, or known only once the node answers.

    `previous`: what was applied before, when the file has changed since (the node lost
    the plugin, a restart or a crash between a replace's unload and its load): if the new
    config fails, the previous one is loaded again, as a failed replace rolls back. A
    working plugin is not lost because its new config is broken and the node restarted
    in between."""

    desired: DesiredPlugin
    reason: str
    previous: Entry | None = None
    action: ClassVar[Action] = Action.LOAD

    @property
    def name(self) -> str | None:
        return self.desired.name

    @property
    def config_file(self) -> str:
        return self.desired.config_file

    @property
    def label(self) -> str:
        return label(self.name)


class _Applied:
    """A declared plugin that was applied before: the file's name if it declares one,
    else the name the node gave (the entry's); the file as it is now."""

    desired: DesiredPlugin
    entry: Entry

    @property
    def name(self) -> str:
        return self.desired.name if self.desired.name is not None else self.entry.name

    @property
    def config_file(self) -> str:
        return self.desired.config_file


@dataclass(frozen=True)
class Replace(_Applied):
    """Unload the applied plugin (`entry`), load the file's new state (`desired`): the node
    cannot reload in place. The entry is what a failed load rolls back to."""

    desired: DesiredPlugin
    entry: Entry
    reason: str
    action: ClassVar[Action] = Action.REPLACE

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Unload:
    """Take a plugin off the node: a managed one (its ledger entry) no file declares any
    more, or an unmanaged one (just its name) under --prune all."""

    target: Entry | str
    reason: str
    action: ClassVar[Action] = Action.UNLOAD

    @property
    def entry(self) -> Entry | None:
        return self.target if isinstance(self.target, Entry) else None

    @property
    def name(self) -> str:
        return self.target.name if isinstance(self.target, Entry) else self.target

    @property
    def config_file(self) -> str | None:
        return self.target.config_file if isinstance(self.target, Entry) else None

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Adopt:
    """Record a live plugin a file declares by name: the ledger only, no node call."""

    name: str
    desired: DesiredPlugin
    reason: str
    action: ClassVar[Action] = Action.ADOPT

    @property
    def config_file(self) -> str:
        return self.desired.config_file

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Forget:
    """Drop what the ledger holds about a plugin neither desired nor live (an entry), or
    settle an interrupted load the plan can account for (an intent): no node call."""

    target: Entry | Intent
    reason: str
    action: ClassVar[Action] = Action.FORGET

    @property
    def entry(self) -> Entry | None:
        return self.target if isinstance(self.target, Entry) else None

    @property
    def intent_seq(self) -> int | None:
        return self.target.seq if isinstance(self.target, Intent) else None

    @property
    def name(self) -> str | None:
        return self.target.name if isinstance(self.target, Entry) else None

    @property
    def config_file(self) -> str | None:
        return self.target.config_file

    @property
    def label(self) -> str:
        return label(self.name)


# What a pass may do, in a closed set: code that branches on it matches every member.
Change = Load | Replace | Unload | Adopt | Forget


@dataclass(frozen=True)
class InSync(_Applied):
    """A declared plugin the node runs as applied: nothing to do."""

    desired: DesiredPlugin
    entry: Entry
    reason: str = "in sync"
    action: ClassVar[Action] = Action.NOOP


@dataclass(frozen=True)
class Protected:
    """A managed plugin whose config file is invalid: left exactly as it is."""

    entry: Entry
    reason: str = "config file is invalid: left as it is"
    action: ClassVar[Action] = Action.NOOP

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def config_file(self) -> str:
        return self.entry.config_file


@dataclass(frozen=True)
class Held:
    """A change policy keeps from running, reported only: why (`reason`), and the state
    it leaves its plugin in (`state`; None: the change's pending state)."""

    change: Load | Replace | Unload
    reason: str
    state: str | None = None

    @property
    def action(self) -> Action:
        return self.change.action

    @property
    def name(self) -> str | None:
        return self.change.name

    @property
    def config_file(self) -> str | None:
        return self.change.config_file

    @property
    def label(self) -> str:
        return self.change.label


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]  # in execution order
    in_sync: tuple[InSync, ...] = ()
    held: tuple[Held, ...] = ()  # what policy keeps from running (reported only)
    protected: tuple[Protected, ...] = ()  # managed plugins whose file is invalid
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
        return any(isinstance(c, Load | Replace | Unload) for c in self.changes)


ORDER = (Action.FORGET, Action.ADOPT, Action.UNLOAD, Action.REPLACE, Action.LOAD)


def plan(desired: Desired, live: list[str] | tuple[str, ...], ledger: Ledger,
         policy: Policy = Policy(), rules: NodeRules = SNARKOS) -> Plan:
    """`rules` is what the kind of node does (reconciler.noderules): the planner reads
    its fields, never the kind's name."""
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
    in_sync: list[InSync] = []
    held: list[Held] = []

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
        if hold is not None and isinstance(change, Load | Replace):
            held.append(Held(change, f"stalled: {hold.reason}", "stalled"))
        elif isinstance(change, Replace) and _rebuilt_in_place(change, rules):
            held.append(Held(change, rebuilt_in_place_reason(change.desired.libpath, rules),
                             "rebuilt-in-place"))
        elif (isinstance(change, Replace) and failed is not None
              and (failed.config_sha256, failed.library_sha256)
              == (plugin.config_sha256, plugin.library_sha256)):
            held.append(Held(change, f"the new config failed to load and the previous one "
                                     f"runs again: {failed.reason}; edit the file or rebuild "
                                     "the library to try again", "failed-replace"))
        elif isinstance(change, InSync):
            in_sync.append(change)
        else:
            changes.append(change)

    protected: list[Protected] = []
    invalid_files = desired.invalid_files
    for entry in ledger.entries.values():
        if entry.name in claimed:
            continue
        if entry.config_file in invalid_files:
            protected.append(Protected(entry))
        elif entry.name in live_set:
            unload = Unload(entry, f"{file_name(entry.config_file)} no longer declares it")
            if policy.prune is Prune.NONE:
                held.append(Held(unload, unload.reason))
            else:
                changes.append(unload)
        else:
            changes.append(Forget(entry, "neither declared nor loaded"))

    warnings = list(desired.warnings)
    for intent in ledger.pending:
        if intent.config_file not in files:
            changes.append(Forget(intent, "an interrupted load of a file since removed; if it "
                                          "loaded, it is listed as unmanaged"))
        elif intent.config_file in by_config:
            # The node holds one plugin per library: the interrupted load is that plugin,
            # or was refused.
            changes.append(Forget(intent, "an interrupted load; the file's plugin is known"))

    managed = set(ledger.entries) | declared
    unmanaged = sorted(n for n in live_set - managed if n not in claimed)
    if policy.prune is Prune.ALL:
        for name in unmanaged:
            unload = Unload(name, "unmanaged (--prune all)")
            if invalid_files:
                held.append(Held(unload, "unmanaged, held: an invalid file may declare it"))
            else:
                changes.append(unload)

    changes.sort(key=lambda c: (ORDER.index(c.action), c.name or "\uffff", c.config_file or ""))
    blocked = _brakes(desired, changes, policy, len(ledger.entries))
    return Plan(tuple(changes), tuple(in_sync), tuple(held), tuple(protected),
                tuple(unmanaged), desired.invalid, tuple(warnings), blocked)


def _for_desired(plugin: DesiredPlugin, entry: Entry | None,
                 live: set[str]) -> Load | Replace | Adopt | InSync:
    if entry is None:
        if plugin.name is not None and plugin.name in live:
            return Adopt(plugin.name, plugin, "loaded on the node, declared here, not yet "
                                              "managed")
        return Load(plugin, "new")
    if entry.name not in live:
        changed = (entry.config_sha256 != plugin.config_sha256
                   or (entry.library_sha256 != plugin.library_sha256
                       and plugin.library_sha256 != UNCHECKED))
        return Load(plugin, "missing from the node (restarted, or unloaded by hand)",
                    entry if changed else None)
    if entry.config_sha256 != plugin.config_sha256:
        return Replace(plugin, entry, "config changed")
    if entry.library_sha256 != plugin.library_sha256 and plugin.library_sha256 != UNCHECKED:
        return Replace(plugin, entry, "library changed")
    if entry.config_file != plugin.config_file:
        return Replace(plugin, entry, f"config file moved from {file_name(entry.config_file)}")
    return InSync(plugin, entry)


def _rebuilt_in_place(change: Replace, rules: NodeRules) -> bool:
    """A changed library at the path it was loaded from, where the node would keep running
    the copy already in memory: a replace would report new code that never ran."""
    return (rules.keeps_old_code_at_same_path
            and change.entry.libpath == change.desired.libpath
            and change.entry.library_sha256 != change.desired.library_sha256
            and change.desired.library_sha256 != UNCHECKED)


def rebuilt_in_place_reason(libpath: str, rules: NodeRules) -> str:
    """What validate and plan tell an operator who rebuilt a library in place."""
    return (f"the library {libpath} was rebuilt in place: the {rules.product} keeps the copy "
            "it already loaded from that path (dlopen returns the library in memory; "
            "anza-xyz/agave#3620), so a reload would go on running the old code. Install each "
            "version under its own path (e.g. libplugin-1.2.3.so) and point libpath at it; a "
            "restart of the node also loads the new build")


def _brakes(desired: Desired, changes: list[Change], policy: Policy,
            managed: int) -> str | None:
    unloads = sum(1 for c in changes if isinstance(c, Unload))
    if unloads and desired.file_count == 0 and not policy.allow_empty:
        return (f"the config directory {desired.directory} holds no config files while "
                f"{managed} plugin(s) are managed; refusing to unload them all (a failed mount, "
                "a half-done checkout or a wrong --config-dir?). Pass --allow-empty if an "
                "empty directory is what you mean")
    if policy.max_unloads is not None and unloads > policy.max_unloads:
        return (f"this pass would unload {unloads} plugins, more than --max-unloads "
                f"{policy.max_unloads}; nothing was changed")
    return None


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
@dataclass(frozen=True)
class PluginStatus:
    name: str | None
    config_file: str | None
    state: str
    detail: str


def _pending(change: Change, blocked: bool) -> str | None:
    """The state a change not made yet leaves its plugin in; None for a forget, which is
    about the ledger, not a plugin."""
    match change:
        case Load():
            return "pending-load"
        case Replace():
            return "pending-replace"
        case Unload():
            return "blocked" if blocked else "pending-unload"
        case Adopt():
            return "pending-adopt"
        case Forget():
            return None
        case _:
            assert_never(change)


def statuses(p: Plan) -> tuple[PluginStatus, ...]:
    blocked = p.blocked is not None
    rows = [PluginStatus(c.name, c.config_file, "in-sync", "") for c in p.in_sync]
    rows += [PluginStatus(c.name, c.config_file, state, c.reason)
             for c in p.changes if (state := _pending(c, blocked)) is not None]
    rows += [PluginStatus(h.name, h.config_file, state, h.reason)
             for h in p.held if (state := h.state or _pending(h.change, blocked)) is not None]
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
