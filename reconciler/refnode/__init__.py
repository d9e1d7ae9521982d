"""The bundled reference node: snarkOS's Slipstream REST API on loopback, or an Agave
validator's admin RPC on a Unix socket."""

from reconciler.refnode.agave import AgaveFaults, AgaveNode, AgaveOptions
from reconciler.refnode.server import Faults, NodeOptions, RefNode, StartupError, decode_secret

__all__ = ["AgaveFaults", "AgaveNode", "AgaveOptions", "Faults", "NodeOptions", "RefNode",
           "StartupError", "decode_secret"]
