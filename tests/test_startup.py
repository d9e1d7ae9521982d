"""A command imports what its path needs, and no more.

Issue 12 budgets a command's own imports and set-up (docs/performance.md, measured in
bench/). Timing belongs there, not here; what rots silently is a module-level import that
pulls a heavy module onto every command's path. So these tests run the installed CLI
against a real reference node with Python's import log on (PYTHONPROFILEIMPORTTIME, as
`python -X importtime`) and check *which* modules a command imported: the ones made lazy
for the start-up budget stay out of the paths that do not need them, and are loaded on the
paths that do (so the check cannot pass by seeing nothing)."""

from __future__ import annotations

import pytest

from tests.conftest import Result

IMPORT_LOG = {"PYTHONPROFILEIMPORTTIME": "1"}

# Loaded only by the commands, options or files that need them; never by a pass over
# configs that parse, with a JWT token file.
NOT_ON_A_PASS = {
    "jwt",  # minting tokens: --jwt-secret-file only
    "json5",  # the pure-Python parser: fleet target files only
    "rich",  # typer's pretty output: off (rich_markup_mode=None, pretty_exceptions off)
    "reconciler.configscan",  # naming the node's rule for a refused token
    "reconciler.fleet",  # --targets
    "reconciler.planfile",  # plan --out, apply --plan
    "reconciler.daemon",  # run, reload, status
    "reconciler.trigger",
    "reconciler.watch",
    "reconciler.probe",
    "reconciler.metrics",
    "reconciler.logs",
    "reconciler.refnode",  # the node command
    "http.server",
}
# A warm parse cache reads no config through the parser at all.
PARSER = {"pyjson5", "reconciler.configparse"}


def imported(result: Result) -> set[str]:
    """Every module the process imported, from the import log on its stderr."""
    names = set()
    for line in result.err.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")  # the log's header
    return names


def test_a_pass_imports_neither_the_daemon_nor_the_fleet_nor_the_slow_parse(cli, ws, node):
    ws.config("postgres.json5", name="postgres")
    ws.config("metrics.json5", extra="batch_size: 100, hosts: ['a', 'b']")

    first = cli("apply", node=node, env=IMPORT_LOG)
    assert first.code == 0, first.err
    modules = imported(first)
    assert {"reconciler.apply", "reconciler.plan", "requests"} <= modules
    assert modules >= PARSER  # a first apply parses its configs ...
    assert not modules & NOT_ON_A_PASS  # ... with the one-pass check alone

    for command in ("apply", "plan"):
        again = cli(command, "--detailed-exitcode", node=node, env=IMPORT_LOG)
        assert again.code == 0, again.err  # in sync
        modules = imported(again)
        assert "reconciler.plan" in modules
        assert not modules & (NOT_ON_A_PASS | PARSER), command


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "status"])
def test_the_cli_module_itself_loads_no_command_s_machinery(cli, ws, command):
    """`--help` builds every command's options and runs none: what it imports is what
    every command pays before it starts."""
    result = cli(command, "--help", env=IMPORT_LOG)
    assert result.code == 0, result.err
    modules = imported(result)
    assert {"typer", "reconciler.cli", "reconciler.options"} <= modules
    heavy = NOT_ON_A_PASS | PARSER | {"requests", "reconciler.apply", "reconciler.plan",
                                      "reconciler.snarkosclient", "reconciler.agaveclient",
                                      "reconciler.configdir"}
    assert not modules & heavy


def test_the_lazy_modules_do_load_where_they_are_needed(cli, ws, node):
    """The other side of the two tests above: a refused token loads the scan that names
    the node's rule, and a fleet loads the fleet module."""
    ws.config("big.json5", raw='{libpath: "../libs/libbig.so", batch_size: 0x1FFFFFFFF}')
    ws.library("big")
    result = cli("validate", env=IMPORT_LOG)
    assert result.code == 1
    assert "0xFFFFFFFF" in result.out
    assert "reconciler.configscan" in imported(result)

    (ws.conf / "big.json5").unlink()
    targets = ws.root / "fleet.json5"
    targets.write_text(f'[{{name: "one", node_url: "{node.url}", config_dir: "{ws.conf}", '
                       f'jwt_token_file: "{node.token_file}", state_dir: "{ws.state}"}}]')
    result = cli("plan", "--targets", str(targets), node=node, env=IMPORT_LOG)
    assert result.code == 0, result.err
    assert {"reconciler.fleet", "json5"} <= imported(result)
