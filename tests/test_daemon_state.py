"""The daemon's state has one owner, its signals one place, its liveness one witness.

The daemon runs in this process (its loop, probe and watch threads real, against a real
reference node), so that a test can see which thread touched what; the signal, lock and
record tests run it as the operator does, as a process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler.daemon import Daemon, DaemonOptions, read_record, running
from reconciler.errors import SettingsError
from reconciler.plan import Policy
from reconciler.retry import Backoff, Stalls
from tests.conftest import wait_for

OWNED = {"expected_live", "managed", "summary", "rows", "node_down", "passes", "scanned",
         "scan_fired", "last_success", "logged_summary", "record_error"}


class Witness:
    """Wraps a state object and notes the thread of every use."""

    def __init__(self, inner: Any, seen: list[tuple[str, str]]) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, name: str) -> Any:
        self._seen.append((f"{type(self._inner).__name__}.{name}",
                           threading.current_thread().name))
        return getattr(self._inner, name)


class WatchedDaemon(Daemon):
    """Notes which thread writes each piece of the reconciler's state."""

    seen: list[tuple[str, str]]

    def __setattr__(self, name: str, value: Any) -> None:
        seen = self.__dict__.get("seen")
        if seen is not None and name in OWNED:
            seen.append((name, threading.current_thread().name))
        super().__setattr__(name, value)


def in_process(ws, node, scenario: Callable[[Daemon], None], cls: type[Daemon] = Daemon,
               prepare: Callable[[Daemon], None] = lambda d: None) -> Daemon:
    """Runs the daemon in this thread (as `run` does: signals are the main thread's) while
    `scenario` acts from another, then stops it with a real SIGTERM."""
    settings = node.settings(ws.conf, ws.state)
    options = DaemonOptions(debounce=0.02, max_wait=0.2, probe_interval=0.01,
                            resync_interval=30, max_backoff=0.5, metrics_address=None)
    daemon = cls(settings, Policy(), options)
    prepare(daemon)
    failure: list[BaseException] = []
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    def drive() -> None:
        try:
            scenario(daemon)
        except BaseException as exc:  # handed to the test below
            failure.append(exc)
        finally:
            signal.pthread_kill(main, signal.SIGTERM)

    driver = threading.Thread(target=drive, name="scenario")
    driver.start()
    assert daemon.run() == 0
    driver.join(10)
    if failure:
        raise failure[0]
    return daemon


def names(node) -> set[str]:
    return set(node.names())


def test_only_the_loop_thread_touches_the_reconcilers_state(ws, node, kind):
    """The review's race: the probe cleared the stall counters (and rewrote what the loop
    expects of the node) while the loop iterated them, 'dictionary changed size during
    iteration' in 15,430 of 20,000 tries. Here every use of that state is witnessed,
    through a node restart, a hand unload and a planned unload: all on the loop."""
    seen: list[tuple[str, str]] = []
    ws.config("a.json5", name="a")
    ws.config("b.json5", name="b")

    def prepare(d: Daemon) -> None:
        d.stalls = Witness(Stalls(), seen)  # type: ignore[assignment]
        d.backoff = Witness(Backoff(0.5, 0.5), seen)  # type: ignore[assignment]
        d.seen = seen  # type: ignore[attr-defined]

    def scenario(d: Daemon) -> None:
        wait_for(lambda: {"a", "b"} <= names(node), message="a and b loaded")
        node.restart()
        wait_for(lambda: {"a", "b"} <= names(node), message="put back after the restart")
        node.unload_by_hand("a")
        wait_for(lambda: "a" in names(node), message="put back after a hand unload")
        os.remove(ws.conf / "b.json5")
        wait_for(lambda: "b" not in names(node), message="b unloaded")
        time.sleep(0.2)  # probes and passes after it

    in_process(ws, node, scenario, WatchedDaemon, prepare)
    threads = {thread for _, thread in seen}
    assert threads == {"reconcile-loop"}, sorted(set(seen) - {(w, "reconcile-loop")
                                                              for w, _ in seen})
    used = {what for what, _ in seen}
    assert {"Stalls.clear", "Stalls.holds", "expected_live", "managed"} <= used


def test_the_daemons_own_unload_is_never_reported_missing(ws, node, caplog, monkeypatch, kind):
    """The probe used to judge the node while the loop was between the end of its node
    calls and its bookkeeping: a planned unload read as 'managed plugin(s) missing from
    the node', and the stall counters were cleared. The bookkeeping is made slow here, so
    that the window is wide open; a list that started before the pass ended is dropped."""
    real_record = Stalls.record

    def slow_record(self: Stalls, outcomes: Any) -> None:
        time.sleep(0.3)  # dozens of probe intervals
        real_record(self, outcomes)

    monkeypatch.setattr(Stalls, "record", slow_record)
    caplog.set_level(logging.INFO, logger="slipstream-reconciler")
    for name in ("a", "b", "c", "keep"):  # keep: an empty directory is a brake
        ws.config(f"{name}.json5", name=name)

    def scenario(d: Daemon) -> None:
        wait_for(lambda: {"a", "b", "c"} <= names(node), message="loaded")
        for name in ("a", "b", "c"):
            os.remove(ws.conf / f"{name}.json5")
            wait_for(lambda n=name: n not in names(node), message=f"{name} unloaded")
            time.sleep(0.5)  # the bookkeeping, and probes during it
        record = wait_for(lambda: (r := read_record(ws.state)) and r["passes"] >= 4 and r,
                          message="the record")
        assert record["summary"].startswith("in sync: 1 plugin,")

    in_process(ws, node, scenario)
    missing = [r.getMessage() for r in caplog.records if "missing from the node" in
               r.getMessage()]
    assert missing == []
    assert sum("unload" in r.getMessage() for r in caplog.records) >= 3


# What wakes the pass that repairs a restart: snarkOS's restart shows only in the probe's
# list; an Agave validator's as its admin socket replaced, which the daemon watches.
RESTART_WAKES = {"snarkos": "probe", "agave": "node restarted"}


def test_a_node_restart_is_still_noticed_by_the_probe(ws, node, caplog, kind):
    """The probe's list goes to the loop, which still tells a restart from its own work:
    seen as plugins missing, or (when a probe caught the node down) as the node coming
    back, either way a pass the probe asked for. On Agave the socket watch asks first."""
    caplog.set_level(logging.INFO, logger="slipstream-reconciler")
    ws.config("a.json5", name="a")

    def scenario(d: Daemon) -> None:
        wait_for(lambda: "a" in names(node), message="a loaded")
        time.sleep(0.1)
        node.restart()
        wait_for(lambda: "a" in names(node), message="a put back")
        wait_for(lambda: RESTART_WAKES[kind] in (read_record(ws.state) or {}).get(
            "last_pass", {}).get("reasons", []), message="the restart's pass recorded")

    in_process(ws, node, scenario)
    said = [r.getMessage() for r in caplog.records]
    if kind == "snarkos":
        assert any("missing from the node (a restart or a hand unload): a" in m
                   or "is answering again" in m for m in said), said
    assert sum(m.startswith("load a ") for m in said) == 2


# -- signals --------------------------------------------------------------------------
def _status(pid: int, task: str) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines()
    return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in lines)
            if k in ("SigBlk", "SigCgt")}


def test_no_thread_runs_a_signal_handler(ws, node, daemon):
    """A handler that sets an Event can interrupt the main thread while it holds that
    event's lock: a rare deadlock at shutdown. So the daemon installs no handler for
    TERM, INT or HUP; every thread blocks them and the main thread takes them with
    sigtimedwait (which unblocks them only while it waits)."""
    d = daemon(node)
    wait_for(lambda: d.record(), message="the first pass")
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    masks = {task: _status(d.proc.pid, task) for task in os.listdir(f"/proc/{d.proc.pid}/task")}
    assert len(masks) >= 4  # main, loop, probe, watch, metrics
    for task, mask in masks.items():
        handled = {s for s in wanted if mask["SigCgt"] & (1 << (s - 1))}
        assert handled <= {signal.SIGINT}, (task, handled)  # Python's own, never reached
        if task != str(d.proc.pid):
            blocked = {s for s in wanted if mask["SigBlk"] & (1 << (s - 1))}
            assert blocked == wanted, (task, blocked)
    for _ in range(5):
        d.signal(signal.SIGHUP)
    wait_for(lambda: d.record()["last_pass"]["trigger"] == "sighup", message="a sighup pass")
    d.signal(signal.SIGINT)
    assert d.proc.wait(timeout=5) == 0
    assert "stopping" in d.log


# -- is a daemon running? ---------------------------------------------------------------
def test_a_recycled_pid_is_not_a_running_daemon(ws, node, daemon, cli):
    d = daemon(node)
    wait_for(lambda: d.record(), message="the first pass")
    assert running(ws.state)
    assert d.stop() == 0
    assert not running(ws.state)
    record = read_record(ws.state)
    assert record is not None
    other = subprocess.Popen(["sleep", "30"])  # the pid the kernel gave someone else
    try:
        record["pid"] = other.pid
        (ws.state / "daemon.json").write_text(__import__("json").dumps(record))
        assert not running(ws.state)
        status = cli("status", "-o", "json", node=node)
        assert status.json["daemon"]["running"] is False, status.out
        assert "not running" in cli("status", node=node).out
    finally:
        other.kill()
        other.wait()


def test_a_daemon_we_may_not_signal_is_still_running(node, daemon, ws):
    """`status` run by a user who cannot signal the daemon (EPERM) used to call it dead."""
    top = Path(tempfile.mkdtemp(prefix="slipstream-state-"))
    top.chmod(0o755)
    state = top / "state"
    state.mkdir(mode=0o755)
    try:
        d = daemon(node, env={"SLIPSTREAM_STATE_DIR": str(state)})
        wait_for(lambda: (state / "daemon.json").exists(), message="the first pass")
        pid = os.fork()
        if pid == 0:  # a user who may not signal the daemon (it runs as root here)
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    os.kill(d.proc.pid, 0)
                    code = 4  # could signal it after all: the test proves nothing
                except PermissionError:
                    code = 0 if running(state) else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 4 or os.geteuid() != 0:
            pytest.skip("needs root, to become a user that cannot signal the daemon")
        assert code == 0, "running() said a daemon we may not signal is not running"
        assert d.stop() == 0
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)


def test_a_second_daemon_on_the_same_state_refuses_to_start(ws, node, daemon):
    first = daemon(node)
    wait_for(lambda: first.record(), message="the first pass")
    second = daemon(node)
    assert second.proc.wait(timeout=30) == 78, second.log
    assert f"another daemon (pid {first.proc.pid}) is running" in second.log
    assert first.proc.poll() is None


# -- the record -------------------------------------------------------------------------
def test_a_failed_record_write_is_logged_once_and_the_daemon_goes_on(ws, node, daemon):
    ws.state.mkdir(parents=True, exist_ok=True)
    (ws.state / "daemon.json").mkdir()  # a rename onto it fails: EISDIR
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(lambda: "a" in names(node), message="a loaded")
    ws.config("b.json5", name="b")
    wait_for(lambda: "b" in names(node), message="b loaded")
    base = d.metrics_url()
    for _ in range(3):
        d.signal(signal.SIGHUP)
        time.sleep(0.1)
    wait_for(lambda: 'trigger="sighup"' in requests.get(base + "/metrics", timeout=5).text,
             message="a sighup pass")
    failures = [line for line in d.lines if "cannot write" in line]
    assert len(failures) == 1, failures
    assert "daemon.json" in failures[0] and "Is a directory" in failures[0]
    (ws.state / "daemon.json").rmdir()
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.record(), message="the record written again")
    # The log line follows the write; the log reader thread may be a moment behind.
    wait_for(lambda: any("written again" in line for line in d.lines),
             message="the daemon saying so")
    assert d.proc.poll() is None


# -- options ----------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"debounce": 0}, "--debounce must be more than 0"),
    ({"probe_interval": -1}, "--probe-interval must be more than 0"),
    ({"max_backoff": float("nan")}, "--max-backoff must be more than 0"),
    ({"log_level": "loud"}, "--log-level must be debug, info, warning or error"),
    ({"metrics_address": "9479"}, "--metrics-address must be HOST:PORT"),
])
def test_the_daemons_options_check_themselves(fields, message):
    with pytest.raises(SettingsError, match=message):
        DaemonOptions(**fields)


def test_metrics_off_means_no_server():
    assert DaemonOptions(metrics_address="off").metrics_address is None
    assert DaemonOptions(log_level="WARNING").log_level == "WARNING"
