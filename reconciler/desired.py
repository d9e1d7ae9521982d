"""The desired state's values: what the config directory asks the node to run.

Pure data, read by the planner; reconciler.configdir reads a directory into them. A file
with a problem is *invalid*, which protects its plugin instead of unloading it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The library hash of a plan made without the libraries (CI): never equal to a real one.
UNCHECKED = "unchecked"
CONFIG_SUFFIXES = (".json5", ".json")
# What a plugin is called until the node names it (a config without a `name`).
UNNAMED = "known after apply"


def label(name: str | None) -> str:
    """A plugin's name as plans, status and logs show it: the one spelling of "unnamed"."""
    return name if name is not None else f"({UNNAMED})"


def file_name(path: str | None) -> str:
    """A config file by its last component, for reasons and log lines."""
    return path.rsplit("/", 1)[-1] if path else "-"


@dataclass(frozen=True)
class DesiredPlugin:
    config_file: str  # absolute path as the reconciler sees it
    name: str | None  # None: the library names it, known only after load
    libpath: str  # resolved against the config file's folder
    config_sha256: str
    library_sha256: str
    # The node's duplicate rule compares this: the `Path` components of libpath joined onto
    # the config's folder as the node sees it (nodepath). () where unknown: from libpath.
    library_key: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return label(self.name)


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.brief}" if self.line is not None else \
            f"{self.file}: {self.message}"

    @property
    def brief(self) -> str:
        """Without the file's name, for places that show it already."""
        if self.line is None:
            return self.message
        column = f":{self.column}" if self.column is not None else ""
        return f"{self.line}{column}: {self.message}"


@dataclass(frozen=True)
class Desired:
    directory: str
    plugins: tuple[DesiredPlugin, ...]
    invalid: tuple[Problem, ...]
    warnings: tuple[Problem, ...] = ()

    @property
    def invalid_files(self) -> frozenset[str]:
        return frozenset(p.file for p in self.invalid)

    @property
    def file_count(self) -> int:
        return len(self.plugins) + len(self.invalid_files)


def is_config_name(name: str) -> bool:
    """Top-level *.json5 / *.json, minus hidden files and editor or sync leftovers."""
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".tmp")):
        return False
    return name.endswith(CONFIG_SUFFIXES)
