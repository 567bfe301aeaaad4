"""Stop signals that arrive before a fit has started.

Slurm's ``--signal`` (or an operator's ``scancel --signal``) can reach the ranks of
``mpiml train`` / ``mpiml tune`` while they are still importing or loading data, before
the fit installs its own handlers (:func:`mpiml.models.checkpointing.signals`). Left at
the default, SIGUSR1 would kill the rank (no checkpoint, no exit 75, no requeue). The
command line therefore holds SIGTERM and SIGUSR1 from its first import: a signal that
arrives early is remembered here and the fit stops at its first step boundary (writing
its checkpoint, exit 75), as if the signal had come a moment later. This module imports
nothing heavy: it runs before numpy, mpi4py and scikit-learn are imported.
"""
import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_pending = None     # the first stop signal received while held, or None


def _remember(signum, frame):
    global _pending
    if _pending is None:
        _pending = signum


def hold():
    """Remember SIGTERM / SIGUSR1 instead of dying of them (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)
        # restart interrupted system calls: the signal may arrive inside the MPI library
        signal.siginterrupt(sig, False)


def held():
    """Whether this process holds the stop signals (the command line's long verbs)."""
    return signal.getsignal(signal.SIGTERM) is _remember


def take():
    """The stop signal received while held (and forget it), or None."""
    global _pending
    sig, _pending = _pending, None
    return sig


def release():
    """Back to the default actions; a signal received while held now has its default
    effect (the process ends as it would have when the signal arrived)."""
    if not held():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    sig = take()
    if sig is not None:
        os.kill(os.getpid(), sig)


def finish():
    """The command is done (its result written or its error reported): a stop signal has
    nothing left to stop, so a held process ignores it from now on. A Python handler
    would not do: the interpreter's shutdown resets Python handlers to the default
    action, while MPI_Finalize (run after that) may still wait seconds for another rank;
    a late Slurm signal there killed a rank whose model was already saved. SIG_IGN is
    kept through the shutdown."""
    if held():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def hold_for_command_line(argv):
    """At import: hold the signals when this process is ``mpiml train`` or ``mpiml tune``
    (the console script), so that no window is left before the fit's own handlers."""
    if len(argv) > 1 and os.path.basename(argv[0]) == "mpiml" and argv[1] in ("train", "tune"):
        hold()
