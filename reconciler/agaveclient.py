"""The Agave adapter of the node client: a validator's admin RPC as the NodeClient
interface (reconciler.nodeclient).

The only module that speaks JSON-RPC to a validator. It turns connection failures and
jsonrpc-core errors into the NodeError branch of the error tree (reconciler.errors);
nothing above it sees an error code or the texts below.

The wire, as agave's `validator/src/admin_rpc_service.rs` serves it over
jsonrpc-ipc-server 18 (docs/refnode.md, "Agave mode", traces each point):
- a Unix socket at `<ledger>/admin.rpc`, mode 0600: the file mode is the only lock;
- a request is one JSON-RPC 2.0 object with positional params and a numeric id, written
  with no delimiter (the server splits frames on balanced braces); an answer is compact
  JSON ending in `\\n`, which may arrive in pieces;
- every plugin error is -32600 with a text, read here and nowhere else.

One connection is kept and reused, and dropped on any failure (a timeout included: its
late answer must never be read as the next call's). Measured against the reference node
on this host (3 x 2,000 listPlugins): about 0.31 ms a call on a kept connection, 0.66 to
0.86 ms with a new connection per call (connect, and the server's new connection task).
A pass of 1,000 loads is bound by the validator's one worker either way; the probe lists
every 2 s for the daemon's whole life. A write into a connection the validator closed (a
restart) fails before anything was read (EPIPE), so that call alone is retried once on a
fresh connection: it cannot have run twice.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import (
    AlreadyLoaded,
    BadResponse,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoPluginManager,
    NotLoaded,
    Rejected,
    Unauthorized,
)
from reconciler.noderules import AGAVE
from reconciler.pacing import Pacer
from reconciler.settings import Settings

# listPlugins of the 16 plugins a validator can hold is under 2 KiB; anything near this is
# not the admin RPC.
MAX_RESPONSE = 1 << 20
# A plugin call's errors are jsonrpc-core's InvalidRequest with agave's own text.
PLUGIN_ERROR = -32600
NO_SERVICE = "No geyser plugin service"
# jsonrpc-core's own -32600 texts: our request, not the plugin, was refused.
PROTOCOL_TEXTS = ("Invalid request", "Unsupported JSON-RPC protocol version")
# The validator's texts for a load that failed because of the plugin (its config or its
# library): `GeyserPluginManagerError`'s variants (with "Failed to load plugin: " in
# front for loadPlugin, without it for reloadPlugin) and on_load's refusal. Retrying the
# same files fails the same way.
PLUGIN_FAULTS = (
    "Failed to load plugin: ",
    "Cannot open the plugin config file",
    "Cannot read the plugin config file",
    "The config file is not in a valid Json format",
    "Plugin library path is not specified in the config file",
    "Cannot load plugin shared library",
    "on_load method of plugin ",
    "Failed to start new plugin (previous plugin was dropped!)",
)
NO_SERVICE_HINT = ("the validator was started without any --geyser-plugin-config and without "
                   "--geyser-plugin-always-enabled, so its plugins cannot be changed at run "
                   "time: restart it with one of them")
LATE_HINT = {
    "loadPlugin": "a slow plugin on_load may still complete it: the next pass finds it in "
                  "the validator's list and records it, and never loads it twice",
    "reloadPlugin": "the reload may still complete (or leave the plugin unloaded): the next "
                    "pass reads the validator's list before deciding anything",
    "unloadPlugin": "the unload may still complete (it waits for notifiers to let go of the "
                    "plugin): the next pass reads the validator's list",
}
_ALREADY = re.compile(r"There already exists a plugin named (.*?) loaded[.,]", re.S)
_NOT_LOADED = re.compile(r"The plugin you requested to (un|re)load is not loaded")


class AgaveClient:
    """An Agave validator's four plugin methods (listPlugins, loadPlugin, unloadPlugin,
    reloadPlugin) over its admin RPC socket, as the NodeClient interface."""

    rules = AGAVE

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.ledger = self.socket_path.parent
        self.timeout = timeout
        # Nothing to wait out: the validator does not rate-limit its admin socket.
        self.patience = 0.0
        self.pacer = Pacer(0)
        # (method, status): 200 for a result, the JSON-RPC error code for an error, 0 for
        # no answer (docs/daemon.md, the metrics).
        self.on_response: Callable[[str, int], None] | None = None
        self._kind: str | None = None
        self._conn: socket.socket | None = None
        self._buffer = bytearray()  # what arrived after the last answer's "\n"
        self._next_id = 0
        self._lock = threading.Lock()  # one call at a time on the one connection

    # -- what the node is ---------------------------------------------------------------
    @property
    def kind(self) -> str | None:
        return self._kind

    @property
    def described(self) -> str:
        if self._kind == "agave-no-geyser-service":
            return ("Agave validator without a Geyser plugin service (restart it with "
                    "--geyser-plugin-config or --geyser-plugin-always-enabled)")
        if self._kind is None:
            return "not asked yet"
        return "Agave validator (admin RPC)"  # where: shown_node, beside it

    @property
    def prefix(self) -> str | None:
        return None

    def blames_the_plugin(self, reason: str) -> bool:
        return any(text in reason for text in PLUGIN_FAULTS)

    def sibling(self) -> AgaveClient:
        """The daemon's probe gets its own connection: a list must not queue behind the
        pass's call on one connection (the validator's worker still runs them in turn)."""
        return AgaveClient(self.socket_path, self.timeout)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- the four methods -----------------------------------------------------------------
    def list(self) -> list[str]:
        names = self._call("listPlugins", ())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadResponse(f"the validator at {self.socket_path} answered listPlugins with "
                              f"{_excerpt(json.dumps(names))}, not a list of names")
        return names

    def load(self, config_file: str) -> str:
        name = self._call("loadPlugin", (config_file,))
        if not isinstance(name, str):
            raise BadResponse(f"the validator loaded {config_file} but answered "
                              f"{_excerpt(json.dumps(name))}, not the plugin's name")
        return name

    def unload(self, name: str) -> None:
        self._call("unloadPlugin", (name,))

    def reload(self, name: str, config_file: str) -> None:
        self._call("reloadPlugin", (name, config_file))

    def require_runtime_loading(self) -> None:
        """A validator with a Geyser plugin service can always load at run time; one
        without it cannot until a restart (NoPluginManager). Asked with a list, which
        changes nothing, unless an earlier call already told."""
        if self._kind is None:
            self.list()
        if self._kind == "agave-no-geyser-service":
            raise self._no_service()

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, method: str, params: tuple[str, ...]) -> Any:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            request = json.dumps({"jsonrpc": "2.0", "id": ident, "method": method,
                                  "params": list(params)}, separators=(",", ":")).encode()
            status = 0  # counted as "no answer" unless a whole answer arrives
            try:
                answer = self._exchange(method, request)
                status = 200 if "error" not in answer else _code(answer)
            finally:
                if self.on_response is not None:
                    self.on_response(method, status)
            # jsonrpc-core answers a request it could not read with id null (-32700).
            unread = "error" in answer and answer.get("id") is None
            if answer.get("id") != ident and not unread:
                self._drop()
                raise BadResponse(f"the validator at {self.socket_path} answered {method} "
                                  f"for request id {answer.get('id')!r}, not {ident}")
        if "error" in answer:
            raise self._error(method, answer["error"])
        if "result" not in answer:
            raise BadResponse(f"the validator at {self.socket_path} answered {method} with "
                              f"neither a result nor an error: {_excerpt(json.dumps(answer))}")
        if self._kind != "agave":
            self._kind = "agave"
        return answer["result"]

    def _exchange(self, method: str, request: bytes) -> dict[str, Any]:
        """One request out, one answer line in, within the timeout; the connection is
        dropped on any failure."""
        deadline = time.monotonic() + self.timeout
        try:
            conn = self._connected(deadline)
            try:
                conn.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                # The validator closed a kept connection (a restart): nothing was read,
                # so nothing ran. Once more, on a fresh connection.
                self._drop()
                conn = self._connected(deadline)
                conn.sendall(request)
            line = self._read_line(conn, method, deadline)
        except NodeError:
            self._drop()
            raise
        except TimeoutError:
            self._drop()
            raise self._timeout(method) from None
        except OSError as exc:
            self._drop()
            raise self._unreachable(exc, method) from None
        try:
            answer = json.loads(line)
        except ValueError:
            self._drop()
            text = _excerpt(line.decode("utf-8", "replace"))
            raise BadResponse(f"the validator at {self.socket_path} answered {method} with "
                              f"something that is not JSON: {text}") from None
        if not isinstance(answer, dict):
            self._drop()
            raise BadResponse(f"the validator at {self.socket_path} answered {method} with "
                              f"{_excerpt(line.decode('utf-8', 'replace'))}, not a JSON-RPC "
                              "response")
        return answer

    def _connected(self, deadline: float) -> socket.socket:
        if self._conn is not None:
            return self._conn
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            conn.connect(str(self.socket_path))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._buffer = bytearray()
        return conn

    def _read_line(self, conn: socket.socket, method: str, deadline: float) -> bytes:
        buffer = self._buffer
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            chunk = conn.recv(65536)
            if not chunk:
                hint = LATE_HINT.get(method)
                raise NodeUnreachable(
                    f"the validator at {self.socket_path} closed the connection without "
                    f"answering {method} (a restart?)" + (f"; {hint}" if hint else ""))
            buffer += chunk
            if len(buffer) > MAX_RESPONSE:
                raise BadResponse(f"the answer from {self.socket_path} to {method} is larger "
                                  f"than {MAX_RESPONSE >> 20} MiB without ending; that is not "
                                  "the validator's admin RPC")
        line, _, rest = bytes(buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._buffer = bytearray()
        if conn is not None:
            conn.close()

    # -- errors, in the operator's words ----------------------------------------------------
    def _unreachable(self, exc: OSError, method: str) -> NodeError:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Unauthorized(f"may not open {self.socket_path} "
                                f"({_owner_and_mode(self.socket_path)}): the socket is the "
                                "validator's only lock; run slipstream-reconciler as the "
                                "validator's user")
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.ENOTSOCK):
            return NodeUnreachable(f"no validator is listening on {self.socket_path} (is it "
                                   f"running with --ledger {self.ledger}?)")
        reason = (exc.strerror or type(exc).__name__).lower()
        hint = LATE_HINT.get(method)  # the call may have reached the validator
        return NodeUnreachable(f"lost the validator at {self.socket_path} during {method}: "
                               f"{reason}" + (f"; {hint}" if hint else ""))

    def _timeout(self, method: str) -> NodeTimeout:
        message = (f"the validator at {self.socket_path} did not answer {method} within "
                   f"{self.timeout:g} s (its one plugin worker is busy or hung)")
        hint = LATE_HINT.get(method)
        return NodeTimeout(f"{message}; {hint}" if hint else message)

    def _error(self, method: str, error: object) -> NodeError:
        if not isinstance(error, dict):
            return BadResponse(f"the validator at {self.socket_path} answered {method} with "
                               f"the error {_excerpt(json.dumps(error))}")
        code, message = error.get("code"), str(error.get("message", ""))
        if code == PLUGIN_ERROR and message not in PROTOCOL_TEXTS:
            if message == NO_SERVICE:
                return self._no_service()
            self._kind = "agave"
            already = _ALREADY.search(message)
            if already:
                return AlreadyLoaded(message, already.group(1))
            if _NOT_LOADED.search(message):
                return NotLoaded(message)
            return Rejected(message or f"the validator refused {method} without a reason")
        data = error.get("data")
        detail = f" ({data})" if data else ""
        return BadResponse(f"the validator at {self.socket_path} refused {method}: "
                           f"{message or 'no message'} (JSON-RPC error {code}){detail}")

    def _no_service(self) -> NoPluginManager:
        self._kind = "agave-no-geyser-service"
        return NoPluginManager(f"the validator at {self.socket_path} has no Geyser plugin "
                               f"service: {NO_SERVICE_HINT}")


def _code(answer: dict[str, Any]) -> int:
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else 0


def _owner_and_mode(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot stat it: {exc.strerror}"
    try:
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
    except (KeyError, ImportError):
        owner = f"uid {st.st_uid}"
    return f"owner {owner}, mode {st.st_mode & 0o7777:04o}; we are uid {os.geteuid()}"


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def connect(settings: Settings) -> AgaveClient:
    """A client for the settings' validator (`<ledger>/admin.rpc`)."""
    settings.require_node()
    assert settings.socket_path is not None  # require_node: the ledger is given
    return AgaveClient(settings.socket_path, settings.timeout)
