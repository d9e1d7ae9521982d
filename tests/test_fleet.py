"""A fleet: one command over several nodes, each with its own directory and ledger."""

from __future__ import annotations

import json
import os
import threading

from tests.conftest import no_traceback, wait_for


def fleet(ws, make_node, *, down: str | None = None, names=("alpha", "beta"),
          kinds: dict[str, str] | None = None):
    """Nodes ('alpha', 'beta' unless named), each with its own config directory and token
    (or ledger); of the test's kind unless `kinds` names another for a target."""
    kinds = kinds or {}
    entries, nodes = [], {}
    for name in names:
        conf = ws.root / f"conf-{name}"
        conf.mkdir()
        lib = ws.library(f"{name}-plugin")
        (conf / "p.json5").write_text(f'{{libpath: "{lib}", name: "{name}-plugin"}}')
        node = make_node(data_dir=ws.root / f"node-{name}", kind=kinds.get(name))
        nodes[name] = node
        if name == down:
            node.stop()
        entries.append({"name": name, "config_dir": str(conf), **node.target()})
    path = ws.root / "targets.json5"
    path.write_text("// the fleet\n" + json.dumps(entries, indent=2))
    return path, nodes


def test_plan_and_status_run_on_every_target_with_a_summary(cli, ws, make_node, kind):
    targets, _ = fleet(ws, make_node)
    plan = cli("plan", "--targets", str(targets), "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert "== alpha (" in plan.out and "== beta (" in plan.out
    assert "+ load     alpha-plugin" in plan.out and "+ load     beta-plugin" in plan.out
    assert "TARGET" in plan.out and "changes / out of sync" in plan.out
    data = cli("status", "--targets", str(targets), "-o", "json").json
    assert [t["name"] for t in data["targets"]] == ["alpha", "beta"]
    assert all(t["exit_code"] == 2 for t in data["targets"])


def test_apply_goes_target_by_target_each_with_its_own_ledger(cli, ws, make_node, kind):
    targets, nodes = fleet(ws, make_node)
    result = cli("apply", "--targets", str(targets))
    assert result.code == 0, result.out + result.err
    # each target's outcome follows its own progress, before the next target starts
    assert result.out.index("Apply complete") < result.out.index("== beta")
    assert "alpha-plugin" in nodes["alpha"].names()
    assert "beta-plugin" in nodes["beta"].names()
    assert (ws.state / "targets" / "alpha" / "ledger.json").exists()
    assert (ws.state / "targets" / "beta" / "ledger.json").exists()
    assert cli("status", "--targets", str(targets)).code == 0


def test_apply_stops_at_the_first_failing_target_unless_told_to_keep_going(cli, ws,
                                                                            make_node, kind):
    targets, nodes = fleet(ws, make_node, down="alpha")
    stopped = cli("apply", "--targets", str(targets))
    assert stopped.code == 1
    assert "skipped" in stopped.out and "beta-plugin" not in nodes["beta"].names()
    no_traceback(stopped)
    kept = cli("apply", "--targets", str(targets), "--keep-going")
    assert kept.code == 1 and "beta-plugin" in nodes["beta"].names()


def test_the_most_severe_result_is_the_exit_code(cli, ws, make_node):
    targets, _ = fleet(ws, make_node)
    (ws.root / "conf-beta" / "p.json5").write_text("{broken")
    result = cli("validate", "--targets", str(targets))
    assert result.code == 1 and "p.json5:1:" in result.out


def test_a_bad_targets_file_is_one_clear_line(cli, ws):
    path = ws.root / "targets.json5"
    path.write_text('[{name: "a", node_url: "http://127.0.0.1:1", config_dir: "/x", '
                    'nodeurl: "typo"}]')
    result = cli("plan", "--targets", str(path))
    assert result.code == 1 and "unknown key(s) nodeurl" in result.err
    no_traceback(result)


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
    return count


def test_a_fleet_apply_leaves_no_threads_or_connections_behind(ws, make_node, kind):
    """In this process, through the CLI's own fleet code: each target's pass closes its
    node session and stops its ledger thread when it is done."""
    from typer.testing import CliRunner

    from reconciler.cli import app

    targets, nodes = fleet(ws, make_node, names=[f"n{i}" for i in range(6)])
    env = {"SLIPSTREAM_STATE_DIR": str(ws.state), "SLIPSTREAM_CONFIG_DIR": str(ws.conf),
           "SLIPSTREAM_MAX_RPS": "0", "SLIPSTREAM_METRICS_ADDRESS": "off"}
    threads, sockets = threading.active_count(), open_sockets()
    result = CliRunner().invoke(app, ["apply", "--targets", str(targets)], env=env)
    assert result.exit_code == 0, result.output
    assert all(f"n{i}-plugin" in nodes[f"n{i}"].names() for i in range(6))
    # the nodes' connection threads end once our side hangs up: wait for that, not longer
    wait_for(lambda: threading.active_count() <= threads, timeout=5,
             message=f"threads back to {threads}: {[t.name for t in threading.enumerate()]}")
    wait_for(lambda: open_sockets() <= sockets, timeout=5, message="sockets closed")


def test_a_fleet_may_mix_snarkos_nodes_and_agave_validators(cli, ws, make_node):
    targets, nodes = fleet(ws, make_node, kinds={"alpha": "snarkos", "beta": "agave"})
    result = cli("apply", "--targets", str(targets))
    assert result.code == 0, result.out + result.err
    assert "alpha-plugin" in nodes["alpha"].names()
    assert "beta-plugin" in nodes["beta"].names()
    assert nodes["beta"].calls("load") == 1 and nodes["alpha"].calls("load") == 1
    assert cli("plan", "--targets", str(targets), "--detailed-exitcode").code == 0
