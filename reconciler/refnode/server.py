"""The reference node's HTTP server: snarkOS's Slipstream routes, faithfully.

The demo, the tests and the benchmarks stand on this server, so it follows
`shared/node-api.md` to the byte where the contract is known and says where it guesses
(docs/refnode.md). It is a real HTTP/1.1 server with keep-alive; each response goes out
in one write with TCP_NODELAY so that it adds no latency of its own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import socket
import ssl
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jwt

from reconciler.refnode.limits import RateLimiter
from reconciler.refnode.plugins import (
    PluginAlreadyLoaded,
    PluginManager,
    PluginManagerError,
    PluginNotLoaded,
)

# A well-known development address; the node's real one comes from its private key.
DEFAULT_ADDRESS = "aleo1rhgdu77hgyqd3xjj8ucu3jj9r2krwz6mnzyd80gncr5fxcwlh5rsvzp9px"
NETWORKS = ("mainnet", "testnet", "canary")
BODY_LIMIT = 1536 * 1024
TEN_YEARS = 10 * 365 * 24 * 3600

_ROUTE = re.compile(r"^/(?:(v1|v2)/)?([a-z]+)/slipstream/plugins(?:/([^/]+))?/?$")


class StartupError(Exception):
    """The node could not start (bad secret, a start-up plugin that fails to load)."""


@dataclass
class Faults:
    """Injected misbehaviour for chaos tests; all off by default."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None


@dataclass
class NodeOptions:
    host: str = "127.0.0.1"
    port: int = 3030
    network: str = "mainnet"
    jwt_secret: bytes | None = None
    jwt_timestamp: int | None = None
    nojwt: bool = False
    slipstream_configs: list[str] = field(default_factory=list)
    rest_rps: int = 10
    data_dir: Path | None = None
    address: str = DEFAULT_ADDRESS
    faults: Faults = field(default_factory=Faults)
    # False: the later snarkOS proposal (plugins chosen at start-up, only GET remains).
    runtime_loading: bool = True
    # False: an older snarkOS with no /v2 routes at all.
    api_v2: bool = True
    # TLS (a test extension: snarkOS's REST server speaks plain HTTP, often behind a proxy).
    tls_cert: str | None = None
    tls_key: str | None = None


def decode_secret(b64: str) -> bytes:
    """snarkOS refuses a --jwt-secret that is not standard base64 of exactly 16 bytes."""
    try:
        secret = base64.b64decode(b64.strip(), validate=True)
    except ValueError:
        raise StartupError("--jwt-secret is not valid base64") from None
    if len(secret) != 16:
        raise StartupError(f"--jwt-secret must decode to exactly 16 bytes, not {len(secret)}")
    return secret


@dataclass(frozen=True)
class LoggedRequest:
    at: float
    method: str
    path: str
    status: int
    body: str


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None

    @classmethod
    def json(cls, status: int, value: object, pretty: bool = False) -> Reply:
        text = json.dumps(value, indent=2) if pretty else json.dumps(value, separators=(",", ":"))
        return cls(status, text.encode(), "application/json")


class RefNode:
    """One node. start() serves in a background thread; restart() forgets run-time plugins
    the way a real restart does and serves again on the same port."""

    def __init__(self, options: NodeOptions) -> None:
        if options.network not in NETWORKS:
            raise StartupError(f"unknown network {options.network!r}")
        self.options = options
        self.requests: deque[LoggedRequest] = deque(maxlen=100_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.manager: PluginManager | None = None
        self.secret = options.jwt_secret
        self.token = ""
        self.port = options.port
        self._random = random.Random(options.faults.seed)

    # -- life cycle -------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self.options.tls_cert else "http"
        return f"{scheme}://{self.options.host}:{self.port}"

    @property
    def token_file(self) -> Path | None:
        if self.options.data_dir is None:
            return None
        return self.options.data_dir / f"jwt_secret_{self.options.address}.txt"

    def start(self) -> RefNode:
        self._boot()
        server = _Server((self.options.host, self.port), _Handler)
        server.node = self
        if self.options.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="refnode", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        return self._server.connection_count() if self._server else 0

    def _boot(self) -> None:
        """What the node does at start-up: a secret, a token, the start-up plugins."""
        if self.options.jwt_secret is None:
            self.secret = os.urandom(16)
        iat = self.options.jwt_timestamp or int(time.time())
        claims = {"sub": self.options.address, "iat": iat, "exp": iat + TEN_YEARS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            self.token = jwt.encode(claims, self.secret, algorithm="HS256")
        if self.token_file is not None:
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.token_file.with_suffix(".tmp")
            tmp.write_text(self.token)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.token_file)
        self.limiter = RateLimiter(self.options.rest_rps)
        if not self.options.slipstream_configs:
            self.manager = None
            return
        self.manager = PluginManager()
        for config in self.options.slipstream_configs:
            try:
                self.manager.load(os.path.abspath(config))
            except PluginManagerError as exc:
                raise StartupError(f"start-up plugin {config}: {exc.message}") from None

    # -- request handling (called from handler threads) ---------------------------
    def handle(self, method: str, target: str, headers, body: bytes | None, client: str) -> Reply:
        path = urlsplit(target).path
        match = _ROUTE.match(path)
        version = match.group(1) if match else (path.split("/")[1] if path.count("/") > 1 else "")
        reply = self._route(method, match, headers, body, client)
        if version == "v2" or 200 <= reply.status < 300:
            return reply
        return _flatten_for_v1(reply)

    def _route(self, method, match, headers, body, client) -> Reply:
        wait = self.limiter.admit(client)
        if wait > 0:
            return _error(429, "too_many_requests", f"Too Many Requests! Wait for {wait:.3f}s")
        if match is None or match.group(2) != self.options.network:
            return Reply(404)
        if match.group(1) == "v2" and not self.options.api_v2:
            return Reply(404)
        name = match.group(3)
        allowed = ("DELETE",) if name is not None else ("GET", "POST")
        if not self.options.runtime_loading:
            allowed = () if name is not None else ("GET",)
        if method not in allowed:
            return Reply(405)
        if not self.options.nojwt and not self._authorized(headers.get("Authorization")):
            return Reply(401)
        if method == "POST":
            parsed = _parse_json_body(headers, body)
            if isinstance(parsed, Reply):
                return parsed
        if self.manager is None:
            return _error(503, "service_unavailable", "No Slipstream plugin manager is installed")
        if method == "GET":
            return Reply.json(200, self.manager.names(), pretty=True)
        if method == "DELETE":
            return self._unload(unquote(name))
        config_file = parsed.get("config_file") if isinstance(parsed, dict) else None
        if not isinstance(config_file, str):
            return _error(400, "bad_request", "Missing required field: config_file")
        return self._load(config_file)

    def _load(self, config_file: str) -> Reply:
        try:
            return Reply.json(200, {"loaded": self.manager.load(config_file)})
        except PluginAlreadyLoaded as exc:
            return _error(422, "unprocessable_entity", "Unable to load the plugin", (exc.message,))
        except PluginManagerError as exc:
            return _error(500, "internal_server_error", "Unable to load the plugin",
                          (exc.message, *exc.chain))

    def _unload(self, name: str) -> Reply:
        try:
            self.manager.unload(name)
        except PluginNotLoaded as exc:
            return _error(404, "not_found", exc.message)
        return Reply.json(200, {"unloaded": True})

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            try:
                jwt.decode(header[7:].strip(), self.secret, algorithms=["HS256"],
                           options={"require": ["exp"], "verify_sub": False})
            except jwt.PyJWTError:
                return False
        return True

    def fault_for(self) -> str | None:
        """Draws this request's injected fault: 'drop', 'error' or None."""
        faults = self.options.faults
        if faults.drop_rate and self._random.random() < faults.drop_rate:
            return "drop"
        if faults.error_rate and self._random.random() < faults.error_rate:
            return "error"
        return None


def _error(status: int, error_type: str, message: str, chain: tuple[str, ...] = ()) -> Reply:
    body: dict[str, object] = {"message": message, "error_type": error_type}
    if chain:
        body["chain"] = list(chain)
    return Reply.json(status, body)


def _flatten_for_v1(reply: Reply) -> Reply:
    """snarkOS's compatibility middleware: every non-2xx becomes a plain-text 500."""
    text = ""
    if reply.content_type == "application/json":
        error = json.loads(reply.body)
        text = " — ".join([error["message"], *error.get("chain", [])])
    elif reply.status == 401:
        text = "Unauthorized"  # inferred: the v1 text of an auth failure is not confirmed
    elif reply.body:
        text = reply.body.decode()
    return Reply(500, text.encode(), "text/plain; charset=utf-8")


def _parse_json_body(headers, body: bytes | None) -> object:
    """axum's Json extractor: its own plain-text 415 and 400 come before the handler."""
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return Reply(415, b"Expected request with `Content-Type: application/json`",
                     "text/plain; charset=utf-8")
    try:
        return json.loads(body or b"")
    except ValueError as exc:
        return Reply(400, f"Failed to parse the request body as JSON: {exc}".encode(),
                     "text/plain; charset=utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    node: RefNode

    def __init__(self, *args, **kwargs) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(sock)

    def connection_count(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def close_connections(self) -> None:
        """A restarted node drops its keep-alive connections; so do we."""
        with self._connections_lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._connections.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "snarkos-refnode"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        pass

    def _serve(self) -> None:
        node = self.server.node
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_LIMIT:
            self._send(Reply(413, b"length limit exceeded", "text/plain; charset=utf-8"))
            return
        body = self.rfile.read(length) if length else None
        fault = node.fault_for()
        if node.options.faults.latency_ms:
            time.sleep(node.options.faults.latency_ms / 1000)
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            node.requests.append(LoggedRequest(time.time(), self.command, self.path, 0, ""))
            return
        if fault == "error":
            reply = _error(500, "internal_server_error", "injected fault")
            if not self.path.startswith("/v2/"):
                reply = _flatten_for_v1(reply)
        else:
            reply = node.handle(self.command, self.path, self.headers, body, self.client_address[0])
        node.requests.append(LoggedRequest(time.time(), self.command, self.path, reply.status,
                                           (body or b"").decode("utf-8", "replace")))
        self._send(reply)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def _send(self, reply: Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        if reply.content_type:
            head.append(f"content-type: {reply.content_type}")
        head.append(f"content-length: {len(reply.body)}")
        if self.close_connection:
            head.append("connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
