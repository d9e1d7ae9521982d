"""The six benchmarks of docs/performance.md. Each returns table rows; run_all.py prints
them. Sizes come from the caller: quick (make bench) or full (make bench-full)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    CLI,
    ROOT,
    Workspace,
    apply_row,
    median,
    percentile,
    plan_row,
    restart_row,
    row,
    wait_until,
)

FLOOR = [sys.executable, str(ROOT / "bench" / "floor.py")]


def apply_vs_floor(n: int, rounds: int) -> list[str]:
    """1. `apply` of N new plugins, whole process, against GET + N POSTs."""
    ws = Workspace(n)
    try:
        floor = [*FLOOR, "apply", ws.node.url, str(ws.node.token_file), str(ws.conf)]
        return apply_row(ws, floor, n, rounds, "", f"GET + {n} POSTs")
    finally:
        ws.close()


def plan_vs_floor(n: int, rounds: int) -> list[str]:
    """2. `plan` with N plugins in sync, whole process, against one GET."""
    ws = Workspace(n)
    try:
        floor = [*FLOOR, "list", ws.node.url, str(ws.node.token_file)]
        return plan_row(ws, floor, n, rounds, "", "one GET")
    finally:
        ws.close()


def import_log(argv: list[str], env: dict[str, str]) -> dict[str, tuple[int, int, bool]]:
    """`python -X importtime`'s log of a process: each module's own and cumulative time
    (microseconds) and whether it was imported at top level (not from another module)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env,
                          capture_output=True, text=True)
    modules = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = line.split("|")
        modules[name.strip()] = (int(own.split(":")[1]), int(cumulative),
                                 not name.startswith("  "))
    return modules


def import_ms(log: dict[str, tuple[int, int, bool]]) -> float:
    """The whole import time of a process: the sum of the top-level rows (each includes
    what it imported), in milliseconds."""
    return sum(cumulative for _, cumulative, top in log.values() if top) / 1000


# What the start-up beyond `import requests` is spent on, by the part that brings it in.
PARTS = {"typer": "typer", "click": "typer", "shellingham": "typer", "annotated_doc": "typer",
         # typer's and click's own module-level imports of the standard library
         "platform": "typer", "uuid": "typer", "_uuid": "typer", "subprocess": "typer",
         "_posixsubprocess": "typer", "signal": "typer", "gettext": "typer",
         "difflib": "typer", "msvcrt": "typer",
         # dataclasses (and typer) read signatures: inspect brings the compiler's modules
         "dataclasses": "dataclasses", "inspect": "dataclasses", "ast": "dataclasses",
         "_ast": "dataclasses", "dis": "dataclasses", "opcode": "dataclasses",
         "_opcode": "dataclasses", "reconciler": "ours"}


def startup_imports(rounds: int) -> list[str]:
    """7. What `apply` imports and sets up at start (an in-sync apply, so the pass itself
    costs next to nothing), against a process that only imports requests; then what the
    difference is spent on (the self time of each module the baseline does not import,
    by the part that brings it in)."""
    ws = Workspace(10)
    try:
        ws.cli("apply")
        env = ws.env()
        logs = {command: [import_log(["-m", "reconciler", command], env)
                          for _ in range(rounds)] for command in ("apply", "plan")}
        ours = [median([import_ms(log) for log in logs[c]]) for c in ("apply", "plan")]
        baseline = [import_log(["-c", "import requests"], env) for _ in range(rounds)]
        floor = median([import_ms(log) for log in baseline])
        over = max(ours) - floor
        known = set().union(*baseline)
        parts: dict[str, list[float]] = {"typer": [], "dataclasses": [], "ours": [],
                                         "other": []}
        for log in logs["apply"]:
            spent = dict.fromkeys(parts, 0.0)
            for name, (own, _, _) in log.items():
                if name not in known:
                    spent[PARTS.get(name.split(".")[0], "other")] += own / 1000
            for part, ms in spent.items():
                parts[part].append(ms)
        split = " / ".join(f"{median(parts[p]):.0f}" for p in parts)
        return [row("start-up imports (apply, plan)", f"{ours[0]:.0f} / {ours[1]:.0f} ms",
                    f"{floor:.0f} ms (import requests)", max(ours) / floor,
                    "<= 25 ms over", over <= 25),
                row("start-up beyond requests (apply): typer+click / inspect & co. / "
                    "our modules / other", f"{split} ms", "—",
                    sum(median(v) for v in parts.values()) / 25, "<= 25 ms in all", None)]
    finally:
        ws.close()


def start_daemon(ws: Workspace, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "run", *args], env=ws.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until(lambda: (ws.state / "daemon.json").exists(), timeout=120)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def event_to_applied(drops: int) -> list[str]:
    """3. A file dropped by atomic rename, until the node lists its plugin (5 ms polls),
    with the default debounce, against debounce + one bare POST."""
    ws = Workspace(10)
    debounce = 0.25
    try:
        proc = start_daemon(ws)
        wait_until(lambda: len(ws.node.manager.names()) == 11, timeout=30)
        latencies = []
        for i in range(drops):
            name = f"drop{i}"
            (ws.libs / f"lib{name}.so").write_bytes(b"x")
            start = time.perf_counter()
            ws.add(name, atomic=True)
            wait_until(lambda n=name: n in ws.node.manager.names(), timeout=10)
            latencies.append(time.perf_counter() - start)
        stop(proc)
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {ws.node.token}"
        post = []
        for i in range(20):
            (ws.libs / f"libbare{i}.so").write_bytes(b"x")
            path = ws.conf / f"bare{i}.json"
            path.write_text(f'{{"libpath": "../libs/libbare{i}.so"}}')
            t = time.perf_counter()
            session.post(f"{ws.node.url}/v2/mainnet/slipstream/plugins",
                         json={"config_file": str(path)}).raise_for_status()
            post.append(time.perf_counter() - t)
        floor = debounce + median(post)
        p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
        target = debounce + 0.100
        return [row(f"file event to applied ({drops} drops)",
                    f"p50 {p50 * 1000:.0f} / p95 {p95 * 1000:.0f} / p99 {p99 * 1000:.0f} ms",
                    f"{floor * 1000:.0f} ms (debounce + one POST)", p99 / floor,
                    f"p99 <= {target * 1000:.0f} ms", p99 <= target)]
    finally:
        ws.close()


def restart_to_converged(restarts: int, probe: float = 2.0) -> list[str]:
    """4. Node restart (10 managed plugins) until all are back."""
    ws = Workspace(10)
    try:
        proc = start_daemon(ws)
        wait_until(lambda: len(ws.node.manager.names()) == 11, timeout=30)
        times = []
        rng = random.Random(4)
        for _ in range(restarts):
            time.sleep(rng.uniform(0, probe))  # a restart at any moment of the probe cycle
            ws.node.restart()
            start = time.perf_counter()
            wait_until(lambda: len(ws.node.manager.names()) == 11, timeout=30)
            times.append(time.perf_counter() - start)
        stop(proc)
        return restart_row("node", times, probe)
    finally:
        ws.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_daemon(n: int, seconds: float) -> list[str]:
    """5. An idle daemon with N managed plugins: CPU share and RSS over `seconds`."""
    ws = Workspace(n)
    try:
        proc = start_daemon(ws)
        wait_until(lambda: len(ws.node.manager.names()) == n + 1, timeout=300)
        time.sleep(3)  # let the last pass finish before the window opens
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        share = (_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0) * 100
        rss = _rss_mib(proc.pid)
        stop(proc)
        return [row(f"idle daemon, {n} plugins, {seconds:.0f} s", f"{share:.2f} % CPU, "
                    f"{rss:.0f} MiB RSS", "0.5 % of a core, 80 MiB", share / 0.5,
                    "<= 0.5 %, <= 80 MiB", share <= 0.5 and rss <= 80)]
    finally:
        ws.close()


def rate_limited_apply(n: int = 100, rps: int = 10) -> list[str]:
    """6. `apply` of N plugins against --rest-rps 10 (default pacing), against the floor of
    N + 1 requests at 10 per second with a burst of 10."""
    ws = Workspace(n, rest_rps=rps)
    try:
        time.sleep(1.1)  # a full bucket, as a node that has been idle has
        start = time.perf_counter()
        done = subprocess.run([*CLI, "apply"], env=ws.env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        floor = (n + 1 - rps) / rps
        throttled = sum(1 for r in ws.node.requests if r.status == 429)
        ratio = elapsed / floor
        return [row(f"apply {n} plugins at --rest-rps {rps}",
                    f"{elapsed:.2f} s, {throttled} x 429, exit {done.returncode}",
                    f"{floor:.2f} s ({n + 1} requests, burst {rps})", ratio,
                    "<= 1.15x, no failure", ratio <= 1.15 and done.returncode == 0)]
    finally:
        ws.close()
