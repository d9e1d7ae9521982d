"""A real systemd booted as PID 1 of private namespaces, for tests of what runs under it.

systemd boots in namespaces of its own (pid, mount, uts, ipc, cgroup; the network is the
host's, so loopback is shared) on an overlay of `/` whose upper layer is a tmpfs under
/dev/shm: nothing written inside reaches the host. It must never boot on the host's own
tree: at boot systemd-tmpfiles empties /tmp (tmp.conf's `D /tmp`), the CI checkout
included. /run, /tmp and /dev/shm get fresh tmpfs inside, and this checkout is bound
read-only at its own path (it may live under /tmp).

It boots to basic.target, not multi-user.target: the image's own services (a PostgreSQL
enabled in the host's /etc, for one) would otherwise start inside too, and under load
keep the boot 'starting' past the wait, which skipped these tests. The tests start the
units they need themselves.

Shared by test_systemd_real (the unit, following the operator guide) and test_ansible
(the role that installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("slipstream-reconciler")
UNIT = "slipstream-reconciler"
STATE = "/var/lib/slipstream-reconciler"

BOOT = r"""
set -e
T=$1; CHECKOUT=$2
mount -t tmpfs -o mode=0755 tmpfs "$T"
mkdir -p "$T/up" "$T/work" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/up,workdir=$T/work" "$T/root"
mount -t proc proc "$T/root/proc"
mount --rbind /sys "$T/root/sys"
mount --rbind /dev "$T/root/dev"
mount -t tmpfs tmpfs "$T/root/dev/shm"
mount -t tmpfs tmpfs "$T/root/run"
mount -t tmpfs tmpfs "$T/root/tmp"
mkdir -p "$T/root$CHECKOUT"
mount --bind "$CHECKOUT" "$T/root$CHECKOUT"
mount -o remount,bind,ro "$T/root$CHECKOUT"
mkdir -p "$T/root/oldroot"
cd "$T/root"
pivot_root . oldroot
umount -l /oldroot
exec /lib/systemd/systemd --system --unit=basic.target
"""


class Machine:
    """A booted systemd in namespaces; run() executes a shell command inside."""

    def __init__(self, tmp: Path) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="slipstream-systemd-", dir="/dev/shm"))
        script = tmp / "boot.sh"
        script.write_text(BOOT)
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
             "--propagation", "private", "sh", str(script), str(self.top), str(ROOT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self._find_pid1()

    def _find_pid1(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"the namespace could not be made: {out.strip()}")
            for child in _children(self.process.pid):
                with open(f"/proc/{child}/comm") as comm:
                    if comm.read().strip() == "systemd":
                        return child
            time.sleep(0.05)
        raise RuntimeError("systemd did not start in the namespace within 10 s")

    def run(self, command: str, check: bool = True, timeout: float = 60,
            cwd: str = "/") -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "sh", "-c",
                               f"cd {cwd} && {command}"], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done

    def show(self, prop: str) -> str:
        return self.run(f"systemctl show -P {prop} {UNIT}").stdout.strip()

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """A file inside, through a pipe: nothing crosses to the host's tree."""
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "sh", "-c",
                               f"mkdir -p $(dirname {path}) && cat > {path} && "
                               f"chmod {mode} {path}"], input=text, text=True,
                              capture_output=True)
        assert done.returncode == 0, done.stderr

    def record(self) -> dict:
        return json.loads(self.run(f"cat {STATE}/daemon.json").stdout)

    def wait_running(self) -> str:
        deadline, state = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        return state

    def poweroff(self) -> None:
        self.run("systemctl poweroff", check=False, timeout=10)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        with_content = list(self.top.iterdir()) if self.top.exists() else []
        assert not with_content, f"the namespace's tmpfs leaked onto the host: {with_content}"
        self.top.rmdir()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter", "pivot_root"):
        if shutil.which(tool) is None:
            return f"no {tool} (util-linux)"
    if not Path("/lib/systemd/systemd").exists():
        return "no /lib/systemd/systemd (apt-get install systemd)"
    if not SCRIPT.exists():
        return f"no installed console script at {SCRIPT}"
    if not Path("/dev/shm").is_dir():
        return "no /dev/shm for the overlay's upper layer"
    return None


@contextlib.contextmanager
def booted(tmp: Path) -> Iterator[Machine]:
    """A running systemd in namespaces, powered off afterwards; skips where it cannot boot."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    try:
        m = Machine(tmp)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        state = m.wait_running()
        if state not in ("running", "degraded"):
            jobs = m.run("systemctl list-jobs --no-pager", check=False).stdout.strip()
            pytest.skip(f"systemd in the namespace did not come up (is-system-running: "
                        f"{state!r}; jobs: {jobs[:500]})")
        yield m
    finally:
        m.poweroff()


# LoadCredential= cannot hand a credential over in these namespaces (the credentials
# directory comes out unreadable): this drop-in stands in for it, as root copying the
# secret 0400 to the service's (dynamic) user and pointing $CREDENTIALS_DIRECTORY there.
CREDENTIAL_DROPIN = "\n".join([
    "[Service]", "LoadCredential=", "RuntimeDirectory=slipstream-credentials",
    "RuntimeDirectoryMode=0700",
    "ExecStartPre=+/bin/sh -c 'install -m 0400 -o $(stat -c %%u "
    "/run/slipstream-credentials) /etc/slipstream/jwt-secret "
    "/run/slipstream-credentials/jwt-secret'",
    "Environment=CREDENTIALS_DIRECTORY=/run/slipstream-credentials"]) + "\n"
