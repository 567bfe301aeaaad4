"""Sparse data end to end, the data side (issue 21): CSR groups in anndata's on-disk layout,
libsvm / .npz converters that never densify, feature hashing, hostile CSR files, and
``make-data --task sparse-*``. MPI tests run at 1, 2 and 3 ranks."""
import hashlib
import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from mpiml.convert import convert
from mpiml.errors import DataError, OutputError
from mpiml.io import dataset_info, load_hdf5
from mpiml.sparse_io import csr_info, read_csr_rows, write_csr

TIMEOUT = pytest.mark.timeout(60)


def _write_anndata(path, X, y, index_dtype=np.int32, ptr_dtype=np.int64, name="X"):
    """``X`` exactly as anndata writes a CSR matrix (by hand: anndata is not a dependency)."""
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        g = f.create_group(name)
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array(X.shape, dtype=np.int64)
        g.create_dataset("data", data=X.data)
        g.create_dataset("indices", data=X.indices.astype(index_dtype))
        g.create_dataset("indptr", data=X.indptr.astype(ptr_dtype))
        if y is not None:
            f["y"] = y


def _read_csr(path, name="X"):
    with h5py.File(path, "r") as f:
        g = f[name]
        X = sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]),
                          shape=tuple(g.attrs["shape"]))
        return X, (f["y"][()] if "y" in f else None)


def _gather_rows(comm, X):
    """Every rank's CSR rows, concatenated in rank order (on every rank)."""
    return sp.vstack(comm.allgather(X), format="csr")


def _same(a, b):
    assert a.shape == b.shape
    assert abs(a - b).max() == 0 if a.nnz or b.nnz else True


def _random_csr(seed, n=57, d=41, density=0.15, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, format="csr", random_state=rng, dtype=dtype)
    X.data += 0.5                                   # no stored zeros
    X = X.tolil()
    X[n // 2] = 0                                   # an empty row
    return X.tocsr(), rng.integers(0, 2, n).astype(np.float64)


# ------------------------------------------------------------------ anndata layout
@TIMEOUT
@pytest.mark.mpi
@pytest.mark.parametrize("index_dtype,ptr_dtype", [(np.int32, np.int32), (np.int64, np.int64)])
def test_anndata_file_loads_at_any_rank_count(comm, shared_tmp, index_dtype, ptr_dtype):
    X, y = _random_csr(1)
    path = os.path.join(shared_tmp, "ad.h5ad")
    if comm.rank == 0:
        _write_anndata(path, X, y, index_dtype, ptr_dtype)
    comm.barrier()
    assert csr_info(path, "X") == (57, 41, np.dtype(np.float32), X.nnz)
    assert dataset_info(path)["shape"] == (57, 41)
    Xl, yl = load_hdf5(path, comm=comm)
    assert sp.isspmatrix_csr(Xl) and Xl.dtype == np.float32
    assert Xl.shape[0] == comm.chunk(57)[1] - comm.chunk(57)[0]
    _same(_gather_rows(comm, Xl), X)
    np.testing.assert_array_equal(np.concatenate(comm.allgather(yl)), y)
    # feature-sharded: every rank has all rows and only its columns, rebased
    Xc, _ = load_hdf5(path, comm=comm, model_parallel=comm.size, split_features=True,
                      dtype="float64")
    assert Xc.dtype == np.float64
    _same(sp.hstack(comm.allgather(Xc), format="csr"), X.astype(np.float64))


@TIMEOUT
@pytest.mark.mpi
def test_write_csr_round_trip_with_empty_shards(comm, shared_tmp):
    X, y = _random_csr(2, n=5)
    lo, hi = (0, 5) if comm.rank == comm.size - 1 else (0, 0)     # only the last rank has rows
    path = os.path.join(shared_tmp, "w.h5")
    write_csr(path, X[lo:hi], y[lo:hi], comm=comm, attrs={"who": "test"})
    got, gy = _read_csr(path)
    _same(got, X)
    np.testing.assert_array_equal(gy, y)
    with h5py.File(path, "r") as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert f["X"].attrs["encoding-version"] == "0.1.0"
        assert f["X/indices"].dtype == np.int32
    assert not [p for p in os.listdir(shared_tmp) if ".tmp-" in p]


def test_read_csr_rows_reads_only_its_slice(tmp_path):
    X, y = _random_csr(3, n=200)
    path = str(tmp_path / "s.h5")
    _write_anndata(path, X, y)
    for lo, hi in [(0, 0), (0, 200), (17, 18), (5, 6), (100, 173)]:
        R = read_csr_rows(path, "X", lo, hi)
        _same(R, X[lo:hi])
        assert R.indptr[0] == 0 and R.indices.dtype == np.int32


# ------------------------------------------------------------------ libsvm
_SVM = {
    # one-based, gaps, empty rows (a label alone), float labels, comments, CRLF
    "one": ["1.5 1:0.5 7:2 30:-1", "-2", "0 3:1e-3 4:7 # c", "3 30:4", "0.25 2:1\r"],
    # zero-based (an index 0 somewhere), integer labels
    "zero": ["1 0:1 5:2", "0", "2 3:0.5 12:1", "1 1:1", "0 0:3 2:1e5"],
}


@TIMEOUT
@pytest.mark.mpi
@pytest.mark.parametrize("kind", sorted(_SVM))
def test_libsvm_matches_scikit_learn(comm, shared_tmp, kind):
    from sklearn.datasets import load_svmlight_file
    src = os.path.join(shared_tmp, f"{kind}.svm")
    if comm.rank == 0:
        with open(src, "w") as fh:
            fh.write("\n".join(_SVM[kind] * 40) + "\n")     # 200 lines: every rank has some
    comm.barrier()
    ref, ry = load_svmlight_file(src, zero_based="auto")
    before = hashlib.sha256(open(src, "rb").read()).hexdigest()
    out = os.path.join(shared_tmp, f"{kind}.h5")
    assert convert(src, out, dtype="float64", comm=comm) == ref.shape
    got, gy = _read_csr(out)
    _same(got, ref)
    np.testing.assert_array_equal(gy, ry)
    assert gy.dtype == (np.int64 if kind == "zero" else np.float64)
    # every rank loads its rows back
    _same(_gather_rows(comm, load_hdf5(out, comm=comm)[0]), ref)
    dense = os.path.join(shared_tmp, f"{kind}-dense.h5")
    convert(src, dense, dtype="float64", comm=comm, dense=True)
    with h5py.File(dense, "r") as f:
        np.testing.assert_array_equal(f["X"][()], ref.toarray())
    assert hashlib.sha256(open(src, "rb").read()).hexdigest() == before
    with pytest.raises(OutputError, match="is the input"):
        convert(src, src, comm=comm)
    assert hashlib.sha256(open(src, "rb").read()).hexdigest() == before


@TIMEOUT
@pytest.mark.mpi
def test_malformed_libsvm_names_its_global_line(comm, shared_tmp):
    src = os.path.join(shared_tmp, "bad.svm")
    lines = ["1 1:1 2:2"] * 100
    lines[76] = "1 3:0.5 x:1"
    if comm.rank == 0:
        open(src, "w").write("\n".join(lines) + "\n")
    comm.barrier()
    out = os.path.join(shared_tmp, "bad.h5")
    with pytest.raises(DataError, match=r"line 77: malformed libsvm entry \('x:1'\)"):
        convert(src, out, comm=comm)
    lines[76], lines[88] = "1 1:1", ""
    if comm.rank == 0:
        open(src, "w").write("\n".join(lines) + "\n")
    comm.barrier()
    with pytest.raises(DataError, match="line 89: empty line"):
        convert(src, out, comm=comm)
    assert not os.path.exists(out)


# ------------------------------------------------------------------ hashing
def test_murmurhash_matches_scikit_learn():
    from sklearn.utils import murmurhash3_32

    from mpiml._kernels.textparse import murmurhash3_32 as ours
    rng = np.random.default_rng(0)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", b"user=abc", b"12345678901234567890"]
    keys += [rng.bytes(int(n)) for n in rng.integers(0, 40, 50)]
    for k in keys:
        assert ours(k) == murmurhash3_32(k, seed=0, positive=True), k


@TIMEOUT
@pytest.mark.mpi
def test_hash_bits_columns_are_the_documented_hash(comm, shared_tmp):
    from sklearn.utils import murmurhash3_32
    bits = 3                                       # 8 columns: collisions are certain
    rows = [[("1000000000000000", 1.0), ("user=abc", 2.0), ("7", 0.5)],
            [("user=abc", 1.0), ("user=abc", 4.0)],             # a repeated id: summed
            [],
            [("ü:tf", 3.0), ("99999999999999999999999", 1.5), ("qid", 9.0)]]
    src = os.path.join(shared_tmp, "h.svm")
    if comm.rank == 0:
        with open(src, "w", encoding="utf-8") as fh:
            for i in range(30):
                r = rows[i % len(rows)]
                fh.write(f"{i % 2} " + " ".join(f"{k}:{v}" for k, v in r) + "\n")
    comm.barrier()
    out = os.path.join(shared_tmp, "h.h5")
    assert convert(src, out, hash_bits=bits, dtype="float64", comm=comm) == (30, 8)
    got, _ = _read_csr(out)
    ref = np.zeros((30, 8))
    for i in range(30):
        for k, v in rows[i % len(rows)]:
            if k != "qid":                         # qid:N tokens are skipped
                ref[i, murmurhash3_32(k.encode(), seed=0, positive=True) & 7] += v
    np.testing.assert_array_equal(got.toarray(), ref)
    assert got.has_canonical_format                # duplicates summed, indices sorted
    dense = os.path.join(shared_tmp, "hd.h5")
    convert(src, dense, hash_bits=bits, dense=True, dtype="float64", comm=comm)
    with h5py.File(dense, "r") as f:
        np.testing.assert_array_equal(f["X"][()], ref)


def test_huge_index_converts_in_memory_bounded_by_nnz(tmp_path):
    import tracemalloc
    src = tmp_path / "huge.svm"
    src.write_text("1 0:1 1000000000:2.5\n0 17:1\n" * 1000)
    out = str(tmp_path / "huge.h5")
    tracemalloc.start()
    try:
        shape = convert(str(src), out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shape == (2000, 10 ** 9 + 1)
    assert peak < 50 * 2 ** 20, peak               # a dense row alone would be 4 GB
    X, y = load_hdf5(out)
    assert X.shape == (2000, 10 ** 9 + 1) and X.nnz == 3000 and X[0, 10 ** 9] == 2.5
    # hashed: the same file folds into 2**20 columns
    assert convert(str(src), str(tmp_path / "hh.h5"), hash_bits=20) == (2000, 2 ** 20)


def test_npz_converts_with_labels(tmp_path):
    X, y = _random_csr(4)
    sp.save_npz(tmp_path / "m.npz", X.tocoo())
    np.save(tmp_path / "y.npy", y)
    assert convert(str(tmp_path / "m.npz"), str(tmp_path / "m.h5"),
                   labels=str(tmp_path / "y.npy")) == X.shape
    got, gy = _read_csr(str(tmp_path / "m.h5"))
    _same(got, X)
    np.testing.assert_array_equal(gy, y)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid scipy.sparse .npz"):
        convert(str(tmp_path / "junk.npz"), str(tmp_path / "j.h5"))


# ------------------------------------------------------------------ hostile CSR files
def _break(case):
    """A function damaging an open file written by :func:`_write_anndata`."""
    def replace(f, key, data):
        del f[f"X/{key}"]
        f[f"X/{key}"] = data

    return {
        "indptr decreasing": lambda f: replace(f, "indptr", f["X/indptr"][()][[0, 2, 1, 3, 4]]),
        "index out of range": lambda f: replace(f, "indices", f["X/indices"][()] + 5),
        "wrong encoding-type": lambda f: f["X"].attrs.__setitem__("encoding-type", "csc_matrix"),
        "shape missing": lambda f: f["X"].attrs.__delitem__("shape"),
        "shape negative": lambda f: f["X"].attrs.__setitem__("shape", np.array([4, -3])),
        "length mismatch": lambda f: replace(f, "indices", f["X/indices"][:-1]),
        "nan": lambda f: replace(f, "data", np.where(np.arange(f["X/data"].shape[0]) == 5,
                                                     np.nan, f["X/data"][()])),
        "external link": lambda f: (f["X"].__delitem__("data"), f["X"].__setitem__(
            "data", h5py.ExternalLink("other.h5", "/values"))),
    }[case]


_MESSAGES = {"indptr decreasing": "indptr' decreases at row 1",
             "index out of range": "outside the 4 columns",
             "wrong encoding-type": "encoding-type 'csc_matrix'",
             "shape missing": "no 'shape' attribute",
             "shape negative": "two non-negative integers",
             "length mismatch": "has 8 values but",
             "nan": "NaN or infinite value at row 2",
             "external link": "external link"}


def _hostile(directory, case):
    X = sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 3, 0, 4], [5, 6, 0, 0], [0, 0, 7, 8.0]]))
    path = os.path.join(directory, f"{case.replace(' ', '-')}.h5")
    _write_anndata(path, X, np.array([0, 1, 0, 1]))
    with h5py.File(os.path.join(directory, "other.h5"), "w") as f:
        f["values"] = np.ones(8)
    with h5py.File(path, "r+") as f:
        _break(case)(f)
    return path


@pytest.mark.parametrize("case", sorted(_MESSAGES))
def test_hostile_csr_files_raise_one_clear_error(tmp_path, case):
    path = _hostile(str(tmp_path), case)
    with pytest.raises(DataError, match=_MESSAGES[case]) as info:
        load_hdf5(path)
    assert path in str(info.value)


@pytest.mark.launcher
@pytest.mark.timeout(120)
def test_hostile_csr_files_through_the_command_line(tmp_path):
    from launch import mpirun, rank_exits
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"], f["y"] = rng.normal(size=(40, 4)), np.arange(40) % 2
    code, _, err, _ = mpirun(1, ["train", "--model", "logistic", "--epochs", 1, "--data", "d.h5",
                                 "--out", "m.h5", "--quiet"], tmp_path)
    assert code == 0, err
    for case in ("indptr decreasing", "nan", "external link"):
        path = _hostile(str(tmp_path), case)
        code, _, err, _ = mpirun(2, ["score", "--model", "m.h5", "--data", path], tmp_path,
                                 wrap=True)
        assert rank_exits(err) == [1, 1], err
        assert "Traceback" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("mpiml: error")]
        assert len(errors) == 1 and _MESSAGES[case] in errors[0], err
    (tmp_path / "bad.svm").write_text("1 1:1\n1 2:x\n")
    code, _, err, _ = mpirun(2, ["convert", "bad.svm", "--out", "bad.h5"], tmp_path, wrap=True)
    assert rank_exits(err) == [1, 1], err
    errors = [ln for ln in err.splitlines() if ln.startswith("mpiml: error")]
    assert len(errors) == 1 and "line 2: malformed libsvm entry ('2:x')" in errors[0], err
    assert not (tmp_path / "bad.h5").exists()


# ------------------------------------------------------------------ make-data
@TIMEOUT
@pytest.mark.mpi
def test_make_data_sparse_is_the_same_at_any_rank_count(comm, shared_tmp):
    from mpi4py import MPI

    from mpiml.datasets import BLOCK, make_data
    kw = dict(seed=3, nnz_per_row=3, classes=3)
    n = 2 * BLOCK + 1000                           # three blocks: the ranks share them out
    ref = os.path.join(shared_tmp, "ref.h5")
    if comm.rank == 0:
        make_data("sparse-multiclass", n, 300, ref, comm=MPI.COMM_SELF, **kw)
    comm.barrier()
    out = os.path.join(shared_tmp, "mine.h5")
    make_data("sparse-multiclass", n, 300, out, comm=comm, **kw)
    a, ay = _read_csr(ref)
    b, by = _read_csr(out)
    assert (a != b).nnz == 0 and np.array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(ay, by)


def test_make_data_sparse_density_power_law_and_learnable(tmp_path):
    from sklearn.linear_model import SGDClassifier

    from mpiml.datasets import make_data
    train, test = str(tmp_path / "tr.h5"), str(tmp_path / "te.h5")
    make_data("sparse-binary", 20000, 2000, train, test_out=test, test_rows=4000, seed=1,
              nnz_per_row=20)
    X, y = load_hdf5(train)
    Xt, yt = load_hdf5(test)
    per_row = X.nnz / X.shape[0]
    assert 14 <= per_row <= 20, per_row            # repeated draws of common features add up
    np.testing.assert_allclose(sp.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert X.data.min() > 0
    counts = np.bincount(X.indices, minlength=2000)[20:1000]
    slope = np.polyfit(np.log(np.arange(21, 1001)), np.log(counts + 1), 1)[0]
    assert -1.4 < slope < -0.8, slope              # power law, exponent about 1.1
    assert 0.4 < y.mean() < 0.6
    clf = SGDClassifier(random_state=0, alpha=1e-5).fit(X, y)
    acc = clf.score(Xt, yt)
    assert acc > 0.85, acc                         # chance is 0.5
