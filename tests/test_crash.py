"""Crash safety: SIGKILL `apply` and `run` in the middle of a large apply, many times,
with node restarts and file deletions in between. After every kill the ledger is valid;
at the end one pass converges, and a plugin loaded just before a kill whose file was then
deleted is still unloaded (the intent journalled before its call made it managed).

SLIPSTREAM_CRASH_ROUNDS raises the number of kills and SLIPSTREAM_CRASH_SEED varies them
(make soak)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from reconciler.ledgerstore import LedgerStore
from reconciler.refnode import Faults
from tests.conftest import SCRIPT, wait_for

ROUNDS = int(os.environ.get("SLIPSTREAM_CRASH_ROUNDS", "6"))
SEED = os.environ.get("SLIPSTREAM_CRASH_SEED", "0")
PLUGINS = 40


def command(*args: str) -> list[str]:
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
    return [*base, *args]


def environment(ws, node) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env.update({"SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_STATE_DIR": str(ws.state),
                "SLIPSTREAM_METRICS_ADDRESS": "off", **node.env()})
    return env


def posts(node) -> int:
    """Loads asked for (snarkOS POSTs, Agave loadPlugin calls)."""
    return node.calls("load")


@pytest.mark.parametrize("mode", ["apply", "run"])
def test_sigkill_at_random_moments_never_loses_track(ws, make_node, mode, kind):
    rng = random.Random(f"crash-{mode}-{SEED}")
    node = make_node(faults=Faults(latency_ms=2))
    named = [f"p{i}" for i in range(PLUGINS)]
    for name in named:
        ws.config(f"{name}.json5", name=name)
    for i in range(3):  # unnamed: their names come from the node
        ws.config(f"u{i}.json5", lib=f"unnamed{i}")
    deleted: set[str] = set()
    env = environment(ws, node)
    for _ in range(ROUNDS):
        args = ("apply",) if mode == "apply" else ("run", "--debounce", "0.05",
                                                   "--probe-interval", "0.2")
        proc = subprocess.Popen(command(*args), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        target = posts(node) + rng.randint(1, 12)
        wanted = {n for n in named if n not in deleted} | {f"unnamed{i}" for i in range(3)}

        def moment(t=target, wanted=wanted, proc=proc) -> bool:
            done = wanted <= set(node.names())  # a daemon with nothing left to do
            return posts(node) >= t or proc.poll() is not None or done

        try:
            wait_for(moment, timeout=30, interval=0.001, message="loads under way")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        LedgerStore(ws.state).load()  # never corrupt, whatever the moment
        live = set(node.names())
        if rng.random() < 0.3:
            node.restart()
        # delete a plugin that was loaded just before the kill, and one other
        candidates = sorted((live - {"startup"} - deleted) & set(named))
        for name in rng.sample(candidates, min(2, len(candidates))):
            os.remove(ws.conf / f"{name}.json5")
            deleted.add(name)
    final = subprocess.run(command("apply"), env=env, capture_output=True, text=True,
                           timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    again = subprocess.run(command("plan", "--detailed-exitcode"), env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout
    live = set(node.names())
    expected = {n for n in named if n not in deleted} | {f"unnamed{i}" for i in range(3)}
    assert live == expected | {"startup"}
    assert not live & deleted
    ledger = LedgerStore(ws.state).load()
    assert set(ledger.entries) == expected and ledger.pending == ()
