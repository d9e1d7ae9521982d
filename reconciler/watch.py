"""Noticing that the config directory may have changed.

Two independent sources, so that no single failure hides a change:
- watchdog (inotify on Linux) on the directory, recursively (libraries in subfolders,
  ConfigMap's timestamped folders), plus a watch on its parent that notices the directory
  itself being deleted and recreated;
- scan(): a stat fingerprint of the config files and the libraries they name. The daemon
  compares it every probe interval, which catches what inotify cannot report: a queue
  overflow (watchdog rebuilds its watches but queues no event), filesystems without
  inotify (NFS, some FUSE mounts; `--no-watch`), a watch lost with its directory.

Events only say "something may have changed"; the pass reads everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from reconciler.desired import is_config_name

log = logging.getLogger(__name__)

# scan()'s answer: compared for equality only. A stat mark per config file, after the
# directory's identity; or ("unreadable", errno).
Fingerprint = tuple[object, ...]

# Reads (ours and the node's) open and close files too; only writes are changes.
_CHANGES = {"created", "deleted", "modified", "moved", "closed"}


def relevant(event: FileSystemEvent, directory: str) -> bool:
    if event.event_type not in _CHANGES:
        return False
    for path in (event.src_path, getattr(event, "dest_path", "")):
        if not path:
            continue
        rel = os.path.relpath(os.fsdecode(path), directory)
        if rel == ".":
            if event.event_type in ("deleted", "moved"):
                return True  # the directory itself went away
            continue  # "modified" on the directory: its child's own event says what
        head = rel.split(os.sep, 1)[0]
        if head == "..":
            continue
        if os.sep in rel or head.startswith("..") or is_config_name(head):
            return True  # a config, ConfigMap's ..data swap, or a subfolder (libraries)
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, directory: str, on_change: Callable[[], None]) -> None:
        self.directory, self.on_change = directory, on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if relevant(event, self.directory):
            self.on_change()


class _ParentHandler(FileSystemEventHandler):
    def __init__(self, directory: str, on_change: Callable[[], None]) -> None:
        self.directory, self.on_change = directory, on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
        if self.directory in paths and event.event_type in _CHANGES:
            self.on_change()


class DirectoryWatch:
    def __init__(self, directory: str, on_change: Callable[[], None],
                 enabled: bool = True) -> None:
        self.directory = os.path.abspath(directory)
        self.on_change = on_change
        self.enabled = enabled
        self._observer: BaseObserver | None = None  # made by start(): it starts a thread
        self._watch: ObservedWatch | None = None
        self._identity: tuple[int, int] | None = None
        self._armed = False

    def start(self) -> None:
        """Starts the observer's threads. Not in __init__: the daemon blocks its signals
        before any thread starts, and threads inherit the mask of their creator."""
        if not self.enabled:
            return
        self._observer = Observer()
        self._observer.start()
        parent = os.path.dirname(self.directory)
        try:
            self._observer.schedule(_ParentHandler(self.directory, self.on_change), parent,
                                    recursive=False)
        except OSError as exc:
            log.warning("cannot watch %s for the config directory's re-creation: %s", parent,
                        exc)
        self.check()

    def check(self) -> None:
        """Re-arms the watch when the directory was replaced or has (re)appeared."""
        if self._observer is None:
            return
        try:
            st = os.stat(self.directory)
            identity = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        if identity == self._identity and (identity is None or self._alive()):
            return
        if self._watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(self._watch)
            self._watch = None
        self._identity = identity
        if identity is not None:
            try:
                self._watch = self._observer.schedule(
                    _Handler(self.directory, self.on_change), self.directory, recursive=True)
            except OSError as exc:
                log.warning("cannot watch %s: %s; relying on the scan", self.directory, exc)
                self._identity = None
                return
            log.info("watching %s", self.directory)
        if self._armed:
            self.on_change()  # replaced or back: what is in it now is news
        self._armed = True

    def _alive(self) -> bool:
        """An emitter stops itself when its directory is deleted."""
        if self._observer is None:
            return False
        return any(e.watch == self._watch and e.is_alive() for e in self._observer.emitters)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)


def scan(directory: str) -> Fingerprint:
    """A cheap fingerprint: one listdir and one stat per config file. (Libraries are
    checked against the reader's own cache: DirectoryReader.libraries_changed.)"""
    try:
        names = sorted(n for n in os.listdir(directory) if is_config_name(n))
        top = os.stat(directory)
    except OSError as exc:
        return ("unreadable", exc.errno)
    marks: list[object] = [(top.st_dev, top.st_ino)]
    for name in names:
        marks.append((name, *_stat(os.path.join(directory, name))))
    return tuple(marks)


def _stat(path: str) -> Fingerprint:
    try:
        st = os.stat(path)
    except OSError as exc:
        return ("missing", exc.errno)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
