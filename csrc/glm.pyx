# cython: language_level=3
"""Full-batch kernels of the exact linear-model solvers (mpiml.solvers).

One call reads this rank's rows of ``X`` once, in blocks of ``BLOCK`` rows: the
margins of a block, each row's loss and its derivative, then the gradient
accumulation over the same rows while they are still in cache. Everything is
accumulated in float64, also for float32 ``X``: the optimum to 1e-6 needs it.
Nothing here knows about MPI (STYLE.md rule 3): the caller reduces the packed
``[loss, gradient]`` buffer over the ranks.

Parameters are one flat float64 vector ``w`` of length ``K*d + K``: the (K, d)
weights row by row, then the K intercepts (the SGD kernels' layout).

Losses (``KINDS``), per row with margin ``m`` and target ``y``:

* ``logistic``: log(1 + exp(-y m)), y in {-1, +1};
* ``multinomial``: logsumexp(m) - m[y], y the class index, K margins;
* ``squared_error``: (m - y)^2 / 2;
* ``huber``: (m - y)^2 / 2 within ``epsilon`` of the target, epsilon (|m - y| -
  epsilon / 2) beyond (mpiml's SGD Huber, fixed epsilon).
"""
from libc.math cimport exp, log, log1p, fabs
from libc.stdlib cimport malloc, free

import numpy as np

ctypedef fused floating:
    float
    double

cdef enum Kind:
    KIND_LOGISTIC = 0
    KIND_MULTINOMIAL = 1
    KIND_SQUARED = 2
    KIND_HUBER = 3

KINDS = {"logistic": KIND_LOGISTIC, "multinomial": KIND_MULTINOMIAL,
         "squared_error": KIND_SQUARED, "huber": KIND_HUBER}

# rows per block: 32 rows x 100 float64 features = 25 KB stay in L1/L2 between passes
cdef enum:
    BLOCK = 32


cdef inline double _row_loss(double* m, double y, Py_ssize_t K, int kind,
                             double eps) noexcept nogil:
    """The row's loss; overwrites its K margins ``m`` with d loss / d margin."""
    cdef double z, e, r, mx, s, mc
    cdef Py_ssize_t k
    if kind == KIND_LOGISTIC:
        z = y * m[0]
        if z > 0.0:
            e = exp(-z)
            m[0] = -y * e / (1.0 + e)
            return log1p(e)
        e = exp(z)
        m[0] = -y / (1.0 + e)
        return log1p(e) - z
    if kind == KIND_MULTINOMIAL:
        mc = m[<Py_ssize_t>y]
        mx = m[0]
        for k in range(1, K):
            if m[k] > mx:
                mx = m[k]
        s = 0.0
        for k in range(K):
            m[k] = exp(m[k] - mx)
            s += m[k]
        for k in range(K):
            m[k] /= s
        m[<Py_ssize_t>y] -= 1.0
        return mx + log(s) - mc
    r = m[0] - y
    if kind == KIND_SQUARED or fabs(r) <= eps:
        m[0] = r
        return 0.5 * r * r
    m[0] = eps if r > 0.0 else -eps
    return eps * (fabs(r) - 0.5 * eps)


cdef inline void _row_curvature(double* m, double* u, double y, Py_ssize_t K, int kind,
                                double eps) noexcept nogil:
    """Overwrites ``u`` (the row's directional margins x.v) with H_row u, H_row the
    second derivative of the loss in the margins ``m`` (``m`` is overwritten)."""
    cdef double p, mx, s, pu
    cdef Py_ssize_t k
    if kind == KIND_LOGISTIC:
        p = 1.0 / (1.0 + exp(-m[0])) if m[0] >= 0.0 else exp(m[0]) / (1.0 + exp(m[0]))
        u[0] *= p * (1.0 - p)
    elif kind == KIND_MULTINOMIAL:
        mx = m[0]
        for k in range(1, K):
            if m[k] > mx:
                mx = m[k]
        s = 0.0
        for k in range(K):
            m[k] = exp(m[k] - mx)
            s += m[k]
        pu = 0.0
        for k in range(K):
            m[k] /= s
            pu += m[k] * u[k]
        for k in range(K):
            u[k] = m[k] * (u[k] - pu)
    elif kind == KIND_HUBER and fabs(m[0] - y) > eps:
        u[0] = 0.0


cdef extern from "glm.h" nogil:
    void mpiml_margins_fd(const float* X, Py_ssize_t nb, Py_ssize_t d, const double* w,
                          double* m)
    void mpiml_accumulate_fd(const float* X, Py_ssize_t nb, Py_ssize_t d, const double* g,
                             double* grad)
    void mpiml_margins_d(const double* X, Py_ssize_t nb, Py_ssize_t d, const double* w,
                         double* m, Py_ssize_t nb_pf)
    void mpiml_accumulate_d(const double* X, Py_ssize_t nb, Py_ssize_t d, const double* g,
                            double* grad)


cdef void _margins(const floating* X, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t K,
                   const double* w, double* m, double* tmp) noexcept nogil:
    """m[i*K + k] = x_i . w_k + b_k for the nb rows at X (float64 sums; ``tmp`` holds
    ``nb`` doubles). The row kernels are glm.h's / dense.h's vectorised loops."""
    cdef Py_ssize_t i, k
    for k in range(K):
        if floating is float:
            mpiml_margins_fd(X, nb, d, w + k * d, tmp)
        else:
            mpiml_margins_d(X, nb, d, w + k * d, tmp, nb)
        for i in range(nb):
            m[i * K + k] = tmp[i] + w[K * d + k]


cdef void _accumulate(const floating* X, Py_ssize_t nb, Py_ssize_t d, Py_ssize_t K,
                      const double* g, double* grad, double* tmp) noexcept nogil:
    """grad[k] += sum_i g[i*K + k] (x_i, 1) for the nb rows at X (``tmp``: nb doubles)."""
    cdef Py_ssize_t i, k
    cdef double b
    for k in range(K):
        b = 0.0
        for i in range(nb):
            tmp[i] = g[i * K + k]
            b += tmp[i]
        if floating is float:
            mpiml_accumulate_fd(X, nb, d, tmp, grad + k * d)
        else:
            mpiml_accumulate_d(X, nb, d, tmp, grad + k * d)
        grad[K * d + k] += b


def _check(X, y, sw, w, out, Py_ssize_t K):
    n, d = X.shape[0], X.shape[1]
    if y.shape[0] != n or (sw.shape[0] not in (0, n)) or w.shape[0] != K * d + K \
            or out.shape[0] != K * d + K:
        raise ValueError("glm kernel: inconsistent shapes")


def loss_grad(const floating[:, ::1] X, const double[::1] y, const double[::1] sw,
              const double[::1] w, double[::1] grad, int kind, Py_ssize_t K, double epsilon):
    """Return sum_i sw_i loss_i(w) over this rank's rows and write its gradient into
    ``grad`` (overwritten; length K*d + K). ``sw`` of length 0: unit weights."""
    _check(X, y, sw, w, grad, K)
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i0, b, k, nb
    cdef double total = 0.0, s
    cdef bint weighted = sw.shape[0] > 0
    cdef double* m = <double*> malloc((BLOCK * K + BLOCK) * sizeof(double))
    if m == NULL:
        raise MemoryError()
    cdef double* tmp = m + BLOCK * K
    with nogil:
        for k in range(grad.shape[0]):
            grad[k] = 0.0
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < BLOCK else BLOCK
            _margins(&X[i0, 0], nb, d, K, &w[0], m, tmp)
            for b in range(nb):
                s = sw[i0 + b] if weighted else 1.0
                if s == 0.0:
                    for k in range(K):
                        m[b * K + k] = 0.0
                    continue
                total += s * _row_loss(m + b * K, y[i0 + b], K, kind, epsilon)
                if s != 1.0:
                    for k in range(K):
                        m[b * K + k] *= s
            _accumulate(&X[i0, 0], nb, d, K, m, &grad[0], tmp)
            i0 += nb
    free(m)
    return total


def hessp(const floating[:, ::1] X, const double[::1] y, const double[::1] sw,
          const double[::1] w, const double[::1] v, double[::1] out, int kind,
          Py_ssize_t K, double epsilon):
    """Write sum_i sw_i H_i(w) v into ``out`` (overwritten; length K*d + K): the
    Hessian of :func:`loss_grad`'s sum at ``w`` times ``v``, in one read of ``X``."""
    _check(X, y, sw, w, out, K)
    if v.shape[0] != w.shape[0]:
        raise ValueError("glm kernel: v and w differ in length")
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i0, b, k, nb
    cdef double s
    cdef bint weighted = sw.shape[0] > 0
    cdef double* m = <double*> malloc((2 * BLOCK * K + BLOCK) * sizeof(double))
    if m == NULL:
        raise MemoryError()
    cdef double* u = m + BLOCK * K
    cdef double* tmp = u + BLOCK * K
    with nogil:
        for k in range(out.shape[0]):
            out[k] = 0.0
        i0 = 0
        while i0 < n:
            nb = n - i0 if n - i0 < BLOCK else BLOCK
            _margins(&X[i0, 0], nb, d, K, &w[0], m, tmp)
            _margins(&X[i0, 0], nb, d, K, &v[0], u, tmp)
            for b in range(nb):
                s = sw[i0 + b] if weighted else 1.0
                _row_curvature(m + b * K, u + b * K, y[i0 + b], K, kind, epsilon)
                for k in range(K):
                    u[b * K + k] *= s
            _accumulate(&X[i0, 0], nb, d, K, u, &out[0], tmp)
            i0 += nb
    free(m)


# --------------------------------------------------------------------------- CSR rows
ctypedef fused sindex:
    int
    long long


cdef inline void _csr_margins(const floating* vals, const sindex* ind, Py_ssize_t a,
                              Py_ssize_t e, Py_ssize_t d, Py_ssize_t K, const double* w,
                              double* m) noexcept nogil:
    """m[k] = x . w_k + b_k for one CSR row (entries a..e)."""
    cdef Py_ssize_t k, p
    cdef double acc
    for k in range(K):
        acc = 0.0
        for p in range(a, e):
            acc += w[k * d + ind[p]] * <double>vals[p]
        m[k] = acc + w[K * d + k]


cdef inline void _csr_accumulate(const floating* vals, const sindex* ind, Py_ssize_t a,
                                 Py_ssize_t e, Py_ssize_t d, Py_ssize_t K, const double* g,
                                 double* grad) noexcept nogil:
    """grad[k] += g[k] (x, 1) for one CSR row."""
    cdef Py_ssize_t k, p
    for k in range(K):
        if g[k] == 0.0:
            continue
        for p in range(a, e):
            grad[k * d + ind[p]] += g[k] * <double>vals[p]
        grad[K * d + k] += g[k]


def _check_csr(vals, ind, ptr, Py_ssize_t d, y, sw, w, out, Py_ssize_t K):
    n = ptr.shape[0] - 1
    if n < 0 or y.shape[0] != n or (sw.shape[0] not in (0, n)) or w.shape[0] != K * d + K \
            or out.shape[0] != K * d + K or ind.shape[0] != vals.shape[0] \
            or (n > 0 and ptr[n] > vals.shape[0]):
        raise ValueError("glm kernel: inconsistent shapes")


def loss_grad_csr(const floating[::1] vals, const sindex[::1] ind, const sindex[::1] ptr,
                  Py_ssize_t d, const double[::1] y, const double[::1] sw, const double[::1] w,
                  double[::1] grad, int kind, Py_ssize_t K, double epsilon):
    """:func:`loss_grad` of CSR rows (``vals``, ``ind``, ``ptr``: a scipy CSR matrix's
    ``data``, ``indices``, ``indptr``; ``d`` columns): O(stored values x K)."""
    _check_csr(vals, ind, ptr, d, y, sw, w, grad, K)
    cdef Py_ssize_t n = ptr.shape[0] - 1, i, k
    cdef double total = 0.0, s
    cdef bint weighted = sw.shape[0] > 0
    cdef double* m = <double*> malloc(K * sizeof(double))
    if m == NULL:
        raise MemoryError()
    with nogil:
        for k in range(grad.shape[0]):
            grad[k] = 0.0
        for i in range(n):
            s = sw[i] if weighted else 1.0
            if s == 0.0:
                continue
            _csr_margins(&vals[0], &ind[0], ptr[i], ptr[i + 1], d, K, &w[0], m)
            total += s * _row_loss(m, y[i], K, kind, epsilon)
            if s != 1.0:
                for k in range(K):
                    m[k] *= s
            _csr_accumulate(&vals[0], &ind[0], ptr[i], ptr[i + 1], d, K, m, &grad[0])
    free(m)
    return total


def hessp_csr(const floating[::1] vals, const sindex[::1] ind, const sindex[::1] ptr,
              Py_ssize_t d, const double[::1] y, const double[::1] sw, const double[::1] w,
              const double[::1] v, double[::1] out, int kind, Py_ssize_t K, double epsilon):
    """:func:`hessp` of CSR rows."""
    _check_csr(vals, ind, ptr, d, y, sw, w, out, K)
    if v.shape[0] != w.shape[0]:
        raise ValueError("glm kernel: v and w differ in length")
    cdef Py_ssize_t n = ptr.shape[0] - 1, i, k
    cdef double s
    cdef bint weighted = sw.shape[0] > 0
    cdef double* m = <double*> malloc(2 * K * sizeof(double))
    if m == NULL:
        raise MemoryError()
    cdef double* u = m + K
    with nogil:
        for k in range(out.shape[0]):
            out[k] = 0.0
        for i in range(n):
            s = sw[i] if weighted else 1.0
            _csr_margins(&vals[0], &ind[0], ptr[i], ptr[i + 1], d, K, &w[0], m)
            _csr_margins(&vals[0], &ind[0], ptr[i], ptr[i + 1], d, K, &v[0], u)
            _row_curvature(m, u, y[i], K, kind, epsilon)
            for k in range(K):
                u[k] *= s
            _csr_accumulate(&vals[0], &ind[0], ptr[i], ptr[i + 1], d, K, u, &out[0])
    free(m)
