"""Synchronisation modes side by side: time to a target accuracy and bytes per epoch.

    mpiexec -n 2 python benchmarks/bench_sync.py [--rows 500000 --features 100]

One make-data task (binary, float32) and one model (logistic, global batch 256,
constant learning rate), trained epoch by epoch (``partial_fit``) in each mode:
``allreduce``, ``allreduce`` with ``overlap``, ``local:4``, ``local:16``, ``fp16`` and
``topk:0.01`` compression, and ``ps:1``. After each epoch the global test accuracy is
measured (not timed); the clock counts only the epochs (the slowest rank's time).
The target is the accuracy synchronous SGD reaches after ``--epochs`` epochs minus
0.1 point. Bytes are what each rank handed to MPI per epoch (the ``stats=``
counters). Rank 0 prints one table and writes JSON (default
benchmarks/results/bench_sync.json).

To see what asynchronous progress does to the overlap row, run it again with
``MPICH_ASYNC_PROGRESS=1`` in the environment (MPICH reads it at MPI_Init).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import SGDClassifier, get_comm, load_hdf5  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import machine  # noqa: E402

MODES = [("allreduce", {}), ("allreduce + overlap", {"overlap": True}),
         ("local:4", {"sync": "local:4"}), ("local:16", {"sync": "local:16"}),
         ("fp16", {"compress": "fp16"}), ("topk:0.01", {"compress": "topk:0.01"}),
         ("ps:1", {"sync": "ps:1"})]


def run_mode(comm, files, mode, epochs, stats_path, lr):
    sync = mode.get("sync", "allreduce")
    X, y = load_hdf5(files[0], comm=comm, sync=sync)
    Xt, yt = load_hdf5(files[1], comm=comm, sync=sync)
    est = SGDClassifier(learning_rate="constant", eta0=lr, batch_size=256, tol=None,
                        random_state=0, comm_timeout=None, stats=stats_path, **mode)
    curve, clock, bytes_per_epoch = [], 0.0, []
    for _ in range(epochs):
        est.partial_fit(X, y, classes=[0, 1])
        clock += comm.allreduce(est.epoch_times_[-1], op=MPI.MAX)
        acc = est.score(Xt, yt)
        rec = None
        if comm.rank == 0:
            with open(stats_path) as fh:
                rec = json.loads(fh.read().strip().splitlines()[-1])
        rec = comm.bcast(rec)
        bytes_per_epoch.append(max(rec["bytes_sent_per_rank"]))
        curve.append((clock, acc))
    return curve, float(np.median(bytes_per_epoch))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.002,
                    help="small enough that accuracy improves over several epochs")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_sync.json"))
    args = ap.parse_args()
    comm = get_comm()
    tmp = comm.bcast(tempfile.mkdtemp(prefix="bench-sync-") if comm.rank == 0 else None)
    files = (os.path.join(tmp, "train.h5"), os.path.join(tmp, "test.h5"))
    make_data("binary", args.rows, args.features, files[0], seed=1, test_out=files[1],
              test_rows=args.rows // 5, comm=comm)
    stats_path = os.path.join(tmp, "stats.jsonl")
    results = {}
    for name, mode in MODES:
        if mode.get("sync", "").startswith("ps") and comm.size < 2:
            continue
        curve, nbytes = run_mode(comm, files, mode, args.epochs, stats_path, args.lr)
        results[name] = {"curve": curve, "bytes_per_epoch_per_rank": nbytes}
    target = results["allreduce"]["curve"][-1][1] - 0.001
    for r in results.values():
        hit = [t for t, acc in r["curve"] if acc >= target]
        r["time_to_target"] = hit[0] if hit else None
        r["final_accuracy"] = r["curve"][-1][1]
    base = results["allreduce"]["time_to_target"]
    out = {"benchmark": "bench_sync", "ranks": comm.size, "rows": args.rows,
           "features": args.features, "epochs": args.epochs, "target_accuracy": target,
           "async_progress": os.environ.get("MPICH_ASYNC_PROGRESS", "0"),
           "machine": machine(), "modes": results}
    if comm.rank == 0:
        print(f"logistic, {args.rows} x {args.features} float32, batch 256, {comm.size} ranks; "
              f"target accuracy {target:.4f} (MPICH_ASYNC_PROGRESS={out['async_progress']})")
        print(f"{'mode':<22}{'time to target':>15}{'vs allreduce':>14}{'final acc':>11}"
              f"{'bytes/epoch/rank':>18}")
        for name, r in results.items():
            t = r["time_to_target"]
            print(f"{name:<22}{(f'{t:.3f} s' if t else 'not reached'):>15}"
                  f"{(f'{t / base:.2f}' if t and base else '-'):>14}{r['final_accuracy']:>11.4f}"
                  f"{r['bytes_per_epoch_per_rank']:>18,.0f}")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
