"""HDF5 shards and the synthetic data generator."""
import os

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpiml import load_hdf5
from mpiml.datasets import make_data
from mpiml.errors import DataError


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, (data, kw) in datasets.items():
            f.create_dataset(name, data=data, **kw)


def _check_shards(comm, Xl, X):
    """Shards are disjoint, balanced and together equal X (verdict agreed across ranks)."""
    parts = comm.allgather((comm.rank, Xl))
    sizes = [p[1].shape[0] for p in parts]
    assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), X)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [10, 11, 37])
def test_load_hdf5_shards(comm, shared_tmp, n):
    path = os.path.join(shared_tmp, "plain.h5")
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int64)
    if comm.rank == 0:
        _write(path, X=(X, {}), y=(y, {}))
    comm.barrier()
    Xl, yl = load_hdf5(path)
    assert Xl.dtype == np.float32 and Xl.flags.c_contiguous
    lo, hi = comm.chunk(n)
    np.testing.assert_array_equal(yl, np.arange(lo, hi))
    _check_shards(comm, Xl, X)


@pytest.mark.mpi
def test_load_hdf5_nested_chunked_compressed(comm, shared_tmp):
    path = os.path.join(shared_tmp, "nested.h5")
    rng = np.random.default_rng(0)
    X = rng.integers(-5, 5, size=(101, 7)).astype(np.int32)
    y = rng.normal(size=101)
    if comm.rank == 0:
        kw = dict(chunks=(8, 7), compression="gzip", shuffle=True)
        _write(path, **{"train/deep/X": (X, kw), "train/labels": (y, dict(chunks=(16,),
                                                                          compression="gzip"))})
    comm.barrier()
    Xl, yl = load_hdf5(path, X="/train/deep/X", y="train/labels")
    assert Xl.dtype == np.float64           # integers are read as float64
    _check_shards(comm, Xl, X.astype(np.float64))
    lo, hi = comm.chunk(101)
    np.testing.assert_array_equal(yl, y[lo:hi])
    X32, _ = load_hdf5(path, X="train/deep/X", y=None, dtype="float32")
    assert X32.dtype == np.float32


@pytest.mark.mpi
def test_load_hdf5_without_y(comm, shared_tmp):
    path = os.path.join(shared_tmp, "noy.h5")
    if comm.rank == 0:
        _write(path, X=(np.ones((6, 2)), {}))
    comm.barrier()
    Xl, yl = load_hdf5(path)
    assert yl is None and Xl.shape[1] == 2
    with pytest.raises(DataError, match="no dataset 'y'"):
        load_hdf5(path, require_y=True)


# how X is stored: (h5py dataset options, file options, whether load_hdf5 reads the rows
# with pread from where the file stores them -- else through h5py)
STORED = {
    "contiguous": (dict(), {}, True),
    "chunks of whole rows": (dict(chunks=(9, 7)), {}, True),
    "userblock": (dict(), dict(userblock_size=1024), True),
    "chunks of some columns": (dict(chunks=(9, 3)), {}, False),
    "compressed": (dict(chunks=(9, 7), compression="gzip"), {}, False),
    "float64 read as float32": (dict(dtype="f8"), {}, False),
    "big-endian": (dict(dtype=">f4"), {}, False),
    "chunks never written": (dict(chunks=(9, 7), fill="half"), {}, False),
}


@pytest.mark.mpi
@pytest.mark.parametrize("layout", list(STORED))
def test_rows_read_where_the_file_stores_them_equal_h5pys(comm, shared_tmp, layout, monkeypatch):
    import mpiml.io as io
    kw, file_kw, direct = STORED[layout]
    kw = dict(kw)
    path = os.path.join(shared_tmp, "stored.h5")
    X = np.random.default_rng(1).normal(size=(103, 7)).astype(np.float32)
    if comm.rank == 0:
        half = kw.pop("fill", None)
        with h5py.File(path, "w", **file_kw) as f:
            dt = kw.pop("dtype", "f4")
            ds = f.create_dataset("X", shape=X.shape, dtype=dt, **kw)
            ds[: 9 if half else None] = X[: 9 if half else None]     # one chunk
            f["y"] = np.arange(103.0)
        before = open(path, "rb").read()
    comm.barrier()
    preads = []
    real = io.pread_rows
    monkeypatch.setattr(io, "pread_rows", lambda *a: preads.append(1) or real(*a))
    Xl, yl = load_hdf5(path, dtype="float32")
    with h5py.File(path, "r") as f:
        expect = f["X"][:].astype(np.float32)
    _check_shards(comm, Xl, expect)
    assert comm.allgather(bool(preads)) == [direct] * comm.size
    lo, hi = comm.chunk(103)
    np.testing.assert_array_equal(yl, np.arange(103.0)[lo:hi])
    comm.barrier()
    if comm.rank == 0:
        assert open(path, "rb").read() == before


@pytest.mark.mpi
@pytest.mark.parametrize("chunks", [None, (4, 5)])
@pytest.mark.parametrize("bad", [[0], [13, 40], [40, 13], [102]])
def test_the_first_bad_row_is_named_whichever_run_holds_it(comm, shared_tmp, chunks, bad):
    """The scan fused into the direct read names the shard's first bad row (in file order,
    across chunks and reads), as the scan after an h5py read does; every rank raises."""
    path = os.path.join(shared_tmp, "bad.h5")
    X = np.ones((103, 5), dtype=np.float32)
    for i, r in enumerate(bad):
        X[r, (r + 2) % 5] = np.inf if i else np.nan
    if comm.rank == 0:
        _write(path, X=(X, dict(chunks=chunks)), y=(np.zeros(103), {}))
    comm.barrier()
    from mpiml.comm import chunk
    owner = [r for r in range(comm.size) if chunk(103, comm.size, r)[0] <= min(bad) <
             chunk(103, comm.size, r)[1]]
    message = rf"NaN or infinite value at row {min(bad)}( \(on rank [\d, ]+\))?$"
    with pytest.raises(DataError, match=message) as info:
        load_hdf5(path)
    assert owner[0] in info.value.ranks


@pytest.mark.mpi
def test_nan_on_one_shard_fails_everywhere(comm, shared_tmp):
    path = os.path.join(shared_tmp, "nan.h5")
    n = 30
    X = np.ones((n, 4))
    X[n - 1, 2] = np.nan            # the last row: only the last rank's shard
    if comm.rank == 0:
        _write(path, X=(X, {}), y=(np.zeros(n), {}))
    comm.barrier()
    with pytest.raises(DataError, match="NaN or infinite value at row 29") as info:
        load_hdf5(path)
    assert info.value.ranks == [comm.size - 1]


@pytest.mark.mpi
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_make_data_independent_of_rank_count(comm, shared_tmp, task):
    """The file written by all ranks equals the one written by a single rank."""
    par = os.path.join(shared_tmp, f"{task}-par.h5")
    ser = os.path.join(shared_tmp, f"{task}-ser.h5")
    kw = dict(seed=5, test_rows=0)
    # 3 blocks of 65536 rows would be slow here: shrink the block to exercise the split
    import mpiml.datasets as ds
    old, ds.BLOCK = ds.BLOCK, 1000
    try:
        make_data(task, 4321, 6, par, comm=comm, **kw)
        if comm.rank == 0:
            make_data(task, 4321, 6, ser, comm=MPI.COMM_SELF, **kw)
    finally:
        ds.BLOCK = old
    comm.barrier()
    with h5py.File(par, "r") as a, h5py.File(ser, "r") as b:
        for name in ("X", "y", "true_coef", "true_intercept"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
        y = a["y"][()]
    if task == "binary":
        assert set(np.unique(y)) == {0, 1} and 0.4 < y.mean() < 0.6
    if task == "multiclass":
        assert set(np.unique(y)) == {0, 1, 2}


@pytest.mark.mpi
def test_make_data_regression_truth(comm, shared_tmp):
    path = os.path.join(shared_tmp, "reg.h5")
    make_data("regression", 3000, 5, path, seed=2, noise=0.01, dtype="float64", comm=comm)
    X, y = load_hdf5(path)
    with h5py.File(path, "r") as f:
        coef, b = f["true_coef"][()], f["true_intercept"][()]
    resid = comm.allreduce(float(np.sum((X @ coef + b[0] - y) ** 2)))
    assert resid / 3000 < 2e-4      # noise std 0.01 -> mean squared residual 1e-4
