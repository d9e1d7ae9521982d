"""The fleet example on the real engine: ansible-core runs ansible/examples/site.yml.

Four hosts (two validators, two clients), each a reference node on loopback with its own
JWT secret, config directory and state directory, all reached with
`ansible_connection=local`: the role lays each host's directory and credential, and the
module runs this checkout's installed `slipstream-reconciler` against that host's node.
The tests run in order against one fleet: converge, converge again (all ok), a dry run of
a change (`--check --diff`: the right hosts changed, nothing touched), then the change
with a broken file on one host, which fails that host alone. Then ansible-doc,
ansible-lint, the built collection, the role copied alone, and the role under systemd.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.refnode import NodeOptions, RefNode

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE = ROOT / "ansible"
EXAMPLES = ANSIBLE / "examples"
BIN = Path(sys.executable).parent
SCRIPT = BIN / "slipstream-reconciler"
HOSTS = {"validator-1": "validators", "validator-2": "validators",
         "client-1": "clients", "client-2": "clients"}
MODULE_TASK = "Converge the node's plugins (in check mode, the plan)"

pytestmark = pytest.mark.skipif(
    shutil.which("ansible-playbook", path=str(BIN)) is None or not SCRIPT.exists(),
    reason="ansible-core and this checkout are not installed in this venv "
           "(make .venv/.installed-stamp)")


def config(libs: Path, name: str, extra: str = "") -> str:
    lib = libs / f"lib{name}.so"
    lib.write_bytes(b"\x7fELF placeholder " + name.encode())
    return f'{{\n  libpath: "{lib}",\n  name: "{name}",{extra}\n}}\n'


@dataclass(frozen=True)
class Template:
    """A plugin config declared as a template (the role renders it on the controller)."""

    path: str


class Fleet:
    """The hosts, their nodes, and the inventory written from what each host declares."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.nodes: dict[str, RefNode] = {}
        self.declared: dict[str, dict[str, str]] = {}
        for host in HOSTS:
            base = top / host
            (base / "libs").mkdir(parents=True)
            (base / "boot").mkdir()
            (base / "boot" / "libstartup.so").write_bytes(b"startup")
            (base / "boot" / "startup.json5").write_text('{libpath: "libstartup.so"}')
            secret = os.urandom(16)
            self.nodes[host] = RefNode(NodeOptions(
                port=0, jwt_secret=secret, rest_rps=0, data_dir=base / "node",
                slipstream_configs=[str(base / "boot" / "startup.json5")])).start()
            (base / "secret.b64").write_text(base64.b64encode(secret).decode())
            common = config(base / "libs", "metrics")
            self.declared[host] = {"metrics.json5": common}
            if HOSTS[host] == "clients":
                self.declared[host]["postgres.json5"] = config(
                    base / "libs", "postgres", '\n  connection_string: "postgres://aleo:hunter2@x"')
        # client-2 declares its postgres config as a template instead, rendered per host.
        template = top / "postgres.json5.j2"
        template.write_text(self.declared["client-2"]["postgres.json5"].replace(
            "aleo:hunter2@x", "aleo:hunter2@{{ inventory_hostname }}"))
        self.declared["client-2"]["postgres.json5"] = Template(str(template))

    def conf(self, host: str) -> Path:
        return self.top / host / "plugins.d"

    def live(self) -> dict[str, list[str]]:
        return {host: sorted(node.manager.names()) for host, node in self.nodes.items()}

    def files(self) -> dict[str, dict[str, str]]:
        return {host: {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(self.conf(host).glob("*"))}
                if self.conf(host).exists() else {} for host in HOSTS}

    def inventory(self) -> Path:
        hosts = {}
        for host in HOSTS:
            base = self.top / host
            hosts[host] = {
                "slipstream_reconciler_config_dir": str(self.conf(host)),
                "slipstream_reconciler_state_dir": str(base / "state"),
                "slipstream_reconciler_node_url": self.nodes[host].url,
                "slipstream_reconciler_jwt_secret_path": str(base / "etc" / "jwt-secret"),
                "slipstream_reconciler_jwt_secret": (base / "secret.b64").read_text(),
                "slipstream_reconciler_plugin_configs": [
                    {"file": f, "template": c.path} if isinstance(c, Template) else
                    {"file": f, "content": c} for f, c in sorted(self.declared[host].items())],
            }
        groups = {group: {"hosts": {h: hosts[h] for h, g in HOSTS.items() if g == group}}
                  for group in ("validators", "clients")}
        inventory = {"all": {"children": groups, "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "slipstream_reconciler_install": False, "slipstream_reconciler_service": False,
            "slipstream_reconciler_converge": "now",
            "slipstream_reconciler_executable": str(SCRIPT),
            "slipstream_reconciler_max_rps": 0}}}
        path = self.top / "inventory.json"  # JSON is YAML: the yaml inventory plugin reads it
        path.write_text(json.dumps(inventory, indent=1))
        return path

    def play(self, *args: str) -> Play:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPSTREAM_",
                                                                          "ANSIBLE_"))}
        env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_PIPELINING": "1",
                    # The collection comes from the example's own ansible.cfg.
                    "ANSIBLE_LOCAL_TEMP": str(self.top / "ansible-tmp"),
                    "ANSIBLE_HOME": str(self.top / "ansible-home"),
                    "TMPDIR": str(self.top / "tmp")})
        (self.top / "tmp").mkdir(exist_ok=True)
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory()),
                               "site.yml", *args], cwd=EXAMPLES, env=env, capture_output=True,
                              text=True, timeout=240, stdin=subprocess.DEVNULL)
        return Play(done.returncode, done.stdout + done.stderr)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class Play:
    """ansible-playbook's default output, read as an operator reads it."""

    def __init__(self, code: int, out: str, hosts=HOSTS) -> None:
        self.code, self.out, self.hosts = code, out, hosts

    def recap(self) -> dict[str, dict[str, int]]:
        found = {}
        for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", self.out, re.M):
            found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
        assert set(found) == set(self.hosts), self.out
        return found

    def task(self, name: str) -> dict[str, str]:
        """host -> ok / changed / fatal, for every run of the task (one per batch)."""
        results: dict[str, str] = {}
        for section in re.split(r"^(?=TASK \[|RUNNING HANDLER \[|PLAY )", self.out,
                                flags=re.M):
            if section.startswith("TASK [") and section.split("]", 1)[0].endswith(name):
                for status, host in re.findall(r"^(ok|changed|fatal|skipping): \[([^\]]+)\]",
                                               section, re.M):
                    results[host] = status
        return results


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.stop()


def test_a_normal_run_converges_every_host(fleet):
    play = fleet.play()
    assert play.code == 0, play.out
    assert play.task(MODULE_TASK) == dict.fromkeys(HOSTS, "changed"), play.out
    live = fleet.live()
    for host, group in HOSTS.items():
        wanted = ["metrics", "startup"] + (["postgres"] if group == "clients" else [])
        assert live[host] == sorted(wanted), (host, live)
        conf = fleet.conf(host)
        assert oct(conf.stat().st_mode & 0o777) == "0o755"
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in conf.iterdir()} == \
            dict.fromkeys(fleet.declared[host], "0o644")
        secret = fleet.top / host / "etc" / "jwt-secret"
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
    rendered = (fleet.conf("client-2") / "postgres.json5").read_text()
    assert 'connection_string: "postgres://aleo:hunter2@client-2"' in rendered
    # The secret and the plugin's own values never reach the play's output.
    assert "hunter2" not in play.out
    for host in HOSTS:
        assert (fleet.top / host / "secret.b64").read_text() not in play.out


def test_a_second_run_is_all_ok(fleet):
    play = fleet.play()
    assert play.code == 0, play.out
    assert all(counts["changed"] == 0 and counts["failed"] == 0
               for counts in play.recap().values()), play.out
    assert play.task(MODULE_TASK) == dict.fromkeys(HOSTS, "ok")


def test_check_diff_names_the_hosts_that_would_change_and_changes_nothing(fleet):
    libs2 = fleet.top / "validator-2" / "libs"
    fleet.declared["validator-2"]["indexer.json5"] = config(libs2, "indexer")
    del fleet.declared["client-1"]["postgres.json5"]
    # An out-of-band change the files do not show: client-2's node lost a plugin.
    fleet.nodes["client-2"].manager.unload("metrics")
    (fleet.conf("client-1") / "README").write_text("notes")
    files, live = fleet.files(), fleet.live()
    stray = set((fleet.top / "tmp").iterdir())

    play = fleet.play("--check", "--diff")
    assert play.code == 0, play.out
    assert play.task(MODULE_TASK) == {"validator-1": "ok", "validator-2": "changed",
                                      "client-1": "changed", "client-2": "changed"}, play.out
    changed = {h for h, counts in play.recap().items() if counts["changed"]}
    assert changed == {"validator-2", "client-1", "client-2"}, play.out
    # The diff is the plan, per plugin, headed by the CLI's line for it.
    assert re.search(r"^\+\+\+ after: \+ load indexer  \S+/validator-2/plugins.d/"
                     r"indexer.json5  \(new\)$", play.out, re.M), play.out
    assert re.search(r"^--- before: - unload postgres  \S+/client-1/plugins.d/postgres.json5",
                     play.out, re.M), play.out
    assert re.search(r"^-plugin postgres: loaded$", play.out, re.M), play.out
    assert re.search(r"^\+plugin metrics: loaded from \S+/client-2/plugins.d/metrics.json5$",
                     play.out, re.M), play.out
    # The planned files are the files as the play writes them, templates rendered too:
    # client-2's postgres.json5 (a template) is not seen as changed.
    assert "replace" not in play.out and "postgres: loaded from" not in play.out
    # Nothing changed: not the nodes, not the files, and no staging directory is left.
    assert fleet.live() == live
    assert fleet.files() == files
    assert set((fleet.top / "tmp").iterdir()) == stray
    assert "hunter2" not in play.out


def test_the_change_applies_and_a_broken_file_fails_only_its_host(fleet):
    """The change the dry run showed, in a run where client-2's postgres config is also
    broken: every other host converges; client-2 does what it can and fails."""
    fleet.declared["client-2"]["postgres.json5"] = "{\n  libpath: ,\n}\n"
    play = fleet.play("--diff")
    assert play.code != 0, play.out
    assert play.task(MODULE_TASK) == {"validator-1": "ok", "validator-2": "changed",
                                      "client-1": "changed", "client-2": "fatal"}, play.out
    recap = play.recap()
    assert {h for h, counts in recap.items() if counts["failed"]} == {"client-2"}
    # The reconciler's own one-line reason, with the file and line.
    assert re.search(r'"msg": "\S+/client-2/plugins.d/postgres.json5:2:\d+: invalid JSON5',
                     play.out), play.out
    live = fleet.live()
    assert live["validator-2"] == ["indexer", "metrics", "startup"]
    assert live["client-1"] == ["metrics", "startup"]
    # client-2's metrics is back; the broken file's plugin is left exactly as it was.
    assert live["client-2"] == ["metrics", "postgres", "startup"]
    assert not (fleet.conf("client-1") / "postgres.json5").exists()
    # A file nobody declared, but not a config (written before the dry run): left alone.
    assert (fleet.conf("client-1") / "README").read_text() == "notes"


def test_ansible_doc_shows_every_option():
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ANSIBLE), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(BIN / "ansible-doc"), "--json",
                           "slipstream.reconciler.slipstream_plugins"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["slipstream.reconciler.slipstream_plugins"]["doc"]
    options = doc["options"]
    for option in ("config_dir", "node_url", "network", "state_dir", "jwt_token_file",
                   "jwt_secret_file", "prune", "max_unloads", "allow_empty", "executable"):
        assert options[option]["description"], option
    assert doc["attributes"]["check_mode"]["support"] == "full"


def test_ansible_lint_passes_offline():
    """As a person runs it in ansible/: the collection found through ansible/ansible.cfg,
    nothing fetched from Galaxy (ansible/.ansible-lint says offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({"NO_COLOR": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    done = subprocess.run([str(BIN / "ansible-lint")], cwd=ANSIBLE, capture_output=True,
                          text=True, env=env, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr


# -- Agave validators: the example's agave.yml, each host its own reference validator -----
AGAVE_HOSTS = {"sol-1": "agave_validators", "sol-2": "agave_validators"}


def yellowstone(libs: Path, version: str) -> str:
    """Yellowstone gRPC as operators install it: each release under its own path, a name
    that is the library's own and changes with it, a strict-JSON config with no `name`."""
    lib = libs / f"yellowstone-grpc-geyser-{version}" / "libyellowstone_grpc_geyser.so"
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(f"placeholder\ngeyser:name=yellowstone-grpc-geyser-{version}\n"
                    "geyser:strict-json\n".encode())
    return json.dumps({"libpath": str(lib), "grpc": {"address": "127.0.0.1:10000"}}) + "\n"


class AgaveFleet:
    """Two validators, each a reference Agave node with its ledger and one start-up plugin."""

    def __init__(self, top: Path) -> None:
        from reconciler.refnode.agave import AgaveNode, AgaveOptions

        self.top = top
        self.nodes = {}
        self.declared: dict[str, dict[str, str]] = {}
        for host in AGAVE_HOSTS:
            base = top / host
            (base / "libs").mkdir(parents=True)
            (base / "boot").mkdir()
            (base / "ledger").mkdir()
            (base / "boot" / "libstartup.so").write_bytes(b"startup")
            (base / "boot" / "startup.json5").write_text('{libpath: "libstartup.so"}')
            self.nodes[host] = AgaveNode(AgaveOptions(
                ledger=base / "ledger",
                geyser_plugin_configs=[str(base / "boot" / "startup.json5")])).start()
            self.declared[host] = {"postgres.json5": config(base / "libs", "postgres"),
                                   "yellowstone.json": yellowstone(base / "libs", "9.0.0")}

    def conf(self, host: str) -> Path:
        return self.top / host / "plugins.d"

    def live(self) -> dict[str, list[str]]:
        return {host: sorted(node.manager.names()) for host, node in self.nodes.items()}

    def play(self, *args: str) -> Play:
        hosts = {host: {
            "slipstream_reconciler_config_dir": str(self.conf(host)),
            "slipstream_reconciler_state_dir": str(self.top / host / "state"),
            "slipstream_reconciler_ledger": str(self.top / host / "ledger"),
            "slipstream_reconciler_install": False, "slipstream_reconciler_service": False,
            "slipstream_reconciler_converge": "now",
            "slipstream_reconciler_executable": str(SCRIPT),
            "slipstream_reconciler_plugin_configs": [
                {"file": f, "content": c} for f, c in sorted(self.declared[host].items())],
        } for host in AGAVE_HOSTS}
        inventory = {"all": {"children": {"agave_validators": {"hosts": hosts}}, "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "ansible_become": False}}}
        path = self.top / "inventory.json"
        path.write_text(json.dumps(inventory, indent=1))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPSTREAM_",
                                                                          "ANSIBLE_"))}
        env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_PIPELINING": "1",
                    "ANSIBLE_LOCAL_TEMP": str(self.top / "ansible-tmp"),
                    "ANSIBLE_HOME": str(self.top / "ansible-home"),
                    "TMPDIR": str(self.top / "tmp")})
        (self.top / "tmp").mkdir(exist_ok=True)
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(path), "agave.yml",
                               *args], cwd=EXAMPLES, env=env, capture_output=True, text=True,
                              timeout=240, stdin=subprocess.DEVNULL)
        return Play(done.returncode, done.stdout + done.stderr, hosts=AGAVE_HOSTS)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def agave_fleet(tmp_path_factory):
    f = AgaveFleet(tmp_path_factory.mktemp("agave-fleet"))
    yield f
    f.stop()


def test_agave_a_run_converges_each_validator_and_a_second_is_all_ok(agave_fleet):
    play = agave_fleet.play()
    assert play.code == 0, play.out
    assert play.task(MODULE_TASK) == dict.fromkeys(AGAVE_HOSTS, "changed"), play.out
    # Yellowstone's name was known only after the load: the validator's answer.
    wanted = ["postgres", "startup", "yellowstone-grpc-geyser-9.0.0"]
    assert agave_fleet.live() == {host: wanted for host in AGAVE_HOSTS}
    play = agave_fleet.play()
    assert play.code == 0, play.out
    assert all(counts["changed"] == 0 and counts["failed"] == 0
               for counts in play.recap().values()), play.out


def test_agave_a_yellowstone_upgrade_is_one_replace_dry_run_then_real(agave_fleet):
    libs = agave_fleet.top / "sol-2" / "libs"
    agave_fleet.declared["sol-2"]["yellowstone.json"] = yellowstone(libs, "9.1.0")
    live = agave_fleet.live()
    play = agave_fleet.play("--check", "--diff")
    assert play.code == 0, play.out
    assert play.task(MODULE_TASK) == {"sol-1": "ok", "sol-2": "changed"}, play.out
    assert "-/+ replace" in play.out and "unload" not in play.out, play.out
    assert agave_fleet.live() == live  # the dry run changed nothing
    play = agave_fleet.play()
    assert play.code == 0, play.out
    assert play.task(MODULE_TASK) == {"sol-1": "ok", "sol-2": "changed"}, play.out
    assert agave_fleet.live()["sol-2"] == ["postgres", "startup",
                                           "yellowstone-grpc-geyser-9.1.0"]
    assert agave_fleet.live()["sol-1"] == live["sol-1"]


# -- the role for real, under the systemd that boots in namespaces (tests/sysns.py) ------
SYSTEM_PYTHON = Path("/usr/bin/python3")  # what a Debian host has; ProtectHome= hides pyenv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the `build` package is missing (test extras)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out),
                           str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = out.glob("*.whl")
    return found


def test_the_role_installs_and_starts_the_service_under_systemd(tmp_path_factory, wheel):
    from tests.sysns import CREDENTIAL_DROPIN, STATE, UNIT, booted, free_port

    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"no {SYSTEM_PYTHON} to make the venv with")
    with booted(tmp_path_factory.mktemp("systemd")) as m:
        # The wheel goes in through a pipe: the namespace has its own /tmp.
        dest = f"/root/dist/{wheel.name}"
        m.run("mkdir -p /root/dist")
        done = subprocess.run(["nsenter", "-t", str(m.pid), "-a", "sh", "-c",
                               f"cat > {dest}"], input=wheel.read_bytes(), capture_output=True)
        assert done.returncode == 0, done.stderr
        # The node, inside, with its start-up plugin and the fleet's secret.
        secret = base64.b64encode(os.urandom(16)).decode()
        port = free_port()
        m.run("install -d -m 0755 /opt/plugin-libs /opt/refnode && printf startup > "
              "/opt/refnode/libstartup.so && printf ELF > /opt/plugin-libs/libmetrics.so && "
              "printf ELF > /opt/plugin-libs/libpostgres.so && chmod 0644 /opt/plugin-libs/*")
        m.write("/opt/refnode/boot.json5", '{libpath: "libstartup.so"}')
        m.run(f"systemd-run --unit=refnode --property=Restart=no {SCRIPT} node "
              f"--rest 127.0.0.1:{port} --jwt-secret {secret} --rest-rps 0 "
              "--slipstream-config /opt/refnode/boot.json5 --data-dir /var/lib/refnode")
        # LoadCredential= cannot hand a credential over in this namespace (see
        # test_systemd_real): this drop-in, not the role's, stands in for it.
        m.write(f"/etc/systemd/system/{UNIT}.service.d/90-test-credential.conf", CREDENTIAL_DROPIN)
        host = {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "slipstream_reconciler_pip_source": dest,
            "slipstream_reconciler_python": str(SYSTEM_PYTHON),
            "slipstream_reconciler_converge": "daemon",
            "slipstream_reconciler_node_url": f"http://127.0.0.1:{port}",
            "slipstream_reconciler_jwt_secret": secret,
            "slipstream_reconciler_max_rps": 0,
            "slipstream_reconciler_settings": {"SLIPSTREAM_METRICS_ADDRESS": "off"},
            "slipstream_reconciler_plugin_configs": [
                {"file": "metrics.json5", "content":
                 '{libpath: "/opt/plugin-libs/libmetrics.so", name: "metrics"}\n'},
                {"file": "postgres.json5", "content":
                 '{libpath: "/opt/plugin-libs/libpostgres.so", name: "postgres", '
                 'password: "hunter2"}\n'}],
        }
        inventory = {"all": {"children": {"validators": {"hosts": {"validator-1": host}}}}}
        m.write("/root/play/inventory.json", json.dumps(inventory))
        play = (f"cd {EXAMPLES} && PATH={BIN}:$PATH ANSIBLE_NOCOLOR=1 "
                f"ANSIBLE_COLLECTIONS_PATH={ANSIBLE} ANSIBLE_LOCAL_TEMP=/root/.ansible/tmp "
                f"{BIN}/ansible-playbook -i /root/play/inventory.json site.yml")
        first = m.run(play, check=False, timeout=240)
        assert first.returncode == 0, first.stdout + first.stderr
        assert m.show("ActiveState") == "active", m.run(f"systemctl status {UNIT}",
                                                        check=False).stdout
        assert m.show("StatusText") == "in sync: 2 plugins, 1 unmanaged"
        assert m.show("UnitFileState") == "enabled"
        # The unit is the repository's file, as is; the settings file starts as the
        # repository's and adds this host's settings.
        shipped = (ROOT / "systemd" / "slipstream-reconciler.service").read_text()
        assert m.run(f"cat /etc/systemd/system/{UNIT}.service").stdout == shipped
        settings = m.run("cat /etc/default/slipstream-reconciler").stdout
        assert settings.startswith((ROOT / "systemd" / "slipstream-reconciler.env").read_text())
        assert f"SLIPSTREAM_NODE_URL=http://127.0.0.1:{port}\n" in settings
        assert secret not in settings and secret not in first.stdout + first.stderr
        modes = m.run("stat -c '%U %a %n' /etc/slipstream /etc/slipstream/plugins.d "
                      "/etc/slipstream/plugins.d/* /etc/slipstream/jwt-secret "
                      "/opt/slipstream-reconciler/bin/slipstream-reconciler").stdout.split("\n")
        assert modes[:5] == ["root 755 /etc/slipstream", "root 755 /etc/slipstream/plugins.d",
                             "root 644 /etc/slipstream/plugins.d/metrics.json5",
                             "root 644 /etc/slipstream/plugins.d/postgres.json5",
                             "root 600 /etc/slipstream/jwt-secret"], modes
        assert m.run("/usr/local/bin/slipstream-reconciler --version").stdout.startswith(
            "slipstream-reconciler ")
        # Again: nothing to do, and the daemon keeps running as it was.
        pid = m.show("MainPID")
        second = m.run(play, check=False, timeout=240)
        assert second.returncode == 0, second.stdout + second.stderr
        assert re.search(r"^validator-1\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0",
                         second.stdout, re.M), second.stdout
        assert m.show("MainPID") == pid
        # converge: now beside the running daemon: the module's pass (root) and the
        # daemon's take turns on one ledger, which stays the service user's.
        m.run("printf ELF > /opt/plugin-libs/libindexer.so && "
              "chmod 0644 /opt/plugin-libs/libindexer.so")
        host["slipstream_reconciler_converge"] = "now"
        host["slipstream_reconciler_plugin_configs"].append(
            {"file": "indexer.json5",
             "content": '{libpath: "/opt/plugin-libs/libindexer.so", name: "indexer"}\n'})
        m.write("/root/play/inventory.json", json.dumps(inventory))
        third = m.run(play, check=False, timeout=240)
        assert third.returncode == 0, third.stdout + third.stderr
        m.run(f"systemctl reload {UNIT}", timeout=30)
        assert m.show("StatusText") == "in sync: 3 plugins, 1 unmanaged"
        assert m.show("MainPID") == pid and m.show("NRestarts") == "0"
        uid = m.run(f"stat -c %u /proc/{pid}").stdout.strip()
        owners = set(m.run(f"find {STATE}/ -printf '%U\\n'").stdout.split())
        assert owners == {uid}, owners
        journal = m.run(f"journalctl -q -u {UNIT} -o cat --no-pager").stdout
        assert "hunter2" not in journal and secret not in journal


def test_the_built_collection_carries_the_repositorys_unit(tmp_path):
    """`ansible-galaxy collection build` follows the role's links to systemd/: the unit and
    its settings file in the collection are the repository's, not copies that drift."""
    role = "roles/slipstream_reconciler"
    done = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          cwd=ANSIBLE / "ansible_collections/slipstream/reconciler")
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = tmp_path.glob("slipstream-reconciler-*.tar.gz")
    with tarfile.open(archive) as tar:
        for name in ("slipstream-reconciler.service", "slipstream-reconciler.env"):
            member = tar.extractfile(f"{role}/files/{name}")
            assert member is not None, name
            assert member.read() == (ROOT / "systemd" / name).read_bytes()
        assert f"{role}/library/slipstream_plugins.py" in tar.getnames()


def test_the_role_copied_alone_converges_a_node(tmp_path):
    """A role copied into a playbook's roles/ (links followed), with no collection."""
    shutil.copytree(ANSIBLE / "ansible_collections/slipstream/reconciler/roles/"
                    "slipstream_reconciler", tmp_path / "roles" / "slipstream_reconciler",
                    symlinks=False)
    secret = os.urandom(16)
    (tmp_path / "libstartup.so").write_bytes(b"startup")
    (tmp_path / "startup.json5").write_text('{libpath: "libstartup.so"}')
    node = RefNode(NodeOptions(port=0, jwt_secret=secret, rest_rps=0, data_dir=tmp_path / "node",
                               slipstream_configs=[str(tmp_path / "startup.json5")])).start()
    try:
        conf = tmp_path / "plugins.d"
        (tmp_path / "libs").mkdir()
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "slipstream_reconciler_install": False, "slipstream_reconciler_service": False,
                "slipstream_reconciler_converge": "now",
                "slipstream_reconciler_executable": str(SCRIPT),
                "slipstream_reconciler_config_dir": str(conf),
                "slipstream_reconciler_state_dir": str(tmp_path / "state"),
                "slipstream_reconciler_node_url": node.url,
                "slipstream_reconciler_jwt_secret": base64.b64encode(secret).decode(),
                "slipstream_reconciler_jwt_secret_path": str(tmp_path / "jwt-secret"),
                "slipstream_reconciler_plugin_configs": [
                    {"file": "metrics.json5", "content": config(tmp_path / "libs", "metrics")}]}
        (tmp_path / "inventory.json").write_text(json.dumps({"all": {"hosts": {"solo": host}}}))
        (tmp_path / "play.yml").write_text(
            "- name: One node\n  hosts: all\n  gather_facts: false\n"
            "  roles:\n    - role: slipstream_reconciler\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPSTREAM_",
                                                                          "ANSIBLE_"))}
        env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "none"),
                    "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
                    "PATH": f"{BIN}:{env.get('PATH', '')}"})

        def play(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventory.json",
                                   "play.yml", *args], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=120, stdin=subprocess.DEVNULL)

        # A dry run on a host never set up: it would change, and nothing is written.
        done = play("--check", "--diff")
        assert done.returncode == 0, done.stdout + done.stderr
        assert Play(0, done.stdout).task(MODULE_TASK) == {"solo": "changed"}, done.stdout
        assert "not planned: " in done.stdout + done.stderr
        assert not conf.exists() and not (tmp_path / "jwt-secret").exists()
        assert node.manager.names() == ["startup"]
        done = play()
        assert done.returncode == 0, done.stdout + done.stderr
        assert Play(0, done.stdout).task(MODULE_TASK) == {"solo": "changed"}, done.stdout
        assert sorted(node.manager.names()) == ["metrics", "startup"]
    finally:
        node.stop()
