"""GridSearchCV / RandomizedSearchCV over rank groups (run at 1, 2 and 3 ranks)."""
import os

import numpy as np
import pytest

from mpiml import SGDClassifier
from mpiml.datasets import make_data
from mpiml.tune import GridSearchCV, RandomizedSearchCV


def _est():
    return SGDClassifier(loss="log_loss", learning_rate="constant", batch_size=64, max_iter=1,
                         tol=None, random_state=0)


@pytest.mark.mpi
def test_grid_search_is_the_same_for_every_group_size(comm, shared_tmp):
    from test_tune import _serial_scores

    path = os.path.join(shared_tmp, "d.h5")
    make_data("binary", 1500, 6, path, seed=3, dtype="float64", comm=comm)
    ref = _serial_scores(path, [1e-5, 0.3], 3)
    for group in sorted({1, comm.size}):
        g = GridSearchCV(_est(), {"eta0": [1e-5, 0.3]}, cv=3, group_size=group,
                         comm=comm).fit(path)
        assert g.best_params_ == {"eta0": 0.3}
        for s in g.cv_results_:
            mean, std = ref[s["params"]["eta0"]]
            assert abs(s["mean_score"] - mean) < 1e-8 and abs(s["std_score"] - std) < 1e-8
        assert g.best_estimator_.score(*_local(path, comm)) > 0.85


@pytest.mark.mpi
def test_grid_search_with_model_parallel_estimators(comm, shared_tmp):
    """An estimator with model_parallel=K is split inside each group of K ranks (the
    loader gives a model-parallel group the same rows); scores equal unsplit fits."""
    from test_tune import _serial_scores

    path = os.path.join(shared_tmp, "d.h5")
    make_data("binary", 900, 6, path, seed=3, dtype="float64", comm=comm)
    ref = _serial_scores(path, [1e-5, 0.3], 2)
    est = _est().set_params(model_parallel=comm.size, shard="features")
    g = GridSearchCV(est, {"eta0": [1e-5, 0.3]}, cv=2, group_size=comm.size,
                     comm=comm).fit(path)
    for s in g.cv_results_:
        mean, _ = ref[s["params"]["eta0"]]
        assert s["status"] == "ok" and abs(s["mean_score"] - mean) < 1e-8, s


def _local(path, comm):
    from mpiml import load_hdf5
    return load_hdf5(path, comm=comm)


@pytest.mark.mpi
def test_randomized_search_draws_distinct_configurations(comm, shared_tmp):
    path = os.path.join(shared_tmp, "d.h5")
    make_data("binary", 600, 4, path, seed=1, dtype="float64", comm=comm)
    r = RandomizedSearchCV(_est(), {"eta0": [1e-5, 1e-4, 0.3], "alpha": [1e-4, 1e-3]},
                           n_iter=3, cv=2, comm=comm).fit(path)
    params = [tuple(sorted(s["params"].items())) for s in r.cv_results_]
    assert len(params) == 3 and len(set(params)) == 3
    assert np.isfinite(r.best_score_)
