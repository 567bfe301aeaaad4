"""Linear regressors fitted to the optimum by the exact solvers (:mod:`mpiml.solvers`):
:class:`LinearRegression`, :class:`Ridge`, :class:`ElasticNet` (scikit-learn's names,
objectives and defaults) and :class:`EpsilonHuberRegressor` (mpiml's fixed-epsilon
Huber loss). Fit, agreement and distribution are :class:`mpiml.models.glm._ExactLinear`'s.
"""
import math

from sklearn.base import RegressorMixin

from .glm import _ExactLinear, _number

__all__ = ["ElasticNet", "EpsilonHuberRegressor", "LinearRegression", "Ridge"]


class _ExactRegressor(RegressorMixin, _ExactLinear):
    _none_max_iter = True
    _default_max_iter = 15000

    def _encode_fit(self, y):
        return "squared_error", 1, y

    def _predict_local(self, X):
        return self._margins(X)

    def predict(self, X):
        """Predicted values of this rank's rows (local)."""
        return self._predict_local(X)

    def score(self, X, y, sample_weight=None):
        """Global (weighted) coefficient of determination R² (collective)."""
        pred, yy, w = self._local_score_input(X, y, sample_weight)
        s = self._global_sums([float(w @ yy), float(w.sum())])
        mean = s[0] / s[1] if s[1] > 0 else 0.0
        ss = self._global_sums([float(w @ (yy - pred) ** 2), float(w @ (yy - mean) ** 2)])
        return float(1.0 - ss[0] / ss[1]) if ss[1] > 0 else (1.0 if ss[0] == 0 else 0.0)


_REGRESSOR_DOC = """
    fit_intercept : bool, default True
        The intercept is never penalised.
    tol : float
        Stop when the largest absolute (pseudo-)gradient entry of the objective (scaled as
        above) is at most ``tol``, or when it no longer changes (docs/exact-solvers.md).
    max_iter : int{none}
    solver : {{"lbfgs", "owlqn", "newton-cg"}}
    comm : mpi4py communicator, optional

    Attributes
    ----------
    coef_ : ndarray (n_features,)
    intercept_ : float
    n_features_in_, feature_names_in_, n_iter_, n_evals_, objective_
        As :class:`LogisticRegression`'s.
"""


class LinearRegression(_ExactRegressor):
    """Ordinary least squares, ``min (1/2W) sum_i s_i (y_i - x_i w - b)^2``, by an exact
    distributed solver (collective ``fit``).

    Parameters
    ----------""" + _REGRESSOR_DOC.format(none=" or None (15000)")

    def __init__(self, *, fit_intercept=True, tol=1e-6, max_iter=None, solver="lbfgs",
                 comm=None):
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.comm = comm

    def _validate_model_params(self, bad):
        pass

    def _penalty(self, W):
        return 0.0, 0.0


class Ridge(_ExactRegressor):
    """Ridge regression, scikit-learn's ``min sum_i s_i (y_i - x_i w - b)^2 + alpha |w|^2``
    (solved divided by ``2W``, ``W`` the weight sum), by an exact distributed solver.

    Parameters
    ----------
    alpha : float, default 1.0""" + _REGRESSOR_DOC.format(none=" or None (15000)")

    def __init__(self, alpha=1.0, *, fit_intercept=True, max_iter=None, tol=1e-4,
                 solver="lbfgs", comm=None):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.comm = comm

    def _validate_model_params(self, bad):
        if not _number(self.alpha) or not 0 <= self.alpha < math.inf:
            bad(f"alpha must be a finite number >= 0, not {self.alpha!r}")

    def _penalty(self, W):
        return float(self.alpha) / W, 0.0


class ElasticNet(_ExactRegressor):
    """Elastic net, scikit-learn's ``min (1/2W) sum_i s_i (y_i - x_i w - b)^2 +
    alpha l1_ratio |w|_1 + alpha (1 - l1_ratio) |w|^2 / 2``, by OWL-QN (exact zeros).

    Parameters
    ----------
    alpha : float, default 1.0
    l1_ratio : float, default 0.5""" + _REGRESSOR_DOC.format(none=", default 1000")
    _none_max_iter = False

    def __init__(self, alpha=1.0, *, l1_ratio=0.5, fit_intercept=True, max_iter=1000,
                 tol=1e-4, solver="owlqn", comm=None):
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.comm = comm

    def _validate_model_params(self, bad):
        if not _number(self.alpha) or not 0 <= self.alpha < math.inf:
            bad(f"alpha must be a finite number >= 0, not {self.alpha!r}")
        if not _number(self.l1_ratio) or not 0 <= self.l1_ratio <= 1:
            bad(f"l1_ratio must be in [0, 1], not {self.l1_ratio!r}")

    def _penalty(self, W):
        return float(self.alpha) * (1.0 - self.l1_ratio), float(self.alpha) * self.l1_ratio


class EpsilonHuberRegressor(_ExactRegressor):
    """Linear regression under mpiml's fixed-epsilon Huber loss (the ``SGDRegressor``
    ``loss="huber"`` loss), ``min (1/W) sum_i s_i h(y_i - x_i w - b) + alpha |w|^2 / 2``
    with ``h(r) = r^2/2`` for ``|r| <= epsilon``, ``epsilon (|r| - epsilon/2)`` beyond.
    Unlike scikit-learn's ``HuberRegressor`` it fits no scale: ``epsilon`` is in the
    target's units.

    Parameters
    ----------
    epsilon : float, default 0.1
    alpha : float, default 1e-4""" + _REGRESSOR_DOC.format(none=", default 100")
    _none_max_iter = False

    def __init__(self, epsilon=0.1, *, alpha=1e-4, fit_intercept=True, max_iter=100,
                 tol=1e-5, solver="lbfgs", comm=None):
        self.epsilon = epsilon
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.comm = comm

    def _validate_model_params(self, bad):
        if not _number(self.epsilon) or not 0 < self.epsilon < math.inf:
            bad(f"epsilon must be a positive number, not {self.epsilon!r}")
        if not _number(self.alpha) or not 0 <= self.alpha < math.inf:
            bad(f"alpha must be a finite number >= 0, not {self.alpha!r}")

    def _encode_fit(self, y):
        return "huber", 1, y

    def _epsilon(self):
        return float(self.epsilon)

    def _penalty(self, W):
        return float(self.alpha), 0.0
