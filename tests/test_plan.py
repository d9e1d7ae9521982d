"""The planner, without a server: stories first, then properties over random worlds."""

from __future__ import annotations

import pickle
import subprocess
import sys

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from reconciler.desired import Desired, DesiredPlugin, Problem
from reconciler.ledger import Entry, Intent, Ledger
from reconciler.noderules import AGAVE, SNARKOS
from reconciler.plan import Action, Plan, Policy, Prune, plan, statuses

NAMED = ("a", "b", "c")
UNNAMED = ("u1", "u2")  # their libraries name them: libu1.so -> "u1"
FOREIGN = ("x", "y")  # loaded by someone else


def plugin(stem: str, named: bool = True, config: str = "c0", library: str = "l0",
           file: str | None = None) -> DesiredPlugin:
    return DesiredPlugin(file or f"/conf/{stem}.json5", stem if named else None,
                         f"/lib/lib{stem}.so", config, library)


def entry(stem: str, config: str = "c0", library: str = "l0",
          file: str | None = None) -> Entry:
    return Entry(stem, file or f"/conf/{stem}.json5", config, library, f"/lib/lib{stem}.so", 0)


def desired(*plugins: DesiredPlugin, invalid: tuple[str, ...] = ()) -> Desired:
    return Desired("/conf", tuple(plugins), tuple(Problem(f, "broken") for f in invalid))


def actions(p: Plan) -> list[tuple[str, str | None]]:
    return [(c.action.value, c.name) for c in p.changes]


# -- stories ---------------------------------------------------------------------------
def test_new_file_loads_and_unknown_names_wait_for_the_node():
    p = plan(desired(plugin("a"), plugin("u1", named=False)), [], Ledger.of())
    assert actions(p) == [("load", "a"), ("load", None)]
    assert p.changes[1].label == "(known after apply)"


def test_changed_config_or_library_is_a_replace_with_its_reason():
    ledger = Ledger.of([entry("a"), entry("b")])
    p = plan(desired(plugin("a", config="c1"), plugin("b", library="l1")), ["a", "b"], ledger)
    assert [(c.action, c.reason) for c in p.changes] == [
        (Action.REPLACE, "config changed"), (Action.REPLACE, "library changed")]


def test_on_agave_a_library_rebuilt_in_place_is_held_not_replaced():
    """dlopen of a path already loaded returns the old code: a reload would report a new
    library that never ran. A new version at its own path is a replace."""
    ledger = Ledger.of([entry("a"), entry("b")])
    moved = DesiredPlugin("/conf/b.json5", "b", "/lib/libb-2.so", "c1", "l1")
    p = plan(desired(plugin("a", library="l1"), moved), ["a", "b"], ledger, rules=AGAVE)
    assert actions(p) == [("replace", "b")]
    assert [(h.name, h.state) for h in p.held] == [("a", "rebuilt-in-place")]
    assert "install each version under its own path" in p.held[0].reason.lower()
    assert [(r.name, r.state) for r in statuses(p)] == [("a", "rebuilt-in-place"),
                                                        ("b", "pending-replace")]
    # snarkOS's rules replace it, as before.
    assert actions(plan(desired(plugin("a", library="l1")), ["a"], Ledger.of([entry("a")]),
                        rules=SNARKOS)) == [("replace", "a")]


def test_removed_file_unloads_only_what_we_loaded():
    p = plan(desired(), ["a", "x"], Ledger.of([entry("a")]), Policy(allow_empty=True))
    assert actions(p) == [("unload", "a")]
    assert p.unmanaged == ("x",)


def test_a_broken_file_protects_its_plugin():
    p = plan(desired(invalid=("/conf/a.json5",)), ["a"], Ledger.of([entry("a")]))
    assert p.changes == ()
    assert [r.state for r in statuses(p)] == ["invalid"]


def test_live_and_declared_but_unmanaged_is_adopted():
    p = plan(desired(plugin("a")), ["a"], Ledger.of())
    assert actions(p) == [("adopt", "a")]


def test_managed_but_gone_everywhere_is_forgotten():
    p = plan(desired(), [], Ledger.of([entry("a")]))
    assert actions(p) == [("forget", "a")]


def test_a_restart_that_dropped_a_plugin_reloads_it():
    p = plan(desired(plugin("a")), [], Ledger.of([entry("a")]))
    assert actions(p) == [("load", "a")]
    assert "restarted" in p.changes[0].reason


def test_unnamed_config_is_tracked_by_its_file():
    ledger = Ledger.of([entry("u1")])
    assert plan(desired(plugin("u1", named=False)), ["u1"], ledger).changes == ()
    p = plan(desired(plugin("u1", named=False, config="c1")), ["u1"], ledger)
    assert actions(p) == [("replace", "u1")]


def test_renamed_plugin_unloads_the_old_name_before_loading_the_new():
    ledger = Ledger.of([entry("a")])
    renamed = DesiredPlugin("/conf/a.json5", "b", "/lib/liba.so", "c1", "l0")
    assert actions(plan(desired(renamed), ["a"], ledger)) == [("unload", "a"), ("load", "b")]


def test_prune_policies():
    world = (desired(), ["a", "x"], Ledger.of([entry("a")]))
    everything = Policy(Prune.ALL, allow_empty=True)
    assert actions(plan(*world, everything)) == [("unload", "a"), ("unload", "x")]
    nothing = plan(*world, Policy(Prune.NONE, allow_empty=True))
    assert nothing.changes == () and [c.name for c in nothing.held] == ["a"]


def test_prune_all_holds_back_while_a_file_is_invalid():
    p = plan(desired(invalid=("/conf/q.json5",)), ["x"], Ledger.of(), Policy(Prune.ALL))
    assert p.changes == () and [c.name for c in p.held] == ["x"]


def test_empty_directory_blocks_mass_unload_unless_allowed():
    world = (desired(), ["a", "b"], Ledger.of([entry("a"), entry("b")]))
    assert "--allow-empty" in plan(*world).blocked
    assert plan(*world, Policy(allow_empty=True)).blocked is None


def test_max_unloads_brake():
    world = (desired(plugin("c")), ["a", "b", "c"],
             Ledger.of([entry("a"), entry("b"), entry("c")]))
    assert "more than --max-unloads 1" in plan(*world, Policy(max_unloads=1)).blocked
    assert plan(*world, Policy(max_unloads=2)).blocked is None


def test_moved_config_file_is_replaced_so_the_node_reads_the_new_path():
    ledger = Ledger.of([entry("a", file="/conf/old.json5")])
    p = plan(desired(plugin("a")), ["a"], ledger)
    assert actions(p) == [("replace", "a")] and "moved" in p.changes[0].reason


def test_an_interrupted_load_of_a_deleted_file_is_settled():
    ledger = Ledger.of([], (Intent(7, "load", None, "/conf/u1.json5"),))
    p = plan(desired(plugin("a")), ["a", "u1"], ledger)
    assert ("forget", None) in actions(p)


def test_an_interrupted_load_of_a_file_whose_plugin_is_known_is_settled():
    ledger = Ledger.of([entry("u1")], (Intent(3, "load", None, "/conf/u1.json5"),))
    p = plan(desired(plugin("u1", named=False)), ["u1"], ledger)
    assert [(c.action, c.intent_seq) for c in p.changes] == [(Action.FORGET, 3)]


# -- properties ----------------------------------------------------------------------
@st.composite
def worlds(draw):
    plugins, invalid, entries = [], [], []
    for stem in NAMED + UNNAMED:
        file = draw(st.sampled_from([f"/conf/{stem}.json5", f"/conf/{stem}-moved.json5"]))
        kind = draw(st.sampled_from(["absent", "valid", "invalid"]))
        if kind == "valid":
            plugins.append(plugin(stem, stem in NAMED, draw(st.sampled_from(["c0", "c1"])),
                                  draw(st.sampled_from(["l0", "l1"])), file))
        elif kind == "invalid":
            invalid.append(file)
        if draw(st.booleans()):
            entries.append(entry(stem, draw(st.sampled_from(["c0", "c1"])),
                                 draw(st.sampled_from(["l0", "l1"])),
                                 draw(st.sampled_from([f"/conf/{stem}.json5",
                                                       f"/conf/{stem}-moved.json5"]))))
    live = draw(st.lists(st.sampled_from(NAMED + UNNAMED + FOREIGN), unique=True))
    policy = Policy(draw(st.sampled_from(list(Prune))), draw(st.booleans()),
                    draw(st.one_of(st.none(), st.integers(0, 4))))
    return desired(*plugins, invalid=tuple(invalid)), live, Ledger.of(entries), policy


def simulate(p: Plan, live: set[str], ledger: dict[str, Entry]) -> None:
    """A node and a ledger in memory, doing what apply() asks."""
    for change in p.changes:
        if change.action is Action.FORGET:
            ledger.pop(change.name, None)
        elif change.action is Action.ADOPT:
            ledger[change.name] = entry_of(change.desired, change.name)
        elif change.action is Action.UNLOAD:
            live.discard(change.name)
            ledger.pop(change.name, None)
        else:
            if change.action is Action.REPLACE:
                live.discard(change.entry.name)
                ledger.pop(change.entry.name, None)
            d = change.desired
            name = d.name or d.libpath.rsplit("/lib", 1)[1].split(".")[0]
            if d.name is None and name in live and name not in ledger:
                ledger[name] = entry_of(d, name)  # 422 on the same library: apply adopts
                continue
            assert name not in live, f"plan loads {name!r}, which is already live"
            live.add(name)
            ledger[name] = entry_of(d, name)


def entry_of(d: DesiredPlugin, name: str) -> Entry:
    return Entry(name, d.config_file, d.config_sha256, d.library_sha256, d.libpath, 0)


# -- the planner cannot do I/O: checked in fresh processes, where it can fail --------
# What design.md keeps out of the planner, its values and its views (the same list as the
# import contract in pyproject.toml, which `make test` runs as lint-imports).
IO_MODULES = ("requests", "fcntl", "threading", "socket", "watchdog", "json5",
              "reconciler.snarkosclient", "reconciler.agaveclient", "reconciler.apply",
              "reconciler.ledgerstore", "reconciler.configdir", "reconciler.daemon")
PURE_MODULES = ("reconciler.desired", "reconciler.ledger", "reconciler.plan",
                "reconciler.noderules",
                "reconciler.outcome", "reconciler.nodepath", "reconciler.configparse",
                "reconciler.render")


def loaded_by(*modules: str) -> list[str]:
    """The I/O modules a fresh interpreter holds after importing `modules`."""
    probe = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
             f"print(' '.join(m for m in {IO_MODULES!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    return run.stdout.split()


def test_importing_the_planner_and_its_views_loads_no_io_module():
    assert loaded_by(*PURE_MODULES) == []
    # The probe sees an I/O module when one is there: the pass itself loads them.
    assert {"fcntl", "reconciler.ledgerstore"} <= set(loaded_by("reconciler.apply"))
    assert "requests" in loaded_by("reconciler.snarkosclient")


# A fresh interpreter where I/O raises, armed before the planner is imported: while
# modules load, only reading module files is allowed (so an import that opens a socket,
# as `import requests` does, fails); while plan() runs, nothing is (no file, no listing,
# no socket, no process, no lazy import). It plans the worlds read from stdin.
NO_IO_CHILD = r"""
import importlib.machinery, pickle, sys
MODULE_FILES = tuple(importlib.machinery.all_suffixes())
IO_EVENTS = ("open", "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn",
             "os.spawn", "os.fork", "os.kill", "os.remove", "os.rename", "os.mkdir",
             "os.rmdir", "os.truncate", "os.chmod", "os.chown", "os.link", "os.symlink",
             "os.utime", "shutil.", "urllib.", "http.", "ctypes.", "mmap.", "fcntl.")
phase, done = ["importing"], []

def no_io(event, args):
    if phase[0] == "done":
        return
    if phase[0] == "planning" and event in ("import", "os.listdir", "os.scandir"):
        pass
    elif not event.startswith(IO_EVENTS):
        return
    elif (event == "open" and phase[0] == "importing" and isinstance(args[0], str)
            and args[0].endswith(MODULE_FILES)):
        return  # the import system reading a module
    done.append(f"while {phase[0]}: {event} {args!r}")  # kept: a caller may swallow the raise
    raise PermissionError(f"I/O while {phase[0]}: {event}")

sys.addaudithook(no_io)
worlds = pickle.loads(sys.stdin.buffer.read())
from reconciler.ledger import Ledger
from reconciler.plan import plan
phase[0] = "planning"
plans = [plan(d, live, Ledger.of(entries, pending), policy)
         for d, live, entries, pending, policy in worlds]
phase[0] = "done"
if done:
    sys.exit("the planner did I/O:\n" + "\n".join(done))
sys.stdout.buffer.write(pickle.dumps(plans))
"""


# No shrinking: any world shows I/O, and each example costs a process.
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(st.lists(worlds(), min_size=40, max_size=40))
def test_plan_does_no_io_and_gives_the_same_plan_where_io_raises(some):
    sent = [(d, live, tuple(ledger.entries.values()), ledger.pending, policy)
            for d, live, ledger, policy in some]
    child = subprocess.run([sys.executable, "-c", NO_IO_CHILD], input=pickle.dumps(sent),
                           capture_output=True, timeout=60)
    assert child.returncode == 0, child.stderr.decode()
    assert pickle.loads(child.stdout) == [plan(*world) for world in some]


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_only_managed_plugins_are_unloaded_and_invalid_files_are_untouched(world):
    d, live, ledger, policy = world
    p = plan(d, live, ledger, policy)
    for change in p.changes:
        if change.action in (Action.UNLOAD, Action.REPLACE):
            assert change.name in live
            if policy.prune is not Prune.ALL or change.action is Action.REPLACE:
                assert change.name in ledger.entries
        assert change.config_file not in d.invalid_files
    protected = {e.name for e in ledger.entries.values() if e.config_file in d.invalid_files}
    touched = {c.name for c in p.changes if c.action in (Action.UNLOAD, Action.REPLACE)}
    assert not (protected - {p.name for p in d.plugins}) & touched
    if policy.prune is Prune.NONE:
        assert not any(c.action is Action.UNLOAD for c in p.changes)


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_applying_a_plan_converges_in_one_pass(world):
    d, live, ledger, policy = world
    first = plan(d, live, ledger, policy)
    if first.blocked:
        return
    state, book = set(live), dict(ledger.entries)
    simulate(first, state, book)
    second = plan(d, sorted(state), Ledger.of(list(book.values())), policy)
    assert second.changes == (), second.changes
    for p in d.plugins:
        assert (p.name or p.libpath.rsplit("/lib", 1)[1].split(".")[0]) in state
    # nothing foreign was touched unless the policy says so
    if policy.prune is not Prune.ALL:
        assert set(live) & set(FOREIGN) <= state


def test_plan_text_and_json_show_a_rebuilt_library_held_with_the_advice():
    from reconciler import render

    ledger = Ledger.of([entry("a")])
    p = plan(desired(plugin("a", library="l1")), ["a"], ledger, rules=AGAVE)
    text = render.plan_text(p, "/conf", "/ledger/admin.rpc", "mainnet")
    (line,) = [t for t in text.splitlines() if "rebuilt-in-place" in t]
    assert line.split()[:3] == ["-/+", "replace", "a"] and "a.json5" in line
    assert "(rebuilt-in-place: the library /lib/liba.so was rebuilt in place" in line
    assert "Install each version under its own path" in line
    assert text.endswith("No changes. The node matches the config directory.")
    (held,) = render.plan_json(p, "/ledger/admin.rpc", "mainnet")["held"]
    assert held["state"] == "rebuilt-in-place" and held["action"] == "replace"
    assert "Agave validator keeps the copy it already loaded" in held["reason"]


def test_a_held_change_without_a_state_says_only_why():
    from reconciler import render

    p = plan(desired(), ["a"], Ledger.of([entry("a")]), Policy(prune=Prune.NONE,
                                                               allow_empty=True))
    (held,) = render.plan_json(p, "n", "mainnet")["held"]
    assert held["state"] is None
    assert "(a.json5 no longer declares it)" in render.plan_text(p, "/conf", "n", "mainnet")


def test_on_agave_an_unnamed_plugin_renamed_by_its_library_is_one_replace():
    """Yellowstone's name changes with each release and its config has no `name`: the
    new version at its own path is one replace of the file's plugin."""
    ledger = Ledger.of([Entry("yellowstone-grpc-geyser-1", "/conf/ys.json", "c0", "l0",
                              "/lib/libys-1.so", 0)])
    upgraded = DesiredPlugin("/conf/ys.json", None, "/lib/libys-2.so", "c1", "l1")
    p = plan(desired(upgraded), ["yellowstone-grpc-geyser-1"], ledger, rules=AGAVE)
    assert actions(p) == [("replace", "yellowstone-grpc-geyser-1")] and p.held == ()
