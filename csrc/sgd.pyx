# cython: language_level=3
"""SGD kernels: losses, minibatch gradients and the parameter update.

Nothing in this module knows about MPI (STYLE.md rule 3). The training loop in
``mpiml.parallel.data`` calls :meth:`Engine.grad` on this rank's rows of a
global batch, reduces ``Engine.buf`` across ranks with one Allreduce, then calls
:meth:`Engine.apply`. On one rank, :meth:`Engine.run_steps` runs the same two
kernels for a whole epoch without returning to Python.

Parameters live in one flat float64 vector ``w`` of length ``P = K*d + K``:
the (K, d) weight matrix row by row, then the K intercepts. ``buf`` holds the
summed gradient (P values), the summed loss and the sample count, so a step
needs exactly one reduction of ``P + 2`` doubles.

Rows are processed in sub-blocks of ``SUB`` rows: the margins of a sub-block, the
loss derivative on them, and the gradient over the same rows while they are still in
cache, so X is read from memory once per epoch. With one output the margins and the
gradient are the vector loops of ``dense.h`` (compiled for several instruction sets,
picked at run time); float32 logistic rows without weights run a whole step in one
compiled loop there (``mpiml_logistic_step_f``). With several outputs they are BLAS
calls (scipy's OpenBLAS). docs/performance.md ("The kernel's epoch") says which sums are
float32 and which float64.
"""
from libc.math cimport exp, log, log1p, fabs, pow, isfinite, fmod
from libc.string cimport memset, memcpy
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "dense.h" nogil:
    void mpiml_margins_f(const float* X, Py_ssize_t nb, Py_ssize_t d, const float* w, float* m,
                         Py_ssize_t nb_pf)
    void mpiml_margins_d(const double* X, Py_ssize_t nb, Py_ssize_t d, const double* w, double* m,
                         Py_ssize_t nb_pf)
    void mpiml_accumulate_f(const float* X, Py_ssize_t nb, Py_ssize_t d, const float* g, float* grad)
    void mpiml_accumulate_d(const double* X, Py_ssize_t nb, Py_ssize_t d, const double* g, double* grad)
    double mpiml_logloss_single(const float* m, const float* y, float* g, float* loss, Py_ssize_t n)
    double mpiml_logistic_step_f(const float* X, Py_ssize_t d, const Py_ssize_t* lo, const Py_ssize_t* hi,
                                 Py_ssize_t nr, const float* w, double b, const double* y, float* grad,
                                 double* gb, int* bad)
    Py_ssize_t MPIML_SUB
    Py_ssize_t MPIML_NEXT_ROWS

from cpython.pycapsule cimport PyCapsule_New

from steploop_api cimport MPIML_STEP_API_VERSION, mpiml_step_api

import numpy as np

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #define mpiml_prefetch(p) __builtin_prefetch((p), 0, 3)
    """
    void mpiml_prefetch(const void* p) nogil

cdef extern from *:
    """
    #ifndef MPIML_COMPILE_FLAGS
    #define MPIML_COMPILE_FLAGS "unknown"
    #endif
    """
    const char* MPIML_COMPILE_FLAGS

COMPILE_FLAGS = MPIML_COMPILE_FLAGS.decode()
DTYPES = ("float32", "float64")

# rows per sub-block: 16 rows x 100 float32 features = 6.4 KB stay in L1 between the two passes
cdef Py_ssize_t SUB = MPIML_SUB
# rows of the next range prefetched when a step visits several ranges (rows in place;
# the same number as the compiled step's, dense.h)
cdef Py_ssize_t PREFETCH_ROWS = MPIML_NEXT_ROWS

# The step-control protocol (mirrors mpiml.parallel.protocol's Word and Decision, which
# checks at import that these tables equal its own): control words after the P
# gradient sums, the loss sum and the row count, and the decision bits apply_checked
# returns.
cdef enum ControlWord:
    WORD_SEQ = 0
    WORD_STOP = 1
    WORD_CHECKPOINT = 2
    WORD_COMMAND = 3

cdef enum StepDecision:
    DECIDE_OUT_OF_STEP = 1
    DECIDE_STOP = 2
    DECIDE_CHECKPOINT = 4
    DECIDE_COMMAND = 8

CONTROL_WORDS = {"SEQ": WORD_SEQ, "STOP": WORD_STOP, "CHECKPOINT": WORD_CHECKPOINT,
                 "COMMAND": WORD_COMMAND}
DECISIONS = {"OUT_OF_STEP": DECIDE_OUT_OF_STEP, "STOP": DECIDE_STOP,
             "CHECKPOINT": DECIDE_CHECKPOINT, "COMMAND": DECIDE_COMMAND}
# sequence words are the update number modulo this (protocol.seq_word)
SEQ_MOD = <double>(1 << 20)


# --------------------------------------------------------------------------- losses
cdef class Loss:
    """Base class: ``batch`` returns the summed loss of ``n`` rows of ``K`` margins
    and writes d loss / d margin into ``g``.

    ``single`` (set by the Engine for float32 data) lets a loss evaluate its
    transcendental functions in single precision: the margins are only float32
    accurate then, and expf/log1pf cost a fraction of exp/log1p.
    """
    cdef public bint single

    cdef double batch(self, const double* m, const double* y, double* g,
                      Py_ssize_t n, Py_ssize_t K) noexcept nogil:
        return 0.0

    def batch_grad(self, double[:, ::1] m, const double[::1] y, double[:, ::1] g):
        """Summed loss of the rows of ``m`` (n, K); writes d loss / d margin into ``g``
        (one call for the whole array)."""
        if m.shape[0] != y.shape[0] or g.shape[0] != m.shape[0] or g.shape[1] != m.shape[1]:
            raise ValueError("batch_grad: shapes differ")
        if m.shape[0] == 0:
            return 0.0
        cdef double s
        with nogil:
            s = self.batch(&m[0, 0], &y[0], &g[0, 0], m.shape[0], m.shape[1])
        return s

    def loss_grad(self, margins, y):
        """Python entry for tests: ``(loss per row, dloss)`` for margins (n, K)."""
        # const: the caller's arrays may be read-only
        cdef const double[:, ::1] m = np.ascontiguousarray(margins, dtype=np.float64).reshape(len(y), -1)
        cdef const double[::1] yy = np.ascontiguousarray(y, dtype=np.float64)
        g = np.zeros((m.shape[0], m.shape[1]))
        cdef double[:, ::1] gv = g
        out = np.empty(m.shape[0])
        cdef Py_ssize_t i
        for i in range(m.shape[0]):
            out[i] = self.batch(&m[i, 0], &yy[i], &gv[i, 0], 1, m.shape[1])
        return out, g


cdef class ScalarLoss(Loss):
    """A loss of one margin ``p`` and one target ``y``. With ``K > 1`` outputs the
    target is a class index and output k is trained one-vs-rest on ``y == k``."""

    cdef double loss(self, double p, double y) noexcept nogil:
        return 0.0

    cdef double dloss(self, double p, double y) noexcept nogil:
        return 0.0

    cdef double batch(self, const double* m, const double* y, double* g,
                      Py_ssize_t n, Py_ssize_t K) noexcept nogil:
        cdef Py_ssize_t i, k
        cdef double s = 0.0, t
        if K == 1:
            for i in range(n):
                s += self.loss(m[i], y[i])
                g[i] = self.dloss(m[i], y[i])
        else:
            for i in range(n):
                for k in range(K):
                    t = 1.0 if <Py_ssize_t>y[i] == k else -1.0
                    s += self.loss(m[i * K + k], t)
                    g[i * K + k] = self.dloss(m[i * K + k], t)
        return s

    def py_loss(self, double p, double y):
        return self.loss(p, y)

    def py_dloss(self, double p, double y):
        return self.dloss(p, y)


cdef class SquaredLoss(ScalarLoss):
    """0.5 (p - y)^2"""
    cdef double loss(self, double p, double y) noexcept nogil:
        return 0.5 * (p - y) * (p - y)

    cdef double dloss(self, double p, double y) noexcept nogil:
        return p - y

    def __reduce__(self):
        return SquaredLoss, ()


cdef class Huber(ScalarLoss):
    """Quadratic within ``epsilon`` of the target, linear beyond."""
    cdef readonly double epsilon

    def __init__(self, double epsilon=0.1):
        self.epsilon = epsilon

    cdef double loss(self, double p, double y) noexcept nogil:
        cdef double r = fabs(p - y)
        if r <= self.epsilon:
            return 0.5 * r * r
        return self.epsilon * (r - 0.5 * self.epsilon)

    cdef double dloss(self, double p, double y) noexcept nogil:
        cdef double r = p - y
        if r > self.epsilon:
            return self.epsilon
        if r < -self.epsilon:
            return -self.epsilon
        return r

    def __reduce__(self):
        return Huber, (self.epsilon,)


cdef class LogLoss(ScalarLoss):
    """Logistic loss log(1 + exp(-y p)) for y in {-1, +1}."""
    cdef double loss(self, double p, double y) noexcept nogil:
        cdef double z = p * y
        if z > 18.0:
            return exp(-z)
        if z < -18.0:
            return -z
        return log1p(exp(-z))

    cdef double dloss(self, double p, double y) noexcept nogil:
        cdef double z = p * y
        if z > 18.0:
            return -y * exp(-z)
        if z < -18.0:
            return -y
        return -y / (1.0 + exp(z))

    cdef double batch(self, const double* m, const double* y, double* g,
                      Py_ssize_t n, Py_ssize_t K) noexcept nogil:
        # one exp and one log1p per margin instead of the two exps of loss + dloss
        cdef Py_ssize_t i
        cdef double s = 0.0, z, e, yi
        if K != 1:
            return ScalarLoss.batch(self, m, y, g, n, K)
        cdef float mf[64]
        cdef float yf[64]
        cdef float gf[64]
        cdef float lf[64]
        cdef Py_ssize_t i0, nn, j
        if self.single:
            i0 = 0
            while i0 < n:
                nn = n - i0 if n - i0 < 64 else 64
                for j in range(nn):
                    mf[j] = <float>m[i0 + j]
                    yf[j] = <float>y[i0 + j]
                s += mpiml_logloss_single(mf, yf, gf, lf, nn)
                for j in range(nn):
                    g[i0 + j] = gf[j]
                i0 += nn
            return s
        for i in range(n):
            yi = y[i]
            z = m[i] * yi
            e = exp(-fabs(z))
            if z >= 0.0:
                s += log1p(e)
                g[i] = -yi * e / (1.0 + e)
            else:
                s += log1p(e) - z
                g[i] = -yi / (1.0 + e)
        return s

    def __reduce__(self):
        return LogLoss, ()


cdef class Hinge(ScalarLoss):
    """max(0, threshold - y p) for y in {-1, +1}."""
    cdef readonly double threshold

    def __init__(self, double threshold=1.0):
        self.threshold = threshold

    cdef double loss(self, double p, double y) noexcept nogil:
        cdef double z = p * y
        if z < self.threshold:
            return self.threshold - z
        return 0.0

    cdef double dloss(self, double p, double y) noexcept nogil:
        if p * y < self.threshold:
            return -y
        return 0.0

    def __reduce__(self):
        return Hinge, (self.threshold,)


cdef class Multinomial(Loss):
    """Softmax cross-entropy over K margins; the target is the class index."""
    cdef double batch(self, const double* m, const double* y, double* g,
                      Py_ssize_t n, Py_ssize_t K) noexcept nogil:
        cdef Py_ssize_t i, k, c
        cdef double s = 0.0, mx, z
        cdef const double* row
        cdef double* gr
        for i in range(n):
            row = m + i * K
            gr = g + i * K
            mx = row[0]
            for k in range(1, K):
                if row[k] > mx:
                    mx = row[k]
            z = 0.0
            for k in range(K):
                gr[k] = exp(row[k] - mx)
                z += gr[k]
            c = <Py_ssize_t>y[i]
            s += log(z) + mx - row[c]
            for k in range(K):
                gr[k] /= z
            gr[c] -= 1.0
        return s

    def __reduce__(self):
        return Multinomial, ()


# --------------------------------------------------------------------------- BLAS helpers
cdef inline void _margins(const floating* X, Py_ssize_t nb, Py_ssize_t d, const floating* W,
                          Py_ssize_t K, floating* M, Py_ssize_t ahead) noexcept nogil:
    """M (nb, K) = X (nb, d) @ W.T, all row-major. ``ahead``: rows from X that belong
    to the same batch (nb and those after it), which may be prefetched."""
    cdef int m_, n_, k_, lda, ldb, ldc
    cdef floating one = 1.0, zero = 0.0
    cdef char tr = b'T', nt = b'N'
    if K == 1:
        if floating is float:
            mpiml_margins_f(X, nb, d, W, M, ahead)
        else:
            mpiml_margins_d(X, nb, d, W, M, ahead)
    else:
        # column-major M.T (K x nb) = W_cm.T (K x d) @ X_cm (d x nb)
        m_ = <int>K; n_ = <int>nb; k_ = <int>d; lda = <int>d; ldb = <int>d; ldc = <int>K
        if floating is float:
            sgemm(&tr, &nt, &m_, &n_, &k_, &one, <float*>W, &lda, <float*>X, &ldb, &zero, M, &ldc)
        else:
            dgemm(&tr, &nt, &m_, &n_, &k_, &one, <double*>W, &lda, <double*>X, &ldb, &zero, M, &ldc)


cdef inline void _accumulate(const floating* X, Py_ssize_t nb, Py_ssize_t d, const floating* G,
                             Py_ssize_t K, floating* gW) noexcept nogil:
    """gW (K, d) += G.T (K, nb) @ X (nb, d), all row-major."""
    cdef int m_, n_, k_, lda, ldb, ldc
    cdef floating one = 1.0
    cdef char tr = b'T', nt = b'N'
    if K == 1:
        if floating is float:
            mpiml_accumulate_f(X, nb, d, G, gW)
        else:
            mpiml_accumulate_d(X, nb, d, G, gW)
    else:
        # column-major gW.T (d x K) += X_cm (d x nb) @ G_cm.T (nb x K)
        m_ = <int>d; n_ = <int>K; k_ = <int>nb; lda = <int>d; ldb = <int>K; ldc = <int>d
        if floating is float:
            sgemm(&nt, &tr, &m_, &n_, &k_, &one, <float*>X, &lda, <float*>G, &ldb, &one, gW, &ldc)
        else:
            dgemm(&nt, &tr, &m_, &n_, &k_, &one, <double*>X, &lda, <double*>G, &ldb, &one, gW, &ldc)


cdef double _grad_range(const floating[:, ::1] X, const double* y, Py_ssize_t lo, Py_ssize_t hi,
                        const floating* W, const double* b, Py_ssize_t K, Loss loss,
                        floating* Mf, double* Md, double* Gd, floating* gW, double* gb,
                        const double* sw, int* bad) noexcept nogil:
    """Summed loss over rows [lo, hi); gW += dW (in the data's precision), gb += db.
    ``sw``: per-row weights (class or sample weights) or NULL. ``bad`` is set when a
    margin is NaN or infinite: with finite parameters, only a row holding a NaN or an
    infinity (or values so large that the margin overflows) gives one, so this is the
    first epoch's finiteness check of rows visited in place (the caller confirms it)."""
    cdef Py_ssize_t d = X.shape[1], r0, nb, i, k, nk
    cdef double s = 0.0
    cdef int flag = 0
    r0 = lo
    while r0 < hi:
        nb = hi - r0
        if nb > SUB:
            nb = SUB
        nk = nb * K
        _margins(&X[r0, 0], nb, d, W, K, Mf, hi - r0)
        for i in range(nb):
            for k in range(K):
                Md[i * K + k] = Mf[i * K + k] + b[k]
                flag |= (Md[i * K + k] - Md[i * K + k]) != 0.0     # NaN or infinite
        if sw == NULL:
            s += loss.batch(Md, y + r0, Gd, nb, K)
        else:
            for i in range(nb):
                s += sw[r0 + i] * loss.batch(&Md[i * K], y + r0 + i, &Gd[i * K], 1, K)
                for k in range(K):
                    Gd[i * K + k] *= sw[r0 + i]
        for i in range(nk):
            Mf[i] = <floating>Gd[i]
        for i in range(nb):
            for k in range(K):
                gb[k] += Gd[i * K + k]
        _accumulate(&X[r0, 0], nb, d, Mf, K, gW)
        r0 += nb
    bad[0] |= flag
    return s


# --------------------------------------------------------------------------- schedules, penalties
# learning-rate schedules and penalties, by number (the Python layer maps names)
SCHEDULES = {"constant": 0, "invscaling": 1, "optimal": 2}
PENALTIES = {None: 0, "none": 0, "l2": 1, "l1": 2, "elasticnet": 3}


cdef inline double _eta(int schedule, double t, double eta0, double alpha, double power_t,
                        double optimal_init) noexcept nogil:
    if schedule == 1:
        return eta0 / pow(t, power_t)
    if schedule == 2:
        return 1.0 / (alpha * (optimal_init + t - 1.0))
    return eta0


def penalty_grad(w, int penalty, double alpha, double l1_ratio):
    """Subgradient of ``alpha * R(w)`` (used by tests; the update applies L1 as a
    proximal step): R = 0.5||w||^2 (l2), ||w||_1 (l1),
    0.5 (1 - l1_ratio) ||w||^2 + l1_ratio ||w||_1 (elasticnet)."""
    w = np.asarray(w, dtype=np.float64)
    l2, l1 = _penalty_parts(penalty, alpha, l1_ratio)
    return l2 * w + l1 * np.sign(w)


cdef inline (double, double) _penalty_parts(int penalty, double alpha, double l1_ratio) noexcept nogil:
    if penalty == 1:
        return alpha, 0.0
    if penalty == 2:
        return 0.0, alpha
    if penalty == 3:
        return alpha * (1.0 - l1_ratio), alpha * l1_ratio
    return 0.0, 0.0


cdef void _update(double* w, double* vel, const double* gsum, Py_ssize_t n_weights, Py_ssize_t P,
                  double count, double eta, double l2, double l1, double mu,
                  bint fit_intercept) noexcept nogil:
    """One SGD update of ``P`` parameters (``n_weights`` weights, then intercepts) from
    the gradient summed over ``count`` rows: L2 in the gradient, momentum, L1 as a
    proximal soft-threshold on the weights."""
    cdef Py_ssize_t j
    cdef double g, thr = eta * l1
    for j in range(P):
        if j >= n_weights and not fit_intercept:
            continue
        g = gsum[j] / count
        if j < n_weights:
            g += l2 * w[j]
        if mu > 0.0:
            vel[j] = mu * vel[j] - eta * g
            w[j] += vel[j]
        else:
            w[j] -= eta * g
        if j < n_weights and thr > 0.0:
            if w[j] > thr:
                w[j] -= thr
            elif w[j] < -thr:
                w[j] += thr
            else:
                w[j] = 0.0


def sgd_update(double[::1] w, double[::1] vel, const double[::1] gsum, Py_ssize_t n_weights,
               double count, double eta, int penalty, double alpha, double l1_ratio,
               double momentum, bint fit_intercept):
    """The Engine's update rule on any flat parameter vector (the model-parallel
    engines update their shards with it, so both paths do the same arithmetic)."""
    if w.shape[0] != vel.shape[0] or gsum.shape[0] < w.shape[0] or n_weights > w.shape[0]:
        raise ValueError("sgd_update: inconsistent lengths")
    cdef double l2, l1
    l2, l1 = _penalty_parts(penalty, alpha, l1_ratio)
    if count <= 0.0 or w.shape[0] == 0:
        return
    with nogil:
        _update(&w[0], &vel[0], &gsum[0], n_weights, w.shape[0], count, eta, l2, l1, momentum,
                fit_intercept)


def step_size(int schedule, double t, double eta0, double alpha, double power_t,
              double optimal_init):
    """Learning rate of update number ``t`` (1-based) under a schedule."""
    return _eta(schedule, t, eta0, alpha, power_t, optimal_init)


# --------------------------------------------------------------------------- the engine
cdef class Engine:
    """The state of one rank's SGD: its rows, the parameters and the step buffer.

    Parameters
    ----------
    X : ndarray (n, d), float32 or float64, C-contiguous
        This rank's rows (may be empty).
    y : ndarray (n,), float64
        Targets: values (regression), +-1 (binary) or class indices (K > 1).
    K : int
        Number of outputs.
    loss : Loss
    n_control : int
        Extra words at the end of ``buf`` for the caller's control data.
    """
    cdef readonly object X
    cdef const float[:, ::1] X32
    cdef const double[:, ::1] X64
    cdef readonly bint is64
    cdef const double[::1] y
    cdef const double[::1] sw
    cdef readonly bint has_sw
    cdef readonly Loss loss
    # float32 rows, one output, logistic loss: _grad runs the step in one C loop
    cdef readonly bint fused
    cdef readonly Py_ssize_t n, d, K, P
    cdef readonly object w_arr, buf_arr, vel_arr
    cdef double[::1] w, buf, vel
    cdef float[::1] w32, g32, M32
    cdef double[::1] M64, Md, Gd
    cdef public double eta0, alpha, l1_ratio, momentum, power_t, optimal_init
    cdef public int penalty, schedule
    cdef public bint fit_intercept
    cdef public double t
    cdef public double epoch_loss, epoch_count
    # set when a step met a NaN or infinite margin (see _grad_range); the caller resets it
    cdef public int margins_bad
    cdef const Py_ssize_t[::1] plan_lo, plan_hi, plan_ptr
    cdef readonly Py_ssize_t n_control
    cdef public long long checkpoint_every
    cdef public double seq_mod
    cdef mpiml_step_api api

    def __init__(self, X, y, Py_ssize_t K, Loss loss, *, double eta0=0.01, double alpha=1e-4,
                 double l1_ratio=0.15, int penalty=1, int schedule=0, double power_t=0.5,
                 double momentum=0.0, bint fit_intercept=True, double optimal_init=1.0,
                 Py_ssize_t n_control=0):
        if X.ndim != 2 or not X.flags.c_contiguous:
            raise ValueError("Engine needs a C-contiguous 2-D array")
        self.X = X
        self.is64 = X.dtype == np.float64
        if self.is64:
            self.X64 = X
        elif X.dtype == np.float32:
            self.X32 = X
        else:
            raise TypeError(f"Engine supports float32 and float64, not {X.dtype}")
        self.y = np.ascontiguousarray(y, dtype=np.float64)
        if self.y.shape[0] != X.shape[0]:
            raise ValueError("X and y differ in length")
        self.n = X.shape[0]
        self.d = X.shape[1]
        self.K = K
        self.P = K * self.d + K
        self.loss = loss
        loss.single = not self.is64
        self.fused = not self.is64 and K == 1 and type(loss) is LogLoss
        self.w_arr = np.zeros(self.P)
        self.w = self.w_arr
        self.vel_arr = np.zeros(self.P)
        self.vel = self.vel_arr
        # P gradient sums, loss sum, count, then n_control words that the caller
        # fills after grad() and reads after the reduction (the kernels ignore them)
        self.buf_arr = np.zeros(self.P + 2 + n_control)
        self.n_control = n_control
        self.checkpoint_every = 0
        self.seq_mod = SEQ_MOD
        self.buf = self.buf_arr
        self.w32 = np.zeros(self.P, dtype=np.float32)
        self.g32 = np.zeros(self.K * self.d, dtype=np.float32)
        self.M32 = np.zeros(SUB * K, dtype=np.float32)
        self.M64 = np.zeros(SUB * K)
        self.Md = np.zeros(SUB * K)
        self.Gd = np.zeros(SUB * K)
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

    def set_sample_weight(self, sw):
        """Per-row weights (in the rows' order) multiplying each row's loss and
        gradient (class and sample weights); None removes them."""
        if sw is None:
            self.has_sw = False
            return
        arr = np.ascontiguousarray(sw, dtype=np.float64)
        if arr.shape[0] != self.n:
            raise ValueError("sample weights and rows differ in length")
        self.sw = arr
        self.has_sw = self.n > 0

    def set_params(self, w):
        """Load the flat parameter vector (length P)."""
        w = np.asarray(w, dtype=np.float64).ravel()
        if w.shape[0] != self.P:
            raise ValueError("parameter vector has the wrong length")
        self.w_arr[:] = w
        self._sync32()

    cdef void _sync32(self) noexcept nogil:
        cdef Py_ssize_t j
        if not self.is64:
            for j in range(self.P):
                self.w32[j] = <float>self.w[j]

    cpdef double grad(self, Py_ssize_t lo, Py_ssize_t hi):
        """Fill ``buf`` with the summed gradient, loss and count of local rows [lo, hi)."""
        with nogil:
            self._grad(&lo, &hi, 1)
        return self.buf[self.P]

    def set_plan(self, lo, hi, ptr):
        """Install an epoch plan: step s covers local row ranges
        ``lo[ptr[s]:ptr[s+1]]`` to ``hi[...]`` (see mpiml.parallel.data)."""
        self.plan_lo = np.ascontiguousarray(lo, dtype=np.intp)
        self.plan_hi = np.ascontiguousarray(hi, dtype=np.intp)
        self.plan_ptr = np.ascontiguousarray(ptr, dtype=np.intp)
        if self.plan_lo.shape[0] != self.plan_hi.shape[0] or self.plan_ptr.shape[0] < 1 \
                or self.plan_ptr[self.plan_ptr.shape[0] - 1] != self.plan_lo.shape[0]:
            raise ValueError("inconsistent plan")
        if self.plan_lo.shape[0] and (np.min(self.plan_lo) < 0 or np.max(self.plan_hi) > self.n):
            raise ValueError("plan ranges outside the local rows")

    cpdef double grad_step(self, Py_ssize_t s):
        """``grad`` over the ranges of plan step ``s``."""
        if s < 0 or s + 1 >= self.plan_ptr.shape[0]:
            raise IndexError(f"plan step {s} outside the {self.plan_ptr.shape[0] - 1} steps")
        cdef Py_ssize_t a = self.plan_ptr[s], b = self.plan_ptr[s + 1]
        with nogil:
            self._grad(&self.plan_lo[a], &self.plan_hi[a], b - a)
        return self.buf[self.P]

    def run_plan(self, Py_ssize_t start=0, Py_ssize_t stop=-1):
        """Steps ``start`` to ``stop`` of the installed plan (grad then apply), with
        no reduction between them: the one-rank path, identical arithmetic to
        grad_step/Allreduce/apply."""
        cdef Py_ssize_t s, a, b, ns = self.plan_ptr.shape[0] - 1
        if stop < 0 or stop > ns:
            stop = ns
        if start < 0 or start > ns:
            raise IndexError(f"plan step {start} outside the {ns} steps")
        with nogil:
            for s in range(start, stop):
                a = self.plan_ptr[s]
                b = self.plan_ptr[s + 1]
                self._grad(&self.plan_lo[a], &self.plan_hi[a], b - a)
                self._apply()

    cdef void _grad(self, const Py_ssize_t* lo, const Py_ssize_t* hi, Py_ssize_t nr) noexcept nogil:
        cdef Py_ssize_t Kd = self.K * self.d, j, r, count = 0
        cdef double s = 0.0
        cdef const double* swp = &self.sw[0] if self.has_sw else NULL
        memset(&self.buf[0], 0, (self.P + 2) * sizeof(double))
        if not self.is64:
            memset(&self.g32[0], 0, Kd * sizeof(float))
        if self.fused and swp == NULL:
            # the whole step in one compiled loop (dense.h), prefetches included
            for r in range(nr):
                if hi[r] > lo[r]:
                    count += hi[r] - lo[r]
            if count > 0:
                s = mpiml_logistic_step_f(&self.X32[0, 0], self.d, lo, hi, nr, &self.w32[0],
                                          self.w[Kd], &self.y[0], &self.g32[0], &self.buf[Kd],
                                          &self.margins_bad)
        else:
            for r in range(nr):
                if hi[r] <= lo[r]:
                    continue
                if r + 1 < nr and hi[r + 1] > lo[r + 1]:
                    # rows visited in place: the next range is elsewhere in memory, and the
                    # hardware prefetcher restarts there; ask for its first rows now
                    self._prefetch_rows(lo[r + 1], hi[r + 1])
                count += hi[r] - lo[r]
                if self.is64:
                    s += _grad_range(self.X64, &self.y[0], lo[r], hi[r], &self.w[0], &self.w[Kd],
                                     self.K, self.loss, &self.M64[0], &self.Md[0], &self.Gd[0],
                                     &self.buf[0], &self.buf[Kd], swp, &self.margins_bad)
                else:
                    s += _grad_range(self.X32, &self.y[0], lo[r], hi[r], &self.w32[0], &self.w[Kd],
                                     self.K, self.loss, &self.M32[0], &self.Md[0], &self.Gd[0],
                                     &self.g32[0], &self.buf[Kd], swp, &self.margins_bad)
        if not self.is64:
            for j in range(Kd):
                self.buf[j] = self.g32[j]
        self.buf[self.P] = s
        self.buf[self.P + 1] = <double>count
        if self.n_control > 0:
            # the sequence word: the number of the update this step makes; the others
            # are requests the caller raises for this step only
            for j in range(self.n_control):
                self.buf[self.P + 2 + j] = 0.0
            self.buf[self.P + 2 + WORD_SEQ] = fmod(self.t + 1.0, self.seq_mod)

    cdef void _prefetch_rows(self, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
        cdef Py_ssize_t nbytes, off, row = self.d * (8 if self.is64 else 4)
        cdef const char* p
        if hi - lo > PREFETCH_ROWS:
            hi = lo + PREFETCH_ROWS
        nbytes = (hi - lo) * row
        p = <const char*>&self.X64[lo, 0] if self.is64 else <const char*>&self.X32[lo, 0]
        off = 0
        while off < nbytes:
            mpiml_prefetch(p + off)
            off += 64

    cpdef double eta(self):
        """The learning rate the next update will use."""
        return _eta(self.schedule, self.t + 1.0, self.eta0, self.alpha, self.power_t,
                    self.optimal_init)

    def step_api(self):
        """The compiled step loop's handle on this engine (csrc/steploop_api.h): a capsule
        valid while the engine lives and its plan stays installed."""
        if self.n_control <= WORD_COMMAND:
            raise ValueError("the compiled step loop needs the control words")
        self.api.version = MPIML_STEP_API_VERSION
        self.api.engine = <void*>self
        self.api.grad = _api_grad
        self.api.apply_checked = _api_apply_checked
        self.api.buf = &self.buf[0]
        self.api.nbuf = self.buf.shape[0]
        self.api.words = self.P + 2
        self.api.n_steps = self.plan_ptr.shape[0] - 1
        self.api.t = &self.t
        return PyCapsule_New(&self.api, "mpiml.step_api", NULL)

    cdef void _grad_step(self, Py_ssize_t s) noexcept nogil:
        cdef Py_ssize_t a = self.plan_ptr[s], b = self.plan_ptr[s + 1]
        self._grad(&self.plan_lo[a], &self.plan_hi[a], b - a)

    cpdef int apply_checked(self, double size):
        """``apply`` after a reduction that carried the control words (n_control >= 3).

        Returns 0 or a set of ``StepDecision`` bits (mpiml.parallel.protocol.Decision):
        OUT_OF_STEP the sequence words do not add up to ``size * seq_word(t)`` (nothing
        applied), STOP a stop was requested, CHECKPOINT one is due (requested, or every
        ``checkpoint_every`` updates), COMMAND a control command is waiting."""
        return self._apply_checked(size)

    cdef int _apply_checked(self, double size) noexcept nogil:
        cdef Py_ssize_t base = self.P + 2
        cdef int code = 0
        if self.buf[base + WORD_SEQ] != size * fmod(self.t + 1.0, self.seq_mod):
            return DECIDE_OUT_OF_STEP
        self._apply()
        if self.buf[base + WORD_STOP] > 0.0:
            code |= DECIDE_STOP
        if self.buf[base + WORD_CHECKPOINT] > 0.0:
            code |= DECIDE_CHECKPOINT
        if self.checkpoint_every > 0 and (<long long>self.t) % self.checkpoint_every == 0:
            code |= DECIDE_CHECKPOINT
        if self.n_control > WORD_COMMAND and self.buf[base + WORD_COMMAND] > 0.0:
            code |= DECIDE_COMMAND
        return code

    cpdef void apply(self):
        """Update the parameters from the (reduced) ``buf``."""
        with nogil:
            self._apply()

    cdef void _apply(self) noexcept nogil:
        cdef double count = self.buf[self.P + 1], l2, l1
        if count <= 0.0:
            return
        self.t += 1.0
        self.epoch_loss += self.buf[self.P]
        self.epoch_count += count
        l2, l1 = _penalty_parts(self.penalty, self.alpha, self.l1_ratio)
        _update(&self.w[0], &self.vel[0], &self.buf[0], self.K * self.d, self.P, count,
                _eta(self.schedule, self.t, self.eta0, self.alpha, self.power_t, self.optimal_init),
                l2, l1, self.momentum, self.fit_intercept)
        self._sync32()

    def get_state(self):
        """The optimiser state as flat arrays (``w``: weights then intercepts)."""
        return {"w": self.w_arr.copy(), "velocity": self.vel_arr.copy()}

    def set_state(self, state):
        """Load arrays from :meth:`get_state` (or a checkpoint)."""
        self.set_params(state["w"])
        v = np.asarray(state["velocity"], dtype=np.float64).ravel()
        if v.shape[0] != self.P:
            raise ValueError("velocity vector has the wrong length")
        self.vel_arr[:] = v

    def sync_arrays(self):
        """The local state that model averaging (local SGD) averages, as views."""
        return [self.w_arr, self.vel_arr]

    def after_sync(self):
        """Call after changing the arrays of :meth:`sync_arrays` in place."""
        self._sync32()

    def run_steps(self, lo, hi):
        """Run ``len(lo)`` single-range steps (tests and benchmarks)."""
        self.set_plan(lo, hi, np.arange(len(lo) + 1))
        self.run_plan()

    def params_finite(self):
        cdef Py_ssize_t j
        for j in range(self.P):
            if not isfinite(self.w[j]):
                return False
        return True


# the compiled step loop's entry points (the engine's own methods, so a SparseEngine's
# overrides are what it runs)
cdef void _api_grad(void* e, Py_ssize_t s) noexcept nogil:
    (<Engine>e)._grad_step(s)


cdef int _api_apply_checked(void* e, double size) noexcept nogil:
    return (<Engine>e)._apply_checked(size)


# --------------------------------------------------------------------------- CSR rows
include "sparse.pxi"
