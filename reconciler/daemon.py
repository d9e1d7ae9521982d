"""`slipstream-reconciler run`: the daemon decides *when* to run the pass, never *what*.

Threads, each with one job:
- the loop runs passes (Reconciler.run_pass, the same function as `apply`) when the
  Trigger says so, and records what happened (daemon.json, metrics, sd_notify);
- the probe asks the node for its plugin list every --probe-interval and scans the config
  directory; a difference from what the last pass left starts a pass at once;
- watchdog's observer turns file activity into file events;
- the main thread handles signals and keeps systemd informed: WATCHDOG=1 while the loop
  is healthy, EXTEND_TIMEOUT_USEC= while the first pass runs (READY=1 comes after it).

Nothing the node or the files do makes the daemon exit: failures become backoff, stalled
loads, a blocked state or an invalid file, each visible in status, logs and metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.apply import Reconciler, node_client
from reconciler.atomicfile import atomic_write
from reconciler.desired import file_name
from reconciler.errors import (
    ApiAbsent,
    ConfigDirError,
    NodeError,
    ReconcilerError,
    RuntimeLoadUnsupported,
    SettingsError,
)
from reconciler.metrics import Metrics, MetricsServer
from reconciler.notify import Notifier
from reconciler.outcome import Outcome, PassResult
from reconciler.plan import Policy, count_states, plan, statuses
from reconciler.retry import Backoff, Stalls
from reconciler.settings import Settings
from reconciler.trigger import Trigger, Wake
from reconciler.watch import DirectoryWatch, scan

log = logging.getLogger("slipstream-reconciler")

FORMAT_VERSION = 1
STOP_GRACE = 4.5  # SIGTERM: the call in flight may finish; we are gone within 5 s
START_EXTENSION = 15.0  # each EXTEND_TIMEOUT_USEC= during the first pass, sent every second
SCAN_EVERY = 5  # with inotify, the fallback scan runs every 5th probe


@dataclass(frozen=True)
class DaemonOptions:
    debounce: float = 0.25
    max_wait: float = 2.0
    probe_interval: float = 2.0
    resync_interval: float = 60.0
    max_backoff: float = 60.0
    metrics_address: str | None = "127.0.0.1:9479"
    watch: bool = True


class Daemon:
    def __init__(self, settings: Settings, policy: Policy, options: DaemonOptions) -> None:
        self.settings, self.base_policy, self.options = settings, policy, options
        self.reconciler = Reconciler(settings, policy)
        self.trigger = Trigger(options.debounce, options.max_wait, options.resync_interval)
        self.backoff = Backoff(0.5, options.max_backoff)
        self.stalls = Stalls()
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.stopping = threading.Event()
        self.in_pass = threading.Event()
        self.state_path = settings.state / "daemon.json"
        self.directory = os.path.abspath(settings.config_dir)
        self.watch = DirectoryWatch(self.directory, self.trigger.file_event, options.watch)
        self.heartbeat = time.monotonic()
        self.progress = self.heartbeat  # the last answer from the node (a 429 counts)
        self.started_at = time.time()
        self.passes = 0
        self.expected_live: frozenset[str] | None = None
        self.managed: frozenset[str] = frozenset()
        self.scanned: tuple | None = None
        self.scan_fired = False
        self.node_down = False
        self.unsupported_until = 0.0  # monotonic: until then the probe leaves the node be
        self.summary = "starting"
        self.logged_summary = ""
        self.rows: tuple = ()
        self.last_success: float | None = None
        self.ready = False

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        self.settings.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = None
        if self.options.metrics_address:
            try:
                server = MetricsServer(self.metrics, self.options.metrics_address,
                                       self.healthy).start()
            except OSError as exc:
                raise SettingsError(f"cannot serve metrics on {self.options.metrics_address}: "
                                    f"{exc.strerror}; set --metrics-address (or 'off')") from None
            log.info("metrics on http://%s/metrics", server.address)
        self._hook_clients()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.trigger.request("sighup"))
        self.watch.start()
        loop = threading.Thread(target=self._loop, name="reconcile-loop", daemon=True)
        probe = threading.Thread(target=self._probe, name="probe", daemon=True)
        loop.start()
        probe.start()
        log.info("reconciling %s onto %s (%s)", self.directory, self.settings.shown_url,
                 self.settings.network)
        self._keep_systemd_informed()
        self.notifier.stopping()
        log.info("stopping")
        self.trigger.interrupt()
        loop.join(STOP_GRACE)
        if loop.is_alive():
            log.warning("a node call is still in flight; its intent is in the ledger journal")
        self.watch.stop()
        if server is not None:
            server.stop()
        return 0

    def _keep_systemd_informed(self) -> None:
        """Until SIGTERM: ping the watchdog every half WatchdogSec= while healthy(), and
        extend the start timeout while the first pass is healthy. Both stop when the loop
        is stuck, so systemd still restarts a daemon that hangs."""
        beat = self.notifier.watchdog_interval
        tick = min(beat, 1.0) if beat else 1.0
        last_ping = 0.0
        while not self.stopping.wait(tick):
            if not self.notifier.enabled or not self.healthy():
                continue
            now = time.monotonic()
            if beat and now - last_ping >= beat - tick / 2:
                self.notifier.watchdog()
                last_ping = now
            if not self.ready:
                self.notifier.extend_timeout(START_EXTENSION)

    def _on_stop(self, *_) -> None:
        self.stopping.set()
        self.trigger.interrupt()

    def healthy(self) -> bool:
        """The loop came round recently; or it is inside a pass whose node calls are within
        their bound: the node answered lately (429s included), or the call in flight is
        still inside the client's patience for rate limits plus a timeout. A pass waiting
        out 429s for two minutes is healthy; a loop that stopped turning is not."""
        now = time.monotonic()
        limit = max(10.0, 2 * self.settings.timeout + 5)
        if now - self.heartbeat < limit:
            return True
        if not self.in_pass.is_set():
            return False
        patience = getattr(self.reconciler.client, "patience", 120.0)
        return now - max(self.heartbeat, self.progress) < patience + limit

    def _hook_clients(self) -> None:
        client = self.reconciler.client
        self.probe_client = node_client(self.settings)
        self.probe_client.pacer = client.pacer  # one budget: the node limits per client IP
        def on_response(method: str, status: int) -> None:
            self.progress = time.monotonic()
            self.metrics.http.labels(method, str(status)).inc()

        for c in (client, self.probe_client):
            c.on_response = on_response

    # -- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        self.trigger.request("start")
        while not self.stopping.is_set():
            wake = self.trigger.wait(max_block=0.5)
            self.heartbeat = time.monotonic()
            if self.stopping.is_set():
                break
            self.watch.check()
            if wake is not None:
                try:
                    self._pass(wake)
                except Exception:  # the loop must outlive any bug in one pass
                    log.exception("internal error in a pass; retrying later")
                    self.trigger.retry_in(self.backoff.next())
        self.reconciler.close()  # this thread owns it: its journal, its session

    def _pass(self, wake: Wake) -> None:
        started, t0 = time.time(), time.monotonic()
        self.in_pass.set()
        self.passes += 1
        self.scanned = scan(self.directory)
        self.scan_fired = False
        policy = replace(self.base_policy, hold=self.stalls.holds())
        self.reconciler.policy = policy
        result: PassResult | None = None
        error: str | None = None
        try:
            result = self.reconciler.run_pass(on_outcome=self._on_outcome,
                                              should_stop=self.stopping.is_set)
        except (ApiAbsent, RuntimeLoadUnsupported) as exc:
            error, outcome = str(exc), "unsupported"
        except NodeError as exc:
            error, outcome = str(exc), "error"
            self._node_down(exc)
        except ConfigDirError as exc:
            error, outcome = str(exc), "blocked"
        except ReconcilerError as exc:
            error, outcome = str(exc), "error"
        finally:
            self.in_pass.clear()
        if result is not None:
            outcome = self._after(result, policy, wake)
        elif outcome == "unsupported":
            self._unsupported(error or "")
        elif outcome == "error":
            delay = self.backoff.next()
            self.trigger.retry_in(delay)
            self.summary = f"{error}; retrying in {delay:.0f} s"
            log.warning("pass failed: %s (retrying in %.1f s)", error, delay)
        else:
            self.summary = f"blocked: {error}"
            log.error("pass refused: %s", error)
        duration = time.monotonic() - t0
        self.metrics.passes.labels(wake.primary, outcome).inc()
        self.metrics.pass_seconds.observe(duration)
        self._write_record(wake, started, duration, outcome, error)
        if not self.ready:
            self.notifier.ready(self.summary)
            self.ready = True
        else:
            self.notifier.status(self.summary)

    def _unsupported(self, error: str) -> None:
        """A node that cannot do this at all (no Slipstream API, or plugins chosen at
        start-up): not a failure to back off from, a state. Nothing is unloaded because of
        it; the node is asked again every --max-backoff, since an upgrade or downgrade
        changes it."""
        self.expected_live = None
        recheck = self.options.max_backoff
        self.unsupported_until = time.monotonic() + recheck
        self.trigger.retry_in(recheck)
        summary = f"unsupported: {error}"
        if summary != self.logged_summary:
            log.error("%s (asking again every %.0f s)", summary, recheck)
            self.logged_summary = summary
        self.summary = f"{summary}; asking again in {recheck:.0f} s"

    def _after(self, result: PassResult, policy: Policy, wake: Wake) -> str:
        self.unsupported_until = 0.0
        self._node_up()
        self.stalls.record(result.outcomes)
        holds = self.stalls.holds()  # fixed from here on in this pass
        stalled_files = {h.config_file for h in holds}
        self.expected_live = result.live_after
        desired = result.desired
        ledger = self.reconciler.store.current()
        self.managed = frozenset(ledger.entries)
        after = plan(desired, sorted(self.expected_live), ledger, replace(policy, hold=holds))
        self.rows = statuses(after)
        counts = count_states(self.rows)
        self.metrics.set_states(counts)
        retryable = [o for o in result.failures if o.change.config_file not in stalled_files]
        if result.plan.blocked:
            outcome, self.summary = "blocked", f"blocked: {result.plan.blocked}"
            log.error("pass blocked: %s", result.plan.blocked)
        elif retryable or result.stopped:
            outcome = "failed"
            delay = self.backoff.next()
            self.trigger.retry_in(delay)
            self.summary = f"{len(retryable)} action(s) failed; retrying in {delay:.0f} s"
        else:
            self.backoff.reset()
            self.trigger.cancel_retry()
            outcome = "changed" if result.changed else "ok"
            if result.plan.invalid or counts.get("stalled"):
                outcome = "invalid" if result.plan.invalid else "stalled"
            self.summary = _summary(counts)
            if result.converged:
                self.metrics.last_success.set(time.time())
                self.last_success = time.time()
        if "file" in wake.reasons and wake.first_event_at is not None and result.changed:
            self.metrics.event_to_applied.observe(time.monotonic() - wake.first_event_at)
        if self.summary != self.logged_summary:
            log.info("%s", self.summary)
            self.logged_summary = self.summary
        return outcome

    def _on_outcome(self, outcome: Outcome) -> None:
        self.heartbeat = time.monotonic()
        change = outcome.change
        name = outcome.name or change.label
        if outcome.ok:
            log.info("%s %s (%s): %s", change.action.value, name,
                     file_name(change.config_file), outcome.message)
        else:
            log.warning("%s %s (%s) failed: %s", change.action.value, name,
                        file_name(change.config_file), outcome.message)

    def _node_down(self, exc: NodeError) -> None:
        self.metrics.node_up.set(0)
        self.expected_live = None
        if not self.node_down:
            self.node_down = True
            log.warning("node unavailable: %s", exc)

    def _node_up(self) -> None:
        self.metrics.node_up.set(1)
        if self.node_down:
            self.node_down = False
            log.info("node %s is answering again", self.settings.shown_url)

    # -- the probe -----------------------------------------------------------------------
    def _probe(self) -> None:
        # The scan is what inotify may have missed: every probe without inotify, every
        # SCAN_EVERY probes with it (1000 configs and libraries cost ~2,000 stats).
        scan_every = 1 if not self.options.watch else SCAN_EVERY
        ticks = 0
        while not self.stopping.wait(self.options.probe_interval):
            if self.in_pass.is_set() or time.monotonic() < self.unsupported_until:
                continue  # an unsupported node is asked again by the pass, slowly
            before = self.passes
            ticks += 1
            if ticks % scan_every == 0:
                self._scan()
            try:
                live = frozenset(self.probe_client.list())
            except ApiAbsent:
                self.trigger.request("probe")  # the pass records the state, then waits
                continue
            except NodeError as exc:
                self._node_down(exc)
                continue
            except ReconcilerError as exc:
                log.debug("probe: %s", exc)
                continue
            if self.in_pass.is_set() or self.passes != before:
                continue  # a pass ran meanwhile: what we saw may be half-way through it
            was_down = self.node_down
            self._node_up()
            expected = self.expected_live
            if was_down or expected is None:
                self.stalls.clear()
                self.trigger.request("probe")
            elif live != expected:
                missing = sorted((expected - live) & self.managed)
                if missing:
                    log.warning("managed plugin(s) missing from the node (a restart or a hand "
                                "unload): %s", ", ".join(missing))
                    self.stalls.clear()
                self.expected_live = live
                self.trigger.request("probe")

    def _scan(self) -> None:
        """What inotify may have missed. One event per pass cycle at most, and none while
        file events already wait: a repeated event would keep restarting the quiet period."""
        if self.scan_fired or self.scanned is None or self.trigger.files_pending:
            return
        if scan(self.directory) != self.scanned or self.reconciler.reader.libraries_changed():
            self.scan_fired = True
            self.trigger.file_event()

    # -- daemon.json ----------------------------------------------------------------------
    def _write_record(self, wake: Wake, started: float, duration: float, outcome: str,
                      error: str | None) -> None:
        retry_at = self.trigger.retry_at
        record = {
            "format_version": FORMAT_VERSION,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "passes": self.passes,
            "node": self.settings.shown_url,
            "summary": self.summary,
            "last_pass": {"trigger": wake.primary, "reasons": sorted(wake.reasons),
                          "started_at": started, "ended_at": started + duration,
                          "duration_s": round(duration, 4), "result": outcome,
                          "error": error},
            "last_success_at": self.last_success,
            "node_up": not self.node_down,
            "next_retry_at": (time.time() + retry_at - time.monotonic()) if retry_at else None,
            "holds": [{"config_file": h.config_file, "config_sha256": h.config_sha256,
                       "library_sha256": h.library_sha256, "reason": h.reason}
                      for h in self.stalls.holds()],
            "plugins": [self._plugin_record(r) for r in self.rows],
        }
        with contextlib.suppress(OSError):
            atomic_write(self.state_path, json.dumps(record, indent=1).encode() + b"\n")

    def _plugin_record(self, row) -> dict:
        attempts = self.stalls.attempts(row.config_file) if row.config_file else None
        return {"name": row.name, "config_file": row.config_file, "state": row.state,
                "detail": row.detail, "last_error": attempts.reason if attempts else None,
                "tries": attempts.count if attempts else 0}


def read_record(state_dir: Path) -> dict | None:
    """daemon.json, for `status`; None when there is none or it is unreadable."""
    try:
        record = json.loads((state_dir / "daemon.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def request_pass(pid: int, state_dir: Path, wait: float) -> tuple[int, str]:
    """SIGHUP to the daemon, then wait until daemon.json records a pass that started after
    it: systemd 252 has no Type=notify-reload, and systemd.service(5) wants ExecReload= to
    return only once the reload is done. Returns (exit code, message)."""
    asked = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except (ProcessLookupError, PermissionError) as exc:
        return 1, f"error: cannot signal the daemon (pid {pid}): {exc.strerror.lower()}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        record = read_record(state_dir) or {}
        last = record.get("last_pass") or {}
        started = last.get("started_at")
        if record.get("pid") == pid and isinstance(started, (int, float)) and started >= asked:
            return 0, f"pass {record.get('passes', '?')}: {record.get('summary', '')}"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 1, f"error: the daemon (pid {pid}) exited before the pass ran"
        except PermissionError:
            pass
        time.sleep(0.05)
    return 1, (f"error: no pass recorded in {state_dir / 'daemon.json'} within {wait:.0f} s; "
               "the daemon runs it as soon as the pass in flight ends")


def running(record: dict) -> bool:
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return True


def _summary(counts: dict[str, int]) -> str:
    managed = counts.get("in-sync", 0)
    parts = [f"in sync: {managed} plugin{'s' if managed != 1 else ''}"]
    for state in ("invalid", "stalled", "pending-unload", "unmanaged"):
        if counts.get(state):
            parts.append(f"{counts[state]} {state}")
    return ", ".join(parts)
