"""SGDClassifier / SGDRegressor on scipy CSR rows (issue 21): the same model as the
dense fit of the same data (1e-10, float64) for every loss, penalty and momentum, with
each synchronous exchange (dense Allreduce, sparse Allgatherv), at 1, 2 and 3 ranks;
scikit-learn's SGD on the same CSR matrix as the accuracy reference; value and index
types; the exchange rule; checkpoints; what CSR rows refuse, on every rank at once.
"""
import os

import numpy as np
import pytest
import scipy.sparse as sp
from mpi4py import MPI
from sklearn import linear_model as sk

from mpiml import MLPClassifier, SGDClassifier, SGDRegressor
from mpiml.errors import ConfigError, DataError
from mpiml.parallel.sparse import choose_exchange

pytestmark = pytest.mark.timeout(120)

STEP = dict(learning_rate="constant", eta0=0.05, batch_size=32, tol=None, max_iter=3,
            random_state=3, dtype="float64")


def _data(n=240, d=400, density=0.03, K=2, seed=0, regression=False):
    """Power-law-ish CSR rows (empty rows included) and targets a linear model can learn."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.uniform(0.1, 1.0, k))
    keep = np.ones(n)
    keep[5] = 0.0                                # an empty row
    X = sp.csr_matrix(sp.diags(keep) @ X.multiply(4.0 / np.sqrt(np.arange(1, d + 1))))
    X.eliminate_zeros()
    W = rng.normal(size=(d, K if K > 2 else 1))
    m = X @ W + 0.1 * rng.normal(size=(n, W.shape[1]))
    if regression:
        return X, m[:, 0]
    return X, (m[:, 0] > np.median(m[:, 0])).astype(int) if K == 2 else m.argmax(axis=1)


def _uneven(comm, *arrays):
    """Rank r of p holds a share proportional to r + 1."""
    n = arrays[0].shape[0]
    cuts = np.concatenate([[0], np.cumsum(np.arange(1, comm.size + 1))]) * n // \
        (comm.size * (comm.size + 1) // 2)
    return [a[cuts[comm.rank]:cuts[comm.rank + 1]] for a in arrays]


def _flat(est):
    return np.append(np.ravel(est.coef_), est.intercept_)


def _same(a, b, tol=1e-10):
    a, b = _flat(a), _flat(b)
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


CASES = [
    (SGDClassifier, dict(loss="log_loss"), 2),
    (SGDClassifier, dict(loss="log_loss", penalty=None), 2),
    (SGDClassifier, dict(loss="log_loss", momentum=0.8), 2),
    (SGDClassifier, dict(loss="hinge", penalty="elasticnet", l1_ratio=0.5, alpha=1e-3), 2),
    (SGDClassifier, dict(loss="log_loss", class_weight="balanced"), 3),      # softmax
    (SGDClassifier, dict(loss="hinge", penalty="l1", alpha=1e-3), 3),        # one-vs-rest
    (SGDRegressor, dict(loss="squared_error", alpha=1e-3), 0),
    (SGDRegressor, dict(loss="huber", epsilon=0.5, learning_rate="invscaling", eta0=0.1), 0),
]


@pytest.mark.mpi
@pytest.mark.parametrize("exchange", ["dense", "sparse"])
@pytest.mark.parametrize("cls,kw,K", CASES, ids=lambda v: str(v.get("loss", "")) + "-" +
                         "-".join(f"{k}={v[k]}" for k in v if k != "loss")
                         if isinstance(v, dict) else getattr(v, "__name__", str(v)))
def test_a_csr_fit_is_the_dense_fit(comm, exchange, cls, kw, K):
    X, y = _data(K=max(K, 2), regression=K == 0)
    Xl, yl = _uneven(comm, X, y)
    params = {**STEP, **kw}
    got = cls(**params, exchange=exchange).fit(Xl, yl)
    ref = cls(**params).fit(Xl.toarray(), yl)
    _same(got, ref)
    assert got.exchange_ == exchange and not hasattr(ref, "exchange_")
    assert got.n_iter_ == ref.n_iter_ == 3
    # ... and it predicts sparse rows as the dense model predicts dense ones
    if K:
        np.testing.assert_allclose(got.decision_function(Xl), ref.decision_function(Xl.toarray()),
                                   rtol=1e-9, atol=1e-9)
        assert got.score(Xl, yl) == ref.score(Xl.toarray(), yl)
    else:
        np.testing.assert_allclose(got.predict(Xl), ref.predict(Xl.toarray()), rtol=1e-9,
                                   atol=1e-9)


@pytest.mark.mpi
def test_the_sparse_exchange_is_the_one_rank_model(comm):
    """Rank-count invariance: the synchronous model of p ranks is the one-rank model."""
    X, y = _data(K=3, seed=4)
    Xl, yl = _uneven(comm, X, y)
    params = {**STEP, "max_iter": 4}
    got = SGDClassifier(**params, exchange="sparse").fit(Xl, yl)
    one = SGDClassifier(**params, comm=MPI.COMM_SELF).fit(X, y)
    _same(got, one)


@pytest.mark.mpi
def test_value_and_index_types(comm):
    """float32 values are read as doubles: a float32 CSR fit is the float64 fit of the
    same (rounded) values; int64 indices are the int32 fit."""
    X, y = _data(seed=2)
    Xl, yl = _uneven(comm, X, y)
    X32 = Xl.astype(np.float32)
    f32 = SGDClassifier(**{**STEP, "dtype": None}).fit(X32, yl)
    f64 = SGDClassifier(**STEP).fit(X32.astype(np.float64), yl)
    _same(f32, f64, 1e-12)
    X64 = Xl.copy()
    X64.indices = X64.indices.astype(np.int64)
    X64.indptr = X64.indptr.astype(np.int64)
    i64 = SGDClassifier(**STEP).fit(X64, yl)
    i32 = SGDClassifier(**STEP).fit(Xl, yl)
    _same(i64, i32, 1e-15)        # (the compiler may contract a multiply-add differently)
    # other scipy formats are converted (scikit-learn's check_array)
    _same(SGDClassifier(**STEP).fit(Xl.tocoo(), yl), i32, 1e-15)


@pytest.mark.mpi
def test_accuracy_against_scikit_learns_sgd_on_the_same_csr_matrix(comm):
    X, y = _data(n=3000, d=300, density=0.05, seed=7)
    Xt, yt = X[:2400], y[:2400]
    Xv, yv = X[2400:], y[2400:]
    Xl, yl = _uneven(comm, Xt, yt)
    kw = dict(alpha=1e-4, max_iter=10, tol=None, random_state=0)
    ours = SGDClassifier(**kw, batch_size=1).fit(Xl, yl)
    ref = sk.SGDClassifier(**kw).fit(Xt, yt)
    Vl, wl = _uneven(comm, Xv, yv)
    got = ours.score(Vl, wl)
    assert got >= ref.score(Xv, yv) - 0.03, (got, ref.score(Xv, yv))
    assert got > 0.85


def test_the_exchange_rule():
    d = 1 << 20
    # 40 entries a row, batch 256: ~10k of 1M weights -> sparse
    assert choose_exchange("auto", d + 1, 1, 40 * 1000, 1000, 256) == "sparse"
    # half of the weights or more -> dense
    assert choose_exchange("auto", 4001, 1, 400 * 1000, 1000, 256) == "dense"
    # rcv1-like at batch 256 (19k expected entries of 47k weights) -> sparse, at 1024 dense
    assert choose_exchange("auto", 47237, 1, 75 * 1000, 1000, 256) == "sparse"
    assert choose_exchange("auto", 47237, 1, 75 * 1000, 1000, 1024) == "dense"
    # a small model: the Allreduce is one latency -> dense
    assert choose_exchange("auto", 2001, 1, 1000, 1000, 1) == "dense"
    assert choose_exchange("sparse", 11, 1, 10, 10, 10) == "sparse"


@pytest.mark.mpi
def test_auto_picks_the_sparse_exchange_for_wide_data(comm):
    n, d = 300, 1 << 16
    rng = np.random.default_rng(1)
    X = sp.random(n, d, density=5.0 / d, format="csr", random_state=1)
    y = rng.integers(0, 2, n)
    Xl, yl = _uneven(comm, X, y)
    est = SGDClassifier(**STEP).fit(Xl, yl)
    assert est.exchange_ == "sparse"
    assert est.coef_.shape == (1, d)


@pytest.mark.mpi
@pytest.mark.parametrize("penalty", ["l2", "elasticnet"])
def test_local_sgd_takes_csr_rows(comm, penalty):
    X, y = _data(n=600, d=300, density=0.05, seed=5)
    Xl, yl = _uneven(comm, X, y)
    kw = {**STEP, "max_iter": 5, "penalty": penalty, "alpha": 1e-2}
    loc = SGDClassifier(**kw, sync="local:4").fit(Xl, yl)
    dense = SGDClassifier(**kw, sync="local:4").fit(Xl.toarray(), yl)
    # model averaging on CSR rows is model averaging on the same dense rows
    _same(loc, dense)


@pytest.mark.mpi
@pytest.mark.parametrize("penalty", ["l2", "elasticnet"])
def test_a_csr_checkpoint_resumes_to_the_uninterrupted_model(comm, shared_tmp, penalty):
    """Bit for bit: the checkpoint carries the scaled weights, the scale and (lazy L1)
    the thresholds each feature has received."""
    X, y = _data(seed=6)
    Xl, yl = _uneven(comm, X, y)
    kw = {**STEP, "max_iter": 4, "penalty": penalty, "alpha": 1e-3}
    ckpt = os.path.join(shared_tmp, "ckpt-" + penalty)
    SGDClassifier(**{**kw, "max_iter": 2}, checkpoint_dir=ckpt).fit(Xl, yl)
    resumed = SGDClassifier(**kw).fit(Xl, yl, resume=ckpt)
    straight = SGDClassifier(**kw).fit(Xl, yl)
    _same(resumed, straight, 0.0)
    # a dense copy of the rows is not the data the checkpoint was made on
    with pytest.raises(DataError):
        SGDClassifier(**kw).fit(Xl.toarray(), yl, resume=ckpt)


@pytest.mark.mpi
def test_what_csr_rows_refuse_is_one_error_on_every_rank(comm):
    X, y = _data()
    Xl, yl = _uneven(comm, X, y)
    with pytest.raises(TypeError, match="[Ss]parse"):
        MLPClassifier(max_iter=1).fit(Xl, yl)
    with pytest.raises(TypeError, match="[Ss]parse"):
        SGDClassifier(scaler="standard").fit(Xl, yl)
    with pytest.raises(ConfigError, match="sync='allreduce'"):
        SGDClassifier(compress="fp16").fit(Xl, yl)
    with pytest.raises(ConfigError, match="exchange must be"):
        SGDClassifier(exchange="ring").fit(Xl.toarray(), yl)
    if comm.size > 1:
        with pytest.raises(DataError, match="sparse"):
            SGDClassifier(max_iter=1).fit(Xl if comm.rank else Xl.toarray(), yl)
    bad = Xl.copy()
    if bad.nnz and comm.rank == comm.size - 1:
        bad.data[-1] = np.nan
    with pytest.raises(DataError, match="NaN or infinity"):
        SGDClassifier(max_iter=1).fit(bad, yl)


# ------------------------------------------------------------------ exact solvers on CSR rows
@pytest.mark.mpi
@pytest.mark.parametrize("solver,penalty", [("lbfgs", "l2"), ("newton-cg", "l2"),
                                            ("owlqn", "elasticnet"), ("hybrid", "l2")])
def test_an_exact_solve_of_csr_rows_is_the_dense_solve(comm, solver, penalty):
    X, y = _data(K=3, seed=8)
    Xl, yl = _uneven(comm, X, y)
    kw = dict(alpha=1e-3, solver=solver, penalty=penalty, tol=1e-9, max_iter=300)
    got = SGDClassifier(**kw).fit(Xl, yl)
    ref = SGDClassifier(**kw).fit(Xl.toarray(), yl)
    assert got.solver_status_ == ref.solver_status_ == "converged"
    _same(got, ref, 1e-6)


@pytest.mark.mpi
def test_logistic_regression_on_csr_rows_reaches_scikit_learns_optimum(comm):
    import warnings

    from mpiml import LogisticRegression, Ridge
    X, y = _data(seed=9)
    Xl, yl = _uneven(comm, X, y)
    got = LogisticRegression(C=10.0, tol=1e-10, max_iter=1000).fit(Xl, yl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sk.LogisticRegression(C=10.0, tol=1e-12, max_iter=10000).fit(X, y)
    ours, theirs = np.append(got.coef_, got.intercept_), np.append(ref.coef_, ref.intercept_)
    assert np.linalg.norm(ours - theirs) <= 1e-5 * np.linalg.norm(theirs)
    Xr, yr = _data(seed=10, regression=True)
    Xrl, yrl = _uneven(comm, Xr, yr)
    a = Ridge(alpha=0.5, tol=1e-10).fit(Xrl, yrl)
    b = Ridge(alpha=0.5, tol=1e-10).fit(Xrl.toarray(), yrl)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.predict(Xrl), b.predict(Xrl.toarray()), rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ scaling CSR rows
@pytest.mark.mpi
def test_maxabs_scaling_keeps_csr_rows_sparse_and_is_the_dense_fit(comm):
    from sklearn.preprocessing import MaxAbsScaler as SkMaxAbs

    from mpiml.preprocessing import MaxAbsScaler
    X, y = _data(seed=11)
    X = sp.csr_matrix(X.multiply(np.linspace(0.5, 40.0, X.shape[1])))
    Xl, yl = _uneven(comm, X, y)
    scaler = MaxAbsScaler().fit(Xl)
    np.testing.assert_allclose(scaler.scale_, SkMaxAbs().fit(X).scale_, rtol=1e-15)
    Z = scaler.transform(Xl)
    assert Z.format == "csr" and Z.nnz == Xl.nnz
    before = Xl.copy()
    kw = {**STEP, "scaler": "maxabs"}
    got = SGDClassifier(**kw).fit(Xl, yl)
    ref = SGDClassifier(**kw).fit(Xl.toarray(), yl)
    _same(got, ref)
    np.testing.assert_allclose(got.scale_factor_, ref.scale_factor_, rtol=0)
    assert abs(Xl - before).max() == 0            # the caller's rows are not scaled
    np.testing.assert_allclose(got.decision_function(Xl), ref.decision_function(Xl.toarray()),
                               rtol=1e-9, atol=1e-9)
    # a model with an offset cannot take CSR rows at prediction
    dense_model = SGDClassifier(**{**STEP, "scaler": "standard"}).fit(Xl.toarray(), yl)
    with pytest.raises(TypeError, match="[Ss]parse"):
        dense_model.predict(Xl)


# ------------------------------------------------------------------ model parallel on CSR rows
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("split,K", [("features", 2), ("features", 3), ("classes", 3)])
def test_a_sharded_fit_of_csr_rows_is_the_one_rank_fit(comm, split, K):
    """Weights split over all ranks (each stores its columns or classes of W): the model
    of one rank that holds everything, for CSR rows as for dense ones."""
    from mpiml.comm import get_grid
    X, y = _data(K=K, seed=12)
    grid = get_grid(comm, comm.size)
    kw = {**STEP, "shard": split}
    if split == "classes":
        kw["multi_class"] = "multinomial"
    got = SGDClassifier(**kw, model_parallel=comm.size).fit(X, y)     # one replica
    one = SGDClassifier(**kw, comm=MPI.COMM_SELF).fit(X, y)
    coef, intercept = got.gather_coef()
    flat = np.append(np.ravel(coef), intercept)
    ref = _flat(one)
    assert np.max(np.abs(flat - ref)) <= 1e-10 * max(1.0, np.max(np.abs(ref)))
    np.testing.assert_array_equal(got.predict(X), one.predict(X))
    assert grid.K == comm.size
