/*
 * test_analysis.c: the analysis of operators/analysis:
 *   - the verdict: every branch of dm_verdict_decide, on hand-made inputs,
 *     and the thresholds table against the operators' parameter defaults;
 *   - the typed summaries: a round trip of each kind, and loud failures
 *     (DM_E_CORRUPT / DM_E_SHAPE, naming the tensor) on a wrong kind, version,
 *     size, dtype or an out-of-range offset;
 *   - the ICA back-projection, the variance explained, the null directions and
 *     the |cos| comparison: fast against reference versions, and both against
 *     numpy float64 (tests/golden/analysis/, written by
 *     tests/golden/make_analysis_golden.py);
 *   - dm_cos_summarise on values whose mean, quantiles and counts are known.
 *
 * Tolerances, and why. The back-projection is float64 throughout: the fused
 * loop, the reference's separate products and numpy's matmul differ only in
 * the order of k <= 6 roundings per entry, about 1e-15 of the entries' scale
 * (unit rows; mixing entries up to sqrt(9) = 3); we assert 1e-12. The null
 * directions are float64 rows rounded to float32 at the end: the same draws
 * (numpy's legacy generator, reproduced bit for bit) and sums of at most 10
 * terms in another order, so they agree to one float32 rounding, 6e-8; we
 * assert 2e-7. The |cos| comparison is an SGEMM in float32 over d = 10 unit
 * vectors (error below d * 2^-24 = 6e-7) against numpy's float64 products of
 * the same float32 inputs; we assert 2e-6, and the same best row wherever the
 * best and second best differ by more than that.
 *
 * Runs from the repository root (make test-unit does) so tests/golden is found.
 */
#include "ica_backproject.h"
#include "report.h"
#include "summaries.h"
#include "verdict.h"

#include "dm.h"
#include "npy.h"
#include "op.h"
#include "test.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/golden/analysis/"

/* ---- the verdict ----------------------------------------------------------- */

static dm_verdict decide(double res_kurt, const double *cos, int64_t n, const double *stab, int64_t nstab,
                         const double *srck, int64_t nsrc)
{
    double sm = 0;
    for (int64_t i = 0; i < nsrc; i++)
        sm += srck[i] / (double)nsrc;
    dm_verdict_in in = {res_kurt, sm, cos, n, stab, nstab, srck, nsrc, 0.5};
    dm_verdict v;
    dm_verdict_decide(&in, &v);
    return v;
}

START_TEST(verdict_gaussian_residual)
{
    double cos[2] = {0.1, 0.9};
    dm_verdict v = decide(0.2, cos, 2, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_GAUSSIAN_RESIDUAL);
    v = decide(-0.49, NULL, 0, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_GAUSSIAN_RESIDUAL);
    /* Gaussian residual but non-Gaussian sources: not Gaussian */
    double srck[2] = {3.0, 2.0};
    v = decide(0.2, cos, 2, NULL, 0, srck, 2);
    ck_assert_int_ne(v.decision, DM_VERDICT_GAUSSIAN_RESIDUAL);
    /* unknown residual kurtosis: never Gaussian */
    v = decide(NAN, NULL, 0, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_NO_COMPARISON);
    /* at the threshold: not below it */
    v = decide(0.5, NULL, 0, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_NO_COMPARISON);
}
END_TEST

START_TEST(verdict_no_comparison)
{
    double srck[2] = {3.0, 4.0};
    dm_verdict v = decide(5.0, NULL, 0, NULL, 0, srck, 2);
    ck_assert_int_eq(v.decision, DM_VERDICT_NO_COMPARISON);
    ck_assert_str_eq(dm_verdict_name(v.decision), "non_gaussian_no_comparison");
}
END_TEST

START_TEST(verdict_dark_matter)
{
    /* two stable, non-Gaussian, low-similarity components; one known */
    double cos[4] = {0.1, 0.2, 0.95, 0.5}, stab[4] = {0.99, 0.95, 0.97, 0.99}, srck[4] = {4, -3, 2, 1};
    dm_verdict v = decide(3.0, cos, 4, stab, 4, srck, 4);
    ck_assert_int_eq(v.decision, DM_VERDICT_DARK_MATTER);
    ck_assert_int_eq(v.novel, 2);
    ck_assert_int_eq(v.known, 1);
    ck_assert_int_eq(v.low, 2);
    ck_assert_int_eq(v.high, 1);
    ck_assert_str_eq(dm_verdict_name(v.decision), "dark_matter_features");
    /* as many novel as known still counts */
    double cos2[2] = {0.1, 0.9};
    v = decide(3.0, cos2, 2, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_DARK_MATTER);
}
END_TEST

START_TEST(verdict_unstable_or_gaussian_components_are_not_novel)
{
    /* the low components are unstable (0.5 < 0.9) or Gaussian (|0.1| < 0.5) */
    double cos[3] = {0.1, 0.2, 0.5}, stab[3] = {0.5, 0.99, 0.99}, srck[3] = {4, 0.1, 3};
    dm_verdict v = decide(3.0, cos, 3, stab, 3, srck, 3);
    ck_assert_int_eq(v.novel, 0);
    ck_assert_int_eq(v.low, 2);
    ck_assert_int_eq(v.decision, DM_VERDICT_MIXED);
    /* a stability vector shorter than the components: the rest are unstable */
    double cos2[2] = {0.1, 0.1}, stab2[1] = {0.95};
    v = decide(3.0, cos2, 2, stab2, 1, NULL, 0);
    ck_assert_int_eq(v.novel, 1);
}
END_TEST

START_TEST(verdict_sae_knows)
{
    double cos[3] = {0.9, 0.85, 0.5}, stab[3] = {0.95, 0.92, 0.99};
    dm_verdict v = decide(3.0, cos, 3, stab, 3, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_SAE_KNOWS);
    ck_assert_int_eq(v.known, 2);
    /* exactly half known is not most */
    double cos2[4] = {0.9, 0.85, 0.5, 0.5};
    v = decide(3.0, cos2, 4, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_MIXED);
    /* known components must be stable */
    double stab3[3] = {0.5, 0.5, 0.99};
    v = decide(3.0, cos, 3, stab3, 3, NULL, 0);
    ck_assert_int_eq(v.known, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_MIXED);
}
END_TEST

START_TEST(verdict_mixed_and_nan)
{
    double cos[3] = {0.5, NAN, 0.6};
    dm_verdict v = decide(3.0, cos, 3, NULL, 0, NULL, 0);
    ck_assert_int_eq(v.decision, DM_VERDICT_MIXED);
    ck_assert_int_eq(v.high + v.low, 0);
    ck_assert_str_eq(dm_verdict_name(v.decision), "mixed");
    /* every decision has its own explanation */
    for (int a = DM_VERDICT_GAUSSIAN_RESIDUAL; a <= DM_VERDICT_MIXED; a++)
        for (int b = a + 1; b <= DM_VERDICT_MIXED; b++)
            ck_assert_str_ne(dm_verdict_text(a), dm_verdict_text(b));
}
END_TEST

/* Named directly: the static library's registry links operators weakly. */
extern const dm_op dm_op_fastica, dm_op_report;

static const char *param_default(const dm_op *o, const char *param)
{
    for (const dm_param_spec *p = o->params; p->name; p++)
        if (!strcmp(p->name, param))
            return p->def;
    ck_abort_msg("%s has no parameter %s", o->name, param);
    return NULL;
}

START_TEST(thresholds_table)
{
    for (int i = 0; i < DM_T_COUNT; i++) {
        ck_assert_ptr_nonnull(dm_thresholds[i].name);
        ck_assert(*dm_thresholds[i].meaning && *dm_thresholds[i].source);
        ck_assert(dm_thresholds[i].value > 0 && dm_thresholds[i].value < 1);
    }
    ck_assert(DM_THRESHOLD(DM_T_LOW_SIMILARITY) < DM_THRESHOLD(DM_T_HIGH_SIMILARITY));
    /* the operators' defaults are the table's values */
    ck_assert_double_eq(atof(param_default(&dm_op_fastica, "stable")), DM_THRESHOLD(DM_T_STABLE));
    ck_assert_double_eq(atof(param_default(&dm_op_report, "gaussian_kurtosis")), DM_THRESHOLD(DM_T_GAUSSIAN_KURTOSIS));
}
END_TEST

/* ---- typed summaries ----------------------------------------------------------- */

START_TEST(summary_round_trips)
{
    dm_tensor t;
    dm_sae_summary s = {64, 512, 1000, 0.25, 0.75, 12.5, NAN}, s2;
    const char *doc = "{\"fvu\": 0.25}", *d2;
    size_t n2;
    dm_summary_pack(&t, DM_SUMMARY_SAE, DM_SUMMARY_SAE_VERSION, &s, sizeof s, doc, strlen(doc));
    ck_assert_int_eq(dm_sae_summary_read(&t, "x", &s2, &d2, &n2), 0);
    ck_assert_double_eq(s2.fvu, 0.25);
    ck_assert_double_eq(s2.mean_l0, 12.5);
    ck_assert(isnan(s2.linear_predictability));
    ck_assert_int_eq(s2.d_sae, 512);
    ck_assert_int_eq((int)n2, (int)strlen(doc));
    ck_assert(!memcmp(d2, doc, n2));
    dm_tensor_free(&t);

    dm_compare_summary c, c2;
    memset(&c, 0, sizeof c);
    c.k = 4, c.d_sae = 9, c.null_unit.mean = 0.125, c.similarity.histogram[19] = 3;
    dm_summary_pack(&t, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION, &c, sizeof c, NULL, 0);
    ck_assert_int_eq(dm_compare_summary_read(&t, "x", &c2), 0);
    ck_assert(!memcmp(&c, &c2, sizeof c));
    dm_tensor_free(&t);

    dm_examples_builder b;
    dm_examples_begin(&b, 2, 1);
    int64_t counts[3] = {1, 5, 2};
    dm_examples_column_add(&b, -1.5, 2.5, counts, 3);
    dm_examples_add(&b, 1, 2.0, 17, "a <b>", 5, "tok", 3, "", 0);
    dm_examples_add(&b, 0, -1.0, 4, "x", 1, "y", 1, "z", 1);
    dm_examples_column_add(&b, 0, 1, counts, 1);
    dm_examples_end(&b, &t);
    dm_examples_view v;
    ck_assert_int_eq(dm_examples_summary_read(&t, "x", &v), 0);
    ck_assert_int_eq(v.s.columns, 2);
    ck_assert_int_eq(v.columns[0].ntop, 1);
    ck_assert_int_eq(v.columns[0].nbottom, 1);
    ck_assert_int_eq(v.columns[1].ntop + v.columns[1].nbottom, 0);
    ck_assert_int_eq(v.counts[v.columns[0].first_bin + 1], 5);
    ck_assert_int_eq(v.counts[v.columns[1].first_bin], 1);
    ck_assert_double_eq(v.columns[0].hi, 2.5);
    const dm_example *e = &v.examples[v.columns[0].first_example + 1];
    ck_assert_double_eq(e->value, -1.0);
    ck_assert_int_eq(e->row, 4);
    ck_assert(!memcmp(v.text + v.examples[0].left, "a <b>", 5));
    ck_assert(!memcmp(v.text + e->right, "z", 1));
    dm_examples_view_free(&v);
    dm_tensor_free(&t);
}
END_TEST

/* The read must fail with `code` and name the tensor. */
static void expect_bad(const dm_tensor *t, dm_errc code)
{
    dm_compare_summary c;
    dm_error_clear();
    ck_assert_int_eq(dm_compare_summary_read(t, "input compare_summary", &c), -1);
    ck_assert_int_eq(dm_error_code(), code);
    ck_assert_msg(strstr(dm_error(), "input compare_summary"), "error does not name the tensor: %s", dm_error());
}

START_TEST(summary_fails_loudly)
{
    dm_compare_summary c;
    memset(&c, 0, sizeof c);
    dm_tensor t;
    /* the old channel: JSON text in a u8 tensor */
    const char *json = "{\"null_baselines\": {\"random_unit\": {\"mean_max_cosine\": 0.1}}}";
    dm_tensor_from_text(&t, json, strlen(json));
    expect_bad(&t, DM_E_CORRUPT);
    ck_assert_msg(strstr(dm_error(), "not a typed summary"), "%s", dm_error());
    dm_tensor_free(&t);
    /* another kind */
    dm_summary_pack(&t, DM_SUMMARY_ICA, DM_SUMMARY_ICA_VERSION, &c, sizeof(dm_ica_summary), NULL, 0);
    expect_bad(&t, DM_E_CORRUPT);
    ck_assert_msg(strstr(dm_error(), "ica summary"), "%s", dm_error());
    dm_tensor_free(&t);
    /* another version */
    dm_summary_pack(&t, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION + 1, &c, sizeof c, NULL, 0);
    expect_bad(&t, DM_E_CORRUPT);
    ck_assert_msg(strstr(dm_error(), "version"), "%s", dm_error());
    dm_tensor_free(&t);
    /* a body of another size */
    dm_summary_pack(&t, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION, &c, sizeof c - 8, NULL, 0);
    expect_bad(&t, DM_E_CORRUPT);
    dm_tensor_free(&t);
    /* truncated */
    dm_summary_pack(&t, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION, &c, sizeof c, NULL, 0);
    t.shape[0] -= 1;
    expect_bad(&t, DM_E_CORRUPT);
    t.shape[0] = 5;
    expect_bad(&t, DM_E_CORRUPT);
    /* not a 1-D u8 tensor */
    t.shape[0] = (int64_t)(sizeof(dm_summary_header) + sizeof c);
    t.dtype = DM_F32;
    t.shape[0] /= 4;
    expect_bad(&t, DM_E_SHAPE);
    dm_tensor_free(&t);

    /* an example pointing outside the text */
    dm_examples_builder b;
    dm_examples_begin(&b, 1, 1);
    int64_t counts[1] = {1};
    dm_examples_column_add(&b, 0, 1, counts, 1);
    dm_examples_add(&b, 1, 1.0, 0, "ab", 2, "c", 1, "d", 1);
    dm_examples_end(&b, &t);
    uint8_t *p = t.data;
    size_t at = sizeof(dm_summary_header) + sizeof(dm_examples_summary) + sizeof(dm_examples_column) +
                sizeof(int64_t) + offsetof(dm_example, left_len);
    int64_t big = 1000;
    memcpy(p + at, &big, sizeof big);
    dm_examples_view v;
    dm_error_clear();
    ck_assert_int_eq(dm_examples_summary_read(&t, "input examples", &v), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    ck_assert_msg(strstr(dm_error(), "input examples"), "%s", dm_error());
    dm_examples_view_free(&v);
    dm_tensor_free(&t);
}
END_TEST

/* ---- back-projection, nulls, comparison ------------------------------------- */

static void load(const char *name, dm_tensor *t, dm_dtype dtype, int64_t numel)
{
    char path[256];
    snprintf(path, sizeof path, GOLDEN "%s.npy", name);
    ck_assert_msg(dm_npy_load(path, t) == 0, "%s", dm_error());
    ck_assert_msg(t->dtype == dtype && dm_tensor_numel(t) == numel, "%s: unexpected dtype or size", path);
}

static double max_abs_diff(const double *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i] - b[i]));
    return m;
}

START_TEST(backproject_matches_reference_and_numpy)
{
    const int64_t k = 6, d = 10;
    dm_tensor W, ev, C, mean, g[6];
    load("W", &W, DM_F64, k * k), load("ev", &ev, DM_F64, d), load("C", &C, DM_F64, d * d);
    load("mean", &mean, DM_F64, d);
    static const char *names[6] = {"directions", "filters", "unscaled", "mixing", "offset", "variance"};
    const int64_t sizes[6] = {k * d, k * d, k * d, d * k, k, 2};
    for (int i = 0; i < 6; i++)
        load(names[i], &g[i], DM_F64, sizes[i]);
    double *A = dm_xmalloc((size_t)(k * k) * sizeof(double));
    ck_assert_int_eq(dm_ica_invert(W.data, k, A), 0);
    double *buf[2][5];
    dm_ica_backprojection o[2];
    for (int v = 0; v < 2; v++) {
        for (int i = 0; i < 5; i++)
            buf[v][i] = dm_xcalloc((size_t)sizes[i], sizeof(double));
        o[v] = (dm_ica_backprojection){buf[v][0], buf[v][1], buf[v][2], buf[v][3], buf[v][4]};
    }
    dm_ica_backproject(W.data, A, ev.data, C.data, mean.data, k, d, &o[0]);
    dm_ica_backproject_ref(W.data, A, ev.data, C.data, mean.data, k, d, &o[1]);
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < 5; i++) {
            double e = max_abs_diff(buf[v][i], g[i].data, sizes[i]);
            ck_assert_msg(e < 1e-12, "%s %s: max |diff| %g from numpy", v ? "reference" : "fast", names[i], e);
        }
    for (int i = 0; i < 5; i++)
        ck_assert_msg(max_abs_diff(buf[0][i], buf[1][i], sizes[i]) < 1e-12, "%s: fast and reference differ",
                      names[i]);
    /* the patterns are unit rows, and mixing filters^T is the identity on the
     * top-k span: filters mixing = I (k x k) */
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++)
                s += buf[0][1][i * d + t] * buf[0][3][t * k + j];
            ck_assert_msg(fabs(s - (i == j)) < 1e-12, "filters mixing [%lld,%lld] = %g", (long long)i,
                          (long long)j, s);
        }
    double vi, vu, *gv = g[5].data;
    dm_ica_variance_explained(ev.data, d, k, &vi, &vu);
    ck_assert_msg(fabs(vi - gv[0]) < 1e-12 && fabs(vu - gv[1]) < 1e-12, "variance %g %g, numpy %g %g", vi, vu,
                  gv[0], gv[1]);
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < 5; i++)
            free(buf[v][i]);
    free(A);
    dm_tensor_free(&W), dm_tensor_free(&ev), dm_tensor_free(&C), dm_tensor_free(&mean);
    for (int i = 0; i < 6; i++)
        dm_tensor_free(&g[i]);
}
END_TEST

START_TEST(invert_rejects_singular)
{
    double W[4] = {1, 2, 2, 4}, A[4];
    dm_error_clear();
    ck_assert_int_eq(dm_ica_invert(W, 2, A), -1);
    ck_assert_msg(strstr(dm_error(), "singular"), "%s", dm_error());
}
END_TEST

START_TEST(nulls_and_comparison_match_numpy)
{
    const int64_t k = 6, d = 10, nsae = 50;
    dm_tensor ev, C, dec, params, dirs, nulls, maxcos, best;
    load("ev", &ev, DM_F64, d), load("C", &C, DM_F64, d * d), load("decoder", &dec, DM_F32, nsae * d);
    load("params", &params, DM_I64, 2), load("directions", &dirs, DM_F64, k * d);
    int64_t seed = ((int64_t *)params.data)[0], ns = ((int64_t *)params.data)[1], m = k + 2 * ns;
    load("nulls", &nulls, DM_F32, 2 * ns * d), load("maxcos", &maxcos, DM_F64, m), load("best", &best, DM_I64, m);

    float *X = dm_xmalloc((size_t)(m * d) * sizeof(float));
    for (int64_t i = 0; i < k * d; i++)
        X[i] = (float)((double *)dirs.data)[i];
    dm_ica_null_directions((uint32_t)seed, ns, ev.data, C.data, d, d, X + k * d);
    const float *gn = nulls.data;
    for (int64_t i = 0; i < 2 * ns * d; i++)
        ck_assert_msg(fabsf(X[k * d + i] - gn[i]) < 2e-7f, "null row %lld: %g, numpy %g", (long long)(i / d),
                      X[k * d + i], gn[i]);

    float *U = dm_xmalloc((size_t)(nsae * d) * sizeof(float));
    dm_unit_rows_f32(dec.data, 0, nsae, d, 0, U);
    for (int64_t f = 0; f < nsae; f++) {
        double s = 0;
        for (int64_t t = 0; t < d; t++)
            s += (double)U[f * d + t] * U[f * d + t];
        ck_assert_msg(f == 30 ? s == 0 : fabs(s - 1) < 1e-6, "decoder row %lld has squared norm %g", (long long)f, s);
    }
    /* the transposed layout gives the same rows */
    float *T = dm_xmalloc((size_t)(nsae * d) * sizeof(float)), *U2 = dm_xmalloc((size_t)(nsae * d) * sizeof(float));
    for (int64_t f = 0; f < nsae; f++)
        for (int64_t t = 0; t < d; t++)
            T[t * nsae + f] = ((float *)dec.data)[f * d + t];
    dm_unit_rows_f32(T, 0, nsae, d, 1, U2);
    ck_assert(!memcmp(U, U2, (size_t)(nsae * d) * sizeof(float)));

    double *mc[2] = {dm_xmalloc((size_t)m * sizeof(double)), dm_xmalloc((size_t)m * sizeof(double))};
    int64_t *bf[2] = {dm_xmalloc((size_t)m * sizeof(int64_t)), dm_xmalloc((size_t)m * sizeof(int64_t))};
    dm_max_abs_cos(X, m, U, nsae, d, mc[0], bf[0]);
    dm_max_abs_cos_ref(X, m, U, nsae, d, mc[1], bf[1]);
    const double *gm = maxcos.data;
    const int64_t *gb = best.data;
    for (int v = 0; v < 2; v++)
        for (int64_t i = 0; i < m; i++) {
            ck_assert_msg(fabs(mc[v][i] - gm[i]) < 2e-6, "%s row %lld: max |cos| %.9g, numpy %.9g",
                          v ? "reference" : "fast", (long long)i, mc[v][i], gm[i]);
            /* the runner-up, from numpy's float64 products of the same inputs */
            double second = 0;
            for (int64_t f = 0; f < nsae; f++) {
                double s = 0;
                for (int64_t t = 0; t < d; t++)
                    s += (double)X[i * d + t] * U[f * d + t];
                if (f != gb[i] && fabs(s) > second)
                    second = fabs(s);
            }
            if (gm[i] - second > 2e-6)
                ck_assert_msg(bf[v][i] == gb[i], "row %lld: best %lld, numpy %lld", (long long)i,
                              (long long)bf[v][i], (long long)gb[i]);
        }
    /* the planted near-copies are found */
    ck_assert_int_eq(bf[0][1], 3);
    ck_assert_int_eq(bf[0][4], 17);
    ck_assert(mc[0][1] > 0.99 && mc[0][4] > 0.99);
    for (int v = 0; v < 2; v++)
        free(mc[v]), free(bf[v]);
    free(X), free(U), free(T), free(U2);
    dm_tensor *all[] = {&ev, &C, &dec, &params, &dirs, &nulls, &maxcos, &best};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        dm_tensor_free(all[i]);
}
END_TEST

START_TEST(cos_summary_known_values)
{
    /* 0.00, 0.05, ..., 0.95, 1.00: 21 values */
    double v[21];
    for (int i = 0; i < 21; i++)
        v[20 - i] = i * 0.05; /* descending: the summary sorts */
    dm_cos_summary s;
    dm_cos_summarise(v, 21, &s);
    ck_assert_int_eq(s.count, 21);
    ck_assert_msg(fabs(s.mean - 0.5) < 1e-15, "mean %g", s.mean);
    ck_assert_double_eq(s.median, 10 * 0.05);
    ck_assert_double_eq(s.q05, 1 * 0.05);  /* round(0.05 * 20) = 1 */
    ck_assert_double_eq(s.q95, 19 * 0.05); /* round(0.95 * 20) = 19 */
    ck_assert_double_eq(s.q99, 20 * 0.05); /* round(0.99 * 20) = 20 */
    ck_assert_int_eq(s.high, 4);           /* 0.85, 0.90, 0.95, 1.00 */
    ck_assert_int_eq(s.low, 6);            /* 0.00 ... 0.25 */
    int64_t total = 0;
    for (int b = 0; b < DM_COS_BINS; b++)
        total += s.histogram[b];
    ck_assert_int_eq(total, 21);
    ck_assert_int_eq(s.histogram[DM_COS_BINS - 1], 2); /* 0.95, and 1.0 clamped into the last bin */
    ck_assert_int_eq(s.histogram[0], 1);
    dm_cos_summarise(v, 0, &s);
    ck_assert(isnan(s.mean) && isnan(s.median));
    ck_assert_int_eq(s.count + s.high + s.low, 0);
}
END_TEST

/* ---- the report's numbers ------------------------------------------------- */

START_TEST(report_numbers)
{
    double av[2] = {2, 2}, rv[2] = {1, 0}, ev[4] = {5, 3, 2, -1}, mc[2] = {0.1, 0.9};
    dm_compare_summary cs;
    memset(&cs, 0, sizeof cs);
    cs.d_sae = 8;
    cs.null_unit.mean = 0.12345678901234;
    cs.null_covariance.mean = NAN;
    cs.variance_explained_by_ica = 0.5;
    dm_report_in in;
    memset(&in, 0, sizeof in);
    in.model = in.sae = in.hook = in.title = in.neuronpedia = "";
    in.variance_mark = 0.8, in.gaussian_kurtosis = 0.5, in.version = "x";
    in.activation_var = (dm_report_vec){av, 2}, in.residual_var = (dm_report_vec){rv, 2};
    in.eigenvalues = (dm_report_vec){ev, 4}, in.max_cos = (dm_report_vec){mc, 2};
    in.compare = &cs;
    dm_report_numbers r;
    dm_report_compute(&in, &r);
    ck_assert_double_eq(r.fvu, 0.25);
    ck_assert_int_eq(r.pca_components_for_mark, 2); /* 5/10, 8/10 */
    ck_assert_double_eq(r.pca_cumulative[3], 1.0);
    ck_assert_double_eq(r.null_unit, 0.123456789); /* as ica_compare.json prints it */
    ck_assert(isnan(r.null_covariance));
    ck_assert_int_eq(r.k, 2);
    ck_assert_int_eq(r.verdict.decision, DM_VERDICT_DARK_MATTER); /* 1 novel, 1 known */
    json_t *res;
    ck_assert_int_eq(dm_results_json(&in, &r, &res), 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(res, "verdict"), "decision")),
                     "dark_matter_features");
    ck_assert(json_is_null(json_object_get(res, "layer")));
    json_decref(res);
    /* a summary whose document is not JSON fails, naming the input */
    dm_sae_summary ss = {0};
    in.sae_summary = &ss, in.sae_doc = "{not json", in.sae_doc_len = 9;
    dm_error_clear();
    ck_assert_int_eq(dm_results_json(&in, &r, &res), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    ck_assert_msg(strstr(dm_error(), "sae_summary"), "%s", dm_error());
    dm_report_numbers_free(&r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("analysis");
    TCase *tc = tcase_create("analysis");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, verdict_gaussian_residual);
    tcase_add_test(tc, verdict_no_comparison);
    tcase_add_test(tc, verdict_dark_matter);
    tcase_add_test(tc, verdict_unstable_or_gaussian_components_are_not_novel);
    tcase_add_test(tc, verdict_sae_knows);
    tcase_add_test(tc, verdict_mixed_and_nan);
    tcase_add_test(tc, thresholds_table);
    tcase_add_test(tc, summary_round_trips);
    tcase_add_test(tc, summary_fails_loudly);
    tcase_add_test(tc, backproject_matches_reference_and_numpy);
    tcase_add_test(tc, invert_rejects_singular);
    tcase_add_test(tc, nulls_and_comparison_match_numpy);
    tcase_add_test(tc, cos_summary_known_values);
    tcase_add_test(tc, report_numbers);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
