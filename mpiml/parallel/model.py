"""Model parallelism: weight matrices split across the ranks of a model-parallel group.

The pieces follow Megatron-LM's tensor parallelism, written out by hand (there is
no autograd here): every layer has a ``forward`` and a ``backward``, and every
collective of a forward pass has its mirror in the backward pass.

Region functions (over the model-parallel communicator ``comm``), each with a
``forward`` (calling the object) and a ``backward``:

================  ==========================  ==========================
region            forward                     backward
================  ==========================  ==========================
``copy_to``       identity                    Allreduce (sum)
``reduce_from``   Allreduce (sum)             identity
``scatter_to``    keep this rank's columns    Allgather of the columns
``gather_from``   Allgather of the columns    keep this rank's columns
================  ==========================  ==========================

Layers (``y = x W + b`` with ``W`` of shape ``(n_in, n_out)``, as scikit-learn's
``coefs_``):

* :class:`ColumnParallelLinear` splits ``W`` along the outputs: rank ``m`` holds
  ``W[:, lo:hi]`` and ``b[lo:hi]``; its input is copied to every rank
  (``copy_to``), its output stays split (or is gathered with ``gather_output``).
* :class:`RowParallelLinear` splits ``W`` along the inputs: rank ``m`` holds
  ``W[lo:hi, :]``; its input arrives split (``input_is_parallel``) or is
  scattered; the partial products are summed (``reduce_from``) and the bias,
  not split, is added once.

A column-parallel layer followed by a row-parallel one (with an element-wise
activation between them) costs one Allreduce in the forward pass and one in the
backward pass. Every split uses :func:`divide`, the package's one partition rule
(:func:`mpiml.comm.chunk`): uneven splits are fine.

Gradients are *sums* over the rows of the batch (the caller divides by the global
row count after the data-parallel Allreduce), and weights are initialised as
slices of the full matrix a single rank would draw (:func:`master_uniform`), so
any split gives the same model.
"""
import numpy as np
from mpi4py import MPI

from ..comm import Comm, chunk, get_comm

__all__ = ["divide", "copy_to", "reduce_from", "scatter_to", "gather_from",
           "ColumnParallelLinear", "RowParallelLinear", "Linear", "master_uniform"]


def divide(n, comm):
    """This rank's half-open range of ``n`` items split over ``comm`` (the chunk rule)."""
    c = get_comm(comm)
    return chunk(n, c.size, c.rank)


# ------------------------------------------------------------------------------ regions
def _identity(x, comm):
    return x


def _allreduce(x, comm):
    if comm.size > 1:
        x = np.ascontiguousarray(x)
        comm.mpi.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    return x


def _split_last(x, comm):
    lo, hi = divide(x.shape[-1], comm)
    return np.ascontiguousarray(x[..., lo:hi])


def _gather_last(x, comm):
    """Concatenate every rank's columns (last axis) in rank order."""
    if comm.size == 1:
        return x
    widths = comm.mpi.allgather(x.shape[-1])
    n = x.shape[0]
    # gather the transposed blocks: each rank's columns become contiguous rows
    send = np.ascontiguousarray(x.T)
    recv = np.empty((sum(widths), n), dtype=x.dtype)
    comm.Allgatherv(send, recv, [w * n for w in widths])
    return np.ascontiguousarray(recv.T)


class Region:
    """A pair of functions over a model-parallel communicator: ``region(x, comm)`` is
    the forward pass, ``region.backward(g, comm)`` its mirror in the backward pass."""

    def __init__(self, name, forward, backward):
        self.name, self._forward, self._backward = name, forward, backward

    def __call__(self, x, comm):
        return self._forward(x, get_comm(comm))

    def backward(self, g, comm):
        return self._backward(g, get_comm(comm))

    def __repr__(self):
        return f"<region {self.name}>"


copy_to = Region("copy_to", _identity, _allreduce)
reduce_from = Region("reduce_from", _allreduce, _identity)
scatter_to = Region("scatter_to", _split_last, _gather_last)
gather_from = Region("gather_from", _gather_last, _split_last)


# ------------------------------------------------------------------------------ weights
_INIT_BLOCK = 256       # rows per random block: a slice never needs the whole matrix


def master_uniform(seed, tag, shape, bound, rows=None, cols=None, dtype=np.float64):
    """Rows ``rows`` and columns ``cols`` of the ``shape`` matrix of U(-bound, bound)
    numbers drawn for ``(seed, tag)``.

    The matrix is drawn in blocks of rows, each from its own generator, so a rank
    draws only the row blocks its slice touches and every slice of every split
    holds the same numbers as the full matrix.
    """
    n_rows, n_cols = shape
    r0, r1 = rows if rows is not None else (0, n_rows)
    c0, c1 = cols if cols is not None else (0, n_cols)
    out = np.empty((r1 - r0, c1 - c0), dtype=dtype)
    if r1 <= r0 or c1 <= c0:
        return out
    for blk in range(r0 // _INIT_BLOCK, (r1 - 1) // _INIT_BLOCK + 1):
        b0 = blk * _INIT_BLOCK
        b1 = min(n_rows, b0 + _INIT_BLOCK)
        rng = np.random.default_rng([int(seed), *map(int, np.atleast_1d(tag)), blk])
        block = rng.uniform(-bound, bound, size=(b1 - b0, n_cols))
        lo, hi = max(r0, b0), min(r1, b1)
        out[lo - r0:hi - r0] = block[lo - b0:hi - b0, c0:c1]
    return out


# ------------------------------------------------------------------------------ layers
class _ParallelLinear:
    """Shared bookkeeping: shard shapes, views into flat parameter/gradient vectors."""
    split = None

    def __init__(self, n_in, n_out, comm, dtype):
        self.comm = get_comm(comm) if comm is not None else Comm(MPI.COMM_SELF, dup=False)
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.dtype = np.dtype(dtype)
        self._x = None

    @property
    def n_params(self):
        return int(np.prod(self.weight_shape)) + self.bias_size

    def bind(self, params, grads):
        """Make the weights and their gradients views of slices of flat vectors
        (so the optimiser and the packed Allreduce see one buffer)."""
        k = int(np.prod(self.weight_shape))
        self.W = params[:k].reshape(self.weight_shape)
        self.b = params[k:k + self.bias_size]
        self.dW = grads[:k].reshape(self.weight_shape)
        self.db = grads[k:k + self.bias_size]
        return self

    def init(self, seed, tag, bound):
        """Glorot-style uniform weights and biases: this rank's slice of the full draw."""
        rows, cols, bias = self._slices()
        self.W[...] = master_uniform(seed, (tag, 0), (self.n_in, self.n_out), bound, rows, cols)
        self.b[...] = master_uniform(seed, (tag, 1), (1, self.n_out), bound, None, bias)[0]

    def _accumulate(self, x, gy):
        np.matmul(x.T, gy, out=self.dW)
        np.sum(gy, axis=0, out=self.db)


class ColumnParallelLinear(_ParallelLinear):
    """``y = x W + b``, ``W`` split along its outputs (columns) over ``comm``.

    Parameters
    ----------
    n_in, n_out : int
        Logical (unsplit) sizes.
    comm : the model-parallel communicator
    gather_output : bool
        Gather the output columns on every rank (``gather_from``); otherwise the
        output stays split, ready for a :class:`RowParallelLinear`.
    """
    split = "columns"

    def __init__(self, n_in, n_out, comm=None, *, gather_output=False, dtype=np.float64):
        super().__init__(n_in, n_out, comm, dtype)
        self.lo, self.hi = divide(self.n_out, self.comm)
        self.gather_output = gather_output
        self.weight_shape = (self.n_in, self.hi - self.lo)
        self.bias_size = self.hi - self.lo

    def _slices(self):
        return None, (self.lo, self.hi), (self.lo, self.hi)

    def forward(self, x):
        self._x = copy_to(x, self.comm)
        y = self._x @ self.W
        y += self.b
        return gather_from(y, self.comm) if self.gather_output else y

    def backward(self, gy, need_input_grad=True):
        """Gradient sums of this rank's W and b; returns d loss / d x (or None)."""
        if self.gather_output:
            gy = gather_from.backward(gy, self.comm)
        self._accumulate(self._x, gy)
        if not need_input_grad:
            return None
        return copy_to.backward(gy @ self.W.T, self.comm)


class RowParallelLinear(_ParallelLinear):
    """``y = x W + b``, ``W`` split along its inputs (rows) over ``comm``; ``b`` is
    not split (every rank holds it and adds it once, after the sum).

    Parameters
    ----------
    input_is_parallel : bool
        The input arrives already split by columns (the output of a
        :class:`ColumnParallelLinear`); otherwise it is split here (``scatter_to``).
    """
    split = "rows"

    def __init__(self, n_in, n_out, comm=None, *, input_is_parallel=True, dtype=np.float64):
        super().__init__(n_in, n_out, comm, dtype)
        self.lo, self.hi = divide(self.n_in, self.comm)
        self.input_is_parallel = input_is_parallel
        self.weight_shape = (self.hi - self.lo, self.n_out)
        self.bias_size = self.n_out

    def _slices(self):
        return (self.lo, self.hi), None, None

    def forward(self, x):
        if not self.input_is_parallel:
            x = scatter_to(x, self.comm)
        self._x = x
        y = reduce_from(x @ self.W, self.comm)
        y += self.b
        return y

    def backward(self, gy, need_input_grad=True):
        gy = reduce_from.backward(gy, self.comm)
        self._accumulate(self._x, gy)
        if not need_input_grad:
            return None
        gx = gy @ self.W.T
        return gx if self.input_is_parallel else scatter_to.backward(gx, self.comm)


class Linear(ColumnParallelLinear):
    """A layer every rank holds whole (a column-parallel layer over one rank)."""
    split = None

    def __init__(self, n_in, n_out, dtype=np.float64):
        super().__init__(n_in, n_out, None, dtype=dtype)
