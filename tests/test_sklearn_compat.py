"""mpiml's estimators where scikit-learn estimators go (issue 19, items 1 and 3): clone,
Pipeline, cross_val_score with any scorer, GridSearchCV with joblib workers, each with
results equal to the same estimator used directly; and inside an MPI job, the same
pipeline on each rank's rows gives the model one process gives on all rows. Importing
mpiml does not import scikit-learn (about 1 s per process)."""
import subprocess
import sys

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


def test_importing_mpiml_does_not_import_scikit_learn():
    code = "import sys, mpiml, mpiml.cli; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


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
