"""The two synchronous exchanges of a step on CSR rows, and the rule that picks one.

A step on sparse rows changes only the weights of the features its batch holds. The
ranks can combine their gradients in two ways, both giving the synchronous model (the
same updates as one rank, up to the order of floating-point sums):

``dense``
    the engine's packed step buffer, ``P = K*d + K`` gradient sums plus the loss, the
    count and the control words, in one ``Allreduce`` (what dense rows do). It moves
    about ``2 * 8 * P`` bytes per rank per step, however few features the batch touched.
``sparse``
    each rank's touched entries (flat index and gradient sum, 16 bytes each) in one
    ``Allgatherv``, after one ``Allgather`` of a small header (the entry count, the
    intercept sums, loss, count and control words). Every rank adds the blocks in rank
    order, so all ranks hold the same sums. It moves ``16 * U`` bytes per rank per
    step, ``U`` the entries all ranks touched (at most the batch's stored values times
    ``K``).

:func:`choose_exchange` picks ``sparse`` when the batch's expected entries ``U`` are
fewer than half of ``P`` and the dense buffer is larger than 64 KB (below that an
Allreduce costs one latency, whatever it carries); ``U`` is estimated from the global
count of stored values: ``K * nnz / N * B`` for a global batch of ``B`` rows. (Measured on
the rcv1-like set, 47k features, 75 values a row, 2 ranks: at batch 256, U = 0.41 P, the
sparse exchange's epoch took 0.38 s and the dense one's 0.66 s; at batch 1024, U = 1.6 P,
0.30 s and 0.28 s. Besides the bytes, the dense exchange makes every update scan all P
sums.)
"""
import time

import numpy as np
from mpi4py import MPI

__all__ = ["EXCHANGES", "choose_exchange", "SparseExchange"]

EXCHANGES = ("auto", "dense", "sparse")
# below this many bytes a dense Allreduce is latency-bound: no reason to go sparse
_SMALL_BYTES = 64 << 10


def choose_exchange(asked, P, K, nnz_global, n_global, batch):
    """``"dense"`` or ``"sparse"`` for a fit on CSR rows (``asked``: the estimator's
    ``exchange``; "auto" applies the rule of the module doc). The same inputs on every
    rank give the same answer."""
    if asked != "auto":
        return asked
    expected = K * nnz_global / max(n_global, 1) * batch
    if 8 * P <= _SMALL_BYTES or expected >= P / 2:
        return "dense"
    return "sparse"


class SparseExchange:
    """The sparse exchange of one step, called where the dense path calls
    ``Allreduce(IN_PLACE, buf)``: after ``engine.grad_step``, it leaves the engine ready
    for ``apply`` / ``apply_checked`` (the tail words in ``buf`` summed as the Allreduce
    would). ``counters`` (optional): a :class:`~mpiml.parallel.sync.CommCounters`."""

    def __init__(self, engine, comm, counters=None):
        self.engine, self.mpi, self.counters = engine, comm.mpi, counters
        self.kd = engine.K * engine.d
        tail = len(engine.buf_arr) - self.kd
        self.header = np.zeros(1 + tail)
        self.headers = np.zeros((comm.size, 1 + tail))
        self.sizes = np.zeros(comm.size, dtype=np.int32)
        self.displs = np.zeros(comm.size, dtype=np.int32)
        self.send = np.zeros(1024)
        self._recv(1024)

    def _recv(self, n):
        self.recv = np.zeros(n)
        self.recv_spec = [self.recv, self.sizes, self.displs, MPI.DOUBLE]

    def __call__(self, _in_place, _buf):
        e = self.engine
        c0 = time.perf_counter()
        need = 2 * e.K * e.n_touched
        if self.send.shape[0] < need:
            self.send = np.zeros(max(need, 2 * self.send.shape[0]))
        m = e.pack_touched(self.send, self.header)
        self.mpi.Allgather(self.header, self.headers)
        total = e.exchange_sizes(self.headers, self.sizes, self.displs)
        if self.recv.shape[0] < total:
            self._recv(max(total, 2 * self.recv.shape[0]))
        self.mpi.Allgatherv([self.send, 2 * m, MPI.DOUBLE], self.recv_spec)
        e.load_exchanged(self.recv, self.headers)
        if self.counters is not None:
            self.counters.comm_seconds += time.perf_counter() - c0
            self.counters.bytes_sent += 8 * (2 * m + self.header.shape[0])
            self.counters.messages += 2
