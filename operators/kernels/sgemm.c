/*
 * sgemm.c: C = A @ W with W packed once (see sgemm.h).
 *
 * One level of Strassen. When K and N are even (and at least 32), W is split in
 * quadrants W11 W12 / W21 W22 of (K/2, N/2) and the seven matrices Strassen's
 * products multiply by are formed and packed at load:
 *     P0 = W11 + W22   P1 = W11   P2 = W12 - W22   P3 = W21 - W11
 *     P4 = W22         P5 = W11 + W12               P6 = W21 + W22
 * With A's quadrants A11 A12 / A21 A22 (rows split at M/2, columns at K/2):
 *     M1 = (A11 + A22) P0 -> C11 +, C22 +     M5 = (A11 + A12) P4 -> C11 -, C12 +
 *     M2 = (A21 + A22) P1 -> C21 +, C22 -     M6 = (A21 - A11) P5 -> C22 +
 *     M3 = A11 P2        -> C12 +, C22 +     M7 = (A12 - A22) P6 -> C11 +
 *     M4 = A22 P3        -> C11 +, C21 +
 * 7 half-size products instead of 8: 12.5% fewer multiply-adds. Nothing is
 * formed in memory on A's or C's side: the sums of A's quadrants are made while
 * A is packed (which it must be anyway), and the micro-kernel adds its finished
 * tile into both C quadrants of a product, with their signs, as it stores it
 * (the "ABC" variant of Huang, Smith, Henry and van de Geijn, "Strassen's
 * Algorithm Reloaded", SC16). The bias is added at a quadrant's first product,
 * the row function runs after its last. Rows left over (an odd M, or all of a
 * small M) use the classic product from the same packed matrices:
 *     C1 = (A1 + A2) P1 + A2 P3      C2 = A1 P2 + (A1 + A2) P4
 * Error: one level of Strassen bounds |C - AB| by about 3x the classic bound
 * (Higham, Accuracy and Stability of Numerical Algorithms, 23.2.2); measured:
 * 2.3e-6 relative (max abs error / max abs) against a float64 GPT-2 at the 124M
 * shape, 1.3e-6 without Strassen, against 1e-4 allowed by the parity tests.
 * Other W (odd K or N, or smaller) are packed whole and multiplied classically.
 *
 * Blocking, after BLIS and GotoBLAS. Each OpenMP thread takes a range of rows and
 * walks it in blocks of MC rows. For each product, a KC-deep slice of A (the sum
 * of its terms) is packed into row panels of MR rows, each row contiguous (a
 * memcpy or a vector add), into a buffer that stays in L2 (MC x KC floats, at
 * most 576 KiB); W's panels (K x NR, k-major) were packed at load. For each
 * MR x NR tile of C the micro-kernel keeps the tile in 24 zmm accumulators and,
 * per k, loads 32 floats of W (two zmm) and broadcasts the MR values of A: 24
 * FMAs per 2 loads and 12 broadcasts, the W panel streamed from L2/L3 (software
 * prefetch 8 steps ahead), the C tile prefetched at the start (C is larger than
 * L3 at GPT-2's sizes). KC is large so that a product's K/2 is one slice at
 * GPT-2's sizes: each C tile is then stored once per product instead of once per
 * slice. The block sizes were picked by measurement on the 2-core Zen 4 machine
 * this was written on (build/tools/sgemm-bench), not derived from cache sizes.
 *
 * Without AVX-512F (or with DMICA_NO_AVX512=1: the compute context's avx512 is
 * 0) the same blocking runs a plain C micro-kernel: correct on any CPU, and
 * slow, so the runners call OpenBLAS there instead; the tests run it.
 */
#include "sgemm.h"

#include "compute.h"
#include "dm.h"
#include "vmath.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MR 12
#define NR DM_SGEMM_NR
#define KC 1536
#define MC 96
#define NC 384

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SGEMM_X86 1
#endif

/* ---- layout -------------------------------------------------------------- */

/* Whether W (K, N) is packed as Strassen's seven matrices: the compute
 * context's strassen (off with DMICA_SGEMM_CLASSIC=1, for comparisons), fixed
 * for the process, so pack and multiply always agree. */
static int strassen_layout(int K, int N)
{
    return dm_compute_default()->strassen && K % 2 == 0 && N % 2 == 0 && K >= 32 && N >= 32;
}

/* Floats of one (K, N) matrix in panels. */
static size_t panel_floats(int K, int N)
{
    return (size_t)(N + NR - 1) / NR * NR * (size_t)K;
}

size_t dm_sgemm_packed_floats(int K, int N)
{
    return strassen_layout(K, N) ? 7 * panel_floats(K / 2, N / 2) : panel_floats(K, N);
}

/* dst = panels of the (K, N) matrix whose element (k, j) is the sum over terms t
 * of sign[t] * W[(k0[t] + k) * ldw + j0[t] + j]. */
static void pack_sum(float *dst, const float *W, int ldw, int K, int N, int nterms,
                     const int *k0, const int *j0, const float *sign)
{
    for (int p0 = 0; p0 < N; p0 += NR) {
        int w = N - p0 < NR ? N - p0 : NR;
        float *p = dst + (size_t)p0 * K; /* panel p0 / NR holds K x NR floats */
        for (int k = 0; k < K; k++) {
            float *d = p + (size_t)k * NR;
            memset(d, 0, sizeof(float) * NR);
            for (int t = 0; t < nterms; t++) {
                const float *x = W + (size_t)(k0[t] + k) * ldw + j0[t] + p0;
#pragma omp simd
                for (int j = 0; j < w; j++)
                    d[j] += sign[t] * x[j];
            }
        }
    }
}

void dm_sgemm_pack(float *dst, const float *W, int ldw, int K, int N)
{
    static const int zero[1] = {0};
    static const float one[1] = {1.0f};
    if (!strassen_layout(K, N)) {
        pack_sum(dst, W, ldw, K, N, 1, zero, zero, one);
        return;
    }
    /* P0..P6 of the header comment, as (quadrant row, quadrant column, sign) terms */
    static const struct {
        int n, qr[2], qc[2];
        float s[2];
    } P[7] = {
        {2, {0, 1}, {0, 1}, {1, 1}},  {1, {0}, {0}, {1}},           {2, {0, 1}, {1, 1}, {1, -1}},
        {2, {1, 0}, {0, 0}, {1, -1}}, {1, {1}, {1}, {1}},           {2, {0, 0}, {0, 1}, {1, 1}},
        {2, {1, 1}, {0, 1}, {1, 1}},
    };
    int K2 = K / 2, N2 = N / 2;
    for (int m = 0; m < 7; m++) {
        int k0[2], j0[2];
        for (int t = 0; t < P[m].n; t++)
            k0[t] = P[m].qr[t] * K2, j0[t] = P[m].qc[t] * N2;
        pack_sum(dst + m * panel_floats(K2, N2), W, ldw, K2, N2, P[m].n, k0, j0, P[m].s);
    }
}

void dm_sgemm_ref(float *C, int ldc, const float *A, int lda, const float *W, const float *bias,
                  int M, int N, int K, int flags, dm_sgemm_rowfn fn)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += A[(size_t)i * lda + k] * W[(size_t)k * N + j];
            s += bias ? bias[j] : 0.0f;
            c[j] = (flags & DM_SGEMM_ACCUMULATE) ? c[j] + s : s;
        }
        if (fn)
            fn(c, N);
    }
}

/* ---- products ------------------------------------------------------------- */

/* A term or a destination: quadrant (row half, column half) and sign; sign 0
 * ends a list. */
typedef struct {
    signed char qr, qc, sign;
} term;

/* One product: (sum of a terms) @ packed matrix b, added into the c quadrants.
 * Bit q of first / last: the product is c[q]'s first (store, add the bias) or
 * last (run the row function). */
typedef struct {
    term a[2];
    int b;
    term c[2];
    unsigned char first, last;
} product;

static const product strassen7[] = {
    {{{0, 0, 1}, {1, 1, 1}}, 0, {{0, 0, 1}, {1, 1, 1}}, 3, 0},  /* M1 */
    {{{1, 0, 1}, {1, 1, 1}}, 1, {{1, 0, 1}, {1, 1, -1}}, 1, 0}, /* M2 */
    {{{0, 0, 1}}, 2, {{0, 1, 1}, {1, 1, 1}}, 1, 0},             /* M3 */
    {{{1, 1, 1}}, 3, {{0, 0, 1}, {1, 0, 1}}, 0, 2},             /* M4 */
    {{{0, 0, 1}, {0, 1, 1}}, 4, {{0, 0, -1}, {0, 1, 1}}, 0, 2}, /* M5 */
    {{{1, 0, 1}, {0, 0, -1}}, 5, {{1, 1, 1}}, 0, 1},            /* M6 */
    {{{0, 1, 1}, {1, 1, -1}}, 6, {{0, 0, 1}}, 0, 1},            /* M7 */
};
/* The classic product from the same matrices, rows in quadrant row 0. */
static const product classic4[] = {
    {{{0, 0, 1}, {0, 1, 1}}, 1, {{0, 0, 1}}, 1, 0}, /* C1 = (A1 + A2) P1 */
    {{{0, 1, 1}}, 3, {{0, 0, 1}}, 0, 1},            /*    + A2 P3 */
    {{{0, 0, 1}}, 2, {{0, 1, 1}}, 1, 0},            /* C2 = A1 P2 */
    {{{0, 0, 1}, {0, 1, 1}}, 4, {{0, 1, 1}}, 0, 1}, /*    + (A1 + A2) P4 */
};
/* A matrix packed whole. */
static const product whole1[] = {{{{0, 0, 1}}, 0, {{0, 0, 1}}, 1, 1}};

int dm_sgemm_available(void)
{
#ifdef SGEMM_X86
    return dm_compute_default()->avx512;
#else
    return 0;
#endif
}

/* The vector loops of pack_a: DM_SIMD_CLONES (vmath.h). */

/* Rows [0, mc) x columns [0, kc) of a[0] + s1 * a[1] (a[1] may be NULL) into
 * panels of MR rows, each row contiguous (kc floats); rows past mc are zeros. */
DM_SIMD_CLONES
static void pack_a(float *Ap, const float *a0, const float *a1, float s1, int lda, int mc, int kc)
{
    for (int i = 0; i < (mc + MR - 1) / MR * MR; i++) {
        float *d = Ap + (size_t)i * kc;
        const float *x = a0 + (size_t)i * lda, *y = a1 ? a1 + (size_t)i * lda : NULL;
        if (i >= mc)
            memset(d, 0, sizeof(float) * kc);
        else if (!y)
            memcpy(d, x, sizeof(float) * kc);
        else if (s1 > 0)
#pragma omp simd
            for (int k = 0; k < kc; k++)
                d[k] = x[k] + y[k];
        else
#pragma omp simd
            for (int k = 0; k < kc; k++)
                d[k] = x[k] - y[k];
    }
}

/* Where a tile's result goes: c (the tile's corner) = (load ? c : 0) + sign * tile
 * + bias (NULL: none). */
typedef struct {
    float *c;
    const float *bias;
    float sign;
    int load;
} dest;

/* A micro-kernel: the MR x NR tile (rows x cols of it real) of a (MR x kc, rows
 * of kc) @ b (kc x NR, k-major), stored into nd destinations. */
typedef void (*microkernel)(int kc, const float *a, const float *b, int ldc, int rows, int cols,
                            int nd, const dest *d);

/* The plain C micro-kernel, for CPUs without AVX-512F: kernel_avx512's products
 * summed in the same order (k ascending), one float accumulator per element. */
static void kernel_c(int kc, const float *a, const float *b, int ldc, int rows, int cols, int nd,
                     const dest *d)
{
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int k = 0; k < kc; k++)
        for (int i = 0; i < MR; i++) {
            float av = a[(size_t)i * kc + k];
            for (int j = 0; j < NR; j++)
                acc[i][j] += av * b[(size_t)k * NR + j];
        }
    for (int q = 0; q < nd; q++)
        for (int i = 0; i < rows; i++) {
            float *ci = d[q].c + (size_t)i * ldc;
            for (int j = 0; j < cols; j++)
                ci[j] = (d[q].load ? ci[j] : 0.0f) + (d[q].bias ? d[q].bias[j] : 0.0f) +
                        acc[i][j] * d[q].sign;
        }
}

#ifdef SGEMM_X86
__attribute__((target("avx512f"))) static void kernel_avx512(int kc, const float *a, const float *b,
                                                     int ldc, int rows, int cols, int nd,
                                                     const dest *d)
{
    __m512 acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    /* the destination rows are out of cache (C is larger than L3 at GPT-2's
     * sizes): fetch them while the k loop runs */
    for (int q = 0; q < nd; q++)
        for (int i = 0; i < rows; i++) {
            _mm_prefetch((const char *)(d[q].c + (size_t)i * ldc), _MM_HINT_T0);
            _mm_prefetch((const char *)(d[q].c + (size_t)i * ldc + 16), _MM_HINT_T0);
        }
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + (size_t)k * NR), b1 = _mm512_load_ps(b + (size_t)k * NR + 16);
        _mm_prefetch((const char *)(b + (size_t)(k + 8) * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + (size_t)(k + 8) * NR + 16), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[(size_t)i * kc + k]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
    for (int q = 0; q < nd; q++) {
        __m512 s = _mm512_set1_ps(d[q].sign);
        __m512 z0 = d[q].bias ? _mm512_maskz_loadu_ps(m0, d[q].bias) : _mm512_setzero_ps();
        __m512 z1 = d[q].bias ? _mm512_maskz_loadu_ps(m1, d[q].bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            if (i >= rows)
                break;
            float *ci = d[q].c + (size_t)i * ldc;
            __m512 v0 = z0, v1 = z1;
            if (d[q].load) {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, ci));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, ci + 16));
            }
            _mm512_mask_storeu_ps(ci, m0, _mm512_fmadd_ps(acc[i][0], s, v0));
            _mm512_mask_storeu_ps(ci + 16, m1, _mm512_fmadd_ps(acc[i][1], s, v1));
        }
    }
}
#endif

/* Runs the products P[0..np) over rows [r0, r1) of quadrant row 0 (quadrant row 1
 * starts mh rows below), K2 x N2 quadrants, packed matrices of pf floats each.
 * Called by each thread on its own rows. */
static void run_products(const product *P, int np, float *C, int ldc, const float *A, int lda,
                         const float *Wp, size_t pf, const float *bias, int K2, int N2, int mh,
                         int r0, int r1, int flags, dm_sgemm_rowfn fn, float *Ap,
                         microkernel kernel)
{
    int accumulate = flags & DM_SGEMM_ACCUMULATE;
    for (int m0 = r0; m0 < r1; m0 += MC) {
        int mc = r1 - m0 < MC ? r1 - m0 : MC;
        for (int p = 0; p < np; p++) {
            const product *pr = &P[p];
            int nd = pr->c[1].sign ? 2 : 1;
            for (int k0 = 0; k0 < K2; k0 += KC) {
                int kc = K2 - k0 < KC ? K2 - k0 : KC, klast = k0 + kc == K2;
                const float *a[2] = {NULL, NULL};
                for (int t = 0; t < 2 && pr->a[t].sign; t++)
                    a[t] = A + (size_t)(m0 + pr->a[t].qr * mh) * lda + pr->a[t].qc * K2 + k0;
                pack_a(Ap, a[0], a[1], pr->a[1].sign, lda, mc, kc);
                const float *b = Wp + pr->b * pf + (size_t)k0 * NR;
                for (int n0 = 0; n0 < N2; n0 += NC) {
                    int n1 = N2 - n0 < NC ? N2 : n0 + NC;
                    for (int i = 0; i < mc; i += MR) {
                        int rows = mc - i < MR ? mc - i : MR;
                        for (int j = n0; j < n1; j += NR) {
                            int cols = N2 - j < NR ? N2 - j : NR;
                            dest d[2];
                            for (int q = 0; q < nd; q++) {
                                const term *c = &pr->c[q];
                                int first = (pr->first >> q & 1) && k0 == 0;
                                d[q].c = C + (size_t)(m0 + i + c->qr * mh) * ldc + c->qc * N2 + j;
                                d[q].bias = first && bias ? bias + c->qc * N2 + j : NULL;
                                d[q].sign = c->sign;
                                d[q].load = !first || accumulate;
                            }
                            kernel(kc, Ap + (size_t)i * kc, b + (size_t)j * K2, ldc, rows, cols,
                                   nd, d);
                            for (int q = 0; fn && klast && q < nd; q++)
                                for (int r = 0; (pr->last >> q & 1) && r < rows; r++)
                                    fn(d[q].c + (size_t)r * ldc, cols);
                        }
                    }
                }
            }
        }
    }
}

void dm_sgemm(float *C, int ldc, const float *A, int lda, const float *Wp, const float *bias,
              int M, int N, int K, int flags, dm_sgemm_rowfn fn)
{
    if (K == 0) { /* no products: the bias alone */
        float zero[1] = {0.0f};
        dm_sgemm_ref(C, ldc, zero, 0, zero, bias, M, N, 0, flags, fn);
        return;
    }
    int strassen = strassen_layout(K, N), K2 = strassen ? K / 2 : K, N2 = strassen ? N / 2 : N;
    size_t pf = panel_floats(K2, N2);
    /* Strassen on the first 2 mh rows, the classic product on the rest */
    int mh = strassen && M >= 2 * MR ? M / 2 : 0, rest = M - 2 * mh;
    int blocks = (mh + MR - 1) / MR, rblocks = (rest + MR - 1) / MR;
    /* the packing buffer: MC rows (fewer for a small M) of one KC slice */
    int rows = mh > rest ? mh : rest, mce = (rows + MR - 1) / MR * MR;
    size_t ap = (size_t)(mce < MC ? mce : MC) * (K2 < KC ? K2 : KC);
    microkernel kernel = kernel_c;
#ifdef SGEMM_X86
    if (dm_compute_default()->avx512)
        kernel = kernel_avx512;
#endif
#pragma omp parallel if (blocks + rblocks > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *Ap = dm_xmalloc_aligned(sizeof(float) * ap);
        if (mh) {
            int r0 = (int)((long)blocks * t / nt) * MR, r1 = (int)((long)blocks * (t + 1) / nt) * MR;
            run_products(strassen7, 7, C, ldc, A, lda, Wp, pf, bias, K2, N2, mh, r0,
                         r1 < mh ? r1 : mh, flags, fn, Ap, kernel);
        }
        if (rest) {
            int r0 = (int)((long)rblocks * t / nt) * MR, r1 = (int)((long)rblocks * (t + 1) / nt) * MR;
            r1 = r1 < rest ? r1 : rest;
            const float *a = A + (size_t)2 * mh * lda;
            float *c = C + (size_t)2 * mh * ldc;
            if (strassen)
                run_products(classic4, 4, c, ldc, a, lda, Wp, pf, bias, K2, N2, 0, r0, r1, flags,
                             fn, Ap, kernel);
            else
                run_products(whole1, 1, c, ldc, a, lda, Wp, pf, bias, K2, N2, 0, r0, r1, flags,
                             fn, Ap, kernel);
        }
        free(Ap);
    }
}

