"""The options every node-facing command shares, declared once.

`@with_settings` and `@with_policy` give a command one `settings: Settings` (or `policy:
Policy`) parameter and expose the shared options in its place, so that each option, its
variable and its help text exist in exactly one place and every command reads them alike.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reconciler.errors import SettingsError
from reconciler.settings import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_NODE_URL,
    SNARKOS_ONLY,
    Settings,
    refuse_snarkos_only,
)

if TYPE_CHECKING:  # the planner loads when a command needs it, not with the options
    from reconciler.plan import Policy

# A typer command: its signature is read at run time (and rewritten below), so no static
# parameter list describes it.
Command = Callable[..., Any]


class Output(StrEnum):
    text = "text"
    json = "json"


class Api(StrEnum):
    auto = "auto"
    v2 = "v2"
    v1 = "v1"


class NodeKindOpt(StrEnum):
    snarkos = "snarkos"
    agave = "agave"


class PruneOpt(StrEnum):
    managed = "managed"
    all = "all"
    none = "none"


ConfigDir = Annotated[Path, typer.Option(
    "--config-dir", envvar="SLIPSTREAM_CONFIG_DIR", help="Directory of plugin JSON5 configs.")]
AllowWritable = Annotated[bool, typer.Option(
    "--insecure-allow-writable", envvar="SLIPSTREAM_INSECURE_ALLOW_WRITABLE",
    help="Development only: accept a config directory or files that others can write.")]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json.")]
NoLibraryCheck = Annotated[bool, typer.Option(
    "--no-library-check",
    help="Do not require or hash the plugin libraries (CI, where the .so files are not "
         "checked out); a changed library then goes unnoticed.")]
DetailedExit = Annotated[bool, typer.Option(
    "--detailed-exitcode", help="Exit 2 when there are (or were) changes, 0 when none.")]

# A snarkOS-only setting given for an Agave validator is refused (settings.
# refuse_snarkos_only); whether it was given, on the command line or in the environment,
# or is its default, is what click records for each parameter (build_settings).
SETTINGS: list[tuple[str, object, object]] = [
    ("config_dir", ConfigDir, Path(DEFAULT_CONFIG_DIR)),
    ("node_kind", Annotated[NodeKindOpt, typer.Option(
        "--node-kind", envvar="SLIPSTREAM_NODE_KIND",
        help="snarkos (a Slipstream REST API) or agave (a validator's admin RPC socket).")],
     NodeKindOpt.snarkos),
    ("ledger", Annotated[Path | None, typer.Option(
        "--ledger", envvar="SLIPSTREAM_LEDGER", show_default=False,
        help="Agave: the validator's ledger directory (its -l/--ledger), where the "
             "admin.rpc socket is.")], None),
    ("node_url", Annotated[str, typer.Option(
        "--node-url", envvar="SLIPSTREAM_NODE_URL",
        help="snarkOS: the node's REST address.")], DEFAULT_NODE_URL),
    ("network", Annotated[str, typer.Option(
        "--network", envvar="SLIPSTREAM_NETWORK",
        help="snarkOS: mainnet, testnet or canary.")], "mainnet"),
    ("api", Annotated[Api, typer.Option(
        "--api", envvar="SLIPSTREAM_API",
        help="snarkOS: API prefix: v2 (real status codes), v1 (plain prefix, errors as text) "
             "or auto.")], Api.auto),
    ("jwt_token_file", Annotated[Path | None, typer.Option(
        "--jwt-token-file", envvar="SLIPSTREAM_JWT_TOKEN_FILE",
        help="snarkOS: the node's jwt_secret_<address>.txt (holds a token; re-read after a "
             "401). A token may also come from $SLIPSTREAM_JWT_TOKEN, never from the command "
             "line.")],
     None),
    ("jwt_secret_file", Annotated[Path | None, typer.Option(
        "--jwt-secret-file", envvar="SLIPSTREAM_JWT_SECRET_FILE",
        help="snarkOS: file holding the node's base64 --jwt-secret; tokens are minted from "
             "it.")],
     None),
    ("state_dir", Annotated[Path | None, typer.Option(
        "--state-dir", envvar="SLIPSTREAM_STATE_DIR", show_default=False,
        help="Where the ledger lives. Default: /var/lib/slipstream-reconciler as root, else "
             "$XDG_STATE_HOME/slipstream-reconciler.")], None),
    ("node_config_dir", Annotated[Path | None, typer.Option(
        "--node-config-dir", envvar="SLIPSTREAM_NODE_CONFIG_DIR", show_default=False,
        help="The config directory's path as the node sees it (e.g. in a container). "
             "Default: same as --config-dir.")], None),
    ("node_state_dir", Annotated[Path | None, typer.Option(
        "--node-state-dir", envvar="SLIPSTREAM_NODE_STATE_DIR", show_default=False,
        help="The state directory's path as the node sees it: a failed replace rolls back "
             "from copies kept there, which the node must read. Default: same as "
             "--state-dir.")], None),
    ("max_rps", Annotated[float, typer.Option(
        "--max-rps", envvar="SLIPSTREAM_MAX_RPS",
        help="snarkOS: requests per second to stay under (the node's --rest-rps); 0 turns "
             "pacing off.")], 10.0),
    ("timeout", Annotated[float, typer.Option(
        "--timeout", envvar="SLIPSTREAM_TIMEOUT",
        help="Seconds to wait for each node answer.")], 10.0),
    ("ca_file", Annotated[Path | None, typer.Option(
        "--ca-file", envvar="SLIPSTREAM_CA_FILE", show_default=False,
        help="snarkOS: CA bundle to verify an https:// node with. Default: the system's.")],
     None),
    ("insecure_skip_verify", Annotated[bool, typer.Option(
        "--insecure-skip-verify", envvar="SLIPSTREAM_INSECURE_SKIP_VERIFY",
        help="snarkOS: do not verify the node's TLS certificate. Loud, and never for "
             "production.")],
     False),
    ("insecure_allow_writable", AllowWritable, False),
]

POLICY: list[tuple[str, object, object]] = [
    ("prune", Annotated[PruneOpt, typer.Option(
        "--prune", envvar="SLIPSTREAM_PRUNE",
        help="What may be unloaded: managed (only what this tool loaded), all (also "
             "unmanaged plugins), none.")], PruneOpt.managed),
    ("allow_empty", Annotated[bool, typer.Option(
        "--allow-empty", help="Let an existing, empty config directory unload every managed "
                              "plugin.")], False),
    ("max_unloads", Annotated[int | None, typer.Option(
        "--max-unloads", envvar="SLIPSTREAM_MAX_UNLOADS", show_default=False,
        help="Refuse a pass that would unload more than this many plugins.")], None),
]


def build_settings(config_dir: Path, node_kind: NodeKindOpt, ledger: Path | None,
                   node_url: str, network: str, api: Api,
                   jwt_token_file: Path | None, jwt_secret_file: Path | None,
                   state_dir: Path | None, node_config_dir: Path | None,
                   node_state_dir: Path | None, max_rps: float,
                   timeout: float, ca_file: Path | None, insecure_skip_verify: bool,
                   insecure_allow_writable: bool) -> Settings:
    refuse_snarkos_only(node_kind.value, _given(SNARKOS_ONLY))
    return Settings(config_dir=config_dir, node_url=node_url, network=network, api=api.value,
                    jwt_token_file=jwt_token_file, jwt_secret_file=jwt_secret_file,
                    state_dir=state_dir, node_config_dir=node_config_dir,
                    node_state_dir=node_state_dir, max_rps=max_rps,
                    timeout=timeout, ca_file=ca_file, insecure_skip_verify=insecure_skip_verify,
                    allow_writable=insecure_allow_writable, node_kind=node_kind.value,
                    ledger=ledger)


def _given(names: Iterable[str]) -> set[str]:
    """Which of these settings the operator gave (command line or environment), as click
    recorded it, as opposed to their defaults; "jwt_token" for $SLIPSTREAM_JWT_TOKEN."""
    import os

    import click

    from reconciler.auth import TOKEN_ENV

    ctx = click.get_current_context(silent=True)
    defaults = (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    given = {name for name in names if ctx is not None
             and ctx.get_parameter_source(name) not in (None, *defaults)}
    if os.environ.get(TOKEN_ENV):
        given.add("jwt_token")
    return given


def build_policy(prune: PruneOpt, allow_empty: bool, max_unloads: int | None) -> Policy:
    from reconciler.plan import Policy, Prune

    if max_unloads is not None and max_unloads < 0:
        raise SettingsError("--max-unloads must be 0 or more")
    return Policy(Prune(prune.value), allow_empty, max_unloads)


def _injecting(target: str, spec: list[tuple[str, object, object]],
               build: Callable[..., object]) -> Callable[[Command], Command]:
    def decorate(command: Command) -> Command:
        # Only the command's own options are evaluated: the injected parameter's type
        # (Policy) may be imported for the type checker alone.
        raw = inspect.get_annotations(command)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                         annotation=_evaluate(raw.get(p.name), command))
               for p in inspect.signature(command).parameters.values() if p.name != target]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                    annotation=annotation) for name, annotation, default in spec]
        names = [name for name, _, _ in spec]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(**{target: build(**values)}, **kwargs)

        params = [*shared, *own]
        # typer reads __signature__; functools' wrapper type does not declare it.
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def _evaluate(annotation: object, command: Callable[..., object]) -> object:
    """A string annotation (PEP 563) evaluated where the command was defined."""
    if isinstance(annotation, str):
        return eval(annotation, command.__globals__)
    return annotation


with_settings = _injecting("settings", SETTINGS, build_settings)
with_policy = _injecting("policy", POLICY, build_policy)
