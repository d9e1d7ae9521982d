"""The daemon as a subprocess, real files, a real reference node: every trigger and save
pattern, restarts, failures and the systemd interface. Every wait is for a state, with a
deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from reconciler.ledgerstore import LedgerStore
from tests.conftest import SCRIPT, wait_for


def names(node) -> set[str]:
    return set(node.names())


def loaded(node, *expected: str):
    return lambda: set(expected) <= names(node)


def mutating(node) -> list[tuple[str, str]]:
    """The plugin changes the node was asked for: (load|unload|reload, argument)."""
    return [(c.what, c.argument) for c in node.changes()]


def replace_calls(node) -> list[str]:
    """What one replace looks like on this kind of node."""
    return ["reload"] if node.rules.native_reload else ["unload", "load"]


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_text(lib: str, name: str | None, extra: str = "") -> str:
    fields = [f'libpath: "../libs/lib{lib}.so"'] + ([f'name: "{name}"'] if name else [])
    return "{" + ", ".join(fields + ([extra] if extra else [])) + "}"


def managed_config(ws, name: str) -> str | None:
    entry = LedgerStore(ws.state).load().entries.get(name)
    return entry.config_sha256 if entry else None


# -- triggers and save patterns -----------------------------------------------------------
def test_a_dropped_file_is_loaded_with_the_default_timings(ws, node, daemon, kind):
    d = daemon(node, "--debounce", "0.25", "--max-wait", "2")
    wait_for(lambda: d.record(), message="the first pass")
    ws.library("postgres")
    atomic_write(ws.conf / "postgres.json5", config_text("postgres", "postgres"))
    wait_for(loaded(node, "postgres"), message="postgres loaded")


def test_delete_then_recreate_save_replaces_without_a_lone_unload(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(loaded(node, "a"))
    before = len(mutating(node))
    os.remove(ws.conf / "a.json5")
    ws.config("a.json5", name="a", extra="batch: 2")
    wait_for(lambda: applied(ws, node, "a"), message="the replace")
    assert [m[0] for m in mutating(node)[before:]] == replace_calls(node)
    assert d.proc.poll() is None


def applied(ws, node, name: str) -> bool:
    """The file as it is now is what the ledger says is loaded, and it is loaded."""
    return name in names(node) and managed_config(ws, name) == _sha(ws.conf / f"{name}.json5")


def test_in_place_writes_in_chunks_apply_the_final_content(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    daemon(node)
    wait_for(loaded(node, "a"))
    text = config_text("a", "a", 'note: "' + "x" * 4000 + '"')
    with open(ws.conf / "a.json5", "w") as handle:
        for i in range(0, len(text), 1000):
            handle.write(text[i:i + 1000])
            handle.flush()
            time.sleep(0.02)  # a slow writer, not a synchronisation
    wait_for(lambda: applied(ws, node, "a"), message="the final content applied")
    assert sum(1 for m in mutating(node) if m[0] in ("unload", "reload")) <= 2


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_git_checkout_switches_the_whole_set(ws, node, daemon, kind):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*args):
        subprocess.run([git, *args], cwd=ws.conf, env=env, check=True, capture_output=True)

    run("init", "-q", "-b", "one")
    ws.config("a.json5", name="a")
    ws.config("b.json5", name="b")
    run("add", ".")
    run("commit", "-qm", "one")
    run("checkout", "-qb", "two")
    os.remove(ws.conf / "a.json5")
    ws.config("c.json5", name="c")
    ws.config("b.json5", name="b", extra="v: 2")
    run("add", "-A")
    run("commit", "-qm", "two")
    run("checkout", "-q", "one")
    daemon(node)
    wait_for(lambda: names(node) == {"startup", "a", "b"}, message="branch one")
    run("checkout", "-q", "two")
    wait_for(lambda: names(node) == {"startup", "b", "c"} and applied(ws, node, "b"),
             message="branch two")


def test_rsync_style_temp_names_then_renames(ws, node, daemon, kind):
    daemon(node)
    wait_for(lambda: (ws.state / "daemon.json").exists())
    source = ws.root / "source"
    source.mkdir()
    ws.library("r1")
    ws.library("r2")
    for name in ("r1", "r2"):
        (source / f"{name}.json5").write_text(config_text(name, name))
    rsync = shutil.which("rsync")
    if rsync:
        subprocess.run([rsync, "-a", f"{source}/", f"{ws.conf}/"], check=True)
    else:  # rsync's own pattern: a hidden temp file per file, then a rename
        for path in source.iterdir():
            tmp = ws.conf / f".{path.name}.Xa8Jk2"
            shutil.copy(path, tmp)
            os.rename(tmp, ws.conf / path.name)
    wait_for(loaded(node, "r1", "r2"))


def test_a_configmap_volume_swap(ws, node, daemon, kind):
    ws.library("cm")

    def publish(version: int, extra: str) -> None:
        data = ws.conf / f"..2026_11_25_00_00_0{version}.{version}"
        data.mkdir()
        (data / "cm.json5").write_text(config_text("cm", "cm", extra))
        tmp = ws.conf / "..data_tmp"
        tmp.symlink_to(data.name)
        os.replace(tmp, ws.conf / "..data")  # the atomic swap the kubelet does
        link = ws.conf / "cm.json5"
        if not link.is_symlink():
            link.symlink_to("..data/cm.json5")

    publish(1, "v: 1")
    daemon(node)
    wait_for(loaded(node, "cm"))
    first = managed_config(ws, "cm")
    publish(2, "v: 2")
    shutil.rmtree(ws.conf / "..2026_11_25_00_00_01.1")
    wait_for(lambda: applied(ws, node, "cm") and managed_config(ws, "cm") != first,
             message="the new version")


def test_the_directory_deleted_and_recreated(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(loaded(node, "a"))
    shutil.rmtree(ws.conf)
    wait_for(lambda: (d.record() or {}).get("last_pass", {}).get("result") == "blocked",
             message="a blocked pass")
    assert "a" in names(node)  # a missing directory never unloads anything
    ws.conf.mkdir()
    ws.config("b.json5", name="b")
    ws.config("a.json5", name="a")
    wait_for(loaded(node, "a", "b"), message="the recreated directory applied")


def test_without_inotify_the_scan_still_sees_changes(ws, node, daemon, kind):
    daemon(node, "--no-watch")
    wait_for(lambda: (ws.state / "daemon.json").exists())
    ws.config("a.json5", name="a")
    wait_for(loaded(node, "a"), message="the scan to notice")
    before = len(mutating(node))
    if node.rules.keeps_old_code_at_same_path:  # a new build goes under its own path
        ws.library("a-2", b"rebuilt")
        ws.config("a.json5", name="a", lib="a-2")
    else:
        ws.library("a", b"rebuilt")
    wait_for(lambda: len(mutating(node)) >= before + len(replace_calls(node)),
             message="the library rebuild")


def test_sighup_runs_a_pass_now(ws, node, daemon, kind):
    d = daemon(node, "--no-watch", "--probe-interval", "3600")
    wait_for(lambda: (ws.state / "daemon.json").exists())
    ws.config("a.json5", name="a")
    d.signal(signal.SIGHUP)
    wait_for(loaded(node, "a"), timeout=5)
    # daemon.json is rewritten when the pass ends, a moment after the load
    wait_for(lambda: d.record()["last_pass"]["trigger"] == "sighup", message="the record")


# -- the node misbehaving ----------------------------------------------------------------
def test_a_node_restart_is_noticed_and_repaired(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    ws.config("b.json5", name="b")
    daemon(node)
    wait_for(loaded(node, "a", "b"))
    loads = node.calls("load", ok_only=True)
    node.restart()  # forgets a and b (the daemon may put them back before we look)
    wait_for(lambda: loaded(node, "a", "b")() and
             node.calls("load", ok_only=True) == loads + 2,
             message="re-converged after the restart")


def test_a_hand_unload_is_put_back(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(loaded(node, "a"))
    node.unload_by_hand("a")
    wait_for(loaded(node, "a"), message="put back")
    assert "missing from the node" in d.log


def test_a_node_down_at_start_is_waited_for(ws, make_node, daemon, kind):
    ws.config("a.json5", name="a")
    node = make_node()
    node.stop()
    d = daemon(node)
    wait_for(lambda: (d.record() or {}).get("last_pass", {}).get("result") == "error",
             message="a failed pass")
    record = d.record()
    assert "retrying in" in record["summary"] and record["next_retry_at"] is not None
    assert record["node_up"] is False
    node.start()  # at the same address (port or socket path) as before
    wait_for(loaded(node, "a"), message="converged once the node is up")
    assert d.proc.poll() is None


def test_a_broken_file_unloads_nothing(ws, node, daemon, kind):
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(loaded(node, "a"))
    (ws.conf / "a.json5").write_text('{libpath: "../libs/liba.so", name: ')
    wait_for(lambda: (d.record() or {}).get("last_pass", {}).get("result") == "invalid",
             message="the invalid file noticed")
    assert "a" in names(node)
    assert [m for m in mutating(node) if m[0] in ("unload", "reload")] == []
    plugins = {p["name"]: p for p in d.record()["plugins"]}
    assert plugins["a"]["state"] == "invalid"


def test_a_load_that_keeps_failing_stalls_until_the_library_changes(ws, node, daemon, cli, kind):
    ws.library("bad", b"slipstream:on-load-fails")
    ws.config("bad.json5", name="bad", lib="bad")
    d = daemon(node, "--max-backoff", "0.2")
    wait_for(lambda: (d.record() or {}).get("holds"), timeout=30, message="stalled")
    assert node.calls("load") == 5
    status = cli("status", "-o", "json", node=node)
    assert {p["name"]: p["state"] for p in status.json["plugins"]}["bad"] == "stalled"
    assert "5 tries" in {p["name"]: p["detail"] for p in status.json["plugins"]}["bad"]
    if node.rules.keeps_old_code_at_same_path:  # the node keeps the bad build in memory
        ws.library("bad-2", b"fixed")
        ws.config("bad.json5", name="bad", lib="bad-2")
    else:
        ws.library("bad", b"fixed")
    wait_for(loaded(node, "bad"), message="retried after the rebuild")


# -- life cycle, systemd, observability -----------------------------------------------------
def test_sigterm_exits_0_promptly(ws, node, daemon):
    d = daemon(node)
    wait_for(lambda: (ws.state / "daemon.json").exists())
    start = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 5
    assert "stopping" in d.log


def test_sd_notify_ready_status_watchdog_stopping(ws, node, daemon, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    messages: list[str] = []
    d = daemon(node, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})

    def receive_until(fragment: str) -> None:
        while not any(fragment in m for m in messages):
            messages.append(sock.recv(4096).decode())

    receive_until("READY=1")
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=in sync" in ready
    receive_until("WATCHDOG=1")
    d.signal(signal.SIGTERM)
    receive_until("STOPPING=1")
    sock.close()


def test_metrics_and_healthz(ws, node, daemon):
    ws.config("a.json5", name="a")
    d = daemon(node)
    wait_for(loaded(node, "a"))
    base = d.metrics_url()
    assert requests.get(base + "/healthz", timeout=5).status_code == 200
    text = wait_for(lambda: (t := requests.get(base + "/metrics", timeout=5).text)
                    and 'slipstream_reconciler_plugins{state="in-sync"} 1.0' in t and t,
                    message="metrics after the pass")
    for metric in ("slipstream_reconciler_passes_total", "slipstream_reconciler_node_up 1.0",
                   "slipstream_reconciler_pass_duration_seconds_bucket",
                   "slipstream_reconciler_event_to_applied_seconds_bucket",
                   'slipstream_reconciler_http_requests_total{method="POST",status="200"}',
                   "slipstream_reconciler_last_successful_pass_timestamp_seconds"):
        assert metric in text
    ws.config("b.json5", name="b")
    wait_for(lambda: "slipstream_reconciler_event_to_applied_seconds_count 1.0" in
             requests.get(base + "/metrics", timeout=5).text, message="event-to-applied")


def test_status_shows_the_daemon(ws, node, daemon, cli, kind):
    daemon(node)
    wait_for(lambda: (ws.state / "daemon.json").exists())
    text = cli("status", node=node).out
    assert re.search(r"daemon: last pass \d+ s ago, ok", text)


def test_an_apply_while_the_daemon_runs_is_safe(ws, node, daemon, cli, kind):
    for i in range(5):
        ws.config(f"p{i}.json5", name=f"p{i}")
    daemon(node)
    result = cli("apply", node=node)
    assert result.code == 0, result.err
    wait_for(loaded(node, *[f"p{i}" for i in range(5)]))
    assert cli("plan", "--detailed-exitcode", node=node).code == 0


def test_journald_lines_carry_no_timestamp_and_json_logs_parse(ws, node, daemon):
    ws.config("a.json5", name="a")
    d = daemon(node, env={"JOURNAL_STREAM": "8:1234"})
    wait_for(lambda: any("loaded as a" in line for line in d.lines))
    line = next(line for line in d.lines if "loaded as a" in line)
    assert line.startswith("INFO load a")
    d.stop()
    os.remove(ws.conf / "a.json5")
    ws.config("b.json5", name="b")
    j = daemon(node, "--log-format", "json", "--allow-empty")
    wait_for(lambda: any('"loaded as b"' in line or "loaded as b" in line for line in j.lines))
    records = [json.loads(line) for line in j.lines if line.startswith("{")]
    assert any(r["msg"].endswith("loaded as b") and r["level"] == "info" for r in records)


def test_secrets_stay_out_of_the_daemon_log(ws, node, daemon, kind):
    ws.config("a.json5", name="a", extra='dsn: "postgres://u:hunter2-s3cret@h/db"')
    d = daemon(node, "--log-level", "debug")
    wait_for(loaded(node, "a"))
    d.stop()
    assert "hunter2-s3cret" not in d.log
    if kind == "snarkos":
        assert node.token not in d.log
    assert "hunter2-s3cret" not in (ws.state / "daemon.json").read_text()


# -- systemd's interface, the parts a real systemd cannot show here ------------------------
def test_extend_timeout_is_sent_during_the_first_pass_and_not_after(ws, make_node, daemon,
                                                                    tmp_path):
    node = make_node(rest_rps=4)
    for i in range(12):
        ws.config(f"p{i:02d}.json5", name=f"p{i:02d}")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    # 12 loads at 4 req/s: a first pass of about 3 s, over a start timeout's extension ticks
    daemon(node, env={"NOTIFY_SOCKET": path, "SLIPSTREAM_MAX_RPS": "4"})
    messages: list[str] = []
    while not any("READY=1" in m for m in messages):
        messages.append(sock.recv(4096).decode())
    ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in messages[:ready_at]), messages
    sock.settimeout(1.5)
    later: list[str] = []
    try:
        while True:
            later.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in later), later
    sock.close()


def test_reload_returns_after_a_pass_that_started_after_it(ws, node, daemon):
    d = daemon(node, "--no-watch", "--probe-interval", "3600")
    wait_for(lambda: d.record() is not None, message="the first pass")
    ws.config("a.json5", name="a")
    asked = time.time()
    done = subprocess.run([str(SCRIPT), "reload", "--pid", str(d.proc.pid), "--state-dir",
                           str(ws.state)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "a" in names(node)  # the pass had run when reload returned
    record = d.record()
    assert record["last_pass"]["started_at"] >= asked and record["passes"] >= 2
    assert done.stdout.strip().startswith(f"pass {record['passes']}: in sync")


def test_reload_without_a_daemon_is_an_error(ws, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = subprocess.run([str(SCRIPT), "reload", "--pid", str(gone.pid), "--state-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "cannot signal the daemon" in done.stderr


@pytest.mark.parametrize("env, args", [
    ({"SLIPSTREAM_NETWORK": "moonnet"}, ()),
    ({"SLIPSTREAM_TIMEOUT": "soon"}, ()),  # click parses the variable itself
    ({}, ("--log-level", "loud")),
])
def test_run_exits_78_on_settings_errors_so_systemd_does_not_retry(ws, node, daemon, env,
                                                                   args):
    d = daemon(node, *args, env=env)
    assert d.proc.wait(timeout=30) == 78, d.log
    assert "Traceback" not in d.log


def test_other_commands_keep_exit_1_for_settings_errors(cli):
    assert cli("status", env={"SLIPSTREAM_NETWORK": "moonnet"}).code == 1


def test_the_token_file_warning_is_printed_once_and_says_the_fix(ws, node, daemon):
    node.token_file.chmod(0o644)  # what a real node writes
    d = daemon(node)
    wait_for(lambda: d.record() is not None, message="the first pass")
    time.sleep(0.5)  # the probe's client is made by then too
    warnings = [line for line in d.lines if "readable by group or others" in line]
    assert len(warnings) == 1, warnings
    assert f"chmod 600 {node.token_file}" in warnings[0]
    assert "keeps that mode" in warnings[0]
