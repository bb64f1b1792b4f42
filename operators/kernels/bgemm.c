/*
 * bgemm.c: C = A @ W with W bfloat16, packed once (see bgemm.h).
 *
 * The instruction. VDPBF16PS (AVX-512 BF16; _mm512_dpbf16_ps) takes 32 bf16
 * values in each of two zmm registers as 16 pairs, and adds the two products
 * of pair l into float32 lane l of the accumulator:
 *     acc[l] += a[2l+1] * b[2l+1];  acc[l] += a[2l] * b[2l]
 * (Intel SDM, VDPBF16PS; products of two bf16 values are exact in float32).
 * So W is packed in panels of NR = 32 columns (two zmm), each k-pair of a
 * panel 64 bf16: for columns 0..15 then 16..31, W[2p][j] beside W[2p+1][j];
 * and a row of A is rounded to bf16 (VCVTNE2PS2BF16: nearest even) and packed
 * as the pairs (A[i][2p], A[i][2p+1]), each a 32-bit word broadcast to all 16
 * lanes. An odd K gets a zero row in W and a zero in A.
 *
 * Blocking, after BLIS and GotoBLAS, as in sgemm.c (no Strassen here: its sums
 * of W's quadrants would be rounded to bf16 again). Each OpenMP thread takes a
 * range of rows and walks it in blocks of MC rows (or, when M is too small to
 * give each thread rows, all rows and a range of column panels). For each
 * KC-deep slice, the block's rows of A are rounded and packed into a buffer of
 * MC x KC bf16 (L2); for each MR x NR tile of C the micro-kernel keeps the tile
 * in 24 zmm accumulators and, per k-pair, loads 64 bf16 of W (two zmm) and
 * broadcasts MR pairs of A: 24 dot products (48 multiply-adds per lane pair,
 * 1536 per k-pair) per 2 loads and 12 broadcasts. W's panel is streamed from
 * L2/L3 with a software prefetch 8 k-pairs ahead. The last tile of a row range
 * has fewer rows: the micro-kernel is compiled for each row count 1..MR, so
 * M = 1 (one token) does 1/MR of the work of a full tile, not all of it.
 * The block sizes are sgemm.c's: on the 2-core Zen 4 machine this was written
 * on, KC 768 to 1536, MC 96 to 192 and NC 128 to 384 measured alike (within
 * the noise of a shared machine), larger KC or NC slower
 * (build/tools/bgemm-bench); the kernel runs at about 90% of the measured
 * VDPBF16PS peak there, docs/benchmarks.md.
 *
 * Without AVX-512 BF16 (or with DMICA_NO_AVX512 or DMICA_NO_AVX512_BF16: the
 * compute context's avx512_bf16 is 0) the same blocking and packing run a plain
 * C micro-kernel that widens each bf16 to float32 (a shift) and adds the two
 * products of a pair in the instruction's order: correct on any CPU, and slow.
 * The rounding of A there is dm_f32_to_bf16's (nearest even); VCVTNE2PS2BF16
 * also flushes subnormal inputs to zero, which changes nothing of size.
 */
#include "bgemm.h"

#include "compute.h"
#include "dm.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MR 12
#define NR DM_BGEMM_NR
#ifndef KC
#define KC 1536 /* k per slice: even */
#endif
#ifndef MC
#define MC 96
#endif
#ifndef NC
#define NC 384
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BGEMM_X86 1
#endif

/* ---- layout -------------------------------------------------------------- */

/* bf16 values of one panel: K rounded up to even, times NR. */
static size_t panel_size(int K) { return (size_t)(K + 1) / 2 * 2 * NR; }

size_t dm_bgemm_packed_size(int K, int N) { return (size_t)(N + NR - 1) / NR * panel_size(K); }

/* Offset in a panel of W's element (k, jj), jj the column within the panel. */
static inline size_t panel_at(int k, int jj) { return (size_t)(k / 2) * 2 * NR + (jj >> 4) * 32 + (jj & 15) * 2 + (k & 1); }

static inline uint16_t load_bf16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

/* Element (k, j) of W as bf16: from bf16 (2 bytes each) or float32 values. */
static inline uint16_t w_at(const void *W, int ldw, int layout, int f32, int k, int j)
{
    size_t i = layout == DM_BGEMM_NK ? (size_t)j * ldw + k : (size_t)k * ldw + j;
    return f32 ? dm_f32_to_bf16(((const float *)W)[i]) : load_bf16((const unsigned char *)W + 2 * i);
}

/* Panel P of W into d; inlined for each layout and source (the per-element
 * reads then compile to plain loads). */
__attribute__((always_inline)) static inline void pack_panel(uint16_t *d, const void *W, int ldw,
                                                             int K, int N, int P, int layout, int f32)
{
    int K2 = (K + 1) / 2, w = N - P * NR < NR ? N - P * NR : NR;
    memset(d, 0, sizeof(uint16_t) * panel_size(K));
    /* the loop order that reads W in its own order: row k of a (K, N) W holds
     * the panel's columns, row j of an (N, K) one a whole column */
    if (layout == DM_BGEMM_NK)
        for (int jj = 0; jj < w; jj++)
            for (int k = 0; k < K; k++)
                d[panel_at(k, jj)] = w_at(W, ldw, layout, f32, k, P * NR + jj);
    else
        for (int p = 0; p < K2; p++)
            for (int e = 0; e < 2 && 2 * p + e < K; e++)
                for (int jj = 0; jj < w; jj++)
                    d[panel_at(2 * p + e, jj)] = w_at(W, ldw, layout, f32, 2 * p + e, P * NR + jj);
}

static void pack(uint16_t *dst, const void *W, int ldw, int K, int N, int layout, int f32)
{
    int panels = (N + NR - 1) / NR;
    size_t ps = panel_size(K);
#pragma omp parallel for schedule(static) if (panels > 1 && (size_t)K * N > 1 << 16)
    for (int P = 0; P < panels; P++) {
        uint16_t *d = dst + (size_t)P * ps;
        if (layout == DM_BGEMM_NK)
            f32 ? pack_panel(d, W, ldw, K, N, P, DM_BGEMM_NK, 1) : pack_panel(d, W, ldw, K, N, P, DM_BGEMM_NK, 0);
        else
            f32 ? pack_panel(d, W, ldw, K, N, P, DM_BGEMM_KN, 1) : pack_panel(d, W, ldw, K, N, P, DM_BGEMM_KN, 0);
    }
}

void dm_bgemm_pack(uint16_t *dst, const void *W, int ldw, int K, int N, int layout)
{
    pack(dst, W, ldw, K, N, layout, 0);
}

void dm_bgemm_pack_f32(uint16_t *dst, const float *W, int ldw, int K, int N, int layout)
{
    pack(dst, W, ldw, K, N, layout, 1);
}

void dm_bgemm_ref(float *C, int ldc, const float *A, int lda, const uint16_t *W, const float *bias,
                  int M, int N, int K, int flags, dm_sgemm_rowfn fn)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++)
                s += (double)dm_bf16_to_f32(dm_f32_to_bf16(A[(size_t)i * lda + k])) *
                     dm_bf16_to_f32(W[(size_t)k * N + j]);
            s += bias ? bias[j] : 0.0;
            c[j] = (flags & DM_SGEMM_ACCUMULATE) ? (float)(c[j] + s) : (float)s;
        }
        if (fn)
            fn(c, N);
    }
}

int dm_bgemm_available(void)
{
#ifdef BGEMM_X86
    return dm_compute_default()->avx512_bf16;
#else
    return 0;
#endif
}

/* ---- packing A ------------------------------------------------------------ */

/* Rows [0, mc) x columns [0, kc) of A, rounded to bf16, into rows of kc2 =
 * ceil(kc / 2) pairs (the second of the last pair 0 for an odd kc); rows from
 * mc up to a multiple of MR are zeros. */
typedef void (*pack_a_fn)(uint32_t *Ap, const float *A, int lda, int mc, int kc);

static void pack_a_c(uint32_t *Ap, const float *A, int lda, int mc, int kc)
{
    int kc2 = (kc + 1) / 2;
    for (int i = 0; i < (mc + MR - 1) / MR * MR; i++) {
        uint32_t *d = Ap + (size_t)i * kc2;
        const float *x = A + (size_t)i * lda;
        if (i >= mc) {
            memset(d, 0, sizeof(uint32_t) * kc2);
            continue;
        }
        for (int p = 0; p < kc2; p++) {
            uint32_t lo = dm_f32_to_bf16(x[2 * p]), hi = 2 * p + 1 < kc ? dm_f32_to_bf16(x[2 * p + 1]) : 0;
            d[p] = lo | hi << 16;
        }
    }
}

#ifdef BGEMM_X86
__attribute__((target("avx512f,avx512bf16"))) static void pack_a_bf16(uint32_t *Ap, const float *A,
                                                                     int lda, int mc, int kc)
{
    int kc2 = (kc + 1) / 2;
    for (int i = 0; i < (mc + MR - 1) / MR * MR; i++) {
        uint32_t *d = Ap + (size_t)i * kc2;
        const float *x = A + (size_t)i * lda;
        if (i >= mc) {
            memset(d, 0, sizeof(uint32_t) * kc2);
            continue;
        }
        for (int k = 0; k < kc; k += 32) {
            int n = kc - k;
            __mmask16 m0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
            __mmask16 m1 = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + k + 16),
                                             _mm512_maskz_loadu_ps(m0, x + k));
            int pairs = (n + 1) / 2;
            __mmask16 ms = pairs >= 16 ? 0xffff : (__mmask16)((1u << pairs) - 1);
            _mm512_mask_storeu_epi32(d + k / 2, ms, (__m512i)h);
        }
    }
}
#endif

/* ---- micro-kernels ------------------------------------------------------- */

/* The MR x NR tile (rows x cols of it real) of a (MR rows of kc2 pairs) @ b
 * (kc2 pairs of a panel), into c: c = (load ? c : 0) + bias (NULL: none) + tile. */
typedef void (*microkernel)(int kc2, const uint32_t *a, const uint16_t *b, float *c, int ldc,
                            int rows, int cols, const float *bias, int load);

static inline float bf16_lo(uint32_t pair)
{
    uint32_t x = pair << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline float bf16_hi(uint32_t pair)
{
    uint32_t x = pair & 0xffff0000u;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static void kernel_c(int kc2, const uint32_t *a, const uint16_t *b, float *c, int ldc, int rows,
                     int cols, const float *bias, int load)
{
    float acc[MR][NR];
    memset(acc, 0, sizeof acc);
    for (int p = 0; p < kc2; p++) {
        uint32_t bp[NR]; /* column j's pair is the j-th 32-bit word of the k-pair */
        memcpy(bp, b + (size_t)p * 2 * NR, sizeof bp);
        for (int i = 0; i < rows; i++) {
            uint32_t ap = a[(size_t)i * kc2 + p];
            float a0 = bf16_lo(ap), a1 = bf16_hi(ap);
            for (int j = 0; j < NR; j++) {
                acc[i][j] += a1 * bf16_hi(bp[j]);
                acc[i][j] += a0 * bf16_lo(bp[j]);
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int j = 0; j < cols; j++)
            ci[j] = (load ? ci[j] : 0.0f) + (bias ? bias[j] : 0.0f) + acc[i][j];
    }
}

#ifdef BGEMM_X86
/* mr rows of the tile; inlined into one function per row count, so the
 * accumulators stay in registers and no row past mr is computed. */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
tile_bf16(const int mr, int kc2, const uint32_t *a, const uint16_t *b, float *c, int ldc, int rows,
          int cols, const float *bias, int load)
{
    __m512 acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++)
        acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int i = 0; i < rows; i++) {
        _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)i * ldc + 16), _MM_HINT_T0);
    }
    for (int p = 0; p < kc2; p++) {
        const uint16_t *bp = b + (size_t)p * 2 * NR;
        __m512bh b0 = (__m512bh)_mm512_load_si512(bp), b1 = (__m512bh)_mm512_load_si512(bp + 32);
        _mm_prefetch((const char *)(bp + 8 * 2 * NR), _MM_HINT_T0);
        _mm_prefetch((const char *)(bp + 8 * 2 * NR + 32), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[(size_t)i * kc2 + p]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
    __m512 z0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    __m512 z1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        if (i >= rows)
            break;
        float *ci = c + (size_t)i * ldc;
        __m512 v0 = z0, v1 = z1;
        if (load) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, ci));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, ci + 16));
        }
        _mm512_mask_storeu_ps(ci, m0, _mm512_add_ps(v0, acc[i][0]));
        _mm512_mask_storeu_ps(ci + 16, m1, _mm512_add_ps(v1, acc[i][1]));
    }
}

#define TILE(n)                                                                                    \
    __attribute__((target("avx512f,avx512bf16"))) static void kernel_bf16_##n(                     \
        int kc2, const uint32_t *a, const uint16_t *b, float *c, int ldc, int rows, int cols,      \
        const float *bias, int load)                                                               \
    {                                                                                              \
        tile_bf16(n, kc2, a, b, c, ldc, rows, cols, bias, load);                                   \
    }
TILE(1)
TILE(2)
TILE(3)
TILE(4)
TILE(5)
TILE(6)
TILE(7)
TILE(8)
TILE(9)
TILE(10)
TILE(11)
TILE(12)
#undef TILE

/* The kernel for a tile of rows rows, indexed by rows - 1. */
static const microkernel kernel_bf16[MR] = {
    kernel_bf16_1, kernel_bf16_2, kernel_bf16_3,  kernel_bf16_4,  kernel_bf16_5,  kernel_bf16_6,
    kernel_bf16_7, kernel_bf16_8, kernel_bf16_9, kernel_bf16_10, kernel_bf16_11, kernel_bf16_12,
};
#endif

/* ---- the product ---------------------------------------------------------- */

/* Rows [r0, r1) x columns [j0, j1) of C (j0 a multiple of NR). Called by each
 * thread on its own part, Ap its packing buffer. */
static void run_block(float *C, int ldc, const float *A, int lda, const uint16_t *Wp,
                      const float *bias, int N, int K, int r0, int r1, int j0, int j1, int flags,
                      dm_sgemm_rowfn fn, uint32_t *Ap, pack_a_fn pack_a, int fast)
{
    size_t ps = panel_size(K);
    for (int m0 = r0; m0 < r1; m0 += MC) {
        int mc = r1 - m0 < MC ? r1 - m0 : MC;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC, kc2 = (kc + 1) / 2;
            int first = k0 == 0, last = k0 + kc == K;
            pack_a(Ap, A + (size_t)m0 * lda + k0, lda, mc, kc);
            for (int n0 = j0; n0 < j1; n0 += NC) {
                int n1 = j1 - n0 < NC ? j1 : n0 + NC;
                for (int i = 0; i < mc; i += MR) {
                    int rows = mc - i < MR ? mc - i : MR;
                    microkernel kernel = kernel_c;
#ifdef BGEMM_X86
                    if (fast)
                        kernel = kernel_bf16[rows - 1];
#endif
                    for (int j = n0; j < n1; j += NR) {
                        int cols = N - j < NR ? N - j : NR;
                        float *c = C + (size_t)(m0 + i) * ldc + j;
                        kernel(kc2, Ap + (size_t)i * kc2, Wp + (size_t)(j / NR) * ps + (size_t)k0 * NR,
                               c, ldc, rows, cols, first && bias ? bias + j : NULL,
                               !first || (flags & DM_SGEMM_ACCUMULATE));
                        for (int r = 0; fn && last && r < rows; r++)
                            fn(c + (size_t)r * ldc, cols);
                    }
                }
            }
        }
    }
}

void dm_bgemm(float *C, int ldc, const float *A, int lda, const uint16_t *Wp, const float *bias,
              int M, int N, int K, int flags, dm_sgemm_rowfn fn)
{
    if (M <= 0 || N <= 0)
        return;
    if (K == 0) { /* no products: the bias alone */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                c[j] = ((flags & DM_SGEMM_ACCUMULATE) ? c[j] : 0.0f) + (bias ? bias[j] : 0.0f);
            if (fn)
                fn(c, N);
        }
        return;
    }
    int fast = dm_bgemm_available();
    pack_a_fn pack_a = pack_a_c;
#ifdef BGEMM_X86
    if (fast)
        pack_a = pack_a_bf16;
#endif
    int tiles = (M + MR - 1) / MR, panels = (N + NR - 1) / NR;
#pragma omp parallel if ((long)tiles * panels > 1)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        /* rows to each thread where there are enough of them; otherwise all rows
         * and a share of the column panels (one token through the unembedding) */
        int by_rows = tiles >= 4 * nt || tiles >= panels;
        int r0 = 0, r1 = M, j0 = 0, j1 = N;
        if (by_rows) {
            r0 = (int)((long)tiles * t / nt) * MR;
            r1 = (int)((long)tiles * (t + 1) / nt) * MR;
            r1 = r1 < M ? r1 : M;
        } else {
            j0 = (int)((long)panels * t / nt) * NR;
            j1 = (int)((long)panels * (t + 1) / nt) * NR;
            j1 = j1 < N ? j1 : N;
        }
        if (r0 < r1 && j0 < j1) {
            int rows = r1 - r0 < MC ? (r1 - r0 + MR - 1) / MR * MR : MC;
            size_t kc2 = (size_t)((K < KC ? K : KC) + 1) / 2;
            uint32_t *Ap = dm_xmalloc_aligned(sizeof(uint32_t) * rows * kc2);
            run_block(C, ldc, A, lda, Wp, bias, N, K, r0, r1, j0, j1, flags, fn, Ap, pack_a, fast);
            free(Ap);
        }
    }
}
