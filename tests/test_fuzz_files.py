"""Field-level fuzzing of what crosses a trust boundary: model files and checkpoints
with one attribute or dataset replaced by a hostile value, and truncated or garbage
files. Whatever the mutation, reading the file either gives a model that predicts
finite values, or raises one of mpiml's errors -- never another exception, a crash or
a non-finite prediction. (Metadata is not fuzzed byte by byte: libhdf5 itself may crash
on arbitrary corrupted metadata.) In one process, on ``MPI.COMM_SELF``, derandomized.
"""
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from mpiml.errors import MpimlError
from mpiml.models import load

HERE = os.path.dirname(os.path.abspath(__file__))
V1 = os.path.join(HERE, "fixtures", "v1")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
from make_fixtures import COMMON, MODELS  # noqa: E402

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.booleans())
arrays = st.builds(lambda shape, fill: np.full(shape, fill),
                   st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
                   st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                             st.integers(-10, 10)))
values = st.one_of(scalars, arrays)


def _mutate(path, name, value):
    with h5py.File(path, "r+") as f:
        if name in f.attrs:
            try:
                f.attrs[name] = value
            except (TypeError, ValueError):
                f.attrs[name] = str(value)
        elif name in f:
            del f[name]
            f.create_dataset(name, data=value)


def _names(path):
    with h5py.File(path, "r") as f:
        out = list(f.attrs)
        f.visititems(lambda k, v: out.append(k) if isinstance(v, h5py.Dataset) else None)
    return sorted(out)


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(V1, "expected.npz"))


def _predicts_or_refuses(path, X):
    try:
        est = load(path, comm=MPI.COMM_SELF)
        pred = np.asarray(est.predict(X), dtype=np.float64)
    except MpimlError:
        return "refused"
    assert np.isfinite(pred).all()
    return "loaded"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_mutated_model_file_loads_or_is_refused(tmp_path, expected, name):
    src = os.path.join(V1, f"{name}.h5")
    fields = _names(src)

    @SETTINGS
    @given(field=st.sampled_from(fields), value=values)
    def check(field, value):
        path = str(tmp_path / "m.h5")
        shutil.copyfile(src, path)
        _mutate(path, field, value)
        _predicts_or_refuses(path, expected["X"])

    check()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_mutated_checkpoint_resumes_or_is_refused(tmp_path, expected, name):
    ck = os.path.join(V1, f"ckpt-{name}")
    src = os.path.join(ck, os.listdir(ck)[0])
    fields = [f for f in _names(src) if f not in ("format", "format_version")] + ["params"]
    cls, kw = MODELS[name]
    X = expected["X"]
    y = expected["y_reg"] if name == "linear" else expected["y_cls"]

    @SETTINGS
    @given(field=st.sampled_from(fields), value=values)
    def check(field, value):
        d = tmp_path / "ck"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        path = str(d / os.path.basename(src))
        shutil.copyfile(src, path)
        if field == "params":           # a hostile value for one hyper-parameter
            with h5py.File(path, "r+") as f:
                params = json.loads(f.attrs["params"])
                key = sorted(params)[abs(hash(str(value))) % len(params)]
                params[key] = value.tolist() if isinstance(value, np.ndarray) else value
                f.attrs["params"] = json.dumps(params, default=str)
        else:
            _mutate(path, field, value)
        try:
            est = cls(**COMMON, **kw, comm=MPI.COMM_SELF).fit(X, y, resume=str(d))
        except MpimlError:
            return
        assert np.isfinite(np.asarray(est.predict(X), dtype=np.float64)).all()

    check()


@pytest.mark.timeout(300)
@SETTINGS
@given(cut=st.integers(0, 20000), garbage=st.binary(min_size=0, max_size=64))
def test_a_truncated_or_garbage_model_file_is_refused(tmp_path_factory, cut, garbage):
    d = tmp_path_factory.mktemp("trunc")
    data = open(os.path.join(V1, "softmax.h5"), "rb").read()
    path = d / "m.h5"
    path.write_bytes(data[:cut] + garbage if cut < len(data) else garbage)
    with pytest.raises(MpimlError):
        load(str(path), comm=MPI.COMM_SELF)


# ------------------------------------------------------------------ format version 3
# hostile contents for the datasets of text: variable-length strings (any Unicode but
# surrogates and NUL, which HDF5 strings cannot hold), fixed-length bytes (NUL, invalid
# UTF-8), and numbers where text belongs
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=6)
_texts = st.lists(_text, min_size=0, max_size=6)
text_values = st.one_of(
    _texts.map(lambda v: np.array(v, dtype=h5py.string_dtype("utf-8"))),
    # sorted and distinct, as valid labels (3 here) and names (4) are
    st.sampled_from([3, 4]).flatmap(lambda n: st.sets(_text, min_size=n, max_size=n)).map(
        lambda v: np.array(sorted(v), dtype=h5py.string_dtype("utf-8"))),
    st.lists(st.binary(max_size=4), min_size=0, max_size=6).map(lambda v: np.array(v, dtype="S4")),
    st.lists(st.binary(max_size=4), min_size=1, max_size=6).map(
        lambda v: np.array(v, dtype=object)),
    arrays)


@pytest.fixture(scope="module")
def v3_file(tmp_path_factory):
    """A version-3 model file: string classes (with non-ASCII ones) and feature names."""
    from mpiml import SGDClassifier
    X = np.random.default_rng(5).normal(size=(120, 4))
    labels = np.array(["α", "b", "cc"])
    path = str(tmp_path_factory.mktemp("v3") / "m.h5")
    SGDClassifier(max_iter=2, tol=None, random_state=0, comm=MPI.COMM_SELF).fit(
        X, labels[np.argmax(X[:, :3], axis=1)]).save(path)
    with h5py.File(path, "r+") as f:
        f.create_dataset("feature_names", data=np.array(["f0", "f1", "é", "日本"], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        assert int(f.attrs["format_version"]) == 3
    return path, X


def _replace_text(path, name, value):
    with h5py.File(path, "r+") as f:
        if name in f:
            del f[name]
        try:
            f.create_dataset(name, data=value, dtype=h5py.string_dtype("utf-8")
                             if value.dtype == object else None)
        except (TypeError, ValueError):     # not storable as such: store its text
            if name in f:
                del f[name]
            f.create_dataset(name, data=np.array([str(v) for v in value.ravel()],
                                                 dtype=h5py.string_dtype("utf-8")))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["classes", "feature_names"])
def test_mutated_labels_or_names_load_or_are_refused(tmp_path, v3_file, name):
    """Whatever ``classes`` or ``feature_names`` hold, the file loads to a model whose
    predictions are among its classes, or is refused with one of mpiml's errors."""
    src, X = v3_file
    seen = set()

    @SETTINGS
    @given(value=text_values)
    def check(value):
        path = str(tmp_path / "m.h5")
        shutil.copyfile(src, path)
        _replace_text(path, name, value)
        try:
            est = load(path, comm=MPI.COMM_SELF)
        except MpimlError:
            seen.add("refused")
            return
        seen.add("loaded")
        assert est.classes_.ndim == 1 and est.classes_.dtype.kind in "iufbU"
        assert set(est.predict(X).tolist()) <= set(est.classes_.tolist())
        names = getattr(est, "feature_names_in_", None)
        assert names is None or (len(names) == X.shape[1] and
                                 all(type(n) is str for n in names))

    check()
    assert seen == {"loaded", "refused"}, seen      # the examples reach both sides


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_v1_classes_replaced_by_text_load_or_are_refused(tmp_path, expected, name):
    src = os.path.join(V1, f"{name}.h5")
    seen = set()

    @SETTINGS
    @given(value=text_values)
    def check(value):
        path = str(tmp_path / "m.h5")
        shutil.copyfile(src, path)
        _replace_text(path, "classes", value)
        try:
            est = load(path, comm=MPI.COMM_SELF)
        except MpimlError:
            seen.add("refused")
            return
        seen.add("loaded")
        assert set(est.predict(expected["X"]).tolist()) <= set(est.classes_.tolist())

    check()
    assert seen == {"loaded", "refused"}, seen
