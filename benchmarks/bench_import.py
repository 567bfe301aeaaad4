"""Start-up cost: ``import mpiml`` and ``mpiml --help``, each in a fresh process.

    python benchmarks/bench_import.py [--baseline SRC_TREE] [--reps 21]

Runs each command ``--reps`` times (alternating with the baseline when one is given:
another source tree with its kernels built in place, put first on ``PYTHONPATH``) and
reports the median wall time; writes JSON (``--json``, default
benchmarks/results/bench_import.json).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {"import mpiml": [sys.executable, "-c", "import mpiml"],
            "mpiml --help": [sys.executable, "-c",
                             "import sys; sys.argv = ['mpiml', '--help']; "
                             "from mpiml.cli import main; main()"]}


def timed(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, cwd="/")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=None, help="a source tree to compare with")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_import.json"))
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}
    env.pop("PYTHONPATH", None)
    trees = {"this": env}
    if args.baseline:
        trees["baseline"] = dict(env, PYTHONPATH=os.path.abspath(args.baseline))
    times = {t: {c: [] for c in COMMANDS} for t in trees}
    for name, cmd in COMMANDS.items():
        for tree_env in trees.values():
            timed(cmd, tree_env)                      # warm the page cache
        for _ in range(args.reps):
            for tree, tree_env in trees.items():
                times[tree][name].append(timed(cmd, tree_env))
    result = {t: {c: statistics.median(v) for c, v in cmds.items()} for t, cmds in times.items()}
    for name in COMMANDS:
        line = f"{name:14s} this {result['this'][name] * 1e3:7.1f} ms"
        if args.baseline:
            b = result["baseline"][name]
            line += f"   baseline {b * 1e3:7.1f} ms   ratio {result['this'][name] / b:.3f}"
        print(line)
    with open(args.json, "w") as fh:
        json.dump({"median_seconds": result, "runs": times, "reps": args.reps}, fh, indent=1)


if __name__ == "__main__":
    main()
