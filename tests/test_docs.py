"""The docs cannot rot: every ```console block in README.md and docs/ is run, command by
command, against a reference node with the example configs. A command must exit 0 unless
the block says `(exit N)` on a line after it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import json5
import pytest

from tests.conftest import copy_examples

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def console_blocks() -> list[tuple[str, list[tuple[str, int]]]]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"```console\n(.*?)```", text, re.S):
            line = text.count("\n", 0, match.start()) + 1
            commands: list[tuple[str, int]] = []
            pending = ""
            for raw in match.group(1).splitlines():
                if pending:
                    pending += " " + raw.strip().rstrip("\\").strip()
                    if not raw.rstrip().endswith("\\"):
                        commands.append((pending, 0))
                        pending = ""
                elif raw.startswith("$ "):
                    command = raw[2:].rstrip()
                    if command.endswith("\\"):
                        pending = command.rstrip("\\").strip()
                    else:
                        commands.append((command, 0))
                elif (code := re.fullmatch(r"\(exit (\d+)\)", raw.strip())) and commands:
                    commands[-1] = (commands[-1][0], int(code.group(1)))
            blocks.append((f"{path.relative_to(ROOT)}:{line}", commands))
    return blocks


BLOCKS = console_blocks()


def test_the_docs_have_runnable_examples():
    assert any(name.startswith("docs/operator-guide.md") for name, _ in BLOCKS)
    assert all(commands for _, commands in BLOCKS)


@pytest.mark.parametrize("name, commands", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_console_block_runs(name, commands, ws, node, examples_dir):
    copy_examples(examples_dir, ws)
    for config in ws.conf.glob("*.json*"):
        library = ws.conf / json5.loads(config.read_text())["libpath"]
        library.parent.mkdir(parents=True, exist_ok=True)
        library.write_bytes(b"placeholder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_NODE_URL": node.url,
                "SLIPSTREAM_JWT_TOKEN_FILE": str(node.token_file),
                "SLIPSTREAM_STATE_DIR": str(ws.state), "SLIPSTREAM_MAX_RPS": "0"})
    for command, expected in commands:
        assert shlex.split(command)[0] == "slipstream-reconciler", command
        done = subprocess.run(command, shell=True, env=env, cwd=ws.root, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == expected, f"{name}: `{command}` exited {done.returncode}, " \
                                            f"not {expected}:\n{done.stdout}{done.stderr}"
