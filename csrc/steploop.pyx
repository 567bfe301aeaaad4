# cython: language_level=3
"""The compiled step loop: the synchronous allreduce mode's steps without Python.

The one compiled module that calls MPI (STYLE.md rule 3). It runs plan steps of an SGD
engine -- the engine's gradient, one in-place Allreduce of the packed buffer, the
engine's checked update -- with the GIL released, and returns to Python only when
Python has something to do:

* ``DONE``: the steps asked for are done (an epoch's end);
* ``LOOK``: rank 0's look at its checkpoint clock and the run directory is due (every
  ``look_every`` steps, as in the Python loop); the step's gradient is in the buffer and
  Python may raise requests in its control words, then calls :meth:`Loop.run` with
  ``resume=True`` to reduce it. Only rank 0 returns; the others wait in the reduction;
* ``DECIDE``: the reduced control words ask for something (stop, checkpoint, command,
  out of step): ``code`` holds the Decision bits, the same on every rank;
* ``HOOK``: the update a test hook names was made (``yield_t``);
* ``FAILED``: an MPI call returned an error (``mpi_rc``).

Kernels stay MPI-free: the engine hands over its gradient and update as C function
pointers (``Engine.step_api``, csrc/steploop_api.h). MPI handles come from mpi4py's
integer handles (``Comm.handle``), so this module needs ``mpi.h`` and the MPI library
at build time and nothing of mpi4py's. :func:`check` verifies at run time that it talks
to the same initialised MPI library as mpi4py.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.math cimport fmod

from steploop_api cimport MPIML_STEP_API_VERSION, mpiml_step_api

cdef extern from "steploop.h" nogil:
    ctypedef struct _mpiml_comm_opaque
    ctypedef _mpiml_comm_opaque* MPI_Comm
    ctypedef struct _mpiml_request_opaque
    ctypedef _mpiml_request_opaque* MPI_Request
    int MPI_SUCCESS
    MPI_Request MPI_REQUEST_NULL
    int MPIML_HAVE_PERSISTENT
    MPI_Comm MPIML_COMM(size_t handle)
    int MPI_Initialized(int* flag)
    int MPI_Finalized(int* flag)
    int MPI_Comm_size(MPI_Comm comm, int* size)
    int mpiml_allreduce(double* buf, int n, MPI_Comm comm)
    int mpiml_allreduce_init(double* buf, int n, MPI_Comm comm, MPI_Request* req)
    int mpiml_start_wait(MPI_Request* req)
    void mpiml_request_free(MPI_Request* req)
    double mpiml_now()
    int mpiml_loop_signal
    void mpiml_catch_signals()
    void mpiml_release_signals()

cdef enum:
    WORD_SEQ = 0
    WORD_STOP = 1

cdef enum Status:
    S_DONE = 0
    S_LOOK = 1
    S_DECIDE = 2
    S_HOOK = 3
    S_FAILED = 4

DONE, LOOK, DECIDE, HOOK, FAILED = S_DONE, S_LOOK, S_DECIDE, S_HOOK, S_FAILED
PERSISTENT_AVAILABLE = bool(MPIML_HAVE_PERSISTENT)


def check(size_t comm_handle, int size):
    """Why this module cannot drive the communicator mpi4py calls ``comm_handle`` (of
    ``size`` ranks), or None: MPI must be initialised in the library it was linked with
    (a second copy of the library would not be) and agree on the size."""
    cdef int flag = 0, n = 0
    MPI_Initialized(&flag)
    if not flag:
        return "its MPI library is not the one mpi4py initialised (built against another MPI?)"
    MPI_Finalized(&flag)
    if flag:
        return "MPI is finalised"
    if MPI_Comm_size(MPIML_COMM(comm_handle), &n) != MPI_SUCCESS or n != size:
        return "its MPI library does not know mpi4py's communicator"
    return None


cdef class Loop:
    """Steps of one engine's installed plan over one communicator (collective: every
    rank makes one, in the same order, and calls :meth:`run` for the same steps).

    ``persistent``: reduce with a persistent MPI-4 ``MPI_Allreduce_init`` request made
    here, where the library has it (``persistent_`` says whether it is used)."""
    cdef object engine, capsule
    cdef mpiml_step_api* api
    cdef MPI_Comm comm
    cdef MPI_Request req
    cdef readonly bint persistent_
    cdef readonly double size
    cdef readonly int rank0
    cdef public double comm_seconds
    cdef public long long reductions

    def __init__(self, engine, size_t comm_handle, int size, bint rank0, bint persistent=False):
        capsule = engine.step_api()
        if not PyCapsule_IsValid(capsule, "mpiml.step_api"):
            raise TypeError("not an mpiml engine's step API")
        self.api = <mpiml_step_api*>PyCapsule_GetPointer(capsule, "mpiml.step_api")
        if self.api.version != MPIML_STEP_API_VERSION:
            raise ImportError("mpiml's step loop and SGD kernel were built from different "
                              "sources: rebuild the package (pip install .)")
        self.engine, self.capsule = engine, capsule
        self.comm = MPIML_COMM(comm_handle)
        self.size = size
        self.rank0 = rank0
        self.req = MPI_REQUEST_NULL
        self.persistent_ = False
        if persistent and MPIML_HAVE_PERSISTENT:
            if mpiml_allreduce_init(self.api.buf, <int>self.api.nbuf, self.comm,
                                    &self.req) != MPI_SUCCESS:
                raise RuntimeError("MPI_Allreduce_init failed")
            self.persistent_ = True

    def free(self):
        """Release the persistent request (local; call before the communicator goes)."""
        cdef int fin = 0
        MPI_Finalized(&fin)
        if not fin:
            mpiml_request_free(&self.req)
        self.persistent_ = False

    def run(self, Py_ssize_t start, Py_ssize_t stop, bint resume=False,
            bint stop_requested=False, Py_ssize_t look_every=0,
            double skip_t=-1.0, double yield_t=-1.0):
        """Steps ``start..stop-1`` (see the module doc for what ends a call).

        ``resume``: step ``start``'s gradient and words are already in the buffer (after
        a ``LOOK``). ``stop_requested``: this rank asks every step to stop (a signal
        came earlier). ``look_every`` > 0 (rank 0 only): return ``LOOK`` at the steps
        that are multiples of it, as the Python loop looks at the first step of each
        chunk. ``skip_t`` (test hook): the step making that update skips its collective
        and applies its own gradient, with the sequence word a full reduction would have
        given (the Python loop's hook). ``yield_t``: return ``HOOK`` after that update.

        Returns ``(status, step, code, mpi_rc)``: ``step`` is the next step to run
        (``LOOK``: the one waiting to be reduced). A stop signal caught while running
        raised the STOP word of the steps after it."""
        cdef mpiml_step_api* api = self.api
        cdef Py_ssize_t s = start, words = api.words
        cdef int status = S_DONE, code = 0, rc = MPI_SUCCESS, nbuf = <int>api.nbuf
        cdef double c0, comm_s = 0.0
        cdef long long nred = 0
        cdef bint fresh, skip, use_req = self.persistent_, look = look_every > 0 and self.rank0
        if stop > api.n_steps:
            stop = api.n_steps
        with nogil:
            mpiml_catch_signals()
            fresh = not resume
            while s < stop:
                if fresh:
                    api.grad(api.engine, s)
                    if look and s % look_every == 0:
                        status = S_LOOK
                        break
                fresh = True
                if stop_requested or mpiml_loop_signal:
                    api.buf[words + WORD_STOP] = 1.0
                skip = skip_t >= 0.0 and api.t[0] + 1.0 == skip_t
                if skip:
                    api.buf[words + WORD_SEQ] *= self.size
                else:
                    c0 = mpiml_now()
                    if use_req:
                        rc = mpiml_start_wait(&self.req)
                    else:
                        rc = mpiml_allreduce(api.buf, nbuf, self.comm)
                    comm_s += mpiml_now() - c0
                    nred += 1
                    if rc != MPI_SUCCESS:
                        status = S_FAILED
                        break
                code = api.apply_checked(api.engine, self.size)
                s += 1
                if code:
                    status = S_DECIDE
                    break
                if yield_t >= 0.0 and api.t[0] == yield_t:
                    status = S_HOOK
                    break
            mpiml_release_signals()
        self.comm_seconds += comm_s
        self.reductions += nred
        return status, s, code, rc
