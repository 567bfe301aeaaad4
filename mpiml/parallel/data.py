"""Synchronous data-parallel SGD.

The schedule of an epoch depends only on the global row count, the global batch
size, the seed and the epoch number, never on the number of ranks: the global
rows are cut into consecutive blocks of ``batch_size`` rows, the blocks are
visited in a ``(seed, epoch)`` permutation, and each rank processes the rows of
each block that live in its shard (possibly none). So every rank makes the same
number of collective calls, and the sequence of updates is the same on 1, 2 or
64 ranks up to floating-point summation order.

One step = ``Engine.grad`` on the local rows, one Allreduce of the packed buffer
(gradient sum, loss sum, sample count), ``Engine.apply`` on every rank.
"""
import time

import numpy as np
from mpi4py import MPI

__all__ = ["epoch_blocks", "local_ranges", "run_epoch", "EpochStats"]


def epoch_blocks(n_global, batch_size, seed, epoch):
    """Start and stop global row of each step of an epoch, in visiting order."""
    n_blocks = -(-n_global // batch_size)
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n_blocks)
    starts = order.astype(np.int64) * batch_size
    return starts, np.minimum(starts + batch_size, n_global)


def local_ranges(starts, stops, offset, n_local):
    """The part of each global block in the local shard ``[offset, offset + n_local)``,
    as local row ranges (empty ranges where the block misses the shard)."""
    lo = np.clip(starts - offset, 0, n_local).astype(np.intp)
    hi = np.clip(stops - offset, 0, n_local).astype(np.intp)
    return lo, np.maximum(hi, lo)


class EpochStats:
    """Timing of one epoch on this rank (seconds)."""
    __slots__ = ("steps", "seconds", "loss", "count")

    def __init__(self, steps, seconds, loss, count):
        self.steps, self.seconds, self.loss, self.count = steps, seconds, loss, count


def run_epoch(engine, comm, lo, hi):
    """Run the steps of one epoch. Collective over ``comm`` (an mpiml Comm).

    On one rank the whole epoch runs inside the kernel (the reduction is the
    identity); otherwise each step is grad, one in-place Allreduce, apply.
    """
    engine.epoch_loss = 0.0
    engine.epoch_count = 0.0
    t0 = time.perf_counter()
    if comm.size == 1:
        engine.run_steps(lo, hi)
    else:
        buf = engine.buf_arr
        allreduce = comm.mpi.Allreduce
        grad, apply = engine.grad, engine.apply
        in_place = MPI.IN_PLACE
        for a, b in zip(lo.tolist(), hi.tolist()):
            grad(a, b)
            allreduce(in_place, buf)
            apply()
    return EpochStats(len(lo), time.perf_counter() - t0, engine.epoch_loss, engine.epoch_count)
