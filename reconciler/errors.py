"""The root of the error tree. Every error the tool raises on purpose is a
ReconcilerError whose str() is a complete, operator-readable sentence; the CLI prints it
and exits 1 without a traceback (unless --debug).

    ReconcilerError
    ├── SettingsError        an option or variable is wrong or missing
    ├── ConfigDirError       the config directory cannot be read as a whole
    ├── LedgerError          the ledger is corrupt or cannot be written
    ├── StalePlanError       a saved plan no longer matches the world
    ├── PassBlocked          a safety brake refused the pass
    └── NodeError            (reconciler.node) the node could not do what was asked
"""


class ReconcilerError(Exception):
    """An error with an operator-facing message."""


class SettingsError(ReconcilerError):
    pass


class ConfigDirError(ReconcilerError):
    pass


class LedgerError(ReconcilerError):
    pass


class StalePlanError(ReconcilerError):
    pass


class PassBlocked(ReconcilerError):
    pass
