"""mpiml convert: CSV, .npy and libsvm into HDF5 at any rank count; malformed input is
reported with its line number and leaves no file."""
import os

import h5py
import numpy as np
import pytest

from mpiml.convert import convert
from mpiml.errors import DataError


@pytest.fixture
def sources(comm, shared_tmp):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1001, 4))
    y = rng.integers(0, 3, 1001)
    if comm.rank == 0:
        with open(os.path.join(shared_tmp, "h.csv"), "w") as f:
            f.write("a,b,target,c,d\n")
            for r, lab in zip(X, y):
                f.write(f"{r[0]!r},{r[1]!r},{lab},{r[2]!r},{r[3]!r}\n".replace("np.float64(", "")
                        .replace(")", ""))
        with open(os.path.join(shared_tmp, "n.csv"), "w") as f:
            for r, lab in zip(X, y):
                f.write(",".join(str(float(v)) for v in r) + f",{lab}\n")
        np.save(os.path.join(shared_tmp, "a.npy"), np.column_stack([X, y]))
        with open(os.path.join(shared_tmp, "a.svm"), "w") as f:
            for r, lab in zip(X, y):
                f.write(f"{lab} " + " ".join(f"{j + 1}:{float(v)}" for j, v in enumerate(r)
                                            if j != 1) + "  # comment\n")
    comm.barrier()
    return shared_tmp, X, y


def _read(path):
    """X (densified when stored as a CSR group: libsvm files convert to CSR) and y."""
    with h5py.File(path, "r") as f:
        X = f["X"]
        if isinstance(X, h5py.Group):
            import scipy.sparse as sp
            dense = sp.csr_matrix((X["data"][()], X["indices"][()], X["indptr"][()]),
                                  shape=tuple(X.attrs["shape"])).toarray()
            return dense, f["y"][()]
        return X[()], f["y"][()]


@pytest.mark.mpi
@pytest.mark.parametrize("name,kw", [("h.csv", {"label_column": "target"}),
                                     ("n.csv", {"label_column": -1}),
                                     ("a.npy", {"label_column": 4}),
                                     ("a.svm", {})])
def test_round_trip(comm, sources, name, kw):
    d, X, y = sources
    out = os.path.join(d, name + ".h5")
    rows, cols = convert(os.path.join(d, name), out, dtype="float64", comm=comm, **kw)
    assert (rows, cols) == (1001, 4)
    got, gy = _read(out)
    ref = X.copy()
    if name.endswith(".svm"):
        ref[:, 1] = 0.0                      # feature 2 never appears: a zero column
    np.testing.assert_allclose(got, ref, rtol=1e-15)
    np.testing.assert_array_equal(gy, y)
    assert gy.dtype == np.int64


@pytest.mark.mpi
def test_malformed_line_is_reported_with_its_number_and_nothing_written(comm, sources):
    d, X, y = sources
    bad = os.path.join(d, "bad.csv")
    if comm.rank == 0:
        lines = open(os.path.join(d, "h.csv")).read().splitlines()
        lines[699] = "0.1,0.2,oops,0.3,0.4"          # line 700 of the file
        lines[900] = "0.1,0.2,1,0.3"                 # line 901: a field missing
        open(bad, "w").write("\n".join(lines) + "\n")
    comm.barrier()
    out = os.path.join(d, "bad.h5")
    with pytest.raises(DataError, match="line 700: 'oops' is not a number"):
        convert(bad, out, label_column="target", comm=comm)
    assert not os.path.exists(out)
    svm = os.path.join(d, "bad.svm")
    if comm.rank == 0:
        lines = open(os.path.join(d, "a.svm")).read().splitlines()
        lines[41] = "1 3:0.5 x:1"
        open(svm, "w").write("\n".join(lines) + "\n")
    comm.barrier()
    with pytest.raises(DataError, match="line 42: malformed libsvm entry"):
        convert(svm, out, comm=comm)
    assert not [f for f in os.listdir(d) if f.startswith(".bad.h5")]
