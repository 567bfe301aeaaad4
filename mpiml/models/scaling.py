"""Feature scaling inside an estimator (``scaler="standard"`` or ``"minmax"``).

``fit`` computes the global statistics of the training rows (:mod:`mpiml.preprocessing`,
one Allreduce over the data-parallel ranks), trains on ``(X - offset) / factor`` and
keeps ``scale_offset_`` and ``scale_factor_`` (float64, one value per feature). Every
prediction path (``predict``, ``predict_proba``, ``decision_function``, ``score``,
``metrics``, validation during ``fit``, explanations) applies the same transform to raw
rows, the model file stores both vectors (group ``scaler/``), and the ONNX export puts a
``Sub`` and a ``Div`` in front of the graph. Every path transforms with the same kernel
(``(x - offset) / factor`` in float64, rounded once to the rows' type), so training and
prediction see bit-identical scaled rows.
"""
import numpy as np

from ..errors import DataError
from ..preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler, scale_csr_columns, scale_rows

__all__ = ["SCALERS", "check_scaler", "fit_scaler", "transform", "scaler_arrays",
           "restore_scaler", "raw_linear", "describe"]

SCALERS = (None, "standard", "minmax", "maxabs")
_CLASSES = {"standard": StandardScaler, "minmax": MinMaxScaler, "maxabs": MaxAbsScaler}


def check_scaler(value, bad):
    if value not in SCALERS:
        bad(f"scaler must be None, 'standard', 'minmax' or 'maxabs', not {value!r}")


def fit_scaler(est, grid, X, columns):
    """Set ``est.scale_offset_`` / ``est.scale_factor_`` from every replica's rows
    (collective over the grid). A feature-sharded fit (``columns=(lo, hi, d)``) computes
    its columns' statistics and assembles the whole vectors over the model-parallel group."""
    est.__dict__.pop("scale_offset_", None)
    est.__dict__.pop("scale_factor_", None)
    if est.scaler is None:
        return
    cls = _CLASSES[est.scaler]
    # the ranks of a model-parallel group hold the same rows: statistics over the
    # data-parallel communicator count every row once
    s = cls(comm=grid.data).fit(X)
    off, fac = s.offset_and_scale()
    if columns is not None:
        parts = grid.model.allgather((int(columns[0]), off, fac))
        d = int(columns[2])
        off, fac = np.empty(d), np.empty(d)
        for lo, o, f in parts:
            off[lo:lo + len(o)], fac[lo:lo + len(f)] = o, f
    est.scale_offset_ = np.asarray(off, dtype=np.float64)
    est.scale_factor_ = np.asarray(fac, dtype=np.float64)


def _vectors(est, width, columns):
    off, fac = est.scale_offset_, est.scale_factor_
    if columns is not None:
        return off[int(columns[0]):int(columns[1])], fac[int(columns[0]):int(columns[1])]
    if width != len(off):
        # a feature-sharded model's rows hold only the rank's columns
        shard = getattr(est, "shard_", None)
        if shard is None or shard.split != "features":
            raise DataError(f"X has {width} features, the scaler has {len(off)}")
        off, fac = off[shard.lo:shard.hi], fac[shard.lo:shard.hi]
    return off, fac


def transform(est, X, inplace=False, columns=None):
    """The model's input from raw rows: ``(X - offset) / factor``
    (:func:`mpiml.preprocessing.scale_rows`; in place with ``inplace``). Returns X itself
    when the model has no scaler. ``columns=(lo, hi, d)``: X holds only those columns (a
    feature-sharded fit)."""
    if not hasattr(est, "scale_offset_"):
        return X
    if getattr(X, "format", None) == "csr":
        off, fac = _vectors(est, X.shape[1], columns)
        if np.any(off != 0.0):
            raise DataError("this model scales its input by an offset, which would make CSR "
                            "rows dense: pass dense rows (or fit with scaler='maxabs')")
        return scale_csr_columns(X, fac, inplace=inplace)
    return scale_rows(X, *_vectors(est, X.shape[1], columns), inplace=inplace)


def scaler_arrays(est):
    """(datasets, attributes) that a model file adds for the scaler (empty without one)."""
    if not hasattr(est, "scale_offset_"):
        return {}, {}
    return ({"scaler/offset": est.scale_offset_, "scaler/scale": est.scale_factor_},
            {"scaler": est.scaler})


def restore_scaler(est, arrays, attrs, path="", n_features=None):
    """Set the scaler of an estimator loaded from a model file (none if the file has none);
    ``n_features`` (default ``est.n_features_in_``) is what the scaler must cover."""
    kind = attrs.get("scaler")
    if kind is None:
        est.scaler = None
        return
    kind = str(kind)
    if kind not in SCALERS or "scaler/offset" not in arrays or "scaler/scale" not in arrays:
        raise DataError(f"model file {path}: scaler {kind!r} without its scaler/offset and "
                        f"scaler/scale datasets")
    off = np.asarray(arrays["scaler/offset"], dtype=np.float64).ravel()
    fac = np.asarray(arrays["scaler/scale"], dtype=np.float64).ravel()
    d = est.n_features_in_ if n_features is None else n_features
    if len(off) != d or len(fac) != d or not np.all(np.isfinite(off)) or \
            not np.all(np.isfinite(fac)) or not np.all(fac > 0):
        raise DataError(f"model file {path}: the scaler needs {d} finite "
                        f"offsets and positive scales")
    est.scaler = kind
    est.scale_offset_, est.scale_factor_ = off, fac


def raw_linear(est):
    """``(coef, intercept)`` of a linear model in terms of the raw features (the scaler
    folded in: ``W / factor`` and ``b - W @ (offset / factor)``); collective over the
    model-parallel group of a sharded model."""
    coef, intercept = est.gather_coef()
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    intercept = np.asarray(intercept, dtype=np.float64).ravel()
    if not hasattr(est, "scale_offset_"):
        return coef, intercept
    W = coef / est.scale_factor_
    return W, intercept - W @ est.scale_offset_


def describe(est):
    """One line for logs: which scaler, over how many features."""
    if not hasattr(est, "scale_offset_"):
        return "no scaling"
    return f"{est.scaler} scaling of {len(est.scale_offset_)} features (stored in the model)"

