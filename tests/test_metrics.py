"""Prometheus metrics as Prometheus reads them: a real scrape of a running daemon, checked
by `promtool check metrics` (Prometheus's own linter), over IPv6 too; and every request to
the node counted, the ones that never got an answer (timeout, refused) as status="0"."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest
import requests

from reconciler import __version__
from reconciler.auth import TokenFile
from reconciler.errors import NodeUnreachable, SettingsError
from reconciler.metrics import Metrics, MetricsServer
from reconciler.snarkosclient import SnarkosClient as NodeClient
from tests.conftest import wait_for

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing; install it with: apt-get install -y "
                             "prometheus (.ci/run installs only its promtool binary)")


def _silent_listener() -> socket.socket:
    """Accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _counted(url: str, timeout: float = 10.0) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    client = NodeClient(url, "mainnet", _NoAuth(), api="v2",
                        max_rps=0, timeout=timeout)
    client.on_response = lambda method, status: seen.append((method, status))
    with pytest.raises(NodeUnreachable):
        client.list()
    return seen


class _NoAuth:
    description = "no credentials"

    def token(self) -> None:
        return None

    def refresh(self) -> bool:
        return False


def test_a_timeout_and_a_refused_connection_are_counted_as_status_0() -> None:
    listener = _silent_listener()
    try:
        assert _counted(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3) \
            == [("GET", 0)]
    finally:
        listener.close()
    assert _counted(f"http://127.0.0.1:{_closed_port()}") == [("GET", 0)]


def test_an_answer_is_counted_with_its_status(node) -> None:
    seen: list[tuple[str, int]] = []
    client = NodeClient(node.url, "mainnet", TokenFile(node.token_file), api="v2", max_rps=0)
    client.on_response = lambda method, status: seen.append((method, status))
    client.list()
    assert seen == [("GET", 200)]


def _scrape(base: str, pattern: str) -> str:
    return wait_for(lambda: (t := requests.get(base + "/metrics", timeout=5).text)
                    and re.search(pattern, t, re.M) and t, message=pattern)


def _promtool(text: str) -> None:
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    # Exit 0 and not one lint remark (promtool prints them and still exits 0 for some).
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), \
        done.stdout + done.stderr


@needs_promtool
def test_a_real_scrape_over_ipv6_passes_promtool(ws, node, daemon, kind) -> None:
    ws.config("a.json5", name="a")
    d = daemon(node, env={"SLIPSTREAM_METRICS_ADDRESS": "[::1]:0"})
    base = d.metrics_url()
    assert base.startswith("http://[::1]:"), base
    assert requests.get(base + "/healthz", timeout=5).status_code == 200
    text = _scrape(base, r'^slipstream_reconciler_plugins\{state="in-sync"\} 1\.0')
    assert 'slipstream_reconciler_build_info{python_version="' in text
    assert f'version="{__version__}"}} 1.0' in text
    load = "POST" if kind == "snarkos" else "loadPlugin"  # the node's own word for a load
    for series in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_open_fds", "python_info",
                   f'slipstream_reconciler_http_requests_total{{method="{load}",status="200"}}'):
        assert series in text, series
    _promtool(text)


@needs_promtool
def test_an_unreachable_node_is_counted_and_the_scrape_stays_clean(ws, daemon) -> None:
    ws.config("a.json5", name="a")
    (ws.node_data / "token.txt").write_text("a-token-the-silent-node-never-checks\n")
    listener = _silent_listener()
    try:
        d = daemon(None, node_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
                   env={"SLIPSTREAM_TIMEOUT": "0.3"})
        text = _scrape(d.metrics_url(),
                       r'^slipstream_reconciler_http_requests_total\{method="GET",status="0"\} '
                       r"[1-9]")
        assert "slipstream_reconciler_node_up 0.0" in text, d.log
        _promtool(text)
    finally:
        listener.close()


def test_metrics_address_forms() -> None:
    metrics = Metrics()
    for address, shown in (("[::1]:0", "[::1]:"), ("127.0.0.1:0", "127.0.0.1:"),
                           (":0", "127.0.0.1:")):
        server = MetricsServer(metrics, address, lambda: True).start()
        try:
            assert server.address.startswith(shown), server.address
            answer = requests.get(f"http://{server.address}/healthz", timeout=5)
            assert answer.status_code == 200
        finally:
            server.stop()
    for bad in ("::1:9479", "localhost", "127.0.0.1:http", "[::1]:70000"):
        with pytest.raises(SettingsError, match="--metrics-address"):
            MetricsServer(metrics, bad, lambda: True)
