"""Peak memory and set-up time of a fit: ``fit(X, y)`` (the rows reordered into a copy)
against ``fit(X, y, copy_X=False)`` (reordered in place, how ``mpiml train`` fits), and
``mpiml train`` itself with and without ``--val-fraction``.

    python benchmarks/bench_memory.py [--rows 200000 --features 1000 --ranks 1]

Each case runs in its own process (under ``mpiexec -n RANKS``), so its peak resident
memory is its own: the launcher's ``os.wait4`` gives the largest child's ``ru_maxrss``
(the rank with the most rows). A case reads the rows with ``load_hdf5`` (float32) and
fits one epoch, batch 256 per rank; it reports the time from the start of ``fit`` to its
first step (``setup``: checks, the reordering, the engine) and the fit's wall time.
Ratios are against ``fit(X, y)`` measured in the same run. Writes
``results/bench_memory.json``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CASE = r"""
import json, sys, time
from mpi4py import MPI
from mpiml import SGDClassifier, get_comm, load_hdf5
c = get_comm()
X, y = load_hdf5(sys.argv[1], comm=c)
marks = []
class First:
    def on_epoch_end(self, est, logs):
        marks.append(time.perf_counter())
        return False
est = SGDClassifier(batch_size=256 * c.size, max_iter=1, tol=None, random_state=0, comm=c)
c.mpi.Barrier()
t0 = time.perf_counter()
est.fit(X, y, copy_X=sys.argv[2] == "copy", callbacks=[First()])
wall = time.perf_counter() - t0
setup = marks[0] - t0 - est.epoch_times_[0]
out = c.mpi.allreduce(setup, op=MPI.MAX), c.mpi.allreduce(wall, op=MPI.MAX)
if c.rank == 0:
    print(json.dumps({"setup_s": out[0], "fit_s": out[1]}))
"""


def launch(cmd, env):
    """Run ``cmd``; return (stdout, the largest peak RSS of its process tree in bytes)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read().decode()
        p.stderr.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err[-2000:]}")
    # ru_maxrss of a waited-for child covers its descendants (the ranks), in KiB on Linux
    return text, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--data", default=None, help="default /tmp/mpiml-peers-binary-<rows>x<features>.h5")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "bench_memory.json"))
    args = ap.parse_args()
    from bench_sgd import machine
    from mpiml.datasets import make_data

    data = args.data or f"/tmp/mpiml-peers-binary-{args.rows}x{args.features}.h5"
    if not os.path.exists(data):
        make_data("binary", args.rows, args.features, data, seed=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    run = [mpiexec, "-n", str(args.ranks), sys.executable]
    data_bytes = args.rows * args.features * 4 // args.ranks
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "case.py")
        with open(script, "w") as fh:
            fh.write(CASE)
        for name, mode in (("fit(X, y)", "copy"), ("fit(X, y, copy_X=False)", "inplace")):
            text, rss = launch(run + [script, data, mode], env)
            rows.append({"case": name, "peak_rss_bytes": rss, **json.loads(text.splitlines()[-1])})
        for extra in ([], ["--val-fraction", "0.1"]):
            t0 = time.perf_counter()
            _, rss = launch(run + ["-m", "mpiml", "train", "--data", data, "--model", "logistic",
                                   "--epochs", "1", "--batch-size", str(256 * args.ranks),
                                   "--out", os.path.join(tmp, "m.h5"), "--quiet", *extra], env)
            os.remove(os.path.join(tmp, "m.h5"))
            rows.append({"case": "mpiml train " + " ".join(extra), "peak_rss_bytes": rss,
                         "wall_s": time.perf_counter() - t0})
    base = rows[0]["peak_rss_bytes"]
    print(f"{args.rows} x {args.features} float32 on {args.ranks} rank(s): "
          f"{data_bytes / 2**20:.0f} MiB of rows per rank")
    print(f"{'case':<36}{'peak RSS':>10}{'vs fit(X, y)':>14}{'setup':>9}{'fit':>8}")
    for r in rows:
        print(f"{r['case']:<36}{r['peak_rss_bytes'] / 2**20:>7.0f}MiB"
              f"{r['peak_rss_bytes'] / base:>13.2f}x"
              + (f"{r['setup_s']:>8.2f}s{r['fit_s']:>7.2f}s" if "setup_s" in r else ""))
    result = {"rows": args.rows, "features": args.features, "ranks": args.ranks,
              "data_bytes_per_rank": data_bytes, "cases": rows, "machine": machine(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    stored = []
    if os.path.exists(args.json):
        with open(args.json) as fh:
            stored = json.load(fh)
    stored.append(result)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(stored, fh, indent=1)


if __name__ == "__main__":
    main()
