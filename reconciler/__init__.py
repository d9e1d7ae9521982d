"""slipstream-reconciler: a directory of plugin configs is the truth; the node converges to it."""

__version__ = "0.1.0"
