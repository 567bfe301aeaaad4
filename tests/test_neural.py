"""MLPs and the tensor-parallel layers under them, at any rank count.

References: plain numpy on the full matrices (layers), the same estimator on
``MPI.COMM_SELF`` holding every row (sharded and data-parallel training), and
scikit-learn's MLPClassifier (accuracy on a non-linear task).
"""
import os
import warnings

import numpy as np
import pytest
from mpi4py import MPI

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, chunk, get_grid
from mpiml.datasets import _CIRCLE_RADIUS
from mpiml.errors import ConfigError
from mpiml.models import load
from mpiml.parallel.model import (ColumnParallelLinear, RowParallelLinear, copy_to, gather_from,
                                  master_uniform, reduce_from, scatter_to)


def _widths(comm):
    return [k for k in range(1, comm.size + 1) if comm.size % k == 0]


def _rows(grid, *arrays):
    lo, hi = chunk(arrays[0].shape[0], grid.D, grid.data_rank)
    return [a[lo:hi] for a in arrays]


def _circles(n, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (np.hypot(X[:, 0], X[:, 1]) > _CIRCLE_RADIUS).astype(int)


# ------------------------------------------------------------------------------ layers
@pytest.mark.mpi
def test_regions_forward_and_backward(comm):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7))                 # 7 columns: uneven over 2 or 3 ranks
    lo, hi = chunk(7, comm.size, comm.rank)
    np.testing.assert_array_equal(scatter_to(x, comm), x[:, lo:hi])
    np.testing.assert_array_equal(gather_from(x[:, lo:hi].copy(), comm), x)
    np.testing.assert_array_equal(scatter_to.backward(x[:, lo:hi].copy(), comm), x)
    np.testing.assert_array_equal(gather_from.backward(x, comm), x[:, lo:hi])
    mine = x * (comm.rank + 1)
    total = x * sum(range(1, comm.size + 1))
    np.testing.assert_allclose(reduce_from(mine.copy(), comm), total)
    np.testing.assert_allclose(copy_to.backward(mine.copy(), comm), total)
    assert copy_to(x, comm) is x and reduce_from.backward(x, comm) is x


@pytest.mark.mpi
def test_column_then_row_parallel_equal_the_full_matrices(comm):
    rng = np.random.default_rng(4)
    n_in, n_mid, n_out = 6, 7, 5
    x = rng.normal(size=(9, n_in))
    col = ColumnParallelLinear(n_in, n_mid, comm)
    row = RowParallelLinear(n_mid, n_out, comm)
    pc, gc = np.zeros(col.n_params), np.zeros(col.n_params)
    pr, gr = np.zeros(row.n_params), np.zeros(row.n_params)
    col.bind(pc, gc).init(11, 0, 0.5)
    row.bind(pr, gr).init(11, 1, 0.5)
    W1 = master_uniform(11, (0, 0), (n_in, n_mid), 0.5)
    b1 = master_uniform(11, (0, 1), (1, n_mid), 0.5)[0]
    W2 = master_uniform(11, (1, 0), (n_mid, n_out), 0.5)
    b2 = master_uniform(11, (1, 1), (1, n_out), 0.5)[0]
    lo, hi = chunk(n_mid, comm.size, comm.rank)
    assert col.W.shape == (n_in, hi - lo) and row.W.shape == (hi - lo, n_out)
    h = np.tanh(col.forward(x))
    out = row.forward(h)
    H = np.tanh(x @ W1 + b1)
    np.testing.assert_allclose(out, H @ W2 + b2, rtol=1e-12)
    gy = rng.normal(size=out.shape)
    gh = row.backward(gy) * (1 - h * h)
    gx = col.backward(gh)
    GH = gy @ W2.T * (1 - H * H)
    np.testing.assert_allclose(row.dW, (H.T @ gy)[lo:hi], rtol=1e-12)
    np.testing.assert_allclose(row.db, gy.sum(0), rtol=1e-12)
    np.testing.assert_allclose(col.dW, (x.T @ GH)[:, lo:hi], rtol=1e-12)
    np.testing.assert_allclose(col.db, GH.sum(0)[lo:hi], rtol=1e-12)
    np.testing.assert_allclose(gx, GH @ W1.T, rtol=1e-12)


# ------------------------------------------------------------------------------ MLPs
ARCHS = [((7, 5), "relu"), ((7, 5, 6), "tanh")]     # odd and even numbers of layers


@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("hidden,activation", ARCHS)
def test_sharded_mlp_equals_unsharded(comm, solver, hidden, activation):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 6))
    y = np.argmax(np.tanh(X[:, :3]) @ rng.normal(size=(3, 4)), axis=1)      # 4 classes
    kw = dict(hidden_layer_sizes=hidden, activation=activation, solver=solver,
              learning_rate_init=0.05, momentum=0.5, alpha=1e-3, batch_size=32, max_iter=3,
              tol=None, random_state=2, dtype="float64")
    ref = MLPClassifier(**kw, comm=MPI.COMM_SELF).fit(X, y)
    for k in _widths(comm):
        grid = get_grid(comm, k)
        Xl, yl = _rows(grid, X, y)
        est = MLPClassifier(**kw, model_parallel=k).fit(Xl, yl)
        coefs, intercepts = est.gather_params()
        for a, b in zip(coefs + intercepts, ref.coefs_ + ref.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-10)
        np.testing.assert_array_equal(est.predict(Xl), ref.predict(Xl))
        if k > 1:
            # the memory really is divided: split layers hold their slice only
            for i, layer in enumerate(est._net.layers):
                n_layers = len(est._net.layers)
                if i % 2 == 0 and i + 1 < n_layers:
                    lo, hi = chunk(layer.n_out, k, grid.model_rank)
                    assert layer.W.shape == (layer.n_in, hi - lo)
                elif i % 2 == 1:
                    lo, hi = chunk(layer.n_in, k, grid.model_rank)
                    assert layer.W.shape == (hi - lo, layer.n_out)
                else:
                    assert layer.W.shape == (layer.n_in, layer.n_out)
            assert not hasattr(est, "coefs_")


@pytest.mark.mpi
def test_sharded_mlp_regressor_equals_unsharded(comm):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(120, 5))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    kw = dict(hidden_layer_sizes=(9,), solver="adam", learning_rate_init=0.02, batch_size=16,
              max_iter=4, tol=None, random_state=3, dtype="float64")
    ref = MLPRegressor(**kw, comm=MPI.COMM_SELF).fit(X, y)
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    est = MLPRegressor(**kw, model_parallel=comm.size).fit(Xl, yl)
    np.testing.assert_allclose(est.predict(Xl), ref.predict(Xl), rtol=1e-8)
    np.testing.assert_allclose(est.score(Xl, yl), ref.score(X, y), rtol=1e-8)


@pytest.mark.mpi
def test_mlp_learns_circles_where_a_linear_model_cannot(comm):
    from sklearn.neural_network import MLPClassifier as SkMLP
    X, y = _circles(3000, seed=1)
    Xt, yt = _circles(2000, seed=2)
    lo, hi = comm.chunk(len(X))
    tlo, thi = comm.chunk(len(Xt))
    kw = dict(hidden_layer_sizes=(32, 32), solver="adam", learning_rate_init=0.01,
              batch_size=64, max_iter=30, random_state=0, alpha=1e-4)
    mlp = MLPClassifier(**kw, tol=None).fit(X[lo:hi], y[lo:hi])
    acc = mlp.score(Xt[tlo:thi], yt[tlo:thi])
    lin = SGDClassifier(learning_rate="constant", eta0=0.05, max_iter=10, tol=None,
                        random_state=0).fit(X[lo:hi], y[lo:hi])
    lin_acc = lin.score(Xt[tlo:thi], yt[tlo:thi])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkMLP(**kw, tol=0.0, n_iter_no_change=10 ** 6).fit(X, y).score(Xt, yt)
    assert acc >= 0.95 and lin_acc <= 0.6, (acc, lin_acc)
    assert abs(acc - sk) <= 0.02, (acc, sk)


@pytest.mark.mpi
def test_save_split_load_anywhere(comm, shared_tmp):
    X, y = _circles(200, d=5, seed=3)
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    est = MLPClassifier((8, 6), max_iter=3, tol=None, random_state=0, dtype="float64",
                        model_parallel=comm.size).fit(Xl, yl)
    path = os.path.join(shared_tmp, "mlp.h5")
    est.save(path)
    pred, proba = est.predict(X), est.predict_proba(X)
    single = load(path, comm=MPI.COMM_SELF)
    np.testing.assert_array_equal(single.predict(X), pred)
    np.testing.assert_allclose(single.predict_proba(X), proba, rtol=1e-12)
    for k in _widths(comm):
        again = load(path, comm=comm.mpi, model_parallel=k)
        np.testing.assert_array_equal(again.predict(X), pred)


@pytest.mark.mpi
def test_mlp_checkpoint_of_a_split_run_resumes_unsplit(comm, shared_tmp):
    X, y = _circles(120, seed=4)
    kw = dict(hidden_layer_sizes=(6,), solver="adam", batch_size=16, tol=None, random_state=5,
              dtype="float64")
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    ckpt = os.path.join(shared_tmp, "ckpt")
    MLPClassifier(**kw, max_iter=2, model_parallel=comm.size, checkpoint_dir=ckpt).fit(Xl, yl)
    resumed = MLPClassifier(**kw, max_iter=4, comm=MPI.COMM_SELF).fit(X, y, resume=ckpt)
    straight = MLPClassifier(**kw, max_iter=4, comm=MPI.COMM_SELF).fit(X, y)
    for a, b in zip(resumed.coefs_, straight.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.mpi
def test_mlp_partial_fit_continues(comm):
    X, y = _circles(90, seed=6)
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, random_state=1,
              dtype="float64")
    grid = get_grid(comm, comm.size)
    Xl, yl = _rows(grid, X, y)
    est = MLPClassifier(**kw, model_parallel=comm.size)
    ref = MLPClassifier(**kw, comm=MPI.COMM_SELF)
    for _ in range(3):
        est.partial_fit(Xl, yl)
        ref.partial_fit(X, y)
    for a, b in zip(est.gather_params()[0], ref.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.mpi
@pytest.mark.parametrize("params,match", [
    (dict(hidden_layer_sizes=(4, 0)), "hidden_layer_sizes must be positive"),
    (dict(activation="sigmoid"), "unknown activation"),
    (dict(solver="lbfgs"), "unknown solver"),
    (dict(learning_rate_init=-1.0), "learning_rate_init must be > 0"),
])
def test_bad_parameters_raise_on_every_rank(comm, params, match):
    X, y = _circles(30)
    with pytest.raises(ConfigError, match=match):
        MLPClassifier(**params).fit(X, y)


@pytest.mark.mpi(min_size=2)
def test_split_layers_need_a_unit_per_rank(comm):
    X, y = _circles(30)
    with pytest.raises(ConfigError, match="at least one unit per rank"):
        MLPClassifier((1,), model_parallel=comm.size).fit(X, y)
