"""Signals and resume of a fit: SIGTERM / SIGUSR1 (what Slurm sends before the time
limit) turned into a stop request at the next step boundary, and reading and checking
the checkpoint a fit resumes from. Writing checkpoints is the fit session's
(:meth:`mpiml.models.session.FitSession.save_checkpoint`)."""
import contextlib
import glob
import json
import os
import re
import signal
import sys
import threading

import numpy as np

from .. import _stopsignals
from ..checkpoint import read_checkpoint
from ..errors import ConfigError, DataError
from ..parallel.data import inverse_permutation

__all__ = ["signals", "read_resume", "checkpoint_settings", "claim_directory", "fingerprint"]


@contextlib.contextmanager
def signals(control, enabled=True):
    """SIGTERM / SIGUSR1 (what Slurm sends before the time limit) set
    ``control.stop_requested`` (a stop at the next step boundary), when ``enabled`` (a fit:
    checkpoints are on) and we are in the main thread. A stop signal that reached
    ``mpiml train`` / ``tune`` before this point (held by :mod:`mpiml._stopsignals`) is
    a stop request from the start; without checkpoints, the signals get their default
    actions back (a held one then ends the process, as it would have on arrival)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not enabled:
        _stopsignals.release()
        yield
        return
    if _stopsignals.take() is not None:
        control.stop_requested = True

    def handler(signum, frame):
        control.stop_requested = True

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    for sig in old:
        # restart interrupted system calls (SA_RESTART): the signal may arrive while the
        # MPI library is inside a system call that it does not retry on EINTR
        signal.siginterrupt(sig, False)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _canonical(value):
    """A parameter value as a checkpoint's JSON gives it back (tuples become lists, dict
    keys strings), so a value and its stored form compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def claim_directory(directory, rank, resume, overwrite):
    """Rank 0, before a fit writes checkpoints into ``directory``: it belongs to one run.
    A fit that does not resume from it refuses a directory holding another run's
    checkpoints (``overwrite`` deletes them instead); temporaries left by a killed writer
    (a process that no longer exists) are removed either way."""
    if rank != 0 or not os.path.isdir(directory):
        return
    for tmp in glob.glob(os.path.join(directory, ".ckpt-*.h5.tmp-*")):
        pid = re.search(r"\.tmp-(\d+)", tmp)
        if pid and not _alive(int(pid.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    old = sorted(glob.glob(os.path.join(directory, "ckpt-*.h5")))
    same = resume is not None and os.path.realpath(
        resume if os.path.isdir(resume) else os.path.dirname(resume)) == \
        os.path.realpath(directory)
    if not old or same:
        return
    if not overwrite:
        raise ConfigError(f"{directory} holds the checkpoints of another run "
                          f"({os.path.basename(old[-1])}, ...): continue it with --resume "
                          f"{directory}, choose another directory, or give --overwrite "
                          "(fit(..., overwrite=True)) to delete them", ranks=None)
    for path in old:
        os.unlink(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_MASK = (1 << 64) - 1


def _mix(z):
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fingerprint(grid, X, offset, n_global, d, columns, order=None):
    """Collective: a fingerprint of the training rows -- global shape, dtype and a hash of
    up to 64 rows sampled by global index -- the same at any rank count, grid or feature
    split (each sampled value is hashed with its global row and column), so a resumed
    run can check that it trains on the data its checkpoint was made on. ``order``:
    dense rows held in a step order (row ``i`` is the local row ``order[i]``)."""
    m = min(int(n_global), 64)
    sample = (np.arange(m, dtype=np.int64) * int(n_global)) // m
    mine = sample[(sample >= offset) & (sample < offset + X.shape[0])]
    at = mine - offset
    if order is not None:
        at = inverse_permutation(order)[at]             # where those local rows are held
    c0 = int(columns[0]) if columns is not None else 0
    with np.errstate(over="ignore"):
        if getattr(X, "format", None) == "csr":
            # CSR rows: their stored entries (a dense copy of 64 wide rows could be GBs)
            part = X[mine - offset].tocoo()
            values = np.asarray(part.data, dtype=np.float64).view(np.uint64)
            rows = mine.astype(np.uint64)[part.row] * np.uint64(0x9E3779B97F4A7C15)
            cols = part.col.astype(np.uint64) + np.uint64(c0)
        else:
            values = np.ascontiguousarray(X[at], dtype=np.float64).view(np.uint64)
            rows = mine.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
            cols = np.arange(c0, c0 + X.shape[1], dtype=np.uint64)[None, :]
        local = int(np.sum(_mix(values ^ _mix(rows + cols)), dtype=np.uint64))
    # each value counted once: over the replicas (and over a feature split's ranks)
    parts = grid.data.allgather(local)
    if columns is not None:
        parts = [p for group in grid.model.allgather(parts) for p in group]
    return f"{int(n_global)}x{int(d)}:{X.dtype.name}:{sum(parts) & _MASK:016x}"


def read_resume(est, c, resume, d, n_global, fingerprint=None):
    """Collective: read and check the checkpoint a fit resumes from (``fit(...,
    resume=...)``). Returns ``(state, arrays)``; the caller (the fit session) takes the
    running state and the live hyper-parameters from them.

    The checkpoint must come from the same kind of model on the same data, made with the
    same settings: of the parameters a resumed run depends on (``est._resumed_params``),
    only the live ones (:meth:`~mpiml.models.training.Trainer._live_names`: learning
    rate, momentum, alpha, batch size, which ``mpiml ctl set`` and callbacks change
    during a fit) are taken from the checkpoint; any other difference is an error rather
    than a silently different model.
    """
    state, arrays = read_checkpoint(resume, comm=c)

    def check():
        where = state["path"]
        if state["model_type"] != type(est).__name__:
            raise DataError(f"{where} is a checkpoint of a {state['model_type']}, "
                            f"not of a {type(est).__name__}")
        if int(state["n_features"]) != d:
            raise DataError(f"{where} was made with {state['n_features']} features; "
                            f"the data has {d}")
        if int(state["n_global"]) != n_global:
            raise DataError(f"{where} was made on {state['n_global']} rows; the data has "
                            f"{n_global}: resume on the same data")
        if est._is_classifier and not np.array_equal(arrays["classes"], est.classes_):
            raise DataError(f"{where} has classes {arrays['classes'].tolist()[:10]}; the "
                            f"labels have {est.classes_.tolist()[:10]}")
        if fingerprint is not None and state.get("fingerprint") not in (None, fingerprint):
            raise DataError(f"{where} was made on other training rows (fingerprint "
                            f"{state['fingerprint']}, these rows {fingerprint}): resume on the "
                            "data the run was started on")
        live = set(est._live_names())
        try:
            type(est)(**{**est.get_params(), **{k: state["params"][k] for k in live
                                               if k in state["params"]}})._validate_params()
        except (ConfigError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: its hyper-parameters are not valid ({exc})") from None
        differ = [k for k in est._resumed_params
                  if k not in live and k in state["params"]
                  and _canonical(state["params"][k]) != _canonical(getattr(est, k))]
        if differ:
            said = ", ".join(f"{k}={state['params'][k]!r} (here {getattr(est, k)!r})"
                             for k in differ)
            raise DataError(f"{where} was made with {said}: resume with the settings the "
                            "run was started with")

    c.run(check)
    if state.get("fingerprint") is None:
        c.print0(f"mpiml: warning: {state['path']} has no data fingerprint (written before "
                 "mpiml 0.2): cannot check that it was made on these rows", file=sys.stderr)
    return state, arrays


def checkpoint_settings(est, resume, comm=None):
    """Collective: the settings (``est._resumed_params`` but the live ones) of the run
    whose checkpoint is ``resume``, for building an estimator that can resume it
    (``mpiml train --resume`` does: a resumed run is the run that was started)."""
    from ..comm import get_comm
    state, _ = read_checkpoint(resume, comm=get_comm(comm))
    if state["model_type"] != type(est).__name__:
        return {}           # the fit refuses it, saying so
    # the live ones the fit takes itself; the loss (the command's --model) and the solver
    # (--solver) must match: the fit refuses a checkpoint made with others
    keep = set(est._live_names()) | {"loss", "multi_class", "solver"}
    out = {k: state["params"][k] for k in est._resumed_params
           if k in state["params"] and k not in keep}
    if isinstance(out.get("hidden_layer_sizes"), list):
        out["hidden_layer_sizes"] = tuple(out["hidden_layer_sizes"])
    return out
