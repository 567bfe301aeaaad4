"""What feature scaling costs: the global statistics (one Allreduce of merged
mean/M2/min/max summaries) against local numpy and scikit-learn passes over the same
rows, and a one-epoch fit with ``scaler="standard"`` against the same fit without.

    mpiexec -n 2 python -m mpi4py benchmarks/bench_scaler.py [--rows 1000000 --features 100]

Every rank generates its rows in memory (float32, feature scales 1e-2 .. 1e4); times are
the slowest rank's, best of ``--repeats``. Writes ``results/bench_scaler.json``.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from bench_sgd import machine  # noqa: E402
from mpiml import SGDClassifier, chunk, get_comm  # noqa: E402
from mpiml.preprocessing import StandardScaler  # noqa: E402


def timed(c, fn, repeats):
    best = np.inf
    for _ in range(repeats):
        c.mpi.Barrier()
        t0 = MPI.Wtime()
        fn()
        best = min(best, c.mpi.allreduce(MPI.Wtime() - t0, op=MPI.MAX))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_scaler.json"))
    args = ap.parse_args()
    c = get_comm()
    lo, hi = chunk(args.rows, c.size, c.rank)
    rng = np.random.default_rng(c.rank)
    d = args.features
    scales = np.logspace(-2, 4, d)
    X = (rng.standard_normal((hi - lo, d)) * scales + 3 * scales).astype(np.float32)
    y = (rng.standard_normal(hi - lo) + (X[:, 0] - 3 * scales[0]) / scales[0] > 0).astype(float)
    from sklearn.preprocessing import StandardScaler as SkStandard
    r = args.repeats
    t = {"mpiml_stats": timed(c, lambda: StandardScaler(comm=c).fit(X), r),
         "numpy_mean_var": timed(c, lambda: (X.mean(axis=0, dtype=np.float64),
                                             X.var(axis=0, dtype=np.float64)), r),
         "sklearn_local_fit": timed(c, lambda: SkStandard().fit(X), r)}

    def fit(scaler):
        return lambda: SGDClassifier(max_iter=1, tol=None, batch_size=256, random_state=0,
                                     learning_rate="constant", eta0=0.01, scaler=scaler,
                                     comm=c).fit(X, y)

    t["fit_plain"] = timed(c, fit(None), r)
    t["fit_standard"] = timed(c, fit("standard"), r)
    out = {"machine": machine(), "ranks": c.size, "rows": args.rows, "features": d,
           "dtype": "float32", "seconds": t,
           "ratios": {"stats_vs_numpy": t["mpiml_stats"] / t["numpy_mean_var"],
                      "stats_vs_sklearn": t["mpiml_stats"] / t["sklearn_local_fit"],
                      "fit_with_vs_without": t["fit_standard"] / t["fit_plain"]}}
    if c.rank == 0:
        print(f"{args.rows} x {d} float32 on {c.size} rank(s), best of {r} (slowest rank):")
        for k, v in t.items():
            print(f"  {k:<20} {v:8.3f} s")
        for k, v in out["ratios"].items():
            print(f"  {k:<20} {v:8.2f}x")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        base, ext = os.path.splitext(args.json)
        with open(f"{base}-{c.size}ranks{ext}", "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
