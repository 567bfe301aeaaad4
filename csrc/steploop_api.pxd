# The engine <-> compiled step loop handle (steploop_api.h), declared once for Cython:
# csrc/sgd.pyx fills it, csrc/steploop.pyx calls it.
cdef extern from "steploop_api.h" nogil:
    int MPIML_STEP_API_VERSION
    ctypedef struct mpiml_step_api:
        int version
        void* engine
        void (*grad)(void* engine, Py_ssize_t step) noexcept nogil
        int (*apply_checked)(void* engine, double size) noexcept nogil
        double* buf
        Py_ssize_t nbuf
        Py_ssize_t words
        Py_ssize_t n_steps
        double* t
