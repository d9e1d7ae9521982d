"""The operator's stories, end to end: the installed CLI against a real reference node."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reconciler.ledgerstore import LedgerStore
from tests.conftest import SCRIPT, no_traceback

SECRET_VALUE = "hunter2-s3cret"


# What each kind of node says when a plugin's on_load refuses (the library is marked
# `slipstream:on-load-fails`), as the operator reads it in our output.
ON_LOAD_FAILED = {"snarkos": "on_load method failed",
                  "agave": "on_load method of plugin {name} failed"}
RELOAD_FAILED = "Failed to start new plugin (previous plugin was dropped!)"
# What status says the node is.
DESCRIBED = {"snarkos": "snarkOS with the Slipstream plugin API at /v2/mainnet",
             "agave": "Agave validator (admin RPC)"}


# -- validate ----------------------------------------------------------------------------
def test_validate_exit_codes_and_precise_reasons(cli, ws):
    ws.config("postgres.json5", name="postgres")
    assert cli("validate").code == 0
    ws.config("broken.json5", raw='{\n  libpath: "x",\n  name: ,\n}')
    result = cli("validate")
    assert result.code == 1
    assert f"{ws.conf / 'broken.json5'}:3:" in result.out
    no_traceback(result)
    data = cli("validate", "-o", "json").json
    assert data["invalid"][0]["line"] == 3 and data["valid"][0]["name"] == "postgres"


# -- plan, apply, status: the basic loop ---------------------------------------------------
def test_plan_apply_status_converge(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    ws.config("metrics.json5")  # no name: known after apply
    planned = cli("plan", "--detailed-exitcode", node=node)
    assert planned.code == 2, planned.err
    assert "+ load     postgres" in planned.out
    assert "+ load     (known after apply)" in planned.out
    assert "Plan: 2 to load, 0 to replace, 0 to unload." in planned.out
    assert "Unmanaged (live, not declared, left alone): startup" in planned.out

    applied = cli("apply", "--detailed-exitcode", node=node)
    assert applied.code == 2, applied.err
    assert "loaded as metrics" in applied.out
    assert sorted(node.names()) == ["metrics", "postgres", "startup"]

    again = cli("plan", "--detailed-exitcode", node=node)
    assert again.code == 0 and "No changes." in again.out
    assert cli("apply", "--detailed-exitcode", node=node).code == 0

    status = cli("status", node=node)
    assert status.code == 0
    assert "metrics   metrics.json5   in-sync" in status.out
    assert DESCRIBED[kind].format(socket=node.shown) in status.out
    data = cli("status", "-o", "json", node=node).json
    assert data["format_version"] == 1 and data["in_sync"] is True
    assert {p["name"]: p["state"] for p in data["plugins"]} == {
        "metrics": "in-sync", "postgres": "in-sync", "startup": "unmanaged"}


def test_plan_json_shape(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    data = cli("plan", "-o", "json", node=node).json
    assert data["format_version"] == 1
    assert data["node"] == node.shown
    if kind == "snarkos":
        assert data["network"] == "mainnet"
    assert data["actions"] == [{"action": "load", "name": "postgres",
                                "config_file": str(ws.conf / "postgres.json5"),
                                "reason": "new"}]
    assert data["unmanaged"] == ["startup"] and data["invalid"] == []


def test_an_edited_config_is_replaced(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    cli("apply", node=node)
    ws.config("postgres.json5", name="postgres", extra="batch_size: 200")
    planned = cli("plan", node=node)
    assert "-/+ replace  postgres" in planned.out and "(config changed)" in planned.out
    before = len(node.changes())
    assert cli("apply", node=node).code == 0
    # Agave replaces in one call (reloadPlugin); snarkOS unloads, then loads
    expected = ["reload"] if node.rules.native_reload else ["unload", "load"]
    assert [c.what for c in node.changes()[before:]] == expected
    assert "postgres" in node.names()
    assert cli("plan", "--detailed-exitcode", node=node).code == 0


def test_a_library_rebuilt_in_place_is_replaced_where_the_node_can_pick_it_up(cli, ws, node,
                                                                             kind):
    """snarkOS reads the rebuilt file again; an Agave validator keeps the copy dlopen
    already holds, so there the change is held and the operator told why."""
    ws.config("postgres.json5", name="postgres")
    cli("apply", node=node)
    ws.library("postgres", b"rebuilt")
    planned = cli("plan", node=node)
    before = len(node.changes())
    applied = cli("apply", node=node)
    if node.rules.keeps_old_code_at_same_path:
        assert "rebuilt in place" in planned.out and "its own path" in planned.out
        assert node.changes()[before:] == []
        assert "postgres" in node.names()
    else:
        assert "(library changed)" in planned.out
        assert applied.code == 0
        assert [c.what for c in node.changes()[before:]] == ["unload", "load"]
        assert cli("plan", "--detailed-exitcode", node=node).code == 0


def test_a_removed_file_unloads_its_plugin_and_only_that(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    ws.config("metrics.json5", name="metrics")
    cli("apply", node=node)
    os.remove(ws.conf / "postgres.json5")
    assert "- unload   postgres" in cli("plan", node=node).out
    assert cli("apply", node=node).code == 0
    assert sorted(node.names()) == ["metrics", "startup"]


def test_a_broken_edit_never_unloads_a_plugin(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    cli("apply", node=node)
    (ws.conf / "postgres.json5").write_text('{libpath: "../libs/libpostgres.so", name: ')
    result = cli("apply", node=node)
    assert result.code == 3
    assert "postgres.json5:1:" in result.out
    assert "postgres" in node.names()
    assert node.calls("unload") == node.calls("reload") == 0
    status = cli("status", "-o", "json", node=node)
    assert status.code == 2
    assert {p["name"]: p["state"] for p in status.json["plugins"]}["postgres"] == "invalid"


def test_a_hand_unload_or_a_node_restart_is_put_back(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    cli("apply", node=node)
    node.unload_by_hand("postgres")
    status = cli("status", "-o", "json", node=node)
    assert status.code == 2
    assert status.json["plugins"][0]["state"] == "pending-load"
    assert cli("apply", node=node).code == 0
    node.restart()
    assert "restarted" in cli("plan", node=node).out
    assert cli("apply", node=node).code == 0
    assert "postgres" in node.names()


def test_a_live_plugin_that_a_file_declares_is_adopted_without_a_call(cli, ws, node, kind):
    config = ws.config("postgres.json5", name="postgres")
    node.load_by_hand(config)
    assert "~ adopt    postgres" in cli("plan", node=node).out
    assert cli("apply", node=node).code == 0
    assert node.changes() == []
    assert "postgres" in LedgerStore(ws.state).load().entries


def test_an_unnamed_config_whose_library_is_loaded_at_startup_is_adopted(cli, ws, make_node,
                                                                         kind):
    ws.config("metrics.json5")
    node = make_node(startup=[str(ws.conf / "metrics.json5")])
    result = cli("apply", node=node)
    assert result.code == 0, result.out
    assert "adopted metrics" in result.out
    assert cli("plan", "--detailed-exitcode", node=node).code == 0


def test_one_library_under_two_names_follows_the_nodes_duplicate_rule(cli, ws, node, kind):
    """snarkOS refuses a second plugin on a library already loaded, so both files are
    invalid and nothing is loaded; Agave checks names only and runs both."""
    ws.config("a.json5", name="a", lib="shared")
    ws.config("b.json5", name="b", lib="shared")
    result = cli("apply", node=node)
    if node.rules.one_plugin_per_library:
        assert result.code == 3, result.out + result.err
        assert "a.json5" in result.out and "b.json5" in result.out
        assert node.changes() == [] and {"a", "b"}.isdisjoint(node.names())
    else:
        assert result.code == 0, result.out + result.err
        assert {"a", "b"} <= set(node.names())
        assert cli("plan", "--detailed-exitcode", node=node).code == 0


def test_a_failing_load_is_named_and_does_not_stop_the_others(cli, ws, node, kind):
    ws.library("bad", b"slipstream:on-load-fails")
    ws.config("bad.json5", name="bad", lib="bad")
    ws.config("good.json5", name="good")
    result = cli("apply", node=node)
    assert result.code == 3
    assert ON_LOAD_FAILED[kind].format(name="bad") in result.err
    assert "good" in node.names()
    assert "bad" not in LedgerStore(ws.state).load().entries


def test_a_failed_replace_rolls_back_to_the_previous_config(cli, ws, node, kind):
    ws.config("pg.json5", name="pg", lib="pg-1")
    assert cli("apply", node=node).code == 0
    ws.library("pg-2", b"slipstream:on-load-fails")  # an upgrade to a bad new library
    ws.config("pg.json5", name="pg", lib="pg-2")
    result = cli("apply", node=node)
    assert result.code == 3
    assert "rolled back: the previous config runs again" in result.out
    assert "pg" in node.names()
    assert node.loaded_from()[-1].startswith(str(ws.state / "configs"))  # the saved copy
    status = cli("status", "-o", "json", node=node)
    row = {p["name"]: p for p in status.json["plugins"]}["pg"]
    assert row["state"] == "failed-replace"
    # a reload reports on_load's refusal in its own words (agave's reload_plugin)
    assert (RELOAD_FAILED if node.rules.native_reload else
            ON_LOAD_FAILED[kind].format(name="pg")) in row["detail"]
    assert "simulated on_load failure" in row["detail"]
    tries = len(node.changes())
    again = cli("apply", node=node)
    assert again.code == 3  # not converged, and not retried until something changes
    assert len(node.changes()) == tries
    if node.rules.keeps_old_code_at_same_path:  # a fixed build goes under its own path
        ws.library("pg-3", b"a good rebuild")
        ws.config("pg.json5", name="pg", lib="pg-3")
    else:  # the node reads the rebuilt file again
        ws.library("pg-2", b"a good rebuild")
    assert cli("apply", node=node).code == 0
    assert cli("status", node=node).code == 0


@pytest.mark.snarkos_only  # Agave holds a library rebuilt in place: never tried (above)
def test_a_library_rebuilt_in_place_that_fails_cannot_be_rolled_back_and_says_so(cli, ws,
                                                                                     node):
    ws.config("pg.json5", name="pg", lib="pg")
    cli("apply", node=node)
    ws.library("pg", b"slipstream:on-load-fails")
    result = cli("apply", node=node)
    assert result.code == 3
    assert "rolling back to the previous config failed too" in result.out


def test_a_replace_whose_new_file_broke_meanwhile_keeps_the_plugin(cli, ws, node, kind):
    ws.config("pg.json5", name="pg", lib="pg")
    cli("apply", node=node)
    ws.config("pg.json5", name="pg", lib="pg", extra="v: 2")
    saved = ws.root / "plan.json"
    assert cli("plan", "--out", str(saved), node=node).code == 0
    (ws.conf / "pg.json5").write_text("{broken")
    assert cli("apply", "--plan", str(saved), node=node).code == 1  # stale: refused
    result = cli("apply", node=node)
    assert result.code == 3 and "pg" in node.names()
    assert node.calls("unload") == node.calls("reload") == 0


def test_it_works_against_an_older_node_without_v2(cli, ws, make_node):
    node = make_node(api_v2=False)
    ws.config("postgres.json5", name="postgres")
    assert cli("apply", node=node).code == 0
    os.remove(ws.conf / "postgres.json5")
    ws.config("other.json5", name="other")
    assert cli("apply", node=node).code == 0
    assert sorted(node.manager.names()) == ["other", "startup"]
    assert "API at /mainnet (the old prefix" in cli("status", node=node).out


def test_node_config_dir_maps_paths_for_the_node(cli, ws, node, kind):
    mount = ws.root / "mnt-as-the-node-sees-it"
    mount.symlink_to(ws.conf)
    ws.config("postgres.json5", name="postgres")
    assert cli("apply", "--node-config-dir", str(mount), node=node).code == 0
    assert node.loaded_from() == [str(mount / "postgres.json5")]


# -- the node's traps, as the operator sees them -------------------------------------------
NO_MANAGER = {"snarkos": "no Slipstream plugin manager: start snarkOS with at least one "
                         "--slipstream-config",
              "agave": "the validator was started without any --geyser-plugin-config and "
                       "without --geyser-plugin-always-enabled"}


def test_no_plugin_manager_is_explained(cli, ws, make_node, kind):
    node = make_node(startup=[])
    ws.config("postgres.json5", name="postgres")
    result = cli("apply", node=node)
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and NO_MANAGER[kind] in errors[0], result.err
    assert node.changes() == []
    no_traceback(result)


def test_unreachable_node_and_bad_auth_are_one_line_errors(cli, ws, node):
    ws.config("postgres.json5", name="postgres")
    down = cli("plan", env={"SLIPSTREAM_NODE_URL": "http://127.0.0.1:9"})
    assert down.code == 1 and "cannot reach the node at http://127.0.0.1:9" in down.err
    bad_token = ws.root / "bad-token"
    bad_token.write_text("not-a-token")
    bad_token.chmod(0o600)
    denied = cli("plan", "--jwt-token-file", str(bad_token), node=node)
    assert denied.code == 1 and "unauthorized (401)" in denied.err
    for result in (down, denied):
        no_traceback(result)
        assert len(result.err.strip().splitlines()) == 1


def test_a_node_that_cannot_load_at_run_time(cli, ws, make_node):
    node = make_node(runtime_loading=False)
    ws.config("postgres.json5", name="postgres")
    result = cli("apply", node=node)
    assert result.code == 1 and "--slipstream-plugins" in result.err


def test_rate_limited_node_with_default_pacing(cli, ws, make_node):
    node = make_node(rest_rps=5)
    for i in range(12):
        ws.config(f"p{i}.json5", name=f"p{i}")
    result = cli("apply", node=node)
    assert result.code == 0, result.err
    assert len(node.manager.names()) == 13


def test_secret_file_and_env_token_authenticate(cli, ws, node):
    import base64

    secret = ws.root / "jwt-secret"
    secret.write_text(base64.b64encode(node.secret).decode())
    secret.chmod(0o600)
    env = {"SLIPSTREAM_JWT_TOKEN_FILE": ""}
    assert cli("plan", "--jwt-secret-file", str(secret), node=node, env=env).code == 0
    env = {"SLIPSTREAM_JWT_TOKEN_FILE": "", "SLIPSTREAM_JWT_TOKEN": node.token}
    assert cli("plan", node=node, env=env).code == 0


# -- policies and brakes -------------------------------------------------------------------
def test_empty_directory_refuses_to_unload_everything(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    cli("apply", node=node)
    os.remove(ws.conf / "postgres.json5")
    refused = cli("apply", node=node)
    assert refused.code == 1 and "--allow-empty" in refused.err
    assert "postgres" in node.names()
    assert cli("apply", "--allow-empty", node=node).code == 0
    assert "postgres" not in node.names()


def test_missing_config_directory_refuses(cli, ws, node, kind):
    result = cli("apply", "--config-dir", str(ws.root / "not-mounted"), node=node)
    assert result.code == 1 and "does not exist" in result.err


def test_max_unloads_and_prune_policies(cli, ws, node, kind):
    for name in ("a", "b", "c"):
        ws.config(f"{name}.json5", name=name)
    cli("apply", node=node)
    for name in ("a", "b"):
        os.remove(ws.conf / f"{name}.json5")
    assert cli("apply", "--max-unloads", "1", node=node).code == 1
    held = cli("plan", "--prune", "none", node=node)
    assert "Held back by policy" in held.out
    assert cli("apply", "--prune", "all", node=node).code == 0
    assert node.names() == ["c"]  # 'startup' too: --prune all


# -- CI flows: offline plans and saved plans ------------------------------------------------
def test_plan_against_a_saved_live_list_needs_no_node(cli, ws):
    ws.config("postgres.json5", name="postgres")
    live = ws.root / "live.json"
    live.write_text('["postgres", "other"]')
    result = cli("plan", "--live-from", str(live), "--detailed-exitcode", "-o", "json")
    assert result.code == 0  # an adopt only touches the ledger: the node would not change
    assert result.json["actions"][0]["action"] == "adopt"
    live.write_text('["other"]')
    assert cli("plan", "--live-from", str(live), "--detailed-exitcode").code == 2
    live.write_text('{"not": "a list"}')
    assert cli("plan", "--live-from", str(live)).code == 1


def test_saved_plan_applies_and_a_stale_one_is_refused(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    saved = ws.root / "plan.json"
    assert cli("plan", "--out", str(saved), node=node).code == 0
    assert cli("apply", "--plan", str(saved), node=node).code == 0
    ws.config("metrics.json5", name="metrics")
    assert cli("plan", "--out", str(saved), node=node).code == 0
    ws.config("metrics.json5", name="metrics", extra="changed: true")
    stale = cli("apply", "--plan", str(saved), node=node)
    assert stale.code == 1 and "stale plan" in stale.err
    assert "metrics" not in node.names()


# -- secrets, locks, help ----------------------------------------------------------------------
def test_secrets_never_reach_any_output(cli, ws, node, kind):
    ws.config("postgres.json5", name="postgres",
              extra=f'connection_string: "postgres://aleo:{SECRET_VALUE}@db/aleo"')
    ws.config("broken.json5", raw=f'{{password: "{SECRET_VALUE}", libpath: ')
    outputs = []
    for args in (("validate",), ("plan",), ("plan", "-o", "json"), ("apply",),
                 ("status",), ("status", "-o", "json"), ("apply", "-o", "json")):
        result = cli(*args, node=node)
        outputs.append(result.out + result.err)
    ledger = (ws.state / "ledger.json").read_text()
    for text in [*outputs, ledger]:
        assert SECRET_VALUE not in text
        if kind == "snarkos":
            assert node.token not in text


def test_an_apply_waits_for_the_pass_in_flight(ws, node, kind):
    ws.config("postgres.json5", name="postgres")
    store = LedgerStore(ws.state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPSTREAM_")}
    env.update({"SLIPSTREAM_CONFIG_DIR": str(ws.conf), "SLIPSTREAM_STATE_DIR": str(ws.state),
                **node.env()})
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
    with store.lock():
        proc = subprocess.Popen([*command, "apply"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        first_line = proc.stderr.readline()
        assert "waiting for the pass in flight" in first_line
        assert proc.poll() is None and "postgres" not in node.names()
    assert proc.wait(timeout=30) == 0
    assert "postgres" in node.names()


def test_help_names_every_environment_variable(cli):
    text = cli("apply", "--help").out
    for variable in ("SLIPSTREAM_CONFIG_DIR", "SLIPSTREAM_NODE_URL", "SLIPSTREAM_NETWORK",
                     "SLIPSTREAM_API", "SLIPSTREAM_JWT_TOKEN_FILE", "SLIPSTREAM_JWT_SECRET_FILE",
                     "SLIPSTREAM_STATE_DIR", "SLIPSTREAM_NODE_CONFIG_DIR", "SLIPSTREAM_MAX_RPS"):
        assert variable in text


@pytest.mark.parametrize("args", [("plan", "--network", "moonnet"), ("plan", "--api", "v9"),
                                  ("plan", "--node-url", "ftp://x")])
def test_bad_settings_exit_1_never_2(cli, args):
    result = cli(*args)
    assert result.code == 1
    no_traceback(result)


def test_colour_on_request_plain_text_in_pipes_and_json(cli, ws, node):
    ws.config("postgres.json5", name="postgres")
    piped = cli("plan", node=node)
    assert "\x1b[" not in piped.out  # a pipe gets plain text
    coloured = cli("plan", node=node, env={"SLIPSTREAM_COLOR": "always"})
    assert "\x1b[" in coloured.out and "postgres" in coloured.out
    assert "\x1b[" not in cli("plan", node=node, env={"SLIPSTREAM_COLOR": "never"}).out
    data = cli("plan", "-o", "json", node=node, env={"SLIPSTREAM_COLOR": "always"})
    assert "\x1b[" not in data.out and data.json["actions"]


def test_paint_marks_changes_and_states():
    from reconciler.terminal import paint

    assert paint("    + load     a  a.json5  (new)", enabled=False) == \
        "    + load     a  a.json5  (new)"
    painted = paint("    + load     a  a.json5  (new)\nb  b.json5  invalid  1:2: x", True)
    first, second = painted.split("\n")
    assert first.startswith("    \x1b[") and "load" in first
    assert "\x1b[31minvalid" in second
