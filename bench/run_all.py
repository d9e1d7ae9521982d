"""make bench (quick sizes, under 2 minutes) and make bench-full (the issue's sizes).
Prints one markdown table; docs/performance.md keeps one run's table."""

from __future__ import annotations

import compileall
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import agave
import benchmarks as b
from harness import HEADER


def main() -> None:
    full = "--full" in sys.argv
    # An installed wheel carries bytecode (pip compiles it); a checkout under
    # PYTHONDONTWRITEBYTECODE would compile every module from source at every start and
    # measure the compiler, not the tool.
    compileall.compile_dir(os.path.join(os.path.dirname(__file__), "..", "reconciler"),
                           quiet=1)
    plan = [
        (b.startup_imports, (7,)),
        (b.apply_vs_floor, (10, 7)), (b.apply_vs_floor, (100, 5)),
        (b.plan_vs_floor, (100, 7)),
        (b.event_to_applied, (200 if full else 60,)),
        (b.restart_to_converged, (20 if full else 5,)),
        (b.idle_daemon, (1000, 60.0) if full else (300, 15.0)),
    ]
    if full:
        plan += [(b.apply_vs_floor, (1000, 3)), (b.plan_vs_floor, (1000, 5)),
                 (b.rate_limited_apply, ())]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(HEADER)
    for function, args in plan:
        for line in function(*args):
            print(line, flush=True)
    # Agave (issue 13): the same benchmarks against the reference validator's admin RPC.
    for function, args in agave.rows(full):
        for line in function(*args):
            print(line, flush=True)


if __name__ == "__main__":
    main()
