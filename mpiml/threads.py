"""BLAS / OpenMP threads while mpiml computes.

MPI ranks already fill the cores, so a BLAS call that starts a thread per core in
every rank oversubscribes them (and OpenBLAS threads left spinning slow the kernels
measurably). mpiml does not change the process's environment when it is imported;
instead a fit (and every ``mpiml`` verb) runs inside :func:`blas_threads`, which limits
the BLAS and OpenMP thread pools to one thread per rank for its duration, with
threadpoolctl, and restores them afterwards. A user who set ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` (hybrid MPI + threads) is left alone.
"""
import contextlib
import os

__all__ = ["blas_threads"]

_USER_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def blas_threads(limit=1):
    """Limit the thread pools to ``limit`` threads for the block (unless the user chose)."""
    if any(os.environ.get(v) for v in _USER_VARS):
        yield
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=limit):
        yield
