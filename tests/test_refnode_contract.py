"""The reference node keeps snarkOS's contract (shared/node-api.md): the seed PR's curl
examples, the three prefixes, v2 JSON errors and the plain prefixes' flattened 500s."""

from __future__ import annotations

import base64
import json
import os
import time

import jwt
import pytest
import requests

from reconciler.refnode import NodeOptions, RefNode, StartupError, decode_secret
from reconciler.refnode.limits import RateLimiter
from reconciler.refnode.plugins import library_name
from tests.conftest import wait_for


def call(node: RefNode, method: str, path: str, token: str | None = "default", **kw):
    headers = kw.pop("headers", {})
    if token == "default":
        token = node.token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, node.url + path, headers=headers, timeout=5, **kw)


# -- the seed's curl examples, replayed ------------------------------------------------
def test_seed_curl_list_load_unload(node, ws):
    # curl -H "Authorization: Bearer $JWT" http://localhost:3030/mainnet/slipstream/plugins
    listed = call(node, "GET", "/mainnet/slipstream/plugins")
    assert listed.status_code == 200
    assert listed.text == '[\n  "startup"\n]'  # serde_json's pretty printer
    # curl -X POST -H "Content-Type: application/json" -d '{"config_file":"/path/to/plugin.json5"}'
    config = ws.config("postgres.json5", name="postgres")
    loaded = call(node, "POST", "/mainnet/slipstream/plugins",
                  headers={"Content-Type": "application/json"},
                  data=json.dumps({"config_file": str(config)}))
    assert (loaded.status_code, loaded.json()) == (200, {"loaded": "postgres"})
    # curl -X DELETE .../mainnet/slipstream/plugins/{plugin_name}
    unloaded = call(node, "DELETE", "/mainnet/slipstream/plugins/postgres")
    assert (unloaded.status_code, unloaded.json()) == (200, {"unloaded": True})
    assert call(node, "GET", "/mainnet/slipstream/plugins").json() == ["startup"]


@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet", "/v2/mainnet"])
def test_all_three_prefixes_serve_the_routes(node, ws, prefix):
    config = ws.config("metrics.json5")
    assert call(node, "POST", f"{prefix}/slipstream/plugins",
                json={"config_file": str(config)}).json() == {"loaded": "metrics"}
    assert "metrics" in call(node, "GET", f"{prefix}/slipstream/plugins").json()
    assert call(node, "DELETE", f"{prefix}/slipstream/plugins/metrics").status_code == 200


def test_effective_name_is_library_stem_without_lib(ws):
    assert library_name("/x/libpostgres.so") == "postgres"
    assert library_name("/x/libslipstream_postgres_example.so") == "slipstream_postgres_example"
    assert library_name("/x/metrics.dylib") == "metrics"


# -- v2 errors: real status codes, JSON bodies -----------------------------------------
def v2_error(response) -> tuple[int, str, str]:
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    return response.status_code, body["error_type"], " — ".join([body["message"],
                                                                   *body.get("chain", [])])


def test_v2_error_statuses(node, ws):
    base = "/v2/mainnet/slipstream/plugins"
    status, kind, text = v2_error(call(node, "POST", base, json={"config": "x"}))
    assert (status, kind, text) == (400, "bad_request", "Missing required field: config_file")
    status, kind, text = v2_error(call(node, "DELETE", base + "/ghost"))
    assert (status, kind, text) == (404, "not_found", "The plugin 'ghost' is not loaded")
    boot = node.options.slipstream_configs[0]
    status, kind, text = v2_error(call(node, "POST", base, json={"config_file": boot}))
    assert (status, kind) == (422, "unprocessable_entity")
    assert "The slipstream plugin 'startup' is already loaded" in text
    missing = ws.config("gone.json5", raw='{libpath: "../libs/libnothere.so"}')
    status, kind, text = v2_error(call(node, "POST", base, json={"config_file": str(missing)}))
    assert (status, kind) == (500, "internal_server_error")
    assert "Cannot load plugin shared library" in text


def test_same_libpath_is_already_loaded_under_the_existing_name(node, ws):
    ws.config("a.json5", name="alpha", lib="shared")
    b = ws.config("b.json5", name="beta", lib="shared")
    call(node, "POST", "/v2/mainnet/slipstream/plugins", json={"config_file": str(ws.conf /
                                                                                  "a.json5")})
    status, kind, text = v2_error(call(node, "POST", "/v2/mainnet/slipstream/plugins",
                                       json={"config_file": str(b)}))
    assert (status, kind) == (422, "unprocessable_entity")
    assert "'alpha' is already loaded" in text


@pytest.mark.parametrize("raw, reason", [
    ("{libpath: ", "The config file is not in a valid JSON/JSON5 format"),
    ('{name: "x"}', "Plugin library path is not specified in the config file"),
])
def test_node_checks_configs_in_its_order(node, ws, raw, reason):
    path = ws.config("bad.json5", raw=raw)
    _, _, text = v2_error(call(node, "POST", "/v2/mainnet/slipstream/plugins",
                               json={"config_file": str(path)}))
    assert reason in text


def test_unreadable_config_file(node, ws):
    _, _, text = v2_error(call(node, "POST", "/v2/mainnet/slipstream/plugins",
                               json={"config_file": str(ws.conf / "absent.json5")}))
    assert "Cannot open the plugin config file" in text


def test_body_errors_come_from_the_framework_before_the_handler(node):
    plain = call(node, "POST", "/v2/mainnet/slipstream/plugins", data="{}",
                 headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    broken = call(node, "POST", "/v2/mainnet/slipstream/plugins", data="{not json",
                  headers={"Content-Type": "application/json"})
    assert broken.status_code == 400


# -- the plain and v1 prefixes flatten every error to a 500 with text --------------------
@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet"])
def test_plain_prefixes_flatten_errors_to_500_text(node, prefix):
    base = f"{prefix}/slipstream/plugins"
    missing = call(node, "DELETE", base + "/ghost")
    assert missing.status_code == 500
    assert missing.text == "The plugin 'ghost' is not loaded"
    again = call(node, "POST", base, json={"config_file": node.options.slipstream_configs[0]})
    assert again.status_code == 500
    assert again.text == "Unable to load the plugin — The slipstream plugin 'startup' is " \
                         "already loaded"
    assert call(node, "GET", base, token="wrong").status_code == 500


# -- authentication ----------------------------------------------------------------------
def test_jwt_required_on_every_route(node):
    for method, path in (("GET", ""), ("POST", ""), ("DELETE", "/startup")):
        response = call(node, method, f"/v2/mainnet/slipstream/plugins{path}", token=None,
                        json={"config_file": "/x"})
        assert (response.status_code, response.content) == (401, b"")


def test_bad_signature_and_expired_tokens_are_refused(node):
    forged = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "another-secret-16",
                        algorithm="HS256")
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins", token=forged).status_code == 401
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        expired = jwt.encode({"sub": "a", "iat": 1, "exp": 2}, node.secret, algorithm="HS256")
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins", token=expired).status_code == 401


def test_token_file_and_claims(node):
    assert node.token_file.read_text() == node.token
    assert oct(node.token_file.stat().st_mode & 0o777) == "0o600"
    claims = jwt.decode(node.token, node.secret, algorithms=["HS256"])
    assert claims["sub"] == node.options.address
    assert claims["exp"] - claims["iat"] == 10 * 365 * 24 * 3600


def test_fixed_secret_and_timestamp(make_node):
    secret = base64.b64encode(os.urandom(16)).decode()
    node = make_node(jwt_secret=decode_secret(secret), jwt_timestamp=1_700_000_000)
    claims = jwt.decode(node.token, base64.b64decode(secret), algorithms=["HS256"])
    assert claims["iat"] == 1_700_000_000


@pytest.mark.parametrize("secret", ["c2hvcnQ=", "not base64!",
                                    base64.b64encode(b"x" * 32).decode()])
def test_secret_must_be_16_bytes_of_base64(secret):
    with pytest.raises(StartupError):
        decode_secret(secret)


def test_nojwt_turns_auth_off(make_node):
    node = make_node(nojwt=True)
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins", token=None).status_code == 200


# -- no plugin manager, restarts, the static-plugin node ---------------------------------
def test_no_plugin_manager_answers_503_everywhere(make_node):
    node = make_node(startup=[])
    for method, path in (("GET", ""), ("POST", ""), ("DELETE", "/x")):
        response = call(node, method, f"/v2/mainnet/slipstream/plugins{path}",
                        json={"config_file": "/x"})
        assert v2_error(response)[:2] == (503, "service_unavailable")
        assert "No Slipstream plugin manager is installed" in v2_error(response)[2]
    flat = call(node, "GET", "/mainnet/slipstream/plugins")
    assert (flat.status_code, flat.text) == (500, "No Slipstream plugin manager is installed")


def test_restart_forgets_run_time_plugins(node, ws):
    config = ws.config("postgres.json5", name="postgres")
    call(node, "POST", "/v2/mainnet/slipstream/plugins", json={"config_file": str(config)})
    old_token = node.token
    node.restart()
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins").json() == ["startup"]
    assert node.token != old_token  # no fixed --jwt-secret: a new secret, a new token file
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins", token=old_token).status_code \
        == 401


def test_static_plugin_node_refuses_post_and_delete(make_node):
    node = make_node(runtime_loading=False)
    assert call(node, "GET", "/v2/mainnet/slipstream/plugins").status_code == 200
    assert call(node, "POST", "/v2/mainnet/slipstream/plugins",
                json={"config_file": "/x"}).status_code == 405


def test_other_network_and_unknown_routes_are_404(node):
    assert call(node, "GET", "/v2/testnet/slipstream/plugins").status_code == 404
    assert call(node, "PUT", "/v2/mainnet/slipstream/plugins").status_code == 405


def test_startup_plugin_failure_stops_the_node(ws):
    bad = ws.config("bad.json5", raw='{libpath: "../libs/libmissing.so"}')
    with pytest.raises(StartupError, match="Cannot load plugin shared library"):
        RefNode(NodeOptions(port=0, slipstream_configs=[str(bad)])).start()


# -- rate limiting -----------------------------------------------------------------------
def test_rate_limit_burst_then_429_with_wait(make_node):
    node = make_node(rest_rps=5)
    codes = [call(node, "GET", "/v2/mainnet/slipstream/plugins").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    limited = call(node, "GET", "/v2/mainnet/slipstream/plugins")
    assert v2_error(limited)[:2] == (429, "too_many_requests")
    flat = call(node, "GET", "/mainnet/slipstream/plugins")
    assert flat.status_code == 500 and "Too Many Requests" in flat.text


def test_gcra_refills_at_the_configured_rate():
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    assert all(limiter.admit("a") == 0 for _ in range(10))
    assert limiter.admit("a") > 0
    assert limiter.admit("b") == 0  # per client
    now[0] += 0.1
    assert limiter.admit("a") == 0 and limiter.admit("a") > 0


def test_keep_alive_connections_are_reused(node):
    session = requests.Session()
    for _ in range(3):
        session.get(node.url + "/v2/mainnet/slipstream/plugins",
                    headers={"Authorization": f"Bearer {node.token}"}, timeout=5)
    assert node.open_connections == 1
    session.close()
    wait_for(lambda: node.open_connections == 0, message="the connection to close")


def test_the_node_command_restarts_on_sigusr1_and_stops_on_sigterm(ws):
    import re
    import signal
    import subprocess
    import sys

    from tests.conftest import SCRIPT

    boot = ws.config("boot.json5", name="boot")
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
    proc = subprocess.Popen([*command, "node", "--rest", "127.0.0.1:0", "--data-dir",
                             str(ws.node_data), "--slipstream-config", str(boot)],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"listening on (\S+) ", proc.stderr.readline()).group(1)
        assert proc.stderr.readline().startswith("Your one-time JWT token is ")
        token_file = next(ws.node_data.glob("jwt_secret_*.txt"))
        first = token_file.read_text()
        listed = requests.get(url + "/v2/mainnet/slipstream/plugins", timeout=5,
                              headers={"Authorization": f"Bearer {first}"})
        assert listed.json() == ["boot"]
        proc.send_signal(signal.SIGUSR1)
        assert "listening on" in proc.stderr.readline()
        wait_for(lambda: token_file.read_text() != first, message="a new token file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
