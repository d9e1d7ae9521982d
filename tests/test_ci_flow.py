"""The CI flow of docs/ci.md: a checkout without the plugin libraries, planned offline
with scripts/ci-plan.sh, as any CI runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ci_plan(ws, live: list[str], summary: Path) -> subprocess.CompletedProcess:
    (ws.root / "live.json").write_text(json.dumps(live))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", str(ROOT / "scripts" / "ci-plan.sh"), str(ws.conf),
                           str(ws.root / "live.json"), str(summary)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_checkout_without_libraries_is_validated_and_planned(ws):
    ws.config("postgres.json5", name="postgres")
    ws.config("metrics.json5", name="metrics")
    shutil.rmtree(ws.libs)  # CI checks out configs, not .so files
    summary = ws.root / "summary.md"
    new = ci_plan(ws, ["metrics"], summary)
    assert new.returncode == 2, new.stdout + new.stderr
    assert "+ load     postgres" in new.stdout
    assert "### Slipstream plan" in summary.read_text() and "```" in summary.read_text()
    same = ci_plan(ws, ["metrics", "postgres"], summary)
    assert same.returncode == 0, same.stdout  # adopts only: the node would not change
    (ws.conf / "metrics.json5").write_text("{libpath: ")
    broken = ci_plan(ws, ["metrics", "postgres"], summary)
    assert broken.returncode == 1 and "metrics.json5:1:" in broken.stdout


def test_the_documented_workflow_handles_exit_code_2():
    workflow = (ROOT / "configs" / "ci" / "github-actions.yml").read_text()
    assert "--detailed-exitcode" in workflow and '"$code" -eq 2' in workflow
    assert "--no-library-check" in workflow and "GITHUB_STEP_SUMMARY" in workflow
