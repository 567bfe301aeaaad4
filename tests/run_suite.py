"""Run the whole test suite: a plain pass, then the MPI tests at 1, 2 and 3 ranks.

    python tests/run_suite.py [--ranks 1,2,3] [extra pytest args]

The plain pass runs the serial tests and the tests that launch their own
``mpiexec`` (bad input, aborts). Each MPI pass runs
``mpiexec -n N python -m mpi4py -m pytest --only-mpi`` (mpi4py turns an uncaught
exception on a rank into an abort) under an outer timeout, so a hang fails the
pass instead of stalling. pytest's exit code 5 ("no tests collected") counts as a
failure: every pass is expected to run tests.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# seconds per pass; the plain pass took 18 min on 2 cores after issue 19 (every launched
# process imports scikit-learn, ~1.1 s; the conformance suite adds ~700 checks)
PASS_TIMEOUT = 1800
NO_TESTS = 5
# ranks > 0 write their pytest report to $MPIML_TEST_LOGDIR/pytest-rank<k>.log
RANK_LOG = ('r=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}; '
            'if [ "$r" -gt 0 ]; then exec "$@" > "$MPIML_TEST_LOGDIR/pytest-rank$r.log" 2>&1; '
            'else exec "$@"; fi')


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPIR_"))}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["MPIEXEC_TIMEOUT"] = str(PASS_TIMEOUT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(name, cmd, env, logdir):
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    for f in os.listdir(logdir):
        if f.startswith("pytest-rank"):
            os.unlink(os.path.join(logdir, f))
    t0 = time.monotonic()
    try:
        code = subprocess.call(cmd, cwd=ROOT, env=dict(env, MPIML_TEST_LOGDIR=logdir),
                               timeout=PASS_TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        print(f"=== {name}: TIMED OUT after {PASS_TIMEOUT + 60} s", flush=True)
        return False
    took = time.monotonic() - t0
    if code == NO_TESTS:
        print(f"=== {name}: no tests were collected: the suite is misconfigured", flush=True)
        return False
    if code != 0:
        for f in sorted(os.listdir(logdir)):
            if f.startswith("pytest-rank"):
                print(f"--- {f} (last lines)")
                with open(os.path.join(logdir, f)) as fh:
                    print("".join(fh.readlines()[-40:]))
    print(f"=== {name}: {'passed' if code == 0 else f'FAILED (exit {code})'} in {took:.0f} s",
          flush=True)
    return code == 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--skip-plain", action="store_true")
    args, extra = ap.parse_known_args()
    env = clean_env()
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("mpiexec not found: install the 'mpich' extra or a system MPI")
    logdir = os.path.join(ROOT, "build", "test-logs")
    os.makedirs(logdir, exist_ok=True)
    # -P: do not put the working directory on sys.path, so the installed mpiml
    # (with its compiled kernels) is tested, not the source tree
    py = [sys.executable, "-P"]
    results = {}
    if not args.skip_plain:
        results["plain"] = run("plain pass", py + ["-m", "pytest", "tests", "-q", "-rfE"] + extra,
                               env, logdir)
    for n in [int(r) for r in args.ranks.split(",") if r]:
        results[f"mpi x{n}"] = run(
            f"MPI pass, {n} rank(s)",
            [mpiexec, "-n", str(n), "sh", "-c", RANK_LOG, "sh"] + py + ["-m", "mpi4py", "-m", "pytest", "tests", "--only-mpi",
                                            "-q", "-rfE", "-p", "no:cacheprovider"] + extra,
            env, logdir)
    print("\n=== summary: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
