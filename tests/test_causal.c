/*
 * test_causal.c: operators/analysis/causal.c, the ablation study of an SAE's
 * residual components (issue 14; docs/causal.md):
 *   - every number of the study against the float64 numpy reference
 *     (tools/causal_reference.py, tests/golden/causal/make_causal_golden.py) on
 *     a tiny GPT-2 and SAE, at 1e-4 relative, with the model calls grouped
 *     three ways (one window at a time, several, all ablations stacked), and
 *     with the nulls scaled to two energy levels and interpolated;
 *   - an ablation that removes nothing leaves CE and KL where the clean run has
 *     them;
 *   - what it refuses.
 */
#include <jansson.h>
#include <math.h>

#include "causal.h"
#include "npy.h"
#include "test.h"

#define GOLDEN "tests/golden/causal/c64h4/"

static dm_tensor npy(const char *name)
{
    char *p = dm_xasprintf(GOLDEN "%s", name);
    dm_tensor t = {0};
    ck_assert_msg(dm_npy_load(p, &t) == 0, "%s: %s", p, dm_error());
    free(p);
    return t;
}

/* |a - b| within tol of max(|b|, floor) */
static void near(double a, double b, double tol, double floor, const char *what)
{
    double s = fabs(b) > floor ? fabs(b) : floor;
    ck_assert_msg(fabs(a - b) <= tol * s, "%s: %.10g, reference %.10g (relative %.3g)", what, a, b, fabs(a - b) / s);
}

static double num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_number(v), "expected.json: no number %s", key);
    return json_number_value(v);
}

typedef struct {
    json_t *meta, *exp;
    dm_model *m;
    dm_sae *sae;
    dm_tensor win, filters, mixing, nulls;
    float *mu;
    int layer;
} golden;

static void golden_load(golden *g, const dm_compute *c, const char *expected)
{
    json_error_t je;
    char *p = dm_xasprintf(GOLDEN "%s", expected);
    g->meta = json_load_file(GOLDEN "meta.json", 0, &je);
    g->exp = g->meta ? json_load_file(p, 0, &je) : NULL;
    free(p);
    ck_assert_msg(g->meta && g->exp, "%s", je.text);
    char *model = dm_xstrdup(json_string_value(json_object_get(g->meta, "model"))); /* from the repository root */
    g->layer = (int)json_integer_value(json_object_get(g->meta, "layer"));
    g->m = dm_model_load(model, DM_MODEL_DEPTH_ALL, c);
    ck_assert_msg(g->m, "%s", dm_error());
    free(model);
    g->sae = dm_sae_load(GOLDEN "sae", 0, c);
    ck_assert_msg(g->sae, "%s", dm_error());
    g->win = npy("windows.npy"), g->filters = npy("filters.npy"), g->mixing = npy("mixing.npy");
    g->nulls = npy("nulls.npy");
    ck_assert_int_eq(g->win.dtype, DM_I32);
    json_t *mu = json_object_get(g->exp, "mu");
    int64_t d = dm_model_cfg(g->m)->n_embd;
    ck_assert_int_eq((int64_t)json_array_size(mu), d);
    g->mu = dm_xmalloc(sizeof(float) * (size_t)d);
    for (int64_t j = 0; j < d; j++)
        g->mu[j] = (float)json_number_value(json_array_get(mu, (size_t)j));
}

static void golden_free(golden *g)
{
    json_decref(g->meta), json_decref(g->exp);
    dm_model_free(g->m);
    dm_sae_free(g->sae);
    dm_tensor_free(&g->win), dm_tensor_free(&g->filters), dm_tensor_free(&g->mixing), dm_tensor_free(&g->nulls);
    free(g->mu);
}

/* Tolerance (docs/causal.md): the C side runs the model and the SAE in
 * float32 (about 1e-6 relative against float64, tests/test_gpt2.c), and each
 * CE and KL is a mean of per-position terms in double: 1e-4 relative of each
 * number, except the CE differences, within max(1e-4 |v|, 2e-6) (a difference
 * of two CEs that float32 knows to about 1e-7; one null's is -5e-5), z within
 * max(1e-4 |v|, 1e-4), and the percentiles exactly. */
/* The study of g on c with the nulls at `levels` energy levels, grouped in model
 * calls of `rows` token rows, against g's expected output. */
static void check_study(golden *g, const dm_compute *c, int64_t levels, int64_t rows, int say)
{
    const int64_t W = g->win.shape[0], T = g->win.shape[1], d = dm_model_cfg(g->m)->n_embd;
    const int64_t k = g->filters.shape[0], nn = g->nulls.shape[0];
    ck_assert_int_eq(g->mixing.shape[0], d);
    ck_assert_int_eq(g->mixing.shape[1], k);
    const double ce0 = num(g->exp, "ce_clean");
    dm_causal *cz = dm_causal_new(g->m, g->layer, g->sae, c, g->win.data, W, (int)T, 1, g->mu, rows);
    ck_assert_msg(cz, "%s", dm_error());
    float *pcs = dm_xmalloc(sizeof(float) * (size_t)(k * d));
    ck_assert_int_eq(dm_causal_top_pcs(dm_causal_cov(cz), d, k, pcs), 0);
    dm_causal_dirs dd = {k, g->filters.data, g->mixing.data, nn, g->nulls.data, pcs, levels};
    dm_causal_result r;
    ck_assert_msg(dm_causal_measure(cz, &dd, &r) == 0, "%s", dm_error());
    ck_assert_int_eq(r.positions, W * (T - 1));
    near(r.ce_clean, ce0, 1e-4, 0, "ce_clean");
    json_t *sp = json_object_get(g->exp, "splice");
    near(r.ce_sae, num(sp, "ce_sae"), 1e-4, 0, "ce_sae");
    near(r.ce_zero, num(sp, "ce_zero"), 1e-4, 0, "ce_zero");
    near(r.kl_sae, num(sp, "kl_sae"), 1e-4, 0, "kl_sae");
    near(r.kl_zero, num(sp, "kl_zero"), 1e-4, 0, "kl_zero");
    near(r.ce_loss_score, num(sp, "ce_loss_score"), 1e-4, 0, "ce_loss_score");
    near(r.kl_div_score, num(sp, "kl_div_score"), 1e-4, 0, "kl_div_score");
    json_t *all = json_object_get(g->exp, "all_components"), *pca = json_object_get(g->exp, "pca_control");
    near(r.all_delta_ce, num(all, "delta_ce"), 1e-4, 0.02, "all_components.delta_ce");
    near(r.all_kl, num(all, "kl"), 1e-4, 0, "all_components.kl");
    near(r.pca_delta_ce, num(pca, "delta_ce"), 1e-4, 0.02, "pca_control.delta_ce");
    near(r.pca_kl, num(pca, "kl"), 1e-4, 0, "pca_control.kl");
    json_t *comps = json_object_get(g->exp, "components"), *nulls = json_object_get(g->exp, "nulls");
    json_t *nkl = json_object_get(nulls, "kl"), *nce = json_object_get(nulls, "delta_ce");
    json_t *energy = json_object_get(nulls, "energy");
    ck_assert_int_eq((int64_t)json_array_size(comps), k);
    ck_assert_int_eq((int64_t)json_array_size(energy), k);
    for (int64_t i = 0; i < k; i++) {
        json_t *ci = json_array_get(comps, (size_t)i);
        char what[64];
        snprintf(what, sizeof what, "component %lld delta_ce", (long long)i);
        near(r.delta_ce[i], num(ci, "delta_ce"), 1e-4, 0.02, what);
        snprintf(what, sizeof what, "component %lld kl", (long long)i);
        near(r.kl[i], num(ci, "kl"), 1e-4, 0, what);
        snprintf(what, sizeof what, "component %lld energy", (long long)i);
        near(r.energy[i], json_number_value(json_array_get(energy, (size_t)i)), 1e-4, 0, what);
        /* a percentile is a count: the same unless two KLs sit within the tolerance */
        ck_assert_double_eq_tol(r.null_percentile[i], num(ci, "null_percentile"), 1e-9);
        near(r.z[i], num(ci, "z"), 1e-4, 1.0, "z");
        for (int64_t j = 0; j < nn; j++) {
            double want = json_number_value(json_array_get(json_array_get(nkl, (size_t)i), (size_t)j));
            snprintf(what, sizeof what, "null %lld for component %lld: kl", (long long)j, (long long)i);
            near(r.null_kl[i * nn + j], want, 1e-4, 0, what);
            want = json_number_value(json_array_get(json_array_get(nce, (size_t)i), (size_t)j));
            snprintf(what, sizeof what, "null %lld for component %lld: delta_ce", (long long)j, (long long)i);
            near(r.null_delta_ce[i * nn + j], want, 1e-4, 0.02, what);
        }
    }
    json_t *lv = json_object_get(nulls, "energy_levels"), *lk = json_object_get(nulls, "level_kl");
    ck_assert_int_eq(r.levels, levels);
    ck_assert_int_eq((int64_t)json_array_size(lv), levels); /* null in expected.json: size 0 */
    for (int64_t b = 0; b < levels; b++) {
        near(r.level_energy[b], json_number_value(json_array_get(lv, (size_t)b)), 1e-4, 0, "energy level");
        for (int64_t j = 0; j < nn; j++)
            near(r.level_kl[b * nn + j], json_number_value(json_array_get(json_array_get(lk, (size_t)b), (size_t)j)),
                 1e-4, 0, "null kl at an energy level");
    }
    if (say)
        printf("causal c64h4 (levels %lld): ce_clean %.6g, ce_loss_score %.6g, kl_div_score %.6g, component kl %.3g "
               "%.3g %.3g\n",
               (long long)levels, r.ce_clean, r.ce_loss_score, r.kl_div_score, r.kl[0], k > 1 ? r.kl[1] : NAN,
               k > 2 ? r.kl[2] : NAN);
    dm_causal_result_free(&r);
    free(pcs);
    dm_causal_free(cz);
}

START_TEST(matches_reference)
{
    dm_compute c = *dm_compute_default();
    golden g;
    golden_load(&g, &c, "expected.json");
    /* rows: one window a call, four (groups of 4 and 2, ablations 1 and 2 a call), all stacked */
    const int64_t T = g.win.shape[1], rows[] = {T, 4 * T, 1 << 14};
    for (size_t v = 0; v < sizeof rows / sizeof *rows; v++)
        check_study(&g, &c, 0, rows[v], v == 0);
    golden_free(&g);
}
END_TEST

/* Two energy levels, the smallest and the largest component's: those two
 * components' nulls are matched exactly, the middle one's interpolated. */
START_TEST(matches_reference_levels)
{
    dm_compute c = *dm_compute_default();
    golden g;
    golden_load(&g, &c, "expected_levels2.json");
    check_study(&g, &c, 2, 4 * g.win.shape[1], 1);
    golden_free(&g);
}
END_TEST

/* Directions that remove nothing (a zero mixing, a zero null) leave CE at the
 * clean run's and KL at 0 up to the float32 sums of another grouping of rows. */
START_TEST(nothing_removed_changes_nothing)
{
    dm_compute c = *dm_compute_default();
    golden g;
    golden_load(&g, &c, "expected.json");
    const int64_t W = g.win.shape[0], T = g.win.shape[1], d = dm_model_cfg(g.m)->n_embd;
    dm_causal *cz = dm_causal_new(g.m, g.layer, g.sae, &c, g.win.data, W, (int)T, 1, g.mu, 4 * T);
    ck_assert_msg(cz, "%s", dm_error());
    float *zero = calloc((size_t)(2 * d), sizeof(float));
    dm_causal_dirs dd = {2, g.filters.data, zero, 1, zero, NULL, 0};
    dm_causal_result r;
    ck_assert_msg(dm_causal_measure(cz, &dd, &r) == 0, "%s", dm_error());
    for (int i = 0; i < 2; i++) {
        ck_assert_double_le(fabs(r.delta_ce[i]), 1e-6 * r.ce_clean);
        ck_assert_double_le(fabs(r.kl[i]), 1e-9);
        ck_assert_double_le(fabs(r.null_kl[i]), 1e-9);
    }
    ck_assert(isnan(r.pca_kl));
    ck_assert(isnan(r.z[0])); /* one null: no spread */
    ck_assert(r.kl_zero > r.kl_sae); /* zeros cost more than the SAE */
    dm_causal_result_free(&r);
    dm_causal_free(cz);
    free(zero);
    golden_free(&g);
}
END_TEST

START_TEST(refusals)
{
    dm_compute c = *dm_compute_default();
    golden g;
    golden_load(&g, &c, "expected.json");
    const int64_t T = g.win.shape[1], d = dm_model_cfg(g.m)->n_embd;
    ck_assert_ptr_null(dm_causal_new(g.m, 7, g.sae, &c, g.win.data, 1, (int)T, 1, g.mu, T));
    assert_error_has("causal: hook blocks.7.hook_resid_pre needs the whole model (2 layers) loaded");
    ck_assert_ptr_null(dm_causal_new(g.m, 1, g.sae, &c, g.win.data, 1, 1, 1, g.mu, T));
    assert_error_has("1 windows of 1 tokens");
    dm_causal *cz = dm_causal_new(g.m, 1, g.sae, &c, g.win.data, 1, (int)T, 1, g.mu, T);
    ck_assert_ptr_nonnull(cz);
    dm_causal_dirs dd = {0, NULL, NULL, 0, NULL, NULL, 0};
    dm_causal_result r;
    ck_assert_int_eq(dm_causal_measure(cz, &dd, &r), -1);
    assert_error_has("causal: 0 components");
    dm_causal_dirs one = {g.filters.shape[0], g.filters.data, g.mixing.data, 0, NULL, NULL, 1};
    ck_assert_int_eq(dm_causal_measure(cz, &one, &r), -1);
    assert_error_has("causal: 1 energy levels (0, every component's own, or at least 2)");
    float *pcs = malloc(sizeof(float) * (size_t)(d + 1) * d);
    ck_assert_int_eq(dm_causal_top_pcs(dm_causal_cov(cz), d, d + 1, pcs), -1);
    free(pcs);
    dm_causal_free(cz);
    golden_free(&g);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("causal");
    TCase *tc = tcase_create("causal");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, matches_reference);
    tcase_add_test(tc, matches_reference_levels);
    tcase_add_test(tc, nothing_removed_changes_nothing);
    tcase_add_test(tc, refusals);
    suite_add_tcase(s, tc);
    return s;
}

DM_TEST_MAIN(suite)
