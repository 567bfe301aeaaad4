"""The compiled step loop of the synchronous allreduce mode (csrc/steploop.pyx), and
when it is used.

With more than one rank, the Python loop of :func:`mpiml.parallel.data.run_epoch`
returns to the interpreter at every step (gradient, Allreduce, update: three calls), which
at small batches costs more than the Allreduce itself. The compiled loop runs the same
three operations -- the engine's own kernels, one in-place Allreduce of the same packed
buffer, the same checked update -- in C with the GIL released, so the model is the same
bit for bit. Python is re-entered at the end of the steps asked for, when the reduced
control words ask for something (stop, checkpoint, command, out of step), when rank 0's
look at its checkpoint clock and run directory is due (the first step of every
``TIME_EVERY`` steps, as in the Python loop; the run directory itself at most every
``POLL_SECONDS``), and at the update a test hook names. While it runs:

* a SIGTERM / SIGUSR1 sets a C flag that the loop reads at every step (it raises the
  step's STOP word) and still reaches the Python handler afterwards;
* ``engine.t`` advances at every update, so the watchdog's progress counter moves (its
  thread runs: the GIL is free);
* the time in the Allreduce is measured at every step, for the epoch's time split.

It is used when the package was built with an MPI compiler wrapper (``mpiml info`` says
which loop runs), the engine is one of the Cython engines with the control words, the
step's collective is the packed Allreduce (not the sparse exchange), there is more than
one rank, the module talks to the MPI library mpi4py initialised (checked once per
communicator, agreed by every rank), and ``MPIML_STEP_LOOP`` is not ``python``.
``MPIML_STEP_LOOP_PERSISTENT=1`` reduces through a persistent MPI-4 request
(``MPI_Allreduce_init``) instead of ``MPI_Allreduce``. It is not the default: no
measurement here has shown it faster (none is recorded in benchmarks/README.md).
"""
import os

from mpi4py import MPI

from ..errors import MpimlError
from .protocol import N_WORDS, StepControl

try:
    from .._kernels import steploop as _loop
    _WHY_NOT = None
except ImportError:                        # built without an MPI compiler wrapper
    _loop = None
    _WHY_NOT = "not built: no MPI compiler wrapper (mpicc) when mpiml was installed"

__all__ = ["available", "describe", "usable", "run_compiled"]

epochs_run = 0      # calls of run_compiled in this process (tests check the loop ran)


def _setting():
    return os.environ.get("MPIML_STEP_LOOP", "compiled").strip().lower()


def available():
    """Why the compiled step loop cannot run in this installation, or None."""
    if _loop is None:
        return _WHY_NOT
    if _setting() == "python":
        return "MPIML_STEP_LOOP=python"
    return None


def describe():
    """One line for ``mpiml info`` / ``doctor``: which step loop runs with several ranks."""
    why = available()
    if why is not None:
        return f"Python (one interpreter round trip per step; compiled loop: {why})"
    persistent = "persistent Allreduce available" if _loop.PERSISTENT_AVAILABLE else \
        "no MPI-4 persistent collectives"
    return f"compiled (csrc/steploop.pyx, {persistent})"


def usable(engine, comm, reduce):
    """Whether :func:`run_compiled` drives this engine's epoch over ``comm`` (an mpiml
    Comm). The same answer on every rank (collective the first time per communicator)."""
    if reduce is not None or comm.size == 1 or not hasattr(engine, "step_api") or \
            getattr(engine, "n_control", 0) < N_WORDS or available() is not None:
        return False
    ok = getattr(comm, "_steploop_ok", None)
    if ok is None:
        why = _loop.check(comm.mpi.handle, comm.size)
        ok = bool(comm.mpi.allreduce(int(why is None), op=MPI.MIN))
        comm._steploop_ok = ok
    return ok


def run_compiled(engine, comm, start, n_steps, control):
    """Steps ``start..n_steps-1`` of the engine's installed plan through the compiled
    loop, acting on what it returns (see the module doc). Collective."""
    global epochs_run
    epochs_run += 1
    persistent = os.environ.get("MPIML_STEP_LOOP_PERSISTENT", "") not in ("", "0")
    loop = _loop.Loop(engine, comm.mpi.handle, comm.size, comm.rank == 0, persistent)
    look_every, skip_t, yield_t = 0, -1.0, -1.0
    if control is not None:
        control.attach(engine)
        if comm.rank == 0 and (control.every_seconds is not None or control.run is not None):
            look_every = StepControl.TIME_EVERY
        if control.skip is not None:
            skip_t = float(control.skip[1])
        if control.signal_hook is not None:
            yield_t = float(control.signal_hook[1])
    base = engine.P + 2
    words = engine.buf_arr[base:base + N_WORDS]
    s, resume = start, False
    try:
        while s < n_steps:
            asked = control is not None and control.stop_requested
            status, s, code, rc = loop.run(s, n_steps, resume, asked, look_every, skip_t,
                                           yield_t)
            resume = False
            if status == _loop.DONE:
                break
            if status == _loop.LOOK:
                control.request(words, True)
                resume = True
            elif status == _loop.DECIDE:
                control.decide(engine, code, s)
            elif status == _loop.HOOK:
                control.decide(engine, 0, s)
            else:
                raise MpimlError(f"the step's MPI_Allreduce failed (MPI error {rc})")
    finally:
        if control is not None:
            control.comm_sampled += loop.comm_seconds
            control.samples += loop.reductions
        loop.free()
