# cython: language_level=3
"""Column statistics and feature scaling over blocks of rows (no MPI here; the merge
across ranks is in ``mpiml.preprocessing``).

All loops run row by row over C-contiguous float32 or float64 rows with the inner loop
over the features, so they stream through memory once per pass and vectorise; sums are
accumulated in float64 whatever the data type.
"""
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
    rounded once to X's type."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], i, j
    with nogil:
        for i in range(n):
            for j in range(d):
                X[i, j] = <floating>((<double>X[i, j] - offset[j]) / factor[j])
