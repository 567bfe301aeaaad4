"""Linear models fitted to the regularised optimum by exact full-batch solvers
(:mod:`mpiml.solvers`: L-BFGS, OWL-QN, Newton-CG), with scikit-learn's names and
defaults: :class:`LogisticRegression` here, the regressors (:class:`LinearRegression`,
:class:`Ridge`, :class:`ElasticNet`, :class:`EpsilonHuberRegressor`) in
:mod:`mpiml.models.regression`; both on the common base :class:`_ExactLinear`.

A fit is collective: every rank passes its own rows, the input is agreed as for the SGD
models (the agreement of :class:`mpiml.models.training.Trainer`, reused as is), and
each evaluation of the objective is one read of this rank's rows by the kernels of
``csrc/glm.pyx`` and one packed ``Allreduce`` of ``[loss, gradient]``
(:class:`Objective`). The penalty is added after the reduction, once; everything else
runs identically on every rank, so every rank ends with the same model.
"""
import math
import warnings

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.exceptions import ConvergenceWarning

from .. import solvers
from .._kernels import glm as _g
from ..comm import get_comm
from ..errors import DataError, NotFittedError, TrainingError
from ..imbalance import row_weights
from ..parallel.protocol import N_WORDS, Decision, Word, decision, seq_word
from .base import BaseEstimator, check_finite_outputs, check_predict_X
from .training import Trainer

__all__ = ["SOLVERS", "LogisticRegression", "Objective", "check_solution", "run_solver",
           "warn_unconverged"]

SOLVERS = ("lbfgs", "owlqn", "newton-cg")


class _Counter:
    """What :class:`~mpiml.parallel.protocol.StepControl` reads as its ``engine``: ``t``,
    the number of reductions made (the control words' sequence number)."""

    def __init__(self):
        self.t = 0


class Objective:
    """``f(x) = (1/W) sum_i s_i loss_i(x) + l2/2 |x_pen|^2`` over the rows of every rank
    (``W``: ``weight_sum``; ``x_pen``: the weights, not the intercepts). ``x`` holds the
    (K, d) weights row by row, then the K intercepts when ``fit_intercept``. Calling it
    is collective: one read of this rank's rows, one Allreduce of ``1 + K*d + K``
    doubles; :meth:`hessp` likewise.

    With a ``control`` (a :class:`~mpiml.parallel.protocol.StepControl`, when a fit
    session hosts the solve), the same Allreduce also carries the control words: each
    rank's stop / checkpoint / command requests and the reduction's sequence number.
    The decisions they give (identical on every rank) are collected in ``pending`` for
    the session to act on at the end of the solver's iteration; a rank out of step is
    reported at once."""

    def __init__(self, comm, X, y, sw, kind, K, fit_intercept, epsilon, weight_sum, l2,
                 control=None):
        self.comm, self.X, self.K = comm, X, K
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.sw = np.zeros(0) if sw is None else np.ascontiguousarray(sw, dtype=np.float64)
        self.kind, self.epsilon = _g.KINDS[kind], float(epsilon)
        d = X.shape[1]
        self.P = K * d + K
        self.size = K * d + (K if fit_intercept else 0)
        self.scale, self.l2 = 1.0 / weight_sum, float(l2)
        self.penalised = np.zeros(self.size)
        self.penalised[:K * d] = 1.0
        self.control, self.pending = control, 0
        self.counter = _Counter()
        n_words = N_WORDS if control is not None else 0
        self._buf = np.zeros(1 + self.P + n_words)
        self._hbuf = np.zeros(self.P + n_words)
        self._w = np.zeros(self.P)
        self._v = np.zeros(self.P)

    def _full(self, x, out):
        out[:self.size] = x
        return out

    def _reduce(self, buf, n_values):
        """Allreduce ``buf`` (its first ``n_values`` entries, then the control words)."""
        ctl = self.control
        if ctl is None:
            self.comm.Allreduce(buf)
            return
        words = buf[n_values:]
        words[:] = 0.0
        words[Word.SEQ] = seq_word(self.counter.t)
        ctl.request(words, True)
        self.comm.Allreduce(buf)
        code = decision(words, self.comm.size, self.counter.t)
        if code & Decision.OUT_OF_STEP:
            ctl.out_of_step(self.counter)
        self.counter.t += 1
        self.pending |= code

    def take_pending(self):
        """The decisions collected since the last call (the same on every rank)."""
        code, self.pending = self.pending, 0
        return code

    def _rows(self):
        """The kernels' row arguments: ``(X,)``, or a CSR matrix's three arrays and width."""
        X = self.X
        if getattr(X, "format", None) == "csr":
            return (X.data, X.indices, X.indptr, X.shape[1])
        return (X,)

    def __call__(self, x):
        buf = self._buf
        grad = buf[1:1 + self.P]
        rows = self._rows()
        kernel = _g.loss_grad if len(rows) == 1 else _g.loss_grad_csr
        buf[0] = kernel(*rows, self.y, self.sw, self._full(x, self._w), grad,
                        self.kind, self.K, self.epsilon)
        self._reduce(buf, 1 + self.P)
        pen = self.penalised * x
        f = buf[0] * self.scale + 0.5 * self.l2 * (pen @ pen)
        return f, grad[:self.size] * self.scale + self.l2 * pen

    def hessp(self, x, v):
        out = self._hbuf[:self.P]
        rows = self._rows()
        kernel = _g.hessp if len(rows) == 1 else _g.hessp_csr
        kernel(*rows, self.y, self.sw, self._full(x, self._w), self._full(v, self._v), out,
               self.kind, self.K, self.epsilon)
        self._reduce(self._hbuf, self.P)
        return out[:self.size] * self.scale + self.l2 * self.penalised * v


def run_solver(solver, obj, l1, tol, max_iter, x0, start=None, on_iter=None):
    """Minimise ``obj`` (+ ``l1 |w|_1`` for ``owlqn``) by ``solver`` (collective): a
    :class:`mpiml.solvers.Result`. ``start`` / ``on_iter``: see :func:`mpiml.solvers.lbfgs`."""
    if solver == "owlqn":
        return solvers.owlqn(obj, x0, l1 * obj.penalised, tol, max_iter, start=start,
                             on_iter=on_iter)
    if solver == "newton-cg":
        return solvers.newton_cg(obj, obj.hessp, x0, tol, max_iter, start=start,
                                 on_iter=on_iter)
    return solvers.lbfgs(obj, x0, tol, max_iter, start=start, on_iter=on_iter)


def check_solution(name, solver, res):
    """A non-finite solution is the data's fault (every rank raises alike)."""
    if not (math.isfinite(res.f) and np.isfinite(res.x).all()):
        raise TrainingError(f"{name}: the objective became {res.f} (solver {solver!r}); "
                            "scale the features")


def warn_unconverged(name, solver, res, max_iter, tol, stacklevel=3):
    """The ``ConvergenceWarning`` of a solve that stopped before converging (every rank
    holds the same result and warns alike: see docs/exact-solvers.md)."""
    if res.status == "max_iter":
        warnings.warn(f"{name}: solver {solver!r} did not converge in max_iter={max_iter} "
                      f"iterations (tol={tol}); increase max_iter or scale the data",
                      ConvergenceWarning, stacklevel=stacklevel + 1)
    elif res.status == "line_search":
        warnings.warn(f"{name}: solver {solver!r} stopped after {res.n_iter} iterations: the "
                      f"line search found no step that lowers the objective (tol={tol} not "
                      "reached); the result is as precise as float64 rounding allows here, "
                      "or the data need scaling", ConvergenceWarning, stacklevel=stacklevel + 1)


def _number(v):
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer,
                                                                  np.floating))


class _ExactLinear(BaseEstimator):
    """Common fit / predict / save of the exact-solver linear models. Subclasses supply
    ``_validate_model_params(bad)``, ``_encode_fit(y)`` -> (loss kind, K, targets),
    ``_penalty(W)`` -> (l2, l1) and ``_epsilon()``."""
    _is_classifier = False
    _default_max_iter = 1000
    # the agreement of the SGD models (Trainer) reads these besides the constructor
    # parameters: this family is data-parallel, its training dtype the input's
    model_parallel = 1
    sync = "allreduce"
    random_state = None
    dtype = None
    _agree_data = Trainer._agree_data
    _prepare_local = Trainer._prepare_local
    _check_global = Trainer._check_global
    _agreed_classes = Trainer._agreed_classes
    _feature_names = Trainer._feature_names
    _write_model = Trainer._write_model
    __getstate__ = Trainer.__getstate__
    __setstate__ = Trainer.__setstate__

    # CSR rows: glm.pyx's CSR kernels, O(stored values) per evaluation (docs/sparse.md)
    _sparse_input = True

    def _check_sparse_fit(self, columns):
        pass

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _epsilon(self):
        return 0.0

    def _validate_params(self):
        from ..errors import ConfigError

        def bad(msg):
            raise ConfigError(f"{type(self).__name__}: {msg}")

        if self.solver not in SOLVERS:
            bad(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if not isinstance(self.fit_intercept, (bool, np.bool_)):
            bad(f"fit_intercept must be True or False, not {self.fit_intercept!r}")
        if not _number(self.tol) or not self.tol >= 0:
            bad(f"tol must be a number >= 0, not {self.tol!r}")
        m = self.max_iter
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer))
                              or m < 1):
            bad(f"max_iter must be a positive integer{' or None' if self._none_max_iter else ''},"
                f" not {m!r}")
        if m is None and not self._none_max_iter:
            bad("max_iter must be a positive integer, not None")
        self._validate_model_params(bad)
        l1 = self._penalty(1.0)[1]
        if l1 > 0 and self.solver != "owlqn":
            bad(f"an L1 penalty needs solver='owlqn' (solver={self.solver!r} is for smooth "
                "objectives)")

    _none_max_iter = False

    # ------------------------------------------------------------ training
    def fit(self, X, y, sample_weight=None):
        """Fit on the rows every rank passes (collective): every rank ends with the
        same model, the optimum of the objective over all ranks' rows.

        Parameters
        ----------
        X : array (n_local, n_features)
            This rank's rows (float32 or float64; the sums are float64 either way).
            Shards may differ in size and may be empty.
        y : array (n_local,)
        sample_weight : array (n_local,), optional
            Per-row weights of this rank's rows (combined with ``class_weight``).

        Returns
        -------
        self
        """
        data = self._agree_data(X, y, True, None, None, True)
        c = data.comm
        for name in ("coef_", "intercept_", "n_iter_", "class_weight_"):
            self.__dict__.pop(name, None)
        if self._is_classifier:
            self.classes_ = data.classes
        sw = row_weights(self, c, data.grid, data.y, sample_weight, data.meta)
        W = c.allreduce(float(sw.sum()) if sw is not None else float(data.y.shape[0]))
        kind, K, y_enc = self._encode_fit(data.y)
        l2, l1 = self._penalty(W)
        obj = Objective(c, data.X, y_enc, sw, kind, K, self.fit_intercept, self._epsilon(),
                        W, l2)
        res = self._solve(obj, l1)
        self._store(res, K, data.d)
        return self

    def _solve(self, obj, l1):
        """Run the solver (collective); warn if it stopped before converging."""
        max_iter = self.max_iter if self.max_iter is not None else self._default_max_iter
        tol = float(self.tol)
        res = run_solver(self.solver, obj, l1, tol, max_iter, np.zeros(obj.size))
        check_solution(type(self).__name__, self.solver, res)
        warn_unconverged(type(self).__name__, self.solver, res, max_iter, tol)
        return res

    def _store(self, res, K, d):
        x = res.x
        coef = x[:K * d].reshape(K, d).copy()
        intercept = x[K * d:].copy() if self.fit_intercept else np.zeros(K)
        self.n_iter_ = int(res.n_iter)
        self.n_evals_ = int(res.n_evals)
        self.objective_ = float(res.f)
        if self._is_classifier:
            self.coef_, self.intercept_ = coef, intercept
        else:
            self.coef_, self.intercept_ = coef.ravel(), float(intercept[0])

    # ------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def _margins(self, X):
        """Margins of this rank's rows (local): ``(n,)`` for one output, else ``(n, K)``."""
        self._check_fitted()
        X = check_predict_X(self, X)
        coef = np.atleast_2d(self.coef_).astype(X.dtype, copy=False)
        scores = X @ coef.T + np.atleast_1d(self.intercept_).astype(X.dtype)
        return check_finite_outputs(scores.ravel() if scores.shape[1] == 1 else scores)

    def _global_sums(self, values):
        return get_comm(self.comm).allreduce(np.asarray(values, dtype=np.float64))

    def _local_score_input(self, X, y, sample_weight):
        """This rank's (X, y, weights) for ``score`` (agreed across ranks)."""
        def local():
            yy = np.asarray(y).ravel() if self._is_classifier else \
                np.asarray(y, dtype=np.float64).ravel()
            n = X.shape[0] if hasattr(X, "shape") else len(X)
            if yy.shape[0] != n:
                raise DataError(f"X has {n} rows but y has {yy.shape[0]}")
            w = np.ones(n) if sample_weight is None else \
                np.asarray(sample_weight, dtype=np.float64).ravel()
            if w.shape[0] != n:
                raise DataError(f"sample_weight has {w.shape[0]} values for {n} rows")
            return self._predict_local(X), yy, w
        return get_comm(self.comm).run(local)

    def save(self, path):
        """Write the model to an HDF5 file in the format of mpiml's other linear models
        (collective; rank 0 writes)."""
        self._check_fitted()
        arrays = {"coef": np.atleast_2d(self.coef_),
                  "intercept": np.atleast_1d(np.asarray(self.intercept_, dtype=np.float64))}
        if self._is_classifier:
            arrays["classes"] = self.classes_
        self._write_model(path, arrays)


class LogisticRegression(ClassifierMixin, _ExactLinear):
    """Logistic regression (binary, or multinomial for more than two classes) fitted to
    the optimum of scikit-learn's objective, ``C sum_i s_i loss_i + penalty(w)``, by an
    exact distributed solver (collective ``fit``).

    Parameters
    ----------
    penalty : {"l2", "l1", "elasticnet", None}, default "l2"
        ``l2``: ``|w|^2 / 2``; ``l1``: ``|w|_1``; ``elasticnet``: ``l1_ratio |w|_1 +
        (1 - l1_ratio) |w|^2 / 2``. The intercepts are not penalised.
    C : float, default 1.0
        Inverse regularisation strength (``C=inf``: no penalty).
    l1_ratio : float or None
        Elastic-net mixing, needed with ``penalty="elasticnet"``.
    tol : float, default 1e-4
        Stop when the largest absolute (pseudo-)gradient entry of the objective divided
        by ``C`` times the sum of the row weights is at most ``tol`` (scikit-learn's
        scaling), or when the loss no longer changes (docs/exact-solvers.md).
    fit_intercept : bool, default True
    class_weight : None, "balanced" or dict
    solver : {"lbfgs", "owlqn", "newton-cg"}, default "lbfgs"
        ``owlqn`` is needed for an L1 part in the penalty.
    max_iter : int, default 100
    comm : mpi4py communicator, optional

    Attributes
    ----------
    coef_ : ndarray (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray (1,) or (n_classes,)
    classes_, n_features_in_, feature_names_in_
    n_iter_ : int
        Solver iterations (an int, as mpiml's other models).
    n_evals_ : int
        Objective evaluations (and Hessian-vector products): the Allreduces made.
    objective_ : float
        The objective at the solution, divided by ``C`` times the row-weight sum.

    Examples
    --------
    >>> from mpiml import LogisticRegression, load_hdf5   # doctest: +SKIP
    >>> X, y = load_hdf5("train.h5")                      # doctest: +SKIP
    >>> clf = LogisticRegression(C=10.0).fit(X, y)        # doctest: +SKIP
    """
    _is_classifier = True

    def __init__(self, penalty="l2", *, C=1.0, l1_ratio=None, tol=1e-4, fit_intercept=True,
                 class_weight=None, solver="lbfgs", max_iter=100, comm=None):
        self.penalty = penalty
        self.C = C
        self.l1_ratio = l1_ratio
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.solver = solver
        self.max_iter = max_iter
        self.comm = comm

    def _validate_model_params(self, bad):
        if self.penalty not in ("l2", "l1", "elasticnet", None):
            bad(f"penalty must be 'l2', 'l1', 'elasticnet' or None, not {self.penalty!r}")
        if not _number(self.C) or not self.C > 0:
            bad(f"C must be a positive number, not {self.C!r}")
        if self.penalty == "elasticnet" and (not _number(self.l1_ratio)
                                             or not 0 <= self.l1_ratio <= 1):
            bad(f"penalty='elasticnet' needs l1_ratio in [0, 1], not {self.l1_ratio!r}")

    def _penalty(self, W):
        if self.penalty is None or math.isinf(self.C):
            return 0.0, 0.0
        r = {"l2": 0.0, "l1": 1.0}.get(self.penalty, self.l1_ratio)
        return (1.0 - r) / (self.C * W), r / (self.C * W)

    def _encode_fit(self, idx):
        if len(self.classes_) == 2:
            return "logistic", 1, np.where(idx == 1, 1.0, -1.0)
        return "multinomial", len(self.classes_), idx

    def _predict_local(self, X):
        scores = self._margins(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(np.intp)]
        return self.classes_[np.argmax(scores, axis=1)]

    def decision_function(self, X):
        """Margins of this rank's rows: ``(n,)`` for two classes, else ``(n, K)`` (local)."""
        return self._margins(X)

    def predict(self, X):
        """Class labels of this rank's rows (local)."""
        return self._predict_local(X)

    def predict_proba(self, X):
        """Class probabilities of this rank's rows (local)."""
        scores = np.asarray(self._margins(X), dtype=np.float64)
        if scores.ndim == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * scores))     # overflow-free sigmoid
            return np.column_stack([1.0 - p, p])
        z = scores - scores.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba` (local)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def score(self, X, y, sample_weight=None):
        """Global (weighted) mean accuracy over all ranks' rows (collective)."""
        pred, yy, w = self._local_score_input(X, y, sample_weight)
        tot = self._global_sums([float(w @ (pred == yy)), float(w.sum())])
        return float(tot[0] / tot[1]) if tot[1] > 0 else 0.0
