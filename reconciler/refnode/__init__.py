"""The bundled reference node: snarkOS's Slipstream REST API on loopback."""

from reconciler.refnode.server import Faults, NodeOptions, RefNode, StartupError, decode_secret

__all__ = ["Faults", "NodeOptions", "RefNode", "StartupError", "decode_secret"]
