"""Splits of the distributed rows that move no data and do not depend on the rank count.

Every global row index ``i`` of ``0 .. n-1`` is mapped by a keyed pseudo-random
permutation ``pi`` of ``0 .. n-1`` (a 4-round Feistel network on the next even power of
two with cycle walking). ``pi`` is computed for a rank's own indices only, so a rank
touches only its own rows and needs no memory for the other ranks'; the same seed gives
the same assignment at any rank count. Row ``i`` is in validation fold
``pi(i) * k // n`` (fold sizes differ by at most one, as in a shuffled ``KFold``), and in
the validation part of a train/validation split when ``pi(i) < n_val``.
"""
import numpy as np

from .errors import ConfigError

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x):
    """A 64-bit finaliser (bijective avalanche) on a uint64 array."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def permute(index, n, seed):
    """``pi(index)`` for global row indices ``index`` (any subset of ``0 .. n-1``)."""
    index = np.asarray(index, dtype=np.uint64)
    if n <= 1:
        return index.astype(np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [_mix(np.array([int(seed) * 4 + r + 1], dtype=np.uint64))[0] for r in range(4)]
    out = index.copy()
    todo = np.ones(len(out), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = out[todo]
            left, right = x >> np.uint64(half), x & mask
            for k in keys:
                left, right = right, left ^ (_mix(right ^ k) & mask)
            x = (left << np.uint64(half)) | right
            out[todo] = x
            todo[todo] = x >= np.uint64(n)          # outside 0..n-1: walk on
    return out.astype(np.int64)


def _check(n_global, offset, n_local):
    if not 0 <= offset <= offset + n_local <= n_global:
        raise ConfigError(f"rows {offset}..{offset + n_local} are not inside 0..{n_global}")


def fold_of(n_global, offset, n_local, n_splits, seed=0):
    """The validation fold (0 .. n_splits-1) of local rows ``offset .. offset+n_local-1``."""
    if int(n_splits) < 2 or int(n_splits) > n_global:
        raise ConfigError(f"n_splits must be between 2 and the number of rows ({n_global}), "
                          f"not {n_splits}")
    _check(n_global, offset, n_local)
    pi = permute(np.arange(offset, offset + n_local), n_global, seed)
    return (pi * int(n_splits)) // n_global


def validation_mask(n_global, offset, n_local, fraction, seed=0):
    """True for the local rows in the validation part of a train/validation split
    (``round(fraction * n_global)`` rows in all)."""
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"validation fraction must be between 0 and 1, not {fraction}")
    _check(n_global, offset, n_local)
    n_val = int(round(float(fraction) * n_global))
    return permute(np.arange(offset, offset + n_local), n_global, seed) < n_val


def split_order(held_out):
    """The row order :func:`split_rows` puts ``X`` in: the rows where ``held_out`` is
    False, then the others, each in their original order (``np.argsort`` of it undoes it)."""
    held_out = np.asarray(held_out, dtype=bool)
    return np.concatenate([np.flatnonzero(~held_out), np.flatnonzero(held_out)]).astype(np.intp)


def can_reorder(X):
    """Whether :func:`split_rows` reorders ``X`` in place (else it copies)."""
    return (isinstance(X, np.ndarray) and X.ndim == 2 and X.flags.c_contiguous
            and X.flags.writeable)


def split_rows(X, y, held_out):
    """``((X_kept, y_kept), (X_out, y_out))``: the rows where ``held_out`` is False and
    those where it is True, each in their original order.

    When ``X`` is a writeable C-contiguous array, its rows are reordered in place (kept
    rows first) and both parts are views of it: no second copy of the data in memory.
    ``X`` is then left in that order. Otherwise the parts are copies (boolean indexing).
    Local: no communication."""
    held_out = np.asarray(held_out, dtype=bool)
    y = np.asarray(y)
    if held_out.shape != (len(y),) or X.shape[0] != len(y):
        raise ConfigError(f"split_rows: {X.shape[0]} rows, {len(y)} targets and a mask of "
                          f"{held_out.shape[0]}")
    if not can_reorder(X):
        return (X[~held_out], y[~held_out]), (X[held_out], y[held_out])
    from ._kernels.stats import permute_rows

    order = split_order(held_out)
    permute_rows(X.view(np.uint8), order)
    k = len(y) - int(held_out.sum())
    y = y[order]
    return (X[:k], y[:k]), (X[k:], y[k:])


class KFold:
    """k-fold splitting of distributed rows by global row index.

    Row ``i`` (of all ranks' rows, in rank order) is in validation fold
    ``pi(i) * n_splits // n`` for a keyed permutation ``pi``: the same assignment at any
    rank count, and no row moves.

    Parameters
    ----------
    n_splits : int
    random_state : int
        The permutation's key.

    Examples
    --------
    >>> from mpiml.model_selection import KFold                     # doctest: +SKIP
    >>> for train, val in KFold(5).split_local(X):    # masks of this rank's rows  # doctest: +SKIP
    ...     est.fit(X[train], y[train]); print(est.score(X[val], y[val]))
    """

    def __init__(self, n_splits=5, *, random_state=0):
        self.n_splits = n_splits
        self.random_state = random_state

    def split(self, n_global, offset, n_local):
        """``(train_mask, val_mask)`` of local rows ``offset .. offset+n_local-1`` (of
        ``n_global``) for each fold (local: no communication)."""
        folds = fold_of(n_global, offset, n_local, self.n_splits, self.random_state)
        for k in range(int(self.n_splits)):
            val = folds == k
            yield ~val, val

    def split_local(self, X, comm=None):
        """Splits of this rank's rows of a distributed ``X`` (collective: one exscan)."""
        from .comm import get_comm

        c = get_comm(comm)
        n_local = int(np.asarray(X).shape[0])
        offset = c.exscan(n_local)
        n_global = c.allreduce(n_local)
        return self.split(n_global, offset, n_local)
