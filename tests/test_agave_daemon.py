"""The daemon against an Agave validator (the reference node's Agave mode as a real
process): a restart is noticed as the admin socket is replaced and reconverged at once,
without a probe; a validator that cannot be managed, a missing socket and a hung worker
are each one log line, and nothing is unloaded because of them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.agaveclient import AgaveClient

from .conftest import COMMAND, Process, Workspace, wait_for

# Nothing but the socket watch may wake a pass in these tests: no probe, no resync, and a
# retry after a failure only after an hour.
SLOW = ["--debounce", "0.05", "--max-wait", "0.5", "--probe-interval", "3600",
        "--resync-interval", "3600", "--max-backoff", "3600"]


@pytest.fixture
def ledger() -> Iterator[Path]:
    """A short path: a Unix socket path must fit in 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix="agd", dir="/tmp"))
    yield root / "ledger"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def procs() -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Process:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        environment.update(env or {})
        process = Process(args, environment)
        started.append(process)
        return process

    yield start
    for process in reversed(started):  # the daemon first, then its node
        process.stop()


def start_validator(procs, ledger: Path, *flags: str) -> Process:
    node = procs([*COMMAND, "node", "--kind", "agave", "--ledger", str(ledger), *flags])
    wait_for(lambda: "reference node listening on" in node.log, message="the validator")
    return node


def start_daemon(procs, ws: Workspace, ledger: Path, *args: str) -> Process:
    return procs([*COMMAND, "run", *SLOW, *args], env={
        "SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_STATE_DIR": str(ws.state),
        "SLIPSTREAM_NODE_KIND": "agave", "SLIPSTREAM_LEDGER": str(ledger),
        "SLIPSTREAM_METRICS_ADDRESS": "127.0.0.1:0"})


def record(ws: Workspace) -> dict:
    try:
        return json.loads((ws.state / "daemon.json").read_text())
    except (OSError, ValueError):
        return {}


def listed(ledger: Path) -> list[str] | None:
    client = AgaveClient(ledger / "admin.rpc", 2.0)
    try:
        return client.list()
    except Exception:
        return None
    finally:
        client.close()


def test_a_restart_is_reconverged_when_the_socket_is_replaced_not_at_the_next_probe(
        ws, ledger, procs) -> None:
    ws.config("alpha.json5", name="alpha")
    ws.config("beta.json5", name="beta")
    node = start_validator(procs, ledger, "--geyser-plugin-always-enabled")
    daemon = start_daemon(procs, ws, ledger)
    wait_for(lambda: listed(ledger) == ["alpha", "beta"]
             and record(ws).get("summary", "").startswith("in sync: 2"),
             message="the first pass's loads, recorded")
    first = os.stat(ledger / "admin.rpc")
    passes = record(ws)["passes"]

    node.proc.send_signal(signal.SIGUSR1)  # the validator restarts: run-time plugins gone

    def replaced() -> bool:
        try:
            again = os.stat(ledger / "admin.rpc")
        except OSError:
            return False
        return (again.st_ino, again.st_ctime_ns) != (first.st_ino, first.st_ctime_ns)

    wait_for(replaced, message="the socket replaced")
    wait_for(lambda: listed(ledger) == ["alpha", "beta"] and record(ws)["passes"] > passes
             and record(ws)["summary"].startswith("in sync: 2"),
             timeout=15, message="the plugins loaded again after the restart")
    last = record(ws)["last_pass"]
    assert "node restarted" in last["reasons"], last
    assert "was replaced: the node restarted" in daemon.log
    assert record(ws)["node"] == str(ledger / "admin.rpc")
    assert record(ws)["node_kind"] == "agave"


def test_a_validator_without_a_plugin_service_is_unsupported_until_it_restarts_with_one(
        ws, ledger, procs) -> None:
    ws.config("alpha.json5", name="alpha")
    node = start_validator(procs, ledger)  # neither --geyser-plugin-config nor always-enabled
    daemon = start_daemon(procs, ws, ledger)
    state = wait_for(lambda: (r := record(ws)) and r.get("summary", "").startswith(
        "unsupported:") and r, message="the unsupported state")
    assert state["node_kind"] == "agave-no-geyser-service"
    assert "--geyser-plugin-always-enabled" in state["summary"]
    assert daemon.log.count("has no Geyser plugin service") == 1

    node.stop()  # restarted by its operator, now with the plugin service
    start_validator(procs, ledger, "--geyser-plugin-always-enabled")
    # --max-backoff is an hour: only the socket watch can bring this pass.
    wait_for(lambda: listed(ledger) == ["alpha"] and record(ws).get("node_kind") == "agave",
             timeout=15, message="the load after the restart with a plugin service")


def test_a_missing_socket_then_a_validator_that_starts(ws, ledger, procs) -> None:
    ws.config("alpha.json5", name="alpha")
    ledger.mkdir(parents=True)
    daemon = start_daemon(procs, ws, ledger)
    wait_for(lambda: "no validator is listening on" in record(ws).get("summary", ""),
             message="the missing socket in the summary")
    assert daemon.log.count("no validator is listening on") == 2  # node unavailable, pass failed
    start_validator(procs, ledger, "--geyser-plugin-always-enabled")
    wait_for(lambda: listed(ledger) == ["alpha"], timeout=15,
             message="the load once the validator listens")


def test_a_hung_worker_unloads_nothing_and_is_said_once(ws, ledger, procs) -> None:
    ws.config("alpha.json5", name="alpha")
    boot = ws.root / "boot"
    boot.mkdir()
    (boot / "libstartup.so").write_text("startup\n")
    (boot / "startup.json5").write_text('{libpath: "libstartup.so", name: "startup"}')
    start_validator(procs, ledger, "--geyser-plugin-config", str(boot / "startup.json5"),
                    "--fault-hang")
    daemon = start_daemon(procs, ws, ledger, "--timeout", "0.3", "--max-backoff", "0.5",
                          "--prune", "all")
    wait_for(lambda: record(ws).get("passes", 0) >= 4, timeout=20, message="several passes")
    summary = record(ws)["summary"]
    assert "did not answer listPlugins within 0.3 s" in summary
    assert daemon.log.count("pass failed") == 1
    assert "unloadPlugin" not in daemon.log


def test_snarkos_settings_are_refused_for_an_agave_daemon(ws, ledger, procs) -> None:
    daemon = procs([*COMMAND, "run", "--node-kind", "agave", "--ledger", str(ledger),
                    "--jwt-token-file", "/nonexistent", "--max-rps", "5"],
                   env={"SLIPSTREAM_CONFIG_DIR": str(ws.conf),
                        "SLIPSTREAM_STATE_DIR": str(ws.state)})
    assert daemon.proc.wait(timeout=30) == 78
    daemon.stop()
    assert daemon.lines == [
        "error: --jwt-token-file, --max-rps do not apply to --node-kind agave: an Agave "
        "validator's admin socket (<ledger>/admin.rpc) has no URL, network, JWT, rate limit "
        "or TLS; remove them (its file mode is the only lock: run as the validator's user)"]
