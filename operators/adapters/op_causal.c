/*
 * op_causal.c: operator `causal`, are the ICA components of the SAE's residual
 * used by the model? (issue 14; docs/causal.md; the kernel is
 * operators/analysis/causal.c).
 *
 * It keeps the first `tokens` tokens of the run's token windows (whole
 * windows), then at finish:
 *   - loads the model (whole) and the SAE;
 *   - runs the blocks before the SAE's hook once per window;
 *   - ablates there: the SAE spliced in, zeros, each component, all of them,
 *     `nulls` random directions of each of two kinds (isotropic, and drawn from
 *     the residual's covariance, pca's eigenvalues and components) matched to
 *     each component's removed energy (directly, or through `energy_levels`
 *     levels: causal.h), and the top k principal directions of the residual
 *     (pca's) as a same-rank control.
 *
 * Products: causal.json (every number, docs/causal.md's schema) and
 * causal_windows.npy (int32, windows x context: the tokens it used).
 *
 * Outputs:
 *   components (k, 4)  delta_ce, kl, null_percentile, z
 *   null_band  (k, 3)  the matched nulls' KL: 5%, 50%, 95% quantiles
 *   summary    (13)    ce_clean, ce_sae, kl_sae, ce_zero, kl_zero, ce_loss_score,
 *                      kl_div_score, all_delta_ce, all_kl, pca_delta_ce,
 *                      pca_kl, positions, components above their nulls' 95%
 *
 * Cost: 2 + k + 2 + 2 nulls min(k, energy_levels) ablations, each the blocks
 * after the hook and the unembedding for every token (docs/causal.md).
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "causal.h"
#include "ica_backproject.h"
#include "npy.h"
#include "op.h"
#include "sae_desc.h"

enum { IN_WINDOWS, IN_SAE, IN_FILTERS, IN_MIXING, IN_MEAN, IN_EIGENVALUES, IN_COMPONENTS };
enum { OUT_COMPONENTS, OUT_BAND, OUT_SUMMARY };
#define SUMMARY_N 13

static const dm_param_spec causal_params[] = {
    {"model", DM_P_PATH, NULL, "the GPT-2 folder the run used (config.json, model.safetensors)"},
    {"sae", DM_P_PATH, "", "SAELens folder; or connect input sae (an sae_config node)"},
    {"center", DM_P_STRING, "auto", "centre the hook's rows as the SAE was trained: auto (its cfg.json), true, false"},
    {"tokens", DM_P_INT, "16384", "tokens of the run's windows to ablate on (whole windows)"},
    {"nulls", DM_P_INT, "100", "random directions of each kind (isotropic, from the residual's covariance)"},
    {"seed", DM_P_INT, "0", "seed of the null directions (numpy's RandomState)"},
    {"energy_levels", DM_P_INT, "8",
     "scale the nulls to this many energies spanning the components' and interpolate (2 nulls levels ablations, not "
     "2 nulls k); 0, or k or more: to each component's own energy"},
    {"rows", DM_P_INT, "512", "token rows per model call (its logits are rows x vocabulary floats)"},
    {"file", DM_P_STRING, "causal.json", "product: every number"},
    {"windows_file", DM_P_STRING, "causal_windows.npy", "product: the token windows used (int32)"},
    {NULL},
};
static const dm_port_spec causal_inputs[] = {
    {"windows", DM_PORT_STREAM, 0, 0, 0, DM_I32},
    {"sae", DM_PORT_TENSOR, 0, 1},
    {"filters", DM_PORT_TENSOR},
    {"mixing", DM_PORT_TENSOR},
    {"mean", DM_PORT_TENSOR},
    {"eigenvalues", DM_PORT_TENSOR},
    {"components", DM_PORT_TENSOR},
    {NULL},
};
static const dm_port_spec causal_outputs[] = {
    {"components", DM_PORT_TENSOR}, {"null_band", DM_PORT_TENSOR}, {"summary", DM_PORT_TENSOR}, {NULL}};

typedef struct {
    int64_t T, W, cap; /* context, windows kept, windows wanted */
    int32_t *win;
} causal_state;

static int plain_file(const char *key, const char *f)
{
    if (!*f || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || !strcmp(f, "node.json"))
        return dm_fail("%s must be a plain file name in the output folder, not '%s'", key, f);
    return 0;
}

/* The SAE's folder: parameter sae or input sae (an sae_config record). */
static int sae_dir(const dm_node *n, const char **dir, const dm_sae_desc **desc)
{
    const char *param = dm_param_str(n, "sae");
    *desc = NULL;
    if (dm_sae_desc_input(n, IN_SAE, desc))
        return -1;
    if (*param && *desc)
        return dm_failc(DM_E_INPUT, "the SAE is given twice: parameter sae (%s) and input sae; keep one", param);
    if (!*param && !*desc)
        return dm_failc(DM_E_INPUT, "no SAE: set parameter sae (a SAELens folder) or connect input sae");
    if (!*param && (*desc)->weight_floats)
        return dm_failc(DM_E_INPUT, "input sae holds weights, not a folder: causal needs the SAE the model's "
                                    "hook was read with, as a SAELens folder");
    *dir = *param ? param : (*desc)->dir;
    return 0;
}

static int causal_infer(dm_node *n)
{
    const char *dir;
    const dm_sae_desc *desc;
    if (plain_file("file", dm_param_str(n, "file")) || plain_file("windows_file", dm_param_str(n, "windows_file")) ||
        sae_dir(n, &dir, &desc))
        return -1;
    if (dm_param_int(n, "tokens") < 2 || dm_param_int(n, "nulls") < 0 || dm_param_int(n, "rows") < 1)
        return dm_fail("tokens must be at least 2, nulls at least 0 and rows at least 1");
    if (dm_param_int(n, "energy_levels") < 0 || dm_param_int(n, "energy_levels") == 1)
        return dm_fail("energy_levels must be 0 (each component's own energy) or at least 2, not %lld",
                       (long long)dm_param_int(n, "energy_levels"));
    const char *c = dm_param_str(n, "center");
    if (strcmp(c, "auto") && strcmp(c, "true") && strcmp(c, "false"))
        return dm_failc(DM_E_INPUT, "center must be auto, true or false, not '%s'", c);
    const dm_port_desc *f = dm_input_desc(n, IN_FILTERS), *m = dm_input_desc(n, IN_MIXING);
    if (f->ndim != 2 || m->ndim != 2 || (f->shape[0] >= 0 && m->shape[1] >= 0 && f->shape[0] != m->shape[1]))
        return dm_failc(DM_E_SHAPE, "inputs filters (k x d) and mixing (d x k) must be ica_compare's");
    int64_t k = f->shape[0];
    dm_port_desc *o = dm_output_desc(n, OUT_COMPONENTS);
    o->dtype = DM_F64, o->ndim = 2, o->shape[0] = k, o->shape[1] = 4;
    o = dm_output_desc(n, OUT_BAND);
    o->dtype = DM_F64, o->ndim = 2, o->shape[0] = k, o->shape[1] = 3;
    o = dm_output_desc(n, OUT_SUMMARY);
    o->dtype = DM_F64, o->ndim = 1, o->shape[0] = SUMMARY_N;
    return 0;
}

static int64_t causal_state_bytes(const dm_node *n)
{
    /* the model's float32 parameters (GPT-2 small's where its config cannot be
     * read yet), x and recon of every token, cov, three buffers of logits */
    dm_model_config g = {.n_embd = 768, .n_layer = 12, .vocab_size = 50257, .n_positions = 1024, .n_inner = 3072};
    if (dm_model_read_config(dm_param_str(n, "model"), &g))
        dm_error_clear();
    int64_t tokens = dm_param_int(n, "tokens"), rows = dm_param_int(n, "rows"), d = g.n_embd, V = g.vocab_size;
    int64_t params = (V + g.n_positions) * d + (int64_t)g.n_layer * (4 * d * d + 2 * d * g.n_inner + 9 * d + g.n_inner);
    return 4 * params + 8 * tokens * d + 8 * d * d + 12 * rows * V + 4 * rows * d;
}

static int causal_open(dm_node *n)
{
    causal_state *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->T = dm_input_desc(n, IN_WINDOWS)->shape[1];
    s->cap = s->T > 0 ? (dm_param_int(n, "tokens") + s->T - 1) / s->T : 0;
    s->win = dm_xmalloc(sizeof(int32_t) * (size_t)(s->cap * (s->T > 0 ? s->T : 1)));
    return 0;
}

static int causal_consume(dm_node *n, int port, const dm_chunk *c)
{
    causal_state *s = dm_node_state(n);
    if (c->cols != s->T)
        return dm_fail("input windows: chunk of %lld columns, expected %lld", (long long)c->cols, (long long)s->T);
    int64_t take = c->rows < s->cap - s->W ? c->rows : s->cap - s->W;
    if (take > 0)
        memcpy(s->win + s->W * s->T, c->i32, sizeof(int32_t) * (size_t)(take * s->T));
    s->W += take > 0 ? take : 0;
    return 0;
}

static void causal_close(dm_node *n)
{
    causal_state *s = dm_node_state(n);
    if (s)
        free(s->win);
    free(s);
}

static float *to_f32(const dm_tensor *t)
{
    int64_t m = dm_tensor_numel(t);
    float *o = dm_xmalloc(sizeof(float) * (size_t)(m ? m : 1));
    for (int64_t i = 0; i < m; i++)
        o[i] = t->dtype == DM_F64 ? (float)((const double *)t->data)[i] : ((const float *)t->data)[i];
    return o;
}

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q quantile of n sorted values (linear between order statistics, numpy's default). */
static double quantile(const double *v, int64_t n, double q)
{
    if (n == 0)
        return NAN;
    double h = q * (double)(n - 1);
    int64_t i = (int64_t)h;
    return i + 1 < n ? v[i] + (h - (double)i) * (v[i + 1] - v[i]) : v[n - 1];
}

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* causal.json (docs/causal.md). */
static json_t *result_json(const dm_causal_result *r, int64_t W, int64_t T, int64_t per_kind, uint32_t seed,
                           const double *band, int64_t above)
{
    json_t *o = json_object(), *sp = json_object(), *all = json_object(), *pca = json_object(), *comps = json_array();
    json_object_set_new(o, "tokens", json_integer(W * T));
    json_object_set_new(o, "windows", json_integer(W));
    json_object_set_new(o, "context", json_integer(T));
    json_object_set_new(o, "positions", json_integer(r->positions));
    json_object_set_new(o, "ce_clean", jnum(r->ce_clean));
    json_object_set_new(sp, "ce_sae", jnum(r->ce_sae));
    json_object_set_new(sp, "kl_sae", jnum(r->kl_sae));
    json_object_set_new(sp, "ce_zero", jnum(r->ce_zero));
    json_object_set_new(sp, "kl_zero", jnum(r->kl_zero));
    json_object_set_new(sp, "ce_loss_score", jnum(r->ce_loss_score));
    json_object_set_new(sp, "kl_div_score", jnum(r->kl_div_score));
    json_object_set_new(o, "splice", sp);
    json_object_set_new(all, "delta_ce", jnum(r->all_delta_ce));
    json_object_set_new(all, "kl", jnum(r->all_kl));
    json_object_set_new(o, "all_components", all);
    for (int64_t i = 0; i < r->k; i++) {
        json_t *c = json_object();
        json_object_set_new(c, "component", json_integer(i));
        json_object_set_new(c, "delta_ce", jnum(r->delta_ce[i]));
        json_object_set_new(c, "kl", jnum(r->kl[i]));
        json_object_set_new(c, "energy", jnum(r->energy[i]));
        json_object_set_new(c, "null_percentile", jnum(r->null_percentile[i]));
        json_object_set_new(c, "z", jnum(r->z[i]));
        json_object_set_new(c, "null_kl_q05", jnum(band[3 * i]));
        json_object_set_new(c, "null_kl_median", jnum(band[3 * i + 1]));
        json_object_set_new(c, "null_kl_q95", jnum(band[3 * i + 2]));
        json_object_set_new(c, "above_null_q95", json_boolean(r->kl[i] > band[3 * i + 2]));
        json_array_append_new(comps, c);
    }
    json_object_set_new(o, "components", comps);
    json_t *nl = json_object(), *kinds = json_array();
    json_array_append_new(kinds, json_string("isotropic"));
    json_array_append_new(kinds, json_string("covariance"));
    json_object_set_new(nl, "kinds", kinds);
    json_object_set_new(nl, "per_kind", json_integer(per_kind));
    json_object_set_new(nl, "seed", json_integer(seed));
    if (!r->levels) {
        json_object_set_new(nl, "matched", json_string("each null direction, scaled per component to the component's "
                                                       "removed mean squared norm"));
        json_object_set_new(nl, "energy_levels", json_null());
    } else {
        json_t *lv = json_array(), *lk = json_array();
        json_object_set_new(nl, "matched", json_string("each null direction, scaled to energy_levels (log-spaced "
                                                       "from the smallest component's removed mean squared norm to "
                                                       "the largest's); its KL at a component's energy interpolated "
                                                       "between the levels around it, linearly in log KL and log "
                                                       "energy"));
        for (int64_t b = 0; b < r->levels; b++) {
            json_t *row = json_array();
            json_array_append_new(lv, jnum(r->level_energy[b]));
            for (int64_t j = 0; j < r->nnull; j++)
                json_array_append_new(row, jnum(r->level_kl[b * r->nnull + j]));
            json_array_append_new(lk, row);
        }
        json_object_set_new(nl, "energy_levels", lv);
        json_object_set_new(nl, "level_kl", lk);
    }
    json_object_set_new(o, "nulls", nl);
    json_object_set_new(pca, "delta_ce", jnum(r->pca_delta_ce));
    json_object_set_new(pca, "kl", jnum(r->pca_kl));
    json_object_set_new(o, "pca_control", pca);
    json_object_set_new(o, "components_above_null_q95", json_integer(above));
    return o;
}

static int causal_finish(dm_node *n)
{
    causal_state *s = dm_node_state(n);
    const dm_tensor *ft = dm_input_tensor(n, IN_FILTERS), *mt = dm_input_tensor(n, IN_MIXING),
                    *mut = dm_input_tensor(n, IN_MEAN), *evt = dm_input_tensor(n, IN_EIGENVALUES),
                    *ct = dm_input_tensor(n, IN_COMPONENTS);
    const int64_t k = ft->shape[0], d = ft->shape[1], ns = dm_param_int(n, "nulls");
    const uint32_t seed = (uint32_t)dm_param_int(n, "seed");
    if (s->W == 0)
        return dm_failc(DM_E_INPUT, "input windows: no token windows to ablate on");
    if (mt->shape[0] != d || mt->shape[1] != k || dm_tensor_numel(mut) != d || ct->ndim != 2 || ct->shape[1] != d ||
        ct->shape[0] < k || evt->shape[0] != ct->shape[0])
        return dm_failc(DM_E_SHAPE, "filters %lld x %lld, mixing %lld x %lld, mean %lld, components %lld x %lld: "
                                    "they do not fit one residual of width %lld",
                        (long long)k, (long long)d, (long long)mt->shape[0], (long long)mt->shape[1],
                        (long long)dm_tensor_numel(mut), (long long)ct->shape[0], (long long)ct->shape[1],
                        (long long)d);
    const char *dir;
    const dm_sae_desc *desc;
    if (sae_dir(n, &dir, &desc))
        return -1;
    const char *cv = dm_param_str(n, "center");
    const dm_compute *cx = dm_node_compute(n);
    dm_model *m = dm_model_load(dm_param_str(n, "model"), DM_MODEL_DEPTH_ALL, cx);
    dm_sae *sae = m ? dm_sae_load(dir, 0, cx) : NULL;
    dm_causal *cz = NULL;
    float *F = to_f32(ft), *A = to_f32(mt), *mu = to_f32(mut), *X = NULL, *pcs = NULL;
    double *ev = NULL, *C = NULL, *band = NULL, *sorted = NULL;
    dm_tensor out[3] = {{0}}, wt = {0};
    json_t *o = NULL;
    dm_causal_result r = {0};
    int rc = -1;
    dm_model_hook h;
    if (!m || !sae)
        goto end;
    /* centred as the SAE was trained: its cfg.json's center_writing_weights (TransformerLens's
     * default, on, where it does not say) */
    int center = !strcmp(cv, "auto") ? sae->cfg.center_writing_weights != 0 : !strcmp(cv, "true");
    /* the residual stream between two blocks: blocks.L.hook_resid_post is
     * blocks.L+1.hook_resid_pre (Gemma Scope's SAEs read resid_post) */
    if (!dm_model_hook_parse(sae->cfg.hook_name, &h) && h.kind == DM_HOOK_RESID_POST &&
        h.layer + 1 < dm_model_cfg(m)->n_layer)
        h.kind = DM_HOOK_RESID_PRE, h.layer++;
    else if (dm_model_hook_parse(sae->cfg.hook_name, &h) || h.kind != DM_HOOK_RESID_PRE) {
        dm_failc(DM_E_INPUT, "the SAE's hook '%s' is not a blocks.L.hook_resid_pre, or a blocks.L.hook_resid_post "
                             "before the last block",
                 sae->cfg.hook_name);
        goto end;
    }
    /* energy levels only where they save ablations */
    const int64_t levels = dm_param_int(n, "energy_levels") < k ? dm_param_int(n, "energy_levels") : 0;
    dm_info("node '%s': %lld windows of %lld tokens, %lld ablations at %s (%lld token rows through the blocks after "
            "it and the unembedding)",
            dm_node_name(n), (long long)s->W, (long long)s->T, (long long)(4 + k + 2 * ns * (levels ? levels : k)),
            sae->cfg.hook_name, (long long)((5 + k + 2 * ns * (levels ? levels : k)) * s->W * s->T));
    if (!(cz = dm_causal_new(m, h.layer, sae, cx, s->win, s->W, (int)s->T, center, mu, dm_param_int(n, "rows"))))
        goto end;
    /* the nulls (ica_backproject.h's, unit length) and the PCA control */
    ev = dm_xmalloc(sizeof(double) * (size_t)evt->shape[0]);
    C = dm_xmalloc(sizeof(double) * (size_t)(ct->shape[0] * d));
    for (int64_t i = 0; i < evt->shape[0]; i++)
        ev[i] = evt->dtype == DM_F64 ? ((const double *)evt->data)[i] : ((const float *)evt->data)[i];
    for (int64_t i = 0; i < ct->shape[0] * d; i++)
        C[i] = ct->dtype == DM_F64 ? ((const double *)ct->data)[i] : ((const float *)ct->data)[i];
    X = dm_xmalloc(sizeof(float) * (size_t)(2 * ns * d + 1));
    dm_ica_null_directions(seed, ns, ev, C, ct->shape[0], d, X);
    for (int64_t j = 0; j < 2 * ns; j++) {
        double q = 0;
        for (int64_t i = 0; i < d; i++)
            q += (double)X[j * d + i] * X[j * d + i];
        for (int64_t i = 0; q > 0 && i < d; i++)
            X[j * d + i] = (float)(X[j * d + i] / sqrt(q));
    }
    pcs = dm_xmalloc(sizeof(float) * (size_t)(k * d));
    for (int64_t i = 0; i < k * d; i++)
        pcs[i] = (float)C[i];
    dm_causal_dirs dd = {k, F, A, 2 * ns, X, pcs, levels};
    if (dm_causal_measure(cz, &dd, &r))
        goto end;

    /* the null band, the table, the products */
    band = dm_xmalloc(sizeof(double) * (size_t)(3 * k));
    sorted = dm_xmalloc(sizeof(double) * (size_t)(2 * ns + 1));
    int64_t above = 0;
    for (int64_t i = 0; i < k; i++) {
        memcpy(sorted, r.null_kl + i * 2 * ns, sizeof(double) * (size_t)(2 * ns));
        qsort(sorted, (size_t)(2 * ns), sizeof(double), by_double);
        band[3 * i] = quantile(sorted, 2 * ns, 0.05);
        band[3 * i + 1] = quantile(sorted, 2 * ns, 0.5);
        band[3 * i + 2] = quantile(sorted, 2 * ns, 0.95);
        above += r.kl[i] > band[3 * i + 2];
    }
    int64_t k4[2] = {k, 4}, k3[2] = {k, 3}, sn[1] = {SUMMARY_N}, wt_shape[2] = {s->W, s->T};
    dm_tensor_init(&out[OUT_COMPONENTS], DM_F64, 2, k4);
    dm_tensor_init(&out[OUT_BAND], DM_F64, 2, k3);
    dm_tensor_init(&out[OUT_SUMMARY], DM_F64, 1, sn);
    double *tab = out[OUT_COMPONENTS].data, *sm = out[OUT_SUMMARY].data;
    for (int64_t i = 0; i < k; i++)
        tab[4 * i] = r.delta_ce[i], tab[4 * i + 1] = r.kl[i], tab[4 * i + 2] = r.null_percentile[i],
                tab[4 * i + 3] = r.z[i];
    memcpy(out[OUT_BAND].data, band, sizeof(double) * (size_t)(3 * k));
    const double summary[SUMMARY_N] = {r.ce_clean,      r.ce_sae,       r.kl_sae,       r.ce_zero,
                                       r.kl_zero,       r.ce_loss_score, r.kl_div_score, r.all_delta_ce,
                                       r.all_kl,        r.pca_delta_ce, r.pca_kl,       (double)r.positions,
                                       (double)above};
    memcpy(sm, summary, sizeof summary);
    dm_tensor_init(&wt, DM_I32, 2, wt_shape);
    memcpy(wt.data, s->win, sizeof(int32_t) * (size_t)(s->W * s->T));
    char *path = dm_xasprintf("%s/%s", dm_node_dir(n), dm_param_str(n, "windows_file"));
    int wrc = dm_npy_save(path, &wt);
    free(path);
    o = result_json(&r, s->W, s->T, ns, seed, band, above);
    if (wrc || dm_publish(n, dm_param_str(n, "windows_file")) ||
        dm_publish_json(n, dm_param_str(n, "file"), "causal tests", o, JSON_INDENT(2) | JSON_REAL_PRECISION(10), NULL))
        goto end;
    rc = 0;
    for (int p = 0; p < 3 && !rc; p++)
        rc = dm_set_output(n, p, &out[p]);
end:
    for (int p = 0; p < 3; p++)
        dm_tensor_free(&out[p]);
    dm_tensor_free(&wt);
    json_decref(o);
    dm_causal_result_free(&r);
    dm_causal_free(cz);
    dm_sae_free(sae);
    dm_model_free(m);
    free(F), free(A), free(mu), free(X), free(pcs), free(ev), free(C), free(band), free(sorted);
    return rc;
}

const dm_op dm_op_causal = {
    .name = "causal",
    .version = 1,
    .summary = "ablations of the ICA components at the SAE's hook against matched null directions; SAE splice scores",
    .params = causal_params,
    .inputs = causal_inputs,
    .outputs = causal_outputs,
    .infer = causal_infer,
    .state_bytes = causal_state_bytes,
    .open = causal_open,
    .consume = causal_consume,
    .finish = causal_finish,
    .close = causal_close,
};
