/*
 * results.c: the report's numbers, its verdict, and results.json (report.h).
 */
#include "report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double mean_of(const double *v, int64_t n)
{
    double s = 0;
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(v[i]))
            s += v[i], c++;
    return c ? s / (double)c : NAN;
}

/* x as ica_compare.json prints it (10 significant digits, JSON_REAL_PRECISION
 * there), so that results.json quotes the same numbers as ica_compare.json. */
static double as_published(double x)
{
    char b[64];
    if (!isfinite(x))
        return x;
    snprintf(b, sizeof b, "%.10g", x);
    return strtod(b, NULL);
}

/* Atoms (in->atoms) with some row of dir (m x atom_d) at |cos| above the
 * recovered threshold; each atom's best |cos| into maxc when not NULL. */
static int64_t planted_recovered(const dm_report_in *in, const double *dir, int64_t m, double *maxc)
{
    int64_t d = in->atom_d, count = 0;
    const double *at = in->atoms;
    for (int64_t a = 0; a < in->n_atoms; a++) {
        double best = 0, na = 0;
        for (int64_t i = 0; i < d; i++)
            na += at[a * d + i] * at[a * d + i];
        for (int64_t c = 0; c < m; c++) {
            double dot = 0, nc = 0;
            for (int64_t i = 0; i < d; i++)
                dot += at[a * d + i] * dir[c * d + i], nc += dir[c * d + i] * dir[c * d + i];
            double cs2 = fabs(dot) / sqrt(na * nc + 1e-300);
            best = cs2 > best ? cs2 : best;
        }
        count += best > DM_THRESHOLD(DM_T_RECOVERED);
        if (maxc)
            maxc[a] = best;
    }
    return count;
}

/* RICA's numbers, with ICA's thresholds (verdict.h). */
static void rica_compute(const dm_report_in *in, dm_report_numbers *r)
{
    const dm_report_vec *mc = &in->rica_max_cos, *st = &in->rica_stability;
    r->rica_planted_recovered = -1;
    r->rica_mean_max_cos = r->rica_source_kurtosis_mean = r->rica_activation_kurtosis_mean = NAN;
    r->rica_null_unit = r->rica_null_covariance = NAN;
    if (!in->rica_summary)
        return;
    r->rica_k = in->rica_summary->k;
    r->rica_mean_max_cos = mean_of(mc->v, mc->n);
    for (int64_t i = 0; i < mc->n; i++) {
        r->rica_high += mc->v[i] > DM_THRESHOLD(DM_T_HIGH_SIMILARITY);
        r->rica_low += mc->v[i] < DM_THRESHOLD(DM_T_LOW_SIMILARITY);
    }
    for (int64_t i = 0; i < st->n && in->rica_summary->seeds > 1; i++)
        r->rica_unstable += st->v[i] < DM_THRESHOLD(DM_T_STABLE);
    r->rica_source_kurtosis_mean = mean_of(in->rica_source_kurtosis.v, in->rica_source_kurtosis.n);
    r->rica_activation_kurtosis_mean = mean_of(in->rica_activation_kurtosis.v, in->rica_activation_kurtosis.n);
    if (in->rica_compare && in->rica_compare->d_sae > 0) {
        r->rica_null_unit = as_published(in->rica_compare->null_unit.mean);
        r->rica_null_covariance = as_published(in->rica_compare->null_covariance.mean);
    }
    if (in->planted && in->rica_directions)
        r->rica_planted_recovered = planted_recovered(in, in->rica_directions, in->n_rica_directions, NULL);
}

void dm_report_compute(const dm_report_in *in, dm_report_numbers *r)
{
    memset(r, 0, sizeof *r);
    /* the causal tests: components whose ablation KL is above their nulls' 95% */
    r->causal_k = in->causal.n / 4 < in->causal_band.n / 3 ? in->causal.n / 4 : in->causal_band.n / 3;
    for (int64_t i = 0; i < r->causal_k; i++)
        r->causal_above += in->causal.v[4 * i + 1] > in->causal_band.v[3 * i + 2];
    /* the fraction of variance unexplained: sum_j var(e_j) / sum_j var(x_j)
     * over the dimensions, e = x - x_hat the SAE's residual */
    r->fvu = NAN;
    if (in->activation_var.n && in->activation_var.n == in->residual_var.n) {
        double a = 0, e = 0;
        for (int64_t i = 0; i < in->activation_var.n; i++)
            a += in->activation_var.v[i], e += in->residual_var.v[i];
        r->fvu = e / a;
    } else if (in->sae_summary) {
        r->fvu = in->sae_summary->fvu;
    }
    r->residual_kurtosis_mean = mean_of(in->residual_kurtosis.v, in->residual_kurtosis.n);
    r->source_kurtosis_mean = mean_of(in->source_kurtosis.v, in->source_kurtosis.n);
    r->activation_kurtosis_mean = mean_of(in->activation_kurtosis.v, in->activation_kurtosis.n);
    r->mean_max_cos = mean_of(in->max_cos.v, in->max_cos.n);
    r->k = in->max_cos.n        ? in->max_cos.n
           : in->source_kurtosis.n ? in->source_kurtosis.n
           : in->stability.n       ? in->stability.n
                                   : r->causal_k;

    const dm_report_vec *sk = &in->sae_kurtosis, *sf = &in->sae_frequency;
    r->sae_selected = dm_xmalloc((size_t)(sk->n + 1) * sizeof(double));
    for (int64_t i = 0; i < sk->n; i++)
        if ((!sf->n || (i < sf->n && sf->v[i] > in->sae_min_frequency)) && isfinite(sk->v[i]))
            r->sae_selected[r->n_sae_selected++] = sk->v[i];
    r->sae_kurtosis_mean = mean_of(r->sae_selected, r->n_sae_selected);

    /* PCA: cumulative share of the (positive) eigenvalues, and the first count
     * of components reaching variance_mark */
    const dm_report_vec *ev = &in->eigenvalues;
    double evsum = 0, acc = 0;
    r->pca_cumulative = dm_xmalloc((size_t)(ev->n + 1) * sizeof(double));
    for (int64_t i = 0; i < ev->n; i++)
        evsum += ev->v[i] > 0 ? ev->v[i] : 0;
    for (int64_t i = 0; i < ev->n && evsum > 0; i++) {
        acc += ev->v[i] > 0 ? ev->v[i] : 0;
        if (acc / evsum >= in->variance_mark - 1e-12) {
            r->pca_components_for_mark = i + 1;
            break;
        }
    }
    acc = 0;
    for (int64_t i = 0; i < ev->n; i++)
        acc += ev->v[i] > 0 ? ev->v[i] : 0, r->pca_cumulative[i] = evsum > 0 ? acc / evsum : NAN;

    const dm_compare_summary *cs = in->compare;
    r->null_unit = r->null_covariance = NAN;
    r->variance_explained_by_ica = r->variance_explained_by_unscaled_reconstruction = NAN;
    if (cs) {
        if (cs->d_sae > 0) {
            r->null_unit = as_published(cs->null_unit.mean);
            r->null_covariance = as_published(cs->null_covariance.mean);
        }
        r->variance_explained_by_ica = as_published(cs->variance_explained_by_ica);
        r->variance_explained_by_unscaled_reconstruction =
            as_published(cs->variance_explained_by_unscaled_reconstruction);
    }

    dm_verdict_in vi = {r->residual_kurtosis_mean, r->source_kurtosis_mean, in->max_cos.v, in->max_cos.n,
                        in->stability.v, in->stability.n, in->source_kurtosis.v, in->source_kurtosis.n,
                        in->gaussian_kurtosis};
    dm_verdict_decide(&vi, &r->verdict);

    /* planted data (the demo): how many atoms the SAE misses do the ICA patterns find? */
    if (in->planted) {
        r->planted_max_cos = dm_xmalloc((size_t)(in->n_atoms + 1) * sizeof(double));
        r->planted_recovered = planted_recovered(in, in->directions, in->n_directions, r->planted_max_cos);
    }
    rica_compute(in, r);
}

void dm_report_numbers_free(dm_report_numbers *r)
{
    free(r->sae_selected), free(r->pca_cumulative), free(r->planted_max_cos);
    memset(r, 0, sizeof *r);
}

static json_t *num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static int load_doc(const char *doc, size_t len, const char *what, json_t **out)
{
    json_error_t err;
    if (!(*out = json_loadb(doc, len, 0, &err)))
        return dm_failc(DM_E_CORRUPT, "%s: its document is not JSON (%s, line %d)", what, err.text, err.line);
    return 0;
}

/* results.json's "rica": RICA's numbers and component table, as ICA's. */
static json_t *rica_json(const dm_report_in *in, const dm_report_numbers *r, json_t *doc)
{
    json_t *o = json_object(), *sim = json_object(), *nulls = json_object(), *table = json_array();
    const dm_report_vec *mc = &in->rica_max_cos, *bf = &in->rica_best_feature, *st = &in->rica_stability,
                        *sk = &in->rica_source_kurtosis, *ak = &in->rica_activation_kurtosis;
    json_object_set_new(o, "n_components", json_integer(r->rica_k));
    json_object_set_new(sim, "mean_max_cosine", num(r->rica_mean_max_cos));
    json_object_set_new(sim, "high_similarity_count", mc->n ? json_integer(r->rica_high) : json_null());
    json_object_set_new(sim, "low_similarity_count", mc->n ? json_integer(r->rica_low) : json_null());
    json_object_set_new(o, "sae_similarity", sim);
    json_object_set_new(nulls, "random_unit_mean_max_cosine", num(r->rica_null_unit));
    json_object_set_new(nulls, "random_from_covariance_mean_max_cosine", num(r->rica_null_covariance));
    json_object_set_new(o, "null_baseline_similarity", nulls);
    json_object_set_new(o, "component_kurtosis_mean",
                        num(ak->n ? r->rica_activation_kurtosis_mean : r->rica_source_kurtosis_mean));
    json_object_set_new(o, "source_kurtosis_mean", num(r->rica_source_kurtosis_mean));
    json_object_set_new(o, "activation_kurtosis_mean", num(r->rica_activation_kurtosis_mean));
    json_object_set_new(o, "unstable_components", json_integer(r->rica_unstable));
    if (r->rica_planted_recovered >= 0)
        json_object_set_new(o, "planted_recovered", json_integer(r->rica_planted_recovered));
    for (int64_t i = 0; i < r->rica_k; i++) {
        json_t *c = json_object();
        json_object_set_new(c, "component", json_integer(i));
        json_object_set_new(c, "source_kurtosis", i < sk->n ? num(sk->v[i]) : json_null());
        json_object_set_new(c, "activation_kurtosis", i < ak->n ? num(ak->v[i]) : json_null());
        json_object_set_new(c, "max_cos", i < mc->n ? num(mc->v[i]) : json_null());
        json_object_set_new(c, "best_sae_feature", i < bf->n ? json_integer((json_int_t)bf->v[i]) : json_null());
        json_object_set_new(c, "stability", i < st->n ? num(st->v[i]) : json_null());
        json_array_append_new(table, c);
    }
    json_object_set_new(o, "components", table);
    json_object_set_new(o, "run", doc);
    return o;
}

int dm_results_json(const dm_report_in *in, const dm_report_numbers *r, json_t **out)
{
    json_t *sae_doc = NULL, *ica_doc = NULL;
    *out = NULL;
    if (in->sae_summary && load_doc(in->sae_doc, in->sae_doc_len, "input sae_summary", &sae_doc))
        return -1;
    if (in->ica_summary && load_doc(in->ica_doc, in->ica_doc_len, "input ica_summary", &ica_doc)) {
        json_decref(sae_doc);
        return -1;
    }
    json_t *rica_doc = NULL;
    if (in->rica_summary && load_doc(in->rica_doc, in->rica_doc_len, "input rica_summary", &rica_doc)) {
        json_decref(sae_doc), json_decref(ica_doc);
        return -1;
    }
    const dm_report_vec *mc = &in->max_cos, *ca = &in->causal, *cb = &in->causal_band;
    int64_t k = r->k;
    json_t *res = json_object();
    json_object_set_new(res, "model", json_string(in->model));
    json_object_set_new(res, "sae", json_string(in->sae));
    json_object_set_new(res, "tokens_analyzed", in->count.n ? json_integer((json_int_t)in->count.v[0]) : json_null());
    json_object_set_new(res, "fraction_variance_unexplained_by_sae", num(r->fvu));
    json_object_set_new(res, "residual_mean_kurtosis", num(r->residual_kurtosis_mean));
    json_object_set_new(res, "n_ica_components", json_integer(k));
    json_t *sim = json_object();
    json_object_set_new(sim, "mean_max_cosine", num(r->mean_max_cos));
    json_object_set_new(sim, "high_similarity_count", mc->n ? json_integer(r->verdict.high) : json_null());
    json_object_set_new(sim, "low_similarity_count", mc->n ? json_integer(r->verdict.low) : json_null());
    json_object_set_new(res, "ica_sae_similarity", sim);
    /* the kurtosis of the ICA activations (activations projected on the
     * patterns) when given, else of the sources */
    json_object_set_new(res, "ica_component_kurtosis_mean",
                        num(in->activation_kurtosis.n ? r->activation_kurtosis_mean : r->source_kurtosis_mean));
    json_object_set_new(res, "sae_feature_kurtosis_mean", num(r->sae_kurtosis_mean));
    json_object_set_new(res, "hook", json_string(in->hook));
    int layer = -1;
    if (sscanf(in->hook, "blocks.%d.", &layer) != 1)
        layer = -1;
    json_object_set_new(res, "layer", layer >= 0 ? json_integer(layer) : json_null());
    json_object_set_new(res, "ica_source_kurtosis_mean", num(r->source_kurtosis_mean));
    json_object_set_new(res, "ica_activation_kurtosis_mean", num(r->activation_kurtosis_mean));
    json_object_set_new(res, "sae_features_in_kurtosis_comparison", json_integer(r->n_sae_selected));
    json_object_set_new(res, "residual_pca_components_for_variance_mark",
                        in->eigenvalues.n ? json_integer(r->pca_components_for_mark) : json_null());
    json_object_set_new(res, "variance_mark", json_real(in->variance_mark));
    if (in->sae_summary) {
        json_object_set_new(res, "sae_l0", num(in->sae_summary->mean_l0));
        json_object_set_new(res, "sae_explained_variance", num(in->sae_summary->explained_variance));
        json_object_set_new(res, "linear_predictability_of_error", num(in->sae_summary->linear_predictability));
        json_object_set_new(res, "sae_statistics", sae_doc);
    }
    json_t *nulls = json_object();
    json_object_set_new(nulls, "random_unit_mean_max_cosine", num(r->null_unit));
    json_object_set_new(nulls, "random_from_covariance_mean_max_cosine", num(r->null_covariance));
    json_object_set_new(res, "null_baseline_similarity", nulls);
    if (ica_doc)
        json_object_set_new(res, "ica", ica_doc);
    if (in->compare) {
        json_t *bp = json_object();
        json_object_set_new(bp, "variance_explained_by_ica", num(r->variance_explained_by_ica));
        json_object_set_new(bp, "variance_explained_by_unscaled_reconstruction",
                            num(r->variance_explained_by_unscaled_reconstruction));
        json_object_set_new(res, "ica_reconstruction", bp);
    }
    json_t *table = json_array();
    const dm_report_vec *sk = &in->source_kurtosis, *ak = &in->activation_kurtosis, *bf = &in->best_feature,
                        *st = &in->stability;
    for (int64_t i = 0; i < k; i++) {
        json_t *c = json_object();
        json_object_set_new(c, "component", json_integer(i));
        json_object_set_new(c, "source_kurtosis", i < sk->n ? num(sk->v[i]) : json_null());
        json_object_set_new(c, "activation_kurtosis", i < ak->n ? num(ak->v[i]) : json_null());
        json_object_set_new(c, "max_cos", i < mc->n ? num(mc->v[i]) : json_null());
        json_object_set_new(c, "best_sae_feature", i < bf->n ? json_integer((json_int_t)bf->v[i]) : json_null());
        json_object_set_new(c, "stability", i < st->n ? num(st->v[i]) : json_null());
        if (i < r->causal_k) { /* the causal tests (docs/causal.md) */
            json_object_set_new(c, "delta_ce", num(ca->v[4 * i]));
            json_object_set_new(c, "kl", num(ca->v[4 * i + 1]));
            json_object_set_new(c, "null_percentile", num(ca->v[4 * i + 2]));
            json_object_set_new(c, "z", num(ca->v[4 * i + 3]));
            json_object_set_new(c, "null_kl_q95", num(cb->v[3 * i + 2]));
        }
        json_array_append_new(table, c);
    }
    json_object_set_new(res, "components", table);
    json_t *jv = json_object(), *why = json_object();
    json_object_set_new(jv, "decision", json_string(dm_verdict_name(r->verdict.decision)));
    json_object_set_new(jv, "explanation", json_string(dm_verdict_text(r->verdict.decision)));
    json_object_set_new(why, "residual_mean_kurtosis", num(r->residual_kurtosis_mean));
    json_object_set_new(why, "ica_source_kurtosis_mean", num(r->source_kurtosis_mean));
    json_object_set_new(why, "gaussian_kurtosis_threshold", json_real(in->gaussian_kurtosis));
    json_object_set_new(why, "stable_new_components", json_integer(r->verdict.novel));
    json_object_set_new(why, "stable_known_components", json_integer(r->verdict.known));
    json_object_set_new(why, "components", json_integer(k));
    json_object_set_new(why, "null_mean_max_cosine", num(isfinite(r->null_covariance) ? r->null_covariance : r->null_unit));
    if (r->causal_k)
        json_object_set_new(why, "causally_distinguishable_components", json_integer(r->causal_above));
    if (r->causal_k && in->causal_summary.n >= 13) {
        const double *s = in->causal_summary.v;
        json_t *cz = json_object(), *sp = json_object();
        json_object_set_new(cz, "ce_clean", num(s[0]));
        json_object_set_new(sp, "ce_sae", num(s[1]));
        json_object_set_new(sp, "kl_sae", num(s[2]));
        json_object_set_new(sp, "ce_zero", num(s[3]));
        json_object_set_new(sp, "kl_zero", num(s[4]));
        json_object_set_new(sp, "ce_loss_score", num(s[5]));
        json_object_set_new(sp, "kl_div_score", num(s[6]));
        json_object_set_new(cz, "splice", sp);
        json_object_set_new(cz, "all_components", json_pack("{s:o, s:o}", "delta_ce", num(s[7]), "kl", num(s[8])));
        json_object_set_new(cz, "pca_control", json_pack("{s:o, s:o}", "delta_ce", num(s[9]), "kl", num(s[10])));
        json_object_set_new(cz, "positions", json_integer((json_int_t)s[11]));
        json_object_set_new(cz, "components_above_null_q95", json_integer(r->causal_above));
        json_object_set_new(res, "causal", cz);
    }
    json_object_set_new(jv, "numbers", why);
    json_object_set_new(res, "verdict", jv);
    if (in->planted) {
        json_t *planted = json_object(), *cosl = json_array();
        for (int64_t a = 0; a < in->n_atoms; a++)
            json_array_append_new(cosl, json_real(r->planted_max_cos[a]));
        json_object_set_new(planted, "atoms_missed_by_sae", json_integer(in->n_atoms));
        json_object_set_new(planted, "recovered_by_ica", json_integer(r->planted_recovered));
        json_object_set_new(planted, "threshold", json_real(DM_THRESHOLD(DM_T_RECOVERED)));
        json_object_set_new(planted, "max_abs_cos", cosl);
        json_object_set_new(res, "planted", planted);
    }
    if (in->rica_summary)
        json_object_set_new(res, "rica", rica_json(in, r, rica_doc));
    json_error_t jerr;
    json_t *stages = in->stage_times ? json_loads(in->stage_times, 0, &jerr) : NULL;
    json_object_set_new(res, "time_per_stage", stages ? stages : json_null());
    json_object_set_new(res, "versions", json_pack("{s:s}", "dmica", in->version));
    *out = res;
    return 0;
}
