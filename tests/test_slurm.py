"""mpiml under a real (single-node) Slurm: aborts under srun, signals from scancel,
and the requeueing batch script.

Opt-in (MPIML_TEST_SLURM=1, as root with Slurm installed): on the test VM, MPI_Init
of the mpich wheel under srun --mpi=pmi2 hangs in a fraction of launches, which
would make CI flaky; see slurm/README.md. Every srun has a timeout."""
import os
import subprocess
import sys
import textwrap
import time
import uuid

import h5py
import numpy as np
import pytest

import slurm_local
from launch import MPIML, clean_env, make_binary, mpirun

pytestmark = pytest.mark.launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("MPIML_TEST_SLURM") != "1":
        pytest.skip("opt-in (MPIML_TEST_SLURM=1): MPI_Init of the mpich wheel under srun "
                    "hangs intermittently on the test VM, see slurm/README.md")
    why = slurm_local.unavailable()
    if why:
        pytest.skip(why)
    s = slurm_local.LocalSlurm()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_binary(tmp_path_factory.mktemp("slurm"), rows=20000, seed=2)


def _env(slurm, **extra):
    env = clean_env(**extra)
    env["SLURM_CONF"] = slurm.conf
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _read(path):
    return path.read_text() if path.exists() else ""


def srun(slurm, n, argv, cwd, env=None, timeout=90, name=None):
    cmd = ["srun", "-n", str(n), "--mpi=pmi2", "--overcommit", "--time=2",
           f"--job-name={name or 'mpiml-test'}"] + [str(a) for a in argv]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=env or _env(slurm), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def test_srun_gives_one_job_of_n_ranks(slurm, tmp_path):
    code, out, err, _ = srun(slurm, 2, [MPIML, "info", "--json"], tmp_path)
    assert code == 0, err
    assert '"ranks": 2' in out


def test_exception_on_one_rank_aborts_under_srun(slurm, data, tmp_path):
    env = _env(slurm, MPIML_TEST_RAISE=1)
    code, out, err, seconds = srun(slurm, 2, [MPIML, "train", "--data", data / "train.h5",
                                              "--model", "logistic", "--out", tmp_path / "m.h5"],
                                   tmp_path, env=env)
    assert code != 0 and seconds < 15, (code, seconds, err)
    assert "rank 1: uncaught exception" in err and "injected failure" in err
    assert not (tmp_path / "m.h5").exists()


def test_python_m_mpiml_aborts_under_srun(slurm, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise ValueError("boom on rank 1")
        MPI.COMM_WORLD.Barrier()
    """))
    code, out, err, seconds = srun(slurm, 2, [sys.executable, "-m", "mpiml", script], tmp_path)
    assert code != 0 and seconds < 15
    assert "rank 1: uncaught exception" in err and "boom on rank 1" in err


def test_scancel_signal_checkpoints_then_resume(slurm, data, tmp_path):
    name = f"mpiml-{uuid.uuid4().hex[:8]}"
    ck = tmp_path / "ck"
    argv = ["srun", "-n", "2", "--mpi=pmi2", "--overcommit", "--time=2", f"--job-name={name}",
            MPIML, "train", "--data", data / "train.h5", "--model", "logistic", "--epochs", 400,
            "--batch-size", 16, "--dtype", "float64", "--quiet", "--out", tmp_path / "m.h5",
            "--checkpoint-dir", ck]
    env = _env(slurm)
    p = subprocess.Popen([str(a) for a in argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    job = ""
    for _ in range(100):
        job = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], env=env,
                             capture_output=True, text=True).stdout.strip()
        out = ""
        if job:
            # wait until training runs (the "mpiml train:" line is printed after loading)
            time.sleep(2.0)
            break
        time.sleep(0.2)
    assert job, "the job did not start"
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 75, (p.returncode, err)
    assert err.count("stopped by a signal") == 1
    ckpts = sorted(os.listdir(ck))
    assert len(ckpts) == 1
    with h5py.File(ck / ckpts[0], "r") as f:
        assert f.attrs["epoch"] < 400
    code, out, err, _ = srun(slurm, 2, [MPIML, "train", "--data", data / "train.h5", "--model",
                                        "logistic", "--epochs", 2 + int(ckpts[0][5:17]) // 1250,
                                        "--batch-size", 16, "--dtype", "float64", "--quiet",
                                        "--out", tmp_path / "m.h5", "--resume", ck], tmp_path)
    assert code == 0, err


def test_batch_script_requeues_and_finishes(slurm, data, tmp_path):
    """slurm/train.sbatch: a signal to one rank -> checkpoint, exit 75, requeue, resume."""
    env = _env(slurm, MPIML_DATA=data / "train.h5", MPIML_EPOCHS=3, MPIML_BATCH=64,
               MPIML_OUT=tmp_path / "m.h5", MPIML_CKPT=tmp_path / "ck",
               MPIML_EXTRA="--dtype float64",
               MPIML_TEST_SIGNAL="1:400:SIGUSR1")
    script = os.path.join(REPO, "slurm", "train.sbatch")
    p = subprocess.run(["sbatch", "--parsable", "-n", "2", "--overcommit", "--time=3",
                        f"--output={tmp_path}/job.out", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env,
                               capture_output=True, text=True).stdout.strip()
        if not state:
            break                       # finished
        if state == "PENDING" and "requeueing" in _read(tmp_path / "job.out"):
            # Slurm holds a requeued job back for a while; let it start now
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env,
                           capture_output=True)
        time.sleep(0.5)
    log = _read(tmp_path / "job.out")
    assert not state, f"job {job} still {state} after 120 s:\n{log}"
    assert "requeueing" in log and "resuming from" in log, log
    assert (tmp_path / "m.h5").exists(), log
    # the same model as an uninterrupted run on 2 ranks
    code, _, err, _ = mpirun(2, ["train", "--data", data / "train.h5", "--model", "logistic",
                                 "--epochs", 3, "--batch-size", 64, "--lr", 0.1, "--dtype",
                                 "float64", "--quiet", "--out", tmp_path / "ref.h5"], tmp_path)
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5", "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert np.array_equal(a["coef"][()], b["coef"][()])
