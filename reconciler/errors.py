"""The error tree, in one place. Every error the tool raises on purpose is a
ReconcilerError whose str() is a complete, operator-readable sentence; the CLI prints it
and exits 1 (`run`: 78 for settings) without a traceback (unless --debug). Each class
means one thing a caller can act on; nothing above the node client looks at HTTP.

    ReconcilerError
    ├── SettingsError            an option, variable or credential is wrong or missing
    ├── ConfigDirError           the config directory cannot be read as a whole
    │   └── UntrustedConfig      others could have written it: refused as a whole
    ├── LedgerError              the ledger is corrupt or cannot be written
    ├── StalePlanError           a saved plan no longer matches the world
    └── NodeError                the node could not do what was asked
        ├── NodeUnreachable          connection refused, reset, …; Agave: no socket
        │   └── NodeTimeout          no answer within --timeout (a load may still finish)
        ├── Unauthorized             401 after a token refresh; Agave: the socket's mode
        │                            refuses our user (EACCES): run as the validator's user
        ├── ApiAbsent                404 on every prefix: a build without the Slipstream API
        ├── NoPluginManager          503: started without any --slipstream-config; Agave:
        │                            "No geyser plugin service" (a restart is needed)
        ├── RuntimeLoadUnsupported   405 on POST/DELETE: plugins chosen at start-up
        ├── RateLimited              429 that outlasted our patience
        ├── HiddenCause              the old prefixes' "Failed to convert error", again
        ├── AlreadyLoaded(name)      422: that name or that library is loaded (Agave: name)
        ├── NotLoaded                404 on DELETE; Agave: "…requested to unload is not…"
        ├── Rejected                 any other load/unload/reload failure (500; -32600)
        └── BadResponse              an answer that is not the node's API (Agave: other
                                     JSON-RPC errors: -32601, -32602, -32603, -32700)

A brake that refuses a pass is not an error: it is part of the plan (`Plan.blocked`),
shown and turned into exit 1 by the CLI.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """An error with an operator-facing message."""


class SettingsError(ReconcilerError):
    pass


class ConfigDirError(ReconcilerError):
    pass


class UntrustedConfig(ConfigDirError):
    """Whoever can write the config directory can run code inside the node: a directory
    or file others could have written is refused as a whole."""


class LedgerError(ReconcilerError):
    pass


class StalePlanError(ReconcilerError):
    pass


class NodeError(ReconcilerError):
    pass


class NodeUnreachable(NodeError):
    pass


class NodeTimeout(NodeUnreachable):
    """The node did not answer in time. The node has no server timeout, so a load we gave
    up on may still complete: the next pass reads the list before deciding anything."""


class Unauthorized(NodeError):
    pass


class ApiAbsent(NodeError):
    """No Slipstream route on any prefix, while the node's REST API answers: a build
    without the feature. Nothing can be planned or changed; nothing is unloaded."""


class NoPluginManager(NodeError):
    pass


class RuntimeLoadUnsupported(NodeError):
    pass


class RateLimited(NodeError):
    pass


class HiddenCause(NodeError):
    """The old prefixes turned a layer's answer into "Failed to convert error" every time
    we asked: an expired token, the rate limit and an unserved method look alike there."""


class BadResponse(NodeError):
    pass


class AlreadyLoaded(NodeError):
    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        self.name = name


class NotLoaded(NodeError):
    pass


class Rejected(NodeError):
    pass
