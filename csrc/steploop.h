/* The compiled step loop's C side: MPI handles from mpi4py's integer handles, the
 * persistent Allreduce where the library has MPI-4, a monotonic clock, and the stop
 * signals caught while the loop runs without the GIL. */
#ifndef MPIML_STEPLOOP_H
#define MPIML_STEPLOOP_H

#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* mpi4py's Comm.handle is the C handle as an integer: an int (MPICH) or a pointer (Open MPI) */
#define MPIML_COMM(h) ((MPI_Comm)(uintptr_t)(h))

#if defined(MPI_VERSION) && MPI_VERSION >= 4
#define MPIML_HAVE_PERSISTENT 1
static int mpiml_allreduce_init(double *buf, int n, MPI_Comm comm, MPI_Request *req) {
    return MPI_Allreduce_init(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, comm, MPI_INFO_NULL, req);
}
#else
#define MPIML_HAVE_PERSISTENT 0
static int mpiml_allreduce_init(double *buf, int n, MPI_Comm comm, MPI_Request *req) {
    (void)buf; (void)n; (void)comm; (void)req;
    return MPI_ERR_OTHER;
}
#endif

static int mpiml_allreduce(double *buf, int n, MPI_Comm comm) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, comm);
}

static int mpiml_start_wait(MPI_Request *req) {
    int rc = MPI_Start(req);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Wait(req, MPI_STATUS_IGNORE);
}

static void mpiml_request_free(MPI_Request *req) {
    if (*req != MPI_REQUEST_NULL) MPI_Request_free(req);
}

static double mpiml_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* SIGTERM / SIGUSR1 while the loop runs: noted here (the loop reads the flag at every
 * step), then passed on to the handler that was installed (Python's, which runs the
 * Python-level handler when Python is re-entered). Only signals that already had a
 * handler are caught: a default or ignored disposition is left alone. */
static volatile sig_atomic_t mpiml_loop_signal = 0;
static struct sigaction mpiml_old_term, mpiml_old_usr1;
static int mpiml_caught_term = 0, mpiml_caught_usr1 = 0;

static void mpiml_on_signal(int sig) {
    struct sigaction *old = sig == SIGTERM ? &mpiml_old_term : &mpiml_old_usr1;
    mpiml_loop_signal = sig;
    if (old->sa_flags & SA_SIGINFO) {
        if (old->sa_sigaction) old->sa_sigaction(sig, NULL, NULL);
    } else if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN && old->sa_handler) {
        old->sa_handler(sig);
    }
}

static int mpiml_catch_one(int sig, struct sigaction *old) {
    struct sigaction sa;
    if (sigaction(sig, NULL, old) != 0) return 0;
    if (!(old->sa_flags & SA_SIGINFO) && (old->sa_handler == SIG_DFL || old->sa_handler == SIG_IGN))
        return 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mpiml_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL) == 0;
}

static void mpiml_catch_signals(void) {
    mpiml_loop_signal = 0;
    mpiml_caught_term = mpiml_catch_one(SIGTERM, &mpiml_old_term);
    mpiml_caught_usr1 = mpiml_catch_one(SIGUSR1, &mpiml_old_usr1);
}

static void mpiml_release_signals(void) {
    if (mpiml_caught_term) sigaction(SIGTERM, &mpiml_old_term, NULL);
    if (mpiml_caught_usr1) sigaction(SIGUSR1, &mpiml_old_usr1, NULL);
    mpiml_caught_term = mpiml_caught_usr1 = 0;
}

#endif
