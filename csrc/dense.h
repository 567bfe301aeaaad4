/* Dense row kernels for the one-output (K = 1) case: margins of a block of rows
 * and the rank-1 gradient update. Compiled with function multi-versioning so a
 * portable build still uses AVX2 / AVX-512 where the CPU has them (the loader picks
 * the clone at run time); the `omp simd` reductions need only -fopenmp-simd,
 * not -ffast-math, to vectorise. */
#ifndef MPIML_DENSE_H
#define MPIML_DENSE_H
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MPIML_NO_CLONES)
#define MPIML_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MPIML_CLONES
#endif

#define MPIML_DEFINE_DENSE(T, SFX)                                                     \
MPIML_CLONES static void mpiml_margins_##SFX(const T *X, ptrdiff_t nb, ptrdiff_t d,    \
                                             const T *w, T *m) {                       \
    for (ptrdiff_t i = 0; i < nb; i++) {                                               \
        const T *x = X + i * d;                                                        \
        T s = 0;                                                                       \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (ptrdiff_t j = 0; j < d; j++) s += x[j] * w[j];                            \
        m[i] = s;                                                                      \
    }                                                                                  \
}                                                                                      \
MPIML_CLONES static void mpiml_accumulate_##SFX(const T *X, ptrdiff_t nb, ptrdiff_t d, \
                                                const T *g, T *grad) {                 \
    for (ptrdiff_t i = 0; i < nb; i++) {                                               \
        const T *x = X + i * d;                                                        \
        const T a = g[i];                                                              \
        if (a == 0) continue;                                                          \
        _Pragma("omp simd")                                                            \
        for (ptrdiff_t j = 0; j < d; j++) grad[j] += a * x[j];                         \
    }                                                                                  \
}

MPIML_DEFINE_DENSE(float, f)
MPIML_DEFINE_DENSE(double, d)

#endif
