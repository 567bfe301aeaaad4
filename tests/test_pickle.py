"""Fitted models pickle without their communicator (issue 19, item 3): the unpickled
model predicts exactly as the original, binds COMM_WORLD (``comm=None``), and a model
split over ranks refuses with one message (it holds only its shard)."""
import pickle

import numpy as np
import pytest

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor, chunk
from mpiml.errors import ConfigError


@pytest.mark.parametrize("cls,kw", [(SGDClassifier, {}), (SGDRegressor, {}),
                                    (MLPClassifier, {"hidden_layer_sizes": (5,)}),
                                    (MLPRegressor, {"hidden_layer_sizes": (5, 3)})])
def test_a_fitted_model_pickles_without_its_communicator(cls, kw):
    from mpi4py import MPI
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int) if cls in (SGDClassifier, MLPClassifier) else X @ np.ones(4)
    est = cls(max_iter=3, tol=None, random_state=0, comm=MPI.COMM_WORLD, **kw).fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    assert back.comm is None and est.comm is MPI.COMM_WORLD
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    assert back.n_iter_ == est.n_iter_ and back.loss_curve_ == est.loss_curve_
    # and it goes on training from where it was
    np.testing.assert_array_equal(back.partial_fit(X, y).predict(X), est.partial_fit(X, y).predict(X))


@pytest.mark.mpi(min_size=2)
def test_a_split_model_refuses_to_pickle(comm):
    X = np.random.default_rng(0).normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    if comm.size % 2:
        pytest.skip("a 2-way split needs an even rank count")
    g = comm.rank // 2
    lo, hi = chunk(60, comm.size // 2, g)
    est = SGDClassifier(max_iter=1, tol=None, model_parallel=2, shard="features").fit(X[lo:hi],
                                                                                      y[lo:hi])
    with pytest.raises(ConfigError, match="save"):
        pickle.dumps(est)
