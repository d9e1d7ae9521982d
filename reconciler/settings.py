"""Settings shared by every command: one frozen value built from options and variables."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from reconciler.errors import SettingsError
from reconciler.noderules import KINDS, NodeRules
from reconciler.snarkos import NETWORKS

DEFAULT_CONFIG_DIR = "/etc/slipstream/plugins.d"
DEFAULT_NODE_URL = "http://127.0.0.1:3030"
APIS = ("auto", "v2", "v1")
# Settings that only a snarkOS node's REST API has (JWT, its rate limit, TLS), by the name
# an operator gives them: an Agave validator's admin socket has none of them, and one
# given for it is a mistake to say, not a value to ignore.
SNARKOS_ONLY = {"node_url": "--node-url", "network": "--network", "api": "--api",
                "jwt_token_file": "--jwt-token-file", "jwt_secret_file": "--jwt-secret-file",
                "jwt_token": "$SLIPSTREAM_JWT_TOKEN", "max_rps": "--max-rps",
                "ca_file": "--ca-file", "insecure_skip_verify": "--insecure-skip-verify"}


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/slipstream-reconciler")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "slipstream-reconciler"


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    node_url: str = DEFAULT_NODE_URL
    network: str = "mainnet"
    api: str = "auto"
    jwt_token_file: Path | None = None
    jwt_secret_file: Path | None = None
    state_dir: Path | None = None
    node_config_dir: Path | None = None
    node_state_dir: Path | None = None
    max_rps: float = 10.0
    timeout: float = 10.0
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    allow_writable: bool = False
    check_libraries: bool = True  # False only for validate/plan in CI (--no-library-check)
    node_kind: str = "snarkos"  # a key of noderules.KINDS
    ledger: Path | None = None  # Agave: the validator's ledger directory (admin.rpc)

    def __post_init__(self) -> None:
        if self.node_kind not in KINDS:
            raise SettingsError(f"--node-kind must be one of {', '.join(KINDS)}, "
                                f"not {self.node_kind!r}")
        if self.node_kind == "agave" and self.ledger is None:
            raise SettingsError("--node-kind agave needs --ledger DIR (the validator's ledger "
                                "directory, where its admin.rpc socket is)")
        if self.node_kind != "agave" and self.ledger is not None:
            raise SettingsError(f"--ledger is the Agave validator's ledger directory; it does "
                                f"not apply to --node-kind {self.node_kind} (give --node-kind "
                                "agave, or drop --ledger / $SLIPSTREAM_LEDGER)")
        if self.network not in NETWORKS:
            raise SettingsError(f"--network must be one of {', '.join(NETWORKS)}, "
                                f"not {self.network!r}")
        if self.api not in APIS:
            raise SettingsError(f"--api must be one of {', '.join(APIS)}, not {self.api!r}")
        parts = urlsplit(self.node_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"--node-url must be an http:// or https:// URL, "
                                f"not {mask_url(self.node_url)!r}")
        if self.max_rps < 0:
            raise SettingsError("--max-rps must be 0 (no pacing) or more")
        if self.timeout <= 0:
            raise SettingsError("--timeout must be more than 0")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise SettingsError(f"--ca-file {self.ca_file} is not a readable file")
        if self.ca_file is not None and self.insecure_skip_verify:
            raise SettingsError("give --ca-file or --insecure-skip-verify, not both")

    @property
    def rules(self) -> NodeRules:
        return KINDS[self.node_kind]

    @property
    def shown_network(self) -> str | None:
        """The network, as output shows it: an Agave validator's admin socket has none
        (its cluster is not ours to name), so None, and JSON keeps the key."""
        return self.network if self.socket_path is None else None

    @property
    def socket_path(self) -> Path | None:
        """An Agave validator's admin RPC socket: `<ledger>/admin.rpc`."""
        return self.ledger / "admin.rpc" if self.ledger is not None else None

    @property
    def node_on_this_host(self) -> bool:
        """Whether the node shares this host's power cuts (which also clear its run-time
        plugins): a Unix socket, or a URL on loopback. Any other address, names included,
        counts as another host: the ledger then syncs each intent before the call."""
        if self.socket_path is not None:
            return True
        host = urlsplit(self.node_url).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def verify(self) -> bool | str:
        """What requests should verify the node's certificate with."""
        if self.insecure_skip_verify:
            return False
        return str(self.ca_file) if self.ca_file is not None else True

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir()

    def node_path(self, path: str) -> str:
        """Where the node sees one of our files. The node reads every config it loads
        itself, perhaps from inside a container that mounts our directories elsewhere:
        the config directory at --node-config-dir, and the state directory (where the
        copies a failed replace rolls back to live) at --node-state-dir. Every path that
        reaches the node goes through here."""
        for ours, theirs in ((self.config_dir, self.node_config_dir),
                             (self.state, self.node_state_dir)):
            if theirs is None:
                continue
            relative = os.path.relpath(path, os.path.abspath(ours))
            if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
                return os.path.normpath(os.path.join(str(theirs), relative))
        return path

    @property
    def shown_node(self) -> str:
        """Where the node is, as output may show it: the socket's path, or the URL with
        any password masked."""
        if self.socket_path is not None:
            return str(self.socket_path)
        return mask_url(self.node_url)


def refuse_snarkos_only(node_kind: str, given: set[str], where: str = "",
                        as_keys: bool = False) -> None:
    """One line naming the snarkOS-only settings given for a node kind that has no REST
    API. `given` holds Settings field names (and "jwt_token"): only those the operator
    set, never a default. `as_keys`: name them as a --targets file's keys."""
    if KINDS[node_kind].authenticated:
        return
    names = [f"`{field}`" if as_keys else flag for field, flag in SNARKOS_ONLY.items()
             if field in given]
    if names:
        raise SettingsError(
            f"{where}{', '.join(names)} {'does' if len(names) == 1 else 'do'} not apply to "
            f"--node-kind {node_kind}: an Agave validator's admin socket (<ledger>/admin.rpc) "
            "has no URL, network, JWT, rate limit or TLS; remove "
            f"{'it' if len(names) == 1 else 'them'} (its file mode is the only lock: run as "
            "the validator's user)")


def mask_url(url: str) -> str:
    """A URL as it may be printed: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
