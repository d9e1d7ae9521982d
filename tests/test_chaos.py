"""The whole system under random edits and node faults, the daemon running throughout.

A hypothesis state machine applies random file operations (create, edit in place, atomic
replace, delete, rename, break, fix, rebuild the library, chmod), node restarts and
windows of injected faults (500s and dropped connections). After every step it waits,
with a deadline, for the quiet state and checks:
- the node runs exactly the valid desired plugins, the plugins of broken files that were
  running, and the untouched unmanaged one;
- the ledger records each valid file's current bytes, and parses;
- no plugin whose file was only broken was ever unloaded (the node's request log).

It runs against both kinds of reference node (snarkOS's REST API, an Agave validator's
admin socket), one machine per kind, sharing SLIPSTREAM_CHAOS_EXAMPLES between them.
On Agave a rebuilt library goes under a new path, as the operator is told to (a library
rebuilt in place keeps its old code there until a restart, and is held).

SLIPSTREAM_CHAOS_EXAMPLES and SLIPSTREAM_CHAOS_STEPS make it long (make soak).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reconciler.ledgerstore import LedgerStore
from tests.conftest import SCRIPT, Workspace, start_node, wait_for

NAMES = ("p0", "p1", "p2", "p3", "p4")
EXAMPLES = int(os.environ.get("SLIPSTREAM_CHAOS_EXAMPLES", "3"))
# The examples budget is shared by the two kinds: CI time grows by a third, not double.
EXAMPLES_PER_KIND = max(1, math.ceil(EXAMPLES / 2))
STEPS = int(os.environ.get("SLIPSTREAM_CHAOS_STEPS", "12"))
COUNT_FILE = os.environ.get("SLIPSTREAM_CHAOS_COUNT_FILE")


@dataclass
class File:
    filename: str
    valid: bool
    running: bool  # its plugin is expected on the node
    version: int = 0
    lib: str = ""  # the library's stem: lib<lib>.so


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Chaos(RuleBasedStateMachine):
    KIND = "snarkos"

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="slipstream-chaos-"))
        os.chmod(self.root, 0o755)
        ws = Workspace(self.root)
        self.conf, self.libs, self.state = ws.conf, ws.libs, ws.state
        self.node = start_node(ws, self.KIND)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        env.update({"SLIPSTREAM_CONFIG_DIR": str(self.conf),
                    "SLIPSTREAM_STATE_DIR": str(self.state),
                    "SLIPSTREAM_METRICS_ADDRESS": "off", **self.node.env()})
        command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
        self.daemon = subprocess.Popen(
            [*command, "run", "--debounce", "0.05", "--max-wait", "0.5", "--probe-interval",
             "0.2", "--max-backoff", "0.3", "--resync-interval", "5"],
            env=env, stdout=open(self.root / "daemon.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT)
        self.files: dict[str, File] = {}
        self.broken_since: dict[str, int] = {}
        # Deleting the last config file looks like a failed mount: the brake keeps the
        # plugins (no --allow-empty) until the directory holds a config file again.
        self.kept_by_brake: set[str] = set()
        self.checks = 0

    def teardown(self) -> None:
        if COUNT_FILE:  # make soak adds up the operations it really ran
            with open(COUNT_FILE, "a") as count:
                count.write(f"{max(0, self.checks - 1)}\n")
        try:
            # A daemon still starting (Python importing) dies of SIGTERM's default action;
            # the contract "SIGTERM exits 0" holds from its first pass on. An example of
            # only quiet steps can reach the teardown before that.
            wait_for(lambda: (self.state / "daemon.json").exists() or
                     self.daemon.poll() is not None, timeout=15, message="the first pass")
            self.daemon.send_signal(signal.SIGTERM)
            assert self.daemon.wait(timeout=10) == 0
        finally:
            if self.daemon.poll() is None:
                self.daemon.kill()
                self.daemon.wait(timeout=10)
            self.node.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.conf / self.files[name].filename

    def content(self, name: str) -> str:
        f = self.files[name]
        f.version += 1
        return f'{{libpath: "../libs/lib{f.lib}.so", name: "{name}", v: {f.version}}}'

    def write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def names_with(self, valid: bool) -> list[str]:
        return sorted(n for n, f in self.files.items() if f.valid is valid)

    # -- file operations ------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES))
    def create(self, name: str) -> None:
        if name in self.files:
            return
        (self.libs / f"lib{name}.so").write_bytes(f"library {name}".encode())
        self.files[name] = File(f"{name}.json5", True, True, lib=name)
        self.kept_by_brake.discard(name)
        self.write_atomic(self.path(name), self.content(name))

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data())
    def edit_in_place(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(True)))
        text = self.content(name)
        with open(self.path(name), "w") as handle:  # truncate, then write in two chunks
            handle.write(text[:10])
            handle.flush()
            handle.write(text[10:])

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data())
    def atomic_replace(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(True)))
        self.write_atomic(self.path(name), self.content(name))

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        os.remove(self.path(name))
        running = self.files.pop(name).running
        self.broken_since.pop(name, None)
        if not self.files and running:
            self.kept_by_brake.add(name)

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data())
    def rename(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(True)))
        old = self.path(name)
        f = self.files[name]
        f.filename = f"{name}-moved.json5" if f.filename == f"{name}.json5" else f"{name}.json5"
        os.rename(old, self.path(name))

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data())
    def break_file(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(True)))
        self.write_atomic(self.path(name), '{libpath: "../libs/lib' + name + '.so", name: ')
        self.files[name].valid = False
        self.broken_since.setdefault(name, len(self.node.log()))

    @precondition(lambda self: self.names_with(False))
    @rule(data=st.data())
    def fix_file(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(False)))
        self.files[name].valid = self.files[name].running = True
        self.write_atomic(self.path(name), self.content(name))
        self.broken_since.pop(name, None)

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data())
    def rebuild_library(self, data) -> None:
        name = data.draw(st.sampled_from(self.names_with(True)))
        f = self.files[name]
        f.version += 1
        build = f"library {name} build {f.version}".encode()
        if self.node.rules.keeps_old_code_at_same_path:  # each build under its own path
            f.lib = f"{name}-b{f.version}"
            (self.libs / f"lib{f.lib}.so").write_bytes(build)
            self.write_atomic(self.path(name), self.content(name))
        else:
            (self.libs / f"lib{f.lib}.so").write_bytes(build)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def chmod_group_writable(self, data) -> None:
        path = self.path(data.draw(st.sampled_from(sorted(self.files))))
        path.chmod(path.stat().st_mode ^ 0o020)  # a warning, never a change of plugins

    # -- the node ---------------------------------------------------------------------
    @rule()
    def restart_node(self) -> None:
        self.node.restart()
        self.kept_by_brake.clear()  # the node forgot them; with no file they stay gone
        for f in self.files.values():
            if not f.valid:
                f.running = False  # a broken file cannot be loaded again; it stays protected

    @precondition(lambda self: self.names_with(True))
    @rule(data=st.data(), errors=st.floats(0.1, 0.4), drops=st.floats(0.0, 0.2))
    def edit_during_faults(self, data, errors: float, drops: float) -> None:
        faults = self.node.faults
        faults.error_rate, faults.drop_rate = errors, drops
        try:
            self.atomic_replace(data)
            wait_for(lambda: self.node.injected_faults() or self.converged(), timeout=10,
                     message="a pass under faults")
        finally:
            faults.error_rate = faults.drop_rate = 0.0

    # -- what must hold -----------------------------------------------------------------
    def expected(self) -> set[str]:
        if self.files:
            self.kept_by_brake.clear()  # the brake lets go once a file is back
        return {n for n, f in self.files.items() if f.running} | self.kept_by_brake | {
            "startup"}

    def converged(self) -> bool:
        if set(self.node.names()) != self.expected():
            return False
        entries = LedgerStore(self.state).load().entries
        for name, f in self.files.items():
            if f.valid:
                entry = entries.get(name)
                path = self.path(name)
                if entry is None or entry.config_sha256 != sha(path) or \
                        entry.config_file != str(path):
                    return False
        return True

    @invariant()
    def settles_and_never_unloads_a_broken_files_plugin(self) -> None:
        self.checks += 1  # once at the start, then once after every operation
        try:
            wait_for(self.converged, timeout=15, interval=0.02, message="the quiet state")
        except AssertionError:
            log = (self.root / "daemon.log").read_text().splitlines()[-25:]
            raise AssertionError(f"node has {sorted(self.node.names())}, expected "
                                 f"{sorted(self.expected())}; the daemon's last lines:\n"
                                 + "\n".join(log)) from None
        calls = self.node.log()
        for name, since in self.broken_since.items():
            unloads = [c for c in calls[since:] if c.what in ("unload", "reload")
                       and c.argument == name and c.ok]
            assert unloads == [], f"{name} was unloaded while its file was only broken"
        assert self.daemon.poll() is None, "the daemon exited"


class AgaveChaos(Chaos):
    KIND = "agave"


# Each example runs a daemon for real, so shrinking a failure is slow: the failing steps
# are printed as they are; SLIPSTREAM_CHAOS_SHRINK=1 shrinks them.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [Phase.shrink] if os.environ.get("SLIPSTREAM_CHAOS_SHRINK") else [])
SETTINGS = settings(max_examples=EXAMPLES_PER_KIND, stateful_step_count=STEPS, deadline=None,
                    suppress_health_check=list(HealthCheck), phases=PHASES)
TestChaos = Chaos.TestCase  # snarkOS
TestChaos.settings = SETTINGS
TestChaosAgave = AgaveChaos.TestCase
TestChaosAgave.settings = SETTINGS
