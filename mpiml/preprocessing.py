"""Distributed feature scaling: statistics of all ranks' rows, from one Allreduce.

Each rank summarises its rows as (count, a shift row, mean - shift, M2 = sum of squared
deviations from the mean, min, max) with a corrected two-pass algorithm over blocks of
rows (the passes are Cython kernels, ``csrc/stats.pyx``); the summaries are merged
pairwise in rank order by a user-defined, non-commutative MPI reduction (the
parallel-variance merge: ``M2 = M2a + M2b + delta^2 na nb / n``), so the result does
not lose precision on features with a large mean and a tiny variance, as sums of
squares would, and is the same on every rank.
"""
import numpy as np
from mpi4py import MPI
from sklearn.base import OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import validate_data

from ._kernels import stats as _k
from .comm import get_comm
from .errors import ConfigError, DataError, NotFittedError
from .estimator import BaseEstimator, check_finite_outputs

_BLOCK_VALUES = 1 << 20        # values per block of rows in the local passes


def _blocks(X):
    """C-contiguous float32/float64 blocks of rows (a copy only for a block that is
    not already so)."""
    rows = max(1, _BLOCK_VALUES // max(1, X.shape[1]))
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    for s in range(0, X.shape[0], rows):
        yield np.ascontiguousarray(X[s:s + rows], dtype=dtype)


# packed summary: [n, shift(d), mean - shift(d), M2(d), min(d), max(d)]; the shift is a
# row of the data (exact), so the difference of two ranks' means is computed from the
# shifts' exact difference plus small residuals, not from two rounded means near 1e8
def _parts(buf, d):
    return (buf[1 + k * d:1 + (k + 1) * d] for k in range(5))


def local_summary(X):
    """(n, shift, mean - shift, M2, min, max) of the local rows, packed in one vector."""
    n, d = X.shape
    buf = np.zeros(1 + 5 * d)
    buf[0] = n
    shift, res, m2, lo, hi = _parts(buf, d)
    lo[:], hi[:] = np.inf, -np.inf
    if n == 0:
        return buf
    if X.dtype.kind not in "fiub":
        raise DataError(f"X has type {X.dtype}; scaling needs real numbers")
    shift[:] = X[0]
    total = np.zeros(d)
    # two streaming passes in the kernels (float64 sums, no temporaries)
    for b in _blocks(X):
        _k.shifted_sums(b, shift, total, lo, hi)
    res[:] = total / n
    sq = np.zeros(d)
    corr = np.zeros(d)
    for b in _blocks(X):
        _k.deviation_sums(b, shift, res, corr, sq)
    # the correction term removes the first-order error of the rounded mean
    res += corr / n
    m2[:] = np.maximum(sq - corr * corr / n, 0.0)
    return buf


def merge_summaries(a, b):
    """Merge packed summary ``a`` (lower ranks) into ``b`` in place."""
    d = (len(b) - 1) // 5
    na, nb = a[0], b[0]
    if na == 0:
        return b
    if nb == 0:
        b[:] = a
        return b
    n = na + nb
    sa, ra, m2a, loa, hia = _parts(a, d)
    sb, rb, m2b, lob, hib = _parts(b, d)
    delta = (sb - sa) + (rb - ra)            # mean_b - mean_a
    m2b += m2a + delta * delta * (na * nb / n)
    rb[:] = ra + delta * (nb / n)            # the merged mean, relative to a's shift
    sb[:] = sa
    np.minimum(lob, loa, out=lob)
    np.maximum(hib, hia, out=hib)
    b[0] = n
    return b


def _op_merge(inbuf, inoutbuf, datatype):
    a = np.frombuffer(inbuf, dtype=np.float64)
    b = np.frombuffer(inoutbuf, dtype=np.float64)
    merge_summaries(a, b)


_MERGE_OP = None


def _merge_op():
    global _MERGE_OP
    if _MERGE_OP is None:
        _MERGE_OP = MPI.Op.Create(_op_merge, commute=False)
    return _MERGE_OP


def scale_rows(X, offset, scale, inplace=False):
    """``(X - offset) / scale`` per column, computed in float64 and rounded once to X's
    type (float64 unless X is float32 or float64), in one kernel pass. With ``inplace``
    X (then a C-contiguous float32/float64 array) is overwritten and returned."""
    off = np.ascontiguousarray(offset, dtype=np.float64)
    fac = np.ascontiguousarray(scale, dtype=np.float64)
    if not inplace:
        X = np.array(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64,
                     order="C")
    bad = _k.scale_rows(X, off, fac)
    if bad >= 0:
        raise DataError(f"Input X contains NaN or infinity (local row {bad})")
    return X


def global_summary(X, comm=None):
    """Merged (n, mean, var, min, max) of every rank's rows (collective)."""
    c = get_comm(comm)
    X = np.asarray(X)
    shapes = c.allgather(X.shape[1] if X.ndim == 2 else None)
    if any(s is None for s in shapes) or len(set(shapes)) != 1:
        raise DataError(f"every rank needs a 2-D X with the same number of columns; got "
                        f"{shapes}", ranks=[r for r, s in enumerate(shapes) if s != shapes[0]])
    buf = c.run(local_summary, X)
    if c.size > 1:
        out = np.empty_like(buf)
        c.mpi.Allreduce(buf, out, op=_merge_op())
        buf = out
    n = int(buf[0])
    if n == 0:
        raise DataError("Found array with 0 sample(s) on every rank while a minimum of 1 is "
                        "required: no rows to scale", ranks=range(c.size))
    shift, res, m2, lo, hi = _parts(buf, shapes[0])
    # a NaN or infinity in any row reaches the merged statistics: the check is free
    if not (np.isfinite(m2).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise DataError("Input X contains NaN or infinity (on some rank): the scaler needs "
                        "finite values", ranks=range(c.size))
    return n, shift + res, m2 / n, lo.copy(), hi.copy()


def _constant(var, mean, n):
    """Features whose variance is within rounding of zero (scaled by 1, not 1/std)."""
    eps = np.finfo(np.float64).eps
    return var <= n * eps * var + (n * eps * mean) ** 2


class StandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """``(x - mean) / std`` with the global mean and (population) variance.

    ``fit`` is collective: every rank passes its own rows, and every rank ends with the
    statistics of all of them (one Allreduce). ``transform`` is local.

    Parameters
    ----------
    with_mean, with_std : bool
        Centre / scale (as scikit-learn).
    comm : mpi4py communicator or mpiml Comm, optional

    Attributes
    ----------
    mean_, var_, scale_ : ndarray (n_features,)
        As scikit-learn's; constant features get ``scale_ = 1``.
    n_samples_seen_, n_features_in_ : int

    Examples
    --------
    >>> from mpiml import load_hdf5                                 # doctest: +SKIP
    >>> from mpiml.preprocessing import StandardScaler              # doctest: +SKIP
    >>> X, y = load_hdf5("train.h5")          # this rank's rows     # doctest: +SKIP
    >>> Z = StandardScaler().fit_transform(X) # global statistics    # doctest: +SKIP

    To keep the scaling with a model (saved in its file, applied by predict), pass
    ``scaler="standard"`` to the estimator instead.
    """

    kind = "standard"

    def __init__(self, *, with_mean=True, with_std=True, comm=None):
        self.with_mean = with_mean
        self.with_std = with_std
        self.comm = comm

    def fit(self, X, y=None):
        """Global statistics of every rank's rows (collective)."""
        n, mean, var, _, _ = global_summary(self._checked_fit_X(X), self.comm)
        self.n_samples_seen_, self.n_features_in_ = n, len(mean)
        self.mean_ = mean if self.with_mean else None
        self.var_ = var if self.with_std else None
        if self.with_std:
            scale = np.sqrt(var)
            scale[_constant(var, mean, n)] = 1.0
            self.scale_ = scale
        else:
            self.scale_ = None
        return self

    def _checked_fit_X(self, X):
        """This rank's rows, checked (and agreed) as scikit-learn's ``validate_data``
        does; ``n_features_in_`` / ``feature_names_in_`` recorded."""
        c = get_comm(self.comm)
        return c.run(validate_data, self, X, reset=True, accept_sparse=False,
                     dtype=(np.float64, np.float32, np.float16), ensure_all_finite=False,
                     ensure_min_samples=0)

    def _check(self, X):
        if not hasattr(self, "n_samples_seen_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")
        return validate_data(self, X, reset=False, accept_sparse=False,
                             dtype=(np.float64, np.float32, np.float16), ensure_all_finite=False,
                             ensure_min_samples=0)

    def offset_and_scale(self):
        """(offset, scale) with ``transform(X) = (X - offset) / scale``."""
        d = self.n_features_in_
        return (self.mean_ if self.mean_ is not None else np.zeros(d),
                self.scale_ if self.scale_ is not None else np.ones(d))

    def transform(self, X):
        X = self._check(X)
        out = scale_rows(X, *self.offset_and_scale())
        # another floating type (float16) keeps its type, as scikit-learn's does
        return out.astype(X.dtype, copy=False) if X.dtype.kind == "f" else out

    def inverse_transform(self, X):
        X = self._check(X)
        off, scale = self.offset_and_scale()
        return check_finite_outputs(X * scale + off)

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)


class MinMaxScaler(StandardScaler):
    """Scale each feature to ``feature_range`` with the global min and max.

    ``fit`` is collective (one Allreduce, shared with :class:`StandardScaler`'s
    statistics); ``transform`` is local.

    Parameters
    ----------
    feature_range : (min, max)
    comm : mpi4py communicator or mpiml Comm, optional

    Attributes
    ----------
    data_min_, data_max_, data_range_, scale_, min_ : ndarray (n_features,)
        As scikit-learn's: ``transform(X) = X * scale_ + min_``.
    n_samples_seen_, n_features_in_ : int

    Examples
    --------
    >>> from mpiml.preprocessing import MinMaxScaler                # doctest: +SKIP
    >>> Z = MinMaxScaler((-1, 1)).fit(X).transform(X)               # doctest: +SKIP
    """

    kind = "minmax"

    def __init__(self, feature_range=(0.0, 1.0), *, comm=None):
        self.feature_range = feature_range
        self.comm = comm

    def fit(self, X, y=None):
        lo_t, hi_t = (float(v) for v in self.feature_range)
        if not lo_t < hi_t:
            raise ConfigError(f"feature_range must be (min, max) with min < max, got "
                              f"{self.feature_range}")
        n, _, _, lo, hi = global_summary(self._checked_fit_X(X), self.comm)
        self.n_samples_seen_, self.n_features_in_ = n, len(lo)
        self.data_min_, self.data_max_ = lo, hi
        self.data_range_ = hi - lo
        rng = np.where(self.data_range_ == 0, 1.0, self.data_range_)
        self.scale_ = (hi_t - lo_t) / rng
        self.min_ = lo_t - lo * self.scale_
        return self

    def offset_and_scale(self):
        # X * s + m == (X - (-m / s)) / (1 / s)
        return -self.min_ / self.scale_, 1.0 / self.scale_

    def transform(self, X):
        X = self._check(X)
        dtype = X.dtype if X.dtype.kind == "f" else np.float64
        return check_finite_outputs((X * self.scale_ + self.min_).astype(dtype, copy=False))

    def inverse_transform(self, X):
        X = self._check(X)
        return check_finite_outputs((X - self.min_) / self.scale_)


def scale_csr_columns(X, scale, inplace=False):
    """CSR rows divided column by column by ``scale`` (the values only: the sparsity is
    kept; computed in float64, rounded once to the values' type). ``inplace``: X's value
    array is overwritten (else a new matrix sharing X's indices and pointers)."""
    import scipy.sparse as sp
    nz = X.indptr[-1] if X.shape[0] else 0
    vals = X.data[:nz] / np.asarray(scale, dtype=np.float64)[X.indices[:nz]]
    if not np.all(np.isfinite(vals)):
        row = int(np.searchsorted(X.indptr, int(np.argmin(np.isfinite(vals))), side="right")) - 1
        raise DataError(f"Input X contains NaN or infinity (local row {row})")
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    if inplace and X.data.dtype == dtype:
        X.data[:nz] = vals
        return X
    return sp.csr_matrix((vals.astype(dtype), X.indices[:nz], X.indptr), shape=X.shape)


class MaxAbsScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """``x / max|x|`` per feature with the global maximum absolute value: no shift, so
    sparse (CSR) rows stay sparse.

    ``fit`` is collective (one Allreduce MAX over every rank's rows, dense or CSR);
    ``transform`` is local and keeps a CSR input CSR. Constant-zero features get
    ``scale_ = 1``.

    Attributes
    ----------
    max_abs_, scale_ : ndarray (n_features,)
        As scikit-learn's.
    n_samples_seen_, n_features_in_ : int
    """

    kind = "maxabs"

    def __init__(self, *, comm=None):
        self.comm = comm

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def fit(self, X, y=None):
        """Global maximum absolute value of each feature (collective)."""
        c = get_comm(self.comm)
        X = c.run(validate_data, self, X, reset=True, accept_sparse="csr",
                  dtype=(np.float64, np.float32), ensure_all_finite=False, ensure_min_samples=0)
        d = X.shape[1]

        def local():
            if getattr(X, "format", None) == "csr":
                nz = X.indptr[-1] if X.shape[0] else 0
                m = np.zeros(d)
                np.maximum.at(m, X.indices[:nz], np.abs(X.data[:nz]).astype(np.float64))
            else:
                m = np.abs(X).max(axis=0).astype(np.float64) if X.shape[0] else np.zeros(d)
            if not np.all(np.isfinite(m)):
                raise DataError("Input X contains NaN or infinity")
            return m

        m = c.run(local)
        buf = np.ascontiguousarray(m)
        c.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
        n = c.allreduce(float(X.shape[0]))
        if n == 0:
            raise DataError("Found array with 0 sample(s) on every rank while a minimum of 1 is "
                            "required by MaxAbsScaler")
        self.max_abs_ = buf[:d]
        self.scale_ = np.where(self.max_abs_ == 0.0, 1.0, self.max_abs_)
        self.n_samples_seen_, self.n_features_in_ = int(n), d
        return self

    def _check(self, X):
        if not hasattr(self, "scale_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")
        return validate_data(self, X, reset=False, accept_sparse="csr",
                             dtype=(np.float64, np.float32), ensure_all_finite=False,
                             ensure_min_samples=0)

    def offset_and_scale(self):
        return np.zeros(self.n_features_in_), self.scale_

    def transform(self, X):
        X = self._check(X)
        if getattr(X, "format", None) == "csr":
            return scale_csr_columns(X, self.scale_)
        return scale_rows(X, *self.offset_and_scale())

    def inverse_transform(self, X):
        X = self._check(X)
        if getattr(X, "format", None) == "csr":
            return scale_csr_columns(X, 1.0 / self.scale_)
        return check_finite_outputs(X * self.scale_)
