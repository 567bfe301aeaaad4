"""The training loop every mpiml estimator shares.

An estimator supplies an *engine* (the model's state and its step kernels) and
:class:`Trainer` drives it: agreed validation, the global row count, the
rank-count-independent batch schedule, the process grid, epochs with early
stopping, checkpoints, signals, the watchdog and resume. The checkpoint and signal
plumbing is in :mod:`mpiml.models.checkpointing`, the epoch record and live control in
:mod:`mpiml.models.steering`, per-row class weights in :mod:`mpiml.imbalance` and the
feature scaler in :mod:`mpiml.models.scaling`.

The engine protocol (``mpiml._kernels.sgd.Engine`` for the data-parallel linear
models, :class:`mpiml.parallel.engine.StepEngine` subclasses otherwise):

* ``buf_arr`` -- the packed step buffer: ``P`` gradient sums, loss sum, row
  count, then the control words of :class:`~mpiml.parallel.data.StepControl`;
  reduced over the grid's data-parallel communicator, once per step;
* ``set_plan``, ``grad_step(s)``, ``apply()``, ``apply_checked(size)``,
  ``run_plan(start, stop)``, ``t``, ``epoch_loss``, ``epoch_count``,
  ``params_finite()``;
* ``get_state()`` / ``set_state(arrays)`` -- the *logical* (unsharded) optimiser
  state as flat arrays; collective over the model-parallel group for sharded
  engines, so checkpoints and model files never depend on the split.
"""
import math
import time

import numpy as np

from .._kernels.stats import permute_rows
from ..comm import check_model_parallel, get_comm, get_grid
from ..errors import ConfigError, DataError, NotFittedError, TrainingError
from ..imbalance import row_weights
from ..io import first_nonfinite_row
from ..parallel.data import StopTraining, group_layout, layout_plan, run_epoch
from ..parallel.ps import EpochwiseRun, run_parameter_server, server_ranks, summarise_servers
from ..parallel.sync import (CommCounters, Compressor, StatsWriter, parse_compress, parse_sync,
                             run_epoch_local, run_epoch_sync)
from ..runctl import RunDir
from ..watchdog import watching
from .base import BaseEstimator, check_local_X
from .checkpointing import restore, signals, step_control
from .scaling import check_scaler, fit_scaler, scaler_arrays, transform
from .steering import Progress, Steering, epoch_logs, set_engine_hyper

__all__ = ["Trainer"]


def _reorder(X, idx, own):
    """``X[idx]``: in place when ``X`` is this fit's to change (no second copy of the
    rows in memory), else a new array."""
    if own:
        permute_rows(X.view(np.uint8), idx)
        return X
    return np.take(X, idx, axis=0)


def _positive_int(v):
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1


class Trainer(BaseEstimator):
    """Base class of mpiml's estimators (see the module doc for what subclasses supply:
    ``_validate_model_params``, ``_encode``, ``_make_engine``, ``_store``,
    ``_fitted_state``)."""
    _is_classifier = False
    _supports_ps = False
    _resumed_params = ()        # hyper-parameters a resumed run takes from its checkpoint

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        def bad(msg):
            raise ConfigError(f"{type(self).__name__}: {msg}")

        self._validate_model_params(bad)
        check_scaler(self.scaler, bad)
        if self.batch_size != "full" and not _positive_int(self.batch_size):
            bad(f"batch_size must be a positive integer or 'full', not {self.batch_size!r}")
        if not _positive_int(self.max_iter):
            bad(f"max_iter must be a positive integer, not {self.max_iter!r}")
        if self.tol is not None and (not isinstance(self.tol, (int, float)) or self.tol != self.tol):
            bad(f"tol must be a number or None, not {self.tol!r}")
        if not _positive_int(self.n_iter_no_change):
            bad(f"n_iter_no_change must be a positive integer, not {self.n_iter_no_change!r}")
        if self.dtype is not None and np.dtype(self.dtype) not in (np.float32, np.float64):
            bad(f"dtype must be None, 'float32' or 'float64', not {self.dtype!r}")
        if self.random_state is not None and (isinstance(self.random_state, bool) or
                                              not isinstance(self.random_state, (int, np.integer))
                                              or self.random_state < 0):
            bad(f"random_state must be None or a non-negative integer, not {self.random_state!r}")
        if self.checkpoint_every is not None and not _positive_int(self.checkpoint_every):
            bad(f"checkpoint_every must be a positive integer, not {self.checkpoint_every!r}")
        for name in ("checkpoint_seconds", "comm_timeout"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not v > 0):
                bad(f"{name} must be a positive number of seconds or None, not {v!r}")
        if not _positive_int(self.keep_checkpoints):
            bad(f"keep_checkpoints must be a positive integer, not {self.keep_checkpoints!r}")
        if (self.checkpoint_every or self.checkpoint_seconds) and not self.checkpoint_dir:
            bad("checkpoint_every / checkpoint_seconds need checkpoint_dir")
        size = get_comm(self.comm).size
        check_model_parallel(self.model_parallel, size)
        kind, num = parse_sync(self.sync)
        comp, _ = parse_compress(self.compress)
        if not isinstance(self.overlap, (bool, np.bool_)):
            bad(f"overlap must be True or False, not {self.overlap!r}")
        if not isinstance(self.sync_warmup, (int, np.integer)) or self.sync_warmup < 0:
            bad(f"sync_warmup must be a non-negative integer, not {self.sync_warmup!r}")
        if not isinstance(self.max_staleness, (int, np.integer)) or self.max_staleness < 0:
            bad(f"max_staleness must be a non-negative integer, not {self.max_staleness!r}")
        if (comp != "none" or self.overlap) and kind != "allreduce":
            bad(f"compress and overlap apply to sync='allreduce', not {self.sync!r}")
        if comp != "none" and self.overlap:
            bad("choose compress or overlap, not both")
        if kind == "ps":
            if not self._supports_ps:
                bad("sync='ps:S' is implemented for the linear models (SGDClassifier, "
                    "SGDRegressor)")
            if num >= size:
                bad(f"sync={self.sync!r} needs at least one worker: {num} server(s) on {size} "
                    f"rank(s)")
            if self.model_parallel != 1:
                bad("sync='ps:S' is for data-parallel training (model_parallel=1)")

    def _validate_model_params(self, bad):
        pass

    def _prepare_local(self, X, y):
        """Local checks (run on every rank, agreed by the caller)."""
        self._validate_params()
        X = check_local_X(X)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        if y.ndim != 1:
            raise DataError(f"y must be 1-D, it has shape {y.shape}")
        if y.shape[0] != X.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        if y.dtype.kind not in "fiub":
            raise DataError(f"y has type {y.dtype}; mpiml needs numeric targets or class labels")
        row = first_nonfinite_row(X) if X.size else None
        if row is not None:
            raise DataError(f"X has a NaN or infinite value (local row {row})")
        y = y.astype(np.float64)
        if y.size and not np.isfinite(y).all():
            raise DataError("y has a NaN or infinite value")
        local_classes = None
        if self._is_classifier:
            if y.size and not np.all(y == np.round(y)):
                raise DataError("class labels must be integers; for real-valued targets use a "
                                "regressor (SGDRegressor, --model linear)")
            local_classes = np.unique(y)
        return X, y, local_classes

    # ------------------------------------------------------------ training
    def fit(self, X, y, resume=None, columns=None, validation=None, callbacks=None,
            sample_weight=None, copy_X=True):
        """Fit on the rows every rank passes (collective).

        Parameters
        ----------
        X : array (n_local, n_features)
            This rank's rows; shards may differ in size and may be empty. With
            ``model_parallel=K``, the ``K`` ranks of a model-parallel group (world
            ranks ``K*g .. K*g+K-1``) pass the same rows.
        y : array (n_local,)
        resume : str, optional
            A checkpoint directory (or file): continue that run, on any number of
            ranks, up to ``max_iter`` epochs in all. The optimisation
            hyper-parameters come from the checkpoint.
        columns : (lo, hi, n_features), optional
            Feature-sharded models only: ``X`` holds only columns ``lo:hi`` of the
            ``n_features`` (this rank's shard, as read by
            ``load_hdf5(..., columns=...)``) instead of all of them.
        validation : (X_val, y_val), optional
            This rank's validation rows: global validation metrics after every epoch
            (in the epoch logs, the verbose lines and the run directory's metrics log).
        callbacks : list, optional
            Objects with ``on_epoch_end(estimator, logs) -> bool`` (True stops the fit),
            e.g. :class:`mpiml.models.steering.EarlyStopping`. They run on every rank
            with the same global logs; a callback may change hyper-parameters with
            ``estimator.set_params(...)`` (learning rate, momentum, alpha from the next
            step, batch_size from the next epoch).
        sample_weight : array (n_local,), optional
            Per-row weights multiplying each row's loss and gradient (data-parallel
            linear models); combined with ``class_weight``.
        copy_X : bool, default True
            False lets the fit store ``X``'s rows in its step order (and scale them, with
            ``scaler=``) in ``X`` itself instead of in a copy, when ``X`` is a writeable
            C-contiguous array of the training dtype: peak memory is then the data once,
            not twice, and no copy is made. ``X`` is left reordered; ``y`` is not changed.
            ``mpiml train`` fits this way on the rows it read.

        Returns
        -------
        self
        """
        return self._fit(X, y, None, reset=True, resume=resume, columns=columns,
                         validation=validation, callbacks=callbacks, sample_weight=sample_weight,
                         copy_X=copy_X)

    def partial_fit(self, X, y, classes=None):
        """One epoch over the rows every rank passes, continuing from the current state
        (collective)."""
        return self._fit(X, y, 1, reset=not hasattr(self, "n_features_in_"), classes=classes)

    def _fit(self, X, y, epochs, reset, classes=None, resume=None, columns=None, validation=None,
             callbacks=None, sample_weight=None, copy_X=True):
        c = get_comm(self.comm)
        Xl, yl, local_classes = c.run(self._prepare_local, X, y)
        grid = get_grid(c, self.model_parallel)
        seed = None
        if c.rank == 0:
            seed = (int(self.random_state) if self.random_state is not None
                    else int(np.random.SeedSequence().entropy % (1 << 31)))
        seed = c.bcast(seed)
        # rows are counted once per replica: over the data-parallel communicator
        meta = grid.data.allgather((Xl.shape[0], Xl.shape[1], Xl.dtype.str,
                                    None if local_classes is None else local_classes.tolist()))
        n_global = sum(m[0] for m in meta)
        offset = sum(m[0] for m in meta[:grid.data.rank])
        group = grid.model.allgather((Xl.shape[0], float(np.sum(yl)), Xl.shape[1]))
        sync_kind, sync_num = parse_sync(self.sync)
        servers = server_ranks(c.size, sync_num) if sync_kind == "ps" else []

        def check_global():
            if c.rank in servers and Xl.shape[0] > 0:
                raise DataError(f"with sync={self.sync!r} ranks {servers} are parameter servers "
                                "and hold no rows: load the data with load_hdf5(..., "
                                f"sync={self.sync!r})")
            if len({g[:2] for g in group}) > 1:
                raise DataError("the ranks of a model-parallel group passed different rows "
                                f"(rows, sum of y per rank: {[g[:2] for g in group]}); each "
                                "group of model_parallel consecutive ranks must pass the same rows")
            widths = {m[1] for m in meta if m[0] > 0} or {meta[0][1]}
            if columns is not None:
                d = int(columns[2])
                if Xl.shape[1] != int(columns[1]) - int(columns[0]):
                    raise DataError(f"X has {Xl.shape[1]} columns but columns={tuple(columns)}")
            else:
                if len(widths) > 1:
                    raise DataError(f"ranks passed different numbers of features: {sorted(widths)}")
                d = widths.pop()
            if n_global == 0:
                raise DataError("no rows to fit on any rank")
            if d == 0:
                raise DataError("X has zero features")
            if not reset and d != self.n_features_in_:
                raise DataError(f"X has {d} features, the model was fitted with "
                                f"{self.n_features_in_}")
            cls = None
            if self._is_classifier:
                cls = np.unique(np.concatenate([np.asarray(m[3], dtype=np.float64) for m in meta]))
                if not reset:
                    unseen = np.setdiff1d(cls, self.classes_)
                    if unseen.size:
                        raise DataError(f"labels {unseen.tolist()[:5]} were not seen in the first "
                                        f"fit; pass classes= to the first partial_fit")
                    cls = self.classes_
                elif classes is not None:
                    given = np.unique(np.asarray(classes, dtype=np.float64))
                    unseen = np.setdiff1d(cls, given)
                    if unseen.size:
                        raise DataError(f"labels {unseen.tolist()[:5]} are not in classes=")
                    cls = given
                if cls.size < 2:
                    raise DataError(f"a classifier needs at least 2 classes; the labels have only "
                                    f"{cls.size} ({cls.tolist()})")
            return d, cls

        d, cls = c.run(check_global)
        dtypes = {m[2] for m in meta if m[0] > 0}
        if self.dtype is not None:
            dtype = np.dtype(self.dtype)
        else:
            dtype = np.dtype(np.float32) if dtypes == {np.dtype(np.float32).str} else np.dtype(np.float64)
        Xl = np.ascontiguousarray(Xl, dtype=dtype)
        # the rows may be reordered and scaled in place: a copy made here, or the caller's
        # array when copy_X=False
        own = Xl.flags.writeable and (not copy_X or not np.may_share_memory(Xl, X))
        if Xl.shape[0] == 0:
            Xl = np.zeros((0, Xl.shape[1] if columns is not None else d), dtype=dtype)

        if reset:
            self.n_features_in_ = d
            if self._is_classifier:
                self.classes_ = cls
            self._seed = seed
            self.n_iter_ = 0
            self._epochs_done = 0
            self.t_ = 1.0
            self._tol_state = [math.inf, 0]
            self.loss_curve_ = []
            self.epoch_times_ = []
        batch = n_global if self.batch_size == "full" else int(self.batch_size)
        state, arrays = (None, None)
        if resume is not None:
            state, arrays = restore(self, c, resume, d, n_global)
            batch = int(state["batch"])
        if reset:
            # after a restore: a resumed run scales as its checkpoint says (the same
            # statistics, recomputed from the same rows)
            fit_scaler(self, grid, Xl, columns)
        K, y_enc, loss = self._encode(yl)
        sw = row_weights(self, c, grid, yl, sample_weight, meta)
        # the local rows in batch order (in place when they are the fit's own, else one
        # reordered copy): every step then reads contiguous memory
        perm, gptr = group_layout(n_global, batch, offset, Xl.shape[0])
        if perm is not None:
            Xl = _reorder(Xl, perm, own)
            own = True
            y_enc = y_enc[perm]
            sw = sw[perm] if sw is not None else None
        if hasattr(self, "scale_offset_"):
            Xl = transform(self, Xl, inplace=own, columns=columns)
            own = True
        engine = c.run(self._make_engine, Xl, y_enc, K, loss, d, grid, columns)
        if sw is not None:
            engine.set_sample_weight(sw)
        start_step = 0
        if state is not None:
            c.run(engine.set_state, arrays)
            engine.t = float(state["t"])
            engine.epoch_loss = float(state["epoch_loss"])
            engine.epoch_count = float(state["epoch_count"])
            start_step = int(state["step"])
        elif not reset:
            engine.set_state(self._fitted_state())
            engine.t = self.t_ - 1.0
        target = self.max_iter if epochs is None else self.n_iter_ + epochs
        control = step_control(self, c, grid, engine, K, d, n_global, batch)
        counters = CommCounters()
        writer = StatsWriter(self.stats, c, {"sync": self.sync, "compress": self.compress,
                                             "overlap": bool(self.overlap), "ranks": c.size})
        ps_run = None
        if sync_kind == "ps":
            if state is not None and int(state["step"]) != 0:
                raise ConfigError(f"{state['path']} was written inside an epoch; a parameter-"
                                  "server fit resumes from a checkpoint written at an epoch end",
                                  ranks=range(c.size))
            if validation is None and not callbacks and control.save is None and (
                    self.tol is None or epochs is not None):
                # nothing needs a common point (no validation, callbacks, checkpoints or tol
                # rule): all epochs run without the ranks meeting
                with watching(c, self.comm_timeout, control):
                    self._fit_ps(c, engine, gptr, target, sync_num, counters, writer)
                self.stopped_by_ = None
                self.t_ = engine.t + 1.0
                self._store(engine, K, d)
                return self
            ps_run = EpochwiseRun(c, sync_num, counters, record=getattr(self, "_ps_record", False))
        comp_kind, ratio = parse_compress(self.compress)
        compressor = None
        if comp_kind != "none":
            compressor = Compressor(comp_kind, ratio, engine.P, len(engine.buf_arr) - engine.P,
                                    engine.buf_arr.dtype)
        local = {"samples": 0.0, "since": 0}
        steer, run = None, None
        if self.run_dir is not None:
            run = RunDir(self.run_dir, c.rank)
            steer = Steering(self, c, control, run)
            control.run, control.on_command, control.timing = run, steer.on_command, True
            run.log({"event": "start", "time": time.time(), "ranks": c.size,
                     "model": type(self).__name__, "rows": n_global, "features": d,
                     "params": {k: v for k, v in self.get_params().items() if k != "comm"}})
        progress = Progress(c.rank, 0, bool(self.verbose))
        stopped = None
        state_ = {"Xl": Xl, "y": y_enc, "perm": perm, "gptr": gptr, "batch": batch, "sw": sw,
                  "own": own}

        def relayout(new_batch):
            """A new global batch size from the next epoch on: the rows are put in the new
            batch order (in place when the rows are the fit's own) and a new engine takes
            over the state."""
            nonlocal engine
            n_local = state_["Xl"].shape[0]
            perm2, gptr2 = group_layout(n_global, new_batch, offset, n_local)
            inv = np.empty(n_local, dtype=np.intp)
            inv[state_["perm"] if state_["perm"] is not None else np.arange(n_local)] = \
                np.arange(n_local)
            idx = inv[perm2] if perm2 is not None else inv
            Xn, yn = _reorder(state_["Xl"], idx, state_["own"]), state_["y"][idx]
            fresh = c.run(self._make_engine, Xn, yn, K, loss, d, grid, columns)
            if state_["sw"] is not None:
                state_["sw"] = state_["sw"][idx]
                fresh.set_sample_weight(state_["sw"])
            for new, old in zip(fresh.sync_arrays(), engine.sync_arrays()):
                new[...] = old
            fresh.after_sync()
            fresh.t = engine.t
            for name in ("eta0", "momentum", "alpha"):
                if hasattr(engine, name):
                    setattr(fresh, name, getattr(engine, name))
            if hasattr(engine, "h"):
                fresh.h.update(engine.h)
            engine = fresh
            control.attach(engine)
            state_.update(Xl=Xn, y=yn, perm=perm2, gptr=gptr2, batch=new_batch, own=True)
            control.batch = new_batch

        with signals(control, control.save is not None), watching(c, self.comm_timeout, control):
            try:
                while self.n_iter_ < target:
                    if steer is not None and steer.pending_batch not in (None, state_["batch"]):
                        relayout(steer.pending_batch)
                    elif self.batch_size not in ("full", state_["batch"]) and callbacks:
                        relayout(int(self.batch_size))      # changed by a callback
                    epoch = self._epochs_done
                    control.where = f"epoch {epoch + 1} (step Allreduce)"
                    plan = layout_plan(state_["gptr"], self._seed, epoch)
                    if ps_run is not None:
                        control.where = f"epoch {epoch + 1} (parameter server)"
                        stats = ps_run.epoch(self, engine, plan)
                    elif sync_kind == "local":
                        stats = run_epoch_local(engine, grid.data, plan, start_step, control,
                                                counters, sync_num, self.sync_warmup, local)
                    elif compressor is not None or self.overlap or self.stats:
                        stats = run_epoch_sync(engine, grid.data, plan, start_step, control,
                                               counters, compressor, bool(self.overlap))
                    else:
                        stats = run_epoch(engine, grid.data, plan, start_step, control)
                    start_step = 0
                    self._epochs_done += 1
                    self.n_iter_ += 1
                    mean_loss = stats.loss / stats.count
                    # every rank holds the same reduced loss and parameters: all raise together
                    if not math.isfinite(mean_loss) or not engine.params_finite():
                        raise TrainingError(f"training diverged at epoch {epoch + 1} (loss "
                                            f"{mean_loss}): lower the learning rate (eta0 / "
                                            "--lr) or scale the features")
                    self.loss_curve_.append(mean_loss)
                    self.epoch_times_.append(stats.seconds)
                    writer.epoch(self.n_iter_, counters, mean_loss, stats.seconds)
                    logs = epoch_logs(self, c, engine, stats, mean_loss, K, d, validation, run,
                                            control, counters)
                    counters.reset()
                    progress.update(engine.t, mean_loss, logs["samples_per_s"])
                    if self.verbose:
                        val = "".join(f"  {k} {v:.6g}" for k, v in logs.items()
                                      if k.startswith("val_") and isinstance(v, float))
                        progress.write(f"epoch {self.n_iter_}: loss {mean_loss:.6g}{val}  "
                                       f"{stats.count / stats.seconds / 1e6:.3g} M samples/s  "
                                       f"({stats.steps} steps, {stats.seconds:.3g} s)")
                    # every callback sees every epoch, also after one asked to stop
                    hits = [cb for cb in callbacks or () if bool(cb.on_epoch_end(self, logs))]
                    if hits:
                        stopped = getattr(hits[0], "reason", None) or "a callback"
                        break
                    for name in ("eta0", "learning_rate_init", "momentum", "alpha"):
                        if hasattr(self, name):     # a callback may have changed them
                            set_engine_hyper(engine, name, getattr(self, name))
                    if self.tol is not None and epochs is None:      # fit, not partial_fit
                        best, stall = self._tol_state
                        stall = stall + 1 if mean_loss > best - self.tol else 0
                        self._tol_state = [min(best, mean_loss), stall]
                        if stall >= self.n_iter_no_change:
                            break
                    if ps_run is not None:
                        ps_run.boundary(control, engine)
            except StopTraining as exc:
                stopped = f"mpiml ctl stop at step {exc.args[0]}"
                control.user_stop = False
            progress.close()
            if ps_run is not None and ps_run.runs:
                self.ps_stats_ = summarise_servers(ps_run.runs)
            if control.save is not None:
                control.save(0)         # the final state
        if run is not None:
            run.log({"event": "end", "time": time.time(), "step": int(engine.t),
                     "epochs": self.n_iter_, "stopped_by": stopped})
            run.write_status(force=True, state="finished", step=int(engine.t))
        if stopped and self.verbose:
            c.print0(f"stopped early by {stopped}")
        self.stopped_by_ = stopped
        self.t_ = engine.t + 1.0
        self._store(engine, K, d)
        return self

    def _fit_ps(self, c, engine, gptr, target, n_servers, counters, writer):
        """The asynchronous parameter-server run (see mpiml.parallel.ps)."""
        first = self.n_iter_
        plans = [layout_plan(gptr, self._seed, e) for e in range(self._epochs_done,
                                                                   self._epochs_done + target - first)]
        t0 = time.perf_counter()
        out = run_parameter_server(engine, c, n_servers, plans, self._hyper(),
                                   engine.P - engine.K, self.max_staleness, counters,
                                   record=getattr(self, "_ps_record", False))
        seconds = time.perf_counter() - t0
        self.ps_stats_ = summarise_servers([out["servers"]])
        for e in range(len(plans)):
            mean_loss = out["loss"][e] / max(out["count"][e], 1.0)
            if not math.isfinite(mean_loss) or not engine.params_finite():
                raise TrainingError(f"training diverged in epoch {first + e + 1} (loss {mean_loss}):"
                                    " lower the learning rate (eta0 / --lr) or scale the features")
            self.loss_curve_.append(float(mean_loss))
            self.epoch_times_.append(seconds / len(plans))
            self.n_iter_ += 1
            self._epochs_done += 1
            if self.verbose:
                c.print0(f"epoch {self.n_iter_}: loss {mean_loss:.6g} (asynchronous: the mean over "
                         "the pushes of this epoch)")
        writer.epoch("all", counters, self.loss_curve_[-1], seconds,
                     {"max_clock_gap": self.ps_stats_["max_clock_gap"],
                      "max_update_staleness": self.ps_stats_["max_update_staleness"]})

    # ------------------------------------------------------------ fitted state
    def _write_model(self, path, arrays, params=None, attrs=None):
        """Write the model file (collective; rank 0 writes): the subclass's datasets,
        ``params`` and ``attrs`` added to what every estimator stores (its parameters,
        ``n_features_in``, ``n_iter`` and the scaler)."""
        from ..io import save_model
        more, more_attrs = scaler_arrays(self)
        params = {**{k: v for k, v in self.get_params().items() if k != "comm"},
                  **(params or {})}
        attrs = {"n_features_in": self.n_features_in_, "n_iter": self.n_iter_,
                 **(attrs or {}), **more_attrs}
        save_model(path, type(self).__name__, params, {**arrays, **more}, comm=self.comm,
                   extra_attrs=attrs)

    def _check_fitted(self):
        if not hasattr(self, "n_features_in_") or not hasattr(self, "n_iter_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")
