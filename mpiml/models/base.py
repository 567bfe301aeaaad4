"""Helpers shared by mpiml's models; the estimator contract itself is
:class:`mpiml.estimator.BaseEstimator` (scikit-learn's conventions)."""
import numpy as np

from ..errors import DataError
from ..estimator import BaseEstimator  # noqa: F401  (the contract; re-exported)

__all__ = ["BaseEstimator", "check_local_X"]


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
