"""The exception types users see.

Every error that can depend on the data of one rank is *agreed* across ranks
(:meth:`mpiml.comm.Comm.agree`) before it is raised, so all ranks raise the same
exception together and no rank is left waiting in a collective.
"""


class MpimlError(Exception):
    """Base class of mpiml's errors.

    Attributes
    ----------
    ranks : list of int
        The ranks on which the error was first detected (empty if not known).
    """

    def __init__(self, message, ranks=None):
        super().__init__(message)
        self.ranks = list(ranks or [])


class DataError(MpimlError, ValueError):
    """The input data is unusable: missing file or dataset, wrong shape or type,
    non-finite values, labels that do not fit the task."""


class ConfigError(MpimlError, ValueError):
    """An option or parameter is invalid (unknown loss, bad value, too many ranks)."""


class TrainingError(MpimlError, RuntimeError):
    """Training failed numerically (the loss became NaN or infinite)."""


class NotFittedError(MpimlError, AttributeError):
    """A model was used before ``fit``."""


class OutputError(MpimlError, OSError):
    """An output file cannot be written."""


class Interrupted(MpimlError):
    """Training stopped on request (SIGTERM / SIGUSR1) after writing a checkpoint.

    Attributes
    ----------
    checkpoint : str
        The checkpoint file written.
    """

    def __init__(self, message, ranks=None, checkpoint=None):
        super().__init__(message, ranks)
        self.checkpoint = checkpoint


class WatchdogTimeout(MpimlError, TimeoutError):
    """A collective did not complete within the communication timeout."""
