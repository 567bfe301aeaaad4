"""Never hang, never lose work: real mpiexec jobs with failures injected.

Failures are injected with environment hooks read by mpiml (real signals sent by
a rank to itself at a given update, a skipped collective, a kill in the middle of
a checkpoint write); everything else is the real job. Launched from a plain pytest
process.
"""
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import h5py
import numpy as np
import pytest

from launch import MPIEXEC, MPIML, WRAP, clean_env, make_binary, mpirun, rank_exits

pytestmark = pytest.mark.launcher

TRAIN = ["--model", "logistic", "--epochs", 6, "--batch-size", 16, "--lr", 0.05,
         "--dtype", "float64", "--quiet"]
CLI_EXIT_CHECKPOINTED, CLI_EXIT_WATCHDOG = 75, 70


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_binary(tmp_path_factory.mktemp("rel"), rows=2000, seed=4)


@pytest.fixture(scope="module")
def reference(data):
    """Uninterrupted models, per rank count."""
    models = {}

    def get(n):
        if n not in models:
            out = data / f"ref{n}.h5"
            code, _, err, _ = mpirun(n, ["train", "--data", data / "train.h5", "--out", out] + TRAIN,
                                     data)
            assert code == 0, err
            with h5py.File(out, "r") as f:
                models[n] = f["coef"][()], f["intercept"][()]
        return models[n]
    return get


def _model(path):
    with h5py.File(path, "r") as f:
        return f["coef"][()], f["intercept"][()]


def _train(n, data, out, *extra, env=None, wrap=False):
    return mpirun(n, ["train", "--data", data / "train.h5", "--out", out] + TRAIN + list(extra),
                  data, env=env, wrap=wrap)


# ------------------------------------------------------------------ 1. abort on an exception
@pytest.mark.parametrize("n", [2, 3])
def test_exception_on_one_rank_aborts_the_job(data, tmp_path, n):
    code, out, err, seconds = _train(n, data, tmp_path / "m.h5",
                                     env=clean_env(MPIML_TEST_RAISE=n - 1))
    assert code != 0 and seconds < 10, err
    assert err.count("injected failure") >= 1
    assert f"rank {n - 1}: uncaught exception" in err
    assert not (tmp_path / "m.h5").exists()


# ------------------------------------------------------------------ 2. the watchdog
@pytest.mark.parametrize("n", [2, 3])
def test_watchdog_names_the_stopped_rank(data, tmp_path, n):
    env = clean_env(MPIML_TEST_SIGNAL="1:200:SIGSTOP")
    code, out, err, seconds = _train(n, data, tmp_path / "m.h5", "--comm-timeout", 3, env=env)
    assert code == CLI_EXIT_WATCHDOG, err
    assert seconds < 3 + 15, seconds
    assert err.count("mpiml: watchdog:") == 1
    waiting = ", ".join(str(r) for r in range(n) if r != 1)
    assert f"step 200: rank {waiting}\n" in err, err
    assert "not answering (stopped, or hung outside MPI): rank 1\n" in err, err


@pytest.mark.parametrize("n", [2, 3])
def test_skipped_collective_is_caught_and_named(data, tmp_path, n):
    env = clean_env(MPIML_TEST_SKIP_COLLECTIVE=f"{n - 1}:100")
    code, out, err, seconds = _train(n, data, tmp_path / "m.h5", env=env, wrap=True)
    assert rank_exits(err) == [1] * n, err
    assert seconds < 10
    assert err.count("mpiml: error: ranks are out of step") == 1
    assert f"(rank {n - 1} at update 101; the others at update 100)" in err


# ------------------------------------------------------------------ 3, 4. checkpoints, signals
@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_signal_on_one_rank_checkpoints_and_resume_is_bitwise_identical(data, tmp_path, reference,
                                                                      signame):
    ck = tmp_path / "ck"
    env = clean_env(MPIML_TEST_SIGNAL=f"1:300:{signame}")      # only rank 1 gets it
    code, out, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck, env=env,
                               wrap=True)
    assert rank_exits(err) == [CLI_EXIT_CHECKPOINTED] * 2, err
    assert err.count("stopped by a signal") == 1
    assert not (tmp_path / "m.h5").exists()
    # agreed at the next step's Allreduce: every rank stopped after update 301
    assert sorted(os.listdir(ck)) == ["ckpt-000000000301.h5"]
    code, out, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                               "--resume", ck)
    assert code == 0, err
    coef, b = _model(tmp_path / "m.h5")
    ref_coef, ref_b = reference(2)
    assert np.array_equal(coef, ref_coef) and np.array_equal(b, ref_b)


@pytest.mark.parametrize("before,after", [(2, 3), (3, 1)])
def test_resume_on_a_different_rank_count(data, tmp_path, reference, before, after):
    ck = tmp_path / "ck"
    env = clean_env(MPIML_TEST_SIGNAL="0:250:SIGUSR1")
    code, _, err, _ = _train(before, data, tmp_path / "m.h5", "--checkpoint-dir", ck, env=env)
    assert code == CLI_EXIT_CHECKPOINTED, err
    code, out, err, _ = _train(after, data, tmp_path / "m.h5", "--resume", ck)
    assert code == 0, err
    coef, b = _model(tmp_path / "m.h5")
    ref_coef, ref_b = reference(before)
    np.testing.assert_allclose(coef, ref_coef, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, ref_b, rtol=1e-10, atol=1e-12)


def _ranks_of(marker, timeout=60):
    """The pids of the processes whose environment holds ``marker`` and that run Python."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if marker in env and b"python" in cmd:
                pids.append(int(pid))
        if pids:
            return pids
        time.sleep(0.005)
    raise AssertionError("the ranks never started")


def _catches_usr1(pid):
    with open(f"/proc/{pid}/status") as f:
        mask = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", f.read(), re.M).group(1), 16)
    return bool(mask & (1 << (signal.SIGUSR1 - 1)))


def test_stop_signal_during_start_up_is_not_lost(data, tmp_path, reference):
    """Slurm's signal can reach the ranks while they are still importing (9 s after the
    launch, on a loaded node): `mpiml train` holds SIGUSR1 from its first import, so the
    fit stops after its first step (the first place the session looks) with a checkpoint and exit 75, and the resumed job gives the
    uninterrupted model. Without the hold, the rank died of the signal (no checkpoint)."""
    ck = tmp_path / "ck"
    marker = f"MPIML_TEST_MARK={uuid.uuid4().hex}"
    env = clean_env(**dict([marker.split("=")]))
    argv = [MPIEXEC, "-n", "2", "sh", "-c", WRAP, "sh", MPIML, "train", "--data",
            str(data / "train.h5"), "--out", str(tmp_path / "m.h5"), "--checkpoint-dir",
            str(ck)] + [str(a) for a in TRAIN]
    p = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        pending = set()
        end = time.monotonic() + 60
        while len(pending) < 2 and time.monotonic() < end:
            for pid in _ranks_of(marker.encode()):
                with contextlib.suppress(OSError):
                    # the first moment the rank catches SIGUSR1: during its imports
                    if pid not in pending and _catches_usr1(pid):
                        os.kill(pid, signal.SIGUSR1)
                        pending.add(pid)
            time.sleep(0.002)
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert len(pending) == 2, err
    assert rank_exits(err) == [CLI_EXIT_CHECKPOINTED] * 2, err
    assert sorted(os.listdir(ck)) == ["ckpt-000000000001.h5"], err
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--resume", ck)
    assert code == 0, err
    assert all(np.array_equal(a, b) for a, b in zip(_model(tmp_path / "m.h5"), reference(2)))


def test_without_a_checkpoint_location_a_stop_signal_keeps_its_default_action(tmp_path):
    """The hold is only for fits that can save their work: a fit without any checkpoint
    location gives the signals their default actions back, and a signal received while
    held then ends the process as it would have on arrival (not swallowed)."""
    script = textwrap.dedent("""
        import os, signal
        import numpy as np
        from mpiml import SGDClassifier, _stopsignals
        _stopsignals.hold()                     # what `mpiml train` does at its first import
        os.kill(os.getpid(), signal.SIGUSR1)    # arrives during the imports / data load
        assert _stopsignals.held()
        rng = np.random.default_rng(0)
        X = rng.normal(size=(64, 3)); y = (X[:, 0] > 0).astype(int)
        SGDClassifier(max_iter=2, tol=None).fit(X, y)
        print("survived")
        """)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGUSR1, p.stderr
    assert "survived" not in p.stdout


def test_a_finished_command_ignores_a_late_stop_signal(data, tmp_path):
    """Once `mpiml train` has written its model, a stop signal has nothing to stop: it is
    ignored (SIG_IGN, which the interpreter's shutdown keeps, where it resets Python
    handlers to the default action while MPI_Finalize may still wait for another rank).
    A late Slurm signal once killed a rank whose model was saved: the job FAILED."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from mpiml import _stopsignals
        _stopsignals.hold()                     # what `mpiml train` does at its first import
        from mpiml.cli import main
        rc = main({["train", "--data", str(data / "train.h5"), "--out", str(tmp_path / "m.h5")]
                   + [str(a) for a in TRAIN]!r})
        assert rc == 0, rc
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in _stopsignals.STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        print("model kept")
        """)
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "model kept" in p.stdout, p.stderr
    assert _model(tmp_path / "m.h5")


def test_periodic_checkpoints_keep_the_newest(data, tmp_path, reference):
    ck = tmp_path / "ck"
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                             "--checkpoint-every", 100, "--keep-checkpoints", 2)
    assert code == 0, err
    # 750 updates: checkpoints at 100..700 and the final one at 750; the newest 2 kept
    assert sorted(os.listdir(ck)) == ["ckpt-000000000700.h5", "ckpt-000000000750.h5"]
    with h5py.File(ck / "ckpt-000000000750.h5", "r") as f:
        assert f.attrs["format"] == "mpiml-checkpoint" and f.attrs["epoch"] == 6
        np.testing.assert_array_equal(f["w"][:8], reference(2)[0].ravel())


def test_time_based_checkpoints(data, tmp_path):
    ck = tmp_path / "ck"
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                             "--checkpoint-seconds", 0.0001, "--keep-checkpoints", 200)
    assert code == 0, err
    steps = sorted(int(f[5:17]) for f in os.listdir(ck))
    assert len(steps) >= 10          # rank 0's clock triggered many, all ranks wrote together
    # rank 0 looks at its clock every 16 steps of an epoch (125 steps), and a request is
    # for one step only (a request word left standing once made every later step save)
    assert all((t % 125) % 16 == 1 for t in steps[:-1]), steps
    assert steps[-1] == 750


# ------------------------------------------------------------------ 5. killed ranks
@pytest.mark.parametrize("n", [2, 3])
def test_sigkill_mid_run_then_resume(data, tmp_path, reference, n):
    ck = tmp_path / "ck"
    env = clean_env(MPIML_TEST_SIGNAL=f"{n - 1}:350:SIGKILL")
    code, _, err, seconds = _train(n, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                                   "--checkpoint-every", 100, env=env)
    assert code != 0 and seconds < 30, (code, seconds, err)
    newest = sorted(os.listdir(ck))[-1]
    assert newest == "ckpt-000000000300.h5"
    with h5py.File(ck / newest, "r") as f:        # complete and loadable
        assert f.attrs["t"] == 300 and f["w"].shape == (9,)
    code, _, err, _ = _train(n, data, tmp_path / "m.h5", "--resume", ck)
    assert code == 0, err
    coef, b = _model(tmp_path / "m.h5")
    assert np.array_equal(coef, reference(n)[0]) and np.array_equal(b, reference(n)[1])


def test_kill_during_checkpoint_write_keeps_the_previous(data, tmp_path, reference):
    ck = tmp_path / "ck"
    env = clean_env(MPIML_TEST_KILL_IN_CHECKPOINT=200)
    code, _, err, seconds = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                                   "--checkpoint-every", 100, env=env)
    assert code != 0 and seconds < 30
    complete = sorted(f for f in os.listdir(ck) if f.startswith("ckpt-"))
    assert complete == ["ckpt-000000000100.h5"]          # the half-written one is not there
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--resume", ck)
    assert code == 0, err
    assert np.array_equal(_model(tmp_path / "m.h5")[0], reference(2)[0])


# ------------------------------------------------------------------ 6. hostile input
def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            if isinstance(v, tuple):
                f.create_dataset(k, shape=v[0], dtype=v[1], chunks=v[2])
            else:
                f.create_dataset(k, data=v)
    return path


def _hostile(d, data):
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    good = _h5(d / "good.h5", X=X, y=y)
    trunc = d / "truncated.h5"
    trunc.write_bytes(good.read_bytes()[:1200])
    junk = d / "junk.h5"
    junk.write_bytes(np.random.default_rng(1).bytes(5000))
    bad_model = d / "model-future.h5"
    code, _, err, _ = _train(1, data, d / "m.h5")
    assert code == 0, err
    bad_model.write_bytes((d / "m.h5").read_bytes())
    with h5py.File(bad_model, "r+") as f:
        f.attrs["format_version"] = 99
    ck = d / "ck-reg"
    code, _, err, _ = mpirun(1, ["train", "--data", data / "train.h5", "--model", "linear",
                                 "--epochs", 1, "--out", d / "r.h5", "--checkpoint-dir", ck], d)
    assert code == 0, err
    long_path = d / ("x" * 200) / ("y" * 200) / ("z" * 250) / "f.h5"
    non_utf8 = os.path.join(os.fsencode(d), b"caf\xe9.h5")
    train = ["train", "--model", "logistic", "--epochs", 1, "--out", d / "out.h5"]
    return {
        "truncated file": (train + ["--data", trunc], "cannot read"),
        "not HDF5 at all": (train + ["--data", junk], "cannot read"),
        "strings": (train + ["--data", _h5(d / "s.h5", X=np.array([[b"a", b"b"]] * 4), y=y[:4])],
                    "needs real numbers"),
        "complex": (train + ["--data", _h5(d / "c.h5", X=X + 1j, y=y)], "needs real numbers"),
        "3-D": (train + ["--data", _h5(d / "3d.h5", X=X.reshape(40, 3, 1), y=y)], "must be 2-D"),
        "zero rows": (train + ["--data", _h5(d / "z.h5", X=np.zeros((0, 3)), y=y[:0])], "is empty"),
        "zero features": (train + ["--data", _h5(d / "zf.h5", X=np.zeros((40, 0)), y=y)],
                          "is empty"),
        "10^12 rows": (train + ["--data", _h5(d / "huge.h5", X=((10**12, 10), "f4", (1024, 10)),
                                             y=((10**12,), "f8", (1024,)))], "GiB"),
        "model from the future": (["score", "--model", bad_model, "--data", good],
                                  "format version 99"),
        "data file given as model": (["score", "--model", good, "--data", good],
                                     "not an mpiml model"),
        "checkpoint of another model": (train + ["--data", data / "train.h5", "--resume", ck],
                                        "checkpoint of a SGDRegressor"),
        "very long path": (train + ["--data", long_path], "no such file"),
        "non-UTF-8 path": (train + ["--data", non_utf8], "no such file"),
    }


HOSTILE = ["truncated file", "not HDF5 at all", "strings", "complex", "3-D", "zero rows",
           "zero features", "10^12 rows", "model from the future", "data file given as model",
           "checkpoint of another model", "very long path", "non-UTF-8 path"]


@pytest.fixture(scope="module")
def hostile(data, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    return d, _hostile(d, data)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_fails_cleanly(hostile, case):
    d, cases = hostile
    args, expect = cases[case]
    code, out, err, seconds = mpirun(2, args, d, wrap=True)
    assert seconds < 10
    assert rank_exits(err) == [1, 1], err
    messages = [line for line in err.splitlines() if line.startswith("mpiml: error")]
    assert len(messages) == 1 and expect in messages[0], err
    assert "Traceback" not in err
    assert not (d / "out.h5").exists()
