"""Explanations at scale: Kernel SHAP of an MLP against the shap package, and exact
linear SHAP end to end from HDF5.

    mpiexec -n 1 python benchmarks/bench_explain.py    # results/bench_explain_1rank.json
    mpiexec -n 2 python benchmarks/bench_explain.py    # results/bench_explain_2rank.json

Kernel SHAP: an MLP 20 -> 32 -> 2 (float32), 10,000 rows explained with 100
background rows and 200 coalition samples per row. mpiml explains all rows on all
ranks (rows/s of the slowest rank); ``shap.KernelExplainer`` (same model function,
background and nsamples) explains the first ``--shap-rows`` rows on rank 0 in the same
run (its rows/s; it would take ~minutes for all 10,000). Linear SHAP: a logistic model
on 1,000,000 x 100 float32 rows from HDF5: read, global background mean, SHAP values,
and the (1M x 100) output file written in row order, end to end.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import MLPClassifier, SGDClassifier, get_comm, load_hdf5  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402
from mpiml.explain import global_mean, kernel_shap, linear_shap, model_output  # noqa: E402
from mpiml.io import write_rows  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import machine  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--nsamples", type=int, default=200)
    ap.add_argument("--shap-rows", type=int, default=100)
    args = ap.parse_args()
    c = get_comm()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows + 5000, 20)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
    mlp = MLPClassifier((32,), max_iter=5, tol=None, random_state=0,
                        comm=MPI.COMM_SELF).fit(X[args.rows:], y[args.rows:])
    f = model_output(mlp)
    bg = X[args.rows:args.rows + 100]
    lo, hi = c.chunk(args.rows)
    kernel_shap(f, X[lo:lo + 10], bg, nsamples=args.nsamples, seed=0)      # warm-up
    c.barrier()
    t0 = MPI.Wtime()
    kernel_shap(f, X[lo:hi], bg, nsamples=args.nsamples, seed=0)
    t_mpiml = c.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    out = {"benchmark": "bench_explain", "ranks": c.size, "machine": machine(),
           "kernel": {"rows": args.rows, "background": 100, "nsamples": args.nsamples,
                      "mpiml_seconds": t_mpiml, "mpiml_rows_per_s": args.rows / t_mpiml}}
    if c.rank == 0:
        import shap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = shap.KernelExplainer(f, bg)
            t0 = time.perf_counter()
            ex.shap_values(X[:args.shap_rows], nsamples=args.nsamples, silent=True)
            t_shap = time.perf_counter() - t0
        out["kernel"].update(shap_rows=args.shap_rows, shap_seconds=t_shap,
                             shap_rows_per_s=args.shap_rows / t_shap,
                             ratio_to_shap=(args.rows / t_mpiml) / (args.shap_rows / t_shap))
    # exact linear SHAP, 1M x 100 from HDF5, end to end
    path = "/tmp/mpiml-bench-1m.h5"
    if not os.path.exists(path):
        make_data("binary", 1_000_000, 100, path, seed=1, comm=c)
    Xs, ys = load_hdf5(path, comm=c)
    clf = SGDClassifier(learning_rate="constant", eta0=0.05, tol=None, max_iter=1,
                        random_state=0).fit(Xs, ys)
    del Xs, ys
    tmp = c.bcast(tempfile.mkdtemp(prefix="bench-explain-") if c.rank == 0 else None)
    c.barrier()
    t0 = MPI.Wtime()
    Xs, _ = load_hdf5(path, y=None, comm=c)
    t_read = MPI.Wtime() - t0
    values, base = linear_shap(clf.coef_, clf.intercept_, Xs, global_mean(Xs, c))
    t_shap = MPI.Wtime() - t0 - t_read
    write_rows(os.path.join(tmp, "shap.h5"), {"shap": values}, comm=c,
               extra={"base_value": base})
    t_all = c.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    out["linear"] = {"rows": 1_000_000, "features": 100, "seconds_end_to_end": t_all,
                     "read_seconds": c.allreduce(t_read, op=MPI.MAX),
                     "shap_seconds": c.allreduce(t_shap, op=MPI.MAX),
                     "rows_per_s": 1e6 / t_all}
    if c.rank == 0:
        k = out["kernel"]
        print(f"Kernel SHAP, MLP 20-32-2, {args.rows} rows, 100 background, "
              f"{args.nsamples} coalitions, {c.size} rank(s):")
        print(f"  mpiml {k['mpiml_rows_per_s']:.0f} rows/s ({t_mpiml:.2f} s); shap "
              f"{k['shap_rows_per_s']:.0f} rows/s (on {args.shap_rows} rows); ratio "
              f"{k['ratio_to_shap']:.2f}")
        lin = out["linear"]
        print(f"Linear SHAP 1M x 100 from HDF5 end to end: {lin['seconds_end_to_end']:.2f} s "
              f"(read {lin['read_seconds']:.2f} s, SHAP {lin['shap_seconds']:.2f} s, the rest "
              f"writing the 1M x 100 output)")
        res = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(res, exist_ok=True)
        with open(os.path.join(res, f"bench_explain_{c.size}rank.json"), "w") as fh:
            json.dump(out, fh, indent=1)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
