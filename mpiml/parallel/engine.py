"""Base class of the engines written in Python (model-parallel linear models, MLPs).

An engine owns a model's state and its step kernels; the training loop
(:mod:`mpiml.models.training`) and :func:`mpiml.parallel.data.run_epoch` drive it
exactly as they drive the Cython ``Engine`` of the data-parallel linear models.

A subclass sets ``P`` (local parameter count), ``params`` / ``velocity`` (flat
float64 or compute-dtype arrays of length ``P``) and implements ``_grad(lo, hi)``
(fill ``buf_arr[:P]`` with gradient sums and return the summed loss of local rows
``lo:hi``), ``_update(count)`` (apply ``buf_arr[:P]``), ``get_state`` and
``set_state``. Model-parallel collectives happen inside ``_grad``; the step's one
data-parallel Allreduce of ``buf_arr`` is the caller's.

``collective = True`` tells ``run_epoch`` to take the reducing path even when the
data-parallel communicator has one rank: the step-boundary decisions (stop,
checkpoint) must then still agree across the model-parallel group, which
:meth:`apply_checked` ensures with one small Allreduce(MAX) of the flags over the
model communicator.
"""
import math

import numpy as np
from mpi4py import MPI

from .protocol import SEQ_MOD, Decision, Word, seq_word

__all__ = ["StepEngine"]


class StepEngine:
    collective = True
    seq_mod = SEQ_MOD      # sequence words: protocol.seq_word(t, seq_mod)

    def __init__(self, P, model_comm, n_control, buf_dtype=np.float64):
        self.P = int(P)
        self.model = model_comm
        self.n_control = n_control
        self.buf_arr = np.zeros(self.P + 2 + n_control, dtype=buf_dtype)
        self.t = 0.0
        self.epoch_loss = 0.0
        self.epoch_count = 0.0
        self.checkpoint_every = 0
        self._plan = None
        self._flags = np.zeros(len(Word))

    # ------------------------------------------------------------ plan and steps
    def set_plan(self, lo, hi, ptr):
        self._plan = (np.asarray(lo, dtype=np.intp), np.asarray(hi, dtype=np.intp),
                      np.asarray(ptr, dtype=np.intp))

    def grad(self, lo, hi):
        """Fill the buffer for local rows [lo, hi)."""
        buf = self.buf_arr
        buf[:] = 0.0                 # gradient, loss, count and this step's requests
        loss = self._grad(int(lo), int(hi)) if hi > lo else self._grad_empty()
        buf[self.P] = loss
        buf[self.P + 1] = max(0, hi - lo)
        if self.n_control:
            buf[self.P + 2 + Word.SEQ] = seq_word(self.t, self.seq_mod)
        return loss

    def grad_step(self, s):
        lo, hi, ptr = self._plan
        if not 0 <= s < len(ptr) - 1:
            raise IndexError(f"plan step {s} outside the {len(ptr) - 1} steps")
        a, b = ptr[s], ptr[s + 1]
        if b - a > 1:
            raise ValueError("StepEngine plans have one row range per step (group layout)")
        return self.grad(lo[a], hi[a]) if b > a else self.grad(0, 0)

    def _grad_empty(self):
        """A step in which this rank has no rows: it still joins the model-parallel
        collectives of the step (subclasses with such collectives override)."""
        return 0.0

    def apply(self):
        count = float(self.buf_arr[self.P + 1])
        if count <= 0.0:
            return
        self.t += 1.0
        self.epoch_loss += float(self.buf_arr[self.P])
        self.epoch_count += count
        self._update(count)

    def apply_checked(self, size):
        """``apply`` after the step's reduction: the :class:`~.protocol.Decision` bits
        (as an int), agreed over the model-parallel group (see the module doc)."""
        base = self.P + 2
        buf = self.buf_arr
        flags = self._flags
        flags[Word.SEQ] = 1.0 if buf[base + Word.SEQ] != size * seq_word(self.t, self.seq_mod) \
            else 0.0
        flags[Word.STOP] = buf[base + Word.STOP]
        flags[Word.CHECKPOINT] = buf[base + Word.CHECKPOINT]
        flags[Word.COMMAND] = buf[base + Word.COMMAND] if self.n_control > Word.COMMAND else 0.0
        if self.model.size > 1:
            self.model.mpi.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        if flags[Word.SEQ] > 0.0:
            return int(Decision.OUT_OF_STEP)
        self.apply()
        code = 0
        if flags[Word.STOP] > 0.0:
            code |= Decision.STOP
        if flags[Word.CHECKPOINT] > 0.0 or (self.checkpoint_every > 0 and
                                            int(self.t) % self.checkpoint_every == 0):
            code |= Decision.CHECKPOINT
        if flags[Word.COMMAND] > 0.0:
            code |= Decision.COMMAND
        return int(code)

    def run_plan(self, start=0, stop=-1):
        lo, hi, ptr = self._plan
        n = len(ptr) - 1
        stop = n if stop < 0 or stop > n else stop
        if not 0 <= start <= n:
            raise IndexError(f"plan step {start} outside the {n} steps")
        for s in range(start, stop):
            self.grad_step(s)
            self.apply()

    def params_finite(self):
        ok = np.array([1.0 if np.isfinite(self.params).all() else 0.0])
        if self.model.size > 1:
            self.model.mpi.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
        return bool(ok[0] > 0.0) and math.isfinite(self.t)

    def sync_arrays(self):
        """The local state that model averaging (local SGD) averages, as views."""
        return [self.params] + list(getattr(self, "slots", [getattr(self, "velocity", None)]))

    def after_sync(self):
        """Call after changing the arrays of :meth:`sync_arrays` in place."""
        self.W_c = None

    # ------------------------------------------------------------ subclass API
    def _grad(self, lo, hi):
        raise NotImplementedError

    def _update(self, count):
        raise NotImplementedError

    def get_state(self):
        raise NotImplementedError

    def set_state(self, state):
        raise NotImplementedError
