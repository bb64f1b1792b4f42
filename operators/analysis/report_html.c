/*
 * report_html.c: the report's plots as SVG and report.html, one
 * self-contained page (inline SVG, a little inline script, no network) with a
 * card per ICA component, and per RICA component when RICA ran (report.h).
 */
#include "report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svg.h"

#define put dm_strbuf_addf

const char *const dm_report_svg_files[DM_REPORT_SVGS] = {"residual_kurtosis.svg", "residual_pca.svg",
                                                         "ica_sae_similarity.svg", "ica_vs_sae_kurtosis.svg",
                                                         "causal.svg", "rica_sae_similarity.svg",
                                                         "rica_vs_sae_kurtosis.svg"};

static void put_esc_n(dm_strbuf *b, const char *t, size_t n)
{
    for (size_t i = 0; t && i < n && t[i]; i++) {
        switch (t[i]) {
        case '&': put(b, "&amp;"); break;
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '"': put(b, "&quot;"); break;
        case '\n': put(b, "&#x21b5;"); break;
        default: put(b, "%c", t[i]);
        }
    }
}

static void put_esc(dm_strbuf *b, const char *t) { put_esc_n(b, t, t ? strlen(t) : 0); }

/* The histogram of a decomposition's max |cos| with the SAE's features, with
 * its null baselines' means and the similarity thresholds marked. */
static char *similarity_svg(const dm_report_vec *mc, const char *method, double null_unit, double null_covariance)
{
    char series[64], title[96], ylabel[64];
    snprintf(series, sizeof series, "%s components", method);
    snprintf(title, sizeof title, "%s component similarity to SAE features", method);
    snprintf(ylabel, sizeof ylabel, "%s components", method);
    dm_svg_series s = {mc->v, (size_t)mc->n, series, "#1f77b4"};
    dm_svg_mark m[4];
    char low[32], high[32];
    int nm = 0;
    snprintf(low, sizeof low, "%g (low)", DM_THRESHOLD(DM_T_LOW_SIMILARITY));
    snprintf(high, sizeof high, "%g (high)", DM_THRESHOLD(DM_T_HIGH_SIMILARITY));
    if (isfinite(null_unit))
        m[nm++] = (dm_svg_mark){null_unit, "null: random unit directions (mean)", 1};
    if (isfinite(null_covariance))
        m[nm++] = (dm_svg_mark){null_covariance, "null: random from residual covariance (mean)", 1};
    m[nm++] = (dm_svg_mark){DM_THRESHOLD(DM_T_LOW_SIMILARITY), low, 1};
    m[nm++] = (dm_svg_mark){DM_THRESHOLD(DM_T_HIGH_SIMILARITY), high, 1};
    dm_svg_opts o = {title, "max |cos| with any SAE feature", ylabel, 0, 0, 20, 0, 0, 1, m, nm};
    return dm_svg_histogram(&s, mc->n ? 1 : 0, &o);
}

/* The densities of a decomposition's component kurtosis and the active SAE
 * features'. */
static char *kurtosis_svg(const dm_report_vec *k, const char *label, const char *method, const dm_report_numbers *r)
{
    char title[96];
    snprintf(title, sizeof title, "Sparsity of %s components vs SAE features", method);
    dm_svg_series s[2] = {{k->v, (size_t)k->n, label, "#1f77b4"},
                          {r->sae_selected, (size_t)r->n_sae_selected, "SAE features (active)", "#ff7f0e"}};
    dm_svg_opts o = {title, "excess kurtosis", "density", 0, 0, 50, 1, 0, 0, NULL, 0};
    return dm_svg_histogram(s, 2, &o);
}

void dm_report_svgs(const dm_report_in *in, const dm_report_numbers *r, char *svgs[DM_REPORT_SVGS])
{
    const dm_report_vec *rk = &in->residual_kurtosis, *ev = &in->eigenvalues, *mc = &in->max_cos,
                        *ak = &in->activation_kurtosis, *sk = &in->source_kurtosis;
    {
        dm_svg_mark m = {0, "Gaussian (0)", 1};
        dm_svg_series s = {rk->v, (size_t)rk->n, NULL, "#1f77b4"};
        dm_svg_opts o = {"Kurtosis of the SAE residual across dimensions", "excess kurtosis", "dimensions",
                         0, 0, 50, 0, 0, 0, &m, 1};
        svgs[0] = dm_svg_histogram(&s, rk->n ? 1 : 0, &o);
    }
    {
        int64_t kmark = r->pca_components_for_mark;
        char lab[64], lab2[64];
        snprintf(lab, sizeof lab, "%.0f%% of the variance", 100 * in->variance_mark);
        snprintf(lab2, sizeof lab2, "%lld components", (long long)kmark);
        dm_svg_mark m[2] = {{in->variance_mark, lab, 0}, {(double)kmark, lab2, 1}};
        dm_svg_series s = {r->pca_cumulative, (size_t)ev->n, "cumulative variance", "#1f77b4"};
        dm_svg_opts o = {"PCA of the SAE residual", "number of PCA components", "cumulative variance explained",
                         0, 0, 0, 0, 0, 0, m, kmark > 0 ? 2 : 1};
        svgs[1] = dm_svg_line(&s, ev->n ? 1 : 0, &o);
    }
    svgs[2] = similarity_svg(mc, "ICA", r->null_unit, r->null_covariance);
    svgs[3] = kurtosis_svg(ak->n ? ak : sk, ak->n ? "ICA components (activations)" : "ICA sources", "ICA", r);
    svgs[4] = NULL;
    if (r->causal_k) { /* each component's ablation KL against its matched nulls' median and 95% */
        int64_t k = r->causal_k;
        double *kl = dm_xmalloc(sizeof(double) * (size_t)(3 * k)), *med = kl + k, *q95 = kl + 2 * k;
        for (int64_t i = 0; i < k; i++)
            kl[i] = in->causal.v[4 * i + 1], med[i] = in->causal_band.v[3 * i + 1], q95[i] = in->causal_band.v[3 * i + 2];
        dm_svg_series s[3] = {{kl, (size_t)k, "KL of the component's ablation", "#d62728"},
                              {med, (size_t)k, "matched nulls: median", "#7f7f7f"},
                              {q95, (size_t)k, "matched nulls: 95%", "#bcbd22"}};
        dm_svg_opts o = {"Causal tests: each component against null directions of the same energy",
                         "ICA component (1-based)", "KL(clean || ablated), nats", 0, 0, 0, 0, 0, 0, NULL, 0};
        svgs[4] = dm_svg_line(s, 3, &o);
        free(kl);
    }
    svgs[5] = svgs[6] = NULL;
    if (r->rica_k) {
        const dm_report_vec *rak = &in->rica_activation_kurtosis, *rsk = &in->rica_source_kurtosis;
        svgs[5] = similarity_svg(&in->rica_max_cos, "RICA", r->rica_null_unit, r->rica_null_covariance);
        svgs[6] = kurtosis_svg(rak->n ? rak : rsk, rak->n ? "RICA components (activations)" : "RICA sources", "RICA",
                               r);
    }
}

/* Up to max examples from first on, one table row each. */
static void example_rows(dm_strbuf *h, const dm_examples_view *v, int64_t first, int64_t count, int64_t max)
{
    for (int64_t i = 0; i < count && i < max; i++) {
        const dm_example *e = &v->examples[first + i];
        put(h, "<tr><td class=\"num\">%.3g</td><td class=\"ctx\">", e->value);
        if (v->s.has_text) {
            put_esc_n(h, v->text + e->left, (size_t)e->left_len);
            put(h, "<mark>");
            put_esc_n(h, v->text + e->token, (size_t)e->token_len);
            put(h, "</mark>");
            put_esc_n(h, v->text + e->right, (size_t)e->right_len);
        } else {
            put(h, "row %lld", (long long)e->row);
        }
        put(h, "</td></tr>\n");
    }
}

/* A decomposition's per-component numbers and examples, for its cards: FastICA's
 * or RICA's. */
typedef struct {
    const char *name; /* "Component" or "RICA component" */
    const dm_report_vec *max_cos, *best, *source_kurtosis, *activation_kurtosis, *stability;
    const dm_examples_view *examples, *activation_examples;
    int causal; /* the causal tests are FastICA's */
} card_set;

static card_set ica_cards(const dm_report_in *in)
{
    return (card_set){"Component", &in->max_cos, &in->best_feature, &in->source_kurtosis, &in->activation_kurtosis,
                      &in->stability, in->examples, in->activation_examples, 1};
}

static card_set rica_cards(const dm_report_in *in)
{
    return (card_set){"RICA component", &in->rica_max_cos, &in->rica_best_feature, &in->rica_source_kurtosis,
                      &in->rica_activation_kurtosis, &in->rica_stability, in->rica_examples,
                      in->rica_activation_examples, 0};
}

/* The card of component i of cs: numbers, its source histogram, its examples. */
static void component_card(dm_strbuf *h, const dm_report_in *in, const card_set *cs, int64_t i)
{
    const char *np = in->neuronpedia;
    const dm_report_vec *maxcos = cs->max_cos, *best = cs->best, *src_k = cs->source_kurtosis,
                        *act_k = cs->activation_kurtosis, *stab = cs->stability;
    double c = i < maxcos->n ? maxcos->v[i] : NAN, kk = i < src_k->n ? src_k->v[i] : NAN,
           st = i < stab->n ? stab->v[i] : NAN;
    const int causal = cs->causal && i < in->causal.n / 4 && i < in->causal_band.n / 3;
    const double kl = causal ? in->causal.v[4 * i + 1] : NAN;
    put(h, "<div class=\"card\" data-index=\"%lld\" data-cos=\"%g\" data-kurt=\"%g\" data-stab=\"%g\" "
           "data-kl=\"%g\">\n<h3>%s %lld</h3>\n<p>", (long long)i, isfinite(c) ? c : 9, isfinite(kk) ? kk : -1e9,
        isfinite(st) ? st : -1, isfinite(kl) ? kl : -1, cs->name, (long long)i);
    if (causal)
        put(h, "ablation: KL %.3g, &Delta;CE %+.3g (matched nulls' 95%%: %.3g; percentile %.0f, z %.1f)%s</p>\n<p>", kl,
            in->causal.v[4 * i], in->causal_band.v[3 * i + 2], in->causal.v[4 * i + 2], in->causal.v[4 * i + 3],
            kl > in->causal_band.v[3 * i + 2] ? " &middot; <b>used by the model</b>" : "");
    if (isfinite(st))
        put(h, "stability %.3f%s &middot; ", st, st < DM_THRESHOLD(DM_T_STABLE) ? " (unstable)" : "");
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
    const dm_examples_view *ex = cs->examples, *aex = cs->activation_examples;
    const dm_examples_column *ce = ex && i < ex->s.columns ? &ex->columns[i] : NULL;
    if (ce) {
        double *cb = dm_xmalloc((size_t)(ce->bins + 1) * sizeof(double));
        for (int64_t b = 0; b < ce->bins; b++)
            cb[b] = (double)ex->counts[ce->first_bin + b];
        char title[64];
        snprintf(title, sizeof title, "%s %lld: source values", cs->name, (long long)i);
        dm_svg_opts o = {title, "source value", "tokens", 380, 200, 0, 0, 0, 0, NULL, 0};
        char *bars = dm_svg_bars(cb, (int)ce->bins, ce->lo, ce->hi, &o);
        put(h, "%s", bars);
        free(bars);
        free(cb);
    }
    put(h, "</div><div>");
    if (ce) {
        put(h, "<table><tr><th colspan=\"2\">top (source value)</th></tr>\n");
        example_rows(h, ex, ce->first_example, ce->ntop, 10);
        put(h, "<tr><th colspan=\"2\">bottom</th></tr>\n");
        example_rows(h, ex, ce->first_example + ce->ntop, ce->nbottom, 10);
        put(h, "</table>\n");
    }
    const dm_examples_column *ae = aex && i < aex->s.columns ? &aex->columns[i] : NULL;
    if (ae) {
        put(h, "<table><tr><th colspan=\"2\">top (activation projection, as the plan ranks)</th></tr>\n");
        example_rows(h, aex, ae->first_example, ae->ntop, 5);
        put(h, "</table>\n");
    }
    put(h, "</div></div></div>\n");
}

/* The cards of cs's first n components in the box `box`, with a select `sort`
 * that reorders them. */
static void cards_section(dm_strbuf *h, const dm_report_in *in, const card_set *cs, int64_t n, const char *sort,
                          const char *box, int with_kl)
{
    put(h, "<p>Sort by <select id=\"%s\">"
           "<option value=\"index\">component</option><option value=\"cos\">SAE similarity (low first)</option>"
           "<option value=\"-cos\">SAE similarity (high first)</option>"
           "<option value=\"-kurt\">kurtosis (high first)</option>"
           "<option value=\"-stab\">stability (high first)</option>%s</select></p>\n<div id=\"%s\">\n",
        sort, with_kl ? "<option value=\"-kl\">ablation KL (high first)</option>" : "", box);
    for (int64_t i = 0; i < n; i++)
        component_card(h, in, cs, i);
    put(h, "</div>\n<script>\n"
           "document.getElementById('%s').addEventListener('change', function (e) {\n"
           "  var key = e.target.value, sign = 1;\n"
           "  if (key[0] === '-') { sign = -1; key = key.slice(1); }\n"
           "  var box = document.getElementById('%s');\n"
           "  var cards = Array.prototype.slice.call(box.children);\n"
           "  cards.sort(function (a, b) { return sign * (parseFloat(a.dataset[key]) - parseFloat(b.dataset[key])); });\n"
           "  cards.forEach(function (c) { box.appendChild(c); });\n"
           "});\n</script>\n",
        sort, box);
}

/* A row of the summary table: an integer, or a real printed with %.4g. */
static void summary_int(dm_strbuf *h, const char *name, int present, int64_t v)
{
    if (present)
        put(h, "<tr><th>%s</th><td class=\"num\">%lld</td></tr>\n", name, (long long)v);
}

static void summary_real(dm_strbuf *h, const char *name, double v)
{
    if (isfinite(v))
        put(h, "<tr><th>%s</th><td class=\"num\">%.4g</td></tr>\n", name, v);
}

/* A row of the FastICA / RICA table: %.4g, or a dash where not computed. */
static void pair_row(dm_strbuf *h, const char *name, double ica, double rica)
{
    put(h, "<tr><th>%s</th>", name);
    for (int i = 0; i < 2; i++) {
        double v = i ? rica : ica;
        if (isfinite(v))
            put(h, "<td class=\"num\">%.4g</td>", v);
        else
            put(h, "<td class=\"num\">&ndash;</td>");
    }
    put(h, "</tr>\n");
}

static void count_cell(dm_strbuf *h, int present, int64_t high, int64_t low)
{
    if (present)
        put(h, "<td class=\"num\">%lld / %lld</td>", (long long)high, (long long)low);
    else
        put(h, "<td class=\"num\">&ndash;</td>");
}

/* FastICA and RICA (docs/rica.md) on the same whitened residual. */
static void rica_side_by_side(dm_strbuf *h, const dm_report_in *in, const dm_report_numbers *r)
{
    int64_t ica_unstable = 0;
    for (int64_t i = 0; i < in->stability.n && in->ica_summary && in->ica_summary->seeds > 1; i++)
        ica_unstable += in->stability.v[i] < DM_THRESHOLD(DM_T_STABLE);
    put(h, "<h2>FastICA and RICA</h2>\n<p>RICA (reconstruction ICA) may find more components than the whitened "
           "dimension; both ran on the same whitened residual (rica.json, rica_compare.json, "
           "rica_directions.npy, rica_top_examples.json).</p>\n<table id=\"rica\">\n"
           "<tr><th></th><th>FastICA</th><th>RICA</th></tr>\n");
    pair_row(h, "components", (double)r->k, (double)r->rica_k);
    pair_row(h, "iterations (first seed)", in->ica_summary ? (double)in->ica_summary->iterations : NAN,
             (double)in->rica_summary->iterations);
    pair_row(h, "SAE mean max |cos|", in->max_cos.n ? r->mean_max_cos : NAN, r->rica_mean_max_cos);
    pair_row(h, "null mean max |cos| (covariance)", r->null_covariance, r->rica_null_covariance);
    put(h, "<tr><th>max |cos| &gt; %g / &lt; %g</th>", DM_THRESHOLD(DM_T_HIGH_SIMILARITY),
        DM_THRESHOLD(DM_T_LOW_SIMILARITY));
    count_cell(h, in->max_cos.n > 0, r->verdict.high, r->verdict.low);
    count_cell(h, in->rica_max_cos.n > 0, r->rica_high, r->rica_low);
    put(h, "</tr>\n");
    pair_row(h, "component kurtosis mean",
             in->activation_kurtosis.n ? r->activation_kurtosis_mean : r->source_kurtosis_mean,
             in->rica_activation_kurtosis.n ? r->rica_activation_kurtosis_mean : r->rica_source_kurtosis_mean);
    pair_row(h, "source kurtosis mean", r->source_kurtosis_mean, r->rica_source_kurtosis_mean);
    pair_row(h, "unstable components", in->stability.n ? (double)ica_unstable : NAN,
             in->rica_stability.n ? (double)r->rica_unstable : NAN);
    if (in->planted)
        pair_row(h, "planted atoms recovered", (double)r->planted_recovered,
                 r->rica_planted_recovered >= 0 ? (double)r->rica_planted_recovered : NAN);
    put(h, "</table>\n");
}

char *dm_report_html(const dm_report_in *in, const dm_report_numbers *r, char *const svgs[DM_REPORT_SVGS])
{
    const char *verdict = dm_verdict_name(r->verdict.decision);
    const dm_sae_summary *ss = in->sae_summary;
    dm_strbuf h = DM_STRBUF_INIT;
    put(&h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>");
    put_esc(&h, in->title);
    put(&h, "</title>\n<style>\n"
            "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}"
            "table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}"
            ".num{text-align:right;font-variant-numeric:tabular-nums}.plots{display:flex;flex-wrap:wrap;gap:12px}"
            ".card{border:1px solid #ccc;border-radius:6px;padding:10px;margin:10px 0}"
            ".card h3{margin:0 0 6px 0}.ctx{font-family:monospace;white-space:pre-wrap}"
            "mark{background:#ffe08a;font-weight:bold}.verdict{background:#eef5ff;padding:10px;border-radius:6px}"
            ".cols{display:flex;gap:16px;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}\n"
            "</style></head><body>\n<h1>");
    put_esc(&h, in->title);
    put(&h, "</h1>\n<p>");
    put_esc(&h, in->model);
    if (*in->sae) {
        put(&h, " &middot; SAE ");
        put_esc(&h, in->sae);
    }
    if (*in->hook) {
        put(&h, " &middot; ");
        put_esc(&h, in->hook);
    }
    put(&h, "</p>\n<div class=\"verdict\" id=\"verdict\"><b>Verdict: %s.</b> ", verdict);
    put_esc(&h, dm_verdict_text(r->verdict.decision));
    put(&h, "</div>\n");
    if (r->causal_k)
        put(&h, "<p class=\"verdict\" id=\"causal\"><b>Causal tests:</b> %lld of %lld components change the model's "
                "next-token distribution more than 95%% of null directions removed with the same energy (KL of the "
                "ablation; causal.json).</p>\n",
            (long long)r->causal_above, (long long)r->causal_k);
    if (in->planted && in->n_atoms && r->rica_planted_recovered >= 0)
        put(&h, "<p class=\"verdict\" id=\"planted\"><b>Planted data:</b> of the %lld atoms the SAE misses, FastICA "
                "recovers %lld with its %lld components and RICA %lld with its %lld (a pattern with |cos| &gt; %g to "
                "the atom).</p>\n", (long long)in->n_atoms, (long long)r->planted_recovered, (long long)in->n_directions,
            (long long)r->rica_planted_recovered, (long long)in->n_rica_directions, DM_THRESHOLD(DM_T_RECOVERED));
    else if (in->planted && in->n_atoms)
        put(&h, "<p class=\"verdict\" id=\"planted\"><b>Planted data:</b> ICA recovers %lld of the %lld atoms the SAE "
                "misses (a pattern with |cos| &gt; %g to the atom).</p>\n", (long long)r->planted_recovered,
            (long long)in->n_atoms, DM_THRESHOLD(DM_T_RECOVERED));
    put(&h, "<h2>Summary</h2>\n<table id=\"summary\">\n");
    summary_int(&h, "tokens_analyzed", in->count.n > 0, in->count.n ? (int64_t)in->count.v[0] : 0);
    summary_real(&h, "fraction_variance_unexplained_by_sae", r->fvu);
    summary_real(&h, "sae_l0", ss ? ss->mean_l0 : NAN);
    summary_real(&h, "sae_explained_variance", ss ? ss->explained_variance : NAN);
    summary_real(&h, "linear_predictability_of_error", ss ? ss->linear_predictability : NAN);
    summary_real(&h, "residual_mean_kurtosis", r->residual_kurtosis_mean);
    summary_int(&h, "residual_pca_components_for_variance_mark", in->eigenvalues.n > 0, r->pca_components_for_mark);
    summary_int(&h, "n_ica_components", 1, r->k);
    summary_real(&h, "ica_component_kurtosis_mean",
                 in->activation_kurtosis.n ? r->activation_kurtosis_mean : r->source_kurtosis_mean);
    summary_real(&h, "ica_source_kurtosis_mean", r->source_kurtosis_mean);
    summary_real(&h, "sae_feature_kurtosis_mean", r->sae_kurtosis_mean);
    if (in->max_cos.n)
        put(&h, "<tr><th>ICA-SAE mean max |cos|</th><td class=\"num\">%.3f (null: %.3f unit, %.3f covariance)</td></tr>\n"
                "<tr><th>components with max |cos| &gt; %g / &lt; %g</th><td class=\"num\">%lld / %lld</td></tr>\n",
            r->mean_max_cos, r->null_unit, r->null_covariance, DM_THRESHOLD(DM_T_HIGH_SIMILARITY),
            DM_THRESHOLD(DM_T_LOW_SIMILARITY), (long long)r->verdict.high, (long long)r->verdict.low);
    put(&h, "</table>\n");
    if (r->rica_k)
        rica_side_by_side(&h, in, r);
    put(&h, "<h2>Plots</h2>\n<div class=\"plots\">\n");
    for (int i = 0; i < DM_REPORT_SVGS; i++)
        if (svgs[i])
            put(&h, "<figure id=\"plot-%d\">%s</figure>\n", i, svgs[i]);
    put(&h, "</div>\n");
    int64_t ncards = r->k < in->cards ? r->k : in->cards;
    if (ncards > 0) {
        card_set cs = ica_cards(in);
        put(&h, "<h2>Components</h2>\n");
        cards_section(&h, in, &cs, ncards, "sort", "cards", r->causal_k > 0);
    }
    int64_t nrica = r->rica_k < in->cards ? r->rica_k : in->cards;
    if (nrica > 0) {
        card_set cs = rica_cards(in);
        put(&h, "<h2>RICA components</h2>\n");
        cards_section(&h, in, &cs, nrica, "rica-sort", "rica-cards", 0);
    }
    put(&h, "<p><small>Written by dmica %s. Beside this page: results.json, residual_kurtosis.svg, "
            "residual_pca.svg, ica_sae_similarity.svg, ica_vs_sae_kurtosis.svg%s.</small></p>\n</body></html>\n",
        in->version, r->rica_k ? ", rica_sae_similarity.svg, rica_vs_sae_kurtosis.svg" : "");
    return h.s;
}
