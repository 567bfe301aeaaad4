"""Linear models trained by synchronous data-parallel minibatch SGD.

Every rank passes its own rows to ``fit``; every rank ends with the same model.
"""
import math

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if

from .. import hooks
from .._kernels import sgd as _k
from ..comm import chunk, get_comm
from ..errors import ConfigError, DataError, NotFittedError
from ..parallel.protocol import N_WORDS
from ..parallel.sparse import EXCHANGES
from ..parallel.sharded import ShardedLinear, ShardedLinearEngine, choose_split
from .base import check_finite_outputs, check_predict_X, is_sparse, label_index
from .scaling import transform
from .solve import SOLVERS, SolveSession
from .training import Trainer

__all__ = ["SGDClassifier", "SGDRegressor", "LOSSES"]

# optimisation hyper-parameters that a resumed run takes from its checkpoint
_RESUMED_PARAMS = ("loss", "penalty", "alpha", "l1_ratio", "fit_intercept", "learning_rate",
                   "eta0", "power_t", "momentum", "batch_size", "tol", "n_iter_no_change",
                   "epsilon", "multi_class", "class_weight", "dtype", "scaler", "solver")

# the user's loss name -> factory of the kernel's loss object (STYLE.md rule 4)
LOSSES = {
    "squared_error": lambda est: _k.SquaredLoss(),
    "huber": lambda est: _k.Huber(est.epsilon),
    "log_loss": lambda est: _k.LogLoss(),
    "hinge": lambda est: _k.Hinge(1.0),
}


class _BaseSGD(Trainer):
    _losses = ()
    _supports_ps = True
    _resumed_params = _RESUMED_PARAMS
    _shap_method = "linear"         # exact linear SHAP of the margins (mpiml.explain)
    _engine_ranges = True           # the Cython engines visit rows in place (session.Layout)

    @property
    def _sparse_input(self):
        """CSR rows train without an offset scaler (SGD: mpiml._kernels.sgd.SparseEngine;
        the exact solvers: glm.pyx's CSR kernels; docs/sparse.md); otherwise
        scikit-learn's checks refuse sparse input."""
        return self.scaler in (None, "maxabs")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # CSR rows train with SGD and no offset scaler (docs/sparse.md)
        tags.input_tags.sparse = self._sparse_input
        return tags

    def _check_sparse_fit(self, columns):
        """What CSR rows do not train with (the same verdict on every rank)."""
        name = type(self).__name__
        kind = str(self.sync).split(":")[0]
        if kind == "ps" or self.overlap or str(self.compress) not in ("none", "None"):
            raise ConfigError(f"{name}: CSR rows train with sync='allreduce' (which picks a "
                              "dense or a sparse exchange) or sync='local:K'; not with the "
                              "parameter server, overlap or compress")

    # ------------------------------------------------------------ validation
    def _validate_model_params(self, bad):
        if self.exchange not in EXCHANGES:
            bad(f"exchange must be one of {', '.join(EXCHANGES)}, not {self.exchange!r}")
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
        if getattr(self, "epsilon", 1.0) <= 0:
            bad(f"epsilon must be > 0, not {self.epsilon}")
        if self.shard not in ("auto", "classes", "features"):
            bad(f"shard must be 'auto', 'classes' or 'features', not {self.shard!r}")
        if self.solver not in SOLVERS:
            bad(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.solver != "sgd":
            self._validate_exact(bad)

    def _validate_exact(self, bad):
        """The settings an exact solver (``solver != "sgd"``) needs."""
        s = self.solver
        if self.loss == "hinge":
            bad(f"solver={s!r} needs a smooth loss (log_loss, squared_error, huber), not "
                "'hinge': use solver='sgd'")
        l1 = self._solver_penalty()[1]
        if l1 > 0 and s not in ("owlqn", "hybrid"):
            bad(f"an L1 part in the penalty needs solver='owlqn' (or 'hybrid'); solver={s!r} "
                "is for smooth objectives")
        if self.model_parallel != 1:
            bad(f"solver={s!r} is data-parallel: model_parallel must be 1, not "
                f"{self.model_parallel}")
        if self.sync != "allreduce" or self.compress != "none" or self.overlap:
            bad(f"solver={s!r} makes one exact Allreduce per evaluation: sync, compress and "
                "overlap are SGD's settings (leave them at their defaults)")

    def _sgd_solver(self):
        if self.solver not in ("sgd", None):
            raise AttributeError(f"partial_fit makes SGD epochs: it is not available with "
                                 f"solver={self.solver!r}, which fits to the optimum with fit")
        return True

    @available_if(_sgd_solver)
    def partial_fit(self, X, y, classes=None):
        """One SGD epoch over the rows every rank passes, continuing from the current
        state (collective; ``solver="sgd"`` only, as scikit-learn's MLP with ``lbfgs``
        has no ``partial_fit``)."""
        return super().partial_fit(X, y, classes)

    def _fit(self, X, y, epochs, reset, classes=None, resume=None, columns=None, validation=None,
             callbacks=None, sample_weight=None, copy_X=True, overwrite=False,
             signal_checkpoint_dir=None):
        if self.solver in ("sgd", None) or self.solver not in SOLVERS:
            # (an unknown solver is refused by the agreement, on every rank)
            return super()._fit(X, y, epochs, reset, classes, resume, columns, validation,
                                callbacks, sample_weight, copy_X, overwrite,
                                signal_checkpoint_dir)
        if epochs is not None:
            # the same parameters on every rank: every rank raises here
            raise ConfigError(f"{type(self).__name__}: partial_fit makes SGD epochs; "
                              f"solver={self.solver!r} fits to the optimum with fit")
        data = self._agree_data(X, y, True, classes, columns, copy_X)
        session = SolveSession(self, data, resume=resume, validation=validation,
                               callbacks=callbacks, sample_weight=sample_weight,
                               hooks=hooks.current(), overwrite=overwrite,
                               signal_checkpoint_dir=signal_checkpoint_dir)
        session.run()
        session.store()
        return self

    def _exact_solver(self):
        """The solver of an exact fit (``hybrid`` continues with L-BFGS, or OWL-QN when
        the penalty has an L1 part)."""
        if self.solver != "hybrid":
            return self.solver
        return "owlqn" if self._solver_penalty()[1] > 0 else "lbfgs"

    def _solver_penalty(self):
        """``(l2, l1)`` of ``alpha R(w)`` (the SGD kernels' split of the penalty)."""
        a, r = float(self.alpha), float(self.l1_ratio)
        return {None: (0.0, 0.0), "l2": (a, 0.0), "l1": (0.0, a),
                "elasticnet": (a * (1.0 - r), a * r)}.get(self.penalty, (a, 0.0))

    def _glm_kind(self):
        """The loss of the exact solvers' kernel (:mod:`mpiml._kernels.glm`)."""
        if self._is_classifier:
            return "multinomial" if self._multinomial() else "logistic"
        return self.loss

    def _store_solution(self, x, K, d):
        """The solution of an exact fit (the flat parameters) as the fitted model."""
        for name in ("coef_", "intercept_", "_velocity", "shard_"):
            self.__dict__.pop(name, None)
        self._velocity = np.zeros_like(x)
        self.coef_ = x[:K * d].reshape(K, d).copy()
        self.intercept_ = x[K * d:].copy()
        if not self._is_classifier:
            self.coef_ = self.coef_.ravel()

    def _hyper(self, live=None):
        """The update's hyper-parameters as kernel codes (shared by both engines), with
        the live values ``live`` (a fit session's) in place of the parameters'."""
        live = live or {}
        eta0, alpha, momentum = (float(live.get(k, getattr(self, k)))
                                 for k in ("eta0", "alpha", "momentum"))
        optimal_init = 1.0
        if self.learning_rate == "optimal":
            # Bottou's heuristic, as scikit-learn: the initial step that a typical
            # weight of size 1/sqrt(sqrt(alpha)) would take under the loss
            typw = math.sqrt(1.0 / math.sqrt(alpha))
            probe = LOSSES[self.loss](self) if self.loss != "log_loss" else _k.LogLoss()
            dl = abs(float(probe.py_dloss(-typw, 1.0)))
            optimal_init = 1.0 / (typw / max(1.0, dl) * alpha)
        return dict(eta0=eta0, alpha=alpha,
                    l1_ratio=float(self.l1_ratio), penalty=_k.PENALTIES[self.penalty],
                    schedule=_k.SCHEDULES[self.learning_rate], power_t=float(self.power_t),
                    momentum=momentum, fit_intercept=bool(self.fit_intercept),
                    optimal_init=optimal_init)

    def _split(self):
        return choose_split(self.shard, self._is_classifier and self._multinomial())

    def _make_engine(self, X, y, K, loss, d, grid, columns, seed, live):
        if grid.K == 1:
            if columns is not None and (int(columns[0]), int(columns[1])) != (0, d):
                raise DataError("columns= is for feature-sharded models (model_parallel > 1)")
            engine = _k.SparseEngine if is_sparse(X) else _k.Engine
            return engine(X, y, K, loss, n_control=N_WORDS, **self._hyper(live))
        split = self._split()
        if split == "classes":
            if not (self._is_classifier and self._multinomial()):
                raise ConfigError(f"{type(self).__name__}: shard='classes' needs a softmax model "
                                  "(loss='log_loss' with more than 2 classes or "
                                  "multi_class='multinomial'); use shard='features'")
            if grid.K > K:
                raise ConfigError(f"model_parallel={grid.K} is larger than the {K} classes to "
                                  "split: use at most that many model-parallel ranks")
        elif grid.K > d:
            raise ConfigError(f"model_parallel={grid.K} is larger than the {d} features to split")
        if columns is not None:
            lo, hi = chunk(d, grid.K, grid.model_rank)
            if split != "features" or (int(columns[0]), int(columns[1])) != (lo, hi):
                raise DataError(f"X holds columns {columns[0]}:{columns[1]}, but this rank's "
                                f"feature shard is {lo}:{hi} (load it with "
                                f"load_hdf5(..., columns=grid))")
        return ShardedLinearEngine(X, y, K, d, loss if split == "features" else None, split,
                                   grid, self._hyper(live), N_WORDS,
                                   columns_given=columns is not None)

    def _store(self, engine, K, d):
        for name in ("coef_", "intercept_", "_velocity", "shard_"):
            self.__dict__.pop(name, None)
        if isinstance(engine, ShardedLinearEngine):
            # each rank keeps its shard only: the memory stays divided after fit
            self.shard_ = ShardedLinear(engine.shard.split, K, d, engine.shard.model,
                                        engine.shard.W.copy(), engine.shard.b.copy())
            self._velocity_shard = engine.velocity.copy()
            return
        state = engine.get_state()
        w = state["w"]
        self._velocity = state["velocity"]
        self.coef_ = w[:K * d].reshape(K, d).copy()
        self.intercept_ = w[K * d:].copy()
        if not self._is_classifier:
            self.coef_ = self.coef_.ravel()

    def _fitted_state(self):
        if hasattr(self, "shard_"):
            s = self.shard_
            return {"shard": np.concatenate([s.W.ravel(), s.b]),
                    "shard_velocity": self._velocity_shard}
        w = np.concatenate([np.asarray(self.coef_, dtype=np.float64).ravel(),
                            np.asarray(self.intercept_, dtype=np.float64)])
        return {"w": w, "velocity": getattr(self, "_velocity", np.zeros_like(w))}

    def gather_coef(self):
        """The logical ``(coef, intercept)`` on every rank (collective over the
        model-parallel group for a sharded model)."""
        self._check_fitted()
        if not hasattr(self, "shard_"):
            return np.atleast_2d(self.coef_), self.intercept_
        s = self.shard_
        flat = s.gather(np.concatenate([s.W.ravel(), s.b]), root_only=False)
        return flat[:s.K * s.d].reshape(s.K, s.d), flat[s.K * s.d:]

    # ------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "coef_") and not hasattr(self, "shard_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def _check_X(self, X):
        """This rank's rows checked against the fitted model, and scaled."""
        self._check_fitted()
        width = None
        if hasattr(self, "shard_") and self.shard_.split == "features":
            width = self.shard_.hi - self.shard_.lo
        return transform(self, check_predict_X(self, X, width))

    def _decision(self, X):
        """Margins of this rank's rows (local; collective over the model-parallel group
        for a sharded model). A NaN or infinity in a row reaches its margins: that is
        the finiteness check, and it costs no pass over ``X``."""
        return check_finite_outputs(self._margins(self._check_X(X)))

    def _margins(self, X):
        """Margins of rows already checked and scaled by :meth:`_check_X`."""
        if hasattr(self, "shard_"):
            scores = self.shard_.decision_function(X)
            return scores.ravel() if scores.shape[1] == 1 else scores
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        coef = np.atleast_2d(self.coef_).astype(dtype, copy=False)
        scores = X.astype(dtype, copy=False) @ coef.T + self.intercept_.astype(dtype)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def _replicas(self):
        """How many ranks hold each row at prediction time: the model-parallel group
        size for a sharded model (sums over the world divide by it)."""
        return self.shard_.model.size if hasattr(self, "shard_") else 1

    def _sum(self, c, value):
        return c.allreduce(value) / self._replicas()

    def _global_loss(self, c, X, y):
        """Mean training loss over all ranks' rows and the global count (collective)."""
        def local():
            yy = np.asarray(y) if self._is_classifier else np.asarray(y, dtype=np.float64)
            yy = yy.ravel()
            Xc = self._check_X(X)
            if yy.shape[0] != Xc.shape[0]:
                raise DataError(f"X has {Xc.shape[0]} rows but y has {yy.shape[0]}")
            K, y_enc, loss = self._encode(yy)
            return Xc, yy, y_enc, loss, K

        Xc, yy, y_enc, loss, K = c.run(local)
        if hasattr(self, "shard_"):        # collective over the model-parallel group
            s, scores = self.shard_.loss_sum(Xc, y_enc, loss), None
        else:
            scores = self._margins(Xc)
            m = np.asarray(scores, dtype=np.float64).reshape(len(yy), K)
            s = float(loss.loss_grad(m, y_enc)[0].sum()) if len(yy) else 0.0
        tot = self._sum(c, np.array([s, float(len(yy))]))
        return tot[0] / max(tot[1], 1.0), int(round(tot[1])), scores, yy

    def save(self, path):
        """Write the model to an HDF5 file (collective; rank 0 writes). A sharded model
        is gathered first: the file holds the logical weights, loadable at any
        ``model_parallel`` and rank count."""
        self._check_fitted()
        coef, intercept = (self.gather_coef() if hasattr(self, "shard_")
                           else (np.atleast_2d(self.coef_), self.intercept_))
        arrays = {"coef": coef, "intercept": intercept}
        if self._is_classifier:
            arrays["classes"] = self.classes_
        self._write_model(path, arrays)


class SGDClassifier(ClassifierMixin, _BaseSGD):
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
    batch_size : int, "auto" or "full"
        The global batch (over all ranks); ``"full"`` is full-batch gradient descent;
        ``"auto"`` (the default) is one row in a thousand, between 1 and 256: per-row
        updates as scikit-learn's SGD on small data (below 2,000 rows), 256-row batches
        (one Allreduce each) from 256,000 rows on.
    max_iter : int
        Maximum number of epochs.
    tol, n_iter_no_change :
        Stop when the epoch's mean training loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs (``tol=None``: run ``max_iter`` epochs).
    multi_class : {"auto", "multinomial"}
        ``"multinomial"`` uses a softmax model even for two classes.
    class_weight : None, "balanced" or dict
        Weights of each class's rows in the loss and gradient; ``"balanced"`` is
        ``n / (n_classes * count)`` from the global counts (see :mod:`mpiml.imbalance`).
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
    scaler : {None, "standard", "minmax", "maxabs"}
        Scale the features with global statistics of the training rows (one
        Allreduce): the model trains on ``(X - scale_offset_) / scale_factor_``, and
        every prediction path, the model file and the ONNX export apply it to raw rows.
        ``"maxabs"`` (``x / max|x|``, no offset) is the one CSR rows take.
    solver : {"sgd", "lbfgs", "owlqn", "newton-cg", "hybrid"}
        ``"sgd"`` (default): minibatch SGD epochs. The others fit the same objective,
        ``(1/n) sum_i s_i loss_i + alpha R(w)``, to its optimum (docs/exact-solvers.md):
        L-BFGS, OWL-QN (needed for an L1 part of the penalty), Newton-CG, or
        ``"hybrid"``: one SGD epoch, then L-BFGS (OWL-QN with L1) from there. With
        them ``max_iter`` counts solver iterations, ``tol`` is the gradient tolerance
        (``max |g| <= tol``; None: 1e-4), ``checkpoint_every`` counts iterations, and
        the SGD step settings (eta0, learning_rate, momentum, batch_size) serve only
        the hybrid's first epoch. Loss ``hinge`` is not smooth: SGD only.
    exchange : {"auto", "dense", "sparse"}
        How the ranks combine a step's gradient when X is a scipy CSR matrix: one
        Allreduce of the whole gradient (``"dense"``), or the touched entries only
        (``"sparse"``: an Allgatherv); ``"auto"`` picks by the expected entries per
        batch (docs/sparse.md). Both give the same synchronous model; dense X always
        uses the Allreduce. ``exchange_`` tells which one a fit used.
    comm : mpi4py communicator, optional

    Attributes
    ----------
    coef_ : ndarray (1 or n_classes, n_features)
    intercept_ : ndarray (1 or n_classes,)
    classes_, n_iter_, t_, n_features_in_
    n_evals_, objective_, solver_status_
        With an exact solver: the objective evaluations made (Allreduces), the
        objective at the solution and how the solve ended ("converged", "max_iter",
        "line_search", "stopped").
    scale_offset_, scale_factor_ : ndarray (n_features,)
        With ``scaler``: the model's input is ``(X - scale_offset_) / scale_factor_``.
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
                 eta0=0.01, power_t=0.5, momentum=0.0, batch_size="auto", n_iter_no_change=5,
                 multi_class="auto", class_weight=None, random_state=None, verbose=0, dtype=None,
                 checkpoint_dir=None, checkpoint_every=None, checkpoint_seconds=None,
                 keep_checkpoints=3, comm_timeout=600.0, model_parallel=1, shard="auto",
                 sync="allreduce", sync_warmup=0, max_staleness=4, overlap=False, compress="none",
                 stats=None, run_dir=None, scaler=None, solver="sgd", exchange="auto",
                 comm=None):
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
        self.class_weight = class_weight
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.comm_timeout = comm_timeout
        self.model_parallel = model_parallel
        self.sync = sync
        self.sync_warmup = sync_warmup
        self.max_staleness = max_staleness
        self.overlap = overlap
        self.compress = compress
        self.stats = stats
        self.run_dir = run_dir
        self.scaler = scaler
        self.shard = shard
        self.solver = solver
        self.exchange = exchange
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
        return self._encode_agreed(label_index(self.classes_, y))

    def _encode_agreed(self, idx, reuse=False):
        """(K, encoded targets, kernel loss) for class indices ``idx``; with ``reuse`` the
        targets may be ``idx`` itself, encoded in place (a float64 array of the fit's own
        that nothing reads again)."""
        idx = np.asarray(idx)
        if self._multinomial():
            return len(self.classes_), idx.astype(np.float64, copy=not reuse), _k.Multinomial()
        loss = LOSSES[self.loss](self)
        if len(self.classes_) == 2:
            # indices 0 / 1 to -1.0 / +1.0, two passes without a mask
            pm1 = np.multiply(idx, 2.0, out=idx if reuse and idx.dtype == np.float64 else None)
            pm1 -= 1.0
            return 1, pm1, loss
        return len(self.classes_), idx.astype(np.float64, copy=not reuse), loss

    def decision_function(self, X):
        """Margins of this rank's rows: ``(n,)`` for two classes, else ``(n, K)``
        (local; collective over the model-parallel group for a sharded model)."""
        return self._decision(X)

    def predict(self, X):
        """Class labels of this rank's rows (local; collective over the model-parallel
        group for a sharded model)."""
        if hasattr(self, "shard_"):
            return self.classes_[self.shard_.predict_index(self._check_X(X))]
        scores = self._decision(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X):
        """Class probabilities of this rank's rows (local; ``loss="log_loss"`` only)."""
        self._check_fitted()
        if self.loss != "log_loss":
            raise AttributeError(f"probabilities are not available for loss={self.loss!r}")
        if hasattr(self, "shard_") and self.shard_.split == "classes":
            return check_finite_outputs(self.shard_.predict_proba(self._check_X(X)))
        scores = np.asarray(self._decision(X), dtype=np.float64)
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
        if scores is None:
            pred = self.predict(X)
        elif scores.ndim == 1:
            pred = self.classes_[(scores > 0).astype(np.intp)]
        else:
            pred = self.classes_[np.argmax(scores, axis=1)] if len(yy) else np.zeros(0)
        correct = self._sum(c, float(np.sum(pred == yy)))
        return {"accuracy": correct / max(n, 1), "loss": loss, "n_samples": n}

    def score(self, X, y):
        """Global mean accuracy over all ranks' rows (collective)."""
        return self.metrics(X, y)["accuracy"]


class SGDRegressor(RegressorMixin, _BaseSGD):
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
                 batch_size="auto", n_iter_no_change=5, random_state=None, verbose=0,
                 dtype=None, checkpoint_dir=None, checkpoint_every=None, checkpoint_seconds=None,
                 keep_checkpoints=3, comm_timeout=600.0, model_parallel=1, shard="auto",
                 sync="allreduce", sync_warmup=0, max_staleness=4, overlap=False, compress="none",
                 stats=None, run_dir=None, scaler=None, solver="sgd", exchange="auto",
                 comm=None):
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
        self.model_parallel = model_parallel
        self.sync = sync
        self.sync_warmup = sync_warmup
        self.max_staleness = max_staleness
        self.overlap = overlap
        self.compress = compress
        self.stats = stats
        self.run_dir = run_dir
        self.scaler = scaler
        self.shard = shard
        self.solver = solver
        self.exchange = exchange
        self.comm = comm

    def _encode(self, y):
        return 1, y, LOSSES[self.loss](self)

    def predict(self, X):
        """Predicted values of this rank's rows (local; collective over the
        model-parallel group for a sharded model)."""
        return self._decision(X)

    def metrics(self, X, y):
        """Global R², mean loss, mean squared error and row count (collective)."""
        self._check_fitted()
        c = get_comm(self.comm)
        loss, n, pred, yy = self._global_loss(c, X, y)
        if pred is None:
            pred = self.predict(X)
        s = self._sum(c, np.array([yy.sum(), float(yy.size)]))
        mean = s[0] / max(s[1], 1.0)
        ss = self._sum(c, np.array([np.sum((yy - pred) ** 2), np.sum((yy - mean) ** 2)]))
        r2 = 1.0 - ss[0] / ss[1] if ss[1] > 0 else (1.0 if ss[0] == 0 else 0.0)
        return {"r2": float(r2), "loss": loss, "mse": ss[0] / max(n, 1), "n_samples": n}

    def score(self, X, y):
        """Global coefficient of determination R² (collective)."""
        return self.metrics(X, y)["r2"]
