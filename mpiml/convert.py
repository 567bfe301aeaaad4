"""``mpiml convert``: CSV, ``.npy`` and libsvm/svmlight files into mpiml's HDF5 layout
(datasets ``X`` and ``y``), in parallel.

Text formats: the file is cut into ``size`` equal byte ranges; rank ``r`` parses the
lines that *start* in its range (it skips the partial line at its start and reads
past its end to finish its last line), so no line is parsed twice or lost. The ranks
agree the row offsets with one exclusive scan, so a malformed line is reported with
its global line number, by every rank at once, and nothing is written. CSV fields
are parsed in bulk by numpy (one call per rank, C speed); only when the count of
numbers does not match does a rank look line by line for the culprit. The output is
written through :func:`mpiml.io.write_rows` (rank-ordered, temporary name, rename):
chunked, optionally gzip-compressed, never half-written.
"""
import csv
import os
import warnings

import numpy as np
from mpi4py import MPI

from . import progress as _progress
from .comm import get_comm
from .errors import ConfigError, DataError
from .io import check_node_memory, check_output_path, write_rows

__all__ = ["convert", "FORMATS"]

FORMATS = ("csv", "npy", "libsvm")
# a rank parses its share of a file in pieces of about this size, and shows its progress
# after each (the numbers parsed are the same as in one piece)
PIECE_BYTES = 8 << 20


def _format_of(path, fmt):
    if fmt:
        return fmt
    ext = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".txt": "csv", ".npy": "npy", ".svm": "libsvm", ".libsvm": "libsvm",
            ".svmlight": "libsvm"}.get(ext, "csv")


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


def _parse_libsvm(chunk, first_line, tick=None):
    """(labels, [(row, col, value)]) of the lines; DataError naming a bad line.
    ``tick(fraction done)`` every few thousand lines."""
    labels, rows, cols, vals = [], [], [], []
    lines = chunk.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, ln in enumerate(lines):
        if tick is not None and i % 4096 == 4095:
            tick(i / len(lines))
        parts = ln.split(b"#", 1)[0].split()
        if not parts:
            raise DataError(f"line {first_line + i}: empty line")
        try:
            labels.append(float(parts[0]))
            for item in parts[1:]:
                k, _, v = item.partition(b":")
                if not _:
                    raise ValueError(item)
                j = int(k)
                if j < 0:
                    raise ValueError(item)
                rows.append(i)
                cols.append(j)          # as written; the caller decides the base
                vals.append(float(v))
        except ValueError as exc:
            raise DataError(f"line {first_line + i}: malformed libsvm entry "
                            f"({exc.args[0] if exc.args else ''!r})") from None
    return (np.asarray(labels), np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64),
            np.asarray(vals))


def convert(src, out, fmt=None, label_column=None, header="auto", delimiter=",",
            n_features=None, dtype="float32", compression=None, comm=None,
            allow_nonfinite=False, progress=None):
    """Convert ``src`` into ``out`` (collective); returns ``(rows, features)``.

    label_column : int or str, optional
        CSV/npy: the column holding the labels (a header name for CSV); without it the
        file has features only. libsvm files always carry labels.
    header : "auto", True or False
        CSV: the first line names the columns ("auto": when it is not numeric).
    n_features : int, optional
        libsvm: the feature count (default: the largest index in the file).
    allow_nonfinite : bool
        Keep NaN and infinite values instead of refusing the file.
    progress : str, optional
        Rank 0 shows the megabytes of ``src`` parsed (its share, scaled to the file), a
        mode of :mod:`mpiml.progress` (None: the settings in force, quiet outside the
        command line).
    """
    c = get_comm(comm)
    fmt = _format_of(src, fmt)

    def check():
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if not os.path.exists(src):
            raise DataError(f"no such file: {src}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, not {dtype}")

    c.run(check)
    check_output_path(out, comm=c, inputs=(src,))
    y, names = None, None
    mb = os.path.getsize(src) / 1e6
    with _progress.Progress("convert", mb, "MB", rank=c.rank, mode=progress, scale=mb,
                            decimals=1 if mb >= 10 else 2) as shown:
        if fmt == "npy":
            block = _read_npy(c, src, shown.update)
        elif fmt == "csv":
            block, names = _read_csv(c, src, header, delimiter, allow_nonfinite, shown.update)
        else:
            block, y = _read_libsvm(c, src, n_features, shown.update)
    if label_column is not None and fmt != "libsvm":
        block, y = _split_label(c, block, names, label_column, dtype)
    _check_values(c, block, y, dtype, allow_nonfinite)
    rows_total = c.allreduce(block.shape[0])
    arrays = {"X": np.ascontiguousarray(block, dtype=dtype)}
    if y is not None:
        integral = c.allreduce(int(not np.all(y == np.round(y)))) == 0   # agreed: one dtype
        arrays["y"] = y.astype(np.int64) if integral else y
    shown.say(f"writing {rows_total} x {block.shape[1]} to {out}")
    write_rows(out, arrays, comm=c, attrs={"source": os.path.abspath(src), "format": fmt},
               compression=compression)
    return rows_total, block.shape[1]


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


def _read_libsvm(c, src, n_features, tick=None):
    """This rank's lines of a libsvm file as a dense float64 block, and the labels.
    Indices are one-based unless one of them is 0 anywhere in the file (then
    zero-based), as scikit-learn's ``load_svmlight_file(zero_based="auto")`` reads."""
    chunk, _ = c.run(_my_lines, src, c.rank, c.size)
    n_lines = _count_lines(chunk)
    first = c.exscan(n_lines) + 1
    labels, rows, cols, vals = c.run(_parse_libsvm, chunk, first, tick)
    base = 0 if c.allreduce(int(cols.min()) if cols.size else 1, op=MPI.MIN) == 0 else 1
    cols = cols - base
    d = c.allreduce(int(cols.max()) + 1 if cols.size else 0, op=MPI.MAX)
    width = d if n_features is None else int(n_features)
    # a dense block this wide must fit in the node's memory (refused before allocating)
    check_node_memory(c, len(labels) * width * 8, f"{src}: {width} features")

    def dense():
        if cols.size and cols.max() >= width:
            raise DataError(f"feature index {int(cols.max()) + base} exceeds n_features={width}")
        Xd = np.zeros((len(labels), width))
        Xd[rows, cols] = vals
        return Xd

    return c.run(dense), labels


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
