"""A pod of configs/kubernetes/snarkos-with-reconciler.yaml, reproduced with the kernel's
own parts: run as root by tests/test_k8s.py inside fresh mount, network and pid
namespaces (`unshare`), it never changes the host.

Why each step: the pod's failures were about files, ids and modes (a Secret root-owned
0400 that uid 10001 could not read; a --slipstream-config path that no volume provided),
so the pod's file system is built as the kubelet builds it, at the manifest's own paths:
an overlay of `/` whose upper layer is a tmpfs (so /etc/slipstream and /var/run/secrets
can be created without touching the host), each ConfigMap and Secret a read-only tmpfs
with the kubelet's `..data` symlink layout, the volume's defaultMode and the pod's
fsGroup as group; each container in its own mount namespace with only its volumeMounts,
run with `setpriv` as the pod's uid, gid and fsGroup with no capabilities. The network
namespace is private too, so the manifest's ports (3030, 9479) are used as written.

Input: a JSON spec (argv[1]) that the test derives from the manifest. Output: one JSON
line on stdout with what the test asserts on."""

from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STAMP = "..2026_01_01_00_00_00.000000001"  # the kubelet's timestamped folder


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def overlay_root(scratch: Path) -> Path:
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "pod", str(scratch))
    for d in ("up", "work", "root"):
        (scratch / d).mkdir()
    root = scratch / "root"
    sh("mount", "-t", "overlay", "overlay", "-o",
       f"lowerdir=/,upperdir={scratch}/up,workdir={scratch}/work", str(root))
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    sh("mount", "--rbind", "/dev", str(root / "dev"))
    for d in ("run", "tmp"):
        sh("mount", "-t", "tmpfs", "-o", "mode=1777" if d == "tmp" else "mode=0755", d,
           str(root / d))
    # This checkout (and its venv, the containers' tool) may live under /tmp or /run, which
    # the fresh tmpfs above hide: bound back at its own path, read-only.
    checkout = Path(__file__).resolve().parent.parent
    if str(checkout).startswith(("/tmp/", "/run/")):
        inside = root / str(checkout).lstrip("/")
        inside.mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", str(checkout), str(inside))
        sh("mount", "-o", "remount,bind,ro", str(inside))
    return root


def atomic_writer_volume(path: Path, files: dict[str, str], mode: int, group: int | None,
                         read_only: bool) -> None:
    """What the kubelet's AtomicWriter makes for a ConfigMap or Secret volume."""
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "mode=0777", "volume", str(path))
    stamp = path / STAMP
    stamp.mkdir()
    for name, content in files.items():
        target = stamp / name
        target.write_text(content)
        os.chown(target, 0, group if group is not None else 0)
        os.chmod(target, mode)
    os.chmod(stamp, 0o755)
    (path / "..data").symlink_to(STAMP)
    for name in files:
        (path / name).symlink_to(f"..data/{name}")
    if read_only:
        sh("mount", "-o", "remount,ro,bind", str(path))


def empty_dir(path: Path, group: int | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "mode=0777", "volume", str(path))
    if group is not None:  # the kubelet's SetVolumeOwnership: group fsGroup, setgid
        os.chown(path, 0, group)
        os.chmod(path, 0o2777)


def container_command(spec: dict, container: dict, volumes: Path) -> list[str]:
    """A shell line: a private mount namespace with only this container's mounts, then
    setpriv to the pod's ids without capabilities, then the command with its env."""
    lines = ["set -e"]
    for mount in container["mounts"]:
        source = volumes / mount["volume"]
        target = shlex.quote(mount["path"])
        lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {shlex.quote(str(source))} {target}")
        if mount["readOnly"]:
            lines.append(f"mount -o remount,ro,bind {target}")
    ids = spec["ids"]
    groups = ",".join(str(g) for g in ids["groups"]) or "-"
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in container["env"].items())
    command = " ".join(shlex.quote(a) for a in container["command"])
    lines.append(f"exec setpriv --reuid={ids['uid']} --regid={ids['gid']} "
                 f"{'--groups=' + groups if groups != '-' else '--clear-groups'} "
                 f"--no-new-privs --inh-caps=-all --bounding-set=-all "
                 f"env -i {env} {command}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)]


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    sh("ip", "link", "set", "lo", "up")
    root = overlay_root(Path(spec["scratch"]))
    os.chroot(root)
    os.chdir("/")
    # The test's Python lives under /root (0700 on the host): let the pod's uid through,
    # in the overlay only.
    for folder in spec["traverse"]:
        os.chmod(folder, os.stat(folder).st_mode | 0o111)
    fs_group = spec["ids"]["fs_group"]
    volumes = Path("/run/pod/volumes")
    logs = Path("/run/pod/logs")
    logs.mkdir(parents=True)
    for name, volume in spec["volumes"].items():
        if volume["kind"] in ("configMap", "secret"):
            atomic_writer_volume(volumes / name, volume["files"], volume["mode"], fs_group,
                                 read_only=True)
        else:
            empty_dir(volumes / name, fs_group)
    # The init container's work: the libraries, written as the pod's uid.
    for name, files in spec["init_files"].items():
        for filename in files:
            target = volumes / name / filename
            target.write_bytes(b"\x7fELF placeholder plugin library\n")
            os.chown(target, spec["ids"]["uid"], fs_group if fs_group is not None else 0)
    procs = {}
    for container in spec["containers"]:
        with open(logs / container["name"], "wb") as out:
            procs[container["name"]] = subprocess.Popen(
                container_command(spec, container, volumes), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    result: dict = {"ready": None, "loaded": [], "exited": {}}
    probe = f"http://127.0.0.1:{spec['probe']['port']}{spec['probe']['path']}"
    deadline = time.monotonic() + spec["timeout"]
    token = None
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                result["exited"][name] = proc.returncode
        if result["exited"]:
            break
        if token is None:
            found = glob.glob(os.path.join(spec["node_data"], "jwt_secret_*.txt"))
            token = Path(found[0]).read_text().strip() if found else None
        status, body = get(spec["node_list"], token)
        if status == 200:
            result["loaded"] = sorted(json.loads(body))  # the API lists names
        result["ready"] = get(probe)[0]
        if result["ready"] == 200 and set(spec["expect_loaded"]) <= set(result["loaded"]):
            break
        time.sleep(0.2)
    reconciler = procs[spec["reconciler"]]
    if reconciler.poll() is None:
        status = Path(f"/proc/{reconciler.pid}/status").read_text()
        result["ids"] = {line.split(":")[0]: line.split(":")[1].split()
                         for line in status.splitlines()
                         if line.startswith(("Uid", "Gid", "Groups", "CapEff", "NoNewPrivs"))}
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["logs"] = {p.name: p.read_text(errors="replace") for p in logs.iterdir()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
