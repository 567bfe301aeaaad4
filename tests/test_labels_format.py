"""Class labels of any type and feature names through the model file (format version 3,
docs/model-format.md).

* A saved and loaded classifier gives back ``classes_`` of the type it was trained with
  (int64, float64, bool, str) and the same predictions, at any rank count, also loaded
  split over ranks.
* The file holds what the format says, read back with h5py as an independent reader:
  the dtype of ``classes``, variable-length UTF-8 strings, and ``format_version`` only
  as high as the file needs (older readers keep reading the rest).
* ``feature_names`` (from another writer, or from fitting on a DataFrame) come back
  as ``feature_names_in_``.
* Files mpiml cannot represent are refused on save, files it cannot trust on load
  (more hostile cases: tests/test_hostile.py, tests/test_fuzz_files.py).
"""
import os

import h5py
import numpy as np
import pandas as pd
import pytest
from mpi4py import MPI

from mpiml import MLPClassifier, SGDClassifier, chunk
from mpiml.errors import DataError
from mpiml.io import MODEL_FORMAT_VERSION, STRING_DTYPE
from mpiml.models import load

# label kind -> (three labels, sorted; the format version a file with them needs)
LABELS = {
    "int": (np.array([-3, 7, 11]), 1),
    "float": (np.array([-1.0, 2.0, 4.0]), 1),
    "str": (np.array(["cat", "dog", "émeu 日本"]), 3),
    "object-str": (np.array(["a", "b b", "c"], dtype=object), 3),
    "int-beyond-float64": (np.array([-2 ** 62, 5, 2 ** 62 + 1]), 3),
    "bool": (np.array([False, True]), 3),
}
MODELS = {"softmax": (SGDClassifier, {"loss": "log_loss"}),
          "hinge": (SGDClassifier, {"loss": "hinge"}),
          "mlp": (MLPClassifier, {"hidden_layer_sizes": (5,)})}
NAMES = ["x0", "größe", "a b", "日本", "x4"]


def _data(kind, n_classes, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(180, 5))
    labels = LABELS[kind][0][:n_classes]
    return X, labels[np.argmax(X[:, :len(labels)], axis=1)], labels


def _fit(model, kind, n_classes, comm, rows=None, **extra):
    cls, kw = MODELS[model]
    X, y, labels = _data(kind, n_classes)
    lo, hi = rows or (0, len(X))
    est = cls(**kw, **extra, max_iter=3, tol=None, random_state=0, comm=comm)
    return est.fit(X[lo:hi], y[lo:hi]), X, labels


def _agree(comm, ok, what):
    verdict = comm.allgather(bool(ok))
    assert all(verdict), f"{what} differs on rank(s) {[r for r, v in enumerate(verdict) if not v]}"


def _kind(a):
    """The label kind of an array: strings are strings, numpy unicode or object of str."""
    return "U" if a.dtype.kind == "O" and all(type(v) is str for v in a.tolist()) else a.dtype.kind


def _same_classes(a, b):
    return _kind(a) == _kind(b) and a.tolist() == b.tolist()


# ------------------------------------------------------------------ round trips under MPI
CASES = [(m, k, c) for m in MODELS for k in LABELS for c in (2, 3)
         if not (k == "bool" and c == 3)]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("model,kind,n_classes", CASES,
                         ids=[f"{m}-{k}-{c}" for m, k, c in CASES])
def test_a_saved_classifier_loads_with_its_label_type(comm, shared_tmp, model, kind, n_classes):
    X, _, _ = _data(kind, n_classes)
    lo, hi = chunk(len(X), comm.size, comm.rank)
    est, X, labels = _fit(model, kind, n_classes, comm.mpi, rows=(lo, hi))
    _agree(comm, est.classes_.tolist() == labels.tolist(), "the fitted classes")
    path = os.path.join(shared_tmp, "m.h5")
    est.save(path)
    back = load(path, comm=comm.mpi)
    _agree(comm, _same_classes(back.classes_, est.classes_), "classes_ after loading")
    want = est.predict(X[lo:hi])
    got = back.predict(X[lo:hi])
    _agree(comm, got.tolist() == want.tolist() and _kind(got) == _kind(want),
           "predictions after loading")
    if MODELS[model][1].get("loss") != "hinge":
        _agree(comm, np.allclose(back.predict_proba(X), est.predict_proba(X), rtol=1e-12,
                                 atol=0), "probabilities after loading")


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["str", "int", "bool"])
def test_a_split_load_predicts_the_labels(comm, shared_tmp, kind):
    """A model loaded with ``model_parallel`` (each rank holds a shard) maps the global
    argmax to the same labels."""
    n_classes = 2 if kind == "bool" else 3
    shard = "features" if n_classes < comm.size else "auto"
    est, X, _ = _fit("softmax", kind, n_classes, MPI.COMM_SELF)
    path = os.path.join(shared_tmp, "m.h5")
    if comm.rank == 0:
        est.save(path)
    comm.barrier()
    back = load(path, comm=comm.mpi, model_parallel=comm.size, shard=shard)
    _agree(comm, hasattr(back, "shard_"), "the loaded model is split")
    _agree(comm, np.array_equal(back.predict(X), est.predict(X)), "split predictions")
    _agree(comm, _same_classes(back.classes_, est.classes_), "classes_")


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_feature_names_of_a_dataframe_fit_survive_save_and_load(comm, shared_tmp, model):
    cls, kw = MODELS[model]
    X, y, _ = _data("str", 3)
    lo, hi = chunk(len(X), comm.size, comm.rank)
    frame = pd.DataFrame(X, columns=NAMES)
    est = cls(**kw, max_iter=2, tol=None, random_state=0).fit(frame.iloc[lo:hi], y[lo:hi])
    path = os.path.join(shared_tmp, "m.h5")
    est.save(path)
    back = load(path, comm=comm.mpi)
    names = getattr(back, "feature_names_in_", None)
    _agree(comm, names is not None and names.dtype == object and names.tolist() == NAMES,
           "feature_names_in_ after loading")
    _agree(comm, np.array_equal(back.predict(frame), est.predict(frame)), "predictions")


# ------------------------------------------------------------------ the file itself
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(LABELS))
@pytest.mark.parametrize("scaler", [None, "standard"])
def test_the_file_stores_the_labels_as_the_format_says(tmp_path, kind, scaler):
    n_classes = 2 if kind == "bool" else 3
    est, _, labels = _fit("softmax", kind, n_classes, MPI.COMM_SELF, scaler=scaler)
    est.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        ds = f["classes"]
        version = int(f.attrs["format_version"])
        if kind in ("str", "object-str"):
            info = h5py.check_string_dtype(ds.dtype)
            assert info is not None and info.encoding == "utf-8" and info.length is None
            assert [v.decode("utf-8") for v in ds[()]] == labels.tolist()
        else:
            want = {"int": np.int64, "int-beyond-float64": np.int64, "float": np.float64,
                    "bool": np.bool_}[kind]
            assert ds.dtype == want and ds[()].tolist() == labels.tolist()
        if kind == "bool":
            t = ds.id.get_type()            # the HDF5 type: an enum FALSE = 0, TRUE = 1
            assert t.get_class() == h5py.h5t.ENUM
            assert {t.get_member_name(i): t.get_member_value(i)
                    for i in range(t.get_nmembers())} == {b"FALSE": 0, b"TRUE": 1}
    # only as high as the file needs: a scaler needs 2, labels of a new kind need 3
    assert version == max(LABELS[kind][1], 2 if scaler else 1) <= MODEL_FORMAT_VERSION


def _with_names(path, names, dtype=STRING_DTYPE):
    with h5py.File(path, "r+") as f:
        f.create_dataset("feature_names", data=np.array(names, dtype=dtype))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model", ["softmax", "mlp"])
@pytest.mark.parametrize("dtype", [STRING_DTYPE, "S12"])
def test_feature_names_in_a_file_become_feature_names_in_(tmp_path, model, dtype):
    """A file with ``feature_names`` (variable-length UTF-8 as mpiml writes them, or
    fixed-length ASCII from another writer) loads with ``feature_names_in_``; the
    predictions are those of the same file without them."""
    est, X, _ = _fit(model, "int", 3, MPI.COMM_SELF)
    est.save(tmp_path / "m.h5")
    names = NAMES if dtype == STRING_DTYPE else [f"col{i}" for i in range(5)]
    _with_names(tmp_path / "m.h5", [n.encode("utf-8") for n in names] if dtype == "S12"
                else names, dtype)
    back = load(tmp_path / "m.h5", comm=MPI.COMM_SELF)
    assert back.feature_names_in_.dtype == object
    assert back.feature_names_in_.tolist() == names
    assert all(type(n) is str for n in back.feature_names_in_)
    np.testing.assert_array_equal(back.predict(pd.DataFrame(X, columns=names)), est.predict(X))
    with h5py.File(tmp_path / "m.h5", "r") as f:      # feature names alone: no new version
        assert int(f.attrs["format_version"]) == 1


@pytest.mark.timeout(120)
def test_v1_files_keep_their_float_classes():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v1")
    expected = np.load(os.path.join(here, "expected.npz"))
    for name in ("softmax", "mlp"):
        est = load(os.path.join(here, f"{name}.h5"), comm=MPI.COMM_SELF)
        assert est.classes_.dtype == np.float64 and est.classes_.tolist() == [0.0, 1.0, 2.0]
        assert not hasattr(est, "feature_names_in_")
        np.testing.assert_array_equal(est.predict(expected["X"]), expected[f"{name}_predict"])


@pytest.mark.timeout(120)
def test_a_newer_version_is_refused(tmp_path):
    est, _, _ = _fit("softmax", "str", 3, MPI.COMM_SELF)
    est.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        f.attrs["format_version"] = MODEL_FORMAT_VERSION + 1
    with pytest.raises(DataError, match="upgrade mpiml"):
        load(tmp_path / "m.h5", comm=MPI.COMM_SELF)


# ------------------------------------------------------------------ refused
@pytest.mark.timeout(120)
@pytest.mark.parametrize("labels", [["a\0b", "c"], ["a", "\ud800"]], ids=["NUL", "surrogate"])
def test_labels_a_file_cannot_hold_are_refused_on_save(tmp_path, labels):
    est, _, _ = _fit("softmax", "int", 2, MPI.COMM_SELF)
    est.classes_ = np.array(labels)             # what a fit on such labels keeps
    with pytest.raises(DataError, match="class label"):
        est.save(tmp_path / "m.h5")
    assert os.listdir(tmp_path) == []           # no file, no temporary


def _replace(path, name, data, dtype=None):
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=data, dtype=dtype)


BAD = {
    "unsorted": ("classes", np.array(["b", "a", "c"], dtype=STRING_DTYPE), "sorted"),
    "duplicate": ("classes", np.array(["a", "a", "c"], dtype=STRING_DTYPE), "sorted"),
    "not UTF-8": ("classes", np.array([b"a", b"\xff", b"c"], dtype=object), "UTF-8"),
    "NUL in a fixed-length string": ("classes", np.array([b"a", b"b\0c", b"d"], dtype="S4"),
                                     "NUL"),
    "too few": ("classes", np.array(["a", "b"], dtype=STRING_DTYPE), "outputs"),
    "2-D": ("classes", np.array([["a", "b", "c"]], dtype=STRING_DTYPE), "1-D"),
    "NaN": ("classes", np.array([0.0, np.nan, 2.0]), "finite"),
    "compound": ("classes", np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]), "classes"),
    "names too short": ("feature_names", np.array(NAMES[:4], dtype=STRING_DTYPE), "feature names"),
    "names repeated": ("feature_names", np.array(NAMES[:4] + ["x0"], dtype=STRING_DTYPE),
                       "distinct"),
    "names are numbers": ("feature_names", np.arange(5.0), "string"),
    "names not UTF-8": ("feature_names", np.array([b"\xc3"] * 5, dtype=object), "UTF-8"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_a_damaged_label_dataset_is_one_data_error(tmp_path, case, model):
    est, _, _ = _fit(model, "str", 3, MPI.COMM_SELF)
    path = tmp_path / "m.h5"
    est.save(path)
    name, data, words = BAD[case]
    if name == "feature_names":
        _with_names(path, NAMES)
    dtype = STRING_DTYPE if data.dtype == object else None
    _replace(path, name, data, dtype)
    with pytest.raises(DataError, match=words):
        load(path, comm=MPI.COMM_SELF)


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["str", "int"])
def test_streamed_prediction_writes_the_labels_in_their_type(comm, shared_tmp, kind):
    """``mpiml predict`` (stream_predict) writes string labels as UTF-8 strings and
    integer labels as integers, the same as the model's own predict."""
    from mpiml.predict import stream_predict
    est, X, _ = _fit("softmax", kind, 3, MPI.COMM_SELF)
    data, out = os.path.join(shared_tmp, "x.h5"), os.path.join(shared_tmp, "p.h5")
    if comm.rank == 0:
        with h5py.File(data, "w") as f:
            f["X"] = X
    comm.barrier()
    est.comm = comm.mpi
    stream_predict(est, data, out, block_rows=7, comm=comm.mpi)
    comm.barrier()
    with h5py.File(out, "r") as f:
        ds = f["pred"]
        got = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        ok = np.array_equal(np.asarray(got), est.predict(X)) and (
            (kind == "str") == (h5py.check_string_dtype(ds.dtype) is not None)) and (
            kind != "int" or ds.dtype.kind == "i")
    _agree(comm, ok, "streamed labels")
