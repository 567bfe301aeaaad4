"""A 12-configuration x 3-fold search: mpiml at group size 1 and 2 against scikit-learn's
GridSearchCV(SGDClassifier, n_jobs=2), same data, same grid, same run.

    mpiexec -n 2 python benchmarks/bench_tune.py [--rows 200000 --features 100 --epochs 3]

Grid: eta0 (lr) 0.001, 0.01, 0.1 x alpha 1e-5, 1e-4 x batch_size 64, 256, constant
learning rate, log loss, ``--epochs`` epochs per fit. mpiml runs ``mpiml.tune.search``
through its Python API on both ranks (data read from the HDF5 file by each group);
scikit-learn runs on rank 0 with joblib's two processes while rank 1 waits idle (the
data read once, in memory). Times include the final refit on all data for both.
Writes ``results/bench_tune.json``.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import h5py  # noqa: E402
from mpi4py import MPI  # noqa: E402

from bench_sgd import idle_wait, machine  # noqa: E402
from mpiml import SGDClassifier, get_comm  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402
from mpiml.tune import GridSearchCV  # noqa: E402

GRID = {"eta0": [0.001, 0.01, 0.1], "alpha": [1e-5, 1e-4], "batch_size": [64, 256]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_tune.json"))
    args = ap.parse_args()
    c = get_comm()
    tmp = c.bcast(tempfile.mkdtemp(prefix="mpiml-tune-") if c.rank == 0 else None)
    path = os.path.join(tmp, "d.h5")
    make_data("binary", args.rows, args.features, path, seed=1, dtype="float32", comm=c)
    est = SGDClassifier(loss="log_loss", learning_rate="constant", max_iter=args.epochs,
                        tol=None, random_state=0)
    out = {"machine": machine(), "ranks": c.size, "rows": args.rows,
           "features": args.features, "epochs": args.epochs, "grid": GRID, "folds": 3}
    for group in sorted({1, c.size}):
        c.mpi.Barrier()
        t0 = MPI.Wtime()
        g = GridSearchCV(est, GRID, cv=3, group_size=group, comm=c).fit(path)
        t = c.mpi.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
        out[f"mpiml_group{group}"] = {"seconds": t, "best": g.best_params_,
                                      "best_score": g.best_score_,
                                      "search_seconds": g.search_["seconds"], "fits": 36 + 1}
    sk = None
    if c.rank == 0:
        from sklearn.linear_model import SGDClassifier as SkSGD
        from sklearn.model_selection import GridSearchCV as SkGrid
        from sklearn.model_selection import KFold

        with h5py.File(path, "r") as f:
            X, y = f["X"][()], f["y"][()]
        t0 = time.perf_counter()
        s = SkGrid(SkSGD(loss="log_loss", learning_rate="constant", max_iter=args.epochs,
                         tol=None, random_state=0),
                   {"eta0": GRID["eta0"], "alpha": GRID["alpha"]},
                   cv=KFold(3, shuffle=True, random_state=0), n_jobs=2).fit(X, y)
        sk = {"seconds": time.perf_counter() - t0, "best": s.best_params_, "fits": 18 + 1,
              "best_score": float(s.best_score_),
              "note": "scikit-learn's SGDClassifier has no batch_size: 6 configurations "
                      "(eta0 x alpha), each fitted once per fold, per-sample updates"}
    idle_wait(c)
    out["sklearn_n_jobs2"] = c.bcast(sk)
    if c.rank == 0:
        base = out["sklearn_n_jobs2"]["seconds"]
        print(f"12 configurations x 3 folds, {args.rows} x {args.features} float32, "
              f"{args.epochs} epochs per fit, {c.size} rank(s), {machine()}")
        for k in [k for k in out if k.startswith("mpiml")] + ["sklearn_n_jobs2"]:
            r = out[k]
            per_fit = r["seconds"] / r["fits"]
            print(f"{k:<18} {r['seconds']:8.2f} s  {r['fits']:3d} fits  {per_fit * 1e3:7.1f} ms/fit  "
                  f"{base / r['seconds']:5.2f}x scikit-learn's time, "
                  f"{base / 19 / per_fit:5.2f}x per fit   best {r['best']} ({r['best_score']:.4f})")
        print("(scikit-learn: 6 configurations, no batch_size; see the JSON's note)")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
