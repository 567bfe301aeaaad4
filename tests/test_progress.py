"""Progress you can see (issue 19, item 4): every long verb shows progress on rank 0's
stderr before its final line, ``--progress none`` shows none, a bad mode is a usage
error, progress never changes a result, and ``auto`` finds the launcher's terminal.

The verbs run under a real ``mpiexec`` at 2 ranks, launched from this plain pytest
process. Each rank runs in ``sh -c 'exec "$@" 2>&1'``, so rank 0's stderr and stdout are
one pipe and the order of its lines is the order it wrote them: "progress before the
final line" is checked by position, never by time.
"""
import os
import pty
import select
import time

import h5py
import numpy as np
import pytest

from launch import MPIEXEC, MPIML, clean_env, mpirun, rank_exits

pytestmark = pytest.mark.launcher

MERGED = ["sh", "-c", 'exec "$@" 2>&1', "sh"]      # rank 0's stderr into its stdout


def run_merged(args, cwd, n=2):
    """``mpiml args`` on n ranks; (exit code, the lines of rank 0's stdout and stderr in
    the order written, mpiexec's stderr)."""
    code, out, err, _ = mpirun(n, [], cwd, cmd=MERGED + [MPIML] + [str(a) for a in args])
    return code, [line for line in out.splitlines() if line.strip()], err


def progress_lines(lines):
    return [i for i, line in enumerate(lines) if line.startswith("progress: ")]


def assert_before_final(lines, final, verb):
    """At least one ``progress: VERB`` line, all progress lines before the final line, and
    the final line (starting with ``final``) the last one."""
    assert lines and lines[-1].startswith(final), lines
    shown = progress_lines(lines)
    assert any(lines[i].startswith(f"progress: {verb} ") for i in shown), lines
    assert shown and max(shown) < len(lines) - 1, lines


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    code, _, err, _ = mpirun(2, ["make-data", "--task", "binary", "--rows", 1200, "--features",
                                 6, "--seed", 5, "--out", d / "train.h5"], d)
    assert code == 0, err
    code, _, err = run_merged(["train", "--data", d / "train.h5", "--model", "logistic",
                               "--epochs", 2, "--out", d / "model.h5", "--progress", "none"], d)
    assert code == 0, err
    return d


@pytest.mark.timeout(180)
def test_train_lines_come_before_the_final_line_and_change_nothing(work, tmp_path):
    args = ["train", "--data", work / "train.h5", "--model", "logistic", "--epochs", 3,
            "--batch-size", 64, "--dtype", "float64"]
    code, lines, err = run_merged(args + ["--out", tmp_path / "a.h5", "--progress", "lines",
                                          "--progress-interval", 0], tmp_path)
    assert code == 0, err
    assert_before_final(lines, "trained 3 epoch(s)", "train")
    # a line when training starts and at every epoch end, each with the epochs done
    shown = [lines[i] for i in progress_lines(lines)]
    assert shown[0].startswith("progress: train 0.0/3 epochs"), shown
    for k in (1, 2, 3):
        assert any(s.startswith(f"progress: train {k}.0/3 epochs") and "epochs/s" in s
                   for s in shown), shown
    assert "ETA" in "".join(shown) and "done in" in shown[-1], shown
    assert lines[0].startswith("mpiml train:"), lines

    code, quiet, err = run_merged(args + ["--out", tmp_path / "b.h5", "--progress", "none"],
                                  tmp_path)
    assert code == 0, err
    assert not progress_lines(quiet) and "progress:" not in err, quiet
    # the same model, and the same stdout apart from the progress lines and timings
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        np.testing.assert_array_equal(fa["coef"][()], fb["coef"][()])
    plain = [line for line in lines if not line.startswith("progress: ")]
    assert [line.split()[:2] for line in plain] == [line.split()[:2] for line in quiet]


@pytest.mark.timeout(240)
def test_tune_shows_fits_done_of_all_before_its_final_line(work, tmp_path):
    code, lines, err = run_merged(["tune", "--data", work / "train.h5", "--model", "logistic",
                                   "--epochs", 2, "--cv", 2, "--grid", "lr=0.01,0.1",
                                   "alpha=1e-4,1e-3", "--out", tmp_path / "best.h5",
                                   "--progress", "lines", "--progress-interval", 0], tmp_path)
    assert code == 0, err
    assert_before_final(lines, "best ", "tune")
    tune = [lines[i] for i in progress_lines(lines) if lines[i].startswith("progress: tune ")]
    # 4 configurations x 2 folds: from 0 of 8 to 8 of 8, never more
    assert tune[0].startswith("progress: tune 0/8 fits"), tune
    assert tune[-1].startswith("progress: tune 8/8 fits") and "done in" in tune[-1], tune
    done = [int(t.split()[2].split("/")[0]) for t in tune]
    assert done == sorted(done) and max(done) == 8, tune
    # the fits of the search show no train progress of their own (only the refit does,
    # after the search)
    last_tune = max(i for i in progress_lines(lines) if lines[i].startswith("progress: tune "))
    assert not any(lines[i].startswith("progress: train ") for i in progress_lines(lines)
                   if i < last_tune), lines


@pytest.mark.timeout(180)
def test_predict_shows_rows_done_before_its_final_line(work, tmp_path):
    code, lines, err = run_merged(["predict", "--model", work / "model.h5", "--data",
                                   work / "train.h5", "--out", tmp_path / "p.h5",
                                   "--block-rows", 100, "--progress", "lines",
                                   "--progress-interval", 0], tmp_path)
    assert code == 0, err
    assert_before_final(lines, "wrote predictions for 1200 rows", "predict")
    shown = [lines[i] for i in progress_lines(lines)]
    assert shown[0].startswith("progress: predict 0/1200 rows"), shown
    assert any(s.startswith("progress: predict 1200/1200 rows") for s in shown), shown
    # 600 rows per rank in blocks of 100: rank 0 shows its blocks, scaled to all rows
    assert any(s.startswith("progress: predict 200/1200 rows") for s in shown), shown


@pytest.mark.timeout(180)
def test_convert_shows_bytes_done_before_its_final_line(tmp_path):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "x.csv", rng.random((500, 4)), delimiter=",")
    code, lines, err = run_merged(["convert", tmp_path / "x.csv", "--out", tmp_path / "x.h5",
                                   "--progress", "lines"], tmp_path)
    assert code == 0, err
    assert_before_final(lines, "wrote ", "convert")
    assert any(line.startswith("progress: convert ") and " MB" in line for line in lines)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        np.testing.assert_allclose(f["X"][()], np.loadtxt(tmp_path / "x.csv", delimiter=","),
                                   rtol=1e-6)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method, unit, last", [("shap", "rows", "global importance"),
                                                ("permutation", "features", "done in")])
def test_explain_shows_its_count_before_its_output(work, tmp_path, method, unit, last):
    code, lines, err = run_merged(["explain", "--model", work / "model.h5", "--data",
                                   work / "train.h5", "--method", method, "--top", 3,
                                   "--progress", "lines", "--progress-interval", 0], tmp_path)
    assert code == 0, err
    shown = progress_lines(lines)
    assert shown and lines[shown[0]].startswith("progress: explain 0/"), lines
    assert any(f" {unit}" in lines[i] for i in shown), lines
    # every progress line comes before the first line of the results
    first_result = next(i for i, line in enumerate(lines) if not line.startswith("progress: "))
    assert max(shown) < first_result and lines[-1].startswith(("  3.", "done in")), lines
    assert any(line.startswith(last) for line in lines[first_result:]), lines


@pytest.mark.timeout(120)
def test_progress_none_prints_none_and_a_bad_mode_is_a_usage_error(work, tmp_path):
    code, lines, err = run_merged(["predict", "--model", work / "model.h5", "--data",
                                   work / "train.h5", "--out", tmp_path / "p.h5",
                                   "--progress", "none"], tmp_path)
    assert code == 0 and lines[-1].startswith("wrote predictions"), err
    assert not progress_lines(lines) and "progress:" not in err, lines
    for bad in (["--progress", "sometimes"], ["--progress-interval", "-1"]):
        code, out, err, _ = mpirun(2, ["predict", "--model", work / "model.h5", "--data",
                                       work / "train.h5", "--out", tmp_path / "q.h5"] + bad,
                                   tmp_path, wrap=True)
        assert rank_exits(err) == [2, 2], err              # a usage error on every rank
        assert err.count("mpiml predict: error: argument --progress") == 1, err
        assert "Traceback" not in err and not os.path.exists(tmp_path / "q.h5")


def _under_a_terminal(argv, cwd, timeout=120):
    """Run argv with a pseudo-terminal as its stdin/stdout/stderr: what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:                                      # the child: becomes argv
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, clean_env())
        finally:
            os._exit(127)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:                           # the terminal closed: it ended
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")
        time.sleep(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.timeout(180)
def test_auto_shows_a_bar_through_mpiexec_on_a_terminal_and_lines_in_a_pipe(work, tmp_path):
    args = ["predict", "--model", work / "model.h5", "--data", work / "train.h5",
            "--block-rows", 100]
    status, text = _under_a_terminal([MPIEXEC, "-n", "2", MPIML] + [str(a) for a in args]
                                     + ["--out", str(tmp_path / "t.h5")], tmp_path)
    assert status == 0, text
    # rank 0's stderr is a pipe to hydra, but mpiexec's is the terminal: a tqdm bar
    assert "\rpredict:" in text and "1200/1200" in text, text
    assert "progress: predict 0/1200" not in text, text            # no lines as well
    code, lines, err = run_merged(args + ["--out", tmp_path / "u.h5"], tmp_path)
    assert code == 0 and progress_lines(lines), lines          # a pipe: lines
    assert "\r" not in "".join(lines)
