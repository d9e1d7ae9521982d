"""The Agave adapter against a real validator admin socket (the reference node's Agave
mode) and, for answers no validator gives, a real Unix socket server of our own: each
outcome is one typed error with one operator-readable line."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.agaveclient import AgaveClient
from reconciler.errors import (
    AlreadyLoaded,
    BadResponse,
    NodeTimeout,
    NodeUnreachable,
    NoPluginManager,
    NotLoaded,
    Rejected,
    Unauthorized,
)
from reconciler.nodeclient import NodeClient
from reconciler.noderules import AGAVE

from .conftest import wait_for


@pytest.fixture
def clients() -> Iterator[Callable[..., AgaveClient]]:
    made: list[AgaveClient] = []

    def make(path: Path, timeout: float = 5.0) -> AgaveClient:
        client = AgaveClient(path, timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def plugin(folder: Path, stem: str, *markers: str, name: str | None = None,
           filename: str | None = None) -> Path:
    """A simulated library and a config naming it by absolute path."""
    lib = folder / f"lib{stem}.so"
    if not lib.exists():
        lib.write_text("\x7fELF placeholder\n" + "".join(m + "\n" for m in markers))
    path = folder / (filename or f"{stem}.json5")
    name_part = f', name: "{name}"' if name is not None else ""
    path.write_text(f'{{libpath: "{lib}"{name_part}}}')
    return path


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# -- the four methods -------------------------------------------------------------------
def test_the_client_is_a_node_client_with_agaves_rules(make_agave, clients) -> None:
    node = make_agave()
    client: NodeClient = clients(node.socket_path)
    assert client.rules is AGAVE
    assert client.prefix is None and client.kind is None
    assert client.pacer.interval == 0.0  # the admin socket is not rate-limited
    assert client.list() == []
    assert client.kind == "agave"
    assert client.described == "Agave validator (admin RPC)"


def test_load_list_reload_unload_round_trip(make_agave, clients, short) -> None:
    node = make_agave()
    client = clients(node.socket_path)
    seen: list[tuple[str, int]] = []
    client.on_response = lambda method, status: seen.append((method, status))
    a = plugin(short, "alpha", name="alpha")
    b = plugin(short, "beta", name="beta")
    assert client.load(str(a)) == "alpha"
    assert client.load(str(b)) == "beta"
    assert client.list() == ["alpha", "beta"]
    client.reload("alpha", str(a))
    assert client.list() == ["beta", "alpha"]  # a reload moves the plugin to the end
    client.unload("beta")
    assert node.manager is not None and node.manager.names() == ["alpha"]
    assert [m for m, _ in seen] == ["loadPlugin", "loadPlugin", "listPlugins",
                                     "reloadPlugin", "listPlugins", "unloadPlugin"]
    assert {s for _, s in seen} == {200}
    assert [c.method for c in node.requests] == [m for m, _ in seen]


def test_an_answer_in_pieces_is_read_whole_and_the_connection_is_kept(short, clients) -> None:
    with FakeValidator(short, lambda req: [b'{"jsonrpc":"2.0",', b'"result":["a",',
                                           b'"b"],"id":' + str(req["id"]).encode(),
                                           b"}\n"]) as fake:
        client = clients(fake.path)
        assert client.list() == ["a", "b"]
        assert client.list() == ["a", "b"]
    assert fake.connections == 1
    assert fake.raw[0].startswith(b'{"jsonrpc":"2.0","id":1,"method":"listPlugins",'
                                  b'"params":[]}')
    assert b"\n" not in fake.raw[0]  # no delimiter: the server splits on braces


# -- each outcome, one line ---------------------------------------------------------------
def test_a_missing_socket_says_no_validator_listens(short, clients) -> None:
    ledger = short / "ledger"
    ledger.mkdir()
    with pytest.raises(NodeUnreachable) as caught:
        clients(ledger / "admin.rpc").list()
    assert one_line(caught.value) == (
        f"no validator is listening on {ledger}/admin.rpc (is it running with --ledger "
        f"{ledger}?)")


def test_a_stale_socket_file_says_the_same(short, clients) -> None:
    ledger = short / "ledger"
    ledger.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(ledger / "admin.rpc"))
    stale.close()  # the file stays; nobody listens: ECONNREFUSED
    with pytest.raises(NodeUnreachable, match="no validator is listening on") as caught:
        clients(ledger / "admin.rpc").list()
    one_line(caught.value)


def test_a_socket_of_another_user_names_its_owner_and_mode(make_agave, short) -> None:
    node = make_agave()
    os.chmod(short, 0o755)
    os.chmod(node.socket_path.parent, 0o755)  # the folder is open; the socket is 0600
    probe = ("import sys; from pathlib import Path\n"
             "from reconciler.agaveclient import AgaveClient\n"
             "from reconciler.errors import Unauthorized\n"
             "try:\n"
             f"    AgaveClient(Path({str(node.socket_path)!r}), 5).list()\n"
             "except Unauthorized as exc:\n"
             "    print(exc)\n"
             "    sys.exit(0)\n"
             "sys.exit(3)\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd="/", env={"PYTHONPATH": str(root), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line == (f"may not open {node.socket_path} (owner root, mode 0600; we are uid 65534):"
                    " the socket is the validator's only lock; run slipstream-reconciler as "
                    "the validator's user")
    assert issubclass(Unauthorized, Exception)


def test_a_hung_worker_is_a_timeout_and_the_load_it_held_is_found_later(
        make_agave, clients, short) -> None:
    node = make_agave(hang=True)
    client = clients(node.socket_path, timeout=0.5)
    statuses: list[int] = []
    client.on_response = lambda method, status: statuses.append(status)
    config = plugin(short, "slow", name="slow")
    started = time.monotonic()
    with pytest.raises(NodeTimeout) as caught:
        client.load(str(config))
    assert time.monotonic() - started < 5
    assert one_line(caught.value) == (
        f"the validator at {node.socket_path} did not answer loadPlugin within 0.5 s (its one "
        "plugin worker is busy or hung); a slow plugin on_load may still complete it: the "
        "next pass finds it in the validator's list and records it, and never loads it "
        "twice")
    assert statuses == [0]
    with pytest.raises(NodeTimeout, match=r"did not answer listPlugins within 0\.5 s"):
        client.list()
    node.options.faults.hang = False
    # The late answers went to dropped connections; this list is answered for itself.
    assert wait_for(lambda: client.list() == ["slow"], message="the held load to finish")
    # The load's own answer went to its dropped connection; the node logs it as it answers.
    wait_for(lambda: [c.method for c in node.requests].count("loadPlugin") == 1,
             message="the one load in the node's log")


def test_no_geyser_plugin_service_names_the_flags_and_the_restart(make_agave, clients) -> None:
    node = make_agave(always=False)
    client = clients(node.socket_path)
    with pytest.raises(NoPluginManager) as caught:
        client.list()
    assert one_line(caught.value) == (
        f"the validator at {node.socket_path} has no Geyser plugin service: the validator "
        "was started without any --geyser-plugin-config and without "
        "--geyser-plugin-always-enabled, so its plugins cannot be changed at run time: "
        "restart it with one of them")
    assert client.kind == "agave-no-geyser-service"
    assert "without a Geyser plugin service" in client.described
    with pytest.raises(NoPluginManager):
        client.require_runtime_loading()


def test_require_runtime_loading_asks_without_changing_anything(make_agave, clients) -> None:
    node = make_agave()
    client = clients(node.socket_path)
    client.require_runtime_loading()
    assert [c.method for c in node.requests] == ["listPlugins"]


def test_a_duplicate_name_is_already_loaded_with_that_name(make_agave, clients, short) -> None:
    node = make_agave()
    client = clients(node.socket_path)
    client.load(str(plugin(short, "one", name="feed")))
    with pytest.raises(AlreadyLoaded) as caught:
        client.load(str(plugin(short, "two", name="feed")))
    assert caught.value.name == "feed"
    assert one_line(caught.value) == ("There already exists a plugin named feed loaded. Did "
                                      "not load requested plugin")
    # One library twice under two names is fine on Agave.
    assert client.load(str(plugin(short, "one", name="feed-2", filename="x.json5"))) == "feed-2"


def test_unload_and_reload_of_a_plugin_not_loaded(make_agave, clients, short) -> None:
    client = clients(make_agave().socket_path)
    with pytest.raises(NotLoaded, match=r"^The plugin you requested to unload is not loaded$"):
        client.unload("ghost")
    with pytest.raises(NotLoaded, match=r"^The plugin you requested to reload is not loaded$"):
        client.reload("ghost", str(plugin(short, "ghost", name="ghost")))


def test_load_failures_are_rejected_and_blame_the_plugin(make_agave, clients, short) -> None:
    client = clients(make_agave().socket_path)
    missing = short / "nowhere.json5"
    with pytest.raises(Rejected) as caught:
        client.load(str(missing))
    assert one_line(caught.value) == "Failed to load plugin: Cannot open the plugin config file"
    assert client.blames_the_plugin(str(caught.value))
    with pytest.raises(Rejected) as caught:
        client.load(str(plugin(short, "bad", "slipstream:on-load-fails", name="bad")))
    assert str(caught.value).startswith("on_load method of plugin bad failed: ")
    assert client.blames_the_plugin(str(caught.value))
    assert not client.blames_the_plugin("Internal error")


def test_a_failed_reload_is_rejected_and_leaves_nothing_loaded(make_agave, clients,
                                                                short) -> None:
    client = clients(make_agave().socket_path)
    client.load(str(plugin(short, "good", name="p")))
    broken = plugin(short, "broken", "slipstream:on-load-fails", name="p")
    with pytest.raises(Rejected) as caught:
        client.reload("p", str(broken))
    assert str(caught.value).startswith(
        "Failed to start new plugin (previous plugin was dropped!): ")
    assert client.blames_the_plugin(str(caught.value))
    assert client.list() == []
    with pytest.raises(Rejected, match=r"^Cannot open the plugin config file$") as caught:
        client.load(str(plugin(short, "good", name="p")))
        client.reload("p", str(short / "gone.json5"))
    assert client.blames_the_plugin(str(caught.value))


@pytest.mark.parametrize(("method", "params", "code", "text"), [
    ("exit", (), -32601, "Method not found"),
    ("listPlugins", ("x",), -32602, "Invalid parameters: No parameters were expected"),
])
def test_other_json_rpc_errors_are_bad_responses(make_agave, clients, method, params, code,
                                                 text) -> None:
    client = clients(make_agave().socket_path)
    with pytest.raises(BadResponse) as caught:
        client._call(method, params)
    assert f"refused {method}: {text} (JSON-RPC error {code})" in one_line(caught.value)


def test_an_internal_error_is_a_bad_response_and_counted_by_its_code(make_agave,
                                                                     clients) -> None:
    client = clients(make_agave(error_rate=1.0).socket_path)
    statuses: list[int] = []
    client.on_response = lambda method, status: statuses.append(status)
    with pytest.raises(BadResponse, match=r"refused listPlugins: Internal error \(JSON-RPC "
                                          r"error -32603\)"):
        client.list()
    assert statuses == [-32603]


def test_garbage_is_a_bad_response(short, clients) -> None:
    with (FakeValidator(short, lambda req: [b"<html>hello</html>\n"]) as fake,
          pytest.raises(BadResponse, match="something that is not JSON: '<html>hello")):
        clients(fake.path).list()


def test_a_parse_error_answer_is_a_bad_response(short, clients) -> None:
    answer = b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}\n'
    with (FakeValidator(short, lambda req: [answer]) as fake,
          pytest.raises(BadResponse, match=r"refused listPlugins: Parse error \(JSON-RPC "
                                           r"error -32700\)")):
        clients(fake.path).list()


def test_an_answer_that_never_ends_is_capped(short, clients) -> None:
    with (FakeValidator(short, lambda req: [b'{"result":"' + b"x" * (2 << 20)]) as fake,
          pytest.raises(BadResponse, match="larger than 1 MiB without ending")):
        clients(fake.path).list()


def test_a_closed_connection_without_an_answer_is_unreachable(short, clients) -> None:
    with (FakeValidator(short, lambda req: None) as fake,
          pytest.raises(NodeUnreachable) as caught):
        clients(fake.path).load("/etc/x.json5")
    assert one_line(caught.value) == (
        f"the validator at {fake.path} closed the connection without answering loadPlugin "
        "(a restart?); a slow plugin on_load may still complete it: the next pass finds it "
        "in the validator's list and records it, and never loads it twice")


def test_a_restart_between_calls_is_crossed_on_a_fresh_connection(make_agave, clients,
                                                                  short) -> None:
    node = make_agave()
    client = clients(node.socket_path)
    client.load(str(plugin(short, "a", name="a")))
    node.restart()  # the kept connection is closed by the validator, the socket replaced
    assert client.list() == []
    assert client.load(str(plugin(short, "a", name="a"))) == "a"
    assert [c.method for c in node.requests].count("loadPlugin") == 2


def test_the_probe_sibling_has_its_own_connection(make_agave, clients) -> None:
    node = make_agave()
    client = clients(node.socket_path)
    other = client.sibling()
    try:
        assert other is not client and other.socket_path == client.socket_path
        assert client.list() == other.list() == []
    finally:
        other.close()


def test_importing_the_adapter_does_not_import_requests() -> None:
    probe = "import sys, reconciler.agaveclient; print('requests' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


# -- a validator that answers what we tell it to ------------------------------------------
class FakeValidator:
    """A real Unix socket server that reads one request frame (balanced braces) and sends
    the chunks `answer(request)` returns, a short pause apart; None closes without an
    answer."""

    def __init__(self, folder: Path,
                 answer: Callable[[dict[str, object]], list[bytes] | None]) -> None:
        self.path = folder / "admin.rpc"
        self.answer = answer
        self.raw: list[bytes] = []
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> FakeValidator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._server.close()

    def _serve(self) -> None:
        import json

        self._server.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            self.connections += 1
            with conn:
                while True:
                    data = b""
                    while data.count(b"{") == 0 or data.count(b"{") != data.count(b"}"):
                        try:
                            chunk = conn.recv(65536)
                        except OSError:
                            chunk = b""
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    self.raw.append(data)
                    chunks = self.answer(json.loads(data))
                    if chunks is None:
                        break
                    for chunk in chunks:
                        with contextlib.suppress(OSError):
                            conn.sendall(chunk)
                        time.sleep(0.01)


# -- settings, through the CLI as an operator runs it ---------------------------------------
def test_plan_and_status_against_a_validator_name_its_socket_and_no_network(
        make_agave, cli, ws) -> None:
    node = make_agave()
    ws.config("alpha.json5", name="alpha")
    ledger = str(node.socket_path.parent)
    planned = cli("plan", "--node-kind", "agave", "--ledger", ledger, "-o", "json")
    assert planned.code == 0, planned.err
    assert planned.json["node"] == str(node.socket_path)
    assert planned.json["network"] is None and planned.json["node_kind"] == "agave"
    applied = cli("apply", env={"SLIPSTREAM_NODE_KIND": "agave", "SLIPSTREAM_LEDGER": ledger})
    assert applied.code == 0, applied.err
    assert node.manager is not None and node.manager.names() == ["alpha"]
    status = cli("status", "--node-kind", "agave", "--ledger", ledger)
    assert status.code == 0, status.err
    assert f"node {node.socket_path} · Agave validator" in status.out
    assert "network" not in status.out


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--node-url", "http://127.0.0.1:3030"], {}, "--node-url does"),
    (["--jwt-secret-file", "/etc/hostname", "--insecure-skip-verify"], {},
     "--jwt-secret-file, --insecure-skip-verify do"),
    ([], {"SLIPSTREAM_JWT_TOKEN": "secret-token", "SLIPSTREAM_MAX_RPS": "5"},
     "$SLIPSTREAM_JWT_TOKEN, --max-rps do"),
    ([], {"SLIPSTREAM_NETWORK": "testnet", "SLIPSTREAM_API": "v2"}, "--network, --api do"),
])
def test_snarkos_settings_given_for_a_validator_are_refused_in_one_line(
        cli, short, args, env, named) -> None:
    for command in ("validate", "plan", "apply", "status"):
        done = cli(command, "--node-kind", "agave", "--ledger", str(short), *args, env=env)
        assert done.code == 1, (command, done.err)
        lines = done.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {named} not apply to "
                                                       "--node-kind agave"), lines
        assert "secret-token" not in done.err


def test_a_ledger_without_agave_and_agave_without_a_ledger_are_refused(cli, short) -> None:
    done = cli("plan", "--ledger", str(short))
    assert done.code == 1 and "does not apply to --node-kind snarkos" in done.err
    done = cli("plan", "--node-kind", "agave")
    assert done.code == 1 and "--node-kind agave needs --ledger DIR" in done.err


def test_targets_may_hold_validators_and_refuse_their_snarkos_keys(make_agave, cli, ws,
                                                                   short) -> None:
    node = make_agave()
    ws.config("alpha.json5", name="alpha")
    targets = short / "fleet.json5"
    targets.write_text(json_targets([{"name": "v1", "node_kind": "agave",
                                      "ledger": str(node.socket_path.parent),
                                      "config_dir": str(ws.conf)}]))
    done = cli("plan", "--targets", str(targets), "-o", "json")
    assert done.code == 0, done.err
    report = done.json["targets"][0]
    assert report["node"] == str(node.socket_path)
    assert report["report"]["network"] is None
    targets.write_text(json_targets([{"name": "v1", "node_kind": "agave", "ledger": "/x",
                                      "node_url": "http://127.0.0.1:1",
                                      "config_dir": str(ws.conf)}]))
    done = cli("plan", "--targets", str(targets))
    assert done.code == 1
    assert f"--targets {targets}, target 1 (v1): `node_url` does not apply to --node-kind " \
           "agave" in done.err
    targets.write_text(json_targets([{"name": "v1", "node_kind": "agave",
                                      "config_dir": str(ws.conf)}]))
    done = cli("plan", "--targets", str(targets))
    assert done.code == 1 and "(v1): `ledger` is required" in done.err


def json_targets(items: list[dict[str, str]]) -> str:
    import json

    return json.dumps(items)
