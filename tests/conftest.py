"""Test-suite plumbing for running pytest under mpiexec.

* ``tests/run_suite.py`` sends the output of ranks > 0 to ``pytest-rank<k>.log``
  (a shell redirect around each rank: pytest restores its original file
  descriptors, so a redirect from inside pytest does not stick).
* The verdict of every MPI test is reduced across ranks at teardown: if the test
  failed on any rank it fails on every rank, and rank 0's report names the
  failing ranks. A rank stuck in a collective because another rank failed early
  is ended by the per-test timeout (pytest-timeout, thread method), which exits
  the process and so ends the whole job instead of hanging it.
* Tests marked ``launcher`` start their own ``mpiexec``; they only run in a
  plain (non-MPI) pytest process.
"""
import shutil
import tempfile

import pytest


def _mpi_run(config):
    return bool(config.getoption("with_mpi", False) or config.getoption("only_mpi", False))


def pytest_collection_modifyitems(config, items):
    if not _mpi_run(config):
        return
    skip = pytest.mark.skip(reason="starts its own mpiexec: runs in the plain pytest pass only")
    for item in items:
        if item.get_closest_marker("launcher"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not _mpi_run(item.config) or item.get_closest_marker("mpi") is None:
        return
    if rep.when in ("setup", "call") and rep.failed:
        item._mpiml_failed = True
    if rep.when != "teardown":
        return
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    failed_here = bool(getattr(item, "_mpiml_failed", False) or rep.failed)
    flags = world.allgather(failed_here)
    bad = [r for r, f in enumerate(flags) if f]
    if bad and not failed_here:
        rep.outcome = "failed"
        rep.longrepr = f"failed on rank(s) {bad} of {world.Get_size()}"
    elif bad and world.Get_rank() == 0:
        rep.sections.append(("mpi", f"failed on rank(s) {bad} of {world.Get_size()}; "
                                    f"see pytest-rank<k>.log for ranks > 0"))


@pytest.fixture
def comm():
    """The world communicator (an mpiml Comm)."""
    from mpiml.comm import get_comm
    return get_comm()


@pytest.fixture
def shared_tmp():
    """A temporary directory shared by all ranks (created by rank 0)."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    path = tempfile.mkdtemp(prefix="mpiml-test-") if world.Get_rank() == 0 else None
    path = world.bcast(path)
    yield path
    world.Barrier()
    if world.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
