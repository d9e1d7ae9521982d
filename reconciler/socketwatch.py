"""Noticing that a node behind a Unix socket restarted: its socket file was replaced.

An Agave validator removes a stale `<ledger>/admin.rpc` and binds a new one at every
start, and its run-time plugins are gone with the old process. The daemon should load
them again then, not at the next probe, so it watches the ledger directory with watchdog
(inotify), **not recursively**: the ledger holds RocksDB folders with hundreds of
thousands of files, and only its top level is ours to look at. Each event about the
socket's name is checked against the socket's identity, (inode, change time): the file
system may hand the new socket the inode just freed, but not the same change time too.

`check()`, called by the daemon's loop at every turn (at least twice a second), compares
the identity as well, so a missed or lost watch (the ledger directory created after us,
or replaced) costs half a second, not a probe interval; and it re-arms the watch when
the ledger directory (re)appears.

Events only say "the node may have restarted"; the pass reads everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger(__name__)

Identity = tuple[int, int, int]  # (device, inode, change time in ns)


def identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class _Handler(FileSystemEventHandler):
    def __init__(self, name: str, on_event: Callable[[], None]) -> None:
        self.name, self.on_event = name, on_event

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, getattr(event, "dest_path", "") or ""):
            if path and os.path.basename(os.fsdecode(path)) == self.name:
                self.on_event()
                return


class SocketWatch:
    """Calls `on_replaced()` once each time the socket at `path` is replaced by a new one
    (a node that went away is not a restart yet: its new socket will be)."""

    def __init__(self, path: Path, on_replaced: Callable[[], None],
                 enabled: bool = True) -> None:
        self.path = Path(os.path.abspath(path))
        self.on_replaced = on_replaced
        self.enabled = enabled
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        self._folder: tuple[int, int] | None = None
        self._seen = identity(self.path)
        self._lock = threading.Lock()  # the observer's thread and the loop both compare

    def start(self) -> None:
        """Starts the observer's thread (after the daemon has blocked its signals)."""
        if not self.enabled:
            return
        self._observer = Observer()
        self._observer.start()
        self.check()

    def check(self) -> None:
        """Compares the socket's identity; re-arms the watch when the ledger directory
        was replaced or has appeared."""
        self._rearm()
        self._compare()

    def _compare(self) -> None:
        now = identity(self.path)
        with self._lock:
            replaced = now is not None and now != self._seen
            self._seen = now
        if replaced:
            log.info("%s was replaced: the node restarted", self.path)
            self.on_replaced()

    def _rearm(self) -> None:
        if self._observer is None:
            return
        folder = self.path.parent
        try:
            st = os.stat(folder)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current == self._folder:
            return
        if self._watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._watch)
            self._watch = None
        self._folder = current
        if current is None:
            return
        try:
            self._watch = self._observer.schedule(_Handler(self.path.name, self._compare),
                                                  str(folder), recursive=False)
        except OSError as exc:
            log.warning("cannot watch %s for the node's restarts: %s; noticed within a "
                        "second instead", folder, exc)
            self._folder = None

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
