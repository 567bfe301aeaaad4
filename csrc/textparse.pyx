# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Text parsing kernels (libsvm/svmlight lines, feature hashing).

:func:`parse_libsvm` turns a block of whole lines into CSR pieces in one C pass
(no Python object per token). :func:`murmurhash3_32` is MurmurHash3 x86_32, the hash
of ``mpiml convert --hash-bits`` (docs/sparse.md).
"""
from libc.stdint cimport int64_t, uint32_t, INT64_MAX
from libc.stdlib cimport strtod

import numpy as np

# why a line was refused; the Python names below are these very values (one definition)
cdef enum Reason:
    R_OK = 0
    R_EMPTY = 1
    R_LABEL = 2
    R_ENTRY = 3

OK, EMPTY_LINE, BAD_LABEL, BAD_ENTRY = R_OK, R_EMPTY, R_LABEL, R_ENTRY


cdef inline uint32_t _rotl(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef uint32_t _murmur3(const unsigned char* p, Py_ssize_t n, uint32_t seed) noexcept nogil:
    cdef uint32_t c1 = 0xcc9e2d51U, c2 = 0x1b873593U, h = seed, k
    cdef Py_ssize_t i, blocks = n // 4
    for i in range(blocks):
        k = (<uint32_t>p[4 * i] | (<uint32_t>p[4 * i + 1] << 8) |
             (<uint32_t>p[4 * i + 2] << 16) | (<uint32_t>p[4 * i + 3] << 24))
        k = _rotl(k * c1, 15) * c2
        h = _rotl(h ^ k, 13) * 5 + 0xe6546b64U
    k = 0
    i = blocks * 4
    if n & 3 == 3:
        k ^= <uint32_t>p[i + 2] << 16
    if n & 3 >= 2:
        k ^= <uint32_t>p[i + 1] << 8
    if n & 3 >= 1:
        k ^= <uint32_t>p[i]
        h ^= _rotl(k * c1, 15) * c2
    h ^= <uint32_t>n
    h ^= h >> 16
    h *= 0x85ebca6bU
    h ^= h >> 13
    h *= 0xc2b2ae35U
    h ^= h >> 16
    return h


def murmurhash3_32(bytes key, unsigned int seed=0):
    """MurmurHash3 x86_32 of ``key`` (an unsigned 32-bit int)."""
    return _murmur3(<const unsigned char*>key, len(key), seed)


cdef inline bint _space(unsigned char ch) noexcept nogil:
    return ch == 32 or 9 <= ch <= 13


cdef struct Result:
    Py_ssize_t lines      # lines parsed
    Py_ssize_t nnz        # entries written
    int reason            # Reason
    Py_ssize_t bad_a      # the offending token (byte range) when reason != R_OK
    Py_ssize_t bad_b


cdef bint _int_id(const unsigned char* s, Py_ssize_t a, Py_ssize_t b, int64_t* out) noexcept nogil:
    """Decimal digits only, fitting in int64."""
    cdef int64_t v = 0
    cdef int d
    if a >= b:
        return False
    while a < b:
        d = s[a] - 48
        if d < 0 or d > 9 or v > (INT64_MAX - d) // 10:
            return False
        v = v * 10 + d
        a += 1
    out[0] = v
    return True


cdef void _parse(const unsigned char* s, Py_ssize_t n, int hash_bits, double* labels,
                 int64_t* indptr, int64_t* idx, double* val, Result* r) noexcept nogil:
    cdef Py_ssize_t pos = 0, eol, end, i, j, c
    cdef Py_ssize_t line = 0, k = 0
    cdef char* q
    cdef uint32_t mask = (<uint32_t>1 << hash_bits) - 1 if 0 < hash_bits < 32 else 0xffffffffU
    cdef int64_t col
    cdef double v
    r.reason = R_OK
    indptr[0] = 0
    while pos < n:
        eol = pos
        while eol < n and s[eol] != 10:
            eol += 1
        end = pos
        while end < eol and s[end] != 35:       # '#' starts a comment
            end += 1
        i = pos
        while i < end and _space(s[i]):
            i += 1
        if i >= end:
            r.reason, r.bad_a, r.bad_b = R_EMPTY, pos, eol
            break
        j = i
        while j < end and not _space(s[j]):
            j += 1
        labels[line] = strtod(<const char*>(s + i), &q)
        if <const unsigned char*>q != s + j:
            r.reason, r.bad_a, r.bad_b = R_LABEL, i, j
            break
        while True:
            i = j
            while i < end and _space(s[i]):
                i += 1
            if i >= end:
                break
            j = i
            while j < end and not _space(s[j]):
                j += 1
            c = j - 1                           # the last ':' splits id and value
            while c >= i and s[c] != 58:
                c -= 1
            if c <= i or c == j - 1:
                r.reason = R_ENTRY
                break
            if c - i == 3 and s[i] == 113 and s[i + 1] == 105 and s[i + 2] == 100:
                continue                        # qid:N (ranking groups): skipped
            v = strtod(<const char*>(s + c + 1), &q)
            if <const unsigned char*>q != s + j or _space(s[c + 1]):
                r.reason = R_ENTRY
                break
            if hash_bits > 0:
                col = _murmur3(s + i, c - i, 0) & mask
            elif not _int_id(s, i, c, &col):
                r.reason = R_ENTRY
                break
            idx[k] = col
            val[k] = v
            k += 1
        if r.reason != R_OK:
            r.bad_a, r.bad_b = i, j
            break
        line += 1
        indptr[line] = k
        pos = eol + 1
    r.lines = line
    r.nnz = k


def parse_libsvm(bytes data, int hash_bits=0):
    """Parse whole libsvm lines.

    Returns ``(labels, indptr, indices, values, bad)``: float64 labels, int64 row
    pointers, int64 column ids as written (or hashed into ``2**hash_bits`` columns when
    ``hash_bits > 0``; then ids may be any text without whitespace or ':'), float64
    values, and ``bad = None`` or ``(line index in data, reason, offending bytes)`` for
    the first line that does not parse (the arrays then hold the lines before it).
    A ``qid:N`` entry is skipped. Lines are not checked for NaN / Inf here.
    """
    if not 0 <= hash_bits <= 31:
        raise ValueError(f"hash_bits must be in [0, 31], not {hash_bits}")
    cdef bytes z = data + b"\0"               # strtod stops at the NUL past the end
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t n_lines = data.count(b"\n") + 1
    cdef Py_ssize_t n_items = data.count(b":")
    labels = np.empty(n_lines, dtype=np.float64)
    indptr = np.empty(n_lines + 1, dtype=np.int64)
    indices = np.empty(max(n_items, 1), dtype=np.int64)
    values = np.empty(max(n_items, 1), dtype=np.float64)
    cdef double[::1] lab = labels, vals = values
    cdef int64_t[::1] ptr = indptr, idx = indices
    cdef const unsigned char* s = <const unsigned char*>z
    cdef Result r
    with nogil:
        _parse(s, n, hash_bits, &lab[0], &ptr[0], &idx[0], &vals[0], &r)
    bad = None
    if r.reason != R_OK:
        bad = (r.lines, r.reason, data[r.bad_a:r.bad_b])
    return (labels[:r.lines], indptr[:r.lines + 1], indices[:r.nnz], values[:r.nnz], bad)
