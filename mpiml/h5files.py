"""Safe HDF5 file handling shared by :mod:`mpiml.io` and :mod:`mpiml.sparse_io` (STYLE rule
14): opening read-only, the rule that data come only from the file named (no external
links, external storage or virtual datasets), refusing an output that is an input, and
the temporary-file-then-rename write made by the ranks in turn."""
import os
import uuid

import h5py
import numpy as np

from .comm import get_comm
from .errors import ConfigError, DataError, OutputError

_TOKEN = 7301             # tag of the write token (on mpiml's own communicator)


def _open_read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise DataError(f"cannot read {path} as HDF5: {exc}") from None


def check_local(f, path, name, allow_external=False):
    """Raise DataError unless ``f[name]`` is stored inside the file ``path``: no external
    link on the way to it (unless ``allow_external``), and a dataset with neither
    external raw storage nor a virtual layout (both read other files' bytes)."""
    parts = [p for p in str(name).split("/") if p]
    node = f
    for i, part in enumerate(parts):
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink) and not allow_external:
            raise DataError(f"{path}: '{'/'.join(parts[:i + 1])}' is an external link to "
                            f"{link.filename}: mpiml reads only the file it is given")
        node = node[part]
    if isinstance(node, h5py.Dataset):
        if node.is_virtual:
            raise DataError(f"{path}: dataset '{name}' is a virtual dataset (its data live in "
                            "other files): mpiml reads only the file it is given")
        if node.external:
            raise DataError(f"{path}: dataset '{name}' keeps its data in external files: "
                            "mpiml reads only the file it is given")
    return node


def _resolve_dtype(dtype, file_dtype):
    if dtype is None:
        return np.dtype(np.float32) if file_dtype == np.float32 else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ConfigError(f"dtype must be float32 or float64, not {dtype}")
    return dtype


def same_file(a, b):
    """``a`` and ``b`` name the same file (also through a symlink or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:         # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_inputs(path, inputs):
    for inp in inputs:
        if inp is not None and same_file(path, inp):
            raise OutputError(f"output {path} is the input {inp}: mpiml never writes over "
                              "an input")


def _check_on_writer(path, comm, inputs, check):
    """Collective: on rank 0 (the rank that writes), refuse ``path`` if it is one of
    ``inputs``, then ``check(absolute path)``; every rank raises the same error."""
    c = get_comm(comm)

    def local():
        if c.rank != 0:
            return
        p = os.path.abspath(os.fspath(path))
        _refuse_inputs(p, inputs)
        check(p)

    c.run(local)


def check_output_path(path, comm=None, inputs=()):
    """Collective: raise :class:`OutputError` on every rank if ``path`` cannot be written
    or is one of ``inputs`` (also through a link: an output never replaces an input).

    Checked on rank 0 (the rank that writes) before any work is done.
    """
    def writable(p):
        parent = os.path.dirname(p)
        if os.path.isdir(p):
            raise OutputError(f"output path {path} is a directory")
        if not os.path.isdir(parent):
            raise OutputError(f"cannot write {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {path}: directory {parent} is not writable")
        if os.path.exists(p) and not os.access(p, os.W_OK):
            raise OutputError(f"cannot write {path}: the file exists and is read-only")

    _check_on_writer(path, comm, inputs, writable)


def _tmp_name(path):
    """A temporary beside ``path``, unique per process and call (created exclusively)."""
    p = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(p),
                        f".{os.path.basename(p)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _commit(tmp, path):
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, os.fspath(path))


def _write_in_turn(c, tmp, arrays, offsets):
    """Each rank writes its rows in rank order (a token passed on; the serial HDF5 library
    has one writer at a time); every rank returns the first error (None: all written)."""
    error = None
    if c.rank > 0:
        error = c.mpi.recv(source=c.rank - 1, tag=_TOKEN)
    if error is None:
        try:
            if any(a.shape[0] for a in arrays.values()):
                with h5py.File(tmp, "r+", locking=False) as f:
                    for k, a in sorted(arrays.items()):
                        if a.shape[0]:
                            f[k][offsets[k]:offsets[k] + a.shape[0]] = a
        except Exception as exc:  # noqa: BLE001 - agreed by the caller
            error = f"rank {c.rank}: {exc}"
    if c.rank < c.size - 1:
        c.mpi.send(error, dest=c.rank + 1, tag=_TOKEN)
    # the last rank knows whether every write succeeded
    return c.bcast(error, root=c.size - 1)


def write_new_file(c, path, tmp, create, arrays, offsets):
    """Collective: rank 0 runs ``create()`` (the new file under the temporary name
    ``tmp``, every dataset at its full size), the ranks write their ``arrays`` at
    ``offsets`` in turn, and rank 0 renames ``tmp`` to ``path`` only if every rank
    succeeded; otherwise ``tmp`` is removed and every rank raises the same error."""
    def made():
        if c.rank == 0:
            create()

    try:
        c.run(made)
    except Exception:
        if c.rank == 0 and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    error = _write_in_turn(c, tmp, arrays, offsets)

    def finish():
        if c.rank != 0:
            return
        if error is not None:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise OutputError(f"writing {path} failed: {error}")
        _commit(tmp, path)

    c.run(finish)
