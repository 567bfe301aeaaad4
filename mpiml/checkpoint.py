"""Checkpoints: the complete training state in one HDF5 file, written atomically.

A checkpoint holds the logical (unsharded) state, so it can be resumed on any
number of ranks:

* attributes: format, format version, model type, hyper-parameters (JSON, as they
  were at the time of the checkpoint, with the live values), the live changes made
  during the fit (JSON list ``param_changes``; optional, absent in older files),
  epoch, step within the epoch (the data cursor), update count ``t``, the partial loss sums of the current epoch, the
  early-stopping state, the schedule's seed, global row count and batch size;
* datasets: ``w`` (the flat parameters: coefficients row by row, then intercepts),
  ``velocity`` (momentum state), ``loss_curve``, ``classes`` (classifiers).

The training schedule draws no random numbers on the ranks: the batch order of an
epoch is a function of ``(seed, epoch)``, so the seed *is* every rank's random
state. Rank 0 writes ``ckpt-<t>.h5`` through a temporary file (write, flush,
fsync, rename, fsync of the directory) and removes all but the newest ``keep``
files; a crash at any moment leaves the previous checkpoint intact. Checkpoints
are never unpickled.
"""
import glob
import json
import os
import uuid

import h5py
import numpy as np

from .comm import get_comm
from .errors import DataError, OutputError
from .hooks import NO_HOOKS
from .io import check_format, local_items

__all__ = ["CheckpointPolicy", "write_checkpoint", "read_checkpoint", "latest_checkpoint",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EXIT_CHECKPOINTED"]

CHECKPOINT_FORMAT = "mpiml-checkpoint"
CHECKPOINT_VERSION = 1
# exit code after a signal-triggered checkpoint (sysexits' EX_TEMPFAIL: "try again")
EXIT_CHECKPOINTED = 75
_SCALARS = ("epoch", "step", "t", "epoch_loss", "epoch_count", "best", "stall", "n_iter",
            "n_global", "batch", "seed", "n_features", "n_outputs")


class CheckpointPolicy:
    """When to write checkpoints.

    Parameters
    ----------
    directory : str
    every_steps : int, optional
        Every this many updates (counted globally, so identical on every rank).
    every_seconds : float, optional
        When this much time has passed on rank 0 since the last checkpoint (rank 0's
        clock decides and the decision travels in the step's Allreduce).
    keep : int
        Number of newest checkpoints kept.
    """

    def __init__(self, directory, every_steps=None, every_seconds=None, keep=3):
        self.directory = os.fspath(directory)
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.keep = keep


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(policy, state, arrays, comm=None, hooks=NO_HOOKS):
    """Collective: rank 0 writes the checkpoint for ``state`` and prunes old ones.
    (``hooks``: the test hooks, :mod:`mpiml.hooks`; the writer may be told to die half-way.)

    Returns the path written.
    """
    c = get_comm(comm)
    path = os.path.join(policy.directory, f"ckpt-{int(state['t']):012d}.h5")

    def write():
        if c.rank != 0:
            return
        os.makedirs(policy.directory, exist_ok=True)
        tmp = os.path.join(policy.directory, f".ckpt-{int(state['t']):012d}.h5.tmp-{os.getpid()}-"
                           f"{uuid.uuid4().hex[:8]}")
        try:
            with h5py.File(tmp, "w-", locking=False) as f:
                f.attrs["format"] = CHECKPOINT_FORMAT
                f.attrs["format_version"] = CHECKPOINT_VERSION
                f.attrs["model_type"] = state["model_type"]
                f.attrs["params"] = json.dumps(state["params"], sort_keys=True)
                f.attrs["param_changes"] = json.dumps(state.get("param_changes", []))
                if state.get("fingerprint"):
                    f.attrs["fingerprint"] = state["fingerprint"]
                for key in _SCALARS:
                    f.attrs[key] = state[key]
                for name, a in arrays.items():
                    if a.dtype.kind in "UO":        # string class labels: UTF-8 strings
                        a = np.asarray([str(v) for v in a], dtype=h5py.string_dtype())
                    f.create_dataset(name, data=a)
                if hooks.checkpoint_kill_due(state["t"]):
                    f.flush()
                    os.kill(os.getpid(), 9)
                f.flush()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(policy.directory)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise OutputError(f"cannot write checkpoint in {policy.directory}: {exc}") from None
        for old in sorted(glob.glob(os.path.join(policy.directory, "ckpt-*.h5")))[:-policy.keep]:
            try:
                os.unlink(old)
            except OSError:
                pass

    c.run(write)
    return path


def latest_checkpoint(path):
    """The newest checkpoint file in directory ``path`` (or ``path`` itself if a file)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise DataError(f"no checkpoint directory or file: {path}")
    files = sorted(glob.glob(os.path.join(path, "ckpt-*.h5")))
    if not files:
        raise DataError(f"no checkpoint (ckpt-*.h5) in {path}")
    return files[-1]


# what each scalar of a checkpoint may be: (kind, lowest value)
_RANGES = {"epoch": ("int", 0), "step": ("int", 0), "n_iter": ("int", 0), "stall": ("int", 0),
           "n_global": ("int", 1), "batch": ("int", 1), "seed": ("int", 0),
           "n_features": ("int", 1), "n_outputs": ("int", 1), "t": ("count", 0.0),
           "epoch_count": ("count", 0.0), "epoch_loss": ("finite", None), "best": ("loss", None)}
_BIG = 2.0 ** 53        # counts stay exact integers in float64 below this


def _read_array(dset):
    """A dataset's values; UTF-8 strings as a numpy array of str."""
    if h5py.check_string_dtype(dset.dtype) is not None:
        return np.asarray(dset.asstr()[()], dtype=str)
    return np.asarray(dset[()])


def validate_checkpoint(state, arrays, where):
    """Raise DataError unless every field of a checkpoint has a type and range a fit can
    trust (read from a file: never used before this passes)."""
    for key, (kind, low) in _RANGES.items():
        v = state[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                 np.floating)):
            raise DataError(f"{where}: '{key}' is {v!r}, not a number")
        v = float(v)
        if kind == "loss":
            bad = v != v or v == -np.inf
        elif kind == "finite":
            bad = not np.isfinite(v)
        else:
            bad = not np.isfinite(v) or v < low or v > _BIG or (kind == "int" and v != int(v))
        if bad:
            raise DataError(f"{where}: '{key}' = {state[key]!r} is out of range")
    steps = -(-int(state["n_global"]) // int(state["batch"]))
    if state["step"] > steps or state["epoch"] != state["n_iter"]:
        raise DataError(f"{where}: step {state['step']} of epoch {state['epoch']} does not "
                        f"exist ({steps} steps per epoch, {state['n_iter']} epochs done)")
    if not isinstance(state["params"], dict) or not isinstance(state["param_changes"], list):
        raise DataError(f"{where}: its parameters are damaged")
    for name, a in arrays.items():
        if name == "classes" and a.dtype.kind == "U" and a.ndim == 1:
            continue                                # string class labels
        if a.dtype.kind not in "fiub" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise DataError(f"{where}: dataset '{name}' is not finite numbers")
    curve = arrays.get("loss_curve")
    if curve is None or curve.ndim != 1 or len(curve) != int(state["n_iter"]):
        raise DataError(f"{where}: its loss curve does not match its {state['n_iter']} epochs")


def read_checkpoint(path, comm=None):
    """Collective: read the newest checkpoint in ``path`` on every rank.

    Returns ``(state, arrays)``.
    """
    c = get_comm(comm)

    def read():
        f_path = latest_checkpoint(path)
        try:
            f = h5py.File(f_path, "r", locking=False)
        except OSError as exc:
            raise DataError(f"cannot read checkpoint {f_path}: {exc}") from None
        with f:
            check_format(f, f_path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint")
            try:
                state = {key: np.asarray(f.attrs[key]).item() for key in _SCALARS}
                state["model_type"] = str(f.attrs["model_type"])
                state["params"] = json.loads(str(f.attrs["params"]))
                # the live hyper-parameter changes (absent from checkpoints before 0.2)
                state["param_changes"] = json.loads(str(f.attrs.get("param_changes", "[]")))
                fp = f.attrs.get("fingerprint")
                state["fingerprint"] = None if fp is None else str(fp)
                arrays = {k: _read_array(v) for k, v in local_items(f, f_path)}
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{f_path} is incomplete or damaged: {exc}") from None
            validate_checkpoint(state, arrays, f_path)
            state["path"] = f_path
            return state, arrays

    return c.run(read)
