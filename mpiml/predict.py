"""Streaming prediction: inputs larger than memory.

Each rank predicts its rows (the chunk rule over the data-parallel replicas) one
block of ``block_rows`` rows at a time: it reads the block's hyperslab, predicts,
and appends the predictions to a part file of its own, so its memory holds one block
of the input and one of the output whatever the input's size. When every rank has
finished (agreed), rank 0 assembles the output file in input row order from the
parts, block by block, into a temporary name, and renames it into place; a failure
anywhere leaves no output file and no parts.
"""
import os
import uuid

import h5py
import numpy as np
from mpi4py import MPI

from . import progress as _progress
from .comm import chunk, get_comm, get_grid
from .errors import ConfigError, DataError
from .io import STRING_DTYPE, _dataset, _open_read, check_output_path
from .sparse_io import csr_info, read_csr_rows

__all__ = ["stream_predict"]


def _part_name(out, token, rank):
    return f"{os.path.abspath(out)}.part-{token}-{rank}"


def _input_shape(data, X):
    """``(rows, features, is CSR)`` of the input (local)."""
    sparse = csr_info(data, X)
    if sparse is not None:
        return sparse[0], sparse[1], True
    with _open_read(data) as f:
        ds = _dataset(f, data, X, "the features")
        if ds.ndim != 2:
            raise DataError(f"{data}: dataset '{X}' must be 2-D, it has shape {ds.shape}")
        return ds.shape[0], ds.shape[1], False


def stream_predict(est, data, out, X="X", block_rows=65536, proba=False, comm=None,
                   model_parallel=1, attrs=None, inputs=(), progress=None):
    """Predict the rows of ``data[X]`` into ``out`` (datasets ``pred`` and, with
    ``proba``, ``proba``), in input row order (collective). Returns the row count.

    ``progress``: rank 0 shows the rows predicted (its own blocks, scaled to all rows:
    every rank predicts a share of the same size), a mode of :mod:`mpiml.progress`
    (None: the settings in force, quiet outside the command line)."""
    c = get_comm(comm)
    check_output_path(out, comm=c, inputs=(data, *inputs))
    grid = get_grid(c, model_parallel)
    # part files unique to this job: two jobs writing the same --out never mix their parts
    token = c.bcast(uuid.uuid4().hex[:12] if c.rank == 0 else None)
    part = _part_name(out, token, c.rank)
    writer = grid.model_rank == 0          # one rank per model-parallel group writes

    n, d, sparse = c.run(_input_shape, data, X)
    if sparse and not getattr(est, "_sparse_input", False):
        raise ConfigError(f"{data}: '{X}' holds CSR rows, which a {type(est).__name__} "
                          f"cannot take (the linear SGD models do)", ranks=range(c.size))
    classes = getattr(est, "classes_", None)
    # class labels that are integers are written as integers (the label dtype)
    integral_labels = classes is not None and np.issubdtype(np.asarray(classes).dtype, np.number) \
        and bool(np.all(np.asarray(classes) == np.round(np.asarray(classes))))
    lo, hi = chunk(n, grid.D, grid.data_rank)
    n_blocks = c.allreduce(-(-(hi - lo) // block_rows), op=MPI.MAX)
    shown = _progress.Progress("predict", n, "rows", rank=c.rank, mode=progress,
                               scale=n / max(hi - lo, 1))

    def predict_all():
        # the same number of blocks on every rank: a split model's predict is collective
        with _open_read(data) as f, (h5py.File(part, "w-", locking=False) if writer
                                      else _Null()) as p:
            ds = None if sparse else f[X]
            dp = dpr = None
            for b in range(n_blocks):
                a = min(hi, lo + b * block_rows)
                e = min(hi, a + block_rows)
                if sparse:
                    # (read_csr_rows checks the values, the indices and the pointers)
                    block = read_csr_rows(data, X, a, e)
                else:
                    block = np.asarray(ds[a:e]) if e > a else np.zeros((0, d), dtype=ds.dtype)
                if not sparse and not np.isfinite(block).all():
                    row = a + int(np.argwhere(~np.isfinite(block))[0][0])
                    raise DataError(f"{data}: dataset '{X}' has a NaN or infinite value at "
                                    f"row {row}")
                pred = np.asarray(est.predict(block))
                if integral_labels:
                    pred = pred.astype(np.int64)
                elif pred.dtype.kind in "UO":           # string labels: UTF-8 strings
                    pred = pred.astype(object)
                pr = np.asarray(est.predict_proba(block)) if proba else None
                if writer:
                    if dp is None:
                        dp = p.create_dataset("pred", shape=(hi - lo,) + pred.shape[1:],
                                              dtype=STRING_DTYPE if pred.dtype == object
                                              else pred.dtype)
                        if proba:
                            dpr = p.create_dataset("proba", shape=(hi - lo,) + pr.shape[1:],
                                                   dtype=pr.dtype)
                    dp[a - lo:e - lo] = pred
                    if proba:
                        dpr[a - lo:e - lo] = pr
                shown.update(e - lo)

    try:
        with shown:
            c.run(predict_all)
        shown.say(f"writing {out} in input row order")
        c.run(_assemble, c, grid, out, token, n, block_rows, attrs or {})
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return n


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _assemble(c, grid, out, token, n, block_rows, attrs):
    """Rank 0: the parts in rank order into one file (a temporary name, then renamed)."""
    if c.rank != 0:
        return
    tmp = f"{os.path.abspath(out)}.tmp-{token}"
    try:
        with h5py.File(tmp, "w-", locking=False) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            pos = 0
            for g in range(grid.D):
                part = _part_name(out, token, g * grid.K)
                with h5py.File(part, "r", locking=False) as p:
                    for name in p:
                        src = p[name]
                        if name not in f:
                            f.create_dataset(name, shape=(n,) + src.shape[1:], dtype=src.dtype,
                                             chunks=True)
                        for a in range(0, src.shape[0], block_rows):
                            e = min(src.shape[0], a + block_rows)
                            f[name][pos + a:pos + e] = src[a:e]
                    pos += p["pred"].shape[0] if "pred" in p else 0
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
