"""One reconcile pass, and the executor of a Plan.

`Reconciler.run_pass()` is *the* pass: read the whole desired state, the whole live
state and the ledger, plan, execute. The CLI's `apply` and the daemon both call it; the
daemon only decides when. `execute()` runs a Plan's changes one call at a time, in the
plan's order (unloads, replaces, loads), journals each intent before its call and each
outcome after, and keeps going past a failed action: one bad plugin never holds the
others back. A failure of the node as a whole (unreachable, authentication, no plugin
manager) ends the pass, leaving the intent of the call in flight in the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import assert_never

from reconciler import nodepath
from reconciler.configdir import DirectoryReader, Trust
from reconciler.desired import Desired, DesiredPlugin, Problem
from reconciler.errors import (
    AlreadyLoaded,
    LedgerError,
    NodeError,
    NotLoaded,
    Rejected,
    RuntimeLoadUnsupported,
    StalePlanError,
)
from reconciler.ledger import Entry, FailedReplace, Intent, Ledger
from reconciler.ledgerstore import LedgerStore
from reconciler.nodeclient import NodeClient, connect
from reconciler.outcome import Outcome, PassResult
from reconciler.plan import (
    Adopt,
    Change,
    Forget,
    Load,
    Plan,
    Policy,
    Replace,
    Unload,
    fingerprint,
    plan,
)
from reconciler.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """The three inputs of a plan, read together."""

    desired: Desired
    live: list[str]
    ledger: Ledger


class Reconciler:
    """The I/O edges (files, node, ledger) around the pure planner.

    A context manager: leaving it closes the node client's session and stops the
    ledger's background thread, so that a fleet `apply` over N nodes does not keep N of
    each. The daemon keeps one for its lifetime."""

    def __init__(self, settings: Settings, policy: Policy = Policy(),
                 reader: DirectoryReader | None = None, client: NodeClient | None = None,
                 live_override: list[str] | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.reader = reader or DirectoryReader(Trust(settings.allow_writable),
                                                cache_path=settings.state / "cache.json",
                                                check_libraries=settings.check_libraries,
                                                node_path=settings.node_path,
                                                rules=settings.rules)
        self.store = LedgerStore(settings.state, sync_intents=not settings.node_on_this_host)
        self.live_override = live_override
        self._client = client
        self._own_client = client is None  # one handed in is its owner's to close

    def __enter__(self) -> Reconciler:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Idempotent, and never raises: it runs as a `with` ends, maybe on the way out
        of another error. The client stays readable (its kind, its words) once closed."""
        try:
            self.store.close()
        except LedgerError as exc:  # a rollback copy written after the last compaction
            log.warning("%s", exc)
        finally:
            if self._own_client and self._client is not None:
                self._client.close()

    @property
    def client(self) -> NodeClient:
        if self._client is None:
            self._client = connect(self.settings)
        return self._client

    def snapshot(self) -> Snapshot:
        ledger = self.store.load()
        desired = self.reader.read(self.settings.config_dir)
        live = list(self.live_override) if self.live_override is not None else self.client.list()
        return Snapshot(desired, live, ledger)

    def plan(self) -> tuple[Plan, str]:
        """A dry run: the plan and the fingerprint of what it was made from."""
        snap = self.snapshot()
        return (plan(snap.desired, snap.live, snap.ledger, self.policy, self.settings.rules),
                fingerprint(snap.desired, snap.live, snap.ledger))

    def cannot_apply(self, the_plan: Plan) -> str | None:
        """Why this node cannot carry out a plan that changes it (a read-only node with
        static plugins), asked without changing anything; None when it can."""
        if self.live_override is not None or not the_plan.changes_node:
            return None
        try:
            self.client.require_runtime_loading()
        except RuntimeLoadUnsupported as exc:
            return str(exc)
        return None

    def run_pass(self, expect_fingerprint: str | None = None,
                 on_wait: Callable[[], None] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> PassResult:
        with self.store.lock(on_wait):
            snap = self.snapshot()
            the_plan = plan(snap.desired, snap.live, snap.ledger, self.policy,
                            self.settings.rules)
            mark = fingerprint(snap.desired, snap.live, snap.ledger)
            if expect_fingerprint is not None and expect_fingerprint != mark:
                raise StalePlanError("stale plan: the node's plugins, the config files or the "
                                     "ledger changed since the plan was saved; make a new plan")
            if the_plan.blocked is not None:
                return PassResult(the_plan, (), tuple(snap.live), snap.desired)
            try:
                outcomes = execute(the_plan, self.client, self.store, snap.ledger,
                                   self.reader, self.settings.node_path, on_outcome,
                                   should_stop)
            finally:
                if self.store.dirty:
                    self.store.compact()
            stopped = len(outcomes) < len(the_plan.changes)
            return PassResult(the_plan, outcomes, tuple(snap.live), snap.desired, stopped)


def execute(the_plan: Plan, client: NodeClient, store: LedgerStore, ledger: Ledger,
            reader: DirectoryReader, node_path: Callable[[str], str],
            on_outcome: Callable[[Outcome], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[Outcome, ...]:
    run = _Run(client, store, ledger, reader, node_path)
    outcomes = []
    for change in the_plan.changes:
        if should_stop is not None and should_stop():
            break  # between two calls: nothing is left half-done
        outcome = run.do(change)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return tuple(outcomes)


class _Run:
    def __init__(self, client: NodeClient, store: LedgerStore, ledger: Ledger,
                 reader: DirectoryReader, node_path: Callable[[str], str]) -> None:
        self.client, self.store, self.ledger = client, store, ledger
        self.reader, self.node_path = reader, node_path
        self.interrupted = {i.config_file for i in ledger.pending if i.action == "load"}

    def do(self, change: Change) -> Outcome:
        match change:
            case Adopt():
                self._keep_copy(change.desired)
                self.store.record_put(_entry(change.desired, change.name))
                return Outcome(change, True, "adopted: now managed", change.name)
            case Forget():
                if isinstance(change.target, Intent):
                    self.store.settle(change.target.seq)
                else:
                    self.store.record_remove(change.target.name)
                return Outcome(change, True, "forgotten", change.name)
            case Unload():
                return self._unload(change, change.name)
            case Replace():
                return self._replace(change)
            case Load():
                return self._load(change, change.desired)
            case _:
                assert_never(change)

    def _unload(self, change: Unload | Replace, name: str) -> Outcome:
        config = change.entry.config_file if change.entry else None
        seq = self.store.record_intent("unload", name, config)
        try:
            self.client.unload(name)
        except NotLoaded:
            if name in self.client.list():
                return Outcome(change, False, f"the node says {name!r} is not loaded, yet lists "
                               "it", name)
            self.store.record_remove(name, seq)
            return Outcome(change, True, "unloaded (it was already gone)", unloaded=name)
        except (Rejected, AlreadyLoaded) as exc:
            return Outcome(change, False, f"unload failed: {exc}", name)
        self.store.record_remove(name, seq)
        return Outcome(change, True, "unloaded", unloaded=name)

    def _replace(self, change: Replace) -> Outcome:
        fresh = self.reader.reread(change.config_file)
        if isinstance(fresh, Problem) or fresh != change.desired:
            why = fresh.message if isinstance(fresh, Problem) else "it changed"
            return Outcome(change, False, f"not replaced: {why} since the plan was made; "
                           "the plugin keeps running and the next pass looks again", change.name)
        unloaded = self._unload(change, change.entry.name)
        if not unloaded.ok:
            return Outcome(change, False, f"not replaced: {unloaded.message}", change.name)
        loaded = self._load(change, fresh)
        if not loaded.ok:
            return self._roll_back(change, fresh, loaded.message, unloaded.unloaded)
        return Outcome(change, True, f"replaced ({change.reason})", loaded.name,
                       unloaded=unloaded.unloaded, loaded=loaded.loaded)

    def _roll_back(self, change: Replace, fresh: DesiredPlugin, reason: str,
                   unloaded: str | None) -> Outcome:
        """The new config failed after the old plugin was unloaded: load the previously
        applied config again, from the copy kept when it was applied, and remember that
        this config failed so that it is not retried until the file or library changes."""
        previous = change.entry
        copy = self.store.copy_path(previous.config_sha256)
        # Held until the files change only when the node blames the plugin, for the files
        # we asked it to load: a file moved, deleted or rewritten between our read and the
        # node's ("Cannot open the plugin config file: … NotFound") is not the plugin's
        # fault, and the same bytes coming back must be tried again. A node having a bad
        # moment is retried too (the daemon stalls a failure that keeps repeating).
        blamed = (self.client.blames_the_plugin(reason)
                  and self.reader.reread(change.config_file) == fresh)
        failed = FailedReplace(fresh.config_sha256, fresh.library_sha256, reason) \
            if blamed else None
        if not copy.exists():
            return Outcome(change, False, f"replace failed ({reason}), and there is no copy "
                           "of the previous config to roll back to; the plugin is not loaded",
                           change.name, unloaded=unloaded)
        seq = self.store.record_intent("load", previous.name, previous.config_file,
                                       previous.config_sha256, previous.library_sha256,
                                       previous.libpath)
        try:
            name = self.client.load(self.node_path(str(copy)))
        except (Rejected, AlreadyLoaded, NotLoaded) as exc:
            self.store.record_remove(previous.name, seq)
            return Outcome(change, False, f"replace failed ({reason}), and rolling back to the "
                           f"previous config failed too ({exc}); the plugin is not loaded",
                           change.name, unloaded=unloaded)
        self.store.record_put(replace(previous, name=name, applied_at=time.time(),
                                      failed_replace=failed), seq)
        return Outcome(change, False, f"replace failed: {reason}; rolled back: the previous "
                       "config runs again", name, unloaded=unloaded, loaded=name)

    def _keep_copy(self, plugin: DesiredPlugin) -> None:
        """What a failed replace will need: this config, its libpath made absolute as the
        node joined it (onto the folder where the node sees the config, nothing
        normalized), so that the copy, read by the node from the state directory, names
        the same library at the path the node sees."""
        config = self.reader.parsed(plugin.config_sha256, plugin.config_file)
        if config is None or not isinstance(config.get("libpath"), str):
            return
        config["libpath"] = nodepath.join(self.node_path(plugin.config_file), config["libpath"])
        try:
            self.store.save_copy(plugin.config_sha256, config)
        except OSError as exc:
            log.warning("cannot keep a copy of %s for rollbacks: %s", plugin.config_file, exc)

    def _load(self, change: Load | Replace, plugin: DesiredPlugin) -> Outcome:
        seq = self.store.record_intent("load", plugin.name, plugin.config_file,
                                       plugin.config_sha256, plugin.library_sha256,
                                       plugin.libpath)
        try:
            name = self.client.load(self.node_path(plugin.config_file))
        except AlreadyLoaded as exc:
            return self._already_loaded(change, plugin, seq, exc)
        except (Rejected, NotLoaded) as exc:
            self._abandon(plugin, seq)
            return Outcome(change, False, f"load failed: {exc}", plugin.name)
        except NodeError:
            raise  # the node as a whole: the intent stays, the next pass resolves it
        self.store.record_put(_entry(plugin, name), seq)
        self._keep_copy(plugin)
        return Outcome(change, True, f"loaded as {name}", name, loaded=name)

    def _already_loaded(self, change: Load | Replace, plugin: DesiredPlugin, seq: int,
                        exc: AlreadyLoaded) -> Outcome:
        """422: maybe already so. Re-list and confirm before calling it managed."""
        live = set(self.client.list())
        if plugin.name is not None and plugin.name in live and exc.name == plugin.name:
            self.store.record_put(_entry(plugin, plugin.name), seq)
            self._keep_copy(plugin)
            return Outcome(change, True, "already loaded: now managed", plugin.name,
                           loaded=plugin.name)
        managed_elsewhere = (self.store.current().entries.get(exc.name)
                             if exc.name is not None else None)
        if (plugin.name is None and exc.name in live and (
                managed_elsewhere is None or managed_elsewhere.config_file == plugin.config_file)):
            # The node holds one plugin per library, and this file's library is loaded as
            # exc.name: our own interrupted load, or one loaded at start-up or by hand. The
            # same rule as adopting a live plugin under a declared name.
            how = ("an interrupted load" if plugin.config_file in self.interrupted
                   else "its library was already loaded")
            self.store.record_put(_entry(plugin, exc.name), seq)
            self._keep_copy(plugin)
            return Outcome(change, True, f"adopted {exc.name} ({how}): now managed", exc.name,
                           loaded=exc.name)
        self._abandon(plugin, seq)
        other = f"plugin {exc.name!r}" if exc.name else "another plugin"
        return Outcome(change, False, f"load refused: {other} already holds this name or "
                       f"library ({exc})", plugin.name)

    def _abandon(self, plugin: DesiredPlugin, seq: int) -> None:
        if plugin.name is None:
            self.store.settle(seq)
            return
        previous = self.ledger.entries.get(plugin.name)
        if previous is not None and previous.config_file == plugin.config_file:
            self.store.record_put(previous, seq)
        else:
            self.store.record_remove(plugin.name, seq)


def _entry(plugin: DesiredPlugin, name: str) -> Entry:
    return Entry(name, plugin.config_file, plugin.config_sha256, plugin.library_sha256,
                 plugin.libpath, time.time())
