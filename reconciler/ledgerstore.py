"""The ledger: what this reconciler applied, so that it unloads only what it loaded.

On disk it is a snapshot (`ledger.json`, rewritten atomically once per pass) and an
append-only journal (`ledger.journal`, one JSON line per event). The intent of every node
call is written to the journal *before* the call: if this process dies between the call
and its record, replaying the intent still makes the plugin managed, so nothing is left
that nobody manages. A journal costs one append per action, where rewriting the whole
file after each of N loads would cost O(N^2).

When the intent reaches the disk depends on where the node is. A node on another host
keeps its plugins through a power cut of ours, so the intent is fsync'd before the call
(`sync_intents`). A node on this host (loopback) loses its run-time plugins in the same
power cut that would lose the flush, so there the intent is flushed by a background
thread while the call is in flight, and the call does not wait for the disk; compact()
waits for that flush.

The journal opens with the generation of the snapshot it extends; after a compaction
the snapshot's generation moves on, so a crash between the snapshot's rename and the
journal's truncation replays nothing twice.

A corrupt ledger is an error that names its path; it is never silently reset, since a
reset would turn every managed plugin into an unmanaged one. A write that fails (a full
disk) leaves the ledger as it was: every write is checked, a half-written journal line is
cut off again, and the snapshot is replaced only by a complete, fsync'd file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconciler.atomicfile import atomic_write, create, keep_owner, owner_of, reason, write_all
from reconciler.errors import LedgerError
from reconciler.ledger import FORMAT_VERSION, Entry, FailedReplace, Intent, Ledger

Event = dict[str, Any]


class LedgerStore:
    """The ledger's files under the state directory, and the lock that serialises passes.

    sync_intents: fsync each intent before the call it announces (a node on another
    host); otherwise they are flushed during the call (see the module's docstring)."""

    def __init__(self, state_dir: Path, sync_intents: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.snapshot_path = self.state_dir / "ledger.json"
        self.journal_path = self.state_dir / "ledger.journal"
        self.copies_dir = self.state_dir / "configs"
        self.sync_intents = sync_intents
        self._entries: dict[str, Entry] = {}
        self._pending: dict[int, Intent] = {}
        self._generation = 0
        self._seq = 0
        self._journal_fd: int | None = None
        self._journal_size = 0  # bytes of whole lines in the journal: where a torn one starts
        self._journal_current = False  # the journal on disk extends the snapshot we read
        self._background: _Background | None = None  # durability work, off the call path

    # -- reading ---------------------------------------------------------------
    def load(self) -> Ledger:
        self._close_journal()  # read again from disk: appends go on from what it holds
        self._entries, self._pending, self._generation = {}, {}, 0
        snapshot = self._read_snapshot()
        if snapshot is not None:
            self._generation = snapshot["generation"]
            for raw in snapshot["entries"]:
                entry = _entry(raw, self.snapshot_path)
                self._entries[entry.name] = entry
            for raw in snapshot.get("pending", []):
                intent = _intent(raw, self.snapshot_path)
                self._pending[intent.seq] = intent
        self._replay_journal()
        self._seq = max([0, *self._pending]) + 1
        return self.current()

    def current(self) -> Ledger:
        return Ledger.of(list(self._entries.values()), tuple(self._pending.values()))

    def _read_snapshot(self) -> dict[str, Any] | None:
        try:
            text = self.snapshot_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read the ledger {self.snapshot_path}: {exc}") from None
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"unknown format_version {data.get('format_version')!r}")
            if not isinstance(data.get("generation"), int) or not isinstance(
                    data.get("entries"), list):
                raise ValueError("missing generation or entries")
        except (ValueError, AttributeError) as exc:
            raise LedgerError(_corrupt(self.snapshot_path, str(exc))) from None
        snapshot: dict[str, Any] = data
        return snapshot

    def _replay_journal(self) -> None:
        self._journal_current = False
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger journal {self.journal_path}: "
                              f"{exc.strerror}") from None
        lines = raw.split(b"\n")
        # A torn last write from a crash: the call it announced never ran. Appends start
        # where it starts, or they would join it into a line that is not JSON.
        torn = lines.pop()
        self._journal_size = len(raw) - len(torn)
        events = []
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                raise LedgerError(_corrupt(self.journal_path, f"line {number} is not JSON"))\
                    from None
        if not events or events[0].get("op") != "begin":
            return
        if events[0].get("generation") != self._generation:
            return  # written before the snapshot we read: already folded in
        self._journal_current = True
        for event in events[1:]:
            self._apply_event(event)

    def _apply_event(self, event: Event) -> None:
        op = event.get("op")
        seq: Any = event.get("seq")  # an int, or None for events no intent announced
        try:
            if op == "intent":
                intent = _intent(event, self.journal_path)
                self._pending[intent.seq] = intent
                if intent.action == "load" and intent.name is not None:
                    # Outcome unknown: manage it; the next pass confirms or forgets it.
                    self._entries[intent.name] = Entry(
                        intent.name, intent.config_file or "", intent.config_sha256 or "",
                        intent.library_sha256 or "", intent.libpath or "", intent.at)
                    self._pending.pop(intent.seq)
                elif intent.action == "unload":
                    self._pending.pop(intent.seq)  # the entry stays until confirmed gone
            elif op == "put":
                entry = _entry(event["entry"], self.journal_path)
                self._entries[entry.name] = entry
                self._pending.pop(seq, None)
                for other in [i.seq for i in self._pending.values()
                              if i.config_file == entry.config_file]:
                    del self._pending[other]  # that file's plugin is known now
            elif op == "remove":
                self._entries.pop(event["name"], None)
                self._pending.pop(seq, None)
            elif op == "settle":
                self._pending.pop(seq, None)
        except (KeyError, TypeError) as exc:
            raise LedgerError(_corrupt(self.journal_path, f"bad {op} event: {exc}")) from None

    # -- writing (under lock()) --------------------------------------------------
    def record_intent(self, action: str, name: str | None, config_file: str | None,
                      config_sha256: str | None = None, library_sha256: str | None = None,
                      libpath: str | None = None) -> int:
        """Journals a node call about to be made. Raises LedgerError (and the call must
        not be made) when it cannot be written."""
        seq, self._seq = self._seq, self._seq + 1
        intent = Intent(seq, action, name, config_file, config_sha256, library_sha256,
                        libpath, time.time())
        event = {"op": "intent", **_plain(intent)}
        self._append(event, durable=True, more="; the node was not called")
        self._apply_event(event)
        return seq

    def record_put(self, entry: Entry, seq: int | None = None) -> None:
        self._write({"op": "put", "seq": seq, "entry": _plain(entry)})

    def record_remove(self, name: str, seq: int | None = None) -> None:
        self._write({"op": "remove", "seq": seq, "name": name})

    def settle(self, seq: int) -> None:
        """The call announced by intent `seq` is known not to have changed anything."""
        self._write({"op": "settle", "seq": seq})

    def _write(self, event: Event) -> None:
        # Not fsync'd: the intent before it already is, and replaying an intent errs on
        # the side of managing the plugin. compact() makes everything durable.
        self._append(event, durable=False)
        self._apply_event(event)

    def _append(self, event: Event, durable: bool, more: str = "") -> None:
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        fd = self._journal_fd if self._journal_fd is not None else self._open_journal(more)
        try:
            write_all(fd, line)  # before the call: a crash of ours cannot lose it
            if durable and self.sync_intents:
                os.fdatasync(fd)  # a node on another host outlives our power cut
        except OSError as exc:
            self._cut_back(fd)
            raise self._cannot_write(self.journal_path, exc, more) from None
        self._journal_size += len(line)
        if durable and not self.sync_intents:
            # A node on this host: flushed while the call is in flight (module docstring).
            self._worker.sync(fd, self.journal_path)

    def _cut_back(self, fd: int) -> None:
        """After a failed append: the journal ends with its last whole line again. If even
        that fails, the journal is closed; load() reads it again, torn line and all."""
        try:
            os.ftruncate(fd, self._journal_size)
        except OSError:
            self._close_journal()

    def _open_journal(self, more: str) -> int:
        self._ensure_dir()
        try:
            fd = create(self.journal_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise self._cannot_write(self.journal_path, exc, more) from None
        try:
            # A stale journal (or a torn last line) would hide the events appended to it.
            if self._journal_current:
                os.ftruncate(fd, self._journal_size)
            else:
                os.ftruncate(fd, 0)
                begin = json.dumps({"op": "begin", "generation": self._generation}).encode()
                write_all(fd, begin + b"\n")
                self._journal_size, self._journal_current = len(begin) + 1, True
        except OSError as exc:
            if not self._journal_current:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # no begin line: the next open writes it again
            os.close(fd)
            raise self._cannot_write(self.journal_path, exc, more) from None
        self._journal_fd = fd
        return fd

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            if self._background is not None:
                self._background.wait()  # it may be flushing this descriptor
            os.close(self._journal_fd)
            self._journal_fd = None

    def _cannot_write(self, path: Path, exc: OSError, more: str = "") -> LedgerError:
        """The operator's message for a failed ledger write, which left the ledger as it
        was: on a full disk, which file system to free space on."""
        return LedgerError(f"cannot write the ledger {path}: {reason(exc, path)} "
                           f"(the ledger is unchanged){more}")

    # -- copies of applied configs (what a failed replace rolls back to) -------------
    def copy_path(self, config_sha256: str) -> Path:
        return self.copies_dir / f"{config_sha256}.json"

    def save_copy(self, config_sha256: str, config: dict[str, Any]) -> None:
        """Kept private (0600 in a 0700 folder): plugin configs may hold passwords."""
        path = self.copy_path(config_sha256)
        if path.exists():
            return
        if not self.copies_dir.is_dir():
            self.copies_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            keep_owner(self.copies_dir)
        # Off the critical path, and not fsync'd: a copy lost to a power cut only means
        # no rollback for that config (and a same-host node lost its plugins anyway).
        self._worker.write(path, json.dumps(config, indent=1).encode() + b"\n")

    @property
    def _worker(self) -> _Background:
        if self._background is None:
            self._background = _Background()
        return self._background

    def _settle_background(self) -> None:
        if self._background is None:
            return
        failed = self._background.settle()
        if failed is not None:
            path, exc = failed
            raise LedgerError(f"cannot write {path}: {reason(exc, path)} (the ledger is "
                              "unchanged)")

    def _prune_copies(self) -> None:
        referenced = {f"{e.config_sha256}.json" for e in self._entries.values()}
        with contextlib.suppress(FileNotFoundError):
            for path in self.copies_dir.iterdir():
                if path.name not in referenced:
                    with contextlib.suppress(OSError):
                        path.unlink()

    @property
    def dirty(self) -> bool:
        """Whether this process journalled anything since the last compaction."""
        return self._journal_fd is not None

    def compact(self) -> None:
        """Folds the journal into a new snapshot: temp file, fsync, rename, fsync dir.
        When that fails (a full disk), the previous snapshot and the journal stay as they
        were, and together they still say everything: nothing is lost."""
        self._settle_background()
        self._ensure_dir()
        data = {
            "format_version": FORMAT_VERSION,
            "generation": self._generation + 1,
            "entries": [_plain(e) for e in sorted(self._entries.values(), key=lambda e: e.name)],
            "pending": [_plain(i) for i in self._pending.values()],
        }
        try:
            atomic_write(self.snapshot_path, json.dumps(data, indent=1).encode() + b"\n")
        except OSError as exc:
            raise self._cannot_write(self.snapshot_path, exc, "; its journal keeps this "
                                     "pass's records") from None
        self._generation += 1
        self._close_journal()
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.journal_path, 0)
        self._journal_current, self._journal_size = False, 0
        self._prune_copies()

    def close(self) -> None:
        """Waits for the background writes, stops their thread, closes the journal."""
        try:
            self._settle_background()
        finally:
            if self._background is not None:
                self._background.stop()
                self._background = None
            self._close_journal()

    @contextlib.contextmanager
    def lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """One pass at a time, across processes: `apply` waits for the daemon's pass."""
        self._ensure_dir()
        fd = create(self.state_dir / "lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            repair_ownership(self.state_dir)
            yield
        finally:
            with contextlib.suppress(OSError):
                repair_ownership(self.state_dir)  # what others wrote meanwhile
            os.close(fd)  # releases the lock

    def _ensure_dir(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LedgerError(f"cannot create the state directory {self.state_dir}: "
                              f"{exc.strerror}; set --state-dir") from None


def repair_ownership(state_dir: Path) -> None:
    """As root, under the lock (on taking it and on leaving it): any file in the state
    directory (and its copies folder) not owned by the directory's owner is given back to
    it; files left root-owned by an older version are repaired so. Costs nothing at all
    when not root."""
    owner = owner_of(state_dir)
    if owner is None:
        return
    for folder in (state_dir, state_dir / "configs"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if (st.st_uid, st.st_gid) != owner:
                    os.chown(entry.path, *owner, follow_symlinks=False)


class _Background:
    """One thread for the ledger's durability work, off the path of the node calls:
    flushing the journal (requests coalesce: one fdatasync covers every line written
    before it) and writing rollback copies. stop() ends the thread: a fleet `apply`
    makes one store per node and must not keep a thread for each."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._sync_fd: int | None = None
        self._sync_path = Path()
        self._copies: list[tuple[Path, bytes]] = []
        self._busy = False
        self._stopping = False
        self._error: tuple[Path, OSError] | None = None
        self._thread = threading.Thread(target=self._run, name="ledger", daemon=True)
        self._thread.start()

    def sync(self, fd: int, path: Path) -> None:
        with self._cond:
            self._sync_fd, self._sync_path = fd, path
            self._cond.notify_all()

    def write(self, path: Path, data: bytes) -> None:
        with self._cond:
            self._copies.append((path, data))
            self._cond.notify_all()

    def settle(self) -> tuple[Path, OSError] | None:
        """Waits until everything asked for is done; the first error, if any."""
        with self._cond:
            self.wait()
            error, self._error = self._error, None
            return error

    def wait(self) -> None:
        """Until everything asked for is done; errors are kept for settle()."""
        with self._cond:
            while self._busy or self._sync_fd is not None or self._copies:
                self._cond.wait()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._sync_fd is None and not self._copies and not self._stopping:
                    self._cond.wait()
                if self._sync_fd is None and not self._copies:
                    return  # stopping, and nothing left to do
                fd, self._sync_fd = self._sync_fd, None
                copies, self._copies = self._copies, []
                path = self._sync_path
                self._busy = True
            try:
                if fd is not None:
                    os.fdatasync(fd)
                for path, data in copies:
                    atomic_write(path, data, durable=False)
            except OSError as exc:
                self._error = self._error or (path, exc)
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def _plain(value: Entry | Intent) -> dict[str, Any]:
    """A ledger value as a dict of plain values: dataclasses.asdict deep-copies every
    field, which an append per action does not need."""
    plain = {name: getattr(value, name) for name in value.__dataclass_fields__}
    failed = plain.get("failed_replace")
    if failed is not None:
        plain["failed_replace"] = {name: getattr(failed, name)
                                   for name in failed.__dataclass_fields__}
    return plain


def _entry(raw: dict[str, Any], where: Path) -> Entry:
    try:
        fields = {k: raw[k] for k in Entry.__dataclass_fields__ if k != "failed_replace"}
        failed = raw.get("failed_replace")
        return Entry(**fields, failed_replace=FailedReplace(**failed) if failed else None)
    except (KeyError, TypeError) as exc:
        raise LedgerError(_corrupt(where, f"an entry lacks {exc}")) from None


def _intent(raw: dict[str, Any], where: Path) -> Intent:
    fields: dict[str, Any] = {k: raw.get(k) for k in Intent.__dataclass_fields__
                              if k in raw or k in ("seq", "action", "name", "config_file")}
    try:
        return Intent(**fields)
    except TypeError as exc:
        raise LedgerError(_corrupt(where, f"an intent is malformed: {exc}")) from None


def _corrupt(path: Path, why: str) -> str:
    return (f"the ledger {path} is corrupt ({why}). It was not reset: resetting would "
            "forget which plugins this reconciler manages. Inspect or move it aside; "
            "without it, plugins named by files are adopted and the rest become unmanaged")
