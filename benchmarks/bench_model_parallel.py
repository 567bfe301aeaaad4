"""Class-sharded softmax: weight memory per rank and step time, model-parallel 1 vs 2.

    mpiexec -n 2 python benchmarks/bench_model_parallel.py [--classes 20000 --features 512]

Both runs use the same 2 ranks, the same data and the same global batch (256):

* ``model_parallel=1``: data parallel; each rank holds the whole ``K x d`` weight
  matrix, computes the gradient of its half of the batch, and the full gradient is
  Allreduced every step (K*d + K doubles);
* ``model_parallel=2``: each rank holds half of the classes; both ranks see the
  whole batch; per step two Allreduces of one number per row (row max, sum of
  exponentials) and no gradient exchange (the data-parallel group has one rank).

OSU style: warm-up fit, Barrier, timed epochs (the median step time of the
repetitions), rank 0 reports; the ratio is against model_parallel=1 in the same
run. Writes JSON (default benchmarks/results/bench_model_parallel.json).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import SGDClassifier, chunk, get_comm  # noqa: E402
from mpiml.comm import get_grid  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import machine  # noqa: E402


def weight_bytes(est):
    """Bytes of the fitted weights this rank holds (float64 parameters)."""
    if hasattr(est, "shard_"):
        return est.shard_.W.nbytes + est.shard_.b.nbytes
    return est.coef_.nbytes + est.intercept_.nbytes


def run(comm, X, y, K, k, batch, steps, reps):
    grid = get_grid(comm, k)
    lo, hi = chunk(X.shape[0], grid.D, grid.data_rank)
    Xl, yl = X[lo:hi], y[lo:hi]
    kw = dict(multi_class="multinomial", learning_rate="constant", eta0=0.01, penalty=None,
              batch_size=batch, tol=None, random_state=0, model_parallel=k, comm_timeout=None)
    SGDClassifier(**kw, max_iter=1).partial_fit(Xl[:batch * 2 // grid.D], yl[:batch * 2 // grid.D],
                                                 classes=np.arange(K))       # warm-up
    per_step = []
    est = None
    for _ in range(reps):
        comm.barrier()
        est = SGDClassifier(**kw, max_iter=1).partial_fit(Xl, yl, classes=np.arange(K))
        t = comm.allreduce(est.epoch_times_[-1], op=MPI.MAX)
        per_step.append(t / steps)
    return {"model_parallel": k, "step_seconds": float(np.median(per_step)),
            "step_seconds_all": per_step,
            "weight_bytes_per_rank": comm.allgather(weight_bytes(est)),
            "maxrss_bytes_per_rank": comm.allgather(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=20000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_model_parallel.json"))
    args = ap.parse_args()
    comm = get_comm()
    K, d = args.classes, args.features
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, K, size=n)
    # the split run first: max RSS only grows, so it is then that run's own peak
    results = [run(comm, X, y, K, k, args.batch, args.steps, args.reps)
               for k in (comm.size, 1)][::-1]
    base = results[0]["step_seconds"]
    for r in results:
        r["ratio_to_model_parallel_1"] = r["step_seconds"] / base
    out = {"benchmark": "bench_model_parallel", "ranks": comm.size, "classes": K,
           "features": d, "batch": args.batch, "steps": args.steps, "dtype": "float32",
           "machine": machine(), "results": results}
    if comm.rank == 0:
        print(f"softmax K={K} d={d}, global batch {args.batch}, {comm.size} ranks, float32 data")
        print(f"{'model_parallel':>15} {'step ms':>9} {'ratio':>7} {'weights MiB/rank':>17} "
              f"{'max RSS MiB/rank':>17}")
        for r in results:
            print(f"{r['model_parallel']:>15} {r['step_seconds'] * 1e3:>9.1f} "
                  f"{r['ratio_to_model_parallel_1']:>7.2f} "
                  f"{max(r['weight_bytes_per_rank']) / 2**20:>17.1f} "
                  f"{max(r['maxrss_bytes_per_rank']) / 2**20:>17.0f}")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
