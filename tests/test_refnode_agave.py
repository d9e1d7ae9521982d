"""The reference node in Agave mode keeps agave's admin-RPC contract, over a real Unix
socket with raw bytes: framing, field order, texts and codes, reload semantics, the dlopen
cache, one worker, 0600, a replaced socket on restart, and the CLI as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler.refnode import AgaveNode, AgaveOptions, StartupError

from .conftest import wait_for


def library(folder: Path, stem: str, *markers: str) -> Path:
    path = folder / f"lib{stem}.so"
    path.write_text("\x7fELF placeholder\n" + "".join(m + "\n" for m in markers))
    return path


def config(folder: Path, filename: str, lib: str, name: str | None = None,
           extra: str = "") -> Path:
    path = folder / filename
    name_part = f', name: "{name}"' if name is not None else ""
    path.write_text(f'{{libpath: "{lib}"{name_part}{extra}}}')
    return path


class Client:
    """A raw connection: bytes out, response lines back."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def call(self, method: str, params: object = None, id_: object = 1) -> dict:
        body: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            body["params"] = params
        self.send(json.dumps(body).encode())
        return json.loads(self.line())

    def close(self) -> None:
        self.sock.close()


def error(message: str, id_: object = 1, code: int = -32600) -> dict:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_}


# -- framing and the envelope -------------------------------------------------------------
def test_two_requests_in_one_write_get_two_lines_in_compact_json(make_agave, short):
    node = make_agave()
    client = Client(node.socket_path)
    client.send(b'{"jsonrpc":"2.0","method":"listPlugins","id":1}'
                b'{"jsonrpc": "2.0", "method": "listPlugins", "id": "two"}')
    # Answered in completion order (try_buffer_unordered), each on its own line.
    assert {client.line(), client.line()} == {b'{"jsonrpc":"2.0","result":[],"id":1}',
                                              b'{"jsonrpc":"2.0","result":[],"id":"two"}'}


def test_a_request_split_over_writes_is_answered_once_whole(make_agave):
    node = make_agave()
    client = Client(node.socket_path)
    client.send(b'{"jsonrpc":"2.0","met')
    time.sleep(0.1)
    client.send(b'hod":"listPlugins","params":[],"id":null}')
    assert client.line() == b'{"jsonrpc":"2.0","result":[],"id":null}'


def test_braces_inside_strings_do_not_end_a_frame(make_agave, short):
    node = make_agave()
    client = Client(node.socket_path)
    odd = str(short / 'a}"{b.json5')
    reply = client.call("loadPlugin", [odd], 3)
    assert reply == error("Failed to load plugin: Cannot open the plugin config file", 3)


def test_error_field_order_and_no_data(make_agave):
    node = make_agave()
    client = Client(node.socket_path)
    client.send(b'{"jsonrpc":"2.0","method":"unloadPlugin","params":["x"],"id":7}')
    assert client.line() == (b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"The plugin '
                             b'you requested to unload is not loaded"},"id":7}')


@pytest.mark.parametrize("raw, expected", [
    (b'{"jsonrpc":"2.0","method":"listPlugins","id":1,}',
     b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'),
    (b'{"jsonrpc":"2.0","method":"listPlugins","id":-1}',
     b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'),
    (b'{"jsonrpc":"2.0","method":5,"id":4}',
     b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":4}'),
    (b'{"jsonrpc":"1.0","method":"listPlugins","id":"a"}',
     b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid request"},"id":"a"}'),
    (b'{"method":"listPlugins","id":5}',
     b'{"error":{"code":-32600,"message":"Unsupported JSON-RPC protocol version"},"id":5}'),
    (b'{"jsonrpc":"2.0","method":"getBalance","id":6}',
     b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":6}'),
    (b'{"jsonrpc":"2.0","method":"listPlugins","params":["x"],"id":8}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid parameters: No parameters '
     b'were expected","data":"Array([String(\\"x\\")])"},"id":8}'),
    (b'{"jsonrpc":"2.0","method":"loadPlugin","id":9}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params: invalid type: null, '
     b'expected a tuple of size 1."},"id":9}'),
    (b'{"jsonrpc":"2.0","method":"loadPlugin","params":[],"id":10}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params: invalid length 0, '
     b'expected a tuple of size 1."},"id":10}'),
    (b'{"jsonrpc":"2.0","method":"loadPlugin","params":[1],"id":11}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params: invalid type: '
     b'integer `1`, expected a string."},"id":11}'),
    (b'{"jsonrpc":"2.0","method":"unloadPlugin","params":["a","b"],"id":12}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params: invalid length 2, '
     b'expected fewer elements in array."},"id":12}'),
    (b'{"jsonrpc":"2.0","method":"reloadPlugin","params":{"name":"a"},"id":13}',
     b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params: invalid type: map, '
     b'expected a tuple of size 2."},"id":13}'),
    (b'[{"jsonrpc":"2.0","method":"listPlugins","id":14},'
     b'{"jsonrpc":"2.0","method":"listPlugins"}]',
     b'[{"jsonrpc":"2.0","result":[],"id":14}]'),
])
def test_jsonrpc_core_texts_and_codes(make_agave, raw, expected):
    node = make_agave()
    client = Client(node.socket_path)
    client.send(raw)
    assert client.line() == expected


def test_a_notification_gets_no_answer_and_runs_nothing(make_agave, short):
    node = make_agave()
    library(short, "quiet")
    cfg = config(short, "quiet.json5", "libquiet.so")
    client = Client(node.socket_path)
    client.send(json.dumps({"jsonrpc": "2.0", "method": "loadPlugin",
                            "params": [str(cfg)]}).encode())
    assert client.call("listPlugins", id_=2) == {"jsonrpc": "2.0", "result": [], "id": 2}


# -- the plugin service ----------------------------------------------------------------------
def test_without_plugins_or_always_enabled_there_is_no_service(make_agave):
    node = make_agave(always=False)
    client = Client(node.socket_path)
    for method, params in (("listPlugins", None), ("loadPlugin", ["/x"]),
                           ("unloadPlugin", ["x"]), ("reloadPlugin", ["x", "/x"])):
        assert client.call(method, params) == error("No geyser plugin service")
    # params are checked before the service is looked for
    assert client.call("loadPlugin", [])["error"]["code"] == -32602


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing.json5", "Failed to load plugin: Cannot open the plugin config file"),
    (lambda d: d, "Failed to load plugin: Cannot read the plugin config file"),
    (lambda d: _write(d / "bad.json5", "{libpath: "),
     "Failed to load plugin: The config file is not in a valid Json format"),
    (lambda d: _write(d / "nolib.json5", '{name: "x"}'),
     "Failed to load plugin: Plugin library path is not specified in the config file"),
    (lambda d: _write(d / "nolib2.json5", "[1]"),
     "Failed to load plugin: Plugin library path is not specified in the config file"),
])
def test_load_errors_carry_agave_texts(make_agave, short, setup, message):
    node = make_agave()
    client = Client(node.socket_path)
    assert client.call("loadPlugin", [str(setup(short))]) == error(message)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_library_errors_name_the_joined_path(make_agave, short):
    node = make_agave()
    client = Client(node.socket_path)
    cfg = config(short, "gone.json5", "libgone.so")
    assert client.call("loadPlugin", [str(cfg)]) == error(
        f"Failed to load plugin: Cannot load plugin shared library (error: {short}/libgone.so: "
        f"cannot open shared object file: No such file or directory)")
    library(short, "nosym", "slipstream:no-create-plugin")
    cfg = config(short, "nosym.json5", "libnosym.so")
    assert client.call("loadPlugin", [str(cfg)]) == error(
        f"Failed to load plugin: Cannot load plugin shared library (error: {short}/libnosym.so: "
        f"undefined symbol: _create_plugin)")


def test_duplicates_are_by_name_only(make_agave, short):
    node = make_agave()
    library(short, "pg")
    client = Client(node.socket_path)
    one = config(short, "one.json5", "libpg.so", name="pg-a")
    two = config(short, "two.json5", "libpg.so", name="pg-b")
    same = config(short, "same.json5", str(short / "libpg.so"), name="pg-a")
    assert client.call("loadPlugin", [str(one)])["result"] == "pg-a"
    assert client.call("loadPlugin", [str(two)])["result"] == "pg-b"
    assert client.call("loadPlugin", [str(same)]) == error(
        "There already exists a plugin named pg-a loaded. Did not load requested plugin")
    assert node.manager.names() == ["pg-a", "pg-b"]


def test_on_load_failure_and_yellowstone_strict_json(make_agave, short):
    node = make_agave()
    client = Client(node.socket_path)
    library(short, "broken", "slipstream:on-load-fails")
    cfg = config(short, "broken.json5", "libbroken.so")
    assert client.call("loadPlugin", [str(cfg)]) == error(
        "on_load method of plugin broken failed: Plugin-defined custom error. Error message: "
        "(simulated on_load failure)")
    library(short, "yellowstone_grpc_geyser", "geyser:name=yellowstone-grpc-geyser-5.0.1",
            "geyser:strict-json")
    good = _write(short / "ys.json", '{"libpath": "libyellowstone_grpc_geyser.so"}')
    assert client.call("loadPlugin", [str(good)])["result"] == "yellowstone-grpc-geyser-5.0.1"
    named = _write(short / "ysn.json",
                   '{"libpath": "libyellowstone_grpc_geyser.so", "name": "ys"}')
    message = client.call("loadPlugin", [str(named)])["error"]["message"]
    assert message.startswith("on_load method of plugin ys failed: Error reading config file. "
                              "Error message: (unknown field `name`, expected one of `libpath`")
    json5_only = _write(short / "ys5.json", '{libpath: "libyellowstone_grpc_geyser.so"}')
    node.manager.unload("yellowstone-grpc-geyser-5.0.1")
    message = client.call("loadPlugin", [str(json5_only)])["error"]["message"]
    assert message.startswith("on_load method of plugin yellowstone-grpc-geyser-5.0.1 failed: "
                              "Error reading config file. Error message: (")
    assert node.manager.names() == []


# -- reload -----------------------------------------------------------------------------------
def test_reload_moves_the_plugin_to_the_end(make_agave, short):
    node = make_agave()
    for stem in ("a", "b", "c"):
        library(short, stem)
        config(short, f"{stem}.json5", f"lib{stem}.so")
    client = Client(node.socket_path)
    for stem in ("a", "b", "c"):
        client.call("loadPlugin", [str(short / f"{stem}.json5")])
    assert client.call("reloadPlugin", ["a", str(short / "a.json5")]) == \
        {"jsonrpc": "2.0", "result": None, "id": 1}
    assert client.call("listPlugins")["result"] == ["b", "c", "a"]


def test_a_failed_reload_leaves_nothing_loaded(make_agave, short):
    node = make_agave()
    library(short, "idx")
    good = config(short, "idx.json5", "libidx.so")
    client = Client(node.socket_path)
    client.call("loadPlugin", [str(good)])
    broken = _write(short / "idx-new.json5", "{libpath: ")
    assert client.call("reloadPlugin", ["idx", str(broken)]) == \
        error("The config file is not in a valid Json format")
    assert client.call("listPlugins")["result"] == []
    client.call("loadPlugin", [str(good)])
    library(short, "bad", "slipstream:on-load-fails")
    failing = config(short, "idx-bad.json5", "libbad.so", name="idx")
    assert client.call("reloadPlugin", ["idx", str(failing)]) == error(
        "Failed to start new plugin (previous plugin was dropped!): Plugin-defined custom "
        "error. Error message: (simulated on_load failure)")
    assert node.manager.names() == []
    assert client.call("reloadPlugin", ["idx", str(good)]) == \
        error("The plugin you requested to reload is not loaded")


def test_reload_into_a_name_already_taken(make_agave, short):
    node = make_agave()
    library(short, "a")
    library(short, "b")
    client = Client(node.socket_path)
    client.call("loadPlugin", [str(config(short, "a.json5", "liba.so"))])
    client.call("loadPlugin", [str(config(short, "b.json5", "libb.so"))])
    assert client.call("reloadPlugin", ["a", str(short / "b.json5")]) == error(
        "There already exists a plugin named b loaded, while reloading a. Did not load "
        "requested plugin")
    assert node.manager.names() == ["b"]


# -- dlopen keeps the first library of a path until a restart --------------------------------
def test_a_library_rebuilt_in_place_keeps_its_old_code_until_restart(make_agave, short):
    node = make_agave()
    lib = library(short, "ys", "geyser:name=ys-1.0")
    cfg = config(short, "ys.json5", "libys.so")
    client = Client(node.socket_path)
    assert client.call("loadPlugin", [str(cfg)])["result"] == "ys-1.0"
    lib.unlink()
    library(short, "ys", "geyser:name=ys-2.0")  # a new file (new inode) at the same path
    assert client.call("reloadPlugin", ["ys-1.0", str(cfg)])["result"] is None
    assert node.manager.names() == ["ys-1.0"]
    client.call("unloadPlugin", ["ys-1.0"])
    assert client.call("loadPlugin", [str(cfg)])["result"] == "ys-1.0"
    copy = short / "libys-2.0.so"
    copy.write_bytes(lib.read_bytes())
    assert node.manager.load(str(config(short, "ys2.json5", "libys-2.0.so"))) == "ys-2.0"
    client.close()
    node.restart()
    client = Client(node.socket_path)
    assert client.call("loadPlugin", [str(cfg)])["result"] == "ys-2.0"


# -- one worker, hang, faults ---------------------------------------------------------------
def test_a_slow_load_delays_a_list_queued_behind_it(make_agave, short):
    node = make_agave(load_delay=0.6)
    library(short, "slow")
    cfg = config(short, "slow.json5", "libslow.so")
    loader, lister = Client(node.socket_path), Client(node.socket_path)
    loader.send(json.dumps({"jsonrpc": "2.0", "method": "loadPlugin", "params": [str(cfg)],
                            "id": 1}).encode())
    wait_for(lambda: node.manager.load_delay > 0 and node._jobs.empty())
    time.sleep(0.05)
    started = time.monotonic()
    assert lister.call("listPlugins", id_=2)["result"] == ["slow"]
    assert time.monotonic() - started > 0.3
    assert json.loads(loader.line())["result"] == "slow"


def test_a_slow_unload_holds_the_worker(make_agave, short):
    node = make_agave(unload_delay=0.5)
    library(short, "u")
    node.manager.load(str(config(short, "u.json5", "libu.so")))
    a, b = Client(node.socket_path), Client(node.socket_path)
    a.send(b'{"jsonrpc":"2.0","method":"unloadPlugin","params":["u"],"id":1}')
    time.sleep(0.1)
    started = time.monotonic()
    assert b.call("listPlugins")["result"] == []
    assert time.monotonic() - started > 0.25
    assert json.loads(a.line()) == {"jsonrpc": "2.0", "result": None, "id": 1}


def test_a_hung_worker_answers_nothing_until_released(make_agave):
    node = make_agave(hang=True)
    client = Client(node.socket_path)
    client.sock.settimeout(0.5)
    client.send(b'{"jsonrpc":"2.0","method":"listPlugins","id":1}')
    with pytest.raises(TimeoutError):
        client.line()
    # parse errors do not need the worker
    client.send(b'{"x":}')
    assert json.loads(client.line())["error"]["code"] == -32700
    node.options.faults.hang = False
    client.sock.settimeout(5)
    assert json.loads(client.line())["result"] == []


def test_drop_closes_the_connection_unanswered_and_errors_are_internal(make_agave):
    node = make_agave(drop_rate=1.0)
    client = Client(node.socket_path)
    client.send(b'{"jsonrpc":"2.0","method":"listPlugins","id":1}')
    with pytest.raises(ConnectionError):
        client.line()
    assert node.requests[-1].outcome == "dropped"
    node.options.faults.drop_rate = 0.0
    node.options.faults.error_rate = 1.0
    client = Client(node.socket_path)
    assert client.call("listPlugins") == error("Internal error", code=-32603)
    assert node.requests[-1].outcome == "injected"


# -- the socket -----------------------------------------------------------------------------
def test_socket_is_0600_and_a_restart_replaces_it(make_agave, short):
    stale = short / "ledger"
    stale.mkdir()
    (stale / "admin.rpc").write_text("left by a crash")
    library(short, "boot")
    boot = config(short, "boot.json5", "libboot.so")
    node = make_agave(startup=[boot], always=False)
    st = os.stat(node.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    library(short, "run")
    client = Client(node.socket_path)
    client.call("loadPlugin", [str(config(short, "run.json5", "librun.so"))])
    assert node.manager.names() == ["boot", "run"]
    node.restart()
    # a new file: the inode number alone may be reused at once, its change time is not
    after = os.stat(node.socket_path)
    assert (after.st_ino, after.st_ctime_ns) != (st.st_ino, st.st_ctime_ns)
    assert node.manager.names() == ["boot"]
    with pytest.raises(ConnectionError):
        client.call("listPlugins")
    node.stop()
    assert not node.socket_path.exists() and not node.running


def test_a_failing_startup_plugin_aborts_the_start(short):
    cfg = _write(short / "bad.json5", "{}")
    node = AgaveNode(AgaveOptions(ledger=short / "ledger", geyser_plugin_configs=[str(cfg)]))
    with pytest.raises(StartupError, match="Plugin library path is not specified"):
        node.start()
    assert not node.running


# -- the CLI as a real process --------------------------------------------------------------
def test_cli_node_kind_agave_serves_and_restarts_on_sigusr1(short):
    library(short, "boot")
    boot = config(short, "boot.json5", "libboot.so")
    ledger = short / "ledger"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "node", "--kind", "agave", "--ledger", str(ledger),
         "--geyser-plugin-config", str(boot)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith(f"reference node listening on {ledger}/admin.rpc")
        library(short, "run")
        client = Client(ledger / "admin.rpc")
        assert client.call("loadPlugin", [str(config(short, "run.json5", "librun.so"))])[
            "result"] == "run"
        before = _identity(ledger / "admin.rpc")
        proc.send_signal(signal.SIGUSR1)
        assert "start-up plugin(s)" in proc.stderr.readline()
        wait_for(lambda: (ledger / "admin.rpc").exists()
                 and _identity(ledger / "admin.rpc") != before)
        assert Client(ledger / "admin.rpc").call("listPlugins")["result"] == ["boot"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_ctime_ns


def test_cli_refuses_the_other_kinds_flags_in_one_line(short):
    for args, flag in ((["--kind", "agave", "--ledger", str(short), "--nojwt"], "--nojwt"),
                       (["--geyser-plugin-config", "/x.json5"], "--geyser-plugin-config")):
        result = subprocess.run([sys.executable, "-m", "reconciler", "node", *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and flag in result.stderr


def test_many_connections_at_once_all_get_answers(make_agave):
    node = make_agave()
    answers: list[dict] = []

    def ask() -> None:
        answers.append(Client(node.socket_path).call("listPlugins"))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [{"jsonrpc": "2.0", "result": [], "id": 1}] * 20
