"""The reference node's life as a process: start, announce, restart on SIGUSR1 (run-time
plugins forgotten, as on a real restart), stop on SIGTERM or SIGINT. The `node` command
builds the options and hands them here; the servers themselves are
reconciler.refnode.server (snarkOS) and reconciler.refnode.agave (Agave)."""

from __future__ import annotations

import signal
import ssl
import sys
import threading
import types

from reconciler.errors import SettingsError
from reconciler.refnode.agave import AgaveNode, AgaveOptions
from reconciler.refnode.server import NodeOptions, RefNode, StartupError


def rest_address(rest: str) -> tuple[str, int]:
    """snarkOS's --rest HOST:PORT (an IPv6 host in brackets)."""
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"--rest must be HOST:PORT, not {rest!r}")
    return host.strip("[]"), int(port)


def serve(options: NodeOptions | AgaveOptions) -> None:
    """Runs one reference node in the foreground until SIGTERM or SIGINT."""
    refnode: RefNode | AgaveNode
    try:
        if isinstance(options, AgaveOptions):
            refnode = AgaveNode(options).start()
        else:
            refnode = RefNode(options).start()
    except (StartupError, OSError, ssl.SSLError) as exc:
        raise SettingsError(f"the reference node could not start: {exc}") from None
    stop = threading.Event()
    restart = threading.Event()

    def on_stop(_signum: int, _frame: types.FrameType | None) -> None:
        stop.set()

    def on_restart(_signum: int, _frame: types.FrameType | None) -> None:
        restart.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_restart)
    announce(refnode)
    while True:
        stop.wait()
        if not restart.is_set():
            break
        restart.clear()
        stop.clear()
        refnode.restart()
        announce(refnode)
    refnode.stop()


def announce(refnode: RefNode | AgaveNode) -> None:
    if isinstance(refnode, AgaveNode):
        announce_agave(refnode)
        return
    if not refnode.options.slipstream:
        manager = "built without the Slipstream plugin API"
    elif refnode.manager is None:
        manager = "no plugin manager"
    else:
        manager = f"{len(refnode.manager.names())} start-up plugin(s)"
    print(f"reference node listening on {refnode.url} ({refnode.options.network}, "
          f"{manager})", file=sys.stderr)
    if not refnode.options.nojwt:
        # snarkOS prints this line; so does its stand-in. The reconciler never prints tokens.
        print(f"Your one-time JWT token is {refnode.token}", file=sys.stderr)
    sys.stderr.flush()


def announce_agave(refnode: AgaveNode) -> None:
    if refnode.manager is None:
        service = "no geyser plugin service"
    else:
        service = f"{len(refnode.manager.names())} start-up plugin(s)"
        if refnode.options.always_enabled:
            service += ", always enabled"
    print(f"reference node listening on {refnode.socket_path} (agave admin RPC, {service})",
          file=sys.stderr)
    sys.stderr.flush()
