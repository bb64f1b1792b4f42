/*
 * test_sgemm.c: the packed-weight GEMM of operators/sgemm.c against its plain
 * triple loop (dm_sgemm_ref) and against OpenBLAS, on shapes that exercise every
 * edge of the blocking: M, N and K below, at and past one tile (MR 12, NR 32),
 * one block (MC 96, NC 384, KC 1536), odd strides; both layouts (Strassen's
 * seven matrices when K and N are even and at least 32, else W whole) and, with
 * Strassen, odd M (a row left to the classic product) and M below two tiles (all
 * classic); with and without bias, accumulating into C, and with a row function.
 *
 * Tolerance: 1e-5 relative (max |fast - ref| / max |ref|): the same float32
 * inputs summed in another order, and through Strassen's sums, differ by about
 * 1e-6 at K = 1000; a wrong index, sign or lost block is of order 1.
 *
 * Without AVX-512F (or with DMICA_NO_AVX512=1, as make test-unit runs it too)
 * the same tests run dm_sgemm's plain C micro-kernel, on fewer rows for the
 * model's shapes (it is slow; the runners use OpenBLAS there).
 */
#include "sgemm.h"

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

static double rel_err(const float *a, const float *b, int M, int N, int ld)
{
    double num = 0, den = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double d = fabs((double)a[(size_t)i * ld + j] - b[(size_t)i * ld + j]);
            num = d > num || isnan(d) ? d : num;
            den = fabs(b[(size_t)i * ld + j]) > den ? fabs(b[(size_t)i * ld + j]) : den;
        }
    return den > 0 ? num / den : num;
}

static void halve(float *row, int n)
{
    for (int j = 0; j < n; j++)
        row[j] = 0.5f * row[j] - 1.0f;
}

START_TEST(pack_layout)
{
    int K = 3, N = 40;
    float W[3 * 40], *P = dm_xmalloc_aligned(sizeof(float) * dm_sgemm_packed_floats(K, N));
    ck_assert_int_eq(dm_sgemm_packed_floats(K, N), 2 * 32 * 3);
    for (int i = 0; i < K * N; i++)
        W[i] = (float)i;
    dm_sgemm_pack(P, W, N, K, N);
    /* panel 0: k-major rows of 32 columns; panel 1: 8 real columns, then zeros */
    ck_assert_float_eq(P[0], W[0]);
    ck_assert_float_eq(P[32 + 5], W[40 + 5]);
    ck_assert_float_eq(P[96 + 2 * 32 + 7], W[2 * 40 + 32 + 7]);
    ck_assert_float_eq(P[96 + 2 * 32 + 8], 0.0f);
    free(P);
}
END_TEST

START_TEST(fast_matches_reference)
{
    if (!dm_sgemm_available())
        fprintf(stderr, "test_sgemm: the plain C micro-kernel (no AVX-512F, or DMICA_NO_AVX512 set)\n");
    static const int shapes[][3] = {{1, 1, 1},    {5, 7, 3},      {12, 32, 16},  {13, 33, 17},
                                    {37, 70, 48}, {200, 96, 385}, {193, 400, 64}, {64, 31, 800},
                                    {7, 2304, 9}, {40, 64, 0},      {12, 64, 64},  {50, 1000, 1000},
                                    {100, 128, 66}, {25, 32, 32},   {30, 64, 3200}, {20, 33, 1700}};
    rng_state = 7;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], lda = K + 3, ldc = N + 5;
        float *A = random_floats((size_t)M * lda, -2, 2), *W = random_floats((size_t)K * N, -1, 1);
        float *bias = random_floats(N, -1, 1), *C0 = random_floats((size_t)M * ldc, -1, 1);
        float *Wp = dm_xmalloc_aligned(sizeof(float) * (dm_sgemm_packed_floats(K, N) + 1));
        float *c1 = dm_xmalloc(sizeof(float) * M * ldc), *c2 = dm_xmalloc(sizeof(float) * M * ldc);
        dm_sgemm_pack(Wp, W, N, K, N);
        for (int v = 0; v < 4; v++) {
            const float *b = v & 1 ? bias : NULL;
            int flags = v & 2 ? DM_SGEMM_ACCUMULATE : 0;
            memcpy(c1, C0, sizeof(float) * M * ldc);
            memcpy(c2, C0, sizeof(float) * M * ldc);
            dm_sgemm(c1, ldc, A, lda, Wp, b, M, N, K, flags, NULL);
            dm_sgemm_ref(c2, ldc, A, lda, W, b, M, N, K, flags, NULL);
            ck_assert_msg(rel_err(c1, c2, M, N, ldc) <= 1e-5, "M %d N %d K %d variant %d: %g", M,
                          N, K, v, rel_err(c1, c2, M, N, ldc));
            /* the padding columns between N and ldc are left alone */
            for (int i = 0; i < M; i++)
                for (int j = N; j < ldc; j++)
                    ck_assert_float_eq(c1[(size_t)i * ldc + j], C0[(size_t)i * ldc + j]);
        }
        dm_sgemm(c1, ldc, A, lda, Wp, bias, M, N, K, 0, halve);
        dm_sgemm_ref(c2, ldc, A, lda, W, bias, M, N, K, 0, halve);
        ck_assert_double_le(rel_err(c1, c2, M, N, ldc), 1e-5);
        free(A), free(W), free(bias), free(C0), free(Wp), free(c1), free(c2);
    }
}
END_TEST

/* A panel of a wider matrix (the SAE packs W_enc 512 columns at a time): packing
 * with the row stride of the whole gives the panel's product. */
START_TEST(strided_pack)
{
    int M = 40, K = 64, ldw = 200, j0 = 37, N = 96;
    rng_state = 5;
    float *A = random_floats((size_t)M * K, -1, 1), *W = random_floats((size_t)K * ldw, -1, 1);
    float *Wsub = dm_xmalloc(sizeof(float) * K * N);
    for (int k = 0; k < K; k++)
        memcpy(Wsub + (size_t)k * N, W + (size_t)k * ldw + j0, sizeof(float) * N);
    float *Wp = dm_xmalloc_aligned(sizeof(float) * dm_sgemm_packed_floats(K, N));
    float *c1 = dm_xmalloc(sizeof(float) * M * N), *c2 = dm_xmalloc(sizeof(float) * M * N);
    dm_sgemm_pack(Wp, W + j0, ldw, K, N);
    dm_sgemm(c1, N, A, K, Wp, NULL, M, N, K, 0, NULL);
    dm_sgemm_ref(c2, N, A, K, Wsub, NULL, M, N, K, 0, NULL);
    ck_assert_double_le(rel_err(c1, c2, M, N, N), 1e-5);
    free(A), free(W), free(Wsub), free(Wp), free(c1), free(c2);
}
END_TEST

/* The model's own shapes (M = 4 windows of 128 tokens) against OpenBLAS, and on
 * one thread against the default threads. */
START_TEST(gpt2_shapes_match_openblas)
{
    static const int shapes[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    rng_state = 11;
    int M = dm_sgemm_available() ? 512 : 48; /* the C micro-kernel is slow */
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        float *A = random_floats((size_t)M * K, -1, 1), *W = random_floats((size_t)K * N, -0.1f, 0.1f);
        float *Wp = dm_xmalloc_aligned(sizeof(float) * dm_sgemm_packed_floats(K, N));
        float *c1 = dm_xmalloc(sizeof(float) * M * N), *c2 = dm_xmalloc(sizeof(float) * M * N);
        dm_sgemm_pack(Wp, W, N, K, N);
        dm_sgemm(c1, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, W, N, 0.0f, c2, N);
        ck_assert_double_le(rel_err(c1, c2, M, N, N), 1e-5);
        /* every row is summed the same way whatever the threads: same bits on one */
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        dm_sgemm(c2, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        omp_set_num_threads(nt);
        ck_assert_mem_eq(c1, c2, sizeof(float) * M * N);
        free(A), free(W), free(Wp), free(c1), free(c2);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sgemm");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, pack_layout);
    tcase_add_test(tc, fast_matches_reference);
    tcase_add_test(tc, strided_pack);
    tcase_add_test(tc, gpt2_shapes_match_openblas);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
