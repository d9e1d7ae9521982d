"""A simulated snarkVM SlipstreamPluginManager.

It performs the node's load checks in the node's order and with the node's texts
(`shared/node-api.md`, "What the node checks when it loads a config"), so that a client
that handles this manager handles the real one. A plugin library is simulated: any
readable regular file. Two marker strings inside the library file let tests reproduce
the failures a real library can cause (documented in docs/refnode.md):

- ``slipstream:no-create-plugin`` — the library does not export ``_create_plugin``;
- ``slipstream:on-load-fails`` — the plugin's ``on_load`` returns an error.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import json5

NO_CREATE_MARKER = b"slipstream:no-create-plugin"
ON_LOAD_FAILS_MARKER = b"slipstream:on-load-fails"


class PluginManagerError(Exception):
    """A load or unload failure, carrying the node's own message and error chain."""

    def __init__(self, message: str, chain: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.chain = chain


class PluginAlreadyLoaded(PluginManagerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The slipstream plugin '{name}' is already loaded")
        self.name = name


class PluginNotLoaded(PluginManagerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The plugin '{name}' is not loaded")
        self.name = name


@dataclass(frozen=True)
class LoadedPlugin:
    name: str
    libpath: str
    config_file: str


def library_name(libpath: str) -> str:
    """The name a simulated library reports through name(): its file name up to the
    first dot, without a leading ``lib`` (``libpostgres.so`` -> ``postgres``)."""
    base = os.path.basename(libpath).split(".", 1)[0]
    return base[3:] if base.startswith("lib") and len(base) > 3 else base


class PluginManager:
    """Thread-safe, like the node's RwLock-guarded manager; order is load order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugins: list[LoadedPlugin] = []

    def names(self) -> list[str]:
        with self._lock:
            return [p.name for p in self._plugins]

    def plugins(self) -> list[LoadedPlugin]:
        with self._lock:
            return list(self._plugins)

    def load(self, config_file: str) -> str:
        try:
            raw = Path(config_file).read_bytes()
        except OSError as exc:
            raise PluginManagerError(
                f"Cannot open the plugin config file: {exc.strerror or exc}"
            ) from None
        try:
            config = json5.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PluginManagerError(
                f"The config file is not in a valid JSON/JSON5 format: {exc}"
            ) from None
        libpath = config.get("libpath") if isinstance(config, dict) else None
        if not isinstance(libpath, str):
            raise PluginManagerError("Plugin library path is not specified in the config file")
        resolved = os.path.join(os.path.dirname(config_file), libpath)
        with self._lock:
            for plugin in self._plugins:
                if plugin.libpath == resolved:
                    raise PluginAlreadyLoaded(plugin.name)
            library = _open_library(resolved)
            if NO_CREATE_MARKER in library:
                raise PluginManagerError(
                    "Cannot load plugin shared library (error: undefined symbol: _create_plugin)"
                )
            declared = config.get("name")
            name = declared if isinstance(declared, str) else library_name(resolved)
            if any(p.name == name for p in self._plugins):
                raise PluginAlreadyLoaded(name)
            if ON_LOAD_FAILS_MARKER in library:
                raise PluginManagerError(
                    "The SlipstreamPlugin on_load method failed (error: simulated on_load failure)"
                )
            self._plugins.append(LoadedPlugin(name, resolved, config_file))
            return name

    def unload(self, name: str) -> None:
        with self._lock:
            for index, plugin in enumerate(self._plugins):
                if plugin.name == name:
                    del self._plugins[index]
                    return
        raise PluginNotLoaded(name)


def _open_library(path: str) -> bytes:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "Is a directory" if stat.S_ISDIR(st.st_mode) else
                                    "not a regular file")
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PluginManagerError(
            f"Cannot load plugin shared library (error: {path}: cannot open shared object file: "
            f"{reason})"
        ) from None
