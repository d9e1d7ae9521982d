"""The reference node replays the upstream snarkOS/snarkVM behaviours (docs/refnode.md maps
each to its source) over raw HTTP, byte for byte where bytes matter: status lines, bodies,
content types."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import jwt
import pytest

from reconciler.refnode import Faults, NodeOptions, RefNode, StartupError, decode_secret
from reconciler.refnode.limits import RateLimiter
from reconciler.refnode.plugins import library_name
from reconciler.refnode.server import BODY_LIMIT
from tests.conftest import SCRIPT, wait_for

PLUGINS = "/v2/mainnet/slipstream/plugins"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def json(self) -> object:
        return json.loads(self.body)


def raw(node: RefNode, method: str, path: str, body: object = None,
        headers: dict[str, str] | None = None, token: str | None = "default",
        timeout: float = 10) -> Answer:
    """One request on its own connection, through http.client: nothing is normalized."""
    sent = dict(headers or {})
    if token == "default":
        token = node.token
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection(node.options.host, node.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        connection.close()


def error_body(message: str, error_type: str) -> bytes:
    """RestError's compact serde_json body, no `chain`."""
    return json.dumps({"message": message, "error_type": error_type}, separators=(",", ":"),
                      ensure_ascii=False).encode()


def assert_v2_error(answer: Answer, status: int, error_type: str, message: str) -> None:
    assert (answer.status, answer.content_type, answer.body) == \
        (status, "application/json", error_body(message, error_type))


def assert_v1_text(answer: Answer, text: str) -> None:
    """v1_error_middleware builds a bare Response: 500, the text, no content type."""
    assert (answer.status, answer.content_type, answer.body) == (500, None, text.encode())


def io_debug(path, code: int, kind: str) -> str:
    return f'"{path}", error: Os {{ code: {code}, kind: {kind}, message: ' \
           f'"{os.strerror(code)}" }}'


# -- the seed's curl examples, byte for byte --------------------------------------------
def test_seed_curl_list_load_unload(node, ws):
    listed = raw(node, "GET", "/mainnet/slipstream/plugins")
    assert (listed.status, listed.content_type, listed.body) == \
        (200, "application/json", b'[\n  "startup"\n]')  # ErasedJson::pretty
    config = ws.config("postgres.json5", name="postgres")
    loaded = raw(node, "POST", "/mainnet/slipstream/plugins", {"config_file": str(config)})
    assert (loaded.status, loaded.content_type, loaded.body) == \
        (200, "application/json", b'{\n  "loaded": "postgres"\n}')
    unloaded = raw(node, "DELETE", "/mainnet/slipstream/plugins/postgres")
    assert (unloaded.status, unloaded.body) == (200, b'{\n  "unloaded": true\n}')
    assert raw(node, "GET", PLUGINS).json == ["startup"]


@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet", "/v2/mainnet"])
def test_all_three_prefixes_serve_the_routes(node, ws, prefix):
    config = ws.config("metrics.json5")
    assert raw(node, "POST", f"{prefix}/slipstream/plugins",
               {"config_file": str(config)}).json == {"loaded": "metrics"}
    assert "metrics" in raw(node, "GET", f"{prefix}/slipstream/plugins").json
    assert raw(node, "DELETE", f"{prefix}/slipstream/plugins/metrics").status == 200


def test_names_are_percent_decoded(node, ws):
    raw(node, "POST", PLUGINS, {"config_file": str(ws.config("a.json5", name="my plugin é"))})
    assert raw(node, "DELETE", PLUGINS + "/my%20plugin%20%C3%A9").status == 200
    invalid = raw(node, "DELETE", PLUGINS + "/%FF")  # snarkOS's own Path extractor
    assert (invalid.status, invalid.json["error_type"], invalid.json["message"]) == \
        (400, "bad_request",
         f'Invalid argument "name" in path "{PLUGINS}/%FF": invalid UTF-8 in parameter')


def test_effective_name_is_library_stem_without_lib():
    assert library_name("/x/libpostgres.so") == "postgres"
    assert library_name("/x/libslipstream_postgres_example.so") == "slipstream_postgres_example"
    assert library_name("/x/metrics.dylib") == "metrics"


def test_block_height_route_is_open_and_pretty(node):
    answer = raw(node, "GET", "/v1/mainnet/block/height/latest", token=None)
    assert (answer.status, answer.content_type) == (200, "application/json")
    assert re.fullmatch(rb"\d+", answer.body)


# -- the outer router: no route, no layer -------------------------------------------------
@pytest.mark.parametrize("path", [
    "/mainnet/nothing", "/v1/mainnet/slipstream/plugins/", "/v2/testnet/slipstream/plugins",
    "/v2/mainnet/slipstream/plugins/a/b", "/v3/mainnet/slipstream/plugins", "/",
    "/mainnet//slipstream/plugins"])
def test_unknown_paths_are_404_with_an_empty_body_on_every_prefix(node, path):
    for method in ("GET", "POST", "DELETE"):
        answer = raw(node, method, path, token="wrong")
        assert (answer.status, answer.content_type, answer.body) == (404, None, b"")


def test_unknown_paths_do_not_spend_the_rate_limit(make_node):
    node = make_node(rest_rps=2)
    for _ in range(6):
        assert raw(node, "GET", "/v2/mainnet/nothing").status == 404
    assert raw(node, "GET", PLUGINS).status == 200


# -- layers on /v2: their own plain answers -----------------------------------------------
def test_405_comes_before_authentication(node):
    answer = raw(node, "PUT", PLUGINS, token=None)
    assert (answer.status, answer.body, answer.headers.get("allow")) == \
        (405, b"", "GET,HEAD,POST")
    assert raw(node, "GET", PLUGINS + "/startup", token=None).headers["allow"] == "DELETE"


def test_jwt_required_on_every_plugin_route(node):
    for method, path in (("GET", ""), ("POST", ""), ("DELETE", "/startup")):
        answer = raw(node, method, PLUGINS + path, {"config_file": "/x"}, token=None)
        assert (answer.status, answer.content_type, answer.body) == (401, None, b"")


def test_tokens_as_jsonwebtoken_validates_them(node):
    now = int(time.time())

    def token(claims: dict, key: bytes = node.secret) -> str:
        with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
            return jwt.encode(claims, key, algorithm="HS256")

    good = {"sub": "x", "iat": now}
    assert raw(node, "GET", PLUGINS, token=token({**good, "exp": now - 30})).status == 200  # leeway
    assert raw(node, "GET", PLUGINS, token=token({**good, "exp": now - 120})).status == 401
    assert raw(node, "GET", PLUGINS, token=token({"iat": now, "exp": now + 60})).status == 401
    assert raw(node, "GET", PLUGINS, token=token({**good, "exp": now + 60},
                                                 b"another-secret-16")).status == 401
    assert raw(node, "GET", PLUGINS, headers={"Authorization": f"bearer {node.token}"},
               token=None).status == 200
    assert raw(node, "GET", PLUGINS, headers={"Authorization": node.token},
               token=None).status == 401


def test_rate_limit_is_plain_text_429_on_v2(make_node):
    node = make_node(rest_rps=3)
    answers = [raw(node, "GET", PLUGINS) for _ in range(5)]
    assert [a.status for a in answers[:3]] == [200] * 3
    limited = next(a for a in answers if a.status == 429)
    assert (limited.content_type, limited.body) == (None, b"Too Many Requests! Wait for 0s")


def test_one_limiter_per_prefix_shared_with_the_other_routes(make_node):
    node = make_node(rest_rps=3)
    for _ in range(3):  # another client on the same host reads the chain tip
        assert raw(node, "GET", "/v2/mainnet/block/height/latest").status == 200
    assert raw(node, "GET", PLUGINS).status == 429
    assert raw(node, "GET", "/v1/mainnet/slipstream/plugins").status == 200  # its own budget
    assert raw(node, "GET", "/mainnet/slipstream/plugins").status == 200


# -- layers on / and /v1: "Failed to convert error" ---------------------------------------
@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet"])
def test_v1_turns_every_layer_answer_into_failed_to_convert_error(make_node, prefix):
    node = make_node(rest_rps=2)
    base = f"{prefix}/slipstream/plugins"
    assert_v1_text(raw(node, "GET", base, token=None), "Failed to convert error")  # 401
    assert_v1_text(raw(node, "PUT", base), "Failed to convert error")  # 405
    assert_v1_text(raw(node, "GET", base), "Failed to convert error")  # 429


@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet"])
def test_v1_layer_errors_from_the_axum_extractor(node, prefix):
    base = f"{prefix}/slipstream/plugins"
    assert_v1_text(raw(node, "POST", base, b"{}", {"Content-Type": "text/plain"}),
                   "Failed to convert error")  # 415
    assert_v1_text(raw(node, "POST", base, b"{nope", {"Content-Type": "application/json"}),
                   "Failed to convert error")  # 400 from axum, not a RestError
    assert_v1_text(raw(node, "POST", base, {"config": "x"}),
                   "Missing required field: config_file")  # the handler's own 400


def test_the_http_code_suffix_variant(make_node):
    node = make_node(v1_http_code_suffix=True)
    assert_v1_text(raw(node, "GET", "/v1/mainnet/slipstream/plugins", token=None),
                   "Failed to convert error (HTTP 401)")
    assert_v1_text(raw(node, "PUT", "/mainnet/slipstream/plugins"),
                   "Failed to convert error (HTTP 405)")
    assert_v1_text(raw(node, "DELETE", "/mainnet/slipstream/plugins/ghost"),
                   "The plugin 'ghost' is not loaded")


@pytest.mark.parametrize("prefix", ["/mainnet", "/v1/mainnet"])
def test_v1_flattens_the_nodes_own_errors_to_their_message(node, prefix):
    base = f"{prefix}/slipstream/plugins"
    assert_v1_text(raw(node, "DELETE", base + "/ghost"), "The plugin 'ghost' is not loaded")
    assert_v1_text(raw(node, "POST", base, {"config_file": node.options.slipstream_configs[0]}),
                   "The slipstream plugin 'startup' is already loaded")


# -- POST: extractor, then config_file, then the manager ----------------------------------
def test_post_checks_in_the_nodes_order(make_node):
    node = make_node(startup=[])  # no plugin manager: 503 comes last
    answer = raw(node, "POST", PLUGINS, b'{"config_file": "/x"}', {"Content-Type": "text/plain"})
    assert (answer.status, answer.content_type, answer.body) == \
        (415, TEXT, b"Expected request with `Content-Type: application/json`")
    answer = raw(node, "POST", PLUGINS, b"{nope", {"Content-Type": "application/json"})
    assert (answer.status, answer.content_type) == (400, TEXT)
    assert answer.body.startswith(b"Failed to parse the request body as JSON: ")
    assert_v2_error(raw(node, "POST", PLUGINS, {"config_file": 3}), 400, "bad_request",
                    "Missing required field: config_file")
    assert_v2_error(raw(node, "POST", PLUGINS, {"config_file": "/x"}), 503,
                    "service_unavailable", "No Slipstream plugin manager is installed")


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON",
    "application/vnd.api+json", "application/merge-patch+json"])
def test_json_content_types_axum_accepts(make_node, content_type):
    node = make_node(startup=[])
    answer = raw(node, "POST", PLUGINS, b'{"config_file": "/x"}', {"Content-Type": content_type})
    assert answer.status == 503


@pytest.mark.parametrize("content_type", ["text/json", "application/jsonx", "json", ""])
def test_other_content_types_are_415(make_node, content_type):
    node = make_node(startup=[])
    answer = raw(node, "POST", PLUGINS, b'{"config_file": "/x"}', {"Content-Type": content_type})
    assert answer.status == 415


def test_serde_json_refuses_what_python_json_accepts(make_node):
    node = make_node(startup=[])
    for body in (b'{"config_file": NaN}', b'{"config_file": "\\ud800"}', b"\xff{}", b""):
        answer = raw(node, "POST", PLUGINS, body, {"Content-Type": "application/json"})
        assert (answer.status, answer.content_type) == (400, TEXT), body


def test_body_limit_is_checked_after_authentication(node):
    big = b'{"config_file": "/x", "pad": "' + b"a" * BODY_LIMIT + b'"}'
    assert raw(node, "POST", PLUGINS, big, {"Content-Type": "application/json"},
               token=None).status == 401
    answer = raw(node, "POST", PLUGINS, big, {"Content-Type": "application/json"})
    assert (answer.status, answer.content_type, answer.body) == \
        (413, TEXT, b"Failed to buffer the request body: length limit exceeded")
    assert raw(node, "POST", PLUGINS, big, {"Content-Type": "text/plain"}).status == 415
    head = b'{"config_file": "/nowhere.json5", "pad": "'
    exact = head + b"a" * (BODY_LIMIT - len(head) - 2) + b'"}'
    assert len(exact) == BODY_LIMIT
    assert raw(node, "POST", PLUGINS, exact, {"Content-Type": "application/json"}).status == 500


# -- snarkVM's load steps, texts and order ------------------------------------------------
def load(node: RefNode, config) -> Answer:
    return raw(node, "POST", PLUGINS, {"config_file": str(config)})


def test_step_open(node, ws):
    path = ws.conf / "absent.json5"
    assert_v2_error(load(node, path), 500, "internal_server_error",
                    "Cannot open the plugin config file: Failed to open the plugin config file "
                    + io_debug(path, 2, "NotFound"))


def test_step_read_a_directory_opens_then_fails_to_read(node, ws):
    folder = ws.conf / "folder.json5"
    folder.mkdir()
    assert_v2_error(load(node, folder), 500, "internal_server_error",
                    "Cannot read the plugin config file: Failed to read the plugin config file "
                    + io_debug(folder, 21, "IsADirectory"))


def test_step_read_non_utf8(node, ws):
    path = ws.config("latin1.json5", raw="x")
    path.write_bytes(b'{libpath: "caf\xe9.so"}')
    assert_v2_error(load(node, path), 500, "internal_server_error",
                    f'Cannot read the plugin config file: Failed to read the plugin config file '
                    f'"{path}", error: Error {{ kind: InvalidData, message: "stream did not '
                    f'contain valid UTF-8" }}')


def test_step_parse(node, ws):
    path = ws.config("broken.json5", raw="{libpath: ")
    answer = load(node, path)
    assert answer.status == 500
    assert answer.json["message"].startswith(
        f'The config file is not in a valid JSON/JSON5 format: The config file "{path}" is not '
        f"in a valid Json5 format, error: Message {{ msg: ")
    assert "chain" not in answer.json


@pytest.mark.parametrize("raw_config", ['{name: "x"}', "{libpath: 3}", '["libpath"]', "null"])
def test_step_libpath_must_be_a_string(node, ws, raw_config):
    assert_v2_error(load(node, ws.config("bad.json5", raw=raw_config)), 500,
                    "internal_server_error",
                    "Plugin library path is not specified in the config file")


def test_step_duplicate_libpath_compares_components(node, ws):
    ws.library("shared")
    first = ws.config("a.json5", raw='{libpath: "../libs/libshared.so", name: "alpha"}')
    assert load(node, first).status == 200
    for index, libpath in enumerate(("./../libs/libshared.so", "../libs//libshared.so/",
                                     str(ws.conf / "../libs/libshared.so"))):
        other = ws.config(f"b{index}.json5", raw=f'{{libpath: "{libpath}", name: "beta"}}')
        assert_v2_error(load(node, other), 422, "unprocessable_entity",
                        "The slipstream plugin 'alpha' is already loaded")
    # `..` is kept as it is: the same file by another spelling is another library to the node.
    spelled = ws.config("c.json5", raw=f'{{libpath: "../../{ws.root.name}/libs/libshared.so", '
                                       f'name: "gamma"}}')
    assert load(node, spelled).json == {"loaded": "gamma"}


def test_step_invalid_plugin_path_comes_after_the_reads(ws):
    folder = os.fsencode(str(ws.conf)) + b"/caf\xe9"
    os.mkdir(folder)
    with open(folder + b"/p.json5", "wb") as handle:
        handle.write(b'{libpath: "' + os.fsencode(str(ws.libs)) + b'/libp.so"}')
    ws.library("p")
    with pytest.raises(StartupError, match="Invalid plugin path"):
        RefNode(NodeOptions(port=0, slipstream_configs=[os.fsdecode(folder + b"/p.json5")])
                ).start()


def test_step_dlopen_shows_the_joined_unnormalized_path(node, ws):
    path = ws.config("gone.json5", raw='{libpath: "../libs/./libnothere.so"}')
    assert_v2_error(load(node, path), 500, "internal_server_error",
                    f"Cannot load plugin shared library (error: {ws.conf}/../libs/./libnothere.so"
                    f": cannot open shared object file: No such file or directory)")


def test_step_create_plugin_and_null_constructor(node, ws):
    ws.library("nosym", b"slipstream:no-create-plugin")
    ws.library("null", b"slipstream:null-constructor")
    assert_v2_error(load(node, ws.config("nosym.json5")), 500, "internal_server_error",
                    f"Cannot load plugin shared library (error: {ws.conf}/../libs/libnosym.so: "
                    f"undefined symbol: _create_plugin)")
    assert_v2_error(load(node, ws.config("null.json5")), 500, "internal_server_error",
                    "Cannot load plugin shared library (error: plugin constructor returned a "
                    "null pointer)")


def test_step_same_effective_name(node, ws):
    assert_v2_error(load(node, ws.config("other.json5", name="startup", lib="other")), 422,
                    "unprocessable_entity", "The slipstream plugin 'startup' is already loaded")


def test_step_on_load(node, ws):
    ws.library("bad", b"slipstream:on-load-fails")
    assert_v2_error(load(node, ws.config("bad.json5")), 500, "internal_server_error",
                    "The SlipstreamPlugin on_load method failed (error: simulated on_load "
                    "failure)")
    assert raw(node, "GET", PLUGINS).json == ["startup"]


def test_delete_and_no_manager_errors(node, make_node):
    assert_v2_error(raw(node, "DELETE", PLUGINS + "/ghost"), 404, "not_found",
                    "The plugin 'ghost' is not loaded")
    bare = make_node(startup=[])
    for method, path in (("GET", ""), ("DELETE", "/x")):
        assert_v2_error(raw(bare, method, PLUGINS + path), 503, "service_unavailable",
                        "No Slipstream plugin manager is installed")
    assert_v1_text(raw(bare, "GET", "/mainnet/slipstream/plugins"),
                   "No Slipstream plugin manager is installed")


# -- a slow on_load: the write lock, no server timeout -------------------------------------
def test_a_slow_load_holds_the_lock_and_outlives_its_client(make_node, ws):
    node = make_node(faults=Faults(load_delay=1.5))
    config = ws.config("slow.json5")
    with pytest.raises(TimeoutError):
        raw(node, "POST", PLUGINS, {"config_file": str(config)}, timeout=0.3)
    # The list waits for the write lock, so it answers only once the load is done.
    assert raw(node, "GET", PLUGINS).json == ["startup", "slow"]
    assert [r.status for r in node.requests if r.method == "POST"] == [200]


# -- kinds of node -------------------------------------------------------------------------
def test_a_build_without_the_feature(make_node):
    node = make_node(startup=[], slipstream=False)
    for prefix in ("/mainnet", "/v1/mainnet", "/v2/mainnet"):
        for method, path in (("GET", ""), ("POST", ""), ("DELETE", "/x")):
            answer = raw(node, method, f"{prefix}/slipstream/plugins{path}", {"config_file": "/x"})
            assert (answer.status, answer.content_type, answer.body) == (404, None, b"")
        assert raw(node, "GET", f"{prefix}/block/height/latest").status == 200
    with pytest.raises(StartupError, match="unexpected argument '--slipstream-config'"):
        make_node(slipstream=False)


def test_static_plugin_node_refuses_post_and_delete(make_node):
    node = make_node(runtime_loading=False)
    assert raw(node, "GET", PLUGINS).status == 200
    assert raw(node, "POST", PLUGINS, {"config_file": "/x"}).status == 405
    assert raw(node, "DELETE", PLUGINS + "/startup").status == 405


def test_an_older_node_without_v2(make_node):
    node = make_node(api_v2=False)
    assert (raw(node, "GET", PLUGINS).status, raw(node, "GET", PLUGINS).body) == (404, b"")
    assert raw(node, "GET", "/v1/mainnet/slipstream/plugins").status == 200


def test_root_reads_every_path_under_the_container_root(make_node, tmp_path):
    root = tmp_path / "container"
    (root / "etc/plugins").mkdir(parents=True)
    (root / "opt/libs").mkdir(parents=True)
    (root / "opt/libs/libboot.so").write_bytes(b"lib")
    (root / "opt/libs/libpg.so").write_bytes(b"lib")
    (root / "etc/plugins/boot.json5").write_text('{libpath: "../../opt/libs/libboot.so"}')
    (root / "etc/plugins/pg.json5").write_text('{libpath: "/opt/libs/libpg.so"}')
    node = make_node(startup=["/etc/plugins/boot.json5"], root=str(root))
    assert raw(node, "POST", PLUGINS, {"config_file": "/etc/plugins/pg.json5"}).json == \
        {"loaded": "pg"}
    assert raw(node, "GET", PLUGINS).json == ["boot", "pg"]
    host_side = str(root / "etc/plugins/pg.json5")
    assert raw(node, "POST", PLUGINS, {"config_file": host_side}).status == 500  # not in view
    assert_v2_error(raw(node, "POST", PLUGINS, {"config_file": "/etc/plugins/x.json5"}), 500,
                    "internal_server_error",
                    "Cannot open the plugin config file: Failed to open the plugin config file "
                    + io_debug("/etc/plugins/x.json5", 2, "NotFound"))


# -- start-up, token, restarts ---------------------------------------------------------------
def test_token_file_mode_follows_the_umask_and_is_kept_on_rewrite(make_node, ws):
    old = os.umask(0o027)
    try:
        node = make_node()
    finally:
        os.umask(old)
    assert node.token_file.read_text() == node.token
    assert node.token_file.stat().st_mode & 0o777 == 0o640
    node.token_file.chmod(0o600)
    node.restart()
    assert node.token_file.read_text() == node.token
    assert node.token_file.stat().st_mode & 0o777 == 0o600


def test_token_claims(node):
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
    assert raw(node, "GET", PLUGINS, token=None).status == 200


def test_restart_forgets_run_time_plugins(node, ws):
    raw(node, "POST", PLUGINS, {"config_file": str(ws.config("postgres.json5", name="pg"))})
    old_token = node.token
    node.restart()
    assert raw(node, "GET", PLUGINS).json == ["startup"]
    assert node.token != old_token  # no fixed --jwt-secret: a new secret, a new token file
    assert raw(node, "GET", PLUGINS, token=old_token).status == 401


def test_startup_plugin_failure_stops_the_node(ws):
    bad = ws.config("bad.json5", raw='{libpath: "../libs/libmissing.so"}')
    with pytest.raises(StartupError, match="Cannot load plugin shared library"):
        RefNode(NodeOptions(port=0, slipstream_configs=[str(bad)])).start()


# -- the limiter and the connection ----------------------------------------------------------
def test_gcra_refills_at_the_configured_rate():
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    assert all(limiter.admit("a") == 0 for _ in range(10))
    assert limiter.admit("a") > 0
    assert limiter.admit("b") == 0  # per client
    now[0] += 0.1
    assert limiter.admit("a") == 0 and limiter.admit("a") > 0


def test_keep_alive_connections_are_reused(node):
    connection = http.client.HTTPConnection(node.options.host, node.port, timeout=5)
    for _ in range(3):
        connection.request("GET", PLUGINS, headers={"Authorization": f"Bearer {node.token}"})
        assert connection.getresponse().read() == b'[\n  "startup"\n]'
    assert node.open_connections == 1
    connection.close()
    wait_for(lambda: node.open_connections == 0, message="the connection to close")


def test_concurrent_lists_run_while_no_load_holds_the_lock(node):
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(raw(node, "GET", PLUGINS).status))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8


# -- the node command ----------------------------------------------------------------------
def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
    proc = subprocess.Popen([*command, "node", "--rest", "127.0.0.1:0", *args],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    return proc, line


def test_the_node_command_restarts_on_sigusr1_and_stops_on_sigterm(ws):
    import requests

    boot = ws.config("boot.json5", name="boot")
    proc, line = _start(["--data-dir", str(ws.node_data), "--slipstream-config", str(boot)])
    try:
        url = re.search(r"listening on (\S+) ", line).group(1)
        assert proc.stderr.readline().startswith("Your one-time JWT token is ")
        token_file = next(ws.node_data.glob("jwt_secret_*.txt"))
        first = token_file.read_text()
        listed = requests.get(url + PLUGINS, timeout=5,
                              headers={"Authorization": f"Bearer {first}"})
        assert listed.json() == ["boot"]
        proc.send_signal(signal.SIGUSR1)
        assert "listening on" in proc.stderr.readline()
        wait_for(lambda: token_file.read_text() not in ("", first), message="a new token file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_node_command_without_the_feature(ws):
    import requests

    proc, line = _start(["--no-slipstream", "--nojwt"])
    try:
        assert "built without the Slipstream plugin API" in line
        url = re.search(r"listening on (\S+) ", line).group(1)
        answer = requests.get(url + PLUGINS, timeout=5)
        assert (answer.status_code, answer.content) == (404, b"")
        assert requests.get(url + "/mainnet/block/height/latest", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.mark.parametrize("raw", [
    '{libpath: "./libx.so", n: +Infinity}',  # the json5 crate's grammar has no sign here
    '{libpath: "./libx.so", n: 0x100000000}',  # hex is read as u32
    '{libpath: "./libx.so", n: 9223372036854775808}',  # integers as i64, never u64
    '{libpath: "./libx.so", n: 1e400}',  # too large for f64
    '{libpath: "./libx.so\u2028"}',  # a raw line separator inside a string
])
def test_the_node_refuses_what_its_json5_crate_refuses(ws, raw):
    """The reference node parses configs as the node does (reconciler.configparse), where
    the JSON5 spec, and the json5 package, would accept these."""
    from reconciler.refnode.plugins import PluginManager, PluginManagerError

    ws.library("x")
    path = ws.conf / "x.json5"
    path.write_text(raw.replace("./libx.so", "../libs/libx.so"), encoding="utf-8")
    with pytest.raises(PluginManagerError, match="not in a valid JSON/JSON5 format"):
        PluginManager().load(str(path))


def test_the_node_reads_a_comment_ended_by_a_carriage_return_as_its_end(ws):
    ws.library("a")
    ws.library("b")
    path = ws.conf / "cr.json5"
    path.write_bytes(b'{libpath: "../libs/liba.so", // old\r libpath: "../libs/libb.so"}')
    from reconciler.refnode.plugins import PluginManager

    manager = PluginManager()
    assert manager.load(str(path)) == "b"
