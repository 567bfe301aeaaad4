"""The job side of live control, progress and the metrics log (a fit with ``run_dir``).

Commands arrive through :mod:`mpiml.runctl`; :meth:`Steering.on_command` runs on
every rank at the same step boundary (the control word of that step's Allreduce
said so), receives the commands by one broadcast from rank 0, and applies them:

* ``set lr=… momentum=… alpha=…`` at that step; ``set batch_size=…`` from the next
  epoch (the batch schedule is built per epoch);
* ``pause`` at that step: every rank waits (without polling MPI hard) until
  ``resume`` or ``stop``; the collective watchdog is suspended meanwhile;
* ``checkpoint`` writes a checkpoint at that step; ``stop`` ends the fit at that
  step, normally (the caller saves the model).

Every command gets a response file and a record in ``metrics.jsonl``; changed
hyper-parameters are live changes of the fit session (:meth:`FitSession.set_live
<mpiml.models.session.FitSession.set_live>`): checkpoints carry them, a resumed run keeps
them, and the fitted estimator records them (``live_params_``, ``param_changes_``) while
its constructor parameters stay as given.
"""
import time

import numpy as np
from mpi4py import MPI

from .. import progress as _progress
from ..estimator import param_name

__all__ = ["Steering", "EarlyStopping", "Progress", "summarise"]

class Steering:
    """Applies a run directory's commands to a fit session (see the module doc)."""

    def __init__(self, session, comm, control, run, mlp):
        self.session, self.c, self.control, self.run = session, comm, control, run
        self.mlp = mlp

    def _param(self, name):
        return param_name(name, self.mlp)

    def on_command(self, engine, step):
        c, run = self.c, self.run
        cmds = run.take_commands() if c.rank == 0 else None
        # responses and the log name the update number, which is global
        return self._apply(engine, int(engine.t), c.bcast(cmds))

    def _respond(self, cid, text, status, step, message):
        if self.c.rank == 0:
            self.run.respond(cid, status, step, message)
            self.run.log({"event": "command", "command": text, "status": status, "step": step,
                          "message": message, "time": time.time()})

    def _apply(self, engine, step, cmds):
        want_checkpoint = False
        for cid, text, (name, args) in cmds:
            if name == "set" and getattr(self.session, "fixed_objective", None):
                self._respond(cid, text, "rejected", step, self.session.fixed_objective)
            elif name == "set":
                done = []
                for key, value in args.items():
                    self.session.set_live(self._param(key), value, "ctl")
                    done.append(f"batch_size={value} from the next epoch"
                                if key == "batch_size" else f"{key}={value}")
                self._respond(cid, text, "applied", step, "set " + ", ".join(done))
            elif name == "checkpoint":
                if self.control.save is None:
                    self._respond(cid, text, "rejected", step, "no checkpoint directory")
                else:
                    want_checkpoint = True
                    self._respond(cid, text, "applied", step, "checkpoint written at this step")
            elif name == "stop":
                self.control.user_stop = True
                self._respond(cid, text, "applied", step, "stopping at this step; the model "
                                                          "is saved as at a normal end")
            elif name == "resume":
                self._respond(cid, text, "rejected", step, "the run is not paused")
            elif name == "pause":
                self._respond(cid, text, "applied", step, "paused")
                want_checkpoint |= self._pause(engine, step)
        return want_checkpoint

    def _pause(self, engine, step):
        """Every rank waits here until rank 0 reads ``resume`` (or ``stop``), or a signal
        reaches any rank (then the run checkpoints and stops as on any signal). The ranks
        agree on both with a small non-blocking reduction, without polling MPI hard."""
        c, run = self.c, self.run
        self.control.paused = True
        run.write_status(force=True, state="paused", step=step)
        later, flags = [], np.zeros(2)
        while True:
            time.sleep(0.1)
            resumed = c.rank == 0 and self._resumed(run, step, later)
            flags[:] = (float(resumed), float(self.control.stop_requested))
            req = c.mpi.Iallreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
            while not req.Test():
                time.sleep(0.02)
            if flags.any():
                break
        self.control.paused = False
        run.write_status(force=True, state="running")
        if flags[1]:
            self.control.stop_now = True      # agreed: every rank checkpoints and stops
            return True
        return self._apply(engine, step, c.bcast(later))

    def _resumed(self, run, step, later):
        """Rank 0 while paused: answer waiting commands; True on ``resume`` or ``stop``
        (other commands are kept in ``later`` to apply after the pause)."""
        if not run.commands_waiting():
            return False
        resumed = False
        for cmd in run.take_commands():
            name = cmd[2][0]
            if name == "resume":
                self._respond(cmd[0], cmd[1], "applied", step, "resumed")
                resumed = True
            elif name == "pause":
                self._respond(cmd[0], cmd[1], "rejected", step, "already paused")
            else:
                later.append(cmd)
                resumed |= name == "stop"
        return resumed


class EarlyStopping:
    """Stop when ``monitor`` (a key of the epoch logs: ``"loss"``, ``"val_loss"``,
    ``"val_accuracy"``, ...) has not improved by ``min_delta`` for ``patience`` epochs.
    Callbacks run on every rank with the same (global) logs, so every rank stops at
    the same epoch."""

    def __init__(self, monitor="val_loss", patience=3, min_delta=0.0, mode=None):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = mode or ("max" if "acc" in monitor or "r2" in monitor else "min")
        self.best, self.wait, self.best_epoch = None, 0, None

    @property
    def reason(self):
        """Why it stopped the fit (``estimator.stopped_by_``)."""
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"early stopping: {self.monitor} did not improve{by} on {self.best:.6g} "
                f"(epoch {self.best_epoch}) for {self.patience} epochs")

    def on_epoch_end(self, estimator, logs):
        v = logs.get(self.monitor)
        if v is None:
            return False
        better = (self.best is None or (v < self.best - self.min_delta if self.mode == "min"
                                        else v > self.best + self.min_delta))
        if better:
            self.best, self.wait, self.best_epoch = v, 0, logs.get("epoch")
            return False
        self.wait += 1
        return self.wait >= self.patience


class Progress:
    """A fit's progress on rank 0 (:mod:`mpiml.progress`): epochs done of the fit's
    epochs, and within an epoch the share of its updates made, read from the update
    counter (``StepControl.progress``, as the watchdog reads it) by a daemon thread, so
    the step loop does nothing for it. At most one line every ``--progress-interval``
    seconds (a batch log of a job running 100 epochs a second gets one line per
    interval, not 100 per second); an epoch longer than the interval gets lines within it.

    Shown per the ``mpiml`` command line's ``--progress`` when it gave one; otherwise (the
    Python API) in ``auto`` mode when ``verbose``. ``write`` prints ``verbose``'s epoch
    lines on stdout without breaking the bar."""

    def __init__(self, rank, epochs, target, verbose, control=None, steps_hint=None):
        mode = _progress.current().mode or ("auto" if verbose else "none")
        self.say = bool(verbose) and rank == 0
        self.control = control
        # (epochs done, update count at the last epoch end): one attribute, so the thread
        # never sees one new and the other old
        self.mark = (int(epochs), int(control.progress) if control is not None else 0)
        self.per_epoch = float(steps_hint or 0)
        poll = self._poll if control is not None else None
        self.bar = _progress.Progress("train", int(target), "epochs", rank=rank, mode=mode,
                                      decimals=1, start=int(epochs), poll=poll)

    def _poll(self):
        epochs, epoch_t = self.mark
        if self.per_epoch <= 0:
            return epochs
        part = (int(self.control.progress) - epoch_t) / self.per_epoch
        return epochs + min(max(part, 0.0), 0.99)

    def update(self, step, loss=None, samples_per_s=None):
        """An epoch ended at update ``step``."""
        step = int(step)
        epochs, epoch_t = self.mark
        if step > epoch_t:
            self.per_epoch = step - epoch_t
        self.mark = (epochs + 1, step)
        # (the throughput is in the epoch lines; the rate shown is epochs per second)
        self.bar.update(epochs + 1, note=f"loss {loss:.4g}" if loss is not None else None,
                        force=False)

    def write(self, text):
        if self.say:
            self.bar.write(text)

    def close(self):
        self.bar.close()


def summarise(values):
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "mean": float(a.mean()), "max": float(a.max())}
