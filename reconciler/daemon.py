"""`slipstream-reconciler run`: the daemon decides *when* to run the pass, never *what*.

Threads, each with one job:
- the loop runs passes (Reconciler.run_pass, the same function as `apply`) when the
  Trigger says so, and records what happened (daemon.json, metrics, sd_notify). It is the
  only thread that reads or writes the reconciler's state: what the node should hold, what
  is managed, the stall counters, the backoff, the summary and the record;
- the probe (reconciler.probe) lists the node every --probe-interval and hands the list to
  the loop, which compares it with what it expects; it also asks the loop to scan the
  config directory now and then;
- watchdog's observer turns file activity into file events, and, for a node behind a
  Unix socket (an Agave validator), the socket being replaced into a "node restarted"
  pass at once (reconciler.socketwatch);
- the main thread waits for signals (blocked in every thread, taken with sigtimedwait:
  no handler ever runs) and keeps systemd informed: WATCHDOG=1 while the loop is healthy,
  EXTEND_TIMEOUT_USEC= while the first pass runs (READY=1 comes after it).
The other threads only *say* something to the loop, through the Trigger.

For its whole life the daemon holds a lock on <state>/daemon.lock; `status` asks the lock,
not the pid in daemon.json, whether a daemon runs (a pid can be recycled, or belong to a
user we may not signal).

Nothing the node or the files do makes the daemon exit: failures become backoff, stalled
loads, a blocked state or an invalid file, each visible in status, logs and metrics.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.apply import Reconciler
from reconciler.atomicfile import atomic_write
from reconciler.desired import file_name
from reconciler.errors import (
    ApiAbsent,
    ConfigDirError,
    NodeError,
    NoPluginManager,
    ReconcilerError,
    RuntimeLoadUnsupported,
    SettingsError,
)
from reconciler.metrics import Metrics, MetricsServer, split_address
from reconciler.notify import Notifier
from reconciler.outcome import Outcome, PassResult
from reconciler.plan import PluginStatus, Policy, count_states, plan, statuses
from reconciler.probe import Listed, Probe, Report, ScanDue, Unanswered
from reconciler.retry import Backoff, Stalls
from reconciler.settings import Settings
from reconciler.socketwatch import SocketWatch
from reconciler.trigger import Trigger, Wake
from reconciler.watch import DirectoryWatch, Fingerprint, scan

log = logging.getLogger("slipstream-reconciler")

FORMAT_VERSION = 1
STOP_GRACE = 4.5  # SIGTERM: the call in flight may finish; we are gone within 5 s
START_EXTENSION = 15.0  # each EXTEND_TIMEOUT_USEC= during the first pass, sent every second
SCAN_EVERY = 5  # with inotify, the fallback scan runs every 5th probe
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
LOCK_NAME = "daemon.lock"
LOG_LEVELS = ("debug", "info", "warning", "error")
RESTARTED = "node restarted"  # the wake reason when the node's socket was replaced
# What the node cannot do at all until it is upgraded, reconfigured or restarted: a
# state, asked again every --max-backoff (or at once when the node restarts), not a
# failure to back off from.
UNSUPPORTED = (ApiAbsent, RuntimeLoadUnsupported, NoPluginManager)


@dataclass(frozen=True)
class DaemonOptions:
    """`run`'s options, checked here (SettingsError, exit 78) so that every caller of the
    daemon gets the same checks."""
    debounce: float = 0.25
    max_wait: float = 2.0
    probe_interval: float = 2.0
    resync_interval: float = 60.0
    max_backoff: float = 60.0
    metrics_address: str | None = "127.0.0.1:9479"  # 'off' or None: no metrics server
    watch: bool = True
    log_format: str = "text"
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise SettingsError(f"--log-level must be debug, info, warning or error, not "
                                f"{self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"--log-format must be text or json, not {self.log_format!r}")
        for option, value in (("--debounce", self.debounce), ("--max-wait", self.max_wait),
                              ("--probe-interval", self.probe_interval),
                              ("--resync-interval", self.resync_interval),
                              ("--max-backoff", self.max_backoff)):
            if not value > 0:
                raise SettingsError(f"{option} must be more than 0")
        if self.metrics_address == "off":
            object.__setattr__(self, "metrics_address", None)
        elif self.metrics_address is not None:
            split_address(self.metrics_address)


class Daemon:
    def __init__(self, settings: Settings, policy: Policy, options: DaemonOptions) -> None:
        self.settings, self.base_policy, self.options = settings, policy, options
        self.reconciler = Reconciler(settings, policy)
        self.trigger: Trigger[Report] = Trigger(options.debounce, options.max_wait,
                                                options.resync_interval)
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.state_path = settings.state / "daemon.json"
        self.directory = os.path.abspath(settings.config_dir)
        self.watch = DirectoryWatch(self.directory, self.trigger.file_event, options.watch)
        # A node reached through a socket file shows a restart as that file replaced.
        socket_path = settings.socket_path
        self.socket_watch = (SocketWatch(socket_path, lambda: self.trigger.request(RESTARTED),
                                         options.watch)
                             if socket_path is not None else None)
        self.started_at = time.time()
        # Signals between threads (each set by one thread, read by others):
        self.stopping = threading.Event()  # main thread: SIGTERM/SIGINT came
        self.in_pass = threading.Event()  # loop: a pass and its bookkeeping are running
        self.unsupported = threading.Event()  # loop: the node cannot do this; probe rests
        self.ready = threading.Event()  # loop: the first pass ended, READY=1 was sent
        self.heartbeat = time.monotonic()  # loop: it came round (read by healthy())
        self.progress = self.heartbeat  # either client: the node answered (a 429 counts)
        # The reconciler's state: the loop thread alone reads and writes it.
        self.backoff = Backoff(0.5, options.max_backoff)
        self.stalls = Stalls()
        self.passes = 0
        self.calls_ended = float("-inf")  # monotonic: the last pass's node calls were done
        self.expected_live: frozenset[str] | None = None
        self.managed: frozenset[str] = frozenset()
        self.scanned: Fingerprint | None = None
        self.scan_fired = False
        self.node_down = False
        self.summary = "starting"
        self.logged_summary = ""
        self.logged_kind = ""
        self.logged_failure = ""
        self.rows: tuple[PluginStatus, ...] = ()
        self.last_success: float | None = None
        self.record_error: str | None = None  # the last failure to write daemon.json

    # -- life cycle ------------------------------------------------------------------
    def run(self) -> int:
        """Until SIGTERM or SIGINT. The signals are blocked before any thread starts, so
        every thread inherits the mask and they reach only the main thread's sigtimedwait:
        no handler interrupts a thread that holds a lock."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            return self._run()
        finally:
            _discard_pending(SIGNALS)  # a second SIGTERM must not kill us on unblocking
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _run(self) -> int:
        self.settings.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = hold_lock(self.settings.state)
        try:
            server = self._serve_metrics()
            self._hook_clients()
            self.watch.start()
            if self.socket_watch is not None:
                self.socket_watch.start()
            probe = Probe(self.probe_client, self.options.probe_interval,
                          1 if not self.options.watch else SCAN_EVERY,
                          paused=lambda: self.in_pass.is_set() or self.unsupported.is_set(),
                          report=self.trigger.report, stopping=self.stopping)
            loop = threading.Thread(target=self._loop, name="reconcile-loop", daemon=True)
            prober = threading.Thread(target=probe.run, name="probe", daemon=True)
            loop.start()
            prober.start()
            log.info("reconciling %s onto %s (%s)", self.directory, self.settings.shown_node,
                     self.settings.shown_network or self.settings.rules.product)
            self._serve_signals()
            self.notifier.stopping()
            log.info("stopping")
            self.stopping.set()
            self.trigger.interrupt()
            loop.join(STOP_GRACE)
            if loop.is_alive():
                log.warning("a node call is still in flight; its intent is in the ledger "
                            "journal")
            self.watch.stop()
            if self.socket_watch is not None:
                self.socket_watch.stop()
            prober.join(STOP_GRACE)
            if not prober.is_alive():
                self.probe_client.close()
            if server is not None:
                server.stop()
            return 0
        finally:
            os.close(lock)

    def _serve_metrics(self) -> MetricsServer | None:
        address = self.options.metrics_address
        if not address:
            return None
        try:
            server = MetricsServer(self.metrics, address, self.healthy).start()
        except OSError as exc:
            raise SettingsError(f"cannot serve metrics on {address}: {exc.strerror}; set "
                                "--metrics-address (or 'off')") from None
        log.info("metrics on http://%s/metrics", server.address)
        return server

    def _serve_signals(self) -> None:
        """Until SIGTERM or SIGINT: SIGHUP asks for a pass now; every tick, ping the
        watchdog every half WatchdogSec= while healthy(), and extend the start timeout
        while the first pass is healthy. Both stop when the loop is stuck, so systemd
        still restarts a daemon that hangs."""
        beat = self.notifier.watchdog_interval
        tick = min(beat, 1.0) if beat else 1.0
        last_ping = float("-inf")  # the first ping at the first tick
        next_tick = time.monotonic() + tick
        while True:
            info = signal.sigtimedwait(SIGNALS, max(0.0, next_tick - time.monotonic()))
            if info is not None and info.si_signo != signal.SIGHUP:
                return
            if info is not None:
                self.trigger.request("sighup")
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + tick
            if not self.notifier.enabled or not self.healthy():
                continue
            if beat and now - last_ping >= beat - tick / 2:
                self.notifier.watchdog()
                last_ping = now
            if not self.ready.is_set():
                self.notifier.extend_timeout(START_EXTENSION)

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
        patience = self.reconciler.client.patience
        return now - max(self.heartbeat, self.progress) < patience + limit

    def _hook_clients(self) -> None:
        client = self.reconciler.client
        self.probe_client = client.sibling()  # one budget: the node limits per client

        def on_response(method: str, status: int) -> None:
            self.progress = time.monotonic()
            self.metrics.http.labels(method, str(status)).inc()

        for c in (client, self.probe_client):
            c.on_response = on_response

    # -- the loop: the one owner of the reconciler's state ---------------------------------
    def _loop(self) -> None:
        self.trigger.request("start")
        while not self.stopping.is_set():
            wake = self.trigger.wait(max_block=0.5)
            self.heartbeat = time.monotonic()
            if self.stopping.is_set():
                break
            self.watch.check()
            if self.socket_watch is not None:
                self.socket_watch.check()
            for report in self.trigger.take_reports():
                self._judge(report)
            if wake is not None:
                self.in_pass.set()
                try:
                    self._pass(wake)
                except Exception:  # the loop must outlive any bug in one pass
                    log.exception("internal error in a pass; retrying later")
                    self.trigger.retry_in(self.backoff.next())
                finally:
                    self.in_pass.clear()
        self.reconciler.close()  # this thread owns it: its journal, its session

    def _pass(self, wake: Wake) -> None:
        started, t0 = time.time(), time.monotonic()
        self.passes += 1
        self.scanned = scan(self.directory)
        self.scan_fired = False
        if RESTARTED in wake.reasons:
            # A new node process: what failed against the old one says nothing about
            # this one, and it may need a moment to listen after binding its socket.
            self.backoff.reset()
        policy = replace(self.base_policy, hold=self.stalls.holds())
        self.reconciler.policy = policy
        result: PassResult | None = None
        error: str | None = None
        outcome = "error"
        try:
            result = self.reconciler.run_pass(on_outcome=self._on_outcome,
                                              should_stop=self.stopping.is_set)
        except UNSUPPORTED as exc:
            error, outcome = str(exc), "unsupported"
        except NodeError as exc:
            error, outcome = str(exc), "error"
            self._node_down(exc)
        except ConfigDirError as exc:
            error, outcome = str(exc), "blocked"
        except ReconcilerError as exc:
            error, outcome = str(exc), "error"
        finally:
            self.calls_ended = time.monotonic()
        if result is not None:
            outcome = self._after(result, policy, wake)
        elif outcome == "unsupported":
            self._unsupported(error or "")
        elif outcome == "error":
            delay = self.backoff.next()
            self.trigger.retry_in(delay)
            self.summary = f"{error}; retrying in {delay:.0f} s"
            if error != self.logged_failure:  # one line per distinct failure, not per retry
                log.warning("pass failed: %s (retrying in %.1f s)", error, delay)
                self.logged_failure = error or ""
            else:
                log.debug("pass failed again: %s (retrying in %.1f s)", error, delay)
        else:
            self.summary = f"blocked: {error}"
            log.error("pass refused: %s", error)
        duration = time.monotonic() - t0
        self.metrics.passes.labels(wake.primary, outcome).inc()
        self.metrics.pass_seconds.observe(duration)
        self._write_record(wake, started, duration, outcome, error)
        if not self.ready.is_set():
            self.notifier.ready(self.summary)
            self.ready.set()
        else:
            self.notifier.status(self.summary)

    def _unsupported(self, error: str) -> None:
        """A node that cannot do this at all (no Slipstream API, plugins chosen at
        start-up, no plugin manager / Geyser plugin service): not a failure to back off
        from, a state. Nothing is unloaded because of
        it; the node is asked again every --max-backoff, since an upgrade or downgrade
        changes it. Meanwhile the probe rests."""
        self.expected_live = None
        recheck = self.options.max_backoff
        self.unsupported.set()
        self.trigger.retry_in(recheck)
        summary = f"unsupported: {error}"
        if summary != self.logged_summary:
            log.error("%s (asking again every %.0f s)", summary, recheck)
            self.logged_summary = summary
        self.summary = f"{summary}; asking again in {recheck:.0f} s"

    def _after(self, result: PassResult, policy: Policy, wake: Wake) -> str:
        self.unsupported.clear()
        self.logged_failure = ""
        self._node_up()
        self.stalls.record(result.outcomes)
        holds = self.stalls.holds()  # fixed from here on in this pass
        stalled_files = {h.config_file for h in holds}
        self.expected_live = result.live_after
        ledger = self.reconciler.store.current()
        self.managed = frozenset(ledger.entries)
        if result.desired is not None:
            after = plan(result.desired, sorted(self.expected_live), ledger,
                         replace(policy, hold=holds), self.settings.rules)
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
            log.info("node %s is answering again", self.settings.shown_node)

    # -- what the probe saw, judged by the loop ---------------------------------------------
    def _judge(self, report: Report) -> None:
        """A list or failure that started before the last pass's node calls ended may show
        the node half-way through that pass: the pass itself said more, later."""
        if isinstance(report, ScanDue):
            self._scan()
        elif report.started_at < self.calls_ended:
            return
        elif isinstance(report, Unanswered):
            if isinstance(report.error, UNSUPPORTED):
                self.trigger.request("probe")  # the pass records the state, then waits
            else:
                self._node_down(report.error)
        else:
            self._compare(report)

    def _compare(self, listed: Listed) -> None:
        was_down = self.node_down
        self._node_up()
        expected = self.expected_live
        if was_down or expected is None:
            self.stalls.clear()
            self.trigger.request("probe")
        elif listed.live != expected:
            missing = sorted((expected - listed.live) & self.managed)
            if missing:
                log.warning("managed plugin(s) missing from the node (a restart or a hand "
                            "unload): %s", ", ".join(missing))
                self.stalls.clear()
            self.expected_live = listed.live
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
        client = self.reconciler.client
        if client.kind is not None and client.described != self.logged_kind:
            # Which kind of node this is, in the operator's words, once per change of kind
            # (an upgrade to a build without the API, a downgrade to one with only /v1).
            log.info("node %s: %s", self.settings.shown_node, client.described)
            self.logged_kind = client.described
        record = {
            "format_version": FORMAT_VERSION,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "passes": self.passes,
            "node": self.settings.shown_node,
            "node_kind": client.kind,
            "node_described": client.described,
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
        try:
            atomic_write(self.state_path, json.dumps(record, indent=1).encode() + b"\n")
        except OSError as exc:
            self._record_failed(exc)
        else:
            if self.record_error is not None:
                log.info("%s is written again", self.state_path)
                self.record_error = None

    def _record_failed(self, exc: OSError) -> None:
        """Status and `reload` read the record, so a failure is said, but once per distinct
        error (not every pass): the daemon itself works on without it."""
        reason = exc.strerror or str(exc)
        message = f"cannot write {self.state_path}: {reason}"
        if message != self.record_error:
            log.warning("%s; status and reload see the last record written until this is "
                        "fixed (reconciling goes on)", message)
            self.record_error = message

    def _plugin_record(self, row: PluginStatus) -> dict[str, Any]:
        attempts = self.stalls.attempts(row.config_file) if row.config_file else None
        return {"name": row.name, "config_file": row.config_file, "state": row.state,
                "detail": row.detail, "last_error": attempts.reason if attempts else None,
                "tries": attempts.count if attempts else 0}


# -- the daemon's lock: "is a daemon running on this state?" ---------------------------------
def hold_lock(state_dir: Path) -> int:
    """Takes <state>/daemon.lock for the daemon's lifetime (the kernel drops it with the
    process, however it ends) and returns its descriptor. Opened read-only, so that a lock
    file left by another user (root running the daemon by hand) does not stop the
    service. A `status` that tests the lock holds it for an instant; that is waited out."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SettingsError(f"cannot open {path}: {exc.strerror}; set --state-dir") from None
    deadline = time.monotonic() + 2.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise SettingsError(f"cannot lock {path}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            os.close(fd)
            holder = (read_record(state_dir) or {}).get("pid", "?")
            raise SettingsError(f"another daemon (pid {holder}) is running on the state "
                                f"directory {state_dir}; stop it, or give this one its own "
                                "--state-dir")
        time.sleep(0.05)


def running(state_dir: Path) -> bool:
    """Whether a daemon holds <state>/daemon.lock. The lock, not the pid in daemon.json:
    a pid is recycled after the daemon dies (and then names some live process), and a
    daemon running as another user cannot be signalled (EPERM) though it is alive."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: no daemon of this version ever ran here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # releases our shared lock at once
    return False


def _discard_pending(signals: frozenset[signal.Signals]) -> None:
    while signal.sigpending() & signals:
        signal.sigtimedwait(signals, 0)


def read_record(state_dir: Path) -> dict[str, Any] | None:
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
        reason = (exc.strerror or str(exc)).lower()
        return 1, f"error: cannot signal the daemon (pid {pid}): {reason}"
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


def _summary(counts: dict[str, int]) -> str:
    managed = counts.get("in-sync", 0)
    parts = [f"in sync: {managed} plugin{'s' if managed != 1 else ''}"]
    for state in ("invalid", "stalled", "pending-unload", "unmanaged"):
        if counts.get(state):
            parts.append(f"{counts[state]} {state}")
    return ", ".join(parts)
