"""Every error kmlp reports to a user in one line (the CLI prints ``kmlp: error: MESSAGE``, exit 2).

Each message names what is wrong: the flag or option, the file (and line), or the path.
"""


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the option."""


class DataError(ValueError):
    """The data file cannot be used; the message names the file (and line where it applies)."""


class RunError(ValueError):
    """A run directory is missing, incomplete, inconsistent or cannot be written; the message names
    the path."""


class NotOwned(RunError):
    """A folder holds something kmlp cannot prove it wrote; the message names the first such path."""


class ExportError(RunError):
    """The export cannot be written where asked; nothing was changed."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or blew up; nothing was saved."""


class ClusterError(RuntimeError):
    """Another worker of a multi-worker training stopped or cannot be reached; every worker's backup
    is kept, so the same command with ``--resume`` on each continues the training."""


class UsageError(ValueError):
    """A flag's value is wrong."""


# What the command line turns into one line and exit status 2.
ONE_LINE_ERRORS = (ConfigError, DataError, RunError, TrainingDiverged, ClusterError, UsageError)
