"""Linear models trained by synchronous data-parallel minibatch SGD.

Every rank passes its own rows to ``fit``; every rank ends with the same model.
"""
import contextlib
import math
import signal
import threading

import numpy as np

from .._kernels import sgd as _k
from ..comm import get_comm
from ..checkpoint import CheckpointPolicy, read_checkpoint, write_checkpoint
from ..errors import ConfigError, DataError, Interrupted, NotFittedError, TrainingError
from ..parallel.data import StepControl, group_layout, layout_plan, run_epoch
from ..watchdog import watching
from .base import BaseEstimator, check_local_X

__all__ = ["SGDClassifier", "SGDRegressor", "LOSSES"]

# optimisation hyper-parameters that a resumed run takes from its checkpoint
_RESUMED_PARAMS = ("loss", "penalty", "alpha", "l1_ratio", "fit_intercept", "learning_rate",
                   "eta0", "power_t", "momentum", "batch_size", "tol", "n_iter_no_change",
                   "epsilon", "multi_class", "dtype")


@contextlib.contextmanager
def _signals(control):
    """SIGTERM / SIGUSR1 (what Slurm sends before the time limit) request a stop at the
    next step boundary, when checkpoints are on and we are in the main thread."""
    if control.save is None or threading.current_thread() is not threading.main_thread():
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

# the user's loss name -> factory of the kernel's loss object (STYLE.md rule 4)
LOSSES = {
    "squared_error": lambda est: _k.SquaredLoss(),
    "huber": lambda est: _k.Huber(est.epsilon),
    "log_loss": lambda est: _k.LogLoss(),
    "hinge": lambda est: _k.Hinge(1.0),
}


class _BaseSGD(BaseEstimator):
    _losses = ()
    _is_classifier = False

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        def bad(msg):
            raise ConfigError(f"{type(self).__name__}: {msg}")

        if self.loss not in self._losses:
            bad(f"unknown loss {self.loss!r}; choose one of {', '.join(self._losses)}")
        if self.penalty not in _k.PENALTIES:
            bad(f"unknown penalty {self.penalty!r}; choose 'l2', 'l1', 'elasticnet' or None")
        if self.learning_rate not in _k.SCHEDULES:
            bad(f"unknown learning_rate {self.learning_rate!r}; choose one of "
                f"{', '.join(_k.SCHEDULES)}")
        for name in ("alpha", "eta0", "momentum", "power_t", "l1_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, not {v!r}")
        if self.alpha < 0:
            bad(f"alpha must be >= 0, not {self.alpha}")
        if not 0.0 <= self.l1_ratio <= 1.0:
            bad(f"l1_ratio must be in [0, 1], not {self.l1_ratio}")
        if self.learning_rate in ("constant", "invscaling") and self.eta0 <= 0:
            bad(f"eta0 must be > 0 with learning_rate={self.learning_rate!r}, not {self.eta0}")
        if self.learning_rate == "optimal" and self.alpha <= 0:
            bad("learning_rate='optimal' needs alpha > 0")
        if not 0.0 <= self.momentum < 1.0:
            bad(f"momentum must be in [0, 1), not {self.momentum}")
        if self.batch_size != "full" and (isinstance(self.batch_size, bool)
                                          or not isinstance(self.batch_size, (int, np.integer))
                                          or self.batch_size < 1):
            bad(f"batch_size must be a positive integer or 'full', not {self.batch_size!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) \
                or self.max_iter < 1:
            bad(f"max_iter must be a positive integer, not {self.max_iter!r}")
        if self.tol is not None and (not isinstance(self.tol, (int, float)) or self.tol != self.tol):
            bad(f"tol must be a number or None, not {self.tol!r}")
        if not isinstance(self.n_iter_no_change, (int, np.integer)) or self.n_iter_no_change < 1:
            bad(f"n_iter_no_change must be a positive integer, not {self.n_iter_no_change!r}")
        if self.dtype is not None and np.dtype(self.dtype) not in (np.float32, np.float64):
            bad(f"dtype must be None, 'float32' or 'float64', not {self.dtype!r}")
        if self.random_state is not None and (isinstance(self.random_state, bool) or
                                              not isinstance(self.random_state, (int, np.integer))
                                              or self.random_state < 0):
            bad(f"random_state must be None or a non-negative integer, not {self.random_state!r}")
        if getattr(self, "epsilon", 1.0) <= 0:
            bad(f"epsilon must be > 0, not {self.epsilon}")
        if self.checkpoint_every is not None and (isinstance(self.checkpoint_every, bool) or not
                                                  isinstance(self.checkpoint_every, (int, np.integer))
                                                  or self.checkpoint_every < 1):
            bad(f"checkpoint_every must be a positive integer, not {self.checkpoint_every!r}")
        for name in ("checkpoint_seconds", "comm_timeout"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not v > 0):
                bad(f"{name} must be a positive number of seconds or None, not {v!r}")
        if not isinstance(self.keep_checkpoints, (int, np.integer)) or self.keep_checkpoints < 1:
            bad(f"keep_checkpoints must be a positive integer, not {self.keep_checkpoints!r}")
        if (self.checkpoint_every or self.checkpoint_seconds) and not self.checkpoint_dir:
            bad("checkpoint_every / checkpoint_seconds need checkpoint_dir")

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
        if X.size and not np.isfinite(X).all():
            row = int(np.argwhere(~np.isfinite(X))[0][0])
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
    def fit(self, X, y, resume=None):
        """Fit on the rows every rank passes (collective).

        Parameters
        ----------
        X : array (n_local, n_features)
            This rank's rows; shards may differ in size and may be empty.
        y : array (n_local,)
        resume : str, optional
            A checkpoint directory (or file): continue that run, on any number of
            ranks, up to ``max_iter`` epochs in all. The optimisation
            hyper-parameters come from the checkpoint.

        Returns
        -------
        self
        """
        return self._fit(X, y, None, reset=True, resume=resume)

    def partial_fit(self, X, y, classes=None):
        """One epoch over the rows every rank passes, continuing from the current state
        (collective)."""
        return self._fit(X, y, 1, reset=not hasattr(self, "coef_"), classes=classes)

    def _fit(self, X, y, epochs, reset, classes=None, resume=None):
        c = get_comm(self.comm)
        Xl, yl, local_classes = c.run(self._prepare_local, X, y)
        seed = None
        if c.rank == 0:
            seed = (int(self.random_state) if self.random_state is not None
                    else int(np.random.SeedSequence().entropy % (1 << 31)))
        meta = c.allgather((Xl.shape[0], Xl.shape[1], Xl.dtype.str, seed,
                            None if local_classes is None else local_classes.tolist()))
        n_global = sum(m[0] for m in meta)
        offset = sum(m[0] for m in meta[:c.rank])
        seed = meta[0][3]

        def check_global():
            widths = {m[1] for m in meta if m[0] > 0} or {meta[0][1]}
            if len(widths) > 1:
                raise DataError(f"ranks passed different numbers of features: {sorted(widths)}")
            if n_global == 0:
                raise DataError("no rows to fit on any rank")
            d = widths.pop()
            if d == 0:
                raise DataError("X has zero features")
            if not reset and d != self.n_features_in_:
                raise DataError(f"X has {d} features, the model was fitted with "
                                f"{self.n_features_in_}")
            cls = None
            if self._is_classifier:
                cls = np.unique(np.concatenate([np.asarray(m[4], dtype=np.float64) for m in meta]))
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
        if Xl.shape[0] == 0:
            Xl = np.zeros((0, d), dtype=dtype)

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
            state, arrays = self._restore(c, resume, d, n_global, batch)
            batch = int(state["batch"])
        K, y_enc, loss = self._encode(yl)
        # one reordered copy of the local rows: every step then reads contiguous memory
        perm, gptr = group_layout(n_global, batch, offset, Xl.shape[0])
        if perm is not None:
            Xl = np.take(Xl, perm, axis=0)
            y_enc = y_enc[perm]
        engine = self._engine(Xl, y_enc, K, loss, StepControl.WORDS)
        start_step = 0
        if state is not None:
            engine.set_params(arrays["w"])
            engine.vel_arr[:] = arrays["velocity"]
            engine.t = float(state["t"])
            engine.epoch_loss = float(state["epoch_loss"])
            engine.epoch_count = float(state["epoch_count"])
            start_step = int(state["step"])
        elif not reset:
            engine.set_params(self._flat_params())
            engine.vel_arr[:] = self._velocity
            engine.t = self.t_ - 1.0
        target = self.max_iter if epochs is None else self.n_iter_ + epochs
        control = self._control(c, engine, K, d, n_global, batch)
        with _signals(control), watching(c, self.comm_timeout, control):
            while self.n_iter_ < target:
                epoch = self._epochs_done
                control.where = f"epoch {epoch + 1} (step Allreduce)"
                stats = run_epoch(engine, c, layout_plan(gptr, self._seed, epoch), start_step,
                                  control)
                start_step = 0
                self._epochs_done += 1
                self.n_iter_ += 1
                mean_loss = stats.loss / stats.count
                # every rank holds the same reduced loss and parameters, so all raise together
                if not math.isfinite(mean_loss) or not engine.params_finite():
                    raise TrainingError(f"training diverged at epoch {epoch + 1} (loss {mean_loss}): "
                                        "lower the learning rate (eta0 / --lr) or scale the features")
                self.loss_curve_.append(mean_loss)
                self.epoch_times_.append(stats.seconds)
                if self.verbose:
                    c.print0(f"epoch {self.n_iter_}: loss {mean_loss:.6g}  "
                             f"{stats.count / stats.seconds / 1e6:.3g} M samples/s  "
                             f"({stats.steps} steps, {stats.seconds:.3g} s)")
                if self.tol is not None and epochs is None:      # fit, not partial_fit
                    best, stall = self._tol_state
                    stall = stall + 1 if mean_loss > best - self.tol else 0
                    self._tol_state = [min(best, mean_loss), stall]
                    if stall >= self.n_iter_no_change:
                        break
            if self.checkpoint_dir is not None:
                control.save(0)         # the final state
        self.t_ = engine.t + 1.0
        self._store(engine, K, d)
        return self

    def _engine(self, X, y, K, loss, n_control=0):
        schedule = _k.SCHEDULES[self.learning_rate]
        optimal_init = 1.0
        if self.learning_rate == "optimal":
            # Bottou's heuristic, as scikit-learn: the initial step that a typical
            # weight of size 1/sqrt(sqrt(alpha)) would take under the loss
            typw = math.sqrt(1.0 / math.sqrt(self.alpha))
            probe = LOSSES[self.loss](self) if self.loss != "log_loss" else _k.LogLoss()
            dl = abs(float(probe.py_dloss(-typw, 1.0)))
            eta0 = typw / max(1.0, dl)
            optimal_init = 1.0 / (eta0 * self.alpha)
        return _k.Engine(X, y, K, loss, eta0=float(self.eta0), alpha=float(self.alpha),
                         l1_ratio=float(self.l1_ratio), penalty=_k.PENALTIES[self.penalty],
                         schedule=schedule, power_t=float(self.power_t),
                         momentum=float(self.momentum), fit_intercept=bool(self.fit_intercept),
                         optimal_init=optimal_init, n_control=n_control)

    def _control(self, c, engine, K, d, n_global, batch):
        """The step control: checkpoints (if ``checkpoint_dir``) and signals."""
        control = StepControl(c, self.checkpoint_every, self.checkpoint_seconds)
        if self.checkpoint_dir is None:
            return control
        policy = CheckpointPolicy(self.checkpoint_dir, self.checkpoint_every,
                                  self.checkpoint_seconds, self.keep_checkpoints)

        def save(step):
            state = {"model_type": type(self).__name__,
                     "params": {k: v for k, v in self.get_params().items() if k != "comm"},
                     "epoch": self._epochs_done, "step": step, "t": engine.t,
                     "epoch_loss": engine.epoch_loss, "epoch_count": engine.epoch_count,
                     "best": self._tol_state[0], "stall": self._tol_state[1],
                     "n_iter": self.n_iter_, "n_global": n_global, "batch": batch,
                     "seed": self._seed, "n_features": d, "n_outputs": K}
            arrays = {"w": engine.w_arr, "velocity": engine.vel_arr,
                      "loss_curve": np.asarray(self.loss_curve_, dtype=np.float64)}
            if self._is_classifier:
                arrays["classes"] = self.classes_
            return write_checkpoint(policy, state, arrays, comm=c)

        def on_stop(path):
            raise Interrupted(f"stopped by a signal; checkpoint written to {path}: continue with "
                              f"--resume {policy.directory} (fit(..., resume=...))",
                              ranks=range(c.size), checkpoint=path)

        control.save = save
        control.on_stop = on_stop
        return control

    def _restore(self, c, resume, d, n_global, batch):
        """Collective: read and check a checkpoint; set the estimator's run state from it."""
        state, arrays = read_checkpoint(resume, comm=c)

        def check():
            where = state["path"]
            if state["model_type"] != type(self).__name__:
                raise DataError(f"{where} is a checkpoint of a {state['model_type']}, "
                                f"not of a {type(self).__name__}")
            if int(state["n_features"]) != d:
                raise DataError(f"{where} was made with {state['n_features']} features; "
                                f"the data has {d}")
            if int(state["n_global"]) != n_global:
                raise DataError(f"{where} was made on {state['n_global']} rows; the data has "
                                f"{n_global}: resume on the same data")
            if self._is_classifier and not np.array_equal(arrays["classes"], self.classes_):
                raise DataError(f"{where} has classes {arrays['classes'].tolist()[:10]}; the "
                                f"labels have {self.classes_.tolist()[:10]}")
            if arrays["w"].shape[0] != int(state["n_outputs"]) * (d + 1):
                raise DataError(f"{where} is damaged: parameter vector of the wrong length")

        c.run(check)
        for key in _RESUMED_PARAMS:
            if key in state["params"]:
                setattr(self, key, state["params"][key])
        self._seed = int(state["seed"])
        self._epochs_done = int(state["epoch"])
        self.n_iter_ = int(state["n_iter"])
        self._tol_state = [float(state["best"]), int(state["stall"])]
        self.loss_curve_ = [float(v) for v in arrays["loss_curve"]]
        self.epoch_times_ = []
        return state, arrays

    def _store(self, engine, K, d):
        w = engine.w_arr
        self._velocity = engine.vel_arr.copy()
        self.coef_ = w[:K * d].reshape(K, d).copy()
        self.intercept_ = w[K * d:].copy()
        if not self._is_classifier:
            self.coef_ = self.coef_.ravel()

    def _flat_params(self):
        return np.concatenate([np.asarray(self.coef_, dtype=np.float64).ravel(),
                               np.asarray(self.intercept_, dtype=np.float64)])

    # ------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def decision_function(self, X):
        """Margins of this rank's rows (local, no communication)."""
        self._check_fitted()
        X = check_local_X(X)
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"X has {X.shape[1]} features, the model expects {self.n_features_in_}")
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        coef = np.atleast_2d(self.coef_).astype(dtype, copy=False)
        scores = X.astype(dtype, copy=False) @ coef.T + self.intercept_.astype(dtype)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def _global_loss(self, c, X, y):
        """Mean training loss over all ranks' rows and the global count (collective)."""
        def local():
            yy = np.asarray(y, dtype=np.float64).ravel()
            if yy.shape[0] != np.asarray(X).shape[0]:
                raise DataError(f"X has {np.asarray(X).shape[0]} rows but y has {yy.shape[0]}")
            scores = self.decision_function(X)
            K, y_enc, loss = self._encode(yy)
            m = np.asarray(scores, dtype=np.float64).reshape(len(yy), K)
            per_row, _ = loss.loss_grad(m, y_enc) if len(yy) else (np.zeros(0), None)
            return float(per_row.sum()), len(yy), scores, yy

        s, n, scores, yy = c.run(local)
        tot = c.allreduce(np.array([s, float(n)]))
        return tot[0] / max(tot[1], 1.0), int(tot[1]), scores, yy

    def save(self, path):
        """Write the model to an HDF5 file (collective; rank 0 writes)."""
        from ..io import save_model
        self._check_fitted()
        arrays = {"coef": np.atleast_2d(self.coef_), "intercept": self.intercept_}
        if self._is_classifier:
            arrays["classes"] = self.classes_
        params = {k: v for k, v in self.get_params().items() if k != "comm"}
        attrs = {"n_features_in": self.n_features_in_, "n_iter": self.n_iter_}
        save_model(path, type(self).__name__, params, arrays, comm=self.comm, extra_attrs=attrs)


class SGDClassifier(_BaseSGD):
    """Linear classifier (logistic regression or linear SVM) by data-parallel SGD.

    Binary labels give one weight vector; more classes give a multinomial
    (softmax) model with ``loss="log_loss"`` and one-vs-rest with ``"hinge"``.

    Parameters
    ----------
    loss : {"log_loss", "hinge"}
    penalty : {"l2", "l1", "elasticnet", None}
    alpha : float
        Regularisation strength.
    l1_ratio : float
        Elastic-net mixing (0 = L2, 1 = L1).
    learning_rate : {"optimal", "constant", "invscaling"}
        ``constant``: eta0; ``invscaling``: eta0 / t**power_t;
        ``optimal``: 1 / (alpha (t0 + t)), t counting updates (steps).
    eta0, power_t, momentum : float
    batch_size : int or "full"
        The global batch (over all ranks); ``"full"`` is full-batch gradient descent.
    max_iter : int
        Maximum number of epochs.
    tol, n_iter_no_change :
        Stop when the epoch's mean training loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs (``tol=None``: run ``max_iter`` epochs).
    multi_class : {"auto", "multinomial"}
        ``"multinomial"`` uses a softmax model even for two classes.
    checkpoint_dir : str, optional
        Write checkpoints there (see :mod:`mpiml.checkpoint`): at the end, every
        ``checkpoint_every`` updates and/or every ``checkpoint_seconds`` seconds, and
        when SIGTERM or SIGUSR1 arrives (then ``fit`` raises
        :class:`~mpiml.errors.Interrupted`). The newest ``keep_checkpoints`` are kept.
    comm_timeout : float or None
        Seconds a collective may take before the watchdog ends the job with a report
        of where every rank is (default 600; None disables it).
    random_state : int or None
        Seed of the batch order; rank 0's value is used.
    dtype : {None, "float32", "float64"}
        Precision of the data in the kernels (default: float32 if X is float32).
    comm : mpi4py communicator, optional

    Attributes
    ----------
    coef_ : ndarray (1 or n_classes, n_features)
    intercept_ : ndarray (1 or n_classes,)
    classes_, n_iter_, t_, n_features_in_
    loss_curve_ : list of float
        Mean training loss of each epoch (global, before the penalty).
    epoch_times_ : list of float
        Seconds spent in each epoch's steps on this rank.

    Examples
    --------
    >>> from mpiml import SGDClassifier, load_hdf5      # doctest: +SKIP
    >>> X, y = load_hdf5("train.h5")                    # doctest: +SKIP
    >>> clf = SGDClassifier(random_state=0).fit(X, y)   # doctest: +SKIP
    >>> clf.score(X, y)                                 # doctest: +SKIP
    """
    _losses = ("log_loss", "hinge")
    _is_classifier = True

    def __init__(self, loss="log_loss", *, penalty="l2", alpha=1e-4, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=1e-3, learning_rate="optimal",
                 eta0=0.01, power_t=0.5, momentum=0.0, batch_size=256, n_iter_no_change=5,
                 multi_class="auto", random_state=None, verbose=0, dtype=None,
                 checkpoint_dir=None, checkpoint_every=None, checkpoint_seconds=None,
                 keep_checkpoints=3, comm_timeout=600.0, comm=None):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.momentum = momentum
        self.batch_size = batch_size
        self.n_iter_no_change = n_iter_no_change
        self.multi_class = multi_class
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.comm_timeout = comm_timeout
        self.comm = comm

    def _validate_params(self):
        super()._validate_params()
        if self.multi_class not in ("auto", "multinomial"):
            raise ConfigError(f"SGDClassifier: multi_class must be 'auto' or 'multinomial', "
                              f"not {self.multi_class!r}")
        if self.multi_class == "multinomial" and self.loss != "log_loss":
            raise ConfigError("SGDClassifier: multi_class='multinomial' needs loss='log_loss'")

    def _multinomial(self):
        return self.loss == "log_loss" and (len(self.classes_) > 2 or self.multi_class == "multinomial")

    def _encode(self, y):
        """(K, encoded targets, kernel loss) for labels ``y``."""
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if y.size and not np.all(self.classes_[idx] == y):
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            raise DataError(f"labels {unseen.tolist()[:5]} are not among the model's classes "
                            f"{self.classes_.tolist()[:10]}")
        if self._multinomial():
            return len(self.classes_), idx.astype(np.float64), _k.Multinomial()
        loss = LOSSES[self.loss](self)
        if len(self.classes_) == 2:
            return 1, np.where(idx == 1, 1.0, -1.0), loss
        return len(self.classes_), idx.astype(np.float64), loss

    def predict(self, X):
        """Class labels of this rank's rows (local)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X):
        """Class probabilities of this rank's rows (local; ``loss="log_loss"`` only)."""
        self._check_fitted()
        if self.loss != "log_loss":
            raise AttributeError(f"probabilities are not available for loss={self.loss!r}")
        scores = np.asarray(self.decision_function(X), dtype=np.float64)
        if scores.ndim == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * scores))   # overflow-free sigmoid
            return np.column_stack([1.0 - p, p])
        z = scores - scores.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def metrics(self, X, y):
        """Global accuracy, mean loss and row count over all ranks' rows (collective)."""
        self._check_fitted()
        c = get_comm(self.comm)
        loss, n, scores, yy = self._global_loss(c, X, y)
        if scores.ndim == 1:
            pred = self.classes_[(scores > 0).astype(np.intp)]
        else:
            pred = self.classes_[np.argmax(scores, axis=1)] if len(yy) else np.zeros(0)
        correct = c.allreduce(int(np.sum(pred == yy)))
        return {"accuracy": correct / max(n, 1), "loss": loss, "n_samples": n}

    def score(self, X, y):
        """Global mean accuracy over all ranks' rows (collective)."""
        return self.metrics(X, y)["accuracy"]


class SGDRegressor(_BaseSGD):
    """Linear regression by data-parallel SGD (squared error or Huber loss).

    Parameters are those of :class:`SGDClassifier` (``loss`` is
    ``"squared_error"`` or ``"huber"``, ``epsilon`` the Huber threshold), with
    scikit-learn's regressor defaults (``learning_rate="invscaling"``,
    ``eta0=0.01``, ``power_t=0.25``).

    Attributes
    ----------
    coef_ : ndarray (n_features,)
    intercept_ : ndarray (1,)
    n_iter_, t_, loss_curve_, n_features_in_

    Examples
    --------
    >>> from mpiml import SGDRegressor, load_hdf5       # doctest: +SKIP
    >>> X, y = load_hdf5("reg.h5")                      # doctest: +SKIP
    >>> reg = SGDRegressor(batch_size="full", learning_rate="constant", eta0=0.1,
    ...                    penalty=None, tol=None, max_iter=200).fit(X, y)  # doctest: +SKIP
    """
    _losses = ("squared_error", "huber")

    def __init__(self, loss="squared_error", *, penalty="l2", alpha=1e-4, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=1e-3, epsilon=0.1,
                 learning_rate="invscaling", eta0=0.01, power_t=0.25, momentum=0.0,
                 batch_size=256, n_iter_no_change=5, random_state=None, verbose=0,
                 dtype=None, checkpoint_dir=None, checkpoint_every=None, checkpoint_seconds=None,
                 keep_checkpoints=3, comm_timeout=600.0, comm=None):
        self.loss = loss
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.epsilon = epsilon
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.power_t = power_t
        self.momentum = momentum
        self.batch_size = batch_size
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.comm_timeout = comm_timeout
        self.comm = comm

    def _encode(self, y):
        return 1, y, LOSSES[self.loss](self)

    def predict(self, X):
        """Predicted values of this rank's rows (local)."""
        return self.decision_function(X)

    def metrics(self, X, y):
        """Global R², mean loss, mean squared error and row count (collective)."""
        self._check_fitted()
        c = get_comm(self.comm)
        loss, n, pred, yy = self._global_loss(c, X, y)
        s = c.allreduce(np.array([yy.sum(), float(yy.size)]))
        mean = s[0] / max(s[1], 1.0)
        ss = c.allreduce(np.array([np.sum((yy - pred) ** 2), np.sum((yy - mean) ** 2)]))
        r2 = 1.0 - ss[0] / ss[1] if ss[1] > 0 else (1.0 if ss[0] == 0 else 0.0)
        return {"r2": float(r2), "loss": loss, "mse": ss[0] / max(n, 1), "n_samples": n}

    def score(self, X, y):
        """Global coefficient of determination R² (collective)."""
        return self.metrics(X, y)["r2"]


MODEL_TYPES = {"SGDClassifier": SGDClassifier, "SGDRegressor": SGDRegressor}


def load(path, comm=None):
    """Read a model saved with ``save`` (collective); returns the fitted estimator."""
    from ..io import load_model
    model_type, params, arrays, attrs = load_model(path, comm=comm)
    cls = MODEL_TYPES.get(model_type)
    if cls is None:
        raise DataError(f"{path} holds a model of type {model_type!r}, which this mpiml does not know")
    valid = set(cls._param_names())
    est = cls(**{k: v for k, v in params.items() if k in valid})
    est.comm = comm
    est.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
    if cls is SGDRegressor:
        est.coef_ = est.coef_.ravel()
    else:
        est.classes_ = np.asarray(arrays["classes"])
    est.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64).ravel()
    est.n_features_in_ = int(attrs["n_features_in"])
    est.n_iter_ = int(attrs.get("n_iter", 0))
    return est
