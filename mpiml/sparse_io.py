"""Sparse (CSR) matrices in HDF5, in anndata's on-disk layout (docs/sparse.md).

A CSR matrix is a *group* (e.g. ``X``) holding three 1-D datasets -- ``data`` (the
values), ``indices`` (column of each value, int32 or int64) and ``indptr`` (row
pointers, ``n_rows + 1`` of them) -- with the group attributes
``encoding-type="csr_matrix"``, ``encoding-version="0.1.0"`` and
``shape=(n_rows, n_cols)``. Files written by anndata / scanpy (``.h5ad``) load as they
are; the labels ``y`` are a plain 1-D dataset beside the group.

* :func:`csr_info`: the shape of such a group (None for a plain dataset).
* :func:`read_csr_rows`: rows ``lo:hi`` as a ``scipy.sparse.csr_matrix``, reading only
  their slice of ``indptr`` and then only their range of ``data`` / ``indices``.
* :func:`write_csr`: collective writer (rank order, temporary name, rename).

Every field is untrusted: attributes, pointers, column indices and values are
checked before use, and a problem raises :class:`~mpiml.errors.DataError` naming the
file. Duplicate column indices within a row are kept as stored; scipy (and every
product mpiml computes) treats them as summed. Indices within a row need not be sorted.
"""

import h5py
import numpy as np
import scipy.sparse as sp

from .comm import get_comm
from .errors import ConfigError, DataError
from .h5files import _open_read, _resolve_dtype, _tmp_name, check_local, check_output_path, write_new_file

__all__ = ["csr_info", "read_csr_rows", "write_csr", "slice_nnz", "column_range", "ENCODING_TYPE", "ENCODING_VERSION"]

ENCODING_TYPE = "csr_matrix"
ENCODING_VERSION = "0.1.0"
_INT32_MAX = 2 ** 31 - 1
_FINITE_BLOCK = 1 << 20       # values checked for NaN / Inf this many at a time


def _attr_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if isinstance(value, (str, np.str_)) else None


def _shape(group, path, name):
    if "shape" not in group.attrs:
        raise DataError(f"{path}: the CSR group '{name}' has no 'shape' attribute")
    try:
        shape = np.asarray(group.attrs["shape"])
    except (TypeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: the 'shape' attribute of '{name}' cannot be read ({exc})") from None
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise DataError(f"{path}: the 'shape' attribute of '{name}' must be two non-negative "
                        f"integers, it is {shape.tolist()!r}")
    return int(shape[0]), int(shape[1])


def _part(f, path, name, key, kinds, allow_external):
    full = f"{name}/{key}"
    if key not in f[name]:
        raise DataError(f"{path}: the CSR group '{name}' has no '{key}' dataset")
    ds = check_local(f, path, full, allow_external)
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{full}' is a group, not a dataset")
    try:
        kind = ds.dtype.kind
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: dataset '{full}' has a type mpiml cannot read ({exc})") from None
    if kind not in kinds or ds.ndim != 1:
        want = "integers" if kinds == "iu" else "real numbers"
        raise DataError(f"{path}: dataset '{full}' must be 1-D {want}, it is {ds.dtype} "
                        f"with shape {ds.shape}")
    return ds


def _open_csr(f, path, name, allow_external=False):
    """``(group, n_rows, n_cols, data, indices, indptr)`` after checking the layout, or
    None when ``name`` is missing or a plain dataset."""
    if name not in f:
        return None
    node = check_local(f, path, name, allow_external)
    if isinstance(node, h5py.Dataset):
        return None
    kind = _attr_text(node.attrs.get("encoding-type"))
    if kind != ENCODING_TYPE:
        raise DataError(f"{path}: '{name}' is a group with encoding-type {kind!r}; mpiml reads a "
                        f"matrix stored as a 2-D dataset or a group with encoding-type "
                        f"'{ENCODING_TYPE}'")
    n, d = _shape(node, path, name)
    data = _part(f, path, name, "data", "fiub", allow_external)
    indices = _part(f, path, name, "indices", "iu", allow_external)
    indptr = _part(f, path, name, "indptr", "iu", allow_external)
    if indptr.shape[0] != n + 1:
        raise DataError(f"{path}: '{name}/indptr' has {indptr.shape[0]} entries; a matrix of "
                        f"{n} rows needs {n + 1}")
    if data.shape[0] != indices.shape[0]:
        raise DataError(f"{path}: '{name}/data' has {data.shape[0]} values but "
                        f"'{name}/indices' has {indices.shape[0]}")
    return node, n, d, data, indices, indptr


def csr_info(path, name, allow_external=False):
    """``(n_rows, n_cols, value_dtype, nnz)`` of the CSR group ``name`` of the HDF5 file
    ``path``, or None when ``name`` is missing or a plain dataset (read on the calling
    rank only; only attributes and dataset shapes are read). ``nnz`` is the length of
    ``data``. Raises DataError for a group that is not a valid CSR matrix."""
    with _open_read(path) as f:
        got = _open_csr(f, path, name, allow_external)
        if got is None:
            return None
        _, n, d, data, _, _ = got
        return n, d, data.dtype, int(data.shape[0])


def _pointers(indptr, path, name, lo, hi, n_data):
    """``indptr[lo:hi + 1]`` as int64, checked: non-decreasing and within ``[0, n_data]``.
    The ranks' slices overlap by one pointer, so together they check the whole array."""
    p = np.asarray(indptr[lo:hi + 1])
    if p.dtype.kind == "u" and p.size and int(p.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{path}: '{name}/indptr' holds a pointer beyond the data")
    p = p.astype(np.int64, copy=False)
    if p.size and (p[0] < 0 or p[-1] > n_data):
        raise DataError(f"{path}: '{name}/indptr' points outside the {n_data} stored values "
                        f"(rows {lo}..{hi})")
    down = np.flatnonzero(p[1:] < p[:-1])
    if down.size:
        raise DataError(f"{path}: '{name}/indptr' decreases at row {lo + int(down[0])}")
    return p


def slice_nnz(path, name, lo, hi, allow_external=False):
    """The count of stored values in rows ``lo:hi`` (two pointers read and checked): what
    :func:`read_csr_rows` will allocate, known before it does."""
    with _open_read(path) as f:
        _, n, _, data, _, indptr = _open_csr(f, path, name, allow_external)
        if not 0 <= lo <= hi <= n:
            raise ConfigError(f"rows {lo}:{hi} are outside the {n} rows of {path}:'{name}'")
        a, b = (int(v) for v in indptr[[lo, hi]]) if hi > lo else (0, 0)
    if not 0 <= a <= b <= data.shape[0]:
        raise DataError(f"{path}: '{name}/indptr' is malformed (rows {lo}..{hi} point to "
                        f"values {a}..{b} of {data.shape[0]})")
    return b - a


def _first_nonfinite(values):
    for s in range(0, values.size, _FINITE_BLOCK):
        ok = np.isfinite(values[s:s + _FINITE_BLOCK])
        if not ok.all():
            return s + int(np.argmin(ok))
    return None


def read_csr_rows(path, name, lo, hi, dtype=None, allow_external=False):
    """Rows ``lo:hi`` of the CSR group ``name`` as a ``scipy.sparse.csr_matrix`` (local,
    not collective).

    Reads only ``indptr[lo:hi + 1]`` and then only that range of ``data`` and
    ``indices``. Values come back as float32 if stored as float32, else float64 (or as
    ``dtype``); indices and pointers as int32 when the column count and the slice's
    non-zeros fit, else int64. Raises DataError (naming the file, and the global row for
    a NaN / infinite value) for anything malformed.
    """
    with _open_read(path) as f:
        got = _open_csr(f, path, name, allow_external)
        if got is None:
            raise DataError(f"{path}: '{name}' is not a CSR group (a group with "
                            f"encoding-type '{ENCODING_TYPE}')")
        _, n, d, data, indices, indptr = got
        if not 0 <= lo <= hi <= n:
            raise ConfigError(f"rows {lo}:{hi} are outside the {n} rows of {path}:'{name}'")
        out_dtype = _resolve_dtype(dtype, data.dtype)
        p = _pointers(indptr, path, name, lo, hi, data.shape[0])
        a, b = (int(p[0]), int(p[-1])) if p.size else (0, 0)
        idx = np.asarray(indices[a:b])
        vals = np.asarray(data[a:b])
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= d):
        bad = int(np.flatnonzero((idx < 0) | (idx >= d))[0])
        row = lo + int(np.searchsorted(p, a + bad, side="right")) - 1
        raise DataError(f"{path}: '{name}/indices' holds column {int(idx[bad])} at row {row}, "
                        f"outside the {d} columns")
    vals = vals.astype(out_dtype, copy=False)
    bad = _first_nonfinite(vals)
    if bad is not None:
        row = lo + int(np.searchsorted(p, a + bad, side="right")) - 1
        raise DataError(f"{path}: dataset '{name}' has a NaN or infinite value at row {row}")
    itype = np.int32 if d <= _INT32_MAX and b - a <= _INT32_MAX else np.int64
    return sp.csr_matrix((vals, idx.astype(itype, copy=False), (p - a).astype(itype)),
                         shape=(hi - lo, d), copy=False)


def column_range(X, c0, c1):
    """Columns ``c0:c1`` of the CSR matrix ``X``, indices rebased to ``c0`` (no densifying:
    the entries outside the range are filtered out)."""
    keep = (X.indices >= c0) & (X.indices < c1)
    counts = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=counts[1:])
    ptr = counts[X.indptr]
    return sp.csr_matrix((X.data[keep], (X.indices[keep] - c0).astype(X.indices.dtype),
                          ptr.astype(X.indptr.dtype)), shape=(X.shape[0], c1 - c0), copy=False)


def _local_meta(X, y):
    if not sp.issparse(X) or X.format != "csr":
        raise DataError(f"write_csr needs a scipy.sparse CSR matrix, not {type(X).__name__}")
    if y is not None and np.shape(y) != (X.shape[0],):
        raise DataError(f"{X.shape[0]} rows but {np.shape(y)} labels")
    return (X.shape[0], int(X.indptr[-1]), X.shape[1], X.dtype.str,
            None if y is None else np.asarray(y).dtype.str)


def write_csr(path, X_local, y_local, comm=None, attrs=None, name="X", compression=None,
              inputs=(), extra=None):
    """Collective: write a row-distributed CSR matrix (and labels) as a new HDF5 file.

    Parameters
    ----------
    path : str
    X_local : scipy.sparse.csr_matrix
        This rank's rows (possibly none); ranks hold consecutive row ranges in rank
        order and agree on the column count and value dtype.
    y_local : ndarray (n_local,) or None
        Labels, written as the 1-D dataset ``y`` (None on every rank: no labels).
    attrs : dict, optional
        Attributes of the root group.
    name : str
        The CSR group's name.
    compression : {None, "gzip"}
    inputs : sequence of str
        Files the output must not be (refused through links too).
    extra : dict of name -> ndarray, optional
        Whole (not row-distributed) datasets, taken from rank 0.

    The file is written under a temporary name (rank 0 creates it, the ranks write in
    turn) and renamed into place only if every rank succeeded. Indices are int32 when
    the column count allows, else int64; pointers are int32 when the non-zeros fit.

    Examples
    --------
    >>> write_csr("train.h5", X_rows_of_this_rank, y_rows)   # doctest: +SKIP
    """
    c = get_comm(comm)
    check_output_path(path, comm=c, inputs=inputs)
    meta = c.run(_local_meta, X_local, y_local)
    everyone = c.allgather(meta)

    def agree():
        if len({m[2:] for m in everyone}) != 1:
            raise DataError("write_csr: the ranks disagree on the columns, value type or labels")
    c.run(agree)
    n = sum(m[0] for m in everyone)
    nnz = sum(m[1] for m in everyone)
    d, vtype, ytype = everyone[0][2:]
    row0 = sum(m[0] for m in everyone[:c.rank])
    nnz0 = sum(m[1] for m in everyone[:c.rank])
    itype = np.int32 if d <= _INT32_MAX else np.int64
    ptype = np.int32 if nnz <= _INT32_MAX else np.int64
    tmp = c.bcast(_tmp_name(path) if c.rank == 0 else None)
    sizes = {"data": (nnz, vtype), "indices": (nnz, itype), "indptr": (n + 1, ptype)}
    if ytype is not None:
        sizes["y"] = (n, ytype)

    arrays = {f"{name}/data": X_local.data, f"{name}/indices": X_local.indices.astype(itype),
              f"{name}/indptr": (X_local.indptr[1:].astype(np.int64) + nnz0).astype(ptype)}
    offsets = {f"{name}/data": nnz0, f"{name}/indices": nnz0, f"{name}/indptr": row0 + 1}
    if ytype is not None:
        arrays["y"], offsets["y"] = np.asarray(y_local), row0
    write_new_file(c, path, tmp, lambda: _create(tmp, name, sizes, (n, d), attrs, compression,
                                                 extra),
                   arrays, offsets)


def _create(tmp, name, sizes, shape, attrs, compression, extra):
    """Rank 0: the new file with the CSR group and ``y`` at full size (zero-filled, so
    ``indptr[0] = 0``), chunks of about 1 MiB."""
    with h5py.File(tmp, "w-", locking=False) as f:
        g = f.create_group(name)
        g.attrs["encoding-type"] = ENCODING_TYPE
        g.attrs["encoding-version"] = ENCODING_VERSION
        g.attrs["shape"] = np.asarray(shape, dtype=np.int64)
        for key, (size, dtype) in sizes.items():
            dtype = np.dtype(dtype)
            chunks = (max(1, min(size, (1 << 20) // dtype.itemsize)),) if size > 0 else None
            where = f if key == "y" else g
            where.create_dataset(key, shape=(size,), dtype=dtype, chunks=chunks,
                                 compression=compression if chunks else None,
                                 shuffle=compression is not None and chunks is not None)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value)
