"""What every ``mpiml`` verb shares: the models table, the usage error and the parser
that raises it, argument types, exit codes. The verb modules (``cli_train``,
``cli_tools``, ``cli_tune``, ``cli_bench``) import this module and never each other or
``cli``; ``cli`` imports them to build the parser, so there is no import cycle.

Exit codes: 0 success; 1 an error mpiml detected (the message printed once, by rank 0;
every rank exits 1); 2 a command-line usage error; 75 stopped by SIGTERM/SIGUSR1 after
writing a checkpoint (resume with ``--resume``); 70 ended by the collective watchdog.
"""
import argparse
import sys

from .estimator import ALIASES, param_name  # noqa: F401 - the command-line names, defined once
from .checkpoint import EXIT_CHECKPOINTED  # noqa: F401 - stopped by a signal after a checkpoint
from .watchdog import EXIT_WATCHDOG  # noqa: F401 - a collective did not complete in time
from .progress import DEFAULT_INTERVAL, MODES as PROGRESS_MODES

__all__ = ["MODELS", "UsageError", "Parser", "rank", "positive_int", "batch_size",
           "data_args", "progress_args", "seconds", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHECKPOINTED", "EXIT_WATCHDOG",
           "ALIASES", "param_name"]

EXIT_ERROR = 1
EXIT_USAGE = 2

MODELS = {
    # CLI name -> (estimator class name, constructor arguments)
    "linear": ("SGDRegressor", {"loss": "squared_error"}),
    "huber": ("SGDRegressor", {"loss": "huber"}),
    "logistic": ("SGDClassifier", {"loss": "log_loss"}),
    "hinge": ("SGDClassifier", {"loss": "hinge"}),
    "softmax": ("SGDClassifier", {"loss": "log_loss", "multi_class": "multinomial"}),
    "mlp": ("MLPClassifier", {}),
    "mlp-regression": ("MLPRegressor", {}),
}

class UsageError(Exception):
    pass


def rank():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting and prints on rank 0 only."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")

    def _print_message(self, message, file=None):
        if message and rank() == 0:
            (file or sys.stdout).write(message)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def batch_size(text):
    if text == "full":
        return "full"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full', not {text!r}")


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def progress_args(p):
    """``--progress`` and ``--progress-interval`` (the long verbs; see mpiml.progress)."""
    g = p.add_argument_group("progress (rank 0, on stderr)")
    g.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="bar: a live bar; lines: a line when the work starts, then every "
                        "--progress-interval seconds, and at its end; none: nothing; auto "
                        "(default): bar when the terminal of mpiexec (or of this process) is "
                        "interactive, lines otherwise (batch logs)")
    g.add_argument("--progress-interval", type=seconds, default=DEFAULT_INTERVAL,
                   metavar="SECONDS",
                   help=f"seconds between progress lines (default {DEFAULT_INTERVAL:g}; 0: at "
                        "every update)")


def data_args(p, y=True):
    p.add_argument("--data", required=True, help="HDF5 input file")
    p.add_argument("--X", default="X", help="dataset of features (default X; nested paths allowed)")
    if y:
        p.add_argument("--y", default="y", help="dataset of targets/labels (default y)")
