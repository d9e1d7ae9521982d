"""The saved-plan file (`plan --out`, `apply --plan`), as Terraform's plans/planfile is
its own package: what is written, what is read back, and what makes a file a plan.

A saved plan is the plan's JSON (render.plan_json) plus what it was computed from: the
fingerprint of (desired, live, ledger), the config directory and the policy. `apply
--plan` refuses it when the fingerprint no longer matches (a stale plan)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import SettingsError
from reconciler.plan import Policy, Prune

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedPlan:
    fingerprint: str
    config_dir: Path
    policy: Policy


def write(path: Path, body: dict[str, Any], fingerprint: str, config_dir: Path,
          policy: Policy) -> None:
    from reconciler.atomicfile import atomic_write

    saved = {**body, "fingerprint": fingerprint, "config_dir": str(config_dir.absolute()),
             "policy": {"prune": policy.prune.value, "allow_empty": policy.allow_empty,
                        "max_unloads": policy.max_unloads}}
    try:
        atomic_write(path, json.dumps(saved, indent=2).encode() + b"\n")
    except OSError as exc:
        raise SettingsError(f"cannot write the plan to {path}: {exc.strerror}") from None


def read(path: Path) -> SavedPlan:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION \
                or not isinstance(saved.get("fingerprint"), str) \
                or not isinstance(saved.get("config_dir"), str):
            raise ValueError("not a plan saved by `plan --out`")
        kept = saved.get("policy") or {}
        max_unloads = kept.get("max_unloads")
        if max_unloads is not None and (not isinstance(max_unloads, int) or max_unloads < 0):
            raise ValueError("its policy's max_unloads is not a count")
        policy = Policy(Prune(kept.get("prune", Prune.MANAGED.value)),
                        bool(kept.get("allow_empty", False)), max_unloads)
    except (OSError, ValueError, AttributeError) as exc:
        raise SettingsError(f"--plan {path}: {exc}") from None
    return SavedPlan(saved["fingerprint"], Path(saved["config_dir"]), policy)
