"""Validation never changes training.

A fit given validation rows (and, besides, a checkpoint directory and a run
directory) must follow exactly the same trajectory as the same fit without them:
the same loss curve, bit for bit, and the same final parameters. Checked for the
MLPs (adam and sgd solvers, classifier and regressor) and the linear models, in
every synchronous mode and for a parameter server with one worker (whose single
worker makes it deterministic), at any rank count.

The asynchronous parameter server with several workers may legitimately differ
(meeting at epoch ends changes the interleaving of pushes): see docs/sync.md.
"""
import os

import numpy as np
import pytest

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor, chunk
from mpiml.models.steering import EarlyStopping

N, D = 360, 6

MODELS = {
    "mlp-adam": (MLPClassifier, dict(hidden_layer_sizes=(8,), solver="adam",
                                      learning_rate_init=0.01)),
    "mlp-sgd": (MLPClassifier, dict(hidden_layer_sizes=(8,), solver="sgd",
                                     learning_rate_init=0.05, momentum=0.9)),
    "mlp-regression": (MLPRegressor, dict(hidden_layer_sizes=(8, 5), solver="adam",
                                          learning_rate_init=0.01)),
    "logistic": (SGDClassifier, dict(loss="log_loss", learning_rate="constant", eta0=0.05)),
    "linear": (SGDRegressor, dict(learning_rate="constant", eta0=0.01)),
}
MODES = {"allreduce": {}, "local4": dict(sync="local:4"), "overlap": dict(overlap=True),
         "fp16": dict(compress="fp16")}


def _data(regression, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    z = X[:, 0] * X[:, 1] + X[:, 2] - 0.5 * X[:, 3]
    y = z + 0.1 * rng.normal(size=N) if regression else (z > 0).astype(int)
    return X, y


def _pair(comm, shared_tmp, name, cls, kw, rows):
    """Fit the same model without validation, with it, and with it plus checkpoints, a run
    directory and a callback."""
    regression = cls in (MLPRegressor, SGDRegressor)
    X, y = _data(regression)
    Xv, yv = _data(regression, seed=1)
    lo, hi = rows
    vlo, vhi = chunk(N, comm.size, comm.rank)
    common = dict(batch_size=32, max_iter=5, tol=None, random_state=3, dtype="float64", **kw)
    plain = cls(**common).fit(X[lo:hi], y[lo:hi])
    validated = cls(**common).fit(X[lo:hi], y[lo:hi], validation=(Xv[vlo:vhi], yv[vlo:vhi]))
    base = os.path.join(shared_tmp, name)
    watched = cls(**common, checkpoint_dir=os.path.join(base, "ckpt"), checkpoint_every=4,
                  run_dir=os.path.join(base, "run"))
    watched.fit(X[lo:hi], y[lo:hi], validation=(Xv[vlo:vhi], yv[vlo:vhi]),
                callbacks=[EarlyStopping(monitor="val_loss", patience=100)])
    return plain, validated, watched


def _flat(est):
    if hasattr(est, "coef_"):
        return np.concatenate([np.ravel(est.coef_), np.ravel(est.intercept_)])
    coefs, intercepts = est.gather_params()
    return np.concatenate([np.ravel(a) for a in [*coefs, *intercepts]])


def _same(comm, plain, *others):
    ok = all(np.array_equal(plain.loss_curve_, o.loss_curve_)
             and np.array_equal(_flat(plain), _flat(o)) and plain.n_iter_ == o.n_iter_
             for o in others)
    verdict = comm.allgather(bool(ok))
    assert all(verdict), (f"validation changed training on rank(s) "
                          f"{[r for r, v in enumerate(verdict) if not v]}: "
                          f"{plain.loss_curve_} vs {[o.loss_curve_ for o in others]}")


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", list(MODELS))
def test_validation_never_changes_training(comm, shared_tmp, model, mode):
    cls, kw = MODELS[model]
    plain, validated, watched = _pair(comm, shared_tmp, f"{model}-{mode}", cls,
                                      {**kw, **MODES[mode]}, chunk(N, comm.size, comm.rank))
    _same(comm, plain, validated, watched)
    # the fit went on learning after the first epochs (the MLP bug froze it at epoch 3)
    assert watched.loss_curve_[-1] < watched.loss_curve_[1]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", ["logistic", "linear"])
def test_validation_never_changes_a_one_worker_parameter_server(comm, shared_tmp, model):
    cls, kw = MODELS[model]
    servers = comm.size - 1                   # the last ranks serve; rank 0 is the one worker
    rows = (0, N) if comm.rank == 0 else (0, 0)
    plain, validated, watched = _pair(comm, shared_tmp, f"ps-{model}", cls,
                                      {**kw, "sync": f"ps:{servers}"}, rows)
    _same(comm, plain, validated, watched)
