"""mpiml's benchmark suite: OSU-style micro-benchmarks, kernel throughput, strong and
weak scaling of ``train``, and the alpha-beta performance model checked against them.

    mpiexec -n 2 python benchmarks/run.py --suite quick --out results/
    mpiexec -n 2 python benchmarks/run.py --suite full --out results/ --parts allreduce,model

Parts (``--parts``, default all):

* ``allreduce``: latency and bandwidth of an in-place Allreduce through ``mpiml.comm``
  against raw mpi4py, message sizes 8 B .. 4 MB (full: 16 MB); warm-up, Barrier,
  ``MPI.Wtime``, repetitions, raw and wrapped blocks alternated, slowest rank reported.
  On 2+ ranks the alpha-beta fit (:func:`mpiml.perfmodel.fit`) is made here.
* ``kernel``: one epoch of mpiml's logistic SGD on rank 0 against scikit-learn's
  ``SGDClassifier`` (one epoch) and against one numpy read pass ``X @ w`` of the rows.
* ``scaling``: strong (fixed data and global batch) and weak (fixed rows and batch per
  rank) scaling of ``fit`` for logistic, softmax and an MLP at 1 .. N ranks of this job
  (sub-communicators of the first p ranks), with rank 0's epoch split into compute,
  communication and waiting (every collective timed, ``stats=``) and the HDF5 read
  time (I/O: each rank reads its rows once; the steps then run from memory).
* ``model``: the alpha-beta model with alpha, beta from ``allreduce`` and the compute
  terms from the 1-rank ``scaling`` runs only, its error on every multi-rank step time
  measured in ``scaling``, and its projection to 16..4096 ranks.

Every part writes ``OUT/<part>.json``; ``allreduce``, ``scaling`` and ``model`` also a PNG.
Rank 0 prints the tables. Timings of 3+ ranks on a 2-core machine are oversubscribed.
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import shutil
import sys
import tempfile
import time

import numpy as np
from bench_sgd import idle_wait, machine, median_time
from mpi4py import MPI

from mpiml import perfmodel as pm
from mpiml.comm import Comm, get_comm

SUITES = {
    # smoke: seconds, for the test that checks the suite runs (tests/test_bench.py)
    "smoke": {"sizes": [8, 4096, 262144], "blocks": 1, "kernel_rows": 20_000, "rows": 8_000,
              "epochs": 2},
    "quick": {"sizes": [8, 64, 512, 4096, 32768, 262144, 1 << 21, 1 << 22], "blocks": 5,
              "kernel_rows": 200_000, "rows": 100_000, "epochs": 4},
    "full": {"sizes": [8 << (2 * i) for i in range(12)], "blocks": 9,
             "kernel_rows": 1_000_000, "rows": 400_000, "epochs": 6},
}
# model -> (estimator keyword arguments, features, classes, global batch for strong scaling,
# batch per rank for weak scaling, make-data task)
MODELS = {
    "logistic": ({"loss": "log_loss"}, 100, 2, 512, 256, "binary"),
    "softmax": ({"loss": "log_loss", "multi_class": "multinomial"}, 100, 10, 512, 256,
                "multiclass"),
    "mlp": ({"hidden_layer_sizes": (64,), "solver": "sgd", "momentum": 0.0}, 100, 10, 512, 256,
            "multiclass"),
}


def report(c, text=""):
    c.print0(text)


# ------------------------------------------------------------------- allreduce
def bench_allreduce(c, sizes, blocks):
    raw_comm = c.mpi
    wrapped = Comm(raw_comm, dup=False)
    rows = []
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 8), dtype=np.float64)

        def raw():
            raw_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

        def ours():
            wrapped.Allreduce(buf)

        # repetitions per block: about 20 ms of work, agreed from rank 0's estimate
        t0 = MPI.Wtime()
        for _ in range(5):
            raw()
        est = c.mpi.bcast((MPI.Wtime() - t0) / 5)
        reps = int(min(20000, max(10, 0.02 / max(est, 1e-7))))
        times = {"raw": [], "mpiml": []}
        for _ in range(blocks):
            for name, fn in (("raw", raw), ("mpiml", ours)):
                for _ in range(max(1, reps // 10)):     # warm-up
                    fn()
                c.mpi.Barrier()
                t0 = MPI.Wtime()
                for _ in range(reps):
                    fn()
                t = (MPI.Wtime() - t0) / reps
                times[name].append(c.mpi.allreduce(t, op=MPI.MAX))
        raw_t, our_t = float(np.median(times["raw"])), float(np.median(times["mpiml"]))
        rows.append({"bytes": buf.nbytes, "ranks": c.size, "reps": reps, "raw_s": raw_t,
                     "mpiml_s": our_t, "overhead_ratio": our_t / raw_t if raw_t > 0 else None,
                     "bandwidth_Bps": buf.nbytes / raw_t if raw_t > 0 else None})
    fit = None
    if c.size > 1:
        a, bw = pm.fit([(r["bytes"], c.size, r["raw_s"]) for r in rows])
        fit = {"alpha_s": a, "bandwidth_Bps": bw, "ranks": c.size,
               "formula": "ceil(log2 p) alpha + 2 (p-1)/p n / bandwidth",
               "max_rel_error": max(abs(pm.allreduce_time(r["bytes"], c.size, a, bw) / r["raw_s"]
                                        - 1) for r in rows)}
    report(c, f"\n# Allreduce (in place, float64), {c.size} rank(s): mpiml.comm vs raw mpi4py")
    report(c, f"{'bytes':>10} {'raw':>11} {'mpiml':>11} {'ratio':>7} {'bandwidth':>11}")
    for r in rows:
        report(c, f"{r['bytes']:>10} {r['raw_s'] * 1e6:>9.2f}us {r['mpiml_s'] * 1e6:>9.2f}us "
                  f"{r['overhead_ratio'] or 0:>6.3f}x {(r['bandwidth_Bps'] or 0) / 1e9:>7.3f}GB/s")
    if fit:
        report(c, f"fit: alpha {fit['alpha_s'] * 1e6:.2f} us, bandwidth "
                  f"{fit['bandwidth_Bps'] / 1e9:.2f} GB/s (largest error on these points "
                  f"{fit['max_rel_error'] * 100:.0f}%)")
    return {"rows": rows, "fit": fit}


# ---------------------------------------------------------------------- kernel
def bench_kernel(c, rows, features=100, reps=5):
    from sklearn.linear_model import SGDClassifier as SkSGD

    from mpiml import SGDClassifier

    out = None
    if c.rank == 0:
        rng = np.random.default_rng(1)
        X = rng.standard_normal((rows, features)).astype(np.float32)
        y = (X @ rng.standard_normal(features) > 0).astype(np.int64)
        w = np.ones(features, dtype=np.float32)
        read, _ = median_time(lambda: X @ w, reps)
        clf = SGDClassifier(max_iter=reps + 1, tol=None, learning_rate="constant", eta0=0.05,
                            batch_size=256, random_state=0, comm=MPI.COMM_SELF).fit(X, y)
        ours = float(np.median(clf.epoch_times_[1:]))
        sk, _ = median_time(lambda: SkSGD(loss="log_loss", max_iter=1, tol=None,
                                          random_state=0).fit(X, y), max(1, reps // 2))
        out = {"rows": rows, "features": features, "batch": 256, "read_pass_s": read,
               "mpiml_epoch_s": ours, "sklearn_epoch_s": sk,
               "mpiml_samples_per_s": rows / ours, "sklearn_samples_per_s": rows / sk,
               "mpiml_over_read_pass": ours / read, "speedup_over_sklearn": sk / ours}
    idle_wait(c)
    out = c.bcast(out)
    report(c, f"\n# Kernel throughput, 1 rank, {rows} x {features} float32 logistic, batch 256")
    report(c, f"numpy read pass X @ w      {out['read_pass_s'] * 1e3:8.2f} ms   1")
    report(c, f"mpiml one epoch            {out['mpiml_epoch_s'] * 1e3:8.2f} ms   "
              f"{out['mpiml_over_read_pass']:.2f}x the read pass, "
              f"{out['mpiml_samples_per_s'] / 1e6:.1f} M samples/s")
    report(c, f"scikit-learn one epoch     {out['sklearn_epoch_s'] * 1e3:8.2f} ms   "
              f"mpiml is {out['speedup_over_sklearn']:.1f}x faster")
    return out


# --------------------------------------------------------------------- scaling
def _estimator(name, batch, epochs, sub, stats):
    from mpiml import MLPClassifier, SGDClassifier

    kw, *_ = MODELS[name]
    common = dict(batch_size=batch, max_iter=epochs, tol=None, random_state=0, comm=sub,
                  stats=stats)
    if name == "mlp":
        return MLPClassifier(learning_rate_init=0.05, **kw, **common)
    return SGDClassifier(learning_rate="constant", eta0=0.05, **kw, **common)


def _one_run(c, sub, name, path, batch, epochs, tmp):
    """Train on the first ``sub.size`` ranks; return rank 0's figures.

    ``stats=`` makes every step's collective timed (mpiml.parallel.sync.CommCounters),
    so rank 0's epoch splits exactly into compute (epoch minus its time in the
    collective), communication (the least time any rank spent in it) and waiting (the
    rest: rank 0 waiting in the collective for slower ranks)."""
    from mpiml import load_hdf5

    stats = os.path.join(tmp, f"stats-{name}-{sub.size}-{batch}.jsonl")
    t0 = MPI.Wtime()
    X, y = load_hdf5(path, comm=sub)
    io = sub.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    est = _estimator(name, batch, epochs, sub, stats).fit(X, y)
    n = sub.allreduce(X.shape[0])
    steps = -(-n // batch)
    res = None
    if sub.rank == 0:
        with open(stats) as fh:
            logs = [json.loads(line) for line in fh][1:]       # skip the first epoch
        os.unlink(stats)
        epoch = float(np.median([r["seconds"] for r in logs]))
        parts = {"compute": [], "communication": [], "waiting": []}
        for r in logs:
            comm = r["comm_seconds_per_rank"]
            parts["compute"].append(r["seconds"] - comm[0])
            parts["communication"].append(min(comm))
            parts["waiting"].append(comm[0] - min(comm))
        split = {k: float(np.median(v)) for k, v in parts.items()}
        res = {"model": name, "ranks": sub.size, "rows": n, "batch": batch,
               "local_batch": batch / sub.size, "steps": steps, "epoch_s": epoch,
               "step_s": epoch / steps, "samples_per_s": n / epoch, "read_s": io,
               "split_s_per_epoch": split, "loss": float(est.loss_curve_[-1])}
    return res


def bench_scaling(c, rows, epochs, tmp, models):
    from mpiml.datasets import make_data

    results = []
    for name in models:
        _, d, classes, gbatch, lbatch, task = MODELS[name]
        files = {}
        for p in range(1, c.size + 1):
            for n in (rows, rows // c.size * p):
                if n not in files:
                    files[n] = os.path.join(tmp, f"{name}-{n}.h5")
                    kw = {"classes": classes} if task == "multiclass" else {}
                    make_data(task, n, d, files[n], seed=1, dtype="float32", comm=c, **kw)
        for p in range(1, c.size + 1):
            sub = c.mpi.Split(0 if c.rank < p else MPI.UNDEFINED, c.rank)
            for kind, n, batch in (("strong", rows, gbatch), ("weak", rows // c.size * p,
                                                              lbatch * p)):
                res = None
                if sub != MPI.COMM_NULL:
                    res = _one_run(c, Comm(sub, dup=False), name, files[n], batch, epochs, tmp)
                    sub.Barrier()
                idle_wait(c)
                res = c.bcast(res)
                res["kind"] = kind
                results.append(res)
            if sub != MPI.COMM_NULL:
                sub.Free()
    for r in results:
        base = next(b for b in results if b["model"] == r["model"] and b["kind"] == r["kind"]
                    and b["ranks"] == 1)
        if r["kind"] == "strong":
            r["efficiency"] = base["epoch_s"] / (r["ranks"] * r["epoch_s"])
        else:
            r["efficiency"] = base["epoch_s"] / r["epoch_s"]
        r["speedup_samples_per_s"] = r["samples_per_s"] / base["samples_per_s"]
    report(c, f"\n# Scaling of fit, {epochs} epochs (median epoch after the first); rank 0's "
              f"epoch split into compute, communication and waiting; read = HDF5 load")
    report(c, f"{'model':<9}{'kind':<7}{'ranks':>5}{'rows':>9}{'batch':>6}{'epoch':>10}"
              f"{'M samples/s':>12}{'speedup':>8}{'effic.':>7}{'compute':>9}{'comm':>8}"
              f"{'wait':>8}{'read':>8}")
    for r in results:
        s = r["split_s_per_epoch"]
        report(c, f"{r['model']:<9}{r['kind']:<7}{r['ranks']:>5}{r['rows']:>9}{r['batch']:>6}"
                  f"{r['epoch_s'] * 1e3:>8.1f}ms{r['samples_per_s'] / 1e6:>12.2f}"
                  f"{r['speedup_samples_per_s']:>7.2f}x{r['efficiency'] * 100:>6.0f}%"
                  f"{s['compute'] * 1e3:>7.1f}ms{s['communication'] * 1e3:>6.1f}ms"
                  f"{s['waiting'] * 1e3:>6.1f}ms{r['read_s'] * 1e3:>6.0f}ms")
    return results


# ----------------------------------------------------------------------- model
def bench_model(c, allreduce, scaling, ranks=(16, 64, 256, 1024, 4096)):
    if not allreduce or not allreduce.get("fit"):
        report(c, "\n# Model: needs the allreduce part on 2+ ranks for alpha and beta; skipped")
        return None
    alpha, bw = allreduce["fit"]["alpha_s"], allreduce["fit"]["bandwidth_Bps"]
    checks, compute, projections = [], {}, {}
    for name in MODELS:
        runs = [r for r in scaling if r["model"] == name]
        if not runs:
            continue
        _, d, classes, _, lbatch, _ = MODELS[name]
        hidden = MODELS[name][0].get("hidden_layer_sizes", ())
        grad, weights = pm.model_bytes(name, d, classes, hidden, "float32")
        ones = [(r["batch"], r["step_s"]) for r in runs if r["ranks"] == 1]
        c0, rate = pm.fit_compute(ones)
        compute[name] = {"step_overhead_s": c0, "rate_samples_per_s": rate,
                         "gradient_bytes": grad, "fitted_on": ones}
        for r in runs:
            if r["ranks"] == 1:
                continue
            local = r["batch"] / r["ranks"]
            pred = c0 + local / rate + pm.allreduce_time(grad, r["ranks"], alpha, bw)
            checks.append({"model": name, "kind": r["kind"], "ranks": r["ranks"],
                           "measured_step_s": r["step_s"], "predicted_step_s": pred,
                           "error": pred / r["step_s"] - 1})
        projections[name] = {
            net: pm.predict(ranks, c0=c0, rate=rate, batch=lbatch, grad_bytes=grad,
                            weight_bytes=weights, alpha=a, bandwidth=b)
            for net, (a, b) in {"fitted (this machine)": (alpha, bw),
                                **{k: v[:2] for k, v in pm.INTERCONNECTS.items()
                                   if k in ("ethernet-10g", "infiniband-hdr")}}.items()}
    report(c, f"\n# alpha-beta model: alpha {alpha * 1e6:.2f} us, bandwidth {bw / 1e9:.2f} GB/s "
              f"(fitted on the Allreduce only), compute fitted on 1-rank steps only")
    report(c, f"{'model':<9}{'kind':<7}{'ranks':>5}{'measured':>11}{'predicted':>11}{'error':>8}")
    for r in checks:
        report(c, f"{r['model']:<9}{r['kind']:<7}{r['ranks']:>5}"
                  f"{r['measured_step_s'] * 1e6:>9.1f}us{r['predicted_step_s'] * 1e6:>9.1f}us"
                  f"{r['error'] * 100:>+7.1f}%")
    if checks:
        errs = np.abs([r["error"] for r in checks])
        report(c, f"mean |error| {errs.mean() * 100:.1f}%, max {errs.max() * 100:.1f}% over "
                  f"{len(checks)} measured points")
    report(c, "projected weak-scaling efficiency (batch 256 per rank):")
    for name, nets in projections.items():
        for net, rows in nets.items():
            report(c, f"  {name:<9}{net:<24}" + "  ".join(
                f"{r['ranks']}: {r['efficiency'] * 100:.0f}%" for r in rows))
    return {"alpha_s": alpha, "bandwidth_Bps": bw, "fit": allreduce["fit"], "compute": compute,
            "checks": checks, "projections": projections}


# ----------------------------------------------------------------------- plots
def plots(out, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ar = results.get("allreduce")
    if ar:
        fig, ax = plt.subplots(figsize=(6, 4))
        b = [r["bytes"] for r in ar["rows"]]
        ax.loglog(b, [r["raw_s"] * 1e6 for r in ar["rows"]], "o-", label="raw mpi4py")
        ax.loglog(b, [r["mpiml_s"] * 1e6 for r in ar["rows"]], "s--", label="mpiml.comm")
        if ar["fit"]:
            f = ar["fit"]
            ax.loglog(b, [pm.allreduce_time(n, f["ranks"], f["alpha_s"], f["bandwidth_Bps"]) * 1e6
                          for n in b], ":", label="alpha-beta fit")
        ax.set(xlabel="message bytes", ylabel="time (us)",
               title=f"Allreduce, {ar['rows'][0]['ranks']} ranks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "allreduce.png"), dpi=110)
        plt.close(fig)
    sc = results.get("scaling")
    if sc:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, kind in zip(axes, ("strong", "weak")):
            for name in MODELS:
                rows = [r for r in sc if r["model"] == name and r["kind"] == kind]
                if rows:
                    ax.plot([r["ranks"] for r in rows], [r["speedup_samples_per_s"] for r in rows],
                            "o-", label=name)
            p = max(r["ranks"] for r in sc)
            ax.plot([1, p], [1, p], "k:", label="ideal")
            ax.set(xlabel="ranks", ylabel="samples/s relative to 1 rank", title=f"{kind} scaling")
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
        plt.close(fig)
    mo = results.get("model")
    if mo:
        fig, ax = plt.subplots(figsize=(9, 4))
        for name, nets in mo["projections"].items():
            for net, rows in nets.items():
                ax.semilogx([r["ranks"] for r in rows], [r["efficiency"] * 100 for r in rows],
                            "o-", label=f"{name}, {net}")
        ax.set(xlabel="ranks", ylabel="weak-scaling efficiency (%)", ylim=(0, 105),
               title="alpha-beta projection, batch 256 per rank")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(os.path.join(out, "model.png"), dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="quick")
    ap.add_argument("--out", default="results")
    ap.add_argument("--parts", default="allreduce,kernel,scaling,model")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    c = get_comm()
    cfg = SUITES[args.suite]
    parts = args.parts.split(",")
    unknown = set(parts) - {"allreduce", "kernel", "scaling", "model"}
    if unknown:
        if c.rank == 0:
            print(f"unknown part(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    tmp = c.bcast(tempfile.mkdtemp(prefix="mpiml-bench-") if c.rank == 0 else None)
    meta = {"suite": args.suite, "ranks": c.size, "machine": machine(),
            "mpi": MPI.Get_library_version().splitlines()[0], "date": time.strftime("%F %T")}
    report(c, f"mpiml benchmarks, suite {args.suite}, {c.size} rank(s), {meta['machine']}")
    results = {}
    try:
        if "allreduce" in parts or "model" in parts:
            results["allreduce"] = bench_allreduce(c, cfg["sizes"], cfg["blocks"])
        if "kernel" in parts:
            results["kernel"] = bench_kernel(c, cfg["kernel_rows"])
        if "scaling" in parts or "model" in parts:
            results["scaling"] = bench_scaling(c, cfg["rows"], cfg["epochs"], tmp,
                                               args.models.split(","))
        if "model" in parts:
            results["model"] = bench_model(c, results["allreduce"], results["scaling"])
    finally:
        # no collective here: after an exception on one rank it would hang (mpi4py's -m
        # form turns the exception into an abort)
        if c.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
    if c.rank == 0:
        for name, res in results.items():
            if res is not None:
                with open(os.path.join(args.out, f"{name}.json"), "w") as fh:
                    json.dump({"meta": meta, **({"rows": res} if isinstance(res, list) else res)},
                              fh, indent=1)
        plots(args.out, results)
        print(f"\nwrote {', '.join(sorted(results))} (.json, .png) to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
