"""Helpers for tests that start their own mpiexec (from a plain pytest process)."""
import os
import re
import shutil
import subprocess
import sys
import time

BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN) or shutil.which("mpiexec")
MPIML = shutil.which("mpiml", path=BIN) or shutil.which("mpiml")
# each rank reports its own exit status on stderr
WRAP = 'r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}; "$@"; c=$?; echo "mpiml-test: rank $r exit $c" >&2'


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPIR_", "MPIML_TEST_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPIEXEC_TIMEOUT="90")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mpirun(n, args, cwd, timeout=90, wrap=False, cmd=None, env=None):
    """Run ``mpiml args`` (or ``cmd``) on n ranks; return (returncode, stdout, stderr, seconds)."""
    argv = cmd or [MPIML] + [os.fsencode(a) if isinstance(a, bytes) else str(a) for a in args]
    if wrap:
        argv = ["sh", "-c", WRAP, "sh"] + argv
    t0 = time.monotonic()
    p = subprocess.run([MPIEXEC, "-n", str(n)] + argv, cwd=cwd, env=env or clean_env(),
                       capture_output=True, timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    return p.returncode, out, err, time.monotonic() - t0


def rank_exits(stderr):
    """The exit status each rank reported through WRAP."""
    return [int(m.group(1)) for m in re.finditer(r"^mpiml-test: rank \d+ exit (\d+)$", stderr,
                                                 re.MULTILINE)]


def make_binary(directory, rows, seed, features=8):
    """``mpiml make-data --task binary`` into ``directory/train.h5``; returns ``directory``."""
    code, _, err, _ = mpirun(1, ["make-data", "--task", "binary", "--rows", rows, "--features",
                                 features, "--seed", seed, "--out", directory / "train.h5"],
                             directory)
    assert code == 0, err
    return directory
