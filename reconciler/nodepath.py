"""Paths as the node compares them: Rust's `std::path::Path` on Unix.

snarkVM joins a relative `libpath` onto the config file's folder without canonicalizing
it (`config_path.parent().join(libpath)`), and refuses a second plugin whose joined path
*equals* a loaded one's. Rust's `Path` equality compares `components()`, which

- folds repeated separators and ignores a trailing one (`a//b/` is `a/b`);
- drops a `.` anywhere but at the very start (`dir/./x.so` is `dir/x.so`, while `./x.so`
  keeps its leading `CurDir`);
- keeps `..` as it is (`dir/../dir/x.so` is *not* `dir/x.so`: no file system is asked).

Both the reconciler (to flag two configs the node would refuse before any call) and the
reference node (to refuse them as the node does) use these two functions, so the rule
lives in one place. Pure: no I/O.
"""

from __future__ import annotations

import posixpath


def join(config_file: str, libpath: str) -> str:
    """`Path::new(config_file).parent().join(libpath)`: an absolute `libpath` replaces
    the folder; a relative one is appended, with nothing normalized."""
    if libpath.startswith("/"):
        return libpath
    folder = posixpath.dirname(config_file) if "/" in config_file else ""
    # Path::parent("/x.json5") is "/", and parent("x.json5") is "": join adds no separator
    # after "/" and none onto "".
    if not folder:
        return libpath
    return folder + libpath if folder.endswith("/") else folder + "/" + libpath


def components(path: str) -> tuple[str, ...]:
    """What Rust's `Path::components()` yields, as strings (`/` for the root)."""
    parts: list[str] = []
    if path.startswith("/"):
        parts.append("/")
    elif path == "." or path.startswith("./"):
        parts.append(".")
    for part in path.split("/"):
        if part and part != ".":
            parts.append(part)
    return tuple(parts)


def same_path(a: str, b: str) -> bool:
    """Whether the node's `Path` equality holds between two paths."""
    return components(a) == components(b)
