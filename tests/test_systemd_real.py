"""The unit under a real systemd 252, following docs/operator-guide.md as written.

systemd boots as PID 1 of private namespaces (pid, mount, uts, ipc, cgroup; the network
is the host's, so loopback is shared) on an overlay of `/` whose upper layer is a tmpfs
under /dev/shm: nothing written inside reaches the host. It must never boot on the host's
own tree: at boot systemd-tmpfiles empties /tmp (tmp.conf's `D /tmp`), the CI checkout
included. /run, /tmp and /dev/shm get fresh tmpfs inside, and this checkout is bound
read-only at its own path (it may live under /tmp).

The guide's shell blocks are extracted and run inside; drop-ins then point ExecStart at
this checkout's venv, the node URL at a reference node started inside, and shorten the
timeouts so that what takes minutes in production takes seconds here. LoadCredential=
cannot hand a credential over in this namespace (the directory is unreadable to the
service), so a drop-in stands in for it: a root ExecStartPre= copies the secret into a
directory owned by the service's user, as systemd does, and sets $CREDENTIALS_DIRECTORY.

The tests run in order against one booted machine (about 40 s in all).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time

import pytest
import requests

from tests.sysns import CREDENTIAL_DROPIN, ROOT, SCRIPT, STATE, UNIT, Machine, booted, free_port

GUIDE = ROOT / "docs" / "operator-guide.md"
DROPIN = f"/etc/systemd/system/{UNIT}.service.d"
FIRST_PASS_PLUGINS = 40  # at 10 req/s a first pass of ~4 s, against TimeoutStartSec=2s
LATE: list[str] = []  # the plugins the watchdog test added


def guide_block(heading: str) -> list[str]:
    """The first ```sh block under a heading of the operator guide, as command lines."""
    text = GUIDE.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block under '{heading}' in {GUIDE}"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    with booted(tmp_path_factory.mktemp("systemd")) as m:
        yield m


@pytest.fixture(scope="module")
def deployed(machine):
    """The guide followed to the letter, with drop-ins for this checkout and this test."""
    m = machine
    port = free_port()
    m.run("install -d -m 0755 /opt/plugin-libs /root/guide")
    m.run("printf 'ELF placeholder' > /opt/plugin-libs/libpostgres.so && "
          "chmod 0644 /opt/plugin-libs/libpostgres.so")
    m.write("/root/guide/postgres.json5", '{libpath: "/opt/plugin-libs/libpostgres.so", '
                                          'name: "postgres", password: "hunter2"}')
    for line in guide_block("The config directory"):
        m.run(line, cwd="/root/guide")
    # More plugins, for a first pass longer than the start timeout below.
    m.run(f"for i in $(seq -w 1 {FIRST_PASS_PLUGINS - 1}); do "
          "printf 'ELF placeholder' > /opt/plugin-libs/libp$i.so; "
          "printf '{libpath: \"/opt/plugin-libs/libp%s.so\", name: \"p%s\"}' $i $i "
          "> /etc/slipstream/plugins.d/p$i.json5; done; "
          "chmod 0644 /opt/plugin-libs/* /etc/slipstream/plugins.d/*")
    systemctl = [line for line in guide_block("The systemd service")
                 if line.startswith("systemctl")]
    for line in guide_block("The systemd service"):
        if not line.startswith("systemctl"):
            m.run(line, cwd=str(ROOT))
    secret = m.run("cat /etc/slipstream/jwt-secret").stdout.strip()
    assert m.run("stat -c %a /etc/slipstream/jwt-secret").stdout.strip() == "600"
    # The reference node, inside (it reads the configs at the paths the service sees).
    m.write("/opt/refnode/boot.json5", '{libpath: "libstartup.so"}')
    m.run("printf startup > /opt/refnode/libstartup.so")
    m.run(f"systemd-run --unit=refnode --property=Restart=no {SCRIPT} node "
          f"--rest 127.0.0.1:{port} --jwt-secret {secret} --rest-rps 10 "
          "--slipstream-config /opt/refnode/boot.json5 --data-dir /var/lib/refnode")
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(url), 15, "the reference node")
    # This checkout instead of /opt's venv; the node; short timeouts; the credential.
    # A checkout or a Python (pyenv) under a home directory (ProtectHome= hides it) or
    # under /tmp (PrivateTmp= does): show the service just those, read-only. /opt needs
    # none of this.
    paths = {str(ROOT), os.path.realpath(sys.base_prefix)}
    in_home = [p for p in paths if p.startswith(("/home/", "/root/", "/run/user/"))]
    in_tmp = [p for p in paths if p.startswith(("/tmp/", "/var/tmp/"))]
    home = (["ProtectHome=tmpfs"] if in_home else []) + \
        [f"BindReadOnlyPaths={p}" for p in sorted(in_home + in_tmp)]
    m.write(f"{DROPIN}/10-this-checkout.conf", "\n".join([
        "[Service]", "ExecStart=", f"ExecStart={SCRIPT} run",
        "ExecReload=", f"ExecReload={SCRIPT} reload --pid $MAINPID", *home]) + "\n")
    m.write(f"{DROPIN}/20-test-timings.conf", "\n".join([
        "[Service]", "TimeoutStartSec=2s", "WatchdogSec=3s", "RestartSec=1s",
        f"Environment=SLIPSTREAM_NODE_URL={url}", "Environment=SLIPSTREAM_MAX_RPS=10",
        "Environment=SLIPSTREAM_TIMEOUT=2", "Environment=SLIPSTREAM_PROBE_INTERVAL=0.5",
        "Environment=SLIPSTREAM_METRICS_ADDRESS=off"]) + "\n")
    m.write(f"{DROPIN}/30-credential.conf", CREDENTIAL_DROPIN)
    started = time.monotonic()
    for line in systemctl:
        done = m.run(line, check=False, timeout=90)
        assert done.returncode == 0, "\n".join([line, done.stderr, *_journal(m)[-20:]])
    return {"url": url, "secret": secret, "start_seconds": time.monotonic() - started}


def synced(plugins: int) -> str:
    """The status line: our plugins, and the node's start-up plugin left alone."""
    return f"in sync: {plugins} plugins, 1 unmanaged"


def _answers(url: str) -> bool:
    try:
        requests.get(url + "/v2/mainnet/slipstream/plugins", timeout=1)
    except requests.RequestException:
        return False
    return True


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _journal(m: Machine) -> list[str]:
    return m.run(f"journalctl -q -u {UNIT} -o cat --no-pager").stdout.splitlines()


def test_the_guide_reaches_in_sync_under_dynamic_user_past_the_start_timeout(machine,
                                                                              deployed):
    m = machine
    assert m.show("ActiveState") == "active", m.run(f"systemctl status {UNIT}",
                                                    check=False).stdout
    # The first pass outlasted TimeoutStartSec=2s: READY=1 came after it, and the start
    # timeout was extended meanwhile instead of killing it.
    assert deployed["start_seconds"] > 2.5, deployed
    assert m.show("NRestarts") == "0"
    assert m.show("StatusText") == synced(FIRST_PASS_PLUGINS)
    pid = m.show("MainPID")
    uid = m.run(f"stat -c %u /proc/{pid}").stdout.strip()
    assert uid != "0", "the daemon must run as its dynamic user"
    owners = set(m.run(f"stat -L -c %u {STATE}/ {STATE}/*").stdout.split())
    assert owners == {uid}, owners
    assert m.record()["summary"] == synced(FIRST_PASS_PLUGINS)


def test_systemctl_reload_returns_after_the_new_pass(machine, deployed):
    m = machine
    before = m.record()
    asked = time.time()
    m.run(f"systemctl reload {UNIT}", timeout=30)
    after = m.record()  # read right after reload returned: the pass is already recorded
    assert after["passes"] > before["passes"]
    assert after["last_pass"]["started_at"] >= asked
    assert "sighup" in after["last_pass"]["reasons"]
    assert m.show("ActiveState") == "active"


def test_the_cli_as_root_beside_the_service_never_breaks_it(machine, deployed):
    m = machine
    m.run("printf 'ELF placeholder' > /opt/plugin-libs/libroot.so && "
          "chmod 0644 /opt/plugin-libs/libroot.so")
    m.write("/etc/slipstream/plugins.d/by-root.json5",
            '{libpath: "/opt/plugin-libs/libroot.so", name: "by-root"}')
    env = f"SLIPSTREAM_NODE_URL={deployed['url']} SLIPSTREAM_MAX_RPS=10"
    # The guide's lines for root beside the service, with this test's node URL.
    root_lines = guide_block("The systemd service")
    lines = [line for line in GUIDE.read_text().split("Running the command line as root")[1]
             .split("```sh\n", 1)[1].split("```", 1)[0].splitlines() if line.strip()]
    assert root_lines and lines[-1].startswith("slipstream-reconciler apply")
    apply = lines[-1].replace("slipstream-reconciler", str(SCRIPT), 1)
    done = m.run(f"{lines[0]}; export {env}; {apply}", check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    uid = m.run(f"stat -c %u /proc/{m.show('MainPID')}").stdout.strip()
    listing = m.run(f"find {STATE}/ -printf '%U %m %p\\n'").stdout
    owners = {line.split()[0] for line in listing.splitlines()}
    assert owners == {uid}, listing  # nothing root-owned is left behind
    # The service's next passes read and write those files as before.
    m.run("rm /etc/slipstream/plugins.d/by-root.json5")
    m.run(f"systemctl reload {UNIT}", timeout=30)
    record = m.record()
    assert record["last_pass"]["result"] in ("ok", "changed"), record["last_pass"]
    assert record["summary"] == synced(FIRST_PASS_PLUGINS)
    journal = "\n".join(_journal(m))
    assert "Permission denied" not in journal and "permission denied" not in journal


def test_the_watchdog_is_pinged_through_long_429_waits(machine, deployed):
    """Another client on the same IP eats the node's budget: the daemon's load meets 429
    after 429 for longer than its loop heartbeat allows (10 s), with WatchdogSec=3s."""
    m = machine
    pid, restarts = m.show("MainPID"), m.show("NRestarts")
    assert m.show("WatchdogUSec") == "3s"
    stop = threading.Event()

    def hammer() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    session.get(deployed["url"] + "/v2/mainnet/slipstream/plugins",
                                timeout=1)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    starved = None
    try:
        time.sleep(1)
        # Now and then the daemon's retry lands on a free slot before the other client
        # takes it: then this try proves nothing, and another plugin is tried.
        for attempt in range(3):
            name = f"late{attempt}"
            m.run(f"printf 'ELF placeholder' > /opt/plugin-libs/lib{name}.so && "
                  f"chmod 0644 /opt/plugin-libs/lib{name}.so")
            m.write(f"/etc/slipstream/plugins.d/{name}.json5",
                    f'{{libpath: "/opt/plugin-libs/lib{name}.so", name: "{name}"}}')
            time.sleep(13)
            if not any(f"load {name} " in line for line in _journal(m)):
                starved = name
                break
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert starved, "the other client never kept the node busy for 13 s: this proves nothing"
    LATE.extend(f"late{i}" for i in range(attempt + 1))
    _wait(lambda: m.record()["summary"] == synced(FIRST_PASS_PLUGINS + len(LATE)), 30,
          f"{starved} to be loaded once the other client stops")
    assert (m.show("MainPID"), m.show("NRestarts")) == (pid, restarts)
    assert not any("atchdog" in line for line in _journal(m))


def test_a_settings_error_stops_the_restart_loop(machine, deployed):
    """An unreadable credential: one clear line, exit 78, no restart every RestartSec=."""
    m = machine
    m.run("install -d -m 0700 /etc/slipstream/private && "
          "cp /etc/slipstream/jwt-secret /etc/slipstream/private/")
    m.write(f"{DROPIN}/40-unreadable.conf",
            "[Service]\nEnvironment=CREDENTIALS_DIRECTORY=/etc/slipstream/private\n")
    m.run("systemctl daemon-reload")
    m.run(f"systemctl restart {UNIT}", check=False, timeout=30)
    _wait(lambda: m.show("ActiveState") == "failed", 15, "the service to fail")
    time.sleep(2.5)  # RestartSec=1s: a restart loop would have restarted it by now
    assert m.show("ActiveState") == "failed"
    assert m.show("NRestarts") == "0"
    assert m.show("ExecMainStatus") == "78"
    journal = _journal(m)
    assert any("error: cannot read the systemd credential jwt-secret "
               "/etc/slipstream/private/jwt-secret: permission denied" in line
               for line in journal), journal[-5:]
    assert not any("internal error" in line or "Traceback" in line for line in journal)
    m.run(f"rm {DROPIN}/40-unreadable.conf && systemctl daemon-reload && "
          f"systemctl restart {UNIT}", timeout=60)
    assert m.show("ActiveState") == "active"


def test_the_journal_has_one_line_per_action_and_no_secret(machine, deployed):
    m = machine
    journal = _journal(m)
    text = "\n".join(journal)
    for name in ["postgres", *(f"p{i:02d}" for i in range(1, FIRST_PASS_PLUGINS)), *LATE]:
        lines = [line for line in journal if re.match(rf"(INFO )?load {name} \(", line)]
        assert len(lines) == 1, (name, lines)
    assert deployed["secret"] not in text
    assert "hunter2" not in text  # plugin config fields are the plugin's alone
    assert "eyJ" not in text and "Bearer" not in text  # no token (a JWT starts eyJ)


# -- Agave: the validator's user, its ledger, the reconciler's unit as that same user -------
AGAVE_UNIT = "slipstream-reconciler-agave"
AGAVE_DROPIN = f"/etc/systemd/system/{AGAVE_UNIT}.service.d"
AGAVE_STATE = f"/var/lib/{AGAVE_UNIT}"
LEDGER = "/home/sol/ledger"  # under a home: the case ProtectHome=read-only is there for
GEYSER_CONF = "/etc/slipstream/geyser.d"
GEYSER_PLUGINS = 5


# `agave-validator -l LEDGER plugin list`, in the few lines it takes: one listPlugins.
PLUGIN_LIST = """import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1] + "/admin.rpc")
s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "listPlugins", "params": []}')
print("\\n".join(json.loads(s.makefile().readline())["result"]))
"""


def _geyser_plugins(m: Machine) -> list[str]:
    """The validator's list, asked as the validator's user."""
    done = m.run(f"runuser -u sol -- /usr/bin/python3 /usr/local/bin/plugin-list {LEDGER}")
    return sorted(done.stdout.split())


@pytest.fixture(scope="module")
def agave_deployed(machine):
    """docs/agave.md's install lines, a validator running as `sol` with its ledger under
    /home/sol, and the reconciler's unit as that same user."""
    m = machine
    m.run("useradd --system --create-home --home-dir /home/sol --shell /bin/sh sol && "
          "useradd --system --no-create-home --shell /bin/sh intruder")
    # The ledger dir is open to all: the socket's own 0600 mode is then the only lock.
    m.run(f"chmod 0755 /home/sol && install -d -o sol -g sol -m 0755 {LEDGER}")
    # This checkout's Python may live under /root (pyenv): let the users reach it (inside
    # the namespace's overlay only).
    m.run("chmod o+x /root")
    m.write("/usr/local/bin/plugin-list", PLUGIN_LIST)
    m.run("install -d -m 0755 /opt/geyser/boot && printf startup > /opt/geyser/boot/libboot.so"
          " && printf '{libpath: \"libboot.so\", name: \"boot\"}' > /opt/geyser/boot/boot.json5"
          " && chmod 0644 /opt/geyser/boot/*")
    m.run(f"install -d -m 0755 {GEYSER_CONF} && for i in $(seq 1 {GEYSER_PLUGINS}); do "
          "printf 'ELF placeholder' > /opt/geyser/libg$i.so; "
          "printf '{libpath: \"/opt/geyser/libg%s.so\", name: \"g%s\"}' $i $i "
          f"> {GEYSER_CONF}/g$i.json5; done; chmod 0644 /opt/geyser/*.so {GEYSER_CONF}/*")
    m.run(f"systemd-run --unit=sol --uid=sol --gid=sol --property=Restart=no {SCRIPT} node "
          f"--kind agave --ledger {LEDGER} --geyser-plugin-config /opt/geyser/boot/boot.json5")
    _wait(lambda: m.run(f"test -S {LEDGER}/admin.rpc", check=False).returncode == 0, 15,
          "the validator's admin.rpc")
    assert m.run(f"stat -c '%U %a' {LEDGER}/admin.rpc").stdout.split() == ["sol", "600"]
    text = (ROOT / "docs" / "agave.md").read_text()
    section = text.split("\n## The systemd service\n", 1)[1]
    lines = [line for line in re.search(r"```sh\n(.*?)```", section, re.S).group(1)
             .splitlines() if line.strip()]
    for line in lines:
        if not line.startswith("systemctl"):
            m.run(line, cwd=str(ROOT))
    m.write(f"/etc/default/{AGAVE_UNIT}", f"SLIPSTREAM_LEDGER={LEDGER}\n"
            f"SLIPSTREAM_CONFIG_DIR={GEYSER_CONF}\n", mode="0644")
    in_tmp = [p for p in {str(ROOT), os.path.realpath(sys.base_prefix)}
              if p.startswith(("/tmp/", "/var/tmp/"))]
    m.write(f"{AGAVE_DROPIN}/10-this-checkout.conf", "\n".join([
        "[Service]", "ExecStart=",
        f"ExecStart={SCRIPT} run --node-kind agave --ledger ${{SLIPSTREAM_LEDGER}}",
        "ExecReload=", f"ExecReload={SCRIPT} reload --pid $MAINPID",
        *[f"BindReadOnlyPaths={p}" for p in in_tmp]]) + "\n")
    m.write(f"{AGAVE_DROPIN}/20-test-timings.conf", "\n".join([
        "[Service]", "TimeoutStartSec=20s", "RestartSec=1s",
        "Environment=SLIPSTREAM_PROBE_INTERVAL=0.5", "Environment=SLIPSTREAM_TIMEOUT=5",
        "Environment=SLIPSTREAM_METRICS_ADDRESS=off"]) + "\n")
    for line in lines:
        if line.startswith("systemctl"):
            done = m.run(line, check=False, timeout=60)
            journal = m.run(f"journalctl -q -u {AGAVE_UNIT} -o cat --no-pager",
                            check=False).stdout
            assert done.returncode == 0, "\n".join([line, done.stderr, journal[-2000:]])
    return m


def test_agave_the_unit_as_the_validators_user_converges_the_ledgers_socket(agave_deployed):
    m = agave_deployed
    show = lambda prop: m.run(f"systemctl show -P {prop} {AGAVE_UNIT}").stdout.strip()  # noqa: E731
    assert show("ActiveState") == "active"
    assert show("StatusText") == f"in sync: {GEYSER_PLUGINS} plugins, 1 unmanaged"
    sol = m.run("id -u sol").stdout.strip()
    assert m.run(f"stat -c %u /proc/{show('MainPID')}").stdout.strip() == sol
    assert _geyser_plugins(m) == sorted(["boot", *(f"g{i}" for i in
                                                   range(1, GEYSER_PLUGINS + 1))])
    # The ledger stayed the validator's: the reconciler wrote nothing there.
    assert m.run(f"ls -A {LEDGER}").stdout.split() == ["admin.rpc"]
    # A replace, through the watch on the config directory.
    m.run("printf 'ELF placeholder v2' > /opt/geyser/libg1-v2.so && chmod 0644 "
          f"/opt/geyser/libg1-v2.so && sed -i 's/libg1.so/libg1-v2.so/' {GEYSER_CONF}/g1.json5")
    m.run(f"systemctl reload {AGAVE_UNIT}", timeout=30)
    record = json.loads(m.run(f"cat {AGAVE_STATE}/daemon.json").stdout)
    assert record["summary"] == f"in sync: {GEYSER_PLUGINS} plugins, 1 unmanaged", record
    journal = m.run(f"journalctl -q -u {AGAVE_UNIT} -o cat --no-pager").stdout
    assert re.search(r"^(INFO )?replace g1 ", journal, re.M), journal[-2000:]
    assert "ermission denied" not in journal


def test_agave_another_user_gets_one_line_about_the_socket_and_unloads_nothing(
        agave_deployed):
    m = agave_deployed
    before = _geyser_plugins(m)
    m.run("install -d -o intruder -m 0700 /var/tmp/intruder-state && "
          "install -d -m 0755 /var/tmp/empty.d")
    # An empty directory with --allow-empty would unload every plugin it could reach.
    done = m.run(f"runuser -u intruder -- {SCRIPT} apply --allow-empty --prune all "
                 f"--node-kind agave --ledger {LEDGER} --config-dir /var/tmp/empty.d "
                 "--state-dir /var/tmp/intruder-state", check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert lines[0].startswith(f"error: may not open {LEDGER}/admin.rpc (owner sol, mode "
                               "0600"), lines
    assert "run slipstream-reconciler as the validator's user" in lines[0], lines
    assert "Traceback" not in done.stderr
    assert _geyser_plugins(m) == before
