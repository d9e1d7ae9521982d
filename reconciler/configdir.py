"""The desired state: what the config directory asks the node to run.

Reading is offline and never trusts a file: every problem becomes a Problem naming the
file (and line and column where there is one), and a file with a problem is *invalid*,
which protects its plugin instead of unloading it. A file that vanishes between the
listing and the read is invalid too, for one pass: an editor's delete-then-recreate save
must not unload anything.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import nodepath
from reconciler.atomicfile import atomic_write
from reconciler.desired import UNCHECKED, Desired, DesiredPlugin, Problem, is_config_name
from reconciler.errors import ConfigDirError, UntrustedConfig
from reconciler.noderules import SNARKOS, NodeRules

MAX_CONFIG_BYTES = 1 << 20
# Names the parse that made the cached config summaries; a new parse invalidates them.
# configparse-2: an object's summary also holds its strict-JSON verdict ("strict").
PARSE_VERSION = "configparse-2"
# What validation needs of one config, as the cache file keeps it (JSON): {"type", "fields",
# "strict": None or [message, line, column]} or {"error": [message, line, column]}.
Summary = dict[str, Any]


def mounted_read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@dataclass(frozen=True)
class Trust:
    allow_writable: bool = False  # --insecure-allow-writable: development only
    uid: int = field(default_factory=os.geteuid)
    read_only: Callable[[str], bool] = mounted_read_only

    def check(self, path: str, st: os.stat_result, what: str) -> tuple[str | None, str | None]:
        """(refusal, warning) for one directory or file. Mode bits mean nothing on a
        read-only mount: a Kubernetes ConfigMap volume's root is 0777, mounted read-only."""
        if self.allow_writable:
            return None, None
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_IWOTH and not self.read_only(path):
            return (f"{what} {path} is world-writable (mode {mode:o}): anyone on this host "
                    "could make the node load code", None)
        if st.st_uid not in (0, self.uid):
            return (f"{what} {path} is owned by uid {st.st_uid}, neither root nor the user "
                    f"running the reconciler (uid {self.uid})", None)
        if mode & stat.S_IWGRP and not mode & stat.S_IWOTH:
            return None, f"{what} {path} is group-writable (mode {mode:o}); chmod g-w it"
        return None, None


class _Invalid(Exception):
    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.problem = (message, line, column)


class DirectoryReader:
    """Reads a config directory into a Desired value.

    Parsing costs microseconds per file (configparse), and hashing a large library far
    more, so both are cached: what validation needs from a config (its type,
    `libpath`, `name`; never plugin-specific values) by the sha256 of its bytes, which are
    read and hashed on every pass and so can never be stale; and library hashes by the
    library's stat identity. The daemon keeps one reader; with `cache_path` (in the state
    directory) the CLI's one-shot commands share the caches across runs too.

    Every cache holds only what the last read used (its configs' digests, its
    libraries): a daemon that reads a directory of changing files for months keeps as
    many entries as the directory has files, not one per version ever seen.
    """

    def __init__(self, trust: Trust | None = None, cache_path: Path | None = None,
                 check_libraries: bool = True,
                 node_path: Callable[[str], str] | None = None,
                 rules: NodeRules = SNARKOS) -> None:
        self.trust = trust or Trust()
        # What the node does with a config (duplicate rule, strict `.json`): a value,
        # never the kind's name (reconciler.noderules).
        self.rules = rules
        # Where the node sees a config file (Settings.node_path): its duplicate-library
        # rule joins libpath onto that folder, which matters for absolute libpaths.
        self.node_path = node_path or (lambda path: path)
        self.check_libraries = check_libraries  # False: CI, where the .so files are absent
        self.cache_path = cache_path
        self._summaries: dict[str, Summary] = {}  # config sha256 -> what validation needs
        self._full: dict[str, object] = {}  # config sha256 -> parsed config, this process only
        # config sha256 -> (libpath, name), or why it is invalid
        self._checked: dict[str, tuple[str, str | None] | _Invalid] = {}
        self._libraries: dict[str, tuple[tuple[int, ...], str]] = {}
        self._dirty = False
        self._load_cache()

    def _load_cache(self) -> None:
        if self.cache_path is None:
            return
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
            # Summaries made by another parse are not what this one reads (the old parse
            # read `// x\r libpath: ...` differently): dropped, the libraries kept.
            if data.get("parse") == PARSE_VERSION:
                self._summaries = dict(data["configs"])
            self._libraries = {path: (tuple(v[:5]), v[5]) for path, v in
                               data["libraries"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            self._summaries, self._libraries = {}, {}  # a cache: rebuilt, never trusted

    def _forget_unused(self, used: set[str], libraries: set[str]) -> None:
        """Keeps in every cache only what this read used."""
        self._summaries = {k: v for k, v in self._summaries.items() if k in used}
        self._full = {k: v for k, v in self._full.items() if k in used}
        self._checked = {k: v for k, v in self._checked.items() if k in used}
        for path in [p for p in self._libraries if p not in libraries]:
            del self._libraries[path]  # only what this read used is watched for rebuilds
            self._dirty = True

    def _save_cache(self) -> None:
        if self.cache_path is None or not self._dirty or not self.cache_path.parent.is_dir():
            return
        data = {"parse": PARSE_VERSION, "configs": self._summaries,
                "libraries": {p: [*key, sha] for p, (key, sha) in self._libraries.items()}}
        # A cache: a failed write (a full disk) costs a re-parse next time, nothing more.
        with contextlib.suppress(OSError):
            atomic_write(self.cache_path, json.dumps(data, separators=(",", ":")).encode(),
                         durable=False)
            self._dirty = False

    def read(self, directory: Path | str) -> Desired:
        directory = os.path.abspath(directory)
        try:
            names = sorted(entry for entry in os.listdir(directory) if is_config_name(entry))
            directory_stat = os.stat(directory)
        except FileNotFoundError:
            raise ConfigDirError(f"config directory {directory} does not exist") from None
        except NotADirectoryError:
            raise ConfigDirError(f"config directory {directory} is not a directory") from None
        except PermissionError:
            raise ConfigDirError(f"config directory {directory} is not readable "
                                 "(permission denied)") from None
        plugins: list[DesiredPlugin] = []
        problems: list[Problem] = []
        warnings = self._check_trust(directory, directory_stat, names)
        used: set[str] = set()
        for name in names:
            path = os.path.join(directory, name)
            try:
                plugin = self._read_one(path, used)
            except _Invalid as bad:
                problems.append(Problem(path, *bad.problem))
                continue
            warnings += self._warnings(path, plugin)
            plugins.append(plugin)
        plugins, duplicates = _without_duplicates(plugins, self.rules)
        self._forget_unused(used, {p.libpath for p in plugins})
        self._save_cache()
        return Desired(directory, tuple(plugins), tuple(problems + duplicates), tuple(warnings))

    def _warnings(self, path: str, plugin: DesiredPlugin) -> list[Problem]:
        """What may go wrong with a valid file once the node has it."""
        warnings: list[Problem] = []
        if plugin.name is None and not self.rules.plugins_may_forbid_name:
            # Where plugins may forbid `name` (Yellowstone), its absence is normal: plans
            # show "(known after apply)" and the ledger records the name the node returns.
            warnings.append(Problem(path, "no `name`: the plugin's name is known only after "
                                    "it is loaded; set `name` to make plans exact"))
        strict = self._summaries.get(plugin.config_sha256, {}).get("strict")
        if self.rules.json_suffix_is_strict and path.endswith(".json") and strict:
            reason, line, column = strict
            warnings.append(Problem(
                path, f"not strict JSON ({reason}): the {self.rules.product} reads it (JSON5), "
                "but plugins such as Yellowstone gRPC re-read their config as strict JSON and "
                "would fail in on_load; rename it to .json5 if the plugin accepts JSON5, or "
                "write strict JSON", line, column))
        return warnings

    def _check_trust(self, directory: str, directory_stat: os.stat_result,
                     names: list[str]) -> list[Problem]:
        refusals: list[str] = []
        warnings: list[Problem] = []
        checks = [(directory, directory_stat, "the config directory")]
        real_directory = os.path.realpath(directory)
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(path)
                    if os.path.commonpath([target, real_directory]) != real_directory:
                        refusals.append(f"{path} is a symlink leading outside the config "
                                        f"directory (to {target})")
                        continue
                    st = os.stat(path)
            except OSError:
                continue  # reading it will say what is wrong
            checks.append((path, st, "config file"))
        for path, st, what in checks:
            refusal, warning = self.trust.check(path, st, what)
            if refusal:
                refusals.append(refusal)
            if warning:
                warnings.append(Problem(path, warning))
        if refusals:
            raise UntrustedConfig("refusing to use the config directory: " + "; ".join(refusals)
                                  + ". Fix the ownership or permissions "
                                  "(--insecure-allow-writable is for development only)")
        return warnings

    def parsed(self, config_sha256: str, path: str) -> dict[str, Any] | None:
        """The whole parsed config with these bytes (for the copy kept for rollbacks):
        from memory, or read again from `path` while it still holds those bytes."""
        config = self._full.get(config_sha256)
        if config is None:
            try:
                raw = _read_config_bytes(path)
                if hashlib.sha256(raw).hexdigest() != config_sha256:
                    return None
                config = _parse(raw)
            except _Invalid:
                return None
        return dict(config) if isinstance(config, dict) else None

    def reread(self, path: str) -> DesiredPlugin | Problem:
        """One file again, just before a change that depends on it (a replace)."""
        try:
            return self._read_one(path, set())
        except _Invalid as bad:
            return Problem(path, *bad.problem)

    def _summary(self, raw: bytes, digest: str) -> Summary:
        cached = self._summaries.get(digest)
        if cached is not None:
            return cached
        summary: Summary
        try:
            config = _parse(raw)
        except _Invalid as bad:
            summary = {"error": list(bad.problem)}
        else:
            if isinstance(config, dict):
                self._full[digest] = config
                summary = {"type": "object",
                           "fields": {k: config[k] for k in ("libpath", "name") if k in config},
                           "strict": _not_strict_json(raw)}
            else:
                summary = {"type": _json_type(config)}
        self._summaries[digest] = summary
        self._dirty = True
        return summary

    def _read_one(self, path: str, used: set[str]) -> DesiredPlugin:
        raw = _read_config_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        used.add(digest)
        checked = self._checked.get(digest)
        if checked is None:
            try:
                checked = _check(self._summary(raw, digest))
            except _Invalid as bad:
                checked = bad
            self._checked[digest] = checked
        if isinstance(checked, _Invalid):
            raise _Invalid(*checked.problem)
        libpath, name = checked
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), libpath))
        library = self.library_sha256(resolved, libpath) if self.check_libraries else UNCHECKED
        key = nodepath.components(nodepath.join(self.node_path(path), libpath))
        return DesiredPlugin(path, name, resolved, digest, library, key)

    def libraries_changed(self) -> bool:
        """Whether any library hashed by the last read has changed on disk since: one
        stat each, compared with the identity its hash was taken at."""
        try:
            known = list(self._libraries.items())
        except RuntimeError:  # a read is under way in another thread: it will tell
            return False
        for path, (key, _) in known:
            try:
                st = os.stat(path)
            except OSError:
                return True
            if key != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return True
        return False

    def library_sha256(self, resolved: str, as_written: str) -> str:
        try:
            st = os.stat(resolved)
        except FileNotFoundError:
            raise _Invalid(f"plugin library {as_written!r} not found (resolved to {resolved})")\
                from None
        except OSError as exc:
            raise _Invalid(f"plugin library {resolved}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _Invalid(f"plugin library {resolved} is not a regular file")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._libraries.get(resolved)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            digest = _hash_file(resolved)
        except OSError as exc:
            raise _Invalid(f"plugin library {resolved} is not readable: {exc.strerror}") from None
        self._libraries[resolved] = (key, digest)
        self._dirty = True
        return digest


def _check(summary: Summary) -> tuple[str, str | None]:
    """(libpath, name) from what validation needs of a config, or _Invalid."""
    if "error" in summary:
        raise _Invalid(*summary["error"])
    if summary["type"] != "object":
        raise _Invalid(f"the config must be an object, not {summary['type']}")
    config = summary["fields"]
    libpath = config.get("libpath")
    if not isinstance(libpath, str) or not libpath:
        raise _Invalid("`libpath` is required and must be a non-empty string "
                       "(the path of the plugin library)")
    name = config.get("name")
    if name is not None and (not isinstance(name, str) or not name or
                             any(unicodedata.category(ch) == "Cc" for ch in name)):
        raise _Invalid("`name` must be a non-empty string without control characters")
    return libpath, name


def _read_config_bytes(path: str) -> bytes:
    """One open, one fstat, one read. O_NONBLOCK: a FIFO put in a config's place must be
    refused, not waited on (regular files ignore the flag)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Invalid("the file vanished while it was being read (or is a dangling "
                       "symlink); it is left as it is until it is back") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket cannot be opened at all
            raise _Invalid("not a regular file") from None
        raise _Invalid(f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Invalid("not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise _Invalid(f"the file is {st.st_size} bytes; a config may be at most "
                           f"{MAX_CONFIG_BYTES} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise _Invalid(f"the file grew past {MAX_CONFIG_BYTES} bytes while it was "
                               "read")
        return b"".join(chunks)
    except OSError as exc:
        raise _Invalid(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _parse(raw: bytes) -> object:
    """The value the node reads from these bytes (configparse), or _Invalid. Imported
    here: a pass whose files are all in the parse cache never parses (9 ms of start-up
    saved on every in-sync command)."""
    from reconciler import configparse

    try:
        return configparse.parse(raw)
    except configparse.ConfigSyntaxError as exc:
        raise _Invalid(exc.message, exc.line, exc.column) from None


def _not_strict_json(raw: bytes) -> list[Any] | None:
    """Why these bytes are not strict JSON ([reason, line, column]), or None: what a
    plugin that re-reads its config with serde_json (Yellowstone gRPC) would refuse.
    Python's json is as strict as serde_json here, once NaN and Infinity are refused."""
    try:
        json.loads(raw.decode("utf-8"), parse_constant=_not_json_constant)
    except UnicodeDecodeError as exc:
        return [f"not UTF-8: {exc.reason}", None, None]
    except json.JSONDecodeError as exc:
        return [exc.msg, exc.lineno, exc.colno]
    except _Constant as exc:
        return [str(exc), *_constant_position(raw.decode("utf-8"), exc.name)]
    return None


class _Constant(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is JSON5, not JSON")
        self.name = name


def _not_json_constant(name: str) -> object:
    raise _Constant(name)


_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')


def _constant_position(text: str, name: str) -> tuple[int, int] | tuple[None, None]:
    """Where json met NaN or Infinity (it does not say): the first one outside a string;
    everything before it is JSON, so strings are the only place it could hide."""
    for match in _STRING_OR_CONSTANT.finditer(text):
        if match.group(1) is not None and match.group(1).lstrip("-") == name.lstrip("-"):
            at = match.start(1)
            return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1
    return None, None


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _without_duplicates(
    plugins: list[DesiredPlugin], rules: NodeRules = SNARKOS,
) -> tuple[list[DesiredPlugin], list[Problem]]:
    """Two files that claim one name or one library can't both be loaded; which one the
    operator meant is not ours to guess, so both are invalid. "One library" is the node's
    rule, no more and no fewer: the joined paths' components are equal (`dir/./x.so` is
    `dir/x.so`; `dir/../dir/x.so` is not, though it is the same file: the node loads it).

    A node that checks names only (`rules.one_plugin_per_library` False: Agave) loads one
    library twice under two declared names; but two files that declare no name on one
    library would both get the library's name, so those two still clash."""
    names: Counter[str | None] = Counter(p.name for p in plugins if p.name is not None)
    keys = {id(p): p.library_key or nodepath.components(p.libpath) for p in plugins}

    def library_rule(p: DesiredPlugin) -> bool:
        return rules.one_plugin_per_library or p.name is None

    libraries = Counter(keys[id(p)] for p in plugins if library_rule(p))
    keep: list[DesiredPlugin] = []
    problems: list[Problem] = []
    for plugin in plugins:
        key = keys[id(plugin)]
        by_library = library_rule(plugin) and libraries[key] > 1
        if names[plugin.name] > 1 or by_library:
            others = [o.config_file for o in plugins if o is not plugin and (
                (plugin.name is not None and o.name == plugin.name)
                or (by_library and library_rule(o) and keys[id(o)] == key))]
            claimed = f"is also claimed by {', '.join(others)}; neither file is applied"
            if names[plugin.name] > 1:
                message = f"name {plugin.name!r} {claimed}"
            elif rules.one_plugin_per_library:
                message = f"library {plugin.libpath} {claimed}"
            else:
                message = (f"library {plugin.libpath} {claimed}: neither file sets `name`, so "
                           f"the library names both plugins the same and the {rules.product} "
                           "(which checks names only) would refuse the second; give each file "
                           "its own `name`, or keep one file")
            problems.append(Problem(plugin.config_file, message))
        else:
            keep.append(plugin)
    return keep, problems
