"""A full disk under the state directory is an operator's problem to fix, never an outage
the tool makes: the pass fails and says which file system is full, the ledger stays as it
was, and once space is freed the daemon converges and starts again.

The state directory lives on a small tmpfs of its own, filled to the brim; the daemon is
the real process and the node the reference node."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import LedgerError
from reconciler.ledger import Entry
from reconciler.ledgerstore import LedgerStore
from tests.conftest import wait_for

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at the end (lazily if something still holds it)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): "
                    f"{done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount: Path, leave_pages: int = 0) -> Path:
    """Fills the file system to the brim, then frees `leave_pages` pages again."""
    spare = mount / "spare"
    if leave_pages:
        spare.write_bytes(b"s" * (leave_pages * PAGE))
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, PAGE, 1):
            while True:
                try:
                    os.write(fd, b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(mount).f_bavail == 0
    if leave_pages:
        spare.unlink()
    return filler


def leftovers(state: Path) -> list[str]:
    return sorted(p.name for p in state.iterdir() if p.name.endswith(".tmp"))


# -- the store alone --------------------------------------------------------------------
def entry(name: str) -> Entry:
    return Entry(name, f"/conf/{name}.json5", "c" * 64, "l" * 64, f"/lib/lib{name}.so", 1.0)


def test_a_snapshot_that_does_not_fit_leaves_the_previous_one(small_disk):
    state = small_disk / "state"
    store = LedgerStore(state)
    store.load()
    for i in range(40):  # a snapshot of several pages
        store.record_put(entry(f"p{i:02}"))
    store.compact()
    before = (state / "ledger.json").read_bytes()
    assert len(before) > 3 * PAGE
    store.record_put(entry("new"))  # the journal's first page: room for this line
    fill(small_disk, leave_pages=1)  # the new snapshot starts, then the disk is full
    with pytest.raises(LedgerError) as caught:
        store.compact()
    message = str(caught.value)
    assert f"no space left on {small_disk}" in message, message
    assert "(the ledger is unchanged)" in message
    assert (state / "ledger.json").read_bytes() == before
    assert leftovers(state) == []
    # and nothing is lost: the journal still holds the new entry
    assert "new" in LedgerStore(state).load().entries


def test_an_intent_that_does_not_fit_is_cut_off_and_stops_the_call(small_disk):
    state = small_disk / "state"
    store = LedgerStore(state)
    store.load()
    store.record_put(entry("a"))
    store.compact()
    fill(small_disk)
    with pytest.raises(LedgerError, match=r"no space left on .*\(the ledger is unchanged\); "
                                          r"the node was not called"):
        store.record_intent("load", "b", "/conf/b.json5")
    assert (state / "ledger.journal").read_bytes() == b""
    assert set(LedgerStore(state).load().entries) == {"a"}


def test_a_short_journal_append_is_cut_back_to_its_last_whole_line(small_disk):
    state = small_disk / "state"
    store = LedgerStore(state)
    store.load()
    store.record_put(entry("a"))
    journal = state / "ledger.journal"
    # Fill the journal's first page to within a few bytes, then the disk: the next line
    # is written in part (a short write), then ENOSPC.
    while PAGE - journal.stat().st_size > 300:
        store.record_put(entry("a"))
    whole = journal.read_bytes()
    fill(small_disk)
    with pytest.raises(LedgerError, match="no space left"):
        store.record_intent("load", "b", "/conf/b.json5", "c" * 64, "l" * 64, "/lib/libb.so")
    assert journal.read_bytes() == whole
    (small_disk / "filler").unlink()
    store.record_put(entry("c"))  # the same process goes on after a line that fits
    assert set(LedgerStore(state).load().entries) == {"a", "c"}


# -- the daemon -------------------------------------------------------------------------
@pytest.mark.parametrize("room", [0, 3], ids=["to-the-brim", "room-for-a-short-write"])
def test_a_full_disk_fails_the_pass_keeps_the_ledger_and_recovers(ws, small_disk, node,
                                                                  daemon, room, kind):
    ws.state = small_disk / "state"
    for i in range(30):  # a ledger of several pages: a rewrite cannot fit in two
        ws.config(f"p{i:02}.json5", name=f"p{i:02}")
    d = daemon(node)
    wait_for(lambda: {f"p{i:02}" for i in range(30)} <= set(node.names()),
             timeout=30, message="the first pass")
    wait_for(lambda: (d.record() or {}).get("summary", "").startswith("in sync"),
             message="the daemon in sync")
    before = (ws.state / "ledger.json").read_bytes()
    assert len(before) > 2 * PAGE

    filler = fill(small_disk, leave_pages=room)
    ws.config("late.json5", name="late")
    wait_for(lambda: "no space left on" in d.log, timeout=20, message="the pass to fail")
    line = next(x for x in d.lines if "no space left on" in x)
    assert f"no space left on {small_disk}" in line and "(the ledger is unchanged)" in line
    assert "Traceback" not in d.log
    assert (ws.state / "ledger.json").read_bytes() == before  # not a truncated rewrite
    json.loads(before)
    assert leftovers(ws.state) == []

    filler.unlink()
    wait_for(lambda: "late" in node.names(), timeout=20, message="late loaded")
    wait_for(lambda: "late" in LedgerStore(ws.state).load().entries, message="late managed")
    assert d.stop() == 0

    again = daemon(node)
    wait_for(lambda: (again.record() or {}).get("passes", 0) >= 1, timeout=20,
             message="the restarted daemon's first pass")
    assert "corrupt" not in again.log, again.log
    assert again.proc.poll() is None
    assert (again.record() or {}).get("summary", "").startswith("in sync"), again.record()
    assert leftovers(ws.state) == []
