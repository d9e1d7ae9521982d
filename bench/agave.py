"""The Agave rows of `make bench`: `apply`, `plan` and validator restart to re-converged,
each beside its snarkOS row and each against its own floor measured in the same run.

The floor is what a change needs on a validator and nothing else: one Python process
(stdlib only, as the Agave client needs no HTTP library) that connects to
`<ledger>/admin.rpc` and sends the raw JSON-RPC calls (`listPlugins`, then one
`loadPlugin` per config). It is this file run as a script:

    python bench/agave.py list  LEDGER
    python bench/agave.py apply LEDGER CONFIG_DIR

The reference validator runs in this process (as the snarkOS node does in harness.py),
so its plugin list and restarts are at hand; its one plugin worker serialises the calls
exactly as the validator's does.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def rpc(sock: socket.socket, buffer: bytearray, ident: int, method: str,
        params: list[str]) -> object:
    """One call: the request without a delimiter, the answer up to its newline."""
    sock.sendall(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                             "params": params}).encode())
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the validator closed the admin socket")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def floor_main(argv: list[str]) -> None:
    mode, ledger = argv[0], argv[1]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.path.join(ledger, "admin.rpc"))
    buffer = bytearray()
    rpc(sock, buffer, 1, "listPlugins", [])
    if mode == "apply":
        directory = argv[2]
        for ident, name in enumerate(sorted(os.listdir(directory)), start=2):
            if name.endswith(".json5"):
                rpc(sock, buffer, ident, "loadPlugin", [os.path.join(directory, name)])
    sock.close()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("list", "apply"):
    floor_main(sys.argv[1:])
    sys.exit(0)

sys.path.insert(0, os.path.dirname(__file__))

from harness import CLI, apply_row, plan_row, restart_row, wait_until  # noqa: E402

from reconciler.refnode.agave import AgaveNode, AgaveOptions  # noqa: E402

FLOOR = [sys.executable, str(Path(__file__).resolve())]


class AgaveWorkspace:
    """A reference validator with one start-up plugin, and N plugin configs for it."""

    def __init__(self, plugins: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="slipstream-bench-agave-"))
        self.conf = self.root / "plugins.d"
        self.libs = self.root / "libs"
        self.state = self.root / "state"
        self.ledger = self.root / "ledger"
        for d in (self.conf, self.libs, self.ledger, self.root / "boot"):
            d.mkdir()
        (self.root / "boot" / "libstartup.so").write_bytes(b"startup")
        (self.root / "boot" / "startup.json5").write_text('{libpath: "libstartup.so"}')
        for i in range(plugins):
            self.add(f"p{i}")
        self.node = AgaveNode(AgaveOptions(
            ledger=self.ledger,
            geyser_plugin_configs=[str(self.root / "boot" / "startup.json5")])).start()

    def add(self, name: str) -> Path:
        (self.libs / f"lib{name}.so").write_bytes(f"placeholder library {name}".encode())
        path = self.conf / f"{name}.json5"
        path.write_text("{\n  // a realistic JSON5 config: comments, unquoted keys, a comma\n"
                        f'  libpath: "../libs/lib{name}.so",\n  name: "{name}",\n'
                        '  connection_str: "host=127.0.0.1 user=solana",\n}\n')
        return path

    def names(self) -> list[str]:
        manager = self.node.manager
        return manager.names() if manager is not None else []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        env.update({"SLIPSTREAM_CONFIG_DIR": str(self.conf),
                    "SLIPSTREAM_STATE_DIR": str(self.state),
                    "SLIPSTREAM_NODE_KIND": "agave", "SLIPSTREAM_LEDGER": str(self.ledger),
                    "SLIPSTREAM_METRICS_ADDRESS": "off"})
        return env

    def fresh(self) -> None:
        """A validator with only its start-up plugin, and no ledger: a first apply again."""
        self.node.restart()
        shutil.rmtree(self.state, ignore_errors=True)

    def cli(self, *args: str) -> float:
        start = time.perf_counter()
        done = subprocess.run([*CLI, *args], env=self.env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode not in (0, 2):
            raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr}")
        return elapsed

    def close(self) -> None:
        self.node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def apply_vs_floor(n: int, rounds: int) -> list[str]:
    """`apply` of N new Geyser plugins, whole process, against listPlugins + N loadPlugin."""
    ws = AgaveWorkspace(n)
    try:
        floor = [*FLOOR, "apply", str(ws.ledger), str(ws.conf)]
        rows = apply_row(ws, floor, n, rounds, "agave: ", f"list + {n} loadPlugin")
        assert len(ws.names()) == n + 1, ws.names()  # the last apply loaded them all
        return rows
    finally:
        ws.close()


def plan_vs_floor(n: int, rounds: int) -> list[str]:
    """`plan` with N Geyser plugins in sync, whole process, against one listPlugins."""
    ws = AgaveWorkspace(n)
    try:
        return plan_row(ws, [*FLOOR, "list", str(ws.ledger)], n, rounds, "agave: ",
                        "one listPlugins")
    finally:
        ws.close()


def restart_to_converged(restarts: int, probe: float = 2.0) -> list[str]:
    """Validator restart (10 managed plugins) until all are back. The daemon watches the
    ledger for the socket being replaced, so this should not wait for the probe."""
    ws = AgaveWorkspace(10)
    try:
        proc = subprocess.Popen([*CLI, "run"], env=ws.env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: len(ws.names()) == 11, timeout=60)
            times = []
            rng = random.Random(4)
            for _ in range(restarts):
                time.sleep(rng.uniform(0, probe))  # at any moment of the probe cycle
                ws.node.restart()
                start = time.perf_counter()
                wait_until(lambda: len(ws.names()) == 11, timeout=30)
                times.append(time.perf_counter() - start)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        return restart_row("agave: validator", times, probe)
    finally:
        ws.close()


def rows(full: bool) -> list[tuple[Callable[..., list[str]], tuple[int, ...]]]:
    """What run_all.py runs for Agave, beside the snarkOS rows of the same sizes."""
    plan: list[tuple[Callable[..., list[str]], tuple[int, ...]]] = [
        (apply_vs_floor, (10, 7)), (apply_vs_floor, (100, 5)), (plan_vs_floor, (100, 7)),
        (restart_to_converged, (20 if full else 5,))]
    if full:
        plan += [(apply_vs_floor, (1000, 3)), (plan_vs_floor, (1000, 5))]
    return plan

