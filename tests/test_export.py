"""ONNX export against onnxruntime, for every model type, at any rank count (split
models export their logical weights)."""
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor, chunk, get_grid
from mpiml.export import to_onnx

ort = pytest.importorskip("onnxruntime")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(240, 5))
    return X, {"binary": (X[:, 0] > 0).astype(int) * 2 + 1,       # labels 1, 3
               "multi": np.argmax(X[:, :3], axis=1),
               "reg": X @ np.arange(5.0) + 0.5}


def _run(model, X, dtype):
    sess = ort.InferenceSession(to_onnx(model, dtype).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"X": X.astype(dtype)})))


CASES = [(SGDClassifier, {}, "binary"), (SGDClassifier, {}, "multi"),
         (SGDClassifier, {"loss": "hinge"}, "binary"), (SGDClassifier, {"loss": "hinge"}, "multi"),
         (SGDRegressor, {}, "reg"), (MLPClassifier, {"hidden_layer_sizes": (7, 4)}, "multi"),
         (MLPClassifier, {"hidden_layer_sizes": (6,), "activation": "tanh"}, "binary"),
         (MLPRegressor, {"hidden_layer_sizes": (5,)}, "reg")]


@pytest.mark.mpi
@pytest.mark.parametrize("cls,kw,target", CASES,
                         ids=[f"{c.__name__}-{t}-{k.get('loss', '')}" for c, k, t in CASES])
def test_onnxruntime_equals_mpiml(comm, cls, kw, target):
    X, ys = _data()
    y = ys[target]
    k = comm.size if cls in (MLPClassifier, MLPRegressor) or target == "multi" else 1
    if cls is SGDClassifier and kw.get("loss") == "hinge":
        k = 1
    grid = get_grid(comm, k)
    lo, hi = chunk(len(X), grid.D, grid.data_rank)
    est = cls(**kw, tol=None, max_iter=3, random_state=0, model_parallel=k).fit(X[lo:hi], y[lo:hi])
    for dtype in ("float64", "float32"):
        out = _run(est, X, dtype)                         # collective for a split model
        tol = 1e-12 if dtype == "float64" else 1e-5
        if "label" in out:
            np.testing.assert_array_equal(out["label"], est.predict(X))
            if "probabilities" in out:
                np.testing.assert_allclose(out["probabilities"], est.predict_proba(X), atol=tol)
            else:
                np.testing.assert_allclose(out["scores"].reshape(len(X), -1),
                                           np.asarray(est.decision_function(X)).reshape(len(X), -1),
                                           atol=tol * 10, rtol=tol)
        else:
            np.testing.assert_allclose(out["variable"].ravel(), est.predict(X), atol=tol * 10,
                                       rtol=tol)


@pytest.mark.mpi
def test_export_cli_file_loads(comm, shared_tmp):
    X, ys = _data()
    if comm.rank == 0:
        est = SGDClassifier(tol=None, max_iter=2, random_state=0, comm=MPI.COMM_SELF)
        est.fit(X, ys["multi"]).save(os.path.join(shared_tmp, "m.h5"))
    comm.barrier()
    from mpiml.export import export_onnx
    from mpiml.models import load
    est = load(os.path.join(shared_tmp, "m.h5"), comm=comm.mpi)
    path = os.path.join(shared_tmp, "m.onnx")
    export_onnx(est, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    label = sess.run(["label"], {"X": X.astype(np.float32)})[0]
    np.testing.assert_array_equal(label, est.predict(X))
