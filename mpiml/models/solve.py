"""A fit session for the exact solvers: ``SGDClassifier`` / ``SGDRegressor`` with
``solver="lbfgs" | "owlqn" | "newton-cg" | "hybrid"``.

The model minimises the objective its SGD fit approximates (``(1/n) sum_i s_i loss_i +
alpha R(w)``, scikit-learn's SGD objective), to the optimum, by one of the solvers of
:mod:`mpiml.solvers`. :class:`SolveSession` hosts the solve as
:class:`~mpiml.models.session.FitSession` hosts SGD epochs, with the same parts:

* the *step control* (:class:`~mpiml.parallel.protocol.StepControl`): every reduction of
  the objective (:class:`mpiml.models.glm.Objective`) carries the control words, so a
  signal, a time-based checkpoint or a run-directory command is agreed without an extra
  collective; the session acts on them at the end of the solver's iteration, the solve's
  "step": checkpoint, stop (exit 75 on a signal), ``mpiml ctl`` commands;
* checkpoints (the checkpoint format of the SGD fits, :mod:`mpiml.checkpoint`) holding
  the whole solver state -- the point, the objective, its gradient and the L-BFGS memory
  -- so ``resume`` continues the solve exactly: at the same rank count the final model
  is bitwise the one an uninterrupted run gives;
* the collective watchdog, the run directory (status, ``metrics.jsonl`` per iteration,
  commands), callbacks and validation metrics per iteration, progress lines.

One iteration (usually one evaluation of the objective: one read of this rank's rows and
one packed Allreduce) is what an epoch is to SGD in these: ``max_iter``,
``checkpoint_every``, ``n_iter_``, ``loss_curve_`` and the callbacks' ``epoch`` count
iterations. ``solver="hybrid"`` first runs one SGD epoch with the model's SGD settings
(the start of Agarwal et al.'s terascale learner), then L-BFGS (OWL-QN with an L1 part)
from there.
"""
import time

import numpy as np

from .. import progress as _progress
from ..checkpoint import CheckpointPolicy, write_checkpoint
from ..errors import DataError, Interrupted
from ..imbalance import row_weights
from ..parallel.protocol import Decision, StepControl, StopTraining
from ..runctl import RunDir
from ..threads import blas_threads
from ..watchdog import watching
from .checkpointing import claim_directory, fingerprint, read_resume, signals
from .glm import Objective, check_solution, run_solver, warn_unconverged
from .scaling import fit_scaler, transform
from .session import RunState
from .steering import Steering

__all__ = ["SOLVERS", "SolveSession", "DEFAULT_TOL"]

SOLVERS = ("sgd", "lbfgs", "owlqn", "newton-cg", "hybrid")
# the gradient tolerance when ``tol`` is None (scikit-learn's LogisticRegression default)
DEFAULT_TOL = 1e-4


class SolveSession:
    """See the module doc. Built collectively by ``fit`` from agreed data (``data``, a
    :class:`mpiml.models.training.FitData`)."""

    def __init__(self, est, data, *, resume, validation, callbacks, sample_weight, hooks,
                 overwrite=False, signal_checkpoint_dir=None):
        self.est, self.data, self.hooks = est, data, hooks
        self.resume, self.overwrite = resume, overwrite
        self.c, grid = c, grid = data.comm, data.grid
        self.validation, self.callbacks = validation, list(callbacks or ())
        d, n = data.d, data.n_global
        est.n_features_in_ = d
        if est._is_classifier:
            est.classes_ = data.classes
        self.fingerprint = None
        if resume is not None or est.checkpoint_dir or est.run_dir or signal_checkpoint_dir:
            self.fingerprint = fingerprint(grid, data.X, data.offset, n, d, data.columns,
                                           data.order)
        self.start, self.curve = None, []
        if resume is not None:
            saved, arrays = read_resume(est, c, resume, d, n, self.fingerprint)
            self.start = c.run(_solver_state, saved, arrays)
            self.curve = [float(v) for v in arrays["loss_curve"]]
        fit_scaler(est, grid, data.X, data.columns)
        X = data.X
        if hasattr(est, "scale_offset_"):
            X = transform(est, X, inplace=data.own, columns=data.columns)
        self.K, y_enc, _ = est._encode_agreed(data.y)
        self.sw = row_weights(est, c, grid, data.y, sample_weight, data.meta)
        self.control = StepControl(grid.data, None, est.checkpoint_seconds, hooks=hooks)
        self.l2, self.l1 = est._solver_penalty()
        self.obj = self._objective(X, y_enc, self.sw)
        self.control.engine = self.iterations = _Iterations()
        self.iterations.t = self.start["it"] if self.start else 0
        self.X, self._sample_weight = X, sample_weight
        self._own = data.own or X is not data.X
        if self.start is not None:
            c.run(_check_size, self.start, self.obj.size, saved['path'])
        self.signal_only = False
        self._arm_checkpoints(signal_checkpoint_dir)
        self.run_dir = self.steering = None
        if est.run_dir is not None:
            self._open_run_dir()
        self.stopped_by, self.seconds = None, []

    # ------------------------------------------------------------ parts
    def _arm_checkpoints(self, signal_dir):
        est, c, control = self.est, self.c, self.control
        directory = est.checkpoint_dir
        if directory is None and est.run_dir is not None:
            import os
            directory = os.path.join(est.run_dir, "checkpoints")
        if directory is None and signal_dir is None:
            return
        if directory is None:
            directory, self.signal_only = signal_dir, True
        self.policy = CheckpointPolicy(directory, None, est.checkpoint_seconds,
                                       est.keep_checkpoints)
        c.run(claim_directory, directory, c.rank, self.resume, self.overwrite)

        def on_stop(path):
            raise Interrupted(f"stopped by a signal; checkpoint written to {path}: continue "
                              f"with --resume {self.policy.directory} (fit(..., resume=...))",
                              ranks=range(c.size), checkpoint=path)

        control.save, control.on_stop = self.save_checkpoint, on_stop

    def _open_run_dir(self):
        est, c = self.est, self.c
        self.run_dir = RunDir(est.run_dir, c.rank)
        self.run_dir.start()
        self.steering = Steering(self, c, self.control, self.run_dir, mlp=False)
        self.control.run, self.control.on_command = self.run_dir, self.steering.on_command
        self.run_dir.log({"event": "start", "time": time.time(), "ranks": c.size,
                          "model": type(est).__name__, "rows": self.data.n_global,
                          "features": self.data.d, "params": self.params()})

    def params(self):
        return {k: v for k, v in self.est.get_params().items() if k != "comm"}

    @property
    def fixed_objective(self):
        """Why ``mpiml ctl set`` is rejected (Steering answers with it): a changed objective
        would invalidate the L-BFGS memory and the line search."""
        return (f"a {self.est.solver} solve has no live hyper-parameters: the objective "
                "stays fixed while it runs (checkpoint, stop, pause and resume apply)")

    def save_checkpoint(self, step=0, done=False):
        """Collective: a checkpoint of the solve as it is after the current iteration."""
        st, est, d = self.current, self.est, self.data.d
        saved = {"model_type": type(est).__name__, "params": self.params(), "param_changes": [],
                 "epoch": st["it"], "n_iter": st["it"], "step": 0, "t": st["it"],
                 "epoch_loss": st["f"], "epoch_count": float(st["evals"]), "best": st["F"],
                 "stall": 0, "n_global": self.data.n_global, "batch": self.data.n_global,
                 "seed": self.data.seed, "n_features": d, "n_outputs": self.K,
                 "fingerprint": self.fingerprint}
        m = len(st["pairs"])
        size = self.obj.size
        arrays = {"w": np.asarray(st["x"], dtype=np.float64),
                  "grad": np.asarray(st["g"], dtype=np.float64),
                  "solver_s": np.array([s for s, _ in st["pairs"]]).reshape(m, size),
                  "solver_y": np.array([y for _, y in st["pairs"]]).reshape(m, size),
                  "solver_done": np.array([1.0 if done else 0.0]),
                  "loss_curve": np.asarray(self.curve, dtype=np.float64)}
        if est._is_classifier:
            arrays["classes"] = est.classes_
        return write_checkpoint(self.policy, saved, arrays, comm=self.c, hooks=self.hooks)

    # ------------------------------------------------------------ the solve
    def _warm_start(self):
        """``solver="hybrid"``: one SGD epoch with the model's SGD settings (the fit
        session of a copy without checkpoints or run directory, on the agreed rows as the
        solve has them: no second agreement, no copy of the rows when they are the fit's
        own), its weights the solver's start. The epoch puts the rows in its batch order:
        the objective is then built on them in that order (a sum: the same function)."""
        from .session import FitSession
        est = self.est
        sgd = type(est)(**{**est.get_params(), "solver": "sgd", "max_iter": 1, "tol": None,
                           "checkpoint_dir": None, "checkpoint_every": None,
                           "checkpoint_seconds": None, "run_dir": None, "stats": None,
                           "scaler": None, "verbose": 0})
        data = self.data._replace(X=self.X, own=self._own)
        # in_place=False: the rows are laid out in step order even for this one epoch, as
        # before short fits visited rows in place; the solve's objective reuses that copy
        # (with the in-place visit, the 3-rank hybrid test ended with "line_search" instead
        # of "converged" at tol 1e-10 in 1 run of 10; 0 of 12 with the layout)
        session = FitSession(sgd, data, epochs=None, reset=True, resume=None, validation=None,
                             callbacks=None, sample_weight=self._sample_weight, hooks=self.hooks,
                             in_place=False)
        try:
            session.run()
            session.store()
            lay = session.layout
        finally:
            session.release()
        self.obj = self._objective(lay.X, lay.y, lay.sw)
        K, d = self.K, self.data.d
        coef = np.asarray(sgd.coef_, dtype=np.float64).reshape(K, d).ravel()
        x0 = np.concatenate([coef, np.atleast_1d(sgd.intercept_)]) if est.fit_intercept else coef
        return x0

    def _objective(self, X, y_enc, sw):
        est = self.est
        return Objective(self.c, X, y_enc, sw, est._glm_kind(), self.K, est.fit_intercept,
                         getattr(est, "epsilon", 0.0), float(self.data.n_global), self.l2,
                         control=self.control)

    def run(self):
        c, est, control = self.c, self.est, self.control
        solver = est._exact_solver()
        max_iter = int(est.max_iter)
        tol = DEFAULT_TOL if est.tol is None else float(est.tol)
        first = self.start["it"] if self.start else 0
        mode = _progress.current().mode or ("auto" if est.verbose else "none")
        self.bar = _progress.Progress("solve", max_iter, "iterations", rank=c.rank, mode=mode,
                                      decimals=0, start=first)
        done = bool(self.start and self.start["done"])
        with signals(control, control.save is not None):
            x0 = np.zeros(self.obj.size)
            if self.start is None and est.solver == "hybrid":
                control.where = "hybrid: the SGD epoch"
                x0 = self._warm_start()
            self.t0 = time.perf_counter()
            with watching(c, est.comm_timeout, control), blas_threads():
                control.where = f"{solver} iteration {first + 1} (objective Allreduce)"
                try:
                    if done:
                        st = self.start
                        res = _Result(st["x"], st["F"], st["it"], "converged", st["evals"])
                    else:
                        res = run_solver(solver, self.obj, self.l1, tol, max_iter, x0,
                                         start=self.start, on_iter=self._on_iter)
                    self.bar.update(res.n_iter, note=f"objective {res.f:.6g}", force=False)
                except StopTraining as exc:
                    st = self.current
                    self.stopped_by = self.stopped_by or f"mpiml ctl stop at iteration {exc.args[0]}"
                    control.user_stop = False
                    res = _Result(st["x"], st["F"], st["it"], "stopped", st["evals"])
                finally:
                    self.bar.close()
            check_solution(type(est).__name__, solver, res)
            self.result = res
            self._final_point(res)
            if control.save is not None and not self.signal_only:
                self.save_checkpoint(done=res.status != "stopped")
        if res.status in ("max_iter", "line_search"):
            warn_unconverged(type(est).__name__, solver, res, max_iter, tol, stacklevel=4)
        if self.run_dir is not None:
            self.run_dir.log({"event": "end", "time": time.time(), "step": int(res.n_iter),
                              "epochs": int(res.n_iter), "stopped_by": self.stopped_by,
                              "status": res.status})
            self.run_dir.write_status(force=True, state="finished", step=int(res.n_iter))
        if self.stopped_by and est.verbose:
            c.print0(f"stopped early by {self.stopped_by}")
        return self

    def _final_point(self, res):
        """The records of the iteration that ended the solve (``on_iter`` is not called
        for it), and the state a final checkpoint records: the solver's last point."""
        if len(self.curve) < res.n_iter:
            self.curve.append(float(res.f))
            self.seconds.append(time.perf_counter() - self.t0)
        if self.current is not None and self.current["it"] == res.n_iter and \
                np.array_equal(self.current["x"], res.x):
            return
        # the last iteration ended the solve: its gradient is the objective's there
        f, g = self.obj(res.x)
        self.current = dict(x=res.x, f=f, g=g, pairs=[], it=int(res.n_iter),
                            evals=int(res.n_evals), F=float(res.f), gmax=0.0)
        self.obj.take_pending()

    current = None

    def _on_iter(self, st):
        """After every iteration that does not end the solve (every rank, the same state):
        records, callbacks, then the control decisions of the iteration's reductions."""
        c, est, control = self.c, self.est, self.control
        self.current = st
        it = int(st["it"])
        self.iterations.t = it
        control.where = f"iteration {it + 1} (objective Allreduce)"
        now = time.perf_counter()
        self.seconds.append(now - self.t0)
        self.t0 = now
        self.curve.append(float(st["F"]))
        logs = {"epoch": it, "iteration": it, "step": it, "loss": float(st["F"]),
                "grad_max": float(st["gmax"]), "evals": int(st["evals"]),
                "seconds": self.seconds[-1]}
        if self.validation is not None:
            self.store(_Result(st["x"], st["F"], it, "running", st["evals"]))
            for k, v in est.metrics(*self.validation).items():
                logs[f"val_{k}"] = float(v) if k != "n_samples" else int(v)
        if self.run_dir is not None:
            self.run_dir.log(dict(logs, ranks=c.size))
            self.run_dir.write_status(force=True, state="running", epoch=it, step=it,
                                      loss=logs["loss"], ranks=c.size)
        self.bar.update(it, note=f"objective {logs['loss']:.6g}", force=False)
        if est.verbose and c.rank == 0:
            val = "".join(f"  {k} {v:.6g}" for k, v in logs.items()
                          if k.startswith("val_") and isinstance(v, float))
            self.bar.write(f"iteration {it}: objective {logs['loss']:.10g}  max |gradient| "
                                f"{logs['grad_max']:.3g}{val}  ({self.seconds[-1]:.3g} s)")
        if self.callbacks:
            hits = [cb for cb in self.callbacks if bool(cb.on_epoch_end(est, logs))]
            if hits:
                self.stopped_by = getattr(hits[0], "reason", None) or "a callback"
                control.user_stop = True
        code = self.obj.take_pending()
        every = est.checkpoint_every
        due = bool(code & Decision.CHECKPOINT) or bool(every and it % every == 0)
        control.boundary(self.iterations, 0, code & Decision.STOP, due,
                         code & Decision.COMMAND)

    # ------------------------------------------------------------ the result
    def store(self, res=None):
        """Write the solve's result on the estimator (the model and the running state)."""
        res = self.result if res is None else res
        est, K, d = self.est, self.K, self.data.d
        x = np.zeros(K * d + K)
        x[:self.obj.size] = res.x
        est._store_solution(x, K, d)
        state = RunState(self.data.seed, int(res.n_iter), float(res.n_evals),
                         loss_curve=self.curve, epoch_times=self.seconds)
        state.stopped_by = self.stopped_by
        state.store(est)
        est.n_evals_ = int(res.n_evals)
        est.objective_ = float(res.f)
        est.solver_status_ = res.status
        est.live_params_, est.param_changes_ = {}, []


class _Iterations:
    """What the step control and the watchdog read as the session's ``engine``: ``t``,
    the iterations done."""
    t = 0


def _Result(x, f, n_iter, status, n_evals):
    from ..solvers import Result
    return Result(np.asarray(x, dtype=np.float64), float(f), int(n_iter), status, int(n_evals))


def _solver_state(saved, arrays):
    """The solver state a checkpoint holds (``start`` of :func:`mpiml.solvers.lbfgs`),
    checked: a checkpoint of SGD epochs, or with arrays of the wrong size, is refused."""
    where = saved["path"]
    need = ("w", "grad", "solver_s", "solver_y", "solver_done")
    if any(k not in arrays for k in need):
        raise DataError(f"{where} is a checkpoint of SGD training, not of an exact solve: "
                        "resume it with solver='sgd' (--solver sgd)")
    w, g, S, Y = arrays["w"], arrays["grad"], arrays["solver_s"], arrays["solver_y"]
    size = w.shape[0] if w.ndim == 1 else -1
    if size < 1 or g.shape != w.shape or S.ndim != 2 or S.shape != Y.shape or \
            (S.shape[0] and S.shape[1] != size) or S.shape[0] > 10:
        raise DataError(f"{where}: its solver state is damaged (arrays of inconsistent shapes)")
    pairs = [(S[i].astype(np.float64), Y[i].astype(np.float64)) for i in range(S.shape[0])]
    if any(not s @ y > 0 for s, y in pairs):
        raise DataError(f"{where}: its solver state is damaged (an L-BFGS pair with s.y <= 0)")
    return dict(x=w.astype(np.float64), f=float(saved["epoch_loss"]), g=g.astype(np.float64),
                pairs=pairs, it=int(saved["n_iter"]), evals=int(saved["epoch_count"]),
                F=float(saved["best"]), done=bool(arrays["solver_done"].ravel()[0] > 0))


def _check_size(start, size, where):
    if start["x"].shape[0] != size:
        raise DataError(f"{where}: its solver state has {start['x'].shape[0]} parameters; this "
                        f"model has {size}")
