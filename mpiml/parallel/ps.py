"""Asynchronous training with a parameter server (``sync="ps:S"``).

The last ``S`` ranks are servers; the others are workers and hold the rows (load
them with ``load_hdf5(..., sync="ps:S")``, which gives the servers none). Server
``j`` owns the slice ``chunk(P, S, j)`` of the flat parameter vector (weights,
then intercepts) and its momentum.

A worker runs its own steps of the usual batch schedule, epoch after epoch,
without waiting for the other workers: it computes the gradient of its rows of a
step with the weights it holds, sends each server its slice (non-blocking sends),
and receives each server's fresh slice back. A server applies every gradient as
it arrives (the data-parallel engine's update kernel, with the learning-rate
schedule counting server updates) and answers with its current weights.

Bounded staleness (stale synchronous parallel): a server counts each worker's
pushes (its clock) and answers a worker only while that worker is at most
``max_staleness`` pushes ahead of the slowest worker still running; otherwise the
answer waits until the slow worker catches up. So the clock gap never exceeds the
bound. The *update staleness* of a gradient -- how many other updates the server
applied between the worker reading the weights and the gradient arriving -- is
recorded too.

Shutdown: a worker that has made all its steps has received an answer to each of
its pushes; it then sends each server a DONE message, which needs no answer. A
server stops when every worker is done, so no message is left in flight, and
uneven shards are fine (a finished worker no longer holds the others back). Then
every rank receives the final weights (one Allgatherv) and the per-epoch losses
(one Allreduce).
"""
import time

import numpy as np
from mpi4py import MPI

from .._kernels import sgd as _k
from ..comm import chunk
from .protocol import N_WORDS, Decision, Word, decision, seq_word

__all__ = ["EpochwiseRun", "run_parameter_server", "server_ranks", "summarise_servers"]

_GRAD, _DONE, _WEIGHTS = 7501, 7502, 7503


def server_ranks(size, n_servers):
    """World ranks of the servers: the last ``n_servers``."""
    return list(range(size - n_servers, size))


def run_parameter_server(engine, comm, n_servers, plans, hyper, n_weights, max_staleness,
                         counters, record=False, first_step=0, slow_seconds=0.0):
    """Train asynchronously (collective over ``comm``; see the module doc).

    ``plans[e]`` is the epoch plan of epoch ``e`` (ignored on servers). The run starts
    from the engine's state on every rank, and the servers count updates on from
    ``engine.t`` (the same on every rank), so a fit may call this once per epoch.
    ``first_step`` numbers this worker's first push (its pushes before, for the log).
    ``record``: the servers keep a log of every update; ``slow_seconds``: this worker
    sleeps after each push (both test hooks, :mod:`mpiml.hooks`).
    Every rank's engine ends with the final weights and momentum and ``engine.t`` = the
    servers' update count. Returns a dict: ``loss`` (per-epoch loss sums), ``count``
    (per-epoch rows), this rank's ``pushes``, and the servers' counters and logs.
    """
    size, rank = comm.size, comm.rank
    servers = server_ranks(size, n_servers)
    workers = [r for r in range(size) if r not in servers]
    P = engine.P
    slices = [chunk(P, n_servers, j) for j in range(n_servers)]
    epochs = len(plans)
    losses = np.zeros((2, epochs))
    info, pushes = {}, 0
    if rank in servers:
        j = servers.index(rank)
        info = _serve(engine, comm, slices[j], workers, hyper, n_weights, max_staleness,
                      counters, record)
    else:
        pushes = _work(engine, comm, servers, slices, plans, losses, counters, slow_seconds,
                       first_step)
    # final weights on every rank: the servers' slices in order
    state = engine.get_state()
    out = {}
    for name in ("w", "velocity"):
        mine = state[name][slices[servers.index(rank)][0]:slices[servers.index(rank)][1]] \
            if rank in servers else np.zeros(0)
        full = np.empty(P)
        counts = [0] * size
        for jj, r in enumerate(servers):
            counts[r] = slices[jj][1] - slices[jj][0]
        comm.Allgatherv(np.ascontiguousarray(mine), full, counts)
        out[name] = full
    comm.mpi.Allreduce(MPI.IN_PLACE, losses, op=MPI.SUM)
    engine.set_state({"w": out["w"], "velocity": out["velocity"]})
    out["loss"], out["count"], out["pushes"] = losses[0], losses[1], pushes
    out["servers"] = comm.allgather(info if rank in servers else None)
    engine.t = float(sum(i["updates"] for i in out["servers"] if i) / n_servers)
    return out


def _work(engine, comm, servers, slices, plans, losses, counters, slow, first_step):
    mpi = comm.mpi
    P = engine.P
    buf = engine.buf_arr
    w = engine.get_state()["w"]
    versions = [int(engine.t)] * len(servers)     # the weights held: after engine.t updates
    sends = [np.empty(hi - lo + 4) for lo, hi in slices]
    recvs = [np.empty(hi - lo + 1) for lo, hi in slices]
    step_id = first_step
    for epoch, plan in enumerate(plans):
        lo, hi, ptr = plan
        engine.set_plan(lo, hi, ptr)
        for s in range(len(ptr) - 1):
            a, b = ptr[s], ptr[s + 1]
            if b == a or hi[a] <= lo[a]:
                continue                          # no rows of this step here
            engine.grad_step(s)
            losses[0, epoch] += buf[P]
            losses[1, epoch] += buf[P + 1]
            c0 = time.perf_counter()
            reqs = []
            for j, (slo, shi) in enumerate(slices):
                m = sends[j]
                m[:shi - slo] = buf[slo:shi]
                m[-4:] = (buf[P] if j == 0 else 0.0, buf[P + 1], versions[j], step_id)
                reqs.append(mpi.Isend(m, dest=servers[j], tag=_GRAD))
                counters.bytes_sent += m.nbytes
                counters.messages += 1
            MPI.Request.Waitall(reqs)
            counters.comm_seconds += time.perf_counter() - c0
            w0 = time.perf_counter()
            for j, (slo, shi) in enumerate(slices):
                mpi.Recv(recvs[j], source=servers[j], tag=_WEIGHTS)
                w[slo:shi] = recvs[j][:-1]
                versions[j] = recvs[j][-1]
            counters.wait_seconds += time.perf_counter() - w0
            engine.set_params(w)
            engine.t += 1.0                       # this worker's pushes (watchdog progress)
            step_id += 1
            if slow:
                time.sleep(slow)
    for r in servers:
        mpi.Send(np.zeros(0), dest=r, tag=_DONE)
    return step_id - first_step


def _serve(engine, comm, sl, workers, hyper, n_weights, max_staleness, counters, record):
    mpi = comm.mpi
    lo, hi = sl
    n = hi - lo
    state = engine.get_state()
    w = np.ascontiguousarray(state["w"][lo:hi])
    vel = np.ascontiguousarray(state["velocity"][lo:hi])
    nw = max(0, min(n_weights - lo, n))            # weights in this slice; the rest intercepts
    msg = np.empty(n + 4)
    reply = np.empty(n + 1)
    clocks = {r: 0 for r in workers}
    pushes = dict(clocks)
    at_done = {}                 # every worker's pushes when each worker finished
    deferred = set()
    version = int(engine.t)      # updates before this run (0 for a fresh fit)
    first_version = version
    gaps, stale, log = [], [], []
    status = MPI.Status()

    def answer(r):
        reply[:n] = w
        reply[n] = version
        c0 = time.perf_counter()
        mpi.Send(reply, dest=r, tag=_WEIGHTS)
        counters.comm_seconds += time.perf_counter() - c0
        counters.bytes_sent += reply.nbytes
        counters.messages += 1
        gaps.append(clocks[r] - min(clocks.values()))

    def release():
        for r in sorted(deferred):
            if clocks[r] - min(clocks.values()) <= max_staleness:
                deferred.discard(r)
                answer(r)

    while clocks:
        w0 = time.perf_counter()
        mpi.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        counters.wait_seconds += time.perf_counter() - w0
        src, tag = status.Get_source(), status.Get_tag()
        if tag == _DONE:
            mpi.Recv(np.zeros(0), source=src, tag=_DONE)
            at_done[int(src)] = {int(r): int(v) for r, v in pushes.items()}
            del clocks[src]
            release()
            continue
        mpi.Recv(msg, source=src, tag=_GRAD)
        count, read, step_id = msg[n + 1], int(msg[n + 2]), int(msg[n + 3])
        version += 1
        engine.t = float(version)
        stale.append(version - 1 - read)
        if record:
            log.append((src, step_id, read, msg[:n].copy(), count))
        eta = _k.step_size(hyper["schedule"], float(version), hyper["eta0"], hyper["alpha"],
                           hyper["power_t"], hyper["optimal_init"])
        _k.sgd_update(w, vel, msg[:n], nw, count, eta, hyper["penalty"], hyper["alpha"],
                      hyper["l1_ratio"], hyper["momentum"], hyper["fit_intercept"])
        clocks[src] += 1
        pushes[src] += 1
        if clocks[src] - min(clocks.values()) <= max_staleness:
            answer(src)
        else:
            deferred.add(src)
        release()
    full_w = state["w"]
    full_w[lo:hi] = w
    full_v = state["velocity"]
    full_v[lo:hi] = vel
    engine.set_state({"w": full_w, "velocity": full_v})
    return {"updates": version, "updates_here": version - first_version,
            "max_clock_gap": max(gaps, default=0),
            "max_update_staleness": max(stale, default=0),
            "mean_update_staleness": float(np.mean(stale)) if stale else 0.0,
            "updates_per_worker": {int(r): int(v) for r, v in pushes.items()},
            "pushes_when_done": at_done,
            "log": log if record else None, "slice": (lo, hi)}


def summarise_servers(runs):
    """``ps_stats_`` of a fit from its runs' ``out["servers"]`` lists (one run for a
    fit that runs all its epochs at once, one per epoch when it meets at epoch ends)."""
    per_server = [[i for i in servers if i] for servers in runs]
    merged = []
    for j in range(len(per_server[0])):
        infos = [run[j] for run in per_server]
        updates = sum(i["updates_here"] for i in infos)
        ups = {}
        for i in infos:
            for r, v in i["updates_per_worker"].items():
                ups[r] = ups.get(r, 0) + v
        logs = [i["log"] for i in infos]
        merged.append({
            "updates": infos[-1]["updates"], "updates_here": updates,
            "max_clock_gap": max(i["max_clock_gap"] for i in infos),
            "max_update_staleness": max(i["max_update_staleness"] for i in infos),
            "mean_update_staleness": float(sum(i["mean_update_staleness"] * i["updates_here"]
                                               for i in infos) / max(updates, 1)),
            "updates_per_worker": ups, "pushes_when_done": infos[-1]["pushes_when_done"],
            "log": None if logs[0] is None else [e for log in logs for e in log],
            "slice": infos[-1]["slice"]})
    return {"max_clock_gap": max(i["max_clock_gap"] for i in merged),
            "max_update_staleness": max(i["max_update_staleness"] for i in merged),
            "mean_update_staleness": float(np.mean([i["mean_update_staleness"] for i in merged])),
            "updates_per_worker": merged[0]["updates_per_worker"],
            "pushes_when_done": merged[0]["pushes_when_done"], "servers": merged}


class EpochwiseRun:
    """A parameter-server fit that meets at every epoch end (one
    :func:`run_parameter_server` per epoch): inside an epoch the workers run
    asynchronously as ever; at its end every rank holds the same weights, so the fit can
    evaluate validation rows, run callbacks, and write checkpoints or stop on a signal
    there (:meth:`boundary`)."""

    def __init__(self, comm, n_servers, counters, hyper, max_staleness, record=False,
                 slow_seconds=0.0):
        self.comm, self.n_servers, self.counters = comm, n_servers, counters
        self.hyper = hyper              # () -> the update's hyper-parameters (live values)
        self.max_staleness, self.record, self.slow = max_staleness, record, slow_seconds
        self.pushes = 0           # this worker's pushes so far (numbers the log's steps)
        self.runs = []
        self.saved_at = None      # engine.t at the last checkpoint

    def epoch(self, engine, plan):
        from .data import EpochStats

        t0 = time.perf_counter()
        out = run_parameter_server(engine, self.comm, self.n_servers, [plan], self.hyper(),
                                   engine.P - engine.K, self.max_staleness, self.counters,
                                   record=self.record, first_step=self.pushes,
                                   slow_seconds=self.slow)
        seconds = time.perf_counter() - t0
        self.pushes += out["pushes"]
        self.runs.append(out["servers"])
        return EpochStats(out["pushes"], seconds, float(out["loss"][0]), float(out["count"][0]))

    def boundary(self, control, engine):
        """At an epoch end, on every rank: agree on a stop request (a signal on any rank),
        a due checkpoint (every ``checkpoint_every`` updates or ``checkpoint_seconds``, by
        rank 0's clock) and a waiting ``mpiml ctl`` command -- the step-control words in one
        small reduction -- then act on them together."""
        if self.saved_at is None:
            self.saved_at = engine.t
        words = np.zeros(N_WORDS)
        words[Word.SEQ] = seq_word(engine.t)
        control.request(words, True)
        self.comm.mpi.Allreduce(MPI.IN_PLACE, words, op=MPI.SUM)
        code = decision(words, float(self.comm.size), engine.t)
        if code & Decision.OUT_OF_STEP:
            control.out_of_step(engine)
        every = control.every_steps
        due = bool(code & Decision.CHECKPOINT) or bool(every and engine.t - self.saved_at >= every)
        if (due or code & Decision.STOP) and control.save is not None:
            self.saved_at = engine.t
        control.boundary(engine, 0, code & Decision.STOP, due, code & Decision.COMMAND)
