"""The one interface the core speaks to a node, whatever its protocol.

Two adapters implement it: reconciler.snarkosclient (snarkOS's Slipstream REST API,
JWT, v1/v2 prefixes, 429s) and reconciler.agaveclient (an Agave validator's admin RPC
over a Unix socket, JSON-RPC 2.0). Each turns its protocol's answers into the NodeError
branch of the error tree (reconciler.errors), so nothing above an adapter looks at a
status code or an RPC error code, and what the kinds do differently is the adapter's
`rules` (reconciler.noderules), a value, not a branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from reconciler.noderules import NodeRules

if TYPE_CHECKING:
    from reconciler.pacing import Pacer
    from reconciler.settings import Settings


class NodeClient(Protocol):
    # What this kind of node does (handed to the planner).
    rules: NodeRules
    # Seconds a call may keep waiting out the node's own pushback (429s) before failing.
    patience: float
    # Called once per request with (method, status): the daemon's metrics and liveness.
    # The status is the HTTP code, or 0 for a call that got no answer.
    on_response: Callable[[str, int], None] | None
    # Our own request pace (a shared budget between the pass and the probe).
    pacer: Pacer

    @property
    def kind(self) -> str | None:
        """What the node turned out to be on first contact (a short word for JSON
        output), or None before it answered."""

    @property
    def described(self) -> str:
        """The kind of node in the operator's words."""

    @property
    def prefix(self) -> str | None:
        """The API prefix in use (snarkOS); None where the protocol has none."""

    def list(self) -> list[str]:
        """The loaded plugins' names, in the node's order."""

    def load(self, config_file: str) -> str:
        """Loads a plugin from a config file the node reads itself; returns its name."""

    def unload(self, name: str) -> None: ...

    def reload(self, name: str, config_file: str) -> None:
        """Replaces a plugin in one call, where `rules.native_reload` says the node can.
        The node unloads first: on failure nothing is loaded under that name."""

    def require_runtime_loading(self) -> None:
        """Raises RuntimeLoadUnsupported unless this node can change plugins at run time,
        asked without changing anything."""

    def blames_the_plugin(self, reason: str) -> bool:
        """Whether a load failure is the plugin's (its config or library): retrying the
        same files fails the same way. The node's texts say so; only its adapter reads
        them."""

    def sibling(self) -> NodeClient:
        """A second client to the same node sharing this one's request budget (the
        daemon's probe thread)."""

    def close(self) -> None: ...


# Each kind's adapter module, which has `connect(settings) -> NodeClient`. The one place
# that picks an adapter by the kind's name, as Terraform resolves a provider by its name.
ADAPTERS = {"snarkos": "reconciler.snarkosclient", "agave": "reconciler.agaveclient"}


def connect(settings: Settings) -> NodeClient:
    """A client for the settings' node, of the settings' kind. An adapter is imported only
    when used: an Agave host never imports `requests`."""
    import importlib

    adapter = importlib.import_module(ADAPTERS[settings.rules.kind])
    client: NodeClient = adapter.connect(settings)
    return client
