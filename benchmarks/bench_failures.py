"""Time from a rank's death (or stop) to the end of the whole job.

    python benchmarks/bench_failures.py [--reps 5]

Runs real mpiexec jobs (not under mpiexec itself): a rank SIGKILLs itself in the
middle of training (the launcher must end the job), and a rank SIGSTOPs itself
(the watchdog must end the job, --comm-timeout 5). Reports the worst and median
seconds from the signal to the exit of mpiexec, and writes
results/bench_failures.json.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from launch import MPIEXEC, MPIML, clean_env  # noqa: E402


def run(n, sig, data, timeout_flag):
    env = clean_env(MPIML_TEST_SIGNAL=f"{n - 1}:400:{sig}")
    cmd = [MPIEXEC, "-n", str(n), MPIML, "train", "--data", data, "--model", "logistic",
           "--epochs", "50", "--batch-size", "16", "--out", data + ".model.h5", "--quiet",
           "--comm-timeout", str(timeout_flag)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    end = time.time()
    m = re.search(r"sends itself \w+ at ([0-9.]+)", p.stderr)
    if not m:
        raise RuntimeError(f"no injection seen:\n{p.stderr}")
    return end - float(m.group(1)), p.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="mpiml-fail-")
    data = os.path.join(d, "train.h5")
    subprocess.run([MPIML, "make-data", "--task", "binary", "--rows", "20000", "--features", "8",
                    "--out", data], check=True, env=clean_env(), capture_output=True)
    result = {}
    for sig, timeout_flag in (("SIGKILL", 600), ("SIGSTOP", 5)):
        for n in (2, 3):
            times, codes = zip(*[run(n, sig, data, timeout_flag) for _ in range(args.reps)])
            result[f"{sig} {n} ranks"] = {"worst_s": max(times), "median_s": sorted(times)[len(times) // 2],
                                          "exit_codes": sorted(set(codes))}
            print(f"{sig:8s} {n} ranks: signal -> job end: worst {max(times):.2f} s, "
                  f"median {sorted(times)[len(times) // 2]:.2f} s, exit codes {sorted(set(codes))}"
                  + (" (--comm-timeout 5)" if sig == "SIGSTOP" else ""), flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench_failures.json"), "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
