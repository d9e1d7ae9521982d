"""A simulated Agave `GeyserPluginManager`, step for step.

It follows agave's `geyser-plugin-manager/src/geyser_plugin_manager.rs` (commit
0686d1fc): `load_plugin`, `unload_plugin`, `reload_plugin` and `load_plugin_from_config`,
in the validator's order and with its texts (docs/refnode.md, "Agave mode", maps each
step to its source), so a client that copes with this manager copes with the real one:

load: open, read (UTF-8), parse (the json5 crate), `libpath` a string, a relative one
joined onto the config's folder, dlopen + `_create_plugin`, name = config `name` or the
library's `name()`, a duplicate *by name only* refused, then `on_load`.
reload: the old plugin is unloaded *first*; a new config that then fails leaves nothing
loaded, and a successful reload puts the plugin at the end of the list.

A library is simulated by any readable regular file. Besides the snarkOS mode's markers
(``slipstream:no-create-plugin``, ``slipstream:on-load-fails``) two are Agave's own:

- ``geyser:name=<NAME>`` (up to the end of the line): the library's `name()` is NAME,
  as Yellowstone's `yellowstone-grpc-geyser-<version>`;
- ``geyser:strict-json``: `on_load` re-reads the config with strict JSON and refuses
  unknown top-level keys (`name` included), as Yellowstone's `Config::load_from_file`.

dlopen of a path this process already opened returns the library already in memory
(anza-xyz/agave#3620, #3745): a `LibraryCache` keeps each opened library for the life of
the process, so a library rebuilt in place keeps its old name and behaviour until a
restart. Only a new path (or a restart) loads new code.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import dataclass

from reconciler import nodepath
from reconciler.refnode.plugins import (
    NO_CREATE_MARKER,
    ON_LOAD_FAILS_MARKER,
    library_name,
)

NAME_MARKER = b"geyser:name="
STRICT_JSON_MARKER = b"geyser:strict-json"
# Yellowstone gRPC's `Config` (deny_unknown_fields): the keys its on_load accepts.
STRICT_JSON_FIELDS = ("libpath", "log", "tokio", "grpc", "prometheus", "debug_clients_http")


class GeyserError(Exception):
    """A plugin call refused: jsonrpc-core's `Error { code: InvalidRequest (-32600),
    message, data: None }`, as every error of the manager is."""

    code = -32600

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _ConfigError(Exception):
    """`GeyserPluginManagerError`: its Display is only the variant's text; the detail
    the variant carries (path, io error, parse error) never reaches the client."""


@dataclass(frozen=True)
class SimulatedLibrary:
    """What dlopen gave: the library's behaviour, fixed when it was first opened."""

    path: str
    name: str
    has_create_plugin: bool
    on_load_fails: bool
    strict_json: bool


@dataclass(frozen=True)
class LoadedGeyserPlugin:
    name: str
    config_file: str
    library: SimulatedLibrary


class LibraryCache:
    """glibc's list of loaded objects as a Rust plugin host sees it: once opened, a
    library stays (a Rust cdylib is not unloaded by dlclose), and dlopen of the same
    path — or of the same file under another path (same device and inode) — returns it
    without reading the file again. Cleared only by a restart (a new process)."""

    def __init__(self) -> None:
        self._by_path: dict[str, SimulatedLibrary] = {}
        self._by_inode: dict[tuple[int, int], SimulatedLibrary] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_path)

    def dlopen(self, libpath: str) -> SimulatedLibrary:
        """libloading's `Library::new` (RTLD_LAZY | RTLD_LOCAL); raises _ConfigError
        with `Cannot load plugin shared library (error: <dlerror>)`."""
        with self._lock:
            cached = self._by_path.get(libpath)
            if cached is not None:
                return cached
            if "\0" in libpath:
                raise _load_error("could not create a C string from bytes")
            try:
                st = os.stat(libpath)
                if stat.S_ISDIR(st.st_mode):
                    raise _load_error(f"{libpath}: cannot read file data: Is a directory")
                same_file = self._by_inode.get((st.st_dev, st.st_ino))
                if same_file is not None:
                    self._by_path[libpath] = same_file
                    return same_file
                with open(libpath, "rb") as handle:
                    content = handle.read(1 << 20)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise _load_error(
                    f"{libpath}: cannot open shared object file: {reason}") from None
            library = SimulatedLibrary(
                path=libpath, name=_declared_name(content) or library_name(libpath),
                has_create_plugin=NO_CREATE_MARKER not in content,
                on_load_fails=ON_LOAD_FAILS_MARKER in content,
                strict_json=STRICT_JSON_MARKER in content)
            self._by_path[libpath] = library
            self._by_inode[(st.st_dev, st.st_ino)] = library
            return library


def _declared_name(content: bytes) -> str | None:
    at = content.find(NAME_MARKER)
    if at < 0:
        return None
    raw = content[at + len(NAME_MARKER):].split(b"\n", 1)[0].strip()
    return raw.decode("utf-8", "replace") or None


def _load_error(dlerror: str) -> _ConfigError:
    return _ConfigError(f"Cannot load plugin shared library (error: {dlerror})")


class GeyserPluginManager:
    """The validator's plugin list and the three admin calls on it.

    Calls arrive one at a time from the node's single worker (agave's
    `SolGeyserPluginRpc` thread); the lock only guards `names()` for tests reading the
    list from another thread. load_delay / unload_delay: seconds a run-time `on_load` /
    unload takes (faults for tests); start-up loads are prompt.
    """

    def __init__(self, libraries: LibraryCache | None = None) -> None:
        self.libraries = libraries if libraries is not None else LibraryCache()
        self._plugins: list[LoadedGeyserPlugin] = []
        self._lock = threading.Lock()
        self.load_delay = 0.0
        self.unload_delay = 0.0

    def names(self) -> list[str]:
        """`list_plugins`: names in load order."""
        with self._lock:
            return [p.name for p in self._plugins]

    def plugins(self) -> list[LoadedGeyserPlugin]:
        with self._lock:
            return list(self._plugins)

    def load(self, config_file: str) -> str:
        """`load_plugin`: returns the loaded name."""
        try:
            plugin = self._from_config(config_file)
        except _ConfigError as exc:
            raise GeyserError(f"Failed to load plugin: {exc}") from None
        if plugin.name in self.names():
            raise GeyserError(f"There already exists a plugin named {plugin.name} loaded. "
                              f"Did not load requested plugin")
        failure = self._on_load(plugin)
        if failure is not None:
            raise GeyserError(f"on_load method of plugin {plugin.name} failed: {failure}")
        with self._lock:
            self._plugins.append(plugin)
        return plugin.name

    def unload(self, name: str) -> None:
        """`unload_plugin`: removed from the list first, then dropped (waits for the
        last notifier to let go: `unload_plugin_blocking`)."""
        self._remove(name, "unload")

    def reload(self, name: str, config_file: str) -> None:
        """`reload_plugin`: unload first (the plugin may hold a port or a database),
        then load; a failure after the unload leaves the plugin unloaded."""
        self._remove(name, "reload")
        try:
            plugin = self._from_config(config_file)
        except _ConfigError as exc:
            raise GeyserError(str(exc)) from None  # err.to_string(): no prefix here
        if plugin.name in self.names():
            raise GeyserError(f"There already exists a plugin named {plugin.name} loaded, "
                              f"while reloading {name}. Did not load requested plugin")
        failure = self._on_load(plugin)
        if failure is not None:
            raise GeyserError(
                f"Failed to start new plugin (previous plugin was dropped!): {failure}")
        with self._lock:
            self._plugins.append(plugin)

    def load_at_startup(self, config_file: str) -> str:
        """`GeyserPluginService::load_plugin` at start: the same load, without delays."""
        delay, self.load_delay = self.load_delay, 0.0
        try:
            return self.load(config_file)
        finally:
            self.load_delay = delay

    # -- the steps --------------------------------------------------------------------
    def _remove(self, name: str, verb: str) -> None:
        with self._lock:
            for index, plugin in enumerate(self._plugins):
                if plugin.name == name:
                    del self._plugins[index]
                    break
            else:
                raise GeyserError(f"The plugin you requested to {verb} is not loaded")
        if self.unload_delay > 0:
            time.sleep(self.unload_delay)  # a notifier still holds the plugin

    def _from_config(self, config_file: str) -> LoadedGeyserPlugin:
        """`load_plugin_from_config`: one open, one read, one json5 parse."""
        if "\0" in config_file:
            raise _ConfigError("Cannot open the plugin config file")
        try:
            fd = os.open(config_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise _ConfigError("Cannot open the plugin config file") from None
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            text = b"".join(chunks).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            raise _ConfigError("Cannot read the plugin config file") from None
        finally:
            os.close(fd)
        from reconciler.configparse import ConfigSyntaxError, parse

        try:
            config = parse(text.encode("utf-8"))
        except ConfigSyntaxError:
            raise _ConfigError("The config file is not in a valid Json format") from None
        libpath = config.get("libpath") if isinstance(config, dict) else None
        if not isinstance(libpath, str):
            raise _ConfigError("Plugin library path is not specified in the config file")
        if not libpath.startswith("/"):
            if config_file in ("", "/"):  # Path::parent() is None
                raise _ConfigError("Cannot open the plugin config file")
            libpath = nodepath.join(config_file, libpath)
        declared = config.get("name") if isinstance(config, dict) else None
        library = self.libraries.dlopen(libpath)
        if not library.has_create_plugin:
            raise _load_error(f"{libpath}: undefined symbol: _create_plugin")
        name = declared if isinstance(declared, str) else library.name
        return LoadedGeyserPlugin(name, config_file, library)

    def _on_load(self, plugin: LoadedGeyserPlugin) -> str | None:
        """The plugin's `on_load(config_file, is_reload)`; returns the error's Display."""
        if self.load_delay > 0:
            time.sleep(self.load_delay)
        if plugin.library.on_load_fails:
            # GeyserPluginError::Custom's Display
            return "Plugin-defined custom error. Error message: (simulated on_load failure)"
        if plugin.library.strict_json:
            return _strict_json_error(plugin.config_file)
        return None


def _strict_json_error(config_file: str) -> str | None:
    """Yellowstone's `Config::load_from_file`: `read_to_string` then `serde_json` into a
    `deny_unknown_fields` struct; errors as `GeyserPluginError` Display texts."""
    try:
        with open(config_file, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return f"Error opening config file. Error detail: ({exc})."
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        where = f" at line {exc.lineno} column {exc.colno}" \
            if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"Error reading config file. Error message: ({reason}{where})"
    if not isinstance(value, dict):
        return "Error reading config file. Error message: (invalid type: expected struct Config)"
    for key in value:
        if key not in STRICT_JSON_FIELDS:
            line, column = _key_position(text, key)
            expected = ", ".join(f"`{f}`" for f in STRICT_JSON_FIELDS)
            return (f"Error reading config file. Error message: (unknown field `{key}`, "
                    f"expected one of {expected} at line {line} column {column})")
    return None


def _refuse_constant(name: str) -> object:
    raise ValueError(f"expected value ({name} is not JSON)")


def _key_position(text: str, key: str) -> tuple[int, int]:
    """Where serde_json stands after reading the key: its closing quote (inferred)."""
    at = text.find(json.dumps(key))
    if at < 0:
        return 1, 1
    end = at + len(json.dumps(key))
    line = text.count("\n", 0, end) + 1
    return line, end - (text.rfind("\n", 0, end) + 1)
