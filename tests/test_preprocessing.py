"""Distributed scalers against scikit-learn on the gathered rows, and rank-count
independent splits (run at 1, 2 and 3 ranks by tests/run_suite.py)."""
import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler as SkMinMax
from sklearn.preprocessing import StandardScaler as SkStandard

from mpiml.comm import chunk
from mpiml.errors import DataError
from mpiml.model_selection import KFold, fold_of, permute, validation_mask
from mpiml.preprocessing import MinMaxScaler, StandardScaler, merge_summaries, local_summary


def _data(n=1003, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)) * [1.0, 1e-3, 50.0, 1.0, 0.0]
    X[:, 1] += 1e8                      # mean 1e8, standard deviation 1e-3
    X[:, 3] = rng.integers(0, 3, n)     # a discrete feature
    X[:, 4] = 7.0                       # a constant feature
    return X


def _mine(comm, X):
    lo, hi = chunk(len(X), comm.size, comm.rank)
    return X[lo:hi]


def _close(a, b, tol=1e-12):
    """Equal to ``tol`` relative to the size of the values (absolute for values below 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.all(np.abs(a - b) <= tol * np.maximum(1.0, np.abs(b))), (a, b)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1003, 2])
def test_standard_scaler_matches_sklearn(comm, n):
    X = _data(n)
    mine = StandardScaler(comm=comm).fit(_mine(comm, X))
    ref = SkStandard().fit(X)
    assert mine.n_samples_seen_ == n
    _close(mine.mean_, ref.mean_)
    _close(mine.var_, ref.var_)
    _close(mine.scale_, ref.scale_)
    # the tiny variance of the 1e8 feature relative to itself, not to 1e8
    assert abs(mine.var_[1] / ref.var_[1] - 1) < 1e-6 if n > 2 else True
    # transform: the 1e8 feature's (x - mean) / 1e-3 magnifies one ulp of the mean
    # (1.5e-8) to 1.5e-5, so it is compared to that bound
    if len(_mine(comm, X)) == 0:
        return                       # scikit-learn refuses to transform no rows
    got, want = mine.transform(_mine(comm, X)), ref.transform(_mine(comm, X))
    keep = [0, 2, 3, 4]
    _close(got[:, keep], want[:, keep], 1e-12)
    assert np.all(np.abs(got[:, 1] - want[:, 1]) <= 8 * np.spacing(1e8) / ref.scale_[1])


@pytest.mark.mpi
def test_minmax_scaler_matches_sklearn(comm):
    X = _data()
    for rng in [(0.0, 1.0), (-1.0, 2.0)]:
        mine = MinMaxScaler(rng, comm=comm).fit(_mine(comm, X))
        ref = SkMinMax(feature_range=rng).fit(X)
        for a in ("data_min_", "data_max_", "data_range_", "scale_", "min_"):
            _close(getattr(mine, a), getattr(ref, a))
        _close(mine.transform(_mine(comm, X)), ref.transform(_mine(comm, X)))
        _close(mine.inverse_transform(mine.transform(_mine(comm, X))), _mine(comm, X), 1e-9)


@pytest.mark.mpi
def test_scaler_with_empty_ranks(comm):
    """Fewer rows than ranks: the empty ranks' summaries merge as nothing."""
    X = _data(1)
    mine = StandardScaler(comm=comm).fit(_mine(comm, X))
    _close(mine.mean_, X[0])
    assert np.all(mine.scale_ == 1.0)


@pytest.mark.mpi
def test_scaler_column_mismatch_is_agreed(comm):
    X = _data(30)
    local = _mine(comm, X)
    if comm.rank == comm.size - 1 and comm.size > 1:
        local = local[:, :3]
    if comm.size > 1:
        with pytest.raises(DataError, match="same number of columns"):
            StandardScaler(comm=comm).fit(local)


def test_merge_is_the_two_pass_result():
    X = _data(500)
    a, b = local_summary(X[:123]), local_summary(X[123:])
    whole = local_summary(X)
    merged = merge_summaries(a, b.copy())
    _close(merged[0], whole[0])
    d = X.shape[1]
    # the same shift (row 0) on both sides: the packed parts compare directly
    _close(merged[1:1 + 2 * d], whole[1:1 + 2 * d])
    _close(merged[1 + 2 * d:1 + 3 * d] / 500, whole[1 + 2 * d:1 + 3 * d] / 500)
    _close(merged[1 + 3 * d:], whole[1 + 3 * d:])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 4097])
def test_permute_is_a_permutation(n):
    assert sorted(permute(np.arange(n), n, seed=5)) == list(range(n))


def test_permute_depends_on_the_seed():
    assert not np.array_equal(permute(np.arange(1000), 1000, 0), permute(np.arange(1000), 1000, 1))


@pytest.mark.mpi
@pytest.mark.parametrize("n,k", [(1000, 5), (7, 3), (10, 10)])
def test_kfold_is_rank_count_independent(comm, n, k):
    lo, hi = chunk(n, comm.size, comm.rank)
    folds = np.concatenate(comm.allgather(fold_of(n, lo, hi - lo, k, seed=11)))
    serial = fold_of(n, 0, n, k, seed=11)
    assert np.array_equal(folds, serial)
    # every row in exactly one validation fold; fold sizes differ by at most one
    sizes = np.bincount(folds, minlength=k)
    assert sizes.sum() == n and sizes.max() - sizes.min() <= 1
    X = np.zeros((hi - lo, 2))
    seen = np.zeros(hi - lo, dtype=int)
    for train, val in KFold(k, random_state=11).split_local(X, comm):
        assert not np.any(train & val) and np.all(train | val)
        seen += val
    assert np.all(seen == 1)


@pytest.mark.mpi
def test_validation_split_is_rank_count_independent(comm):
    n = 1001
    lo, hi = chunk(n, comm.size, comm.rank)
    mask = np.concatenate(comm.allgather(validation_mask(n, lo, hi - lo, 0.2, seed=3)))
    assert np.array_equal(mask, validation_mask(n, 0, n, 0.2, seed=3))
    assert mask.sum() == 200
