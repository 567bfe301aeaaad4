"""HDF5 input and output.

* :func:`load_hdf5`: each rank opens the file read-only and reads only its own
  hyperslab of rows (the :func:`mpiml.comm.chunk` rule). This works with the
  serial h5py wheel and on parallel file systems.
* :func:`write_rows`: a dataset of rows held in pieces by the ranks, written in
  input order. With serial h5py one file is never open for writing on two ranks at
  once: rank 0 creates a temporary file, the ranks write their rows in turn
  (rank order, passing a token), and rank 0 renames it into place only if every
  rank succeeded, so a failed run leaves no partial output file.
* :func:`save_model` / :func:`load_model`: the model file (see
  :data:`MODEL_FORMAT`); plain datasets and attributes, never pickles. Class labels
  keep their type (int64, float64, bool, or variable-length UTF-8 strings) and feature
  names are UTF-8 strings; :func:`check_labels` / :func:`check_feature_names` are the
  rules both writing and reading apply (docs/model-format.md).
"""
import json
import os
import tempfile

import h5py
import numpy as np

from ._kernels.stats import first_nonfinite_row as first_nonfinite_rows_kernel
from ._kernels.stats import permute_rows, pread_rows
from .comm import chunk, get_comm, get_grid
from .errors import ConfigError, DataError, OutputError
from .parallel.data import group_layout, inverse_permutation
# the file-safety rules io and sparse_io share (re-exported: other modules import them from here)
from .h5files import (_check_on_writer, _commit, _open_read, _refuse_inputs,  # noqa: F401
                      _resolve_dtype, _tmp_name, _write_in_turn, check_local, check_output_path,
                      same_file, write_new_file)

__all__ = ["check_local", "local_items", "load_hdf5", "dataset_info", "write_rows", "save_model", "load_model",
           "read_model_slice", "load_vector",
           "check_output_path", "check_output_dir", "check_node_memory", "same_file", "MODEL_FORMAT",
           "MODEL_FORMAT_VERSION",
           "check_labels", "check_feature_names", "STRING_DTYPE"]

MODEL_FORMAT = "mpiml-model"
MODEL_FORMAT_VERSION = 3          # the newest version this mpiml reads and writes
# Each file is written with the lowest version that describes it, so older readers keep
# reading it: version 2 = version 1 + the optional ``scaler/`` group; version 3 = class
# labels a version-2 reader cannot read exactly (strings, booleans, integers beyond
# float64's exact range). Integer labels a float64 reader reads exactly, and the
# optional ``feature_names`` dataset (which older readers ignore), change nothing.
_VERSION_OF_GROUP = {"scaler": 2}
STRING_DTYPE = h5py.string_dtype("utf-8")    # variable-length UTF-8 strings
_EXACT_INT = 2 ** 53                          # integers a float64 holds exactly
_FINITE_BLOCK = 1 << 16   # NaN/Inf scan: 16 x this many values per block (bounds the temporary)


def local_items(f, path):
    """The datasets directly in ``f`` (a file or group), each checked with :func:`check_local`."""
    for name in f.keys():
        node = check_local(f, path, name)
        if isinstance(node, h5py.Dataset):
            yield name, node


def _dataset(f, path, name, what, allow_external=False):
    if name not in f:
        have = []
        f.visititems(lambda k, v: have.append(k) if isinstance(v, h5py.Dataset) else None)
        hint = f" (datasets in the file: {', '.join(have[:10])})" if have else " (the file has no datasets)"
        raise DataError(f"{path}: no dataset '{name}' for {what}{hint}")
    ds = check_local(f, path, name, allow_external)
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{name}' is a group, not a dataset")
    try:
        kind = ds.dtype.kind
    except (TypeError, ValueError) as exc:     # types numpy cannot represent
        raise DataError(f"{path}: dataset '{name}' has a type mpiml cannot read ({exc})") from None
    if kind not in "fiub":
        raise DataError(f"{path}: dataset '{name}' has type {ds.dtype}; mpiml needs real numbers")
    return ds


def first_nonfinite_row(a):
    """Index of the first row of ``a`` holding a NaN or infinity, or None. C-contiguous
    float32/float64 rows are scanned by the kernel in one streaming pass (about a numpy
    read pass ``X @ w``; 2.5x faster than ``np.isfinite`` by blocks); other arrays by
    blocks of rows, so the temporary is one block's booleans, not a copy of ``a``."""
    if isinstance(a, np.ndarray) and a.ndim == 2 and a.flags.c_contiguous and \
            a.dtype in (np.float32, np.float64):
        bad = first_nonfinite_rows_kernel(a)
        return None if bad < 0 else int(bad)
    rows = max(1, _FINITE_BLOCK * 16 // max(1, int(np.prod(a.shape[1:]))))
    for s in range(0, a.shape[0], rows):
        ok = np.isfinite(a[s:s + rows])
        if not ok.all():
            return s + int(np.argwhere(~ok)[0][0])
    return None


def _check_finite(a, path, name, lo, bad=None):
    """Raise the DataError naming the first row of ``a`` (rows ``lo..`` of the dataset
    ``name``) holding a NaN or infinity; ``bad``: that row (-1: none) when the caller
    has scanned ``a`` itself."""
    bad = first_nonfinite_row(a) if bad is None else (bad if bad >= 0 else None)
    if bad is not None:
        raise DataError(f"{path}: dataset '{name}' has a NaN or infinite value at row {lo + bad}")


def available_memory():
    """Bytes of memory available on this node (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_node_memory(c, need, what):
    """Collective: the ranks sharing a node add up what they are about to allocate
    (``need`` bytes each) against the node's available memory; refused (on every rank)
    before anything is allocated."""
    node = c.node()
    total = node.allreduce(int(need))
    avail = available_memory()

    def check():
        if avail is not None and total > avail:
            raise DataError(f"{what}: the {node.size} rank(s) on this node need "
                            f"{total / 2**30:.1f} GiB together, but only {avail / 2**30:.1f} GiB "
                            "of memory is available on the node: use more nodes (fewer ranks "
                            "per node)")
    c.run(check)


def _check_fits(path, name, rows, cols, itemsize):
    """Refuse, before allocating, a shard that cannot fit in this node's memory."""
    need = int(rows) * int(cols) * int(itemsize)
    avail = available_memory()
    if avail is not None and need > avail:
        raise DataError(f"{path}: this rank's {rows} rows of '{name}' need {need / 2**30:.1f} GiB, "
                        f"but only {avail / 2**30:.1f} GiB of memory is available: use more ranks "
                        "(or nodes)")


def dataset_info(path, X="X", y="y"):
    """Shape information of ``X`` (and whether ``y`` exists), read on the calling rank only.
    ``X`` may be a 2-D dataset or a CSR group (:mod:`mpiml.sparse_io`); ``sparse`` says
    which, and ``nnz`` is the CSR group's count of stored values."""
    from .sparse_io import csr_info
    info = csr_info(path, X)
    with _open_read(path) as f:
        has_y = y is not None and y in f
        if info is not None:
            n, d, dtype, nnz = info
            return {"n_rows": n, "shape": (n, d), "dtype": str(dtype), "has_y": has_y,
                    "sparse": True, "nnz": nnz}
        dX = _dataset(f, path, X, "the features")
        return {"n_rows": int(dX.shape[0]), "shape": tuple(int(s) for s in dX.shape),
                "dtype": str(dX.dtype), "has_y": has_y, "sparse": False}


def _row_part(c, grid, sync):
    """``(parts, part)``: the rows are cut into ``parts`` chunks and this rank reads
    chunk ``part`` (None: no rows). Data-parallel replicas of the grid share the rows,
    except with a parameter server (``sync="ps:S"``), whose last S ranks read none."""
    from .parallel.sync import parse_sync
    kind, servers = parse_sync(sync)
    if kind != "ps":
        return grid.D, grid.data_rank
    if servers >= c.size:
        raise ConfigError(f"sync={sync!r} needs more than {servers} rank(s)", ranks=range(c.size))
    parts = c.size - servers
    return parts, (c.rank if c.rank < parts else None)


def load_hdf5(path, X="X", y="y", comm=None, dtype=None, require_y=False, model_parallel=1,
              split_features=False, sync="allreduce", allow_external=False, step_order=None):
    """Read this rank's rows of ``X`` (and ``y``) from an HDF5 file.

    Collective. Rows are split by :func:`mpiml.comm.chunk`; no rank reads rows
    that are not its own. With ``model_parallel=K`` the rows are split over the
    ``size / K`` data-parallel replicas of the process grid (the ``K`` ranks of a
    model-parallel group read the same rows), and with ``split_features`` each of
    them reads only its own hyperslab of columns, ``chunk(n_features, K, rank % K)``
    (for feature-sharded models: pass ``columns=(lo, hi, n_features)`` to ``fit``).
    With ``sync="ps:S"`` the rows are split over the workers only: the last ``S``
    ranks (the parameter servers) read none. Any problem on any rank raises the same
    :class:`~mpiml.errors.DataError` on every rank.

    Parameters
    ----------
    path : str
    X, y : str
        Dataset paths inside the file (nested paths like ``"/train/X"`` work).
        ``y=None`` skips the labels.
    comm : mpi4py communicator or mpiml.comm.Comm, optional
    dtype : {None, "float32", "float64"}
        Default: float32 if X is stored as float32, else float64.
    require_y : bool
        Raise if ``y`` is missing instead of returning ``None`` for it.
    allow_external : bool
        Follow HDF5 external links to the datasets (refused by default: mpiml reads only
        the file it is given). External raw storage and virtual datasets are always
        refused.
    step_order : int or callable, optional
        A global batch size (or a function of the global row count giving one, or None):
        dense rows (and ``y``) come in the order a fit at that batch size visits them,
        row ``i`` the shard's row ``perm[i]`` of :func:`mpiml.parallel.data.group_layout`
        (``n``, the batch size, the shard's first row, its rows); read straight into that
        order where the file stores the rows as they are. ``mpiml train`` loads so when
        its fit would copy the rows into step order. Dense rows, no ``split_features``.

    ``X`` may also name a CSR group in anndata's on-disk layout (:mod:`mpiml.sparse_io`,
    docs/sparse.md): then each rank reads only its rows' range of the stored values
    (same row split), ``X_local`` is a ``scipy.sparse.csr_matrix``, and with
    ``split_features`` it holds only the rank's column range, indices rebased to it.

    Returns
    -------
    X_local : ndarray (n_local, n_features), C-contiguous, or scipy.sparse.csr_matrix
    y_local : ndarray (n_local,) float64, or None if the file has no ``y``

    Examples
    --------
    >>> X, y = load_hdf5("train.h5")            # doctest: +SKIP
    """
    return load_rows(path, X, y, comm, dtype, require_y, model_parallel, split_features, sync,
                     allow_external, step_order)[:2]


def load_rows(path, X="X", y="y", comm=None, dtype=None, require_y=False, model_parallel=1,
              split_features=False, sync="allreduce", allow_external=False, step_order=None):
    """:func:`load_hdf5`, and the step order the dense rows came in (the permutation of
    ``step_order``: row ``i`` is the shard's row ``order[i]``) or None (the file's)."""
    c = get_comm(comm)
    grid = get_grid(c, model_parallel)
    parts, part = _row_part(c, grid, sync)
    from .sparse_io import csr_info
    info = c.run(csr_info, path, X, allow_external)
    if info is not None:
        return (*_load_csr(c, grid, parts, part, info, path, X, y, dtype, require_y,
                           split_features, allow_external), None)

    def plan():
        with _open_read(path) as f:
            dX = _dataset(f, path, X, "the features", allow_external)
            if dX.ndim != 2:
                raise DataError(f"{path}: dataset '{X}' must be 2-D (rows x features), "
                                f"it has shape {dX.shape}")
            n, d = dX.shape
            if n == 0 or d == 0:
                raise DataError(f"{path}: dataset '{X}' is empty (shape {dX.shape})")
            out_dtype = _resolve_dtype(dtype, dX.dtype)
            lo, hi, c0, c1 = _my_block(c, grid, parts, part, path, n, d, split_features)
            _check_fits(path, X, hi - lo, c1 - c0, out_dtype.itemsize)
            return n, out_dtype, lo, hi, c0, c1

    n, out_dtype, lo, hi, c0, c1 = c.run(plan)
    check_node_memory(c, (hi - lo) * (c1 - c0) * out_dtype.itemsize, f"{path}: '{X}'")

    order = None if split_features else _step_permutation(step_order, n, lo, hi)
    return (*c.run(_read_rows, path, X, y, n, out_dtype, lo, hi, c0, c1, require_y,
                   allow_external, order), order)


def _step_permutation(step_order, n, lo, hi):
    """The shard ``lo:hi``'s rows in the step order of :func:`load_hdf5`'s ``step_order``
    (a permutation), or None (file order)."""
    batch = step_order(n) if callable(step_order) else step_order
    if batch is None:
        return None
    return group_layout(n, int(batch), lo, hi - lo)[0]


def _my_block(c, grid, parts, part, path, n, d, split_features):
    """This rank's rows ``lo:hi`` and columns ``c0:c1`` of an ``n x d`` X (dense or CSR),
    refusing more row parts than rows and more feature shards than features."""
    if n < parts:
        what = f"{c.size} ranks" if grid.K == 1 else f"{grid.D} data-parallel replicas"
        raise ConfigError(f"{what} but only {n} rows in {path}: "
                          f"run with at most {n * grid.K} ranks")
    lo, hi = chunk(n, parts, part) if part is not None else (0, 0)
    c0, c1 = chunk(d, grid.K, grid.model_rank) if split_features else (0, d)
    if c1 <= c0:
        raise ConfigError(f"model_parallel={grid.K} is larger than the {d} features of "
                          f"{path}")
    return lo, hi, c0, c1


def _load_csr(c, grid, parts, part, info, path, X, y, dtype, require_y, split_features,
              allow_external):
    """:func:`load_hdf5` of a CSR group: this rank's rows (and, with ``split_features``,
    only its column range, indices rebased) as a ``scipy.sparse.csr_matrix``."""
    from .sparse_io import column_range, read_csr_rows, slice_nnz
    n, d, file_dtype, _ = info

    def plan():
        if n == 0 or d == 0:
            raise DataError(f"{path}: the CSR matrix '{X}' is empty (shape {(n, d)})")
        out_dtype = _resolve_dtype(dtype, file_dtype)
        lo, hi, c0, c1 = _my_block(c, grid, parts, part, path, n, d, split_features)
        return out_dtype, lo, hi, c0, c1, slice_nnz(path, X, lo, hi, allow_external)

    out_dtype, lo, hi, c0, c1, nnz = c.run(plan)
    # values and (at most int64) indices, row pointers, and the filter's temporaries
    check_node_memory(c, nnz * (out_dtype.itemsize + 8) * 2 + (hi - lo + 1) * 16,
                      f"{path}: '{X}'")

    def read():
        Xl = read_csr_rows(path, X, lo, hi, out_dtype, allow_external)
        if (c0, c1) != (0, d):
            Xl = column_range(Xl, c0, c1)
        with _open_read(path) as f:
            yl = _read_targets(f, path, X, y, n, lo, hi, require_y, allow_external)
        return Xl, yl

    return c.run(read)


def _read_rows(path, X, y, n, out_dtype, lo, hi, c0, c1, require_y, allow_external,
               order=None):
    """This rank's hyperslab ``[lo:hi, c0:c1]`` of ``X`` and rows of ``y`` (checked); with
    ``order`` (a permutation of the shard's rows) row ``i`` is the shard's ``order[i]``."""
    with _open_read(path) as f:
        dX = _dataset(f, path, X, "the features", allow_external)
        yl = _read_targets(f, path, X, y, n, lo, hi, require_y, allow_external)
        Xl = np.empty((hi - lo, c1 - c0), dtype=out_dtype)
        where = inverse_permutation(order) if order is not None else None
        bad = _read_stored_rows(f, dX, path, X, lo, hi, Xl, where) \
            if (c0, c1) == (0, dX.shape[1]) else None
        if bad is None:                 # not read where it is stored: h5py reads it
            if hi > lo:
                if dX.dtype == out_dtype:
                    dX.read_direct(Xl, np.s_[lo:hi, c0:c1])
                else:
                    Xl[...] = dX[lo:hi, c0:c1]
        _check_finite(Xl, path, X, lo, bad)
        if bad is None and order is not None:
            permute_rows(Xl.view(np.uint8), order)     # in place: no second copy
        return Xl, (yl[order] if order is not None and yl is not None else yl)


def _stored_extents(dX, lo, hi):
    """Where rows ``lo:hi`` of ``dX`` lie in its file, when they lie there as they are
    (no filter, native byte order, whole rows): ``(byte offsets, rows)`` of the runs of
    contiguous rows (one for a contiguous dataset, one per chunk of whole rows, adjacent
    chunks merged), or None."""
    dcpl = dX.id.get_create_plist()
    row = dX.shape[1] * dX.dtype.itemsize
    if not dX.dtype.isnative or dX.dtype.kind != "f" or dcpl.get_nfilters() or hi <= lo:
        return None
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        base = dX.id.get_offset()
        return None if base is None else ([base + lo * row], [hi - lo])
    if layout != h5py.h5d.CHUNKED or dX.chunks[1] != dX.shape[1]:
        return None
    cr = dX.chunks[0]
    stored = {}
    keep = lambda info: stored.__setitem__(info.chunk_offset[0], info)   # noqa: E731
    if hasattr(dX.id, "chunk_iter"):
        dX.id.chunk_iter(keep)
    else:
        for i in range(dX.id.get_num_chunks()):
            keep(dX.id.get_chunk_info(i))
    at, rows = [], []
    for c in range(lo // cr * cr, hi, cr):
        info = stored.get(c)
        if info is None or info.filter_mask or info.byte_offset is None or info.size != cr * row:
            return None           # a chunk never written (fill values) or filtered
        first, last = max(lo, c), min(hi, c + cr)
        start = info.byte_offset + (first - c) * row
        if at and at[-1] + rows[-1] * row == start:
            rows[-1] += last - first
        else:
            at.append(start)
            rows.append(last - first)
    return at, rows


def _read_stored_rows(f, dX, path, name, lo, hi, out, where=None):
    """Rows ``lo:hi`` of ``dX`` read with ``preadv`` from where the file stores them and
    scanned for NaN / infinity (:func:`mpiml._kernels.stats.pread_rows`: about as fast
    as h5py's read alone), when they are stored as ``out`` holds them
    (:func:`_stored_extents`) in the file ``path`` itself; the first bad row (or -1),
    or None to read them with h5py. The first and last rows are compared with h5py's.
    ``where``: row ``r`` goes to ``out[where[r]]`` (a step order)."""
    if f.driver != "sec2" or dX.dtype != out.dtype or dX.file.filename != f.filename:
        return None
    extents = _stored_extents(dX, lo, hi)
    if extents is None:
        return None
    row = out.shape[1] * out.itemsize
    size = os.path.getsize(path)
    if any(not 0 <= at <= size - m * row for at, m in zip(*extents)):
        return None       # an offset outside the file (a damaged file): h5py reports it
    fd = os.open(path, os.O_RDONLY)
    try:
        bad = pread_rows(fd, np.asarray(extents[0], dtype=np.int64),
                         np.asarray(extents[1], dtype=np.intp), out, where)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read dataset '{name}': {exc}") from None
    finally:
        os.close(fd)
    first, last = (0, out.shape[0] - 1) if where is None else (where[0], where[-1])
    if not (np.array_equal(dX[lo], out[first], equal_nan=True) and
            np.array_equal(dX[hi - 1], out[last], equal_nan=True)):
        return None       # the file's offsets mean something else here: h5py reads them
    return bad


def _read_targets(f, path, X, y, n, lo, hi, require_y, allow_external=False):
    """Rows ``lo:hi`` of the targets ``y`` as float64 (None when the file has none and
    they are not required)."""
    if y is None or y not in f:
        if require_y:
            _dataset(f, path, y, "the targets")     # raises, naming what is missing
        return None
    dy = _dataset(f, path, y, "the targets", allow_external)
    if dy.ndim != 1 and not (dy.ndim == 2 and dy.shape[1] == 1):
        raise DataError(f"{path}: dataset '{y}' must be 1-D, it has shape {dy.shape}")
    if dy.shape[0] != n:
        raise DataError(f"{path}: '{X}' has {n} rows but '{y}' has {dy.shape[0]}")
    yl = np.asarray(dy[lo:hi], dtype=np.float64).reshape(-1)
    _check_finite(yl, path, y, lo)
    return yl


def load_vector(path, name, comm=None, sync="allreduce", model_parallel=1):
    """This rank's rows of a 1-D dataset (e.g. per-row sample weights), split exactly
    as :func:`load_hdf5` splits the rows (collective)."""
    c = get_comm(comm)
    parts, part = _row_part(c, get_grid(c, model_parallel), sync)

    def local():
        with _open_read(path) as f:
            ds = _dataset(f, path, name, "the per-row values")
            if ds.ndim != 1:
                raise DataError(f"{path}: dataset '{name}' must be 1-D, it has shape {ds.shape}")
            lo, hi = chunk(ds.shape[0], parts, part) if part is not None else (0, 0)
            v = np.asarray(ds[lo:hi], dtype=np.float64)
            _check_finite(v, path, name, lo)
            return v

    return c.run(local)


def check_output_dir(path, comm=None, inputs=()):
    """Collective: raise :class:`OutputError` on every rank unless directory ``path`` is
    writable or can be created (checked on rank 0 before any work is done)."""
    def writable(p):
        if os.path.exists(p) and not os.path.isdir(p):
            raise OutputError(f"{path} is a file, not a directory")
        # the run creates it anyway: create it now and write a probe (access() says yes
        # to root on read-only mounts and pseudo file systems)
        try:
            os.makedirs(p, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".mpiml-probe-", dir=p)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write in {path}: {exc.strerror or exc}") from None

    _check_on_writer(path, comm, inputs, writable)


def write_rows(path, arrays, comm=None, attrs=None, chunk_rows=None, compression=None,
               extra=None):
    """Collective: write row-distributed arrays as datasets of one new HDF5 file.

    Parameters
    ----------
    path : str
    arrays : dict of name -> ndarray
        This rank's rows of each dataset; ranks hold consecutive row ranges in
        rank order (rank 0 the first rows). All ranks pass the same names, and
        trailing shapes and dtypes that agree.
    attrs : dict, optional
        Attributes of the root group (written by rank 0).
    chunk_rows : int, optional
        HDF5 chunk length in rows (default: about 1 MiB per chunk).
    compression : {None, "gzip"}
    extra : dict of name -> ndarray, optional
        Whole (not row-distributed) datasets, taken from rank 0.
    """
    c = get_comm(comm)
    check_output_path(path, comm=c)
    names = sorted(arrays)
    meta = [(k, arrays[k].shape[0], arrays[k].shape[1:], arrays[k].dtype.str) for k in names]
    everyone = c.allgather(meta)
    tmp = c.bcast(_tmp_name(path) if c.rank == 0 else None)

    def layout():
        if any([(k, s, t) for k, _, s, t in m] != [(k, s, t) for k, _, s, t in everyone[0]]
               for m in everyone):
            raise DataError("ranks disagree on the datasets to write (names, shapes or types)")

    c.run(layout)
    totals = {k: sum(m[i][1] for m in everyone) for i, k in enumerate(names)}
    offsets = {k: sum(m[i][1] for m in everyone[:c.rank]) for i, k in enumerate(names)}

    write_new_file(c, path, tmp, lambda: _create_datasets(tmp, arrays, totals, chunk_rows,
                                                          compression, attrs, extra),
                   arrays, offsets)


def _create_datasets(tmp, arrays, totals, chunk_rows, compression, attrs, extra):
    """Rank 0: the new file with every dataset at its full size (about 1 MiB chunks)."""
    with h5py.File(tmp, "w-", locking=False) as f:
        for k in sorted(arrays):
            a = arrays[k]
            shape = (totals[k],) + a.shape[1:]
            row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize)
            cr = chunk_rows or max(1, min(totals[k], (1 << 20) // row_bytes))
            chunks = (cr,) + a.shape[1:] if totals[k] > 0 else None
            f.create_dataset(k, shape=shape, dtype=a.dtype, chunks=chunks,
                             compression=compression,
                             shuffle=compression is not None and totals[k] > 0)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value)


def _text(values, where, what):
    """``values`` as a list of str that an HDF5 UTF-8 string holds exactly (DataError
    naming ``where`` and ``what`` otherwise)."""
    out = []
    for v in np.asarray(values, dtype=object).reshape(-1):
        if not isinstance(v, str):
            raise DataError(f"{where}: every {what} must be a string, one is {v!r}")
        if "\0" in v:
            raise DataError(f"{where}: the {what} {v!r} holds a NUL character, which a "
                            "model file cannot store")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: the {what} {v!r} is not valid Unicode (it has no "
                            "UTF-8 form)") from None
        out.append(str(v))
    return out


def check_labels(classes, where):
    """The class labels ``classes`` as a fitted classifier keeps them -- int64, float64,
    bool or str (numpy unicode) -- after checking that they are 1-D, finite, sorted and
    distinct (DataError naming ``where`` otherwise)."""
    a = np.asarray(classes)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{where}: the classes must be a 1-D list of labels, not an array of "
                        f"shape {a.shape}")
    values = a.tolist()
    if a.dtype.kind == "O" and not all(isinstance(v, str) for v in values):
        try:                            # object labels that are all numbers or booleans
            a = np.array(values)
        except (TypeError, ValueError):
            a = np.zeros(0, dtype=object)
        if a.dtype.kind not in "iufb":
            raise DataError(f"{where}: the classes mix types or are not numbers, booleans "
                            f"or strings: {values[:10]}")
    kind = a.dtype.kind
    if kind in "USO":
        a = np.array(_text(a, where, "class label"), dtype=str)
    elif kind in "iu":
        if kind == "u" and int(a.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{where}: integer class labels must fit in int64")
        a = a.astype(np.int64)
    elif kind == "f" and np.isfinite(a).all():
        a = a.astype(np.float64)
    elif kind != "b":
        raise DataError(f"{where}: the classes must be finite numbers, booleans or strings, "
                        f"not {a.dtype} values")
    if not np.all(a[:-1] < a[1:]):
        raise DataError(f"{where}: the classes must be sorted and distinct, they are "
                        f"{a.tolist()[:10]}")
    return a


def check_feature_names(names, n_features, where):
    """The feature names ``names`` as ``feature_names_in_`` holds them (a 1-D object array
    of str), after checking that there is one per feature (when ``n_features`` is given)
    and that they are distinct (DataError naming ``where`` otherwise)."""
    a = np.asarray(names, dtype=object)
    if a.ndim != 1 or (n_features is not None and len(a) != n_features):
        raise DataError(f"{where}: {a.size} feature names for {n_features} features")
    text = _text(a, where, "feature name")
    if len(set(text)) != len(text):
        raise DataError(f"{where}: the feature names are not distinct")
    out = np.empty(len(text), dtype=object)
    out[:] = text
    return out


def _stored(name, a, where, n_features):
    """``(array as written, format version it needs)`` for dataset ``name`` of a model file:
    class labels and feature names keep their type (strings as variable-length UTF-8)."""
    if name == "feature_names":
        names = check_feature_names(a, n_features, where)
        return np.array(names.tolist(), dtype=STRING_DTYPE), 1
    if name != "classes":
        return a, _VERSION_OF_GROUP.get(name.split("/")[0], 1)
    a = check_labels(a, where)
    if a.dtype.kind == "U":
        return np.array(a.tolist(), dtype=STRING_DTYPE), 3
    inexact = a.dtype.kind == "i" and bool(np.any((a > _EXACT_INT) | (a < -_EXACT_INT)))
    return a, 3 if a.dtype.kind == "b" or inexact else 1


def save_model(path, model_type, params, arrays, comm=None, extra_attrs=None):
    """Collective: write a model file (rank 0 writes; temporary file + rename).

    ``arrays["classes"]`` (int, float, bool or str labels) and ``arrays["feature_names"]``
    (str) keep their type; the file's ``format_version`` is the lowest that describes it.
    """
    c = get_comm(comm)
    check_output_path(path, comm=c)

    def write():
        if c.rank != 0:
            return
        d = (extra_attrs or {}).get("n_features_in")
        stored = {name: _stored(name, a, f"model file {path}", d) for name, a in arrays.items()}
        tmp = _tmp_name(path)
        try:
            with h5py.File(tmp, "w-", locking=False) as f:
                f.attrs["format"] = MODEL_FORMAT
                f.attrs["format_version"] = max([1] + [v for _, v in stored.values()])
                f.attrs["model_type"] = model_type
                f.attrs["params"] = json.dumps(params, sort_keys=True)
                for key, value in (extra_attrs or {}).items():
                    f.attrs[key] = value
                for name, (a, _) in stored.items():
                    f.create_dataset(name, data=a)
            _commit(tmp, path)
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise OutputError(f"cannot write model file {path}: {exc}") from None

    c.run(write)


def check_format(f, path, name, newest, what):
    """Raise DataError unless open file ``f`` has format ``name``, version <= ``newest``."""
    if f.attrs.get("format") != name:
        raise DataError(f"{path} is not an mpiml {what} file")
    version = int(f.attrs.get("format_version", -1))
    if version > newest:
        raise DataError(f"{path} has {what} format version {version}; this mpiml reads up to "
                        f"{newest}: upgrade mpiml")


def _read_whole(ds, path, name):
    """All of dataset ``ds``; HDF5 strings (variable or fixed length) come back decoded
    from UTF-8, as an object array of str."""
    try:
        string = h5py.check_string_dtype(ds.dtype)
        a = ds[()]
    except (TypeError, ValueError, OSError) as exc:      # types numpy cannot represent
        raise DataError(f"{path}: dataset '{name}' cannot be read ({exc})") from None
    if string is None:
        return a
    flat = np.asarray(a, dtype=object).reshape(-1)
    try:
        text = [bytes(v).decode("utf-8") for v in flat]
    except UnicodeDecodeError:
        raise DataError(f"{path}: dataset '{name}' holds a string that is not valid UTF-8") from None
    out = np.empty(len(text), dtype=object)
    out[:] = text
    return out.reshape(np.shape(a))


def load_model(path, comm=None, lazy=()):
    """Collective: read a model file on every rank.

    Returns ``(model_type, params, arrays, attrs)``. Datasets named in ``lazy`` are
    not read: ``arrays[name]`` is their shape, for :func:`read_model_slice`. String
    datasets (``classes`` with string labels, ``feature_names``) are object arrays of
    str; :func:`check_labels` / :func:`check_feature_names` check and convert them.
    """
    c = get_comm(comm)

    def read():
        with _open_read(path) as f:
            check_format(f, path, MODEL_FORMAT, MODEL_FORMAT_VERSION, "model")
            model_type = str(f.attrs["model_type"])
            params = json.loads(str(f.attrs["params"]))
            arrays = {k: (tuple(v.shape) if k in lazy else _read_whole(v, path, k))
                      for k, v in local_items(f, path)}
            # one level of groups (``scaler/offset``, ...): small, read whole
            for g in f.keys():
                if isinstance(check_local(f, path, g), h5py.Group):
                    arrays.update({f"{g}/{k}": _read_whole(v, path, f"{g}/{k}")
                                   for k, v in local_items(f[g], path)})
            attrs = {k: v for k, v in f.attrs.items()}
            return model_type, params, arrays, attrs

    return c.run(read)


def read_model_slice(path, name, index, comm=None):
    """Collective: each rank reads its own hyperslab ``index`` of dataset ``name``
    (a sharded model loads only its shard of the logical weights)."""
    c = get_comm(comm)

    def read():
        with _open_read(path) as f:
            a = np.asarray(check_local(f, path, name)[index], dtype=np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"{path}: the model's '{name}' holds a NaN or infinite value")
        return a

    return c.run(read)
