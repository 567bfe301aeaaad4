"""Data in and predictions out: ``convert`` of a ~1 GB CSV and streaming ``predict``
of 1,000,000 x 100 rows, against pandas + h5py and scikit-learn in the same run.

    mpiexec -n 1 python benchmarks/bench_io.py    # results/bench_io_1rank.json
    mpiexec -n 2 python benchmarks/bench_io.py    # results/bench_io_2rank.json

Baselines run on rank 0 alone (the other ranks wait without polling):
``pandas.read_csv`` of the same file plus an h5py write of X and y; scikit-learn's
``SGDClassifier.predict`` with the same weights on the same rows already in memory
(it does no I/O, mpiml's figure includes reading the HDF5 input and writing the
output file).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import SGDClassifier, get_comm, load_hdf5  # noqa: E402
from mpiml.convert import convert  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402
from mpiml.predict import stream_predict  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import idle_wait, machine  # noqa: E402

CSV = "/tmp/mpiml-bench-1g.csv"


def make_csv(rows=1_100_000, cols=100):
    import pandas as pd
    rng = np.random.default_rng(0)
    with open(CSV + ".tmp", "w") as fh:
        fh.write(",".join([f"f{j}" for j in range(cols)] + ["label"]) + "\n")
        for a in range(0, rows, 100_000):
            X = rng.normal(size=(min(100_000, rows - a), cols)).astype(np.float32)
            df = pd.DataFrame(X)
            df["label"] = (X[:, 0] > 0).astype(int)
            df.to_csv(fh, header=False, index=False, float_format="%.6g")
    os.replace(CSV + ".tmp", CSV)


def main():
    c = get_comm()
    if c.rank == 0 and not os.path.exists(CSV):
        make_csv()
    c.barrier()
    tmp = c.bcast(tempfile.mkdtemp(prefix="bench-io-") if c.rank == 0 else None)
    mb = os.path.getsize(CSV) / 1e6
    c.barrier()
    t0 = MPI.Wtime()
    rows, cols = convert(CSV, os.path.join(tmp, "c.h5"), label_column="label", comm=c)
    t_conv = c.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    out = {"benchmark": "bench_io", "ranks": c.size, "machine": machine(),
           "convert": {"megabytes": mb, "rows": rows, "seconds": t_conv, "mb_per_s": mb / t_conv}}
    if c.rank == 0:
        import pandas as pd
        t0 = time.perf_counter()
        df = pd.read_csv(CSV)
        y = df.pop("label").to_numpy()
        with h5py.File(os.path.join(tmp, "p.h5"), "w") as f:
            f["X"] = df.to_numpy(dtype=np.float32)
            f["y"] = y
        t_pd = time.perf_counter() - t0
        del df
        out["convert"].update(pandas_seconds=t_pd, pandas_mb_per_s=mb / t_pd,
                              ratio_to_pandas=t_pd / t_conv)
    idle_wait(c)
    # streaming prediction of 1M x 100
    path = "/tmp/mpiml-bench-1m.h5"
    if not os.path.exists(path):
        make_data("binary", 1_000_000, 100, path, seed=1, comm=c)
    Xs, ys = load_hdf5(path, comm=c)
    est = SGDClassifier(tol=None, max_iter=1, random_state=0, learning_rate="constant",
                        eta0=0.05).fit(Xs, ys)
    del Xs, ys
    c.barrier()
    t0 = MPI.Wtime()
    n = stream_predict(est, path, os.path.join(tmp, "pred.h5"), comm=c)
    t_pred = c.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    out["predict"] = {"rows": n, "seconds": t_pred, "rows_per_s": n / t_pred}
    if c.rank == 0:
        from sklearn.linear_model import SGDClassifier as SkSGD
        with h5py.File(path, "r") as f:
            X = f["X"][()]
        sk = SkSGD()
        sk.coef_, sk.intercept_ = est.coef_.copy(), est.intercept_.copy()
        sk.classes_ = est.classes_
        t0 = time.perf_counter()
        sk.predict(X)
        t_sk = time.perf_counter() - t0
        out["predict"].update(sklearn_seconds=t_sk, sklearn_rows_per_s=n / t_sk,
                              ratio_to_sklearn=t_sk / t_pred)
        cv, pr = out["convert"], out["predict"]
        print(f"{c.size} rank(s):")
        print(f"  convert {mb:.0f} MB CSV ({rows} x {cols}): {t_conv:.2f} s = {cv['mb_per_s']:.0f} MB/s;"
              f" pandas.read_csv + h5py {cv['pandas_seconds']:.2f} s = "
              f"{cv['pandas_mb_per_s']:.0f} MB/s; ratio {cv['ratio_to_pandas']:.2f}")
        print(f"  predict 1M x 100 (HDF5 in, HDF5 out): {t_pred:.2f} s = {pr['rows_per_s']:.3g} "
              f"rows/s; scikit-learn predict (in memory) {t_sk:.2f} s = "
              f"{pr['sklearn_rows_per_s']:.3g} rows/s; ratio {pr['ratio_to_sklearn']:.2f}")
        res = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        with open(os.path.join(res, f"bench_io_{c.size}rank.json"), "w") as fh:
            json.dump(out, fh, indent=1)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    c.barrier()


if __name__ == "__main__":
    main()
