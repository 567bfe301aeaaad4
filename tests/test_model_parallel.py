"""Model-parallel linear models (weights split by classes or by features) against the
unsharded model, at every model-parallel width that divides the world size.

The reference is the same estimator on ``MPI.COMM_SELF`` holding every row: the
data-parallel Cython engine, a different implementation of the same update.
"""
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier, SGDRegressor, chunk, load_hdf5
from mpiml._kernels import sgd as _k
from mpiml.comm import get_comm, get_grid
from mpiml.errors import ConfigError, DataError
from mpiml.models import load
from mpiml.parallel.sharded import ShardedLinearEngine


def _widths(comm):
    """Model-parallel widths to test: every divisor of the world size."""
    return [k for k in range(1, comm.size + 1) if comm.size % k == 0]


def _rows(grid, *arrays):
    """The rows of this rank's data-parallel replica."""
    lo, hi = chunk(arrays[0].shape[0], grid.D, grid.data_rank)
    return [a[lo:hi] for a in arrays]


def _softmax_data(n=211, d=7, K=10, seed=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(K, d))
    y = np.argmax(X @ W.T + rng.gumbel(size=(n, K)), axis=1) * 3 + 1     # labels 1, 4, 7, ...
    return X, y


def _regression(n=203, d=7, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X @ rng.normal(size=d) + 0.3 + 0.1 * rng.normal(size=n)


CASES = [
    # (estimator, params, data, split)
    (SGDClassifier, dict(multi_class="multinomial", momentum=0.5, penalty="elasticnet",
                         alpha=1e-3), "softmax", "classes"),
    (SGDClassifier, dict(multi_class="multinomial", penalty="l2"), "softmax", "features"),
    (SGDClassifier, dict(loss="log_loss", penalty="l1", alpha=1e-3), "binary", "features"),
    (SGDClassifier, dict(loss="hinge", momentum=0.9), "softmax", "features"),
    (SGDRegressor, dict(loss="huber", epsilon=0.5, learning_rate="invscaling"), "regression",
     "features"),
]


def _case_data(kind):
    if kind == "softmax":
        return _softmax_data()
    if kind == "binary":
        X, y = _softmax_data(K=2)
        return X, y
    return _regression()


@pytest.mark.mpi
@pytest.mark.parametrize("cls,params,kind,split", CASES)
def test_sharded_equals_unsharded(comm, cls, params, kind, split):
    X, y = _case_data(kind)
    kw = dict(learning_rate="constant", eta0=0.05, batch_size=32, max_iter=3, tol=None,
              random_state=7, dtype="float64")
    kw.update(params)
    ref = cls(**kw, comm=MPI.COMM_SELF).fit(X, y)
    ref_coef = np.atleast_2d(ref.coef_)
    for k in _widths(comm):
        grid = get_grid(comm, k)
        Xl, yl = _rows(grid, X, y)
        est = cls(**kw, model_parallel=k, shard=split).fit(Xl, yl)
        coef, intercept = est.gather_coef()
        np.testing.assert_allclose(coef, ref_coef, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-10)
        if k > 1:
            # the memory really is divided: this rank holds only its shard
            K, d = ref_coef.shape
            lo, hi = chunk(K if split == "classes" else d, k, grid.model_rank)
            want = (hi - lo, d) if split == "classes" else (K, hi - lo)
            assert est.shard_.W.shape == want
            assert not hasattr(est, "coef_")
        # prediction and scoring through the shards equal the reference's
        if cls is SGDClassifier:
            np.testing.assert_array_equal(est.predict(Xl), ref.predict(Xl))
        else:
            np.testing.assert_allclose(est.predict(Xl), ref.predict(Xl), rtol=1e-10)
        m, r = est.metrics(Xl, yl), ref.metrics(X, y)
        if grid.D == 1:
            assert m["n_samples"] == r["n_samples"]
            np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("split", ["classes", "features"])
def test_sharded_gradient_equals_engine_gradient(comm, split):
    """One gradient evaluation, before any update: loss and every gradient entry."""
    X, y = _softmax_data(n=97, d=9, K=7)
    idx = np.searchsorted(np.unique(y), y).astype(np.float64)
    rng = np.random.default_rng(1)
    w = rng.normal(size=7 * 9 + 7)
    ref = _k.Engine(np.ascontiguousarray(X), idx, 7, _k.Multinomial())
    ref.set_params(w)
    ref_loss = ref.grad(0, X.shape[0])
    grid = get_grid(comm, comm.size)
    eng = ShardedLinearEngine(X, idx, 7, 9, _k.Multinomial(), split, grid,
                              dict(eta0=0.1, alpha=0.0, l1_ratio=0.0, penalty=0, schedule=0,
                                   power_t=0.5, momentum=0.0, fit_intercept=True,
                                   optimal_init=1.0), 3)
    eng.set_state({"w": w, "velocity": np.zeros_like(w)})
    loss = eng.grad(0, X.shape[0])
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    grad = eng.shard.gather(eng.buf_arr[:eng.P], root_only=False)
    np.testing.assert_allclose(grad, ref.buf_arr[:ref.P], rtol=1e-10, atol=1e-12)


@pytest.mark.mpi
def test_hundred_thousand_classes_split_by_class(comm):
    """K = 100,000: each rank holds d x K / p weights; predictions agree with the
    gathered model's."""
    K, d, n = 100_000, 4, 300
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, d))
    y = rng.integers(0, K, size=n)
    grid = get_grid(comm, comm.size)
    est = SGDClassifier(multi_class="multinomial", learning_rate="constant", eta0=0.5,
                        batch_size=100, max_iter=1, tol=None, random_state=0,
                        model_parallel=comm.size).partial_fit(X, y, classes=np.arange(K))
    if comm.size > 1:
        lo, hi = chunk(K, comm.size, comm.rank)
        assert est.shard_.W.shape == (hi - lo, d)
        assert est.shard_.W.nbytes <= d * K * 8 / comm.size + d * 8
    coef, intercept = est.gather_coef()
    want = est.classes_[np.argmax(X @ coef.T + intercept, axis=1)]
    np.testing.assert_array_equal(est.predict(X), want)
    assert grid.K == comm.size


@pytest.mark.mpi
def test_save_sharded_load_anywhere(comm, shared_tmp):
    X, y = _softmax_data(n=150, K=5)
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    est = SGDClassifier(multi_class="multinomial", learning_rate="constant", eta0=0.1,
                        max_iter=2, tol=None, random_state=1,
                        model_parallel=comm.size).fit(Xl, yl)
    path = os.path.join(shared_tmp, "sharded.h5")
    est.save(path)
    sharded_pred = est.predict(X)
    sharded_proba = est.predict_proba(X)
    # one rank alone, the whole model
    single = load(path, comm=MPI.COMM_SELF)
    np.testing.assert_array_equal(single.predict(X), sharded_pred)
    np.testing.assert_allclose(single.predict_proba(X), sharded_proba, rtol=1e-12, atol=1e-15)
    # every width that divides the world, split by classes or by features
    for k in _widths(comm):
        for split in ("classes", "features"):
            again = load(path, comm=comm.mpi, model_parallel=k, shard=split)
            np.testing.assert_array_equal(again.predict(X), sharded_pred)


@pytest.mark.mpi
def test_feature_shard_read_from_hdf5(comm, shared_tmp):
    """load_hdf5(split_features=True) reads only this rank's columns; fit with columns=."""
    X, y = _regression(n=120, d=7)
    path = os.path.join(shared_tmp, "wide.h5")
    if comm.rank == 0:
        import h5py
        with h5py.File(path, "w") as f:
            f["X"], f["y"] = X, y
    comm.barrier()
    k = comm.size
    Xl, yl = load_hdf5(path, comm=comm, model_parallel=k, split_features=True)
    lo, hi = chunk(7, k, comm.rank % k)
    assert Xl.shape == (120 // (comm.size // k), hi - lo)
    kw = dict(learning_rate="constant", eta0=0.05, max_iter=2, tol=None, random_state=3)
    est = SGDRegressor(**kw, model_parallel=k).fit(Xl, yl, columns=(lo, hi, 7))
    ref = SGDRegressor(**kw, comm=MPI.COMM_SELF).fit(X, y)
    coef, _ = est.gather_coef()
    np.testing.assert_allclose(coef.ravel(), ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(est.predict(Xl), ref.predict(X), rtol=1e-8)


@pytest.mark.mpi
def test_checkpoint_of_a_sharded_run_resumes_unsharded(comm, shared_tmp):
    X, y = _softmax_data(n=120, K=4)
    kw = dict(multi_class="multinomial", learning_rate="constant", eta0=0.1, momentum=0.5,
              batch_size=16, tol=None, random_state=5, dtype="float64")
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    ckpt = os.path.join(shared_tmp, "ckpt")
    SGDClassifier(**kw, max_iter=2, model_parallel=comm.size, checkpoint_dir=ckpt).fit(Xl, yl)
    resumed = SGDClassifier(**kw, max_iter=4, comm=MPI.COMM_SELF).fit(X, y, resume=ckpt)
    straight = SGDClassifier(**kw, max_iter=4, comm=MPI.COMM_SELF).fit(X, y)
    np.testing.assert_allclose(resumed.coef_, straight.coef_, rtol=1e-9)


@pytest.mark.mpi
def test_bad_model_parallel_is_one_error_on_every_rank(comm):
    X, y = _softmax_data(n=40, K=3)
    with pytest.raises(ConfigError, match="needs at least"):
        SGDClassifier(model_parallel=comm.size + 1).fit(X, y)
    with pytest.raises(ConfigError, match="positive integer"):
        SGDClassifier(model_parallel=0).fit(X, y)
    if comm.size > 1:
        # a softmax over 3 classes cannot be split 4 ways; binary cannot be split by class
        grid = get_grid(comm, comm.size)
        Xl, yl = _rows(grid, X, y)
        with pytest.raises(ConfigError, match="needs a softmax"):
            SGDClassifier(model_parallel=comm.size, shard="classes").fit(Xl, (yl > 4).astype(int))
        # the ranks of one model-parallel group must pass the same rows
        lo, hi = chunk(40, comm.size, comm.rank)
        with pytest.raises(DataError, match="different rows"):
            SGDClassifier(model_parallel=comm.size).fit(X[lo:hi], y[lo:hi])


@pytest.mark.mpi(min_size=2)
def test_grid_communicators(comm):
    grid = get_grid(comm, 2) if comm.size % 2 == 0 else get_grid(comm, 1)
    assert grid.model.size == grid.K and grid.data.size == grid.D
    ranks = comm.allgather((grid.data_rank, grid.model_rank))
    assert ranks == [(r // grid.K, r % grid.K) for r in range(comm.size)]
    # the model group is K consecutive ranks
    assert grid.model.allgather(comm.rank) == grid.model_group(grid.data_rank)
    assert grid.data.allgather(comm.rank) == grid.data_group(grid.model_rank)
    assert get_comm() is comm


@pytest.mark.mpi
def test_sharded_partial_fit_continues(comm):
    X, y = _softmax_data(n=90, K=5)
    kw = dict(multi_class="multinomial", learning_rate="constant", eta0=0.1, momentum=0.5,
              batch_size=16, random_state=2, dtype="float64")
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    est = SGDClassifier(**kw, model_parallel=comm.size)
    ref = SGDClassifier(**kw, comm=MPI.COMM_SELF)
    for _ in range(3):
        est.partial_fit(Xl, yl)
        ref.partial_fit(X, y)
    np.testing.assert_allclose(est.gather_coef()[0], ref.coef_, rtol=1e-9)
    assert est.n_iter_ == ref.n_iter_ == 3
