/* Mixed-precision row kernels of the exact solvers (csrc/glm.pyx): float32 rows with
 * float64 weights and float64 sums (the optimum to 1e-6 needs the sums in double),
 * in the pattern of dense.h -- margins one row at a time with an `omp simd` reduction,
 * the gradient accumulated four rows at a time -- and with its function clones
 * (AVX2 / AVX-512 picked at run time in a portable build). float64 rows use dense.h's
 * double kernels. */
#ifndef MPIML_GLM_H
#define MPIML_GLM_H
#include "dense.h"

MPIML_CLONES static void mpiml_margins_fd(const float *X, ptrdiff_t nb, ptrdiff_t d,
                                          const double *w, double *m) {
    for (ptrdiff_t i = 0; i < nb; i++) {
        const float *x = X + i * d;
        double s = 0;
        _Pragma("omp simd reduction(+:s)")
        for (ptrdiff_t j = 0; j < d; j++) s += (double)x[j] * w[j];
        m[i] = s;
    }
}

MPIML_CLONES static void mpiml_accumulate_fd(const float *X, ptrdiff_t nb, ptrdiff_t d,
                                             const double *g, double *grad) {
    ptrdiff_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        const float *x0 = X + i * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
        const double a0 = g[i], a1 = g[i + 1], a2 = g[i + 2], a3 = g[i + 3];
        _Pragma("omp simd")
        for (ptrdiff_t j = 0; j < d; j++)
            grad[j] += a0 * (double)x0[j] + a1 * (double)x1[j] + a2 * (double)x2[j]
                       + a3 * (double)x3[j];
    }
    for (; i < nb; i++) {
        const float *x = X + i * d;
        const double a = g[i];
        _Pragma("omp simd")
        for (ptrdiff_t j = 0; j < d; j++) grad[j] += a * (double)x[j];
    }
}

#endif
