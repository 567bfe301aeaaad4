"""The estimator contract shared by mpiml's models (scikit-learn's conventions).

The constructor only stores parameters; fitted state ends in ``_``;
``get_params`` / ``set_params`` read the constructor's signature.
"""
import inspect

import numpy as np

from ..errors import DataError

__all__ = ["BaseEstimator", "check_local_X"]


class BaseEstimator:
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """Parameters of this estimator (a dict)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; returns ``self``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k != "comm")
        return f"{type(self).__name__}({args})"


def check_local_X(X, name="X"):
    """This rank's feature rows as a 2-D array of real numbers (no copy if possible)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows x features), it has shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{name} has type {X.dtype}; mpiml needs real numbers")
    return X


def classification_report(est, X, y):
    """Exact global classification metrics of a fitted classifier (collective): see
    :func:`mpiml.metrics.classification_metrics`."""
    from ..comm import get_comm
    from ..metrics import classification_metrics
    c = get_comm(est.comm)
    y = np.asarray(y, dtype=np.float64).ravel()
    pred = est.predict(X)
    proba = est.predict_proba(X) if getattr(est, "loss", "log_loss") == "log_loss" else None
    scores = None
    if proba is None:
        scores = np.asarray(est.decision_function(X))
    idx = np.clip(np.searchsorted(est.classes_, y), 0, len(est.classes_) - 1)
    if np.any(est.classes_[idx] != y):
        raise DataError("labels outside the model's classes")
    pidx = np.searchsorted(est.classes_, pred)
    # the ranks of a model-parallel group hold the same rows: count them once
    group = getattr(getattr(est, "shard_", None), "model", None) or \
        getattr(getattr(est, "_net", None), "model", None)
    if group is not None and group.rank > 0:
        idx, pidx = idx[:0], pidx[:0]
        proba = None if proba is None else proba[:0]
        scores = None if scores is None else scores[:0]
    if proba is None and scores is not None and scores.ndim == 1:
        out = classification_metrics(idx, pidx, est.classes_, comm=c)
        from ..metrics import roc_auc
        out["roc_auc"] = roc_auc(scores, idx == 1, c)
        return out
    return classification_metrics(idx, pidx, est.classes_, proba=proba, comm=c)
