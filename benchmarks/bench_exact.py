"""Time to the optimum, side by side (issue 20): L2-regularised binary logistic
regression on 1M x 100 float32 rows in memory, fit only, 2 cores for each system.

    . /work/main/.venv/bin/activate
    python benchmarks/bench_exact.py --rows 1000000 --features 100 \\
        --peers-python /tmp/benchpeers-venv/bin/python --out benchmarks/results/bench_exact.json
    # development size: --rows 20000; a subset: --systems sklearn,mpiml-1

The peers live in an environment of their own, never in mpiml's test venv. What was
installed (x86_64, Python 3.11, Debian 12; versions are recorded in the JSON):

    python3 -m venv /tmp/benchpeers-venv
    /tmp/benchpeers-venv/bin/pip install --upgrade pip
    /tmp/benchpeers-venv/bin/pip install numpy scipy scikit-learn scikit-learn-intelex \\
        dask distributed dask-ml pyspark h5py
    apt-get install -y openjdk-17-jre-headless      # Java for Spark (already present here)

mpiml runs from the project venv (the one running this script; ``--mpiml-python``)
under its ``mpiexec`` at 1 and 2 ranks, one BLAS thread per rank; every peer runs under
``--peers-python`` with 2 threads (scikit-learn: a threadpool of 2; scikit-learn-intelex:
``n_jobs=2``; dask-ml: a LocalCluster of 2 worker processes x 1 thread; Spark MLlib:
``local[2]``). The data, made once from a numpy seed and written as .npy files to a
temporary directory, are read by every subprocess before any clock starts. Run it on a
quiet machine: with other work on the 2 cores, 2-thread OpenBLAS in scikit-learn was
seen 20x slower per iteration than 1 thread.

mpiml (``mpiexec -n R python -m mpi4py``, each rank its ``mpiml.chunk`` of the rows):
``LogisticRegression(C, solver="lbfgs")`` and ``solver="newton-cg"``;
``SGDClassifier(loss="log_loss", alpha=1/(C n), solver="hybrid")`` (one SGD epoch, then
L-BFGS; skipped, saying why, where SGDClassifier has no such solver), its first epoch
with the plain SGD's settings; and plain SGD for contrast, ``SGDClassifier(loss=
"log_loss", alpha=1/(C n), learning_rate="constant", eta0=0.1, batch_size=256, tol=None,
random_state=0)`` for E epochs.

The problem. X ~ N(0, 1) float32; labels from a logistic model ``P(y=1) = sigmoid(X w0
+ b0)`` with ``|w0| = --signal`` (the logistic noise is the only noise; with the default
the optimum's held-out accuracy is about 0.975); ``--test-rows`` (default rows / 5)
held-out rows. Objective, scikit-learn's: ``C sum_i log(1 + exp(-s_i (x_i w + b))) +
|w|^2 / 2`` (intercept not penalised), i.e. per row ``mean loss + alpha |w|^2 / 2`` with
``alpha = 1 / (C n)``, which is the objective of mpiml's ``SGDClassifier(alpha=alpha)``
and of Spark's ``regParam=alpha, elasticNetParam=0, standardization=False``. dask-ml's
L-BFGS (``solver_kwargs={"normalize": False}``, so the columns are not rescaled) also
penalises the intercept: its optimum differs a little (at 20,000 rows by 9e-5 relative),
so its error is also reported against the optimum of its own objective.

The reference optimum: scikit-learn lbfgs in float64 (tol 1e-12, max_iter 100000),
then one Newton step in float64 (exact Hessian, 101 x 101), whose size is reported as
the accuracy of the lbfgs point; the polished point is w*.

Measurement, the same black box for every system: fit from scratch with an increasing
iteration cap (``--caps``; epochs for plain SGD, ``--sgd-caps``), the wall time of the
``fit`` call alone (mpiml: Barrier, then the slowest rank); after each fit, the
held-out accuracy and the relative coefficient error ``|theta - theta*| / |theta*|``
(``theta = (w, b)``). A system's cap sequence ends when its error is <= ``--err-target``,
when it stopped before the cap by its own criterion (``n_iter < cap``, or the same
coefficients as the previous cap), or when its fits have used ``--budget`` seconds.
Tolerances are set tiny (``--solver-tol``) so the cap decides. One fit at cap 1 before
the sequence warms each system up (JIT, JVM, cluster) and is not recorded.

scikit-learn lbfgs runs twice: on the float32 rows as given, and on a float64 copy
(made before the clock starts): in float32 its loss is too coarse for scipy's L-BFGS to
get below ~1e-4 error before its line search stops.

Reported per system: the time of the first cap whose held-out accuracy is within
``--acc-tol`` (0.0005 = 0.05 percentage points) of the optimum's, and of the first cap
whose error is <= ``--err-target`` (1e-6), each also as a ratio ``baseline time / this
system's time`` (> 1 means faster; the baseline is scikit-learn lbfgs on the float32 rows
measured in the same run, for the error target its float64 copy when the float32 fit
does not reach it), or "not reached" with the best error seen. All per-cap measurements go to
``--out`` (appended to its list of runs).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from importlib.metadata import version

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CAPS = "1,2,3,4,6,8,10,13,16,20,25,30,40,50,65,80,100,130,160,200"
SGD_CAPS = "1,2,3,4,6,8,10,13,16,20,25,30,40,50"
MPIML_VARIANTS = ("lbfgs", "newton-cg", "hybrid", "sgd")
PEERS = ("sklearn", "sklearn-float64", "sklearnex", "dask-ml", "spark")
NAMES = {"sklearn": "scikit-learn lbfgs", "sklearn-float64": "scikit-learn lbfgs, float64 copy",
         "sklearnex": "scikit-learn-intelex lbfgs",
         "dask-ml": "dask-ml lbfgs (2 workers)", "spark": "Spark MLlib L-BFGS local[2]",
         "lbfgs": "LogisticRegression lbfgs", "newton-cg": "LogisticRegression newton-cg",
         "hybrid": "SGDClassifier hybrid", "sgd": "SGDClassifier sgd (epochs)"}
BLOCK = 100_000


# --------------------------------------------------------------------------- data
def make_data(out, rows, test_rows, d, signal, seed):
    """Write X.npy / y.npy (training) and Xt.npy / yt.npy (held out), float32, made block
    by block from one generator (the same files for the same arguments)."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(d)
    w0 *= signal / np.linalg.norm(w0)
    b0 = 0.5
    for xname, yname, n in (("X", "y", rows), ("Xt", "yt", test_rows)):
        X = np.lib.format.open_memmap(os.path.join(out, xname + ".npy"), "w+", np.float32, (n, d))
        y = np.empty(n, dtype=np.float32)
        for lo in range(0, n, BLOCK):
            hi = min(lo + BLOCK, n)
            X[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
            z = X[lo:hi].astype(np.float64) @ w0 + b0
            y[lo:hi] = rng.random(hi - lo) < 1.0 / (1.0 + np.exp(-z))
        X.flush()
        del X
        np.save(os.path.join(out, yname + ".npy"), y)


def load(data, test=False, lo=0, hi=None):
    """Rows lo:hi of the training (or held-out) set, as in-memory arrays."""
    x, y = ("Xt", "yt") if test else ("X", "y")
    X = np.load(os.path.join(data, x + ".npy"), mmap_mode="r")
    hi = X.shape[0] if hi is None else hi
    return np.array(X[lo:hi]), np.load(os.path.join(data, y + ".npy"))[lo:hi]


def reference_theta(data):
    with open(os.path.join(data, "reference.json")) as fh:
        return np.asarray(json.load(fh)["theta"])


def objective(X, y, theta, C):
    """Per-row scikit-learn objective, float64: mean log loss + |w|^2 / (2 C n)."""
    w, b = theta[:-1], theta[-1]
    s = 0.0
    for lo in range(0, X.shape[0], BLOCK):
        z = X[lo:lo + BLOCK].astype(np.float64) @ w + b
        s += float(np.logaddexp(0.0, np.where(y[lo:lo + BLOCK] > 0.5, -z, z)).sum())
    return s / X.shape[0] + (w @ w) / (2.0 * C * X.shape[0])


# --------------------------------------------------------------------------- cap loop
def run_caps(fit, caps, budget, ref, err_target):
    """Fit at each cap in turn; ``fit(cap)`` -> (seconds, coef, intercept, n_iter), the
    same on every rank under MPI, so every rank stops at the same cap."""
    runs, spent, stop, prev = [], 0.0, "caps exhausted", None
    for cap in caps:
        sec, coef, b, n_iter = fit(cap)
        theta = np.append(np.asarray(coef, dtype=np.float64).ravel(), float(b))
        runs.append({"cap": cap, "seconds": sec, "n_iter": n_iter,
                     "coef": theta[:-1].tolist(), "intercept": theta[-1]})
        spent += sec
        err = np.linalg.norm(theta - ref) / np.linalg.norm(ref)
        if err <= err_target:
            stop = f"error {err:.2e} <= {err_target:g}"
        elif n_iter is not None and n_iter < cap:
            stop = f"stopped by itself after {n_iter} iterations"
        elif prev is not None and np.array_equal(theta, prev):
            stop = "same result as the previous cap"
        elif spent > budget:
            stop = f"budget of {budget:g} s of fits used"
        else:
            prev = theta
            continue
        break
    return {"runs": runs, "stop": stop}


def quiet():
    warnings.simplefilter("ignore")     # ConvergenceWarning at every cap, by design


# --------------------------------------------------------------------------- peers
def peer_sklearn(a, X, y, intelex=False):
    from threadpoolctl import threadpool_limits
    threadpool_limits(a.threads)
    if intelex:
        import logging

        from sklearnex.linear_model import LogisticRegression
        seen = []

        class Seen(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())
        log = logging.getLogger("sklearnex")
        log.setLevel(logging.INFO)
        log.addHandler(Seen())
        log.propagate = False
        extra = {"n_jobs": a.threads}
    else:
        from sklearn.linear_model import LogisticRegression
        extra = {}

    def fit(cap):
        m = LogisticRegression(C=a.C, solver="lbfgs", tol=a.solver_tol, max_iter=cap, **extra)
        t0 = time.perf_counter()
        m.fit(X, y)
        return time.perf_counter() - t0, m.coef_, m.intercept_[0], int(np.max(m.n_iter_))

    def info():
        versions = {"version": version("scikit-learn"), "numpy": version("numpy"),
                    "scipy": version("scipy")}
        if not intelex:
            return versions
        fell_back = any("fallback" in s.lower() for s in seen)
        return {**versions, "version": version("scikit-learn-intelex"),
                "accelerated": not fell_back and bool(seen),
                "log": sorted(set(seen))}
    return fit, info, lambda: None


def peer_dask(a, X, y):
    import dask.array as da
    from dask.distributed import Client, LocalCluster, wait
    from dask_ml.linear_model import LogisticRegression

    cluster = LocalCluster(n_workers=a.threads, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    rows = -(-X.shape[0] // a.threads)      # one block of rows per worker
    Xd = da.from_array(X, chunks=(rows, X.shape[1])).persist()
    yd = da.from_array(y, chunks=rows).persist()
    wait([Xd, yd])

    def fit(cap):
        m = LogisticRegression(C=a.C, solver="lbfgs", tol=a.solver_tol, max_iter=cap,
                               solver_kwargs={"normalize": False})
        t0 = time.perf_counter()
        m.fit(Xd, yd)
        return time.perf_counter() - t0, m.coef_, m.intercept_, None

    def close():
        client.close()
        cluster.close()
    return fit, lambda: {"version": version("dask-ml"), "dask": version("dask")}, close


def peer_spark(a, X, y):
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SkipSystem("no Java runtime (apt-get install -y openjdk-17-jre-headless)")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    cols = [f"f{j}" for j in range(X.shape[1])]
    path = os.path.join(a.data, "train.parquet")
    pq.write_table(pa.table([pa.array(X[:, j]) for j in range(X.shape[1])]
                            + [pa.array(y.astype(np.float64))], names=cols + ["label"]), path)
    spark = (SparkSession.builder.master(f"local[{a.threads}]")
             .config("spark.driver.memory", a.spark_memory)
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", str(a.threads))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = VectorAssembler(inputCols=cols, outputCol="features").transform(
        spark.read.parquet(path)).select("features", "label").repartition(a.threads).cache()
    df.count()
    alpha = 1.0 / (a.C * X.shape[0])

    def fit(cap):
        lr = LogisticRegression(maxIter=cap, regParam=alpha, elasticNetParam=0.0,
                                standardization=False, tol=a.solver_tol, fitIntercept=True,
                                family="binomial")
        t0 = time.perf_counter()
        m = lr.fit(df)
        sec = time.perf_counter() - t0
        return sec, m.coefficients.toArray(), m.intercept, int(m.summary.totalIterations)
    info = {"version": version("pyspark"), "regParam": alpha,
            "java": subprocess.run(["java", "-version"], capture_output=True, text=True,
                                   check=False).stderr.splitlines()[0]}
    return fit, lambda: info, spark.stop


class SkipSystem(Exception):
    pass


def reference(a):
    """scikit-learn lbfgs in float64 to tol 1e-12, then one float64 Newton step."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    threadpool_limits(a.threads)
    X, y = load(a.data)
    X = X.astype(np.float64)
    n, d = X.shape
    t0 = time.perf_counter()
    m = LogisticRegression(C=a.C, solver="lbfgs", tol=1e-12, max_iter=100_000).fit(X, y)
    sec = time.perf_counter() - t0
    theta = np.append(m.coef_.ravel(), m.intercept_[0])
    pen = np.append(np.full(d, 1.0 / (a.C * n)), 0.0)   # the per-row objective's L2 weights

    def grad_hess(theta):
        g, H = np.zeros(d + 1), np.zeros((d + 1, d + 1))
        for lo in range(0, n, BLOCK):
            Xb = np.hstack([X[lo:lo + BLOCK], np.ones((min(BLOCK, n - lo), 1))])
            p = 0.5 * (1.0 + np.tanh(0.5 * (Xb @ theta)))
            g += Xb.T @ (p - y[lo:lo + BLOCK])
            H += (Xb * (p * (1.0 - p))[:, None]).T @ Xb
        return g / n + pen * theta, H / n + np.diag(pen)

    g, H = grad_hess(theta)
    step = np.linalg.solve(H, g)
    polished = theta - step
    g2, _ = grad_hess(polished)
    # the optimum of dask-ml's objective, whose penalty includes the intercept
    X1 = np.hstack([X, np.ones((n, 1))])
    del X
    own = LogisticRegression(C=a.C, solver="lbfgs", tol=1e-12, max_iter=100_000,
                             fit_intercept=False).fit(X1, y)
    X = X1[:, :-1]
    return {"theta": polished.tolist(), "lbfgs_n_iter": int(m.n_iter_[0]), "lbfgs_seconds": sec,
            "theta_intercept_penalised": own.coef_.ravel().tolist(),
            "lbfgs_max_abs_grad": float(np.abs(g).max()),
            "newton_step_rel": float(np.linalg.norm(step) / np.linalg.norm(polished)),
            "polished_max_abs_grad": float(np.abs(g2).max()),
            "objective": objective(X, y, polished, a.C),
            "objective_lbfgs": objective(X, y, theta, a.C)}


def peer_worker(a):
    if a.worker == "reference":
        return reference(a)
    X, y = load(a.data)
    ref = reference_theta(a.data)
    make = {"sklearn": peer_sklearn, "sklearnex": lambda a, X, y: peer_sklearn(a, X, y, True),
            "sklearn-float64": lambda a, X, y: peer_sklearn(a, X.astype(np.float64), y),
            "dask-ml": peer_dask, "spark": peer_spark}[a.worker]
    try:
        fit, info, close = make(a, X, y)
    except (SkipSystem, ImportError) as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    try:
        fit(1)                                          # warm-up, not recorded
        out = run_caps(fit, parse_caps(a.caps), a.budget, ref, a.err_target)
        out.update(info())
    finally:
        close()
    return out


# --------------------------------------------------------------------------- mpiml
def mpiml_worker(a):
    """Under mpiexec: every rank reads its own rows (mpiml.chunk), fits collectively."""
    from mpi4py import MPI

    import mpiml
    from mpiml import LogisticRegression, SGDClassifier
    world = MPI.COMM_WORLD
    n = np.load(os.path.join(a.data, "y.npy"), mmap_mode="r").shape[0]
    lo, hi = mpiml.chunk(n, world.size, world.rank)
    X, y = load(a.data, lo=lo, hi=hi)
    ref = reference_theta(a.data)
    variant = a.worker.split(":", 1)[1]
    alpha = 1.0 / (a.C * n)
    sgd = {"loss": "log_loss", "alpha": alpha, "learning_rate": "constant", "eta0": 0.1,
           "batch_size": 256, "random_state": 0, "comm_timeout": None, "comm": world}

    def model(cap):
        if variant == "sgd":
            return SGDClassifier(max_iter=cap, tol=None, **sgd)
        if variant == "hybrid":
            return SGDClassifier(solver="hybrid", max_iter=cap, tol=a.solver_tol, **sgd)
        return LogisticRegression(C=a.C, solver=variant, tol=a.solver_tol, max_iter=cap,
                                  comm=world)

    if variant == "hybrid":
        # include it only where SGDClassifier has an exact-solver "hybrid" mode
        why = None
        if "solver" not in SGDClassifier().get_params():
            why = "SGDClassifier has no solver parameter"
        else:
            try:
                rng = np.random.default_rng(world.rank)
                Xs = rng.standard_normal((64, 3)).astype(np.float32)
                model(2).fit(Xs, (Xs[:, 0] > 0).astype(np.float32))
            except Exception as exc:    # noqa: BLE001 - any failure means "not available"
                why = f"{type(exc).__name__}: {exc}"
        if world.allreduce(why is not None, op=MPI.LOR):
            return {"skipped": why or "unavailable on another rank"}

    def fit(cap):
        m = model(cap)
        # SGD epochs put the rows in batch order: as `mpiml train` does, the fit takes a
        # copy it may reorder in place (copy_X=False), made here before the clock starts
        # (a 400 MB copy inside each fit made the times erratic on this VM: the kernel
        # compacts memory for numpy's huge-page requests); the solvers read X as it is
        Xf = X.copy() if variant in ("sgd", "hybrid") else X
        world.Barrier()
        t0 = MPI.Wtime()
        if Xf is X:
            m.fit(X, y)
        else:
            m.fit(Xf, y, copy_X=False)
        sec = world.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
        n_iter = None if variant == "sgd" else int(m.n_iter_)
        return sec, m.coef_, m.intercept_[0], n_iter

    fit(1)                                              # warm-up, not recorded
    caps = parse_caps(a.sgd_caps if variant == "sgd" else a.caps)
    out = run_caps(fit, caps, a.budget, ref, 0.0 if variant == "sgd" else a.err_target)
    out.update({"version": mpiml.__version__, "ranks": world.size, "alpha": alpha,
                "mpi": MPI.Get_library_version().splitlines()[0]})
    return out if world.rank == 0 else None


# --------------------------------------------------------------------------- orchestration
def parse_caps(s):
    return [int(c) for c in s.split(",")]


def launch(cmd, env, result, timeout):
    """Run one worker; its JSON result, or the reason it gave none."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout} s"}
    if p.returncode != 0 or not os.path.exists(result):
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-8:])
        return {"failed": f"exit {p.returncode}: {tail}"}
    with open(result) as fh:
        out = json.load(fh)
    out["process_seconds"] = time.perf_counter() - t0
    return out


def accuracy(Xt, yt, theta):
    """Held-out accuracy of the margins x w + b, in float64."""
    return float(np.mean(((Xt @ theta[:-1] + theta[-1]) > 0) == (yt > 0.5)))


def evaluate(res, Xt, yt, X, y, ref, C, acc_opt, f_opt, own=None):
    """Held-out accuracy, coefficient error and objective gap of every cap (and the
    error against ``own``, the optimum of the system's own objective, where it differs)."""
    for r in res["runs"]:
        theta = np.append(r["coef"], r["intercept"])
        r["accuracy"] = accuracy(Xt, yt, theta)
        r["rel_coef_error"] = float(np.linalg.norm(theta - ref) / np.linalg.norm(ref))
        if own is not None:
            r["rel_coef_error_own_optimum"] = float(np.linalg.norm(theta - own)
                                                    / np.linalg.norm(own))
        r["objective_gap"] = float((objective(X, y, theta, C) - f_opt) / f_opt)


def first(runs, ok):
    return next((r for r in runs if ok(r)), None)


def summarise(res, acc_target, err_target):
    runs = res["runs"]
    hit_acc = first(runs, lambda r: r["accuracy"] >= acc_target)
    hit_err = first(runs, lambda r: r["rel_coef_error"] <= err_target)
    return {"time_to_accuracy": hit_acc and hit_acc["seconds"],
            "cap_to_accuracy": hit_acc and hit_acc["cap"],
            "time_to_error": hit_err and hit_err["seconds"],
            "cap_to_error": hit_err and hit_err["cap"],
            "best_error": min(r["rel_coef_error"] for r in runs),
            "last_accuracy": runs[-1]["accuracy"],
            "seconds_per_cap": float(np.median([r["seconds"] / r["cap"] for r in runs])),
            "best_error_own_optimum": min((r["rel_coef_error_own_optimum"] for r in runs
                                           if "rel_coef_error_own_optimum" in r), default=None)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--test-rows", type=int, default=None, help="default rows / 5")
    ap.add_argument("--signal", type=float, default=22.0, help="|w0| of the labelling model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--caps", default=CAPS, help="iteration caps tried, in order")
    ap.add_argument("--sgd-caps", default=SGD_CAPS, help="epoch caps of plain SGD")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds of fits per system after which its caps stop")
    ap.add_argument("--solver-tol", type=float, default=1e-12)
    ap.add_argument("--acc-tol", type=float, default=0.0005)
    ap.add_argument("--err-target", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2, help="threads of each peer")
    ap.add_argument("--ranks", default="1,2", help="mpiml rank counts")
    ap.add_argument("--systems", default=None,
                    help="comma list out of " + ",".join(PEERS) + ",mpiml-1,mpiml-2 (default all)")
    ap.add_argument("--peers-python", default="/tmp/benchpeers-venv/bin/python")
    ap.add_argument("--mpiml-python", default=sys.executable)
    ap.add_argument("--spark-memory", default="10g")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    ap.add_argument("--data", default=None, help="directory of existing .npy data (kept)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_exact.json"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        quiet()
        out = mpiml_worker(a) if a.worker.startswith("mpiml:") else peer_worker(a)
        if out is not None:
            with open(a.result, "w") as fh:
                json.dump(out, fh)
        return

    ranks = parse_caps(a.ranks)
    systems = a.systems.split(",") if a.systems else list(PEERS) + [f"mpiml-{r}" for r in ranks]
    for s in ("sklearn-float64", "sklearn"):    # the baselines of the ratios
        if s not in systems:
            systems.insert(0, s)
    keep = a.data is not None
    tmp = a.data or tempfile.mkdtemp(prefix="bench_exact-")
    test_rows = a.test_rows or max(a.rows // 5, 1)
    os.makedirs(tmp, exist_ok=True)
    if not os.path.exists(os.path.join(tmp, "X.npy")):
        print(f"writing {a.rows} + {test_rows} rows x {a.features} float32 to {tmp}", flush=True)
        make_data(tmp, a.rows, test_rows, a.features, a.signal, a.seed)
    a.data = tmp

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}
    peer_env = {**base_env, **{v: str(a.threads) for v in
                               ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    mpi_env = {**base_env, **{v: "1" for v in
                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    mpiexec = os.path.join(os.path.dirname(a.mpiml_python), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    common = ["--data", tmp, "--C", str(a.C), "--caps", a.caps, "--sgd-caps", a.sgd_caps,
              "--budget", str(a.budget), "--solver-tol", str(a.solver_tol),
              "--err-target", str(a.err_target), "--threads", str(a.threads),
              "--spark-memory", a.spark_memory]

    def worker(name, prefix, env):
        result = os.path.join(tmp, f"result-{name.replace(':', '-')}.json")
        if os.path.exists(result):
            os.remove(result)
        cmd = prefix + [os.path.abspath(__file__), "--worker", name, "--result", result] + common
        return launch(cmd, env, result, a.timeout)

    print("reference: scikit-learn lbfgs, float64, tol 1e-12, then one Newton step", flush=True)
    refinfo = worker("reference", [a.peers_python], peer_env)
    if "failed" in refinfo:
        sys.exit(f"the reference failed: {refinfo['failed']}")
    with open(os.path.join(tmp, "reference.json"), "w") as fh:
        json.dump(refinfo, fh)
    ref = np.asarray(refinfo["theta"])

    results = {}
    for s in systems:
        if s.startswith("mpiml-"):
            r = s.split("-", 1)[1]
            for v in MPIML_VARIANTS:
                key = f"mpiml {v}, {r} rank{'s' if r != '1' else ''}"
                print(f"running {key}", flush=True)
                results[key] = worker(f"mpiml:{v}", [mpiexec, "-n", r, a.mpiml_python, "-m",
                                                    "mpi4py"], mpi_env)
        else:
            print(f"running {NAMES[s]}", flush=True)
            results[NAMES[s]] = worker(s, [a.peers_python], peer_env)

    X, y = load(tmp)
    Xt, yt = load(tmp, test=True)
    acc_opt = accuracy(Xt, yt, ref)
    acc_target = acc_opt - a.acc_tol
    own = {NAMES["dask-ml"]: np.asarray(refinfo["theta_intercept_penalised"])}
    for name, res in results.items():
        if "runs" in res:
            evaluate(res, Xt, yt, X, y, ref, a.C, acc_opt, refinfo["objective"], own.get(name))
            res["summary"] = summarise(res, acc_target, a.err_target)

    # scikit-learn lbfgs on the float32 rows is the baseline; where it cannot reach the
    # error target (its float32 loss stops the line search first), the float64 copy is
    base = dict(results[NAMES["sklearn"]].get("summary", {}))
    base_err = "scikit-learn lbfgs"
    if base.get("time_to_error") is None:
        base["time_to_error"] = results[NAMES["sklearn-float64"]].get(
            "summary", {}).get("time_to_error")
        base_err = "scikit-learn lbfgs on a float64 copy (float32 did not reach it)"
    n = a.rows
    print(f"\nlogistic regression, {n} x {a.features} float32 (+ {test_rows} held out), "
          f"C = {a.C:g}, alpha = 1/(C n) = {1 / (a.C * n):.3g}, {a.threads} cores each")
    print(f"optimum: objective {refinfo['objective']:.10g} per row, held-out accuracy "
          f"{acc_opt:.4f} (scikit-learn lbfgs float64 {refinfo['lbfgs_n_iter']} iterations, "
          f"Newton polish step {refinfo['newton_step_rel']:.1e} relative, max |grad| after "
          f"{refinfo['polished_max_abs_grad']:.1e})")
    print(f"targets: held-out accuracy >= {acc_target:.4f}; |theta - theta*| / |theta*| <= "
          f"{a.err_target:g}.  x = baseline time / this time (same run); baseline: "
          f"scikit-learn lbfgs, for the error {base_err}")
    head = (f"{'system':38}{'s/iter':>8}{'to accuracy':>13}{'x':>7}{'to 1e-6 err':>13}"
            f"{'x':>7}{'best err':>10}{'last acc':>10}  stop")
    print(head)

    def ratio(b, t):
        return f"{b / t:.2f}" if b and t else "-"

    def at(t, cap):
        return "-" if t is None else f"{t:.3f} ({cap})"

    for name, res in results.items():
        if "runs" not in res:
            print(f"{name:38}  {'skipped' if 'skipped' in res else 'FAILED'}: "
                  f"{res.get('skipped') or res.get('failed')}")
            continue
        s = res["summary"]
        ta, te = s["time_to_accuracy"], s["time_to_error"]
        print(f"{name:38}{s['seconds_per_cap']:>8.3f}{at(ta, s['cap_to_accuracy']):>13}"
              f"{ratio(base.get('time_to_accuracy'), ta):>7}{at(te, s['cap_to_error']):>13}"
              f"{ratio(base.get('time_to_error'), te):>7}"
              f"{s['best_error']:>10.1e}{s['last_accuracy']:>10.4f}  {res['stop']}")
    print("(cap in brackets; '-': not reached within the caps tried, see best err)")
    for name, res in results.items():
        own_err = res.get("summary", {}).get("best_error_own_optimum")
        if own_err is not None:
            print(f"{name}: its objective also penalises the intercept; best error against "
                  f"the optimum of that objective {own_err:.1e}")

    record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg(),
              "rows": n, "test_rows": test_rows, "features": a.features, "C": a.C,
              "alpha": 1 / (a.C * n), "signal": a.signal, "seed": a.seed, "threads": a.threads,
              "caps": a.caps, "sgd_caps": a.sgd_caps, "budget": a.budget,
              "solver_tol": a.solver_tol, "acc_tol": a.acc_tol, "err_target": a.err_target,
              "optimum_accuracy": acc_opt, "error_baseline": base_err, "reference": refinfo,
              "results": results}
    stored = {"runs": []}
    if os.path.exists(a.out):
        with open(a.out) as fh:
            stored = json.load(fh)
    stored["runs"].append(record)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(stored, fh, indent=1)
    print(f"results appended to {a.out}")
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
