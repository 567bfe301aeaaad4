"""How the ranks combine work during a fit: one interface, one class per mode.

A fit session (:mod:`mpiml.models.session`) picks its synchronizer by name from
:data:`SYNCHRONIZERS` (:func:`mode_of` names the mode of an estimator's settings) and
drives it one epoch at a time:

``run_epoch(engine, epoch, start)``
    steps ``start..`` of epoch ``epoch``'s plan, collective; returns the epoch's global
    :class:`~mpiml.parallel.data.EpochStats`;
``epoch_end(engine)``
    after the session's epoch bookkeeping (the asynchronous epoch-wise parameter
    server agrees on stop / checkpoint / command words there);
``record(writer, epoch, counters, loss, seconds)``
    the epoch's line in the ``stats`` file;
``fitted()``
    fitted attributes the mode adds (``ps_stats_``).

The session also hosts full-batch iterative solvers the same way: one "epoch" is one
solver iteration, whose step is a packed Allreduce of the loss and gradient.

========================  =====================================================
``allreduce``             one Allreduce of the packed step buffer per step
                          (:func:`~mpiml.parallel.data.run_epoch`; with a stats
                          file, the counted loop of :mod:`mpiml.parallel.sync`)
``overlap``               the step's Iallreduce overlaps the next gradient
``compress``              fp16 / top-k with error feedback (an Allgather)
``local``                 local SGD: model averaging every K steps
``ps``                    the asynchronous parameter server, all epochs in one run
``ps-epochwise``          the same, meeting at every epoch end (validation,
                          callbacks, checkpoints, signals, live control)
========================  =====================================================
"""
import copy
import time
from collections import deque

from ..errors import ConfigError
from .data import EpochStats, run_epoch
from .ps import EpochwiseRun, run_parameter_server, server_ranks, summarise_servers
from .sparse import SparseExchange
from .sync import Compressor, parse_compress, parse_sync, run_epoch_local, run_epoch_sync

__all__ = ["Synchronizer", "SYNCHRONIZERS", "mode_of", "SyncSetup"]


class SyncSetup:
    """What a synchronizer is given: communicators, step control, counters, the mode's
    numbers, the epoch plans and the update's hyper-parameters."""

    def __init__(self, comm, grid, control, counters, plan, hyper, *, number=0, warmup=0,
                 compress="none", counted=False, max_staleness=0, last_epoch=0, hooks=None,
                 exchange=None):
        self.comm, self.grid, self.control, self.counters = comm, grid, control, counters
        self.plan = plan              # epoch -> the epoch plan (the session's layout)
        self.hyper = hyper            # () -> the kernel's hyper-parameters (live values)
        self.number, self.warmup, self.compress = number, warmup, compress
        self.counted, self.max_staleness, self.last_epoch = counted, max_staleness, last_epoch
        self.hooks = hooks
        self.exchange = exchange      # CSR rows: "dense" or "sparse" (mpiml.parallel.sparse)


class Synchronizer:
    """A mode (see the module doc). Subclasses implement :meth:`run_epoch`."""
    name = None

    def __init__(self, setup, engine):
        self.s = setup

    def check_start(self, step, where):
        """Called before the first epoch with the step a resumed run starts at."""

    def run_epoch(self, engine, epoch, start):
        raise NotImplementedError

    def epoch_end(self, engine):
        pass

    def record(self, writer, epoch, counters, loss, seconds):
        writer.epoch(epoch, counters, loss, seconds)

    def fitted(self):
        return {}


class Allreduce(Synchronizer):
    name = "allreduce"

    def __init__(self, setup, engine):
        super().__init__(setup, engine)
        self.sparse = None

    def run_epoch(self, engine, epoch, start):
        s = self.s
        if s.exchange is not None and s.grid.data.size == 1:
            # CSR rows on one rank: the kernel's loop, each step O(its stored values)
            # (the counted loop's per-step Allreduce would make every step O(weights))
            return run_epoch(engine, s.grid.data, s.plan(epoch), start, s.control)
        if s.exchange == "sparse":
            if self.sparse is None or self.sparse.engine is not engine:
                self.sparse = SparseExchange(engine, s.grid.data,
                                             s.counters if s.counted else None)
            return run_epoch(engine, s.grid.data, s.plan(epoch), start, s.control, self.sparse)
        if s.counted:       # a stats file: the loop that counts bytes and seconds
            return run_epoch_sync(engine, s.grid.data, s.plan(epoch), start, s.control,
                                  s.counters)
        return run_epoch(engine, s.grid.data, s.plan(epoch), start, s.control)


    def fitted(self):
        return {} if self.s.exchange is None else {"exchange_": self.s.exchange}


class Overlapped(Synchronizer):
    name = "overlap"

    def run_epoch(self, engine, epoch, start):
        s = self.s
        return run_epoch_sync(engine, s.grid.data, s.plan(epoch), start, s.control, s.counters,
                              None, True)


class Compressed(Synchronizer):
    name = "compress"

    def __init__(self, setup, engine):
        super().__init__(setup, engine)
        kind, ratio = parse_compress(setup.compress)
        self.compressor = Compressor(kind, ratio, engine.P, len(engine.buf_arr) - engine.P,
                                     engine.buf_arr.dtype)

    def run_epoch(self, engine, epoch, start):
        s = self.s
        return run_epoch_sync(engine, s.grid.data, s.plan(epoch), start, s.control, s.counters,
                              self.compressor, False)


class LocalSGD(Synchronizer):
    name = "local"

    def __init__(self, setup, engine):
        super().__init__(setup, engine)
        # steps since the last average and the samples behind the local model, carried
        # across epochs
        self.state = {"samples": 0.0, "since": 0}

    def run_epoch(self, engine, epoch, start):
        s = self.s
        return run_epoch_local(engine, s.grid.data, s.plan(epoch), start, s.control, s.counters,
                               s.number, s.warmup, self.state)


class _ParameterServerBase(Synchronizer):
    def check_start(self, step, where):
        if step != 0:
            raise ConfigError(f"{where} was written inside an epoch; a parameter-server fit "
                              "resumes from a checkpoint written at an epoch end",
                              ranks=range(self.s.comm.size))

    def _hook_args(self):
        hooks, rank = self.s.hooks, self.s.comm.rank
        return dict(record=hooks.record_servers, slow_seconds=hooks.slow_seconds(rank))


class ParameterServer(_ParameterServerBase):
    """All the remaining epochs in one asynchronous run (nothing needs the ranks to meet
    before the end); the epochs' statistics are handed out one per :meth:`run_epoch`."""
    name = "ps"

    def __init__(self, setup, engine):
        super().__init__(setup, engine)
        self.pending = None
        self.stats = None
        self.seconds = 0.0

    def run_epoch(self, engine, epoch, start):
        if self.pending is None:
            s = self.s
            plans = [s.plan(e) for e in range(epoch, s.last_epoch)]
            t0 = time.perf_counter()
            out = run_parameter_server(engine, s.comm, s.number, plans, s.hyper(),
                                       engine.P - engine.K, s.max_staleness, s.counters,
                                       **self._hook_args())
            self.seconds = time.perf_counter() - t0
            self.stats = summarise_servers([out["servers"]])
            self.run_counters = copy.deepcopy(s.counters)
            each = self.seconds / len(plans)
            self.pending = deque(EpochStats(len(p[2]) - 1, each, float(out["loss"][e]),
                                            max(float(out["count"][e]), 1.0))
                                 for e, p in enumerate(plans))
        return self.pending.popleft()

    def record(self, writer, epoch, counters, loss, seconds):
        if not self.pending:        # one line for the whole asynchronous run
            writer.epoch("all", self.run_counters, loss, self.seconds,
                         {"max_clock_gap": self.stats["max_clock_gap"],
                          "max_update_staleness": self.stats["max_update_staleness"]})

    def fitted(self):
        return {"ps_stats_": self.stats} if self.stats is not None else {}


class EpochwiseParameterServer(_ParameterServerBase):
    """One asynchronous run per epoch, the ranks meeting at each epoch end."""
    name = "ps-epochwise"

    def __init__(self, setup, engine):
        super().__init__(setup, engine)
        self.run = EpochwiseRun(setup.comm, setup.number, setup.counters, setup.hyper,
                                setup.max_staleness, **self._hook_args())

    def run_epoch(self, engine, epoch, start):
        self.s.control.where = f"epoch {epoch + 1} (parameter server)"
        return self.run.epoch(engine, self.s.plan(epoch))

    def epoch_end(self, engine):
        self.run.boundary(self.s.control, engine)

    def fitted(self):
        return {"ps_stats_": summarise_servers(self.run.runs)} if self.run.runs else {}


SYNCHRONIZERS = {cls.name: cls for cls in (Allreduce, Overlapped, Compressed, LocalSGD,
                                           ParameterServer, EpochwiseParameterServer)}


def mode_of(sync, compress, overlap, meets):
    """The :data:`SYNCHRONIZERS` name of a fit's settings (``meets``: something needs the
    ranks to meet at epoch ends) and the mode's number (K of ``local:K``, S of ``ps:S``)."""
    kind, number = parse_sync(sync)
    refined = {"allreduce": "overlap" if overlap else
               ("compress" if parse_compress(compress)[0] != "none" else "allreduce"),
               "local": "local",
               "ps": "ps-epochwise" if meets else "ps"}
    return refined[kind], number


def servers_of(sync, size):
    """World ranks that serve (and hold no rows) under ``sync``."""
    kind, number = parse_sync(sync)
    return server_ranks(size, number) if kind == "ps" else []
