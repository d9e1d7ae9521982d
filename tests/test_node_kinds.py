"""Every kind of snarkOS node an operator can meet, driven through the real CLI.

A build with the API, one without it (no `--features slipstream-plugins`, or any snarkOS
after PR #4468), the static-plugin proposal, a node without a plugin manager, an older
node with only the old prefixes (whose layer errors read "Failed to convert error"), a
rate limit shared with another client, loads slower than our timeout, and a node that
sees the files from inside a container.
"""

from __future__ import annotations

import os
import threading
import time

import requests

from reconciler.ledgerstore import LedgerStore
from reconciler.refnode import Faults
from reconciler.refnode.plugins import ON_LOAD_FAILS_MARKER
from tests.conftest import no_traceback, wait_for


def test_a_build_without_the_api_is_named_and_changes_nothing(cli, ws, make_node):
    node = make_node(startup=[], slipstream=False)
    ws.config("postgres.json5", name="postgres")
    for command in ("plan", "apply", "status"):
        result = cli(command, node=node)
        assert result.code == 1, (command, result.out, result.err)
        assert "this snarkOS build has no Slipstream plugin API" in result.err
        assert "--features slipstream-plugins" in result.err and "PR #4468" in result.err
        no_traceback(result)
    assert not [r for r in node.requests if r.method in ("POST", "DELETE")]


def test_a_wrong_network_is_not_mistaken_for_a_build_without_the_api(cli, ws, node):
    result = cli("plan", "--network", "testnet", node=node)
    assert result.code == 1
    assert "not a snarkOS REST server for network 'testnet'" in result.err
    assert "no Slipstream plugin API" not in result.err


def test_a_static_plugin_node_plans_and_reports_read_only_and_refuses_apply(cli, ws,
                                                                          make_node):
    node = make_node(runtime_loading=False)
    ws.config("postgres.json5", name="postgres")
    planned = cli("plan", "--detailed-exitcode", node=node)
    assert planned.code == 2, planned.err
    assert "+ load     postgres" in planned.out
    assert "This node cannot apply the plan" in planned.out
    assert "--slipstream-plugins (a comma list of config paths)" in planned.out
    data = cli("plan", "-o", "json", node=node).json
    assert data["node_kind"] == "static" and "--slipstream-plugins" in data["cannot_apply"]

    status = cli("status", node=node)
    assert status.code == 2 and "snarkOS with static plugins (read-only" in status.out

    applied = cli("apply", node=node)
    assert applied.code == 1 and "--slipstream-plugins" in applied.err
    assert node.manager.names() == ["startup"]


def test_no_plugin_manager_is_explained(cli, ws, make_node):
    node = make_node(startup=[])
    ws.config("postgres.json5", name="postgres")
    for command in ("plan", "apply", "status"):
        result = cli(command, node=node)
        assert result.code == 1
        assert "start snarkOS with at least one --slipstream-config" in result.err


def test_an_older_node_hides_a_bad_token_then_the_tool_says_why(cli, ws, make_node):
    node = make_node(api_v2=False)
    ws.config("postgres.json5", name="postgres")
    bad = ws.root / "wrong-token.txt"
    bad.write_text("not.a.token")
    bad.chmod(0o600)
    result = cli("plan", node=node, env={"SLIPSTREAM_JWT_TOKEN_FILE": str(bad)})
    assert result.code == 1
    assert "'Failed to convert error'" in result.err and "snarkOS #4443" in result.err
    assert "--api v2" in result.err and "--max-rps" in result.err
    gets = [r for r in node.requests if r.path.startswith("/mainnet/slipstream/")]
    assert len(gets) == 3  # three tries, each with the token read again and a slower pace
    assert {r.status for r in gets} == {500}


def test_an_older_node_with_the_code_in_its_text_is_read_exactly(cli, ws, make_node):
    node = make_node(api_v2=False, v1_http_code_suffix=True)
    bad = ws.root / "wrong-token.txt"
    bad.write_text("not.a.token")
    bad.chmod(0o600)
    result = cli("plan", node=node, env={"SLIPSTREAM_JWT_TOKEN_FILE": str(bad)})
    assert result.code == 1 and "unauthorized (401)" in result.err


def test_an_older_node_restarted_with_a_new_token_is_followed(cli, ws, make_node):
    """On the old prefix an expired token is only 'Failed to convert error': the token
    file is read again, and the pass goes on."""
    node = make_node(api_v2=False)
    ws.config("postgres.json5", name="postgres")
    assert cli("apply", node=node).code == 0
    node.restart()  # a new secret and a new token file; run-time plugins forgotten
    result = cli("apply", node=node)
    assert result.code == 0, result.err
    assert "postgres" in node.manager.names()
    assert "at /mainnet (the old prefix" in result.out


def test_a_long_apply_shares_the_budget_with_another_client_and_nothing_fails(cli, ws,
                                                                             make_node):
    node = make_node(rest_rps=10)
    for i in range(30):
        ws.config(f"p{i}.json5", name=f"p{i}")
    stop = threading.Event()

    def monitor() -> None:  # a script on the same host polling an ordinary route
        with requests.Session() as session:
            while not stop.is_set():
                session.get(f"{node.url}/v2/mainnet/block/height/latest", timeout=5)
                stop.wait(0.2)

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    try:
        result = cli("apply", node=node, timeout=120)
    finally:
        stop.set()
        thread.join(10)
    assert result.code == 0, result.err
    assert len(node.manager.names()) == 31
    assert any(r.status == 429 for r in node.requests)  # the budget really was shared


def test_a_load_slower_than_our_timeout_is_found_later_and_never_loaded_twice(cli, ws,
                                                                             make_node):
    node = make_node(faults=Faults(load_delay=2.5))
    ws.config("slow.json5", name="slow")
    ws.config("quiet.json5")  # no name: known only after load
    first = cli("apply", "--timeout", "1", node=node)
    assert first.code == 1
    assert "may still complete it" in first.err and "never loads it twice" in first.err
    node.options.faults.load_delay = 0.0
    second = cli("apply", "--timeout", "10", node=node)
    assert second.code == 0, second.out + second.err
    assert sorted(node.manager.names()) == ["quiet", "slow", "startup"]
    posts = [r for r in node.requests if r.method == "POST" and "slow.json5" in r.body]
    assert len(posts) == 1  # found in the list and adopted, not sent again
    assert set(LedgerStore(ws.state).load().entries) == {"quiet", "slow"}


def test_a_node_in_a_container_reads_configs_and_rollback_copies_at_its_own_paths(
        cli, ws, make_node):
    """The node sees the config directory and the state directory under other paths, as
    a container that mounts them does; a failed replace still rolls back."""
    root = ws.root / "container"
    (root / "etc" / "slipstream").mkdir(parents=True)
    (root / "var" / "lib").mkdir(parents=True)
    os.symlink(ws.conf, root / "etc" / "slipstream" / "plugins.d")
    os.symlink(ws.libs, root / "etc" / "slipstream" / "libs")
    ws.state.mkdir(parents=True, exist_ok=True)
    os.symlink(ws.state, root / "var" / "lib" / "slipstream-reconciler")
    (root / "boot").mkdir()
    (root / "boot" / "libstartup.so").write_bytes(b"startup")
    (root / "boot" / "startup.json5").write_text('{libpath: "libstartup.so"}')
    node = make_node(root=str(root), startup=["/boot/startup.json5"])
    env = {"SLIPSTREAM_NODE_CONFIG_DIR": "/etc/slipstream/plugins.d",
           "SLIPSTREAM_NODE_STATE_DIR": "/var/lib/slipstream-reconciler"}
    ws.config("postgres.json5", name="postgres")
    assert cli("apply", node=node, env=env).code == 0
    loaded = [r.body for r in node.requests if r.method == "POST"]
    assert '"/etc/slipstream/plugins.d/postgres.json5"' in loaded[-1]

    ws.library("broken", b"\x7fELF " + ON_LOAD_FAILS_MARKER)
    ws.config("postgres.json5", name="postgres", lib="broken")
    result = cli("apply", node=node, env=env)
    assert result.code == 3
    assert "rolled back: the previous config runs again" in result.out + result.err
    assert "postgres" in node.manager.names()
    copy = [r.body for r in node.requests if r.method == "POST"][-1]
    assert '"/var/lib/slipstream-reconciler/configs/' in copy


def test_the_daemon_shows_a_node_without_the_api_as_unsupported_and_unloads_nothing(
        cli, ws, node, daemon):
    ws.config("postgres.json5", name="postgres")
    d = daemon(node)
    wait_for(lambda: "postgres" in node.manager.names(), message="postgres loaded")
    wait_for(lambda: (d.record() or {}).get("node_kind") == "api", message="the kind")
    node.stop()  # the node is replaced by a build without the feature
    node.options.slipstream, node.options.slipstream_configs = False, []
    node.start()
    record = wait_for(lambda: (r := d.record()) and r["summary"].startswith("unsupported:")
                      and r, message="the unsupported state")
    assert "--features slipstream-plugins" in record["summary"]
    assert record["last_pass"]["result"] == "unsupported"
    assert record["node_kind"] == "unsupported"
    assert "snarkOS without the Slipstream plugin API" in d.log  # said once, in words
    status = cli("status", node=node)
    assert status.code == 1 and "no Slipstream plugin API" in status.err
    node.stop()  # and back: a build with the API again, restarted without run-time plugins
    node.options.slipstream = True
    node.options.slipstream_configs = [str(ws.root / "boot" / "startup.json5")]
    node.start()
    wait_for(lambda: "postgres" in node.manager.names(), message="postgres loaded again")
    assert not [r for r in node.requests if r.method == "DELETE"]
    assert "unsupported: the node at" in d.log


def test_the_daemon_leaves_a_static_plugin_node_alone(ws, make_node, daemon):
    node = make_node(runtime_loading=False)
    ws.config("postgres.json5", name="postgres")
    d = daemon(node)
    record = wait_for(lambda: (r := d.record()) and r["summary"].startswith("unsupported:")
                      and r, message="the unsupported state")
    assert "--slipstream-plugins" in record["summary"]
    time.sleep(1.5)  # --max-backoff 1: about one more try, not one per probe
    posts = [r for r in node.requests if r.method == "POST"]
    assert 1 <= len(posts) <= 3
    assert node.manager.names() == ["startup"]
