"""The ledger survives crashes, refuses to guess when corrupt, and costs O(1) per action."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from reconciler.apply import Reconciler
from reconciler.errors import LedgerError
from reconciler.ledger import Entry
from reconciler.ledgerstore import LedgerStore
from reconciler.settings import Settings


def entry(name: str, config: str = "c0") -> Entry:
    return Entry(name, f"/conf/{name}.json5", config, "l0", f"/lib/lib{name}.so", 1.0)


def test_round_trip_through_journal_and_snapshot(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    seq = store.record_intent("load", "a", "/conf/a.json5", "c0", "l0", "/lib/liba.so")
    store.record_put(entry("a"), seq)
    store.record_put(entry("b"))
    store.record_remove("b")
    assert set(LedgerStore(tmp_path).load().entries) == {"a"}  # from the journal alone
    store.compact()
    assert json.loads((tmp_path / "ledger.json").read_text())["generation"] == 1
    assert (tmp_path / "ledger.journal").read_bytes() == b""
    reloaded = LedgerStore(tmp_path).load()
    assert reloaded.entries["a"] == entry("a") and reloaded.pending == ()


def test_a_crash_after_a_named_load_leaves_it_managed(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_intent("load", "a", "/conf/a.json5", "c0", "l0", "/lib/liba.so")
    # the process dies here: the call may or may not have reached the node
    after = LedgerStore(tmp_path).load()
    assert after.entries["a"].config_file == "/conf/a.json5"


def test_a_crash_after_an_unnamed_load_leaves_a_pending_intent(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_intent("load", None, "/conf/u.json5", "c0", "l0", "/lib/libu.so")
    after = LedgerStore(tmp_path).load()
    assert after.entries == {} and after.pending[0].config_file == "/conf/u.json5"
    later = LedgerStore(tmp_path)
    later.load()
    later.settle(after.pending[0].seq)
    assert LedgerStore(tmp_path).load().pending == ()


def test_a_torn_last_line_is_ignored(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_put(entry("a"))
    with open(tmp_path / "ledger.journal", "ab") as journal:
        journal.write(b'{"op":"put","seq":null,"entry":{"na')
    assert set(LedgerStore(tmp_path).load().entries) == {"a"}


def test_a_corrupt_snapshot_is_an_error_naming_it_not_a_reset(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(LedgerError) as caught:
        LedgerStore(tmp_path).load()
    assert str(tmp_path / "ledger.json") in str(caught.value)
    assert "was not reset" in str(caught.value)
    assert (tmp_path / "ledger.json").read_text() == "{not json"


def test_a_corrupt_journal_line_in_the_middle_is_an_error(tmp_path):
    (tmp_path / "ledger.journal").write_text('{"op":"begin","generation":0}\ngarbage\n{}\n')
    with pytest.raises(LedgerError, match="line 2 is not JSON"):
        LedgerStore(tmp_path).load()


def test_a_journal_older_than_the_snapshot_is_not_replayed(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_put(entry("a"))
    journal = (tmp_path / "ledger.journal").read_bytes()
    store.record_remove("a")
    store.compact()
    # a crash between the snapshot's rename and the journal's truncation:
    (tmp_path / "ledger.journal").write_bytes(journal)
    assert LedgerStore(tmp_path).load().entries == {}


def test_events_after_a_stale_journal_are_not_lost(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_put(entry("a"))
    journal = (tmp_path / "ledger.journal").read_bytes()
    store.compact()
    (tmp_path / "ledger.journal").write_bytes(journal)  # the crash left the old journal
    next_process = LedgerStore(tmp_path)
    next_process.load()
    next_process.record_put(entry("b"))
    # nothing compacted yet: b lives only in the journal, and must be replayed
    assert set(LedgerStore(tmp_path).load().entries) == {"a", "b"}


def test_each_action_appends_one_line_and_never_rewrites_the_snapshot(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_put(entry("seed"))
    store.compact()
    snapshot = os.stat(tmp_path / "ledger.json")
    for i in range(200):
        store.record_put(entry(f"p{i}"))
    assert os.stat(tmp_path / "ledger.json").st_mtime_ns == snapshot.st_mtime_ns
    lines = (tmp_path / "ledger.journal").read_bytes().splitlines()
    assert len(lines) == 201  # "begin" and one line per action
    assert max(len(line) for line in lines[1:]) < 400  # a line does not grow with the ledger


def test_files_are_private(tmp_path):
    store = LedgerStore(tmp_path / "state")
    store.load()
    store.record_put(entry("a"))
    store.compact()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "ledger.json").stat().st_mode & 0o777 == 0o600


def test_recording_a_files_plugin_settles_its_interrupted_loads(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_intent("load", None, "/conf/u.json5")  # killed here, twice
    store.record_intent("load", None, "/conf/u.json5")
    seq = store.record_intent("load", None, "/conf/u.json5")
    store.record_put(Entry("u", "/conf/u.json5", "c0", "l0", "/lib/libu.so", 1.0), seq)
    assert LedgerStore(tmp_path).load().pending == ()


def test_an_append_after_a_torn_last_line_starts_on_a_line_of_its_own(tmp_path):
    store = LedgerStore(tmp_path)
    store.load()
    store.record_put(entry("a"))
    with open(tmp_path / "ledger.journal", "ab") as journal:
        journal.write(b'{"op":"put","seq":null,"entry":{"na')  # the process died here
    next_process = LedgerStore(tmp_path)
    next_process.load()
    next_process.record_put(entry("b"))
    assert set(LedgerStore(tmp_path).load().entries) == {"a", "b"}


def flushes(monkeypatch, under: Path) -> list[str]:
    """The names of the threads that flushed a file under `under` to disk (the real flush
    still runs). Only this test's files count: a ledger thread of an earlier test in the
    same process may still be flushing its own."""
    calls: list[str] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
                calls.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    return calls


def test_an_intent_is_on_disk_before_the_call_when_the_node_is_elsewhere(tmp_path,
                                                                         monkeypatch):
    calls = flushes(monkeypatch, tmp_path)
    store = Reconciler(Settings(tmp_path, node_url="http://10.20.30.40:3030",
                                state_dir=tmp_path / "state")).store
    store.load()
    store.record_intent("load", "a", "/conf/a.json5")
    assert calls == [threading.current_thread().name]  # before record_intent returned
    store.record_put(entry("a"), 0)
    assert len(calls) == 1  # an outcome is not flushed: its intent already is
    store.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:3030", "http://localhost:3030",
                                 "http://[::1]:3030"])
def test_on_this_host_the_intent_is_flushed_during_the_call(tmp_path, monkeypatch, url):
    """A power cut here also clears the node's run-time plugins: the call need not wait."""
    calls = flushes(monkeypatch, tmp_path)
    with Reconciler(Settings(tmp_path, node_url=url, state_dir=tmp_path / "state")) as r:
        r.store.load()
        r.store.record_intent("load", "a", "/conf/a.json5")
        r.store.compact()  # waits for the flush
        assert calls == ["ledger"]


def test_closing_the_pass_runner_stops_the_ledger_thread(tmp_path):
    before = {t for t in threading.enumerate() if t.name == "ledger"}
    with Reconciler(Settings(tmp_path, state_dir=tmp_path / "state")) as reconciler:
        reconciler.store.load()
        reconciler.store.record_intent("load", "a", "/conf/a.json5")
        reconciler.store.save_copy("c" * 64, {"libpath": "/lib/liba.so"})
    assert {t for t in threading.enumerate() if t.name == "ledger"} == before
    assert (tmp_path / "state" / "configs" / f"{'c' * 64}.json").exists()
