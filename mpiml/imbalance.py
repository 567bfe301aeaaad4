"""Class imbalance across ranks: class weights from global counts, and random over- or
under-sampling that gives the same rows whatever the number of ranks.

* :func:`class_weights` -- ``"balanced"`` (``n / (K * count_k)`` with the global
  counts from one Allreduce, scikit-learn's formula), or an explicit map.
* :func:`resample` -- each global row ``i`` of class ``c`` is kept ``m_i`` times,
  ``m_i = floor(q_c) + (u_i < frac(q_c))`` with ``q_c`` the class's target over its
  global count and ``u_i`` a uniform number drawn for the global row index from the
  seed (in fixed blocks, like make-data), so the resampled data set is the same on 1,
  2 or 64 ranks; each rank repeats or drops only its own rows.
"""
import sys

import numpy as np

from .comm import get_comm
from .errors import ConfigError, DataError

__all__ = ["global_class_counts", "class_weights", "resample", "warn_missing_classes",
           "row_weights"]

_BLOCK = 1 << 16


def global_class_counts(y, classes, comm=None):
    """Rows of each class over all ranks (one Allreduce)."""
    c = get_comm(comm)
    idx = np.searchsorted(classes, y)
    counts = np.bincount(idx, minlength=len(classes)).astype(np.int64)
    c.Allreduce(counts)
    return counts


def class_weights(spec, classes, counts):
    """Per-class weights for ``spec``: None, "balanced" or {label: weight}."""
    if spec is None:
        return np.ones(len(classes))
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"class_weight must be None, 'balanced' or a map, not {spec!r}")
        with np.errstate(divide="ignore"):
            w = counts.sum() / (len(classes) * counts.astype(np.float64))
        return np.where(counts > 0, w, 0.0)
    w = np.ones(len(classes))
    for label, value in dict(spec).items():
        hit = np.flatnonzero(np.asarray(classes) == label) if np.isscalar(label) else []
        if len(hit) != 1:
            raise ConfigError(f"class_weight names label {label!r}, which is not among the classes "
                              f"{classes.tolist()[:10]}")
        if not np.isfinite(float(value)) or float(value) < 0:
            raise ConfigError(f"class_weight for {label!r} must be a number >= 0, not {value!r}")
        w[hit[0]] = float(value)
    return w


def warn_missing_classes(local_classes_by_rank, classes, rank):
    """Rank 0 warns (once) about ranks whose shard has no rows of some class."""
    if rank != 0:
        return []
    missing = []
    for r, have in enumerate(local_classes_by_rank):
        lack = np.setdiff1d(classes, np.asarray(have if have else [], dtype=classes.dtype))
        if lack.size:
            missing.append((r, lack.tolist()))
    for r, lack in missing[:8]:
        sys.stderr.write(f"mpiml: warning: rank {r}'s rows have no examples of class(es) "
                         f"{lack[:5]}{' ...' if len(lack) > 5 else ''} (fine for training: the "
                         "gradient is global; check the data order if this is unexpected)\n")
    sys.stderr.flush()
    return missing


def _uniforms(seed, offset, n):
    """The uniform numbers of global rows offset .. offset+n-1 (rank-count independent)."""
    out = np.empty(n)
    pos = 0
    while pos < n:
        g = offset + pos
        blk = g // _BLOCK
        u = np.random.default_rng([int(seed), 4242, blk]).random(_BLOCK)
        take = min(n - pos, (blk + 1) * _BLOCK - g)
        out[pos:pos + take] = u[g - blk * _BLOCK:g - blk * _BLOCK + take]
        pos += take
    return out


def resample(X, y, strategy="over", ratio=1.0, seed=0, comm=None):
    """Over- or under-sample this rank's rows (collective; see the module doc).

    ``over``: every class grows to at least ``ratio`` times the largest class;
    ``under``: every class shrinks to at most the smallest class divided by ``ratio``.
    Returns ``(X, y)`` of this rank (rows repeated or dropped in place)."""
    c = get_comm(comm)
    if strategy not in ("over", "under"):
        raise ConfigError(f"resampling strategy must be 'over' or 'under', not {strategy!r}")
    if not 0 < ratio <= 1:
        raise ConfigError(f"resampling ratio must be in (0, 1], not {ratio!r}")
    y = np.asarray(y, dtype=np.float64)
    classes = np.unique(np.concatenate([np.asarray(v, dtype=np.float64)
                                        for v in c.allgather(np.unique(y))]))
    counts = global_class_counts(y, classes, c).astype(np.float64)
    present = counts > 0
    if strategy == "over":
        target = np.maximum(counts, np.ceil(ratio * counts.max()))
    else:
        target = np.minimum(counts, np.floor(counts[present].min() / ratio))
    q = np.where(present, target / np.maximum(counts, 1), 0.0)
    offset = c.exscan(len(y))
    u = _uniforms(seed, offset, len(y))
    qi = q[np.searchsorted(classes, y)]
    times = np.floor(qi).astype(np.int64) + (u < qi - np.floor(qi))
    if getattr(X, "format", None) == "csr":       # CSR rows: scipy's row indexing
        return X[np.repeat(np.arange(X.shape[0]), times)], np.repeat(y, times)
    return np.repeat(np.asarray(X), times, axis=0), np.repeat(y, times)


def row_weights(est, c, grid, yl, sample_weight, meta):
    """Per-row weights from ``class_weight`` (global class counts) and
    ``sample_weight``, or None (collective when either is given). ``yl``: the fit's
    agreed targets (class indices for a classifier)."""
    cw_spec = getattr(est, "class_weight", None)
    if cw_spec is None and sample_weight is None:
        return None

    def check():
        if grid.K > 1:
            raise ConfigError("class_weight and sample_weight are supported for data-parallel "
                              "training (model_parallel=1)")
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != yl.shape[0]:
            raise DataError(f"sample_weight.shape == {w.shape}, expected ({yl.shape[0]},): one "
                            "weight per row")
        if not np.isfinite(w).all() or (w < 0).any():
            raise DataError("sample_weight must be finite and >= 0")
        return w

    w = c.run(check)
    if w is not None and c.allreduce(float(w.sum())) <= 0:
        raise DataError("Sample weights must contain at least one non-zero number: they sum "
                        "to zero over all ranks", ranks=range(c.size))
    sw = np.ones(yl.shape[0]) if w is None else w
    if cw_spec is not None and est._is_classifier:
        K = len(est.classes_)
        idx = yl.astype(np.intp)
        counts = global_class_counts(yl, np.arange(K, dtype=np.float64), grid.data)
        cw = c.run(class_weights, cw_spec, est.classes_, counts)
        sw = sw * cw[idx]
        est.class_weight_ = cw
        warn_missing_classes([m[3] for m in meta], est.classes_, c.rank)
    return sw
