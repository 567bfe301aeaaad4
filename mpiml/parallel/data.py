"""Synchronous data-parallel SGD.

The schedule of an epoch depends only on the global row count ``N``, the global
batch size ``B``, the seed and the epoch number, never on the number of ranks:

* the global rows are cut into fixed-size blocks of ``b = block_rows(B)`` rows;
* an epoch has ``T = ceil(N / B)`` steps; the batch of group ``g`` is the set of
  blocks ``g, g + T, g + 2T, ...``, spread evenly over the whole row range, so
  every rank's contiguous shard holds its fair share of every batch (±1 block)
  whatever the number of ranks;
* the groups are visited in a ``(seed, epoch)`` permutation;
* each rank processes the rows of the current batch that live in its shard.

So every rank makes the same number of collective calls, the work of each step
is balanced, and the sequence of updates is the same on 1, 2 or 64 ranks up to
floating-point summation order. (A batch of *consecutive* rows would live on one
rank and leave the others idle at every step.)

One step = ``Engine.grad_step`` on the local rows, one Allreduce of the packed
buffer (gradient sum, loss sum, sample count), ``Engine.apply`` on every rank.

Memory layout: which blocks form a batch is fixed for a fit (only the visiting
order changes from epoch to epoch), so ``fit`` stores each rank's rows once in
group-major order (:func:`group_layout`); every step then reads one contiguous
range of memory instead of ``B / b`` scattered blocks, which on the machines
measured here was 1.5-2x faster. Within a batch, rows keep their address order,
so the arithmetic is the same as visiting the blocks in place.
"""
import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

from ..errors import MpimlError

__all__ = ["block_rows", "visit_order", "epoch_plan", "group_layout", "layout_plan",
           "run_epoch", "EpochStats", "StepControl", "StopTraining"]


def block_rows(batch_size):
    """Rows per block for a global batch: 1/16 of the batch (so a batch is spread over
    16 places in the data), at most 64 rows (25 KB of 100 float32 features)."""
    return int(max(1, min(batch_size // 16, 64)))


def visit_order(n_steps, seed, epoch):
    """The order in which an epoch visits its ``n_steps`` batch groups: a
    ``(seed, epoch)`` permutation."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_steps)


def _local_blocks(n_global, batch_size, offset, n_local):
    """Steps per epoch, rows per block, and the global blocks touching the local shard."""
    n_steps = max(1, -(-n_global // batch_size))
    b = block_rows(batch_size) if n_steps > 1 else max(1, n_global)
    blocks = np.arange(offset // b, (offset + n_local - 1) // b + 1, dtype=np.int64)
    return n_steps, b, blocks


def epoch_plan(n_global, batch_size, seed, epoch, offset, n_local):
    """Local row ranges of every step of an epoch, rows visited in place.

    Returns ``(lo, hi, ptr)``: step ``s`` (in visiting order) covers the local
    ranges ``lo[ptr[s]:ptr[s+1]]`` .. ``hi[...]`` (adjacent blocks merged). ``fit``
    uses the equivalent :func:`group_layout` + :func:`layout_plan`; this form is the
    reference the tests compare it with.
    """
    n_steps, b, blocks = _local_blocks(n_global, batch_size, offset, n_local)
    if n_local == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(n_steps + 1, np.intp)
    position = np.empty(n_steps, dtype=np.int64)
    position[visit_order(n_steps, seed, epoch)] = np.arange(n_steps)
    step = position[blocks % n_steps]
    idx = np.argsort(step, kind="stable")          # by step, then by address
    blocks, step = blocks[idx], step[idx]
    lo = np.clip(blocks * b - offset, 0, n_local)
    hi = np.clip((blocks + 1) * b - offset, 0, n_local)
    # merge ranges that touch within a step (whole-shard steps become one range)
    if lo.size > 1:
        join = (lo[1:] == hi[:-1]) & (step[1:] == step[:-1])
        if join.any():
            keep = np.concatenate([[True], ~join])
            starts = np.flatnonzero(keep)
            ends = np.concatenate([starts[1:] - 1, [lo.size - 1]])
            lo, hi, step = lo[starts], hi[ends], step[starts]
    ptr = np.zeros(n_steps + 1, dtype=np.intp)
    np.cumsum(np.bincount(step, minlength=n_steps), out=ptr[1:])
    return lo.astype(np.intp), hi.astype(np.intp), ptr


def group_layout(n_global, batch_size, offset, n_local):
    """Local rows reordered so that each batch group is contiguous.

    Returns ``(perm, gptr)``: local row ``perm[i]`` goes to position ``i``; group
    ``g`` occupies ``[gptr[g], gptr[g+1])`` of the reordered rows. ``perm`` is None
    when the rows are already in that order (one step per epoch, or no rows).
    """
    n_steps, b, blocks = _local_blocks(n_global, batch_size, offset, n_local)
    if n_local == 0:
        return None, np.zeros(n_steps + 1, dtype=np.intp)
    group = blocks % n_steps
    idx = np.argsort(group, kind="stable")
    blocks, group = blocks[idx], group[idx]
    lo = np.clip(blocks * b - offset, 0, n_local)
    lens = np.clip((blocks + 1) * b - offset, 0, n_local) - lo
    gptr = np.zeros(n_steps + 1, dtype=np.intp)
    np.cumsum(np.bincount(group, weights=lens, minlength=n_steps).astype(np.intp), out=gptr[1:])
    if n_steps == 1:
        return None, gptr
    starts = np.cumsum(lens) - lens
    perm = np.arange(n_local, dtype=np.intp) + np.repeat(lo - starts, lens)
    return perm, gptr


def layout_plan(gptr, seed, epoch):
    """Epoch plan over rows stored by :func:`group_layout`: one range per step."""
    n_steps = len(gptr) - 1
    order = visit_order(n_steps, seed, epoch)
    return (np.ascontiguousarray(gptr[order]), np.ascontiguousarray(gptr[order + 1]),
            np.arange(n_steps + 1, dtype=np.intp))


class StopTraining(Exception):
    """Raised on every rank at the same step boundary to end a fit early (normally)."""


class EpochStats:
    """Timing of one epoch on this rank (seconds)."""
    __slots__ = ("steps", "seconds", "loss", "count")

    def __init__(self, steps, seconds, loss, count):
        self.steps, self.seconds, self.loss, self.count = steps, seconds, loss, count


def _hook(name):
    value = os.environ.get(name, "")
    return tuple(int(v) for v in value.split(":")) if value else None


class StepControl:
    """Decisions taken at step boundaries, agreed through the step's own Allreduce.

    Four control words travel at the end of the packed buffer: the number of the
    update the step makes (so a rank that skipped or repeated a collective is
    caught at once: the words must add up to ``size * (t + 1)``), a stop request
    (a signal that reached any rank), a checkpoint request (rank 0's clock, for
    time-based checkpoints) and a command request (rank 0 saw a command in the run
    directory, :mod:`mpiml.runctl`). Every rank sees the same sums, so every rank takes the
    same decision at the same step; nothing is decided by one rank alone. The
    kernel writes and checks the words (``Engine.apply_checked``), so a step costs
    one Python branch more than without them.

    ``save(step)`` is called (on every rank) when a checkpoint is due;
    ``on_stop(path)`` when a stop was requested, after the checkpoint;
    ``on_command(engine, step)`` when a command is waiting (it returns whether a
    checkpoint is now wanted).
    """
    WORDS = 4
    CHUNK = 64      # one-rank path: steps run in the kernel between two checks
    TIME_EVERY = 16  # rank 0 looks at its clock every this many steps
    POLL_SECONDS = 0.1  # and at the run directory at most this often

    def __init__(self, comm, every_steps=None, every_seconds=None, save=None, on_stop=None):
        self.comm = comm
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.save = save
        self.on_stop = on_stop
        self.stop_requested = False
        self.last_save = time.monotonic()
        self.engine = None
        self.where = "training"
        self.run = None              # the RunDir when the job has a run directory
        self.on_command = None
        self.next_poll = 0.0
        self.paused = False          # read by the watchdog thread
        self.user_stop = False       # `mpiml ctl DIR stop` / a callback: end the fit normally
        self.timing = False          # sample the time spent in the step's collective
        self.io_seconds = 0.0        # checkpoint writing in the current epoch
        self.comm_sampled = 0.0
        self.samples = 0
        # failure-injection hooks for the reliability tests: "rank:update"
        self.skip = _hook("MPIML_TEST_SKIP_COLLECTIVE")
        self.world_rank = MPI.COMM_WORLD.Get_rank()     # the hooks name world ranks
        # "rank:update:SIGNAL": that rank sends itself SIGNAL after that update
        raw = os.environ.get("MPIML_TEST_SIGNAL", "")
        self.signal_hook = None
        if raw:
            r, t, name = raw.split(":")
            self.signal_hook = (int(r), int(t), getattr(signal, name))

    @property
    def progress(self):
        """Updates made so far (read by the watchdog thread)."""
        return int(self.engine.t) if self.engine is not None else 0

    def attach(self, engine):
        self.engine = engine
        engine.checkpoint_every = int(self.every_steps or 0) if self.save is not None else 0

    def commands_due(self):
        """Rank 0: a command waits in the run directory (cheap: see mpiml.runctl); also
        refreshes status.json (at most once a second)."""
        if self.run is None or self.world_rank != 0:
            return False
        self.next_poll = time.monotonic() + self.POLL_SECONDS
        if self.engine is not None:
            self.run.write_status(step=int(self.engine.t), state="running")
        return self.run.commands_waiting()

    def time_due(self):
        return (self.every_seconds is not None and self.comm.rank == 0
                and time.monotonic() - self.last_save >= self.every_seconds)

    def steps_until_check(self, t):
        n = self.CHUNK
        if self.every_steps:
            n = min(n, self.every_steps - int(t) % self.every_steps)
        return max(1, n)

    def boundary(self, engine, step, stop, due, command=False):
        """After an update: commands, checkpoint and/or stop, identically on every rank."""
        if command and self.on_command is not None:
            due = self.on_command(engine, step) or due
        world = self.world_rank
        if self.signal_hook is not None and self.signal_hook[:2] == (world, int(engine.t)):
            sys.stderr.write(f"mpiml-test: rank {world} sends itself "
                             f"{self.signal_hook[2].name} at {time.time():.3f}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), self.signal_hook[2])
        due = due or stop or (self.every_steps and int(engine.t) % self.every_steps == 0)
        path = None
        if due and self.save is not None:
            path = self.save(step)
            self.last_save = time.monotonic()
        if stop:
            self.on_stop(path)
        if self.user_stop:
            raise StopTraining(int(engine.t))

    def out_of_step(self, engine):
        """The update numbers disagree: name the ranks (all ranks get here together)."""
        counts = self.comm.allgather(int(engine.t) + 1)
        values, freq = np.unique(counts, return_counts=True)
        majority = values[np.argmax(freq)]
        odd = [r for r, v in enumerate(counts) if v != majority]
        where = ", ".join(f"rank {r} at update {counts[r]}" for r in odd)
        raise MpimlError(f"ranks are out of step ({where}; the others at update {majority}): "
                         "a rank skipped or repeated a collective", ranks=odd)


def run_epoch(engine, comm, plan, start=0, control=None):
    """Run steps ``start..`` of one epoch plan. Collective over ``comm`` (an mpiml Comm).

    On one rank the steps run inside the kernel (the reduction is the identity),
    returning to Python every few steps when ``control`` is given; otherwise each
    step is grad, one in-place Allreduce, apply.
    """
    lo, hi, ptr = plan
    n_steps = len(ptr) - 1
    if start == 0:
        engine.epoch_loss = 0.0
        engine.epoch_count = 0.0
    engine.set_plan(lo, hi, ptr)
    t0 = time.perf_counter()
    if comm.size == 1 and not getattr(engine, "collective", False):
        if control is not None:
            control.attach(engine)
        s = start
        while s < n_steps:
            stop = n_steps if control is None else min(n_steps, s + control.steps_until_check(engine.t))
            engine.run_plan(s, stop)
            s = stop
            if control is not None:
                control.boundary(engine, s, control.stop_requested, control.time_due(),
                                 control.commands_due())
    elif control is None:
        buf = engine.buf_arr
        allreduce = comm.mpi.Allreduce
        grad, apply = engine.grad_step, engine.apply
        in_place = MPI.IN_PLACE
        for s in range(start, n_steps):
            grad(s)
            allreduce(in_place, buf)
            apply()
    else:
        control.attach(engine)
        buf = engine.buf_arr
        base = engine.P + 2
        allreduce = comm.mpi.Allreduce
        grad, apply_checked = engine.grad_step, engine.apply_checked
        in_place = MPI.IN_PLACE
        size = float(comm.size)
        clock = comm.rank == 0 and (control.every_seconds is not None or control.run is not None)
        hooks = control.skip is not None or control.signal_hook is not None
        timing = control.timing
        timed = control.every_seconds is not None
        polled = control.run is not None
        mono = time.monotonic
        every = control.TIME_EVERY
        special = clock or timing or hooks

        def step(s, first):
            """A step with the extras: rank 0's clock (first step of a 16-step chunk),
            a timed collective (the chunk's middle step), the test hooks."""
            grad(s)
            if control.stop_requested:
                buf[base + 1] = 1.0
            if clock and first:
                if timed and control.time_due():
                    buf[base + 2] = 1.0
                # the run directory: a clock comparison here, the poll itself at most every
                # POLL_SECONDS (see mpiml.runctl)
                if polled and mono() >= control.next_poll and control.commands_due():
                    buf[base + 3] = 1.0
            if hooks and control.skip == (control.world_rank, int(engine.t) + 1):
                buf[base] *= size       # test hook: this rank skips one collective
            elif timing and s % every == every // 2:   # off the step where rank 0 looks
                c0 = time.perf_counter()
                allreduce(in_place, buf)
                control.comm_sampled += time.perf_counter() - c0
                control.samples += 1
            else:
                allreduce(in_place, buf)
            code = apply_checked(size)
            if code or hooks:
                if code & 1:
                    control.out_of_step(engine)
                control.boundary(engine, s + 1, code & 2, code & 4, code & 8)

        def plain(a, b):
            """Steps a..b-1 with nothing but the step itself."""
            for s in range(a, b):
                grad(s)
                if control.stop_requested:
                    buf[base + 1] = 1.0
                allreduce(in_place, buf)
                code = apply_checked(size)
                if code:
                    if code & 1:
                        control.out_of_step(engine)
                    control.boundary(engine, s + 1, code & 2, code & 4, code & 8)

        s = start
        while s < n_steps:
            # chunks of `every` steps: only the first (rank 0's clock) and the middle one
            # (a timed collective) carry extras; the others run the plain step
            end = min(n_steps, (s // every + 1) * every)
            if hooks:
                for s in range(s, end):
                    step(s, s % every == 0)
            elif special:
                step(s, s % every == 0)
                mid = (s // every) * every + every // 2
                if s < mid < end:
                    plain(s + 1, mid)
                    step(mid, False)
                    plain(mid + 1, end)
                else:
                    plain(s + 1, end)
            else:
                plain(s, end)
            s = end
    return EpochStats(n_steps - start, time.perf_counter() - t0, engine.epoch_loss,
                      engine.epoch_count)
