"""Least-squares regression side by side: mpiml's SGDRegressor against Heat's
``ht.regression.Lasso(lam=0.0)`` (coordinate descent; Heat has no SGD or logistic
model) on the same HDF5 file, in the same MPI job.

    mpiexec -n 1 python benchmarks/bench_heat.py       # then
    mpiexec -n 2 python benchmarks/bench_heat.py
    # options (defaults): --rows 200000 --features 100 --epochs 10 --reps 3 --target 0.01

Heat needs its own environment (it pins an older torch and imports torchvision;
never install it into mpiml's test environment). What worked (x86_64, Python 3.11,
Heat 1.8.0, torch 2.14.1 CUDA build used on the CPU):

    python3 -m venv /work/heatvenv && . /work/heatvenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-deps heat==1.8.0
    pip install mpi4py mpich h5py scipy numpy scikit-learn matplotlib tqdm pandas Cython
    pip install -e /path/to/mpiml --no-deps      # builds mpiml's kernels for this Python

The data (``make-data --task regression --seed 1``: ``y = X coef + intercept + 0.1
N(0, 1)``, X standard normal, float32) are made under /tmp on first use.

Both frameworks read their own rows of the file (mpiml ``load_hdf5``, Heat
``ht.load_hdf5(..., split=0)``; timed, not part of the figures). Heat's Lasso assumes
columns of unit mean square (its coordinate update has no division by the column
norm) and takes the intercept as column 0 of X, so both frameworks get the columns
scaled by the same global root-mean-square vector, and Heat a leading column of
ones (preparation, not timed; the scaling does not change the least-squares optimum).

Accuracy: the training MSE of each fitted model against the least-squares optimum
on the same rows (normal equations in float64 over all ranks);
the target is ``MSE <= (1 + --target) * MSE_opt`` (default 1 %). Time-to-accuracy is
the wall time of one ``fit`` from zero weights with the smallest number of epochs
(mpiml) or coordinate-descent sweeps (Heat, ``max_iter=k, tol=None``) that reaches
the target, found in the first repetition by trying k = 1, 2, ... ``--epochs``; the
other repetitions time that fit again (``--heat-sweeps K`` skips Heat's search: each
sweep costs features+1 passes over X, ~1.5 min at 200,000 x 1000 on one core). No
evaluation is inside the timed region.
mpiml runs twice: minibatch SGD (``--batch`` rows per rank, constant ``--lr``), and
full-batch gradient descent (``batch_size="full"``, ``--gd-lr``), the deterministic
counterpart of Heat's solver. Rank 0 prints medians and ratios against Heat from the
same run; results are appended, per rank count, to ``--json`` (default
benchmarks/results/bench_heat.json).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import SGDRegressor, get_comm, load_hdf5  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import machine  # noqa: E402


def global_mse(world, X, y, coef, intercept, block=20_000):
    """Mean squared error over every rank's rows, in float64 (collective)."""
    s = 0.0
    for lo in range(0, X.shape[0], block):
        r = X[lo:lo + block].astype(np.float64) @ coef + intercept - y[lo:lo + block]
        s += float(r @ r)
    return world.allreduce(s) / world.allreduce(X.shape[0])


def least_squares(world, X, y, block=20_000):
    """The least-squares optimum with intercept: normal equations, float64, all ranks."""
    d = X.shape[1]
    G = np.zeros((d + 1, d + 1))
    b = np.zeros(d + 1)
    for lo in range(0, X.shape[0], block):
        Xb = np.hstack([np.ones((min(block, X.shape[0] - lo), 1)),
                        X[lo:lo + block].astype(np.float64)])
        G += Xb.T @ Xb
        b += Xb.T @ y[lo:lo + block]
    G = world.allreduce(G)
    b = world.allreduce(b)
    theta = np.linalg.solve(G, b)
    return theta[1:], theta[0]


def timed(world, fn):
    world.Barrier()
    t0 = MPI.Wtime()
    out = fn()
    return world.allreduce(MPI.Wtime() - t0, op=MPI.MAX), out


def time_to_target(world, fit, excess_of, target, max_k, reps, known_k=None):
    """Smallest k in 1..max_k whose fit reaches the target (found once; only
    ``known_k`` is tried when given), then ``reps`` timings of that fit. ``fit(k)``
    returns the model; ``excess_of(model)`` its relative excess MSE."""
    tried, k_hit = [], None
    for k in ([known_k] if known_k else range(1, max_k + 1)):
        t, model = timed(world, lambda k=k: fit(k))
        ex = excess_of(model)
        tried.append({"k": k, "seconds": t, "excess": ex})
        if ex <= target:
            k_hit = k
            break
    if k_hit is None:
        return {"k": None, "tried": tried, "seconds_each_rep": [], "excess_each_rep": []}
    times, excess = [tried[-1]["seconds"]], [tried[-1]["excess"]]
    for _ in range(reps - 1):
        t, model = timed(world, lambda: fit(k_hit))
        times.append(t)
        excess.append(excess_of(model))
    return {"k": k_hit, "tried": tried, "seconds_each_rep": times, "excess_each_rep": excess,
            "seconds": float(np.median(times)), "seconds_per_epoch": float(np.median(times)) / k_hit}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=100,
                    help="Heat's sweep costs features+1 passes over X: at 1000 a sweep takes ~1 min")
    ap.add_argument("--epochs", type=int, default=10,
                    help="most epochs (mpiml) / sweeps (Heat) tried to reach the target")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--heat-sweeps", type=int, default=None,
                    help="time Heat only at this many sweeps (skip the search: a sweep costs "
                         "features+1 passes over X)")
    ap.add_argument("--batch", type=int, default=256, help="mpiml minibatch: rows per rank per step")
    ap.add_argument("--lr", type=float, default=0.01, help="mpiml minibatch learning rate")
    ap.add_argument("--gd-lr", type=float, default=1.0, help="mpiml full-batch learning rate")
    ap.add_argument("--target", type=float, default=0.01,
                    help="relative excess of the training MSE over the least-squares optimum")
    ap.add_argument("--data", default=None,
                    help="default /tmp/mpiml-peers-regression-<rows>x<features>.h5")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results", "bench_heat.json"))
    args = ap.parse_args()
    comm = get_comm()
    world = comm.mpi
    data = args.data or f"/tmp/mpiml-peers-regression-{args.rows}x{args.features}.h5"
    if not os.path.exists(data):
        comm.print0(f"writing {data}")
        make_data("regression", args.rows, args.features, data, seed=1, comm=comm)

    with warnings.catch_warnings():     # Heat's import warns about torch.jit and torchvision
        warnings.simplefilter("ignore")
        import heat as ht
        import torch
    torch.set_num_threads(1)

    t_load_m, (X, y) = timed(world, lambda: load_hdf5(data, comm=comm))
    t_load_h, (Xh, yh) = timed(world, lambda: (ht.load_hdf5(data, dataset="X", split=0),
                                               ht.load_hdf5(data, dataset="y", split=0)))
    # the same column scaling for both (see the module doc)
    sq = world.allreduce(np.einsum("ij,ij->j", X, X, dtype=np.float64))
    rms = np.sqrt(sq / world.allreduce(X.shape[0])).astype(np.float32)
    X /= rms
    Xh = Xh / ht.array(rms)
    Xh1 = ht.concatenate([ht.ones((Xh.shape[0], 1), split=0, dtype=ht.float32), Xh], axis=1)
    yh = yh.astype(ht.float32)
    del Xh

    coef_ls, b_ls = least_squares(world, X, y)
    mse_ls = global_mse(world, X, y, coef_ls, b_ls)

    def excess_mpiml(est):
        return global_mse(world, X, y, est.coef_.astype(np.float64), float(est.intercept_[0])) / mse_ls - 1

    def excess_heat(lasso):
        th = lasso.theta.larray.cpu().numpy().astype(np.float64).ravel()
        return global_mse(world, X, y, th[1:], th[0]) / mse_ls - 1

    def heat_fit(k):
        lasso = ht.regression.Lasso(lam=0.0, max_iter=k, tol=None)
        lasso.fit(Xh1, yh)
        return lasso

    def mpiml_fit(k, **kw):
        return SGDRegressor(penalty=None, alpha=0.0, max_iter=k, tol=None, random_state=0,
                            learning_rate="constant", comm=world, comm_timeout=None, **kw).fit(X, y)

    # warm-up of both (not recorded)
    mpiml_fit(1, batch_size=args.batch * comm.size, eta0=args.lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ht.regression.Lasso(lam=0.0, max_iter=1, tol=None).fit(Xh1[:1000], yh[:1000])

    methods = {
        "heat_lasso_cd": heat_fit,
        "mpiml_sgd_minibatch": lambda k: mpiml_fit(k, batch_size=args.batch * comm.size,
                                                   eta0=args.lr),
        "mpiml_gd_full_batch": lambda k: mpiml_fit(k, batch_size="full", eta0=args.gd_lr),
    }
    res = {}
    for name, fit in methods.items():
        excess = excess_heat if name.startswith("heat") else excess_mpiml
        res[name] = time_to_target(world, fit, excess, args.target, args.epochs, args.reps,
                                   args.heat_sweeps if name.startswith("heat") else None)
        if comm.rank == 0:
            r = res[name]
            tried = ", ".join(f"k={t['k']}: {t['seconds']:.3f} s, excess {t['excess']:.3g}"
                              for t in r["tried"])
            print(f"{name}: {tried}; timings {[round(t, 3) for t in r['seconds_each_rep']]}",
                  flush=True)
    n = world.allreduce(X.shape[0])
    base = res["heat_lasso_cd"].get("seconds")
    for r in res.values():
        s = r.get("seconds")
        r["speedup_vs_heat"] = base / s if base and s else None
        r["samples_per_s"] = n / r["seconds_per_epoch"] if s else None
    result = {"ranks": comm.size, "rows": n, "features": X.shape[1], "target": args.target,
              "mse_least_squares": mse_ls, "batch_per_rank": args.batch, "lr": args.lr,
              "gd_lr": args.gd_lr, "reps": args.reps, "data": data,
              "load_seconds": {"mpiml": t_load_m, "heat": t_load_h}, "results": res,
              "heat": ht.__version__, "torch": torch.__version__, "machine": machine(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg()}
    if comm.rank == 0:
        print(f"\nleast squares, {n} x {X.shape[1]} float32, {comm.size} rank(s); target: training "
              f"MSE within {args.target:.0%} of the optimum {mse_ls:.6g}; median of {args.reps}; "
              f"heat {ht.__version__}, torch {torch.__version__}")
        print(f"read (not in the figures): mpiml load_hdf5 {t_load_m:.2f} s, "
              f"ht.load_hdf5 {t_load_h:.2f} s")
        names = {"heat_lasso_cd": "Heat Lasso(lam=0), CD",
                 "mpiml_sgd_minibatch": f"mpiml SGDRegressor, batch {args.batch}/rk",
                 "mpiml_gd_full_batch": "mpiml SGDRegressor, full batch"}
        print(f"{'':32}{'epochs':>7}{'time to target s':>18}{'vs Heat':>9}"
              f"{'s / epoch':>11}{'M samples/s':>13}{'excess MSE':>12}")
        for k, r in res.items():
            if r["k"] is None:
                print(f"{names[k]:32}  target not reached in {args.epochs}")
                continue
            print(f"{names[k]:32}{r['k']:>7}{r['seconds']:>18.3f}{r['speedup_vs_heat']:>9.1f}"
                  f"{r['seconds_per_epoch']:>11.3f}{r['samples_per_s'] / 1e6:>13.3f}"
                  f"{np.median(r['excess_each_rep']):>12.2e}")
        stored = {}
        if os.path.exists(args.json):
            with open(args.json) as fh:
                stored = json.load(fh)
        stored.setdefault(f"{comm.size}_ranks", []).append(result)
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(stored, fh, indent=1)


if __name__ == "__main__":
    main()
