"""examples/c/predict.c (the HDF5 C API) predicts what mpiml predicts."""
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier, SGDRegressor

pytestmark = pytest.mark.launcher
H5CC = shutil.which("h5cc")
SRC = __file__.rsplit("/tests/", 1)[0] + "/examples/c/predict.c"


@pytest.mark.skipif(H5CC is None, reason="the HDF5 C library (h5cc) is not installed: "
                                         "apt-get install libhdf5-dev")
@pytest.mark.parametrize("kind,scaler", [("binary", None), ("multiclass", None),
                                         ("regression", None), ("binary", "standard"),
                                         ("multiclass", "minmax"), ("regression", "standard")])
def test_c_predictions_equal_mpiml(tmp_path, kind, scaler):
    exe = tmp_path / "predict"
    # (h5cc leaves its object file in the working directory: compile in tmp_path)
    r = subprocess.run([H5CC, "-o", str(exe), SRC, "-lm"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    kw = dict(tol=None, max_iter=3, random_state=0, comm=MPI.COMM_SELF, scaler=scaler)
    if scaler:                              # the C program scales the raw rows itself
        X = X * [100.0, 0.1, 1.0, 3.0, 1.0] + [50.0, -1.0, 0.0, 4.0, 1e3]
    if kind == "regression":
        est = SGDRegressor(**kw).fit(X, X @ np.arange(5.0))
    elif kind == "binary":
        est = SGDClassifier(**kw).fit(X, (X[:, 0] > 0).astype(int) * 5 + 2)
    else:
        est = SGDClassifier(**kw).fit(X, np.argmax(X[:, :4], axis=1))
    est.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert ("scaler" in f) == bool(scaler)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = X
    r = subprocess.run([str(exe), str(tmp_path / "m.h5"), str(tmp_path / "d.h5")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = np.array([float(v) for v in r.stdout.split()])
    want = est.predict(X)
    if kind == "regression":
        np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)
