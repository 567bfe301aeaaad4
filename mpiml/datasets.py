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

The generating parameters are stored beside the data (``true_coef``,
``true_intercept`` and the root attributes).
"""
from statistics import NormalDist

import numpy as np

from .comm import get_comm
from .errors import ConfigError
from .io import check_output_path, write_rows

__all__ = ["make_data", "TASKS", "BLOCK"]

TASKS = ("regression", "binary", "multiclass", "circles")
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


def _validate(task, rows, features, classes, noise, balance, weights, dtype, test_rows):
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if rows < 1 or features < 1:
        raise ConfigError(f"--rows and --features must be >= 1 (got {rows}, {features})")
    if test_rows < 0:
        raise ConfigError("--test-rows must be >= 0")
    if task == "multiclass" and classes < 3:
        raise ConfigError("multiclass needs --classes >= 3 (use --task binary for 2)")
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
              comm=None):
    """Write a synthetic dataset (collective; any number of ranks gives the same file).

    Parameters
    ----------
    task : {"regression", "binary", "multiclass", "circles"}
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

    Examples
    --------
    >>> make_data("binary", 10000, 20, "train.h5", seed=1)   # doctest: +SKIP
    """
    c = get_comm(comm)
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
