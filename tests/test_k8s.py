"""configs/kubernetes/snarkos-with-reconciler.yaml, held to Kubernetes' own rules and run.

- kubernetes-validate --strict: the objects against the API's OpenAPI schemas, unknown
  fields refused (a misspelt `fsgroup` would otherwise be silently dropped by the API);
- the Pod Security Standards' "restricted" profile, rule by rule, for the pod and every
  container (init containers included): what a namespace labelled
  `pod-security.kubernetes.io/enforce: restricted` admits;
- every file path the manifest names is provided by a volume the container mounts;
- the pod itself, reproduced by tests/k8s_pod.py with the manifest's mounts, file modes,
  uid, gid and fsGroup, runs the reconciler against the reference node (standing in for
  snarkOS, started with snarkOS's arguments from the manifest) until the node has loaded
  the ConfigMap's plugin and the readiness probe answers 200.
Every value is read from the manifest, so the tests follow it when it changes."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import json5
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "configs" / "kubernetes" / "snarkos-with-reconciler.yaml"
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
SCRIPT = Path(sys.executable).with_name("slipstream-reconciler")


def objects() -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o
            for o in yaml.safe_load_all(MANIFEST.read_text()) if o}


def statefulset() -> dict:
    return next(o for (kind, _), o in objects().items() if kind == "StatefulSet")


def pod_spec(manifest: dict | None = None) -> dict:
    return (manifest or statefulset())["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict, name: str) -> dict:
    return next(c for c in all_containers(spec) if c["name"] == name)


# -- the schemas -------------------------------------------------------------------------
def test_kubernetes_validate_strict() -> None:
    if not VALIDATE.exists():
        pytest.skip("kubernetes-validate is missing; install it with: "
                    ".venv/bin/pip install kubernetes-validate (it is in the test extras)")
    done = subprocess.run([str(VALIDATE), "--strict", str(MANIFEST)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {kind for kind, _ in objects()}
    assert kinds == {"ConfigMap", "Secret", "Service", "StatefulSet"}
    assert done.stdout.count("passed for resource") == len(objects()), done.stdout


# -- Pod Security Standards, "restricted" --------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the "Baseline"
# and "Restricted" tables). Each check names the control it implements.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(spec: dict) -> list[str]:
    bad: list[str] = []
    pod_sc = spec.get("securityContext", {})
    # Baseline "Host Namespaces": hostNetwork, hostPID, hostIPC unset or false.
    bad += [f"pod: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    # Baseline "Sysctls": only the safe set.
    bad += [f"pod: sysctl {s['name']}" for s in pod_sc.get("sysctls", [])
            if s["name"] not in SAFE_SYSCTLS]
    # Restricted "Volume Types": only the listed types (no hostPath, no NFS, ...).
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {volume['name']}: type {kinds}")
    for c in all_containers(spec):
        sc, where = c.get("securityContext", {}), f"container {c['name']}"

        def effective(key: str, sc: dict = sc) -> object:
            return sc[key] if key in sc else pod_sc.get(key)

        # Baseline "HostProcess" and "Privileged Containers".
        if effective("windowsOptions") and effective("windowsOptions").get("hostProcess"):
            bad.append(f"{where}: hostProcess")
        if sc.get("privileged"):
            bad.append(f"{where}: privileged")
        # Baseline "Host Ports": none, or 0.
        bad += [f"{where}: hostPort" for p in c.get("ports", []) if p.get("hostPort")]
        # Baseline "/proc Mount Type": Default.
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount")
        # Baseline "SELinux": type limited, no user/role.
        selinux = effective("seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role") or selinux.get("type") not in (
                None, "", "container_t", "container_init_t", "container_kvm_t",
                "container_engine_t"):
            bad.append(f"{where}: seLinuxOptions")
        # Baseline "AppArmor": not Unconfined.
        if (effective("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{where}: appArmorProfile Unconfined")
        # Restricted "Privilege Escalation": allowPrivilegeEscalation explicitly false.
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation must be false")
        # Restricted "Running as Non-root": runAsNonRoot true (container or pod).
        if effective("runAsNonRoot") is not True:
            bad.append(f"{where}: runAsNonRoot must be true")
        # Restricted "Running as Non-root user": runAsUser not 0.
        if effective("runAsUser") == 0:
            bad.append(f"{where}: runAsUser 0")
        # Restricted "Seccomp": RuntimeDefault or Localhost (container or pod).
        if (effective("seccompProfile") or {}).get("type") not in ("RuntimeDefault",
                                                                  "Localhost"):
            bad.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        # Restricted "Capabilities": drop ALL; add only NET_BIND_SERVICE.
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: capabilities add {caps['add']}")
    return bad


def test_every_container_meets_the_restricted_profile() -> None:
    spec = pod_spec()
    assert len(all_containers(spec)) == 3
    assert restricted_violations(spec) == []


def test_the_restricted_check_catches_the_old_manifest() -> None:
    """The checker is not vacuous: the defects the manifest had are each reported."""
    spec = json.loads(json.dumps(pod_spec()))
    del spec["securityContext"]
    del container(spec, "snarkos")["securityContext"]
    container(spec, "reconciler")["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = "\n".join(restricted_violations(spec))
    for expected in ("container snarkos: allowPrivilegeEscalation", "container "
                     "plugin-libraries: runAsNonRoot", "container reconciler: seccompProfile",
                     "NET_ADMIN", "volume host"):
        assert expected in found, found


# -- the rest of the pod's hygiene -----------------------------------------------------------
def test_pod_hygiene() -> None:
    spec = pod_spec()
    assert spec["automountServiceAccountToken"] is False
    for c in all_containers(spec):
        resources = c.get("resources", {})
        assert resources.get("requests", {}).get("memory"), c["name"]
        assert resources.get("limits", {}).get("memory"), c["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
    reconciler = container(spec, "reconciler")
    ports = {p["name"]: p["containerPort"] for p in reconciler["ports"]}
    env = {e["name"]: e.get("value") for e in reconciler["env"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = reconciler[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] in ports
        assert env["SLIPSTREAM_METRICS_ADDRESS"].endswith(f":{ports[get['port']]}")


def test_service_name_has_a_headless_service() -> None:
    sts = statefulset()
    service = objects()[("Service", sts["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    named = {p["name"] for c in pod_spec()["containers"] for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named


# -- every path the manifest names comes from a volume ----------------------------------------
def _under(path: str, mounts: list[dict]) -> dict | None:
    p = PurePosixPath(path)
    return next((m for m in mounts if p == PurePosixPath(m["mountPath"]) or
                 PurePosixPath(m["mountPath"]) in p.parents), None)


def _named_paths(c: dict) -> list[str]:
    words = [*c.get("command", []), *c.get("args", []),
             *(e["value"] for e in c.get("env", []) if "value" in e)]
    paths = []
    for word in words:
        for token in re.split(r"[\s=]", str(word)):
            if token.startswith("/") and not token.startswith("//"):
                paths.append(token.rstrip("/;"))
    return paths


def _volume_files(volume: dict) -> set[str] | None:
    """The file names a ConfigMap or Secret volume provides (None: any, e.g. emptyDir)."""
    objs = objects()
    if "configMap" in volume:
        return set(objs[("ConfigMap", volume["configMap"]["name"])]["data"])
    if "secret" in volume:
        secret = objs[("Secret", volume["secret"]["secretName"])]
        return set(secret.get("stringData", {})) | set(secret.get("data", {}))
    return None


def test_every_path_the_manifest_names_is_provided_by_a_volume() -> None:
    spec = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    checked = 0
    for c in all_containers(spec):
        mounts = c.get("volumeMounts", [])
        assert {m["name"] for m in mounts} <= set(volumes), c["name"]
        named = _named_paths(c)
        # The plugin configs this container mounts name libraries: those too.
        for m in mounts:
            volume = volumes[m["name"]]
            if "configMap" in volume:
                data = objects()[("ConfigMap", volume["configMap"]["name"])]["data"]
                named += [json5.loads(text)["libpath"] for text in data.values()]
        for path in named:
            if path.startswith("/plugins/"):
                continue  # the init container's own image: the libraries it copies
            mount = _under(path, mounts)
            assert mount is not None, f"{c['name']}: {path} is on no volume"
            files = _volume_files(volumes[mount["name"]])
            rest = PurePosixPath(path).relative_to(mount["mountPath"])
            if files is not None and rest.parts:
                assert rest.parts[0] in files, f"{c['name']}: {path} is not in the volume"
            checked += 1
    assert checked >= 8  # the boot config, the Secret, the state, the libraries ...
    boot = next(a for a in container(spec, "snarkos")["args"]
                if a.startswith("--slipstream-config="))
    assert _under(boot.split("=", 1)[1], container(spec, "snarkos")["volumeMounts"])


# -- the pod, run ---------------------------------------------------------------------------
def _namespaces_work() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount, network and pid namespaces, setpriv)"
    for tool in ("unshare", "setpriv", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (util-linux / iproute2)"
    done = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"],
                          capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else f"cannot create namespaces: {done.stderr.strip()}"


def _env(c: dict, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
    return env


def _expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def pod_run(tmp_path: Path, manifest: dict, timeout: float = 30) -> dict:
    reason = _namespaces_work()
    if reason:
        pytest.skip(reason)
    objs = objects()
    spec = pod_spec(manifest)
    secret_value = base64.b64encode(os.urandom(16)).decode()  # what the operator puts in
    secrets = {(name, key): secret_value for (kind, name), o in objs.items()
               if kind == "Secret" for key in o["stringData"]}
    volumes = {}
    for v in spec["volumes"]:
        if "configMap" in v:
            data = objs[("ConfigMap", v["configMap"]["name"])]["data"]
            volumes[v["name"]] = {"kind": "configMap", "files": data,
                                  "mode": v["configMap"].get("defaultMode", 0o644)}
        elif "secret" in v:
            name = v["secret"]["secretName"]
            files = {key: value for (n, key), value in secrets.items() if n == name}
            volumes[v["name"]] = {"kind": "secret", "files": files,
                                  "mode": v["secret"].get("defaultMode", 0o644)}
        else:
            volumes[v["name"]] = {"kind": "emptyDir"}
    pod_sc = spec.get("securityContext", {})
    ids = {"uid": pod_sc["runAsUser"], "gid": pod_sc.get("runAsGroup", 0),
           "fs_group": pod_sc.get("fsGroup"),
           "groups": [g for g in [pod_sc.get("fsGroup")] if g is not None]}
    # The init container copies the libraries the ConfigMaps name into its volume.
    init = spec["initContainers"][0]
    lib_mount = init["volumeMounts"][0]
    libraries = [PurePosixPath(json5.loads(text)["libpath"])
                 for v in volumes.values() if v["kind"] == "configMap"
                 for text in v["files"].values()]
    init_files = {lib_mount["name"]: sorted({p.name for p in libraries
                                             if p.parent == PurePosixPath(
                                                 lib_mount["mountPath"])})}
    containers = []
    node_env = _env(container(spec, "snarkos"), secrets)
    node_args = [_expand(a, node_env) for a in container(spec, "snarkos")["args"]]
    rest = next(a.split("=", 1)[1] for a in node_args if a.startswith("--rest="))
    # The reference node in snarkOS's place: snarkOS's own arguments, less the two that
    # select snarkOS's mode, plus where the reference node writes its token file.
    refnode_args = [a for a in node_args if a not in ("start", "--client")]
    containers.append({
        "name": "snarkos", "env": {**node_env, "PATH": "/usr/bin:/bin"},
        "command": [str(SCRIPT), "node", *refnode_args, f"--data-dir={node_env['HOME']}"],
        "mounts": [{"volume": m["name"], "path": m["mountPath"],
                    "readOnly": bool(m.get("readOnly"))}
                   for m in container(spec, "snarkos")["volumeMounts"]]})
    rec = container(spec, "reconciler")
    containers.append({
        "name": "reconciler", "env": {**_env(rec, secrets), "PATH": "/usr/bin:/bin"},
        "command": [str(SCRIPT), *rec["args"]],
        "mounts": [{"volume": m["name"], "path": m["mountPath"],
                    "readOnly": bool(m.get("readOnly"))} for m in rec["volumeMounts"]]})
    ports = {p["name"]: p["containerPort"] for p in rec["ports"]}
    probe = rec["readinessProbe"]["httpGet"]
    node_port = rest.rsplit(":", 1)[1]
    ledger = next(m for m in container(spec, "snarkos")["volumeMounts"]
                  if m["mountPath"] == node_env["HOME"])
    plugins = objs[("ConfigMap", "slipstream-plugins")]["data"]
    # Folders on the way to this Python that the pod's uid may not traverse (e.g. /root).
    traverse = sorted({str(p) for exe in (Path(sys.executable).resolve(), SCRIPT, ROOT)
                       for p in exe.parents if p != Path("/") and
                       not os.stat(p).st_mode & 0o001})
    scratch = tmp_path / "pod"
    scratch.mkdir()
    pod = {
        "scratch": str(scratch), "ids": ids, "volumes": volumes, "init_files": init_files,
        "containers": containers, "reconciler": "reconciler", "traverse": traverse,
        "probe": {"port": ports[probe["port"]], "path": probe["path"]},
        "node_data": f"/run/pod/volumes/{ledger['name']}",
        "node_list": f"http://127.0.0.1:{node_port}/v2/mainnet/slipstream/plugins",
        "expect_loaded": sorted(json5.loads(t)["name"] for t in plugins.values()),
        "timeout": timeout,
    }
    spec_file = tmp_path / "pod.json"
    spec_file.write_text(json.dumps(pod))
    done = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                           "--propagation", "private", sys.executable,
                           str(Path(__file__).with_name("k8s_pod.py")), str(spec_file)],
                          capture_output=True, text=True, timeout=timeout + 60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["expect_loaded"] = pod["expect_loaded"]
    result["ids_wanted"] = ids
    return result


def test_the_pod_runs_with_its_modes_and_ids(tmp_path: Path) -> None:
    result = pod_run(tmp_path, statefulset())
    logs = result["logs"]
    assert result["exited"] == {}, logs
    assert result["ready"] == 200, logs
    # The ConfigMap's plugin is loaded beside the node's start-up plugin.
    assert set(result["expect_loaded"]) | {"metrics"} <= set(result["loaded"]), logs
    ids = result["ids_wanted"]
    assert result["ids"]["Uid"] == [str(ids["uid"])] * 4
    assert result["ids"]["Gid"][0] == str(ids["gid"])
    assert str(ids["fs_group"]) in result["ids"]["Groups"]
    assert int(result["ids"]["CapEff"][0], 16) == 0 and result["ids"]["NoNewPrivs"] == ["1"]
    reconciler_log = logs["reconciler"]
    assert "Permission denied" not in reconciler_log and "Traceback" not in reconciler_log
    assert "in sync" in reconciler_log or "in-sync" in reconciler_log, reconciler_log


def test_the_old_secret_mode_fails_in_the_same_pod(tmp_path: Path) -> None:
    """The reproduction catches the defect the manifest had: the Secret root-owned 0400
    and no fsGroup leaves uid 10001 unable to read the JWT secret."""
    old = json.loads(json.dumps(statefulset()))
    spec = pod_spec(old)
    del spec["securityContext"]["fsGroup"]
    next(v for v in spec["volumes"] if "secret" in v)["secret"]["defaultMode"] = 0o400
    result = pod_run(tmp_path, old, timeout=8)
    assert not set(result["expect_loaded"]) <= set(result["loaded"]), result
    assert "jwt-secret" in result["logs"]["reconciler"], result["logs"]
