/*
 * op_report.c: the analysis read out (the plan's steps 8-9): results.json with
 * the plan's keys and more, the plan's four plots as SVG files, and
 * report.html, one self-contained page (inline SVG, a little inline script, no
 * network) with a card per ICA component.
 *
 * Every input is an optional tensor, so the report shows whatever the pipeline
 * computed: statistics (vectors from moments, pca, fastica, ica_compare, sae),
 * and JSON documents passed as byte tensors (u8): the examples of topk and the
 * summaries of sae, fastica and ica_compare.
 *
 * The verdict follows the plan's decision points. "Gaussian residual": the
 * residual's mean excess kurtosis (and, with ICA, its sources') below
 * `gaussian_kurtosis`. Otherwise a component is "new" when its max |cos| with
 * every SAE decoder row is below 0.3 (the plan's threshold) and its source is
 * non-Gaussian, and "known" above 0.8; with stability known, only components
 * stable across seeds (matched |cos| >= 0.9) count. Stable new components at
 * least as many as known ones: "dark-matter features"; most components known:
 * "directions the SAE already knows"; else "mixed".
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "op.h"
#include "svg.h"

enum {
    IN_ACT_VAR, IN_RES_VAR, IN_RES_KURT, IN_N, IN_EIGEN, IN_SRC_KURT, IN_ACT_KURT, IN_SAE_KURT, IN_SAE_FREQ,
    IN_STABILITY, IN_MAXCOS, IN_BEST, IN_EXAMPLES, IN_ACT_EXAMPLES, IN_SAE_SUMMARY, IN_ICA_SUMMARY,
    IN_COMPARE_SUMMARY, IN_DIRECTIONS, IN_PLANTED
};

static const dm_port_spec report_inputs[] = {
    {"activation_var", DM_PORT_TENSOR, 0, 1},      {"residual_var", DM_PORT_TENSOR, 0, 1},
    {"residual_kurtosis", DM_PORT_TENSOR, 0, 1},   {"n", DM_PORT_TENSOR, 0, 1},
    {"eigenvalues", DM_PORT_TENSOR, 0, 1},         {"source_kurtosis", DM_PORT_TENSOR, 0, 1},
    {"activation_kurtosis", DM_PORT_TENSOR, 0, 1}, {"sae_kurtosis", DM_PORT_TENSOR, 0, 1},
    {"sae_frequency", DM_PORT_TENSOR, 0, 1},       {"stability", DM_PORT_TENSOR, 0, 1},
    {"max_cos", DM_PORT_TENSOR, 0, 1},             {"best_feature", DM_PORT_TENSOR, 0, 1},
    {"examples", DM_PORT_TENSOR, 0, 1},            {"activation_examples", DM_PORT_TENSOR, 0, 1},
    {"sae_summary", DM_PORT_TENSOR, 0, 1},         {"ica_summary", DM_PORT_TENSOR, 0, 1},
    {"compare_summary", DM_PORT_TENSOR, 0, 1},     {"directions", DM_PORT_TENSOR, 0, 1},
    {"planted_atoms", DM_PORT_TENSOR, 0, 1},       {NULL},
};
static const dm_port_spec report_outputs[] = {{"results", DM_PORT_TENSOR}, {NULL}};

static const dm_param_spec report_params[] = {
    {"model", DM_P_STRING, "gpt2-small", "model name for the results"},
    {"sae", DM_P_STRING, "", "SAE name for the results, e.g. gpt2-small-res-jb, layer 6"},
    {"hook", DM_P_STRING, "", "the hook analysed, e.g. blocks.6.hook_resid_pre"},
    {"neuronpedia", DM_P_STRING, "", "URL prefix of the SAE's feature pages (\"\": no links)"},
    {"variance_mark", DM_P_FLOAT, "0.9", "the PCA plot's mark (the plan: 90%)"},
    {"gaussian_kurtosis", DM_P_FLOAT, "0.5", "mean excess kurtosis below which a residual counts as Gaussian"},
    {"sae_min_frequency", DM_P_FLOAT, "0.001", "SAE features firing on more than this fraction enter the kurtosis comparison"},
    {"cards", DM_P_INT, "200", "component cards in report.html at most"},
    {"title", DM_P_STRING, "dmica: ICA of SAE residuals", "the report's title"},
    {NULL},
};

/* ---- reading inputs ------------------------------------------------------ */

typedef struct {
    double *v;
    int64_t n;
} vec;

static vec get_vec(const dm_node *n, int port)
{
    vec r = {NULL, 0};
    const dm_tensor *t = dm_input_tensor(n, port);
    if (!t)
        return r;
    r.n = dm_tensor_numel(t);
    r.v = dm_xmalloc((size_t)(r.n + 1) * sizeof *r.v);
    for (int64_t i = 0; i < r.n; i++) {
        switch (t->dtype) {
        case DM_F64: r.v[i] = ((const double *)t->data)[i]; break;
        case DM_F32: r.v[i] = ((const float *)t->data)[i]; break;
        case DM_I64: r.v[i] = (double)((const int64_t *)t->data)[i]; break;
        case DM_I32: r.v[i] = ((const int32_t *)t->data)[i]; break;
        case DM_U16: r.v[i] = ((const uint16_t *)t->data)[i]; break;
        case DM_U8: r.v[i] = ((const uint8_t *)t->data)[i]; break;
        default: r.v[i] = NAN;
        }
    }
    return r;
}

static json_t *get_json(const dm_node *n, int port)
{
    const dm_tensor *t = dm_input_tensor(n, port);
    if (!t || t->dtype != DM_U8)
        return NULL;
    json_error_t err;
    return json_loadb(t->data, (size_t)dm_tensor_numel(t), 0, &err);
}

static double mean_of(const vec *v)
{
    double s = 0;
    int64_t c = 0;
    for (int64_t i = 0; i < v->n; i++)
        if (isfinite(v->v[i]))
            s += v->v[i], c++;
    return c ? s / (double)c : NAN;
}

static json_t *num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* A number at "a.b.c" through nested objects; NaN if absent. */
static double json_num(json_t *o, const char *path)
{
    char *p = dm_xstrdup(path), *save = NULL;
    json_t *cur = o;
    for (char *tok = strtok_r(p, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = json_object_get(cur, tok);
    free(p);
    return json_is_number(cur) ? json_number_value(cur) : NAN;
}

/* ---- text building -------------------------------------------------------- */

#define put dm_strbuf_addf

static void put_esc(dm_strbuf *b, const char *t)
{
    for (; t && *t; t++) {
        switch (*t) {
        case '&': put(b, "&amp;"); break;
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '"': put(b, "&quot;"); break;
        case '\n': put(b, "&#x21b5;"); break;
        default: put(b, "%c", *t);
        }
    }
}

static int write_product(dm_node *n, const char *file, const char *text)
{
    return dm_publish_text(n, file, text, strlen(text));
}

/* ---- the report ------------------------------------------------------------ */

static int report_infer(dm_node *n)
{
    dm_port_desc *o = dm_output_desc(n, 0);
    o->dtype = DM_U8;
    o->ndim = 1;
    o->shape[0] = -1;
    return 0;
}

static const char *verdict_text(const char *v)
{
    if (!strcmp(v, "gaussian_residual"))
        return "The residual is close to Gaussian: the SAE captures essentially all the non-Gaussian structure, "
               "and the dark matter looks like noise.";
    if (!strcmp(v, "dark_matter_features"))
        return "ICA finds stable, non-Gaussian directions in the residual that no SAE feature resembles: "
               "candidate dark-matter features.";
    if (!strcmp(v, "sae_knows"))
        return "Most ICA directions of the residual are close to SAE decoder rows: the SAE knows these "
               "directions but does not reconstruct them well (a training issue rather than missing features).";
    if (!strcmp(v, "mixed"))
        return "The residual is non-Gaussian, and its ICA directions partly overlap SAE features: rotated or "
               "mixed versions of known features beside some new ones.";
    return "The residual is non-Gaussian; run ICA with an SAE decoder to compare directions.";
}

static void example_rows(dm_strbuf *h, json_t *list, int max)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        if ((int)i >= max)
            break;
        put(h, "<tr><td class=\"num\">%.3g</td><td class=\"ctx\">", json_number_value(json_object_get(e, "value")));
        if (json_object_get(e, "token")) {
            put_esc(h, json_string_value(json_object_get(e, "left")));
            put(h, "<mark>");
            put_esc(h, json_string_value(json_object_get(e, "token")));
            put(h, "</mark>");
            put_esc(h, json_string_value(json_object_get(e, "right")));
        } else {
            put(h, "row %lld", (long long)json_integer_value(json_object_get(e, "row")));
        }
        put(h, "</td></tr>\n");
    }
}

/* The card of component i: numbers, its source histogram, its examples. */
static void component_card(dm_strbuf *h, const dm_node *n, int64_t i, const vec *maxcos, const vec *best, const vec *src_k,
                           const vec *act_k, const vec *stab, json_t *comps, json_t *acomps)
{
    const char *np = dm_param_str(n, "neuronpedia");
    double c = i < maxcos->n ? maxcos->v[i] : NAN, kk = i < src_k->n ? src_k->v[i] : NAN,
           st = i < stab->n ? stab->v[i] : NAN;
    put(h, "<div class=\"card\" data-index=\"%lld\" data-cos=\"%g\" data-kurt=\"%g\" data-stab=\"%g\">\n"
           "<h3>Component %lld</h3>\n<p>", (long long)i, isfinite(c) ? c : 9, isfinite(kk) ? kk : -1e9,
        isfinite(st) ? st : -1, (long long)i);
    if (isfinite(st))
        put(h, "stability %.3f%s &middot; ", st, st < 0.9 ? " (unstable)" : "");
    if (isfinite(kk))
        put(h, "source kurtosis %.2f &middot; ", kk);
    if (i < act_k->n)
        put(h, "activation kurtosis %.2f &middot; ", act_k->v[i]);
    if (isfinite(c)) {
        put(h, "max |cos| with SAE %.3f", c);
        if (i < best->n && *np) {
            put(h, " (feature <a href=\"");
            put_esc(h, np);
            put(h, "%lld\">%lld</a>)", (long long)best->v[i], (long long)best->v[i]);
        } else if (i < best->n) {
            put(h, " (feature %lld)", (long long)best->v[i]);
        }
    }
    put(h, "</p>\n<div class=\"cols\"><div>");
    json_t *ce = comps ? json_array_get(comps, (size_t)i) : NULL;
    json_t *hist = ce ? json_object_get(ce, "histogram") : NULL;
    if (hist) {
        json_t *counts = json_object_get(hist, "counts");
        size_t nb = json_array_size(counts);
        double *cb = dm_xmalloc((nb + 1) * sizeof(double));
        for (size_t b = 0; b < nb; b++)
            cb[b] = (double)json_integer_value(json_array_get(counts, b));
        char title[64];
        snprintf(title, sizeof title, "Component %lld: source values", (long long)i);
        dm_svg_opts o = {title, "source value", "tokens", 380, 200, 0, 0, 0, 0, NULL, 0};
        char *bars = dm_svg_bars(cb, (int)nb, json_number_value(json_object_get(hist, "lo")),
                                 json_number_value(json_object_get(hist, "hi")), &o);
        put(h, "%s", bars);
        free(bars);
        free(cb);
    }
    put(h, "</div><div>");
    if (ce) {
        put(h, "<table><tr><th colspan=\"2\">top (source value)</th></tr>\n");
        example_rows(h, json_object_get(ce, "top"), 10);
        put(h, "<tr><th colspan=\"2\">bottom</th></tr>\n");
        example_rows(h, json_object_get(ce, "bottom"), 10);
        put(h, "</table>\n");
    }
    json_t *ae = acomps ? json_array_get(acomps, (size_t)i) : NULL;
    if (ae) {
        put(h, "<table><tr><th colspan=\"2\">top (activation projection, as the plan ranks)</th></tr>\n");
        example_rows(h, json_object_get(ae, "top"), 5);
        put(h, "</table>\n");
    }
    put(h, "</div></div></div>\n");
}

static int report_finish(dm_node *n)
{
    vec act_var = get_vec(n, IN_ACT_VAR), res_var = get_vec(n, IN_RES_VAR), res_k = get_vec(n, IN_RES_KURT),
        cnt = get_vec(n, IN_N), ev = get_vec(n, IN_EIGEN), src_k = get_vec(n, IN_SRC_KURT),
        act_k = get_vec(n, IN_ACT_KURT), sae_k = get_vec(n, IN_SAE_KURT), sae_f = get_vec(n, IN_SAE_FREQ),
        stab = get_vec(n, IN_STABILITY), maxcos = get_vec(n, IN_MAXCOS), best = get_vec(n, IN_BEST);
    json_t *examples = get_json(n, IN_EXAMPLES), *act_examples = get_json(n, IN_ACT_EXAMPLES),
           *sae_sum = get_json(n, IN_SAE_SUMMARY), *ica_sum = get_json(n, IN_ICA_SUMMARY),
           *cmp_sum = get_json(n, IN_COMPARE_SUMMARY);
    double vmark = dm_param_float(n, "variance_mark"), gk = dm_param_float(n, "gaussian_kurtosis");
    double minf = dm_param_float(n, "sae_min_frequency");
    const char *hook = dm_param_str(n, "hook");
    int rc = 0;

    /* ---- numbers ---- */
    double fvu = NAN;
    if (act_var.n && act_var.n == res_var.n) { /* DOMAIN.md §5: sum var(e) / sum var(x) */
        double a = 0, r = 0;
        for (int64_t i = 0; i < act_var.n; i++)
            a += act_var.v[i], r += res_var.v[i];
        fvu = r / a;
    } else if (sae_sum) {
        fvu = json_num(sae_sum, "fvu");
    }
    double res_kurt_mean = mean_of(&res_k), src_mean = mean_of(&src_k), mean_cos = mean_of(&maxcos);
    int64_t k = maxcos.n ? maxcos.n : src_k.n ? src_k.n : stab.n;
    double *sae_sel = dm_xmalloc((size_t)(sae_k.n + 1) * sizeof(double));
    int64_t nsel = 0;
    for (int64_t i = 0; i < sae_k.n; i++)
        if ((!sae_f.n || (i < sae_f.n && sae_f.v[i] > minf)) && isfinite(sae_k.v[i]))
            sae_sel[nsel++] = sae_k.v[i];
    vec sel = {sae_sel, nsel};
    int64_t high = 0, low = 0, novel = 0, known = 0;
    for (int64_t i = 0; i < maxcos.n; i++) {
        int stable = !stab.n || (i < stab.n && stab.v[i] >= 0.9);
        int nongauss = !src_k.n || (i < src_k.n && fabs(src_k.v[i]) > gk);
        high += maxcos.v[i] > 0.8;
        low += maxcos.v[i] < 0.3;
        novel += maxcos.v[i] < 0.3 && stable && nongauss;
        known += maxcos.v[i] > 0.8 && stable;
    }
    int64_t kmark = 0;
    double evsum = 0, acc = 0;
    for (int64_t i = 0; i < ev.n; i++)
        evsum += ev.v[i] > 0 ? ev.v[i] : 0;
    for (int64_t i = 0; i < ev.n && evsum > 0; i++) {
        acc += ev.v[i] > 0 ? ev.v[i] : 0;
        if (acc / evsum >= vmark - 1e-12) {
            kmark = i + 1;
            break;
        }
    }
    double null_unit = cmp_sum ? json_num(cmp_sum, "null_baselines.random_unit.mean_max_cosine") : NAN;
    double null_cov = cmp_sum ? json_num(cmp_sum, "null_baselines.random_from_covariance.mean_max_cosine") : NAN;
    const char *verdict;
    if (isfinite(res_kurt_mean) && fabs(res_kurt_mean) < gk && (!src_k.n || fabs(src_mean) < gk))
        verdict = "gaussian_residual";
    else if (!maxcos.n)
        verdict = "non_gaussian_no_comparison";
    else if (novel > 0 && novel >= known)
        verdict = "dark_matter_features";
    else if (2 * known > maxcos.n)
        verdict = "sae_knows";
    else
        verdict = "mixed";

    /* planted data (the demo): how many atoms the SAE misses do the ICA patterns find? */
    json_t *planted = NULL;
    vec atoms = get_vec(n, IN_PLANTED), dirs = get_vec(n, IN_DIRECTIONS);
    const dm_tensor *ta = dm_input_tensor(n, IN_PLANTED), *td = dm_input_tensor(n, IN_DIRECTIONS);
    int64_t n_recovered = 0, n_atoms = 0;
    if (ta && td && ta->ndim == 2 && td->ndim == 2 && ta->shape[1] == td->shape[1]) {
        int64_t dd = ta->shape[1], kk = td->shape[0];
        n_atoms = ta->shape[0];
        json_t *cosl = json_array();
        for (int64_t a = 0; a < n_atoms; a++) {
            double best = 0, na = 0;
            for (int64_t i = 0; i < dd; i++)
                na += atoms.v[a * dd + i] * atoms.v[a * dd + i];
            for (int64_t c = 0; c < kk; c++) {
                double dot = 0, nc = 0;
                for (int64_t i = 0; i < dd; i++)
                    dot += atoms.v[a * dd + i] * dirs.v[c * dd + i], nc += dirs.v[c * dd + i] * dirs.v[c * dd + i];
                double cs = fabs(dot) / sqrt(na * nc + 1e-300);
                best = cs > best ? cs : best;
            }
            n_recovered += best > 0.9;
            json_array_append_new(cosl, json_real(best));
        }
        planted = json_object();
        json_object_set_new(planted, "atoms_missed_by_sae", json_integer(n_atoms));
        json_object_set_new(planted, "recovered_by_ica", json_integer(n_recovered));
        json_object_set_new(planted, "threshold", json_real(0.9));
        json_object_set_new(planted, "max_abs_cos", cosl);
    }
    free(atoms.v), free(dirs.v);

    json_t *res = json_object();
    json_object_set_new(res, "model", json_string(dm_param_str(n, "model")));
    json_object_set_new(res, "sae", json_string(dm_param_str(n, "sae")));
    json_object_set_new(res, "tokens_analyzed", cnt.n ? json_integer((json_int_t)cnt.v[0]) : json_null());
    json_object_set_new(res, "fraction_variance_unexplained_by_sae", num(fvu));
    json_object_set_new(res, "residual_mean_kurtosis", num(res_kurt_mean));
    json_object_set_new(res, "n_ica_components", json_integer(k));
    json_t *sim = json_object();
    json_object_set_new(sim, "mean_max_cosine", num(mean_cos));
    json_object_set_new(sim, "high_similarity_count", maxcos.n ? json_integer(high) : json_null());
    json_object_set_new(sim, "low_similarity_count", maxcos.n ? json_integer(low) : json_null());
    json_object_set_new(res, "ica_sae_similarity", sim);
    /* the plan's step 8a takes the kurtosis of its ica_activations */
    json_object_set_new(res, "ica_component_kurtosis_mean", num(mean_of(act_k.n ? &act_k : &src_k)));
    json_object_set_new(res, "sae_feature_kurtosis_mean", num(mean_of(&sel)));
    json_object_set_new(res, "hook", json_string(hook));
    int layer = -1;
    if (sscanf(hook, "blocks.%d.", &layer) != 1)
        layer = -1;
    json_object_set_new(res, "layer", layer >= 0 ? json_integer(layer) : json_null());
    json_object_set_new(res, "ica_source_kurtosis_mean", num(src_mean));
    json_object_set_new(res, "ica_activation_kurtosis_mean", num(mean_of(&act_k)));
    json_object_set_new(res, "sae_features_in_kurtosis_comparison", json_integer(nsel));
    json_object_set_new(res, "residual_pca_components_for_variance_mark", ev.n ? json_integer(kmark) : json_null());
    json_object_set_new(res, "variance_mark", json_real(vmark));
    if (sae_sum) {
        json_object_set_new(res, "sae_l0", num(json_num(sae_sum, "mean_l0")));
        json_object_set_new(res, "sae_explained_variance", num(json_num(sae_sum, "explained_variance")));
        json_object_set_new(res, "linear_predictability_of_error", num(json_num(sae_sum, "linear_predictability")));
        json_object_set_new(res, "sae_statistics", json_incref(sae_sum));
    }
    json_t *nulls = json_object();
    json_object_set_new(nulls, "random_unit_mean_max_cosine", num(null_unit));
    json_object_set_new(nulls, "random_from_covariance_mean_max_cosine", num(null_cov));
    json_object_set_new(res, "null_baseline_similarity", nulls);
    if (ica_sum)
        json_object_set_new(res, "ica", json_incref(ica_sum));
    if (cmp_sum) {
        json_t *bp = json_object();
        json_object_set_new(bp, "variance_explained_by_ica", num(json_num(cmp_sum, "variance_explained_by_ica")));
        json_object_set_new(bp, "variance_explained_plan_formula",
                            num(json_num(cmp_sum, "variance_explained_plan_formula")));
        json_object_set_new(res, "ica_reconstruction", bp);
    }
    json_t *table = json_array();
    for (int64_t i = 0; i < k; i++) {
        json_t *c = json_object();
        json_object_set_new(c, "component", json_integer(i));
        json_object_set_new(c, "source_kurtosis", i < src_k.n ? num(src_k.v[i]) : json_null());
        json_object_set_new(c, "activation_kurtosis", i < act_k.n ? num(act_k.v[i]) : json_null());
        json_object_set_new(c, "max_cos", i < maxcos.n ? num(maxcos.v[i]) : json_null());
        json_object_set_new(c, "best_sae_feature", i < best.n ? json_integer((json_int_t)best.v[i]) : json_null());
        json_object_set_new(c, "stability", i < stab.n ? num(stab.v[i]) : json_null());
        json_array_append_new(table, c);
    }
    json_object_set_new(res, "components", table);
    json_t *jv = json_object(), *why = json_object();
    json_object_set_new(jv, "decision", json_string(verdict));
    json_object_set_new(jv, "explanation", json_string(verdict_text(verdict)));
    json_object_set_new(why, "residual_mean_kurtosis", num(res_kurt_mean));
    json_object_set_new(why, "ica_source_kurtosis_mean", num(src_mean));
    json_object_set_new(why, "gaussian_kurtosis_threshold", json_real(gk));
    json_object_set_new(why, "stable_new_components", json_integer(novel));
    json_object_set_new(why, "stable_known_components", json_integer(known));
    json_object_set_new(why, "components", json_integer(k));
    json_object_set_new(why, "null_mean_max_cosine", num(isfinite(null_cov) ? null_cov : null_unit));
    json_object_set_new(jv, "numbers", why);
    json_object_set_new(res, "verdict", jv);
    if (planted)
        json_object_set_new(res, "planted", planted);
    char *stages = dm_stage_times(n);
    json_error_t jerr;
    json_object_set_new(res, "time_per_stage", stages ? json_loads(stages, 0, &jerr) : json_null());
    free(stages);
    json_object_set_new(res, "versions", json_pack("{s:s}", "dmica", DM_VERSION));

    /* ---- the plan's four plots ---- */
    char *svgs[4];
    {
        dm_svg_mark m = {0, "Gaussian (0)", 1};
        dm_svg_series s = {res_k.v, (size_t)res_k.n, NULL, "#1f77b4"};
        dm_svg_opts o = {"Kurtosis of the SAE residual across dimensions", "excess kurtosis", "dimensions",
                         0, 0, 50, 0, 0, 0, &m, 1};
        svgs[0] = dm_svg_histogram(&s, res_k.n ? 1 : 0, &o);
    }
    {
        double *cum = dm_xmalloc((size_t)(ev.n + 1) * sizeof(double));
        acc = 0;
        for (int64_t i = 0; i < ev.n; i++)
            acc += ev.v[i] > 0 ? ev.v[i] : 0, cum[i] = evsum > 0 ? acc / evsum : NAN;
        char lab[64], lab2[64];
        snprintf(lab, sizeof lab, "%.0f%% of the variance", 100 * vmark);
        snprintf(lab2, sizeof lab2, "%lld components", (long long)kmark);
        dm_svg_mark m[2] = {{vmark, lab, 0}, {(double)kmark, lab2, 1}};
        dm_svg_series s = {cum, (size_t)ev.n, "cumulative variance", "#1f77b4"};
        dm_svg_opts o = {"PCA of the SAE residual", "number of PCA components", "cumulative variance explained",
                         0, 0, 0, 0, 0, 0, m, kmark > 0 ? 2 : 1};
        svgs[1] = dm_svg_line(&s, ev.n ? 1 : 0, &o);
        free(cum);
    }
    {
        dm_svg_series s = {maxcos.v, (size_t)maxcos.n, "ICA components", "#1f77b4"};
        dm_svg_mark m[4];
        int nm = 0;
        if (isfinite(null_unit))
            m[nm++] = (dm_svg_mark){null_unit, "null: random unit directions (mean)", 1};
        if (isfinite(null_cov))
            m[nm++] = (dm_svg_mark){null_cov, "null: random from residual covariance (mean)", 1};
        m[nm++] = (dm_svg_mark){0.3, "0.3 (low)", 1};
        m[nm++] = (dm_svg_mark){0.8, "0.8 (high)", 1};
        dm_svg_opts o = {"ICA component similarity to SAE features", "max |cos| with any SAE feature",
                         "ICA components", 0, 0, 20, 0, 0, 1, m, nm};
        svgs[2] = dm_svg_histogram(&s, maxcos.n ? 1 : 0, &o);
    }
    {
        const vec *ica = act_k.n ? &act_k : &src_k;
        dm_svg_series s[2] = {{ica->v, (size_t)ica->n, act_k.n ? "ICA components (activations)" : "ICA sources", "#1f77b4"},
                              {sel.v, (size_t)sel.n, "SAE features (active)", "#ff7f0e"}};
        dm_svg_opts o = {"Sparsity of ICA components vs SAE features", "excess kurtosis", "density",
                         0, 0, 50, 1, 0, 0, NULL, 0};
        svgs[3] = dm_svg_histogram(s, 2, &o);
    }
    static const char *svg_files[4] = {"residual_kurtosis.svg", "residual_pca.svg", "ica_sae_similarity.svg",
                                       "ica_vs_sae_kurtosis.svg"};
    for (int i = 0; i < 4 && !rc; i++)
        rc = write_product(n, svg_files[i], svgs[i]);

    /* ---- report.html ---- */
    dm_strbuf h = DM_STRBUF_INIT;
    put(&h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>");
    put_esc(&h, dm_param_str(n, "title"));
    put(&h, "</title>\n<style>\n"
            "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}"
            "table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}"
            ".num{text-align:right;font-variant-numeric:tabular-nums}.plots{display:flex;flex-wrap:wrap;gap:12px}"
            ".card{border:1px solid #ccc;border-radius:6px;padding:10px;margin:10px 0}"
            ".card h3{margin:0 0 6px 0}.ctx{font-family:monospace;white-space:pre-wrap}"
            "mark{background:#ffe08a;font-weight:bold}.verdict{background:#eef5ff;padding:10px;border-radius:6px}"
            ".cols{display:flex;gap:16px;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}\n"
            "</style></head><body>\n<h1>");
    put_esc(&h, dm_param_str(n, "title"));
    put(&h, "</h1>\n<p>");
    put_esc(&h, dm_param_str(n, "model"));
    if (*dm_param_str(n, "sae")) {
        put(&h, " &middot; SAE ");
        put_esc(&h, dm_param_str(n, "sae"));
    }
    if (*hook) {
        put(&h, " &middot; ");
        put_esc(&h, hook);
    }
    put(&h, "</p>\n<div class=\"verdict\" id=\"verdict\"><b>Verdict: %s.</b> ", verdict);
    put_esc(&h, verdict_text(verdict));
    put(&h, "</div>\n");
    if (n_atoms)
        put(&h, "<p class=\"verdict\" id=\"planted\"><b>Planted data:</b> ICA recovers %lld of the %lld atoms the SAE "
                "misses (a pattern with |cos| &gt; 0.9 to the atom).</p>\n", (long long)n_recovered, (long long)n_atoms);
    put(&h, "<h2>Summary</h2>\n<table id=\"summary\">\n");
    static const char *keys[] = {"tokens_analyzed", "fraction_variance_unexplained_by_sae", "sae_l0",
                                 "sae_explained_variance", "linear_predictability_of_error", "residual_mean_kurtosis",
                                 "residual_pca_components_for_variance_mark", "n_ica_components",
                                 "ica_component_kurtosis_mean", "ica_source_kurtosis_mean",
                                 "sae_feature_kurtosis_mean"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(res, keys[i]);
        if (!v || json_is_null(v))
            continue;
        put(&h, "<tr><th>%s</th><td class=\"num\">", keys[i]);
        if (json_is_integer(v))
            put(&h, "%lld", (long long)json_integer_value(v));
        else
            put(&h, "%.4g", json_number_value(v));
        put(&h, "</td></tr>\n");
    }
    if (maxcos.n)
        put(&h, "<tr><th>ICA-SAE mean max |cos|</th><td class=\"num\">%.3f (null: %.3f unit, %.3f covariance)</td></tr>\n"
                "<tr><th>components with max |cos| &gt; 0.8 / &lt; 0.3</th><td class=\"num\">%lld / %lld</td></tr>\n",
            mean_cos, null_unit, null_cov, (long long)high, (long long)low);
    put(&h, "</table>\n<h2>Plots</h2>\n<div class=\"plots\">\n");
    for (int i = 0; i < 4; i++)
        put(&h, "<figure id=\"plot-%d\">%s</figure>\n", i, svgs[i]);
    put(&h, "</div>\n");
    int64_t ncards = k < dm_param_int(n, "cards") ? k : dm_param_int(n, "cards");
    if (ncards > 0) {
        put(&h, "<h2>Components</h2>\n<p>Sort by <select id=\"sort\">"
                "<option value=\"index\">component</option><option value=\"cos\">SAE similarity (low first)</option>"
                "<option value=\"-cos\">SAE similarity (high first)</option>"
                "<option value=\"-kurt\">kurtosis (high first)</option>"
                "<option value=\"-stab\">stability (high first)</option></select></p>\n<div id=\"cards\">\n");
        json_t *comps = examples ? json_object_get(examples, "components") : NULL;
        json_t *acomps = act_examples ? json_object_get(act_examples, "components") : NULL;
        for (int64_t i = 0; i < ncards; i++)
            component_card(&h, n, i, &maxcos, &best, &src_k, &act_k, &stab, comps, acomps);
        put(&h, "</div>\n<script>\n"
                "document.getElementById('sort').addEventListener('change', function (e) {\n"
                "  var key = e.target.value, sign = 1;\n"
                "  if (key[0] === '-') { sign = -1; key = key.slice(1); }\n"
                "  var box = document.getElementById('cards');\n"
                "  var cards = Array.prototype.slice.call(box.children);\n"
                "  cards.sort(function (a, b) { return sign * (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key])); });\n"
                "  cards.forEach(function (c) { box.appendChild(c); });\n"
                "});\n</script>\n");
    }
    put(&h, "<p><small>Written by dmica %s. Beside this page: results.json, residual_kurtosis.svg, "
            "residual_pca.svg, ica_sae_similarity.svg, ica_vs_sae_kurtosis.svg.</small></p>\n</body></html>\n",
        DM_VERSION);
    if (!rc)
        rc = write_product(n, "report.html", h.s);
    free(h.s);
    char *text = json_dumps(res, JSON_INDENT(2));
    if (!rc)
        rc = write_product(n, "results.json", text);
    if (!rc) {
        dm_tensor t;
        dm_tensor_from_text(&t, text, strlen(text));
        rc = dm_set_output(n, 0, &t);
    }
    free(text);
    json_decref(res);
    for (int i = 0; i < 4; i++)
        free(svgs[i]);
    vec all[] = {act_var, res_var, res_k, cnt, ev, src_k, act_k, sae_k, sae_f, stab, maxcos, best};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i].v);
    free(sae_sel);
    json_decref(examples), json_decref(act_examples), json_decref(sae_sum), json_decref(ica_sum),
        json_decref(cmp_sum);
    return rc;
}

const dm_op dm_op_report = {
    .name = "report",
    .version = 1,
    .summary = "results.json, the plan's plots as SVG, and report.html",
    .params = report_params,
    .inputs = report_inputs,
    .outputs = report_outputs,
    .infer = report_infer,
    .finish = report_finish,
};
