"""mpiml's estimators where scikit-learn estimators go (issue 19, items 1 and 3): clone,
Pipeline, cross_val_score with any scorer, GridSearchCV with joblib workers, each with
results equal to the same estimator used directly; and inside an MPI job, the same
pipeline on each rank's rows gives the model one process gives on all rows."""

import numpy as np
import pytest
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor, chunk
from mpiml.preprocessing import MinMaxScaler, StandardScaler

KW = dict(max_iter=5, tol=None, random_state=0, batch_size=32, dtype="float64")


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * np.array([1, 10, 0.1, 3, 1]) + 2
    z = X @ np.array([1.0, 0.1, 5.0, -0.3, 0.0]) + rng.normal(size=n)
    return X, (z > np.median(z)).astype(int)


def test_estimators_are_scikit_learn_estimators():
    # issue 19: built on scikit-learn's BaseEstimator and mixins (scikit-learn is a
    # runtime dependency; its import cost is measured in benchmarks/bench_import.py)
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
    from sklearn.exceptions import NotFittedError
    for cls, mixin in ((SGDClassifier, ClassifierMixin), (MLPClassifier, ClassifierMixin),
                       (SGDRegressor, RegressorMixin), (MLPRegressor, RegressorMixin),
                       (StandardScaler, TransformerMixin), (MinMaxScaler, TransformerMixin)):
        assert issubclass(cls, BaseEstimator) and issubclass(cls, mixin)
        with pytest.raises(NotFittedError):
            getattr(cls(), "transform" if mixin is TransformerMixin else "predict")(np.ones((2, 2)))


def test_clone_keeps_parameters_as_given_and_tags_say_what_they_are():
    from mpi4py import MPI
    for est in (SGDClassifier(alpha=0.1, comm=MPI.COMM_WORLD), SGDRegressor(eta0=0.2),
                MLPClassifier(hidden_layer_sizes=(4,)), MLPRegressor(), StandardScaler(with_mean=False),
                MinMaxScaler((-1, 1))):
        copy = clone(est)
        assert type(copy) is type(est) and copy.get_params() == est.get_params()
        assert is_classifier(est) == type(est).__name__.endswith("Classifier")
        assert is_regressor(est) == type(est).__name__.endswith("Regressor")


def test_a_pipeline_is_the_steps_done_by_hand():
    X, y = _data()
    pipe = make_pipeline(StandardScaler(), SGDClassifier(**KW)).fit(X, y)
    Z = StandardScaler().fit(X).transform(X)
    ref = SGDClassifier(**KW).fit(Z, y)
    np.testing.assert_array_equal(pipe[-1].coef_, ref.coef_)
    np.testing.assert_array_equal(pipe.predict(X), ref.predict(Z))


@pytest.mark.parametrize("scoring", ["roc_auc", "accuracy", "neg_log_loss"])
def test_cross_val_score_equals_the_folds_done_by_hand(scoring):
    from sklearn.metrics import get_scorer
    X, y = _data()
    pipe = make_pipeline(StandardScaler(), SGDClassifier(**KW))
    cv = KFold(3, shuffle=True, random_state=1)
    got = cross_val_score(pipe, X, y, scoring=scoring, cv=cv)
    ref = [get_scorer(scoring)(clone(pipe).fit(X[tr], y[tr]), X[te], y[te])
           for tr, te in cv.split(X)]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.timeout(300)
def test_grid_search_with_joblib_workers_equals_one_process():
    X, y = _data()
    grid = {"alpha": [1e-4, 1e-2], "eta0": [0.01, 0.1]}
    base = SGDClassifier(learning_rate="constant", **KW)
    one = GridSearchCV(base, grid, cv=3, scoring="roc_auc").fit(X, y)
    two = GridSearchCV(base, grid, cv=3, scoring="roc_auc", n_jobs=2).fit(X, y)
    assert one.best_params_ == two.best_params_
    np.testing.assert_allclose(one.cv_results_["mean_test_score"],
                               two.cv_results_["mean_test_score"], rtol=1e-12)
    np.testing.assert_array_equal(one.best_estimator_.coef_, two.best_estimator_.coef_)


@pytest.mark.mpi
def test_the_same_pipeline_on_every_rank_is_the_one_process_model(comm):
    from mpi4py import MPI
    X, y = _data()
    lo, hi = chunk(len(X), comm.size, comm.rank)
    mine = make_pipeline(StandardScaler(), SGDClassifier(**KW)).fit(X[lo:hi], y[lo:hi])
    one = make_pipeline(StandardScaler(comm=MPI.COMM_SELF),
                        SGDClassifier(**KW, comm=MPI.COMM_SELF)).fit(X, y)
    ok = np.allclose(mine[-1].coef_, one[-1].coef_, rtol=1e-9, atol=1e-12) and \
        np.allclose(mine[0].mean_, one[0].mean_, rtol=1e-12)
    assert all(comm.allgather(bool(ok)))


def _labelled(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    codes = np.argmax(X[:, :3] + 0.3 * rng.normal(size=(n, 3)), axis=1)
    return X, codes


@pytest.mark.parametrize("cls", [SGDClassifier, MLPClassifier])
@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([-7, 2, 40]),
                                    np.array([1.0, 2.0, 5.0])])
def test_any_labels_give_the_model_of_their_codes(cls, labels):
    # labels of any type are their sorted positions, mapped back on the way out
    X, codes = _labelled()
    kw = dict(KW, hidden_layer_sizes=(6,)) if cls is MLPClassifier else KW
    by_label = cls(**kw).fit(X, labels[codes])
    by_code = cls(**kw).fit(X, codes)
    assert by_label.classes_.dtype == labels.dtype
    np.testing.assert_array_equal(by_label.classes_, labels)
    np.testing.assert_array_equal(by_label.predict(X), labels[by_code.predict(X)])
    np.testing.assert_array_equal(by_label.predict_proba(X), by_code.predict_proba(X))
    assert by_label.score(X, labels[codes]) == by_code.score(X, codes)


def test_class_weight_by_string_label_and_partial_fit_with_string_classes():
    X, codes = _labelled()
    names = np.array(["a", "b", "c"])
    by_name = SGDClassifier(class_weight={"b": 3.0}, **KW).fit(X, names[codes])
    by_code = SGDClassifier(class_weight={1: 3.0}, **KW).fit(X, codes)
    np.testing.assert_array_equal(by_name.coef_, by_code.coef_)
    inc = SGDClassifier(**KW).partial_fit(X[:100], names[codes[:100]], classes=names)
    inc.partial_fit(X[100:], names[codes[100:]])
    assert list(inc.classes_) == ["a", "b", "c"] and inc.n_iter_ == 2
    with pytest.raises(ValueError, match="not seen in the first fit"):
        SGDClassifier(**KW).partial_fit(X[:10], np.array(["a"] * 5 + ["b"] * 5)).partial_fit(
            X[:3], np.array(["z", "a", "b"]))


def test_dataframe_feature_names_are_kept_and_checked():
    pd = pytest.importorskip("pandas")
    X, codes = _labelled()
    df = pd.DataFrame(X, columns=["height", "width", "depth", "mass"])
    df["count"] = pd.array(np.arange(len(df)) % 5, dtype="Int64")     # nullable integers
    est = make_pipeline(StandardScaler(), SGDClassifier(**KW)).fit(df, codes)
    assert list(est[0].feature_names_in_) == list(df.columns)
    assert list(est[0].get_feature_names_out()) == list(df.columns)
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(df[list(df.columns[::-1])])
    plain = make_pipeline(StandardScaler(), SGDClassifier(**KW)).fit(df.to_numpy(float), codes)
    np.testing.assert_array_equal(est.predict(df), plain.predict(df.to_numpy(float)))


@pytest.mark.parametrize("make", [
    lambda: SGDClassifier(**KW), lambda: SGDRegressor(**KW),
    lambda: MLPClassifier(hidden_layer_sizes=(5,), **KW),
    lambda: MLPRegressor(hidden_layer_sizes=(5,), **KW),
    lambda: StandardScaler(), lambda: MinMaxScaler((-1, 2))])
def test_every_fitted_estimator_pickles_and_joblib_dumps(make, tmp_path):
    import joblib
    import pickle
    X, codes = _labelled(200)
    est = make()
    y = np.array(["x", "y", "z"])[codes] if is_classifier(est) else X @ np.arange(4.0)
    est.fit(X, y)
    out = (lambda e: e.transform(X)) if hasattr(est, "transform") else (lambda e: e.predict(X))
    joblib.dump(est, tmp_path / "m.joblib")
    for back in (pickle.loads(pickle.dumps(est)), joblib.load(tmp_path / "m.joblib")):
        assert back.comm is None
        np.testing.assert_array_equal(out(back), out(est))


def test_cross_val_score_roc_auc_of_an_mlp_equals_the_folds_by_hand():
    from sklearn.metrics import get_scorer
    X, y = _data()
    pipe = make_pipeline(StandardScaler(),
                         MLPClassifier(hidden_layer_sizes=(6,), **dict(KW, max_iter=60)))
    cv = KFold(3, shuffle=True, random_state=2)
    got = cross_val_score(pipe, X, y, scoring="roc_auc", cv=cv)
    ref = [get_scorer("roc_auc")(clone(pipe).fit(X[tr], y[tr]), X[te], y[te])
           for tr, te in cv.split(X)]
    assert np.isfinite(got).all() and got.min() > 0.7
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.mpi
def test_string_labels_over_ranks_give_the_one_process_model(comm):
    # each rank sees only some of the labels; one rank may hold no rows at all
    from mpi4py import MPI
    X, codes = _labelled(240)
    names = np.array(["alpha", "beta", "gamma"])
    order = np.argsort(codes, kind="stable")            # rank 0 gets mostly "alpha"
    X, codes = X[order], codes[order]
    lo, hi = chunk(len(X), comm.size, comm.rank)
    if comm.size == 3 and comm.rank == 1:
        lo = hi                                          # an empty rank
    kw = dict(KW, batch_size=16)
    mine = SGDClassifier(**kw).fit(X[lo:hi], names[codes[lo:hi]])
    rows = comm.allgather((lo, hi))
    keep = np.concatenate([np.arange(a, b) for a, b in rows])
    one = SGDClassifier(**kw, comm=MPI.COMM_SELF).fit(X[keep], names[codes[keep]])
    ok = list(mine.classes_) == list(names) and \
        np.allclose(mine.coef_, one.coef_, rtol=1e-9, atol=1e-12) and \
        np.array_equal(mine.predict(X), one.predict(X))
    assert all(comm.allgather(bool(ok)))


@pytest.mark.mpi(min_size=2)
def test_an_agreed_error_keeps_scikit_learns_class_on_every_rank(comm):
    import scipy.sparse
    from sklearn.exceptions import NotFittedError
    X, codes = _labelled(60)
    lo, hi = chunk(len(X), comm.size, comm.rank)
    Xl = scipy.sparse.csr_matrix(X[lo:hi]) if comm.rank == comm.size - 1 else X[lo:hi]
    # one rank's input refused by scikit-learn's check (the MLPs take dense rows only; the
    # SGD models take CSR rows since issue 21, and refuse a mix with mpiml's DataError)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        MLPClassifier(max_iter=1).fit(Xl, codes[lo:hi])
    mixed = codes[lo:hi].astype(str) if comm.rank == 0 else codes[lo:hi]
    with pytest.raises(ValueError, match="different types"):
        SGDClassifier(**KW).fit(X[lo:hi], mixed)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X[lo:hi])
    assert comm.allreduce(1) == comm.size       # still in step


@pytest.mark.mpi(min_size=2)
def test_joblib_workers_inside_an_mpi_job_are_refused_on_every_rank(comm):
    from mpiml.errors import ConfigError
    X, y = _data()
    lo, hi = chunk(len(X), comm.size, comm.rank)
    search = GridSearchCV(SGDClassifier(**KW), {"alpha": [1e-4, 1e-3]}, cv=2, n_jobs=2)
    with pytest.raises(ConfigError, match="mpiml tune"):
        search.fit(X[lo:hi], y[lo:hi])
    # n_jobs=1: each rank runs the same search on its rows, the fits are collective
    one = GridSearchCV(SGDClassifier(**KW), {"alpha": [1e-4, 1e-3]}, cv=2).fit(X[lo:hi], y[lo:hi])
    assert len(set(comm.allgather(str(one.best_params_)))) == 1


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_mlp_sample_weights_are_repeated_rows_in_a_full_batch_step(cls):
    # one full-batch step: the weighted gradient sum over n rows equals the gradient sum
    # over the rows repeated w times (sum(w) rows), so with the step size scaled by
    # sum(w)/n the two updates are the same
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int) if cls is MLPClassifier else X @ np.array([1.0, -2.0, 0.5])
    w = rng.integers(0, 4, size=40)
    kw = dict(hidden_layer_sizes=(4,), solver="sgd", momentum=0.0, alpha=0.0, batch_size="full",
              max_iter=1, tol=None, random_state=0)
    weighted = cls(learning_rate_init=0.1, **kw).fit(X, y, sample_weight=w)
    repeated = cls(learning_rate_init=0.1 * w.sum() / len(w), **kw).fit(np.repeat(X, w, axis=0),
                                                                       np.repeat(y, w))
    for a, b in zip(weighted.coefs_ + weighted.intercepts_, repeated.coefs_ + repeated.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    ones = cls(learning_rate_init=0.1, **kw).fit(X, y, sample_weight=np.ones(40))
    plain = cls(learning_rate_init=0.1, **kw).fit(X, y)
    np.testing.assert_array_equal(ones.coefs_[0], plain.coefs_[0])
    with pytest.raises(ValueError, match="at least one non-zero"):
        cls(**kw).fit(X, y, sample_weight=np.zeros(40))
