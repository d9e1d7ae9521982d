"""The node client against real reference nodes: every trap of node-api.md."""

from __future__ import annotations

import socket

import pytest

from reconciler.auth import StaticToken, TokenFile, TokenSource
from reconciler.node import (
    AlreadyLoaded,
    NodeClient,
    NodeUnreachable,
    NoPluginManager,
    NotLoaded,
    Rejected,
    RuntimeLoadUnsupported,
    Unauthorized,
)


def client(node, api="auto", auth=None, max_rps=0, **kw) -> NodeClient:
    return NodeClient(node.url, "mainnet", auth or TokenFile(node.token_file), api=api,
                      max_rps=max_rps, **kw)


def test_auto_speaks_v2_to_a_current_node(node):
    c = client(node)
    assert c.list() == ["startup"]
    assert c.prefix == "/v2/mainnet"


def test_auto_falls_back_to_the_plain_prefix_on_an_older_node(make_node):
    node = make_node(api_v2=False)
    c = client(node)
    assert c.list() == ["startup"]
    assert c.prefix == "/mainnet"


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_errors_are_typed_on_both_prefixes(node, ws, api):
    c = client(node, api=api)
    with pytest.raises(NotLoaded):
        c.unload("ghost")
    with pytest.raises(AlreadyLoaded) as caught:
        c.load(node.options.slipstream_configs[0])
    assert caught.value.name == "startup"
    broken = ws.config("b.json5", raw='{libpath: "../libs/libmissing.so"}')
    with pytest.raises(Rejected, match="Cannot load plugin shared library"):
        c.load(str(broken))


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_no_plugin_manager_says_what_to_do(make_node, api):
    node = make_node(startup=[])
    with pytest.raises(NoPluginManager, match="start snarkOS with at least one "
                                              "--slipstream-config"):
        client(node, api=api).list()


def test_a_node_that_cannot_load_at_run_time(make_node, ws):
    node = make_node(runtime_loading=False)
    c = client(node)
    assert c.list() == ["startup"]
    with pytest.raises(RuntimeLoadUnsupported, match="cannot be loaded or unloaded at run time"):
        c.load(str(ws.config("a.json5")))


def test_rate_limits_are_waited_out_not_failed(make_node):
    node = make_node(rest_rps=3)
    c = client(node, max_rps=0)  # no pacing: every 429 must be absorbed
    for _ in range(8):
        assert c.list() == ["startup"]
    assert any(r.status == 429 for r in node.requests)


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_pacing_stays_under_the_node_limit(make_node, api):
    node = make_node(rest_rps=4)
    c = client(node, api=api, max_rps=4)
    for _ in range(10):
        c.list()
    assert [r.status for r in node.requests] == [200] * 10


def test_a_token_file_rewritten_by_a_restart_is_reread_after_401(node):
    c = client(node)
    c.list()
    node.restart()  # new random secret, new token file
    assert c.list() == ["startup"]
    assert [r.status for r in node.requests][-2:] == [401, 200]


def test_a_wrong_token_is_unauthorized_with_the_option_to_check(node):
    with pytest.raises(Unauthorized, match="--jwt-token-file"):
        client(node, auth=StaticToken("not.a.token")).list()
    with pytest.raises(Unauthorized):
        client(node, auth=TokenSource()).list()


def test_an_unreachable_node_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = NodeClient(f"http://127.0.0.1:{port}", "mainnet", TokenSource(), max_rps=0)
    with pytest.raises(NodeUnreachable, match=f"http://127.0.0.1:{port}.*connection refused"):
        c.list()


@pytest.mark.parametrize("name", ["with space", "a/b", "100%", "ünïcødé", "x" * 500])
def test_awkward_names_round_trip_through_delete(node, ws, name):
    c = client(node)
    config = ws.config("odd.json5", name=name, lib="odd")
    assert c.load(str(config)) == name
    assert name in c.list()
    c.unload(name)
    assert name not in c.list()
