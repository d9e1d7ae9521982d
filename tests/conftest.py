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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.refnode import NodeOptions, RefNode

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


@pytest.fixture
def make_node(ws: Workspace) -> Iterator[Callable[..., RefNode]]:
    nodes: list[RefNode] = []

    def make(startup: list[str] | None = None, **options) -> RefNode:
        if startup is None:
            boot = ws.root / "boot"
            boot.mkdir(exist_ok=True)
            (boot / "libstartup.so").write_bytes(b"startup")
            (boot / "startup.json5").write_text('{libpath: "libstartup.so"}')
            startup = [str(boot / "startup.json5")]
        options.setdefault("data_dir", ws.node_data)
        options.setdefault("rest_rps", 0)
        node = RefNode(NodeOptions(port=0, slipstream_configs=startup, **options)).start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(make_node) -> RefNode:
    """A node with one start-up plugin ('startup'), auth on, rate limit off."""
    return make_node()


@pytest.fixture
def cli(ws: Workspace) -> Callable[..., Result]:
    def run(*args: str, node: RefNode | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> Result:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        environment["SLIPSTREAM_CONFIG_DIR"] = str(ws.conf)
        environment["SLIPSTREAM_STATE_DIR"] = str(ws.state)
        if node is not None:
            environment["SLIPSTREAM_NODE_URL"] = node.url
            if node.token_file is not None and not node.options.nojwt:
                environment["SLIPSTREAM_JWT_TOKEN_FILE"] = str(node.token_file)
            environment["SLIPSTREAM_MAX_RPS"] = "0" if not node.options.rest_rps else str(
                node.options.rest_rps)
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


class DaemonProcess:
    def __init__(self, ws, node, args=(), env=None, node_url=None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        environment.update({
            "SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_STATE_DIR": str(ws.state),
            "SLIPSTREAM_NODE_URL": node_url or node.url, "SLIPSTREAM_MAX_RPS": "0",
            "SLIPSTREAM_JWT_TOKEN_FILE": str(node.token_file if node else ws.node_data /
                                             "token.txt"),
            "SLIPSTREAM_METRICS_ADDRESS": "127.0.0.1:0",
        })
        environment.update(env or {})
        command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
        self.proc = subprocess.Popen([*command, "run", *FAST, *args], env=environment,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.state = ws.state

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def metrics_url(self) -> str:
        found = wait_for(lambda: re.search(r"metrics on (http://\S+)/metrics", self.log),
                         message="the metrics address in the log")
        return found.group(1)

    def record(self) -> dict | None:
        try:
            return json.loads((self.state / "daemon.json").read_text())
        except (OSError, ValueError):
            return None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self._reader.join(timeout=2)


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
