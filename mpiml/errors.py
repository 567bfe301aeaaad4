"""The exception types users see.

Every error that can depend on the data of one rank is *agreed* across ranks
(:meth:`mpiml.comm.Comm.agree`) before it is raised, so all ranks raise the same
exception together and no rank is left waiting in a collective. Every one is an
:class:`MpimlError` (the command line prints its message, without a traceback) and
also of the built-in class scikit-learn's conventions expect: ``ValueError`` for bad
data or parameters, ``TypeError`` for input of an unusable type, scikit-learn's
``NotFittedError`` for a model used before ``fit``.
"""
from sklearn.exceptions import NotFittedError as _SkNotFittedError


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


class InputTypeError(MpimlError, TypeError):
    """The input has a type mpiml cannot use (e.g. a sparse matrix where a dense array
    is needed, ``y=None`` for a supervised model)."""


class NotFittedError(MpimlError, _SkNotFittedError):
    """A model was used before ``fit`` (scikit-learn's ``NotFittedError``: a
    ``ValueError`` and an ``AttributeError``)."""


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


def agreed_class(error):
    """The class every rank raises for ``error`` (the first failing rank's): its own when
    it is an :class:`MpimlError`; for a built-in ``ValueError`` / ``TypeError`` or
    scikit-learn's ``NotFittedError`` (e.g. from scikit-learn's validation helpers) the
    mpiml class that is also one; None for anything else (an unexpected error)."""
    if isinstance(error, MpimlError):
        return type(error)
    for base, ours in ((_SkNotFittedError, NotFittedError), (TypeError, InputTypeError),
                       (ValueError, DataError)):
        if isinstance(error, base):
            return ours
    return None
