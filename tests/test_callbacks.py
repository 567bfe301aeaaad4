"""Epoch callbacks and validation data, at any rank count."""
import numpy as np
import pytest

from mpiml import MLPClassifier, SGDClassifier
from mpiml.models.steering import EarlyStopping


def _data(comm, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X @ rng.normal(size=6) + 0.5 * rng.normal(size=n) > 0).astype(int)
    lo, hi = comm.chunk(n)
    return X[lo:hi], y[lo:hi]


@pytest.mark.mpi
def test_early_stopping_on_validation_loss_stops_every_rank_together(comm):
    X, y = _data(comm)
    Xv, yv = _data(comm, n=600, seed=1)
    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=1e-3)
    est = SGDClassifier(learning_rate="constant", eta0=0.05, tol=None, max_iter=200,
                        random_state=0).fit(X, y, validation=(Xv, yv), callbacks=[stopper])
    assert est.n_iter_ < 200 and est.stopped_by_.startswith("early stopping: val_loss did not")
    assert comm.allgather(est.n_iter_) == [est.n_iter_] * comm.size
    assert stopper.wait == 2


class Halve:
    """Halve the learning rate after every epoch (a user callback changing a parameter)."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, est, logs):
        self.seen.append(logs["lr"])
        est.set_params(**{"eta0" if hasattr(est, "eta0") else "learning_rate_init":
                          logs["lr"] / 2})
        return False


@pytest.mark.mpi
@pytest.mark.parametrize("cls", [SGDClassifier, MLPClassifier])
def test_a_callback_changes_the_learning_rate(comm, cls):
    X, y = _data(comm, n=600)
    halve = Halve()
    kw = dict(max_iter=4, tol=None, random_state=0)
    if cls is SGDClassifier:
        kw.update(learning_rate="constant", eta0=0.08)
    else:
        kw.update(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=0.08)
    cls(**kw).fit(X, y, callbacks=[halve])
    assert halve.seen == [0.08, 0.04, 0.02, 0.01]
    # the same as a run told each epoch's rate explicitly: a one-epoch partial_fit chain
    ref = cls(**kw)
    for lr in (0.08, 0.04, 0.02, 0.01):
        ref.set_params(**{"eta0" if cls is SGDClassifier else "learning_rate_init": lr})
        ref.partial_fit(X, y, classes=[0, 1])
    est = cls(**kw).fit(X, y, callbacks=[Halve()])
    a = est.coef_ if cls is SGDClassifier else est.coefs_[0]
    b = ref.coef_ if cls is SGDClassifier else ref.coefs_[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
