"""The compiled step loop (csrc/steploop.pyx, mpiml.parallel.compiled): the same model as
the Python step loop, bit for bit, for every engine it drives; a stop signal that reaches
a rank in the middle of a compiled epoch stops the job there; `mpiml info` says which
loop runs.

The in-process tests run under mpiexec (`--only-mpi`, 2 and 3 ranks: the loop is not used
on one rank); the launcher test starts its own mpiexec."""
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from mpi4py import MPI

from launch import MPIEXEC, MPIML, WRAP, clean_env, mpirun, rank_exits
from mpiml import SGDClassifier, SGDRegressor
from mpiml.parallel import compiled


@contextlib.contextmanager
def step_loop(which):
    old = os.environ.get("MPIML_STEP_LOOP")
    os.environ["MPIML_STEP_LOOP"] = which
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MPIML_STEP_LOOP")
        else:
            os.environ["MPIML_STEP_LOOP"] = old


def _shard(n, d, seed, dtype, classes=2):
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (X[:, :classes - 1] @ np.ones(classes - 1) > 0).astype(int) if classes == 2 else \
        np.argmax(X[:, :classes], axis=1)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    return X[lo:hi], y[lo:hi]


def _both(make, X, y, **fit):
    """The fitted attributes through the compiled loop and through the Python loop, and
    how many epochs the compiled loop ran."""
    before = compiled.epochs_run
    a = make().fit(X, y, **fit)
    ran = compiled.epochs_run - before
    with step_loop("python"):
        b = make().fit(X, y, **fit)
    return a, b, ran


def _all_ranks(ok):
    assert MPI.COMM_WORLD.allreduce(bool(ok), op=MPI.LAND)


CASES = [
    ("log float32", lambda: SGDClassifier(max_iter=3, batch_size=64, tol=None, random_state=0),
     np.float32, 2, {}),
    ("log momentum elasticnet float64",
     lambda: SGDClassifier(max_iter=3, batch_size=32, tol=None, random_state=1, momentum=0.9,
                           penalty="elasticnet", alpha=1e-3, learning_rate="constant", eta0=0.02),
     np.float64, 2, {}),
    ("hinge, class weights", lambda: SGDClassifier(loss="hinge", max_iter=2, batch_size=48, tol=None,
                                                   random_state=2, class_weight="balanced"),
     np.float32, 2, {}),
    ("multinomial", lambda: SGDClassifier(max_iter=2, batch_size=40, tol=None, random_state=3),
     np.float64, 4, {}),
    ("squared, sample weights", lambda: SGDRegressor(max_iter=2, batch_size=32, tol=None,
                                                     random_state=4),
     np.float64, 0, {"sample_weight": True}),
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name,make,dtype,classes,fit", CASES, ids=[c[0] for c in CASES])
def test_compiled_loop_gives_the_python_loops_model(name, make, dtype, classes, fit):
    if compiled.available() is not None:
        assert not os.environ.get("CI"), f"CI must build the compiled loop: {compiled.available()}"
        pytest.skip(compiled.available())
    X, y = _shard(1500, 7, 5, dtype, classes or 2)
    if classes == 0:
        y = X @ np.arange(1.0, 8.0) + 0.1
    kw = {}
    if fit.get("sample_weight"):
        kw["sample_weight"] = np.linspace(0.5, 2.0, len(y))
    a, b, ran = _both(make, X, y, **kw)
    _all_ranks(ran > 0)                     # the compiled loop ran the epochs
    _all_ranks(np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_))
    _all_ranks(a.loss_curve_ == b.loss_curve_ and a.t_ == b.t_)


@pytest.mark.mpi(min_size=2)
def test_compiled_loop_drives_sparse_rows_with_the_dense_exchange():
    if compiled.available() is not None:
        pytest.skip(compiled.available())
    X, y = _shard(1200, 30, 6, np.float64)
    X[np.abs(X) < 1.0] = 0.0
    Xs = sp.csr_matrix(X)

    def make():
        return SGDClassifier(max_iter=2, batch_size=64, tol=None, random_state=0,
                             exchange="dense", penalty="l2", alpha=1e-3)
    a, b, ran = _both(make, Xs, y)
    _all_ranks(ran > 0 and a.exchange_ == "dense")
    _all_ranks(np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_))


@pytest.mark.mpi(min_size=2)
def test_sparse_exchange_keeps_its_own_loop():
    """The sparse exchange is not an Allreduce of the packed buffer: never compiled."""
    X, y = _shard(1200, 4000, 7, np.float64)
    X[np.abs(X) < 2.5] = 0.0
    before = compiled.epochs_run
    clf = SGDClassifier(max_iter=1, batch_size=32, tol=None, random_state=0,
                        exchange="sparse").fit(sp.csr_matrix(X), y)
    _all_ranks(clf.exchange_ == "sparse" and compiled.epochs_run == before)


# ------------------------------------------------------------------ launcher tests

def _pid_of_rank(marker, rank, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if marker in env and f"PMI_RANK={rank}".encode() in env and b"python" in cmd:
                return int(pid)
        time.sleep(0.01)
    raise AssertionError("the rank never started")


@pytest.mark.launcher
def test_signal_to_one_rank_stops_a_compiled_epoch_in_its_middle(tmp_path):
    """One epoch of 10^6 steps (2M rows, global batch 2) on 2 ranks; SIGUSR1 to rank 1 only,
    once rank 0's status file shows training. Rank 1 runs the compiled loop and never
    returns to Python before the epoch's end, so only the loop's C flag can stop it in
    the middle: every rank exits 75 with a checkpoint before the end of the epoch, and
    the resumed job ends with the uninterrupted model."""
    if compiled.available() is not None:
        pytest.skip(compiled.available())
    code, _, err, _ = mpirun(1, ["make-data", "--task", "binary", "--rows", 2_000_000, "--features",
                                 4, "--seed", 1, "--out", tmp_path / "d.h5"], tmp_path)
    assert code == 0, err
    train = ["train", "--data", tmp_path / "d.h5", "--model", "logistic", "--epochs", 1,
             "--batch-size", 2, "--lr", 0.01, "--dtype", "float64", "--quiet"]
    code, _, err, _ = mpirun(2, train + ["--out", tmp_path / "ref.h5"], tmp_path)
    assert code == 0, err
    marker = f"MPIML_TEST_MARK={uuid.uuid4().hex}".encode()
    env = clean_env(MPIML_TEST_MARK=marker.decode().split("=")[1])
    ck, rd = tmp_path / "ck", tmp_path / "rd"
    argv = [MPIEXEC, "-n", "2", "sh", "-c", WRAP, "sh", MPIML] + [str(a) for a in train] + \
        ["--out", str(tmp_path / "m.h5"), "--checkpoint-dir", str(ck), "--run-dir", str(rd)]
    p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = _pid_of_rank(marker, 1)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with contextlib.suppress(OSError, ValueError):
                if json.loads((rd / "status.json").read_text()).get("step", 0) > 0:
                    break
            time.sleep(0.01)
        os.kill(pid, signal.SIGUSR1)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert rank_exits(err) == [75, 75], err
    (ckpt,) = [f for f in os.listdir(ck) if f.startswith("ckpt-")]
    assert 0 < int(ckpt[5:-3]) < 1_000_000, ckpt
    code, _, err, _ = mpirun(2, train + ["--out", tmp_path / "m.h5", "--resume", ck], tmp_path)
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5", "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert np.array_equal(a["coef"][()], b["coef"][()])
        assert np.array_equal(a["intercept"][()], b["intercept"][()])


@pytest.mark.launcher
def test_info_names_the_step_loop(tmp_path):
    code, out, err, _ = mpirun(1, ["info", "--json"], tmp_path)
    assert code == 0, err
    info = json.loads(out)
    assert info["step_loop"] == compiled.describe()
    assert info["step_loop"].startswith("compiled" if compiled.available() is None else "Python")
