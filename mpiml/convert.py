"""``mpiml convert``: CSV, ``.npy``, libsvm/svmlight and ``.npz`` files into mpiml's HDF5
layout (``X`` and ``y``), in parallel. CSV and ``.npy`` give a dense ``X``; libsvm and
``.npz`` a CSR group ``X`` (:mod:`mpiml.sparse_io`, docs/sparse.md), never densified
unless ``dense=True``; libsvm feature ids can be hashed (``hash_bits``).

Text formats: the file is cut into ``size`` equal byte ranges; rank ``r`` parses the
lines that *start* in its range (it skips the partial line at its start and reads
past its end to finish its last line), so no line is parsed twice or lost. The ranks
agree the row offsets with one exclusive scan, so a malformed line is reported with
its global line number, by every rank at once, and nothing is written. CSV fields
are parsed in bulk by numpy (one call per rank, C speed); only when the count of
numbers does not match does a rank look line by line for the culprit. libsvm lines are
parsed in C (:mod:`mpiml._kernels.textparse`). The output is written through
:func:`mpiml.io.write_rows` or :func:`mpiml.sparse_io.write_csr` (rank-ordered, temporary
name, rename): chunked, optionally gzip-compressed, never half-written.
"""
import csv
import os
import warnings
import zipfile

import numpy as np
import scipy.sparse as sp
from mpi4py import MPI

from . import progress as _progress
from .comm import get_comm
from .errors import ConfigError, DataError
from ._kernels import textparse
from .io import check_node_memory, check_output_path, write_rows
from .sparse_io import write_csr

__all__ = ["convert", "FORMATS"]

FORMATS = ("csv", "npy", "libsvm", "npz")
# a rank parses its share of a file in pieces of about this size, and shows its progress
# after each (the numbers parsed are the same as in one piece)
PIECE_BYTES = 8 << 20


def _format_of(path, fmt):
    if fmt:
        return fmt
    ext = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".txt": "csv", ".npy": "npy", ".svm": "libsvm", ".libsvm": "libsvm",
            ".svmlight": "libsvm", ".npz": "npz"}.get(ext, "csv")


def _my_lines(path, rank, size):
    """This rank's bytes: the lines starting in its share of the file."""
    total = os.path.getsize(path)
    a, b = total * rank // size, total * (rank + 1) // size
    with open(path, "rb") as fh:
        if a > 0:
            fh.seek(a - 1)
            # a line starts at a if the byte before is a newline; otherwise skip to the next
            if fh.read(1) != b"\n":
                fh.readline()
        start = fh.tell()
        if start >= b and rank > 0:
            return b"", start
        data = fh.read(max(0, b - start))
        if data and not data.endswith(b"\n"):
            data += fh.readline()
    return data, start


def _count_lines(chunk):
    return chunk.count(b"\n") + (1 if chunk and not chunk.endswith(b"\n") else 0)


def _parse_csv(chunk, ncols, first_line, delimiter, allow_nonfinite=False):
    """(rows x ncols) floats; DataError naming the first bad line."""
    n_lines = _count_lines(chunk)
    if n_lines == 0:
        return np.zeros((0, ncols))
    flat = _bulk(chunk, ncols, delimiter)
    if flat is not None and flat.size == n_lines * ncols and (allow_nonfinite or
                                                               np.isfinite(flat).all()):
        return flat.reshape(n_lines, ncols)
    lines = chunk.split(b"\n")                       # the slow path: find the culprit
    for i, ln in enumerate(lines):                  # the slow path: find the culprit
        fields = ln.decode("ascii", "replace").strip("\r").split(delimiter)
        if len(fields) != ncols:
            raise DataError(f"line {first_line + i}: {len(fields)} fields, expected {ncols}")
        try:
            vals = [float(v) for v in fields]
        except ValueError:
            bad = next(v for v in fields if not _is_float(v))
            raise DataError(f"line {first_line + i}: {bad!r} is not a number") from None
        if not all(np.isfinite(vals)):
            raise DataError(f"line {first_line + i}: NaN or infinite value")
    raise DataError(f"lines {first_line}..{first_line + len(lines) - 1}: could not parse")


def _bulk(chunk, ncols, delimiter):
    """All numbers of the chunk, parsed in C: pandas' CSV reader (~10x numpy's text
    parser), numpy when pandas is missing; None when the chunk does not parse (the
    caller then finds the bad line)."""
    try:
        import io

        import pandas as pd
        try:
            return pd.read_csv(io.BytesIO(chunk), header=None, sep=delimiter, dtype=np.float64,
                               engine="c", na_filter=False).to_numpy().ravel()
        except (ValueError, pd.errors.ParserError):
            return None
    except ImportError:
        pass
    text = chunk.replace(b"\r", b"").replace(b"\n", delimiter.encode()).decode("ascii", "replace")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.fromstring(text, sep=delimiter)
    except ValueError:                  # numpy 2: text it cannot read to the end
        return None


def _is_float(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def _pieces(chunk, size=PIECE_BYTES):
    """``(start, end)`` byte ranges of whole lines of ``chunk``, about ``size`` each."""
    start, n = 0, len(chunk)
    while start < n:
        end = chunk.find(b"\n", min(start + size, n) - 1)
        end = n if end < 0 else end + 1
        yield start, end
        start = end


def _parse_csv_pieces(chunk, ncols, first_line, delimiter, allow_nonfinite, tick):
    """:func:`_parse_csv` of the chunk piece by piece, ``tick(fraction done)`` after each."""
    if len(chunk) <= PIECE_BYTES:
        block = _parse_csv(chunk, ncols, first_line, delimiter, allow_nonfinite)
        tick(1.0)
        return block
    block = np.empty((_count_lines(chunk), ncols))
    row = 0
    for a, e in _pieces(chunk):
        part = _parse_csv(chunk[a:e], ncols, first_line + row, delimiter, allow_nonfinite)
        block[row:row + len(part)] = part
        row += len(part)
        tick(e / len(chunk))
    return block


def _parse_libsvm(chunk, first_line, tick=None, hash_bits=0):
    """``(labels, indptr, indices, values)`` of the lines (int64 ids as written, or
    hashed when ``hash_bits``), parsed in C piece by piece; DataError naming the first
    bad line. ``tick(fraction done)`` after each piece."""
    labels, ptrs, idx, vals = [], [np.zeros(1, dtype=np.int64)], [], []
    row = nnz = 0
    for a, e in _pieces(chunk):
        lab, ptr, ind, val, bad = textparse.parse_libsvm(chunk[a:e], hash_bits)
        if bad is not None:
            line, reason, token = bad
            where = f"line {first_line + row + line}"
            if reason == textparse.EMPTY_LINE:
                raise DataError(f"{where}: empty line")
            what = "label" if reason == textparse.BAD_LABEL else "entry"
            hint = "" if hash_bits or what == "label" else \
                " (feature ids must be non-negative integers unless --hash-bits is given)"
            raise DataError(f"{where}: malformed libsvm {what} "
                            f"({token.decode('utf-8', 'replace')!r}){hint}")
        labels.append(lab)
        ptrs.append(ptr[1:] + nnz)
        idx.append(ind)
        vals.append(val)
        row += len(lab)
        nnz += len(ind)
        if tick is not None:
            tick(e / len(chunk))
    if not labels:
        return np.zeros(0), ptrs[0], np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(labels), np.concatenate(ptrs), np.concatenate(idx), np.concatenate(vals)


def convert(src, out, fmt=None, label_column=None, header="auto", delimiter=",",
            n_features=None, dtype="float32", compression=None, comm=None,
            allow_nonfinite=False, progress=None, dense=False, hash_bits=None, labels=None):
    """Convert ``src`` into ``out`` (collective); returns ``(rows, features)``.

    CSV and ``.npy`` files become a dense dataset ``X``; libsvm and ``.npz`` files a CSR
    group ``X`` in anndata's layout (:mod:`mpiml.sparse_io`, docs/sparse.md), never
    densified (unless ``dense``). Labels, when there are any, are the dataset ``y``.

    label_column : int or str, optional
        CSV/npy: the column holding the labels (a header name for CSV); without it the
        file has features only. libsvm files always carry labels.
    header : "auto", True or False
        CSV: the first line names the columns ("auto": when it is not numeric).
    n_features : int, optional
        libsvm: the feature count (default: the largest index in the file + 1).
    allow_nonfinite : bool
        Keep NaN and infinite values instead of refusing the file.
    progress : str, optional
        Rank 0 shows the megabytes of ``src`` parsed (its share, scaled to the file), a
        mode of :mod:`mpiml.progress` (None: the settings in force, quiet outside the
        command line).
    dense : bool
        libsvm: write a dense 2-D ``X`` (the output of mpiml before 21; small d only).
    hash_bits : int in [1, 31], optional
        libsvm: fold the feature ids (any text, as written) into ``2**hash_bits`` columns,
        ``murmurhash3_x86_32(id, seed=0) & (2**hash_bits - 1)``; colliding values in a row
        are summed.
    labels : str, optional
        npz: a 1-D ``.npy`` file of labels, one per row.
    """
    c = get_comm(comm)
    fmt = _format_of(src, fmt)
    c.run(_check_args, src, fmt, dtype, dense, hash_bits, n_features, labels)
    check_output_path(out, comm=c, inputs=(src, labels))
    y, names = None, None
    sparse = fmt == "npz" or (fmt == "libsvm" and not dense)
    mb = os.path.getsize(src) / 1e6
    with _progress.Progress("convert", mb, "MB", rank=c.rank, mode=progress, scale=mb,
                            decimals=1 if mb >= 10 else 2) as shown:
        if fmt == "npy":
            block = _read_npy(c, src, shown.update)
        elif fmt == "csv":
            block, names = _read_csv(c, src, header, delimiter, allow_nonfinite, shown.update)
        elif fmt == "npz":
            block, y = _read_npz(c, src, labels)
        elif sparse:
            block, y = _libsvm_csr(c, src, n_features, hash_bits, shown.update)
        else:
            block, y = _read_libsvm(c, src, n_features, hash_bits, shown.update)
    if label_column is not None and fmt in ("csv", "npy"):
        block, y = _split_label(c, block, names, label_column, dtype)
    _check_values(c, block.data if sparse else block, y, dtype, allow_nonfinite)
    rows_total = c.allreduce(block.shape[0])
    if y is not None:
        integral = c.allreduce(int(not np.all(y == np.round(y)))) == 0   # agreed: one dtype
        y = y.astype(np.int64) if integral else y
    shown.say(f"writing {rows_total} x {block.shape[1]} to {out}")
    attrs = {"source": os.path.abspath(src), "format": fmt}
    if hash_bits:
        attrs["hash"] = f"murmurhash3_x86_32 seed 0, {hash_bits} bits"
    if sparse:
        write_csr(out, block.astype(dtype), y, comm=c, attrs=attrs, compression=compression,
                  inputs=(src, labels))
    else:
        arrays = {"X": np.ascontiguousarray(block, dtype=dtype)}
        if y is not None:
            arrays["y"] = y
        write_rows(out, arrays, comm=c, attrs=attrs, compression=compression)
    return rows_total, block.shape[1]


def _check_args(src, fmt, dtype, dense, hash_bits, n_features, labels):
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not os.path.exists(src):
        raise DataError(f"no such file: {src}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ConfigError(f"dtype must be float32 or float64, not {dtype}")
    if (dense or hash_bits is not None) and fmt != "libsvm":
        raise ConfigError("--dense and --hash-bits apply to libsvm files only")
    if hash_bits is not None and not 1 <= int(hash_bits) <= 31:
        raise ConfigError(f"--hash-bits must be in [1, 31], not {hash_bits}")
    if hash_bits is not None and n_features is not None:
        raise ConfigError("--hash-bits sets the feature count (2**bits): drop --n-features")
    if labels is not None and fmt != "npz":
        raise ConfigError("--labels applies to .npz files only")
    if labels is not None and not os.path.isfile(labels):
        raise DataError(f"no such file: {labels}")


_BOM = "\ufeff".encode("utf-8")


def _check_values(c, block, y, dtype, allow_nonfinite):
    """Refuse (on every rank) what the output cannot represent: NaN / Inf in the
    features or labels (unless ``allow_nonfinite``), and values beyond the output
    dtype's range."""
    def check():
        for what, a in (("feature", block), ("label", y)):
            if a is None or not a.size:
                continue
            finite = np.isfinite(a)
            if not allow_nonfinite and not finite.all():
                raise DataError(f"a {what} value is NaN or infinite (--allow-nonfinite to keep "
                                "such values)")
            big = np.finfo(dtype).max if what == "feature" else np.finfo(np.float64).max
            if np.any(np.abs(a[finite]) > big):
                raise DataError(f"a {what} value does not fit in {np.dtype(dtype).name} "
                                "(--dtype float64 for larger values)")
    c.run(check)


def _read_npy(c, src, tick):
    def read():
        a = np.load(src, mmap_mode="r")
        if a.ndim != 2:
            raise DataError(f"{src}: the array must be 2-D, it has shape {a.shape}")
        lo, hi = c.chunk(a.shape[0])
        block = np.empty((hi - lo, a.shape[1]))
        step = max(1, PIECE_BYTES // max(a.shape[1] * a.itemsize, 1))
        for r in range(lo, hi, step):
            e = min(hi, r + step)
            block[r - lo:e - lo] = a[r:e]
            tick((e - lo) / (hi - lo))
        return block
    return c.run(read)


def _read_csv(c, src, header, delimiter, allow_nonfinite=False, tick=lambda done: None):
    """This rank's lines of a CSV file as a float64 block, and the column names."""
    def head():
        with open(src, "rb") as fh:
            first = fh.readline().decode("utf-8", "replace").lstrip("\ufeff").strip("\r\n")
        fields = next(csv.reader([first], delimiter=delimiter), [])     # quoted names too
        has = (header is True) or (header == "auto" and not all(_is_float(f) for f in fields))
        return fields, has

    fields, has_header = c.bcast(c.run(lambda: head() if c.rank == 0 else None))
    chunk, _ = c.run(_my_lines, src, c.rank, c.size)
    if c.rank == 0 and chunk.startswith(_BOM):
        chunk = chunk[len(_BOM):]
    if has_header and c.rank == 0:
        nl = chunk.find(b"\n")
        chunk = chunk[nl + 1:] if nl >= 0 else b""
    n_lines = _count_lines(chunk)
    first = c.exscan(n_lines) + 1 + (1 if has_header else 0)
    block = c.run(_parse_csv_pieces, chunk, len(fields), first, delimiter, allow_nonfinite,
                  tick)
    return block, (fields if has_header else None)


def _libsvm_csr(c, src, n_features, hash_bits, tick=None):
    """This rank's lines of a libsvm file as a CSR matrix (duplicates summed, indices
    sorted) and the labels; memory in proportion to the non-zeros, never to the width.
    Integer ids are one-based unless one of them is 0 anywhere in the file (then
    zero-based), as scikit-learn's ``load_svmlight_file(zero_based="auto")`` reads."""
    chunk, _ = c.run(_my_lines, src, c.rank, c.size)
    first = c.exscan(_count_lines(chunk)) + 1
    labels, indptr, cols, vals = c.run(_parse_libsvm, chunk, first, tick, hash_bits or 0)
    del chunk
    if hash_bits:
        width = 1 << int(hash_bits)
    else:
        base = 0 if c.allreduce(int(cols.min()) if cols.size else 1, op=MPI.MIN) == 0 else 1
        cols -= base
        d = c.allreduce(int(cols.max()) + 1 if cols.size else 0, op=MPI.MAX)
        width = d if n_features is None else int(n_features)

        def fits():
            if cols.size and cols.max() >= width:
                raise DataError(f"feature index {int(cols.max()) + base} exceeds "
                                f"n_features={width}")
        c.run(fits)
    X = sp.csr_matrix((vals, cols, indptr), shape=(len(labels), width), copy=False)
    X.sum_duplicates()
    return X, labels


def _read_libsvm(c, src, n_features, hash_bits=None, tick=None):
    """``--dense``: this rank's lines of a libsvm file as a dense float64 block, and the
    labels (refused before allocating when the block cannot fit in the node's memory)."""
    X, labels = _libsvm_csr(c, src, n_features, hash_bits, tick)
    check_node_memory(c, X.shape[0] * X.shape[1] * 8, f"{src}: {X.shape[1]} features")
    return c.run(X.toarray), labels


def _read_npz(c, src, labels):
    """A ``scipy.sparse.save_npz`` file (read without pickles, by rank 0: a zip member
    cannot be read in parts) as rank 0's CSR rows; the other ranks hold none."""
    def load():
        if c.rank != 0:
            return None
        try:
            X = sp.load_npz(src).tocsr()
            X.check_format(full_check=True)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise DataError(f"{src}: not a valid scipy.sparse .npz file ({exc})") from None
        if X.dtype.kind not in "fiub":
            raise DataError(f"{src}: the matrix holds {X.dtype} values; mpiml needs real numbers")
        y = None if labels is None else _read_labels(labels, X.shape[0])
        return X, y

    got = c.run(load)
    d, has_y = c.bcast((got[0].shape[1], got[1] is not None) if c.rank == 0 else None)
    if c.rank == 0:
        return got
    return sp.csr_matrix((0, d)), (np.zeros(0) if has_y else None)


def _read_labels(path, n):
    try:
        y = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a .npy array of labels ({exc})") from None
    if y.ndim != 1 or y.shape[0] != n or y.dtype.kind not in "fiub":
        raise DataError(f"{path}: the labels must be {n} numbers in a 1-D array, not {y.dtype} "
                        f"of shape {y.shape}")
    return y.astype(np.float64)


def _split_label(c, block, names, label_column, dtype):
    """The label column out of the block: ``(features in the output type, labels)``."""
    def which():
        if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
            if not names or label_column not in names:
                raise ConfigError(f"no column named {label_column!r} (columns: "
                                  f"{', '.join(names or [])[:200] or 'the file has no header'})")
            return names.index(label_column)
        k = int(label_column)
        if not -block.shape[1] <= k < block.shape[1]:
            raise ConfigError(f"label column {k} is outside the {block.shape[1]} columns")
        return k % block.shape[1]

    k = c.run(which)
    y = block[:, k].copy()
    keep = np.ones(block.shape[1], dtype=bool)
    keep[k] = False
    return block[:, keep].astype(dtype), y          # one copy: the columns, in the output type
