/*
 * op_report.c: the report operator: reads its inputs (every one optional, so
 * the report shows whatever the pipeline computed) into a dm_report_in and
 * publishes what operators/analysis/report.h makes of them: results.json, the
 * plots as SVG files, and report.html. The numbers, the verdict and its
 * thresholds, results.json and the HTML live in operators/analysis.
 *
 * Inputs: vectors from moments, pca, fastica, ica_compare and sae (any
 * numeric dtype); the typed summaries of sae, fastica and ica_compare and the
 * examples of topk (operators/analysis/summaries.h), each checked for its kind,
 * layout version and size.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "op.h"
#include "report.h"
#include "summaries.h"

enum {
    IN_ACT_VAR, IN_RES_VAR, IN_RES_KURT, IN_N, IN_EIGEN, IN_SRC_KURT, IN_ACT_KURT, IN_SAE_KURT, IN_SAE_FREQ,
    IN_STABILITY, IN_MAXCOS, IN_BEST, IN_EXAMPLES, IN_ACT_EXAMPLES, IN_SAE_SUMMARY, IN_ICA_SUMMARY,
    IN_COMPARE_SUMMARY, IN_DIRECTIONS, IN_PLANTED, IN_CAUSAL, IN_CAUSAL_BAND, IN_CAUSAL_SUMMARY,
    IN_RICA_STABILITY, IN_RICA_MAXCOS, IN_RICA_BEST, IN_RICA_SRC_KURT, IN_RICA_ACT_KURT, IN_RICA_SUMMARY,
    IN_RICA_COMPARE_SUMMARY, IN_RICA_DIRECTIONS, IN_RICA_EXAMPLES, IN_RICA_ACT_EXAMPLES
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
    {"planted_atoms", DM_PORT_TENSOR, 0, 1},       {"causal", DM_PORT_TENSOR, 0, 1},
    {"causal_band", DM_PORT_TENSOR, 0, 1},         {"causal_summary", DM_PORT_TENSOR, 0, 1},
    /* RICA beside FastICA (op_rica.c): the same per-component vectors and summaries */
    {"rica_stability", DM_PORT_TENSOR, 0, 1},      {"rica_max_cos", DM_PORT_TENSOR, 0, 1},
    {"rica_best_feature", DM_PORT_TENSOR, 0, 1},   {"rica_source_kurtosis", DM_PORT_TENSOR, 0, 1},
    {"rica_activation_kurtosis", DM_PORT_TENSOR, 0, 1}, {"rica_summary", DM_PORT_TENSOR, 0, 1},
    {"rica_compare_summary", DM_PORT_TENSOR, 0, 1}, {"rica_directions", DM_PORT_TENSOR, 0, 1},
    {"rica_examples", DM_PORT_TENSOR, 0, 1},       {"rica_activation_examples", DM_PORT_TENSOR, 0, 1},
    {NULL},
};
static const dm_port_spec report_outputs[] = {{"results", DM_PORT_TENSOR}, {NULL}};

static const dm_param_spec report_params[] = {
    {"model", DM_P_STRING, "gpt2-small", "model name for the results"},
    {"sae", DM_P_STRING, "", "SAE name for the results, e.g. gpt2-small-res-jb, layer 6"},
    {"hook", DM_P_STRING, "", "the hook analysed, e.g. blocks.6.hook_resid_pre"},
    {"neuronpedia", DM_P_STRING, "", "URL prefix of the SAE's feature pages (\"\": no links)"},
    {"variance_mark", DM_P_FLOAT, "0.9", "the PCA plot's mark: this fraction of the variance"},
    {"gaussian_kurtosis", DM_P_FLOAT, "0.5", "mean excess kurtosis below which a residual counts as Gaussian"},
    {"sae_min_frequency", DM_P_FLOAT, "0.001", "SAE features firing on more than this fraction enter the kurtosis comparison"},
    {"cards", DM_P_INT, "200", "component cards in report.html at most"},
    {"title", DM_P_STRING, "dmica: ICA of SAE residuals", "the report's title"},
    {NULL},
};

/* ---- reading inputs ------------------------------------------------------ */

static dm_report_vec get_vec(const dm_node *n, int port)
{
    dm_report_vec r = {NULL, 0};
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

/* The typed summaries and examples of the connected inputs. */
typedef struct {
    dm_sae_summary sae;
    dm_ica_summary ica, rica;
    dm_compare_summary cmp, rica_cmp;
    dm_examples_view examples, activation_examples, rica_examples, rica_activation_examples;
} summaries;

static int read_summaries(const dm_node *n, summaries *s, dm_report_in *in)
{
    const dm_tensor *t;
    memset(s, 0, sizeof *s);
    if ((t = dm_input_tensor(n, IN_SAE_SUMMARY))) {
        if (dm_sae_summary_read(t, "input sae_summary", &s->sae, &in->sae_doc, &in->sae_doc_len))
            return -1;
        in->sae_summary = &s->sae;
    }
    if ((t = dm_input_tensor(n, IN_ICA_SUMMARY))) {
        if (dm_ica_summary_read(t, "input ica_summary", &s->ica, &in->ica_doc, &in->ica_doc_len))
            return -1;
        in->ica_summary = &s->ica;
    }
    if ((t = dm_input_tensor(n, IN_COMPARE_SUMMARY))) {
        if (dm_compare_summary_read(t, "input compare_summary", &s->cmp))
            return -1;
        in->compare = &s->cmp;
    }
    if ((t = dm_input_tensor(n, IN_RICA_SUMMARY))) {
        if (dm_ica_summary_read(t, "input rica_summary", &s->rica, &in->rica_doc, &in->rica_doc_len))
            return -1;
        in->rica_summary = &s->rica;
    }
    if ((t = dm_input_tensor(n, IN_RICA_COMPARE_SUMMARY))) {
        if (dm_compare_summary_read(t, "input rica_compare_summary", &s->rica_cmp))
            return -1;
        in->rica_compare = &s->rica_cmp;
    }
    if ((t = dm_input_tensor(n, IN_EXAMPLES))) {
        if (dm_examples_summary_read(t, "input examples", &s->examples))
            return -1;
        in->examples = &s->examples;
    }
    if ((t = dm_input_tensor(n, IN_ACT_EXAMPLES))) {
        if (dm_examples_summary_read(t, "input activation_examples", &s->activation_examples))
            return -1;
        in->activation_examples = &s->activation_examples;
    }
    if ((t = dm_input_tensor(n, IN_RICA_EXAMPLES))) {
        if (dm_examples_summary_read(t, "input rica_examples", &s->rica_examples))
            return -1;
        in->rica_examples = &s->rica_examples;
    }
    if ((t = dm_input_tensor(n, IN_RICA_ACT_EXAMPLES))) {
        if (dm_examples_summary_read(t, "input rica_activation_examples", &s->rica_activation_examples))
            return -1;
        in->rica_activation_examples = &s->rica_activation_examples;
    }
    return 0;
}

static int report_infer(dm_node *n)
{
    dm_port_desc *o = dm_output_desc(n, 0);
    o->dtype = DM_U8;
    o->ndim = 1;
    o->shape[0] = -1;
    return 0;
}

static int report_finish(dm_node *n)
{
    dm_report_in in;
    summaries sm;
    memset(&in, 0, sizeof in);
    in.model = dm_param_str(n, "model");
    in.sae = dm_param_str(n, "sae");
    in.hook = dm_param_str(n, "hook");
    in.title = dm_param_str(n, "title");
    in.neuronpedia = dm_param_str(n, "neuronpedia");
    in.variance_mark = dm_param_float(n, "variance_mark");
    in.gaussian_kurtosis = dm_param_float(n, "gaussian_kurtosis");
    in.sae_min_frequency = dm_param_float(n, "sae_min_frequency");
    in.cards = dm_param_int(n, "cards");
    in.version = DM_VERSION;
    dm_report_vec *vecs[] = {&in.activation_var, &in.residual_var, &in.residual_kurtosis, &in.count,
                             &in.eigenvalues, &in.source_kurtosis, &in.activation_kurtosis, &in.sae_kurtosis,
                             &in.sae_frequency, &in.stability, &in.max_cos, &in.best_feature, &in.causal,
                             &in.causal_band, &in.causal_summary, &in.rica_stability, &in.rica_max_cos,
                             &in.rica_best_feature, &in.rica_source_kurtosis, &in.rica_activation_kurtosis};
    static const int ports[] = {IN_ACT_VAR, IN_RES_VAR, IN_RES_KURT, IN_N, IN_EIGEN, IN_SRC_KURT,
                                IN_ACT_KURT, IN_SAE_KURT, IN_SAE_FREQ, IN_STABILITY, IN_MAXCOS, IN_BEST,
                                IN_CAUSAL, IN_CAUSAL_BAND, IN_CAUSAL_SUMMARY, IN_RICA_STABILITY, IN_RICA_MAXCOS,
                                IN_RICA_BEST, IN_RICA_SRC_KURT, IN_RICA_ACT_KURT};
    for (size_t i = 0; i < sizeof ports / sizeof ports[0]; i++)
        *vecs[i] = get_vec(n, ports[i]);
    /* planted data (the demo): atoms and patterns of the same width */
    const dm_tensor *ta = dm_input_tensor(n, IN_PLANTED), *td = dm_input_tensor(n, IN_DIRECTIONS);
    dm_report_vec atoms = {NULL, 0}, dirs = {NULL, 0};
    if (ta && td && ta->ndim == 2 && td->ndim == 2 && ta->shape[1] == td->shape[1]) {
        atoms = get_vec(n, IN_PLANTED), dirs = get_vec(n, IN_DIRECTIONS);
        in.planted = 1;
        in.atoms = atoms.v, in.directions = dirs.v;
        in.n_atoms = ta->shape[0], in.n_directions = td->shape[0], in.atom_d = ta->shape[1];
    }
    const dm_tensor *tr = dm_input_tensor(n, IN_RICA_DIRECTIONS);
    dm_report_vec rdirs = {NULL, 0};
    if (in.planted && tr && tr->ndim == 2 && tr->shape[1] == in.atom_d) {
        rdirs = get_vec(n, IN_RICA_DIRECTIONS);
        in.rica_directions = rdirs.v, in.n_rica_directions = tr->shape[0];
    }
    char *stages = dm_stage_times(n);
    in.stage_times = stages;

    dm_report_numbers r;
    json_t *res = NULL;
    char *svgs[DM_REPORT_SVGS] = {NULL}, *html = NULL, *text = NULL;
    int rc = read_summaries(n, &sm, &in);
    if (!rc) {
        dm_report_compute(&in, &r);
        rc = dm_results_json(&in, &r, &res);
        if (!rc) {
            dm_report_svgs(&in, &r, svgs);
            html = dm_report_html(&in, &r, svgs);
            text = json_dumps(res, JSON_INDENT(2));
        }
        dm_report_numbers_free(&r);
    }
    for (int i = 0; i < DM_REPORT_SVGS && !rc; i++)
        if (svgs[i]) /* the causal plot only with the causal tests, RICA's only with RICA */
            rc = dm_publish_text(n, dm_report_svg_files[i], svgs[i], strlen(svgs[i]));
    if (!rc)
        rc = dm_publish_text(n, "report.html", html, strlen(html));
    if (!rc)
        rc = dm_publish_text(n, "results.json", text, strlen(text));
    if (!rc) {
        dm_tensor t;
        dm_tensor_from_text(&t, text, strlen(text));
        rc = dm_set_output(n, 0, &t);
    }
    free(text), free(html), free(stages);
    json_decref(res);
    for (int i = 0; i < DM_REPORT_SVGS; i++)
        free(svgs[i]);
    for (size_t i = 0; i < sizeof ports / sizeof ports[0]; i++)
        free(vecs[i]->v);
    free(atoms.v), free(dirs.v), free(rdirs.v);
    dm_examples_view_free(&sm.examples);
    dm_examples_view_free(&sm.activation_examples);
    dm_examples_view_free(&sm.rica_examples);
    dm_examples_view_free(&sm.rica_activation_examples);
    return rc;
}

const dm_op dm_op_report = {
    .name = "report",
    .version = 3, /* 3: RICA's cards and plots */
    .summary = "results.json, the plots as SVG, and report.html",
    .params = report_params,
    .inputs = report_inputs,
    .outputs = report_outputs,
    .infer = report_infer,
    .finish = report_finish,
};
