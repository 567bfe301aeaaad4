"""Multi-layer perceptrons over the layers of :mod:`mpiml.parallel.model`.

:class:`Network` is a stack of dense layers with ReLU or tanh between them and a
softmax, logistic or identity output. With a model-parallel group of one rank
every layer is a plain (replicated) :class:`~mpiml.parallel.model.Linear`; with
``K > 1`` ranks the layers are tensor-parallel pairs: layer ``2i`` is
column-parallel (its output units split), the activation runs on the local
units, layer ``2i + 1`` is row-parallel (its input units split, the partial
products summed) -- one Allreduce in the forward and one in the backward pass per
pair. With an odd number of layers the last one (the output layer) is replicated.

All parameters live in one flat vector (``params``) and their gradient sums in a
slice of the step buffer, so the optimiser and the data-parallel Allreduce see one
contiguous array each. The arithmetic is numpy/BLAS in the data's precision.

:class:`MLPEngine` adds the data, the loss and the optimiser (SGD with momentum,
optionally Nesterov, or Adam) and implements the engine protocol of
:mod:`mpiml.models.training`.
"""
import numpy as np
from mpi4py import MPI

from .._kernels import sgd as _k

from .engine import StepEngine
from .model import ColumnParallelLinear, Linear, RowParallelLinear

__all__ = ["Network", "MLPEngine", "OUTPUTS", "ACTIVATIONS", "OUTPUT_LOSSES", "output_loss",
           "output_targets"]

OUTPUTS = ("softmax", "logistic", "identity")
ACTIVATIONS = ("relu", "tanh")
# an output layer -> the kernel's loss object (the one loss registry: mpiml._kernels.sgd):
# softmax cross-entropy, logistic loss, half the squared error
OUTPUT_LOSSES = {"softmax": _k.Multinomial, "logistic": _k.LogLoss, "identity": _k.SquaredLoss}


def output_targets(output, y):
    """Targets as the kernel's losses take them: class indices (softmax), -1/+1
    (logistic, from 0/1 labels), values (identity)."""
    y = np.asarray(y, dtype=np.float64)
    return np.ascontiguousarray(2.0 * y - 1.0 if output == "logistic" else y)


def output_loss(loss, out, targets):
    """``(summed loss, d loss / d output)`` of output-layer values ``out`` (n, K)."""
    z = np.ascontiguousarray(out, dtype=np.float64).reshape(len(targets), -1)
    g = np.empty_like(z)
    return float(loss.batch_grad(z, targets, g)), g


class Network:
    """The layers of an MLP with sizes ``sizes = [n_in, h1, ..., n_out]`` on one rank of
    the model-parallel communicator ``model`` (an mpiml Comm)."""

    def __init__(self, sizes, activation, output, model, dtype=np.float64):
        self.sizes = [int(s) for s in sizes]
        self.activation, self.output, self.model = activation, output, model
        self.dtype = np.dtype(dtype)
        n = len(self.sizes) - 1
        self.layers = []
        for i in range(n):
            a, b = self.sizes[i], self.sizes[i + 1]
            if model.size == 1:
                layer = Linear(a, b, dtype=self.dtype)
            elif i % 2 == 0 and i + 1 < n:
                layer = ColumnParallelLinear(a, b, model, dtype=self.dtype)
            elif i % 2 == 1:
                layer = RowParallelLinear(a, b, model, input_is_parallel=True, dtype=self.dtype)
            else:
                layer = Linear(a, b, dtype=self.dtype)      # the odd one out, replicated
            self.layers.append(layer)
        self.P = sum(layer.n_params for layer in self.layers)
        # called between layers when set (overlap: drives a pending non-blocking
        # Allreduce forward, since MPICH progresses it only inside MPI calls)
        self.poll = None

    def bind(self, params, grads):
        pos = 0
        for layer in self.layers:
            layer.bind(params[pos:pos + layer.n_params], grads[pos:pos + layer.n_params])
            pos += layer.n_params
        return self

    def init(self, seed):
        """Glorot-uniform weights and biases, as scikit-learn draws them (bound
        sqrt(6 / (fan_in + fan_out))), each rank its slice of the same draw."""
        for i, layer in enumerate(self.layers):
            layer.init(seed, i, np.sqrt(6.0 / (layer.n_in + layer.n_out)))

    # ------------------------------------------------------------ passes
    def forward(self, X, keep=False):
        """Output-layer values (rows, n_out); with ``keep`` the activations are kept
        for :meth:`backward`."""
        a = X
        acts = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z = layer.forward(a)
            if i < last:
                if self.activation == "relu":
                    np.maximum(z, 0, out=z)
                else:
                    np.tanh(z, out=z)
            if keep:
                acts.append(z)
            if self.poll is not None:
                self.poll()
            a = z
        self._acts = acts if keep else None
        return a

    def backward(self, g):
        """Gradient sums of every layer's parameters from d loss / d output ``g``."""
        acts = self._acts
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_input_grad=i > 0)
            if self.poll is not None:
                self.poll()
            if i > 0:
                a = acts[i - 1]
                if self.activation == "relu":
                    g *= a > 0
                else:
                    g *= 1.0 - a * a

    # ------------------------------------------------------------ logical layout
    def logical_sizes(self):
        """Lengths of the logical flat vector's pieces: W0, b0, W1, b1, ..."""
        out = []
        for layer in self.layers:
            out += [layer.n_in * layer.n_out, layer.n_out]
        return out

    def gather(self, flat):
        """The logical flat vector [W0 (n_in x n_out row-major), b0, W1, b1, ...] from
        this rank's flat vector ``flat``, on the group's rank 0 (None elsewhere)."""
        m = self.model
        pieces, pos = [], 0
        for layer in self.layers:
            k = int(np.prod(layer.weight_shape))
            W = flat[pos:pos + k].reshape(layer.weight_shape)
            b = flat[pos + k:pos + layer.n_params]
            pos += layer.n_params
            if m.size == 1 or layer.split is None:
                pieces += [np.asarray(W, dtype=np.float64).ravel(), np.asarray(b, np.float64)]
                continue
            if layer.split == "columns":      # W[:, lo:hi] and b[lo:hi]
                Wf = _gather_rows(np.ascontiguousarray(W.T), m)
                bf = _gather_rows(np.ascontiguousarray(b), m)
                if m.rank == 0:
                    pieces += [Wf.T.ravel(), bf]
            else:                             # W[lo:hi, :], b whole
                Wf = _gather_rows(np.ascontiguousarray(W), m)
                if m.rank == 0:
                    pieces += [Wf.ravel(), np.asarray(b, np.float64)]
        return np.concatenate(pieces) if m.rank == 0 or m.size == 1 else None

    def scatter(self, logical, out):
        """Fill this rank's flat vector ``out`` from the logical flat vector."""
        logical = np.asarray(logical).ravel()
        want = sum(self.logical_sizes())
        if logical.shape[0] != want:
            raise ValueError(f"parameter vector of length {logical.shape[0]}; the network "
                             f"{self.sizes} has {want}")
        pos, lpos = 0, 0
        for layer in self.layers:
            W = logical[lpos:lpos + layer.n_in * layer.n_out].reshape(layer.n_in, layer.n_out)
            lpos += layer.n_in * layer.n_out
            b = logical[lpos:lpos + layer.n_out]
            lpos += layer.n_out
            if layer.split == "columns":
                W, b = W[:, layer.lo:layer.hi], b[layer.lo:layer.hi]
            elif layer.split == "rows":
                W = W[layer.lo:layer.hi]
            k = int(np.prod(layer.weight_shape))
            out[pos:pos + k] = W.ravel()
            out[pos + k:pos + layer.n_params] = b
            pos += layer.n_params


def _gather_rows(a, comm):
    """Rows of every rank's ``a`` stacked in rank order on rank 0 (float64)."""
    a = np.asarray(a, dtype=np.float64)
    rows = comm.mpi.gather(a.shape[0], root=0)
    tail = a.shape[1:]
    width = int(np.prod(tail)) if tail else 1
    recv = None
    if comm.rank == 0:
        recv = np.empty((sum(rows),) + tail)
        comm.mpi.Gatherv(np.ascontiguousarray(a), [recv, [r * width for r in rows]], root=0)
    else:
        comm.mpi.Gatherv(np.ascontiguousarray(a), None, root=0)
    return recv


class MLPEngine(StepEngine):
    """Training engine of an MLP (see the module doc).

    Parameters
    ----------
    X : this rank's rows (the ranks of a model-parallel group hold the same rows)
    y : float64 targets: class indices (softmax), 0/1 (logistic) or values
    sizes, activation, output : the network
    grid : mpiml.comm.Grid
    hyper : dict with solver ("sgd" | "adam"), learning_rate ("constant" |
        "invscaling"), learning_rate_init, power_t, momentum, nesterovs_momentum,
        beta_1, beta_2, epsilon, alpha, seed
    n_control : control words in the step buffer
    """

    def __init__(self, X, y, sizes, activation, output, grid, hyper, n_control):
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        self.net = Network(sizes, activation, output, grid.model, dtype)
        # the step buffer in the data's precision: a float32 gradient halves the Allreduce
        super().__init__(self.net.P, grid.model, n_control, buf_dtype=dtype)
        if dtype == np.float32:
            self.seq_mod = 4096.0      # sequence words stay exact in float32 up to 4096 ranks
        self.X = np.ascontiguousarray(X, dtype=dtype)
        self.y = np.asarray(y, dtype=np.float64)
        self.yi = self.y.astype(np.intp) if output == "softmax" else None
        self.loss, self.targets = OUTPUT_LOSSES[output](), output_targets(output, self.y)
        self.params = np.zeros(self.P, dtype=dtype)
        self.sw = None
        self.net.bind(self.params, self.buf_arr[:self.P])
        self.net.init(hyper["seed"])
        self.h = dict(hyper)
        self.slots = [np.zeros(self.P, dtype=dtype)
                      for _ in range(2 if self.h["solver"] == "adam" else 1)]

    def set_sample_weight(self, sw):
        """Per-row weights (in the rows' order) multiplying each row's loss and gradient;
        None removes them."""
        self.sw = None if sw is None else np.ascontiguousarray(sw, dtype=np.float64)

    def set_poll(self, fn):
        """Call ``fn`` between layers of the next passes (None: stop)."""
        self.net.poll = fn

    # ------------------------------------------------------------ loss
    def _output_grad(self, out, lo, hi):
        """Summed loss of the rows and d loss / d output (the kernel's loss object)."""
        if self.sw is None:
            loss, g = output_loss(self.loss, out, self.targets[lo:hi])
        else:
            w = self.sw[lo:hi]
            rows, g = self.loss.loss_grad(np.asarray(out, dtype=np.float64),
                                          self.targets[lo:hi])
            loss = float(rows @ w)
            g *= w[:, None]
        return loss, g.astype(self.X.dtype, copy=False)

    def _grad(self, lo, hi):
        out = self.net.forward(self.X[lo:hi], keep=True)
        loss, g = self._output_grad(out, lo, hi)
        self.net.backward(np.ascontiguousarray(g))
        return loss

    def _update(self, count):
        h = self.h
        g = self.buf_arr[:self.P]
        if h["alpha"] > 0:
            # scikit-learn's L2 term: (sum of gradients + alpha W) / n_batch, weights only
            for layer in self.net.layers:
                layer.dW += h["alpha"] * layer.W
        g /= count
        lr = h["learning_rate_init"]
        if h["learning_rate"] == "invscaling":
            lr = lr / self.t ** h["power_t"]
        p = self.params
        if h["solver"] == "adam":
            m, v = self.slots
            b1, b2 = h["beta_1"], h["beta_2"]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            step = lr * np.sqrt(1.0 - b2 ** self.t) / (1.0 - b1 ** self.t)
            p -= step * m / (np.sqrt(v) + h["epsilon"])
        else:
            vel = self.slots[0]
            mu = h["momentum"]
            vel *= mu
            vel -= lr * g
            if h["nesterovs_momentum"] and mu > 0:
                p += mu * vel - lr * g
            else:
                p += vel

    # ------------------------------------------------------------ state
    def get_state(self):
        state = {"w": self.net.gather(self.params)}
        for i, slot in enumerate(self.slots):
            state[f"opt_{i}"] = self.net.gather(slot)
        return state

    def set_state(self, state):
        if "shard" in state:               # partial_fit continuing: this rank's own arrays
            if state["shard"].shape != (self.P,):
                raise ValueError("the fitted shard does not match this grid: refit")
            self.params[:] = state["shard"]
            for slot, saved in zip(self.slots, state["shard_slots"]):
                slot[:] = saved
            return
        self.net.scatter(state["w"], self.params)
        for i, slot in enumerate(self.slots):
            if f"opt_{i}" not in state:
                raise ValueError(f"the optimiser state opt_{i} is missing (another solver?)")
            self.net.scatter(state[f"opt_{i}"], slot)

    def params_finite(self):
        ok = np.array([1.0 if np.isfinite(self.params).all() else 0.0])
        if self.model.size > 1:
            self.model.mpi.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
        return bool(ok[0] > 0.0)
