# Included by sgd.pyx (it shares the losses, the update rule and the Engine protocol).
"""Sparse (CSR) rows for the linear models: :class:`SparseEngine`.

The same protocol, plan and update rule as :class:`Engine`, on this rank's rows as a
CSR matrix (values float32 or float64, indices int32 or int64). A step touches only
the features present in its rows:

* margins and gradient cost O(nnz of the batch x K);
* with plain SGD and an L2 (or no) penalty the weights are stored scaled,
  ``w = scale * v``: the L2 shrink of every weight is one multiplication of ``scale``
  and the update writes only the touched entries of ``v``, so a step costs O(nnz), not
  O(d) (scikit-learn's and Bottou's weight-vector trick); ``scale`` is folded back into
  ``v`` when it gets small, when the state is read (checkpoints, the fitted model) and
  before model averaging;
* with momentum or an L1 part every weight changes at every step: the update is the
  dense engine's (O(d) per step), so the model is the same as the dense one.

Gradient sums are accumulated in float64 whatever the values' type.

Steps run in one of three ways:

* inside :meth:`run_plan` (one rank): the touched features of each step are known, and
  the update and the clearing of the gradient touch only them;
* ``grad_step`` + a dense Allreduce of ``buf`` + ``apply``: the update scans all ``P``
  gradient sums (the Allreduce is O(P) anyway);
* ``grad_step`` + :meth:`pack_touched` + an exchange of the ranks' touched entries
  (mpiml.parallel.sparse) + :meth:`load_exchanged` + ``apply``: O(touched) again.
"""

ctypedef fused sindex:
    int
    long long


cdef inline double _soft(double v, double t) noexcept nogil:
    """Soft-threshold: v moved towards 0 by t, stopping at 0."""
    if v > t:
        return v - t
    if v < -t:
        return v + t
    return 0.0


cdef double _sparse_rows(const floating[::1] data, const sindex[::1] ind, const sindex[::1] ptr,
                         const double* y, Py_ssize_t lo, Py_ssize_t hi, const double* v,
                         double scale, const double* b, Py_ssize_t K, Py_ssize_t d, Loss loss,
                         double* Md, double* Gd, double* g, double* gb, const double* sw,
                         unsigned int* stamp, unsigned int tag, int* touched,
                         Py_ssize_t* nt, const double* lag, double total) noexcept nogil:
    """Summed loss of CSR rows [lo, hi); g (K, d) += dW, gb += db; the features first
    seen in this step (``stamp[j] != tag``) are appended to ``touched``. ``lag`` (or
    NULL): the L1 thresholds weight j has not received yet (``total - lag[j]``, in the
    units of ``v``); the margins use the weights with them applied (read only: the
    stored weights change only in the update, identically on every rank)."""
    cdef Py_ssize_t i, k, p, a, e, j
    cdef double s = 0.0, acc, gi
    for i in range(lo, hi):
        a = <Py_ssize_t>ptr[i]
        e = <Py_ssize_t>ptr[i + 1]
        for k in range(K):
            acc = 0.0
            if lag == NULL:
                for p in range(a, e):
                    acc += v[k * d + ind[p]] * <double>data[p]
            else:
                for p in range(a, e):
                    j = <Py_ssize_t>ind[p]
                    if lag[j] != total:
                        acc += _soft(v[k * d + j], total - lag[j]) * <double>data[p]
                    else:
                        acc += v[k * d + j] * <double>data[p]
            Md[k] = scale * acc + b[k]
        if sw == NULL:
            s += loss.batch(Md, y + i, Gd, 1, K)
        else:
            s += sw[i] * loss.batch(Md, y + i, Gd, 1, K)
            for k in range(K):
                Gd[k] *= sw[i]
        for k in range(K):
            gb[k] += Gd[k]
        for p in range(a, e):
            j = <Py_ssize_t>ind[p]
            if stamp[j] != tag:
                stamp[j] = tag
                touched[nt[0]] = <int>j
                nt[0] += 1
            for k in range(K):
                g[k * d + j] += Gd[k] * <double>data[p]
    return s


cdef class SparseEngine(Engine):
    """:class:`Engine` on CSR rows. ``X``: a ``scipy.sparse`` CSR matrix (n, d) with
    float32 or float64 values and int32 or int64 indices (canonical or not: duplicate
    entries add up). See the module doc for how a step runs."""
    cdef const float[::1] v32
    cdef const double[::1] v64
    cdef const int[::1] ind32, ptr32
    cdef const long long[::1] ind64, ptr64
    cdef readonly bint idx64
    cdef readonly double scale
    cdef readonly object stamp_arr, touched_arr
    cdef unsigned int[::1] stamp
    cdef int[::1] touched
    cdef readonly Py_ssize_t n_touched
    cdef unsigned int tag
    cdef bint local, exchanged, clean
    cdef readonly bint scaled
    # lazy L1 (plain SGD with an l1 / elasticnet penalty): the thresholds applied so far
    # (``l1_total``, in the units of v) and, per feature, the total it has received
    cdef readonly object lag_arr
    cdef double[::1] lag
    cdef readonly double l1_total
    cdef readonly bint lazy_l1

    def __init__(self, X, y, Py_ssize_t K, Loss loss, *, double eta0=0.01, double alpha=1e-4,
                 double l1_ratio=0.15, int penalty=1, int schedule=0, double power_t=0.5,
                 double momentum=0.0, bint fit_intercept=True, double optimal_init=1.0,
                 Py_ssize_t n_control=0):
        if getattr(X, "format", None) != "csr" or len(X.shape) != 2:
            raise ValueError("SparseEngine needs a scipy.sparse CSR matrix")
        self.X = X
        vals, ind, ptr = X.data, X.indices, X.indptr
        if vals.dtype == np.float64:
            self.is64 = True
            self.v64 = vals
        elif vals.dtype == np.float32:
            self.is64 = False
            self.v32 = vals
        else:
            raise TypeError(f"SparseEngine supports float32 and float64 values, not {vals.dtype}")
        if ind.dtype != ptr.dtype or ind.dtype not in (np.int32, np.int64):
            raise TypeError("SparseEngine needs int32 or int64 indices and indptr of one type")
        self.idx64 = ind.dtype == np.int64
        if self.idx64:
            self.ind64, self.ptr64 = ind, ptr
        else:
            self.ind32, self.ptr32 = ind, ptr
        self.n, self.d = X.shape[0], X.shape[1]
        if ptr.shape[0] != self.n + 1:
            raise ValueError("indptr has the wrong length")
        if self.n and (ptr[0] != 0 or ptr[self.n] > vals.shape[0] or np.any(np.diff(ptr) < 0)):
            raise ValueError("inconsistent indptr")
        if ind.shape[0] and (ind.min() < 0 or ind.max() >= self.d):
            raise ValueError("column index outside the matrix")
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        if self.y.shape[0] != self.n:
            raise ValueError("X and y differ in length")
        self.K = K
        self.P = K * self.d + K
        self.loss = loss
        loss.single = False
        self.w_arr = np.zeros(self.P)
        self.w = self.w_arr
        self.vel_arr = np.zeros(self.P)
        self.vel = self.vel_arr
        self.buf_arr = np.zeros(self.P + 2 + n_control)
        self.buf = self.buf_arr
        self.n_control = n_control
        self.checkpoint_every = 0
        self.seq_mod = SEQ_MOD
        self.M64 = np.zeros(K)
        self.Md = np.zeros(K)
        self.Gd = np.zeros(K)
        # zeros (calloc'd: pages become resident only where a feature is touched; tags
        # start at 1); the velocity above likewise stays untouched without momentum
        # (32-bit marks and feature numbers: half the memory traffic of 64-bit ones;
        # d < 2**31 always, and the marks are reset when the step tag wraps)
        if self.d >= 2 ** 31:
            raise ValueError("SparseEngine takes fewer than 2**31 features")
        self.stamp_arr = np.zeros(self.d, dtype=np.uint32)
        self.stamp = self.stamp_arr
        self.touched_arr = np.zeros(max(self.d, 1), dtype=np.int32)
        self.touched = self.touched_arr
        self.n_touched = 0
        self.tag = 0
        self.scale = 1.0
        self.clean = True
        self.local = self.exchanged = False
        # penalties with an L1 part (l1 = 2, elasticnet = 3; fixed for a fit: only alpha
        # changes live) keep a per-feature record of the thresholds received
        self.lazy_l1 = penalty in (2, 3)
        self.lag_arr = np.zeros(self.d if self.lazy_l1 else 1)
        self.lag = self.lag_arr
        self.l1_total = 0.0
        self.eta0 = eta0
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.penalty = penalty
        self.schedule = schedule
        self.power_t = power_t
        self.momentum = momentum
        self.fit_intercept = fit_intercept
        self.optimal_init = optimal_init
        self.t = 0.0
        self.epoch_loss = 0.0
        self.epoch_count = 0.0

    # ---------------------------------------------------------------- state
    cdef void _sync32(self) noexcept nogil:
        pass

    cdef void _catch_up(self, Py_ssize_t j) noexcept nogil:
        """Give feature j the L1 thresholds it has not received (lazy L1)."""
        cdef Py_ssize_t k
        cdef double t = self.l1_total - self.lag[j]
        if t != 0.0:
            for k in range(self.K):
                self.w[k * self.d + j] = _soft(self.w[k * self.d + j], t)
            self.lag[j] = self.l1_total

    cdef void _unscale(self) noexcept nogil:
        """Bring every weight up to date (w = v afterwards): the pending L1 thresholds
        applied, ``scale`` folded in."""
        cdef Py_ssize_t j, Kd = self.K * self.d
        if self.lazy_l1 and self.l1_total != 0.0:
            for j in range(self.d):
                self._catch_up(j)
                self.lag[j] = 0.0
            self.l1_total = 0.0
        if self.scale != 1.0:
            for j in range(Kd):
                self.w[j] *= self.scale
            self.scale = 1.0

    def set_params(self, w):
        w = np.asarray(w, dtype=np.float64).ravel()
        if w.shape[0] != self.P:
            raise ValueError("parameter vector has the wrong length")
        self.w_arr[:] = w
        self.scale = 1.0
        self.l1_total = 0.0
        self.lag_arr[:] = 0.0

    def get_state(self):
        """As :meth:`Engine.get_state` (``w``: the weights themselves); while the weights
        are stored scaled, also ``scaled_weights`` and ``weight_scale``, from which
        :meth:`set_state` restores the engine bit for bit (a checkpoint never changes
        the run that writes it)."""
        w = self.w_arr.copy()
        Kd = self.K * self.d
        state = {"velocity": self.vel_arr.copy()}
        pending = self.lazy_l1 and self.l1_total != 0.0
        if self.scale != 1.0 or pending:
            state["scaled_weights"] = w.copy()
            state["weight_scale"] = np.array([self.scale])
        if pending:
            state["l1_lag"] = self.lag_arr.copy()
            state["l1_total"] = np.array([self.l1_total])
            t = np.tile(self.l1_total - self.lag_arr, self.K)
            W = w[:Kd]
            W[:] = np.sign(W) * np.maximum(np.abs(W) - t, 0.0)
        w[:Kd] *= self.scale
        state["w"] = w
        return state

    def set_state(self, state):
        Engine.set_state(self, state)
        if "weight_scale" in state:
            v = np.asarray(state["scaled_weights"], dtype=np.float64).ravel()
            s = np.asarray(state["weight_scale"], dtype=np.float64).ravel()
            if v.shape[0] != self.P or s.shape[0] != 1 or not (0.0 < s[0] < np.inf):
                raise ValueError("scaled weights of the wrong length or a bad scale")
            self.w_arr[:] = v
            self.scale = float(s[0])
        if "l1_lag" in state:
            lag = np.asarray(state["l1_lag"], dtype=np.float64).ravel()
            tot = np.asarray(state["l1_total"], dtype=np.float64).ravel()
            if not self.lazy_l1 or lag.shape[0] != self.d or tot.shape[0] != 1 \
                    or not np.all(np.isfinite(lag)) or not np.isfinite(tot[0]):
                raise ValueError("L1 records of the wrong length or not finite")
            self.lag_arr[:] = lag
            self.l1_total = float(tot[0])

    def sync_arrays(self):
        with nogil:
            self._unscale()
        return [self.w_arr, self.vel_arr]

    def params_finite(self):
        return bool(np.isfinite(self.scale)) and bool(np.all(np.isfinite(self.w_arr))) \
            and bool(np.isfinite(self.l1_total))

    def nnz(self):
        """Stored entries of this rank's rows."""
        return int(self.X.indptr[self.n]) if self.n else 0

    cdef void _next_tag(self) noexcept nogil:
        """A fresh step mark (the marks are cleared when the 32-bit counter wraps)."""
        self.tag += 1
        if self.tag == 0:           # wrapped (unsigned)
            memset(&self.stamp[0], 0, self.d * sizeof(unsigned int))
            self.tag = 1

    # ---------------------------------------------------------------- steps
    def run_plan(self, Py_ssize_t start=0, Py_ssize_t stop=-1):
        """As :meth:`Engine.run_plan`; each update touches only its step's features."""
        self.local = True
        try:
            Engine.run_plan(self, start, stop)
        finally:
            self.local = False

    def apply_local(self):
        """``apply`` of this rank's own gradient (local SGD's local steps: no reduction
        between ``grad_step`` and the update, so only the step's features change)."""
        self.local = True
        try:
            with nogil:
                self._apply()
        finally:
            self.local = False

    cdef void _grad(self, const Py_ssize_t* lo, const Py_ssize_t* hi, Py_ssize_t nr) noexcept nogil:
        cdef Py_ssize_t Kd = self.K * self.d, j, r, count = 0, nt = 0
        cdef double s = 0.0
        cdef const double* swp = &self.sw[0] if self.has_sw else NULL
        cdef const double* lagp = &self.lag[0] if self.lazy_l1 and self.l1_total != 0.0 \
            else NULL
        if not self.clean:
            memset(&self.buf[0], 0, Kd * sizeof(double))
        self.clean = False
        self.exchanged = False
        for j in range(self.K):
            self.buf[Kd + j] = 0.0
        self._next_tag()
        for r in range(nr):
            if hi[r] <= lo[r]:
                continue
            count += hi[r] - lo[r]
            if self.is64 and self.idx64:
                s += _sparse_rows(self.v64, self.ind64, self.ptr64, &self.y[0], lo[r], hi[r],
                                  &self.w[0], self.scale, &self.w[Kd], self.K, self.d, self.loss,
                                  &self.Md[0], &self.Gd[0], &self.buf[0], &self.buf[Kd], swp,
                                  &self.stamp[0], self.tag, &self.touched[0], &nt, lagp,
                                  self.l1_total)
            elif self.is64:
                s += _sparse_rows(self.v64, self.ind32, self.ptr32, &self.y[0], lo[r], hi[r],
                                  &self.w[0], self.scale, &self.w[Kd], self.K, self.d, self.loss,
                                  &self.Md[0], &self.Gd[0], &self.buf[0], &self.buf[Kd], swp,
                                  &self.stamp[0], self.tag, &self.touched[0], &nt, lagp,
                                  self.l1_total)
            elif self.idx64:
                s += _sparse_rows(self.v32, self.ind64, self.ptr64, &self.y[0], lo[r], hi[r],
                                  &self.w[0], self.scale, &self.w[Kd], self.K, self.d, self.loss,
                                  &self.Md[0], &self.Gd[0], &self.buf[0], &self.buf[Kd], swp,
                                  &self.stamp[0], self.tag, &self.touched[0], &nt, lagp,
                                  self.l1_total)
            else:
                s += _sparse_rows(self.v32, self.ind32, self.ptr32, &self.y[0], lo[r], hi[r],
                                  &self.w[0], self.scale, &self.w[Kd], self.K, self.d, self.loss,
                                  &self.Md[0], &self.Gd[0], &self.buf[0], &self.buf[Kd], swp,
                                  &self.stamp[0], self.tag, &self.touched[0], &nt, lagp,
                                  self.l1_total)
        self.n_touched = nt
        self.buf[self.P] = s
        self.buf[self.P + 1] = <double>count
        if self.n_control > 0:
            for j in range(self.n_control):
                self.buf[self.P + 2 + j] = 0.0
            self.buf[self.P + 2 + WORD_SEQ] = fmod(self.t + 1.0, self.seq_mod)

    cdef void _apply(self) noexcept nogil:
        cdef double count = self.buf[self.P + 1], l2, l1, eta, shrink, inv, gj, thr
        cdef Py_ssize_t Kd = self.K * self.d, j, k, q, nt
        cdef bint listed = self.local or self.exchanged
        if count <= 0.0:
            return
        self.t += 1.0
        self.epoch_loss += self.buf[self.P]
        self.epoch_count += count
        l2, l1 = _penalty_parts(self.penalty, self.alpha, self.l1_ratio)
        eta = _eta(self.schedule, self.t, self.eta0, self.alpha, self.power_t, self.optimal_init)
        shrink = 1.0 - eta * l2
        if self.momentum > 0.0 or shrink <= 0.0 or (l1 > 0.0 and not self.lazy_l1):
            # every weight changes: the dense update
            self._unscale()
            _update(&self.w[0], &self.vel[0], &self.buf[0], Kd, self.P, count, eta, l2, l1,
                    self.momentum, self.fit_intercept)
            memset(&self.buf[0], 0, self.P * sizeof(double))
            self.clean = True
            return
        self.scale *= shrink
        inv = eta / (count * self.scale)
        if self.lazy_l1:
            # the step's threshold in the units of v; touched weights receive what they
            # missed, the gradient step, then this step's threshold
            thr = eta * l1 / self.scale
            if listed:
                for q in range(self.n_touched):
                    self._lazy_step(self.touched[q], inv, thr)
            else:
                for j in range(self.d):
                    for k in range(self.K):
                        if self.buf[k * self.d + j] != 0.0:
                            self._lazy_step(j, inv, thr)
                            break
            self.l1_total += thr
        elif listed:
            nt = self.n_touched
            for q in range(nt):
                j = self.touched[q]
                for k in range(self.K):
                    gj = self.buf[k * self.d + j]
                    self.w[k * self.d + j] -= gj * inv
                    self.buf[k * self.d + j] = 0.0
        else:
            for j in range(Kd):
                gj = self.buf[j]
                if gj != 0.0:
                    self.w[j] -= gj * inv
                    self.buf[j] = 0.0
        for k in range(self.K):
            if self.fit_intercept:
                self.w[Kd + k] -= eta * (self.buf[Kd + k] / count)
            self.buf[Kd + k] = 0.0
        self.clean = True
        if self.scale < 1e-9:
            self._unscale()

    cdef void _lazy_step(self, Py_ssize_t j, double inv, double thr) noexcept nogil:
        """Feature j's update with lazy L1: the thresholds it missed, the gradient step,
        this step's threshold (the dense update's order); its gradient sums cleared."""
        cdef Py_ssize_t k, f
        self._catch_up(j)
        for k in range(self.K):
            f = k * self.d + j
            self.w[f] = _soft(self.w[f] - self.buf[f] * inv, thr)
            self.buf[f] = 0.0
        self.lag[j] = self.l1_total + thr

    # ---------------------------------------------------------------- the sparse exchange
    def pack_touched(self, double[::1] out, double[::1] header):
        """After ``grad_step``: this rank's touched gradient entries into ``out`` as
        ``[flat index..., value...]`` (2 x K x n_touched doubles), and ``header`` =
        ``[their count, buf[K*d:]]`` (intercept sums, loss, count, control words);
        returns the count."""
        cdef Py_ssize_t q, k, j, m = 0, nt = self.n_touched, K = self.K, d = self.d
        cdef Py_ssize_t Kd = K * d, P2 = self.buf.shape[0] - Kd
        if out.shape[0] < 2 * K * nt or header.shape[0] != P2 + 1:
            raise ValueError("pack buffers of the wrong size")
        with nogil:
            for q in range(nt):
                j = self.touched[q]
                for k in range(K):
                    out[m] = <double>(k * d + j)
                    out[K * nt + m] = self.buf[k * d + j]
                    m += 1
            header[0] = <double>m
            for q in range(P2):
                header[1 + q] = self.buf[Kd + q]
        return m

    @staticmethod
    def exchange_sizes(const double[:, ::1] headers, int[::1] sizes, int[::1] displs):
        """The Allgatherv layout of the ranks' packed blocks from their headers (doubles
        per rank, offsets); returns the total."""
        cdef Py_ssize_t r, total = 0
        for r in range(headers.shape[0]):
            sizes[r] = <int>(2 * <Py_ssize_t>headers[r, 0])
            displs[r] = <int>total
            total += sizes[r]
        return total

    def load_exchanged(self, const double[::1] recv, const double[:, ::1] headers):
        """The ranks' packed blocks (as :meth:`pack_touched` wrote them, one after the
        other; ``headers`` their headers) summed into ``buf`` in rank order, and the
        headers' tails summed into ``buf[K*d:]``; then ``apply`` touches only those
        entries. Every rank adds the same numbers in the same order."""
        cdef Py_ssize_t r, q, m, off = 0, j, f, nt = 0, Kd = self.K * self.d
        cdef Py_ssize_t P2 = self.buf.shape[0] - Kd, d = self.d
        cdef bint one = self.K == 1
        if headers.shape[1] != P2 + 1:
            raise ValueError("headers of the wrong width")
        with nogil:
            # this rank's own sums are in buf: clear them, then add every rank's
            for q in range(self.n_touched):
                j = self.touched[q]
                for m in range(self.K):
                    self.buf[m * d + j] = 0.0
            self._next_tag()
            for r in range(headers.shape[0]):
                m = <Py_ssize_t>headers[r, 0]
                for q in range(m):
                    f = <Py_ssize_t>recv[off + q]
                    self.buf[f] += recv[off + m + q]
                    j = f if one else f % d
                    if self.stamp[j] != self.tag:
                        self.stamp[j] = self.tag
                        self.touched[nt] = j
                        nt += 1
                off += 2 * m
            self.n_touched = nt
            for q in range(P2):
                self.buf[Kd + q] = 0.0
            for r in range(headers.shape[0]):
                for q in range(P2):
                    self.buf[Kd + q] += headers[r, 1 + q]
            self.exchanged = True
        return nt
