"""The ledger's values: what this reconciler applied (entries) and the node calls it was
about to make (intents). Pure data, read by the planner; reconciler.ledgerstore keeps
them on disk."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FailedReplace:
    """A replace whose new config failed to load and was rolled back: not tried again
    until the config or the library changes again."""

    config_sha256: str
    library_sha256: str
    reason: str


@dataclass(frozen=True)
class Entry:
    name: str  # as the node returned it
    config_file: str
    config_sha256: str
    library_sha256: str
    libpath: str
    applied_at: float
    failed_replace: FailedReplace | None = None


@dataclass(frozen=True)
class Intent:
    """A node call that was about to be made. Unnamed loads that never completed stay
    pending: their plugin's name is unknown until the node tells us (a 422 on the next
    load of the same config names it)."""

    seq: int
    action: str  # "load" | "unload"
    name: str | None
    config_file: str | None
    config_sha256: str | None = None
    library_sha256: str | None = None
    libpath: str | None = None
    at: float = 0.0


@dataclass(frozen=True)
class Ledger:
    entries: MappingProxyType[str, Entry]  # name -> Entry, read-only
    pending: tuple[Intent, ...] = ()

    @classmethod
    def of(cls, entries: list[Entry] | tuple[Entry, ...] = (),
           pending: tuple[Intent, ...] = ()) -> Ledger:
        return cls(MappingProxyType({e.name: e for e in entries}), tuple(pending))

    def by_config(self) -> dict[str, Entry]:
        return {e.config_file: e for e in self.entries.values()}
