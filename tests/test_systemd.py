"""The systemd unit verifies, is hardened, and its documented defaults are the real ones."""

from __future__ import annotations

import os
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
    assert d["SystemCallErrorNumber"] == ["EPERM"]


def test_the_unit_runs_the_venv_reloads_synchronously_and_stops_on_settings_errors():
    from reconciler.cli import SETTINGS_ERROR

    d = directives()
    assert d["ExecStart"] == [f"{INSTALLED} run"]  # a venv under /opt: PEP 668
    assert d["ExecReload"] == [f"{INSTALLED} reload --pid $MAINPID"]
    assert d["RestartPreventExitStatus"] == [str(SETTINGS_ERROR)]
    assert any("/etc/slipstream" in p for p in d["ReadOnlyPaths"])


def run_options() -> dict[str, object]:
    """Each `run` variable's real default. The snarkOS-only options default to None (so
    that one given for Agave can be refused) and show the default they fill in."""
    command = typer.main.get_command(app).commands["run"]
    return {p.envvar: p.show_default if p.default is None and isinstance(p.show_default, str)
            else p.default for p in command.params if isinstance(p.envvar, str)}


def assert_real_default(options: dict[str, object], variable: str, default: str) -> None:
    """An env file's commented `#VAR=default` is the `run` option's real default."""
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


def test_the_env_file_documents_every_daemon_variable_with_its_real_default():
    documented = dict(re.findall(r"^#(SLIPSTREAM_[A-Z_]+)=(.*)$", ENV.read_text(), re.M))
    options = run_options()
    # The ledger directory is Agave's alone (slipstream-reconciler-agave.env has it).
    assert set(options) <= set(documented) | {"SLIPSTREAM_STATE_DIR", "SLIPSTREAM_LEDGER"}
    for variable, default in documented.items():
        assert_real_default(options, variable, default)


# -- $CREDENTIALS_DIRECTORY: what LoadCredential= hands over -------------------------------
def test_the_credential_directory_gives_the_secret_or_the_token(ws, make_node, cli, tmp_path):
    import base64

    secret = bytes(range(16))
    node = make_node(jwt_secret=secret)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "jwt-secret").write_text(base64.b64encode(secret).decode() + "\n")
    (creds / "jwt-secret").chmod(0o400)
    env = {"SLIPSTREAM_NODE_URL": node.url, "CREDENTIALS_DIRECTORY": str(creds)}
    done = cli("status", env=env)
    assert done.code == 0, done.err
    assert "readable by group" not in done.err
    (creds / "jwt-secret").unlink()
    shutil.copy(node.token_file, creds / "jwt-token")  # the node's token file, handed over
    done = cli("status", env=env)
    assert done.code == 0, done.err


def test_an_unreadable_credential_is_one_clear_line(ws, node, cli, tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "jwt-secret").write_text("AAECAwQFBgcICQoLDA0ODw==\n")
    (creds / "jwt-secret").chmod(0o400)
    env = {"SLIPSTREAM_NODE_URL": node.url, "CREDENTIALS_DIRECTORY": str(creds)}
    if os.geteuid() == 0:  # root reads anything: look as the service's user does
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("no setpriv (util-linux) to drop root")
        import tempfile

        # pytest's own folder is 0700 root: the state and config dirs go where nobody
        # reaches them, so that the credential is the one thing it cannot read.
        state = Path(tempfile.mkdtemp(prefix="slipstream-nobody-"))
        os.chown(state, 65534, 65534)
        conf = Path(tempfile.mkdtemp(prefix="slipstream-nobody-conf-"))
        conf.chmod(0o755)
        done = subprocess.run([setpriv, "--reuid", "65534", "--regid", "65534",
                               "--clear-groups", str(Path(sys.executable).with_name(
                                   "slipstream-reconciler")), "status"],
                              env={**os.environ, **env, "SLIPSTREAM_CONFIG_DIR": str(conf),
                                   "SLIPSTREAM_STATE_DIR": str(state)},
                              capture_output=True, text=True, timeout=60)
        shutil.rmtree(state)
        shutil.rmtree(conf)
        code, err = done.returncode, done.stderr
    else:
        creds.chmod(0o000)
        done = cli("status", env=env)
        code, err = done.code, done.err
    assert code == 1, err
    assert err.startswith(f"error: cannot read the systemd credential jwt-secret "
                          f"{creds / 'jwt-secret'}: permission denied"), err
    assert "internal error" not in err and "Traceback" not in err


def test_apply_as_root_gives_new_state_files_to_the_state_directory_owner(ws, node, cli):
    if os.geteuid() != 0:
        pytest.skip("needs root: the state directory belongs to another user")
    ws.config("a.json5", name="a")
    ws.state.mkdir(mode=0o700)
    os.chown(ws.state, 61234, 61234)  # the service's DynamicUser
    (ws.state / "left-by-an-old-version").write_text("{}")  # root-owned: repaired
    done = cli("apply", node=node)
    assert done.code == 0, done.err
    for path in [ws.state, *ws.state.rglob("*")]:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (61234, 61234), path
    ws.config("b.json5", name="b")
    assert cli("apply", node=node).code == 0
    assert {p.stat().st_uid for p in ws.state.rglob("*")} == {61234}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_guides_token_file_drop_in_verifies(tmp_path):
    """The operator guide's drop-in for the node's token file, as written, on the unit."""
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    section = guide.split("\n## The systemd service\n", 1)[1]
    block = re.search(r"```ini\n(.*?)```", section, re.S)
    assert block and "LoadCredential=jwt-token:" in block.group(1)
    token = tmp_path / "jwt_secret_aleo1test.txt"
    token.write_text("token\n")
    text = re.sub(r"jwt-token:\S+", f"jwt-token:{token}", block.group(1))
    unit = unit_for_this_machine(tmp_path)
    dropins = tmp_path / f"{unit.name}.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "slipstream-reconciler" not in done.stderr, done.stderr
    (dropins / "override.conf").write_text(text.replace("LoadCredential=", "LoadCredentail="))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert "LoadCredentail" in done.stderr, "the drop-in was not read: this proves nothing"


# -- The Agave unit: the validator's user, the same hardening where it fits ----------------
AGAVE_UNIT = ROOT / "systemd" / "slipstream-reconciler-agave.service"
AGAVE_ENV = ROOT / "systemd" / "slipstream-reconciler-agave.env"
# What the Agave unit does differently, each for a reason given in a "Difference:" comment
# there: the validator's user instead of a dynamic one (the socket is 0600), no JWT
# credential, the ledger under /home reachable read-only, no RemoveIPC= (it would remove
# the validator's own IPC objects).
AGAVE_DIFFERENCES = {"DynamicUser", "User", "Group", "LoadCredential", "ProtectHome",
                     "RemoveIPC"}
# Settings that only a snarkOS node has (refused or meaningless with --node-kind agave).
NOT_FOR_AGAVE = {"SLIPSTREAM_NODE_URL", "SLIPSTREAM_NETWORK", "SLIPSTREAM_API",
                 "SLIPSTREAM_JWT_TOKEN_FILE", "SLIPSTREAM_JWT_SECRET_FILE",
                 "SLIPSTREAM_CA_FILE", "SLIPSTREAM_INSECURE_SKIP_VERIFY",
                 "SLIPSTREAM_MAX_RPS", "SLIPSTREAM_NODE_CONFIG_DIR",
                 "SLIPSTREAM_NODE_STATE_DIR"}


def agave_unit_for_this_machine(tmp_path: Path) -> Path:
    script = Path(sys.executable).with_name("slipstream-reconciler")
    path = tmp_path / AGAVE_UNIT.name
    path.write_text(AGAVE_UNIT.read_text().replace(INSTALLED, str(script)))
    return path


def unit_directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_agave_unit_verifies_and_scores_as_low_as_the_snarkos_one(tmp_path):
    unit = agave_unit_for_this_machine(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "slipstream-reconciler" not in done.stderr, done.stderr
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True)
    if "--offline" in done.stderr:
        pytest.skip("this systemd-analyze cannot score a unit file offline")
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert score, done.stdout + done.stderr
    assert float(score.group(1)) <= 2.0


def test_the_agave_unit_runs_as_the_validators_user_with_node_kind_and_ledger():
    from reconciler.cli import SETTINGS_ERROR

    d = unit_directives(AGAVE_UNIT)
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [f"{INSTALLED} run --node-kind agave --ledger ${{SLIPSTREAM_LEDGER}}"]
    assert d["ExecReload"] == [f"{INSTALLED} reload --pid $MAINPID"]
    assert d["User"] == ["sol"] and d["Group"] == ["sol"] and "DynamicUser" not in d
    assert "SLIPSTREAM_LEDGER=/mnt/ledger" in d["Environment"]
    # The settings file comes after the default, so it overrides it.
    assert d["EnvironmentFile"] == ["-/etc/default/slipstream-reconciler-agave"]
    assert d["RestartPreventExitStatus"] == [str(SETTINGS_ERROR)]
    assert "LoadCredential" not in d and "RemoveIPC" not in d
    # No path in the ledger is made writable: connect() needs none.
    assert "ReadWritePaths" not in d and d["ProtectSystem"] == ["strict"]
    assert d["ProtectHome"] == ["read-only"]


def test_the_agave_unit_keeps_every_other_hardening_of_the_snarkos_unit():
    snarkos, agave = unit_directives(UNIT), unit_directives(AGAVE_UNIT)
    ignore = {"Description", "After", "Wants", "ExecStart", "ExecReload", "EnvironmentFile",
              "Environment", "StateDirectory"}
    differing = {key for key in set(snarkos) | set(agave) - ignore
                 if key not in ignore and snarkos.get(key) != agave.get(key)}
    assert differing == AGAVE_DIFFERENCES
    explained = differences_explained(AGAVE_UNIT.read_text())
    assert AGAVE_DIFFERENCES - {"Group"} <= explained, AGAVE_DIFFERENCES - explained


def differences_explained(text: str) -> set[str]:
    """The directives a '# Difference:' comment block names, or sits right above."""
    found: set[str] = set()
    block: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            block.append(line)
            continue
        comment = "\n".join(block)
        if "Difference:" in comment:
            found |= set(re.findall(r"\b([A-Z][A-Za-z]+)=", comment))
            if "=" in line:
                found.add(line.partition("=")[0])
        block = []
    return found


def test_the_agave_env_file_documents_the_agave_settings_with_their_real_defaults():
    documented = dict(re.findall(r"^#(SLIPSTREAM_[A-Z_]+)=(.*)$", AGAVE_ENV.read_text(), re.M))
    options = run_options()
    assert not set(documented) & NOT_FOR_AGAVE
    assert set(options) - set(documented) <= NOT_FOR_AGAVE | {"SLIPSTREAM_STATE_DIR",
                                                               "SLIPSTREAM_NODE_KIND"}
    for variable, default in documented.items():
        if variable == "SLIPSTREAM_LEDGER":  # the unit's default; the CLI has none
            assert variable in options
            assert f"{variable}={default}" in unit_directives(AGAVE_UNIT)["Environment"]
            continue
        assert_real_default(options, variable, default)
