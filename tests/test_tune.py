"""`mpiml tune`: cross-validated search over rank groups, against a serial loop over the
same configurations and folds (launched with mpiexec from the plain pytest pass)."""
import json

import h5py
import numpy as np
import pytest

from launch import clean_env, mpirun, rank_exits
from mpiml.model_selection import fold_of

pytestmark = pytest.mark.launcher
LRS = [1e-5, 0.3]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    code, _, err, _ = mpirun(1, ["make-data", "--task", "binary", "--rows", 1500, "--features", 6,
                                 "--seed", 3, "--dtype", "float64", "--out", d / "d.h5"], d)
    assert code == 0, err
    return d


def _serial_scores(path, lrs, cv, epochs=1, batch=64):
    """A plain loop on one process: same folds, same estimator settings as `train`'s."""
    from mpi4py import MPI

    from mpiml import SGDClassifier

    with h5py.File(path, "r") as f:
        X, y = f["X"][()], f["y"][()]
    folds = fold_of(len(X), 0, len(X), cv, seed=0)
    out = {}
    for lr in lrs:
        scores = []
        for k in range(cv):
            tr, va = folds != k, folds == k
            est = SGDClassifier(loss="log_loss", eta0=lr, learning_rate="constant", alpha=1e-4,
                                batch_size=batch, max_iter=epochs, tol=None, random_state=0,
                                comm=MPI.COMM_SELF).fit(X[tr], y[tr])
            scores.append(est.score(X[va], y[va]))
        out[lr] = (np.mean(scores), np.std(scores))
    return out


@pytest.mark.parametrize("n,group", [(2, 1), (2, 2), (3, 1), (3, 3)])
def test_tune_picks_the_winner_and_matches_a_serial_loop(data, tmp_path, n, group):
    code, out, err, _ = mpirun(n, ["tune", "--data", data / "d.h5", "--model", "logistic",
                                   "--epochs", 1, "--batch-size", 64, "--grid",
                                   "lr=" + ",".join(map(str, LRS)), "--cv", 3, "--group-size",
                                   group, "--out", tmp_path / "best.h5", "--quiet"],
                               tmp_path, timeout=120)
    assert code == 0, err
    with open(tmp_path / "best-tune.json") as fh:
        res = json.load(fh)
    summary = res["summary"]
    assert summary[0]["params"] == {"lr": 0.3} and summary[0]["mean_score"] > 0.85
    assert res["groups"] == n // group and len(res["records"]) == 2 * 3
    ref = _serial_scores(data / "d.h5", LRS, 3)
    for s in summary:
        mean, std = ref[s["params"]["lr"]]
        assert abs(s["mean_score"] - mean) < 1e-8 and abs(s["std_score"] - std) < 1e-8
    assert (tmp_path / "best.h5").exists() and (tmp_path / "best-tune.png").exists()
    with open(tmp_path / "best-tune.csv") as fh:
        assert len(fh.read().strip().splitlines()) == 1 + len(LRS)
    with h5py.File(tmp_path / "best.h5", "r") as f:
        assert f["coef"].shape[-1] == 6


def test_a_diverging_configuration_is_recorded_as_failed(tmp_path):
    code, _, err, _ = mpirun(1, ["make-data", "--task", "regression", "--rows", 600,
                                 "--features", 4, "--seed", 1, "--dtype", "float64", "--out",
                                 tmp_path / "r.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(2, ["tune", "--data", tmp_path / "r.h5", "--model", "linear",
                                   "--epochs", 3, "--batch-size", 32, "--grid",
                                   "lr=0.01,1e6", "--cv", 2, "--out", tmp_path / "best.h5",
                                   "--quiet"], tmp_path, timeout=120)
    assert code == 0, err
    with open(tmp_path / "best-tune.json") as fh:
        summary = json.load(fh)["summary"]
    bad = [s for s in summary if s["params"]["lr"] == 1e6][0]
    assert bad["status"] == "failed" and "diverged" in bad["error"] and bad["mean_score"] is None
    assert summary[0]["params"]["lr"] == 0.01 and summary[0]["status"] == "ok"
    assert "failed" in out


def test_halving_gives_the_best_more_epochs(data, tmp_path):
    code, out, err, _ = mpirun(2, ["tune", "--data", data / "d.h5", "--model", "logistic",
                                   "--epochs", 9, "--batch-size", 64, "--grid",
                                   "lr=1e-6,1e-5,0.01,0.3", "alpha=1e-4,1e-2", "--cv", 2,
                                   "--halving", "--out", tmp_path / "best.h5", "--quiet"],
                               tmp_path, timeout=120)
    assert code == 0, err
    with open(tmp_path / "best-tune.json") as fh:
        res = json.load(fh)
    # 8 configurations, eta 3: two rungs (3 and 9 epochs); the best ceil(8/3) go on
    assert res["rungs"] == [3, 9]
    by_rung = [sum(1 for r in res["records"] if r["rung"] == k) // 2 for k in range(2)]
    assert by_rung == [8, 3]
    assert res["summary"][0]["epochs"] == 9 and res["summary"][0]["params"]["lr"] >= 0.01


@pytest.mark.parametrize("args,message", [(["--group-size", "3"], "must divide"),
                                          (["--grid", "nosuch=1,2"], "not a train option"),
                                          (["--grid", "lr"], "name=v1,v2"),
                                          (["--search", "random:x"], "grid' or 'random:N'")])
def test_bad_tune_input(data, tmp_path, args, message):
    base = ["tune", "--data", data / "d.h5", "--model", "logistic", "--out", tmp_path / "b.h5"]
    if "--grid" not in args:
        base += ["--grid", "lr=0.1,0.2"]
    code, out, err, seconds = mpirun(2, base + args, tmp_path, wrap=True)
    assert seconds < 30 and err.count("mpiml: error:") == 1 and message in err, err
    assert rank_exits(err) == [1, 1]
    assert not (tmp_path / "b.h5").exists()


HALVING = ["--model", "logistic", "--epochs", 9, "--batch-size", 64, "--grid",
           "lr=1e-6,1e-5,0.01,0.3", "alpha=1e-4,1e-2", "--cv", 2, "--halving", "--quiet"]


def test_a_stopped_search_resumes_where_it_stopped(data, tmp_path):
    """SIGUSR1 (as Slurm sends before the time limit) stops the search with exit 75 on
    every rank; --resume at another rank count runs only the missing fits and ends
    with the uninterrupted search's results."""
    base = ["tune", "--data", data / "d.h5"] + HALVING
    code, _, err, _ = mpirun(2, base + ["--out", tmp_path / "whole.h5"], tmp_path, timeout=120)
    assert code == 0, err
    env = clean_env(MPIML_TEST_TUNE_SIGNAL="1:2:SIGUSR1")   # rank 1, after its 2nd fit
    code, out, err, _ = mpirun(2, base + ["--out", tmp_path / "cut.h5"], tmp_path, wrap=True,
                               env=env, timeout=120)
    assert rank_exits(err) == [75, 75], err
    assert err.count("stopped by a signal") == 1 and not (tmp_path / "cut.h5").exists()
    journal = tmp_path / "cut-tune.journal"
    with open(journal / "records-0.jsonl") as fh0, open(journal / "records-1.jsonl") as fh1:
        finished = len(fh0.readlines()) + len(fh1.readlines())
    # rank 1 stopped after 2 fits; rank 0 (not signalled) finished rung 0's 16
    assert finished == 16
    code, out, err, _ = mpirun(3, base + ["--out", tmp_path / "cut.h5", "--resume", journal],
                               tmp_path, timeout=120)
    assert code == 0, err
    assert f"resumed: 16 fit(s) taken from {journal}, 6 run now" in out
    with open(tmp_path / "whole-tune.json") as fh, open(tmp_path / "cut-tune.json") as fh2:
        whole, cut = json.load(fh), json.load(fh2)
    assert [(s["config_index"], s["epochs"], s["mean_score"], s["std_score"])
            for s in cut["summary"]] == [(s["config_index"], s["epochs"], s["mean_score"],
                                          s["std_score"]) for s in whole["summary"]]
    assert cut["fits_run"] == 6 and cut["fits_resumed"] == 16
    # the journal of a finished search is not overwritten by a fresh run, and a
    # journal is only resumed by the same search
    for extra, message in ([[], "holds an earlier search"],
                           [["--resume", journal, "--cv", 3], "cv differ"]):
        code, _, err, seconds = mpirun(2, base + ["--out", tmp_path / "cut.h5"] + extra,
                                       tmp_path, wrap=True)
        assert seconds < 30 and err.count("mpiml: error:") == 1 and message in err, err
        assert rank_exits(err) == [1, 1]


def test_grid_over_mlp_layers(data, tmp_path):
    """--grid hidden=8,16x16: one layer of 8 or two of 16 (commas separate the values)."""
    code, out, err, _ = mpirun(2, ["tune", "--data", data / "d.h5", "--model", "mlp", "--epochs",
                                   2, "--batch-size", 64, "--grid", "hidden=8,16x16", "--cv", 2,
                                   "--out", tmp_path / "best.h5", "--quiet"], tmp_path,
                               timeout=120)
    assert code == 0, err
    with open(tmp_path / "best-tune.json") as fh:
        summary = json.load(fh)["summary"]
    assert sorted(str(s["params"]["hidden"]) for s in summary) == ["16x16", "8"]
    assert all(s["status"] == "ok" for s in summary), summary
    with h5py.File(tmp_path / "best.h5", "r") as f:
        layers = [f[f"coef_{i}"].shape for i in range(int(f.attrs["n_layers"]))]
    best = summary[0]["params"]["hidden"]
    assert layers == ([(6, 8), (8, 1)] if best == 8 else [(6, 16), (16, 16), (16, 1)])


@pytest.mark.parametrize("n", [2, 3])
def test_model_parallel_fits_inside_the_groups(tmp_path, n):
    """--model-parallel K with --group-size K: each fit's softmax is split by classes over
    its group; the CV scores equal a serial loop of unsplit models (1e-8)."""
    code, _, err, _ = mpirun(1, ["make-data", "--task", "multiclass", "--classes", 3, "--rows",
                                 900, "--features", 5, "--seed", 4, "--dtype", "float64",
                                 "--out", tmp_path / "m.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(n, ["tune", "--data", tmp_path / "m.h5", "--model", "softmax",
                                   "--epochs", 2, "--batch-size", 64, "--grid", "lr=0.01,0.3",
                                   "--cv", 2, "--group-size", n, "--model-parallel", n,
                                   "--out", tmp_path / "best.h5", "--quiet"], tmp_path,
                               timeout=120)
    assert code == 0, err
    assert "retrained on all 900 rows" in out
    with open(tmp_path / "best-tune.json") as fh:
        summary = json.load(fh)["summary"]
    ref = _serial_scores(tmp_path / "m.h5", [0.01, 0.3], 2, epochs=2)
    for s in summary:
        mean, std = ref[s["params"]["lr"]]
        assert s["status"] == "ok" and abs(s["mean_score"] - mean) < 1e-8, (s, mean)
