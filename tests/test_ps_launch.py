"""The parameter server at rank counts the MPI passes do not cover (4 ranks, 2
servers) and with one worker slowed down (asynchrony is real)."""
import json
import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.launcher

from launch import clean_env, mpirun  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "ps_check.py")


def _run(n, servers, staleness, tmp_path, **env):
    code, out, err, _ = mpirun(n, [], tmp_path, timeout=120,
                               cmd=[sys.executable, "-m", "mpi4py", SCRIPT, str(servers),
                                    str(staleness)], env=clean_env(**env))
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_servers_replay_exactly_and_stay_within_the_bound(tmp_path):
    r = _run(4, 2, 3, tmp_path)
    assert r["replay_ok"] and r["same_everywhere"], r
    assert r["max_clock_gap"] <= 3
    assert sorted(r["updates_per_worker"]) == ["0", "1"] or sorted(r["updates_per_worker"]) == [0, 1]
    assert r["score"] > 0.9


def test_a_slow_worker_does_not_hold_back_the_fast_one(tmp_path):
    # worker 1 sleeps 20 ms after each push; with a loose bound the fast worker runs ahead
    r = _run(3, 1, 1000, tmp_path, MPIML_TEST_SLOW_WORKER="1:0.02")
    ups = {int(k): v for k, v in r["updates_per_worker"].items()}
    assert r["replay_ok"] and r["same_everywhere"], r
    # when the fast worker had made all its pushes, the slow one had made under half as many
    when = {int(k): {int(a): b for a, b in v.items()} for k, v in r["pushes_when_done"].items()}
    assert when[0][0] >= 2 * when[0][1], when
    assert r["max_update_staleness"] > 0 and r["mean_update_staleness"] > 0
    assert ups[0] == ups[1], ups          # every push of both was applied in the end


def test_a_tight_bound_makes_the_fast_worker_wait(tmp_path):
    r = _run(3, 1, 2, tmp_path, MPIML_TEST_SLOW_WORKER="1:0.01")
    assert r["replay_ok"] and r["max_clock_gap"] <= 2, r


def test_cli_trains_with_a_parameter_server(tmp_path):
    code, _, err, _ = mpirun(1, ["make-data", "--task", "binary", "--rows", 4000, "--features",
                                 8, "--seed", 2, "--out", tmp_path / "d.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(3, ["train", "--data", tmp_path / "d.h5", "--model", "logistic",
                                   "--epochs", 3, "--sync", "ps:1", "--max-staleness", 2,
                                   "--stats", tmp_path / "s.jsonl", "--out", tmp_path / "m.h5"],
                               tmp_path, timeout=120)
    assert code == 0, err
    assert "sync ps:1" in out
    rec = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[-1])
    assert rec["epoch"] == "all" and rec["max_clock_gap"] <= 2
    assert rec["bytes_sent_per_rank"][2] > 0            # the server answered
    code, out, err, _ = mpirun(2, ["score", "--model", tmp_path / "m.h5", "--data",
                                   tmp_path / "d.h5", "--json"], tmp_path)
    assert code == 0 and json.loads(out)["accuracy"] > 0.9, out + err


# ------------------------------------------- a ps fit that meets at epoch ends (checkpoints,
# signals, validation): see mpiml.parallel.ps.EpochwiseRun
PS = ["--model", "logistic", "--batch-size", 200, "--sync", "ps:1", "--dtype", "float64",
      "--quiet"]


@pytest.fixture(scope="module")
def ps_data(tmp_path_factory):
    from launch import make_binary
    return make_binary(tmp_path_factory.mktemp("psdata"), rows=3000, seed=5) / "train.h5"


def _coef(path):
    import h5py
    with h5py.File(path, "r") as f:
        return f["coef"][()], f["intercept"][()], int(f.attrs["n_iter"])


@pytest.mark.parametrize("n,signalled", [(2, 0), (3, 2)])
def test_ps_checkpoints_at_an_epoch_end_on_a_signal_and_resumes(ps_data, tmp_path, n,
                                                                 signalled):
    """A signal on one rank (a worker, or the server) during epoch 3 is agreed at that
    epoch's end: a checkpoint, exit 75 everywhere, and --resume finishes the run. With one
    worker the updates are sequential, so the result is bitwise the uninterrupted run."""
    from launch import rank_exits
    workers = n - 1
    per_epoch = 15 * workers                  # 3000 rows / batch 200, one push per worker
    ref = tmp_path / "ref.h5"
    code, _, err, _ = mpirun(n, ["train", "--data", ps_data, "--out", ref, "--epochs", 6] + PS,
                             tmp_path, timeout=120)
    assert code == 0, err
    ck = tmp_path / "ck"
    # the test hook fires at the end of epoch 2; the stop is agreed at the end of epoch 3
    env = clean_env(MPIML_TEST_SIGNAL=f"{signalled}:{2 * per_epoch}:SIGUSR1")
    code, out, err, _ = mpirun(n, ["train", "--data", ps_data, "--out", tmp_path / "m.h5",
                                   "--checkpoint-dir", ck, "--epochs", 6] + PS, tmp_path,
                               timeout=120, env=env, wrap=True)
    assert rank_exits(err) == [75] * n, err
    assert err.count("stopped by a signal") == 1
    assert sorted(os.listdir(ck)) == [f"ckpt-{3 * per_epoch:012d}.h5"]
    assert not (tmp_path / "m.h5").exists()
    code, out, err, _ = mpirun(n, ["train", "--data", ps_data, "--out", tmp_path / "m.h5",
                                   "--checkpoint-dir", ck, "--resume", ck, "--epochs", 6] + PS,
                               tmp_path, timeout=120)
    assert code == 0, err
    coef, b, n_iter = _coef(tmp_path / "m.h5")
    ref_coef, ref_b, ref_iter = _coef(ref)
    assert n_iter == ref_iter == 6
    if workers == 1:
        assert np.array_equal(coef, ref_coef) and np.array_equal(b, ref_b)
    code, out, err, _ = mpirun(2, ["score", "--model", tmp_path / "m.h5", "--data", ps_data,
                                   "--json"], tmp_path)
    assert code == 0 and json.loads(out)["accuracy"] > 0.9, out + err


def test_ps_validation_and_early_stopping(ps_data, tmp_path):
    import h5py

    from mpiml import load_model
    from mpiml.model_selection import validation_mask
    run = tmp_path / "run"
    code, out, err, _ = mpirun(3, ["train", "--data", ps_data, "--out", tmp_path / "m.h5",
                                   "--val-fraction", 0.2, "--seed", 1, "--early-stopping",
                                   "--n-iter-no-change", 2, "--tol", 0.01, "--epochs", 40,
                                   "--run-dir", run] + PS, tmp_path, timeout=120)
    assert code == 0, err
    with open(run / "metrics.jsonl") as fh:
        recs = [r for r in map(json.loads, fh) if "val_loss" in r]
    with h5py.File(ps_data, "r") as f:
        X, y = f["X"][()], f["y"][()]
    mask = validation_mask(len(X), 0, len(X), 0.2, seed=1)
    est = load_model(tmp_path / "m.h5", comm=__import__("mpi4py").MPI.COMM_SELF)
    assert all(r["val_n_samples"] == mask.sum() for r in recs)
    # the last record is the final model's, on exactly the held-out rows
    assert abs(recs[-1]["val_accuracy"] - est.score(X[mask], y[mask])) < 1e-12
    best, wait, stop = None, 0, None
    for epoch, r in enumerate(recs, 1):
        if best is None or r["val_loss"] < best - 0.01:
            best, wait = r["val_loss"], 0
        else:
            wait += 1
            if wait == 2:
                stop = epoch
                break
    assert stop is not None and len(recs) == stop < 40, [r["val_loss"] for r in recs]
    assert f"stopped after epoch {stop}: early stopping" in out
