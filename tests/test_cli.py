"""The command line under a real mpiexec, launched from a plain pytest process.

Bad input must give one clear message (from rank 0), a non-zero exit on every
rank within 10 seconds, and no output file. Each rank is wrapped in a small
shell that reports its own exit status, so "every rank" is checked, not only
mpiexec's aggregate.
"""
import json
import os
import sys
import textwrap

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.launcher

from launch import mpirun  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    code, out, err, _ = mpirun(2, ["make-data", "--task", "binary", "--rows", 3000, "--features",
                                   8, "--seed", 3, "--out", d / "train.h5", "--test-out",
                                   d / "test.h5", "--test-rows", 1000], d)
    assert code == 0, err
    code, out, err, _ = mpirun(1, ["make-data", "--task", "regression", "--rows", 500,
                                   "--features", 4, "--seed", 3, "--out", d / "reg.h5"], d)
    assert code == 0, err
    return d


def test_train_score_predict_at_2_and_3_ranks(data, tmp_path):
    models = {}
    for n in (1, 2, 3):
        out = tmp_path / f"m{n}.h5"
        code, so, se, _ = mpirun(n, ["train", "--data", data / "train.h5", "--model", "logistic",
                                     "--epochs", 3, "--batch-size", 64, "--lr", 0.05,
                                     "--dtype", "float64", "--out", out], tmp_path)
        assert code == 0, se
        assert so.count("trained 3 epoch(s)") == 1          # rank 0 only
        with h5py.File(out, "r") as f:
            models[n] = f["coef"][()]
    np.testing.assert_allclose(models[2], models[1], rtol=1e-8)
    np.testing.assert_allclose(models[3], models[1], rtol=1e-8)

    code, so, se, _ = mpirun(3, ["score", "--model", tmp_path / "m2.h5", "--data",
                                 data / "test.h5", "--json"], tmp_path)
    assert code == 0, se
    lines = [line for line in so.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["n_samples"] == 1000 and result["accuracy"] > 0.9 and result["loss"] > 0

    code, so, se, _ = mpirun(3, ["predict", "--model", tmp_path / "m2.h5", "--data",
                                 data / "test.h5", "--out", tmp_path / "pred.h5", "--proba"],
                             tmp_path)
    assert code == 0, se
    with h5py.File(data / "test.h5", "r") as f:
        X, y = f["X"][()].astype(np.float64), f["y"][()]
    with h5py.File(tmp_path / "pred.h5", "r") as f:
        pred, proba = f["pred"][()], f["proba"][()]
    with h5py.File(tmp_path / "m2.h5", "r") as f:
        coef, b = f["coef"][()], f["intercept"][()]
    # predictions in input row order, computed independently from the stored weights
    np.testing.assert_array_equal(pred, (X @ coef[0] + b[0] > 0).astype(pred.dtype))
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-(X @ coef[0] + b[0]))), rtol=1e-6)
    assert np.mean(pred == y) == pytest.approx(result["accuracy"])


def test_regression_and_text_score(data, tmp_path):
    code, so, se, _ = mpirun(2, ["train", "--data", data / "reg.h5", "--model", "linear",
                                 "--epochs", 20, "--batch-size", "full", "--lr", 0.5,
                                 "--penalty", "none", "--out", tmp_path / "r.h5", "--quiet"],
                             tmp_path)
    assert code == 0, se
    assert "epoch 1:" not in so
    code, so, se, _ = mpirun(2, ["score", "--model", tmp_path / "r.h5", "--data",
                                 data / "reg.h5"], tmp_path)
    assert code == 0, se
    assert so.startswith("r2 0.99")


def test_info():
    code, so, se, _ = mpirun(2, ["info", "--json"], None)
    assert code == 0, se
    info = json.loads(so)
    assert info["ranks"] == 2 and "MPICH" in info["mpi_library"] or "Open MPI" in info["mpi_library"]
    assert info["kernel_dtypes"] == ["float32", "float64"]
    assert "-march=native" not in info["kernel_flags"] or os.environ.get("MPIML_NATIVE")


# ------------------------------------------------------------------ bad input
def _file(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


def _bad_inputs(d):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    nan_late = X.copy()
    nan_late[35, 1] = np.nan               # only in the second rank's shard
    inf_late = X.copy()
    inf_late[39, 0] = -np.inf
    return {
        "missing file": (["--data", d / "nope.h5"], "no such file"),
        "missing dataset": (["--data", _file(d / "ok.h5", X=X, y=y), "--X", "features"],
                            "no dataset 'features'"),
        "missing labels": (["--data", _file(d / "noy.h5", X=X)], "no dataset 'y'"),
        "length mismatch": (["--data", _file(d / "len.h5", X=X, y=y[:-1])], "40 rows but 'y' has 39"),
        "X not 2-D": (["--data", _file(d / "oned.h5", X=X[:, 0], y=y)], "must be 2-D"),
        "NaN on one shard": (["--data", _file(d / "nan.h5", X=nan_late, y=y)], "NaN or infinite"),
        "Inf on one shard": (["--data", _file(d / "inf.h5", X=inf_late, y=y)], "NaN or infinite"),
        "non-integer labels": (["--data", _file(d / "real.h5", X=X, y=X[:, 0])],
                               "Unknown label type: continuous"),
        "single class": (["--data", _file(d / "one.h5", X=X, y=np.zeros(40, int))],
                         "at least 2 classes"),
        "more ranks than rows": (["--data", _file(d / "tiny.h5", X=X[:1], y=y[:1])],
                                 "2 ranks but only 1 rows"),
        "unwritable output": (["--data", d / "ok.h5", "--out", d / "no" / "such" / "dir" / "m.h5"],
                              "does not exist"),
        "output is a directory": (["--data", d / "ok.h5", "--out", d], "is a directory"),
        "bad option value": (["--data", d / "ok.h5", "--lr", "-1"], "eta0 must be > 0"),
    }


CASES = ["missing file", "missing dataset", "missing labels", "length mismatch", "X not 2-D",
         "NaN on one shard", "Inf on one shard", "non-integer labels", "single class",
         "more ranks than rows", "unwritable output", "output is a directory", "bad option value"]


def _assert_clean_failure(code, so, se, seconds, n, expect, outdir, expected_exit=1):
    assert seconds < 10, f"took {seconds:.1f} s"
    exits = [line for line in se.splitlines() if line.startswith("mpiml-test: rank")]
    assert len(exits) == n, se
    assert all(line.endswith(f"exit {expected_exit}") for line in exits), se
    messages = [line for line in se.splitlines() if "error" in line.lower()]
    assert len(messages) == 1, se                # one message, from rank 0
    assert expect in messages[0], se
    assert "Traceback" not in se
    leftovers = [f for f in os.listdir(outdir) if f.startswith(("m.h5", ".m.h5"))]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(tmp_path, case):
    args, expect = _bad_inputs(tmp_path)[case]
    out = ["--out", tmp_path / "m.h5"] if "--out" not in args else []
    code, so, se, seconds = mpirun(2, ["train", "--model", "logistic", "--epochs", 1] + args + out,
                                   tmp_path, wrap=True)
    _assert_clean_failure(code, so, se, seconds, 2, expect, tmp_path)


@pytest.mark.parametrize("args,expect", [
    (["--model", "lasso"], "invalid choice: 'lasso'"),
    (["--model", "logistic", "--bogus-option", "1"], "unrecognized arguments: --bogus-option"),
    (["--model", "logistic", "--batch-size", "0"], "must be a positive integer or 'full'"),
])
def test_bad_command_line_fails_cleanly(tmp_path, args, expect):
    _file(tmp_path / "ok.h5", X=np.ones((10, 2)), y=np.arange(10) % 2)
    code, so, se, seconds = mpirun(2, ["train", "--data", tmp_path / "ok.h5", "--out",
                                       tmp_path / "m.h5"] + args, tmp_path, wrap=True)
    _assert_clean_failure(code, so, se, seconds, 2, expect, tmp_path, expected_exit=2)


def test_mpiexec_exit_code_is_nonzero(tmp_path):
    code, so, se, seconds = mpirun(2, ["score", "--model", tmp_path / "missing.h5", "--data",
                                       tmp_path / "missing.h5"], tmp_path)
    assert code != 0 and seconds < 10
    assert se.count("no such file") == 1


def test_score_rejects_a_non_model_file(data, tmp_path):
    code, so, se, _ = mpirun(2, ["score", "--model", data / "train.h5", "--data",
                                 data / "test.h5"], tmp_path, wrap=True)
    assert "not an mpiml model file" in se and se.count("exit 1") == 2


# ------------------------------------------------------------------ python -m mpiml script.py
def test_python_m_mpiml_aborts_on_exception_in_one_rank(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""
        from mpi4py import MPI
        import numpy as np
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise RuntimeError("boom on rank 1")
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, np.ones(1))   # would wait for ever
    """))
    code, so, se, seconds = mpirun(3, None, tmp_path, timeout=30,
                                   cmd=[sys.executable, "-m", "mpiml", str(script)])
    assert code != 0
    assert seconds < 10
    assert "rank 1: uncaught exception" in se and "boom on rank 1" in se


def test_python_m_mpiml_runs_a_script(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text(textwrap.dedent("""
        import sys
        from mpiml import get_comm
        c = get_comm()
        c.print0("ranks", c.size, "args", sys.argv[1:])
    """))
    code, so, se, _ = mpirun(2, None, tmp_path, cmd=[sys.executable, "-m", "mpiml", str(script),
                                                     "a", "b"])
    assert code == 0, se
    assert so.strip() == "ranks 2 args ['a', 'b']"


# ------------------------------------------------------------------ mpiml doctor
def test_doctor_on_a_good_setup(tmp_path):
    code, so, se, _ = mpirun(1, ["doctor"], tmp_path)
    assert code == 0, so + se
    assert "ok    allreduce       a 2-process Allreduce" in so
    assert "no problems found" in so
    code, so, se, _ = mpirun(2, ["doctor"], tmp_path)
    assert code == 0 and "Allreduce over the 2 ranks of this job: correct" in so


def test_doctor_reports_a_launcher_mismatch_with_a_fix(tmp_path):
    import subprocess
    from launch import MPIML, clean_env
    # a process told by its launcher that the job has 4 ranks, which sees only itself
    p = subprocess.run([MPIML, "doctor"], env=clean_env(OMPI_COMM_WORLD_SIZE=4),
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL  launcher        OMPI_COMM_WORLD_SIZE=4 but this process sees 1 rank(s)" in p.stdout
    assert "fix:" in p.stdout and "1 problem(s) found" in p.stdout
