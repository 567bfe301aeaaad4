"""How the data-parallel ranks combine their work, behind one switch.

``sync``:

* ``"allreduce"`` (default) -- one packed Allreduce per step
  (:func:`mpiml.parallel.data.run_epoch`, or :func:`run_epoch_sync` below when
  communication is compressed, overlapped or counted);
* ``"local:K"`` -- local SGD: every rank updates its own copy of the model from its
  own rows for ``K`` steps, then the copies (and their momentum) are averaged,
  weighted by the samples each rank processed since the last average
  (:func:`run_epoch_local`). ``local:1`` without momentum is exactly ``allreduce``:
  the weighted average of one local step each is the step with the summed
  gradient. ``sync_warmup`` synchronous steps come first;
* ``"ps:S"`` -- an asynchronous parameter server (:mod:`mpiml.parallel.ps`).

``overlap=True``: the step's Allreduce is started non-blocking (``Iallreduce``) and
the next step's gradient is computed while it is in flight, so each gradient is
computed with weights one update old (a delayed update: staleness 1). MPICH moves
a non-blocking collective forward only inside MPI calls unless asynchronous
progress is on (``MPICH_ASYNC_PROGRESS=1``): see benchmarks/README.md for what that
means here.

``compress``: ``"fp16"`` (half-precision gradients) or ``"topk:R"`` (the fraction
``R`` of largest-magnitude entries, as index/value pairs), both with error feedback:
what compression dropped is added to the next step's gradient, so nothing is lost,
only delayed. Compressed messages cannot be summed by MPI, so each rank's packed
message (compressed gradient + the exact loss, count and control words) is
Allgathered and every rank sums the decoded messages in rank order (the same
result on every rank).
"""
import json
import time

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError
from .data import EpochStats
from .protocol import N_WORDS, Decision, Word, decision, seq_word

__all__ = ["parse_sync", "parse_compress", "CommCounters", "Compressor", "run_epoch_sync",
           "run_epoch_local", "StatsWriter"]


def parse_sync(spec):
    """``"allreduce"`` -> ("allreduce", 0); ``"local:K"`` -> ("local", K); ``"ps:S"`` ->
    ("ps", S). Raises ConfigError on anything else."""
    if spec == "allreduce":
        return "allreduce", 0
    if isinstance(spec, str) and ":" in spec:
        kind, _, num = spec.partition(":")
        if kind in ("local", "ps") and num.isdigit() and int(num) >= 1:
            return kind, int(num)
    raise ConfigError(f"sync must be 'allreduce', 'local:K' or 'ps:S' (K, S positive integers), "
                      f"not {spec!r}")


def parse_compress(spec):
    """``"none"`` / ``"fp16"`` / ``"topk:R"`` (0 < R <= 1) -> (kind, ratio)."""
    if spec in (None, "none"):
        return "none", 0.0
    if spec == "fp16":
        return "fp16", 0.0
    if isinstance(spec, str) and spec.startswith("topk:"):
        try:
            r = float(spec[5:])
        except ValueError:
            r = -1.0
        if 0.0 < r <= 1.0:
            return "topk", r
    raise ConfigError(f"compress must be 'none', 'fp16' or 'topk:RATIO' with 0 < RATIO <= 1, "
                      f"not {spec!r}")


class CommCounters:
    """This rank's communication counters of the current epoch."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.bytes_sent = 0
        self.comm_seconds = 0.0
        self.wait_seconds = 0.0
        self.messages = 0

    def as_dict(self):
        return {"bytes_sent": int(self.bytes_sent), "comm_seconds": self.comm_seconds,
                "wait_seconds": self.wait_seconds, "messages": int(self.messages)}


class StatsWriter:
    """Per-epoch JSON lines on rank 0 (``--stats FILE``): the counters of every rank,
    gathered once per epoch (a collective: every rank calls :meth:`epoch`)."""

    def __init__(self, path, comm, mode):
        self.path, self.comm, self.mode = path, comm, mode
        if path is not None and comm.rank == 0:
            open(path, "w").close()

    def epoch(self, epoch, counters, loss, seconds, extra=None):
        if self.path is None:
            return
        everyone = self.comm.allgather(counters.as_dict())
        if self.comm.rank != 0:
            return
        rec = {"epoch": epoch, **self.mode, "loss": loss, "seconds": seconds,
               "bytes_sent_per_rank": [e["bytes_sent"] for e in everyone],
               "comm_seconds_per_rank": [e["comm_seconds"] for e in everyone],
               "wait_seconds_per_rank": [e["wait_seconds"] for e in everyone],
               "messages_per_rank": [e["messages"] for e in everyone]}
        rec.update(extra or {})
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------------------ compression
class Compressor:
    """Error-feedback compression of the first ``P`` entries of a step buffer."""

    def __init__(self, kind, ratio, P, tail, dtype):
        self.kind, self.P, self.tail = kind, int(P), int(tail)
        self.dtype = np.dtype(dtype)
        self.residual = np.zeros(self.P, dtype=np.float64)
        self.k = max(1, int(round(ratio * self.P))) if kind == "topk" else 0
        if kind == "fp16":
            self.nbytes = 2 * self.P + 8 * self.tail
        else:
            self.nbytes = 8 * self.k + 8 * self.tail      # int32 index + float32 value
        self.send = np.zeros(self.nbytes, dtype=np.uint8)

    def encode(self, buf):
        """Pack ``buf`` (gradient + exact tail) into ``self.send``; keep the error."""
        v = self.residual
        v += buf[:self.P]
        if self.kind == "fp16":
            h = v.astype(np.float16)
            self.send[:2 * self.P] = h.view(np.uint8)
            v -= h                       # what the half precision dropped, kept for next time
            head = 2 * self.P
        else:
            idx = np.argpartition(np.abs(v), self.P - self.k)[self.P - self.k:].astype(np.int32)
            idx.sort()
            vals = v[idx].astype(np.float32)
            self.send[:4 * self.k] = idx.view(np.uint8)
            self.send[4 * self.k:8 * self.k] = vals.view(np.uint8)
            v[idx] -= vals
            head = 8 * self.k
        self.send[head:] = np.asarray(buf[self.P:self.P + self.tail],
                                      dtype=np.float64).view(np.uint8)
        return self.send

    def decode_sum(self, gathered, buf):
        """Sum every rank's message (rows of ``gathered``) into ``buf``, in rank order."""
        grad = np.zeros(self.P, dtype=np.float64)
        tail = np.zeros(self.tail, dtype=np.float64)
        for msg in gathered:
            if self.kind == "fp16":
                grad += msg[:2 * self.P].view(np.float16)
                head = 2 * self.P
            else:
                idx = msg[:4 * self.k].view(np.int32)
                grad[idx] += msg[4 * self.k:8 * self.k].view(np.float32)
                head = 8 * self.k
            tail += msg[head:].view(np.float64)
        buf[:self.P] = grad
        buf[self.P:self.P + self.tail] = tail


# ------------------------------------------------------------------------------ runners
def _apply_reduced(engine, comm, control, s):
    """After the step's reduction: the checked update and the step-boundary decisions."""
    code = engine.apply_checked(float(comm.size))
    if code:
        control.decide(engine, code, s + 1)


def _request(engine, control, s):
    """This rank's requests in the step buffer's control words (rank 0 looks at its clock
    and run directory every TIME_EVERY steps)."""
    base = engine.P + 2
    control.request(engine.buf_arr[base:base + N_WORDS], s % control.TIME_EVERY == 0)


def _begin(engine, plan, start, control):
    """Install an epoch plan (a fresh epoch resets the loss sums); the number of steps."""
    if start == 0:
        engine.epoch_loss = 0.0
        engine.epoch_count = 0.0
    engine.set_plan(*plan)
    control.attach(engine)
    return len(plan[2]) - 1


def _allreduce(mpi, buf, counters):
    """The step's blocking Allreduce, counted."""
    c0 = time.perf_counter()
    mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    counters.comm_seconds += time.perf_counter() - c0
    counters.bytes_sent += buf.nbytes
    counters.messages += 1


def run_epoch_sync(engine, comm, plan, start, control, counters, compressor=None,
                   overlap=False):
    """Synchronous steps with counters, optional compression and optional overlap
    (see the module doc). Collective over ``comm``."""
    n_steps = _begin(engine, plan, start, control)
    buf = engine.buf_arr
    mpi = comm.mpi
    t0 = time.perf_counter()
    if overlap:
        inflight = np.empty_like(buf)
        spare = np.empty_like(buf)
        req = None

        def finish(req, reduced, step):
            """Wait for the step's reduction, then its checked update."""
            w0 = time.perf_counter()
            req.Wait()
            counters.wait_seconds += time.perf_counter() - w0
            buf[:] = reduced
            _apply_reduced(engine, comm, control, step)

        set_poll = getattr(engine, "set_poll", None)      # MLPs: Test() between layers
        for s in range(start, n_steps):
            if set_poll is not None and req is not None:
                set_poll(req.Test)
            engine.grad_step(s)                 # with weights one update old (see module doc)
            if set_poll is not None:
                set_poll(None)
            _request(engine, control, s)
            # the update this gradient will make: one more if one is in flight
            buf[engine.P + 2 + Word.SEQ] = seq_word(engine.t + (1.0 if req is not None else 0.0),
                                                    engine.seq_mod)
            spare[:] = buf
            if req is not None:
                finish(req, inflight, s - 1)
            inflight, spare = spare, inflight
            c0 = time.perf_counter()
            req = mpi.Iallreduce(MPI.IN_PLACE, inflight, op=MPI.SUM)
            counters.comm_seconds += time.perf_counter() - c0
            counters.bytes_sent += inflight.nbytes
            counters.messages += 1
        if req is not None:
            finish(req, inflight, n_steps - 1)
    else:
        gathered = None
        if compressor is not None:
            gathered = np.empty((comm.size, compressor.nbytes), dtype=np.uint8)
        for s in range(start, n_steps):
            engine.grad_step(s)
            _request(engine, control, s)
            if compressor is None:
                _allreduce(mpi, buf, counters)
            else:
                c0 = time.perf_counter()
                msg = compressor.encode(buf)
                mpi.Allgather(msg, gathered)
                compressor.decode_sum(gathered, buf)
                counters.bytes_sent += msg.nbytes
                counters.comm_seconds += time.perf_counter() - c0
                counters.messages += 1
            _apply_reduced(engine, comm, control, s)
    return EpochStats(n_steps - start, time.perf_counter() - t0, engine.epoch_loss,
                      engine.epoch_count)


def run_epoch_local(engine, comm, plan, start, control, counters, k, warmup, state):
    """Local SGD: local updates, a weighted model average every ``k`` steps (and at
    the end of the epoch). ``state`` carries the step count since the last average
    and the samples seen, across epochs. Returns global epoch statistics."""
    n_steps = _begin(engine, plan, start, control)
    buf = engine.buf_arr
    mpi = comm.mpi
    arrays = engine.sync_arrays()
    sizes = [a.size for a in arrays]
    # an update from this rank's own gradient (CSR rows: it touches only their features)
    apply_local = getattr(engine, "apply_local", engine.apply)
    # the weighted arrays, the samples behind them, then the protocol's control words
    avg = np.zeros(sum(sizes) + 1 + N_WORDS)
    words = avg[sum(sizes) + 1:]
    t0 = time.perf_counter()
    for s in range(start, n_steps):
        t_before = engine.t
        engine.grad_step(s)
        if engine.t < warmup:                   # synchronous warm-up steps
            _request(engine, control, s)
            _allreduce(mpi, buf, counters)
            _apply_reduced(engine, comm, control, s)
            continue
        n_local = float(buf[engine.P + 1])
        apply_local()                           # this rank's own update (count = its rows)
        engine.t = t_before + 1.0               # every rank counts the step, rows or not
        state["samples"] += n_local
        state["since"] += 1
        if state["since"] < k and s < n_steps - 1:
            continue
        # average the models, weighted by the samples each rank processed (the arrays
        # fetched again: an engine that defers work brings its weights up to date here)
        arrays = engine.sync_arrays()
        w = state["samples"]
        pos = 0
        for a in arrays:
            avg[pos:pos + a.size] = a
            avg[pos:pos + a.size] *= w
            pos += a.size
        avg[pos] = w
        words[:] = 0.0
        # the sequence word of the update just made locally: (t - 1) + 1
        words[Word.SEQ] = seq_word(engine.t - 1.0)
        control.request(words, True)
        _allreduce(mpi, avg, counters)
        code = decision(words, float(comm.size), engine.t - 1.0)
        if code & Decision.OUT_OF_STEP:
            control.out_of_step(engine)
        total = avg[pos]
        pos = 0
        for a in arrays:
            a[...] = avg[pos:pos + a.size] / total
            pos += a.size
        engine.after_sync()
        state["samples"] = 0.0
        state["since"] = 0
        # the decisions, and the every-N-updates checkpoint boundary() adds itself
        if code or (control.every_steps and int(engine.t) % control.every_steps == 0):
            control.decide(engine, code, s + 1)
    seconds = time.perf_counter() - t0
    tot = np.array([engine.epoch_loss, engine.epoch_count])
    mpi.Allreduce(MPI.IN_PLACE, tot, op=MPI.SUM)
    return EpochStats(n_steps - start, seconds, tot[0], tot[1])
