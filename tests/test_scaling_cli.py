"""`train --standardize / --scale`, `--val-fraction` and `tune --standardize` from the
command line (launched with mpiexec from the plain pytest pass), against references
computed here: scikit-learn's scaler, onnxruntime, the split of
:func:`mpiml.model_selection.validation_mask`, and a serial loop over the folds."""
import json

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from sklearn.preprocessing import StandardScaler as SkStandard

from launch import mpirun, rank_exits
from mpiml import SGDClassifier
from mpiml.model_selection import fold_of, validation_mask
from mpiml.models import load

pytestmark = pytest.mark.launcher


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A binary task whose features have scales from 1e-2 to 1e4 (SGD needs scaling)."""
    d = tmp_path_factory.mktemp("scaling")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 5)) * [1e3, 1e-2, 1.0, 5.0, 1e2] + [1e4, 0.0, 3.0, -2.0, 0.0]
    z = (X - X.mean(0)) / X.std(0)
    y = (z @ [1.0, -2.0, 0.5, 0.0, 1.5] + 0.3 * rng.normal(size=len(X)) > 0).astype(float)
    with h5py.File(d / "raw.h5", "w") as f:
        f["X"], f["y"] = X, y
    return d / "raw.h5", X, y


TRAIN = ["--model", "logistic", "--epochs", 4, "--batch-size", 64, "--dtype", "float64",
         "--quiet"]


def test_standardize_end_to_end(raw, tmp_path):
    path, X, y = raw
    code, out, err, _ = mpirun(2, ["train", "--data", path, "--out", tmp_path / "m.h5",
                                   "--standardize"] + TRAIN, tmp_path)
    assert code == 0, err
    assert "standard scaling of 5 features" in out
    est = load(tmp_path / "m.h5", comm=MPI.COMM_SELF)           # one rank, trained on two
    sk = SkStandard().fit(X)
    np.testing.assert_allclose(est.scale_offset_, sk.mean_, rtol=1e-12)
    np.testing.assert_allclose(est.scale_factor_, sk.scale_, rtol=1e-12)
    assert est.score(X, y) > 0.9
    # unscaled, the same run learns nothing useful: the scaling is what changed
    code, out, err, _ = mpirun(2, ["train", "--data", path, "--out", tmp_path / "u.h5"] + TRAIN,
                               tmp_path)
    assert code == 0, err
    assert load(tmp_path / "u.h5", comm=MPI.COMM_SELF).score(X, y) < 0.8
    # score, predict, explain and export take raw rows
    code, out, err, _ = mpirun(2, ["score", "--model", tmp_path / "m.h5", "--data", path],
                               tmp_path)
    assert code == 0, err
    assert abs(float(out.split("accuracy ")[1].split()[0]) - est.score(X, y)) < 1e-12
    code, _, err, _ = mpirun(3, ["predict", "--model", tmp_path / "m.h5", "--data", path,
                                 "--out", tmp_path / "p.h5", "--proba"], tmp_path)
    assert code == 0, err
    with h5py.File(tmp_path / "p.h5", "r") as f:
        np.testing.assert_array_equal(f["pred"][()], est.predict(X))
        np.testing.assert_allclose(f["proba"][()], est.predict_proba(X), atol=1e-12)
    code, _, err, _ = mpirun(2, ["explain", "--model", tmp_path / "m.h5", "--data", path,
                                 "--out", tmp_path / "shap.h5"], tmp_path)
    assert code == 0, err
    with h5py.File(tmp_path / "shap.h5", "r") as f:
        phi, base = f["shap"][()], f["base_value"][()]
    # additivity on raw rows; each value is coef_j * (z_j - mean z_j) of the scaled model
    np.testing.assert_allclose(phi.sum(axis=1) + base, est.decision_function(X), atol=1e-9)
    z = sk.transform(X)
    np.testing.assert_allclose(phi, (z - z.mean(0)) * est.coef_[0], atol=1e-9)
    ort = pytest.importorskip("onnxruntime")
    code, _, err, _ = mpirun(1, ["export", tmp_path / "m.h5", "--onnx", tmp_path / "m.onnx",
                                 "--dtype", "float64"], tmp_path)
    assert code == 0, err
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"X": X})
    np.testing.assert_array_equal(label, est.predict(X))
    np.testing.assert_allclose(proba, est.predict_proba(X), atol=1e-12)


def _val_records(run_dir):
    with open(run_dir / "metrics.jsonl") as fh:
        recs = [json.loads(line) for line in fh]
    return [r for r in recs if "val_accuracy" in r]


def test_val_fraction_holds_out_the_same_rows_at_any_rank_count(raw, tmp_path):
    path, X, y = raw
    mask = validation_mask(len(X), 0, len(X), 0.25, seed=7)
    finals = []
    for n in (1, 2, 3):
        run = tmp_path / f"run{n}"
        code, out, err, _ = mpirun(n, ["train", "--data", path, "--out", tmp_path / f"m{n}.h5",
                                       "--standardize", "--val-fraction", 0.25, "--seed", 7,
                                       "--batch-size", "full", "--run-dir", run]
                                   + TRAIN[:4] + TRAIN[6:], tmp_path, timeout=120)
        assert code == 0, err
        assert f"validation: {mask.sum()} rows held out" in out
        assert f"training on {len(X) - mask.sum()}" in out
        recs = _val_records(run)
        assert len(recs) == 4 and recs[-1]["val_n_samples"] == mask.sum()
        est = load(tmp_path / f"m{n}.h5", comm=MPI.COMM_SELF)
        # the logged validation metric is the model's on exactly the masked rows ...
        assert abs(recs[-1]["val_accuracy"] - est.score(X[mask], y[mask])) < 1e-12
        # ... and its scaler was fitted on the other rows only
        np.testing.assert_allclose(est.scale_offset_, X[~mask].mean(axis=0), rtol=1e-12)
        finals.append(est.coef_)
    # full-batch steps on the same training rows: the same model at 1, 2 and 3 ranks
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(finals[2], finals[0], rtol=1e-10, atol=1e-12)


def test_val_fraction_trains_on_exactly_the_other_rows_in_their_order(raw, tmp_path):
    """Minibatch steps see the training rows in order, so the model trained behind a
    --val-fraction split (made in place in the rows read) equals a fit on X[~mask]."""
    path, X, y = raw
    mask = validation_mask(len(X), 0, len(X), 0.3, seed=3)
    code, out, err, _ = mpirun(3, ["train", "--data", path, "--out", tmp_path / "m.h5",
                                   "--standardize", "--val-fraction", 0.3, "--seed", 3] + TRAIN,
                               tmp_path, timeout=120)
    assert code == 0, err
    est = load(tmp_path / "m.h5", comm=MPI.COMM_SELF)
    params = dict(est.get_params(), comm=MPI.COMM_SELF, verbose=0)
    ref = SGDClassifier(**params).fit(X[~mask], y[~mask])
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-10, atol=1e-12)
    other = SGDClassifier(**params).fit(X[:len(X) - mask.sum()], y[:len(X) - mask.sum()])
    assert not np.allclose(est.coef_, other.coef_, rtol=1e-6)    # the split matters


@pytest.mark.parametrize("n", [1, 3])
def test_early_stopping_on_the_held_out_rows(raw, tmp_path, n):
    """--early-stopping: stop when the validation loss has not improved by more than --tol
    for --n-iter-no-change epochs (the rule recomputed here from the logged losses)."""
    path, _, _ = raw
    run = tmp_path / "run"
    code, out, err, _ = mpirun(n, ["train", "--data", path, "--out", tmp_path / "m.h5",
                                   "--model", "logistic", "--standardize", "--val-fraction",
                                   0.2, "--early-stopping", "--n-iter-no-change", 2, "--tol",
                                   0.002, "--lr", 1.0, "--epochs", 60, "--batch-size", 64,
                                   "--dtype", "float64", "--quiet", "--run-dir", run], tmp_path,
                               timeout=120)
    assert code == 0, err
    losses = [r["val_loss"] for r in _val_records(run)]
    best, wait, stop = None, 0, None
    for epoch, v in enumerate(losses, 1):
        if best is None or v < best - 0.002:
            best, wait = v, 0
        else:
            wait += 1
            if wait == 2:
                stop = epoch
                break
    assert stop is not None and len(losses) == stop < 60, losses
    assert f"stopped after epoch {stop}: early stopping: val_loss did not improve by more " \
           f"than 0.002" in out, out


def test_tune_fits_the_scaler_on_each_folds_training_rows(raw, tmp_path):
    path, X, y = raw
    lrs, cv = [0.01, 0.3], 3
    code, out, err, _ = mpirun(2, ["tune", "--data", path, "--out", tmp_path / "best.h5",
                                   "--standardize", "--grid", "lr=" + ",".join(map(str, lrs)),
                                   "--cv", cv]
                               + TRAIN, tmp_path, timeout=120)
    assert code == 0, err
    with open(tmp_path / "best-tune.json") as fh:
        summary = json.load(fh)["summary"]
    assert sorted(s["params"]["lr"] for s in summary) == lrs
    folds = fold_of(len(X), 0, len(X), cv, seed=0)
    for s in summary:
        scores = []
        for k in range(cv):
            tr, va = folds != k, folds == k
            sk = SkStandard().fit(X[tr])
            est = SGDClassifier(eta0=s["params"]["lr"], learning_rate="constant", alpha=1e-4,
                                batch_size=64, max_iter=4, tol=None, random_state=0,
                                comm=MPI.COMM_SELF).fit(sk.transform(X[tr]), y[tr])
            scores.append(est.score(sk.transform(X[va]), y[va]))
        assert abs(s["mean_score"] - np.mean(scores)) < 1e-8, (s, scores)
        assert abs(s["std_score"] - np.std(scores)) < 1e-8
    best = load(tmp_path / "best.h5", comm=MPI.COMM_SELF)
    assert best.scaler == "standard" and best.score(X, y) > 0.9


@pytest.mark.parametrize("args,message", [
    (["--standardize", "--scale", "minmax"], "disagree"),
    (["--val-fraction", "1.5"], "between 0 and 1"),
    (["--val-fraction", "0.0001"], "at least one row on each side"),
    (["--val-fraction", "0.2", "--val", "VAL"], "not both"),
    (["--scale", "zscore"], "invalid choice"),
    (["--early-stopping"], "give --val FILE or --val-fraction F")])
def test_bad_scaling_input(raw, tmp_path, args, message):
    path, _, _ = raw
    args = [str(path) if a == "VAL" else a for a in args]
    code, out, err, seconds = mpirun(2, ["train", "--data", path, "--out", tmp_path / "b.h5"]
                                     + TRAIN + args, tmp_path, wrap=True)
    assert seconds < 30 and message in err, err
    assert rank_exits(err) == [2, 2] if message == "invalid choice" else rank_exits(err) == [1, 1]
    if message != "invalid choice":
        assert err.count("mpiml: error:") == 1
    assert not (tmp_path / "b.h5").exists()


def test_tune_refuses_options_it_would_ignore(raw, tmp_path):
    path, _, _ = raw
    code, out, err, seconds = mpirun(2, ["tune", "--data", path, "--out", tmp_path / "b.h5",
                                         "--grid", "lr=0.1,0.2", "--val-fraction", "0.2"]
                                     + TRAIN, tmp_path, wrap=True)
    assert seconds < 30 and err.count("mpiml: error:") == 1 and "--val-fraction" in err, err
    assert rank_exits(err) == [1, 1]


def test_resume_keeps_the_scaler(raw, tmp_path):
    """A resumed run scales as its checkpoint says (even without --standardize) and, at the
    same rank count, ends where an uninterrupted run ends."""
    path, X, y = raw
    base = ["train", "--data", path, "--model", "logistic", "--batch-size", 64, "--dtype",
            "float64", "--quiet"]
    code, _, err, _ = mpirun(2, base + ["--standardize", "--epochs", 4, "--out",
                                        tmp_path / "whole.h5"], tmp_path)
    assert code == 0, err
    code, _, err, _ = mpirun(2, base + ["--standardize", "--epochs", 2, "--checkpoint-dir",
                                        tmp_path / "ck", "--out", tmp_path / "half.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(2, base + ["--epochs", 4, "--resume", tmp_path / "ck", "--out",
                                          tmp_path / "resumed.h5"], tmp_path)
    assert code == 0, err
    whole = load(tmp_path / "whole.h5", comm=MPI.COMM_SELF)
    resumed = load(tmp_path / "resumed.h5", comm=MPI.COMM_SELF)
    assert resumed.scaler == "standard" and resumed.n_iter_ == 4
    np.testing.assert_array_equal(resumed.scale_offset_, whole.scale_offset_)
    np.testing.assert_allclose(resumed.coef_, whole.coef_, rtol=1e-12, atol=1e-14)
