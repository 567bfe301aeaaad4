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
