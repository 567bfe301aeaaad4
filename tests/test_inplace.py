"""Rows reordered in place (``fit(..., copy_X=False)`` and the fit's own copies): the
kernel equals ``np.take``, and a fit that reorders in place trains exactly the model a
fit on a copy trains, at 1, 2 and 3 ranks, including a batch-size change mid-fit."""
import numpy as np
import pytest

from mpiml import MLPClassifier, SGDClassifier, chunk
from mpiml._kernels.stats import permute_rows
from mpiml.errors import ConfigError
from mpiml.model_selection import split_rows
from mpiml.parallel.data import group_layout


@pytest.mark.parametrize("n,d,dtype", [(0, 3, np.float32), (1, 4, np.float64), (9, 1, np.float32),
                                       (1000, 17, np.float64), (513, 100, np.float32)])
def test_permute_rows_equals_take(n, d, dtype):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)).astype(dtype)
    for perm in (rng.permutation(n), np.arange(n), group_layout(n, 64, 0, n)[0]):
        if perm is None:
            continue
        perm = perm.astype(np.intp)
        want = np.take(X, perm, axis=0)
        permute_rows(X.view(np.uint8), perm)
        np.testing.assert_array_equal(X, want)


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 1, 3], [0, -1, 2], [0, 1]])
def test_permute_rows_refuses_a_non_permutation(perm):
    X = np.arange(12.0).reshape(3, 4)
    with pytest.raises(ValueError):
        permute_rows(X.view(np.uint8), np.array(perm, dtype=np.intp))
    np.testing.assert_array_equal(X, np.arange(12.0).reshape(3, 4))     # untouched


@pytest.mark.parametrize("n,frac", [(0, 0.3), (1, 1.0), (50, 0.0), (501, 0.2)])
def test_split_rows_in_place_equals_boolean_indexing(n, frac):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    held = rng.random(n) < frac
    (Xk, yk), (Xo, yo) = split_rows(X.copy(), y, held)      # X's copy: reordered in place
    np.testing.assert_array_equal(Xk, X[~held])
    np.testing.assert_array_equal(Xo, X[held])
    np.testing.assert_array_equal(yk, y[~held])
    np.testing.assert_array_equal(yo, y[held])
    buf = X.copy()
    (Xk, _), (Xo, _) = split_rows(buf, y, held)
    assert n == 0 or (np.shares_memory(Xk, buf) or Xk.size == 0) and \
        (np.shares_memory(Xo, buf) or Xo.size == 0)
    # an array it may not reorder (Fortran order, read-only): copies, X untouched
    for other in (np.asfortranarray(X), X.copy()):
        other.setflags(write=other.flags.f_contiguous and n > 1)
        before = other.copy()
        (Xk, _), (Xo, _) = split_rows(other, y, held)
        np.testing.assert_array_equal(other, before)
        np.testing.assert_array_equal(Xk, X[~held])
        np.testing.assert_array_equal(Xo, X[held])


def test_split_rows_refuses_a_mask_of_another_length():
    with pytest.raises(ConfigError):
        split_rows(np.zeros((4, 2)), np.zeros(4), np.zeros(3, dtype=bool))


def _data(n=403, d=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X @ rng.normal(size=d) > 0).astype(int) + (X[:, 0] > 1)


class _BatchChange:
    """Sets the batch size after the first epoch (the fit re-lays its rows out)."""
    def __init__(self, batch):
        self.batch = batch

    def on_epoch_end(self, est, logs):
        if logs["epoch"] == 1:
            est.set_params(batch_size=self.batch)
        return False


CASES = [(SGDClassifier, {}), (SGDClassifier, {"scaler": "standard"}),
         (MLPClassifier, {"hidden_layer_sizes": (5,)})]


@pytest.mark.mpi
@pytest.mark.parametrize("cls,kw", CASES, ids=["linear", "linear-scaled", "mlp"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_fit_trains_the_same_model(comm, cls, kw, dtype):
    X, y = _data()
    lo, hi = chunk(len(X), comm.size, comm.rank)
    Xl, yl = X[lo:hi].astype(dtype), y[lo:hi]

    def fit(Xa, **more):
        return cls(**kw, tol=None, max_iter=4, batch_size=32, random_state=3,
                   comm=comm).fit(Xa, yl, callbacks=[_BatchChange(64)], **more)

    keep = Xl.copy()
    # every collective first, the (rank-local) assertions after: a rank that fails
    # an assertion never leaves the others waiting in the next fit
    ref = fit(Xl)
    untouched = np.array_equal(Xl, keep)                # copy_X=True: X untouched
    mine = Xl.copy()
    got = fit(mine, copy_X=False)
    pred_ref, pred_got = ref.predict(X), got.predict(X)
    # a fit that has to convert the dtype reorders its own copy, never the caller's X
    other = Xl.astype(np.float32 if dtype == np.float64 else np.float64)
    before = other.copy()
    cls(**kw, tol=None, max_iter=2, batch_size=32, random_state=3, comm=comm,
        dtype=dtype).fit(other, yl)
    assert untouched
    np.testing.assert_array_equal(other, before)
    for a, b in zip(ref._fitted_state(), got._fitted_state()):
        np.testing.assert_array_equal(a, b)
    assert ref.loss_curve_ == got.loss_curve_
    np.testing.assert_array_equal(pred_ref, pred_got)
    if "scaler" not in kw and mine.shape[0]:
        # X now holds the same rows in the fit's order
        order = np.lexsort(mine.T[::-1])
        np.testing.assert_array_equal(mine[order], keep[np.lexsort(keep.T[::-1])])

@pytest.mark.mpi
def test_read_only_X_is_copied_even_with_copy_X_false(comm):
    X, y = _data()
    lo, hi = chunk(len(X), comm.size, comm.rank)
    Xl, yl = X[lo:hi].copy(), y[lo:hi]
    Xl.setflags(write=False)
    kw = dict(tol=None, max_iter=2, batch_size=32, random_state=0, comm=comm)
    a = SGDClassifier(**kw).fit(Xl, yl, copy_X=False)
    b = SGDClassifier(**kw).fit(Xl.copy(), yl)
    np.testing.assert_array_equal(Xl, X[lo:hi])
    np.testing.assert_array_equal(a.coef_, b.coef_)


@pytest.mark.mpi
def test_in_place_relayout_equals_a_copy(comm):
    """One step per epoch needs no reordering, so with copy_X=True the fit still reads the
    caller's X and its later change to batch 32 re-lays the rows out into a new array
    (``np.take``); with copy_X=False it reorders X in place. Same model."""
    X, y = _data()
    lo, hi = chunk(len(X), comm.size, comm.rank)
    Xl, yl = X[lo:hi].copy(), y[lo:hi]
    kw = dict(tol=None, max_iter=4, batch_size=1000, random_state=5, comm=comm)
    a = SGDClassifier(**kw).fit(Xl, yl, callbacks=[_BatchChange(32)])
    untouched = np.array_equal(Xl, X[lo:hi])
    b = SGDClassifier(**kw).fit(Xl, yl, callbacks=[_BatchChange(32)], copy_X=False)
    assert untouched
    # the callback's change was applied (a live value; the parameter stays as given)
    assert a.live_params_["batch_size"] == b.live_params_["batch_size"] == 32
    assert a.batch_size == b.batch_size == 1000
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.loss_curve_ == b.loss_curve_
