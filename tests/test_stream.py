"""Streaming prediction: identical output at any rank count, bounded memory."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier
from mpiml.predict import stream_predict


@pytest.fixture
def model_and_data(comm, shared_tmp):
    data = os.path.join(shared_tmp, "d.h5")
    model = os.path.join(shared_tmp, "m.h5")
    if comm.rank == 0:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(1003, 6)).astype(np.float32)
        y = np.argmax(X[:, :3], axis=1)
        with h5py.File(data, "w") as f:
            f["X"], f["y"] = X, y
        SGDClassifier(tol=None, max_iter=2, random_state=0, comm=MPI.COMM_SELF).fit(X, y).save(model)
    comm.barrier()
    return model, data


@pytest.mark.mpi
def test_streaming_prediction_is_the_same_at_any_rank_count(comm, shared_tmp, model_and_data):
    from mpiml.models import load
    model, data = model_and_data
    out = os.path.join(shared_tmp, "p.h5")
    est = load(model, comm=comm.mpi)
    n = stream_predict(est, data, out, block_rows=97, proba=True, comm=comm)
    assert n == 1003
    comm.barrier()                        # every rank has removed its part file
    assert not any(".part-" in f or ".tmp-" in f for f in os.listdir(shared_tmp))
    single = load(model, comm=MPI.COMM_SELF)
    with h5py.File(data, "r") as f:
        X = f["X"][()]
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["pred"][()], single.predict(X))
        np.testing.assert_array_equal(f["proba"][()], single.predict_proba(X))
    if comm.size > 1:
        out2 = os.path.join(shared_tmp, "p2.h5")
        stream_predict(load(model, comm=comm.mpi, model_parallel=comm.size), data, out2,
                       block_rows=128, comm=comm, model_parallel=comm.size)
        with h5py.File(out2, "r") as f:
            np.testing.assert_array_equal(f["pred"][()], single.predict(X))


CHILD = """
import resource, sys
from mpi4py import MPI
from mpiml.models import load
est = load(sys.argv[1], comm=MPI.COMM_SELF)
if sys.argv[3] != "-":
    from mpiml.predict import stream_predict
    stream_predict(est, sys.argv[2], sys.argv[3], block_rows=int(sys.argv[4]), comm=MPI.COMM_SELF)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.launcher
def test_peak_memory_is_bounded_by_the_block(tmp_path):
    """400,000 x 100 float32 rows (160 MB) predicted in blocks of 10,000 rows (4 MB):
    the peak RSS of a fresh process grows by far less than the input. The bound, 60 MB
    over a process that only loaded the model, allows the block, its float64 scores
    and predictions, the HDF5 chunk cache and the part file's buffers (~20 MB)."""
    rng = np.random.default_rng(1)
    data = tmp_path / "big.h5"
    with h5py.File(data, "w") as f:
        d = f.create_dataset("X", shape=(400_000, 100), dtype=np.float32)
        for a in range(0, 400_000, 50_000):
            d[a:a + 50_000] = rng.normal(size=(50_000, 100)).astype(np.float32)
    Xs = rng.normal(size=(500, 100))
    SGDClassifier(tol=None, max_iter=1, comm=MPI.COMM_SELF).fit(
        Xs, (Xs[:, 0] > 0).astype(int)).save(tmp_path / "m.h5")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}

    def peak(out):
        # -P and cwd: import the installed mpiml, not the source tree
        r = subprocess.run([sys.executable, "-P", "-c", CHILD, str(tmp_path / "m.h5"), str(data),
                            out, "10000"], capture_output=True, text=True, env=env, timeout=300,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    base = peak("-")
    streamed = peak(str(tmp_path / "p.h5"))
    assert streamed - base < 60, (base, streamed)
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f["pred"].shape == (400_000,)
