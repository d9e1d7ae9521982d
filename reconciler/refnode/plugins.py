"""A simulated snarkVM `SlipstreamPluginManager`, step for step.

It follows `load_plugin` in snarkVM's `plugins/slipstream_plugin_manager/src/
slipstream_manager.rs` (commit 4a435f8f) in the node's order and with the node's texts,
so a client that handles this manager handles the real one (docs/refnode.md maps each
step to its source):

1. open, read (UTF-8), parse (JSON5), take `libpath`; join a relative one onto the
   config's folder without canonicalizing (`resolve_libpath_from_config`);
2. refuse a library whose joined path equals a loaded one's, component by component
   (`PathBuf ==`), naming the plugin that is *already* loaded;
3. open, read and parse the config a second time (`load_plugin_from_config`) and take
   `libpath` and `name` from that second parse;
4. the config path must be UTF-8 ("Invalid plugin path");
5. dlopen, `_create_plugin`, a null check;
6. refuse a second plugin with the same effective name;
7. `on_load`.

The whole load runs under the manager's write lock, as in snarkOS's load handler.

A plugin library is simulated: any readable regular file. Marker strings inside the
library file reproduce the failures a real library can cause:

- ``slipstream:no-create-plugin`` — the library does not export ``_create_plugin``;
- ``slipstream:null-constructor`` — ``_create_plugin`` returns a null pointer;
- ``slipstream:on-load-fails`` — the plugin's ``on_load`` returns an error.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import time
from dataclasses import dataclass

from reconciler import nodepath
from reconciler.refnode.rwlock import RwLock

NO_CREATE_MARKER = b"slipstream:no-create-plugin"
NULL_CONSTRUCTOR_MARKER = b"slipstream:null-constructor"
ON_LOAD_FAILS_MARKER = b"slipstream:on-load-fails"

# Rust's `std::io::ErrorKind` for the errno values a config open or read can meet
# (`sys::unix::decode_error_kind`); anything else prints as `Uncategorized`.
_ERROR_KINDS = {
    errno.ENOENT: "NotFound", errno.EACCES: "PermissionDenied", errno.EPERM: "PermissionDenied",
    errno.EISDIR: "IsADirectory", errno.ENOTDIR: "NotADirectory", errno.ELOOP: "FilesystemLoop",
    errno.ENAMETOOLONG: "InvalidFilename", errno.EINTR: "Interrupted",
    errno.EINVAL: "InvalidInput", errno.ENOSPC: "StorageFull", errno.EROFS: "ReadOnlyFilesystem",
    errno.EBUSY: "ResourceBusy", errno.ENOMEM: "OutOfMemory", errno.EFBIG: "FileTooLarge",
    errno.ESTALE: "StaleNetworkFileHandle", errno.ETXTBSY: "ExecutableFileBusy",
    errno.EAGAIN: "WouldBlock", errno.ENOSYS: "Unsupported",
}


class PluginManagerError(Exception):
    """A load or unload failure, carrying the node's own message (its `Display`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    libpath: str  # the joined path from the first parse: what duplicates compare against
    config_file: str


def library_name(libpath: str) -> str:
    """The name a simulated library reports through name(): its file name up to the
    first dot, without a leading ``lib`` (``libpostgres.so`` -> ``postgres``)."""
    base = os.path.basename(libpath).split(".", 1)[0]
    return base[3:] if base.startswith("lib") and len(base) > 3 else base


def _parse_config(text: str) -> object:
    """The node's config parse (Rust `json5` 0.4 into `serde_json::Value`): the same
    node-faithful parse the reconciler validates with (reconciler.configparse), so the
    reference node refuses what the node refuses. One difference, on purpose: the node
    has no depth limit and dies of a stack overflow near 2,000 nested objects; this
    node refuses past configparse's cap instead. Raises ValueError with a message that
    names line and column."""
    from reconciler.configparse import ConfigSyntaxError, parse

    try:
        return parse(text.encode("utf-8", "surrogatepass"))
    except ConfigSyntaxError as exc:
        where = f" at line {exc.line} column {exc.column}" if exc.line is not None else ""
        raise ValueError(f"{exc.message}{where}") from None


def rust_debug(text: str) -> str:
    """`{:?}` of a Rust `str`/`Path`: quoted, with Rust's escapes. Undecodable bytes
    (surrogate-escaped here) print as `\\xNN`, as `OsStr`'s Debug prints them."""
    out = ['"']
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02X}")
        elif char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif char == "\0":
            out.append("\\0")
        elif char == " " or char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{{{code:x}}}")
    out.append('"')
    return "".join(out)


def io_error_debug(exc: OSError) -> str:
    """`{:?}` of a Rust `std::io::Error` made from an errno."""
    code = exc.errno or 0
    kind = _ERROR_KINDS.get(code, "Uncategorized")
    return f"Os {{ code: {code}, kind: {kind}, message: {rust_debug(os.strerror(code))} }}"


def _location(message: str) -> str:
    """json5's `Error::Message.location` as Debug, from whatever position the parser's
    message gives (inferred: the Rust crate's own `msg` text is pest's, not ours)."""
    import re

    found = re.search(r":(\d+) .*?column (\d+)", message) or \
        re.search(r"line (\d+) column (\d+)", message)
    if not found:
        return "None"
    return f"Some(Location {{ line: {found.group(1)}, column: {found.group(2)} }})"


class PluginManager:
    """The node's manager: an ordered list of plugins behind a readers-writer lock.

    root: when set, every path the node is given is read under this folder, as a
    container whose root it is would read it (paths in names and messages stay the
    node's own). load_delay: seconds a load's `on_load` takes (a fault for tests).
    """

    def __init__(self, root: str | None = None, load_delay: float = 0.0) -> None:
        self._lock = RwLock()
        self._plugins: list[LoadedPlugin] = []
        self.root = root
        self.load_delay = load_delay

    def names(self) -> list[str]:
        with self._lock.read():
            return [p.name for p in self._plugins]

    def plugins(self) -> list[LoadedPlugin]:
        with self._lock.read():
            return list(self._plugins)

    def load(self, config_file: str) -> str:
        with self._lock.write():
            return self._load(config_file)

    def unload(self, name: str) -> None:
        with self._lock.write():
            for index, plugin in enumerate(self._plugins):
                if plugin.name == name:
                    del self._plugins[index]
                    return
        raise PluginNotLoaded(name)

    # -- the steps of snarkVM's load_plugin ------------------------------------------
    def _load(self, config_file: str) -> str:
        first = self._read_config(config_file)
        resolved = _libpath(first, config_file)
        for plugin in self._plugins:
            if nodepath.same_path(plugin.libpath, resolved):
                raise PluginAlreadyLoaded(plugin.name)
        # load_plugin_from_config reads and parses the file again, and takes libpath and
        # name from this second parse.
        second = self._read_config(config_file)
        libpath = _libpath(second, config_file)
        declared = second.get("name") if isinstance(second, dict) else None
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in config_file):
            raise PluginManagerError("Invalid plugin path")
        library = self._dlopen(libpath)
        if NO_CREATE_MARKER in library:
            raise PluginManagerError(
                f"Cannot load plugin shared library (error: {_lossy(libpath)}: undefined "
                f"symbol: _create_plugin)")
        if NULL_CONSTRUCTOR_MARKER in library:
            raise PluginManagerError(
                "Cannot load plugin shared library (error: plugin constructor returned a null "
                "pointer)")
        name = declared if isinstance(declared, str) else library_name(libpath)
        if any(p.name == name for p in self._plugins):
            raise PluginAlreadyLoaded(name)
        if self.load_delay > 0:
            time.sleep(self.load_delay)  # on_load, slow, with the write lock held
        if ON_LOAD_FAILS_MARKER in library:
            raise PluginManagerError(
                "The SlipstreamPlugin on_load method failed (error: simulated on_load failure)")
        self._plugins.append(LoadedPlugin(name, resolved, config_file))
        return name

    def host_path(self, node_path: str) -> str:
        """Where the node's `node_path` is on this machine (under `root`, if any).

        A relative path is taken from `/` (the working directory inside a container,
        inferred); `..` cannot climb above the root, as in a container."""
        if self.root is None:
            return node_path
        absolute = posixpath.normpath("/" + node_path)
        return os.path.join(self.root, absolute.lstrip("/"))

    def _read_config(self, config_file: str) -> object:
        shown = rust_debug(config_file)
        raw = self._read_file(config_file, shown)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PluginManagerError(
                f"Cannot read the plugin config file: Failed to read the plugin config file "
                f"{shown}, error: Error {{ kind: InvalidData, message: \"stream did not "
                f"contain valid UTF-8\" }}") from None
        try:
            return _parse_config(text)
        except ValueError as exc:
            message = str(exc)
            raise PluginManagerError(
                f"The config file is not in a valid JSON/JSON5 format: The config file {shown} "
                f"is not in a valid Json5 format, error: Message {{ msg: {rust_debug(message)}, "
                f"location: {_location(message)} }}") from None

    def _read_file(self, config_file: str, shown: str) -> bytes:
        """`File::open` then `read_to_string`: a directory opens and fails at the read."""
        if "\0" in config_file:
            raise PluginManagerError(
                f"Cannot open the plugin config file: Failed to open the plugin config file "
                f"{shown}, error: Error {{ kind: InvalidInput, message: \"file name contained "
                f"an unexpected NUL byte\" }}")
        try:
            fd = os.open(os.fsencode(self.host_path(config_file)), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PluginManagerError(
                f"Cannot open the plugin config file: Failed to open the plugin config file "
                f"{shown}, error: {io_error_debug(exc)}") from None
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise PluginManagerError(
                f"Cannot read the plugin config file: Failed to read the plugin config file "
                f"{shown}, error: {io_error_debug(exc)}") from None
        finally:
            os.close(fd)

    def _dlopen(self, libpath: str) -> bytes:
        """glibc's dlopen errors for what a simulated library can be."""
        shown = _lossy(libpath)
        if "\0" in libpath:  # libloading's Error::CreateCString
            raise PluginManagerError(
                "Cannot load plugin shared library (error: could not create a C string from "
                "bytes)")
        try:
            st = os.stat(os.fsencode(self.host_path(libpath)))
            if stat.S_ISDIR(st.st_mode):
                raise PluginManagerError(
                    f"Cannot load plugin shared library (error: {shown}: cannot read file data: "
                    f"Is a directory)")
            with open(os.fsencode(self.host_path(libpath)), "rb") as handle:
                return handle.read(1 << 20)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise PluginManagerError(
                f"Cannot load plugin shared library (error: {shown}: cannot open shared object "
                f"file: {reason})") from None


def _libpath(config: object, config_file: str) -> str:
    """`result["libpath"].as_str()` (anything but an object with a string is "not
    specified"), joined onto the config's folder as `Path::join` does."""
    libpath = config.get("libpath") if isinstance(config, dict) else None
    if not isinstance(libpath, str):
        raise PluginManagerError("Plugin library path is not specified in the config file")
    return nodepath.join(config_file, libpath)


def _lossy(path: str) -> str:
    """`to_string_lossy` of a path that may hold undecodable bytes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
