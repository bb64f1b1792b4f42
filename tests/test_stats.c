/*
 * test_stats.c: the statistics kernels of operators/stats.c, against
 *   - their own plain reference versions (fast chunked update vs row-by-row
 *     Welford/Terriberry; dsyrk/dgemm vs double outer products) on random,
 *     heavy-tailed data with large column offsets, split into uneven chunks;
 *   - the merge formulas themselves (any split, any grouping, same result);
 *   - closed forms small enough to do by hand;
 *   - numpy/scipy (tests/golden/stats/, written by make_stats_golden.py);
 *   - every backend of the table (stats.h) against "ref", the projection
 *     included (its tolerance is stated at projection_backends_match_reference).
 *
 * Tolerances, and why. Every path accumulates in double from the same float32
 * inputs, so paths differ only in the order of roundings: relative error of
 * order n * 1e-16 for n <= 1e4 rows, i.e. about 1e-12. We assert 1e-10 between
 * our two paths and 1e-9 against numpy/scipy (whose summation order, pairwise
 * sums, differs more from ours), each measured against the quantity's natural
 * scale rather than its own size: a mean against the column's standard
 * deviation, a covariance entry against sqrt(C_ii C_jj), skewness and kurtosis
 * (dimensionless, of order one) absolutely, eigenvalues against the largest.
 * A near-zero skew compared relatively to itself would fail on noise that no
 * user could ever see.
 *
 * Runs from the repository root (make test-unit does) so tests/golden is found.
 */
#include "stats.h"

#include "dm.h"
#include "npy.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/golden/stats/"

/* ---- data ----------------------------------------------------------------- */


/* (rows, d) float32: skewed, heavy-tailed columns (a normal plus a fraction of
 * its cube, exponentials), mixed with the neighbour column for correlation,
 * with offsets up to 300 to make centring matter. Caller frees. */
static float *random_data(int64_t rows, int64_t d, uint64_t seed)
{
    float *x = dm_xmalloc((size_t)(rows * d) * sizeof(float));
    test_rng = seed;
    for (int64_t i = 0; i < rows; i++) {
        double prev = 0.0;
        for (int64_t j = 0; j < d; j++) {
            double g = test_rng_normal(), v;
            switch (j % 3) {
            case 0: v = g + 0.3 * g * g * g; break;
            case 1: v = -log(test_rng_uniform()); break;
            default: v = g; break;
            }
            x[i * d + j] = (float)(v + 0.5 * prev + (double)(j % 7) * 50.0 * (j % 2 ? 1 : -1) +
                                   (j == 1 ? 300.0 : 0.0));
            prev = v;
        }
    }
    return x;
}

/* Uneven chunk boundaries: sizes 1, 7, 500, 1 and then 1499-row pieces. */
static int64_t next_chunk(int64_t done, int64_t rows)
{
    static const int64_t first[] = {1, 7, 500, 1};
    int64_t want = 1499;
    for (int i = 0, at = 0; i < 4; at += (int)first[i], i++)
        if (done == at)
            want = first[i];
    return rows - done < want ? rows - done : want;
}

/* ---- comparisons ------------------------------------------------------------ */

/* Asserts |got - want| <= tol * scale for n values; names the worst index. */
static void assert_close(const char *what, const double *got, const double *want,
                         const double *scale, double scalar_scale, int64_t n, double tol)
{
    double worst = 0.0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        double s = scale ? scale[i] : scalar_scale;
        double err = fabs(got[i] - want[i]) / s;
        if (!(err <= worst)) /* also catches NaN */
            worst = err, at = i;
    }
    ck_assert_msg(worst <= tol, "%s: error %.3g (scaled) at [%lld]: got %.17g want %.17g, tol %g",
                  what, worst, (long long)at, at >= 0 ? got[at] : 0.0, at >= 0 ? want[at] : 0.0,
                  tol);
}

/* Finalized moments of two accumulators agree: mean to tol * std, var to tol
 * relative, skew and kurtosis to tol absolute. */
static void assert_moments_close(const char *what, const dm_moments *a, const dm_moments *b,
                                 double tol)
{
    int64_t d = a->d;
    double *buf = dm_xmalloc((size_t)(9 * d) * sizeof(double));
    double *mean[2] = {buf, buf + d}, *var[2] = {buf + 2 * d, buf + 3 * d};
    double *skew[2] = {buf + 4 * d, buf + 5 * d}, *kurt[2] = {buf + 6 * d, buf + 7 * d};
    double *std = buf + 8 * d;
    ck_assert_int_eq(a->n, b->n);
    dm_moments_finalize(a, mean[0], var[0], skew[0], kurt[0]);
    dm_moments_finalize(b, mean[1], var[1], skew[1], kurt[1]);
    for (int64_t j = 0; j < d; j++)
        std[j] = sqrt(var[1][j]);
    char name[128];
    snprintf(name, sizeof name, "%s mean", what);
    assert_close(name, mean[0], mean[1], std, 0, d, tol);
    snprintf(name, sizeof name, "%s var", what);
    assert_close(name, var[0], var[1], var[1], 0, d, tol);
    snprintf(name, sizeof name, "%s skew", what);
    assert_close(name, skew[0], skew[1], NULL, 1.0, d, tol);
    snprintf(name, sizeof name, "%s kurtosis", what);
    assert_close(name, kurt[0], kurt[1], NULL, 1.0, d, tol);
    free(buf);
}

/* scale[i*d+j] = sqrt(cov_ii cov_jj), for comparing covariance entries. */
static double *cov_scale(const double *cov, int64_t d)
{
    double *s = dm_xmalloc((size_t)(d * d) * sizeof(double));
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < d; j++)
            s[i * d + j] = sqrt(cov[i * d + i] * cov[j * d + j]);
    return s;
}

static void assert_cov_close(const char *what, const dm_covariance *a, const dm_covariance *b,
                             double tol)
{
    int64_t d = a->d;
    double *ca = dm_xmalloc((size_t)(2 * d * d + 2 * d) * sizeof(double));
    double *cb = ca + d * d, *ma = cb + d * d, *mb = ma + d;
    ck_assert_int_eq(a->n, b->n);
    ck_assert_int_eq(dm_covariance_finalize(a, ca, ma), 0);
    ck_assert_int_eq(dm_covariance_finalize(b, cb, mb), 0);
    double *s = cov_scale(cb, d), std[d];
    for (int64_t j = 0; j < d; j++)
        std[j] = sqrt(cb[j * d + j]);
    char name[128];
    snprintf(name, sizeof name, "%s covariance", what);
    assert_close(name, ca, cb, s, 0, d * d, tol);
    snprintf(name, sizeof name, "%s mean", what);
    assert_close(name, ma, mb, std, 0, d, tol);
    free(s);
    free(ca);
}

/* ---- golden files ------------------------------------------------------------- */

static void load_golden(const char *name, dm_tensor *t, dm_dtype dtype, int64_t numel)
{
    char path[256];
    snprintf(path, sizeof path, GOLDEN "%s.npy", name);
    ck_assert_msg(dm_npy_load(path, t) == 0, "%s", dm_error());
    ck_assert_msg(t->dtype == dtype && dm_tensor_numel(t) == numel,
                  "%s: dtype %s, %lld values; expected %s, %lld (regenerate with "
                  "tests/golden/make_stats_golden.py)",
                  path, dm_dtype_name(t->dtype), (long long)dm_tensor_numel(t),
                  dm_dtype_name(dtype), (long long)numel);
}

/* ---- moments ----------------------------------------------------------------- */

START_TEST(moments_fast_matches_reference)
{
    /* 77 columns: one full tile of 64 and a ragged one; the 1499-row chunks
     * reach the OpenMP threshold, the small ones run on one thread. */
    int64_t rows = 6011, d = 77;
    float *x = random_data(rows, d, 1);
    dm_moments fast, ref;
    dm_moments_init(&fast, d);
    dm_moments_init(&ref, d);
    for (int64_t done = 0, nb; done < rows; done += nb) {
        nb = next_chunk(done, rows);
        dm_moments_update(&fast, x + done * d, nb);
    }
    dm_moments_update_ref(&ref, x, rows);
    assert_moments_close("fast vs reference", &fast, &ref, 1e-10);

    /* One chunk of everything is the textbook two-pass algorithm. */
    dm_moments_reset(&fast);
    dm_moments_update(&fast, x, rows);
    assert_moments_close("one chunk vs reference", &fast, &ref, 1e-10);
    dm_moments_free(&fast);
    dm_moments_free(&ref);
    free(x);
}
END_TEST

START_TEST(moments_merge_any_grouping)
{
    int64_t rows = 3000, d = 9, cut1 = 17, cut2 = 2100;
    float *x = random_data(rows, d, 2);
    dm_moments a, b, c, whole, empty;
    dm_moments_init(&a, d);
    dm_moments_init(&b, d);
    dm_moments_init(&c, d);
    dm_moments_init(&whole, d);
    dm_moments_init(&empty, d);
    dm_moments_update(&whole, x, rows);

    /* (a + b) + c */
    dm_moments_update(&a, x, cut1);
    dm_moments_update(&b, x + cut1 * d, cut2 - cut1);
    dm_moments_update(&c, x + cut2 * d, rows - cut2);
    dm_moments left = DM_MOMENTS_INIT, right = DM_MOMENTS_INIT;
    dm_moments_init(&left, d);
    dm_moments_init(&right, d);
    ck_assert_int_eq(dm_moments_merge(&left, &a), 0);
    ck_assert_int_eq(dm_moments_merge(&left, &b), 0);
    ck_assert_int_eq(dm_moments_merge(&left, &c), 0);
    /* a + (b + c), with empty accumulators merged in on both sides */
    ck_assert_int_eq(dm_moments_merge(&b, &c), 0);
    ck_assert_int_eq(dm_moments_merge(&b, &empty), 0);
    ck_assert_int_eq(dm_moments_merge(&right, &a), 0);
    ck_assert_int_eq(dm_moments_merge(&right, &b), 0);
    assert_moments_close("(a+b)+c vs whole", &left, &whole, 1e-10);
    assert_moments_close("a+(b+c) vs whole", &right, &whole, 1e-10);

    dm_moments other;
    dm_moments_init(&other, d + 1);
    ck_assert_int_eq(dm_moments_merge(&left, &other), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "10 columns into 9"));
    dm_moments_free(&other);
    dm_moments_free(&a);
    dm_moments_free(&b);
    dm_moments_free(&c);
    dm_moments_free(&whole);
    dm_moments_free(&empty);
    dm_moments_free(&left);
    dm_moments_free(&right);
    dm_moments_free(&other); /* twice: free accepts a freed struct */
    dm_moments_free(NULL);
    free(x);
}
END_TEST

/* Columns worked by hand (population moments):
 *   [1 2 3 4]: mean 2.5, var 1.25, skew 0, m4 2.5625 -> kurtosis 2.5625/1.5625 - 3 = -1.36
 *   [0 0 0 1]: mean 0.25, var 0.1875, skew 2/sqrt(3), kurtosis 0.08203125/0.03515625 - 3 = -2/3
 *   [5 5 5 5]: mean 5, var 0, skew and kurtosis NaN (0/0)
 *   [-2 -2 2 2]: mean 0, var 4, skew 0, kurtosis 1 - 3 = -2 (two-point distribution) */
START_TEST(moments_closed_forms)
{
    static const float x[4 * 4] = {1, 0, 5, -2, 2, 0, 5, -2, 3, 0, 5, 2, 4, 1, 5, 2};
    const double want_mean[4] = {2.5, 0.25, 5, 0}, want_var[4] = {1.25, 0.1875, 0, 4};
    const double want_skew[4] = {0, 2 / sqrt(3.0), NAN, 0};
    const double want_kurt[4] = {-1.36, -2.0 / 3.0, NAN, -2};
    for (int way = 0; way < 3; way++) {
        dm_moments m;
        double mean[4], var[4], skew[4], kurt[4];
        dm_moments_init(&m, 4);
        if (way == 0)
            dm_moments_update(&m, x, 4);
        else if (way == 1)
            dm_moments_update_ref(&m, x, 4);
        else
            dm_moments_update(&m, x, 1), dm_moments_update(&m, x + 4, 3);
        dm_moments_finalize(&m, mean, var, skew, kurt);
        for (int j = 0; j < 4; j++) {
            ck_assert_double_eq_tol(mean[j], want_mean[j], 1e-15);
            ck_assert_double_eq_tol(var[j], want_var[j], 1e-15);
            if (isnan(want_skew[j])) {
                ck_assert_msg(isnan(skew[j]) && isnan(kurt[j]), "way %d col %d: %g %g", way, j,
                              skew[j], kurt[j]);
            } else {
                ck_assert_double_eq_tol(skew[j], want_skew[j], 1e-14);
                ck_assert_double_eq_tol(kurt[j], want_kurt[j], 1e-14);
            }
        }
        dm_moments_free(&m);
    }

    /* No rows: everything NaN. A constant 0.1f column whose mean rounds: NaN
     * skew (the scipy "nearly constant" rule), var at rounding level. */
    dm_moments m;
    double mean, var, skew, kurt;
    dm_moments_init(&m, 1);
    dm_moments_finalize(&m, &mean, &var, &skew, &kurt);
    ck_assert(isnan(mean) && isnan(var) && isnan(skew) && isnan(kurt));
    float tenth[3] = {0.1f, 0.1f, 0.1f};
    for (int i = 0; i < 7; i++)
        dm_moments_update(&m, tenth, 3);
    dm_moments_finalize(&m, &mean, &var, &skew, &kurt);
    ck_assert_double_eq_tol(mean, (double)0.1f, 1e-16);
    ck_assert(var < 1e-30 && isnan(skew) && isnan(kurt));
    dm_moments_free(&m);
}
END_TEST

/* ---- covariance ---------------------------------------------------------------- */

START_TEST(covariance_fast_matches_reference)
{
    /* 9000 rows of width 77: the 1499-row chunks and one 5000-row chunk
     * (more than one 4096-row dsyrk block) both occur. */
    int64_t rows = 9000, d = 77;
    float *x = random_data(rows, d, 3);
    dm_covariance fast, ref, big;
    dm_covariance_init(&fast, d);
    dm_covariance_init(&ref, d);
    dm_covariance_init(&big, d);
    ck_assert_int_lt(big.block_rows, 5000);
    for (int64_t done = 0, nb; done < rows; done += nb) {
        nb = next_chunk(done, rows);
        dm_covariance_update(&fast, x + done * d, nb);
    }
    dm_covariance_update(&big, x, 5000);
    dm_covariance_update(&big, x + 5000 * d, rows - 5000);
    dm_covariance_update_ref(&ref, x, rows);
    assert_cov_close("fast vs reference", &fast, &ref, 1e-10);
    assert_cov_close("multi-block chunk vs reference", &big, &ref, 1e-10);

    /* The covariance diagonal is the moments' variance. */
    dm_moments m;
    double var[77], cov[77 * 77];
    dm_moments_init(&m, d);
    dm_moments_update(&m, x, rows);
    dm_moments_finalize(&m, NULL, var, NULL, NULL);
    dm_covariance_finalize(&fast, cov, NULL);
    for (int64_t j = 0; j < d; j++)
        ck_assert_double_eq_tol(cov[j * d + j] / var[j], 1.0, 1e-10);
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < d; j++)
            ck_assert(cov[i * d + j] == cov[j * d + i]);
    dm_moments_free(&m);
    dm_covariance_free(&fast);
    dm_covariance_free(&ref);
    dm_covariance_free(&big);
    free(x);
}
END_TEST

START_TEST(covariance_merge_and_closed_form)
{
    int64_t rows = 2500, d = 13;
    float *x = random_data(rows, d, 4);
    dm_covariance a, b, c, whole, empty;
    dm_covariance_init(&a, d);
    dm_covariance_init(&b, d);
    dm_covariance_init(&c, d);
    dm_covariance_init(&whole, d);
    dm_covariance_init(&empty, d);
    dm_covariance_update(&whole, x, rows);
    dm_covariance_update(&a, x, 1);
    dm_covariance_update(&b, x + d, 1999);
    dm_covariance_update(&c, x + 2000 * d, 500);
    /* a + (b + c) into an empty accumulator, then an empty one merged in */
    ck_assert_int_eq(dm_covariance_merge(&b, &c), 0);
    ck_assert_int_eq(dm_covariance_merge(&empty, &a), 0);
    ck_assert_int_eq(dm_covariance_merge(&empty, &b), 0);
    dm_covariance none;
    dm_covariance_init(&none, d);
    ck_assert_int_eq(dm_covariance_merge(&empty, &none), 0);
    assert_cov_close("a+(b+c) vs whole", &empty, &whole, 1e-10);
    double dummy[1];
    ck_assert_int_eq(dm_covariance_finalize(&none, dummy, NULL), -1);
    dm_covariance_free(&none);

    /* rows (1,2), (3,4), (5,0): mean (3,2), deviations (-2,0), (0,2), (2,-2),
     * co-moment [[8,-4],[-4,8]], covariance that over 3. */
    static const float small[6] = {1, 2, 3, 4, 5, 0};
    dm_covariance s;
    double cov[4], mean[2];
    dm_covariance_init(&s, 2);
    dm_covariance_update(&s, small, 3);
    ck_assert_int_eq(dm_covariance_finalize(&s, cov, mean), 0);
    ck_assert_double_eq_tol(mean[0], 3, 1e-15);
    ck_assert_double_eq_tol(mean[1], 2, 1e-15);
    ck_assert_double_eq_tol(cov[0], 8.0 / 3, 1e-15);
    ck_assert_double_eq_tol(cov[1], -4.0 / 3, 1e-15);
    ck_assert_double_eq_tol(cov[2], -4.0 / 3, 1e-15);
    ck_assert_double_eq_tol(cov[3], 8.0 / 3, 1e-15);
    dm_covariance_free(&s);

    dm_covariance wide;
    dm_covariance_init(&wide, d + 2);
    ck_assert_int_eq(dm_covariance_merge(&wide, &whole), -1);
    dm_covariance_free(&wide);
    dm_covariance_free(&a);
    dm_covariance_free(&b);
    dm_covariance_free(&c);
    dm_covariance_free(&whole);
    dm_covariance_free(&empty);
    free(x);
}
END_TEST

START_TEST(xcovariance_matches_reference_and_covariance)
{
    int64_t rows = 5000, dx = 11, dy = 6, d = dx + dy;
    float *xy = random_data(rows, d, 5);
    float *x = dm_xmalloc((size_t)(rows * dx) * sizeof(float));
    float *y = dm_xmalloc((size_t)(rows * dy) * sizeof(float));
    for (int64_t i = 0; i < rows; i++) {
        memcpy(x + i * dx, xy + i * d, (size_t)dx * sizeof(float));
        memcpy(y + i * dy, xy + i * d + dx, (size_t)dy * sizeof(float));
    }
    dm_xcovariance fast, ref, part;
    dm_xcovariance_init(&fast, dx, dy);
    dm_xcovariance_init(&ref, dx, dy);
    dm_xcovariance_init(&part, dx, dy);
    for (int64_t done = 0, nb; done < rows; done += nb) {
        nb = next_chunk(done, rows);
        dm_xcovariance_update(done < 2000 ? &fast : &part, x + done * dx, y + done * dy, nb);
    }
    ck_assert_int_eq(dm_xcovariance_merge(&fast, &part), 0);
    dm_xcovariance_update_ref(&ref, x, y, rows);
    /* All 5000 rows in one call: more than one dgemm block. */
    dm_xcovariance_reset(&part);
    ck_assert_int_lt(part.block_rows, rows);
    dm_xcovariance_update(&part, x, y, rows);

    /* The cross block of the joint covariance of (x, y) is cov(x, y). */
    dm_covariance joint;
    dm_covariance_init(&joint, d);
    dm_covariance_update(&joint, xy, rows);
    double cj[17 * 17], cf[11 * 6], cr[11 * 6], want[11 * 6], scale[11 * 6];
    double mxf[11], myf[6], mxr[11], myr[6];
    ck_assert_int_eq(dm_covariance_finalize(&joint, cj, NULL), 0);
    ck_assert_int_eq(dm_xcovariance_finalize(&fast, cf, mxf, myf), 0);
    ck_assert_int_eq(dm_xcovariance_finalize(&ref, cr, mxr, myr), 0);
    for (int64_t i = 0; i < dx; i++)
        for (int64_t j = 0; j < dy; j++) {
            want[i * dy + j] = cj[i * d + dx + j];
            scale[i * dy + j] = sqrt(cj[i * d + i] * cj[(dx + j) * d + dx + j]);
        }
    assert_close("xcov fast vs reference", cf, cr, scale, 0, dx * dy, 1e-10);
    ck_assert_int_eq(dm_xcovariance_finalize(&part, cf, NULL, NULL), 0);
    assert_close("xcov one call vs reference", cf, cr, scale, 0, dx * dy, 1e-10);
    ck_assert_int_eq(dm_xcovariance_finalize(&fast, cf, NULL, NULL), 0);
    assert_close("xcov fast vs joint covariance", cf, want, scale, 0, dx * dy, 1e-10);
    assert_close("xcov mean_x", mxf, mxr, NULL, 1.0, dx, 1e-10);
    assert_close("xcov mean_y", myf, myr, NULL, 1.0, dy, 1e-10);

    dm_xcovariance other;
    dm_xcovariance_init(&other, dy, dx);
    ck_assert_int_eq(dm_xcovariance_merge(&fast, &other), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_xcovariance_free(&other);
    dm_covariance_free(&joint);
    dm_xcovariance_free(&fast);
    dm_xcovariance_free(&ref);
    dm_xcovariance_free(&part);
    free(x);
    free(y);
    free(xy);
}
END_TEST

/* ---- PCA ------------------------------------------------------------------------- */

/* R diag(lambda) R^T for R a product of Givens rotations; the eigenvectors are
 * R's columns, so component i is +-(column of R for the i-th largest lambda). */
START_TEST(pca_known_matrix)
{
    enum { D = 4 };
    const double lambda[D] = {1, 4, 9, 2}; /* descending: 9, 4, 2, 1 */
    double R[D * D] = {0}, A[D * D] = {0};
    for (int i = 0; i < D; i++)
        R[i * D + i] = 1;
    const int planes[3][2] = {{0, 1}, {1, 2}, {0, 3}};
    const double angles[3] = {0.3, -1.1, 2.0};
    for (int r = 0; r < 3; r++) {
        int p = planes[r][0], q = planes[r][1];
        double c = cos(angles[r]), s = sin(angles[r]);
        for (int i = 0; i < D; i++) { /* R <- R G(p, q) */
            double a = R[i * D + p], b = R[i * D + q];
            R[i * D + p] = c * a - s * b;
            R[i * D + q] = s * a + c * b;
        }
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++)
            for (int k = 0; k < D; k++)
                A[i * D + j] += R[i * D + k] * lambda[k] * R[j * D + k];

    dm_pca p;
    ck_assert_msg(dm_pca_fit(&p, A, D) == 0, "%s", dm_error());
    const int order[D] = {2, 1, 3, 0};
    const double ratio[D] = {9 / 16.0, 4 / 16.0, 2 / 16.0, 1 / 16.0};
    double cum = 0;
    for (int i = 0; i < D; i++) {
        ck_assert_double_eq_tol(p.eigenvalues[i], lambda[order[i]], 1e-13);
        ck_assert_double_eq_tol(p.explained_variance_ratio[i], ratio[i], 1e-14);
        cum += ratio[i];
        ck_assert_double_eq_tol(p.cumulative_variance_ratio[i], cum, 1e-14);
        /* Sign rule: the largest-|.| entry is positive. */
        int argmax = 0;
        for (int k = 1; k < D; k++)
            if (fabs(R[k * D + order[i]]) > fabs(R[argmax * D + order[i]]))
                argmax = k;
        double sign = R[argmax * D + order[i]] < 0 ? -1 : 1;
        for (int k = 0; k < D; k++)
            ck_assert_double_eq_tol(p.components[i * D + k], sign * R[k * D + order[i]], 1e-13);
        ck_assert(p.components[i * D + argmax] > 0);
    }

    /* auto k on cumulative ratios 0.5625, 0.8125, 0.9375, 1 */
    ck_assert_int_eq(dm_pca_auto_k(&p, 0.5, 0), 1);
    ck_assert_int_eq(dm_pca_auto_k(&p, 0.8, 0), 2);
    ck_assert_int_eq(dm_pca_auto_k(&p, 0.8125, 0), 2);
    ck_assert_int_eq(dm_pca_auto_k(&p, 0.9, 0), 3);
    ck_assert_int_eq(dm_pca_auto_k(&p, 1.0, 0), 4);
    ck_assert_int_eq(dm_pca_auto_k(&p, 0.9, 2), 2);
    ck_assert_int_eq(dm_pca_auto_k(&p, 1e-9, 0), 1);
    dm_pca_free(&p);
    dm_pca_free(&p);

    /* A diagonal matrix: unit vectors, already positive. */
    double diag[9] = {2, 0, 0, 0, 5, 0, 0, 0, 3};
    ck_assert_int_eq(dm_pca_fit(&p, diag, 3), 0);
    const double want[9] = {0, 1, 0, 0, 0, 1, 1, 0, 0};
    for (int i = 0; i < 9; i++)
        ck_assert_double_eq_tol(p.components[i], want[i], 1e-15);
    ck_assert_double_eq_tol(p.eigenvalues[0], 5, 1e-15);
    ck_assert_double_eq_tol(p.eigenvalues[2], 2, 1e-15);
    dm_pca_free(&p);
}
END_TEST

START_TEST(pca_rejects_bad_covariance)
{
    dm_pca p;
    double asym[4] = {1, 0.5, 0.4, 1};
    ck_assert_int_eq(dm_pca_fit(&p, asym, 2), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "not symmetric"));
    double zero[4] = {0};
    ck_assert_int_eq(dm_pca_fit(&p, zero, 2), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "no positive eigenvalue"));
    double nan_[4] = {1, 0, 0, NAN};
    ck_assert_int_eq(dm_pca_fit(&p, nan_, 2), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "non-finite"));
    ck_assert_ptr_null(p.eigenvalues);
    dm_pca_free(&p);

    double eye[4] = {1, 0, 0, 1}, W[4];
    ck_assert_int_eq(dm_pca_fit(&p, eye, 2), 0);
    ck_assert_int_eq(dm_pca_whitening(&p, 0, 1e-10, W), -1);
    ck_assert_int_eq(dm_pca_whitening(&p, 3, 1e-10, W), -1);
    ck_assert_int_eq(dm_pca_whitening(&p, 2, 1.0, W), -1);
    dm_pca_free(&p);
}
END_TEST

/* W C W^T = I_k for the covariance of real-looking data; and a singular
 * covariance (as that of TransformerLens' centred residuals is) has a null
 * direction, which the floor drops with a warning. */
START_TEST(whitening_identity_and_floor)
{
    int64_t rows = 4000, d = 24;
    float *x = random_data(rows, d, 6);
    dm_covariance c;
    dm_pca p;
    double cov[24 * 24], W[24 * 24];
    dm_covariance_init(&c, d);
    dm_covariance_update(&c, x, rows);
    ck_assert_int_eq(dm_covariance_finalize(&c, cov, NULL), 0);
    ck_assert_int_eq(dm_pca_fit(&p, cov, d), 0);
    for (int64_t k = 1; k <= d; k += d - 1) {
        int64_t kept = dm_pca_whitening(&p, k, 1e-10, W);
        ck_assert_int_eq(kept, k);
        for (int64_t a = 0; a < k; a++)
            for (int64_t b = 0; b < k; b++) {
                double s = 0;
                for (int64_t i = 0; i < d; i++)
                    for (int64_t j = 0; j < d; j++)
                        s += W[a * d + i] * cov[i * d + j] * W[b * d + j];
                ck_assert_double_eq_tol(s, a == b ? 1.0 : 0.0, 1e-10);
            }
    }
    dm_pca_free(&p);

    /* Column d-1 a copy of column 0: the null direction (e_0 - e_{d-1})/sqrt 2
     * has eigenvalue zero up to rounding (~1e-16 of the largest). */
    for (int64_t i = 0; i < rows; i++)
        x[i * d + d - 1] = x[i * d];
    dm_covariance_reset(&c);
    dm_covariance_update(&c, x, rows);
    ck_assert_int_eq(dm_covariance_finalize(&c, cov, NULL), 0);
    ck_assert_int_eq(dm_pca_fit(&p, cov, d), 0);
    ck_assert(p.eigenvalues[d - 1] < 1e-13 * p.eigenvalues[0]);
    ck_assert_int_eq(dm_pca_whitening(&p, d, 1e-10, W), d - 1);
    ck_assert_int_eq(dm_pca_whitening(&p, d - 1, 1e-10, W), d - 1);
    ck_assert_int_eq(dm_pca_whitening(&p, d, (1 + p.eigenvalues[1] / p.eigenvalues[0]) / 2, W), 1);
    dm_pca_free(&p);
    dm_covariance_free(&c);
    free(x);
}
END_TEST

/* ---- numpy / scipy --------------------------------------------------------------- */

START_TEST(golden_numpy_scipy)
{
    enum { N = 4000, D = 12 };
    dm_tensor x = {0}, mean = {0}, var = {0}, skew = {0}, kurt = {0}, cov = {0};
    dm_tensor eig = {0}, comp = {0};
    load_golden("x", &x, DM_F32, (int64_t)N * D);
    ck_assert(x.ndim == 2 && x.shape[0] == N && x.shape[1] == D);
    load_golden("mean", &mean, DM_F64, D);
    load_golden("var", &var, DM_F64, D);
    load_golden("skew", &skew, DM_F64, D);
    load_golden("kurtosis", &kurt, DM_F64, D);
    load_golden("cov", &cov, DM_F64, D * D);
    load_golden("eigenvalues", &eig, DM_F64, D);
    load_golden("components", &comp, DM_F64, D * D);

    const float *xf = x.data;
    dm_moments m;
    dm_covariance c;
    dm_moments_init(&m, D);
    dm_covariance_init(&c, D);
    for (int64_t done = 0, nb; done < N; done += nb) {
        nb = next_chunk(done, N);
        dm_moments_update(&m, xf + done * D, nb);
        dm_covariance_update(&c, xf + done * D, nb);
    }
    double mu[D], v[D], s[D], k[D], std[D], cv[D * D], cmean[D];
    dm_moments_finalize(&m, mu, v, s, k);
    ck_assert_int_eq(dm_covariance_finalize(&c, cv, cmean), 0);
    const double *gv = var.data;
    for (int j = 0; j < D; j++)
        std[j] = sqrt(gv[j]);
    assert_close("golden mean", mu, mean.data, std, 0, D, 1e-9);
    assert_close("golden var", v, var.data, var.data, 0, D, 1e-9);
    assert_close("golden skew", s, skew.data, NULL, 1.0, D, 1e-9);
    assert_close("golden kurtosis", k, kurt.data, NULL, 1.0, D, 1e-9);
    double *scale = cov_scale(cov.data, D);
    assert_close("golden covariance", cv, cov.data, scale, 0, D * D, 1e-9);
    assert_close("golden covariance mean", cmean, mean.data, std, 0, D, 1e-9);
    free(scale);

    /* Eigenvalues against the largest; components absolutely (unit vectors;
     * their sensitivity is rounding / eigenvalue gap, gaps here >= 0.1). */
    dm_pca p;
    ck_assert_int_eq(dm_pca_fit(&p, cv, D), 0);
    const double *ge = eig.data;
    assert_close("golden eigenvalues", p.eigenvalues, ge, NULL, ge[0], D, 1e-9);
    assert_close("golden components", p.components, comp.data, NULL, 1.0, D * D, 1e-9);
    dm_pca_free(&p);

    dm_moments_free(&m);
    dm_covariance_free(&c);
    dm_tensor *all[] = {&x, &mean, &var, &skew, &kurt, &cov, &eig, &comp};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dm_tensor_free(all[i]);
}
END_TEST

/* ---- backends -------------------------------------------------------------------- */

/* Every entry of the backend table; "ref" first. */
/* ref, cpu, and cuda where libdmica-cuda.so sees a GPU (gpu/stats.cu; on a
 * machine without one the GPU part of these tests does not run: tests/test_gpu.c
 * reports it skipped). Listed inside each test: CUDA must not start before
 * Check forks the test's process. */
static const dm_stats_backend *backends[3];
static int NBACKENDS;
static void list_backends(void)
{
    backends[0] = &dm_stats_backend_ref;
    backends[1] = &dm_stats_backend_cpu;
    NBACKENDS = 2;
    if (dm_stats_backend_cuda())
        backends[NBACKENDS++] = dm_stats_backend_cuda();
}

START_TEST(backend_choice)
{
    list_backends();
    dm_compute c = *dm_compute_default();
    c.reference = 1;
    ck_assert_ptr_eq(dm_stats_backend_for(&c), &dm_stats_backend_ref);
    c.reference = 0;
    ck_assert_ptr_eq(dm_stats_backend_for(&c), &dm_stats_backend_cpu);
    ck_assert_str_eq(dm_stats_backend_ref.name, "ref");
    ck_assert_str_eq(dm_stats_backend_cpu.name, "cpu");
    for (int b = 0; b < NBACKENDS; b++)
        ck_assert(backends[b]->moments_update && backends[b]->covariance_update &&
                  backends[b]->xcovariance_update && backends[b]->project);
}
END_TEST

/* Every backend's updates through the table, in uneven chunks, against the
 * reference updates over all rows at once: 1e-10, as the file header says. */
START_TEST(stats_backends_match_reference)
{
    list_backends();
    int64_t rows = 4100, dx = 13, dy = 5;
    float *x = random_data(rows, dx, 21), *y = random_data(rows, dy, 22);
    dm_moments mr;
    dm_covariance cr;
    dm_xcovariance xr;
    dm_moments_init(&mr, dx);
    dm_covariance_init(&cr, dx);
    dm_xcovariance_init(&xr, dx, dy);
    dm_moments_update_ref(&mr, x, rows);
    dm_covariance_update_ref(&cr, x, rows);
    dm_xcovariance_update_ref(&xr, x, y, rows);
    double cxr[13 * 5], cxb[13 * 5], scale[13 * 5], vx[13], vy[5];
    ck_assert_int_eq(dm_xcovariance_finalize(&xr, cxr, NULL, NULL), 0);
    dm_moments_finalize(&mr, NULL, vx, NULL, NULL);
    dm_moments my;
    dm_moments_init(&my, dy);
    dm_moments_update_ref(&my, y, rows);
    dm_moments_finalize(&my, NULL, vy, NULL, NULL);
    for (int64_t i = 0; i < dx; i++)
        for (int64_t j = 0; j < dy; j++)
            scale[i * dy + j] = sqrt(vx[i] * vy[j]);
    for (int b = 0; b < NBACKENDS; b++) {
        const dm_stats_backend *be = backends[b];
        dm_moments m;
        dm_covariance c;
        dm_xcovariance xc;
        dm_moments_init(&m, dx);
        dm_covariance_init(&c, dx);
        dm_xcovariance_init(&xc, dx, dy);
        for (int64_t done = 0, nb; done < rows; done += nb) {
            nb = next_chunk(done, rows);
            be->moments_update(&m, x + done * dx, nb);
            be->covariance_update(&c, x + done * dx, nb);
            be->xcovariance_update(&xc, x + done * dx, y + done * dy, nb);
        }
        char what[64];
        snprintf(what, sizeof what, "%s moments vs reference", be->name);
        assert_moments_close(what, &m, &mr, 1e-10);
        snprintf(what, sizeof what, "%s covariance vs reference", be->name);
        assert_cov_close(what, &c, &cr, 1e-10);
        ck_assert_int_eq(dm_xcovariance_finalize(&xc, cxb, NULL, NULL), 0);
        snprintf(what, sizeof what, "%s cross-covariance vs reference", be->name);
        assert_close(what, cxb, cxr, scale, 0, dx * dy, 1e-10);
        dm_moments_free(&m);
        dm_covariance_free(&c);
        dm_xcovariance_free(&xc);
    }
    dm_moments_free(&mr), dm_moments_free(&my);
    dm_covariance_free(&cr);
    dm_xcovariance_free(&xr);
    free(x), free(y);
}
END_TEST

/* Every backend's projection against "ref" (double dot products of x - mean
 * taken in double, rounded once). Tolerance: "cpu" and "cuda" (cuBLAS in FP32,
 * never TF32) round x - mean to float
 * (one rounding, u = 2^-24 relative) and sum d float products in some order
 * (at most d u of the sum of |terms|, Higham's gamma_d), and "ref" rounds its
 * result once: (d + 3) u of sum_j |x_j - mean_j| |W_ij|, a bound for any
 * summation order. With and without centring. */
START_TEST(projection_backends_match_reference)
{
    list_backends();
    const int64_t rows = 1000, d = 37, k = 5;
    float *x = random_data(rows, d, 31), W[5 * 37], mean[37];
    float *ref = dm_xmalloc((size_t)(rows * k) * sizeof(float)), *out = dm_xmalloc((size_t)(rows * k) * sizeof(float));
    float *xc = dm_xmalloc((size_t)(rows * d) * sizeof(float));
    double *bound = dm_xmalloc((size_t)(rows * k) * sizeof(double));
    test_rng = 32;
    for (int64_t i = 0; i < k * d; i++)
        W[i] = (float)test_rng_normal();
    for (int64_t j = 0; j < d; j++) {
        double s = 0;
        for (int64_t r = 0; r < rows; r++)
            s += x[r * d + j];
        mean[j] = (float)(s / (double)rows + 0.25); /* off the exact mean: centring is not a no-op */
    }
    const double u = ldexp(1.0, -24);
    for (int centre = 0; centre < 2; centre++) {
        const float *mu = centre ? mean : NULL;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < k; i++) {
                double s = 0;
                for (int64_t j = 0; j < d; j++)
                    s += fabs((double)x[r * d + j] - (mu ? mu[j] : 0.0)) * fabs((double)W[i * d + j]);
                bound[r * k + i] = (double)(d + 3) * u * s;
            }
        dm_stats_backend_ref.project(ref, x, rows, W, k, d, mu, xc);
        for (int b = 0; b < NBACKENDS; b++) {
            memset(out, 0xff, (size_t)(rows * k) * sizeof(float)); /* NaN: every output must be written */
            backends[b]->project(out, x, rows, W, k, d, mu, xc);
            for (int64_t i = 0; i < rows * k; i++)
                ck_assert_msg(fabs((double)out[i] - ref[i]) <= bound[i], "%s projection%s [%lld]: %.9g vs ref %.9g",
                              backends[b]->name, centre ? " with mean" : "", (long long)i, out[i], ref[i]);
        }
    }
    /* the reference itself: one entry by hand */
    double s = 0;
    for (int64_t j = 0; j < d; j++)
        s += ((double)x[3 * d + j] - mean[j]) * W[2 * d + j];
    ck_assert(ref[3 * k + 2] == (float)s);
    free(x), free(ref), free(out), free(xc), free(bound);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, moments_fast_matches_reference);
    tcase_add_test(tc, moments_merge_any_grouping);
    tcase_add_test(tc, moments_closed_forms);
    tcase_add_test(tc, covariance_fast_matches_reference);
    tcase_add_test(tc, covariance_merge_and_closed_form);
    tcase_add_test(tc, xcovariance_matches_reference_and_covariance);
    tcase_add_test(tc, pca_known_matrix);
    tcase_add_test(tc, pca_rejects_bad_covariance);
    tcase_add_test(tc, whitening_identity_and_floor);
    tcase_add_test(tc, golden_numpy_scipy);
    tcase_add_test(tc, backend_choice);
    tcase_add_test(tc, stats_backends_match_reference);
    tcase_add_test(tc, projection_backends_match_reference);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
