"""The reference node's HTTP server: snarkOS's REST layers and Slipstream routes, faithfully.

The demo, the tests and the benchmarks stand on this server, so it follows the snarkOS
code that served the API (docs/refnode.md maps every behaviour to its upstream file,
function and commit, and says where it still guesses). The request path, outermost first,
is the node's (`node/rest/src/lib.rs`, `build_routes` and `spawn_server`):

    outer router: a path that matches no route -> 404, empty body, no layer involved
    `/` and `/v1` only: v1_error_middleware (non-2xx -> 500 text, or "Failed to convert error")
    trace, CORS, rate limiter (one per prefix, GCRA per client IP), method router (405),
    JWT (route_layer: only the protected routes), then the handler, whose axum `Json`
    extractor checks Content-Type (415), the body limit (413) and the syntax (400).

It is a real HTTP/1.1 server with keep-alive; each response goes out in one write with
TCP_NODELAY so that it adds no latency of its own, and it never times a request out (nor
does the node): a slow load finishes after its client has given up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import ssl
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import jwt

from reconciler.refnode.limits import RateLimiter
from reconciler.refnode.plugins import (
    PluginAlreadyLoaded,
    PluginManager,
    PluginManagerError,
    PluginNotLoaded,
)
from reconciler.snarkos import API_VERSIONS, NETWORKS, mint_token

# A well-known development address; the node's real one comes from its private key.
DEFAULT_ADDRESS = "aleo1rhgdu77hgyqd3xjj8ucu3jj9r2krwz6mnzyd80gncr5fxcwlh5rsvzp9px"
BODY_LIMIT = 2 * 768 * 1024  # DefaultBodyLimit::max(2 * 768 * 1024)
READ_CAP = 64 << 20  # bodies larger than this are not read at all; the connection closes
JWT_LEEWAY = 60  # jsonwebtoken's Validation::new default
BLOCK_SECONDS = 3.0  # the simulated chain's block time, for /block/height/latest
TEXT = "text/plain; charset=utf-8"
# tower-http's CorsLayer with allow_origin(Any) on a request that is not a preflight.
CORS_HEADERS = (("access-control-allow-origin", "*"),
                ("vary", "origin, access-control-request-method, "
                         "access-control-request-headers"))
I64 = (-(1 << 63), (1 << 63) - 1)


class StartupError(Exception):
    """The node could not start (bad secret, a start-up plugin that fails to load)."""


@dataclass
class Faults:
    """Injected misbehaviour for chaos tests; all off by default.

    load_delay: seconds each run-time load's `on_load` takes, holding the manager's
    write lock (a list waits for it, as on the node); start-up plugins load promptly."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None
    load_delay: float = 0.0


@dataclass
class NodeOptions:
    host: str = "127.0.0.1"
    port: int = 3030
    network: str = "mainnet"
    jwt_secret: bytes | None = None
    jwt_timestamp: int | None = None
    nojwt: bool = False
    slipstream_configs: list[str] = field(default_factory=list)
    rest_rps: int = 10  # 0: no limit (a refnode extension; snarkOS panics on 0)
    data_dir: Path | None = None
    address: str = DEFAULT_ADDRESS
    faults: Faults = field(default_factory=Faults)
    # False: a build without `--features slipstream-plugins` (or any snarkOS after PR
    # #4468): no slipstream route exists, so every slipstream path is a bare 404.
    slipstream: bool = True
    # False: the later snarkOS proposal (plugins chosen at start-up, only GET remains).
    runtime_loading: bool = True
    # False: an older snarkOS with no /v2 routes at all.
    api_v2: bool = True
    # True: the snarkOS branch whose v1 fallback text ends in " (HTTP nnn)".
    v1_http_code_suffix: bool = False
    # A container's view: every path the node is given is read under this folder.
    root: str | None = None
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
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, value: object, pretty: bool = False) -> Reply:
        """serde_json's output: compact (`to_string`) or `to_string_pretty` (two spaces),
        UTF-8 unescaped, as ErasedJson and RestError send it."""
        if pretty:
            text = json.dumps(value, indent=2, ensure_ascii=False)
        else:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return cls(status, text.encode(), "application/json")

    @classmethod
    def text(cls, status: int, text: str) -> Reply:
        """axum's own rejections: a String body, so `text/plain; charset=utf-8`."""
        return cls(status, text.encode(), TEXT)

    def with_headers(self, extra: tuple[tuple[str, str], ...]) -> Reply:
        return Reply(self.status, self.body, self.content_type, self.headers + extra)


def rest_error(status: int, error_type: str, message: str,
               chain: tuple[str, ...] = ()) -> Reply:
    """`RestError::into_response`: compact JSON, `chain` only when it is not empty."""
    body: dict[str, object] = {"message": message, "error_type": error_type}
    if chain:
        body["chain"] = list(chain)
    return Reply.json(status, body)


@dataclass(frozen=True)
class _Route:
    prefix: str  # "", "v1" or "v2"
    kind: str  # "height", "plugins" or "plugin"
    name: bytes | None = None  # the raw {name} segment of DELETE


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
        self.secret: bytes = options.jwt_secret or b""  # set for real at each boot
        self.token = ""
        self.port = options.port
        self._random = random.Random(options.faults.seed)
        self._born = time.monotonic()
        self.limiters: dict[str, RateLimiter] = {}

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
        options = self.options
        if not options.slipstream and options.slipstream_configs:
            # A build without the feature does not know the flag: clap refuses it.
            raise StartupError("error: unexpected argument '--slipstream-config' found")
        self.secret = options.jwt_secret if options.jwt_secret is not None else os.urandom(16)
        iat = options.jwt_timestamp or int(time.time())
        self.token = mint_token(self.secret, options.address, iat)
        if self.token_file is not None:
            # std::fs::write: created with 0666 & ~umask, truncated in place on a rewrite
            # (so a mode an operator set is kept), and not atomic.
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            self.token_file.write_text(self.token)
        self.limiters = {prefix: RateLimiter(options.rest_rps) for prefix in API_VERSIONS}
        if not options.slipstream_configs:
            self.manager = None
            return
        manager = PluginManager(root=options.root)
        for config in options.slipstream_configs:
            try:
                manager.load(config)
            except PluginManagerError as exc:
                raise StartupError(f"start-up plugin {config}: {exc.message}") from None
        manager.load_delay = options.faults.load_delay
        self.manager = manager

    # -- request handling (called from handler threads) ---------------------------
    def handle(self, method: str, target: str, headers: Message, body: bytes,
               body_length: int | None = None, client: str = "127.0.0.1") -> Reply:
        """One request through the node's router and layers. body_length is the declared
        length when the body was too large to read (the extractor refuses it anyway)."""
        route = self._match(urlsplit(target).path)
        if route is None:
            return Reply(404)  # the outer router's fallback: no layer sees it
        reply = self._through_layers(route, method, headers, body,
                                     len(body) if body_length is None else body_length,
                                     client).with_headers(CORS_HEADERS)
        return reply if route.prefix == "v2" else self._v1_error_middleware(reply)

    def _match(self, path: str) -> _Route | None:
        """axum's routing, as raw path segments (no percent-decoding, no trailing `/`)."""
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        prefix = parts[0] if parts[0] in ("v1", "v2") else ""
        if prefix:
            parts = parts[1:]
        if prefix == "v2" and not self.options.api_v2:
            return None
        if not parts or parts[0] != self.options.network:
            return None
        rest = parts[1:]
        if rest == ["block", "height", "latest"]:
            return _Route(prefix, "height")
        if not self.options.slipstream or rest[:2] != ["slipstream", "plugins"]:
            return None
        if len(rest) == 2:
            return _Route(prefix, "plugins")
        if len(rest) == 3 and rest[2]:
            return _Route(prefix, "plugin", unquote_to_bytes(rest[2]))
        return None

    def _allowed(self, route: _Route) -> tuple[str, ...]:
        if route.kind == "height":
            return ("GET", "HEAD")
        if route.kind == "plugins":
            return ("GET", "HEAD", "POST") if self.options.runtime_loading else ("GET", "HEAD")
        return ("DELETE",) if self.options.runtime_loading else ()

    def _through_layers(self, route: _Route, method: str, headers: Message, body: bytes,
                        body_length: int, client: str) -> Reply:
        wait = self.limiters[route.prefix].admit(client)
        if wait > 0:
            # tower_governor's GovernorError::TooManyRequests text, given by snarkOS's
            # error_handler as a bare body: no content type, no JSON, whole seconds.
            return Reply(429, f"Too Many Requests! Wait for {int(wait)}s".encode())
        allowed = self._allowed(route)
        if method not in allowed:
            return Reply(405, headers=(("allow", ",".join(allowed)),) if allowed else ())
        if route.kind == "height":
            height = int((time.monotonic() - self._born) / BLOCK_SECONDS)
            return Reply.json(200, height, pretty=True)
        if not self.options.nojwt and not self._authorized(headers.get("Authorization")):
            return Reply(401)
        if route.kind == "plugin":
            return self._unload(route)
        if method == "POST":
            return self._load(headers, body, body_length)
        if self.manager is None:
            return _no_manager()
        return Reply.json(200, self.manager.names(), pretty=True)

    def _load(self, headers: Message, body: bytes, body_length: int) -> Reply:
        """`slipstream_load_plugin`: `Json<serde_json::Value>` first, then `config_file`,
        then the manager, then the load under its write lock."""
        if not _json_content_type(headers.get("Content-Type")):
            return Reply.text(415, "Expected request with `Content-Type: application/json`")
        if body_length > BODY_LIMIT:
            return Reply.text(413, "Failed to buffer the request body: length limit exceeded")
        parsed = _serde_json(body)
        if isinstance(parsed, Reply):
            return parsed
        config_file = parsed.get("config_file") if isinstance(parsed, dict) else None
        if not isinstance(config_file, str):
            return rest_error(400, "bad_request", "Missing required field: config_file")
        if self.manager is None:
            return _no_manager()
        try:
            name = self.manager.load(config_file)
        except PluginAlreadyLoaded as exc:
            return rest_error(422, "unprocessable_entity", exc.message)
        except PluginManagerError as exc:
            return rest_error(500, "internal_server_error", exc.message)
        return Reply.json(200, {"loaded": name}, pretty=True)

    def _unload(self, route: _Route) -> Reply:
        """`slipstream_unload_plugin`: snarkOS's own Path extractor, the manager, then
        the unload under the write lock."""
        raw = route.name or b""
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            path = f"/{route.prefix + '/' if route.prefix else ''}{self.options.network}" \
                   f"/slipstream/plugins/{_requote(raw)}"
            return rest_error(400, "bad_request",
                              f'Invalid argument "name" in path "{path}": invalid UTF-8 in '
                              f"parameter", ("Invalid UTF-8 in `name`",))
        if self.manager is None:
            return _no_manager()
        try:
            self.manager.unload(name)
        except PluginNotLoaded as exc:
            return rest_error(404, "not_found", exc.message)
        return Reply.json(200, {"unloaded": True}, pretty=True)

    def _v1_error_middleware(self, reply: Reply) -> Reply:
        """snarkOS's `v1_error_middleware`: a non-2xx answer becomes a 500 whose body is the
        RestError's message and chain joined by " — "; a body that is not a RestError (any
        answer a layer or axum made) becomes "Failed to convert error" (snarkOS #4443).
        `Response::new` sets no content type."""
        if 200 <= reply.status < 300:
            return reply
        try:
            error = json.loads(reply.body)
            message, chain = error["message"], error.get("chain", [])
            if not isinstance(message, str) or not isinstance(error["error_type"], str) or \
                    not isinstance(chain, list) or not all(isinstance(c, str) for c in chain):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            text = "Failed to convert error"
            if self.options.v1_http_code_suffix:
                text += f" (HTTP {reply.status})"
            return Reply(500, text.encode())
        for cause in chain:
            message = f"{message} — {cause}"
        return Reply(500, message.encode())

    def _authorized(self, header: str | None) -> bool:
        """auth_middleware: `TypedHeader<Authorization<Bearer>>`, then jsonwebtoken's
        `decode::<Claims>` with `Validation::new(HS256)`: signature, `exp` required and
        checked with 60 s leeway, `iat`/`nbf` not checked, `sub`/`iat`/`exp` must
        deserialize (a string and two i64)."""
        if not header or len(header) <= 7 or header[:6].lower() != "bearer":
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            try:
                claims = jwt.decode(header[7:].lstrip(), self.secret, algorithms=["HS256"],
                                    options={"verify_exp": False, "verify_iat": False,
                                             "verify_nbf": False})
            except jwt.PyJWTError:
                return False
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(claims.get("sub"), str):
            return False
        for value in (exp, iat):
            if type(value) is not int or not I64[0] <= value <= I64[1]:
                return False
        return isinstance(exp, int) and exp >= int(time.time()) - JWT_LEEWAY

    def fault_for(self) -> str | None:
        """Draws this request's injected fault: 'drop', 'error' or None."""
        faults = self.options.faults
        if faults.drop_rate and self._random.random() < faults.drop_rate:
            return "drop"
        if faults.error_rate and self._random.random() < faults.error_rate:
            return "error"
        return None

    def injected_error(self, target: str) -> Reply:
        reply = rest_error(500, "internal_server_error", "injected fault")
        if urlsplit(target).path.startswith("/v2/"):
            return reply
        return self._v1_error_middleware(reply)


def _no_manager() -> Reply:
    return rest_error(503, "service_unavailable", "No Slipstream plugin manager is installed")


def _requote(raw: bytes) -> str:
    return "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in raw)


def _json_content_type(value: str | None) -> bool:
    """axum's `json_content_type`: a parsable mime `application/json` or
    `application/*+json` (type and subtype case-insensitive), parameters allowed."""
    if not value:
        return False
    essence = value.split(";", 1)[0].strip().lower()
    kind, slash, subtype = essence.partition("/")
    token = set("abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-")
    if not slash or not kind or not subtype or not set(kind) <= token or \
            not set(subtype) <= token:
        return False
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


# Python's json messages, in serde_json's words (the positions are Python's: inferred).
_SERDE_MESSAGES = (
    ("Expecting value", "expected value"),
    ("Extra data", "trailing characters"),
    ("Expecting property name enclosed in double quotes", "key must be a string"),
    ("Expecting ',' delimiter", "expected `,` or `}`"),
    ("Expecting ':' delimiter", "expected `:`"),
    ("Unterminated string", "EOF while parsing a string"),
    ("Invalid control character", "control character (\\u0000-\\u001F) found while parsing "
                                  "a string"),
    ("Invalid \\escape", "invalid escape"),
    ("Invalid \\uXXXX escape", "invalid escape"),
)


def _serde_json(body: bytes) -> object:
    """`serde_json::from_slice::<Value>` as axum's Json extractor runs it: UTF-8 only, no
    NaN/Infinity, no lone surrogate escapes; a syntax error is axum's plain-text 400."""

    def refuse(message: str, line: int = 1, column: int = 1) -> Reply:
        return Reply.text(400, f"Failed to parse the request body as JSON: {message} at "
                               f"line {line} column {column}")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return refuse("invalid unicode code point", 1, exc.start + 1)
    if not text.strip():
        return refuse("EOF while parsing a value", 1 + text.count("\n"), 0)

    def no_constants(name: str) -> object:
        raise ValueError(f"Expecting value: line 1 column 1 (char 0) [{name}]")

    try:
        value = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        message = next((serde for python, serde in _SERDE_MESSAGES
                        if exc.msg.startswith(python)), exc.msg)
        return refuse(message, exc.lineno, exc.colno)
    except (ValueError, RecursionError):
        return refuse("expected value")
    if _has_surrogate(value):
        return refuse("lone leading surrogate in hex escape")
    return value


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    node: RefNode

    def __init__(self, address: tuple[str, int],
                 handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

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
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> tuple[bytes, int | None]:
        """The whole body (Content-Length or chunked); a body over READ_CAP is left unread
        (its declared length returned) and the connection closed after the answer."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks), None
                total += size
                if total > READ_CAP:
                    self.close_connection = True
                    return b"", total
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > READ_CAP:
            self.close_connection = True
            return b"", length
        return (self.rfile.read(length) if length else b""), None

    def _serve(self) -> None:
        node = self.server.node
        try:
            body, oversize = self._read_body()
        except ValueError:
            self._send(Reply.text(400, "Bad Request"))
            self.close_connection = True
            return
        fault = node.fault_for()
        if node.options.faults.latency_ms:
            time.sleep(node.options.faults.latency_ms / 1000)
        if fault == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            node.requests.append(LoggedRequest(time.time(), self.command, self.path, 0, ""))
            return
        if fault == "error":
            reply = node.injected_error(self.path)
        else:
            reply = node.handle(self.command, self.path, self.headers, body, oversize,
                                self.client_address[0])
        node.requests.append(LoggedRequest(time.time(), self.command, self.path, reply.status,
                                           body.decode("utf-8", "replace")))
        self._send(reply)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _send(self, reply: Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        if reply.content_type:
            head.append(f"content-type: {reply.content_type}")
        head.extend(f"{name}: {value}" for name, value in reply.headers)
        head.append(f"content-length: {len(reply.body)}")
        if self.close_connection:
            head.append("connection: close")
        head.append(f"date: {formatdate(usegmt=True)}")
        payload = b"" if self.command == "HEAD" else reply.body
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        except OSError:
            # The client gave up (a slow load, say); the node's work stands regardless.
            self.close_connection = True
