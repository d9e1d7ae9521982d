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
        if self.client.rules.native_reload:
            return self._reload(change, fresh)
        unloaded = self._unload(change, change.entry.name)
        if not unloaded.ok:
            return Outcome(change, False, f"not replaced: {unloaded.message}", change.name)
        loaded = self._load(change, fresh)
        if not loaded.ok:
            return self._roll_back(change, fresh, loaded.message, unloaded.unloaded)
        return Outcome(change, True, f"replaced ({change.reason})", loaded.name,
                       unloaded=unloaded.unloaded, loaded=loaded.loaded)

    def _reload(self, change: Replace, fresh: DesiredPlugin) -> Outcome:
        """A replace in one call (Agave's reloadPlugin), with unload + load's guarantees.

        The node unloads first, so a reload that fails leaves nothing under that name: the
        previous config is loaded again from its kept copy (`_roll_back`), as after a
        failed load. The answer is null, so the new name is learnt: the file's `name`, or
        the last in the node's list (a reload appends the new plugin, and the node's one
        worker runs our calls in turn) — a library upgrade that renames the plugin
        (Yellowstone's `yellowstone-grpc-geyser-<version>`) is one replace, recorded
        under the new name.

        Journal: the old plugin's unload and the new config's load are announced before
        the call; the load without a name, since the name may be the old one, and an
        entry made from a named load intent would claim that the new config runs when a
        crash may have left the old one running. After a crash the entry still names the
        old config, so the next pass sees the node as it is: the old plugin (a replace
        again), the new one under the same name (a redundant reload of the same files),
        the new one under a new name (its load is refused as already loaded and adopted),
        or nothing (a load). Nothing is ever loaded twice."""
        old = change.entry
        unload_seq = self.store.record_intent("unload", old.name, old.config_file)
        load_seq = self.store.record_intent("load", None, fresh.config_file,
                                            fresh.config_sha256, fresh.library_sha256,
                                            fresh.libpath)
        try:
            self.client.reload(old.name, self.node_path(fresh.config_file))
        except NotLoaded:
            self.store.settle(load_seq)
            if old.name in self.client.list():
                return Outcome(change, False, f"not replaced: the node says {old.name!r} is "
                               "not loaded, yet lists it", change.name)
            # Gone before we asked (unloaded by hand): the new config is a load, and a
            # load that fails rolls back, as after an unload that found nothing.
            self.store.record_remove(old.name, unload_seq)
            loaded = self._load(change, fresh)
            if not loaded.ok:
                return self._roll_back(change, fresh, loaded.message, None)
            return Outcome(change, True, f"replaced ({change.reason}; the old plugin was "
                           "already gone)", loaded.name, loaded=loaded.loaded)
        except (Rejected, AlreadyLoaded) as exc:
            self.store.settle(load_seq)
            if old.name in self.client.list():  # refused before it unloaded anything
                return Outcome(change, False, f"not replaced: {exc}; the plugin keeps "
                               "running", change.name)
            self.store.record_remove(old.name, unload_seq)
            return self._roll_back(change, fresh, f"reload failed: {exc}", old.name)
        name = fresh.name if fresh.name is not None else self._reloaded_name()
        if name is None:
            self.store.settle(load_seq)
            return Outcome(change, False, "reloaded, but the node lists no plugin: the next "
                           "pass looks again", change.name, unloaded=old.name)
        if name != old.name:
            self.store.record_remove(old.name, unload_seq)
        self.store.record_put(_entry(fresh, name), load_seq)
        self._keep_copy(fresh)
        renamed = f"; now named {name}" if name != old.name else ""
        return Outcome(change, True, f"replaced ({change.reason}){renamed}", name,
                       unloaded=old.name, loaded=name)

    def _reloaded_name(self) -> str | None:
        live = self.client.list()
        return live[-1] if live else None

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
        self._record_loaded(change, plugin, name, seq)
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
            self._record_loaded(change, plugin, exc.name, seq)
            return Outcome(change, True, f"adopted {exc.name} ({how}): now managed", exc.name,
                           loaded=exc.name)
        self._abandon(plugin, seq)
        other = f"plugin {exc.name!r}" if exc.name else "another plugin"
        return Outcome(change, False, f"load refused: {other} already holds this name or "
                       f"library ({exc})", plugin.name)

    def _record_loaded(self, change: Load | Replace, plugin: DesiredPlugin, name: str,
                       seq: int) -> None:
        """Records a file's plugin as loaded under `name`. An unnamed file loaded again
        (its plugin was missing from the node) may come back under another name — a
        library upgraded in place of a renaming plugin, or a reload a crash interrupted —
        and then its entry under the old name, which the plan saw missing, is this same
        plugin's: dropped now, not left for the next pass to forget."""
        self.store.record_put(_entry(plugin, name), seq)
        self._keep_copy(plugin)
        if isinstance(change, Load) and plugin.name is None:
            stale = self.ledger.by_config().get(plugin.config_file)
            if (stale is not None and stale.name != name
                    and stale.name in self.store.current().entries):
                self.store.record_remove(stale.name)

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
