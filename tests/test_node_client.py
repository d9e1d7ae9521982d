"""The node client against real reference nodes: every trap of node-api.md."""

from __future__ import annotations

import socket

import pytest

from reconciler.auth import StaticToken, TokenFile, TokenSource
from reconciler.errors import (
    AlreadyLoaded,
    NodeUnreachable,
    NoPluginManager,
    NotLoaded,
    Rejected,
    RuntimeLoadUnsupported,
    Unauthorized,
)
from reconciler.pacing import Pacer
from reconciler.snarkosclient import SnarkosClient as NodeClient


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


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_pacing_halves_on_429_and_wins_the_rate_back_slowly():
    t = FakeTime()
    pacer = Pacer(10, clock=t.clock, sleep=t.sleep)
    pacer.slow_down()
    assert pacer.rps == 5
    pacer.slow_down()
    assert pacer.rps == 2.5
    for _ in range(3):
        pacer.answered()
    assert 2.5 < pacer.rps < 4  # a fiftieth of the configured rate per answer
    for _ in range(60):
        pacer.answered()
    assert pacer.rps == 10


def test_a_slowed_pacer_sends_no_burst():
    t = FakeTime()
    pacer = Pacer(10, clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        pacer.wait()
    assert t.now < 0.2  # the configured burst goes out at once
    pacer.slow_down()
    start = t.now
    for _ in range(5):
        pacer.wait()
    assert t.now - start >= 4 * 1.02 / 5  # evenly spaced at the halved rate


def test_an_unpaced_client_paces_itself_after_a_429_then_stops_again():
    t = FakeTime()
    pacer = Pacer(0, clock=t.clock, sleep=t.sleep)
    pacer.slow_down()
    assert pacer.rps == 5 and pacer.interval > 0
    for _ in range(50):
        pacer.answered()
    assert pacer.interval == 0


def test_a_second_client_on_the_same_prefix_slows_us_down_but_nothing_fails(make_node, ws):
    """The node's budget is per client IP and prefix: a monitoring script on this host eats
    it too. Every load still succeeds; the 429s are absorbed by a slower pace."""
    import threading

    node = make_node(rest_rps=10)
    ours = client(node, max_rps=10)
    stop = threading.Event()

    def monitor() -> None:
        other = client(node, max_rps=6)
        while not stop.is_set():
            other.list()

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    try:
        configs = [ws.config(f"p{i}.json5", name=f"p{i}") for i in range(25)]
        names = [ours.load(str(c)) for c in configs]
    finally:
        stop.set()
        thread.join(10)
    assert names == [f"p{i}" for i in range(25)]
    assert any(r.status == 429 for r in node.requests)  # the contention was real
