"""A fit session: everything a fit needs while it runs, in one object.

``fit`` / ``partial_fit`` (:mod:`mpiml.models.training`) agree on the data, build a
:class:`FitSession`, :meth:`~FitSession.run` it and :meth:`~FitSession.store` the result.
The session owns, for the duration of the fit:

* the *layout* (this rank's rows in batch order, :class:`Layout`) and the *engine* (the
  model's state and step kernels, rebuilt when the batch size changes);
* the *synchronizer* (how the ranks combine work, one class per mode, picked by name
  from :data:`mpiml.parallel.synchronizers.SYNCHRONIZERS`);
* the *step control* (:class:`mpiml.parallel.protocol.StepControl`: stop, checkpoint and
  command requests agreed in the step's reduction), the checkpoint policy, the run
  directory and its :class:`~mpiml.models.steering.Steering`, the stats writer and the
  communication counters;
* the *running state* (:class:`RunState`: epochs, update count, seed, early-stopping
  state, loss curve) and the *live hyper-parameters* (:class:`LiveParams`: what
  ``mpiml ctl set`` and callbacks change while the fit runs).

The estimator keeps its constructor parameters exactly as given. What a later
``partial_fit`` or ``resume`` continues from is stored on it as fitted attributes
(``n_iter_``, ``t_``, ``seed_``, ``best_loss_``, ``no_improvement_count_``,
``loss_curve_``, ``live_params_``, ``param_changes_``), and in checkpoints. Nothing
outside the session writes the estimator's running state, and nothing below the session
(engines, synchronizers, step control) sees the estimator: they are given numbers,
arrays and callables.

Callbacks receive the estimator; while they run, its live parameters (``eta0`` /
``learning_rate_init``, ``momentum``, ``alpha``, ``batch_size``) show the live values,
and a change they make with ``set_params`` becomes a live change (applied from the next
step, a batch size from the next epoch); the constructor values are put back afterwards.
"""
import math
import os
import time

import numpy as np
from mpi4py import MPI

from .._kernels.stats import permute_rows, take_rows
from ..checkpoint import CheckpointPolicy, write_checkpoint
from ..errors import DataError, Interrupted, TrainingError
from ..imbalance import row_weights
from ..io import first_nonfinite_row
from ..parallel.data import block_rows, epoch_plan, group_layout, inverse_permutation, layout_plan
from ..parallel.protocol import StepControl, StopTraining
from ..parallel.sparse import choose_exchange
from ..parallel.sync import CommCounters, StatsWriter
from ..parallel.synchronizers import SYNCHRONIZERS, SyncSetup, mode_of
from ..runctl import RunDir
from ..threads import blas_threads
from ..watchdog import watching
from .base import is_sparse
from .checkpointing import claim_directory, fingerprint, read_resume, signals
from .scaling import fit_scaler, transform
from .steering import Progress, Steering, summarise

__all__ = ["FitSession", "RunState", "LiveParams", "Layout", "set_engine_hyper"]


def set_engine_hyper(engine, name, value):
    """Carry a live hyper-parameter change into a running engine (from its next step)."""
    h = getattr(engine, "h", None)
    if h is None:                                   # the Cython engine
        if name in ("eta0", "momentum", "alpha"):
            setattr(engine, name, float(value))
        return
    if name in h:
        h[name] = value


def resolve_batch(batch, n_global):
    """The global batch size a ``batch_size`` parameter means for ``n_global`` rows:
    ``"full"`` all of them; ``"auto"`` about one row in a thousand, from 1 (scikit-learn's
    per-row SGD, for small data) up to 256 (from 256,000 rows on)."""
    if batch == "full":
        return n_global
    if batch == "auto":
        return int(min(256, max(1, n_global // 1000)))
    return int(batch)


class RunState:
    """How far a fit has come: what ``partial_fit`` and ``resume`` continue from."""

    def __init__(self, seed, n_iter=0, t=0.0, best=math.inf, stall=0, loss_curve=(),
                 epoch_times=()):
        self.seed, self.n_iter, self.t = int(seed), int(n_iter), float(t)
        self.best, self.stall = float(best), int(stall)
        self.loss_curve, self.epoch_times = list(loss_curve), list(epoch_times)
        self.stopped_by = None

    @classmethod
    def of(cls, est, seed):
        """The state a fitted estimator stored (``partial_fit`` continues from it); a model
        read from a file has no schedule state: it continues with ``seed``."""
        g = est.__dict__.get
        return cls(g("seed_", seed), g("n_iter_", 0), g("t_", 1.0) - 1.0, g("best_loss_", math.inf),
                   g("no_improvement_count_", 0), g("loss_curve_", ()), g("epoch_times_", ()))

    @classmethod
    def of_checkpoint(cls, state, arrays):
        # epoch_times_ count the epochs run by this call only
        return cls(state["seed"], state["n_iter"], state["t"], state["best"], state["stall"],
                   [float(v) for v in arrays["loss_curve"]])

    def store(self, est):
        est.seed_ = self.seed
        est.n_iter_ = self.n_iter
        est.t_ = self.t + 1.0                  # scikit-learn's t_: updates made + 1
        est.best_loss_ = self.best
        est.no_improvement_count_ = self.stall
        est.loss_curve_ = list(self.loss_curve)
        est.epoch_times_ = list(self.epoch_times)
        est.stopped_by_ = self.stopped_by


class LiveParams:
    """The hyper-parameters that may change while a fit runs, their current values, and
    the record of every change (update number, epoch, name, value, by whom)."""

    def __init__(self, values, changes=()):
        self.values = dict(values)
        self.changes = [dict(ch) for ch in changes]

    def set(self, name, value, step, epoch, by):
        self.values[name] = value
        self.changes.append({"step": int(step), "epoch": int(epoch), "param": name,
                             "value": value, "by": by})


def _load_state(engine, arrays, where):
    """A checkpoint's optimiser state into the engine; arrays of the wrong size are the
    file's fault (a DataError naming it), not a bug."""
    try:
        engine.set_state(arrays)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{where}: its model state does not fit this model ({exc})") from None


def _reorder(X, idx, own, check=False):
    """``(X[idx], whether a row holds NaN or infinity)``: in place when ``X`` is this fit's
    to change (no second copy of the rows in memory), else a new array, copied run by
    run with the finiteness check of each run fused into its copy (``check``; a copy
    with ``np.take`` row by row took 2-17x as long). CSR rows: always a new matrix."""
    if is_sparse(X):
        return X[idx], False
    if own:
        permute_rows(X.view(np.uint8), idx)
        return X, bool(check and X.size and first_nonfinite_row(X) is not None)
    out = np.empty((len(idx), X.shape[1]), dtype=X.dtype)
    bad = take_rows(X, np.ascontiguousarray(idx, dtype=np.intp), out)
    return out, bool(check and bad >= 0)


# Visiting a step's blocks where they are (several ranges per step) instead of a copy in
# step order: measured per epoch on 1M x 100 float32 rows, 3.4x / 1.8x / 1.2x the copy's
# epoch at global batch 64 / 256 / 1024 (blocks of 4 / 16 / 64 rows; 2.9x / 1.5x / 1.2x
# with the kernel's prefetch of the next range), i.e. about IN_PLACE_EXTRA / b read
# passes more; the copy costs about COPY_PASSES read passes once
# (more on a machine whose fresh memory is slow to fault in), and doubles the memory
IN_PLACE_EXTRA = 13.0
COPY_PASSES = 2.0


def visit_in_place(batch, epochs):
    """Whether a fit of ``epochs`` epochs at global batch ``batch`` visits the caller's
    rows in place rather than copying them into step order (the same answer on every
    rank and on a resume: it depends on the fit's settings only)."""
    return epochs * IN_PLACE_EXTRA / block_rows(batch) < COPY_PASSES


class Layout:
    """This rank's rows in batch order for a global batch size (every step then reads
    contiguous memory), or left in place for a short fit (:func:`visit_in_place`), and
    the epoch plans over them."""

    def __init__(self, X, y, sw, n_global, offset, batch, own, ranges=True, check=False,
                 epochs=None, check_in_epoch=False, order=None):
        self.n_global, self.offset, self.own = n_global, offset, own
        self.X, self.y, self.sw, self.batch = X, y, sw, batch
        # CSR rows stay where they are when the engine visits several ranges per step
        # (``ranges``; the model-parallel engines take one range per step)
        self.sparse = is_sparse(X) and ranges
        # dense rows too, for a short fit (whether or not the rows are the fit's own to
        # reorder: copy_X never changes the model); rows that come in a step order
        # (``order``, read so by ``mpiml train``) are visited in step order
        self.in_place = self.sparse or (order is None and ranges and epochs is not None and
                                        visit_in_place(batch, epochs))
        if self.in_place:
            # CSR rows: a copy would double the memory and buys little, the weights
            # being the scattered reads
            self.perm = self.gptr = None
        else:
            self.perm, self.gptr = group_layout(n_global, batch, offset, X.shape[0])
        bad = False
        idx = self.perm
        if order is not None:
            # row i holds the local row order[i]: the layout's row i is then its row
            # inv[perm[i]] (nothing to move when the order is this layout's)
            want = self.perm if self.perm is not None else np.arange(X.shape[0], dtype=np.intp)
            idx = None if np.array_equal(order, want) else inverse_permutation(order)[want]
        if idx is not None:
            X, bad = _reorder(X, idx, own, check)
            self.own = True
            y = y[idx]
            sw = sw[idx] if sw is not None else None
        # dense rows visited in place: the first epoch's margins can stand for the scan
        # (``check_in_epoch``, see FitSession._check_first_epoch)
        self.scan_deferred = bool(check and check_in_epoch and self.in_place and not self.sparse)
        if idx is None and check and X.size and not self.scan_deferred:
            bad = first_nonfinite_row(X) is not None      # rows not moved: not yet scanned
        if bad:
            # the caller's first such row (its order, as the check before the layout named it)
            rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
            row = int(self.perm[rows].min()) if self.perm is not None else int(rows[0])
            raise DataError(f"Input X contains NaN or infinity (local row {row})")
        self.X, self.y, self.sw, self.batch = X, y, sw, batch

    def scale(self, est, columns):
        """Apply the fitted scaler to the rows (in place when they are the fit's own)."""
        self.X = transform(est, self.X, inplace=self.own, columns=columns)
        self.own = True

    def plan(self, seed, epoch):
        if self.in_place:
            return epoch_plan(self.n_global, self.batch, seed, epoch, self.offset,
                              self.X.shape[0])
        return layout_plan(self.gptr, seed, epoch)

    def rebatch(self, batch):
        """Put the rows in the batch order of a new global batch size."""
        if self.in_place:
            self.batch = batch
            return
        n_local = self.X.shape[0]
        perm2, gptr2 = group_layout(self.n_global, batch, self.offset, n_local)
        inv = inverse_permutation(self.perm) if self.perm is not None else np.arange(n_local)
        idx = inv[perm2] if perm2 is not None else inv
        self.X, self.y = _reorder(self.X, idx, self.own)[0], self.y[idx]
        self.sw = self.sw[idx] if self.sw is not None else None
        self.perm, self.gptr, self.batch, self.own = perm2, gptr2, batch, True


class FitSession:
    """See the module doc. Built collectively by ``fit`` from agreed data (``data``, a
    :class:`mpiml.models.training.FitData`)."""

    def __init__(self, est, data, *, epochs, reset, resume, validation, callbacks,
                 sample_weight, hooks, overwrite=False, signal_checkpoint_dir=None,
                 in_place=True, own_targets=False):
        self.est, self.data, self.hooks = est, data, hooks
        self.resume, self.overwrite = resume, overwrite
        self.signal_only = False
        self.c, self.grid = c, grid = data.comm, data.grid
        self.validation, self.callbacks = validation, list(callbacks or ())
        self.partial = epochs is not None
        d, n_global = data.d, data.n_global
        names = est._live_names()
        prior = {k: est.__dict__[k] for k in ("n_features_in_", "classes_") if k in est.__dict__}
        if reset:
            est.n_features_in_ = d
            if est._is_classifier:
                est.classes_ = data.classes
            self.state = RunState(data.seed)
        else:
            self.state = RunState.of(est, data.seed)
        # the constructor's values (for partial_fit: as set_params left them)
        self.live = LiveParams({n: getattr(est, n) for n in names})
        # a checkpoint records (and a resume checks) which rows it was made on: taken
        # now, while the rows are in the caller's order, and only when it can be needed
        self.fingerprint = None
        if resume is not None or est.checkpoint_dir or est.run_dir or signal_checkpoint_dir:
            self.fingerprint = fingerprint(grid, data.X, data.offset, n_global, d, data.columns,
                                           data.order)
        start_step, saved = 0, None
        if resume is not None:
            saved, arrays = read_resume(est, c, resume, d, n_global, self.fingerprint)
            self.state = RunState.of_checkpoint(saved, arrays)
            self.live = LiveParams({n: saved["params"].get(n, getattr(est, n)) for n in names},
                                   saved.get("param_changes", ()))
            start_step = int(saved["step"])
        batch = resolve_batch(self.live.values["batch_size"], n_global)
        if saved is not None:
            batch = int(saved["batch"])
        if reset:
            # after a restore: a resumed run scales as its checkpoint says (the same
            # statistics, recomputed from the same rows)
            fit_scaler(est, grid, data.X, data.columns)
        y_enc, sw = self._targets(data, sample_weight, own_targets)
        self.prior = prior
        # no state of the first epoch can be saved (no checkpoint or run directory), so
        # that epoch may stand for the finiteness scan of rows visited in place
        in_epoch = not (est.checkpoint_dir or est.run_dir or signal_checkpoint_dir) and \
            mode_of(est.sync, est.compress, est.overlap, False)[0] == "allreduce"
        try:
            self.layout = c.run(Layout, data.X, y_enc, sw, n_global, data.offset, batch,
                                data.own, ranges=self.grid.K == 1 and est._engine_ranges,
                                check=not data.checked,
                                epochs=(est.max_iter if epochs is None else epochs)
                                if in_place else None, check_in_epoch=in_epoch,
                                order=data.order)
        except DataError:
            self._restore_prior()       # bad rows found by the layout's scan
            raise
        if hasattr(est, "scale_offset_"):
            self.layout.scale(est, data.columns)
        self.engine = self._make_engine()
        if saved is not None:
            c.run(_load_state, self.engine, arrays, saved["path"])
            self.engine.t = float(saved["t"])
            self.engine.epoch_loss = float(saved["epoch_loss"])
            self.engine.epoch_count = float(saved["epoch_count"])
        elif not reset:
            self.engine.set_state(est._fitted_state())
            self.engine.t = self.state.t
        self.start_step = start_step
        self.target = est.max_iter if epochs is None else self.state.n_iter + epochs
        self.control = self._make_control()
        self._make_synchronizer(signal_checkpoint_dir)
        if saved is not None:
            self.sync.check_start(start_step, saved["path"])
        self.run_dir = self.steering = None
        if est.run_dir is not None:
            self._open_run_dir()
        self.pending_batch = None
        self.scan_pending = self.layout.scan_deferred

    def _targets(self, data, sample_weight, own):
        """The encoded targets and the row weights (sets ``K`` and the loss). With ``own``,
        a classifier's agreed class indices are an array ``_agree_data`` made for this
        session alone: they are encoded in place after the row weights read them (no
        fresh array per row to fault in), and the session's data no longer holds them."""
        sw = row_weights(self.est, self.c, self.grid, data.y, sample_weight, data.meta)
        self.K, y_enc, self.loss = self.est._encode_agreed(
            data.y, reuse=own and data.classes is not None)
        if own:
            self.data = self.data._replace(y=None)
        return y_enc, sw

    def _make_synchronizer(self, signal_checkpoint_dir):
        est, c = self.est, self.c
        self.counters = CommCounters()
        self.writer = StatsWriter(est.stats, c, {"sync": est.sync, "compress": est.compress,
                                                 "overlap": bool(est.overlap), "ranks": c.size})
        # the ranks meet at epoch ends when something needs a common point there
        meets = bool(self.validation is not None or self.callbacks or
                     self.control.save is not None or (est.tol is not None and not self.partial))
        mode, number = mode_of(est.sync, est.compress, est.overlap, meets)
        exchange = None
        if self.layout.sparse:
            e = self.engine
            nnz = self.grid.data.allreduce(e.nnz())
            exchange = choose_exchange(getattr(est, "exchange", "auto"), e.P, e.K, nnz,
                                       self.data.n_global, self.layout.batch)
        setup = SyncSetup(c, self.grid, self.control, self.counters,
                          lambda e: self.layout.plan(self.state.seed, e), self.kernel_hyper,
                          number=number, warmup=est.sync_warmup, compress=est.compress,
                          counted=bool(est.stats), max_staleness=est.max_staleness,
                          last_epoch=self.target, hooks=self.hooks, exchange=exchange)
        self.sync = SYNCHRONIZERS[mode](setup, self.engine)
        if self.control.save is None and signal_checkpoint_dir is not None and mode != "ps":
            # no checkpoint directory: a signal still must not lose the work
            self._arm(signal_checkpoint_dir)
            self.signal_only = True

    def _open_run_dir(self):
        est, c = self.est, self.c
        self.run_dir = RunDir(est.run_dir, c.rank)
        self.run_dir.start()
        self.steering = Steering(self, c, self.control, self.run_dir,
                                 mlp=hasattr(est, "learning_rate_init"))
        self.control.run, self.control.on_command = self.run_dir, self.steering.on_command
        self.control.timing = True
        self.run_dir.log({"event": "start", "time": time.time(), "ranks": c.size,
                          "model": type(est).__name__, "rows": self.data.n_global,
                          "features": self.data.d, "params": self.params()})

    # ------------------------------------------------------------ parts
    def kernel_hyper(self):
        """The update's hyper-parameters with the live values (for the parameter server)."""
        return self.est._hyper(self.live.values)

    def params(self):
        """The estimator's parameters with the live values (what checkpoints record)."""
        p = {k: v for k, v in self.est.get_params().items() if k != "comm"}
        p.update(self.live.values)
        return p

    def _make_engine(self):
        lay = self.layout
        engine = self.c.run(self.est._make_engine, lay.X, lay.y, self.K, self.loss, self.data.d,
                            self.grid, self.data.columns, self.state.seed, self.live.values)
        if lay.sw is not None:
            engine.set_sample_weight(lay.sw)
        return engine

    def _make_control(self):
        est = self.est
        control = StepControl(self.grid.data, est.checkpoint_every, est.checkpoint_seconds,
                              hooks=self.hooks)
        control.batch = self.layout.batch
        directory = est.checkpoint_dir
        if directory is None and est.run_dir is not None:
            directory = os.path.join(est.run_dir, "checkpoints")
        if directory is None:
            return control
        self.control = control
        self._arm(directory, est.checkpoint_every, est.checkpoint_seconds)
        return control

    def _arm(self, directory, every=None, seconds=None):
        """Checkpoints into ``directory`` (claimed for this run): every ``every`` updates,
        every ``seconds``, at the end and on a signal."""
        est, c, control = self.est, self.c, self.control
        self.policy = CheckpointPolicy(directory, every, seconds, est.keep_checkpoints)
        c.run(claim_directory, directory, c.rank, self.resume, self.overwrite)

        def on_stop(path):
            raise Interrupted(f"stopped by a signal; checkpoint written to {path}: continue "
                              f"with --resume {self.policy.directory} (fit(..., resume=...))",
                              ranks=range(c.size), checkpoint=path)

        control.save, control.on_stop = self.save_checkpoint, on_stop

    def save_checkpoint(self, step):
        """Collective: write a checkpoint of the fit as it is after ``step`` of the epoch."""
        est, eng, st = self.est, self.engine, self.state
        saved = {"model_type": type(est).__name__, "params": self.params(),
                 "param_changes": self.live.changes,
                 "epoch": st.n_iter, "step": step, "t": eng.t,
                 "epoch_loss": eng.epoch_loss, "epoch_count": eng.epoch_count,
                 "best": st.best, "stall": st.stall, "n_iter": st.n_iter,
                 "n_global": self.data.n_global, "batch": self.layout.batch,
                 "seed": st.seed, "n_features": self.data.d, "n_outputs": self.K,
                 "fingerprint": self.fingerprint}
        arrays = dict(eng.get_state())       # logical arrays, gathered if sharded
        arrays["loss_curve"] = np.asarray(st.loss_curve, dtype=np.float64)
        if est._is_classifier:
            arrays["classes"] = est.classes_
        t0 = time.perf_counter()
        path = write_checkpoint(self.policy, saved, arrays, comm=self.c, hooks=self.hooks)
        self.control.io_seconds += time.perf_counter() - t0
        return path

    # ------------------------------------------------------------ live parameters
    def set_live(self, name, value, by):
        """Change a live hyper-parameter: from the next step, a batch size from the next
        epoch (collective only in the sense that every rank calls it at the same point)."""
        self.live.set(name, value, self.engine.t, self.state.n_iter, by)
        if name == "batch_size":
            self.pending_batch = value
        else:
            set_engine_hyper(self.engine, name, value)

    def _rebatch(self, batch):
        """A new global batch size from this epoch on: the rows are put in the new batch
        order (in place when they are the fit's own) and a new engine, built with the
        live values, takes over the old one's state."""
        old = self.engine
        self.layout.rebatch(batch)
        fresh = self._make_engine()
        for new, cur in zip(fresh.sync_arrays(), old.sync_arrays()):
            new[...] = cur
        fresh.after_sync()
        fresh.t = old.t
        self.engine = fresh
        self.control.attach(fresh)
        self.control.batch = batch

    def _callbacks(self, logs):
        """Run every callback (each sees every epoch, also after one asked to stop); the
        live parameters they change with ``set_params`` become live changes."""
        est, names = self.est, list(self.live.values)
        given = {n: getattr(est, n) for n in names}
        for n in names:
            setattr(est, n, self.live.values[n])
        try:
            hits = [cb for cb in self.callbacks if bool(cb.on_epoch_end(est, logs))]
            changed = {n: getattr(est, n) for n in names
                       if getattr(est, n) != self.live.values[n]}
        finally:
            for n, v in given.items():
                setattr(est, n, v)
        for n, v in changed.items():
            self.set_live(n, v, "callback")
        return hits

    # ------------------------------------------------------------ the loop
    def run(self):
        c, est, control, st = self.c, self.est, self.control, self.state
        progress = Progress(c.rank, st.n_iter, self.target, est.verbose, control,
                            math.ceil(self.layout.n_global / max(self.layout.batch, 1)))
        start = self.start_step
        with signals(control, control.save is not None), \
                watching(c, est.comm_timeout, control), blas_threads():
            try:
                while st.n_iter < self.target:
                    if self.pending_batch not in (None, self.layout.batch):
                        self._rebatch(self.pending_batch)
                    epoch = st.n_iter
                    control.where = f"epoch {epoch + 1} (step Allreduce)"
                    stats = self.sync.run_epoch(self.engine, epoch, start)
                    if self.scan_pending:
                        self._check_first_epoch()
                    start = 0
                    st.n_iter += 1
                    mean_loss = stats.loss / stats.count
                    # every rank holds the same reduced loss and parameters: all raise together
                    if not math.isfinite(mean_loss) or not self.engine.params_finite():
                        raise TrainingError(f"training diverged at epoch {epoch + 1} (loss "
                                            f"{mean_loss}): lower the learning rate (eta0 / "
                                            "--lr) or scale the features", ranks=range(c.size))
                    st.loss_curve.append(mean_loss)
                    st.epoch_times.append(stats.seconds)
                    self.sync.record(self.writer, st.n_iter, self.counters, mean_loss,
                                     stats.seconds)
                    logs = self.epoch_logs(stats, mean_loss)
                    self.counters.reset()
                    progress.update(self.engine.t, mean_loss, logs["samples_per_s"])
                    if est.verbose:
                        val = "".join(f"  {k} {v:.6g}" for k, v in logs.items()
                                      if k.startswith("val_") and isinstance(v, float))
                        progress.write(f"epoch {st.n_iter}: loss {mean_loss:.6g}{val}  "
                                       f"{stats.count / stats.seconds / 1e6:.3g} M samples/s  "
                                       f"({stats.steps} steps, {stats.seconds:.3g} s)")
                    hits = self._callbacks(logs) if self.callbacks else []
                    if hits:
                        st.stopped_by = getattr(hits[0], "reason", None) or "a callback"
                        break
                    if est.tol is not None and not self.partial:
                        st.stall = st.stall + 1 if mean_loss > st.best - est.tol else 0
                        st.best = min(st.best, mean_loss)
                        if st.stall >= est.n_iter_no_change:
                            break
                    self.sync.epoch_end(self.engine)
            except StopTraining as exc:
                st.stopped_by = f"mpiml ctl stop at step {exc.args[0]}"
                control.user_stop = False
            finally:
                progress.close()
            if control.save is not None and not self.signal_only:
                control.save(0)         # the final state
        if self.run_dir is not None:
            self.run_dir.log({"event": "end", "time": time.time(), "step": int(self.engine.t),
                              "epochs": st.n_iter, "stopped_by": st.stopped_by})
            self.run_dir.write_status(force=True, state="finished", step=int(self.engine.t))
        if st.stopped_by and est.verbose:
            c.print0(f"stopped early by {st.stopped_by}")
        return self

    def epoch_logs(self, stats, mean_loss):
        """The epoch's record: loss, validation metrics, lr, throughput, and with a run
        directory the per-rank time split (written to metrics.jsonl and status.json)."""
        c, est, control, counters = self.c, self.est, self.control, self.counters
        live = self.live.values
        lr = live["eta0"] if "eta0" in live else live["learning_rate_init"]
        logs = {"epoch": self.state.n_iter, "step": int(self.engine.t), "loss": float(mean_loss),
                "lr": float(lr), "samples_per_s": stats.count / max(stats.seconds, 1e-12),
                "seconds": stats.seconds}
        if self.validation is not None:
            self.store()        # the model as it is now; the engine is not touched
            for k, v in est.metrics(*self.validation).items():
                logs[f"val_{k}"] = float(v) if k != "n_samples" else int(v)
        if self.run_dir is None:
            return logs
        # time in the step's collective, sampled every 16th step (see run_epoch)
        comm = 0.0
        if control.samples:
            comm = control.comm_sampled * stats.steps / control.samples
        comm = max(comm, counters.comm_seconds + counters.wait_seconds)
        control.comm_sampled, control.samples = 0.0, 0
        io = control.io_seconds
        control.io_seconds = 0.0
        everyone = np.array(c.allgather((stats.seconds, comm, io)))
        waiting = everyone[:, 1] - everyone[:, 1].min()    # the part spent on slower ranks
        logs["time"] = {"compute": summarise(np.maximum(everyone[:, 0] - everyone[:, 1], 0.0)),
                        "communication": summarise(everyone[:, 1] - waiting),
                        "waiting": summarise(waiting), "io": summarise(everyone[:, 2])}
        logs["bytes_per_rank"] = int(counters.bytes_sent or
                                     stats.steps * self.engine.buf_arr.nbytes)
        logs["ranks"] = c.size
        self.run_dir.log(logs)
        self.run_dir.write_status(force=True, state="running", epoch=self.state.n_iter,
                                  step=int(self.engine.t), loss=float(mean_loss), lr=float(lr),
                                  ranks=c.size, samples_per_s=logs["samples_per_s"])
        return logs

    # ------------------------------------------------------------ the result
    def _restore_prior(self):
        """Bad rows: a fitted model stays as it was (nothing else was stored yet)."""
        for name in ("n_features_in_", "classes_"):
            self.est.__dict__.pop(name, None)
        self.est.__dict__.update(self.prior)

    def _check_first_epoch(self):
        """The finiteness check of rows visited in place, folded into the first epoch's
        read of them: with finite parameters a margin is NaN or infinite only for a row
        holding a NaN or an infinity (or for values so large that the margin overflows),
        so the kernel flags such margins, and only then are the rows scanned. A bad row
        is the DataError the scan before the fit would have raised (agreed, naming the
        caller's first bad row); nothing of the epoch is stored, a fitted model stays as
        it was. One extra Allreduce of one integer per fit."""
        self.scan_pending = False
        flagged = bool(self.engine.margins_bad)
        self.engine.margins_bad = 0
        if not self.c.allreduce(int(flagged), op=MPI.MAX):
            return
        X = self.layout.X

        def scan():
            row = first_nonfinite_row(X) if flagged and X.size else None
            if row is not None:
                raise DataError(f"Input X contains NaN or infinity (local row {row})")
        try:
            self.c.run(scan)
        except DataError:
            self._restore_prior()
            raise

    def release(self):
        """Drop the rows and what holds them (layout, data, engine, synchronizer). The
        session's parts refer to each other (bound methods and callbacks), so without this
        the rows, a copy as large as X after a layout, stay in memory after ``fit`` returns
        until Python's cyclic garbage collector happens to run."""
        self.layout = self.data = self.engine = self.sync = self.validation = None

    def store(self):
        """Write the fit's result on the estimator: the model, the running state, the
        live parameters and what the mode adds."""
        est = self.est
        self.state.t = self.engine.t
        self.state.store(est)
        est.live_params_ = {n: v for n, v in self.live.values.items() if v != getattr(est, n)}
        est.param_changes_ = [dict(ch) for ch in self.live.changes]
        est.__dict__.pop("exchange_", None)
        for name, value in self.sync.fitted().items():
            setattr(est, name, value)
        est._store(self.engine, self.K, self.data.d)
