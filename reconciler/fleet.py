"""A fleet of nodes: one command, every target.

`--targets FILE` (JSON5) lists the nodes: `[{name, node_url, network, config_dir,
node_config_dir, jwt_token_file | jwt_secret_file, state_dir}]` for snarkOS, `[{name,
node_kind: "agave", ledger, config_dir, …}]` for Agave validators (a fleet may mix them;
`node_kind` defaults to --node-kind). Read-only commands
(validate, plan, status) run against every target at once with a bounded number of
workers; apply goes target by target and stops at the first target that fails unless told
to keep going. Each target keeps its own state directory (its own ledger), by default
`<state-dir>/targets/<name>`. The daemon stays one per node host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, SettingsError
from reconciler.noderules import KINDS
from reconciler.report import Report
from reconciler.settings import Settings, refuse_snarkos_only

KEYS = {"name", "node_kind", "ledger", "node_url", "network", "config_dir", "node_config_dir",
        "node_state_dir", "jwt_token_file", "jwt_secret_file", "state_dir"}
PATHS = KEYS - {"name", "node_kind", "node_url", "network"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Target:
    name: str
    settings: Settings


def read_targets(path: Path, base: Settings) -> list[Target]:
    import json5

    try:
        raw = json5.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--targets {path}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"--targets {path} must hold a non-empty list of targets")
    targets, seen = [], set()
    for number, item in enumerate(raw, 1):
        where = f"--targets {path}, target {number}"
        if not isinstance(item, dict):
            raise SettingsError(f"{where}: a target is an object")
        unknown = set(item) - KEYS
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in seen:
            raise SettingsError(f"{where}: `name` must be a unique word of letters, digits, "
                                "'.', '_' or '-'")
        seen.add(name)
        kind = item.get("node_kind", base.node_kind)
        if kind not in KINDS:
            raise SettingsError(f"{where} ({name}): `node_kind` must be one of "
                                f"{', '.join(KINDS)}, not {kind!r}")
        # Each validator has its own ledger; a snarkOS target has none.
        address = "ledger" if kind == "agave" else "node_url"
        for key in (address, "config_dir"):
            if not isinstance(item.get(key), str):
                raise SettingsError(f"{where} ({name}): `{key}` is required")
        refuse_snarkos_only(kind, set(item), f"{where} ({name}): ", as_keys=True)
        values: dict[str, Any] = {k: (Path(v) if k in PATHS else v)
                                  for k, v in item.items() if k != "name"}
        values["node_kind"] = kind
        values.setdefault("ledger", None)
        values.setdefault("state_dir", base.state / "targets" / name)
        values.setdefault("jwt_token_file", None)
        values.setdefault("jwt_secret_file", None)
        values.setdefault("node_config_dir", None)
        values.setdefault("node_state_dir", None)
        try:
            targets.append(Target(name, replace(base, **values)))
        except ReconcilerError as exc:
            raise SettingsError(f"{where} ({name}): {exc}") from None
    return targets


def guarded(job: Callable[[Settings], Report]) -> Callable[[Target], Report]:
    """One target's error is that target's result, not the fleet's end."""

    def run(target: Target) -> Report:
        try:
            return job(target.settings)
        except ReconcilerError as exc:
            return Report(1, [], [f"error: {exc}"], {"error": str(exc)})

    return run


def run_together(targets: list[Target], job: Callable[[Settings], Report], workers: int,
                 on_done: Callable[[Target, Report], None] | None = None) -> list[Report]:
    run = guarded(job)

    def one(target: Target) -> Report:
        report = run(target)
        if on_done is not None:
            on_done(target, report)
        return report

    with ThreadPoolExecutor(max(1, min(workers, len(targets)))) as pool:
        return list(pool.map(one, targets))


def run_in_order(targets: list[Target], job: Callable[[Settings], Report], keep_going: bool,
                 failed: Callable[[int], bool],
                 before: Callable[[Target], None] | None = None,
                 after: Callable[[Target, Report], None] | None = None) -> list[Report | None]:
    """Target by target; after the first failure the rest are skipped (None) unless
    keep_going."""
    reports: list[Report | None] = []
    stopped = False
    for target in targets:
        if stopped:
            reports.append(None)
            continue
        if before is not None:
            before(target)
        report = guarded(job)(target)
        reports.append(report)
        if after is not None:
            after(target, report)
        stopped = failed(report.code) and not keep_going
    return reports


def most_severe(codes: list[int], order: tuple[int, ...]) -> int:
    """The exit code that matters most, by the command's own order of severity."""
    for code in order:
        if code in codes:
            return code
    return max(codes, default=0)
