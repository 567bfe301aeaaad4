"""Sparse data (issue 21): mpiml's SGDClassifier on CSR rows at 1 and 2 ranks, side by
side with scikit-learn's SGDClassifier and Vowpal Wabbit, in one run.

    cd /work/main && . .venv/bin/activate
    pip install vowpalwabbit                 # benchmark-only peer, not a dependency
    python benchmarks/bench_sparse.py                     # full sizes, ~8 min (+1 min for the data)
    python benchmarks/bench_sparse.py --scale 0.25        # quick run (a quarter of the rows)
    # subsets: --sets rcv1 --tools mpiml,sklearn

Two synthetic data sets, made once with numpy from a seed (vectorised, blocks of rows)
and cached as .npy files under /tmp/bench-sparse/<set>-s<scale>/ (separate .npy files,
not one .npz, so that each MPI rank reads only its own rows with one seek: a rank's
memory then holds its rows only, never the whole file):

``rcv1``  800,000 x 47,236, ~75 stored values per row, tf-idf-like positive values,
          rows L2-normalised.
``ctr``   2,000,000 x 2^22, ~40 stored values per row, one-hot (value 1.0).

Column j of a draw is taken with probability ~ (j+1)^-1.1 (power law); the draws per row
are calibrated on a sample so that the mean of the *distinct* columns per row is the
target. Labels: ``y = [z + noise > 0]`` with ``z = X w0`` standardised, ``w0`` sparse
(30 % of the columns N(0, 1)), noise N(0, --noise^2). The last 10 % of the rows are held
out.

What is run (each in its own subprocess, the data already cached; OMP/OpenBLAS 1 thread):

* mpiml, ``mpiexec -n R python -m mpi4py bench_sparse.py --worker mpiml``, R = 1, 2,
  ``SGDClassifier(loss="log_loss", alpha, batch_size=B (global), exchange=...,
  random_state=0)`` for B = 256, 1024 with exchange "auto"; for ``ctr`` at 2 ranks also
  "dense" and "sparse" forced. Each rank reads rows ``mpiml.chunk(n, R, rank)``.
  Epoch time: ``fit(max_iter=E, tol=None)`` (E = --repeat), each epoch's
  ``epoch_times_`` max over ranks, best of the E epochs; end to end: the wall time of
  ``fit(max_iter=1, tol=None)`` between two Barriers, best of --repeat fits. Communication
  share: per epoch, max over ranks of ``comm_seconds / epoch seconds`` from the ``stats``
  file (per-epoch counters of every rank), median over epochs; ``wait_seconds`` as well.
  Memory (peak RSS, VmHWM; see ``maxrss``): after the imports (``import mpiml``), after reading the rank's
  rows, and after the fits (peak); ``(peak - post-import) / share`` is the issue's
  target ratio (share = data + indices + indptr bytes of the rank's CSR), and
  ``(peak - loaded) / share`` the memory the fits add on top of the resident rows.
  Then time to accuracy: a fresh estimator, ``partial_fit`` epoch by epoch (wall time
  between Barriers, cumulated), the held-out accuracy after each (outside the clock).
* scikit-learn ``SGDClassifier(loss="log_loss", alpha)`` on the float64 CSR copy (made
  before any clock): ``fit(max_iter=1, tol=None)`` best of --repeat; then
  ``partial_fit`` epoch by epoch for the accuracy curve.
* Vowpal Wabbit (the PyPI wheel has no ``vw`` binary: ``python -m vowpalwabbit ARGS``
  runs the same command-line driver in a fresh process). The training and held-out rows
  are written as VW text (``+1/-1 |f idx:val ...``; one-hot rows without values) before
  any clock. ``--loss_function logistic -b BITS --holdout_off --cache_file``. The first
  run parses the text and builds the cache (reported apart, "first pass from text");
  every other run reads the cache. Per pass: ``(t(3 passes) - t(1 pass)) / 2`` from the
  cache (process start-up cancels out), best of --repeat. Accuracy: ``--passes e`` from
  the cache, then ``-t -i model -p preds`` on the held-out file; time to accuracy is the
  wall time of that training run (start-up included, text parsing excluded).

Time to target: the target is --target-frac (0.98) of the best held-out accuracy any tool
reached in the run; each tool's time is the cumulated training time of the first epoch /
pass whose accuracy is at or above it.

Writes ``benchmarks/results/sparse.json`` and ``sparse.txt`` (--out PREFIX).
"""
import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = "/tmp/bench-sparse"
SETS = {
    # name: rows (incl. 10% held out), features, distinct values per row, kind, vw bits
    "rcv1": {"rows": 800_000, "d": 47_236, "nnz": 75, "kind": "tfidf", "bits": 18},
    "ctr": {"rows": 2_000_000, "d": 1 << 22, "nnz": 40, "kind": "onehot", "bits": 22},
}
BLOCK = 100_000


def maxrss():
    """Peak resident memory of this process, bytes: VmHWM of /proc/self/status (the high-water
    mark of this process's own address space, which starts afresh at exec), not ru_maxrss:
    on Linux ru_maxrss also carries the RSS of the parent at the fork that made the process
    (a worker forked from a driver holding GBs reported those GBs as its own)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux: KiB


# --------------------------------------------------------------------------- data
def _cdf(d):
    p = (np.arange(d, dtype=np.float64) + 1.0) ** -1.1
    c = np.cumsum(p)
    return c / c[-1], p / p.sum()


def _draw(rng, n, d, cdf, m):
    """Rows of distinct columns (CSR structure + repeat counts) for n rows of ~m draws."""
    counts = 1 + rng.poisson(max(m - 1.0, 0.0), n)
    cols = np.searchsorted(cdf, rng.random(int(counts.sum())), side="right")
    np.minimum(cols, d - 1, out=cols)
    keys = np.repeat(np.arange(n, dtype=np.int64), counts) * d + cols
    keys, tf = np.unique(keys, return_counts=True)
    rows = keys // d
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, (keys - rows * d).astype(np.int32), tf


def make_set(name, scale, noise, seed=21):
    spec = SETS[name]
    n, d = max(int(spec["rows"] * scale), 2000), spec["d"]
    out = os.path.join(CACHE, f"{name}-s{scale:g}-n{noise:g}")
    if os.path.exists(os.path.join(out, "meta.json")):
        with open(os.path.join(out, "meta.json")) as fh:
            return out, json.load(fh)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    cdf, p = _cdf(d)
    m = float(spec["nnz"])                    # calibrate draws -> distinct values per row
    for _ in range(4):
        ip, _, _ = _draw(rng, 20_000, d, cdf, m)
        m *= spec["nnz"] / (ip[-1] / 20_000)
    w0 = np.where(rng.random(d) < 0.3, rng.standard_normal(d), 0.0)
    idf = np.log1p(1.0 / (m * p)).astype(np.float32)
    parts = {"indptr": [np.zeros(1, np.int64)], "indices": [], "data": []}
    z = np.empty(n)
    base = 0
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        ip, ind, tf = _draw(rng, hi - lo, d, cdf, m)
        if spec["kind"] == "tfidf":
            v = (1.0 + np.log(tf)).astype(np.float32) * idf[ind]
            nrm = np.sqrt(np.add.reduceat(v.astype(np.float64) ** 2, ip[:-1]))
            v /= np.repeat(nrm, np.diff(ip)).astype(np.float32)
        else:
            v = np.ones(len(ind), dtype=np.float32)
        rowsum = np.add.reduceat(v.astype(np.float64) * w0[ind], ip[:-1])
        z[lo:hi] = rowsum
        parts["indptr"].append(ip[1:] + base)
        parts["indices"].append(ind)
        parts["data"].append(v)
        base += ip[-1]
    z = (z - z.mean()) / z.std()
    y = (z + noise * rng.standard_normal(n) > 0).astype(np.float32)
    indptr = np.concatenate(parts["indptr"])
    indices = np.concatenate(parts["indices"])
    data = np.concatenate(parts["data"])
    ntr = n - n // 10
    cut = indptr[ntr]
    for pre, sl, ipp in (("train", slice(0, ntr), indptr[:ntr + 1]),
                         ("test", slice(ntr, n), indptr[ntr:] - cut)):
        a, b = ipp[0] + (0 if pre == "train" else cut), ipp[-1] + (0 if pre == "train" else cut)
        np.save(os.path.join(out, f"{pre}_indptr.npy"), ipp)
        np.save(os.path.join(out, f"{pre}_indices.npy"), indices[a:b])
        np.save(os.path.join(out, f"{pre}_data.npy"), data[a:b])
        np.save(os.path.join(out, f"{pre}_y.npy"), y[sl])
    meta = {"name": name, "scale": scale, "rows": n, "train_rows": ntr, "test_rows": n - ntr,
            "features": d, "nnz": int(indptr[-1]), "nnz_per_row": float(indptr[-1] / n),
            "draws_per_row": m, "positive_rate": float(y.mean()), "noise": noise,
            "bayes_accuracy": float(1 - np.arctan(noise) / np.pi), "seed": seed,
            "generate_seconds": time.perf_counter() - t0, "vw_bits": spec["bits"]}
    with open(os.path.join(out, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    return out, meta


def _read(path, lo, count):
    """``count`` items from ``lo`` of a .npy file, read into fresh memory (no mmap, so
    the process's RSS holds these items only)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        hdr = (np.lib.format.read_array_header_1_0 if version == (1, 0)
               else np.lib.format.read_array_header_2_0)
        dtype = hdr(fh)[2]
        fh.seek(fh.tell() + lo * dtype.itemsize)
        return np.fromfile(fh, dtype=dtype, count=count)


def read_rows(ddir, pre, lo, hi):
    """Rows lo:hi of the cached CSR set ``pre`` (train/test) and their labels."""
    import scipy.sparse as sp
    with open(os.path.join(ddir, "meta.json")) as fh:
        d = json.load(fh)["features"]
    ip = _read(os.path.join(ddir, f"{pre}_indptr.npy"), lo, hi - lo + 1)
    a, b = int(ip[0]), int(ip[-1])
    ip = ip - a
    ind = _read(os.path.join(ddir, f"{pre}_indices.npy"), a, b - a)
    val = _read(os.path.join(ddir, f"{pre}_data.npy"), a, b - a)
    y = _read(os.path.join(ddir, f"{pre}_y.npy"), lo, hi - lo)
    X = sp.csr_matrix((val, ind, ip), shape=(hi - lo, d), copy=False)
    return X, y


def n_rows(ddir, pre):
    return len(np.load(os.path.join(ddir, f"{pre}_y.npy"), mmap_mode="r"))


def csr_bytes(X):
    return int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)


# --------------------------------------------------------------------------- workers
def worker_mpiml(a):
    from mpi4py import MPI

    import mpiml
    rss_import = maxrss()
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    ntr = n_rows(a.data, "train")
    if a.rows_frac < 1.0:
        ntr = max(int(ntr * a.rows_frac), size)
    lo, hi = mpiml.chunk(ntr, size, rank)
    X, y = read_rows(a.data, "train", lo, hi)
    rss_loaded = maxrss()
    share = csr_bytes(X)
    kw = dict(loss="log_loss", alpha=a.alpha, batch_size=a.batch, exchange=a.exchange,
              random_state=0, tol=None, **json.loads(a.mpiml_kw))
    res = {"ranks": size, "batch": a.batch, "exchange_asked": a.exchange, "train_rows_used": ntr}

    def timed(fn):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        comm.Barrier()
        return time.perf_counter() - t0

    e2e = []
    rss_first = None
    if a.e2e:
        for _ in range(a.repeat):
            m = mpiml.SGDClassifier(max_iter=1, **kw)
            e2e.append(timed(lambda m=m: m.fit(X, y)))
            if len(e2e) == 1:
                rss_first = maxrss()          # peak of one fit in a fresh process
            del m
    stats = a.out + ".stats.jsonl"
    m = mpiml.SGDClassifier(max_iter=a.epochs, stats=stats, **kw)
    fit_s = timed(lambda: m.fit(X, y))
    rss_peak = maxrss()
    if rss_first is None:
        rss_first = rss_peak
    times = np.array(comm.allgather(list(m.epoch_times_)))        # ranks x epochs
    rss = comm.gather({"import": rss_import, "loaded": rss_loaded, "peak": rss_first,
                       "peak_after_all_fits": rss_peak,
                       "share": share, "rows": hi - lo, "nnz": int(X.nnz)}, root=0)
    res.update({"exchange": getattr(m, "exchange_", None), "fit_seconds_E": fit_s,
                "epochs": a.epochs, "epoch_times_per_rank": times.tolist(),
                "e2e_fit1_seconds": e2e, "loss_curve": list(map(float, m.loss_curve_)),
                "memory_per_rank": rss})
    if rank == 0:
        with open(stats) as fh:
            res["stats"] = [json.loads(line) for line in fh if line.strip()]
    del m
    # time to accuracy: partial_fit epoch by epoch, accuracy outside the clock
    curve = []
    if a.curve > 0:
        tlo, thi = mpiml.chunk(n_rows(a.data, "test"), size, rank)
        Xt, yt = read_rows(a.data, "test", tlo, thi)
        m = mpiml.SGDClassifier(max_iter=1, **kw)
        cum = 0.0
        for e in range(a.curve):
            if e == 0:
                cum += timed(lambda: m.partial_fit(X, y, classes=np.array([0.0, 1.0],
                                                                         dtype=np.float32)))
            else:
                cum += timed(lambda: m.partial_fit(X, y))
            ok = np.array([float((m.predict(Xt) == yt).sum()), float(len(yt))])
            comm.Allreduce(MPI.IN_PLACE, ok)
            curve.append({"epoch": e + 1, "seconds": cum, "accuracy": ok[0] / ok[1]})
    res["curve"] = curve
    if rank == 0:
        with open(a.out, "w") as fh:
            json.dump(res, fh)


def worker_sklearn(a):
    import warnings

    from sklearn.linear_model import SGDClassifier
    warnings.simplefilter("ignore")
    rss_import = maxrss()
    X, y = read_rows(a.data, "train", 0, n_rows(a.data, "train"))
    X = X.astype(np.float64)          # what scikit-learn would convert to: made before the clock
    y = y.astype(np.float64)
    rss_loaded = maxrss()
    share = csr_bytes(X)
    kw = {"loss": "log_loss", "alpha": a.alpha, "random_state": 0, "tol": None}
    ep = []
    for _ in range(a.repeat):
        m = SGDClassifier(max_iter=1, **kw)
        t0 = time.perf_counter()
        m.fit(X, y)
        ep.append(time.perf_counter() - t0)
    rss_peak = maxrss()
    Xt, yt = read_rows(a.data, "test", 0, n_rows(a.data, "test"))
    Xt = Xt.astype(np.float64)
    m = SGDClassifier(max_iter=1, **kw)
    cum, curve = 0.0, []
    for e in range(a.curve):
        t0 = time.perf_counter()
        m.partial_fit(X, y, classes=np.array([0.0, 1.0]))
        cum += time.perf_counter() - t0
        curve.append({"epoch": e + 1, "seconds": cum,
                      "accuracy": float((m.predict(Xt) == yt).mean())})
    res = {"epoch_seconds_all": ep, "curve": curve,
           "memory": {"import": rss_import, "loaded": rss_loaded, "peak": rss_peak,
                      "share": share}}
    with open(a.out, "w") as fh:
        json.dump(res, fh)


# --------------------------------------------------------------------------- VW
def write_vw(ddir, pre, path):
    """VW text for the cached set, vectorised: fixed-width fields padded with spaces
    (VW splits on runs of spaces): '<label> |f' then ' idx' or ' idx:0.dddddd'."""
    import scipy.sparse  # noqa: F401
    X, y = read_rows(ddir, pre, 0, n_rows(ddir, pre))
    onehot = bool(np.all(X.data == 1.0))
    n, nnz = X.shape[0], X.nnz
    digits = len(str(X.shape[1] - 1))
    W = 1 + digits + (0 if onehot else 9)              # ' ' idx [':0.dddddd']
    H = 5                                              # ' 1 |f' / '-1 |f'
    field = np.full((nnz, W), ord(" "), dtype=np.uint8)
    idx = X.indices.astype(np.int64)
    for k in range(digits):                            # right-aligned digits
        col = 1 + digits - 1 - k
        dgt = (idx // 10 ** k) % 10
        show = (idx >= 10 ** k) | (k == 0)
        field[:, col] = np.where(show, ord("0") + dgt, ord(" "))
    if not onehot:
        q = np.clip(np.rint(X.data.astype(np.float64) * 1e6), 0, 999_999).astype(np.int64)
        base = 1 + digits
        field[:, base] = ord(":")
        field[:, base + 1] = ord("0")
        field[:, base + 2] = ord(".")
        for k in range(6):
            field[:, base + 3 + 5 - k] = ord("0") + (q // 10 ** k) % 10
    L = n * (H + 1) + nnz * W
    buf = np.empty(L, dtype=np.uint8)
    ip = X.indptr.astype(np.int64)
    row_start = np.arange(n, dtype=np.int64) * (H + 1) + ip[:-1] * W
    head = np.where(y[:, None] > 0.5, np.frombuffer(b" 1 |f", np.uint8),
                    np.frombuffer(b"-1 |f", np.uint8))
    buf[row_start[:, None] + np.arange(H)] = head
    ent_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(ip))
    ent_start = row_start[ent_row] + H + (np.arange(nnz, dtype=np.int64) - ip[ent_row]) * W
    del ent_row
    for c in range(W):
        buf[ent_start + c] = field[:, c]
    buf[row_start + H + np.diff(ip) * W] = ord("\n")
    buf.tofile(path)
    return y


def run_timed(cmd, timeout, env=None):
    """Run cmd in its own process group; (seconds, rc, maxrss bytes, stderr tail)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, env=env)
    try:
        err = p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1]
        return time.perf_counter() - t0, "timeout", 0, err.decode(errors="replace")[-2000:]
    sec = time.perf_counter() - t0
    return sec, p.returncode, 0, err.decode(errors="replace")[-2000:]


def run_vw(ddir, meta, a, work):
    res = {"ok": False}
    try:
        import vowpalwabbit
        res["version"] = vowpalwabbit.__version__ if hasattr(vowpalwabbit, "__version__") \
            else "?"
    except Exception as e:  # noqa: BLE001
        res["error"] = f"vowpalwabbit not importable: {e!r}"
        return res
    tr, te = os.path.join(work, "train.vw"), os.path.join(work, "test.vw")
    cache = os.path.join(work, "train.cache")
    t0 = time.perf_counter()
    try:
        write_vw(ddir, "train", tr)
        yt = write_vw(ddir, "test", te)
    except Exception as e:  # noqa: BLE001
        res["error"] = f"writing VW text failed: {e!r}"
        return res
    res["write_text_seconds"] = time.perf_counter() - t0
    res["text_bytes"] = os.path.getsize(tr)
    if os.path.exists(cache):
        os.remove(cache)
    vw = [sys.executable, "-m", "vowpalwabbit"]
    common = ["--loss_function", "logistic", "-b", str(meta["vw_bits"]), "--holdout_off",
              "--quiet", "--cache_file", cache, "-d", tr]
    ntr = meta["train_rows"]

    def train(passes, model=None):
        cmd = vw + common + ["--passes", str(passes)] + (["-f", model] if model else [])
        s, rc, _, err = run_timed(cmd, a.timeout)
        if rc != 0:
            raise RuntimeError(f"vw {' '.join(cmd[3:])}: rc={rc}: {err}")
        return s

    try:
        res["first_pass_from_text_seconds"] = train(1)
        t1 = [train(1) for _ in range(a.repeat)]
        t3 = [train(3) for _ in range(a.repeat)]
        per = (min(t3) - min(t1)) / 2.0
        res.update({"t1_from_cache": t1, "t3_from_cache": t3, "pass_seconds": per,
                    "startup_seconds_est": min(t1) - per})
        curve = []
        model, preds = os.path.join(work, "m.vw"), os.path.join(work, "p.txt")
        for e in range(1, a.vw_passes + 1):
            if len(curve) >= 2 and curve[-1]["accuracy"] < curve[-2]["accuracy"]:
                break                     # past its best: more passes only cost time
            s = train(e, model)
            cmd = vw + ["-t", "-i", model, "-d", te, "-p", preds, "--quiet"]
            _, rc, _, err = run_timed(cmd, a.timeout)
            if rc != 0:
                raise RuntimeError(f"vw predict rc={rc}: {err}")
            p = np.loadtxt(preds, usecols=0, ndmin=1)
            curve.append({"epoch": e, "seconds": s,
                          "accuracy": float(((p > 0) == (yt > 0.5)).mean())})
        res["curve"] = curve
        res["ok"] = True
        res["rows_per_second"] = ntr / per if per > 0 else None
    except Exception as e:  # noqa: BLE001
        res["error"] = repr(e)[-1500:]
    return res


# --------------------------------------------------------------------------- driver
def child_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "HYDRA_", "MPIR_", "PMIX_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_mpiml(ddir, a, ranks, batch, exchange, work, curve, e2e, epochs, kw=None,
              rows_frac=1.0):
    kw = a.mpiml_kw_set if kw is None else kw
    out = os.path.join(work, f"mpiml-{ranks}-{batch}-{exchange}-{abs(hash(kw))}.json")
    if os.path.exists(out):
        os.remove(out)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", os.path.abspath(__file__),
           "--worker", "mpiml", "--data", ddir, "--out", out, "--batch", str(batch),
           "--exchange", exchange, "--alpha", str(a.alpha), "--repeat", str(a.repeat),
           "--curve", str(curve), "--epochs", str(epochs),
           "--mpiml-kw", kw, "--rows-frac", str(rows_frac)] + (["--e2e"] if e2e else [])
    load = os.getloadavg()[0]
    s, rc, _, err = run_timed(cmd, a.timeout, child_env())
    if rc != 0 or not os.path.exists(out):
        return {"ranks": ranks, "batch": batch, "exchange_asked": exchange, "ok": False,
                "error": f"rc={rc} after {s:.0f} s: {err[-1500:]}"}
    with open(out) as fh:
        r = json.load(fh)
    r["ok"] = True
    r["wall_seconds"] = s
    r["kw"] = kw
    r["loadavg_before"] = load
    return r


def run_sklearn(ddir, a, work):
    out = os.path.join(work, "sklearn.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "sklearn", "--data", ddir,
           "--out", out, "--alpha", str(a.alpha), "--repeat", str(a.repeat),
           "--curve", str(a.curve)]
    s, rc, _, err = run_timed(cmd, a.timeout, child_env())
    if rc != 0 or not os.path.exists(out):
        return {"ok": False, "error": f"rc={rc} after {s:.0f} s: {err[-1500:]}"}
    with open(out) as fh:
        r = json.load(fh)
    r["ok"] = True
    return r


def summarise_mpiml(r, ntr):
    t = np.array(r["epoch_times_per_rank"])            # ranks x epochs
    per_epoch = t.max(axis=0)
    best = float(per_epoch.min())
    shares, waits = [], []
    for rec in r.get("stats", []):
        e = rec["epoch"] - 1 if rec["epoch"] >= 1 else 0
        e = min(e, t.shape[1] - 1)
        shares.append(max(c / s for c, s in zip(rec["comm_seconds_per_rank"], t[:, e])))
        waits.append(max(c / s for c, s in zip(rec["wait_seconds_per_rank"], t[:, e])))
    mem = r["memory_per_rank"]
    worst = max(mem, key=lambda m: m["peak"] - m["import"])
    return {"epoch_s": best, "samples_s": ntr / best,
            "e2e_fit1_s": min(r["e2e_fit1_seconds"]) if r["e2e_fit1_seconds"] else None,
            "comm_share": float(np.median(shares)) if shares and r["ranks"] > 1 else None,
            "wait_share": float(np.median(waits)) if waits and r["ranks"] > 1 else None,
            "bytes_per_rank_epoch": (r["stats"][-1]["bytes_sent_per_rank"]
                                     if r.get("stats") else None),
            "mem_ratio_post_import": (worst["peak"] - worst["import"]) / worst["share"],
            "mem_ratio_above_loaded": (worst["peak"] - worst["loaded"]) / worst["share"],
            "mem_ratio_post_import_after_all_fits":
                (max(m["peak_after_all_fits"] for m in mem) - worst["import"]) / worst["share"],
            "mem_peak_MiB": worst["peak"] / 2**20, "mem_import_MiB": worst["import"] / 2**20,
            "mem_loaded_MiB": worst["loaded"] / 2**20, "share_MiB": worst["share"] / 2**20}


def time_to(curve, target):
    for c in curve or []:
        if c["accuracy"] >= target:
            return c["seconds"], c["epoch"]
    return None, None


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def bench_set(name, a):
    t0 = time.perf_counter()
    ddir, meta = make_set(name, a.scale, a.noise[name])
    a.mpiml_kw_set = getattr(a, f"mpiml_kw_{name}")
    print(f"\n== {name}: {meta['train_rows']:,} train + {meta['test_rows']:,} held-out rows x "
          f"{meta['features']:,} features, {meta['nnz_per_row']:.1f} values/row "
          f"(data ready in {time.perf_counter() - t0:.1f} s; generated in "
          f"{meta['generate_seconds']:.1f} s)", flush=True)
    work = os.path.join(ddir, "runs")
    os.makedirs(work, exist_ok=True)
    ntr = meta["train_rows"]
    res = {"meta": meta, "mpiml": [], "sklearn": None, "vw": None}
    tools = a.tools.split(",")
    if "mpiml" in tools:
        configs = [(r, b, "auto", True, None) for r in (1, 2) for b in (256, 1024)]
        if name == "ctr":
            configs += [(2, b, ex, False, None) for b in (256, 1024) for ex in ("dense", "sparse")]
        if a.mpiml_kw_set != "{}":      # mpiml's default step settings, for the record
            configs.append((1, 256, "auto", True, "{}"))
        for ranks, b, ex, full, kw in configs:
            t1 = time.perf_counter()
            r = run_mpiml(ddir, a, ranks, b, ex, work, a.curve if full else 0, full,
                          a.repeat if full else a.forced_epochs, kw,
                          a.dense_rows_frac if ex == "dense" else 1.0)
            if r["ok"]:
                r["summary"] = summarise_mpiml(r, r["train_rows_used"])
            res["mpiml"].append(r)
            print(f"   mpiml {ranks} rank(s) batch {b} exchange {ex}: "
                  f"{'ok' if r['ok'] else 'FAILED ' + r['error'][-300:]} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
    if "sklearn" in tools:
        t1 = time.perf_counter()
        res["sklearn"] = run_sklearn(ddir, a, work)
        print(f"   scikit-learn: {'ok' if res['sklearn']['ok'] else res['sklearn']['error']} "
              f"({time.perf_counter() - t1:.0f} s)", flush=True)
    if "vw" in tools:
        t1 = time.perf_counter()
        res["vw"] = run_vw(ddir, meta, a, work)
        print(f"   Vowpal Wabbit: {'ok' if res['vw']['ok'] else res['vw'].get('error')} "
              f"({time.perf_counter() - t1:.0f} s)", flush=True)
        for f in ("train.vw", "test.vw", "train.cache"):
            if os.path.exists(os.path.join(work, f)):
                os.remove(os.path.join(work, f))
    # ---- table
    sk = res["sklearn"] if res["sklearn"] and res["sklearn"]["ok"] else None
    vw = res["vw"] if res["vw"] and res["vw"].get("ok") else None
    sk_rate = ntr / min(sk["epoch_seconds_all"]) if sk else None
    vw_rate = vw["rows_per_second"] if vw else None
    accs = [c["accuracy"] for r in res["mpiml"] if r["ok"] for c in r["curve"]]
    accs += [c["accuracy"] for c in (sk["curve"] if sk else [])]
    accs += [c["accuracy"] for c in (vw["curve"] if vw else [])]
    best = max(accs) if accs else None
    target = a.target_frac * best if best else None
    res["best_accuracy"], res["target_accuracy"] = best, target
    rows = []
    for r in res["mpiml"]:
        if not r["ok"]:
            rows.append(["mpiml", r["ranks"], r["batch"], r["exchange_asked"], "FAILED"])
            continue
        s = r["summary"]
        tt, te = time_to(r["curve"], target)
        s["time_to_target_s"], s["epochs_to_target"] = tt, te
        ex = r["exchange_asked"] if r["exchange_asked"] != "auto" else f"auto->{r['exchange']}"
        if r["train_rows_used"] < ntr:
            ex += f" ({r['train_rows_used']:,} rows)"
        tool = "mpiml" if r["kw"] == a.mpiml_kw_set else "mpiml, default steps"
        rows.append([tool, r["ranks"], r["batch"], ex, fmt(s["epoch_s"], ".3f"),
                     fmt(s["samples_s"] / 1e6, ".2f") + " M",
                     fmt(s["samples_s"] / sk_rate if sk_rate else None, ".2f"),
                     fmt(s["samples_s"] / r["ranks"] / vw_rate if vw_rate else None, ".2f"),
                     fmt(s["comm_share"] * 100 if s["comm_share"] is not None else None, ".1f",
                         "-") + ("%" if s["comm_share"] is not None else ""),
                     fmt(s["mem_ratio_post_import"], ".2f"),
                     (f"{tt:.2f} s ({te} ep)" if tt is not None else
                      ("not reached" if r["curve"] else "-")),
                     fmt(r["curve"][-1]["accuracy"] if r["curve"] else None, ".4f"),
                     fmt(s["e2e_fit1_s"], ".3f")])
    if sk:
        ep = min(sk["epoch_seconds_all"])
        tt, te = time_to(sk["curve"], target)
        sk["time_to_target_s"], sk["epochs_to_target"] = tt, te
        m = sk["memory"]
        rows.append(["scikit-learn", 1, 1, "-", f"{ep:.3f}", f"{ntr / ep / 1e6:.2f} M", "1",
                     fmt(ntr / ep / vw_rate if vw_rate else None, ".2f"), "-",
                     f"{(m['peak'] - m['import']) / m['share']:.2f}",
                     f"{tt:.2f} s ({te} ep)" if tt is not None else "not reached",
                     f"{sk['curve'][-1]['accuracy']:.4f}" if sk["curve"] else "-", f"{ep:.3f}"])
    elif res["sklearn"]:
        rows.append(["scikit-learn", 1, 1, "-", "FAILED"])
    if vw:
        tt, te = time_to(vw["curve"], target)
        vw["time_to_target_s"], vw["epochs_to_target"] = tt, te
        rows.append(["Vowpal Wabbit", 1, 1, "-", f"{vw['pass_seconds']:.3f}",
                     f"{vw_rate / 1e6:.2f} M", fmt(vw_rate / sk_rate if sk_rate else None, ".2f"),
                     "1", "-", "-",
                     f"{tt:.2f} s ({te} p)" if tt is not None else "not reached",
                     f"{vw['curve'][-1]['accuracy']:.4f}" if vw["curve"] else "-",
                     f"{min(vw['t1_from_cache']):.3f}"])
    elif res["vw"]:
        rows.append(["Vowpal Wabbit", 1, 1, "-",
                     "FAILED/MISSING: " + res["vw"].get("error", "")[:200]])
    head = ["tool", "ranks", "batch", "exchange", "epoch s", "samples/s", "x sklearn",
            "x VW/core", "comm share", "peak-imp/share", "time to target", "final acc",
            "fit(1) e2e s"]
    lines = [(f"### {name}: {ntr:,} x {meta['features']:,}, {meta['nnz_per_row']:.1f} nnz/row; "
              f"target accuracy {fmt(target, '.4f')} (= {a.target_frac} x best "
              f"{fmt(best, '.4f')}; Bayes ~{meta['bayes_accuracy']:.3f}); curves: {a.curve} "
              f"epochs (mpiml, scikit-learn), up to {a.vw_passes} passes (VW)"),
             (f"mpiml settings: {a.mpiml_kw_set} (alpha {a.alpha:g}, log_loss, random_state 0); "
              f"scikit-learn: defaults (optimal, intercept) with the same alpha; VW: defaults"),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    if vw:
        lines.append("")
        lines.append(f"VW: first pass from text (builds the cache, not in the table) "
                     f"{vw['first_pass_from_text_seconds']:.2f} s; per pass from the cache "
                     f"{vw['pass_seconds']:.3f} s; process start-up ~{vw['startup_seconds_est']:.2f}"
                     f" s (in its time to target, not in its per-pass figure).")
    for r in res["mpiml"]:
        if r["ok"]:
            s = r["summary"]
            epochs = [round(float(x), 3) for x in np.max(r['epoch_times_per_rank'], axis=0)]
            lines.append(f"mpiml {r['ranks']}r b{r['batch']} {r['kw']} {r['exchange_asked']}->"
                         f"{r['exchange']}: epochs {epochs}"
                         f" s, comm {fmt(s['comm_share'], '.3f')}, wait {fmt(s['wait_share'], '.3f')},"
                         f" bytes/rank/epoch {s['bytes_per_rank_epoch']}; "
                         f"load before {r['loadavg_before']:.2f}; mem import "
                         f"{s['mem_import_MiB']:.0f} MiB, loaded {s['mem_loaded_MiB']:.0f}, "
                         f"peak {s['mem_peak_MiB']:.0f}, share {s['share_MiB']:.0f} MiB -> "
                         f"(peak-import)/share {s['mem_ratio_post_import']:.2f} (after all fits "
                         f"{s['mem_ratio_post_import_after_all_fits']:.2f}), "
                         f"(peak-loaded)/share {s['mem_ratio_above_loaded']:.2f}")
    text = "\n".join(lines)
    print(text, flush=True)
    res["table"] = text
    res["seconds"] = time.perf_counter() - t0
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=("mpiml", "sklearn"))
    ap.add_argument("--data")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sparse"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--exchange", default="auto")
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--forced-epochs", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--sets", default="rcv1,ctr")
    ap.add_argument("--tools", default="mpiml,sklearn,vw")
    ap.add_argument("--alpha", type=float, default=1e-6)
    ap.add_argument("--noise-rcv1", type=float, default=0.2)
    ap.add_argument("--noise-ctr", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows-frac", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--dense-rows-frac", type=float, default=0.02,
                    help="forced dense exchange (ctr): train on this fraction of the rows only "
                         "(a 2^22-weight Allreduce per step; the full set would take ~10 min "
                         "an epoch); the per-step costs and the share do not depend on it")
    ap.add_argument("--mpiml-kw", default="{}", help=argparse.SUPPRESS)
    # mpiml's step settings per set (JSON): with its defaults (learning_rate="optimal",
    # fit_intercept=True) the fits diverged on these sets (see benchmarks/README.md)
    ap.add_argument("--mpiml-kw-rcv1", default='{"fit_intercept": false}')
    ap.add_argument("--mpiml-kw-ctr", default='{"learning_rate": "constant", "eta0": 1.0}')
    ap.add_argument("--curve", type=int, default=10, help="epochs of the accuracy curves")
    ap.add_argument("--vw-passes", type=int, default=5,
                    help="VW's curve: --passes 1..N, each a run from the cache (stops once "
                         "the held-out accuracy falls)")
    ap.add_argument("--target-frac", type=float, default=0.98)
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args()
    if a.worker == "mpiml":
        return worker_mpiml(a)
    if a.worker == "sklearn":
        return worker_sklearn(a)
    a.noise = {"rcv1": a.noise_rcv1, "ctr": a.noise_ctr}
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    import scipy
    import sklearn
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "args": vars(a),
           "loadavg_start": load0, "versions": {"numpy": np.__version__,
                                                  "scipy": scipy.__version__,
                                                  "sklearn": sklearn.__version__},
           "sets": {}}
    from importlib.metadata import PackageNotFoundError, version
    for pkg in ("vowpalwabbit", "mpiml"):
        try:
            out["versions"][pkg] = version(pkg)
        except PackageNotFoundError:
            out["versions"][pkg] = None
    print(f"bench_sparse: scale {a.scale}, load average at start {load0[0]:.2f}", flush=True)
    texts = []
    for name in a.sets.split(","):
        out["sets"][name] = bench_set(name, a)
        texts.append(out["sets"][name]["table"])
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t0
    foot = (f"\nrun {out['date']}, scale {a.scale}, {out['seconds']:.0f} s; load average at start "
            f"{load0[0]:.2f}, at end {out['loadavg_end'][0]:.2f}")
    print(foot)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    with open(a.out + ".txt", "w") as fh:
        fh.write("\n\n".join(texts) + "\n" + foot + "\n")


if __name__ == "__main__":
    sys.exit(main())
