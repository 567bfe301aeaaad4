"""Checkpoint and signal plumbing of a fit: the step control that writes checkpoints
(every N updates, every T seconds, at the end, on SIGTERM/SIGUSR1), the signal handlers,
and restoring an estimator's run state from a checkpoint (``fit(..., resume=...)``)."""
import contextlib
import os
import signal
import threading
import time

import numpy as np

from ..checkpoint import CheckpointPolicy, read_checkpoint, write_checkpoint
from ..errors import DataError, Interrupted
from ..parallel.data import StepControl

__all__ = ["signals", "step_control", "restore"]


@contextlib.contextmanager
def signals(control, enabled=True):
    """SIGTERM / SIGUSR1 (what Slurm sends before the time limit) set
    ``control.stop_requested`` (a stop at the next step boundary), when ``enabled`` (a fit:
    checkpoints are on) and we are in the main thread."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

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


def step_control(est, c, grid, engine, K, d, n_global, batch):
    """The step control: checkpoints (if ``checkpoint_dir``) and signals."""
    control = StepControl(grid.data, est.checkpoint_every, est.checkpoint_seconds)
    directory = est.checkpoint_dir
    if directory is None and est.run_dir is not None:
        directory = os.path.join(est.run_dir, "checkpoints")
    if directory is None:
        return control
    policy = CheckpointPolicy(directory, est.checkpoint_every,
                              est.checkpoint_seconds, est.keep_checkpoints)

    def save(step):
        eng = control.engine if control.engine is not None else engine   # may be replaced
        state = {"model_type": type(est).__name__,
                 "params": {k: v for k, v in est.get_params().items() if k != "comm"},
                 "epoch": est._epochs_done, "step": step, "t": eng.t,
                 "epoch_loss": eng.epoch_loss, "epoch_count": eng.epoch_count,
                 "best": est._tol_state[0], "stall": est._tol_state[1],
                 "n_iter": est.n_iter_, "n_global": n_global,
                 "batch": getattr(control, "batch", batch),     # after `set batch_size`
                 "seed": est._seed, "n_features": d, "n_outputs": K}
        arrays = dict(eng.get_state())       # logical arrays, gathered if sharded
        arrays["loss_curve"] = np.asarray(est.loss_curve_, dtype=np.float64)
        if est._is_classifier:
            arrays["classes"] = est.classes_
        t0 = time.perf_counter()
        path = write_checkpoint(policy, state, arrays, comm=c)
        control.io_seconds += time.perf_counter() - t0
        return path

    def on_stop(path):
        raise Interrupted(f"stopped by a signal; checkpoint written to {path}: continue with "
                          f"--resume {policy.directory} (fit(..., resume=...))",
                          ranks=range(c.size), checkpoint=path)

    control.save = save
    control.on_stop = on_stop
    return control


def restore(est, c, resume, d, n_global):
    """Collective: read and check a checkpoint; set the estimator's run state from it."""
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

    c.run(check)
    for key in est._resumed_params:
        if key in state["params"]:
            setattr(est, key, state["params"][key])
    est._seed = int(state["seed"])
    est._epochs_done = int(state["epoch"])
    est.n_iter_ = int(state["n_iter"])
    est._tol_state = [float(state["best"]), int(state["stall"])]
    est.loss_curve_ = [float(v) for v in arrays["loss_curve"]]
    est.epoch_times_ = []
    return state, arrays
