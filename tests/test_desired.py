"""Reading the config directory: which files count, and every problem named precisely."""

from __future__ import annotations

import json
import os
import socket

import pytest

from reconciler.configdir import DirectoryReader
from reconciler.desired import is_config_name
from reconciler.errors import ConfigDirError


def read(ws):
    return DirectoryReader().read(ws.conf)


def only_problem(desired):
    assert len(desired.invalid) == 1, desired.invalid
    return desired.invalid[0]


@pytest.mark.parametrize("name, counts", [
    ("a.json5", True), ("a.json", True), (".hidden.json5", False), (".#a.json5", False),
    ("a.json5~", False), ("a.json5.swp", False), ("a.json5.tmp", False), ("a.yaml", False),
    ("#a.json5#", False),
])
def test_which_files_are_configs(name, counts):
    assert is_config_name(name) is counts


def test_a_valid_directory(ws):
    ws.config("postgres.json5", name="postgres", extra='connection_string: "postgres://u:p@h/db"')
    ws.config("metrics.json", raw='{"libpath": "../libs/libmetrics.so", "name": "metrics"}')
    ws.library("metrics")
    desired = read(ws)
    assert [p.name for p in desired.plugins] == ["metrics", "postgres"]
    assert desired.invalid == () and desired.warnings == ()
    plugin = desired.plugins[1]
    assert plugin.libpath == str(ws.libs / "libpostgres.so")
    assert len(plugin.config_sha256) == 64 and len(plugin.library_sha256) == 64


def test_a_config_without_name_is_valid_with_a_warning(ws):
    ws.config("metrics.json5")
    desired = read(ws)
    assert desired.plugins[0].name is None
    assert "known only after it is loaded" in desired.warnings[0].message


def test_json5_error_names_file_line_and_column(ws):
    ws.config("broken.json5", raw='{\n  libpath: "x",\n  name: [1,,2],\n}')
    problem = only_problem(read(ws))
    assert (problem.line, problem.column) == (3, 12)
    assert str(problem).startswith(f"{ws.conf / 'broken.json5'}:3:12: invalid JSON5")


@pytest.mark.parametrize("raw, message", [
    ("[1, 2]", "must be an object, not an array"),
    ('"x"', "must be an object, not a string"),
    ("{}", "`libpath` is required"),
    ('{libpath: ""}', "`libpath` is required"),
    ("{libpath: 7}", "`libpath` is required"),
    ('{libpath: "../libs/libnope.so"}', "not found"),
    ('{libpath: "../libs"}', "is not a regular file"),
    ('{libpath: "../libs/liba.so", name: ""}', "`name` must be a non-empty string"),
    ('{libpath: "../libs/liba.so", name: "a\\u0007b"}', "without control characters"),
    ('{libpath: "../libs/liba.so", name: 3}', "`name` must be a non-empty string"),
    ("", "the file is empty"),
    ("[" * 100_000, "nested too deeply"),
])
def test_each_problem_is_named(ws, raw, message):
    ws.library("a")
    ws.config("x.json5", raw=raw)
    assert message in only_problem(read(ws)).message


def test_not_utf8(ws):
    (ws.conf / "x.json5").write_bytes(b'{libpath: "\xff"}')
    problem = only_problem(read(ws))
    assert "not UTF-8" in problem.message and (problem.line, problem.column) == (1, 12)


def test_over_one_mib(ws):
    (ws.conf / "x.json5").write_text('{libpath: "a", pad: "' + "x" * (1 << 20) + '"}')
    assert "at most 1048576 bytes" in only_problem(read(ws)).message


def test_unreadable_library(ws):
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    lib = ws.library("a")
    lib.chmod(0)
    ws.config("a.json5", lib="a")
    assert "not readable" in only_problem(read(ws)).message


def test_duplicate_names_make_both_files_invalid(ws):
    ws.config("a.json5", name="same", lib="a")
    ws.config("b.json5", name="same", lib="b")
    desired = read(ws)
    assert desired.plugins == ()
    assert {p.file for p in desired.invalid} == {str(ws.conf / "a.json5"),
                                                 str(ws.conf / "b.json5")}
    assert all("also claimed by" in p.message for p in desired.invalid)


def test_two_files_on_one_library_are_both_invalid(ws):
    ws.config("a.json5", name="a", lib="shared")
    ws.config("b.json5", name="b", lib="shared")
    assert len(read(ws).invalid) == 2


def _pair(ws, first: str, second: str, reader: DirectoryReader | None = None):
    ws.library("shared")
    ws.config("a.json5", raw=f'{{libpath: "{first}", name: "a"}}')
    ws.config("b.json5", raw=f'{{libpath: "{second}", name: "b"}}')
    return (reader or DirectoryReader()).read(ws.conf)


@pytest.mark.parametrize("second", [
    "../libs/./libshared.so", "./../libs/libshared.so", "../libs//libshared.so",
    "..//libs/././libshared.so",
])
def test_one_library_as_the_node_compares_paths_flags_both(ws, second):
    """The node joins libpath onto the config's folder and compares Path components:
    `.` and repeated separators vanish, so it would refuse the second file."""
    desired = _pair(ws, "../libs/libshared.so", second)
    assert desired.plugins == ()
    assert {p.file for p in desired.invalid} == {str(ws.conf / "a.json5"),
                                                 str(ws.conf / "b.json5")}
    assert all("library" in p.message and "also claimed by" in p.message
               for p in desired.invalid)


@pytest.mark.parametrize("second", [
    "../libs/../libs/libshared.so", "../plugins.d/../libs/libshared.so", "LIBS_ABSOLUTE",
])
def test_the_same_file_by_a_path_the_node_compares_unequal_is_not_flagged(ws, second):
    """`..` is kept, and an absolute path is not the relative one: the node loads both,
    so flagging them would refuse what the node accepts."""
    second = second.replace("LIBS_ABSOLUTE", str(ws.libs / "libshared.so"))
    desired = _pair(ws, "../libs/libshared.so", second)
    assert desired.invalid == ()
    assert sorted(p.name for p in desired.plugins) == ["a", "b"]
    assert len({p.library_sha256 for p in desired.plugins}) == 1  # one file, hashed once


def test_duplicate_libraries_are_judged_where_the_node_sees_the_configs(ws):
    """In a container the node reads the configs under another folder: a relative
    libpath joins onto *that* folder, which an absolute libpath may then equal."""
    def seen_by_node(path: str) -> str:
        return "/node/plugins.d/" + os.path.basename(path)

    host = _pair(ws, "libshared.so", "/node/plugins.d/libshared.so",
                 DirectoryReader(check_libraries=False))
    assert host.invalid == ()
    os.remove(ws.conf / "a.json5")
    os.remove(ws.conf / "b.json5")
    node = _pair(ws, "libshared.so", "/node/plugins.d/libshared.so",
                 DirectoryReader(check_libraries=False, node_path=seen_by_node))
    assert len(node.invalid) == 2 and node.plugins == ()


def test_a_cache_from_another_parse_is_not_reused(ws):
    """Summaries made by the old parse may read a file differently (`// x\\r`)."""
    import json

    ws.state.mkdir()
    cache = ws.state / "cache.json"
    ws.library("a")
    ws.library("b")
    ws.config("x.json5", raw='{libpath: "../libs/liba.so", // old\r libpath: "../libs/libb.so"}')
    DirectoryReader(cache_path=cache).read(ws.conf)
    data = json.loads(cache.read_text())
    (summary,) = data["configs"].values()
    summary["fields"]["libpath"] = "../libs/liba.so"  # what the old parse read
    del data["parse"]
    cache.write_text(json.dumps(data))
    (plugin,) = DirectoryReader(cache_path=cache).read(ws.conf).plugins
    assert plugin.libpath == str(ws.libs / "libb.so")


def test_symlinks_are_followed_like_a_configmap_volume(ws):
    data = ws.conf / "..2026_11_25_01_00_00.1"
    data.mkdir()
    ws.library("postgres")
    (data / "postgres.json5").write_text('{libpath: "../libs/libpostgres.so", name: "postgres"}')
    (ws.conf / "..data").symlink_to(data.name)
    (ws.conf / "postgres.json5").symlink_to("..data/postgres.json5")
    desired = read(ws)
    assert [p.name for p in desired.plugins] == ["postgres"]
    assert desired.plugins[0].config_file == str(ws.conf / "postgres.json5")


def test_dangling_symlink_protects_instead_of_vanishing(ws):
    (ws.conf / "gone.json5").symlink_to("nowhere.json5")
    assert "vanished" in only_problem(read(ws)).message


def test_a_fifo_or_socket_is_refused_without_blocking(ws):
    os.mkfifo(ws.conf / "fifo.json5")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ws.conf / "sock.json5"))
    try:
        desired = read(ws)
    finally:
        sock.close()
    assert sorted(p.message for p in desired.invalid) == ["not a regular file"] * 2


def test_missing_or_unusable_directory_is_an_error(ws, tmp_path):
    with pytest.raises(ConfigDirError, match="does not exist"):
        DirectoryReader().read(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigDirError, match="is not a directory"):
        DirectoryReader().read(tmp_path / "file")


def test_library_hash_cache_sees_a_rebuild(ws):
    reader = DirectoryReader()
    ws.config("a.json5", name="a")
    before = reader.read(ws.conf).plugins[0].library_sha256
    assert reader.read(ws.conf).plugins[0].library_sha256 == before
    ws.library("a", b"rebuilt library, same path")
    assert reader.read(ws.conf).plugins[0].library_sha256 != before


def test_plain_json_and_json5_give_the_same_plugin(ws):
    ws.library("a")
    ws.config("a.json", raw='{"libpath": "../libs/liba.so", "name": "a"}')
    json_plugin = read(ws).plugins[0]
    os.remove(ws.conf / "a.json")
    ws.config("a.json", raw="{libpath: '../libs/liba.so', name: 'a', /* c */}")
    json5_plugin = read(ws).plugins[0]
    assert (json_plugin.name, json_plugin.libpath) == (json5_plugin.name, json5_plugin.libpath)


def test_the_parse_cache_is_shared_across_runs_and_holds_no_plugin_values(ws, monkeypatch):
    from reconciler import configparse

    ws.state.mkdir()
    cache = ws.state / "cache.json"
    ws.config("a.json5", name="a", extra='dsn: "postgres://u:hunter2@db/x"')
    ws.config("u.json5")
    first = DirectoryReader(cache_path=cache).read(ws.conf)
    assert cache.exists() and "hunter2" not in cache.read_text()
    assert cache.stat().st_mode & 0o077 == 0
    calls = []
    monkeypatch.setattr(configparse, "parse", lambda *a, **k: calls.append(a) or {})
    second = DirectoryReader(cache_path=cache).read(ws.conf)
    assert calls == [] and second == first  # nothing parsed again, the same result
    monkeypatch.undo()
    ws.config("a.json5", name="renamed")  # new bytes: parsed again, whatever the cache says
    assert {p.name for p in DirectoryReader(cache_path=cache).read(ws.conf).plugins} == {
        "renamed", None}


def test_a_corrupt_cache_is_ignored(ws):
    ws.state.mkdir()
    (ws.state / "cache.json").write_text("{not json")
    ws.config("a.json5", name="a")
    assert [p.name for p in DirectoryReader(cache_path=ws.state / "cache.json")
            .read(ws.conf).plugins] == ["a"]


def test_no_cache_is_written_where_there_is_no_state_dir(ws):
    ws.config("a.json5", name="a")
    DirectoryReader(cache_path=ws.state / "cache.json").read(ws.conf)
    assert not ws.state.exists()


def test_a_configmap_volume_root_is_0777_but_read_only_and_accepted(ws):
    """The kubelet mounts ConfigMap volumes read-only with a 0777 root: not writable."""
    from reconciler.configdir import Trust
    from reconciler.errors import UntrustedConfig

    ws.config("a.json5", name="a")
    os.chmod(ws.conf, 0o777)
    with pytest.raises(UntrustedConfig, match="world-writable"):
        DirectoryReader(Trust()).read(ws.conf)
    read_only = Trust(read_only=lambda path: path == str(ws.conf))
    assert [p.name for p in DirectoryReader(read_only).read(ws.conf).plugins] == ["a"]


def test_a_real_read_only_mount_with_a_0777_root(tmp_path):
    """Where the machine lets us mount (root in CI here), the same with a real tmpfs."""
    import shutil
    import subprocess

    mount = shutil.which("mount")
    point = tmp_path / "configmap"
    point.mkdir()
    if os.geteuid() != 0 or mount is None or subprocess.run(
            [mount, "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(point)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (point / "libx.so").write_bytes(b"x")
        (point / "x.json5").write_text('{libpath: "libx.so", name: "x"}')
        os.chmod(point / "x.json5", 0o644)
        assert subprocess.run([mount, "-o", "remount,ro", str(point)]).returncode == 0
        assert [p.name for p in DirectoryReader().read(point).plugins] == ["x"]
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_the_readers_caches_hold_only_what_the_last_read_used(ws):
    """The daemon keeps one reader for months while files change: every cache stays as
    large as the directory, not as the history of its versions."""
    reader = DirectoryReader(cache_path=ws.state / "cache.json")
    ws.state.mkdir(exist_ok=True)
    ws.config("steady.json5", name="steady")
    for version in range(300):
        ws.config("busy.json5", name="busy", extra=f"version: {version}")
        ws.config("broken.json5", raw=f"{{ version: {version}, oops")  # invalid, cached too
        lib = ws.library(f"rebuilt{version % 7}")
        ws.config("moving.json5", name="moving", lib=lib.stem[3:])
        desired = reader.read(ws.conf)
        assert len(desired.plugins) == 3 and len(desired.invalid) == 1
    sizes = {"summaries": len(reader._summaries), "parsed": len(reader._full),
             "checked": len(reader._checked), "libraries": len(reader._libraries)}
    assert max(sizes.values()) <= 4, sizes
    # the cache file shared by one-shot commands is bounded the same way
    assert len(json.loads((ws.state / "cache.json").read_text())["configs"]) == 4


# -- an Agave validator's rules (reconciler.noderules.AGAVE) ------------------------------
def read_agave(ws, **kw):
    from reconciler.noderules import AGAVE

    return DirectoryReader(rules=AGAVE, **kw).read(ws.conf)


def test_a_json_file_that_is_only_json5_warns_under_agave_with_line_and_column(ws):
    ws.library("geyser")
    ws.config("geyser.json", raw='{\n  "libpath": "../libs/libgeyser.so",\n'
                                  '  // the gRPC port\n  "grpc": {"address": "0.0.0.0:10000"}\n}')
    desired = read_agave(ws)
    assert desired.invalid == () and len(desired.plugins) == 1  # Agave reads JSON5: valid
    (warning,) = [w for w in desired.warnings if "strict JSON" in w.message]
    assert (warning.file, warning.line, warning.column) == (str(ws.conf / "geyser.json"), 3, 3)
    assert str(warning).startswith(f"{ws.conf / 'geyser.json'}:3:3: not strict JSON (")
    for words in ("Yellowstone gRPC", "on_load", "rename it to .json5", "write strict JSON"):
        assert words in warning.message
    assert [w for w in read(ws).warnings if "strict JSON" in w.message] == []  # snarkOS


@pytest.mark.parametrize("filename, raw, strict", [
    ("a.json5", '{libpath: "../libs/liba.so",}', True),  # .json5 says what it is
    ("a.json", '{"libpath": "../libs/liba.so"}', True),
    ("a.json", '{"libpath": "../libs/liba.so", "n": NaN}', False),
    ("a.json", '{"libpath": "../libs/liba.so", "n": "NaN", "m": -Infinity}', False),
    ("a.json", "{'libpath': '../libs/liba.so'}", False),
    ("a.json", '{"libpath": "../libs/liba.so",}', False),
])
def test_which_json_files_are_strict(ws, filename, raw, strict):
    ws.library("a")
    ws.config(filename, raw=raw)
    warned = [w for w in read_agave(ws).warnings if "strict JSON" in w.message]
    assert (warned == []) is strict, warned
    if not strict:
        assert warned[0].line == 1 and warned[0].column is not None


def test_a_nan_is_placed_outside_strings(ws):
    ws.library("a")
    ws.config("a.json", raw='{"libpath": "../libs/liba.so",\n "s": "NaN", "n": NaN}')
    (warning,) = [w for w in read_agave(ws).warnings if "strict JSON" in w.message]
    assert (warning.line, warning.column) == (2, 19) and "NaN is JSON5" in warning.message


def test_the_strict_verdict_is_cached_with_the_parse(ws, monkeypatch):
    from reconciler import configparse

    ws.state.mkdir()
    cache = ws.state / "cache.json"
    ws.library("a")
    ws.config("a.json", raw="{libpath: '../libs/liba.so'}")
    first = read_agave(ws, cache_path=cache)
    assert json.loads(cache.read_text())["parse"] == "configparse-2"
    monkeypatch.setattr(configparse, "parse", lambda *a, **k: pytest.fail("parsed again"))
    assert read_agave(ws, cache_path=cache) == first
    assert any("strict JSON" in w.message for w in first.warnings)


def test_under_agave_one_library_may_run_twice_under_two_names(ws):
    ws.library("shared")
    ws.config("a.json5", name="a", lib="shared")
    ws.config("b.json5", name="b", lib="shared")
    ws.config("c.json5", lib="shared")  # unnamed: the library's name, not a or b
    desired = read_agave(ws)
    assert desired.invalid == ()
    assert sorted(p.label for p in desired.plugins) == ["(known after apply)", "a", "b"]
    assert len(read(ws).invalid) == 3  # snarkOS: one plugin per library


def test_under_agave_two_unnamed_files_on_one_library_still_clash(ws):
    ws.library("shared")
    ws.config("a.json5", lib="shared")
    ws.config("b.json5", lib="shared")
    ws.config("named.json5", name="n", lib="shared")
    desired = read_agave(ws)
    assert [p.name for p in desired.plugins] == ["n"]
    assert sorted(p.file for p in desired.invalid) == [str(ws.conf / "a.json5"),
                                                      str(ws.conf / "b.json5")]
    problem = desired.invalid[0]
    assert f"also claimed by {ws.conf / 'b.json5'};" in problem.message  # not named.json5
    assert "neither file sets `name`" in problem.message and "same" in problem.message


def test_under_agave_a_config_without_name_is_normal_not_a_warning(ws):
    """Yellowstone forbids `name` in its config: warning on every plan about what the
    operator cannot change would be noise. snarkOS's plugins may carry one."""
    ws.config("geyser.json5")
    desired = read_agave(ws)
    assert desired.warnings == () and [p.name for p in desired.plugins] == [None]
    (snarkos,) = read(ws).warnings
    assert "set `name` to make plans exact" in snarkos.message
