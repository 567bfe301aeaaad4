"""The one communicator wrapper every collective goes through.

``Comm`` wraps a ``Dup()`` of the user's communicator (``MPI.COMM_WORLD`` by
default) so that mpiml's messages never match the user's. Public functions take
``comm=None`` and call :func:`get_comm` once.

``chunk`` is the one partition rule of the package: rows of a dataset, columns
of a matrix and shards of a weight all come from it.
"""
import os
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from .errors import MpimlError, agreed_class

__all__ = ["Comm", "Grid", "get_comm", "get_grid", "chunk", "chunks"]


def chunk(n, size, rank):
    """Half-open range ``(lo, hi)`` of the ``rank``-th of ``size`` parts of ``n`` items.

    Part sizes differ by at most one; the first ``n % size`` parts take one more.

    Examples
    --------
    >>> [chunk(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    n, size, rank = int(n), int(size), int(rank)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"bad partition: rank {rank} of {size}")
    base, rem = divmod(n, size)
    lo = rank * base + min(rank, rem)
    return lo, lo + base + (1 if rank < rem else 0)


def chunks(n, size):
    """All ``size`` ranges of :func:`chunk` as an array of shape (size, 2)."""
    return np.array([chunk(n, size, r) for r in range(size)], dtype=np.int64).reshape(size, 2)


class Comm:
    """mpiml's communicator: a duplicate of ``comm`` (default ``MPI.COMM_WORLD``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
    """

    def __init__(self, comm=None, dup=True):
        base = MPI.COMM_WORLD if comm is None else comm
        self.mpi = base.Dup() if dup else base
        self.owned = bool(dup)       # this object made self.mpi: free() frees it
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self._grids = {}
        self._node = None

    # ---------------------------------------------------------------- grids, lifetime
    def grid(self, model_parallel=1):
        """The :class:`Grid` of this communicator for ``model_parallel`` (collective the
        first time for a given ``model_parallel``; memoised on this object)."""
        check_model_parallel(model_parallel, self.size)
        k = int(model_parallel)
        if k not in self._grids:
            self._grids[k] = Grid(self, k)
        return self._grids[k]

    def node(self):
        """The ranks of this communicator that share this rank's node (memoised)."""
        if self._node is None:
            self._node = Comm(self.mpi.Split_type(MPI.COMM_TYPE_SHARED), dup=False)
            self._node.owned = True
        return self._node

    def free(self):
        """Collective: free the communicators of this object's grids and, when this object
        made it, its duplicate. The object is unusable afterwards."""
        for grid in self._grids.values():
            grid.free()
        self._grids.clear()
        if self._node is not None:
            self._node.free()
            self._node = None
        if self.owned and self.mpi != MPI.COMM_NULL:
            self.mpi.Free()
        self.owned = False

    # ---------------------------------------------------------------- partitions
    def chunk(self, n, rank=None):
        """This rank's (or ``rank``'s) range of ``n`` items; see :func:`chunk`."""
        return chunk(n, self.size, self.rank if rank is None else rank)

    # ---------------------------------------------------------------- output
    def print0(self, *args, file=None, **kwargs):
        """``print`` on rank 0 only (flushed)."""
        if self.rank == 0:
            print(*args, file=file or sys.stdout, flush=True, **kwargs)

    # ---------------------------------------------------------------- errors
    def agree(self, error):
        """Collective: raise on every rank if ``error`` is not None on any rank.

        Every rank must call this at the same point. The exception raised is of
        the class of the error on the lowest failing rank (see
        :func:`~mpiml.errors.agreed_class`: its own class for an
        :class:`~mpiml.errors.MpimlError`, an mpiml class that is also a
        ``ValueError`` / ``TypeError`` / scikit-learn ``NotFittedError`` for those,
        else ``MpimlError`` with the class name in the message) with that rank's
        message, and ``.ranks`` lists all failing ranks.
        """
        failed = self.mpi.allreduce(0 if error is None else 1, op=MPI.SUM)
        if failed == 0:
            return
        info = None
        if error is not None:
            info = (type(error).__name__, _describe(error), agreed_class(error))
        everything = self.mpi.allgather(info)
        ranks = [r for r, i in enumerate(everything) if i is not None]
        name, message, cls = everything[ranks[0]]
        if cls is None:
            cls = MpimlError
            message = f"{name}: {message}"
        if len(ranks) < self.size:
            where = "rank " + ", ".join(map(str, ranks)) if len(ranks) <= 8 else f"{len(ranks)} ranks"
            message = f"{message} (on {where})"
        raise cls(message, ranks=ranks) from error

    def run(self, fn, *args, **kwargs):
        """Call ``fn`` locally, then :meth:`agree` on whether it raised; return its result."""
        error = result = None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any local failure must be agreed
            error = exc
        self.agree(error)
        return result

    # ---------------------------------------------------------------- collectives
    def Allreduce(self, buf, op=MPI.SUM):
        """In-place buffer Allreduce (no-op on one rank)."""
        if self.size > 1:
            self.mpi.Allreduce(MPI.IN_PLACE, buf, op=op)
        return buf

    def allreduce(self, value, op=MPI.SUM):
        return self.mpi.allreduce(value, op=op)

    def allgather(self, value):
        return self.mpi.allgather(value)

    def Allgatherv(self, send, recv, counts):
        """Concatenate every rank's ``send`` (``counts[r]`` items from rank r) into ``recv``."""
        if self.size == 1:
            recv[...] = send.reshape(recv.shape)
        else:
            self.mpi.Allgatherv(send, [recv, np.asarray(counts, dtype=np.int64)])
        return recv

    def bcast(self, value, root=0):
        return self.mpi.bcast(value, root=root)

    def Bcast(self, buf, root=0):
        if self.size > 1:
            self.mpi.Bcast(buf, root=root)
        return buf

    def exscan(self, value):
        """Exclusive prefix sum of an integer (0 on rank 0)."""
        out = self.mpi.exscan(int(value), op=MPI.SUM)
        return 0 if out is None or self.rank == 0 else int(out)

    def barrier(self):
        self.mpi.Barrier()

    def abort(self, code=1):
        self.mpi.Abort(code)


def _describe(error):
    text = str(error)
    if isinstance(error, OSError) and getattr(error, "filename", None) and error.filename not in text:
        text = f"{text}: {error.filename}"
    return text or type(error).__name__


_KEYVAL = None


def get_comm(comm=None):
    """Resolve a ``comm=`` argument to a :class:`Comm` (the one place that does it).

    ``None`` gives the package-wide duplicate of ``MPI.COMM_WORLD``; an mpi4py
    communicator gives its duplicate, made once and cached *on that communicator* (an
    MPI attribute), so the cache entry goes away with the communicator and a new
    communicator can never be handed a stale duplicate; a ``Comm`` is returned as is.
    """
    global _KEYVAL
    if isinstance(comm, Comm):
        return comm
    if comm is None:
        comm = MPI.COMM_WORLD
    if isinstance(comm, MPI.Comm):
        if _KEYVAL is None:
            _KEYVAL = MPI.Comm.Create_keyval()
        mine = comm.Get_attr(_KEYVAL)
        if mine is None:
            mine = Comm(comm)
            comm.Set_attr(_KEYVAL, mine)
        return mine
    raise TypeError(f"comm must be None, an mpi4py communicator or mpiml.comm.Comm, not {type(comm).__name__}")


class Grid:
    """A 2-D process grid: ``size = D x K`` ranks for ``K``-way model parallelism.

    Model-parallel groups are ``K`` consecutive ranks (on a cluster, ranks of one
    node, where the frequent model-parallel collectives are cheapest); world rank
    ``r`` holds model shard ``r % K`` of replica ``r // K``. ``model`` is the
    communicator of one replica's ``K`` shards; ``data`` joins the ``D`` ranks that
    hold the same shard, over which that shard's gradient is averaged. With
    ``K = 1`` the grid is plain data parallelism (``data`` is the world).

    Use :meth:`Comm.grid` (or :func:`get_grid`); it validates ``model_parallel``
    identically on every rank and memoises the grid on the communicator object.
    """

    def __init__(self, world, model_parallel):
        self.world = world
        self.K = int(model_parallel)
        self.D = world.size // self.K
        self.model_rank = world.rank % self.K
        self.data_rank = world.rank // self.K
        if self.K == 1:
            self.data = world
            self.model = Comm(MPI.COMM_SELF)
        else:
            self.model = Comm(world.mpi.Split(self.data_rank, self.model_rank), dup=False)
            self.data = Comm(world.mpi.Split(self.model_rank, self.data_rank), dup=False)
            self.model.owned = self.data.owned = True     # split here: freed by free()

    def free(self):
        """Collective over the grid's world: free the communicators made for it."""
        for c in ((self.model,) if self.K == 1 else (self.model, self.data)):
            c.free()

    def model_group(self, replica):
        """World ranks holding the shards of data-parallel replica ``replica``."""
        return list(range(replica * self.K, (replica + 1) * self.K))

    def data_group(self, shard):
        """World ranks holding model shard ``shard``."""
        return list(range(shard, self.world.size, self.K))

    def describe(self):
        """A few lines that say which ranks share what (printed by ``train --dry-run``)."""
        lines = [f"process grid: {self.world.size} rank(s) = {self.D} data-parallel x "
                 f"{self.K} model-parallel"]
        for g in range(self.D):
            lines.append(f"  replica {g} (rows {g + 1} of {self.D}): ranks {self.model_group(g)} "
                         f"hold model shards 0..{self.K - 1}")
        if self.K > 1:
            for m in range(self.K):
                lines.append(f"  shard {m}: ranks {self.data_group(m)} share it; its gradient "
                             f"is averaged over them")
        return "\n".join(lines)


def check_model_parallel(model_parallel, size):
    """Raise ConfigError (the same on every rank) unless ``model_parallel`` divides ``size``."""
    from .errors import ConfigError
    k = model_parallel
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"model_parallel must be a positive integer, not {k!r}",
                          ranks=range(size))
    if k > size:
        raise ConfigError(f"model_parallel={k} needs at least {k} ranks; the job has {size}",
                          ranks=range(size))
    if size % k:
        raise ConfigError(f"model_parallel={k} does not divide the {size} ranks of the job: use a "
                          f"rank count that is a multiple of {k} (ranks = data-parallel x "
                          f"model-parallel)", ranks=range(size))


def get_grid(comm=None, model_parallel=1):
    """The :class:`Grid` of ``comm`` for ``model_parallel``: ``get_comm(comm).grid(K)``."""
    return get_comm(comm).grid(model_parallel)


def write_stderr(text):
    """Write to stderr whatever the text holds (paths in messages may not be UTF-8)."""
    sys.stderr.buffer.write(text.encode("utf-8", "backslashreplace"))
    sys.stderr.flush()


def abort_on_exception(exc_type, exc, tb):
    """``sys.excepthook`` for MPI jobs: print with the rank, then abort every rank."""
    rank = MPI.COMM_WORLD.Get_rank()
    lines = traceback.format_exception(exc_type, exc, tb)
    write_stderr(f"mpiml: rank {rank}: uncaught exception, aborting the job\n" + "".join(lines))
    if MPI.COMM_WORLD.Get_size() > 1:
        # give the launcher a moment to forward the message before MPI_Abort ends the job
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(1)
    os._exit(1)
