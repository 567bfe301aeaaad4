"""SGD estimators against numpy least squares and scikit-learn, at any rank count.

Each MPI test compares the model trained on the world communicator (each rank
its own shard) with a reference: numpy/scikit-learn on the whole data, or the
same estimator on ``MPI.COMM_SELF`` (one rank holding every row).
"""
import os

import numpy as np
import pytest
from mpi4py import MPI

import mpiml
from mpiml import SGDClassifier, SGDRegressor, load_hdf5
from mpiml.datasets import make_data
from mpiml.errors import ConfigError, DataError, NotFittedError, TrainingError


def _shard(comm, *arrays):
    lo, hi = comm.chunk(arrays[0].shape[0])
    return [a[lo:hi] for a in arrays]


def _regression(n=601, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    coef = rng.normal(size=d)
    y = X @ coef + 0.7 + 0.1 * rng.normal(size=n)
    return X, y


def _classes(n=500, d=6, K=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(K, d))
    y = np.argmax(X @ W.T + rng.gumbel(size=(n, K)), axis=1) * 10 + 3   # labels 3, 13, 23
    return X, y


@pytest.mark.mpi
def test_full_batch_regressor_converges_to_lstsq(comm):
    X, y = _regression()
    Xl, yl = _shard(comm, X, y)
    reg = SGDRegressor(batch_size="full", learning_rate="constant", eta0=0.5, penalty=None,
                       tol=None, max_iter=300).fit(Xl, yl)
    A = np.column_stack([X, np.ones(len(X))])
    ref = np.linalg.lstsq(A, y, rcond=None)[0]
    got = np.concatenate([reg.coef_, reg.intercept_])
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4
    assert reg.n_iter_ == 300 and reg.t_ == 301


@pytest.mark.mpi
def test_full_batch_steps_same_on_any_rank_count(comm):
    X, y = _regression(n=97, d=5)
    Xl, yl = _shard(comm, X, y)
    kw = dict(batch_size="full", learning_rate="constant", eta0=0.1, penalty="l2", alpha=0.01,
              tol=None, max_iter=7)
    world = SGDRegressor(**kw).fit(Xl, yl)
    single = SGDRegressor(**kw, comm=MPI.COMM_SELF).fit(X, y)
    np.testing.assert_allclose(world.coef_, single.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(world.intercept_, single.intercept_, rtol=1e-10, atol=1e-12)


MINIBATCH = [
    (SGDRegressor, dict(loss="squared_error", momentum=0.9, learning_rate="invscaling", eta0=0.02)),
    (SGDRegressor, dict(loss="huber", epsilon=0.5, penalty="elasticnet", learning_rate="constant",
                        eta0=0.05)),
    (SGDClassifier, dict(loss="log_loss")),
    (SGDClassifier, dict(loss="hinge", penalty="l1", alpha=1e-3)),
    (SGDClassifier, dict(loss="log_loss", multi_class="multinomial", momentum=0.5,
                         learning_rate="constant", eta0=0.05)),
]


@pytest.mark.mpi
@pytest.mark.parametrize("cls,kw", MINIBATCH)
def test_minibatch_same_on_any_rank_count(comm, cls, kw):
    if cls is SGDRegressor:
        X, y = _regression(n=503)
    else:
        X, y = _classes(n=503)
        if kw.get("loss") == "log_loss" and "multi_class" not in kw:
            y = (y > 10).astype(int)           # binary logistic
    Xl, yl = _shard(comm, X, y)
    kw = dict(kw, batch_size=32, max_iter=3, tol=None, random_state=11)
    world = cls(**kw).fit(Xl, yl)
    single = cls(**kw, comm=MPI.COMM_SELF).fit(X, y)
    np.testing.assert_allclose(world.coef_, single.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(world.intercept_, single.intercept_, rtol=1e-8, atol=1e-10)
    assert world.loss_curve_ == pytest.approx(single.loss_curve_, rel=1e-8)


@pytest.mark.mpi
def test_uneven_and_empty_shards(comm):
    """Any row distribution gives the same model, including ranks with no rows."""
    X, y = _regression(n=50)
    # all rows on the last rank
    Xl, yl = (X, y) if comm.rank == comm.size - 1 else (X[:0], y[:0])
    kw = dict(batch_size=8, max_iter=2, tol=None, random_state=3, learning_rate="constant",
              eta0=0.05)
    world = SGDRegressor(**kw).fit(Xl, yl)
    single = SGDRegressor(**kw, comm=MPI.COMM_SELF).fit(X, y)
    np.testing.assert_allclose(world.coef_, single.coef_, rtol=1e-10)


@pytest.mark.mpi
def test_partial_fit_continues_like_fit(comm):
    X, y = _classes(n=300)
    Xl, yl = _shard(comm, X, y)
    kw = dict(batch_size=16, tol=None, random_state=5, learning_rate="constant", eta0=0.05)
    a = SGDClassifier(max_iter=3, **kw).fit(Xl, yl)
    b = SGDClassifier(max_iter=1, **kw)
    for _ in range(3):
        b.partial_fit(Xl, yl, classes=[3, 13, 23])
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-12)
    assert b.n_iter_ == 3


def _sklearn_reference(comm, make_model, path_train, path_test):
    """Fit a scikit-learn model on the whole training file on rank 0; broadcast its test accuracy."""
    acc = None
    if comm.rank == 0:
        import h5py
        with h5py.File(path_train, "r") as f:
            X, y = f["X"][()], f["y"][()]
        with h5py.File(path_test, "r") as f:
            Xt, yt = f["X"][()], f["y"][()]
        acc = make_model().fit(X, y).score(Xt, yt)
    return comm.bcast(acc)


@pytest.mark.mpi
@pytest.mark.parametrize("task,loss,reference", [
    ("binary", "log_loss", "LogisticRegression"),
    ("binary", "hinge", "LinearSVC"),
    ("multiclass", "log_loss", "LogisticRegression"),
])
def test_accuracy_close_to_sklearn(comm, shared_tmp, task, loss, reference):
    import sklearn.linear_model
    import sklearn.svm
    train = os.path.join(shared_tmp, "train.h5")
    test = os.path.join(shared_tmp, "test.h5")
    make_data(task, 20000, 20, train, seed=7, test_out=test, test_rows=5000, classes=4,
              noise=0.05, comm=comm)
    X, y = load_hdf5(train)
    Xt, yt = load_hdf5(test)
    clf = SGDClassifier(loss=loss, max_iter=15, tol=None, random_state=0, batch_size=64,
                        learning_rate="constant", eta0=0.05).fit(X, y)
    acc = clf.score(Xt, yt)
    make = {"LogisticRegression": lambda: sklearn.linear_model.LogisticRegression(max_iter=1000),
            "LinearSVC": lambda: sklearn.svm.LinearSVC()}[reference]
    ref = _sklearn_reference(comm, make, train, test)
    assert acc >= ref - 0.01, (acc, ref)
    if task == "multiclass":
        assert clf.coef_.shape == (4, 20)


@pytest.mark.mpi
def test_predictions_and_global_scores(comm):
    X, y = _classes(n=400)
    Xl, yl = _shard(comm, X, y)
    # 256-row batches: probabilities short of 0 and 1, where scikit-learn's log_loss clips
    clf = SGDClassifier(max_iter=5, tol=None, random_state=1, batch_size=256).fit(Xl, yl)
    proba = clf.predict_proba(Xl)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    pred = clf.predict(Xl)
    np.testing.assert_array_equal(pred, clf.classes_[np.argmax(proba, axis=1)])
    assert set(np.unique(pred)) <= {3, 13, 23}
    # the global score equals the accuracy of all rows' predictions
    all_pred = np.concatenate(comm.allgather(pred))
    assert clf.score(Xl, yl) == pytest.approx(np.mean(all_pred == y))
    m = clf.metrics(Xl, yl)
    assert m["n_samples"] == 400
    # the reported loss is the mean log-loss, as scikit-learn computes it
    from sklearn.metrics import log_loss
    all_proba = np.concatenate(comm.allgather(proba))
    assert m["loss"] == pytest.approx(log_loss(y, all_proba, labels=clf.classes_), rel=1e-9)

    X, y = _regression(n=300)
    Xl, yl = _shard(comm, X, y)
    reg = SGDRegressor(max_iter=20, tol=None, random_state=1, batch_size=16, eta0=0.1).fit(Xl, yl)
    from sklearn.metrics import r2_score
    all_pred = np.concatenate(comm.allgather(reg.predict(Xl)))
    assert reg.score(Xl, yl) == pytest.approx(r2_score(y, all_pred), rel=1e-9)
    assert reg.score(Xl, yl) > 0.99


@pytest.mark.mpi
def test_float32_close_to_float64(comm):
    X, y = _classes(n=600)
    y = (y > 10).astype(int)
    Xl, yl = _shard(comm, X, y)
    kw = dict(max_iter=3, tol=None, random_state=2, learning_rate="constant", eta0=0.05)
    a = SGDClassifier(**kw).fit(Xl.astype(np.float32), yl)
    b = SGDClassifier(**kw).fit(Xl, yl)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-3, atol=1e-4)


@pytest.mark.mpi
def test_save_and_load_round_trip(comm, shared_tmp):
    X, y = _classes(n=200)
    Xl, yl = _shard(comm, X, y)
    clf = SGDClassifier(loss="hinge", max_iter=3, tol=None, random_state=4).fit(Xl, yl)
    path = os.path.join(shared_tmp, "m.h5")
    clf.save(path)
    back = mpiml.load_model(path)
    assert isinstance(back, SGDClassifier) and back.loss == "hinge"
    np.testing.assert_array_equal(back.coef_, clf.coef_)
    np.testing.assert_array_equal(back.predict(Xl), clf.predict(Xl))
    assert sorted(os.listdir(shared_tmp)) == ["m.h5"]      # no temporary file left behind


@pytest.mark.mpi
def test_tol_stops_all_ranks_together(comm):
    X, y = _regression(n=400)
    Xl, yl = _shard(comm, X, y)
    reg = SGDRegressor(max_iter=1000, tol=1e-3, n_iter_no_change=3, random_state=0).fit(Xl, yl)
    assert reg.n_iter_ < 1000
    assert len(set(comm.allgather(reg.n_iter_))) == 1


@pytest.mark.mpi
def test_bad_input_raises_same_error_everywhere(comm):
    X, y = _regression(n=60)
    Xl, yl = _shard(comm, X, y)
    Xbad = Xl.copy()
    if comm.rank == comm.size - 1:
        Xbad[0, 0] = np.inf
    with pytest.raises(DataError, match="NaN or infinity"):
        SGDRegressor(max_iter=1).fit(Xbad, yl)
    with pytest.raises(DataError, match="Unknown label type: continuous"):
        SGDClassifier(max_iter=1).fit(Xl, yl)
    with pytest.raises(DataError, match="at least 2 classes"):
        SGDClassifier(max_iter=1).fit(Xl, np.ones(len(yl)))
    with pytest.raises(ConfigError, match="unknown loss"):
        SGDClassifier(loss="squared_hinge").fit(Xl, np.arange(len(yl)) % 2)
    with pytest.raises(DataError, match="inconsistent numbers of samples"):
        SGDRegressor().fit(Xl, yl[:-1] if comm.rank == 0 else yl)
    with pytest.raises(TrainingError, match="diverged"):
        SGDRegressor(learning_rate="constant", eta0=1e3, max_iter=200, tol=None,
                     batch_size=8).fit(Xl * 1e3, yl)
    with pytest.raises(NotFittedError):
        SGDRegressor().predict(Xl)
    assert comm.allreduce(1) == comm.size     # still in step


def test_get_set_params():
    clf = SGDClassifier(alpha=0.5)
    params = clf.get_params()
    assert params["alpha"] == 0.5 and params["loss"] == "log_loss" and "comm" in params
    clf.set_params(alpha=0.1, batch_size="full")
    assert clf.alpha == 0.1 and clf.batch_size == "full"
    with pytest.raises(ValueError):
        clf.set_params(nonsense=1)
    assert "alpha=0.1" in repr(clf)
