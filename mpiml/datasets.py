"""Reproducible synthetic datasets (``mpiml make-data``).

Rows are generated in fixed blocks of :data:`BLOCK` rows, block ``i`` of split
``s`` (0 = train, 1 = test) from the random stream ``(seed, s + 1, i)``, and the
ranks share out whole blocks. So the file content depends on the arguments only,
never on the number of ranks that wrote it.

Tasks
-----
regression
    ``y = X @ coef + intercept + noise * N(0, 1)``.
binary
    ``y = 1`` where ``X @ w`` exceeds the threshold that makes a fraction
    ``balance`` of the rows positive (exactly, in expectation), then a fraction
    ``noise`` of the labels is flipped (so the best possible accuracy is
    ``1 - noise``).
circles
    Two concentric classes: ``y = 1`` where the radius of the first two features
    exceeds its median (``sqrt(2 ln 2)``), so half the rows are in each class and no
    linear model does better than chance; the other features are noise. Then a
    fraction ``noise`` of the labels is flipped (default 0 for this task).
multiclass
    ``y = argmax(X @ W.T + log(weights))``, then a fraction ``noise`` of the
    labels is replaced by a uniformly random class. ``weights`` shifts the class
    balance (approximately).
sparse-binary, sparse-multiclass
    A sparse ``X`` (a CSR group, :mod:`mpiml.sparse_io`), text-like: each row has
    ``1 + Poisson(nnz_per_row - 1)`` draws of a feature ``j`` with probability about
    proportional to ``(j + 1) ** -1.1`` (a power law: a few very common features, a long
    tail of rare ones); repeated draws add up. The value of an entry is
    ``(1 + log(count)) * (1 + log(1 + j) / 4)`` (tf-idf-like: rare features weigh
    more), and each row is scaled to unit L2 norm. Labels: ``y = (X @ w > 0)`` (binary)
    or ``argmax(X @ W.T)`` (multiclass) for a true weight vector with half its entries
    zero and the others uniform in [-1, 1] (a hash of (seed, feature, class), so it is
    never materialised at full width), then a fraction ``noise`` of the labels is
    flipped (binary) or replaced by a random class (multiclass).

The generating parameters are stored beside the data (``true_coef``,
``true_intercept`` and the root attributes).
"""
from statistics import NormalDist

import numpy as np
import scipy.sparse as sp

from .comm import get_comm
from .errors import ConfigError
from .io import check_output_path, write_rows
from .sparse_io import write_csr

__all__ = ["make_data", "TASKS", "SPARSE_TASKS", "BLOCK"]

SPARSE_TASKS = ("sparse-binary", "sparse-multiclass")
TASKS = ("regression", "binary", "multiclass", "circles") + SPARSE_TASKS
_POWER = 1.1              # sparse tasks: P(feature j) ~ (j + 1) ** -_POWER
_TRUE_COEF_MAX = 1 << 22  # sparse tasks: true_coef is stored when classes x features fits
_CIRCLE_RADIUS = float(np.sqrt(2.0 * np.log(2.0)))   # median radius of a 2-D standard normal
BLOCK = 1 << 16


def _truth(task, d, seed, classes, balance, weights):
    rng = np.random.default_rng([seed, 0])
    if task == "regression":
        return rng.standard_normal(d), np.array([rng.standard_normal()])
    if task == "circles":
        return np.zeros((1, d)), np.array([_CIRCLE_RADIUS])
    if task == "binary":
        # ||w|| = 3 so that X @ w ~ N(0, 9): classes are well separated but not trivially
        w = rng.standard_normal(d)
        w *= 3.0 / np.linalg.norm(w)
        threshold = 3.0 * NormalDist().inv_cdf(1.0 - balance)
        return w[None, :], np.array([-threshold])
    W = rng.standard_normal((classes, d)) * (3.0 / np.sqrt(d))
    return W, np.log(np.asarray(weights, dtype=np.float64))


def _block(task, split, i, n, d, seed, dtype, coef, intercept, noise, classes):
    rng = np.random.default_rng([seed, split + 1, i])
    X = rng.standard_normal((n, d), dtype=np.float64).astype(dtype)
    Xd = X.astype(np.float64)
    if task == "regression":
        y = Xd @ coef + intercept[0] + noise * rng.standard_normal(n)
        return X, y
    if task == "circles":
        y = (np.hypot(Xd[:, 0], Xd[:, 1]) > intercept[0]).astype(np.int64)
        flip = rng.random(n) < noise
        y[flip] = 1 - y[flip]
        return X, y
    margins = Xd @ coef.T + intercept
    if task == "binary":
        y = (margins[:, 0] > 0).astype(np.int64)
        flip = rng.random(n) < noise
        y[flip] = 1 - y[flip]
        return X, y
    y = np.argmax(margins, axis=1).astype(np.int64)
    swap = rng.random(n) < noise
    y[swap] = rng.integers(0, classes, size=int(swap.sum()))
    return X, y


def _mix(z):
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _sparse_weights(seed, cols, k, classes):
    """Entry ``(k, cols)`` of the true weights of a sparse task: 0 for half the features,
    else uniform in [-1, 1], a pure function of (seed, feature, class)."""
    salt = np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))     # Python ints: no overflow
    key = np.asarray(cols, dtype=np.uint64) * np.uint64(classes) + np.uint64(k) + salt
    a = _mix(key * np.uint64(2) + np.uint64(1))
    b = _mix(key * np.uint64(2) + np.uint64(2))
    unit = 2.0 ** -53
    on = (a >> np.uint64(11)).astype(np.float64) * unit < 0.5
    return np.where(on, 2.0 * (b >> np.uint64(11)).astype(np.float64) * unit - 1.0, 0.0)


def _power_law_columns(rng, size, d):
    """``size`` feature ids in [0, d) with P(j) about proportional to (j + 1) ** -_POWER:
    the inverse CDF of the density ~ x ** -_POWER on [1, d + 1), so no array of width d."""
    e = 1.0 - _POWER
    x = (1.0 - rng.random(size) * (1.0 - (d + 1.0) ** e)) ** (1.0 / e)
    return np.minimum(x.astype(np.int64) - 1, d - 1)


def _sparse_rows(rng, n, d, seed, nnz_per_row, k):
    """``n`` rows of a sparse task (CSR) and their margins ``(n, k)`` (no intercept)."""
    lengths = 1 + rng.poisson(nnz_per_row - 1, size=n)
    rows = np.repeat(np.arange(n), lengths)
    X = sp.csr_matrix((np.ones(rows.size), (rows, _power_law_columns(rng, rows.size, d))),
                      shape=(n, d))
    X.sum_duplicates()
    X.data = (1.0 + np.log(X.data)) * (1.0 + np.log1p(X.indices) / 4.0)
    rows = np.repeat(np.arange(n), np.diff(X.indptr))
    X.data /= np.sqrt(np.bincount(rows, weights=X.data ** 2, minlength=n))[rows]
    margins = np.stack([np.bincount(rows, X.data * _sparse_weights(seed, X.indices, c, k),
                                    minlength=n) for c in range(k)], axis=1)
    return X, margins


def _sparse_intercept(task, d, seed, nnz_per_row, classes):
    """Intercepts that balance the classes: fitted on a calibration sample (its own random
    stream, the same on every rank). The common features dominate every row, so without
    them one class would take most rows."""
    k = 1 if task == "sparse-binary" else classes
    _, m = _sparse_rows(np.random.default_rng([seed, 0, 1]), 8192, d, seed, nnz_per_row, k)
    if k == 1:
        return np.array([-np.median(m[:, 0])])
    b = -m.mean(axis=0)
    step = 0.5 * float(np.std(m + b)) + 1e-12
    for _ in range(200):
        freq = np.bincount(np.argmax(m + b, axis=1), minlength=k) / len(m)
        b -= step * (freq - 1.0 / k)
    return b


def _sparse_block(task, split, i, n, d, seed, dtype, nnz_per_row, noise, classes, intercept):
    """Block ``i`` of a sparse task: ``(X as CSR, y)`` (see the module docstring)."""
    rng = np.random.default_rng([seed, split + 1, i])
    X, margins = _sparse_rows(rng, n, d, seed, nnz_per_row, len(intercept))
    margins += intercept
    if task == "sparse-binary":
        y = (margins[:, 0] > 0).astype(np.int64)
        flip = rng.random(n) < noise
        y[flip] = 1 - y[flip]
    else:
        y = np.argmax(margins, axis=1).astype(np.int64)
        swap = rng.random(n) < noise
        y[swap] = rng.integers(0, classes, size=int(swap.sum()))
    return X.astype(dtype), y


def _validate(task, rows, features, classes, noise, balance, weights, dtype, test_rows):
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if rows < 1 or features < 1:
        raise ConfigError(f"--rows and --features must be >= 1 (got {rows}, {features})")
    if test_rows < 0:
        raise ConfigError("--test-rows must be >= 0")
    if task in ("multiclass", "sparse-multiclass") and classes < 3:
        raise ConfigError(f"{task} needs --classes >= 3 (use --task "
                          f"{task.replace('multiclass', 'binary')} for 2)")
    if task == "circles" and features < 2:
        raise ConfigError("circles needs --features >= 2")
    if not 0.0 <= noise < (1.0 if task != "regression" else float("inf")):
        raise ConfigError(f"--noise must be in [0, 1) for classification, >= 0 for regression; got {noise}")
    if not 0.0 < balance < 1.0:
        raise ConfigError(f"--balance must be in (0, 1), got {balance}")
    if weights is not None and (len(weights) != classes or min(weights) <= 0):
        raise ConfigError(f"--weights needs {classes} positive numbers")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ConfigError(f"--dtype must be float32 or float64, not {dtype}")


def make_data(task, rows, features, out, *, seed=0, test_out=None, test_rows=0, classes=3,
              noise=None, balance=0.5, weights=None, dtype="float32", compression=None,
              comm=None, nnz_per_row=20):
    """Write a synthetic dataset (collective; any number of ranks gives the same file).

    Parameters
    ----------
    task : {"regression", "binary", "multiclass", "circles", "sparse-binary", "sparse-multiclass"}
    rows, features : int
    out : str
        Output HDF5 file with datasets ``X`` (rows x features) and ``y``.
    seed : int
    test_out, test_rows :
        An optional second file drawn from the same model.
    classes : int
        Number of classes (multiclass).
    noise : float
        Regression: standard deviation of the additive noise (default 0.1).
        Classification: fraction of labels randomised (default 0.02).
    balance : float
        Binary: fraction of positive labels before noise.
    weights : list of float, optional
        Multiclass: relative class frequencies (approximate).
    dtype : {"float32", "float64"}
    compression : {None, "gzip"}
    nnz_per_row : int
        Sparse tasks: the mean count of feature draws per row (the stored non-zeros are
        slightly fewer: repeated draws add up).

    Examples
    --------
    >>> make_data("binary", 10000, 20, "train.h5", seed=1)   # doctest: +SKIP
    """
    c = get_comm(comm)
    if task in SPARSE_TASKS:
        return _make_sparse(c, task, rows, features, out, seed, test_out, test_rows, classes,
                            noise, dtype, compression, nnz_per_row)
    if noise is None:
        noise = {"regression": 0.1, "circles": 0.0}.get(task, 0.02)
    if task == "binary":
        classes = 2
    if task == "multiclass" and weights is None:
        weights = [1.0] * classes
    c.run(_validate, task, rows, features, classes, noise, balance, weights, dtype, test_rows)
    check_output_path(out, comm=c)
    if test_out:
        check_output_path(test_out, comm=c, inputs=(out,))
    coef, intercept = _truth(task, features, seed, classes, balance, weights)
    attrs = {"task": task, "seed": seed, "noise": noise, "generator": "mpiml make-data"}
    if task != "regression":
        attrs["n_classes"] = classes
    extra = {"true_coef": coef, "true_intercept": intercept}
    for split, (path, n) in enumerate([(out, rows), (test_out, test_rows)]):
        if not path or n <= 0:
            continue
        n_blocks = -(-n // BLOCK)
        b0, b1 = c.chunk(n_blocks)
        parts = [_block(task, split, i, min(BLOCK, n - i * BLOCK), features, seed, dtype,
                        coef, intercept, noise, classes) for i in range(b0, b1)]
        if parts:
            X = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
        else:
            X = np.zeros((0, features), dtype=dtype)
            y = np.zeros(0, dtype=np.float64 if task == "regression" else np.int64)
        write_rows(path, {"X": X, "y": y}, comm=c, attrs=attrs, compression=compression,
                   extra=extra)


def _make_sparse(c, task, rows, features, out, seed, test_out, test_rows, classes, noise,
                 dtype, compression, nnz_per_row):
    """:func:`make_data` of a sparse task: CSR files, the ranks sharing out whole blocks."""
    noise = 0.02 if noise is None else noise
    classes = 2 if task == "sparse-binary" else classes

    def check():
        _validate(task, rows, features, classes, noise, 0.5, None, dtype, test_rows)
        if nnz_per_row < 1:
            raise ConfigError(f"--nnz-per-row must be >= 1, not {nnz_per_row}")
    c.run(check)
    check_output_path(out, comm=c)
    if test_out:
        check_output_path(test_out, comm=c, inputs=(out,))
    attrs = {"task": task, "seed": seed, "noise": noise, "n_classes": classes,
             "nnz_per_row": nnz_per_row, "power": _POWER, "generator": "mpiml make-data"}
    intercept = _sparse_intercept(task, features, seed, nnz_per_row, classes)
    k = len(intercept)
    for split, (path, n) in enumerate([(out, rows), (test_out, test_rows)]):
        if not path or n <= 0:
            continue
        b0, b1 = c.chunk(-(-n // BLOCK))
        parts = [_sparse_block(task, split, i, min(BLOCK, n - i * BLOCK), features, seed, dtype,
                               nnz_per_row, noise, classes, intercept) for i in range(b0, b1)]
        X = sp.vstack([p[0] for p in parts], format="csr") if parts else \
            sp.csr_matrix((0, features), dtype=dtype)
        y = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        extra = {"true_intercept": intercept}
        if c.rank == 0 and k * features <= _TRUE_COEF_MAX:     # small widths only
            extra["true_coef"] = np.stack([_sparse_weights(seed, np.arange(features), j, k)
                                           for j in range(k)])
        write_csr(path, X, y, comm=c, attrs=attrs, compression=compression, extra=extra)
