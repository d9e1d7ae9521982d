"""What one command produced for one node: its exit code, its text, its JSON. A command
builds one, the CLI prints it, a fleet gathers one per target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    code: int
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    data: dict[str, Any] | None = None
