"""The edges of the package: communicators without hidden global state, BLAS threads
limited only while mpiml computes, writers that check their own output paths, and the
train pipeline as a library function (the same model as the fit it wraps)."""
import os

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier, chunk, get_comm
from mpiml.errors import OutputError
from mpiml.io import write_rows
from mpiml.model_selection import split_rows, validation_mask
from mpiml.pipeline import train_from_file


def _agree(comm, ok, what):
    verdict = comm.allgather(bool(ok))
    assert all(verdict), f"{what} on rank(s) {[r for r, v in enumerate(verdict) if not v]}"


# ------------------------------------------------------------------------------ communicators
@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_a_new_communicator_never_gets_a_stale_duplicate(comm):
    first = MPI.COMM_WORLD.Dup()
    mine = get_comm(first)
    same = get_comm(first) is mine
    handle = first.py2f()
    first.Free()                       # MPI may hand the same handle to the next one
    second = MPI.COMM_WORLD.Dup()
    other = get_comm(second)
    reused = second.py2f() == handle
    fresh = other is not mine and other.mpi != MPI.COMM_NULL and other.size == comm.size
    other.barrier()                    # the duplicate works
    second.Free()
    mine.free()
    _agree(comm, same and fresh, f"stale duplicate (handle reused: {reused})")


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_grids_live_on_their_communicator_and_are_freed_with_it(comm):
    c = get_comm(MPI.COMM_WORLD.Dup())
    widths = [k for k in range(1, comm.size + 1) if comm.size % k == 0]
    grids = {k: c.grid(k) for k in widths}
    memo = all(c.grid(k) is g for k, g in grids.items())
    shapes = all(g.K * g.D == comm.size and g.model.size == k and g.data.size == comm.size // k
                 for k, g in grids.items())
    split = [g.model.mpi for k, g in grids.items() if k > 1]
    c.free()
    freed = all(m == MPI.COMM_NULL for m in split) and c.mpi == MPI.COMM_NULL and not c._grids
    _agree(comm, memo and shapes and freed, "grid memo / free")


# ------------------------------------------------------------------------------ threads
_THREADS = """
import json, numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from mpiml import SGDClassifier

def most():
    return max(p["num_threads"] for p in threadpool_info())

class Probe:
    seen = []
    def on_epoch_end(self, est, logs):
        self.seen.append(most())
        return False

X = np.random.default_rng(0).normal(size=(60, 3))
with threadpool_limits(limits=2):
    probe = Probe()
    SGDClassifier(max_iter=2, tol=None).fit(X, (X[:, 0] > 0).astype(int), callbacks=[probe])
    print(json.dumps({"during": probe.seen, "after": most()}))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("user", [None, "2"])
def test_blas_threads_are_limited_only_during_the_fit(user):
    """One BLAS thread inside a fit, the caller's setting restored after it; a user who
    set the thread variables is left alone."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "OPENBLAS_", "MKL_", "PMI_", "HYDRA_", "MPIR_"))}
    if user:
        env["OPENBLAS_NUM_THREADS"] = user
    out = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True,
                         env=env, cwd="/", timeout=100)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == ({"during": [1, 1], "after": 2} if user is None
                   else {"during": [2, 2], "after": 2}), got


# ------------------------------------------------------------------------------ writers
@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_writers_refuse_an_unwritable_path_on_every_rank(comm, shared_tmp):
    missing = os.path.join(shared_tmp, "no-such-dir", "out.h5")
    X = np.random.default_rng(0).normal(size=(40, 3))
    lo, hi = chunk(40, comm.size, comm.rank)
    est = SGDClassifier(max_iter=1, tol=None).fit(X[lo:hi], (X[lo:hi, 0] > 0).astype(int))
    for write in (lambda: est.save(missing),
                  lambda: write_rows(missing, {"X": X[lo:hi]}, comm=comm)):
        with pytest.raises(OutputError, match="does not exist"):
            write()
    comm.barrier()
    _agree(comm, not os.path.exists(os.path.dirname(missing)), "a write outside the path")


# ------------------------------------------------------------------------------ pipeline
@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_train_from_file_is_the_fit_it_wraps(comm, shared_tmp):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(int)
    path = os.path.join(shared_tmp, "train.h5")
    if comm.rank == 0:
        with h5py.File(path, "w") as f:
            f["X"], f["y"] = X, y
    comm.barrier()
    kw = dict(max_iter=4, tol=1e-3, n_iter_no_change=2, batch_size=32, random_state=0,
              dtype="float64")
    given = SGDClassifier(**kw)
    est, info = train_from_file(given, path, out=os.path.join(shared_tmp, "m.h5"),
                                val_fraction=0.25, seed=3, early_stopping=True)
    # the same by hand: this rank's rows, the same held-out rows, early stopping on them
    from mpiml.models.steering import EarlyStopping
    lo, hi = chunk(600, comm.size, comm.rank)
    mask = validation_mask(600, lo, hi - lo, 0.25, seed=3)
    (Xt, yt), val = split_rows(X[lo:hi].copy(), y[lo:hi].astype(float), mask)
    ref = SGDClassifier(**dict(kw, tol=None)).fit(
        Xt, yt, validation=val, callbacks=[EarlyStopping("val_loss", patience=2, min_delta=1e-3)])
    same = (np.array_equal(est.coef_, ref.coef_) and est.loss_curve_ == ref.loss_curve_
            and info["rows"] == 450 and given.tol == 1e-3 and est.tol is None)
    _agree(comm, same and os.path.exists(os.path.join(shared_tmp, "m.h5")), "train_from_file")
