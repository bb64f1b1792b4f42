/*
 * report.h: the analysis read out, from typed inputs: the numbers and the
 * verdict (results.c), results.json (results.c), the plots as SVG and
 * report.html (report_html.c). The report operator (op_report.c) only reads
 * its input tensors into a dm_report_in and publishes what these return.
 *
 * Every input is optional (n = 0, or NULL): the report shows whatever the
 * pipeline computed.
 */
#ifndef DM_REPORT_H
#define DM_REPORT_H

#include <jansson.h>
#include <stdint.h>

#include "summaries.h"
#include "verdict.h"

typedef struct {
    double *v; /* owned by whoever filled the dm_report_in */
    int64_t n; /* 0: absent */
} dm_report_vec;

typedef struct {
    /* parameters */
    const char *model, *sae, *hook, *title, *neuronpedia;
    double variance_mark;     /* the PCA plot's mark, e.g. 0.9 of the variance */
    double gaussian_kurtosis; /* the verdict's threshold */
    double sae_min_frequency; /* SAE features firing on more enter the kurtosis comparison */
    int64_t cards;            /* component cards at most */
    const char *version;      /* dmica's version, for results.json and the page */
    const char *stage_times;  /* JSON text of the stages' times, or NULL */
    /* per-dimension, per-component and per-feature vectors */
    dm_report_vec activation_var, residual_var, residual_kurtosis, count, eigenvalues, source_kurtosis,
        activation_kurtosis, sae_kurtosis, sae_frequency, stability, max_cos, best_feature;
    /* the demo's planted atoms (n_atoms x atom_d) and the ICA patterns
     * (n_directions x atom_d); planted 0: no planted check */
    int planted;
    const double *atoms, *directions;
    int64_t n_atoms, n_directions, atom_d;
    /* summaries of other operators (NULL: absent); the documents are copied
     * into results.json whole */
    const dm_sae_summary *sae_summary;
    const char *sae_doc;
    size_t sae_doc_len;
    const dm_ica_summary *ica_summary;
    const char *ica_doc;
    size_t ica_doc_len;
    const dm_compare_summary *compare;
    const dm_examples_view *examples, *activation_examples;
    /* the causal tests (op_causal.c; n = 0: absent): per component delta_ce,
     * kl, null_percentile, z (k x 4); the matched nulls' KL at 5%, 50%, 95%
     * (k x 3); the study's 13 summary numbers (op_causal.c's `summary`) */
    dm_report_vec causal, causal_band, causal_summary;
    /* RICA beside FastICA (op_rica.c, docs/rica.md; rica_summary NULL: absent):
     * per component its stability, max |cos| with the SAE's decoder, best
     * feature, source and activation kurtosis; its run (rica.json's text) and
     * comparison summaries; its top examples (NULL: absent); its patterns
     * (n_rica_directions x atom_d) for the planted check, NULL without */
    dm_report_vec rica_stability, rica_max_cos, rica_best_feature, rica_source_kurtosis, rica_activation_kurtosis;
    const dm_examples_view *rica_examples, *rica_activation_examples;
    const dm_ica_summary *rica_summary;
    const char *rica_doc;
    size_t rica_doc_len;
    const dm_compare_summary *rica_compare;
    const double *rica_directions;
    int64_t n_rica_directions;
} dm_report_in;

/* The numbers results.json and the page show. NaN: not computed. */
typedef struct {
    double fvu;                    /* sum var(e) / sum var(x), else the SAE's own */
    double residual_kurtosis_mean; /* means over the finite entries */
    double source_kurtosis_mean, activation_kurtosis_mean, mean_max_cos;
    int64_t k;                     /* components */
    double *sae_selected;          /* kurtosis of the SAE features in the comparison (owned) */
    int64_t n_sae_selected;
    double sae_kurtosis_mean;
    int64_t pca_components_for_mark; /* first count reaching variance_mark of the variance */
    double *pca_cumulative;        /* (eigenvalues.n) cumulative variance ratio (owned) */
    double null_unit, null_covariance; /* mean max |cos| of the null baselines */
    double variance_explained_by_ica, variance_explained_by_unscaled_reconstruction;
    dm_verdict verdict;
    int64_t planted_recovered;      /* atoms with |cos| above the recovered threshold */
    double *planted_max_cos;        /* (n_atoms) best |cos| of each atom (owned) */
    int64_t causal_k;               /* components with causal tests (0: none) */
    int64_t causal_above;           /* of those, with an ablation KL above their nulls' 95% */
    /* RICA (rica_k 0: absent), counted with the same thresholds as ICA's */
    int64_t rica_k, rica_high, rica_low, rica_unstable;
    double rica_mean_max_cos, rica_source_kurtosis_mean, rica_activation_kurtosis_mean;
    double rica_null_unit, rica_null_covariance;
    int64_t rica_planted_recovered; /* -1: no planted check */
} dm_report_numbers;

void dm_report_compute(const dm_report_in *in, dm_report_numbers *out);
void dm_report_numbers_free(dm_report_numbers *r);

/* results.json's object; -1 with DM_E_CORRUPT when a summary's document is
 * not JSON. */
int dm_results_json(const dm_report_in *in, const dm_report_numbers *r, json_t **out);

/* The plots: residual kurtosis, residual PCA, ICA-SAE similarity, ICA vs SAE
 * kurtosis, (with the causal tests; NULL without) each component's ablation
 * KL against its nulls, and (with RICA; NULL without) RICA-SAE similarity and
 * RICA vs SAE kurtosis; the files they are published as in
 * dm_report_svg_files. */
#define DM_REPORT_SVGS 7
extern const char *const dm_report_svg_files[DM_REPORT_SVGS];
void dm_report_svgs(const dm_report_in *in, const dm_report_numbers *r, char *svgs[DM_REPORT_SVGS]);

/* report.html, self-contained (inline SVG, a little script, no network). */
char *dm_report_html(const dm_report_in *in, const dm_report_numbers *r, char *const svgs[DM_REPORT_SVGS]);

#endif
