"""Feature scaling inside the estimators (``scaler=``) at 1, 2 and 3 ranks: the fit equals
a fit on rows scaled by scikit-learn's scaler, every prediction path applies it to raw
rows, the model file keeps it (loadable at another rank count), and onnxruntime
and linear SHAP agree."""
import h5py
import numpy as np
import pytest
from mpi4py import MPI
from sklearn.preprocessing import MinMaxScaler as SkMinMax
from sklearn.preprocessing import StandardScaler as SkStandard

from mpiml import MLPClassifier, SGDClassifier, SGDRegressor, chunk, get_grid
from mpiml.errors import DataError
from mpiml.explain import global_mean, linear_shap
from mpiml.io import MODEL_FORMAT, check_format
from mpiml.models import load
from mpiml.models.scaling import raw_linear

SK = {"standard": SkStandard, "minmax": SkMinMax}


def _data(n=301, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)) * [1e3, 1e-2, 1.0, 5.0, 1e2] + [1e4, 0.0, 3.0, -2.0, 0.0]
    z = (X - X.mean(0)) / X.std(0)
    return X, {"binary": (z @ [1.0, -2.0, 0.5, 0.0, 1.5] > 0).astype(int),
               "multi": np.argmax(z[:, :3], axis=1),
               "reg": z @ np.arange(5.0) + 0.5}


def _rows(comm, X, K=1):
    grid = get_grid(comm, K)
    lo, hi = chunk(len(X), grid.D, grid.data_rank)
    return slice(lo, hi)


CASES = [(SGDClassifier, {}, "binary"), (SGDClassifier, {}, "multi"),
         (SGDRegressor, {}, "reg"), (MLPClassifier, {"hidden_layer_sizes": (6,)}, "multi")]
IDS = [f"{c.__name__}-{t}" for c, _, t in CASES]


def _fit(cls, kw, X, y, comm, **more):
    return cls(**kw, tol=None, max_iter=3, batch_size=32, random_state=0, comm=comm,
               **more).fit(X, y)


@pytest.mark.mpi
@pytest.mark.parametrize("kind", ["standard", "minmax"])
@pytest.mark.parametrize("cls,kw,target", CASES, ids=IDS)
def test_fit_equals_fit_on_sklearn_scaled_rows(comm, cls, kw, target, kind):
    X, ys = _data()
    y = ys[target]
    r = _rows(comm, X)
    est = _fit(cls, kw, X[r], y[r], comm, scaler=kind)
    ref_scaler = SK[kind]().fit(X)                 # scikit-learn on the gathered rows
    off = ref_scaler.mean_ if kind == "standard" else -ref_scaler.min_ / ref_scaler.scale_
    fac = ref_scaler.scale_ if kind == "standard" else 1.0 / ref_scaler.scale_
    np.testing.assert_allclose(est.scale_offset_, off, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(est.scale_factor_, fac, rtol=1e-12)
    Z = ref_scaler.transform(X)
    ref = _fit(cls, kw, Z[r], y[r], comm)          # no scaler, pre-scaled rows
    if hasattr(est, "coef_"):
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-10, atol=1e-10)
    # every prediction path takes raw rows
    if hasattr(est, "classes_"):
        np.testing.assert_array_equal(est.predict(X), ref.predict(Z))
        np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(Z), atol=1e-10)
    else:
        np.testing.assert_allclose(est.predict(X), ref.predict(Z), rtol=1e-10, atol=1e-10)
    if hasattr(est, "decision_function"):
        np.testing.assert_allclose(est.decision_function(X), ref.decision_function(Z),
                                   rtol=1e-10, atol=1e-10)
    assert abs(est.score(X[r], y[r]) - ref.score(Z[r], y[r])) < 1e-10
    # scaling helps: unscaled SGD on features of scale 1e4 does much worse
    if target == "binary" and kind == "standard":
        raw = _fit(cls, kw, X[r], y[r], comm)
        assert est.score(X[r], y[r]) > 0.9 > raw.score(X[r], y[r])


@pytest.mark.mpi
def test_validation_during_fit_sees_scaled_rows(comm):
    X, ys = _data()
    y = ys["binary"]
    r = _rows(comm, X)
    logs = []

    class Keep:
        def on_epoch_end(self, est, log):
            logs.append(log)
            return False

    est = _fit(SGDClassifier, {}, X[r], y[r], comm, scaler="standard")
    est2 = SGDClassifier(tol=None, max_iter=3, batch_size=32, random_state=0, comm=comm,
                         scaler="standard").fit(X[r], y[r], validation=(X[r], y[r]),
                                                callbacks=[Keep()])
    np.testing.assert_array_equal(est.coef_, est2.coef_)
    assert abs(logs[-1]["val_accuracy"] - est.score(X[r], y[r])) < 1e-12


@pytest.mark.mpi
@pytest.mark.parametrize("cls,kw,target", CASES, ids=IDS)
def test_model_file_keeps_the_scaler(comm, shared_tmp, cls, kw, target):
    X, ys = _data()
    y = ys[target]
    r = _rows(comm, X)
    est = _fit(cls, kw, X[r], y[r], comm, scaler="standard")
    path = f"{shared_tmp}/m.h5"
    est.save(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 2 and f.attrs["scaler"] == "standard"
        np.testing.assert_array_equal(f["scaler/offset"][()], est.scale_offset_)
        # an mpiml that reads only version 1 refuses it instead of predicting unscaled
        with pytest.raises(DataError, match="version 2"):
            check_format(f, path, MODEL_FORMAT, 1, "model")
    # loaded on all ranks, and on one rank (a different rank count), predictions agree
    for c in (comm, MPI.COMM_SELF):
        back = load(path, comm=c)
        assert back.scaler == "standard"
        np.testing.assert_array_equal(back.scale_factor_, est.scale_factor_)
        if hasattr(est, "predict_proba"):
            np.testing.assert_allclose(back.predict_proba(X), est.predict_proba(X), atol=1e-12)
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
    # without a scaler the file stays version 1 (readable by older mpiml)
    _fit(cls, kw, SkStandard().fit_transform(X)[r], y[r], comm).save(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 1 and "scaler" not in f
    assert load(path, comm=comm).scaler is None


@pytest.mark.mpi
def test_split_models_scale_like_the_replicated_one(comm, shared_tmp):
    """Feature-sharded (columns), class-sharded and layer-split fits at K = size."""
    X, ys = _data()
    K = comm.size
    grid = get_grid(comm, K)
    r = _rows(comm, X, K)
    lo, hi = chunk(X.shape[1], K, grid.model_rank)
    Z = SkStandard().fit(X).transform(X)

    def sharded(A, **more):
        return SGDRegressor(tol=None, max_iter=3, batch_size=32, random_state=0, comm=comm,
                            model_parallel=K, shard="features", **more).fit(
            A[r][:, lo:hi], ys["reg"][r], columns=(lo, hi, X.shape[1]))

    est, ref = sharded(X, scaler="standard"), sharded(Z)
    # each rank saw only its columns; the assembled vectors are scikit-learn's
    sk = SkStandard().fit(X)
    np.testing.assert_allclose(est.scale_offset_, sk.mean_, rtol=1e-12)
    np.testing.assert_allclose(est.scale_factor_, sk.scale_, rtol=1e-12)
    # the sharded model predicts from its columns of raw rows
    np.testing.assert_allclose(est.predict(X[:, lo:hi]), ref.predict(Z[:, lo:hi]),
                               rtol=1e-10, atol=1e-10)
    est.save(f"{shared_tmp}/f.h5")
    one = load(f"{shared_tmp}/f.h5", comm=MPI.COMM_SELF)      # unsplit, one rank
    np.testing.assert_allclose(one.predict(X), est.predict(X[:, lo:hi]), rtol=1e-10, atol=1e-10)
    for cls, kw, target in [(SGDClassifier, {}, "multi"),
                            (MLPClassifier, {"hidden_layer_sizes": (6,)}, "multi")]:
        M = SkMinMax().fit_transform(X)
        ref = _fit(cls, kw, M[r], ys[target][r], comm, model_parallel=K)
        split = _fit(cls, kw, X[r], ys[target][r], comm, scaler="minmax", model_parallel=K)
        np.testing.assert_allclose(split.predict_proba(X), ref.predict_proba(M), atol=1e-10)
        split.save(f"{shared_tmp}/s.h5")
        back = load(f"{shared_tmp}/s.h5", comm=comm)
        np.testing.assert_allclose(back.predict_proba(X), split.predict_proba(X), atol=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("cls,kw,target", CASES, ids=IDS)
def test_onnx_applies_the_scaler(comm, cls, kw, target):
    ort = pytest.importorskip("onnxruntime")
    from mpiml.export import to_onnx
    X, ys = _data()
    y = ys[target]
    r = _rows(comm, X)
    est = _fit(cls, kw, X[r], y[r], comm, scaler="standard")
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-4)):
        sess = ort.InferenceSession(to_onnx(est, dtype).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(None, {"X": X.astype(dtype)})))
        if "probabilities" in out:
            np.testing.assert_allclose(out["probabilities"], est.predict_proba(X), atol=tol)
            if dtype == "float64":
                np.testing.assert_array_equal(out["label"], est.predict(X))
        else:
            np.testing.assert_allclose(out["variable"].ravel(), est.predict(X),
                                       rtol=tol, atol=tol * 10)


@pytest.mark.mpi
def test_linear_shap_of_raw_features(comm):
    X, ys = _data()
    r = _rows(comm, X)
    est = _fit(SGDClassifier, {}, X[r], ys["multi"][r], comm, scaler="standard")
    W, b = raw_linear(est)
    # the folded weights give the model's margins from raw rows
    np.testing.assert_allclose(X @ W.T + b, est.decision_function(X), rtol=1e-9, atol=1e-9)
    mean = global_mean(X[r], comm)
    values, base = linear_shap(W, b, X[r], mean)
    # additivity on raw rows, and the values equal the scaled model's SHAP values
    np.testing.assert_allclose(values.sum(axis=2) + base, est.decision_function(X[r]),
                               rtol=1e-9, atol=1e-9)
    Z = SkStandard().fit(X).transform(X)
    scaled, base_z = linear_shap(est.coef_, est.intercept_, Z[r], Z.mean(axis=0))
    np.testing.assert_allclose(values, scaled, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(base, base_z, rtol=1e-9, atol=1e-9)


@pytest.mark.mpi
def test_bad_scaler_is_one_config_error(comm):
    from mpiml.errors import ConfigError
    X, ys = _data()
    with pytest.raises(ConfigError, match="scaler must be"):
        SGDClassifier(scaler="zscore", comm=comm).fit(X, ys["binary"])
