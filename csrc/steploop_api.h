/* What the compiled step loop (csrc/steploop.pyx, the one compiled module that calls
 * MPI) needs from an SGD engine (csrc/sgd.pyx), handed over in a PyCapsule named
 * "mpiml.step_api" by Engine.step_api(). The engine fills it; the loop only calls it.
 * Both modules include this header, and the loop refuses a capsule of another version. */
#ifndef MPIML_STEPLOOP_API_H
#define MPIML_STEPLOOP_API_H

#define MPIML_STEP_API_VERSION 1

typedef struct {
    int version;
    void *engine;                                   /* the Engine (borrowed) */
    void (*grad)(void *engine, Py_ssize_t step);    /* plan step -> buf (words zeroed, SEQ set) */
    int (*apply_checked)(void *engine, double size); /* after the reduction: Decision bits */
    double *buf;                                    /* the packed step buffer */
    Py_ssize_t nbuf;                                /* its length in doubles */
    Py_ssize_t words;                               /* offset of the control words */
    Py_ssize_t n_steps;                             /* steps of the installed plan */
    double *t;                                      /* updates made so far */
} mpiml_step_api;

#endif
