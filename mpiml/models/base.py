"""Helpers shared by mpiml's models; the estimator contract itself is
:class:`mpiml.estimator.BaseEstimator` (scikit-learn's conventions).

Input checks use scikit-learn's validation helpers, so errors have scikit-learn's types
and messages (``Expected 2D array``, ``Complex data not supported``, ``Sparse data was
passed``, ``X has 3 features, but ... is expecting 4``, a ``DataConversionWarning``
for a column-vector ``y``...). They never scan the values (``ensure_all_finite=False``):
finiteness is mpiml's own check, once per fit: an SGD fit's layout scans the rows as
it copies them into step order (:func:`mpiml._kernels.stats.take_rows`), other fits scan
them first (:func:`mpiml.io.first_nonfinite_row`); at prediction the outputs are checked,
which a NaN or infinity in a row always reaches.
A rank may hold zero rows: emptiness is checked on the global count.
"""
import numpy as np
from sklearn.utils.validation import check_array, validate_data

from ..errors import DataError
from ..estimator import BaseEstimator, check_finite_outputs  # noqa: F401  (re-exported)

__all__ = ["BaseEstimator", "check_local_X", "sparse_ok", "is_sparse", "check_fit_input", "check_predict_X",
           "check_finite_outputs", "label_index", "label_kind"]

_FLOATS = (np.float64, np.float32)


def sparse_ok(est):
    """What ``accept_sparse`` the estimator's checks pass to scikit-learn: ``"csr"``
    (other scipy formats are converted) for the models that train on CSR rows, else
    False (scikit-learn's "Sparse data was passed ..., but dense data is required")."""
    return "csr" if getattr(est, "_sparse_input", False) else False


def is_sparse(X):
    return getattr(X, "format", None) == "csr"


def check_local_X(X, name="X", accept_sparse=False):
    """This rank's feature rows as a 2-D array of floats (no copy if they are float32 or
    float64), checked as scikit-learn's ``check_array`` does; zero rows are allowed."""
    return check_array(X, accept_sparse=accept_sparse, dtype=_FLOATS, ensure_all_finite=False,
                       ensure_min_samples=0, input_name=name)


def check_fit_input(est, X, y, reset):
    """This rank's ``(X, y)`` for ``fit``: scikit-learn's ``validate_data`` (which
    also records ``n_features_in_`` and ``feature_names_in_`` when ``reset``). A
    classifier's target-type check (``Unknown label type: continuous``) is made where its
    labels are counted (``training._unique_labels``)."""
    X, y = validate_data(est, X, y, reset=reset, accept_sparse=sparse_ok(est), dtype=_FLOATS,
                         ensure_all_finite=False, ensure_min_samples=0,
                         y_numeric=not est._is_classifier)
    if not est._is_classifier and y.dtype.kind not in "fiub":
        raise DataError(f"y has type {y.dtype}; a regressor needs numeric targets")
    return X, y


def check_predict_X(est, X, shard_width=None):
    """This rank's rows for prediction: scikit-learn's checks against the fitted model
    (number of features and their names); ``shard_width``: a feature-sharded model also
    takes its own columns only."""
    if shard_width is not None and getattr(X, "ndim", 0) == 2 and X.shape[1] == shard_width \
            and shard_width != est.n_features_in_:
        return check_local_X(X, accept_sparse=sparse_ok(est))
    return validate_data(est, X, reset=False, accept_sparse=sparse_ok(est), dtype=_FLOATS,
                         ensure_all_finite=False, ensure_min_samples=0)


def label_index(classes, y):
    """Indices of labels ``y`` in the sorted ``classes`` (a DataError for any other)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    try:
        idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
        ok = not y.size or bool(np.all(classes[idx] == y))
    except TypeError:       # labels that cannot be compared with the classes
        ok = False
    if not ok:
        seen = np.unique(y.astype(str) if classes.dtype.kind in "US" else y)
        unseen = [v for v in seen.tolist() if v not in set(classes.tolist())]
        raise DataError(f"labels {unseen[:5]} are not among the model's classes "
                        f"{classes.tolist()[:10]}")
    return idx


def label_kind(y):
    """'number' or 'string' labels (mixing them is an error, as in scikit-learn)."""
    kind = np.asarray(y).dtype.kind
    if kind in "biuf":
        return "number"
    if kind in "US" or (kind == "O" and all(isinstance(v, str) for v in np.asarray(y).ravel()[:1000])):
        return "string"
    raise DataError(f"class labels of type {np.asarray(y).dtype} are neither numbers nor strings")


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
