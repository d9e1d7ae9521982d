"""docs/gitops.md's `git pull` timer, as written there, checked by systemd itself: the
units are extracted from the document (so it cannot drift) and `systemd-analyze verify`
must accept them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def documented_units() -> dict[str, str]:
    text = (ROOT / "docs" / "gitops.md").read_text()
    block = re.search(r"```ini\n(.*?)```", text, re.S)
    assert block, "docs/gitops.md has no ```ini block"
    units: dict[str, str] = {}
    name = None
    for line in block.group(1).splitlines():
        if m := re.fullmatch(r"# /etc/systemd/system/(\S+)", line):
            name = m.group(1)
            units[name] = ""
        elif name is not None:
            units[name] += line + "\n"
    return units


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing; install it with: apt-get install -y "
                           "systemd")
def test_the_git_pull_timer_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    units = documented_units()
    assert set(units) == {"slipstream-pull.service", "slipstream-pull.timer"}
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "slipstream-pull.timer"),
                           str(tmp_path / "slipstream-pull.service")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
