"""Nothing lost, nothing leaked, every bad input refused clearly: trust boundaries,
hostile nodes, TLS, and the secrets of a whole session."""

from __future__ import annotations

import json
import os
import subprocess

import jwt
import pytest

from reconciler.ledgerstore import LedgerStore
from tests.conftest import no_traceback
from tests.hostile import HostileServer

SECRET = "hunter2-s3cret"
ROOT = os.geteuid() == 0


def one_line_error(result, *fragments: str) -> None:
    assert result.code == 1, (result.code, result.out, result.err)
    no_traceback(result)
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- trust boundaries --------------------------------------------------------------------
def test_a_world_writable_config_file_is_refused(cli, ws, node, kind):
    ws.config("a.json5", name="a")
    os.chmod(ws.conf / "a.json5", 0o666)
    one_line_error(cli("plan", node=node), "a.json5 is world-writable")
    one_line_error(cli("apply", node=node), "world-writable", "--insecure-allow-writable")
    assert "a" not in node.names()
    assert cli("apply", "--insecure-allow-writable", node=node).code == 0


def test_a_world_writable_directory_is_refused_and_unloads_nothing(cli, ws, node, kind):
    ws.config("a.json5", name="a")
    cli("apply", node=node)
    os.chmod(ws.conf, 0o777)
    os.remove(ws.conf / "a.json5")
    one_line_error(cli("apply", "--allow-empty", node=node), "config directory",
                   "world-writable")
    assert "a" in node.names()


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_a_file_owned_by_another_user_is_refused(cli, ws, node):
    ws.config("a.json5", name="a")
    os.chown(ws.conf / "a.json5", 4242, -1)
    one_line_error(cli("validate"), "owned by uid 4242")


def test_group_writable_is_a_warning(cli, ws):
    ws.config("a.json5", name="a")
    os.chmod(ws.conf / "a.json5", 0o664)
    result = cli("validate")
    assert result.code == 0 and "group-writable" in result.out


def test_a_symlink_leading_outside_the_directory_is_refused(cli, ws, node, kind):
    outside = ws.root / "elsewhere.json5"
    ws.library("a")
    outside.write_text('{libpath: "' + str(ws.libs / "liba.so") + '", name: "a"}')
    (ws.conf / "a.json5").symlink_to(outside)
    one_line_error(cli("apply", node=node), "symlink leading outside the config directory")
    one_line_error(cli("apply", "--insecure-allow-writable", node=node), "symlink")


def test_token_and_secret_files_readable_by_others_are_warned_about(cli, ws, node):
    os.chmod(node.token_file, 0o644)
    result = cli("plan", node=node)
    assert result.code == 0 and "readable by group or others" in result.err


# -- hostile and broken nodes ---------------------------------------------------------------
@pytest.mark.parametrize("mode, fragment", [
    ("html", "not JSON"), ("empty", "not JSON"), ("invalid", "not JSON"),
    ("nonstrings", "not a JSON array of names"), ("object", "not a JSON array of names"),
    ("huge", "larger than 4 MiB"), ("endless", "did not answer"),
    ("redirect", "redirect"), ("silent", "did not answer within 1 s"),
])
def test_a_node_answering_nonsense_is_one_clear_line_and_changes_nothing(cli, ws, node, mode,
                                                                        fragment):
    ws.config("a.json5", name="a")
    cli("apply", node=node)
    before = (ws.state / "ledger.json").read_bytes()
    os.remove(ws.conf / "a.json5")
    with HostileServer(mode) as hostile:
        result = cli("apply", "--timeout", "1", "--allow-empty",
                     env={"SLIPSTREAM_NODE_URL": hostile.url}, node=node, timeout=30)
    one_line_error(result, hostile.url, fragment)
    assert (ws.state / "ledger.json").read_bytes() == before


def test_an_expired_token_is_unauthorized(cli, ws, node):
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        expired = jwt.encode({"sub": "x", "iat": 1, "exp": 2}, node.secret, algorithm="HS256")
    result = cli("plan", node=node, env={"SLIPSTREAM_JWT_TOKEN_FILE": "",
                                         "SLIPSTREAM_JWT_TOKEN": expired})
    one_line_error(result, "unauthorized (401)", "SLIPSTREAM_JWT_TOKEN")


def test_a_node_url_with_a_password_is_masked(cli, ws):
    result = cli("plan", env={"SLIPSTREAM_NODE_URL": f"http://admin:{SECRET}@127.0.0.1:9"})
    one_line_error(result, "admin:***@127.0.0.1:9")
    assert SECRET not in result.err + result.out


# -- TLS ------------------------------------------------------------------------------------
@pytest.fixture
def tls_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    return cert, key


def test_https_verifies_certificates_by_default(cli, ws, make_node, tls_files):
    cert, key = tls_files
    node = make_node(tls_cert=str(cert), tls_key=str(key))
    assert node.url.startswith("https://")
    ws.config("a.json5", name="a")
    one_line_error(cli("plan", node=node), "certificate verify failed", "--ca-file")
    assert cli("apply", "--ca-file", str(cert), node=node).code == 0
    assert "a" in node.manager.names()
    loud = cli("plan", "--insecure-skip-verify", node=node)
    assert loud.code == 0 and "verification" in loud.err and "OFF" in loud.err


# -- secrets across a whole session -----------------------------------------------------------
def test_no_secret_in_any_output_of_a_whole_session(cli, ws, node):
    """Every command, text and JSON, success and failure, and every file we write."""
    secret_file = ws.root / "jwt-secret"
    import base64

    secret_b64 = base64.b64encode(node.secret).decode()
    secret_file.write_text(secret_b64)
    secret_file.chmod(0o600)
    auth = {"SLIPSTREAM_JWT_TOKEN_FILE": "", "SLIPSTREAM_JWT_SECRET_FILE": str(secret_file)}
    ws.config("pg.json5", name="pg", extra=f'dsn: "postgres://u:{SECRET}@db/x"')
    ws.config("bad.json5", raw=f'{{password: "{SECRET}", libpath: ')
    ws.library("fail", b"slipstream:on-load-fails")
    ws.config("fail.json5", name="fail", lib="fail", extra=f'token: "{SECRET}"')
    outputs = []
    for args in (("validate",), ("validate", "-o", "json"), ("plan",), ("plan", "-o", "json"),
                 ("apply",), ("apply", "-o", "json"), ("status",), ("status", "-o", "json"),
                 ("--debug", "apply"), ("--debug", "plan")):
        result = cli(*args, node=node, env=auth)
        outputs.append(result.out + result.err)
    written = [p.read_text(errors="replace") for p in ws.state.rglob("*")
               if p.is_file() and p.parent.name != "configs"]
    for text in outputs + written:
        for secret in (SECRET, node.token, secret_b64):
            assert secret not in text
    copies = list((ws.state / "configs").iterdir())
    assert copies and all(p.stat().st_mode & 0o077 == 0 for p in copies)
    assert (ws.state / "configs").stat().st_mode & 0o077 == 0
    assert json.loads(copies[0].read_text())["libpath"].startswith("/")
    assert LedgerStore(ws.state).load().entries


def test_escape_sequences_from_the_node_never_reach_the_terminal(cli, ws, node, kind):
    """A hostile node names a plugin with an escape sequence (it is unmanaged here)."""
    ws.library("evil")
    evil = ws.root / "evil.json5"
    evil.write_text('{libpath: "libs/libevil.so", name: "x\\u001b]0;pwned\\u0007y"}')
    node.load_by_hand(evil)
    assert any("\x1b" in n for n in node.names())
    for env in ({}, {"SLIPSTREAM_COLOR": "always"}):
        result = cli("status", node=node, env=env)
        assert "\x1b]0;" not in result.out and "x?]0;pwned?y" in result.out
    assert "\\u001b" in cli("status", "-o", "json", node=node).out  # JSON escapes it


def test_a_file_moved_while_the_node_reads_it_is_not_held_as_a_failed_replace(
        cli, ws, make_node):
    """The chaos soak found it: a config renamed between the reconciler's read and the
    node's made the node answer "Cannot open the plugin config file … NotFound", which
    blamed the plugin and held the replace for those bytes forever. The same bytes back
    at the same path must be replaced at the next pass."""
    import threading
    import time

    from reconciler.refnode import Faults

    node = make_node(faults=Faults(latency_ms=400))
    ws.config("pg.json5", name="pg")
    assert cli("apply", node=node).code == 0
    ws.config("pg.json5", name="pg", extra="batch_size: 200")  # a change: a replace
    path, away = ws.conf / "pg.json5", ws.root / "pg.json5.away"
    deletes = len([r for r in node.requests if r.method == "DELETE"])

    def move_while_the_load_is_in_flight() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the DELETE is logged; the POST now waits
            if len([r for r in node.requests if r.method == "DELETE"]) > deletes:
                os.replace(path, away)
                return
            time.sleep(0.005)

    mover = threading.Thread(target=move_while_the_load_is_in_flight)
    mover.start()
    first = cli("apply", node=node)
    mover.join()
    assert first.code == 3 and "Cannot open the plugin config file" in first.out + first.err
    assert "pg" in node.manager.names()  # rolled back: the previous config runs
    os.replace(away, path)  # the same bytes, back
    second = cli("apply", node=node)
    assert second.code == 0, second.out + second.err
    assert "replaced" in second.out
    entry = LedgerStore(ws.state).load().entries["pg"]
    assert entry.failed_replace is None


def test_a_broken_edit_met_by_a_node_restart_keeps_the_previous_config_running(
        ws, node, cli, kind):
    """The file was edited to a config that fails to load, and the node lost its run-time
    plugins before the next pass (a restart, or a crash between a replace's unload and
    its load). The next pass loads the new config, which fails: the previous config, kept
    when it was applied, is loaded again instead of leaving nothing, and the plugin is
    held as failed-replace until the file or library changes."""
    ws.config("pg.json5", name="pg")
    assert cli("apply", node=node).code == 0
    ws.library("pgbroken", b"slipstream:on-load-fails")
    ws.config("pg.json5", name="pg", lib="pgbroken")
    node.restart()
    assert "pg" not in node.names()
    result = cli("apply", node=node)
    assert result.code == 3  # did not converge
    assert "load failed" in result.out and "rolled back: the previous config runs again" \
        in result.out, result.out
    assert "pg" in node.names()
    assert node.loaded_from()[-1].startswith(str(ws.state / "configs")), node.loaded_from()
    entry = LedgerStore(ws.state).load().entries["pg"]
    assert entry.failed_replace is not None and "on_load" in entry.failed_replace.reason
    status = cli("status", "-o", "json", node=node).json
    assert [(p["name"], p["state"]) for p in status["plugins"] if p["name"] == "pg"] == [
        ("pg", "failed-replace")]
    # Held: the next pass does not try the broken config again.
    loads = node.calls("load") + node.calls("reload")
    again = cli("apply", node=node)
    assert again.code == 3 and "(failed-replace" in again.out  # held: not converged
    assert node.calls("load") + node.calls("reload") == loads
