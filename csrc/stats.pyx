# cython: language_level=3
"""Column statistics, feature scaling and row reordering over blocks of rows (no MPI
here; the merge across ranks is in ``mpiml.preprocessing``).

All loops run row by row over C-contiguous float32 or float64 rows with the inner loop
over the features, so they stream through memory once per pass and vectorise; sums are
accumulated in float64 whatever the data type.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

import numpy as np

ctypedef fused floating:
    float
    double


def shifted_sums(const floating[:, ::1] X, const double[::1] shift, double[::1] total,
                 double[::1] lo, double[::1] hi):
    """``total += sum_i (X[i] - shift)``; ``lo``/``hi`` take the column minima/maxima."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, j
    cdef double v
    with nogil:
        for i in range(n):
            for j in range(d):
                v = X[i, j]
                total[j] += v - shift[j]
                lo[j] = v if v < lo[j] else lo[j]
                hi[j] = v if v > hi[j] else hi[j]


def deviation_sums(const floating[:, ::1] X, const double[::1] shift, const double[::1] res,
                   double[::1] corr, double[::1] sq):
    """With ``dev = (X[i] - shift) - res``: ``corr += sum_i dev``, ``sq += sum_i dev**2``
    (the second pass of the corrected two-pass variance)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, j
    cdef double dev
    with nogil:
        for i in range(n):
            for j in range(d):
                dev = (X[i, j] - shift[j]) - res[j]
                corr[j] += dev
                sq[j] += dev * dev


def scale_rows(floating[:, ::1] X, const double[::1] offset, const double[::1] factor):
    """In place: ``X[i, j] = (X[i, j] - offset[j]) / factor[j]``, computed in float64 and
    rounded once to X's type. Returns the first row with a NaN or infinite result (a
    NaN or infinity in the input), or -1: the finiteness check costs no second pass."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, j, bad = -1
    cdef double v
    with nogil:
        for i in range(n):
            for j in range(d):
                v = (<double>X[i, j] - offset[j]) / factor[j]
                X[i, j] = <floating>v
                if v - v != 0.0 and bad < 0:      # NaN or infinite
                    bad = i
    return bad


def permute_rows(unsigned char[:, ::1] X, const Py_ssize_t[::1] perm):
    """Reorder the rows of ``X`` in place: row ``i`` becomes the old row ``perm[i]``.

    ``X`` is the array's bytes, one row per row (``X.view(np.uint8)`` of a C-contiguous
    array). Every cycle of the permutation is followed once with a one-row buffer, so
    the only extra memory is that row and one byte per row, never a second copy of the
    data (what ``np.take`` needs)."""
    cdef Py_ssize_t n = X.shape[0], w = X.shape[1], i, j, k
    if perm.shape[0] != n:
        raise ValueError(f"perm has {perm.shape[0]} entries for {n} rows")
    seen = np.zeros(n, dtype=np.uint8)
    cdef unsigned char[::1] done = seen
    for i in range(n):
        k = perm[i]
        if k < 0 or k >= n or done[k]:
            raise ValueError("perm is not a permutation of the rows")
        done[k] = 1
    done[:] = 0
    if n == 0 or w == 0:
        return
    cdef unsigned char* tmp = <unsigned char*> malloc(w)
    if tmp == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n):
            if done[i] or perm[i] == i:
                done[i] = 1
                continue
            memcpy(tmp, &X[i, 0], w)
            j = i
            while True:
                done[j] = 1
                k = perm[j]
                if k == i:
                    memcpy(&X[j, 0], tmp, w)
                    break
                memcpy(&X[j, 0], &X[k, 0], w)
                j = k
    free(tmp)


cdef inline int _any_bad(const floating* p, Py_ssize_t n) noexcept nogil:
    """Whether any of the ``n`` values at ``p`` is NaN or infinite (an integer OR
    reduction over ``x - x != 0``, which the compiler vectorises)."""
    cdef Py_ssize_t k
    cdef int flag = 0
    for k in range(n):
        flag |= (p[k] - p[k]) != 0.0
    return flag


cdef inline Py_ssize_t _first_bad_row(const floating* p, Py_ssize_t rows,
                                     Py_ssize_t d) noexcept nogil:
    """The first of ``rows`` rows of ``d`` values at ``p`` holding NaN or infinity, or -1."""
    cdef Py_ssize_t i
    for i in range(rows):
        if _any_bad(p + i * d, d):
            return i
    return -1


def take_rows(const floating[:, ::1] X, const Py_ssize_t[::1] perm, floating[:, ::1] out):
    """``out[i] = X[perm[i]]``, copying each run of consecutive source rows with one
    memcpy (a batch layout's permutation is runs of whole blocks), and checking the rows
    it has just copied, while they are in cache, for NaN or infinity. Returns the first
    ``out`` row holding one, or -1: the finiteness check costs no pass of its own."""
    cdef Py_ssize_t n = perm.shape[0], d = X.shape[1], i, m, src, r, bad = -1
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError("out does not have the shape of the taken rows")
    for i in range(n):
        if perm[i] < 0 or perm[i] >= X.shape[0]:
            raise IndexError(f"row {perm[i]} outside the {X.shape[0]} rows")
    if n == 0 or d == 0:
        return -1
    i = 0
    with nogil:
        while i < n:
            src = perm[i]
            m = 1
            while i + m < n and perm[i + m] == src + m:
                m += 1
            memcpy(&out[i, 0], &X[src, 0], m * d * sizeof(floating))
            if bad < 0:
                r = _first_bad_row(&out[i, 0], m, d)
                if r >= 0:
                    bad = i + r
            i += m
    return bad


def first_nonfinite_row(const floating[:, ::1] X):
    """The first row of ``X`` holding a NaN or infinity, or -1: one streaming pass over
    the values in chunks of ~16 KiB (a chunk that holds one is searched row by row)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i = 0, m, bad = -1
    if n == 0 or d == 0:
        return -1
    m = max(1, 4096 // d)
    with nogil:
        while i < n:
            if i + m > n:
                m = n - i
            if _any_bad(&X[i, 0], m * d):
                bad = i + _first_bad_row(&X[i, 0], m, d)
                break
            i += m
    return bad


def integral_labels(const floating[::1] y, Py_ssize_t[::1] out, Py_ssize_t max_range):
    """For float labels that all hold integers within ``max_range`` of each other:
    ``out[i] = y[i] - min(y)`` and returns ``(min(y), max(y))``; None otherwise (a NaN,
    an infinity, a fraction, or a wider range). Two streaming passes, no temporaries."""
    cdef Py_ssize_t n = y.shape[0], i
    cdef double lo, hi, v
    cdef int ok = 1
    if n == 0 or out.shape[0] != n:
        return None
    with nogil:
        lo = y[0]
        hi = y[0]
        for i in range(n):
            v = y[i]
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        if not (lo == lo and hi == hi and hi - lo < <double>max_range):   # NaN or too wide
            ok = 0
        else:
            for i in range(n):
                v = y[i] - lo
                out[i] = <Py_ssize_t>v
                ok &= (<double>out[i] == v)       # NaN, a fraction: not equal
    return (lo, hi) if ok else None
