"""What every benchmark shares: a reference node on loopback (in this process, so its
request log and restarts are at hand), a workspace of N plugin configs, the CLI and the
daemon as real subprocesses, and medians of alternating runs (A B A B …), so that the
baseline and the thing measured see the same machine at the same moments."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.refnode import NodeOptions, RefNode  # noqa: E402

SCRIPT = Path(sys.executable).with_name("slipstream-reconciler")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]


class Workspace:
    def __init__(self, plugins: int, rest_rps: int = 0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="slipstream-bench-"))
        self.conf = self.root / "plugins.d"
        self.libs = self.root / "libs"
        self.state = self.root / "state"
        for d in (self.conf, self.libs, self.root / "node", self.root / "boot"):
            d.mkdir()
        (self.root / "boot" / "libstartup.so").write_bytes(b"startup")
        (self.root / "boot" / "startup.json5").write_text('{libpath: "libstartup.so"}')
        for i in range(plugins):
            self.add(f"p{i}")
        self.node = RefNode(NodeOptions(
            port=0, rest_rps=rest_rps, data_dir=self.root / "node",
            slipstream_configs=[str(self.root / "boot" / "startup.json5")])).start()

    def add(self, name: str, atomic: bool = False) -> Path:
        (self.libs / f"lib{name}.so").write_bytes(f"placeholder library {name}".encode())
        text = ("{\n  // a realistic JSON5 config: comments, unquoted keys, a trailing comma\n"
                f'  libpath: "../libs/lib{name}.so",\n  name: "{name}",\n'
                '  connection_string: "postgres://aleo:secret@127.0.0.1/aleo",\n'
                "  batch_size: 100,\n}\n")
        path = self.conf / f"{name}.json5"
        if atomic:
            tmp = self.conf / f".{name}.json5.tmp"
            tmp.write_text(text)
            os.replace(tmp, path)
        else:
            path.write_text(text)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        env.update({"SLIPSTREAM_CONFIG_DIR": str(self.conf),
                    "SLIPSTREAM_STATE_DIR": str(self.state),
                    "SLIPSTREAM_NODE_URL": self.node.url,
                    "SLIPSTREAM_JWT_TOKEN_FILE": str(self.node.token_file),
                    "SLIPSTREAM_MAX_RPS": "0" if not self.node.options.rest_rps else
                    str(self.node.options.rest_rps),
                    "SLIPSTREAM_METRICS_ADDRESS": "off"})
        env.update(extra)
        return env

    def fresh(self) -> None:
        """A node with only its start-up plugin, and no ledger: a first apply again."""
        self.node.restart()
        shutil.rmtree(self.state, ignore_errors=True)

    def cli(self, *args: str, check: bool = True) -> float:
        start = time.perf_counter()
        done = subprocess.run([*CLI, *args], env=self.env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if check and done.returncode not in (0, 2):
            raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr}")
        return elapsed

    def close(self) -> None:
        self.node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def alternate(a: Callable[[], float], b: Callable[[], float], rounds: int,
              before: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """A B A B …: both see the same machine at the same moments."""
    xs, ys = [], []
    for _ in range(rounds):
        if before:
            before()
        xs.append(a())
        if before:
            before()
        ys.append(b())
    return xs, ys


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> float:
    """Seconds until predicate() held; raises at the deadline."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the benchmark's state never came")
        time.sleep(interval)
    return time.perf_counter() - start


def row(name: str, figure: str, baseline: str, ratio: float, target: str,
        ok: bool | None) -> str:
    met = "—" if ok is None else ("yes" if ok else "NO")
    return f"| {name} | {figure} | {baseline} | {ratio:.2f}x | {target} | {met} |"


HEADER = ("| benchmark | measured | baseline (same run) | ratio | target | met |\n"
          "|---|---|---|---|---|---|")


class Bench(Protocol):
    """What the apply and plan comparisons need of a workspace (either kind of node)."""

    def env(self) -> dict[str, str]: ...

    def fresh(self) -> None: ...

    def cli(self, *args: str) -> float: ...


def apply_row(ws: Bench, floor: list[str], n: int, rounds: int, label: str,
              calls: str) -> list[str]:
    """`apply` of N new plugins, whole process, against the floor's `calls`, alternated
    and each preceded by `ws.fresh()` (a node and a state directory without them)."""
    env = ws.env()
    xs, ys = alternate(lambda: timed(floor, env), lambda: ws.cli("apply"), rounds,
                       before=ws.fresh)
    ratio = median(ys) / median(xs)
    target = "<= 1.2x" if n >= 100 else "none (start-up dominates)"
    return [row(f"{label}apply {n} new plugins", f"{median(ys) * 1000:.0f} ms",
                f"{median(xs) * 1000:.0f} ms ({calls})", ratio, target,
                ratio <= 1.2 if n >= 100 else None)]


def plan_row(ws: Bench, floor: list[str], n: int, rounds: int, label: str,
             calls: str) -> list[str]:
    """`plan` with N plugins in sync, whole process, against the floor's one list call;
    the first plan (filling the caches) is reported beside the median."""
    ws.cli("apply")
    cold = ws.cli("plan", "--detailed-exitcode")
    env = ws.env()
    xs, ys = alternate(lambda: timed(floor, env),
                       lambda: ws.cli("plan", "--detailed-exitcode"), rounds)
    ratio = median(ys) / median(xs)
    ok = ratio <= 2 and (n < 1000 or median(ys) < 0.5)
    return [row(f"{label}plan {n} in sync", f"{median(ys) * 1000:.0f} ms (first: "
                f"{cold * 1000:.0f} ms)", f"{median(xs) * 1000:.0f} ms ({calls})", ratio,
                "<= 2x" + (", < 0.5 s" if n >= 1000 else ""), ok)]


def restart_row(label: str, times: list[float], probe: float) -> list[str]:
    """Restart to re-converged, against the probe interval the daemon would otherwise
    wait for (target: at most half a second more)."""
    target = probe + 0.5
    return [row(f"{label} restart to re-converged ({len(times)} restarts)",
                f"p50 {median(times) * 1000:.0f} / max {max(times) * 1000:.0f} ms",
                f"{probe * 1000:.0f} ms (probe interval)", max(times) / probe,
                f"max <= {target * 1000:.0f} ms", max(times) <= target)]
