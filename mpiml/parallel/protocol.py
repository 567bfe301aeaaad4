"""The step-control protocol: what travels in a step's reduction besides the gradient,
and the decisions every rank takes from it.

Each step's packed buffer ends with ``N_WORDS`` control words (:class:`Word`), after the
``P`` gradient sums, the loss sum and the row count:

``SEQ``         the number of the update this step makes, ``seq_word(t)``: the reduced
                words must add up to ``size * seq_word(t)`` or a rank skipped or
                repeated a collective;
``STOP``        a stop request (a signal reached some rank);
``CHECKPOINT``  a checkpoint request (rank 0's clock, for time-based checkpoints);
``COMMAND``     rank 0 saw a command in the run directory (:mod:`mpiml.runctl`).

After the reduction the kernel (``Engine.apply_checked``; the Python engines'
:meth:`~mpiml.parallel.engine.StepEngine.apply_checked`; :func:`decision` for
synchronizers that reduce their own buffer) turns the words into a :class:`Decision`
bit set, identical on every rank, and :meth:`StepControl.decide` acts on it. The same
names are defined in the kernel as ``cdef enum``; :func:`check_kernel` compares the two
at import, so they cannot drift apart.
"""
import os
import sys
import time
from enum import IntEnum, IntFlag

import numpy as np
from mpi4py import MPI

from .._kernels import sgd as _k
from ..errors import MpimlError
from ..hooks import NO_HOOKS

__all__ = ["Word", "Decision", "N_WORDS", "SEQ_MOD", "seq_word", "decision", "StepControl",
           "StopTraining", "check_kernel"]


class Word(IntEnum):
    """Offsets of the control words after ``P + 2`` (gradient, loss sum, row count)."""
    SEQ = 0
    STOP = 1
    CHECKPOINT = 2
    COMMAND = 3


class Decision(IntFlag):
    """What every rank does after a step's reduction."""
    NONE = 0
    OUT_OF_STEP = 1     # the sequence words disagree: nothing was applied
    STOP = 2            # checkpoint (if any), then end the job for a requeue
    CHECKPOINT = 4      # write a checkpoint at this step
    COMMAND = 8         # apply the run directory's waiting commands at this step


N_WORDS = len(Word)
# sequence words are compared modulo SEQ_MOD: exact in float64, and times the rank
# count in float32 buffers up to 16 ranks (engines with float32 buffers use 4096)
SEQ_MOD = float(1 << 20)


def seq_word(t, mod=SEQ_MOD):
    """The sequence word of the update after update ``t`` (the one rule everywhere)."""
    return (t + 1.0) % mod


def decision(words, size, t, mod=SEQ_MOD):
    """The :class:`Decision` bits (as an int) of reduced control ``words`` (a SUM over
    ``size`` ranks) when the ranks are about to make update ``t + 1``."""
    if words[Word.SEQ] != size * seq_word(t, mod):
        return int(Decision.OUT_OF_STEP)
    code = 0
    if words[Word.STOP] > 0.0:
        code |= Decision.STOP
    if words[Word.CHECKPOINT] > 0.0:
        code |= Decision.CHECKPOINT
    if words[Word.COMMAND] > 0.0:
        code |= Decision.COMMAND
    return int(code)


def check_kernel():
    """The kernel's enums equal these classes (run at import)."""
    if dict(_k.CONTROL_WORDS) != {w.name: int(w) for w in Word} or \
            dict(_k.DECISIONS) != {d.name: int(d) for d in Decision if d} or \
            float(_k.SEQ_MOD) != SEQ_MOD:
        raise ImportError("mpiml's compiled kernel and mpiml.parallel.protocol disagree on the "
                          "step-control protocol: rebuild the package (pip install .)")


check_kernel()


class StopTraining(Exception):
    """Raised on every rank at the same step boundary to end a fit early (normally)."""


class StepControl:
    """Requests raised on a rank and decisions taken at step boundaries, agreed through
    the step's own reduction (see the module doc).

    ``save(step)`` is called (on every rank) when a checkpoint is due;
    ``on_stop(path)`` when a stop was requested, after the checkpoint;
    ``on_command(engine, step)`` when a command is waiting (it returns whether a
    checkpoint is now wanted). ``hooks`` are the test hooks (:mod:`mpiml.hooks`).
    """
    CHUNK = 64      # one-rank path: steps run in the kernel between two checks
    TIME_EVERY = 16  # rank 0 looks at its clock every this many steps
    POLL_SECONDS = 0.1  # and at the run directory at most this often

    def __init__(self, comm, every_steps=None, every_seconds=None, save=None, on_stop=None,
                 hooks=NO_HOOKS, world_rank=None):
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
        self.stop_now = False        # a signal while paused, agreed by every rank
        self.timing = False          # sample the time spent in the step's collective
        self.io_seconds = 0.0        # checkpoint writing in the current epoch
        self.comm_sampled = 0.0
        self.samples = 0
        self.hooks = hooks
        if world_rank is None:
            world_rank = MPI.COMM_WORLD.Get_rank()     # the hooks name world ranks
        self.world_rank = world_rank
        # the hooks that act in the step loop, for this rank
        self.skip = hooks.skip_collective if hooks.skip_collective and \
            hooks.skip_collective[0] == world_rank else None
        self.signal_hook = hooks.signal if hooks.signal and hooks.signal[0] == world_rank else None

    @property
    def progress(self):
        """Updates made so far (read by the watchdog thread)."""
        return int(self.engine.t) if self.engine is not None else 0

    def attach(self, engine):
        self.engine = engine
        engine.checkpoint_every = int(self.every_steps or 0) if self.save is not None else 0

    # ------------------------------------------------------------ requests
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

    def request(self, words, look):
        """Raise this rank's requests in ``words`` (the control words of the buffer about
        to be reduced). With ``look``, rank 0 also consults its clock and, at most every
        ``POLL_SECONDS``, the run directory (callers look every ``TIME_EVERY`` steps)."""
        if self.stop_requested:
            words[Word.STOP] = 1.0
        if look and self.comm.rank == 0:
            if self.every_seconds is not None and self.time_due():
                words[Word.CHECKPOINT] = 1.0
            if self.run is not None and time.monotonic() >= self.next_poll and \
                    self.commands_due():
                words[Word.COMMAND] = 1.0

    def steps_until_check(self, t):
        n = self.CHUNK
        if self.every_steps:
            n = min(n, self.every_steps - int(t) % self.every_steps)
        return max(1, n)

    # ------------------------------------------------------------ decisions
    def decide(self, engine, code, step):
        """Act on a :class:`Decision` bit set (the same on every rank) after ``step``."""
        if code & Decision.OUT_OF_STEP:
            self.out_of_step(engine)
        self.boundary(engine, step, code & Decision.STOP, code & Decision.CHECKPOINT,
                      code & Decision.COMMAND)

    def boundary(self, engine, step, stop, due, command=False):
        """After an update: commands, checkpoint and/or stop, identically on every rank."""
        if command and self.on_command is not None:
            due = self.on_command(engine, step) or due
            stop = stop or self.stop_now
        if self.signal_hook is not None and self.signal_hook[1] == int(engine.t):
            sys.stderr.write(f"mpiml-test: rank {self.world_rank} sends itself "
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

