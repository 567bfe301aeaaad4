"""The command line on CSR files (issue 21): make-data's sparse tasks, train, score and
predict at 1, 2 and 3 ranks give the model and the predictions of the dense file with
the same values; the input is unchanged; what CSR rows cannot do fails cleanly.
"""
import hashlib
import json

import h5py
import numpy as np
import pytest
from launch import mpirun
from test_cli import _assert_clean_failure

from mpiml import load_model
from mpiml.sparse_io import read_csr_rows

pytestmark = pytest.mark.timeout(300)

TRAIN = ["--model", "logistic", "--epochs", "5", "--batch-size", "128", "--lr", "2",
         "--seed", "4", "--dtype", "float64"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse-cli")
    code, _, err, _ = mpirun(2, ["make-data", "--task", "sparse-binary", "--rows", 3000,
                                 "--features", 2000, "--seed", 3, "--out", d / "train.h5",
                                 "--test-out", d / "test.h5", "--test-rows", 600], d)
    assert code == 0, err
    # the same values as a dense file
    X = read_csr_rows(str(d / "train.h5"), "X", 0, 3000)
    with h5py.File(d / "train.h5", "r") as f:
        y = f["y"][()]
    with h5py.File(d / "dense.h5", "w") as f:
        f["X"] = X.toarray()
        f["y"] = y
    Xt = read_csr_rows(str(d / "test.h5"), "X", 0, 600)
    with h5py.File(d / "dense-test.h5", "w") as f:
        f["X"] = Xt.toarray()
    return d


def _coef(path):
    m = load_model(str(path))
    return np.append(np.ravel(m.coef_), m.intercept_)


def test_train_score_predict_on_a_csr_file_at_1_2_3_ranks(files):
    before = _digest(files / "train.h5")
    code, _, err, _ = mpirun(1, ["train", "--data", files / "dense.h5", "--out",
                                 files / "dense-model.h5"] + TRAIN, files)
    assert code == 0, err
    ref = _coef(files / "dense-model.h5")
    Xt = read_csr_rows(str(files / "test.h5"), "X", 0, 600)
    dense_model = load_model(str(files / "dense-model.h5"))
    for n in (1, 2, 3):
        model, pred = files / f"m{n}.h5", files / f"p{n}.h5"
        code, out, err, _ = mpirun(n, ["train", "--data", files / "train.h5", "--out", model]
                                   + TRAIN, files)
        assert code == 0, err
        assert "x 2000 (float64)" in out, out
        got = _coef(model)
        assert np.max(np.abs(got - ref)) <= 1e-10 * max(1.0, np.max(np.abs(ref))), n
        code, out, err, _ = mpirun(n, ["score", "--model", model, "--data", files / "test.h5",
                                       "--json"], files)
        assert code == 0, err
        score = json.loads(out.strip().splitlines()[-1])
        assert score["n_samples"] == 600
        assert score["accuracy"] == dense_model.score(Xt.toarray(), _labels(files / "test.h5"))
        assert score["accuracy"] > 0.65
        code, _, err, _ = mpirun(n, ["predict", "--model", model, "--data", files / "test.h5",
                                     "--out", pred, "--block-rows", 100], files)
        assert code == 0, err
        with h5py.File(pred, "r") as f:
            np.testing.assert_array_equal(f["pred"][()], dense_model.predict(Xt.toarray()))
    assert _digest(files / "train.h5") == before


def _labels(path):
    with h5py.File(path, "r") as f:
        return f["y"][()]


def test_validation_rows_of_a_csr_file(files):
    code, out, err, _ = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                   files / "mv.h5", "--val-fraction", "0.2", "--val",
                                   files / "test.h5"] + TRAIN, files)
    # one of the two: both are refused together
    assert code != 0 and "--val" in err
    code, out, err, _ = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                   files / "mv.h5", "--val-fraction", "0.2"] + TRAIN, files)
    assert code == 0, err
    assert "validation: 600 rows held out" in out, out


@pytest.mark.parametrize("args,expect", [
    (["--model", "logistic", "--standardize"], "CSR rows"),
    (["--model", "mlp", "--hidden", "4"], "CSR rows"),
    (["--model", "logistic", "--sync", "ps:1"], "CSR rows"),
])
def test_what_csr_files_cannot_do_fails_cleanly(files, tmp_path, args, expect):
    code, so, se, seconds = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                       tmp_path / "m.h5", "--epochs", "1"] + args, tmp_path,
                                   wrap=True)
    _assert_clean_failure(code, so, se, seconds, 2, expect, tmp_path)


def test_explain_csr_rows_is_the_dense_explanation_kept_sparse(files):
    """Linear SHAP of CSR rows (stored part + per-feature offset) equals the dense SHAP of
    the same rows, at 2 ranks; permutation importance refuses CSR rows cleanly."""
    model = files / "m1.h5"
    if not model.exists():
        code, _, err, _ = mpirun(1, ["train", "--data", files / "train.h5", "--out", model]
                                 + TRAIN, files)
        assert code == 0, err
    code, _, err, _ = mpirun(2, ["explain", "--model", model, "--data", files / "test.h5",
                                 "--out", files / "shap-sparse.h5"], files)
    assert code == 0, err
    code, _, err, _ = mpirun(1, ["explain", "--model", model, "--data", files / "dense-test.h5",
                                 "--out", files / "shap-dense.h5"], files)
    assert code == 0, err
    stored = read_csr_rows(str(files / "shap-sparse.h5"), "shap", 0, 600)
    with h5py.File(files / "shap-sparse.h5", "r") as f:
        phi = stored.toarray() + f["shap_offset"][()]
        base = f["base_value"][()]
    with h5py.File(files / "shap-dense.h5", "r") as f:
        np.testing.assert_allclose(phi, f["shap"][()], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(base, f["base_value"][()], rtol=1e-9)
    code, so, se, _ = mpirun(2, ["explain", "--model", model, "--data", files / "test.h5",
                                 "--method", "permutation"], files)
    assert code != 0 and "not implemented" in se and "Traceback" not in se


def test_an_exact_solve_of_a_csr_file(files):
    """--solver lbfgs on the CSR file at 2 ranks: the dense file's optimum."""
    args = ["--model", "logistic", "--solver", "lbfgs", "--alpha", "1e-3", "--tol", "1e-8",
            "--dtype", "float64"]
    code, _, err, _ = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                 files / "s2.h5"] + args, files)
    assert code == 0, err
    code, _, err, _ = mpirun(1, ["train", "--data", files / "dense.h5", "--out",
                                 files / "s1.h5"] + args, files)
    assert code == 0, err
    a, b = _coef(files / "s2.h5"), _coef(files / "s1.h5")
    assert np.max(np.abs(a - b)) <= 1e-6 * max(1.0, np.max(np.abs(b)))


def test_maxabs_scaling_of_a_csr_file(files):
    """--scale maxabs keeps CSR rows sparse: the model (its scaler included) is the dense
    file's, and the model file carries the scaler to score."""
    args = TRAIN + ["--scale", "maxabs"]
    code, _, err, _ = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                 files / "x2.h5"] + args, files)
    assert code == 0, err
    code, _, err, _ = mpirun(1, ["train", "--data", files / "dense.h5", "--out",
                                 files / "x1.h5"] + args, files)
    assert code == 0, err
    a, b = _coef(files / "x2.h5"), _coef(files / "x1.h5")
    assert np.max(np.abs(a - b)) <= 1e-10 * max(1.0, np.max(np.abs(b)))
    m2, m1 = load_model(str(files / "x2.h5")), load_model(str(files / "x1.h5"))
    np.testing.assert_array_equal(m2.scale_factor_, m1.scale_factor_)
    assert not np.any(m2.scale_offset_)
    code, out, err, _ = mpirun(2, ["score", "--model", files / "x2.h5", "--data",
                                   files / "test.h5", "--json"], files)
    assert code == 0, err
    Xt = read_csr_rows(str(files / "test.h5"), "X", 0, 600)
    assert json.loads(out.strip().splitlines()[-1])["accuracy"] == \
        m1.score(Xt.toarray(), _labels(files / "test.h5"))


def test_a_feature_sharded_fit_of_a_csr_file(files):
    """--model-parallel 2: each rank reads only its columns' entries of the CSR file and
    stores only its columns of W; the model file is the one-rank dense fit's."""
    code, _, err, _ = mpirun(2, ["train", "--data", files / "train.h5", "--out",
                                 files / "f2.h5", "--model-parallel", "2"] + TRAIN, files)
    assert code == 0, err
    ref = files / "dense-model.h5"
    if not ref.exists():
        code, _, err, _ = mpirun(1, ["train", "--data", files / "dense.h5", "--out", ref]
                                 + TRAIN, files)
        assert code == 0, err
    a, b = _coef(files / "f2.h5"), _coef(ref)
    assert np.max(np.abs(a - b)) <= 1e-10 * max(1.0, np.max(np.abs(b)))


def test_tune_on_a_csr_file_scores_as_on_the_dense_file(files):
    """A CV search over rank groups on CSR rows: every fold's score is the dense file's."""
    args = ["--model", "logistic", "--grid", "lr=0.5,2", "--cv", "3", "--epochs", "2",
            "--dtype", "float64", "--seed", "2"]
    scores = []
    for data, out in (("train.h5", "t-sparse.h5"), ("dense.h5", "t-dense.h5")):
        code, _, err, _ = mpirun(2, ["tune", "--data", files / data, "--out", files / out]
                                 + args, files)
        assert code == 0, err
        with open(files / out.replace(".h5", "-tune.json")) as fh:
            records = json.load(fh)["records"]
        scores.append(sorted((r["config"], r["fold"], r["score"]) for r in records))
    assert len(scores[0]) == 6
    for a, b in zip(*scores):
        assert a[:2] == b[:2] and abs(a[2] - b[2]) <= 1e-12, (a, b)
