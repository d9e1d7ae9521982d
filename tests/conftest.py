"""Shared fixtures: a real reference node on a free loopback port, a workspace of real
files, and the CLI run the way an operator runs it (the installed console script, in a
subprocess, with its own environment)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from reconciler.noderules import KINDS as KIND_RULES
from reconciler.noderules import NodeRules
from reconciler.refnode import Faults, NodeOptions, RefNode
from reconciler.refnode.agave import AgaveFaults, AgaveNode, AgaveOptions
from reconciler.settings import Settings

SCRIPT = Path(sys.executable).with_name("slipstream-reconciler")


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01,
             message: str = "condition") -> object:
    """Polls until predicate() is truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


class Workspace:
    """A config directory, a folder of placeholder libraries and a state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "plugins.d"
        self.libs = root / "libs"
        self.state = root / "state"
        self.node_data = root / "node"
        for d in (self.conf, self.libs, self.node_data):
            d.mkdir(parents=True, exist_ok=True)

    def library(self, stem: str, content: bytes = b"\x7fELF placeholder") -> Path:
        path = self.libs / f"lib{stem}.so"
        path.write_bytes(content)
        return path

    def config(self, filename: str, name: str | None = None, lib: str | None = None,
               extra: str = "", raw: str | None = None) -> Path:
        path = self.conf / filename
        if raw is None:
            stem = lib or name or filename.split(".")[0]
            if not (self.libs / f"lib{stem}.so").exists():
                self.library(stem)
            fields = [f'libpath: "../libs/lib{stem}.so"']
            if name is not None:
                fields.append(f"name: {json.dumps(name)}")
            if extra:
                fields.append(extra)
            raw = "{\n  // a plugin config\n  " + ",\n  ".join(fields) + ",\n}\n"
        path.write_text(raw)
        return path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


# -- the node under test, either kind ----------------------------------------------------
KINDS = ("snarkos", "agave")
# What each kind's request log calls a plugin change, in the operator's words.
_SNARKOS_CALLS = {"POST": "load", "DELETE": "unload", "GET": "list"}
_AGAVE_CALLS = {"loadPlugin": "load", "unloadPlugin": "unload", "reloadPlugin": "reload",
                "listPlugins": "list"}
SUN_PATH_MAX = 107  # a Unix socket path's limit: long tmp paths fall back to a short dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "snarkos_only: an operator story whose expectations are snarkOS's own "
        "(HTTP codes, JWT, --api, 429, v1 texts, --network): run against snarkOS only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that asks for `kind` (or a module that uses it) runs once per kind of node,
    unless marked snarkos_only; one that does not ask stays snarkOS, as before."""
    if "kind" in metafunc.fixturenames and \
            metafunc.definition.get_closest_marker("snarkos_only") is None:
        metafunc.parametrize("kind", KINDS, ids=KINDS)


@pytest.fixture
def kind() -> str:
    """The kind of node a story runs against; parametrized by pytest_generate_tests."""
    return "snarkos"


@dataclass(frozen=True)
class Call:
    """One plugin call the node saw: what it was (load/unload/reload/list), its argument
    (a config path or a name) and whether the node did it."""

    what: str
    argument: str
    ok: bool


class RunningNode:
    """A reference node of either kind, with what operator stories need in their words.

    Attributes it does not define are the wrapped node's (snarkOS-only tests keep using
    `url`, `token_file`, `manager`, `requests`, …)."""

    def __init__(self, kind: str, inner: RefNode | AgaveNode) -> None:
        self.kind = kind
        self.rules: NodeRules = KIND_RULES[kind]
        self.inner = inner
        self.scratch: Path | None = None  # a short ledger directory outside the test's

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    # -- what the CLI and the daemon are told ----------------------------------------------
    def env(self) -> dict[str, str]:
        """The SLIPSTREAM_* variables that point the CLI or the daemon at this node."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return {"SLIPSTREAM_NODE_KIND": "agave",
                    "SLIPSTREAM_LEDGER": str(inner.options.ledger)}
        env = {"SLIPSTREAM_NODE_URL": inner.url,
               "SLIPSTREAM_MAX_RPS": str(inner.options.rest_rps or 0)}
        if inner.token_file is not None and not inner.options.nojwt:
            env["SLIPSTREAM_JWT_TOKEN_FILE"] = str(inner.token_file)
        return env

    def target(self) -> dict[str, str]:
        """This node's address in a --targets entry."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return {"node_kind": "agave", "ledger": str(inner.options.ledger)}
        entry = {"node_url": inner.url}
        if inner.token_file is not None and not inner.options.nojwt:
            entry["jwt_token_file"] = str(inner.token_file)
        return entry

    def settings(self, config_dir: Path, state_dir: Path) -> Settings:
        """Settings for an in-process daemon or pass against this node."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return Settings(config_dir, state_dir=state_dir, node_kind="agave",
                            ledger=inner.options.ledger, max_rps=0)
        return Settings(config_dir, inner.url, jwt_token_file=inner.token_file,
                        state_dir=state_dir, max_rps=0)

    @property
    def shown(self) -> str:
        """How plan/status name this node: its URL, or its admin socket's path."""
        inner = self.inner
        return str(inner.socket_path) if isinstance(inner, AgaveNode) else inner.url

    # -- the node's plugins --------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self.inner.options.faults

    def names(self) -> list[str]:
        manager = self.inner.manager
        return [] if manager is None else manager.names()

    def load_by_hand(self, config_file: str | Path) -> str:
        """What an operator does with curl or `agave-validator plugin load`."""
        assert self.inner.manager is not None, "the node has no plugin manager"
        return self.inner.manager.load(str(config_file))

    def unload_by_hand(self, name: str) -> None:
        assert self.inner.manager is not None, "the node has no plugin manager"
        self.inner.manager.unload(name)

    def restart(self) -> None:
        self.inner.restart()

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    # -- what the node was asked -------------------------------------------------------------
    def log(self) -> list[Call]:
        """Every plugin call in the node's request log, in order, whatever the protocol."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return [Call(_AGAVE_CALLS[c.method], c.params[0] if c.params else "",
                         c.outcome == "ok")
                    for c in list(inner.requests) if c.method in _AGAVE_CALLS]
        return [Call(_SNARKOS_CALLS[r.method],
                     r.path.rsplit("/", 1)[-1] if r.method == "DELETE" else r.body,
                     r.status == 200)
                for r in list(inner.requests) if r.method in _SNARKOS_CALLS]

    def injected_faults(self) -> int:
        """Calls that failed by the faults we injected (an error answer or a dropped
        connection), as opposed to the node's verdict on a plugin."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return sum(1 for c in list(inner.requests) if c.outcome in ("injected", "dropped"))
        return sum(1 for r in list(inner.requests) if r.status in (0, 500))

    def changes(self) -> list[Call]:
        """The calls that change plugins (loads, unloads, reloads), in order."""
        return [c for c in self.log() if c.what != "list"]

    def calls(self, what: str, ok_only: bool = False) -> int:
        """How many load/unload/reload/list calls the node got (ok_only: that it did)."""
        return sum(1 for c in self.log() if c.what == what and (c.ok or not ok_only))

    def loaded_from(self) -> list[str]:
        """The config file each load or reload asked for, in order."""
        inner = self.inner
        if isinstance(inner, AgaveNode):
            return [c.params[-1] for c in list(inner.requests)
                    if c.method in ("loadPlugin", "reloadPlugin") and c.params]
        return [json.loads(r.body)["config_file"] for r in list(inner.requests)
                if r.method == "POST" and r.body.startswith("{")]


def _ledger_dir(ws: Workspace, tag: str) -> Path:
    """The validator's ledger directory; a short one when the test's path would make the
    admin socket's path too long for a Unix socket."""
    ledger = ws.root / tag
    if len(os.fsencode(str(ledger / "admin.rpc"))) <= SUN_PATH_MAX:
        return ledger
    return Path(tempfile.mkdtemp(prefix="ledger-"))


def _agave_faults(faults: Faults | None) -> AgaveFaults:
    if faults is None:
        return AgaveFaults()
    if isinstance(faults, AgaveFaults):
        return faults
    return AgaveFaults(**{f.name: getattr(faults, f.name) for f in fields(Faults)})


def start_node(ws: Workspace, kind: str = "snarkos", startup: list[str] | None = None,
               tag: str = "ledger", **options: Any) -> RunningNode:
    """A reference node of `kind` with the start-up plugin 'startup' unless told
    otherwise. snarkOS options (rest_rps, api_v2, …) apply to snarkOS only; faults,
    always_enabled and data_dir (snarkOS) / ledger (Agave) to their kinds."""
    if startup is None:
        boot = ws.root / "boot"
        boot.mkdir(exist_ok=True)
        (boot / "libstartup.so").write_bytes(b"startup")
        (boot / "startup.json5").write_text('{libpath: "libstartup.so"}')
        startup = [str(boot / "startup.json5")]
    if kind == "agave":
        ledger = Path(options.pop("ledger", None) or _ledger_dir(ws, tag))
        agave = AgaveOptions(ledger=ledger, geyser_plugin_configs=startup,
                             always_enabled=options.pop("always_enabled", False),
                             faults=_agave_faults(options.pop("faults", None)))
        options.pop("data_dir", None)
        assert not options, f"options a snarkOS node only has: {sorted(options)}"
        node = RunningNode(kind, AgaveNode(agave).start())
        if not ledger.is_relative_to(ws.root):
            node.scratch = ledger
        return node
    options.setdefault("data_dir", ws.node_data)
    options.setdefault("rest_rps", 0)
    return RunningNode(kind, RefNode(NodeOptions(port=0, slipstream_configs=startup,
                                                 **options)).start())


@pytest.fixture
def short() -> Iterator[Path]:
    """A short folder: a Unix socket's path must fit in 108 bytes, and pytest's are long."""
    path = Path(tempfile.mkdtemp(prefix="ag", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_agave(short: Path) -> Iterator[Callable[..., AgaveNode]]:
    """Agave reference validators on `short/ledger`, for the protocol's own tests; the
    operator stories use `make_node(kind="agave")`."""
    nodes: list[AgaveNode] = []

    def make(startup: list[Path] | None = None, always: bool = True,
             **faults: float | bool) -> AgaveNode:
        node = AgaveNode(AgaveOptions(
            ledger=short / "ledger", geyser_plugin_configs=[str(p) for p in startup or []],
            always_enabled=always, faults=AgaveFaults(**faults))).start()  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.options.faults.hang = False  # a hung worker would hold stop() up
        node.stop()


@pytest.fixture
def make_node(ws: Workspace, request: pytest.FixtureRequest
              ) -> Iterator[Callable[..., RunningNode]]:
    """make_node(kind=…, startup=[…], **options): a running node, stopped at the end. The
    kind defaults to the test's `kind` when it has one (a story), else snarkOS."""
    nodes: list[RunningNode] = []
    default = request.getfixturevalue("kind") if "kind" in request.fixturenames \
        else "snarkos"

    def make(startup: list[str] | None = None, kind: str | None = None,
             **options: Any) -> RunningNode:
        node = start_node(ws, kind or default, startup, tag=f"ledger{len(nodes) or ''}",
                          **options)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()
        if node.scratch is not None:
            shutil.rmtree(node.scratch, ignore_errors=True)


@pytest.fixture
def node(make_node) -> RunningNode:
    """A node with one start-up plugin ('startup'); snarkOS: auth on, rate limit off."""
    return make_node()


def node_env(node: RunningNode | RefNode | None) -> dict[str, str]:
    if node is None:
        return {}
    if isinstance(node, RefNode):
        return RunningNode("snarkos", node).env()
    return node.env()


@pytest.fixture
def cli(ws: Workspace) -> Callable[..., Result]:
    def run(*args: str, node: RunningNode | RefNode | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        environment["SLIPSTREAM_CONFIG_DIR"] = str(ws.conf)
        environment["SLIPSTREAM_STATE_DIR"] = str(ws.state)
        environment.update(node_env(node))
        environment.update(env or {})
        command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
        done = subprocess.run(command + list(args), capture_output=True, text=True,
                              env=environment, timeout=timeout, stdin=subprocess.DEVNULL)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "examples"


def copy_examples(src: Path, ws: Workspace) -> None:
    for item in src.iterdir():
        if item.is_file():
            shutil.copy(item, ws.conf / item.name)


# -- the daemon, as a real process ------------------------------------------------------
FAST = ["--debounce", "0.05", "--max-wait", "0.5", "--probe-interval", "0.2",
        "--resync-interval", "30", "--max-backoff", "1"]


COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]


class Process:
    """A real process with its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._reader.join(timeout=2)


class DaemonProcess(Process):
    """`slipstream-reconciler run` against a reference node, with fast timings."""

    def __init__(self, ws, node, args=(), env=None, node_url=None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        environment.update({
            "SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_STATE_DIR": str(ws.state),
            "SLIPSTREAM_METRICS_ADDRESS": "127.0.0.1:0",
        })
        if node is None:  # a node that never answers: its token file may not exist yet
            environment.update({"SLIPSTREAM_MAX_RPS": "0", "SLIPSTREAM_JWT_TOKEN_FILE":
                                str(ws.node_data / "token.txt")})
        else:
            environment.update(node_env(node))
            if "SLIPSTREAM_NODE_URL" in environment:  # snarkOS: our pace off unless told
                environment["SLIPSTREAM_MAX_RPS"] = "0"
        if node_url is not None:
            environment["SLIPSTREAM_NODE_URL"] = node_url
        environment.update(env or {})
        super().__init__([*COMMAND, "run", *FAST, *args], environment)
        self.state = ws.state

    def metrics_url(self) -> str:
        found = wait_for(lambda: re.search(r"metrics on (http://\S+)/metrics", self.log),
                         message="the metrics address in the log")
        return found.group(1)

    def record(self) -> dict | None:
        try:
            return json.loads((self.state / "daemon.json").read_text())
        except (OSError, ValueError):
            return None



@pytest.fixture
def daemon(ws):
    started: list[DaemonProcess] = []

    def start(node, *args, **kw) -> DaemonProcess:
        d = DaemonProcess(ws, node, args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
