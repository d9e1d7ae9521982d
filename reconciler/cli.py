"""The `slipstream-reconciler` command line.

Commands receive Settings and a Policy (reconciler.options declares the shared options
once), call the one pass (or the planner), hand the values to render, and map results to
exit codes. Exit codes are an interface (docs/cli.md): scripts and CI depend on them, so
they are spelled out here as constants. Every error is one line on stderr; a traceback
only with --debug.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeAlias

import typer

from reconciler import __version__
from reconciler.errors import ReconcilerError, SettingsError
from reconciler.options import (
    DetailedExit,
    NoLibraryCheck,
    Output,
    OutputOpt,
    with_policy,
    with_settings,
)
from reconciler.settings import Settings, default_state_dir

if TYPE_CHECKING:
    from reconciler.desired import Desired, Problem
    from reconciler.fleet import Target
    from reconciler.outcome import Outcome
    from reconciler.plan import Policy
    from reconciler.report import Report

    Job: TypeAlias = Callable[[Settings], Report]

OK, ERROR, CHANGES, NOT_CONVERGED = 0, 1, 2, 3
# `run` only: a settings error at start-up is not a crash. 78 is sysexits' EX_CONFIG; the
# unit's RestartPreventExitStatus=78 stops systemd retrying a mistake every RestartSec=.
SETTINGS_ERROR = 78

app = typer.Typer(
    name="slipstream-reconciler",
    help="Declarative control of snarkOS Slipstream plugins: a directory of JSON5 configs is "
         "the truth, and the node is converged to it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_debug = {"on": False}
log = logging.getLogger("slipstream-reconciler")


def guarded(command: Callable[..., Any] | None = None, *,
            settings_code: int = ERROR) -> Callable[..., Any]:
    """Operator-readable errors instead of tracebacks, with a stable exit code."""
    if command is None:
        return functools.partial(guarded, settings_code=settings_code)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except ReconcilerError as exc:
            if _debug["on"]:
                traceback.print_exc()
            typer.echo(f"error: {exc}", err=True)
            code = settings_code if isinstance(exc, SettingsError) else ERROR
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _debug["on"]:
                traceback.print_exc()
            typer.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                       "traceback, and please report it)", err=True)
            raise typer.Exit(ERROR) from None

    return wrapper


def _emit(value: dict[str, Any]) -> None:
    typer.echo(json.dumps(value, indent=2))


def _version(show: bool) -> None:
    if show:
        typer.echo(f"slipstream-reconciler {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _debug["on"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)


# -- reports: one command's result for one node, printed here or gathered by a fleet ----
TargetsOpt = Annotated[Path | None, typer.Option(
    "--targets", envvar="SLIPSTREAM_TARGETS",
    help="A JSON5 list of nodes ({name, node_url, network, config_dir, node_config_dir, "
         "jwt_token_file | jwt_secret_file, state_dir}; an Agave validator: {name, "
         "node_kind: \"agave\", ledger, config_dir, …}): run against each, then a summary.")]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", help="With --targets: how many nodes at once.")]
SEVERITY = (ERROR, NOT_CONVERGED, CHANGES, OK)
MEANING = {OK: "ok", CHANGES: "changes / out of sync", NOT_CONVERGED: "did not converge",
           ERROR: "error"}


def _print(report: Report, output: Output) -> None:
    from reconciler.terminal import colour_enabled, paint

    text = output is Output.text  # JSON escapes control characters by itself
    for block in report.out:
        typer.echo(paint(block) if text else block, color=True)
    for line in report.err:
        typer.echo(paint(line, colour_enabled(sys.stderr)) if text else line, err=True,
                   color=True)


def _show(report: Report, output: Output) -> NoReturn:
    _print(report, output)
    raise typer.Exit(report.code)


def _fleet(targets_file: Path, settings: Settings, job: Job, output: Output, workers: int = 4,
           in_order: bool = False, keep_going: bool = False) -> None:
    from reconciler import fleet

    targets = fleet.read_targets(targets_file, settings)
    if in_order:  # each target's header, progress and outcome together, as they happen
        from reconciler.terminal import paint

        def header(target: Target) -> None:
            if output is Output.text:
                typer.echo(paint(f"== {target.name} ({target.settings.shown_node})"),
                           color=True)

        def outcome(target: Target, report: Report) -> None:
            if output is Output.text:
                _print(report, output)
                typer.echo("")

        reports: Sequence[Report | None] = fleet.run_in_order(
            targets, job, keep_going, lambda code: code in (ERROR, NOT_CONVERGED),
            before=header, after=outcome)
    else:
        done: list[str] = []

        # a fleet takes a while: say so on a TTY
        def progress(target: Target, report: Report) -> None:
            done.append(target.name)
            if sys.stderr.isatty():
                typer.echo(f"  {len(done)}/{len(targets)} {target.name}: exit {report.code}",
                           err=True)

        reports = fleet.run_together(targets, job, workers, on_done=progress)
    from reconciler import render

    codes = [r.code for r in reports if r is not None]
    rows: list[render.FleetRow] = [
        (t.name, t.settings.shown_node, None if r is None else r.code,
         None if r is None else r.data) for t, r in zip(targets, reports, strict=True)]
    if output is Output.json:
        _emit(render.fleet_json(rows))
    else:
        from reconciler.terminal import paint

        for target, report in zip(targets, reports, strict=True):
            if report is None or in_order:
                continue  # in order, each was printed as it finished
            typer.echo(paint(f"== {target.name} ({target.settings.shown_node})"), color=True)
            _print(report, output)
            typer.echo("")
        typer.echo(render.fleet_summary(rows, MEANING))
    raise typer.Exit(fleet.most_severe(codes, SEVERITY))


def _as_report(output: Output, code: int, text: str, data: dict[str, Any],
               err: Sequence[str] = ()) -> Report:
    from reconciler.report import Report

    out = [json.dumps(data, indent=2)] if output is Output.json else [text]
    return Report(code, out, list(err), data)


# -- validate ---------------------------------------------------------------------------
@app.command()
@guarded
@with_settings
def validate(settings: Settings, no_library_check: NoLibraryCheck = False,
             output: OutputOpt = Output.text, targets: TargetsOpt = None,
             workers: WorkersOpt = 4) -> None:
    """Check every config file offline: JSON5, libpath, library, names, permissions.

    \b
    Examples:
      slipstream-reconciler validate --config-dir /etc/slipstream/plugins.d
      slipstream-reconciler validate --no-library-check -o json      # in CI
      slipstream-reconciler validate --targets fleet.json5

    Exit 0 when all are valid, 1 otherwise.
    """
    job = functools.partial(_validate_report, no_library_check=no_library_check,
                            output=output)
    if targets is not None:
        _fleet(targets, settings, job, output, workers)
    _show(job(settings), output)


def _validate_report(settings: Settings, no_library_check: bool, output: Output) -> Report:
    from reconciler import render
    from reconciler.configdir import DirectoryReader, Trust

    desired = DirectoryReader(Trust(settings.allow_writable),
                              check_libraries=not no_library_check,
                              node_path=settings.node_path,
                              rules=settings.rules).read(settings.config_dir)
    desired = replace(desired, warnings=desired.warnings + _rebuilt_in_place(settings, desired))
    return _as_report(output, ERROR if desired.invalid else OK, render.validate_text(desired),
                      render.validate_json(desired))


def _rebuilt_in_place(settings: Settings, desired: Desired) -> tuple[Problem, ...]:
    """Where the node keeps old code at a path it loaded (Agave's dlopen), the files whose
    library changed at an unchanged libpath since they were applied: the planner's own
    verdict (it holds such a replace), asked as if the node still ran what the ledger says.
    Offline and read-only: the ledger is read only if the state directory has one."""
    from reconciler.desired import Problem
    from reconciler.errors import LedgerError
    from reconciler.ledgerstore import LedgerStore
    from reconciler.plan import plan

    if not settings.rules.keeps_old_code_at_same_path or not settings.state.is_dir():
        return ()
    try:
        ledger = LedgerStore(settings.state).load()
    except LedgerError as exc:
        return (Problem(str(settings.state), f"the rebuilt-in-place check was skipped: {exc}"),)
    held = plan(desired, list(ledger.entries), ledger, rules=settings.rules).held
    return tuple(Problem(h.config_file, h.reason) for h in held
                 if h.state == "rebuilt-in-place" and h.config_file is not None)


# -- plan -------------------------------------------------------------------------------
@app.command()
@guarded
@with_settings
@with_policy
def plan(
    settings: Settings, policy: Policy, output: OutputOpt = Output.text,
    detailed_exitcode: DetailedExit = False, no_library_check: NoLibraryCheck = False,
    live_from: Annotated[Path | None, typer.Option(
        "--live-from", help="Plan against a saved JSON array of live plugin names instead of "
                            "asking the node (CI without credentials).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Save the plan for `apply --plan FILE`.")] = None,
    targets: TargetsOpt = None, workers: WorkersOpt = 4,
) -> None:
    """Show what apply would change, without changing anything.

    \b
    Examples:
      slipstream-reconciler plan
      slipstream-reconciler plan --detailed-exitcode -o json
      slipstream-reconciler plan --live-from live.json --no-library-check   # CI
      slipstream-reconciler plan --out plan.json && slipstream-reconciler apply --plan plan.json

    Exit 1 on any error (invalid files included; the plan is still printed), else 0,
    or with --detailed-exitcode 2 when the node would change (load, replace, unload;
    adopt and forget touch only the ledger) and 0 otherwise.
    """
    settings = replace(settings, check_libraries=not no_library_check)
    if targets is not None:
        if live_from is not None or out is not None:
            raise SettingsError("--live-from and --out plan one node; not with --targets")
        _fleet(targets, settings, functools.partial(
            _plan_report, policy=policy, output=output, detailed_exitcode=detailed_exitcode),
            output, workers)
    _show(_plan_report(settings, policy, output, detailed_exitcode, live_from, out), output)


def _plan_report(settings: Settings, policy: Policy, output: Output, detailed_exitcode: bool,
                 live_from: Path | None = None, out: Path | None = None) -> Report:
    from reconciler import render
    from reconciler.apply import Reconciler

    live = _read_live(live_from) if live_from is not None else None
    reconciler = Reconciler(settings, policy, live_override=live)
    with reconciler:
        the_plan, mark = reconciler.plan()
        refused = reconciler.cannot_apply(the_plan)
    shown = settings.shown_node if live is None else f"(live state from {live_from})"
    client = reconciler.client if live is None else None
    kind = client.kind if client is not None else None
    data = render.plan_json(the_plan, shown, settings.shown_network, kind, refused)
    if out is not None:
        from reconciler import planfile

        planfile.write(out, data, mark, settings.config_dir, policy)
    code = OK
    if the_plan.invalid or the_plan.blocked:
        code = ERROR
    elif detailed_exitcode and the_plan.changes_node:
        code = CHANGES
    text = render.plan_text(the_plan, str(settings.config_dir.absolute()), shown,
                            settings.shown_network, client.described if client else None,
                            refused)
    return _as_report(output, code, text, data)


def _read_live(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--live-from {path}: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SettingsError(f"--live-from {path} must hold a JSON array of plugin names, as "
                            "GET /slipstream/plugins returns it")
    return names


# -- apply ------------------------------------------------------------------------------
@app.command()
@guarded
@with_settings
@with_policy
def apply(
    settings: Settings, policy: Policy, output: OutputOpt = Output.text,
    detailed_exitcode: DetailedExit = False,
    plan_file: Annotated[Path | None, typer.Option(
        "--plan", help="Apply a plan saved by `plan --out`; refused if anything changed "
                       "since.")] = None,
    targets: TargetsOpt = None,
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="With --targets: go on after a target fails.")] = False,
) -> None:
    """Converge the node to the config directory: unloads, then replaces, then loads.

    \b
    Examples:
      slipstream-reconciler apply
      slipstream-reconciler apply --jwt-token-file ~/.aleo/storage/jwt_secret_aleo1….txt
      slipstream-reconciler apply --max-unloads 2 --detailed-exitcode
      slipstream-reconciler apply --targets fleet.json5 --keep-going

    Exit 0 converged (2 with changes made, under --detailed-exitcode); 3 the pass ran but
    did not converge (a failed action, an invalid file, a failed replace); 1 the pass could
    not run. With --targets: target by target, stopping at the first that fails.
    """
    expect = None
    if plan_file is not None:
        from reconciler import planfile

        if targets is not None:
            raise SettingsError("--plan applies one node's saved plan; not with --targets")
        saved = planfile.read(plan_file)
        expect = saved.fingerprint
        settings = replace(settings, config_dir=saved.config_dir)
        policy = saved.policy  # the plan was made under this policy; it is applied under it
    job = functools.partial(_apply_report, policy=policy, output=output,
                            detailed_exitcode=detailed_exitcode)
    if targets is not None:
        _fleet(targets, settings, job, output, in_order=True, keep_going=keep_going)
    _show(job(settings, expect=expect), output)


def _apply_report(settings: Settings, policy: Policy, output: Output, detailed_exitcode: bool,
                  expect: str | None = None) -> Report:
    from reconciler import render
    from reconciler.apply import Reconciler
    from reconciler.terminal import paint

    reconciler = Reconciler(settings, policy)
    directory = str(settings.config_dir.absolute())
    text = output is Output.text
    live = sys.stdout.isatty()

    def waiting() -> None:
        typer.echo("waiting for the pass in flight (the daemon or another apply) to finish…",
                   err=True)

    def progress(outcome: Outcome) -> None:
        if text:  # flushed line by line only where a person watches: 1000 loads, 1000 writes
            sys.stdout.write(paint(render.outcome_line(outcome, directory)) + "\n")
            if live:
                sys.stdout.flush()

    with reconciler:  # closes its session and the ledger's thread: one per fleet target
        result = reconciler.run_pass(expect, on_wait=waiting, on_outcome=progress)
    sys.stdout.flush()
    lines = []
    if result.plan.invalid or result.plan.blocked or not result.outcomes:
        lines.append(render.plan_text(result.plan, directory, settings.shown_node,
                                      settings.shown_network))
    if not result.plan.blocked:
        lines.append(render.apply_summary(result))
        lines.append(f"Node: {reconciler.client.described}.")
    err = [f"error: {f.change.label}: {f.message}" for f in result.failures]
    if result.plan.blocked:
        code = ERROR
        err.append(f"error: {result.plan.blocked}")
    elif not result.converged:
        code = NOT_CONVERGED
    else:
        code = CHANGES if detailed_exitcode and result.changed else OK
    kind = reconciler.client.kind
    return _as_report(output, code, "\n".join(lines),
                      render.apply_json(result, settings.shown_node, settings.shown_network,
                                        kind), err)


# -- status -----------------------------------------------------------------------------
@app.command()
@guarded
@with_settings
@with_policy
def status(settings: Settings, policy: Policy, output: OutputOpt = Output.text,
           targets: TargetsOpt = None, workers: WorkersOpt = 4) -> None:
    """Where each plugin stands: in-sync, pending-*, unmanaged, invalid, stalled, …

    \b
    Examples:
      slipstream-reconciler status
      slipstream-reconciler status -o json
      slipstream-reconciler status --targets fleet.json5

    Exit 0 in sync, 2 out of sync, 1 error.
    """
    job = functools.partial(_status_report, policy=policy, output=output)
    if targets is not None:
        _fleet(targets, settings, job, output, workers)
    _show(job(settings), output)


def _status_report(settings: Settings, policy: Policy, output: Output) -> Report:
    from reconciler import render
    from reconciler.apply import Reconciler
    from reconciler.daemon import read_record, running
    from reconciler.plan import Hold, count_states, in_sync, statuses

    record = read_record(settings.state)
    alive = record is not None and running(settings.state)
    holds = tuple(Hold(h["config_file"], h["config_sha256"], h["library_sha256"], h["reason"])
                  for h in (record or {}).get("holds", []) if alive)
    reconciler = Reconciler(settings, replace(policy, hold=holds))
    with reconciler:
        the_plan, _ = reconciler.plan()
        refused = reconciler.cannot_apply(the_plan)
    rows = statuses(the_plan)
    client = reconciler.client
    prefix = client.prefix
    directory = str(settings.config_dir.absolute())
    meta: dict[str, object] = {
        "node": settings.shown_node, "network": settings.shown_network, "api_prefix": prefix,
        "node_kind": client.kind, "cannot_apply": refused,
        "config_dir": directory, "in_sync": in_sync(rows),
        "daemon": render.daemon_json(record, alive)}
    counts = ", ".join(f"{n} {s}" for s, n in sorted(count_states(rows).items()))
    network = f" · network {settings.shown_network}" if settings.shown_network else ""
    footer = (f"node {settings.shown_node}{network} · {client.described}"
              f" · {counts or 'no plugins'}")
    if refused:
        footer += f"\nthis node cannot apply the changes: {refused}"
    daemon_line = render.daemon_line(record, alive)
    if daemon_line:
        footer += "\n" + daemon_line
    return _as_report(output, OK if in_sync(rows) else CHANGES,
                      render.status_text(rows, directory, footer),
                      render.status_json(rows, meta))


# -- run: the daemon -----------------------------------------------------------------
class LogFormat(StrEnum):
    text = "text"
    json = "json"


@app.command()
@guarded(settings_code=SETTINGS_ERROR)
@with_settings
@with_policy
def run(
    settings: Settings, policy: Policy,
    debounce: Annotated[float, typer.Option(
        "--debounce", envvar="SLIPSTREAM_DEBOUNCE",
        help="Quiet period after the last file event before a pass (seconds).")] = 0.25,
    max_wait: Annotated[float, typer.Option(
        "--max-wait", envvar="SLIPSTREAM_MAX_WAIT",
        help="Longest wait after the first file event of a burst (seconds).")] = 2.0,
    probe_interval: Annotated[float, typer.Option(
        "--probe-interval", envvar="SLIPSTREAM_PROBE_INTERVAL",
        help="How often to list the node's plugins and scan the directory (seconds).")] = 2.0,
    resync_interval: Annotated[float, typer.Option(
        "--resync-interval", envvar="SLIPSTREAM_RESYNC_INTERVAL",
        help="A full pass at least this often, +-10 % jitter (seconds).")] = 60.0,
    max_backoff: Annotated[float, typer.Option(
        "--max-backoff", envvar="SLIPSTREAM_MAX_BACKOFF",
        help="Longest wait between retries after failures (seconds).")] = 60.0,
    metrics_address: Annotated[str, typer.Option(
        "--metrics-address", envvar="SLIPSTREAM_METRICS_ADDRESS",
        help="HOST:PORT for /metrics and /healthz, or 'off'.")] = "127.0.0.1:9479",
    watch: Annotated[bool, typer.Option(
        "--watch/--no-watch", envvar="SLIPSTREAM_WATCH",
        help="Use inotify; --no-watch relies on the scan every probe interval (NFS, FUSE).")]
    = True,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", envvar="SLIPSTREAM_LOG_FORMAT", help="text or json.")] = LogFormat.text,
    log_level: Annotated[str, typer.Option(
        "--log-level", envvar="SLIPSTREAM_LOG_LEVEL", help="debug, info, warning, error.")]
    = "info",
) -> None:
    """Run the daemon: watch the directory, probe the node, converge on every change.

    \b
    Examples:
      slipstream-reconciler run          # settings from SLIPSTREAM_* (EnvironmentFile=)
      slipstream-reconciler run --no-watch --log-format json

    SIGHUP runs a pass now (`reload` does it and waits for the pass); SIGTERM stops
    within 5 s. Exits 0 when stopped; 78 for bad settings at start-up (an unreadable
    credential included), which systemd does not retry.
    """
    from reconciler import logs
    from reconciler.daemon import Daemon, DaemonOptions

    options = DaemonOptions(debounce, max_wait, probe_interval, resync_interval, max_backoff,
                            metrics_address, watch, log_format.value, log_level)
    logs.setup(options.log_format, "debug" if _debug["on"] else options.log_level)
    raise typer.Exit(Daemon(settings, policy, options).run())


@app.command()
@guarded
def reload(
    pid: Annotated[int, typer.Option(
        "--pid", help="The daemon's process id (systemd: $MAINPID).")],
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", envvar="SLIPSTREAM_STATE_DIR", show_default=False,
        help="The daemon's state directory.")] = None,
    wait: Annotated[float, typer.Option(
        "--wait", help="Longest wait for the pass (seconds).")] = 85.0,
) -> None:
    """Ask the running daemon for a pass now and wait until it has run: the unit's
    ExecReload=, so that `systemctl reload` returns after the new pass.

    
    Example:
      slipstream-reconciler reload --pid "$(systemctl show -P MainPID slipstream-reconciler)"

    Exit 0 once a pass that started after the request has ended (whatever its result,
    which is printed); 1 when the daemon is not running or the pass outlasts --wait.
    """
    from reconciler.daemon import request_pass

    code, message = request_pass(pid, state_dir or default_state_dir(), wait)
    typer.echo(message, err=code != OK)
    raise typer.Exit(code)


# -- node: the reference node -----------------------------------------------------------
@app.command()
@guarded
def node(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(
        "--kind", help="Which node to reproduce: snarkos (Slipstream REST) or agave (a "
                       "validator's admin RPC on <ledger>/admin.rpc).")] = "snarkos",
    rest: Annotated[str, typer.Option("--rest", help="HOST:PORT to serve on.")]
    = "127.0.0.1:3030",
    network: Annotated[str, typer.Option("--network")] = "mainnet",
    jwt_secret: Annotated[str | None, typer.Option(
        "--jwt-secret", help="Base64 of exactly 16 bytes (as snarkOS). Default: random.")] = None,
    jwt_timestamp: Annotated[int | None, typer.Option(
        "--jwt-timestamp", help="Fix the token's iat.")] = None,
    nojwt: Annotated[bool, typer.Option("--nojwt", help="Turn authentication off.")] = False,
    slipstream_config: Annotated[list[Path] | None, typer.Option(
        "--slipstream-config", help="A start-up plugin config (repeatable). Without any, the "
                                    "node has no plugin manager and answers 503.")] = None,
    rest_rps: Annotated[int, typer.Option(
        "--rest-rps", help="Requests per second per client IP (0: unlimited, a refnode "
                           "extension).")] = 10,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where jwt_secret_<address>.txt is written.")] = None,
    fault_latency_ms: Annotated[float, typer.Option("--fault-latency-ms")] = 0.0,
    fault_error_rate: Annotated[float, typer.Option("--fault-error-rate")] = 0.0,
    fault_drop_rate: Annotated[float, typer.Option("--fault-drop-rate")] = 0.0,
    fault_seed: Annotated[int | None, typer.Option("--fault-seed")] = None,
    fault_load_delay: Annotated[float, typer.Option(
        "--fault-load-delay", help="Seconds each run-time load's on_load takes, holding the "
                                   "manager's write lock (lists wait too).")] = 0.0,
    no_slipstream: Annotated[bool, typer.Option(
        "--no-slipstream", help="Behave like a build without --features slipstream-plugins "
                                "(or any snarkOS after PR #4468): every slipstream path is "
                                "a 404 with an empty body.")] = False,
    no_runtime_loading: Annotated[bool, typer.Option(
        "--no-runtime-loading", help="Behave like the proposed static-plugin node: only GET; "
                                     "POST and DELETE answer 405.")] = False,
    no_v2: Annotated[bool, typer.Option(
        "--no-v2", help="Behave like an older snarkOS with no /v2 routes.")] = False,
    v1_http_code_suffix: Annotated[bool, typer.Option(
        "--v1-http-code-suffix", help="The snarkOS branch whose v1 'Failed to convert error' "
                                      "ends in ' (HTTP nnn)'.")] = False,
    root: Annotated[Path | None, typer.Option(
        "--root", help="Read every path the node is given under DIR, as a container with DIR "
                       "as its root would (a refnode extension).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="Serve HTTPS with this certificate (a refnode extension).")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key")] = None,
    ledger: Annotated[Path | None, typer.Option(
        "--ledger", help="agave: the validator's ledger directory; the admin RPC socket is "
                         "<ledger>/admin.rpc (mode 0600).")] = None,
    geyser_plugin_config: Annotated[list[Path] | None, typer.Option(
        "--geyser-plugin-config", help="agave: a start-up Geyser plugin config "
                                       "(repeatable).")] = None,
    geyser_plugin_always_enabled: Annotated[bool, typer.Option(
        "--geyser-plugin-always-enabled", help="agave: run the plugin service without "
                                               "start-up plugins.")] = False,
    fault_unload_delay: Annotated[float, typer.Option(
        "--fault-unload-delay", help="agave: seconds each unload waits for notifiers to "
                                     "let go (the worker is busy meanwhile).")] = 0.0,
    fault_hang: Annotated[bool, typer.Option(
        "--fault-hang", help="agave: the plugin worker never answers.")] = False,
) -> None:
    """Run the bundled reference node, for demos and tests: snarkOS's Slipstream REST API,
    or with --kind agave an Agave validator's admin RPC.

    \b
    Examples:
      slipstream-reconciler node --rest 127.0.0.1:3030 --data-dir /tmp/node \\
          --slipstream-config /etc/slipstream/boot/metrics.json5
      slipstream-reconciler node --kind agave --ledger /tmp/ledger \\
          --geyser-plugin-config /etc/geyser/boot/postgres.json5

    SIGUSR1 restarts it (run-time plugins are forgotten, as on a real restart).
    """
    from reconciler.refnode import Faults, NodeOptions, StartupError, decode_secret
    from reconciler.refnode.serve import rest_address, serve

    _refuse_other_kinds_flags(ctx, kind)
    if kind == "agave":
        from reconciler.refnode.agave import AgaveFaults, AgaveOptions

        if ledger is None:
            raise SettingsError("--kind agave needs --ledger DIR (where admin.rpc lives)")
        serve(AgaveOptions(
            ledger=ledger.absolute(),
            geyser_plugin_configs=[str(p) for p in geyser_plugin_config or []],
            always_enabled=geyser_plugin_always_enabled,
            faults=AgaveFaults(fault_latency_ms, fault_error_rate, fault_drop_rate,
                               fault_seed, fault_load_delay, fault_unload_delay,
                               fault_hang)))
        return

    host, port = rest_address(rest)
    try:
        secret = decode_secret(jwt_secret) if jwt_secret else None
    except StartupError as exc:
        raise SettingsError(f"the reference node could not start: {exc}") from None
    serve(NodeOptions(
        host=host, port=port, network=network, jwt_secret=secret,
        jwt_timestamp=jwt_timestamp, nojwt=nojwt,
        slipstream_configs=[str(p) for p in slipstream_config or []], rest_rps=rest_rps,
        data_dir=data_dir,
        faults=Faults(fault_latency_ms, fault_error_rate, fault_drop_rate, fault_seed,
                      fault_load_delay),
        slipstream=not no_slipstream, runtime_loading=not no_runtime_loading,
        api_v2=not no_v2, v1_http_code_suffix=v1_http_code_suffix,
        root=str(root) if root else None,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None))


# Flags that only one kind of reference node understands (the `node` command).
_SNARKOS_ONLY = ("rest", "network", "jwt_secret", "jwt_timestamp", "nojwt", "slipstream_config",
                 "rest_rps", "data_dir", "no_slipstream", "no_runtime_loading", "no_v2",
                 "v1_http_code_suffix", "root", "tls_cert", "tls_key")
_AGAVE_ONLY = ("ledger", "geyser_plugin_config", "geyser_plugin_always_enabled",
               "fault_unload_delay", "fault_hang")


def _refuse_other_kinds_flags(ctx: typer.Context, kind: str) -> None:
    """A flag the chosen kind does not have is a mistake, said in one line, not ignored."""
    import click

    if kind not in ("snarkos", "agave"):
        raise SettingsError(f"--kind must be snarkos or agave, not {kind!r}")
    foreign = _SNARKOS_ONLY if kind == "agave" else _AGAVE_ONLY
    given = [name for name in foreign
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        other = "snarkOS" if kind == "agave" else "Agave"
        raise SettingsError(f"{flags}: only for the {other} reference node, not with "
                            f"--kind {kind}")


def main() -> None:
    """Usage errors exit 1, not click's 2: under --detailed-exitcode, 2 means 'changes',
    and a typo in a CI job must not read as one."""
    import click

    try:
        code = app(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        # a bad SLIPSTREAM_* value for `run` is a settings error too (see SETTINGS_ERROR)
        code = SETTINGS_ERROR if exc.ctx is not None and exc.ctx.info_name == "run" \
            else ERROR
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except click.exceptions.ClickException as exc:
        exc.show()
        code = ERROR
    sys.exit(code if isinstance(code, int) else OK)


if __name__ == "__main__":
    main()
