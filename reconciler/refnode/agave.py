"""The reference node in Agave mode: a validator's admin RPC on `<ledger>/admin.rpc`.

It follows agave's `validator/src/admin_rpc_service.rs` (`run`, the four plugin methods)
and `geyser-plugin-manager/src/geyser_plugin_service.rs` (the `SolGeyserPluginRpc`
worker), over jsonrpc-ipc-server 18 and parity-tokio-ipc 0.9 (docs/refnode.md, "Agave
mode", traces each behaviour):

- start: a stale socket file is removed, a new one bound and chmod-ed 0600 (so a restart
  shows as a new inode); a clean stop removes it (`Drop for Incoming`);
- each connection reads frames (reconciler.refnode.ipc) and runs up to 5 of them at once
  (`client_buffer_size`), answering in completion order;
- plugin calls go over a channel to **one** worker thread that runs them one at a time,
  with no timeout: a slow load delays a list queued behind it;
- without start-up plugins and without `always_enabled` there is no worker at all and
  every plugin call answers -32600 `No geyser plugin service`;
- start-up plugins load at start; one that fails aborts the start (StartupError).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.refnode.geyser import GeyserError, GeyserPluginManager, LibraryCache
from reconciler.refnode.ipc import MethodError, RpcError, StreamDecoder, respond
from reconciler.refnode.server import Faults, StartupError

SOCKET_NAME = "admin.rpc"
CLIENT_BUFFER_SIZE = 5  # jsonrpc-ipc-server's default concurrent requests per connection
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its NUL
# The injected error: jsonrpc-core's own `Internal error`, which is what a client sees when
# a handler fails for a reason that is not the plugin's (agave's admin methods answer it
# for internal failures). It says nothing about the plugin, so a client cannot mistake it
# for a verdict, and the call was not run: the plugin list is unchanged.
INJECTED_ERROR = RpcError(-32603, "Internal error")


@dataclass
class AgaveFaults(Faults):
    """The snarkOS mode's faults plus Agave's own. All off by default.

    load_delay: seconds each run-time `on_load` takes, in the worker (calls queue behind
    it). unload_delay: seconds an unload (or reload's unload) waits for notifiers to let
    go of the plugin. hang: the worker stops taking plugin calls; they wait, unanswered,
    until the fault is cleared or the node stops. Faults may be changed while running."""

    unload_delay: float = 0.0
    hang: bool = False


@dataclass
class AgaveOptions:
    ledger: Path
    geyser_plugin_configs: list[str] = field(default_factory=list)
    always_enabled: bool = False  # --geyser-plugin-always-enabled
    faults: AgaveFaults = field(default_factory=AgaveFaults)


@dataclass(frozen=True)
class LoggedCall:
    """One plugin call as the node saw it. outcome: "ok", the error's message,
    "dropped" (the connection closed unanswered) or "injected" (the injected error)."""

    at: float
    method: str
    params: tuple[str, ...]
    outcome: str
    result: object = None


@dataclass
class _Job:
    method: str
    params: tuple[str, ...]
    future: Future[object] = field(default_factory=Future)


class AgaveNode:
    """One validator's admin RPC. start() serves in background threads; restart() is a
    new process: run-time plugins and the dlopen cache are forgotten, the socket
    replaced."""

    def __init__(self, options: AgaveOptions) -> None:
        self.options = options
        self.requests: deque[LoggedCall] = deque(maxlen=100_000)
        self.manager: GeyserPluginManager | None = None
        self._random = random.Random(options.faults.seed)
        self._listener: socket.socket | None = None
        self._jobs: queue.Queue[_Job | None] | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def socket_path(self) -> Path:
        return self.options.ledger / SOCKET_NAME

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def service_enabled(self) -> bool:
        """`starting_with_geyser_plugins` in agave's validator start-up."""
        return bool(self.options.geyser_plugin_configs) or self.options.always_enabled

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> AgaveNode:
        self._stopping = threading.Event()
        self._boot()
        path = str(self.socket_path)
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise StartupError(f"the admin RPC socket path is too long for a Unix socket "
                               f"({len(path)} bytes, at most {SUN_PATH_MAX}): {path}")
        self.options.ledger.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.remove(path)  # jsonrpc-ipc-server: "Removed existing file"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)  # parity-tokio-ipc: chmod after bind
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.05)
        self._listener = listener
        self._spawn(self._accept_loop, "agave-admin-rpc")
        if self._jobs is not None:
            self._spawn(self._worker, "SolGeyserPluginRpc")
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        listener.close()
        with contextlib.suppress(OSError):
            os.remove(self.socket_path)  # Drop for Incoming removes the socket file
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._jobs is not None:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        self._jobs = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _boot(self) -> None:
        """The validator's start: a new process, so a new dlopen cache and an empty list;
        the start-up plugins load in order and the first failure aborts the start."""
        options = self.options
        self.manager = None
        self._jobs = None
        if not self.service_enabled:
            return
        manager = GeyserPluginManager(LibraryCache())
        for config in options.geyser_plugin_configs:
            try:
                manager.load_at_startup(config)
            except GeyserError as exc:
                raise StartupError(f"start-up plugin {config}: Failed to load a geyser "
                                   f"plugin: {exc.message}") from None
        self.manager = manager
        self._jobs = queue.Queue()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- the worker: one plugin call at a time ---------------------------------------------
    def _worker(self) -> None:
        jobs, manager, stopping = self._jobs, self.manager, self._stopping
        assert jobs is not None and manager is not None
        while True:
            job = jobs.get()
            if job is None or stopping.is_set():
                break
            while self.options.faults.hang and not stopping.is_set():
                time.sleep(0.02)
            if stopping.is_set():
                job.future.set_exception(ConnectionAbortedError("the node stopped"))
                break
            manager.load_delay = self.options.faults.load_delay
            manager.unload_delay = self.options.faults.unload_delay
            try:
                job.future.set_result(_run(manager, job.method, job.params))
            except GeyserError as exc:
                job.future.set_exception(exc)
        while True:  # callers still waiting get no answer: their connection closes
            try:
                left = jobs.get_nowait()
            except queue.Empty:
                return
            if left is not None:
                left.future.set_exception(ConnectionAbortedError("the node stopped"))

    def _dispatch(self, method: str, params: tuple[str, ...]) -> object:
        """The admin RPC method: "No geyser plugin service" without a worker, else a job
        on the channel and a wait for its answer, without a timeout."""
        faults = self.options.faults
        if faults.error_rate and self._random.random() < faults.error_rate:
            self._log(method, params, "injected")
            raise MethodError(INJECTED_ERROR)
        jobs = self._jobs
        if jobs is None:
            self._log(method, params, "No geyser plugin service")
            raise MethodError(RpcError(-32600, "No geyser plugin service"))
        job = _Job(method, params)
        jobs.put(job)
        try:
            result = job.future.result()
        except GeyserError as exc:
            self._log(method, params, exc.message)
            raise MethodError(RpcError(exc.code, exc.message)) from None
        self._log(method, params, "ok", result)
        return result

    def _log(self, method: str, params: tuple[str, ...], outcome: str,
             result: object = None) -> None:
        self.requests.append(LoggedCall(time.time(), method, params, outcome, result))

    # -- connections ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        listener, stopping = self._listener, self._stopping
        assert listener is not None
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn,),
                             name="agave-admin-rpc-conn", daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        decoder = StreamDecoder()
        slots = threading.Semaphore(CLIENT_BUFFER_SIZE)
        write_lock = threading.Lock()
        try:
            while not self._stopping.is_set():
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    break
                if not data:
                    break
                for frame in decoder.feed(data):
                    slots.acquire()  # try_buffer_unordered(5): stop reading while full
                    threading.Thread(target=self._serve_frame,
                                     args=(conn, frame, slots, write_lock),
                                     name="agave-admin-rpc-call", daemon=True).start()
        finally:
            for _ in range(CLIENT_BUFFER_SIZE):  # let calls in flight answer first
                slots.acquire()
            self._close(conn)

    def _serve_frame(self, conn: socket.socket, frame: str, slots: threading.Semaphore,
                     write_lock: threading.Lock) -> None:
        try:
            faults = self.options.faults
            if faults.latency_ms:
                time.sleep(faults.latency_ms / 1000)
            if faults.drop_rate and self._random.random() < faults.drop_rate:
                self._log("", (), "dropped")
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return
            try:
                line = respond(frame, self._dispatch)
            except ConnectionAbortedError:
                return  # the node stopped while the call waited
            if line is None:
                return
            with write_lock, contextlib.suppress(OSError):
                conn.sendall(line.encode("utf-8") + b"\n")
        finally:
            slots.release()

    def _close(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
        with contextlib.suppress(OSError):
            conn.close()


def _run(manager: GeyserPluginManager, method: str, params: tuple[str, ...]) -> object:
    """`start_manager_rpc_handler`'s match on the request."""
    if method == "listPlugins":
        return manager.names()
    if method == "loadPlugin":
        return manager.load(params[0])
    if method == "unloadPlugin":
        manager.unload(params[0])
        return None
    manager.reload(params[0], params[1])
    return None
