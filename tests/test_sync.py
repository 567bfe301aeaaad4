"""Synchronisation modes: local SGD, overlap, compression and the parameter server,
against synchronous SGD on the same data (real HDF5 files, any rank count)."""
import json
import os

import numpy as np
import pytest

from mpiml import MLPClassifier, SGDClassifier, SGDRegressor, chunk, load_hdf5
from mpiml import hooks
from mpiml._kernels import sgd as _k
from mpiml.datasets import make_data
from mpiml.errors import ConfigError


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A make-data binary task (train and test files), written by rank 0."""
    from mpiml.comm import get_comm
    c = get_comm()
    path = None
    if c.rank == 0:
        path = str(tmp_path_factory.mktemp("sync"))
    path = c.bcast(path)
    make_data("binary", 6000, 20, os.path.join(path, "train.h5"), seed=4,
              test_out=os.path.join(path, "test.h5"), test_rows=3000, dtype="float64", comm=c)
    return path


KW = dict(learning_rate="constant", eta0=0.1, tol=None, max_iter=4, batch_size=64,
          random_state=0, penalty="l2", alpha=1e-4)


def _fit_score(task, **mode):
    X, y = load_hdf5(os.path.join(task, "train.h5"), sync=mode.get("sync", "allreduce"))
    Xt, yt = load_hdf5(os.path.join(task, "test.h5"), sync=mode.get("sync", "allreduce"))
    est = SGDClassifier(**KW, **mode).fit(X, y)
    return est, est.score(Xt, yt)


@pytest.mark.mpi
def test_local_1_is_allreduce(comm):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(401, 7))
    y = X @ rng.normal(size=7) + 0.1 * rng.normal(size=401)
    lo, hi = comm.chunk(len(X))
    kw = dict(learning_rate="invscaling", eta0=0.05, penalty="l2", alpha=1e-3, tol=None,
              max_iter=3, batch_size=32, random_state=1, dtype="float64")
    a = SGDRegressor(**kw).fit(X[lo:hi], y[lo:hi])
    b = SGDRegressor(**kw, sync="local:1").fit(X[lo:hi], y[lo:hi])
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.intercept_, a.intercept_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.loss_curve_, a.loss_curve_, rtol=1e-10)
    assert b.t_ == a.t_


@pytest.mark.mpi
@pytest.mark.parametrize("mode", [dict(sync="local:8"), dict(sync="local:8", sync_warmup=30),
                                  dict(overlap=True), dict(compress="fp16"),
                                  dict(compress="topk:0.01"), dict(sync="ps:1")],
                         ids=["local8", "local8-warmup", "overlap", "fp16", "topk1%", "ps1"])
def test_each_mode_reaches_the_synchronous_accuracy(comm, task, mode):
    if mode.get("sync") == "ps:1" and comm.size < 2:
        pytest.skip("a parameter server needs a worker besides the server")
    _, ref = _fit_score(task)
    est, acc = _fit_score(task, **mode)
    tolerance = 0.02 if "compress" in mode and mode["compress"].startswith("topk") else 0.01
    assert acc >= ref - tolerance, (mode, acc, ref)
    assert est.loss_curve_[-1] < est.loss_curve_[0]


@pytest.mark.mpi
def test_stats_file_counts_the_traffic(comm, task, shared_tmp):
    stats = os.path.join(shared_tmp, "stats.jsonl")
    est, _ = _fit_score(task, stats=stats)
    comm.barrier()
    lines = [json.loads(line) for line in open(stats)]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    steps = -(-6000 // 64)
    buf = (est.coef_.size + est.intercept_.size + 2 + 4) * 8      # the packed step buffer
    for r in lines:
        assert r["sync"] == "allreduce" and len(r["bytes_sent_per_rank"]) == comm.size
        assert r["bytes_sent_per_rank"] == [steps * buf] * comm.size
        assert r["messages_per_rank"] == [steps] * comm.size
        assert all(t >= 0 for t in r["comm_seconds_per_rank"])
    # top-k sends index/value pairs: far fewer bytes
    stats2 = os.path.join(shared_tmp, "stats2.jsonl")
    _fit_score(task, compress="topk:0.1", stats=stats2)
    comm.barrier()
    small = json.loads(open(stats2).readline())["bytes_sent_per_rank"][0]
    assert small == steps * (8 * 2 + 6 * 8)          # k = 2 of 21 entries, exact tail


@pytest.mark.mpi(min_size=3)
def test_parameter_server_replay_and_bounds(comm):
    """1 server (rank size-1), workers with different shard sizes: the server's weights
    equal a sequential replay of its logged updates, every worker step was applied
    exactly once, and the clock gap never exceeded the bound."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(700, 6))
    y = (X @ rng.normal(size=6) > 0).astype(int)
    workers = comm.size - 1
    # uneven shards: worker 0 gets twice the rows of the others
    share = np.array([2] + [1] * (workers - 1), dtype=float)
    bounds = np.concatenate([[0], np.cumsum(share / share.sum() * 700).round().astype(int)])
    lo, hi = (bounds[comm.rank], bounds[comm.rank + 1]) if comm.rank < workers else (0, 0)
    est = SGDClassifier(learning_rate="constant", eta0=0.05, momentum=0.5, batch_size=32,
                        max_iter=3, tol=None, random_state=0, dtype="float64", sync="ps:1",
                        max_staleness=2)
    with hooks.injected(record_servers=True):   # servers keep their logs
        est.fit(X[lo:hi], y[lo:hi])
    info = est.ps_stats_["servers"][0]
    assert est.ps_stats_["max_clock_gap"] <= 2
    counts = est.ps_stats_["updates_per_worker"]
    assert sum(counts.values()) == info["updates"]
    if comm.rank == comm.size - 1:                    # the server holds the log
        rows = {r: np.mean([e[4] for e in info["log"] if e[0] == r]) for r in counts}
        assert rows[0] > 1.5 * rows[1]                # worker 0 pushed bigger shares
        w = np.zeros(7)
        vel = np.zeros(7)
        hyper = est._hyper()
        steps = {}
        for version, (src, step, read, grad, count) in enumerate(info["log"], start=1):
            steps.setdefault(src, []).append(step)
            assert read < version
            eta = _k.step_size(hyper["schedule"], float(version), hyper["eta0"], hyper["alpha"],
                               hyper["power_t"], hyper["optimal_init"])
            _k.sgd_update(w, vel, grad, 6, count, eta, hyper["penalty"], hyper["alpha"],
                          hyper["l1_ratio"], hyper["momentum"], hyper["fit_intercept"])
        assert np.array_equal(w, np.concatenate([est.coef_.ravel(), est.intercept_]))
        for src, got in steps.items():
            assert sorted(got) == list(range(counts[src])), src     # none lost, none twice
    # every rank ends with the same model
    flat = np.concatenate([est.coef_.ravel(), est.intercept_])
    assert all(np.array_equal(flat, other) for other in comm.allgather(flat))


@pytest.mark.mpi
def test_bad_sync_settings_are_one_error_everywhere(comm):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ConfigError, match="sync must be"):
        SGDClassifier(sync="ring").fit(X, y)
    with pytest.raises(ConfigError, match="needs at least one worker"):
        SGDClassifier(sync=f"ps:{comm.size}").fit(X, y)
    with pytest.raises(ConfigError, match="compress must be"):
        SGDClassifier(compress="topk:2").fit(X, y)
    with pytest.raises(ConfigError, match="apply to sync='allreduce'"):
        SGDClassifier(sync="local:4", compress="fp16").fit(X, y)
    with pytest.raises(ConfigError, match="implemented for the linear models"):
        MLPClassifier(sync="ps:1").fit(X, y)
    if comm.size > 1:
        lo, hi = chunk(20, comm.size, comm.rank)
        with pytest.raises(Exception, match="parameter servers"):
            SGDClassifier(sync="ps:1").fit(X[lo:hi], y[lo:hi])     # the server got rows


@pytest.mark.mpi
@pytest.mark.parametrize("mode", [dict(sync="local:4"), dict(compress="fp16"),
                                  dict(overlap=True)], ids=["local4", "fp16", "overlap"])
def test_mlp_modes_reach_the_synchronous_accuracy(comm, mode):
    from mpiml.datasets import _CIRCLE_RADIUS
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 4))
    y = (np.hypot(X[:, 0], X[:, 1]) > _CIRCLE_RADIUS).astype(int)
    lo, hi = comm.chunk(len(X))
    kw = dict(hidden_layer_sizes=(16, 16), learning_rate_init=0.01, batch_size=64,
              max_iter=15, tol=None, random_state=0)
    ref = MLPClassifier(**kw).fit(X[lo:hi], y[lo:hi]).score(X[lo:hi], y[lo:hi])
    acc = MLPClassifier(**kw, **mode).fit(X[lo:hi], y[lo:hi]).score(X[lo:hi], y[lo:hi])
    assert acc >= ref - 0.01, (acc, ref)


class _Logs:
    def __init__(self):
        self.logs = []

    def on_epoch_end(self, est, logs):
        self.logs.append(logs)
        return False


@pytest.mark.mpi(min_size=2)
def test_ps_meets_at_epoch_ends_when_asked_for_validation(comm):
    """With validation rows (or callbacks, or checkpoints) a ps fit runs one asynchronous
    run per epoch and every rank holds the same weights at each epoch end. One worker:
    the same updates as the fit that never meets (bitwise). Any number: the servers' logs
    replay to the final weights, versions counting on across the epochs, every push once."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 6))
    y = (X @ rng.normal(size=6) > 0).astype(int)
    workers = comm.size - 1
    lo, hi = chunk(len(X), workers, comm.rank) if comm.rank < workers else (0, 0)
    kw = dict(learning_rate="invscaling", eta0=0.2, momentum=0.3, batch_size=40, max_iter=4,
              tol=None, random_state=0, dtype="float64", sync="ps:1", max_staleness=3,
              comm=comm)
    whole = SGDClassifier(**kw).fit(X[lo:hi], y[lo:hi])
    cb = _Logs()
    est = SGDClassifier(**kw)
    with hooks.injected(record_servers=True):   # servers keep their logs
        est.fit(X[lo:hi], y[lo:hi], validation=(X[lo:hi], y[lo:hi]), callbacks=[cb])
    final_score = est.score(X[lo:hi], y[lo:hi])
    flat = np.concatenate([est.coef_.ravel(), est.intercept_])
    everywhere = comm.allgather(flat)
    info = est.ps_stats_["servers"][0]
    # every worker holds rows of every step and pushes its part: one update each
    per_epoch = -(-len(X) // 40) * workers
    assert [l["epoch"] for l in cb.logs] == [1, 2, 3, 4]
    assert [l["step"] for l in cb.logs] == [per_epoch * e for e in (1, 2, 3, 4)]
    assert cb.logs[-1]["val_n_samples"] == len(X)
    assert abs(cb.logs[-1]["val_accuracy"] - final_score) < 1e-12
    assert all(np.array_equal(flat, o) for o in everywhere)
    assert est.t_ == whole.t_ == 4 * per_epoch + 1
    assert est.ps_stats_["max_clock_gap"] <= 3
    if workers == 1:
        np.testing.assert_array_equal(est.coef_, whole.coef_)
        np.testing.assert_array_equal(est.intercept_, whole.intercept_)
        assert est.loss_curve_ == whole.loss_curve_
    if comm.rank == comm.size - 1:                    # the server holds the log
        hyper = est._hyper()
        w, vel, seen = np.zeros(7), np.zeros(7), {}
        for version, (src, step, read, grad, count) in enumerate(info["log"], start=1):
            assert read < version
            seen.setdefault(src, []).append(step)
            eta = _k.step_size(hyper["schedule"], float(version), hyper["eta0"], hyper["alpha"],
                               hyper["power_t"], hyper["optimal_init"])
            _k.sgd_update(w, vel, grad, 6, count, eta, hyper["penalty"], hyper["alpha"],
                          hyper["l1_ratio"], hyper["momentum"], hyper["fit_intercept"])
        np.testing.assert_array_equal(w, flat)
        counts = est.ps_stats_["updates_per_worker"]
        assert sum(counts.values()) == len(info["log"]) == 4 * per_epoch
        for src, got in seen.items():
            assert got == list(range(counts[src])), src       # in order, none lost or twice


@pytest.mark.mpi(min_size=2)
def test_ps_applies_the_tol_rule_at_epoch_ends(comm):
    """scikit-learn's tol / n_iter_no_change stop a ps fit too: it meets at epoch ends."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 4))
    y = (X @ rng.normal(size=4) > 0).astype(int)
    workers = comm.size - 1
    lo, hi = chunk(len(X), workers, comm.rank) if comm.rank < workers else (0, 0)
    est = SGDClassifier(learning_rate="constant", eta0=0.1, batch_size=40, max_iter=60,
                        tol=0.01, n_iter_no_change=2, random_state=0, sync="ps:1",
                        comm=comm).fit(X[lo:hi], y[lo:hi])
    best, stall, stop = np.inf, 0, None
    for epoch, loss in enumerate(est.loss_curve_, 1):
        stall = stall + 1 if loss > best - 0.01 else 0
        best = min(best, loss)
        if stall >= 2:
            stop = epoch
            break
    assert stop is not None and est.n_iter_ == stop < 60, est.loss_curve_
