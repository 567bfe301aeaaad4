/* Dense row kernels for the one-output (K = 1) case: margins of a block of rows
 * and the gradient accumulation grad += sum_i g_i x_i.
 *
 * Margins: one row at a time; the `omp simd` reduction gives several vector
 * partial sums per row (in float32 for float32 rows). Over 1M x 100 float32 rows in
 * huge pages this pass alone takes what a numpy read pass `X @ w` takes (25-27 ms on
 * the benchmark machine); four rows at a time with explicit 16-wide accumulators was
 * no faster, and neither were longer prefetch distances (16-48 rows: slower).
 * Gradient: four rows at a time, so the gradient vector is loaded and stored once
 * per four rows instead of once per row.
 *
 * Compiled with function multi-versioning, so a portable build still uses
 * AVX2 / AVX-512 where the CPU has them (the loader picks the clone at run time);
 * the `omp simd` reductions need only -fopenmp-simd, not -ffast-math. */
#ifndef MPIML_DENSE_H
#define MPIML_DENSE_H
#include <stddef.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MPIML_NO_CLONES)
#define MPIML_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MPIML_CLONES
#endif

#ifndef MPIML_PF
#define MPIML_PF 8   /* rows of prefetch distance */
#endif

#define MPIML_DEFINE_DENSE(T, SFX)                                                     \
MPIML_CLONES static void mpiml_margins_##SFX(const T *X, ptrdiff_t nb, ptrdiff_t d,    \
                                             const T *w, T *m, ptrdiff_t nb_pf) {      \
    for (ptrdiff_t i = 0; i < nb; i++) {                                               \
        const T *x = X + i * d;                                                        \
        T s = 0;                                                                       \
        /* software prefetch of the row MPIML_PF ahead: the stream is known */         \
        if (MPIML_PF > 0 && i + MPIML_PF < nb_pf)                                      \
            for (ptrdiff_t j = 0; j < d; j += 64 / (ptrdiff_t)sizeof(T))               \
                __builtin_prefetch(x + MPIML_PF * d + j, 0, 3);                        \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (ptrdiff_t j = 0; j < d; j++) s += x[j] * w[j];                            \
        m[i] = s;                                                                      \
    }                                                                                  \
}                                                                                      \
MPIML_CLONES static void mpiml_accumulate_##SFX(const T *X, ptrdiff_t nb, ptrdiff_t d, \
                                                const T *g, T *grad) {                 \
    ptrdiff_t i = 0;                                                                   \
    for (; i + 4 <= nb; i += 4) {                                                      \
        const T *x0 = X + i * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;             \
        const T a0 = g[i], a1 = g[i + 1], a2 = g[i + 2], a3 = g[i + 3];                \
        _Pragma("omp simd")                                                            \
        for (ptrdiff_t j = 0; j < d; j++)                                              \
            grad[j] += a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + a3 * x3[j];              \
    }                                                                                  \
    for (; i < nb; i++) {                                                              \
        const T *x = X + i * d;                                                        \
        const T a = g[i];                                                              \
        _Pragma("omp simd")                                                            \
        for (ptrdiff_t j = 0; j < d; j++) grad[j] += a * x[j];                         \
    }                                                                                  \
}

MPIML_DEFINE_DENSE(float, f)
MPIML_DEFINE_DENSE(double, d)

/* exp(x) for x <= 0 in single precision, branch-free so that loops over it
 * vectorise (glibc's expf is a scalar call without -ffast-math). Cody-Waite
 * reduction x = k ln2 + r and a degree-6 polynomial (relative error ~1e-7). */
static inline float mpiml_exp_nonpos_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    /* round to nearest by the 1.5 * 2^23 trick (vectorises without SSE4.1) */
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int i; float f; } scale;
    scale.i = ((int)k + 127) << 23;
    return p * scale.f;
}

/* log(1 + e) for 0 <= e <= 1: with t = e / (2 + e) <= 1/3,
 * log(1 + e) = 2 atanh(t) = 2 t (1 + t^2/3 + t^4/5 + ...); seven terms leave a
 * relative error below 2e-8. */
static inline float mpiml_log1p_unit_f(float e) {
    const float t = e / (2.0f + e), t2 = t * t;
    float p = 1.0f / 13.0f;
    p = p * t2 + 1.0f / 11.0f;
    p = p * t2 + 1.0f / 9.0f;
    p = p * t2 + 1.0f / 7.0f;
    p = p * t2 + 1.0f / 5.0f;
    p = p * t2 + 1.0f / 3.0f;
    p = p * t2 + 1.0f;
    return 2.0f * t * p;
}

/* Logistic loss of n margins z = y * m (y in {-1, +1}) in single precision:
 * returns the summed loss, writes d loss / d margin into g. The element loop has
 * no reduction (per-row losses go to a small buffer, summed afterwards) and no
 * double-precision data, so that it vectorises in every clone. */
MPIML_CLONES static double mpiml_logloss_single(const float *m, const float *y, float *g,
                                                float *loss, ptrdiff_t n) {
    double s = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const float yi = y[i];
        const float z = m[i] * yi;
        const float az = z < 0.0f ? -z : z;
        const float e = mpiml_exp_nonpos_f(-az);
        const float inv = 1.0f / (1.0f + e);
        loss[i] = mpiml_log1p_unit_f(e) + (z < 0.0f ? -z : 0.0f);
        g[i] = -yi * (z >= 0.0f ? e * inv : inv);
    }
    for (ptrdiff_t i = 0; i < n; i++) s += loss[i];
    return s;
}

/* The logistic, one-output, float32, unweighted rows of one step: ranges
 * [lo[r], hi[r]) of X, r < nr. The rows go in groups of up to MPIML_GROUP rows (several
 * short ranges, or part of a long one): first the margins of the group's 16-row
 * sub-blocks, range after range (prefetching the first rows of the next range, which
 * is elsewhere in memory, and its labels), then the loss and its derivative over the
 * whole group, then the intercept's gradient (float64) and grad += sum g_i x_i per
 * sub-block, from cache. Margins of several ranges back to back keep the memory busy:
 * a step of 16 ranges of 16 rows (rows visited in place) took 54 ms per 1M x 100
 * float32 rows this way against 68 ms range by range (C replica). The arithmetic of
 * every row, and the order of every sum but the loss's, is the general path's (a
 * float32 margin plus the float64 intercept, rounded to float32 for the loss; sums per
 * 16-row sub-block), so the model is the same bit for bit; the loss of a step is summed
 * over its sub-blocks in one run instead of range by range (last bits). Sets *bad when
 * a margin is NaN or infinite. Returns the summed loss. */
#define MPIML_SUB 16
#define MPIML_GROUP 64
#define MPIML_NEXT_ROWS 8    /* rows of the next range prefetched (4, 12 and 16: slower) */
MPIML_CLONES static double mpiml_logistic_step_f(const float *X, ptrdiff_t d, const ptrdiff_t *lo,
                                                 const ptrdiff_t *hi, ptrdiff_t nr, const float *w,
                                                 double b, const double *y, float *grad,
                                                 double *gb, int *bad) {
    float m[MPIML_GROUP + MPIML_SUB], yf[MPIML_GROUP + MPIML_SUB];
    float g[MPIML_GROUP + MPIML_SUB], l[MPIML_GROUP + MPIML_SUB];
    ptrdiff_t at[MPIML_GROUP / MPIML_SUB + 1], len[MPIML_GROUP / MPIML_SUB + 1];
    double s = 0.0, sb = *gb;   /* added row by row, in the general path's order */
    int flag = 0;
    ptrdiff_t r = 0, row = nr > 0 ? lo[0] : 0;
    while (r < nr) {
        /* a group: sub-blocks (at most 16 rows, never across ranges) up to MPIML_GROUP rows */
        ptrdiff_t k = 0, nsub = 0;
        while (r < nr && k < MPIML_GROUP) {
            if (row >= hi[r]) {
                if (++r < nr) row = lo[r];
                continue;
            }
            if (row == lo[r] && r + 1 < nr && hi[r + 1] > lo[r + 1]) {
                /* the next range's first rows, before it is reached */
                const char *p = (const char *)(X + lo[r + 1] * d);
                ptrdiff_t rows = hi[r + 1] - lo[r + 1];
                const ptrdiff_t nbytes = (rows < MPIML_NEXT_ROWS ? rows : MPIML_NEXT_ROWS) * d * (ptrdiff_t)sizeof(float);
                for (ptrdiff_t o = 0; o < nbytes; o += 64) __builtin_prefetch(p + o, 0, 3);
                /* and its labels (1-2 lines; in place they are scattered too: -2 ms) */
                __builtin_prefetch(y + lo[r + 1], 0, 3);
                __builtin_prefetch(y + hi[r + 1] - 1, 0, 3);
            }
            const ptrdiff_t nb = hi[r] - row < MPIML_SUB ? hi[r] - row : MPIML_SUB;
            mpiml_margins_f(X + row * d, nb, d, w, m + k, hi[r] - row);
            for (ptrdiff_t i = 0; i < nb; i++) {
                const double md = (double)m[k + i] + b;
                flag |= (md - md) != 0.0;
                m[k + i] = (float)md;
                yf[k + i] = (float)y[row + i];
            }
            at[nsub] = row;
            len[nsub++] = nb;
            k += nb;
            row += nb;
        }
        if (k == 0)
            break;
        mpiml_logloss_single(m, yf, g, l, k);
        for (ptrdiff_t j = 0, off = 0; j < nsub; off += len[j], j++) {
            double sl = 0.0;
            for (ptrdiff_t i = 0; i < len[j]; i++) {
                sl += l[off + i];
                sb += (double)g[off + i];
            }
            s += sl;
            mpiml_accumulate_f(X + at[j] * d, len[j], d, g + off, grad);
        }
    }
    *gb = sb;
    *bad |= flag;
    return s;
}

#endif
