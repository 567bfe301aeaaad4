"""examples/c/predict.c (the HDF5 C API) predicts what mpiml predicts, for model format
versions 1 to 3 and class labels of every stored type."""
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier, SGDRegressor

pytestmark = [pytest.mark.launcher,
              pytest.mark.skipif(shutil.which("h5cc") is None,
                                 reason="the HDF5 C library (h5cc) is not installed: "
                                        "apt-get install libhdf5-dev")]
SRC = __file__.rsplit("/tests/", 1)[0] + "/examples/c/predict.c"
V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v1")


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    d = tmp_path_factory.mktemp("c")
    # (h5cc leaves its object file in the working directory: compile in d)
    r = subprocess.run([shutil.which("h5cc"), "-std=c99", "-Wall", "-Wextra", "-o",
                        str(d / "predict"), SRC, "-lm"], capture_output=True, text=True, cwd=d,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    return d / "predict"


def _predict(exe, model, X, tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"] = X
    r = subprocess.run([str(exe), str(model), str(tmp_path / "d.h5")], capture_output=True,
                       timeout=60)
    return r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8", "replace")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,scaler", [("binary", None), ("multiclass", None),
                                         ("regression", None), ("binary", "standard"),
                                         ("multiclass", "minmax"), ("regression", "standard")])
def test_c_predictions_equal_mpiml(exe, tmp_path, kind, scaler):
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
    code, out, err = _predict(exe, tmp_path / "m.h5", X, tmp_path)
    assert code == 0, err
    got = np.array([float(v) for v in out.split()])
    want = est.predict(X)
    if kind == "regression":
        np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)


LABELS = {"int": np.array([-7, 3, 12]), "int-beyond-float64": np.array([-2 ** 62, 1, 2 ** 62 + 1]),
          "float": np.array([-1.0, 0.0, 2.0]), "bool": np.array([False, True]),
          "str": np.array(["cat", "dog", "émeu 日本"])}


def _text(v):
    """A label as the C program prints it."""
    return f"{v:.17g}" if isinstance(v, float) else str(v)


LABEL_CASES = [(k, c) for k in sorted(LABELS) for c in (2, 3) if c <= len(LABELS[k])]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,n_classes", LABEL_CASES, ids=[f"{k}-{c}" for k, c in LABEL_CASES])
def test_c_prints_the_labels_of_their_type(exe, tmp_path, kind, n_classes):
    labels = LABELS[kind][:n_classes]
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = labels[np.argmax(X[:, :n_classes], axis=1)]
    est = SGDClassifier(tol=None, max_iter=3, random_state=0, scaler="standard",
                        comm=MPI.COMM_SELF).fit(X, y)
    est.save(tmp_path / "m.h5")
    code, out, err = _predict(exe, tmp_path / "m.h5", X, tmp_path)
    assert code == 0, err
    assert out.splitlines() == [_text(v) for v in est.predict(X).tolist()]
    assert len(set(out.splitlines())) > 1          # not one constant label


@pytest.mark.timeout(120)
def test_c_reads_fixed_length_strings_and_v1_files(exe, tmp_path):
    """Fixed-length ASCII labels (another writer's strings) and a version-1 file with
    float classes, as the format document allows."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 3))
    est = SGDClassifier(tol=None, max_iter=2, random_state=0, comm=MPI.COMM_SELF)
    est.fit(X, np.array(["ab", "cd", "ef"])[np.argmax(X, axis=1)]).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        del f["classes"]
        f["classes"] = np.array([b"ab", b"cd", b"ef"], dtype="S8")
    code, out, err = _predict(exe, tmp_path / "m.h5", X, tmp_path)
    assert code == 0, err
    assert out.splitlines() == est.predict(X).tolist()
    ref = np.load(os.path.join(V1, "expected.npz"))
    code, out, err = _predict(exe, os.path.join(V1, "softmax.h5"), ref["X"], tmp_path)
    assert code == 0, err
    np.testing.assert_array_equal(np.array(out.split(), dtype=float), ref["softmax_predict"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["newer version", "classes do not match", "compound classes"])
def test_c_refuses_what_it_cannot_read(exe, tmp_path, case):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 3))
    est = SGDClassifier(tol=None, max_iter=2, random_state=0, comm=MPI.COMM_SELF)
    est.fit(X, np.array(["a", "b", "c"])[np.argmax(X, axis=1)]).save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        if case == "newer version":
            f.attrs["format_version"] = 4
        else:
            del f["classes"]
            f["classes"] = (np.array(["a", "b"], dtype=h5py.string_dtype())
                            if case == "classes do not match"
                            else np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]))
    code, out, err = _predict(exe, tmp_path / "m.h5", X, tmp_path)
    assert code == 1 and out == "", (out, err)
    assert ("version 4" in err) if case == "newer version" else ("classes" in err), err
