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


LABELS = {"int": np.array([-4, 2, 9]), "float": np.array([-1.0, 0.0, 2.0]),
          "bool": np.array([False, True]), "str": np.array(["cat", "dog", "émeu 日本"]),
          "object-str": np.array(["a", "b", "c"], dtype=object)}
ONNX_TYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_, "str": object,
              "object-str": object}
LABEL_CASES = [(m, k, c) for m in ("softmax", "hinge", "mlp") for k in LABELS for c in (2, 3)
               if not (k == "bool" and c == 3)]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("model,kind,n_classes", LABEL_CASES,
                         ids=[f"{m}-{k}-{c}" for m, k, c in LABEL_CASES])
def test_the_label_output_has_the_label_type(comm, model, kind, n_classes):
    """onnxruntime's ``label`` is of the labels' own type (int64, double, bool, string)
    and equals mpiml's predictions, for a model fitted over the ranks."""
    X, _ = _data()
    labels = LABELS[kind][:n_classes]
    y = labels[np.argmax(X[:, :n_classes], axis=1)]
    lo, hi = chunk(len(X), comm.size, comm.rank)
    kw = {"hidden_layer_sizes": (5,)} if model == "mlp" else {"loss": "log_loss" if model ==
                                                              "softmax" else "hinge"}
    cls = MLPClassifier if model == "mlp" else SGDClassifier
    est = cls(**kw, tol=None, max_iter=3, random_state=0).fit(X[lo:hi], y[lo:hi])
    out = _run(est, X, "float64")
    assert out["label"].dtype == ONNX_TYPES[kind]
    assert out["label"].tolist() == est.predict(X).tolist()
    if kind in ("str", "object-str"):
        assert all(type(v) is str for v in out["label"])


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("cls,kw", [(SGDClassifier, {}), (SGDRegressor, {}),
                                    (MLPClassifier, {"hidden_layer_sizes": (4,)})])
def test_feature_names_go_into_the_metadata(comm, cls, kw):
    import json

    import onnx
    import pandas as pd
    X, ys = _data()
    names = ["x0", "größe", "a b", "日本", "x4"]
    y = ys["reg"] if cls is SGDRegressor else ys["multi"]
    lo, hi = chunk(len(X), comm.size, comm.rank)
    est = cls(**kw, tol=None, max_iter=2, random_state=0).fit(
        pd.DataFrame(X, columns=names).iloc[lo:hi], y[lo:hi])
    model = onnx.load_from_string(to_onnx(est).SerializeToString())
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["feature_names"]) == names
    plain = cls(**kw, tol=None, max_iter=2, random_state=0).fit(X[lo:hi], y[lo:hi])
    assert "feature_names" not in {p.key for p in to_onnx(plain).metadata_props}
    # the graph is the same either way: the names are metadata only
    np.testing.assert_array_equal(_run(est, X, "float64")[
        "variable" if cls is SGDRegressor else "label"], _run(plain, X, "float64")[
        "variable" if cls is SGDRegressor else "label"])


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_a_loaded_string_label_model_exports_its_labels(comm, shared_tmp):
    """Model file (format version 3) -> load -> ONNX: the string labels survive both."""
    from mpiml.models import load
    X, _ = _data()
    y = np.array(["no", "maybe", "sí"])[np.argmax(X[:, :3], axis=1)]
    path = os.path.join(shared_tmp, "m.h5")
    if comm.rank == 0:
        SGDClassifier(tol=None, max_iter=2, random_state=0, comm=MPI.COMM_SELF).fit(X, y).save(path)
    comm.barrier()
    est = load(path, comm=comm.mpi, model_parallel=comm.size)      # split over the ranks
    label = _run(est, X, "float32")["label"]
    assert label.dtype == object and label.tolist() == est.predict(X).tolist()
    assert set(label.tolist()) <= {"no", "maybe", "sí"}
