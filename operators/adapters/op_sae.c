/*
 * op_sae.c: the `sae` operator: a SAELens SAE applied to a stream of
 * activations, with its statistics in the same pass.
 *
 * Per input chunk the node runs sae.h's kernel tile by tile (SGEMMs by column panels per
 * `tile` rows; on the GPU whole chunks, dm_sae_backend_tile), folds each tile into the
 * statistics (with the work of its forward: the GPU's keeps the tile's rows), and emits
 *   residual        e = x - x_hat, same rows as x (a map)
 *   reconstruction  x_hat, same rows as x
 *   features        the active features, one row per (token, feature): int64
 *                   [row, feature], row the token's global row. Rows of this
 *                   stream are numbered by pair, in token order, features
 *                   increasing within a token.
 *   feature_values  float32 [value], the same rows as `features`: the
 *                   feature's activation on that token.
 * Rows with NaN or Inf give NaN residual and reconstruction rows and no
 * features; they are counted (warning, and nonfinite_rows in the stats) and
 * left out of every statistic.
 *
 * At the end it writes the stats product (JSON, docs/sae.md defines each key)
 * and sets the tensor outputs:
 *   decoder            f32 (d_sae, d_in)  W_dec as applied (rows not normalised)
 *   feature_count      f64 (d_sae)        tokens each feature fired on
 *   feature_frequency  f64 (d_sae)        count / tokens
 *   feature_mean, feature_var, feature_skew, feature_kurtosis
 *                      f64 (d_sae)        population moments over all tokens,
 *                                         zeros included; kurtosis is excess
 *                                         (NaN for a feature with no spread)
 *   l0_histogram       f64 (d_sae + 1)    tokens with L0 = 0, 1, ...
 *   summary            dm_sae_summary (operators/analysis/summaries.h) with
 *                      the statistics' text, for the report
 *
 * The SAE is a SAELens folder, given as parameter `sae` or by an sae_config
 * node on input `sae`, or weights handed on by another node on input `sae`
 * (planted_sae: the demo's SAE; sae_desc.h).
 *
 * The engine cannot know which model hook a stream came from: `hook` names it
 * (checked against the SAE's hook_name), and d_in is always checked against the
 * input's width.
 *
 * Shards: a shard's partial result is its statistics (sae.h, "Shards": counts,
 * sums, moments and co-moments as .npy files); merge_partial merges each into
 * the node's. The streams are maps of the token rows but for the numbering of
 * `features` and `feature_values`, which count pairs from the first row the
 * node saw: in a shard they start at 0, not where the shard's pairs fall in a
 * whole pass (which only the earlier shards know). Their [row, feature] values
 * carry global token rows.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "npy.h"
#include "op.h"
#include "sae.h"
#include "summaries.h"
#include "sae_desc.h"

enum { OUT_RESIDUAL, OUT_RECON, OUT_FEATURES, OUT_VALUES, OUT_DECODER, OUT_COUNT, OUT_FREQ, OUT_MEAN, OUT_VAR, OUT_SKEW,
       OUT_KURT, OUT_L0, OUT_SUMMARY, OUT_N };

static const dm_param_spec sae_params[] = {
    {"sae", DM_P_PATH, "", "SAELens folder (cfg.json, sae_weights.safetensors) or Gemma Scope params.npz; or connect "
                           "input sae"},
    {"hook", DM_P_STRING, "", "hook the input stream comes from; must match the SAE's hook_name (\"\" = trust)"},
    {"stats", DM_P_STRING, "sae_stats.json", "statistics product file (\"\" for none)"},
    {"tile", DM_P_INT, "256", "rows per encode tile (memory: tile x 512 floats a thread; topk: tile x d_sae)"},
    {"scaling_factor", DM_P_FLOAT, "0",
     "input scaling of expected_average_only_in SAEs (SAELens norm_scaling_factor); 0 = none given"},
    {"predictability", DM_P_BOOL, "true", "linear predictability of e from x (cov(x), cov(e,x): 2 d_in^2 a token)"},
    {NULL},
};
enum { IN_X, IN_SAE };
static const dm_port_spec sae_inputs[] = {{"x", DM_PORT_STREAM}, {"sae", DM_PORT_TENSOR, .optional = 1}, {NULL}};
static const dm_port_spec sae_outputs[] = {
    {"residual", DM_PORT_STREAM},         {"reconstruction", DM_PORT_STREAM},
    {"features", DM_PORT_STREAM, .dtype = DM_I64}, {"feature_values", DM_PORT_STREAM},
    {"decoder", DM_PORT_TENSOR},
    {"feature_count", DM_PORT_TENSOR},    {"feature_frequency", DM_PORT_TENSOR},
    {"feature_mean", DM_PORT_TENSOR},     {"feature_var", DM_PORT_TENSOR},
    {"feature_skew", DM_PORT_TENSOR},     {"feature_kurtosis", DM_PORT_TENSOR},
    {"l0_histogram", DM_PORT_TENSOR},     {"summary", DM_PORT_TENSOR},
    {NULL},
};

typedef struct {
    const dm_sae_backend *be; /* chosen at open from the compute context */
    dm_sae *sae;
    dm_sae_work *work;
    dm_sae_stats *stats;
    dm_sae_sparse sp;
    int64_t tile, d, chunk;
    float *recon, *resid; /* chunk x d each */
    int64_t *feat;        /* chunk x 2: [row, feature] */
    float *feat_value;    /* chunk */
    int64_t feat_row; /* rows emitted on `features` so far */
} sae_state;

static int check_file_name(const char *f)
{
    if (strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || !strcmp(f, "node.json"))
        return dm_fail("stats must be a plain file name in the output folder, not '%s'", f);
    return 0;
}

/* The node's SAE: parameter sae (a SAELens folder), or input sae, an
 * sae_config node's record naming a folder or a planted_sae node's record
 * holding the weights. *dir is the folder, or NULL for weights in *desc; *name
 * names the SAE in messages. */
static int sae_source(const dm_node *n, const char **dir, const dm_sae_desc **desc, const char **name)
{
    const char *param = dm_param_str(n, "sae");
    int wired = dm_input_connected(n, IN_SAE);
    if (dm_sae_desc_input(n, IN_SAE, desc))
        return -1;
    if (*param && wired)
        return dm_failc(DM_E_INPUT, "the SAE is given twice: parameter sae (%s) and input sae; keep one", param);
    if (!*param && !wired)
        return dm_failc(DM_E_INPUT, "no SAE: set parameter sae (a SAELens folder) or connect input sae (an "
                                    "sae_config or planted_sae node's output sae)");
    *dir = *param ? param : (*desc)->weight_floats ? NULL : (*desc)->dir;
    *name = *param ? param : (*desc)->dir;
    return 0;
}

/* The SAE's config: its folder's cfg.json, or what the record of weights handed
 * on says (a standard ReLU SAE, as dm_sae_from_arrays makes). */
static int sae_config_of(const dm_node *n, dm_sae_config *c, const char **name, const char **dir)
{
    const dm_sae_desc *desc;
    if (sae_source(n, dir, &desc, name))
        return -1;
    if (*dir) {
        if (dm_sae_read_config(*dir, c))
            return -1;
        /* a hook the sae_config node was given (a params.npz whose path names none) */
        if (desc && *desc->hook_name && !*c->hook_name) {
            free(c->hook_name);
            c->hook_name = dm_xstrdup(desc->hook_name);
        }
        return 0;
    }
    memset(c, 0, sizeof *c);
    c->d_in = desc->d_in;
    c->d_sae = desc->d_sae;
    c->arch = DM_SAE_STANDARD;
    c->norm = DM_SAE_NORM_NONE;
    c->hook_name = dm_xstrdup(desc->hook_name);
    c->model_name = dm_xstrdup("");
    c->dataset_path = dm_xstrdup("");
    c->center_writing_weights = desc->center_writing_weights;
    c->prepend_bos = desc->prepend_bos;
    c->context_size = desc->context_size;
    if (desc->weight_floats != 2 * desc->d_in * desc->d_sae + desc->d_sae + desc->d_in) {
        dm_sae_config_free(c);
        return dm_failc(DM_E_CORRUPT, "input sae: %lld floats of weights, but d_in %lld and d_sae %lld need %lld",
                        (long long)desc->weight_floats, (long long)desc->d_in, (long long)desc->d_sae,
                        (long long)(2 * desc->d_in * desc->d_sae + desc->d_sae + desc->d_in));
    }
    return 0;
}

static int sae_infer(dm_node *n)
{
    dm_sae_config c;
    const char *dir, *name;
    if (check_file_name(dm_param_str(n, "stats")))
        return -1;
    if (dm_param_int(n, "tile") < 1 || dm_param_int(n, "tile") > 65536)
        return dm_fail("tile must be between 1 and 65536 rows, not %lld", (long long)dm_param_int(n, "tile"));
    if (sae_config_of(n, &c, &name, &dir))
        return -1;
    int rc = dm_sae_check_input(&c, name, dm_param_str(n, "hook"), dm_input_desc(n, IN_X)->shape[1]);
    if (!rc && dir)
        rc = dm_sae_check(dir, &c);
    if (!rc && c.norm == DM_SAE_NORM_EXPECTED_AVERAGE && !(dm_param_float(n, "scaling_factor") > 0))
        rc = dm_fail("sae %s: normalize_activations is expected_average_only_in: give its scaling factor "
                     "(SAELens's norm_scaling_factor) with the scaling_factor parameter",
                     name);
    if (!rc) {
        int64_t rows = dm_input_desc(n, IN_X)->shape[0];
        for (int k = 0; k < OUT_N; k++) {
            dm_port_desc *o = dm_output_desc(n, k);
            if (k <= OUT_VALUES) {
                o->dtype = k == OUT_FEATURES ? DM_I64 : DM_F32;
                o->shape[0] = k >= OUT_FEATURES ? -1 : rows;
                o->shape[1] = k == OUT_FEATURES ? 2 : k == OUT_VALUES ? 1 : c.d_in;
                continue;
            }
            o->dtype = k == OUT_DECODER ? DM_F32 : DM_F64;
            o->ndim = k == OUT_DECODER ? 2 : 1;
            o->shape[0] = k == OUT_L0 ? c.d_sae + 1 : c.d_sae;
            o->shape[1] = k == OUT_DECODER ? c.d_in : 0;
            if (k == OUT_SUMMARY) {
                o->dtype = DM_U8;
                o->shape[0] = -1;
            }
        }
    }
    dm_sae_config_free(&c);
    return rc;
}

static int64_t sae_state_bytes(const dm_node *n)
{
    dm_sae_config c;
    const char *name, *dir;
    if (sae_config_of(n, &c, &name, &dir))
        return 0;
    int64_t di = c.d_in, ds = c.d_sae, tile = dm_param_int(n, "tile");
    dm_sae_config_free(&c);
    /* weights, the decoder output (which takes over W_dec at the end: counted
     * twice, on the safe side), a tile, statistics, and a guess of 64 actives a row */
    return 4 * (3 * di * ds + dm_sae_packed_floats(di, ds, dm_node_compute(n)) + 2 * ds + di) +
           dm_sae_tile_bytes(di, ds, tile) +
           dm_sae_stats_bytes(di, ds, dm_param_bool(n, "predictability")) + tile * 64 * 16;
}

static int sae_open(dm_node *n)
{
    const dm_compute *cc = dm_node_compute(n);
    sae_state *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->be = dm_sae_backend_for(cc);
    const char *dir, *name;
    const dm_sae_desc *desc;
    if (sae_source(n, &dir, &desc, &name))
        return -1;
    if (dir) {
        s->sae = dm_sae_load(dir, dm_param_float(n, "scaling_factor"), cc);
        if (s->sae && desc && *desc->hook_name && !*s->sae->cfg.hook_name) { /* as in sae_config_of */
            free(s->sae->cfg.hook_name);
            s->sae->cfg.hook_name = dm_xstrdup(desc->hook_name);
        }
    } else {
        const float *w = dm_sae_desc_weights(desc);
        int64_t di = desc->d_in, ds = desc->d_sae;
        s->sae = dm_sae_from_arrays(di, ds, desc->hook_name, desc->dir, w, w + di * ds, w + 2 * di * ds,
                                    w + 2 * di * ds + ds, cc);
    }
    if (!s->sae)
        return -1;
    if (dm_sae_check_input(&s->sae->cfg, name, dm_param_str(n, "hook"), dm_input_desc(n, IN_X)->shape[1]))
        return -1;
    s->d = s->sae->cfg.d_in;
    s->chunk = dm_chunk_rows(n);
    /* on the GPU, whole chunks (bounded: sae.h) rather than the CPU's cache-sized tiles */
    s->tile = dm_sae_backend_tile(s->be, s->sae->cfg.d_sae, dm_param_int(n, "tile"), s->chunk);
    s->work = dm_sae_work_new(s->sae, s->tile, cc);
    s->stats = dm_sae_stats_new(s->d, s->sae->cfg.d_sae, dm_param_bool(n, "predictability"), cc);
    s->recon = dm_xmalloc_aligned((size_t)(s->chunk * s->d) * sizeof(float));
    s->resid = dm_xmalloc_aligned((size_t)(s->chunk * s->d) * sizeof(float));
    s->feat = dm_xmalloc((size_t)s->chunk * 2 * sizeof *s->feat);
    s->feat_value = dm_xmalloc((size_t)s->chunk * sizeof *s->feat_value);
    return 0;
}

/* Rows [s->feat_row, s->feat_row + k) of `features` and `feature_values`. */
static int flush_features(dm_node *n, sae_state *s, int64_t k)
{
    dm_chunk f = {.row0 = s->feat_row, .rows = k, .cols = 2, .i64 = s->feat, .dtype = DM_I64};
    dm_chunk v = {.row0 = s->feat_row, .rows = k, .cols = 1, .data = s->feat_value};
    if (dm_emit(n, OUT_FEATURES, &f) || dm_emit(n, OUT_VALUES, &v))
        return -1;
    s->feat_row += k;
    return 0;
}

/* The active features of rows [row0, row0 + sp->rows) as rows of `features`
 * and `feature_values`, in pieces of at most one chunk. */
static int emit_features(dm_node *n, sae_state *s, int64_t row0)
{
    const dm_sae_sparse *sp = &s->sp;
    int64_t k = 0;
    for (int64_t r = 0; r < sp->rows; r++)
        for (int64_t a = sp->start[r]; a < sp->start[r + 1]; a++) {
            s->feat[2 * k] = row0 + r;
            s->feat[2 * k + 1] = sp->feature[a];
            s->feat_value[k] = sp->value[a];
            if (++k == s->chunk) {
                if (flush_features(n, s, k))
                    return -1;
                k = 0;
            }
        }
    return k ? flush_features(n, s, k) : 0;
}

static int sae_consume(dm_node *n, int port, const dm_chunk *c)
{
    sae_state *s = dm_node_state(n);
    if (c->cols != s->d)
        return dm_fail("input x: chunk of %lld columns, expected %lld", (long long)c->cols, (long long)s->d);
    for (int64_t r0 = 0; r0 < c->rows; r0 += s->chunk) {
        int64_t rows = c->rows - r0 < s->chunk ? c->rows - r0 : s->chunk;
        const float *x = c->data + r0 * s->d;
        for (int64_t t0 = 0; t0 < rows; t0 += s->tile) {
            int64_t m = rows - t0 < s->tile ? rows - t0 : s->tile;
            s->be->forward(s->work, s->sae, x + t0 * s->d, m, s->recon + t0 * s->d, s->resid + t0 * s->d, &s->sp);
            s->be->stats_update(s->work, s->stats, x + t0 * s->d, s->recon + t0 * s->d, s->resid + t0 * s->d, &s->sp, m);
            if (emit_features(n, s, c->row0 + r0 + t0))
                return -1;
        }
        dm_chunk e = {.row0 = c->row0 + r0, .rows = rows, .cols = s->d, .data = s->resid};
        dm_chunk h = {.row0 = c->row0 + r0, .rows = rows, .cols = s->d, .data = s->recon};
        if (s->be->device_rows) /* on a GPU, in one pass: the rows there too, for the consumers' GPU entries */
            e.dev = s->be->device_rows(s->work, s->resid, rows), h.dev = s->be->device_rows(s->work, s->recon, rows);
        if (dm_emit(n, OUT_RESIDUAL, &e) || dm_emit(n, OUT_RECON, &h))
            return -1;
    }
    return 0;
}

static int sae_save_partial(dm_node *n, const char *dir)
{
    sae_state *s = dm_node_state(n);
    return dm_sae_stats_save(s->stats, dir);
}

static int sae_merge_partial(dm_node *n, const char *dir)
{
    sae_state *s = dm_node_state(n);
    dm_sae_stats *part = dm_sae_stats_load(dir, s->d, s->sae->cfg.d_sae, dm_param_bool(n, "predictability"),
                                           dm_node_compute(n));
    int rc = part ? dm_sae_stats_merge(s->stats, part) : -1;
    dm_sae_stats_free(part);
    return rc;
}

/* A (d_sae) f64 tensor from doubles or int64 counts. */
static void vec_tensor(dm_tensor *t, int64_t d, const double *v, const int64_t *iv)
{
    dm_tensor_init(t, DM_F64, 1, &d);
    double *o = t->data;
    for (int64_t i = 0; i < d; i++)
        o[i] = v ? v[i] : (double)iv[i];
}

/* The typed summary for the report (summaries.h), with the statistics' text. */
static void pack_summary(const dm_sae_result *r, const dm_sae_config *c, const char *text, dm_tensor *out)
{
    dm_sae_summary sm;
    memset(&sm, 0, sizeof sm);
    sm.d_in = c->d_in, sm.d_sae = c->d_sae, sm.tokens = r->n;
    sm.fvu = r->fvu, sm.explained_variance = r->explained_variance;
    sm.mean_l0 = r->mean_l0, sm.linear_predictability = r->linear_predictability;
    dm_summary_pack(out, DM_SUMMARY_SAE, DM_SUMMARY_SAE_VERSION, &sm, sizeof sm, text, strlen(text));
}

static int sae_finish(dm_node *n)
{
    sae_state *s = dm_node_state(n);
    const dm_sae_config *c = &s->sae->cfg;
    dm_sae_result r;
    const char *file = dm_param_str(n, "stats");
    int rc = -1;
    if (dm_sae_stats_finalize(s->stats, &r))
        return -1;
    if (r.nonfinite)
        dm_warn("node '%s': %lld rows of x hold NaN or Inf: their residual is NaN and they are left out of the "
                "statistics",
                dm_node_name(n), (long long)r.nonfinite);
    char *text = dm_sae_result_json(&r, s->sae);
    if (!text)
        goto end;
    if (dm_publish_text(n, file, text, strlen(text))) {
        free(text);
        goto end;
    }
    dm_tensor t[OUT_N];
    memset(t, 0, sizeof t);
    pack_summary(&r, c, text, &t[OUT_SUMMARY]);
    free(text);
    /* W_dec is not needed after the pass: the tensor takes it over rather than a
     * copy (75 MB for GPT-2 small's SAEs) */
    t[OUT_DECODER] = (dm_tensor){.dtype = DM_F32, .ndim = 2, .shape = {c->d_sae, c->d_in}, .data = s->sae->W_dec};
    s->sae->W_dec = NULL;
    vec_tensor(&t[OUT_COUNT], c->d_sae, NULL, r.count);
    vec_tensor(&t[OUT_FREQ], c->d_sae, r.frequency, NULL);
    vec_tensor(&t[OUT_MEAN], c->d_sae, r.mean, NULL);
    vec_tensor(&t[OUT_VAR], c->d_sae, r.var, NULL);
    vec_tensor(&t[OUT_SKEW], c->d_sae, r.skew, NULL);
    vec_tensor(&t[OUT_KURT], c->d_sae, r.excess_kurtosis, NULL);
    vec_tensor(&t[OUT_L0], c->d_sae + 1, NULL, r.l0_histogram);
    rc = 0;
    for (int k = OUT_DECODER; k < OUT_N; k++) {
        if (!rc)
            rc = dm_set_output(n, k, &t[k]);
        dm_tensor_free(&t[k]);
    }
end:
    dm_sae_result_free(&r);
    return rc;
}

static void sae_close(dm_node *n)
{
    sae_state *s = dm_node_state(n);
    if (!s)
        return;
    dm_sae_free(s->sae);
    dm_sae_work_free(s->work);
    dm_sae_stats_free(s->stats);
    dm_sae_sparse_free(&s->sp);
    free(s->recon), free(s->resid), free(s->feat), free(s->feat_value);
    free(s);
    dm_node_set_state(n, NULL);
}

const dm_op dm_op_sae = {
    .name = "sae",
    .version = 4, /* features: int64 [row, feature] and feature_values (were float [row_hi, row_lo, feature, value]) */
    .summary = "SAELens SAE: residual x - SAE(x), reconstruction, active features, and SAE statistics",
    .params = sae_params,
    .inputs = sae_inputs,
    .outputs = sae_outputs,
    .infer = sae_infer,
    .state_bytes = sae_state_bytes,
    .open = sae_open,
    .consume = sae_consume,
    .finish = sae_finish,
    .close = sae_close,
    .shardable = 1,
    .save_partial = sae_save_partial,
    .merge_partial = sae_merge_partial,
};
