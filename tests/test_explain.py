"""Explanations, exact metrics and class imbalance against shap and scikit-learn, at
any rank count."""
import warnings

import numpy as np
import pytest
from mpi4py import MPI

from mpiml import MLPClassifier, SGDClassifier, SGDRegressor
from mpiml.explain import (global_mean, kernel_shap, linear_shap, model_output,
                           permutation_importance)
from mpiml.imbalance import resample
from mpiml.metrics import roc_auc
from mpiml.models.base import classification_report

shap = pytest.importorskip("shap")


def _shard(comm, *arrays):
    lo, hi = comm.chunk(arrays[0].shape[0])
    return [a[lo:hi] for a in arrays]


def _gather(comm, a):
    return np.concatenate(comm.allgather(np.asarray(a)))


def _data(n=600, d=6, K=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if K == 2:
        y = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(int)
    else:
        y = np.argmax(X[:, :K] + 0.5 * rng.normal(size=(n, K)), axis=1)
    return X, y


def _linear(kind):
    kw = dict(learning_rate="constant", eta0=0.05, tol=None, max_iter=3, random_state=0,
              comm=MPI.COMM_SELF)
    if kind == "regression":
        X, _ = _data()
        y = X @ np.arange(1.0, 7.0) + 0.5
        return SGDRegressor(**kw).fit(X, y), X
    X, y = _data(K=2 if kind == "logistic" else 4)
    return SGDClassifier(**kw).fit(X, y), X


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["logistic", "softmax", "regression"])
def test_linear_shap_equals_shap_linear_explainer(comm, kind):
    est, X = _linear(kind)
    Xl, = _shard(comm, X)
    values, base = linear_shap(np.atleast_2d(est.coef_), est.intercept_, Xl, global_mean(Xl, comm))
    coef = np.atleast_2d(est.coef_)
    for k in range(coef.shape[0]):
        ex = shap.LinearExplainer((coef[k], est.intercept_[k]),
                                  shap.maskers.Independent(X, max_samples=len(X)))
        ref = ex.shap_values(Xl)
        got = values if values.ndim == 2 else values[:, k, :]
        np.testing.assert_allclose(got, ref, atol=1e-6)
        np.testing.assert_allclose(base[k], ex.expected_value, atol=1e-6)
    # additivity: SHAP values + base value = the model's margin
    margins = np.asarray(est.decision_function(Xl) if hasattr(est, "decision_function")
                         else est.predict(Xl)).reshape(len(Xl), -1)
    total = values.reshape(len(Xl), -1, X.shape[1]).sum(axis=2) + base
    np.testing.assert_allclose(total, margins, atol=1e-6)


@pytest.mark.mpi
def test_kernel_shap_of_an_mlp_matches_shap_and_is_additive(comm):
    X, y = _data(d=10, seed=3)
    mlp = MLPClassifier((16,), max_iter=20, tol=None, random_state=0,
                        comm=MPI.COMM_SELF).fit(X, y)
    f = model_output(mlp)
    background = comm.bcast(X[:20] if comm.rank == 0 else None)
    rows = X[100:130]
    Xl, = _shard(comm, rows)
    values, base = kernel_shap(f, Xl, background, nsamples=600, seed=1)
    np.testing.assert_allclose(values.sum(axis=1) + base[0], f(Xl)[:, 0], atol=1e-6)
    allv = _gather(comm, values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(shap.KernelExplainer(f, background).shap_values(rows, nsamples=600,
                                                                        silent=True))
    ref = ref.reshape(allv.shape)
    assert np.corrcoef(allv.ravel(), ref.ravel())[0, 1] > 0.95
    # the same on one process: rows get the same coalitions wherever they live
    single, _ = kernel_shap(f, rows, background, nsamples=600, seed=1)
    np.testing.assert_allclose(allv, single, rtol=1e-12, atol=1e-14)


@pytest.mark.mpi
def test_permutation_importance_is_the_same_at_any_rank_count(comm):
    X, y = _data(n=300, seed=4)
    est = SGDClassifier(learning_rate="constant", eta0=0.05, tol=None, max_iter=3,
                        random_state=0, comm=MPI.COMM_SELF).fit(X, y)
    Xl, yl = _shard(comm, X, y)
    est.comm = comm.mpi
    mean, std, base = permutation_importance(est, Xl, yl, repeats=3, seed=2, comm=comm)
    est.comm = MPI.COMM_SELF
    ref_mean, ref_std, ref_base = permutation_importance(est, X, y, repeats=3, seed=2,
                                                         comm=MPI.COMM_SELF)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-15)
    np.testing.assert_allclose(std, ref_std, atol=1e-15)
    assert np.argmax(mean) in (0, 1)          # the features the labels depend on


@pytest.mark.mpi
@pytest.mark.parametrize("K", [2, 4])
def test_distributed_metrics_equal_sklearn(comm, K):
    from sklearn import metrics as skm
    X, y = _data(n=777, K=K, seed=5)
    est = SGDClassifier(learning_rate="constant", eta0=0.05, tol=None, max_iter=2,
                        random_state=0, comm=MPI.COMM_SELF).fit(X, y)
    Xl, yl = _shard(comm, X, y)
    est.comm = comm.mpi
    rep = classification_report(est, Xl, yl)
    pred, proba = est.predict(X), est.predict_proba(X)
    np.testing.assert_array_equal(rep["confusion_matrix"], skm.confusion_matrix(y, pred))
    assert rep["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for k in range(K):
        m = rep["per_class"][str(k)]
        assert (m["precision"], m["recall"], m["f1"], m["support"]) == \
            pytest.approx((p[k], r[k], f[k], s[k]), abs=1e-12)
    assert rep["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-12)
    if K == 2:
        assert abs(rep["roc_auc"] - skm.roc_auc_score(y, proba[:, 1])) < 1e-12
    else:
        assert abs(rep["roc_auc"] - skm.roc_auc_score(y, proba, multi_class="ovr")) < 1e-12


@pytest.mark.mpi
def test_roc_auc_with_ties_is_exact(comm):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(6)
    s = rng.integers(0, 5, size=1001).astype(float)          # many ties
    y = rng.random(1001) < 0.3
    sl, yl = _shard(comm, s, y)
    assert abs(roc_auc(sl, yl, comm) - roc_auc_score(y, s)) < 1e-12


def _imbalanced(n=20000, seed=7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X @ np.array([1.0, -1.0, 0.5, 0.0, 0.0]) + 0.3 * rng.normal(size=n) > 3.1).astype(int)
    return X, y                                               # about 1:50


@pytest.mark.mpi
def test_balanced_class_weight_raises_minority_recall_like_sklearn(comm):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import recall_score
    X, y = _imbalanced()
    Xt, yt = _imbalanced(seed=8)
    assert 40 < (y == 0).sum() / (y == 1).sum() < 60
    Xl, yl = _shard(comm, X, y)
    Xtl, ytl = _shard(comm, Xt, yt)
    kw = dict(learning_rate="constant", eta0=0.05, tol=None, max_iter=10, random_state=0,
              alpha=1e-5)
    plain = SGDClassifier(**kw).fit(Xl, yl)
    bal = SGDClassifier(**kw, class_weight="balanced").fit(Xl, yl)
    r_plain = classification_report(plain, Xtl, ytl)["per_class"]["1"]["recall"]
    r_bal = classification_report(bal, Xtl, ytl)["per_class"]["1"]["recall"]
    sk = LogisticRegression(class_weight="balanced", max_iter=1000).fit(X, y)
    r_sk = recall_score(yt, sk.predict(Xt))
    assert r_bal > r_plain
    assert abs(r_bal - r_sk) <= 0.03, (r_bal, r_sk, r_plain)
    np.testing.assert_allclose(bal.class_weight_, len(y) / (2 * np.bincount(y)), rtol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("strategy", ["over", "under"])
def test_resampling_is_the_same_at_any_rank_count(comm, strategy):
    X, y = _imbalanced(n=5000)
    Xl, yl = _shard(comm, X, y)
    Xr, yr = resample(Xl, yl, strategy, 0.5, seed=3, comm=comm)
    Xs, ys = resample(X, y, strategy, 0.5, seed=3, comm=MPI.COMM_SELF)
    np.testing.assert_array_equal(_gather(comm, yr), ys)
    np.testing.assert_array_equal(_gather(comm, Xr), Xs)
    counts = np.bincount(ys.astype(int))
    assert 0.4 < counts[1] / counts[0] < 0.6 if strategy == "over" else \
        0.4 < counts[1] / counts[0] < 0.6


@pytest.mark.mpi
def test_sample_weight_scales_the_gradient(comm):
    X, y = _data(n=300, seed=9)
    Xl, yl = _shard(comm, X, y)
    kw = dict(learning_rate="constant", penalty=None, tol=None, max_iter=2, random_state=0,
              dtype="float64")
    a = SGDClassifier(**kw, eta0=0.05).fit(Xl, yl, sample_weight=np.full(len(yl), 2.0))
    b = SGDClassifier(**kw, eta0=0.1).fit(Xl, yl)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-10)
