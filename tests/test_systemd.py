"""The systemd unit verifies, is hardened, and its documented defaults are the real ones."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from reconciler.cli import app

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "slipstream-reconciler.service"
ENV = ROOT / "systemd" / "slipstream-reconciler.env"
INSTALLED = "/opt/slipstream-reconciler/bin/slipstream-reconciler"  # the guide's venv


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's script, which verify requires."""
    script = Path(sys.executable).with_name("slipstream-reconciler")
    text = UNIT.read_text().replace(INSTALLED, str(script))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path):
    done = subprocess.run(["systemd-analyze", "verify", str(unit_for_this_machine(tmp_path))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "slipstream-reconciler" not in done.stderr, done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_security_exposure_is_low(tmp_path):
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(unit_for_this_machine(tmp_path))], capture_output=True, text=True)
    if "--offline" in done.stderr:
        pytest.skip("this systemd-analyze cannot score a unit file offline")
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert score, done.stdout + done.stderr
    assert float(score.group(1)) <= 2.0


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_a_notify_service_with_the_issue_hardening():
    d = directives()
    assert d["Type"] == ["notify"] and d["ExecStart"][0].endswith("slipstream-reconciler run")
    assert d["EnvironmentFile"] == ["-/etc/default/slipstream-reconciler"]
    assert d["LoadCredential"] == ["jwt-secret:/etc/slipstream/jwt-secret"]
    assert d["Restart"] == ["on-failure"] and "WatchdogSec" in d and "StateDirectory" in d
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
                       ("CapabilityBoundingSet", "")):
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert any("/etc/slipstream" in p for p in d["ReadOnlyPaths"])


def run_options() -> dict[str, object]:
    command = typer.main.get_command(app).commands["run"]
    return {p.envvar: p.default for p in command.params if isinstance(p.envvar, str)}


def test_the_env_file_documents_every_daemon_variable_with_its_real_default():
    documented = dict(re.findall(r"^#(SLIPSTREAM_[A-Z_]+)=(.*)$", ENV.read_text(), re.M))
    options = run_options()
    assert set(options) <= set(documented) | {"SLIPSTREAM_STATE_DIR"}
    for variable, default in documented.items():
        assert variable in options, f"{variable} is not a `run` option"
        real = options[variable]
        real = getattr(real, "value", real)
        if real is None:
            assert default == "", variable
        elif isinstance(real, bool):
            assert default == str(real).lower(), variable
        elif isinstance(real, float):
            assert float(default) == real, variable
        else:
            assert default == str(real), variable
