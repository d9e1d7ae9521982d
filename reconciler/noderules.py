"""What a kind of node does, as a value the pure planner is handed.

The core speaks one interface to every kind of node (reconciler.nodeclient); what
differs between snarkOS and an Agave validator is declared here as data, the way a
Terraform provider declares its schema, so that the planner, the executor and the
views never branch on the kind's name. Adding a kind means adding a value here and an
adapter, not editing the planner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeRules:
    kind: str  # the --node-kind word: only for output, never compared by the core
    product: str  # what operators call the node
    # The node refuses a second plugin on a library already loaded (snarkOS compares the
    # joined libpath); Agave checks names only and loads one library twice under two names.
    one_plugin_per_library: bool
    # The node can replace a plugin in one call (Agave's reloadPlugin).
    native_reload: bool
    # dlopen of a path already opened by this process returns the library in memory, so a
    # library rebuilt in place at the same path cannot be picked up without a restart
    # (anza-xyz/agave#3620, #3745): a changed library at an unchanged path is held, not
    # replaced, and the operator is told to install each version under its own path.
    keeps_old_code_at_same_path: bool
    # Common plugins re-read a `.json` config as strict JSON (Yellowstone gRPC), so a
    # `.json` file that parses only as JSON5 loads and then fails in on_load.
    json_suffix_is_strict: bool
    # Common plugins refuse a `name` key in their config (Yellowstone gRPC rejects unknown
    # top-level keys), so a config without one is normal, not worth a warning.
    plugins_may_forbid_name: bool
    # JWT settings apply (snarkOS's REST API); Agave's socket mode is its only lock.
    authenticated: bool
    # The node limits requests per client, so we pace ours (--max-rps).
    rate_limited: bool
    # How a restart of the node shows, in the operator's words (daemon logs and docs).
    restart_shows_as: str
    # The start-up flag, for messages that tell an operator how plugins get there.
    startup_flag: str
    # The Settings field that says where the node is: "node_url" (a REST address) or
    # "ledger" (the validator's ledger directory, holding its admin.rpc socket).
    address: str


SNARKOS = NodeRules(
    kind="snarkos", product="snarkOS", one_plugin_per_library=True, native_reload=False,
    keeps_old_code_at_same_path=False, json_suffix_is_strict=False,
    plugins_may_forbid_name=False, authenticated=True,
    rate_limited=True, restart_shows_as="the plugin list losing run-time plugins",
    startup_flag="--slipstream-config", address="node_url")

AGAVE = NodeRules(
    kind="agave", product="Agave validator", one_plugin_per_library=False, native_reload=True,
    keeps_old_code_at_same_path=True, json_suffix_is_strict=True,
    plugins_may_forbid_name=True, authenticated=False,
    rate_limited=False, restart_shows_as="its admin.rpc socket being replaced",
    startup_flag="--geyser-plugin-config", address="ledger")

KINDS = {rules.kind: rules for rules in (SNARKOS, AGAVE)}
