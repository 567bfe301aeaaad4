"""Logistic regression side by side: mpiml against PyTorch DistributedDataParallel
(gloo, CPU) on the same HDF5 file, model, batch, learning rate and epochs.

    mpiexec -n 1 python benchmarks/bench_peers.py      # then
    mpiexec -n 2 python benchmarks/bench_peers.py
    # options (defaults): --rows 200000 --features 1000 --epochs 5 --reps 3 --lr 0.05 --target 0.962

Needs PyTorch (the ``bench`` extra, or ``pip install torch==2.13.0``: the CPU wheel;
gloo is built in). The data are made on first use with ``mpiml make-data --task
binary --seed 1`` (train file and a 10 % held-out file, under /tmp, not in the repo).

What runs, on every rank, ``--reps`` times in alternation (mpiml, then PyTorch):

* each framework reads its own rows of the same file: rank r a contiguous slice
  (``mpiml.chunk``), mpiml through ``mpiml.load_hdf5``, PyTorch through h5py into
  ``torch.from_numpy``. The reads are timed and reported but are *not* part of the
  training figures below;
* the same model, ``sigmoid(X w + b)`` with log loss, weights starting at zero, no
  penalty, no momentum, constant learning rate ``--lr``, ``--batch`` rows per rank per
  step (global batch ``batch * ranks``), gradient averaged over the global batch;
  mpiml: ``SGDClassifier(penalty=None, learning_rate="constant")``, one packed
  ``MPI_Allreduce`` per step; PyTorch: ``nn.Linear(d, 1)`` in
  ``DistributedDataParallel`` (gloo over 127.0.0.1, rank and size from mpi4py),
  ``BCEWithLogitsLoss``, ``optim.SGD``, batches taken as contiguous slices of the
  rank's rows in a shuffled order each epoch;
* ``--epochs`` epochs; after each, the held-out accuracy over all ranks' test rows.

Reported (rank 0; median over the repetitions, ratios against PyTorch DDP measured in
the same run): samples/s = global rows / median epoch time of the step loop only
(mpiml's ``epoch_times_``, PyTorch's loop around its steps; max over ranks), and
time-to-accuracy = wall time from the start of training (mpiml: ``fit`` with its input
checks and one reordered copy of the rows; PyTorch: building the model and the DDP
wrapper) to the end of the first epoch whose held-out accuracy is >= ``--target``,
including the per-epoch held-out evaluation in both (small: see ``eval_seconds`` in
the JSON). The part of it before the first step is reported as ``setup``: for mpiml
mostly the one reordered copy of the rank's rows that ``fit`` makes. mpiml runs twice
per repetition: as ``fit(X, y)`` (that copy) and as ``fit(X, y, copy_X=False)`` on a
fresh copy of the rows made before the clock starts (rows reordered in place, the way
``mpiml train`` fits the rows it read). At 1 rank plain
PyTorch without DDP is measured too. A microbenchmark of one allreduce of the model's
gradient (1,001 float32) in gloo and in MPI closes the run. One BLAS/OpenMP/torch
thread per rank. Results are appended, per rank count, to
``--json`` (default benchmarks/results/bench_peers.json).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")     # all ranks on this host

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import SGDClassifier, chunk, get_comm, load_hdf5  # noqa: E402
from mpiml.datasets import make_data  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import machine  # noqa: E402


def held_out_accuracy(comm, Xv, yv, w, b):
    """Global accuracy of ``X w + b > 0`` over every rank's held-out rows (collective)."""
    pred = (Xv @ w.astype(Xv.dtype) + b) > 0
    tot = comm.allreduce(np.array([float(np.sum(pred == (yv > 0.5))), float(len(yv))]))
    return float(tot[0] / tot[1])


def first_reaching(curve, target):
    """Index of the first epoch whose accuracy is >= target, or None."""
    return next((i for i, a in enumerate(curve) if a >= target), None)


# --------------------------------------------------------------------------- mpiml
def run_mpiml(comm, X, y, Xv, yv, args, rep, copy_X=True):
    """One training run of mpiml: per-epoch step times, wall clock and accuracy.
    ``copy_X=False``: the fit reorders X in place, as ``mpiml train`` fits."""
    world = comm.mpi
    clocks, acc = [], []

    class Clock:
        # the held-out accuracy comes from fit(validation=...); this only reads the
        # clock after it, the same point where the PyTorch loop reads its clock
        def on_epoch_end(self, est, logs):
            acc.append(logs["val_accuracy"])
            clocks.append(MPI.Wtime() - t0)
            return False

    clf = SGDClassifier(penalty=None, alpha=0.0, learning_rate="constant", eta0=args.lr,
                        momentum=0.0, batch_size=args.batch * comm.size, max_iter=args.epochs,
                        tol=None, random_state=rep, comm=world, comm_timeout=None)
    world.Barrier()
    t0 = MPI.Wtime()
    clf.fit(X, y, validation=(Xv, yv), callbacks=[Clock()], copy_X=copy_X)
    step_times = [world.allreduce(t, op=MPI.MAX) for t in clf.epoch_times_]
    t_eval0 = MPI.Wtime()
    check = clf.score(Xv, yv)
    t_eval = MPI.Wtime() - t_eval0
    assert abs(check - acc[-1]) < 1e-12, (check, acc[-1])
    return {"epoch_step_s": step_times, "wall_at_epoch_end_s": clocks,
            "held_out_accuracy": acc, "eval_seconds": t_eval}


# --------------------------------------------------------------------------- PyTorch
def run_torch(comm, Xt, yt, Xv, yv, args, rep, ddp):
    """One training run of PyTorch (DDP over gloo when ``ddp``), same shape of record."""
    import torch
    world = comm.mpi
    n_local = Xt.shape[0]
    steps = world.allreduce(math.ceil(n_local / args.batch), op=MPI.MIN) if ddp else \
        math.ceil(n_local / args.batch)
    starts = [s * args.batch for s in range(steps)]
    ends = starts[1:] + [n_local]              # the last step takes the remainder
    rng = np.random.default_rng([rep, comm.rank])
    clocks, acc, step_times = [], [], []
    world.Barrier()
    t0 = MPI.Wtime()
    torch.manual_seed(rep)
    model = torch.nn.Linear(Xt.shape[1], 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(args.epochs):
        order = rng.permutation(steps)
        ts = MPI.Wtime()
        for i in order:
            lo, hi = starts[i], ends[i]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(Xt[lo:hi]).squeeze(1), yt[lo:hi])
            loss.backward()
            opt.step()
        step_times.append(MPI.Wtime() - ts)
        w = model.weight.detach().numpy().ravel()
        b = float(model.bias.detach()[0])
        acc.append(held_out_accuracy(world, Xv, yv, w, b))
        clocks.append(MPI.Wtime() - t0)
    step_times = [world.allreduce(t, op=MPI.MAX) for t in step_times]
    t_eval0 = MPI.Wtime()
    held_out_accuracy(world, Xv, yv, w, b)
    t_eval = MPI.Wtime() - t_eval0
    return {"epoch_step_s": step_times, "wall_at_epoch_end_s": clocks,
            "held_out_accuracy": acc, "eval_seconds": t_eval, "steps_per_epoch": steps}


def allreduce_micro(comm, n_floats, calls):
    """Median seconds of one allreduce of ``n_floats`` float32: gloo, then MPI."""
    import torch
    import torch.distributed as dist
    world = comm.mpi
    t = torch.ones(n_floats)
    a = np.ones(n_floats, dtype=np.float32)
    out = {}
    for name, fn in (("gloo", lambda: dist.all_reduce(t)),
                     ("mpi", lambda: world.Allreduce(MPI.IN_PLACE, a))):
        for _ in range(50):
            fn()
        times = np.empty(calls)
        world.Barrier()
        for i in range(calls):
            t0 = time.perf_counter()
            fn()
            times[i] = time.perf_counter() - t0
        out[name] = float(world.allreduce(float(np.median(times)), op=MPI.MAX))
    return out


def summarise(runs, rows, target):
    """Medians over repetitions of one framework's runs."""
    sps = [rows / float(np.median(r["epoch_step_s"])) for r in runs]
    tta, ep = [], []
    for r in runs:
        i = first_reaching(r["held_out_accuracy"], target)
        tta.append(r["wall_at_epoch_end_s"][i] if i is not None else math.inf)
        ep.append(i + 1 if i is not None else None)
    med = float(np.median(tta))     # None (JSON null) when most repetitions missed the target
    # what comes before the first step: mpiml's fit checks and reordered copy of the rows,
    # PyTorch's model and DDP construction (plus, in both, the first held-out evaluation)
    setup = [r["wall_at_epoch_end_s"][0] - r["epoch_step_s"][0] for r in runs]
    after = float(np.median([t - u for t, u in zip(tta, setup)]))
    return {"samples_per_s": float(np.median(sps)), "samples_per_s_each_rep": sps,
            "epoch_s": float(np.median([np.median(r["epoch_step_s"]) for r in runs])),
            "time_to_target_s": med if math.isfinite(med) else None,
            "time_to_target_each_rep": [t if math.isfinite(t) else None for t in tta],
            "epochs_to_target_each_rep": ep,
            "setup_s": float(np.median(setup)), "setup_s_each_rep": setup,
            "time_to_target_after_setup_s": after if math.isfinite(after) else None,
            "final_accuracy": float(np.median([r["held_out_accuracy"][-1] for r in runs])),
            "eval_seconds": float(np.median([r["eval_seconds"] for r in runs]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="rows per rank per step")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", type=float, default=0.962,
                    help="held-out accuracy for time-to-accuracy (the data's best is 0.98)")
    ap.add_argument("--data", default=None, help="default /tmp/mpiml-peers-binary-<rows>x<features>.h5")
    ap.add_argument("--micro-calls", type=int, default=2000)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "results", "bench_peers.json"))
    args = ap.parse_args()
    comm = get_comm()
    world = comm.mpi
    data = args.data or f"/tmp/mpiml-peers-binary-{args.rows}x{args.features}.h5"
    test = data[:-3] + "-test.h5"
    if not (os.path.exists(data) and os.path.exists(test)):
        comm.print0(f"writing {data} and {test}")
        make_data("binary", args.rows, args.features, data, seed=1, test_out=test,
                  test_rows=max(args.rows // 10, 1), comm=comm)

    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    # loading, each framework its own way; timed but kept out of the training figures
    world.Barrier()
    t = MPI.Wtime()
    X, y = load_hdf5(data, comm=comm)
    Xv, yv = load_hdf5(test, comm=comm)
    load_mpiml = world.allreduce(MPI.Wtime() - t, op=MPI.MAX)
    world.Barrier()
    t = MPI.Wtime()
    with h5py.File(data, "r") as f:
        lo, hi = chunk(f["X"].shape[0], comm.size, comm.rank)
        Xt = torch.from_numpy(f["X"][lo:hi])
        yt = torch.from_numpy(f["y"][lo:hi].astype(np.float32))
    load_torch = world.allreduce(MPI.Wtime() - t, op=MPI.MAX)

    port = None
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = world.bcast(port)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=comm.rank, world_size=comm.size)
    # warm-up of both code paths on a few batches (not recorded)
    warm = argparse.Namespace(**{**vars(args), "epochs": 1})
    nw = args.batch * 8
    run_mpiml(comm, X[:nw], y[:nw], Xv, yv, warm, 0)
    run_torch(comm, Xt[:nw], yt[:nw], Xv, yv, warm, 0, ddp=True)

    runs = {"mpiml": [], "mpiml_in_place": [], "torch_ddp": [], "torch_plain": []}
    for rep in range(args.reps):
        runs["mpiml"].append(run_mpiml(comm, X, y, Xv, yv, args, rep))
        # the rows as mpiml train has them: just read, the fit's to reorder (copy not timed)
        Xc = X.copy()
        runs["mpiml_in_place"].append(run_mpiml(comm, Xc, y, Xv, yv, args, rep, copy_X=False))
        del Xc
        runs["torch_ddp"].append(run_torch(comm, Xt, yt, Xv, yv, args, rep, ddp=True))
        if comm.size == 1:
            runs["torch_plain"].append(run_torch(comm, Xt, yt, Xv, yv, args, rep, ddp=False))
        if comm.rank == 0:
            m, d = runs["mpiml"][-1], runs["torch_ddp"][-1]
            print(f"rep {rep}: epoch s mpiml {np.median(m['epoch_step_s']):.3f} "
                  f"DDP {np.median(d['epoch_step_s']):.3f}; held-out accuracy by epoch "
                  f"mpiml {[round(a, 4) for a in m['held_out_accuracy']]} "
                  f"DDP {[round(a, 4) for a in d['held_out_accuracy']]}", flush=True)
    micro = allreduce_micro(comm, args.features + 1, args.micro_calls) if comm.size > 1 else None
    dist.destroy_process_group()

    n_rows = world.allreduce(X.shape[0])
    summary = {k: summarise(v, n_rows, args.target) for k, v in runs.items() if v}
    base = summary["torch_ddp"]
    for s in summary.values():
        s["samples_per_s_vs_ddp"] = s["samples_per_s"] / base["samples_per_s"]
        s["time_to_target_ddp_over_this"] = (
            base["time_to_target_s"] / s["time_to_target_s"]
            if base["time_to_target_s"] and s["time_to_target_s"] else None)
    result = {"ranks": comm.size, "rows": n_rows, "features": X.shape[1],
              "batch_per_rank": args.batch, "global_batch": args.batch * comm.size,
              "lr": args.lr, "epochs": args.epochs, "reps": args.reps, "target": args.target,
              "data": data, "load_seconds": {"mpiml": load_mpiml, "torch_h5py": load_torch},
              "allreduce_1001_float32_s": micro, "summary": summary, "runs": runs,
              "torch": torch.__version__, "machine": machine(),
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": os.getloadavg()}
    if comm.rank == 0:
        print(f"\nlogistic regression, {n_rows} x {X.shape[1]} float32, {comm.size} rank(s), "
              f"batch {args.batch}/rank, lr {args.lr}, {args.epochs} epochs, median of "
              f"{args.reps}; torch {torch.__version__}")
        print(f"read (not in the figures): mpiml load_hdf5 {load_mpiml:.2f} s, "
              f"h5py for torch {load_torch:.2f} s")
        print(f"{'':28}{'epoch s':>9}{'M samples/s':>13}{'vs DDP':>8}"
              f"{f'time to {args.target:g} s':>18}{'vs DDP':>8}{'epochs':>8}{'setup s':>9}"
              f"{'after setup':>12}"
              f"{'final acc':>11}")
        names = {"torch_ddp": "PyTorch DDP (gloo)", "torch_plain": "PyTorch, no DDP",
                 "mpiml": "mpiml SGDClassifier", "mpiml_in_place": "mpiml, copy_X=False"}
        for k in ("torch_ddp", "torch_plain", "mpiml", "mpiml_in_place"):
            if k not in summary:
                continue
            s = summary[k]
            ep = s["epochs_to_target_each_rep"]
            tta, r = s["time_to_target_s"], s["time_to_target_ddp_over_this"]
            a = s["time_to_target_after_setup_s"]
            print(f"{names[k]:28}{s['epoch_s']:>9.3f}{s['samples_per_s'] / 1e6:>13.3f}"
                  f"{s['samples_per_s_vs_ddp']:>8.2f}"
                  f"{'not reached' if tta is None else f'{tta:.3f}':>18}"
                  f"{'-' if r is None else f'{r:.2f}':>8}"
                  f"{'/'.join('-' if e is None else str(e) for e in ep):>8}{s['setup_s']:>9.3f}"
                  f"{'-' if a is None else f'{a:.3f}':>12}"
                  f"{s['final_accuracy']:>11.4f}")
        if micro:
            print(f"one allreduce of {args.features + 1} float32: gloo {micro['gloo'] * 1e6:.1f} us, "
                  f"MPI {micro['mpi'] * 1e6:.1f} us ({micro['gloo'] / micro['mpi']:.0f}x)")
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
