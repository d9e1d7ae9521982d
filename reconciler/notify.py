"""sd_notify without a systemd library: one datagram per message to $NOTIFY_SOCKET
(an abstract socket when the name starts with '@'). Does nothing outside systemd."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        if environ is None:
            environ = os.environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        message = "\n".join(lines).encode()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX,
                                                         socket.SOCK_DGRAM) as sock:
            sock.sendto(message, self.address)

    def extend_timeout(self, seconds: float) -> None:
        """While the first pass runs (before READY=1): systemd waits this much longer from
        now instead of killing the start at TimeoutStartSec=. A first pass of 1000 loads at
        10 req/s takes about 100 s, more than the default 90 s."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
