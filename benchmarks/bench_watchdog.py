"""Cost of the collective watchdog and the per-step control words.

    mpiexec -n 2 python benchmarks/bench_watchdog.py

1,000,000 x 100 float32 logistic data, global batch 256: epoch time of fit with
the watchdog on (``comm_timeout=600``) and off (``None``), interleaved over
repetitions in the same run (median of each), and of the bare step loop without
control words (``run_epoch(..., control=None)``) as a floor. Rank 0 reports and
writes JSON (results/bench_watchdog.json).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(__file__))
from bench_sgd import machine  # noqa: E402

from mpiml import SGDClassifier, get_comm, load_hdf5  # noqa: E402
from mpiml._kernels import sgd as _k  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402
from mpiml.parallel.data import group_layout, layout_plan, run_epoch  # noqa: E402


def main():
    path = "/tmp/mpiml-bench-1m.h5"
    c = get_comm()
    if not os.path.exists(path):
        make_data("binary", 1_000_000, 100, path, seed=1, comm=c)
    X, y = load_hdf5(path, comm=c)
    kw = dict(max_iter=3, tol=None, learning_rate="constant", eta0=0.05, random_state=0,
              batch_size=256)
    times = {"watchdog on": [], "watchdog off": [], "no control words": []}
    bare = None
    for rep in range(5):
        for label, timeout in (("watchdog on", 600.0), ("watchdog off", None)):
            c.barrier()
            clf = SGDClassifier(comm_timeout=timeout, **kw).fit(X, y)
            times[label] += clf.epoch_times_[1:]
        # the same steps with no control words at all (the floor)
        if bare is None:
            n = c.allreduce(X.shape[0])
            off = c.exscan(X.shape[0])
            perm, gptr = group_layout(n, 256, off, X.shape[0])
            Xr, yr = np.take(X, perm, axis=0), np.where(y[perm] > 0, 1.0, -1.0)
            bare = _k.Engine(Xr, yr, 1, clf._encode(y[:1])[2], **clf._hyper())
        c.barrier()
        times["no control words"].append(run_epoch(bare, c, layout_plan(gptr, 0, rep)).seconds)
    med = {k: float(np.median([c.allreduce(t, op=MPI.MAX) for t in v])) for k, v in times.items()}
    if c.rank == 0:
        on, off = med["watchdog on"], med["watchdog off"]
        print(f"{c.size} ranks, 1M x 100 float32 logistic, batch 256, median epoch:")
        for k, v in med.items():
            print(f"  {k:18s} {v * 1e3:7.1f} ms")
        print(f"  watchdog overhead: {100 * (on / off - 1):+.1f} % (target < 3 %)")
        print(f"  control words + watchdog vs bare loop: {100 * (on / med['no control words'] - 1):+.1f} %")
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench_watchdog.json"), "w") as fh:
            json.dump({"ranks": c.size, "machine": machine(), "median_epoch_s": med,
                       "watchdog_overhead": on / off - 1}, fh, indent=2)


if __name__ == "__main__":
    main()
