"""Writing state files so that a reader sees the old bytes or the new, never a mix.

One helper for every file the reconciler rewrites whole (the ledger's snapshot, rollback
copies, the config cache, the daemon record, saved plans): a temp file beside the target,
every byte written (os.write may write fewer bytes than asked; a full disk says so only
by a short count or ENOSPC), optionally fsync'd, then renamed over the target. When any
step fails the temp file is removed and the target keeps its previous contents, so a full
disk never leaves a truncated file in a state file's place.

Ownership: the service runs as its own (dynamic) user and owns the state directory. An
operator's `apply` as root works on the same files; every file it creates is handed to
the directory's owner, so the service can read and append to it afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

# Errors that mean "the file system is full for us": the operator frees space.
FULL = (errno.ENOSPC, errno.EDQUOT)


def owner_of(directory: Path) -> tuple[int, int] | None:
    """(uid, gid) to give new files in directory, or None when ours are right already."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def create(path: Path, flags: int) -> int:
    """Opens (creating 0600) a file in a state directory, handed to the directory's owner."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    owner = owner_of(path.parent)
    if owner is not None:
        try:
            os.fchown(fd, *owner)
        except OSError:
            os.close(fd)
            raise
    return fd


def keep_owner(path: Path) -> None:
    """A folder or file made in a state directory goes to the directory's owner too."""
    owner = owner_of(path.parent)
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def write_all(fd: int, data: bytes) -> None:
    """Every byte, or OSError: os.write returns a short count when the disk fills up
    mid-write (the next call then raises ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # not seen on regular files; never loop on it
            raise OSError(errno.EIO, "the write made no progress")
        view = view[written:]


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Replaces path with data (0600, the directory's owner). durable: fsync the file
    before the rename and the directory after it, so that a power cut leaves the old or
    the new file; without it (caches, rollback copies) a crash may lose the new one.
    Raises OSError; path is then untouched and no temp file is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = create(tmp, os.O_WRONLY | os.O_EXCL)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def reason(exc: OSError, path: Path) -> str:
    """An OSError from writing under path, in the operator's words: for a full disk, which
    file system is full (its mount point and device), since that is what to free."""
    if exc.errno in FULL:
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} on {device_of(path)}"
    return exc.strerror or str(exc)


def device_of(path: Path) -> str:
    """'<mount point> (<device>)' of the file system holding path, as well as can be told."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    mount = path
    with contextlib.suppress(OSError):
        dev = os.stat(path).st_dev
        while mount != mount.parent and os.stat(mount.parent).st_dev == dev:
            mount = mount.parent
    source = None
    with contextlib.suppress(OSError, ValueError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == str(mount):
                source = fields[0]  # the last line for a mount point is the one in use
    return f"{mount} ({source})" if source else str(mount)


def _unescape(field: str) -> str:
    """/proc/self/mounts writes a space as \\040 (and tab, newline, backslash alike)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
