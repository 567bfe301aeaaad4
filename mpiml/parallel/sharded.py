"""Linear models whose weight matrix is split over a model-parallel group.

Two splits of the ``(K, d)`` weight matrix ``W`` (K outputs, d features):

* **by classes** (softmax with many classes): rank ``m`` of the group holds rows
  ``k0:k1`` of ``W`` and of the intercepts (the :func:`~mpiml.parallel.model.divide`
  rule). Logits stay local; the softmax normaliser of each row comes from an
  Allreduce(MAX) of the row maxima and an Allreduce(SUM) of the sums of
  exponentials (which also carries the true-class logits for the loss). The loss
  and gradient are exact.
* **by features** (wide data; any loss): rank ``m`` holds columns ``j0:j1`` of
  ``W`` and reads only those columns of ``X``; the partial margins
  ``X[:, j0:j1] @ W[:, j0:j1].T`` are summed with one Allreduce, the loss is
  evaluated on the full margins (identically on every rank of the group), and
  each rank's gradient is ``G.T @ X[:, j0:j1]``. The intercepts are not split.

Either way the update is the same kernel as the data-parallel engine's
(``sgd_update``), applied to the local shard, so the sharded model follows the
same trajectory as the unsharded one up to floating-point summation order.
Checkpoints and model files hold the logical ``W``, gathered on the group's rank 0.
"""
import numpy as np
from mpi4py import MPI

from .._kernels import sgd as _k
from ..comm import chunks
from .engine import StepEngine
from .model import divide, gather_from

__all__ = ["ShardedLinear", "ShardedLinearEngine", "choose_split"]

_PREDICT_BLOCK = 4096     # rows per block in prediction (bounds the n x K temporaries)


def choose_split(shard, multinomial):
    """``"classes"`` or ``"features"`` for a ``shard`` setting ("auto": classes for a
    softmax model, features otherwise)."""
    if shard == "auto":
        return "classes" if multinomial else "features"
    return shard


class ShardedLinear:
    """One rank's shard of a linear model (``W`` rows or columns, intercepts) and the
    collective prediction functions over the model-parallel communicator ``model``.

    Parameters
    ----------
    split : {"classes", "features"}
    K, d : logical numbers of outputs and features
    model : mpiml Comm of the model-parallel group
    W : ndarray, (k1-k0, d) or (K, j1-j0)
    b : ndarray, (k1-k0,) or (K,)
    """

    def __init__(self, split, K, d, model, W=None, b=None):
        self.split, self.K, self.d, self.model = split, int(K), int(d), model
        self.lo, self.hi = divide(self.K if split == "classes" else self.d, model)
        n = self.hi - self.lo
        self.shape = (n, self.d) if split == "classes" else (self.K, n)
        self.W = np.zeros(self.shape) if W is None else W
        self.b = np.zeros(n if split == "classes" else self.K) if b is None else b

    @classmethod
    def from_logical(cls, split, coef, intercept, model):
        """This rank's shard of the logical ``coef`` (K, d) and ``intercept`` (K,)."""
        coef = np.atleast_2d(coef)
        K, d = coef.shape
        s = cls(split, K, d, model)
        if split == "classes":
            s.W = np.array(coef[s.lo:s.hi], dtype=np.float64)
            s.b = np.array(intercept[s.lo:s.hi], dtype=np.float64)
        else:
            s.W = np.array(coef[:, s.lo:s.hi], dtype=np.float64)
            s.b = np.array(intercept, dtype=np.float64)
        return s

    # ------------------------------------------------------------ layout
    def local_columns(self, X):
        """This rank's columns of ``X``: all of them for a class split; for a feature
        split, ``X`` may hold all ``d`` columns or exactly this rank's."""
        if self.split == "classes" or X.shape[1] == self.hi - self.lo != self.d:
            return X
        if X.shape[1] != self.d:
            raise ValueError(f"X has {X.shape[1]} columns; the model has {self.d} features "
                             f"(this rank's shard: columns {self.lo}:{self.hi})")
        return X[:, self.lo:self.hi]

    def gather(self, flat_local, root_only=True):
        """Logical flat vector [W (K x d) row-major, b (K)] assembled from the shards
        (collective over the group; on its rank 0 only with ``root_only``)."""
        m = self.model
        nW = int(np.prod(self.shape))
        Wl = np.asarray(flat_local[:nW], dtype=np.float64).reshape(self.shape)
        bl = np.asarray(flat_local[nW:], dtype=np.float64)
        sizes = [int(hi - lo) for lo, hi in chunks(self.K if self.split == "classes" else self.d,
                                                     m.size)]
        if self.split == "classes":
            send = np.concatenate([Wl.ravel(), bl])
            counts = [n * (self.d + 1) for n in sizes]
        else:
            send = np.ascontiguousarray(Wl.T).ravel()
            counts = [n * self.K for n in sizes]
        recv = None
        if m.rank == 0 or not root_only:
            recv = np.empty(sum(counts))
        if m.size == 1:
            recv[:] = send
        elif root_only:
            m.mpi.Gatherv(send, [recv, counts] if m.rank == 0 else None, root=0)
        else:
            m.Allgatherv(send, recv, counts)
        if recv is None:
            return None
        if self.split == "classes":
            W, b, pos = [], [], 0
            for n in sizes:
                blk = recv[pos:pos + n * (self.d + 1)]
                W.append(blk[:n * self.d])
                b.append(blk[n * self.d:])
                pos += n * (self.d + 1)
            return np.concatenate(W + b)
        W = recv.reshape(self.d, self.K).T
        return np.concatenate([W.ravel(), bl])

    # ------------------------------------------------------------ prediction (collective)
    def _blocks(self, n):
        # every rank of the group has the same rows, so the same number of blocks
        return range(0, max(n, 1), _PREDICT_BLOCK)

    def _logits(self, Xb):
        """Class split: local logits (rows, k1-k0); feature split: full margins (rows, K)."""
        dtype = Xb.dtype if Xb.dtype in (np.float32, np.float64) else np.float64
        Z = np.asarray(Xb.astype(dtype, copy=False) @ self.W.T.astype(dtype), dtype=np.float64)
        if self.split == "features":
            Z = np.ascontiguousarray(Z)
            self.model.Allreduce(Z)
        Z += self.b
        return Z

    def decision_function(self, X):
        """Full margins (n, K) on every rank of the group (gathered for a class split)."""
        X = self.local_columns(X)
        out = np.empty((X.shape[0], self.K))
        for s in self._blocks(X.shape[0]):
            Z = self._logits(X[s:s + _PREDICT_BLOCK])
            if self.split == "classes":
                Z = _gather_columns(Z, self.model)
            out[s:s + Z.shape[0]] = Z
        return out

    def predict_index(self, X):
        """Index of the largest margin of each row (ties: the lowest index, as argmax);
        for one output, 1 where the margin is positive."""
        X = self.local_columns(X)
        out = np.empty(X.shape[0], dtype=np.intp)
        for s in self._blocks(X.shape[0]):
            Z = self._logits(X[s:s + _PREDICT_BLOCK])
            if self.split == "features" or self.model.size == 1:
                out[s:s + Z.shape[0]] = (Z[:, 0] > 0) if self.K == 1 else np.argmax(Z, axis=1)
                continue
            best = np.max(Z, axis=1) if Z.shape[1] else np.full(Z.shape[0], -np.inf)
            arg = np.argmax(Z, axis=1) + self.lo
            allbest = self.model.mpi.allgather(best)
            allarg = self.model.mpi.allgather(arg)
            B = np.vstack(allbest)
            winner = np.argmax(B, axis=0)        # the lowest rank holding the maximum
            out[s:s + Z.shape[0]] = np.vstack(allarg)[winner, np.arange(B.shape[1])]
        return out

    def softmax_stats(self, Z, y_idx=None):
        """Class split: (row max, row sum of exp(z - max), summed true-class logit)
        over the whole group for local logits ``Z``: two Allreduces."""
        m = np.max(Z, axis=1) if Z.shape[1] else np.full(Z.shape[0], -np.inf)
        self.model.Allreduce(m, op=MPI.MAX)
        E = np.exp(Z - m[:, None])
        vec = np.empty(Z.shape[0] + 1)
        np.sum(E, axis=1, out=vec[:-1])
        vec[-1] = 0.0
        if y_idx is not None:
            own = (y_idx >= self.lo) & (y_idx < self.hi)
            rows = np.flatnonzero(own)
            vec[-1] = Z[rows, y_idx[rows] - self.lo].sum()
        self.model.Allreduce(vec)
        return m, E, vec[:-1], vec[-1]

    def predict_proba(self, X):
        """Softmax probabilities (n, K) on every rank (class split) or None (caller's
        formula on the full margins)."""
        X = self.local_columns(X)
        out = np.empty((X.shape[0], self.K))
        for s in self._blocks(X.shape[0]):
            Z = self._logits(X[s:s + _PREDICT_BLOCK])
            _, E, S, _ = self.softmax_stats(Z)
            out[s:s + Z.shape[0]] = _gather_columns(E / S[:, None], self.model)
        return out

    def loss_sum(self, X, y_enc, loss):
        """Summed loss of the rows (identical on every rank of the group)."""
        X = self.local_columns(X)
        total = 0.0
        for s in self._blocks(X.shape[0]):
            Z = self._logits(X[s:s + _PREDICT_BLOCK])
            yb = y_enc[s:s + _PREDICT_BLOCK]
            if self.split == "classes":
                m, _, S, zt = self.softmax_stats(Z, yb.astype(np.intp))
                total += float(np.sum(np.log(S) + m) - zt)
            elif Z.shape[0]:
                total += loss.batch_grad(Z, np.ascontiguousarray(yb), np.empty_like(Z))
        return total


def _gather_columns(Z, model):
    return Z if model.size == 1 else gather_from(np.ascontiguousarray(Z), model)


class ShardedLinearEngine(StepEngine):
    """Training engine of a :class:`ShardedLinear` model (see the module doc).

    Parameters
    ----------
    X : this rank's rows (all columns, or only its feature shard when ``columns``)
    y : encoded targets (values, +-1, or class indices)
    K, d : outputs and features
    loss : kernel loss object (feature split; the class split is softmax)
    split : {"classes", "features"}
    grid : mpiml.comm.Grid
    hyper : dict of the update's hyper-parameters (eta0, alpha, l1_ratio, penalty,
        schedule, power_t, momentum, fit_intercept, optimal_init; kernel codes)
    n_control : control words in the step buffer
    columns_given : X holds only this rank's feature shard
    """

    def __init__(self, X, y, K, d, loss, split, grid, hyper, n_control, columns_given=False):
        self.shard = ShardedLinear(split, K, d, grid.model)
        s = self.shard
        nW = int(np.prod(s.shape))
        super().__init__(nW + s.b.shape[0], grid.model, n_control)
        if split == "features" and not columns_given:
            X = X[:, s.lo:s.hi]
            X = X.tocsr() if getattr(X, "format", None) == "csr" else np.ascontiguousarray(X)
        self.X = X
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        self.yi = self.y.astype(np.intp) if split == "classes" else None
        self.loss = loss
        if loss is not None:
            loss.single = False
        self.nW = nW
        self.params = np.zeros(self.P)
        self.velocity = np.zeros(self.P)
        self._bind()
        self.gW = self.buf_arr[:nW].reshape(s.shape)
        self.gb = self.buf_arr[nW:self.P]
        self.h = dict(hyper)
        self.W_c = None          # the weights in the data's precision (float32 data)

    def _bind(self):
        self.shard.W = self.params[:self.nW].reshape(self.shard.shape)
        self.shard.b = self.params[self.nW:]
        self.W_c = None

    def _weights(self):
        if self.X.dtype == np.float64:
            return self.shard.W
        if self.W_c is None:
            self.W_c = self.shard.W.astype(self.X.dtype)
        return self.W_c

    def _grad(self, lo, hi):
        s = self.shard
        Xb = self.X[lo:hi]
        Z = np.asarray(Xb @ self._weights().T, dtype=np.float64)
        if s.split == "classes":
            Z += s.b
            m, E, S, zt = s.softmax_stats(Z, self.yi[lo:hi])
            loss = float(np.sum(np.log(S) + m) - zt)
            G = E
            G /= S[:, None]
            yb = self.yi[lo:hi]
            rows = np.flatnonzero((yb >= s.lo) & (yb < s.hi))
            G[rows, yb[rows] - s.lo] -= 1.0
        else:
            Z = np.ascontiguousarray(Z)
            s.model.Allreduce(Z)
            Z += s.b
            G = np.empty_like(Z)
            loss = self.loss.batch_grad(Z, self.y[lo:hi], G)
        Gc = G.astype(Xb.dtype, copy=False)
        self.gW[...] = Gc.T @ Xb
        np.sum(G, axis=0, out=self.gb)
        return loss

    def _update(self, count):
        h = self.h
        eta = _k.step_size(h["schedule"], self.t, h["eta0"], h["alpha"], h["power_t"],
                           h["optimal_init"])
        _k.sgd_update(self.params, self.velocity, self.buf_arr, self.nW, count, eta,
                      h["penalty"], h["alpha"], h["l1_ratio"], h["momentum"], h["fit_intercept"])
        self.W_c = None

    def get_state(self):
        return {"w": self.shard.gather(self.params), "velocity": self.shard.gather(self.velocity)}

    def set_state(self, state):
        """Logical arrays (``w``, ``velocity``: from a checkpoint or a file), or this
        rank's own shard (``shard``, ``shard_velocity``: partial_fit continuing)."""
        s = self.shard
        if "shard" in state:
            if state["shard"].shape != (self.P,):
                raise ValueError("the fitted shard does not match this grid: refit")
            self.params[:] = state["shard"]
            self.velocity[:] = state["shard_velocity"]
            self.W_c = None
            return
        for name, target in (("w", self.params), ("velocity", self.velocity)):
            flat = np.asarray(state[name], dtype=np.float64).ravel()
            if flat.shape[0] != s.K * (s.d + 1):
                raise ValueError(f"{name}: parameter vector of length {flat.shape[0]}, the model "
                                 f"has {s.K * (s.d + 1)}")
            part = ShardedLinear.from_logical(s.split, flat[:s.K * s.d].reshape(s.K, s.d),
                                              flat[s.K * s.d:], s.model)
            target[:self.nW] = part.W.ravel()
            target[self.nW:] = part.b
        self.W_c = None
