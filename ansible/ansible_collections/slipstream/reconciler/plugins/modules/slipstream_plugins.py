#!/usr/bin/python
# Copyright: slipstream-reconciler contributors
# Apache License 2.0 (see LICENSE at the repository's root)
"""Runs the reconciler installed on the managed host: `plan` in check mode, `apply` otherwise.

Why a thin wrapper: the tool on the host already owns the ledger, the lock shared with its
daemon, the node's quirks and the policy brakes. Re-implementing any of that here would
make two reconcilers that disagree, so this module only chooses the command, hands the
settings over through the environment (a secret never reaches argv) and turns the JSON
report and exit code into Ansible's `changed`, `failed` and `diff`.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slipstream_plugins
short_description: Converge a node's plugins (snarkOS Slipstream, Agave Geyser) to a directory
version_added: "0.1.0"
description:
  - Runs the C(slipstream-reconciler) command installed on the managed host against the
    node next to it.
  - In check mode it runs C(plan -o json --detailed-exitcode), changing nothing;
    C(changed) is true exactly when the node would change (a load, replace or unload;
    adopt and forget only touch the reconciler's ledger).
  - Otherwise it runs C(apply -o json); C(changed) is true when something was loaded,
    replaced or unloaded, and the task fails with the reconciler's one-line reason when
    the pass could not run (exit 1) or ran and did not converge (exit 3).
  - With C(--diff) the diff is the plan, one before/after entry per plugin that changes,
    headed by the line the CLI prints for it.
  - Every setting is handed to the command through its C(SLIPSTREAM_*) environment
    variable, never on its command line; C(SLIPSTREAM_*) variables already in the task's
    environment are ignored, so that a play means the same on every host.
  - O(node_kind) chooses the node, a snarkOS node's REST API (the default) or an Agave
    validator's admin RPC socket in O(ledger). For Agave the module must run as the
    validator's user or as root, since the socket is mode 0600.
author:
  - slipstream-reconciler maintainers
options:
  executable:
    description:
      - The C(slipstream-reconciler) command.
      - Default is the one in C(PATH), else C(/opt/slipstream-reconciler/bin), where the
        role slipstream.reconciler.slipstream_reconciler installs it.
    type: path
  config_dir:
    description:
      - The directory of plugin configs, the truth (C(SLIPSTREAM_CONFIG_DIR)).
    type: path
    default: /etc/slipstream/plugins.d
  planned_files:
    description:
      - Check mode only. The config files as the play will write them, file name to
        content, for a plan of what the node will do once they are in place
        (the play's own file tasks do not write in check mode).
      - The module writes them to a private staging directory and runs the command in a
        private mount namespace where that directory is bound over O(config_dir), so
        paths and relative C(libpath)s read exactly as they will. Nothing outside that
        process sees it, and the directory is removed afterwards. Needs root and
        C(unshare); without them the plan is made against O(config_dir) as it is, with a
        warning.
      - Plugin configs can hold the plugin's own secrets, so the contents are kept out of
        logs (not the file names, which would then be masked wherever they show).
    type: dict
  planned_exclusive:
    description:
      - With O(planned_files), whether the other C(*.json5) and C(*.json) files now in
        O(config_dir) go away (the role removes files it does not declare) or stay.
    type: bool
    default: true
  node_kind:
    description:
      - Which node this host runs (C(SLIPSTREAM_NODE_KIND)); the command's default is
        C(snarkos). With C(agave), give O(ledger), and leave out the snarkOS settings
        (O(node_url), O(network), O(api), the JWT options and O(max_rps)), which the
        command refuses for a validator.
    type: str
    choices: [snarkos, agave]
  ledger:
    description:
      - Agave only. The validator's ledger directory, its C(--ledger), where the admin RPC
        socket C(admin.rpc) lives (C(SLIPSTREAM_LEDGER)).
    type: path
  node_url:
    description:
      - snarkOS only. The node's REST address (C(SLIPSTREAM_NODE_URL)); the command's default is
        C(http://127.0.0.1:3030).
    type: str
  network:
    description:
      - The node's network (C(SLIPSTREAM_NETWORK)); the command's default is C(mainnet).
    type: str
    choices: [mainnet, testnet, canary]
  api:
    description:
      - The API prefix (C(SLIPSTREAM_API)); the command's default is C(auto).
    type: str
    choices: [auto, v2, v1]
  state_dir:
    description:
      - Where the ledger and the lock live (C(SLIPSTREAM_STATE_DIR)). Use the daemon's,
        C(/var/lib/slipstream-reconciler) (root's default), so that a pass from Ansible and
        the daemon's passes take turns and share one ledger.
    type: path
  node_config_dir:
    description:
      - Where the node sees the config directory, when it differs (a container;
        C(SLIPSTREAM_NODE_CONFIG_DIR)).
    type: path
  node_state_dir:
    description:
      - Where the node sees the state directory, when it differs (C(SLIPSTREAM_NODE_STATE_DIR)).
    type: path
  jwt_token_file:
    description:
      - The token file the node writes at start-up, C(jwt_secret_<address>.txt)
        (C(SLIPSTREAM_JWT_TOKEN_FILE)). Give at most one of O(jwt_token_file),
        O(jwt_secret_file) and O(jwt_token).
    type: path
  jwt_secret_file:
    description:
      - A file holding the node's base64 C(--jwt-secret) (C(SLIPSTREAM_JWT_SECRET_FILE));
        tokens are minted from it. The role puts it at C(/etc/slipstream/jwt-secret).
    type: path
  jwt_token:
    description:
      - A token itself (C(SLIPSTREAM_JWT_TOKEN)); kept out of logs and output.
    type: str
  prune:
    description:
      - What may be unloaded (C(SLIPSTREAM_PRUNE)); the command's default is C(managed).
    type: str
    choices: [managed, all, none]
  max_unloads:
    description:
      - Refuse a pass that would unload more than this many plugins
        (C(SLIPSTREAM_MAX_UNLOADS)).
    type: int
  allow_empty:
    description:
      - Let an existing, empty config directory unload every managed plugin
        (C(--allow-empty), the one policy flag without a variable).
    type: bool
    default: false
  max_rps:
    description:
      - Requests per second to stay under, the node's C(--rest-rps); 0 turns pacing off
        (C(SLIPSTREAM_MAX_RPS)).
    type: float
  timeout:
    description:
      - Seconds to wait for each answer of the node (C(SLIPSTREAM_TIMEOUT)).
    type: float
attributes:
  check_mode:
    support: full
    description: Runs C(plan); nothing is changed on the node, the files or the ledger.
  diff_mode:
    support: full
    description: The plan, one before/after entry per plugin that changes.
notes:
  - Exit codes and the JSON reports are those of docs/cli.md.
seealso:
  - name: docs/fleet.md
    description: When to use this module, and a fleet-wide dry run in CI.
    link: https://example.invalid/slipstream-reconciler/docs/fleet.md
"""

EXAMPLES = r"""
- name: Converge the node now (check mode shows the plan)
  slipstream.reconciler.slipstream_plugins:
    config_dir: /etc/slipstream/plugins.d
    node_url: http://127.0.0.1:3030
    jwt_secret_file: /etc/slipstream/jwt-secret
    state_dir: /var/lib/slipstream-reconciler
    max_unloads: 2

- name: Converge an Agave validator's Geyser plugins, as the validator's user
  slipstream.reconciler.slipstream_plugins:
    node_kind: agave
    ledger: /mnt/ledger
    config_dir: /etc/slipstream/plugins.d
    state_dir: /var/lib/slipstream-reconciler-agave
  become: true
  become_user: sol
"""

RETURN = r"""
command:
  description: Which command ran, C(plan) or C(apply).
  returned: when the command ran
  type: str
  sample: apply
exit_code:
  description:
    - The command's exit code (docs/cli.md). Not C(rc), which Ansible would take for a
      failure when it is 2 ("changes").
  returned: when the command ran
  type: int
report:
  description:
    - The command's JSON report as C(-o json) prints it, the plan's fields plus, for
      C(apply), C(outcomes) and C(converged).
  returned: when the command printed one
  type: dict
  sample:
    format_version: 1
    actions:
      - {action: load, name: postgres, reason: new,
         config_file: /etc/slipstream/plugins.d/postgres.json5}
    converged: true
"""

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

NODE_CHANGES = ("load", "replace", "unload")
SYMBOL = {"load": "+", "replace": "-/+", "unload": "-"}
DEFAULT_DIR = "/opt/slipstream-reconciler/bin"

# option -> environment variable; every setting travels this way, none on argv.
VARIABLES = {
    "config_dir": "SLIPSTREAM_CONFIG_DIR",
    "node_kind": "SLIPSTREAM_NODE_KIND",
    "ledger": "SLIPSTREAM_LEDGER",
    "node_url": "SLIPSTREAM_NODE_URL",
    "network": "SLIPSTREAM_NETWORK",
    "api": "SLIPSTREAM_API",
    "state_dir": "SLIPSTREAM_STATE_DIR",
    "node_config_dir": "SLIPSTREAM_NODE_CONFIG_DIR",
    "node_state_dir": "SLIPSTREAM_NODE_STATE_DIR",
    "jwt_token_file": "SLIPSTREAM_JWT_TOKEN_FILE",
    "jwt_secret_file": "SLIPSTREAM_JWT_SECRET_FILE",
    "jwt_token": "SLIPSTREAM_JWT_TOKEN",
    "prune": "SLIPSTREAM_PRUNE",
    "max_unloads": "SLIPSTREAM_MAX_UNLOADS",
    "max_rps": "SLIPSTREAM_MAX_RPS",
    "timeout": "SLIPSTREAM_TIMEOUT",
}


def settings_environment(params):
    """The command's environment: ours minus inherited SLIPSTREAM_*, plus the options."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    for option, variable in VARIABLES.items():
        value = params.get(option)
        if value is not None:
            env[variable] = str(value)
    return env


def diff_entries(report):
    """The plan as before/after per plugin, each headed by the line the CLI prints."""
    entries = []
    for change in report.get("actions") or []:
        action = change.get("action")
        if action not in NODE_CHANGES:
            continue
        label = change.get("name") or "(known after apply)"
        where = change.get("config_file") or "(unmanaged)"
        header = f"{SYMBOL[action]} {action} {label}  {where}  ({change.get('reason')})"
        loaded = f"plugin {label}: loaded\n"
        after = f"plugin {label}: loaded from {where}\n"
        entries.append({
            "before_header": header, "after_header": header,
            "before": "" if action == "load" else loaded,
            "after": "" if action == "unload" else after,
        })
    return entries


def failure_reason(rc, report, stderr):
    """The reconciler's own one-line reason: its `error:` line, else what kept it from
    converging as the report says (an invalid file, a held change)."""
    errors = [line[len("error: "):] for line in stderr.splitlines()
              if line.startswith("error: ")]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return errors[0] + more
    for problem in (report or {}).get("invalid") or []:
        where = ":".join(str(p) for p in (problem.get("file"), problem.get("line"),
                                          problem.get("column")) if p is not None)
        return f"{where}: {problem.get('message')}"
    if report and report.get("blocked"):
        return report["blocked"]
    for change in (report or {}).get("held") or []:
        return (f"held back: {change.get('action')} {change.get('name')} "
                f"({change.get('reason')})")
    return f"slipstream-reconciler exited {rc}"


def not_there_yet(module, what):
    """Check mode on a host the play has not set up yet (its tool or credential is written
    by the same play, which check mode does not do): nothing to plan against, and the
    real run will change the node."""
    module.warn(f"not planned: {what} is not on this host yet; the play puts it there")
    module.exit_json(changed=True, command="plan", report=None,
                     msg=f"not planned: {what} is not on this host yet")


def find_executable(module):
    path = module.params["executable"]
    if path:
        if not os.access(path, os.X_OK):
            if module.check_mode and not os.path.exists(path):
                not_there_yet(module, path)
            module.fail_json(msg=f"executable {path} is not an executable file")
        return path
    found = module.get_bin_path("slipstream-reconciler", opt_dirs=[DEFAULT_DIR])
    if not found and module.check_mode:
        not_there_yet(module, "slipstream-reconciler")
    if not found:
        module.fail_json(msg=f"slipstream-reconciler is neither in PATH nor in {DEFAULT_DIR}: "
                             "install it (role slipstream.reconciler.slipstream_reconciler) "
                             "or set executable")
    return found


def stage(module, staging, env):
    """Writes the planned files into `staging` (0700, root's, as a config directory may
    be) and returns the command's prefix that binds it over config_dir: [] when that
    cannot be done here, said in a warning."""
    real = module.params["config_dir"]
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        module.warn(f"planned_files needs root and unshare; the plan is against {real} as "
                    "it is now")
        return []
    planned = module.params["planned_files"]
    for name, content in planned.items():
        if "/" in name or name.startswith(".") or not isinstance(content, str):
            module.fail_json(msg=f"planned_files: {name!r} must be a plain file name with the "
                                 "file's text as its value")
    if not module.params["planned_exclusive"]:
        for name in os.listdir(real):
            if name.endswith((".json5", ".json")) and name not in planned and \
                    os.path.isfile(os.path.join(real, name)):
                shutil.copyfile(os.path.join(real, name), os.path.join(staging, name))
    for name, content in planned.items():
        path = os.path.join(staging, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(path, 0o644)
    if not os.path.isdir(real):
        # A new host: nothing to bind over, and nothing applied yet to compare paths with.
        module.warn(f"{real} does not exist yet; the plan reads the planned files from a "
                    "staging directory, so the paths it shows are that directory's")
        env["SLIPSTREAM_CONFIG_DIR"] = staging
        return []
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            staging, real]


def main():
    module = AnsibleModule(
        argument_spec={
            "executable": {"type": "path"},
            "config_dir": {"type": "path", "default": "/etc/slipstream/plugins.d"},
            "planned_files": {"type": "dict", "no_log": True},
            "planned_exclusive": {"type": "bool", "default": True},
            "node_kind": {"type": "str", "choices": ["snarkos", "agave"]},
            "ledger": {"type": "path"},
            "node_url": {"type": "str"},
            "network": {"type": "str", "choices": ["mainnet", "testnet", "canary"]},
            "api": {"type": "str", "choices": ["auto", "v2", "v1"]},
            "state_dir": {"type": "path"},
            "node_config_dir": {"type": "path"},
            "node_state_dir": {"type": "path"},
            "jwt_token_file": {"type": "path"},
            "jwt_secret_file": {"type": "path"},
            "jwt_token": {"type": "str", "no_log": True},
            "prune": {"type": "str", "choices": ["managed", "all", "none"]},
            "max_unloads": {"type": "int"},
            "allow_empty": {"type": "bool", "default": False},
            "max_rps": {"type": "float"},
            "timeout": {"type": "float"},
        },
        mutually_exclusive=[("jwt_token_file", "jwt_secret_file", "jwt_token")],
        required_if=[("node_kind", "agave", ("ledger",))],
        supports_check_mode=True,
    )
    params = module.params
    executable = find_executable(module)
    secret = params["jwt_secret_file"]
    if module.check_mode and secret and not os.path.exists(secret):
        not_there_yet(module, secret)
    verb = "plan" if module.check_mode else "apply"
    command = [executable, verb, "--output", "json", "--detailed-exitcode"]
    if params["allow_empty"]:
        command.append("--allow-empty")
    env = settings_environment(params)
    # run_command's environ_update would leave inherited SLIPSTREAM_* in place: clear them.
    for name in [n for n in os.environ if n.startswith("SLIPSTREAM_")]:
        del os.environ[name]
    staging = None
    try:
        if module.check_mode and params["planned_files"] is not None:
            staging = tempfile.mkdtemp(prefix="slipstream-plan-")
            command = stage(module, staging, env) + command
        rc, out, err = module.run_command(command, environ_update=env, check_rc=False)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    for line in err.splitlines():
        if line.startswith("warning: "):
            module.warn(line[len("warning: "):])
    try:
        report = json.loads(out) if out.strip() else None
    except ValueError:
        report = None
    result = {"command": verb, "exit_code": rc}
    if isinstance(report, dict):
        result["report"] = report
        if verb == "plan":
            result["changed"] = any(a.get("action") in NODE_CHANGES
                                    for a in report.get("actions") or [])
        else:
            result["changed"] = any(o.get("ok") and o.get("action") in NODE_CHANGES
                                    for o in report.get("outcomes") or [])
        if module._diff:
            result["diff"] = diff_entries(report)
    else:
        result["changed"] = False
    # plan: 0 no change, 2 would change, 1 error (an invalid file or a brake included);
    # apply: 0 converged, 2 converged with changes, 3 did not converge, 1 could not run.
    if rc not in (0, 2) or report is None:
        module.fail_json(msg=failure_reason(rc, report, err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
