/*
 * test_bgemm.c: the bf16-weight GEMM of operators/kernels/bgemm.c against its
 * plain triple loop (dm_bgemm_ref), against the float32 product (dm_sgemm_ref)
 * and against OpenBLAS at Gemma-2-2B's shapes; its packing from bf16 and
 * float32 sources in both weight layouts. Shapes exercise every edge of the
 * blocking: M, N and K below, at and past one tile (MR 12, NR 32), one block
 * (MC 96, NC 384, KC 1536), odd K (a zero-padded pair) inside and past a slice,
 * M = 1 and M too small to split by rows (the threads split columns), a wide N,
 * odd row strides; with and without bias, accumulating into C, with a row
 * function.
 *
 * Tolerances, relative to each element's scale s = sum_k |bf16(a_k) w_k|
 * (+ |bias| + |C| where those are added), because that is what bounds the
 * error of a sum, however much of it cancels:
 *   - against dm_bgemm_ref (the same bf16(A) and W, exact products summed in
 *     double): 1e-5. Only the float32 summation differs; for random signs it
 *     leaves far less than the worst case (about K 2^-24 of s, Higham,
 *     Accuracy and Stability of Numerical Algorithms, 3.1): measured 1.8e-7
 *     here, 1.6e-7 at Gemma's shapes (K up to 9216) against OpenBLAS, while
 *     A not rounded to bf16 as the reference does gives up to 2^-8 (4e-3) and
 *     a wrong index or a lost block of order 1.
 *   - against the float32 product of A and the same W: 2^-8 + 1e-5: rounding A
 *     to bf16 (8 significant bits, nearest) changes each product by at most
 *     2^-8 of itself.
 * On a CPU without AVX-512 BF16 (or with DMICA_NO_AVX512=1 or
 * DMICA_NO_AVX512_BF16=1; make test-unit runs it so too) the same tests run
 * the plain C micro-kernel, on fewer rows for the model's shapes (it is slow).
 */
#include "bgemm.h"

#include "dm.h"
#include "test.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static float rng_uniform(float lo, float hi)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

static float *random_floats(size_t n, float lo, float hi)
{
    float *x = dm_xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        x[i] = rng_uniform(lo, hi);
    return x;
}

static uint16_t *random_bf16(size_t n, float lo, float hi)
{
    uint16_t *x = dm_xmalloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        x[i] = dm_f32_to_bf16(rng_uniform(lo, hi));
    return x;
}

static float round_bf16(float x) { return dm_bf16_to_f32(dm_f32_to_bf16(x)); }

/* Each element's scale s: sum_k |bf16(a_ik) w_kj| + |bias_j| (+ |C0_ij| when
 * accumulating), row stride ld. */
static double *scales(const float *A, int lda, const uint16_t *W, const float *bias, const float *C0,
                      int ld, int M, int N, int K)
{
    double *s = dm_xmalloc(sizeof(double) * (size_t)M * N + 1);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double t = (bias ? fabs(bias[j]) : 0) + (C0 ? fabs(C0[(size_t)i * ld + j]) : 0);
            for (int k = 0; k < K; k++)
                t += fabs(round_bf16(A[(size_t)i * lda + k]) * dm_bf16_to_f32(W[(size_t)k * N + j]));
            s[(size_t)i * N + j] = t;
        }
    return s;
}

/* max |a - b| / s over the M x N elements (NaN counts as infinitely wrong). */
static double scaled_err(const float *a, const float *b, const double *s, int M, int N, int ld)
{
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double d = fabs((double)a[(size_t)i * ld + j] - b[(size_t)i * ld + j]);
            double e = d / (s[(size_t)i * N + j] > 0 ? s[(size_t)i * N + j] : 1e-30);
            worst = e > worst || isnan(d) ? (isnan(d) ? INFINITY : e) : worst;
        }
    return worst;
}

static void halve(float *row, int n)
{
    for (int j = 0; j < n; j++)
        row[j] = 0.5f * row[j] - 1.0f;
}

START_TEST(pack_layout)
{
    /* K = 5 (odd: the third pair's second row is padding), N = 40 (panel 1
     * has 8 real columns) */
    int K = 5, N = 40;
    ck_assert_int_eq(dm_bgemm_packed_size(K, N), 2 * 32 * 6);
    ck_assert_int_eq(dm_bgemm_packed_size(4, 32), 32 * 4);
    uint16_t W[5 * 40], Wt[40 * 5];
    float Wf[5 * 40];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) {
            W[k * N + j] = Wt[j * K + k] = (uint16_t)(1 + k * N + j);
            Wf[k * N + j] = (float)(1 + k * N + j);
        }
    size_t n = dm_bgemm_packed_size(K, N);
    uint16_t *P = dm_xmalloc_aligned(2 * n), *Q = dm_xmalloc_aligned(2 * n);
    dm_bgemm_pack(P, W, N, K, N, DM_BGEMM_KN);
    /* panel 0, pair 0: columns 0..15 as (k 0, k 1) pairs, then columns 16..31 */
    ck_assert_int_eq(P[0], W[0]);
    ck_assert_int_eq(P[1], W[N]);
    ck_assert_int_eq(P[2 * 5], W[5]);
    ck_assert_int_eq(P[2 * 5 + 1], W[N + 5]);
    ck_assert_int_eq(P[32 + 2 * 3], W[19]);
    /* pair 1 (k 2 and 3), pair 2 (k 4 and the zero row) */
    ck_assert_int_eq(P[64 + 2 * 7 + 1], W[3 * N + 7]);
    ck_assert_int_eq(P[128 + 2 * 7], W[4 * N + 7]);
    ck_assert_int_eq(P[128 + 2 * 7 + 1], 0);
    /* panel 1 (192 values on): column 32 + 7 real, 32 + 8 padding */
    ck_assert_int_eq(P[192 + 64 + 2 * 7], W[2 * N + 39]);
    ck_assert_int_eq(P[192 + 64 + 2 * 8], 0);
    /* the (N, K) layout and the float32 source pack the same */
    dm_bgemm_pack(Q, Wt, K, K, N, DM_BGEMM_NK);
    ck_assert_mem_eq(P, Q, 2 * n);
    memset(Q, 0xff, 2 * n);
    dm_bgemm_pack_f32(Q, Wf, N, K, N, DM_BGEMM_KN);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(Q[i], P[i] ? dm_f32_to_bf16((float)P[i]) : 0);
    free(P), free(Q);
}
END_TEST

/* The conversions the packers and the kernels use: nearest even, NaN kept,
 * and a source at an odd address (a safetensors tensor can start anywhere). */
START_TEST(pack_sources)
{
    ck_assert_int_eq(dm_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_int_eq(dm_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);   /* a tie: to even */
    ck_assert_int_eq(dm_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);   /* a tie: to even, up */
    ck_assert_int_eq(dm_f32_to_bf16(1.0f + 0x1.8p-8f), 0x3f81); /* past the tie */
    ck_assert(isnan(dm_bf16_to_f32(dm_f32_to_bf16(NAN))));
    int K = 33, N = 70;
    rng_state = 3;
    uint16_t *W = random_bf16((size_t)K * N, -1, 1);
    unsigned char *odd = dm_xmalloc(2 * (size_t)K * N + 1);
    memcpy(odd + 1, W, 2 * (size_t)K * N);
    size_t n = dm_bgemm_packed_size(K, N);
    uint16_t *P = dm_xmalloc_aligned(2 * n), *Q = dm_xmalloc_aligned(2 * n);
    dm_bgemm_pack(P, W, N, K, N, DM_BGEMM_KN);
    dm_bgemm_pack(Q, odd + 1, N, K, N, DM_BGEMM_KN);
    ck_assert_mem_eq(P, Q, 2 * n);
    free(W), free(odd), free(P), free(Q);
}
END_TEST

START_TEST(fast_matches_reference)
{
    if (!dm_bgemm_available())
        fprintf(stderr, "test_bgemm: the plain C micro-kernel (no AVX-512 BF16, or "
                        "DMICA_NO_AVX512 / DMICA_NO_AVX512_BF16 set)\n");
    static const int shapes[][3] = {
        {1, 1, 1},     {5, 7, 3},      {12, 32, 16},   {13, 33, 17},  {37, 70, 48},   {200, 96, 385},
        {193, 400, 64}, {64, 31, 801}, {7, 2304, 9},   {40, 64, 0},   {1, 5000, 301}, {2, 70000, 24},
        {100, 128, 66}, {25, 32, 32},  {30, 64, 3201}, {20, 33, 1700}, {97, 129, 1537}, {3, 1000, 2},
    };
    rng_state = 7;
    double worst = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], lda = K + 3, ldc = N + 5;
        float *A = random_floats((size_t)M * lda, -2, 2);
        uint16_t *W = random_bf16((size_t)K * N, -1, 1);
        float *bias = random_floats(N, -1, 1), *C0 = random_floats((size_t)M * ldc, -1, 1);
        uint16_t *Wp = dm_xmalloc_aligned(2 * dm_bgemm_packed_size(K, N) + 64);
        float *c1 = dm_xmalloc(sizeof(float) * M * ldc), *c2 = dm_xmalloc(sizeof(float) * M * ldc);
        dm_bgemm_pack(Wp, W, N, K, N, DM_BGEMM_KN);
        for (int v = 0; v < 5; v++) {
            const float *b = v & 1 ? bias : NULL;
            int flags = v & 2 ? DM_SGEMM_ACCUMULATE : 0;
            dm_sgemm_rowfn fn = v == 4 ? halve : NULL;
            double *sc = scales(A, lda, W, b, flags ? C0 : NULL, ldc, M, N, K);
            if (fn) /* halve scales the result by 1/2 */
                for (size_t i = 0; i < (size_t)M * N; i++)
                    sc[i] *= 0.5;
            memcpy(c1, C0, sizeof(float) * M * ldc);
            memcpy(c2, C0, sizeof(float) * M * ldc);
            dm_bgemm(c1, ldc, A, lda, Wp, b, M, N, K, flags, fn);
            dm_bgemm_ref(c2, ldc, A, lda, W, b, M, N, K, flags, fn);
            double e = scaled_err(c1, c2, sc, M, N, ldc);
            worst = e > worst ? e : worst;
            ck_assert_msg(e <= 1e-5, "M %d N %d K %d variant %d: %g", M, N, K, v, e);
            /* the padding columns between N and ldc are left alone */
            for (int i = 0; i < M; i++)
                for (int j = N; j < ldc; j++)
                    ck_assert_float_eq(c1[(size_t)i * ldc + j], C0[(size_t)i * ldc + j]);
            free(sc);
        }
        free(A), free(W), free(bias), free(C0), free(Wp), free(c1), free(c2);
    }
    fprintf(stderr, "test_bgemm: worst error against dm_bgemm_ref %.2g of sum |a w|\n", worst);
}
END_TEST

/* Against the float32 product of the unrounded A and the same W: the error
 * rounding A to bf16 brings, within its bound, and present (A is rounded). */
START_TEST(matches_fp32_product)
{
    static const int shapes[][3] = {{13, 33, 17}, {50, 300, 1000}, {1, 64, 2304}};
    rng_state = 9;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *A = random_floats((size_t)M * K, -2, 2), *bias = random_floats(N, -1, 1);
        uint16_t *W = random_bf16((size_t)K * N, -1, 1);
        float *Wf = dm_xmalloc(sizeof(float) * ((size_t)K * N + 1));
        for (size_t i = 0; i < (size_t)K * N; i++)
            Wf[i] = dm_bf16_to_f32(W[i]);
        uint16_t *Wp = dm_xmalloc_aligned(2 * dm_bgemm_packed_size(K, N));
        float *c1 = dm_xmalloc(sizeof(float) * M * N), *c2 = dm_xmalloc(sizeof(float) * M * N);
        dm_bgemm_pack_f32(Wp, Wf, N, K, N, DM_BGEMM_KN);
        dm_bgemm(c1, N, A, K, Wp, bias, M, N, K, 0, NULL);
        dm_sgemm_ref(c2, N, A, K, Wf, bias, M, N, K, 0, NULL);
        double *sc = scales(A, K, W, bias, NULL, N, M, N, K);
        double e = scaled_err(c1, c2, sc, M, N, N);
        ck_assert_msg(e <= 0x1p-8 + 1e-5, "M %d N %d K %d: %g", M, N, K, e);
        ck_assert_msg(e > 1e-5, "M %d N %d K %d: %g: A not rounded to bf16?", M, N, K, e);
        free(A), free(bias), free(W), free(Wf), free(Wp), free(c1), free(c2), free(sc);
    }
}
END_TEST

/* A panel of a wider matrix, packed with the whole's row stride, in both
 * layouts: the panel's product. */
START_TEST(strided_pack)
{
    int M = 40, K = 65, ldw = 200, j0 = 37, N = 96;
    rng_state = 5;
    float *A = random_floats((size_t)M * K, -1, 1);
    uint16_t *W = random_bf16((size_t)K * ldw, -1, 1), *Wt = dm_xmalloc(2 * (size_t)ldw * (K + 4));
    uint16_t *Wsub = dm_xmalloc(2 * (size_t)K * N);
    for (int k = 0; k < K; k++)
        for (int j = 0; j < ldw; j++)
            Wt[(size_t)j * (K + 4) + k] = W[(size_t)k * ldw + j];
    for (int k = 0; k < K; k++)
        memcpy(Wsub + (size_t)k * N, W + (size_t)k * ldw + j0, 2 * N);
    uint16_t *Wp = dm_xmalloc_aligned(2 * dm_bgemm_packed_size(K, N));
    float *c1 = dm_xmalloc(sizeof(float) * M * N), *c2 = dm_xmalloc(sizeof(float) * M * N);
    double *sc = scales(A, K, Wsub, NULL, NULL, N, M, N, K);
    dm_bgemm_ref(c2, N, A, K, Wsub, NULL, M, N, K, 0, NULL);
    dm_bgemm_pack(Wp, W + j0, ldw, K, N, DM_BGEMM_KN);
    dm_bgemm(c1, N, A, K, Wp, NULL, M, N, K, 0, NULL);
    ck_assert_double_le(scaled_err(c1, c2, sc, M, N, N), 1e-5);
    memset(c1, 0, sizeof(float) * M * N);
    dm_bgemm_pack(Wp, Wt + (size_t)j0 * (K + 4), K + 4, K, N, DM_BGEMM_NK);
    dm_bgemm(c1, N, A, K, Wp, NULL, M, N, K, 0, NULL);
    ck_assert_double_le(scaled_err(c1, c2, sc, M, N, N), 1e-5);
    free(A), free(W), free(Wt), free(Wsub), free(Wp), free(c1), free(c2), free(sc);
}
END_TEST

/* Gemma-2-2B's linear layers (d_model 2304, 8 query heads of 256, MLP 9216) at
 * M = 512 tokens, and a slice of its unembedding (N 256000 in the model) at
 * M = 1 and M = 40 (the threads split columns), against OpenBLAS on the
 * bf16-rounded A and the widened W (the same products, summed in another
 * order); every row summed the same way whatever the threads: same bits on one. */
START_TEST(gemma_shapes_match_openblas)
{
    static const int shapes[][3] = {{512, 2048, 2304}, {512, 9216, 2304}, {512, 2304, 9216},
                                    {1, 25600, 2304},  {40, 6400, 2304}};
    rng_state = 11;
    double worst = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        if (!dm_bgemm_available() && M > 24)
            M = 24; /* the C micro-kernel is slow */
        float *A = random_floats((size_t)M * K, -1, 1), *Ar = dm_xmalloc(sizeof(float) * M * K);
        uint16_t *W = random_bf16((size_t)K * N, -0.1f, 0.1f);
        float *Wf = dm_xmalloc(sizeof(float) * K * N);
        for (size_t i = 0; i < (size_t)M * K; i++)
            Ar[i] = round_bf16(A[i]);
        for (size_t i = 0; i < (size_t)K * N; i++)
            Wf[i] = dm_bf16_to_f32(W[i]);
        uint16_t *Wp = dm_xmalloc_aligned(2 * dm_bgemm_packed_size(K, N));
        float *c1 = dm_xmalloc(sizeof(float) * M * N), *c2 = dm_xmalloc(sizeof(float) * M * N);
        double *sc = dm_xmalloc(sizeof(double) * M * N);
        dm_bgemm_pack(Wp, W, N, K, N, DM_BGEMM_KN);
        dm_bgemm(c1, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, Ar, K, Wf, N, 0.0f, c2, N);
        /* the scales: |bf16(A)| @ |W| */
        for (size_t i = 0; i < (size_t)M * K; i++)
            Ar[i] = fabsf(Ar[i]);
        for (size_t i = 0; i < (size_t)K * N; i++)
            Wf[i] = fabsf(Wf[i]);
        float *s32 = dm_xmalloc(sizeof(float) * M * N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, Ar, K, Wf, N, 0.0f, s32, N);
        for (size_t i = 0; i < (size_t)M * N; i++)
            sc[i] = s32[i];
        double e = scaled_err(c1, c2, sc, M, N, N);
        ck_assert_msg(e <= 1e-5, "M %d N %d K %d: %g", M, N, K, e);
        worst = e > worst ? e : worst;
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        dm_bgemm(c2, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        omp_set_num_threads(nt);
        ck_assert_mem_eq(c1, c2, sizeof(float) * M * N);
        free(A), free(Ar), free(W), free(Wf), free(Wp), free(c1), free(c2), free(sc), free(s32);
    }
    fprintf(stderr, "test_bgemm: worst error against OpenBLAS at Gemma's shapes %.2g of sum |a w|\n", worst);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("bgemm");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, pack_layout);
    tcase_add_test(tc, pack_sources);
    tcase_add_test(tc, fast_matches_reference);
    tcase_add_test(tc, matches_fp32_product);
    tcase_add_test(tc, strided_pack);
    tcase_add_test(tc, gemma_shapes_match_openblas);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
