"""Files written by earlier versions still work.

``tests/fixtures/v1`` holds model files and mid-epoch checkpoints written by the code
before the fit-session redesign (tests/fixtures/make_fixtures.py says how). Today's
code must load those models to the same predictions and resume those checkpoints,
on any rank count, to the same final models; and reading them never changes them.
"""
import hashlib
import os
import shutil
import sys

import numpy as np
import pytest

from mpiml import chunk
from mpiml.models import load

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
V1 = os.path.join(HERE, "v1")
sys.path.insert(0, HERE)
from make_fixtures import COMMON, MODELS  # noqa: E402


def _digest(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            with open(os.path.join(root, f), "rb") as fh:
                h.update(f.encode() + fh.read())
    return h.hexdigest()


def _agree(comm, ok, what):
    verdict = comm.allgather(bool(ok))
    assert all(verdict), f"{what} differs on rank(s) {[r for r, v in enumerate(verdict) if not v]}"


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(V1, "expected.npz"))


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(MODELS))
def test_v1_model_file_predicts_as_before(comm, expected, name):
    before = _digest(V1)
    X = expected["X"]
    lo, hi = chunk(len(X), comm.size, comm.rank)
    est = load(os.path.join(V1, f"{name}.h5"))
    got = est.predict(X[lo:hi])
    ref = expected[f"{name}_predict"][lo:hi]
    ok = np.array_equal(got, ref) if name != "linear" else np.allclose(got, ref, rtol=1e-12)
    _agree(comm, ok, f"{name}: predictions of the v1 model file")
    comm.barrier()
    _agree(comm, _digest(V1) == before, "the fixture directory")


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(MODELS))
def test_v1_checkpoint_resumes_to_the_same_model(comm, shared_tmp, expected, name):
    cls, kw = MODELS[name]
    src = os.path.join(V1, f"ckpt-{name}")
    before = _digest(src)
    ckdir = os.path.join(shared_tmp, f"ckpt-{name}")
    if comm.rank == 0:
        shutil.copytree(src, ckdir)
    comm.barrier()
    X = expected["X"]
    y = expected["y_reg"] if name == "linear" else expected["y_cls"]
    lo, hi = chunk(len(X), comm.size, comm.rank)
    est = cls(**COMMON, **kw).fit(X[lo:hi], y[lo:hi], resume=ckdir)
    if hasattr(est, "coef_"):
        flat = np.concatenate([np.ravel(est.coef_), np.ravel(est.intercept_)])
    else:
        coefs, intercepts = est.gather_params()
        flat = np.concatenate([np.ravel(a) for a in [*coefs, *intercepts]])
    # the same answer on any rank count, up to the order of the gradient sums
    ok = (np.allclose(flat, expected[f"{name}_resumed_params"], rtol=1e-9, atol=1e-12)
          and np.allclose(est.loss_curve_, expected[f"{name}_resumed_loss_curve"], rtol=1e-9)
          and est.n_iter_ == COMMON["max_iter"])
    _agree(comm, ok, f"{name}: the model resumed from the v1 checkpoint")
    _agree(comm, _digest(src) == before, "the fixture checkpoint")
