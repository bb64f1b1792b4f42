/*
 * test_fastica.c: the FastICA kernels of operators/fastica.c, against
 *   - numpy: the legacy RandomState(42) normals that sklearn's w_init draws
 *     (values printed by numpy 1.24, exact to the last bit);
 *   - the "ref" backend (fastica.h's table): every backend's sums (the "cpu"
 *     float32 GEMMs + rational tanh against double row-by-row libm), with S
 *     seeds stacked, across uneven chunks, merges and thread counts;
 *   - planted data: independent super- and sub-Gaussian sources mixed by a
 *     known non-orthogonal matrix are recovered (Amari distance < 0.01, the
 *     patterns match the mixing columns with |cos| > 0.99);
 *   - matching across seeds: a known permutation with sign flips is found.
 * Agreement with scikit-learn itself is checked by tests/cli/test_ica.sh.
 *
 * Tolerances: the fast sums differ from the reference by float32 rounding of
 * W z and of a block's g^T z (relative 1e-6 per term), so they are held to
 * 1e-5 of the sums' scale; whole fits started from the same W converge to the
 * same fixed point to about 1e-5.
 */
#include "fastica.h"

#include "dm.h"
#include "stats.h"
#include "test.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


/* Planted mixture: rows x d = S (rows x k, unit variance, independent,
 * Laplace / uniform / binary-ish / cubed normal) times A^T (A d x k, entries
 * N(0,1) + 0.5: not orthogonal), plus an offset. A is returned (d x k). */
static float *planted(int64_t rows, int64_t k, int64_t d, double *A, uint64_t seed)
{
    test_rng = seed;
    for (int64_t i = 0; i < d * k; i++)
        A[i] = sqrt(-2 * log(test_rng_uniform())) * cos(6.283185307179586 * test_rng_uniform()) + 0.5;
    double *S = dm_xmalloc((size_t)(rows * k) * sizeof(double));
    for (int64_t j = 0; j < k; j++) {
        double m = 0, v = 0;
        for (int64_t r = 0; r < rows; r++) {
            double u = test_rng_uniform(), s;
            switch (j % 4) {
            case 0: s = u < 0.5 ? log(2 * u) : -log(2 - 2 * u); break;          /* Laplace: super */
            case 1: s = 2 * u - 1; break;                                      /* uniform: sub */
            case 2: s = (u < 0.5 ? -1 : 1) * (1 + 0.1 * test_rng_uniform()); break; /* bimodal: sub */
            default: {
                double g = sqrt(-2 * log(test_rng_uniform())) * cos(6.283185307179586 * u);
                s = g * g * g; /* super */
            }
            }
            S[r * k + j] = s;
            m += s;
        }
        m /= (double)rows;
        for (int64_t r = 0; r < rows; r++)
            v += (S[r * k + j] - m) * (S[r * k + j] - m);
        v = sqrt(v / (double)rows);
        for (int64_t r = 0; r < rows; r++)
            S[r * k + j] = (S[r * k + j] - m) / v;
    }
    float *X = dm_xmalloc((size_t)(rows * d) * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < d; t++) {
            double x = 1.5;
            for (int64_t j = 0; j < k; j++)
                x += A[t * k + j] * S[r * k + j];
            X[r * d + t] = (float)x;
        }
    free(S);
    return X;
}

/* Whitens X (rows x d) with all its components: z (rows x d), and the
 * whitening matrix Wh (d x d) and mean (d) used. */
static float *whiten(const float *X, int64_t rows, int64_t d, double *Wh, double *mean)
{
    dm_covariance c = DM_COVARIANCE_INIT;
    dm_pca p = DM_PCA_INIT;
    double *cov = dm_xmalloc((size_t)(d * d) * sizeof(double));
    dm_covariance_init(&c, d);
    dm_covariance_update(&c, X, rows);
    ck_assert_int_eq(dm_covariance_finalize(&c, cov, mean), 0);
    ck_assert_int_eq(dm_pca_fit(&p, cov, d), 0);
    ck_assert_int_eq(dm_pca_whitening(&p, d, 1e-10, Wh), d);
    float *z = dm_xmalloc((size_t)(rows * d) * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < d; i++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++)
                s += Wh[i * d + t] * (X[r * d + t] - mean[t]);
            z[r * d + i] = (float)s;
        }
    dm_covariance_free(&c);
    dm_pca_free(&p);
    free(cov);
    return z;
}

START_TEST(numpy_random_state)
{
    /* np.random.RandomState(42).normal(size=(3, 3)).ravel() */
    const double want[9] = {0.49671415301123267, -0.13826430117118466, 0.64768853810069249,
                            1.5230298564080254,  -0.23415337472333597, -0.23413695694918055,
                            1.5792128155073915,  0.76743472915290878,  -0.46947438593495211};
    double W[9];
    dm_ica_w_init(W, 3, 42);
    for (int i = 0; i < 9; i++)
        ck_assert_msg(W[i] == want[i], "w_init[%d] = %.17g, numpy %.17g", i, W[i], want[i]);
    /* RandomState(0).random_sample() = 0.5488135039273248 */
    dm_np_random r;
    dm_np_random_seed(&r, 0);
    ck_assert(dm_np_random_double(&r) == 0.5488135039273248);
}
END_TEST

START_TEST(tanh_accuracy)
{
    int64_t n = 400001;
    float *x = dm_xmalloc((size_t)n * sizeof(float)), *y = dm_xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((i - n / 2) * 1e-4);
    dm_tanhf_vec(y, x, n);
    double worst = 0;
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(y[i] - tanh((double)x[i])));
    ck_assert_msg(worst < 1e-6, "tanh error %g", worst);
    free(x), free(y);
}
END_TEST

/* Every entry of the backend table; "ref" first. */
/* ref, cpu, and cuda where libdmica-cuda.so sees a GPU (gpu/fastica.cu);
 * listed inside each test: CUDA must not start before Check forks. */
static const dm_ica_backend *backends[3];
static int NBACKENDS;
static void list_backends(void)
{
    backends[0] = &dm_ica_backend_ref;
    backends[1] = &dm_ica_backend_cpu;
    NBACKENDS = 2;
    if (dm_ica_backend_cuda())
        backends[NBACKENDS++] = dm_ica_backend_cuda();
}

START_TEST(backend_choice)
{
    dm_compute c = *dm_compute_default();
    c.reference = 1;
    ck_assert_ptr_eq(dm_ica_backend_for(&c), &dm_ica_backend_ref);
    c.reference = 0;
    ck_assert_ptr_eq(dm_ica_backend_for(&c), &dm_ica_backend_cpu);
    ck_assert_str_eq(dm_ica_backend_ref.name, "ref");
    ck_assert_str_eq(dm_ica_backend_cpu.name, "cpu");
    dm_ica_sums a = DM_ICA_SUMS_INIT, b = DM_ICA_SUMS_INIT;
    dm_ica_sums_init(&a, 6, 3, &c), dm_ica_sums_init(&b, 3, 3, &c);
    ck_assert_int_eq(dm_ica_sums_merge(&a, &b), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_ica_sums_free(&a), dm_ica_sums_free(&b);
}
END_TEST

/* Every backend's sums against "ref", on one thread and on three. */
START_TEST(sums_backends_match_reference)
{
    list_backends();
    const int64_t k = 7, S = 3, rows = 20011;
    double A[49], Wd[3 * 49];
    float *X = planted(rows, k, k, A, 11);
    for (int s = 0; s < S; s++) {
        dm_ica_w_init(Wd + s * k * k, k, (uint32_t)(5 + s));
        ck_assert_int_eq(dm_ica_symdecorr(Wd + s * k * k, k), 0);
    }
    for (int v = 0; v < 2 * NBACKENDS; v++) {
        const dm_ica_backend *be = backends[v / 2];
        dm_compute cc = *dm_compute_default();
        cc.threads = v % 2 ? 3 : 1;
        for (dm_ica_fun f = DM_ICA_LOGCOSH; f <= DM_ICA_CUBE; f++) {
            dm_ica_sums a = DM_ICA_SUMS_INIT, b = DM_ICA_SUMS_INIT, c = DM_ICA_SUMS_INIT;
            dm_ica_sums_init(&a, S * k, k, &cc), dm_ica_sums_init(&b, S * k, k, &cc);
            dm_ica_sums_init(&c, S * k, k, &cc);
            /* the backend in uneven chunks, two accumulators merged; reference in one go;
             * on three threads with the rows held (a matrix iterated in memory) where the
             * backend holds them */
            int held = be->hold && v % 2;
            if (held)
                be->hold(X, rows, k);
            be->sums_update(&a, f, 1.3, Wd, S * k, X, 9000);
            be->sums_update(&b, f, 1.3, Wd, S * k, X + 9000 * k, 10000);
            be->sums_update(&b, f, 1.3, Wd, S * k, X + 19000 * k, rows - 19000);
            if (held)
                be->hold(NULL, 0, 0);
            ck_assert_int_eq(dm_ica_sums_merge(&a, &b), 0);
            dm_ica_backend_ref.sums_update(&c, f, 1.3, Wd, S * k, X, rows);
            ck_assert_int_eq(a.n, rows);
            double scale = (double)rows;
            for (int64_t i = 0; i < S * k * k; i++)
                ck_assert_msg(fabs(a.gz[i] - c.gz[i]) < 1e-5 * (scale + fabs(c.gz[i])), "%s fun %d gz[%lld] %g vs %g",
                              be->name, f, (long long)i, a.gz[i], c.gz[i]);
            for (int64_t i = 0; i < S * k; i++)
                ck_assert_msg(fabs(a.dg[i] - c.dg[i]) < 1e-5 * (scale + fabs(c.dg[i])), "%s fun %d dg[%lld] %g vs %g",
                              be->name, f, (long long)i, a.dg[i], c.dg[i]);
            /* only the first mrows rows move */
            dm_ica_sums_reset(&a);
            be->sums_update(&a, f, 1.3, Wd, k, X, 100);
            for (int64_t i = k * k; i < S * k * k; i++)
                ck_assert(a.gz[i] == 0.0);
            dm_ica_sums_free(&a), dm_ica_sums_free(&b), dm_ica_sums_free(&c);
        }
    }
    free(X);
}
END_TEST

START_TEST(symdecorr_orthogonal)
{
    const int64_t k = 9;
    double W[81];
    dm_ica_w_init(W, k, 3);
    ck_assert_int_eq(dm_ica_symdecorr(W, k), 0);
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
            double s = 0;
            for (int64_t t = 0; t < k; t++)
                s += W[i * k + t] * W[j * k + t];
            ck_assert_msg(fabs(s - (i == j)) < 1e-12, "W W^T [%lld,%lld] = %g", (long long)i, (long long)j, s);
        }
    W[4] = NAN;
    ck_assert_int_eq(dm_ica_symdecorr(W, k), -1);
}
END_TEST

/* Recovery of planted sources, fast vs reference, and determinism. */
START_TEST(planted_recovery)
{
    const int64_t k = 8, rows = 100000;
    double A[64], Wh[64], mean[8], W[64], W2[64], Wr[64];
    float *X = planted(rows, k, k, A, 7);
    float *z = whiten(X, rows, k, Wh, mean);
    dm_ica_result res, res2, resr;
    dm_ica_w_init(W, k, 42);
    memcpy(W2, W, sizeof W);
    memcpy(Wr, W, sizeof W);
    dm_compute cpu = *dm_compute_default(), ref = cpu;
    ref.reference = 1;
    ck_assert_int_eq(dm_ica_fit(W, k, z, rows, DM_ICA_LOGCOSH, 1.0, 1e-4, 200, &cpu, &res), 0);
    ck_assert_msg(res.converged, "no convergence in %d iterations (lim %g)", res.iterations, res.lim);
    ck_assert_int_eq(dm_ica_fit(W2, k, z, rows, DM_ICA_LOGCOSH, 1.0, 1e-4, 200, &cpu, &res2), 0);
    ck_assert_int_eq(memcmp(W, W2, sizeof W), 0); /* same seed, same result, bit for bit */
    ck_assert_int_eq(dm_ica_fit(Wr, k, z, rows, DM_ICA_LOGCOSH, 1.0, 1e-4, 200, &ref, &resr), 0);
    ck_assert(resr.converged);
    for (int i = 0; i < 64; i++)
        ck_assert_msg(fabs(W[i] - Wr[i]) < 1e-4, "fast vs reference W[%d] %g vs %g", i, W[i], Wr[i]);

    /* P = filters A = W Wh A (sources back out of x) */
    double F[64], P[64];
    for (int64_t i = 0; i < k; i++)
        for (int64_t t = 0; t < k; t++) {
            double s = 0;
            for (int64_t j = 0; j < k; j++)
                s += W[i * k + j] * Wh[j * k + t];
            F[i * k + t] = s;
        }
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
            double s = 0;
            for (int64_t t = 0; t < k; t++)
                s += F[i * k + t] * A[t * k + j];
            P[i * k + j] = s;
        }
    double am = dm_amari_distance(P, k);
    ck_assert_msg(am < 0.01, "Amari distance %g", am);
    /* patterns: columns of mixing = F^-1 (x - mean = mixing s); each must be a column of A */
    double Mx[64], Minv[64] = {0};
    lapack_int piv[8];
    for (int i = 0; i < 8; i++)
        Minv[i * 9] = 1.0;
    memcpy(Mx, F, sizeof F);
    ck_assert_int_eq(LAPACKE_dgesv(LAPACK_ROW_MAJOR, 8, 8, Mx, 8, piv, Minv, 8), 0); /* Minv <- F^-1 */
    for (int64_t i = 0; i < k; i++) {
        double best = 0;
        for (int64_t j = 0; j < k; j++) {
            double dot = 0, na = 0, nm = 0;
            for (int64_t t = 0; t < k; t++) {
                dot += Minv[t * k + i] * A[t * k + j];
                na += A[t * k + j] * A[t * k + j];
                nm += Minv[t * k + i] * Minv[t * k + i];
            }
            best = fmax(best, fabs(dot) / sqrt(na * nm));
        }
        ck_assert_msg(best > 0.99, "pattern %lld: best |cos| with a mixing column %g", (long long)i, best);
    }
    free(X), free(z);
}
END_TEST

START_TEST(seed_matching_permutation_and_signs)
{
    const int64_t k = 12;
    double A[144], B[144], cosv[12];
    int64_t perm[12] = {3, 0, 11, 5, 1, 9, 2, 7, 10, 4, 8, 6}, match[12];
    int sign[12];
    dm_ica_w_init(A, k, 1);
    ck_assert_int_eq(dm_ica_symdecorr(A, k), 0);
    /* B's row perm[i] is row i of A, sign-flipped on odd i, slightly perturbed */
    for (int64_t i = 0; i < k; i++)
        for (int64_t t = 0; t < k; t++)
            B[perm[i] * k + t] = (i % 2 ? -1 : 1) * A[i * k + t] + 1e-3 * ((t * 7 + i) % 5 - 2);
    dm_ica_match(A, B, k, k, match, sign, cosv);
    for (int64_t i = 0; i < k; i++) {
        ck_assert_int_eq(match[i], perm[i]);
        ck_assert_int_eq(sign[i], i % 2 ? -1 : 1);
        ck_assert(cosv[i] > 0.99);
    }
    /* Hungarian on a case greedy gets wrong: greedy takes (0,0)=0 then (1,1)=10 */
    double cost[4] = {0, 1, 1, 10};
    int64_t as[2];
    dm_hungarian(cost, 2, as);
    ck_assert_int_eq(as[0], 1);
    ck_assert_int_eq(as[1], 0);
}
END_TEST

START_TEST(amari_distance_values)
{
    double Pm[4] = {0, 2, -3, 0}; /* scaled permutation: 0 */
    ck_assert(dm_amari_distance(Pm, 2) == 0.0);
    double P[4] = {1, 1, 0, 1}; /* rows: 1 + 0; cols: 0 + 1 -> 2 / (2*2*1) */
    ck_assert(fabs(dm_amari_distance(P, 2) - 0.5) < 1e-15);
}
END_TEST

START_TEST(non_convergence_is_reported)
{
    const int64_t k = 6, rows = 20000;
    double A[36], Wh[36], mean[6], W[36];
    float *X = planted(rows, k, k, A, 9);
    float *z = whiten(X, rows, k, Wh, mean);
    dm_ica_result res;
    dm_ica_w_init(W, k, 0);
    ck_assert_int_eq(dm_ica_fit(W, k, z, rows, DM_ICA_LOGCOSH, 1.0, 1e-12, 2, dm_compute_default(), &res), 0);
    ck_assert_int_eq(res.converged, 0);
    ck_assert_int_eq(res.iterations, 2);
    z[5] = NAN; /* a NaN row: a clear failure, not a silent answer */
    dm_ica_w_init(W, k, 0);
    ck_assert_int_eq(dm_ica_fit(W, k, z, rows, DM_ICA_LOGCOSH, 1.0, 1e-4, 5, dm_compute_default(), &res), -1);
    ck_assert(strstr(dm_error(), "non-finite") != NULL);
    free(X), free(z);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fastica");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, numpy_random_state);
    tcase_add_test(tc, tanh_accuracy);
    tcase_add_test(tc, backend_choice);
    tcase_add_test(tc, sums_backends_match_reference);
    tcase_add_test(tc, symdecorr_orthogonal);
    tcase_add_test(tc, planted_recovery);
    tcase_add_test(tc, seed_matching_permutation_and_signs);
    tcase_add_test(tc, amari_distance_values);
    tcase_add_test(tc, non_convergence_is_reported);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
