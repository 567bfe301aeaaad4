"""MLP training throughput: mpiml against PyTorch on the same data and architecture.

    mpiexec -n 2 python benchmarks/bench_mlp.py [--features 1000 --hidden 1024,1024]

Needs PyTorch (the ``bench`` extra: ``pip install ".[bench]"``). Architecture
d=1000 -> 1024 -> 1024 -> 10 (ReLU, softmax cross-entropy), minibatch SGD with
momentum, global batch 256, float32, one BLAS/OpenMP thread per rank.

Part 1 runs on rank 0 alone (the other ranks wait without polling): one epoch of
``mpiml.MLPClassifier`` against one epoch of a ``torch.nn.Sequential`` with
``torch.set_num_threads(1)`` over the same rows. Part 2 runs on all ranks: mpiml
data-parallel (one packed Allreduce per step), mpiml tensor-parallel
(``model_parallel=size``) and PyTorch ``DistributedDataParallel`` (gloo, CPU) at
the same global batch. OSU style: warm-up, Barrier, ``MPI.Wtime``, median of the
repetitions, rank 0 reports ratios against PyTorch measured in the same run.
Writes JSON (default benchmarks/results/bench_mlp.json).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from mpiml import MLPClassifier, chunk, get_comm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sgd import idle_wait, machine  # noqa: E402


def data(n, d, classes, seed=0):
    """A learnable problem: labels from a random 2-layer teacher network."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    H = np.maximum(X @ rng.normal(size=(d, 64)).astype(np.float32) / np.sqrt(d), 0)
    y = np.argmax(H @ rng.normal(size=(64, classes)), axis=1)
    return X, y


def mpiml_epoch(X, y, hidden, batch, lr, comm, model_parallel=1, reps=3):
    """Median seconds of one epoch (max over ranks) of mpiml's MLP."""
    kw = dict(hidden_layer_sizes=hidden, solver="sgd", learning_rate_init=lr, momentum=0.9,
              nesterovs_momentum=False,
              batch_size=batch, max_iter=1, tol=None, random_state=0, alpha=0.0,
              dtype="float32", model_parallel=model_parallel, comm=comm, comm_timeout=None)
    MLPClassifier(**kw).fit(X[:batch * 4], y[:batch * 4])          # warm-up
    times, est = [], None
    for _ in range(reps):
        comm.Barrier()
        est = MLPClassifier(**kw).fit(X, y)
        times.append(comm.allreduce(est.epoch_times_[-1], op=MPI.MAX))
    return float(np.median(times)), float(est.loss_curve_[-1])


def torch_model(d, hidden, classes, seed=0):
    import torch
    torch.manual_seed(seed)
    layers, n_in = [], d
    for h in hidden:
        layers += [torch.nn.Linear(n_in, h), torch.nn.ReLU()]
        n_in = h
    layers.append(torch.nn.Linear(n_in, classes))
    return torch.nn.Sequential(*layers)


def torch_epoch(X, y, hidden, classes, batch, lr, ddp_comm=None, reps=3):
    """Median seconds of one epoch of PyTorch (DDP over gloo when ``ddp_comm``)."""
    import torch
    torch.set_num_threads(1)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = torch_model(X.shape[1], hidden, classes)
    if ddp_comm is not None:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = X.shape[0]

    def epoch(limit=None):
        last = None
        for s in range(0, n if limit is None else min(n, limit), batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[s:s + batch]), yt[s:s + batch])
            loss.backward()
            opt.step()
            last = loss
        return float(last.detach())

    epoch(batch * 4)                                                 # warm-up
    times, loss = [], None
    for _ in range(reps):
        if ddp_comm is not None:
            ddp_comm.Barrier()
        t0 = MPI.Wtime()
        loss = epoch()
        t = MPI.Wtime() - t0
        times.append(ddp_comm.allreduce(t, op=MPI.MAX) if ddp_comm is not None else t)
    return float(np.median(times)), loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256 * 40)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--hidden", default="1024,1024")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_mlp.json"))
    args = ap.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    comm = get_comm()
    world = comm.mpi
    X, y = data(args.rows, args.features, args.classes)
    result = {"benchmark": "bench_mlp", "ranks": comm.size, "rows": args.rows,
              "architecture": [args.features, *hidden, args.classes], "batch": args.batch,
              "dtype": "float32", "machine": machine()}
    import torch
    result["torch"] = torch.__version__

    # part 1: one rank
    if comm.rank == 0:
        t_m, l_m = mpiml_epoch(X, y, hidden, args.batch, args.lr, MPI.COMM_SELF, reps=args.reps)
        t_t, l_t = torch_epoch(X, y, hidden, args.classes, args.batch, args.lr, reps=args.reps)
        result["one_rank"] = {"mpiml_seconds": t_m, "torch_seconds": t_t,
                              "mpiml_samples_per_s": args.rows / t_m,
                              "torch_samples_per_s": args.rows / t_t,
                              "ratio_mpiml_to_torch": t_t / t_m,
                              "final_batch_loss": {"mpiml_epoch_mean": l_m, "torch_last": l_t}}
    idle_wait(comm)

    # part 2: all ranks, the same global batch
    if comm.size > 1:
        import torch.distributed as dist
        port = comm.bcast(29500 + os.getpid() % 1000)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=comm.rank, world_size=comm.size)
        lo, hi = chunk(args.rows, comm.size, comm.rank)
        t_dp, _ = mpiml_epoch(X[lo:hi], y[lo:hi], hidden, args.batch, args.lr, world,
                              reps=args.reps)
        t_tp, _ = mpiml_epoch(X, y, hidden, args.batch, args.lr, world,
                              model_parallel=comm.size, reps=args.reps)
        # DDP: each rank takes its share of every global batch
        per = args.batch // comm.size
        idx = np.concatenate([np.arange(s + comm.rank * per, min(s + (comm.rank + 1) * per,
                                                                   args.rows))
                              for s in range(0, args.rows, args.batch)])
        t_ddp, _ = torch_epoch(X[idx], y[idx], hidden, args.classes, per, args.lr,
                               ddp_comm=world, reps=args.reps)
        dist.destroy_process_group()
        result["all_ranks"] = {"mpiml_data_parallel_seconds": t_dp,
                               "mpiml_tensor_parallel_seconds": t_tp,
                               "torch_ddp_seconds": t_ddp,
                               "mpiml_data_parallel_samples_per_s": args.rows / t_dp,
                               "mpiml_tensor_parallel_samples_per_s": args.rows / t_tp,
                               "torch_ddp_samples_per_s": args.rows / t_ddp,
                               "ratio_mpiml_dp_to_ddp": t_ddp / t_dp,
                               "ratio_mpiml_tp_to_ddp": t_ddp / t_tp}
    if comm.rank == 0:
        o = result["one_rank"]
        print(f"MLP {result['architecture']}, batch {args.batch}, {args.rows} rows, float32, "
              f"torch {torch.__version__}")
        print(f"{'':38}{'epoch s':>9}{'samples/s':>12}{'vs torch':>10}")
        print(f"{'1 rank  PyTorch (1 thread)':38}{o['torch_seconds']:>9.3f}"
              f"{o['torch_samples_per_s']:>12.0f}{1.0:>10.2f}")
        print(f"{'1 rank  mpiml':38}{o['mpiml_seconds']:>9.3f}"
              f"{o['mpiml_samples_per_s']:>12.0f}{o['ratio_mpiml_to_torch']:>10.2f}")
        if "all_ranks" in result:
            a = result["all_ranks"]
            n = comm.size
            print(f"{f'{n} ranks PyTorch DDP (gloo)':38}{a['torch_ddp_seconds']:>9.3f}"
                  f"{a['torch_ddp_samples_per_s']:>12.0f}{1.0:>10.2f}")
            print(f"{f'{n} ranks mpiml data-parallel':38}{a['mpiml_data_parallel_seconds']:>9.3f}"
                  f"{a['mpiml_data_parallel_samples_per_s']:>12.0f}{a['ratio_mpiml_dp_to_ddp']:>10.2f}")
            print(f"{f'{n} ranks mpiml tensor-parallel':38}"
                  f"{a['mpiml_tensor_parallel_seconds']:>9.3f}"
                  f"{a['mpiml_tensor_parallel_samples_per_s']:>12.0f}"
                  f"{a['ratio_mpiml_tp_to_ddp']:>10.2f}")
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
