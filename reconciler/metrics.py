"""Prometheus metrics and a health check, on their own small HTTP server.

prometheus-client does the exposition format, histograms and registry (a well-kept
library doing a job better than code we would write); the server is ours only so that
/healthz can answer from the loop's heartbeat on the same port."""

from __future__ import annotations

import ipaddress
import platform
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from reconciler import __version__
from reconciler.errors import SettingsError

PREFIX = "slipstream_reconciler"
STATES = ("in-sync", "pending-load", "pending-replace", "pending-unload", "pending-adopt",
          "unmanaged", "invalid", "stalled", "blocked")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, open fds, start time) and python_info: the standard
        # series dashboards and alerts expect from any exporter.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # slipstream_reconciler_build_info{version=...} 1: which release is running where.
        Info(f"{PREFIX}_build", "The running slipstream-reconciler release.",
             registry=r).info({"version": __version__,
                               "python_version": platform.python_version()})
        self.passes = Counter(f"{PREFIX}_passes", "Reconcile passes, by what triggered them "
                              "and how they ended.", ["trigger", "result"], registry=r)
        self.pass_seconds = Histogram(f"{PREFIX}_pass_duration_seconds",
                                      "Duration of a reconcile pass.", registry=r,
                                      buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                               10, 30, 60, 120))
        self.event_to_applied = Histogram(
            f"{PREFIX}_event_to_applied_seconds",
            "From the first file event of a batch to its changes being applied.", registry=r,
            buckets=(.05, .1, .2, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 10, 30))
        self.plugins = Gauge(f"{PREFIX}_plugins", "Plugins by state after the last pass.",
                             ["state"], registry=r)
        self.node_up = Gauge(f"{PREFIX}_node_up", "1 when the node answered the last request.",
                             registry=r)
        self.http = Counter(f"{PREFIX}_http_requests", "Requests to the node, by method and "
                            "status (0: no answer).", ["method", "status"], registry=r)
        self.last_success = Gauge(f"{PREFIX}_last_successful_pass_timestamp_seconds",
                                  "Unix time of the last pass that converged.", registry=r)
        for state in STATES:
            self.plugins.labels(state).set(0)

    def set_states(self, counts: dict[str, int]) -> None:
        for state in STATES:
            self.plugins.labels(state).set(counts.get(state, 0))


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (loopback). A bare IPv6 address without brackets
    is refused: its last group would be read as the port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"--metrics-address must be HOST:PORT or [IPv6]:PORT, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise SettingsError(f"--metrics-address: write an IPv6 address in brackets, "
                            f"[{host}]:{port}")
    return host or "127.0.0.1", int(port)


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:  # a host name: resolved by the server as IPv4, as before
        is_v6 = False
    if not is_v6:
        return ThreadingHTTPServer

    class Server6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    return Server6


class MetricsServer:
    def __init__(self, metrics: Metrics, address: str, healthy: Callable[[], bool]) -> None:
        host, port = split_address(address)
        metrics_ref, healthy_ref = metrics, healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body, status = generate_latest(metrics_ref.registry), 200
                    kind = CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    ok = healthy_ref()
                    body, status, kind = (b"ok\n" if ok else b"loop stalled\n",
                                          200 if ok else 503, "text/plain")
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the journal is for the daemon's own lines, not every scrape

        self.server = _server_class(host)((host, port), Handler)
        self.server.daemon_threads = True
        bound_host, bound_port = str(self.server.server_address[0]), self.server.server_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.address = f"{shown}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.2,),
                                        name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
