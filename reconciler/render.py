"""Views: a Plan, an apply's outcomes and status rows, as text for people and JSON for
machines. The same values feed both; nothing here decides anything.

Only names, file paths, actions and reasons are ever shown: plugin-specific config values
(connection strings with passwords) are not part of any value that reaches this module.
"""

from __future__ import annotations

import os
import time
from typing import Any

from reconciler.desired import UNNAMED, Desired, Problem, label
from reconciler.outcome import Outcome, PassResult
from reconciler.plan import Action, Change, Held, Load, Plan, PluginStatus, Replace, count_states

FORMAT_VERSION = 1
# A JSON document this module builds; a record it reads back (daemon.json) is parsed JSON
# of a shape only its writer knows, hence Any there.
Json = dict[str, object]
SYMBOL = {
    Action.LOAD: "+",
    Action.REPLACE: "-/+",
    Action.UNLOAD: "-",
    Action.ADOPT: "~",
    Action.FORGET: ".",
    Action.NOOP: " ",
}
PAST = {
    Action.LOAD: "loaded",
    Action.REPLACE: "replaced",
    Action.UNLOAD: "unloaded",
    Action.ADOPT: "adopted",
    Action.FORGET: "forgotten",
}


def shown_path(path: str | None, directory: str | None) -> str:
    if path is None:
        return "-"
    if directory and path.startswith(directory.rstrip("/") + "/"):
        return os.path.relpath(path, directory)
    return path


def change_line(change: Change | Held, directory: str | None) -> str:
    reason = change.reason
    if isinstance(change, Held) and change.state and not reason.startswith(change.state):
        reason = f"{change.state}: {reason}"  # the word status shows, then why
    return (f"  {SYMBOL[change.action]:>3} {change.action.value:<8} {change.label:<28} "
            f"{shown_path(change.config_file, directory)}  ({reason})")


def plan_text(p: Plan, directory: str | None, node: str, network: str | None,
              node_kind: str | None = None, cannot_apply: str | None = None) -> str:
    """`node_kind`: the node in words, once it has answered; `cannot_apply`: why this node
    cannot carry the plan out (a read-only node), asked without changing anything."""
    lines: list[str] = []
    if p.invalid:
        lines.append("Invalid config files (their plugins are left exactly as they are):")
        lines += [f"  ! {problem}" for problem in p.invalid]
        lines.append("")
    for warning in p.warnings:
        lines.append(f"warning: {warning}")
    if p.warnings:
        lines.append("")
    if p.changes:
        where = f"{node} ({network})" if network else node  # an Agave socket: no network
        lines.append(f"The reconciler will make these changes on {where}:")
        lines += [change_line(c, directory) for c in p.changes]
        lines.append("")
    if p.held:
        lines.append("Held back by policy (not done):")
        lines += [change_line(c, directory) for c in p.held]
        lines.append("")
    if p.unmanaged:
        lines.append(f"Unmanaged (live, not declared, left alone): {', '.join(p.unmanaged)}")
        lines.append("")
    if p.blocked:
        lines.append(f"Blocked: {p.blocked}")
    counts = (f"Plan: {p.count(Action.LOAD)} to load, {p.count(Action.REPLACE)} to replace, "
              f"{p.count(Action.UNLOAD)} to unload.")
    ledger_only = p.count(Action.ADOPT) + p.count(Action.FORGET)
    if ledger_only:
        counts += (f" Ledger: {p.count(Action.ADOPT)} to adopt, "
                   f"{p.count(Action.FORGET)} to forget.")
    if not p.changes:
        counts = "No changes. The node matches the config directory."
        if p.invalid:
            counts = "No changes to make, but some config files are invalid (see above)."
    lines.append(counts)
    if node_kind:
        lines.append(f"Node: {node_kind}.")
    if cannot_apply:
        lines.append(f"This node cannot apply the plan: {cannot_apply}.")
    return "\n".join(lines)


def problem_json(problem: Problem) -> Json:
    return {"file": problem.file, "line": problem.line, "column": problem.column,
            "message": problem.message}


def change_json(change: Change | Held) -> Json:
    return {"action": change.action.value, "name": change.name,
            "config_file": change.config_file, "reason": change.reason}


def held_json(held: Held) -> Json:
    """A held change, with the state it leaves its plugin in (status's word: stalled,
    failed-replace, rebuilt-in-place), or null for one policy merely keeps pending."""
    return {**change_json(held), "state": held.state}


def plan_json(p: Plan, node: str, network: str | None, node_kind: str | None = None,
              cannot_apply: str | None = None) -> Json:
    return {
        "format_version": FORMAT_VERSION,
        "node": node,
        "network": network,
        "node_kind": node_kind,
        "cannot_apply": cannot_apply,
        "actions": [change_json(c) for c in p.changes],
        "held": [held_json(c) for c in p.held],
        "unmanaged": list(p.unmanaged),
        "invalid": [problem_json(problem) for problem in p.invalid],
        "warnings": [problem_json(w) for w in p.warnings],
        "blocked": p.blocked,
    }


def outcome_line(outcome: Outcome, directory: str | None) -> str:
    change = outcome.change
    mark = "ok" if outcome.ok else "FAILED"
    name = outcome.name or change.label
    return (f"  {SYMBOL[change.action]:>3} {change.action.value:<8} {name:<28} "
            f"{shown_path(change.config_file, directory)}  {mark}: {outcome.message}")


def apply_summary(result: PassResult) -> str:
    done = {a: 0 for a in PAST}
    for outcome in result.outcomes:
        if outcome.ok:
            done[outcome.change.action] += 1
    parts = [f"{done[a]} {PAST[a]}" for a in (Action.LOAD, Action.REPLACE, Action.UNLOAD)]
    parts += [f"{done[a]} {PAST[a]}" for a in (Action.ADOPT, Action.FORGET) if done[a]]
    text = f"Apply complete: {', '.join(parts)}, {len(result.failures)} failed."
    if result.plan.invalid:
        text += f" {len(result.plan.invalid)} invalid config file(s) left as they are."
    if result.converged:
        text += " The node matches the config directory."
    return text


def apply_json(result: PassResult, node: str, network: str | None,
               node_kind: str | None = None) -> Json:
    return {
        **plan_json(result.plan, node, network, node_kind),
        "outcomes": [{**change_json(o.change), "ok": o.ok, "message": o.message,
                      "loaded_as": o.name if isinstance(o.change, Load | Replace)
                      and o.ok else None} for o in result.outcomes],
        "converged": result.converged,
    }


def status_text(rows: tuple[PluginStatus, ...], directory: str | None, footer: str) -> str:
    table = [("NAME", "CONFIG FILE", "STATE", "DETAIL")]
    table += [(label(r.name), shown_path(r.config_file, directory), r.state,
               r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
             for a, b, c, d in table]
    if not rows:
        lines.append("(no plugins: none declared, none loaded)")
    lines.append("")
    lines.append(footer)
    return "\n".join(lines)


def status_json(rows: tuple[PluginStatus, ...], meta: Json) -> Json:
    return {
        "format_version": FORMAT_VERSION,
        **meta,
        "plugins": [{"name": r.name, "config_file": r.config_file, "state": r.state,
                     "detail": r.detail} for r in rows],
        "counts": count_states(rows),
    }


def validate_text(desired: Desired) -> str:
    lines = [f"  ok  {shown_path(p.config_file, desired.directory)}  "
             f"(name: {p.name if p.name is not None else UNNAMED})"
             for p in desired.plugins]
    lines += [f"  !   {problem}" for problem in desired.invalid]
    lines += [f"warning: {w}" for w in desired.warnings]
    total = len(desired.plugins) + len(desired.invalid)
    if desired.invalid:
        lines.append(f"{len(desired.invalid)} of {total} config file(s) invalid in "
                     f"{desired.directory}.")
    else:
        lines.append(f"All {total} config file(s) in {desired.directory} are valid.")
    return "\n".join(lines)


def validate_json(desired: Desired) -> Json:
    return {
        "format_version": FORMAT_VERSION,
        "config_dir": desired.directory,
        "valid": [{"file": p.config_file, "name": p.name, "libpath": p.libpath}
                  for p in desired.plugins],
        "invalid": [problem_json(p) for p in desired.invalid],
        "warnings": [problem_json(w) for w in desired.warnings],
    }


def daemon_line(record: dict[str, Any] | None, alive: bool) -> str | None:
    """'daemon: last pass 3 s ago, ok' — from daemon.json, when a daemon has run."""
    if record is None:
        return None
    last = record.get("last_pass") or {}
    ago = time.time() - float(last.get("ended_at") or 0)
    state = "" if alive else "not running; "
    return (f"daemon: {state}last pass {_ago(ago)} ago, {last.get('result', '?')} "
            f"({record.get('summary', '')})")


def daemon_json(record: dict[str, Any] | None, alive: bool) -> Json | None:
    if record is None:
        return None
    return {"running": alive, "pid": record.get("pid"), "summary": record.get("summary"),
            "last_pass": record.get("last_pass"), "next_retry_at": record.get("next_retry_at")}


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


# -- a fleet: one row per target ----------------------------------------------------------
# (name, node URL as shown, exit code or None when skipped, the target's JSON report)
FleetRow = tuple[str, str, int | None, dict[str, object] | None]


def fleet_json(rows: list[FleetRow]) -> dict[str, object]:
    return {"format_version": FORMAT_VERSION, "targets": [
        {"name": name, "node": node, "exit_code": code, "report": data}
        for name, node, code, data in rows]}


def fleet_summary(rows: list[FleetRow], meaning: dict[int, str]) -> str:
    table = [("TARGET", "NODE", "EXIT", "RESULT")]
    for name, node, code, _ in rows:
        if code is None:
            table.append((name, node, "-", "skipped (an earlier target failed; --keep-going "
                                           "to go on)"))
        else:
            table.append((name, node, str(code), meaning.get(code, str(code))))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip()
                     for a, b, c, d in table)
