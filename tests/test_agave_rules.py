"""An Agave validator's rules at the edges, against the reference node in Agave mode over
its real admin socket: a replace is one reloadPlugin and never ends with nothing loaded
while the old config works, a Yellowstone-style rename is one replace, a library rebuilt
in place is held with the advice, and a crash in the middle of a reload converges."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.apply import Reconciler
from reconciler.cli import Output, _validate_report
from reconciler.ledgerstore import LedgerStore
from reconciler.plan import Replace, statuses
from reconciler.refnode.agave import AgaveFaults, AgaveNode, AgaveOptions
from reconciler.settings import Settings
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Host:
    """A validator host: its ledger (admin.rpc), our config and state directories, and a
    folder of simulated libraries (plain files the reference node dlopens)."""

    root: Path
    node: AgaveNode

    @property
    def conf(self) -> Path:
        return self.root / "plugins.d"

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def settings(self) -> Settings:
        return Settings(config_dir=self.conf, state_dir=self.state, node_kind="agave",
                        ledger=self.node.options.ledger)

    def library(self, filename: str, *markers: str) -> Path:
        path = self.libs / filename
        path.write_text("\x7fELF placeholder\n" + "".join(m + "\n" for m in markers))
        return path

    def config(self, filename: str, text: str) -> Path:
        path = self.conf / filename
        path.write_text(text)
        return path

    def apply(self):  # -> PassResult
        with Reconciler(self.settings) as reconciler:
            return reconciler.run_pass()

    def plan(self):  # -> Plan
        with Reconciler(self.settings) as reconciler:
            return reconciler.plan()[0]

    def ledger(self):  # -> Ledger
        return LedgerStore(self.state).load()

    def calls(self, since: int = 0) -> list[str]:
        return [r.method for r in list(self.node.requests)[since:] if r.method != "listPlugins"]


@pytest.fixture
def host() -> Iterator[Host]:
    # a Unix socket's path is at most 107 bytes: pytest's tmp_path can be longer
    root = Path(tempfile.mkdtemp(prefix="agr", dir="/tmp"))
    for folder in ("plugins.d", "libs"):
        (root / folder).mkdir()
    node = AgaveNode(AgaveOptions(ledger=root / "ledger", always_enabled=True,
                                  faults=AgaveFaults())).start()
    try:
        yield Host(root, node)
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_changed_config_is_replaced_by_one_reload(host):
    host.library("libpg.so")
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg", pool: 4}')
    assert host.apply().converged and host.node.manager.names() == ["pg"]
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg", pool: 8}')
    before = len(host.node.requests)
    result = host.apply()
    assert [o.ok for o in result.outcomes] == [True] and result.converged
    assert host.calls(before) == ["reloadPlugin"]  # not an unload and a load
    (call,) = [r for r in list(host.node.requests)[before:] if r.method == "reloadPlugin"]
    assert call.params == ("pg", str(host.conf / "pg.json5"))
    entry = host.ledger().entries["pg"]
    assert entry.config_sha256 == result.desired.plugins[0].config_sha256
    assert host.plan().changes == ()


def test_a_reload_whose_new_config_fails_leaves_the_old_plugin_running(host):
    host.library("libpg-1.so")
    host.library("libpg-2.so", "slipstream:on-load-fails")
    host.config("pg.json5", '{libpath: "../libs/libpg-1.so", name: "pg"}')
    host.apply()
    host.config("pg.json5", '{libpath: "../libs/libpg-2.so", name: "pg"}')
    before = len(host.node.requests)
    result = host.apply()
    (outcome,) = result.outcomes
    assert not outcome.ok and "rolled back: the previous config runs again" in outcome.message
    assert "Failed to start new plugin (previous plugin was dropped!)" in outcome.message
    # the node unloaded first and the new config failed; the kept copy is loaded again
    assert host.calls(before) == ["reloadPlugin", "loadPlugin"]
    (rollback,) = [r for r in list(host.node.requests)[before:] if r.method == "loadPlugin"]
    assert rollback.params[0].startswith(str(host.state)) and rollback.outcome == "ok"
    assert host.node.manager.names() == ["pg"]
    (running,) = host.node.manager.plugins()
    assert os.path.normpath(running.library.path) == str(host.libs / "libpg-1.so")
    failed = host.ledger().entries["pg"].failed_replace
    assert failed is not None and "previous plugin was dropped" in failed.reason
    # not retried until the file or the library changes; status says failed-replace
    the_plan = host.plan()
    assert the_plan.changes == () and [h.state for h in the_plan.held] == ["failed-replace"]
    assert [r.state for r in statuses(the_plan)] == ["failed-replace"]


def test_a_yellowstone_upgrade_that_renames_the_plugin_is_one_replace(host):
    host.library("libyellowstone-1.0.so", "geyser:name=yellowstone-grpc-geyser-1.0",
                 "geyser:strict-json")
    host.library("libyellowstone-1.1.so", "geyser:name=yellowstone-grpc-geyser-1.1",
                 "geyser:strict-json")
    # Yellowstone forbids `name` and reads its config as strict JSON
    config = {"libpath": str(host.libs / "libyellowstone-1.0.so"),
              "grpc": {"address": "127.0.0.1:10000"}}
    host.config("yellowstone.json", json.dumps(config))
    first = host.apply()
    assert first.converged, first.outcomes
    assert host.node.manager.names() == ["yellowstone-grpc-geyser-1.0"]
    config["libpath"] = str(host.libs / "libyellowstone-1.1.so")
    host.config("yellowstone.json", json.dumps(config))
    the_plan = host.plan()
    assert [type(c) for c in the_plan.changes] == [Replace]  # not an unload and a load
    before = len(host.node.requests)
    result = host.apply()
    (outcome,) = result.outcomes
    assert outcome.ok and outcome.name == "yellowstone-grpc-geyser-1.1", outcome
    assert "now named yellowstone-grpc-geyser-1.1" in outcome.message
    assert host.calls(before) == ["reloadPlugin"]
    assert host.node.manager.names() == ["yellowstone-grpc-geyser-1.1"]
    assert list(host.ledger().entries) == ["yellowstone-grpc-geyser-1.1"]
    assert host.ledger().pending == ()
    assert host.plan().changes == ()


def test_a_library_rebuilt_in_place_is_held_with_the_advice(host):
    lib = host.library("libpg.so")
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg"}')
    host.apply()
    lib.write_text("\x7fELF rebuilt\n")  # a new build at the same path
    the_plan = host.plan()
    assert the_plan.changes == ()
    (held,) = the_plan.held
    assert held.state == "rebuilt-in-place"
    assert "Install each version under its own path" in held.reason
    assert [r.state for r in statuses(the_plan)] == ["rebuilt-in-place"]
    before = len(host.node.requests)
    assert host.apply().outcomes == ()  # nothing reloaded: it would run the old code
    assert host.calls(before) == []
    report = _validate_report(host.settings, no_library_check=False, output=Output.json)
    (warning,) = report.data["warnings"]
    assert warning["file"] == str(host.conf / "pg.json5")
    assert "rebuilt in place" in warning["message"] and str(lib) in warning["message"]
    assert report.code == 0  # a warning: the file itself is valid


def test_validate_reads_no_ledger_where_there_is_none_and_creates_nothing(host):
    host.library("libpg.so")
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg"}')
    report = _validate_report(host.settings, no_library_check=False, output=Output.json)
    assert report.code == 0 and report.data["warnings"] == []
    assert not host.state.exists()


def test_validate_warns_for_a_json_file_that_only_json5_reads(host):
    host.library("libyellowstone.so")
    host.config("yellowstone.json", '{"libpath": "../libs/libyellowstone.so", "grpc": {},}')
    report = _validate_report(host.settings, no_library_check=False, output=Output.text)
    assert report.code == 0
    text = "\n".join(report.out)
    assert f"warning: {host.conf / 'yellowstone.json'}:1:" in text
    assert "re-read their config as strict JSON" in text


CRASHING_PASS = """
import sys
from pathlib import Path
from reconciler.apply import Reconciler
from reconciler.settings import Settings
settings = Settings(config_dir=Path(sys.argv[1]), state_dir=Path(sys.argv[2]),
                    node_kind="agave", ledger=Path(sys.argv[3]))
with Reconciler(settings) as reconciler:
    reconciler.run_pass()
"""


def killed_in_the_middle_of_a_reload(host: Host, old_name: str) -> None:
    """Runs a pass in its own process and SIGKILLs it while the validator's worker is in
    the new plugin's on_load: the old plugin already unloaded, no answer sent."""
    host.node.options.faults.load_delay = 1.0
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_PASS, str(host.conf),
                             str(host.state), str(host.node.options.ledger)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: old_name not in host.node.manager.names(), timeout=30,
                 message="the reload under way")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    host.node.options.faults.load_delay = 0.0
    wait_for(lambda: host.node.manager.names() != [], timeout=30,
             message="the reload completed")


def test_a_crash_during_a_reload_converges_without_loading_twice(host):
    host.library("libpg.so")
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg", pool: 4}')
    host.apply()
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg", pool: 8}')
    killed_in_the_middle_of_a_reload(host, "pg")
    # the ledger still names the old config: the pass sees the node as it is and reloads
    # the same files once more rather than believe the new config runs
    result = host.apply()
    assert result.converged and host.node.manager.names() == ["pg"]
    assert host.ledger().entries["pg"].config_sha256 == result.desired.plugins[0].config_sha256
    assert host.ledger().pending == ()
    assert host.plan().changes == ()


def test_a_crash_during_a_renaming_reload_adopts_the_new_name(host):
    host.library("libys-1.so", "geyser:name=yellowstone-grpc-geyser-1")
    host.library("libys-2.so", "geyser:name=yellowstone-grpc-geyser-2")
    host.config("ys.json", json.dumps({"libpath": str(host.libs / "libys-1.so")}))
    host.apply()
    host.config("ys.json", json.dumps({"libpath": str(host.libs / "libys-2.so")}))
    killed_in_the_middle_of_a_reload(host, "yellowstone-grpc-geyser-1")
    assert host.node.manager.names() == ["yellowstone-grpc-geyser-2"]
    before = len(host.node.requests)
    result = host.apply()
    assert result.converged, result.outcomes
    # its load was refused as already loaded, and the running plugin adopted: one plugin
    assert [r.outcome.startswith("There already exists") for r in
            list(host.node.requests)[before:] if r.method == "loadPlugin"] == [True]
    assert host.node.manager.names() == ["yellowstone-grpc-geyser-2"]
    assert list(host.ledger().entries) == ["yellowstone-grpc-geyser-2"]
    assert host.ledger().pending == ()
    assert host.plan().changes == ()


def test_the_operator_sees_a_rebuilt_library_in_validate_plan_and_status(host):
    """The whole story through the real CLI: apply, rebuild the library in place, then
    every command says it is held and what to do."""
    from tests.conftest import SCRIPT

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env.update(SLIPSTREAM_CONFIG_DIR=str(host.conf), SLIPSTREAM_STATE_DIR=str(host.state),
               SLIPSTREAM_NODE_KIND="agave", SLIPSTREAM_LEDGER=str(host.node.options.ledger))
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    lib = host.library("libpg.so")
    host.config("pg.json5", '{libpath: "../libs/libpg.so", name: "pg"}')
    assert run("apply").returncode == 0
    lib.write_text("\x7fELF rebuilt\n")
    validate = run("validate")
    assert validate.returncode == 0, validate.stderr
    assert f"warning: {host.conf / 'pg.json5'}: the library {lib} was rebuilt in place" \
        in validate.stdout
    plan = run("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr  # nothing the node would change
    (line,) = [t for t in plan.stdout.splitlines() if "rebuilt-in-place" in t]
    assert "pg.json5" in line and "Install each version under its own path" in line
    held = json.loads(run("plan", "-o", "json").stdout)["held"]
    assert [(h["name"], h["state"]) for h in held] == [("pg", "rebuilt-in-place")]
    status = json.loads(run("status", "-o", "json").stdout)
    assert [(p["name"], p["state"]) for p in status["plugins"]] == [("pg", "rebuilt-in-place")]
    # installed under its own path, as advised: one reload, and the new code runs
    host.library("libpg-2.so")
    host.config("pg.json5", '{libpath: "../libs/libpg-2.so", name: "pg"}')
    assert run("apply").returncode == 0
    (running,) = host.node.manager.plugins()
    assert os.path.normpath(running.library.path) == str(host.libs / "libpg-2.so")
