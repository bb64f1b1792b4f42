/*
 * sae.c: SAELens-format sparse autoencoders: loading, the encode/decode kernel
 * and the streaming statistics of the residual. sae.h states the formulas.
 *
 * Workload. For GPT-2 small at layer 6 (d_in 768, d_sae 24576, L0 about 51)
 * the encode GEMM is 2 * 768 * 24576 = 75 MFLOP a token; everything else must
 * be small beside it:
 *   - the encode runs by column panels of 512 features, single-threaded
 *     SGEMMs handed to the OpenMP threads as they come free; the activation
 *     reads each pre-activation once, right after its panel's SGEMM while the
 *     panel is in cache, in the pass that also extracts the active features (a
 *     16-wide "any above threshold?" test per block, then a scalar look at the
 *     rare blocks that have one);
 *   - the decode touches only the active rows of W_dec: L0 * d_in MACs a token
 *     (0.04 MFLOP) instead of d_sae * d_in;
 *   - the statistics cost O(active) per token for the features, plus one float
 *     GEMM for cov(x) and cov(e, x) (2 d_in^2 MACs, 3% of the encode) when the
 *     linear predictability is wanted, merged in double every 256 rows.
 * BLAS runs single-threaded inside our OpenMP threads throughout: OpenBLAS's
 * own pool spins between calls and took the cores the OpenMP work needed.
 * Memory is a panel of pre-activations per thread (tile * 512 floats; topk:
 * one tile, tile * d_sae), the weights, and the accumulators, whatever the
 * number of tokens.
 *
 * Per-feature moments over all tokens (zeros included). A feature's value is 0
 * on most tokens, so its moments follow from its active values and the number
 * of zeros. We use the mergeable central form (Pebay 2008; stats.c): for each
 * block of rows, the block mean m = (sum of active values) / rows, then the
 * centred power sums sum (a - m)^p over the active values plus (rows - c) (-m)^p
 * for the c actives' complementary zeros, all in double, and a Pebay merge into
 * the running dm_moments (O(d_sae) a block, O(active) per row). Raw power sums
 * S1..S4 would be cheaper to write but lose to cancellation: the 4th central
 * moment from raw sums subtracts terms (mean/std)^4 times larger than itself,
 * which for a feature that fires on nearly every token with a steady value
 * (mean/std of 100 or more) leaves fewer digits than the kurtosis needs. The
 * central form never subtracts more than a block's spread.
 */
#include "sae.h"
#include "sgemm.h"

#include <cblas.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <jansson.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "device.h"
#include "fs.h"
#include "npy.h"
#include "npz.h"
#include "safetensors.h"
#include "stats.h"

/* ---- config ------------------------------------------------------------- */

const char *dm_sae_arch_name(dm_sae_arch a)
{
    static const char *names[] = {"standard", "jumprelu", "topk"};
    return (unsigned)a < 3 ? names[a] : "?";
}

const char *dm_sae_norm_name(dm_sae_norm n)
{
    static const char *names[] = {"none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"};
    return (unsigned)n < 4 ? names[n] : "?";
}

void dm_sae_config_free(dm_sae_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->hook_name), free(cfg->model_name), free(cfg->dataset_path);
    memset(cfg, 0, sizeof *cfg);
}

/* A key at the top level, else in SAELens 6's "metadata" (or "meta") object. */
static json_t *cfg_get(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v))
        return v;
    static const char *nests[] = {"metadata", "meta"};
    for (int i = 0; i < 2; i++) {
        json_t *m = json_object_get(root, nests[i]);
        if (json_is_object(m) && (v = json_object_get(m, key)) && !json_is_null(v))
            return v;
    }
    return NULL;
}

/* v as JSON text for a message ("\"abc\"", 42, [1, 2]), cut to fit. */
static void cfg_repr(const json_t *v, char *buf, size_t n)
{
    char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, n, "%s%s", t ? t : "?", t && strlen(t) >= n ? "..." : "");
    free(t);
}

/* A string key's value (malloc'd), "" when absent (or null); a value of another
 * type fails with DM_E_CORRUPT naming the key. */
static int cfg_string(json_t *root, const char *path, const char *key, const char *old_key, char **out)
{
    const char *name = key;
    json_t *v = cfg_get(root, key);
    if (!v && old_key)
        v = cfg_get(root, name = old_key);
    *out = NULL;
    if (v && !json_is_string(v)) {
        char r[64];
        cfg_repr(v, r, sizeof r);
        return dm_failc(DM_E_CORRUPT, "%s: key %s must be a string, not %s", path, name, r);
    }
    *out = dm_xstrdup(v ? json_string_value(v) : "");
    return 0;
}

/* A string key's value, or `absent` when it is absent (or null); NULL (DM_E_CORRUPT
 * recorded) when it holds another type. The string belongs to root. */
static const char *cfg_word(json_t *root, const char *path, const char *key, const char *absent)
{
    json_t *v = cfg_get(root, key);
    if (!v)
        return absent;
    if (json_is_string(v))
        return json_string_value(v);
    char r[64];
    cfg_repr(v, r, sizeof r);
    dm_failc(DM_E_CORRUPT, "%s: key %s must be a string, not %s", path, key, r);
    return NULL;
}

/* A boolean key's value into *out: true / false, or an integer (0 is false);
 * absent (v NULL) gives `absent`. Anything else fails with DM_E_CORRUPT. */
static int cfg_bool(json_t *v, const char *path, const char *key, int absent, int *out)
{
    if (!v)
        *out = absent;
    else if (json_is_boolean(v))
        *out = json_is_true(v);
    else if (json_is_integer(v))
        *out = json_integer_value(v) != 0;
    else {
        char r[64];
        cfg_repr(v, r, sizeof r);
        return dm_failc(DM_E_CORRUPT, "%s: key %s must be true or false (a boolean), not %s", path, key, r);
    }
    return 0;
}

/* ---- Gemma Scope's original release ------------------------------------ */

/* google/gemma-scope-<size>-<pt|it>-<res|mlp|att> on Hugging Face holds one
 * JumpReLU SAE per folder <layer_L | embedding>/width_<W>/average_l0_<n>/ as
 * params.npz (numpy.savez: float32 W_enc (d_model, d_sae), W_dec (d_sae,
 * d_model), b_enc, b_dec, threshold), with no cfg.json. Its settings are those
 * SAELens's gemma_2 loader gives every such SAE
 * (sae_lens/loading/pretrained_sae_loaders.py, get_gemma_2_config_from_hf and
 * gemma_2_sae_huggingface_loader): architecture jumprelu,
 * apply_b_dec_to_input false, normalize_activations none, context_size 1024,
 * prepend_bos true, dataset monology/pile-uncopyrighted, and the hook from the
 * release's name and the folder: res -> blocks.L.hook_resid_post (embedding ->
 * hook_embed), mlp -> blocks.L.hook_mlp_out, att -> blocks.L.attn.hook_z.
 * Gemma 2 normalises with RMSNorm, and TransformerLens centres the writing
 * weights of LayerNorm models only (HookedTransformer.load_and_process_state_dict
 * skips it otherwise), so the residual is not centred (center_writing_weights
 * false).
 * SAELens also renames arrays w_* to W_* (older files), and scales an
 * embedding SAE's W_enc by 1/sqrt(d_model) and W_dec by sqrt(d_model); we do
 * the same. The release's name is looked for in the path (a folder named like
 * the repository, as tools/download writes it, or Hugging Face's cache,
 * models--google--gemma-scope-...); elsewhere the hook is "" and the pipeline
 * gives it (the sae_config node's hook parameter). */

/* dir's params.npz (malloc'd) when dir is a file (the .npz itself) or a folder
 * with params.npz and no cfg.json; NULL for a SAELens folder. */
static char *npz_of(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
        return dm_xstrdup(dir);
    char *cfg = dm_xasprintf("%s/cfg.json", dir), *npz = dm_xasprintf("%s/params.npz", dir);
    if (dm_file_exists(cfg) || !dm_file_exists(npz))
        free(npz), npz = NULL;
    free(cfg);
    return npz;
}

/* What the path of a Gemma Scope SAE says: its hook ("" if it does not say),
 * the model, and whether it is an embedding SAE. */
typedef struct {
    char hook[64], model[32];
    int release, embedding;
} gs_release;

static void gs_parse(const char *path, gs_release *r)
{
    memset(r, 0, sizeof *r);
    char kind[8] = "", size[8] = "", variant[8] = "";
    long layer = -1;
    for (const char *c = path; *c;) {
        size_t n = strcspn(c, "/");
        char comp[256];
        snprintf(comp, sizeof comp, "%.*s", (int)(n < 255 ? n : 255), c);
        const char *g = strstr(comp, "gemma-scope-");
        if (g && sscanf(g, "gemma-scope-%7[0-9a-z]-%7[a-z]-%7[a-z]", size, variant, kind) == 3)
            r->release = 1;
        char *end;
        if (!strncmp(comp, "layer_", 6) && comp[6] >= '0' && comp[6] <= '9') {
            long l = strtol(comp + 6, &end, 10);
            if (!*end && l < 1000)
                layer = l;
        }
        if (!strcmp(comp, "embedding"))
            r->embedding = 1;
        c += n + (c[n] == '/');
    }
    if (!r->release) {
        r->embedding = 0;
        return;
    }
    snprintf(r->model, sizeof r->model, "gemma-2-%s%s", size, strcmp(variant, "it") ? "" : "-it");
    if (!strcmp(kind, "res") && r->embedding)
        snprintf(r->hook, sizeof r->hook, "hook_embed");
    else if (layer >= 0 && !strcmp(kind, "res"))
        snprintf(r->hook, sizeof r->hook, "blocks.%ld.hook_resid_post", layer);
    else if (layer >= 0 && !strcmp(kind, "mlp"))
        snprintf(r->hook, sizeof r->hook, "blocks.%ld.hook_mlp_out", layer);
    else if (layer >= 0 && !strcmp(kind, "att"))
        snprintf(r->hook, sizeof r->hook, "blocks.%ld.attn.hook_z", layer);
}

static const char *const gs_arrays[] = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"};

/* Array name of z, or its older spelling (w_enc for W_enc); -1 with dm_fail. */
static int gs_find(const dm_npz *z, const char *name)
{
    int i = dm_npz_find(z, name);
    if (i < 0 && name[0] == 'W') {
        char old[16];
        snprintf(old, sizeof old, "w%s", name + 1);
        i = dm_npz_find(z, old);
    }
    if (i < 0)
        dm_failc(DM_E_CORRUPT, "%s: array %s is missing (a Gemma Scope params.npz holds W_enc, W_dec, b_enc, b_dec "
                 "and threshold)", dm_npz_path(z), name);
    return i;
}

static void gs_shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

/* Every array present, floating point, of the shape W_enc's (d_in, d_sae) needs. */
static int gs_check(dm_npz *z, int64_t d_in, int64_t d_sae)
{
    for (int a = 0; a < 5; a++) {
        dm_npy_header h;
        int i = gs_find(z, gs_arrays[a]);
        if (i < 0 || dm_npz_header(z, i, &h))
            return -1;
        if (h.dtype != DM_F32 && h.dtype != DM_F16 && h.dtype != DM_BF16 && h.dtype != DM_F64)
            return dm_failc(DM_E_CORRUPT, "%s: array %s has dtype %s; expected float32 (or f16, bf16, f64)",
                            dm_npz_path(z), gs_arrays[a], dm_dtype_name(h.dtype));
        int64_t need[2] = {a == 1 || a == 2 || a == 4 ? d_sae : d_in, a == 0 ? d_sae : d_in};
        int nd = a < 2 ? 2 : 1, ok = h.ndim == nd;
        for (int k = 0; ok && k < nd; k++)
            ok = h.shape[k] == need[k];
        if (!ok) {
            char have[96], want[96];
            gs_shape_str(h.shape, h.ndim, have, sizeof have);
            gs_shape_str(need, nd, want, sizeof want);
            return dm_failc(DM_E_SHAPE, "%s: array %s has shape %s, W_enc's (d_in %lld, d_sae %lld) needs %s",
                            dm_npz_path(z), gs_arrays[a], have, (long long)d_in, (long long)d_sae, want);
        }
    }
    return 0;
}

/* The config of the Gemma Scope SAE at npz (dir as the user named it), and
 * the archive opened and checked (*zp; the caller closes it). */
static int gs_config(const char *dir, const char *npz, dm_sae_config *cfg, dm_npz **zp)
{
    memset(cfg, 0, sizeof *cfg);
    *zp = NULL;
    dm_npz *z = dm_npz_open(npz);
    dm_npy_header h;
    int i = z ? gs_find(z, "W_enc") : -1;
    if (i < 0 || dm_npz_header(z, i, &h)) {
        dm_npz_close(z);
        return -1;
    }
    if (h.ndim != 2 || h.shape[0] < 1 || h.shape[1] < 1) {
        char have[96];
        gs_shape_str(h.shape, h.ndim, have, sizeof have);
        dm_npz_close(z);
        return dm_failc(DM_E_SHAPE, "%s: array W_enc has shape %s; expected (d_in, d_sae)", npz, have);
    }
    if (gs_check(z, h.shape[0], h.shape[1])) {
        dm_npz_close(z);
        return -1;
    }
    gs_release r;
    gs_parse(dir, &r);
    cfg->d_in = h.shape[0];
    cfg->d_sae = h.shape[1];
    cfg->arch = DM_SAE_JUMPRELU;
    cfg->apply_b_dec_to_input = 0;
    cfg->norm = DM_SAE_NORM_NONE;
    cfg->hook_name = dm_xstrdup(r.hook);
    cfg->model_name = dm_xstrdup(r.model);
    cfg->dataset_path = dm_xstrdup(r.release ? "monology/pile-uncopyrighted" : "");
    cfg->center_writing_weights = 0;
    cfg->prepend_bos = 1;
    cfg->context_size = 1024;
    *zp = z;
    return 0;
}

/* Loads the arrays of a checked archive into s (config set). */
static int gs_load(dm_sae *s, dm_npz *z)
{
    const dm_sae_config *cfg = &s->cfg;
    float **dst[5] = {&s->W_enc, &s->W_dec, &s->b_enc, &s->b_dec, &s->threshold};
    int64_t numel[5] = {cfg->d_in * cfg->d_sae, cfg->d_sae * cfg->d_in, cfg->d_sae, cfg->d_in, cfg->d_sae};
    for (int a = 0; a < 5; a++) {
        *dst[a] = dm_xmalloc_aligned((size_t)numel[a] * sizeof(float) + 64);
        if (dm_npz_read_f32(z, gs_find(z, gs_arrays[a]), *dst[a]))
            return -1;
    }
    gs_release r;
    gs_parse(s->dir, &r);
    if (r.embedding) {
        const float k = sqrtf((float)cfg->d_in);
        for (int64_t i = 0; i < numel[0]; i++)
            s->W_enc[i] /= k, s->W_dec[i] *= k;
    }
    return 0;
}

int dm_sae_read_config(const char *dir, dm_sae_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    char *npz = npz_of(dir);
    if (npz) {
        dm_npz *z;
        int rc = gs_config(dir, npz, cfg, &z);
        dm_npz_close(z);
        free(npz);
        return rc;
    }
    char *path = dm_xasprintf("%s/cfg.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    int rc = -1;
    if (!root) {
        int cannot_open = json_error_code(&jerr) == json_error_cannot_open_file;
        dm_failc(cannot_open ? DM_E_IO : DM_E_CORRUPT, "%s: %s%s (line %d)", path, jerr.text,
                 cannot_open ? ": is this a SAELens SAE folder?" : "", jerr.line);
        goto end;
    }
    if (!json_is_object(root)) {
        dm_failc(DM_E_CORRUPT, "%s: not a JSON object", path);
        goto end;
    }
    json_t *v;
    static const char *dims[] = {"d_in", "d_sae"};
    int64_t *dst[] = {&cfg->d_in, &cfg->d_sae};
    for (int i = 0; i < 2; i++) {
        v = cfg_get(root, dims[i]);
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            dm_failc(DM_E_CORRUPT, "%s: key %s %s", path, dims[i], v ? "must be a positive integer" : "is missing");
            goto end;
        }
        *dst[i] = json_integer_value(v);
    }

    /* Architecture. Before SAELens 6 a top-k SAE was "standard" with
     * activation_fn "topk" and activation_fn_kwargs.k. */
    const char *arch = cfg_word(root, path, "architecture", "standard");
    const char *act = cfg_word(root, path, cfg_get(root, "activation_fn") ? "activation_fn" : "activation_fn_str",
                               "relu");
    if (!arch || !act)
        goto end;
    if (!strcmp(arch, "standard"))
        cfg->arch = !strcmp(act, "topk") ? DM_SAE_TOPK : DM_SAE_STANDARD;
    else if (!strcmp(arch, "jumprelu"))
        cfg->arch = DM_SAE_JUMPRELU;
    else if (!strcmp(arch, "topk"))
        cfg->arch = DM_SAE_TOPK;
    else {
        dm_fail("%s: unknown architecture '%s' (supported: standard, jumprelu, topk)", path, arch);
        goto end;
    }
    if (cfg->arch == DM_SAE_STANDARD && strcmp(act, "relu")) {
        dm_fail("%s: activation_fn '%s' is not supported for architecture standard (relu or topk)", path, act);
        goto end;
    }
    if (cfg->arch == DM_SAE_TOPK) {
        v = cfg_get(root, "k");
        if (!v) {
            json_t *kw = cfg_get(root, "activation_fn_kwargs");
            v = json_is_object(kw) ? json_object_get(kw, "k") : NULL;
        }
        if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > cfg->d_sae) {
            dm_fail("%s: a topk SAE needs k (key k or activation_fn_kwargs.k) between 1 and d_sae %lld", path,
                    (long long)cfg->d_sae);
            goto end;
        }
        cfg->k = json_integer_value(v);
    }
    int rescale = 0;
    if (cfg_bool(cfg_get(root, "rescale_acts_by_decoder_norm"), path, "rescale_acts_by_decoder_norm", 0, &rescale))
        goto end;
    if (rescale) {
        dm_fail("%s: rescale_acts_by_decoder_norm is not supported", path);
        goto end;
    }
    if (cfg_bool(cfg_get(root, "apply_b_dec_to_input"), path, "apply_b_dec_to_input", 1,
                 &cfg->apply_b_dec_to_input))
        goto end;

    /* Very old configs say normalize_activations: true/false. */
    v = cfg_get(root, "normalize_activations");
    if (v && !json_is_boolean(v) && !json_is_string(v)) {
        char r[64];
        cfg_repr(v, r, sizeof r);
        dm_failc(DM_E_CORRUPT, "%s: key normalize_activations must be a string, one of none, expected_average_only_in, "
                 "constant_norm_rescale, layer_norm (or a boolean in old configs), not %s", path, r);
        goto end;
    }
    const char *norm = !v ? "none" : json_is_boolean(v) ? (json_is_true(v) ? "expected_average_only_in" : "none")
                                                        : json_string_value(v);
    int found = 0;
    for (int i = 0; i < 4; i++)
        if (!strcmp(norm, dm_sae_norm_name((dm_sae_norm)i)))
            cfg->norm = (dm_sae_norm)i, found = 1;
    if (!found) {
        dm_fail("%s: unknown normalize_activations '%s' (supported: none, expected_average_only_in, "
                "constant_norm_rescale, layer_norm)",
                path, norm);
        goto end;
    }
    if (cfg_bool(cfg_get(root, "finetuning_scaling_factor"), path, "finetuning_scaling_factor", 0,
                 &cfg->finetuning_scaling_factor))
        goto end;

    if (cfg_string(root, path, "hook_name", "hook_point", &cfg->hook_name) ||
        cfg_string(root, path, "model_name", NULL, &cfg->model_name) ||
        cfg_string(root, path, "dataset_path", NULL, &cfg->dataset_path))
        goto end;
    json_t *kw = cfg_get(root, "model_from_pretrained_kwargs");
    if (cfg_bool(json_is_object(kw) ? json_object_get(kw, "center_writing_weights") : NULL, path,
                 "model_from_pretrained_kwargs.center_writing_weights", -1, &cfg->center_writing_weights) ||
        cfg_bool(cfg_get(root, "prepend_bos"), path, "prepend_bos", 1, &cfg->prepend_bos))
        goto end;
    v = cfg_get(root, "context_size");
    if (v && (!json_is_integer(v) || json_integer_value(v) <= 0)) {
        char r[64];
        cfg_repr(v, r, sizeof r);
        dm_failc(DM_E_CORRUPT, "%s: key context_size must be a positive integer (tokens per window), not %s", path, r);
        goto end;
    }
    cfg->context_size = v ? json_integer_value(v) : -1;
    rc = 0;
end:
    if (rc)
        dm_sae_config_free(cfg);
    json_decref(root);
    free(path);
    return rc;
}

/* ---- loading ------------------------------------------------------------ */

/* The tensor called name with the expected shape, or NULL with dm_fail. */
static const dm_st_tensor *want(const dm_safetensors *st, const char *name, int ndim, int64_t d0, int64_t d1,
                                const dm_sae_config *cfg)
{
    const dm_st_tensor *t = dm_st_find(st, name);
    if (!t) {
        dm_failc(DM_E_CORRUPT, "%s: tensor %s is missing (a %s SAE needs W_enc, W_dec, b_enc, b_dec%s)",
                 dm_st_path(st), name,
                dm_sae_arch_name(cfg->arch), cfg->arch == DM_SAE_JUMPRELU ? " and threshold or log_threshold" : "");
        return NULL;
    }
    if (!dm_st_is_float(t)) {
        dm_failc(DM_E_CORRUPT, "%s: tensor %s has dtype %s; expected F32, F16 or BF16", dm_st_path(st), name,
                 t->dtype);
        return NULL;
    }
    int64_t shape[2] = {d0, d1};
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char have[96], need[96];
        dm_st_shape_str(t->shape, t->ndim, have, sizeof have);
        dm_st_shape_str(shape, ndim, need, sizeof need);
        dm_failc(DM_E_SHAPE, "%s: tensor %s has shape %s, cfg.json (d_in %lld, d_sae %lld) needs %s", dm_st_path(st),
                 name, have, (long long)cfg->d_in, (long long)cfg->d_sae, need);
        return NULL;
    }
    return t;
}

static int check_open(const dm_safetensors *st, const dm_sae_config *cfg)
{
    int64_t di = cfg->d_in, ds = cfg->d_sae;
    if (!want(st, "W_enc", 2, di, ds, cfg) || !want(st, "W_dec", 2, ds, di, cfg) || !want(st, "b_enc", 1, ds, 0, cfg) ||
        !want(st, "b_dec", 1, di, 0, cfg))
        return -1;
    if (cfg->arch == DM_SAE_JUMPRELU)
        if (!want(st, dm_st_find(st, "threshold") ? "threshold" : dm_st_find(st, "log_threshold") ? "log_threshold"
                                                                                                   : "threshold",
                  1, ds, 0, cfg))
            return -1;
    if (cfg->finetuning_scaling_factor && !want(st, "scaling_factor", 1, ds, 0, cfg))
        return -1;
    return 0;
}

int dm_sae_check(const char *dir, const dm_sae_config *cfg)
{
    char *npz = npz_of(dir);
    if (npz) {
        dm_npz *z = dm_npz_open(npz);
        int rc = z ? gs_check(z, cfg->d_in, cfg->d_sae) : -1;
        dm_npz_close(z);
        free(npz);
        return rc;
    }
    char *path = dm_xasprintf("%s/sae_weights.safetensors", dir);
    dm_safetensors *st = dm_st_open(path);
    free(path);
    if (!st)
        return -1;
    int rc = check_open(st, cfg);
    dm_st_close(st);
    return rc;
}

/* Features per encode panel: each thread multiplies the tile by SAE_PANEL columns
 * of W_enc at a time and scans the result while it is still in its L2 (256
 * rows x 512 floats = 512 KiB), instead of writing the whole tile x d_sae
 * block to memory and reading it back. */
#define SAE_PANEL 512

/* Floats of one panel's slot in W_enc_packed. */
static int64_t panel_packed_floats(int64_t d_in, int64_t d_sae)
{
    return (int64_t)dm_sgemm_packed_floats((int)d_in, (int)(d_sae < SAE_PANEL ? d_sae : SAE_PANEL));
}

int64_t dm_sae_packed_floats(int64_t d_in, int64_t d_sae, const dm_compute *c)
{
    if (dm_sae_backend_for(c) != &dm_sae_backend_cpu || !c->avx512)
        return 0;
    return (d_sae + SAE_PANEL - 1) / SAE_PANEL * panel_packed_floats(d_in, d_sae);
}

/* Packs W_enc panel by panel for dm_sgemm, when c's backend runs it. */
static void pack_encoder(dm_sae *s, const dm_compute *c)
{
    const int64_t di = s->cfg.d_in, ds = s->cfg.d_sae, slot = panel_packed_floats(di, ds);
    if (!dm_sae_packed_floats(di, ds, c))
        return;
    s->W_enc_packed = dm_xmalloc_huge((size_t)dm_sae_packed_floats(di, ds, c) * sizeof(float));
#pragma omp parallel for schedule(dynamic, 1) num_threads(c->threads)
    for (int64_t f0 = 0; f0 < ds; f0 += SAE_PANEL)
        dm_sgemm_pack(s->W_enc_packed + f0 / SAE_PANEL * slot, s->W_enc + f0, (int)ds, (int)di,
                      (int)(ds - f0 < SAE_PANEL ? ds - f0 : SAE_PANEL));
}

void dm_sae_free(dm_sae *s)
{
    if (!s)
        return;
    dm_sae_config_free(&s->cfg);
    free(s->dir), free(s->W_enc), free(s->W_enc_packed), free(s->W_dec), free(s->b_enc), free(s->b_dec);
    free(s->threshold), free(s->log_sparsity);
    free(s);
}

static float *read_tensor(const dm_safetensors *st, const char *name)
{
    const dm_st_tensor *t = dm_st_find(st, name);
    float *out = dm_xmalloc_aligned((size_t)t->numel * sizeof(float) + 64);
    if (dm_st_read_f32(st, t, out)) {
        free(out);
        return NULL;
    }
    return out;
}

/* sparsity.safetensors (optional): key "sparsity", log10 feature density. */
static int read_sparsity(dm_sae *s)
{
    char *path = dm_xasprintf("%s/sparsity.safetensors", s->dir);
    int rc = 0;
    if (dm_file_exists(path)) {
        dm_safetensors *st = dm_st_open(path);
        const dm_st_tensor *t = st ? dm_st_find(st, "sparsity") : NULL;
        if (!st)
            rc = -1;
        else if (!t || !dm_st_is_float(t) || t->numel != s->cfg.d_sae)
            rc = dm_failc(DM_E_CORRUPT, "%s: expected a float tensor 'sparsity' of %lld values", path,
                          (long long)s->cfg.d_sae);
        else {
            s->log_sparsity = dm_xmalloc((size_t)t->numel * sizeof(float));
            rc = dm_st_read_f32(st, t, s->log_sparsity);
        }
        dm_st_close(st);
    }
    free(path);
    return rc;
}

dm_sae *dm_sae_load(const char *dir, double scaling_factor, const dm_compute *c)
{
    dm_sae *s = dm_xcalloc(1, sizeof *s);
    dm_safetensors *st = NULL;
    s->dir = dm_xstrdup(dir);
    s->scaling_factor = 1.0;
    char *npz = npz_of(dir);
    if (npz) {
        dm_npz *z;
        int rc = gs_config(dir, npz, &s->cfg, &z);
        free(npz);
        if (!rc)
            rc = gs_load(s, z);
        dm_npz_close(z);
        if (rc)
            goto fail;
        for (int64_t f = 0; f < s->cfg.d_sae; f++) /* as below: pre > max(threshold, 0) */
            s->threshold[f] = s->threshold[f] > 0 ? s->threshold[f] : 0;
        pack_encoder(s, c);
        return s;
    }
    if (dm_sae_read_config(dir, &s->cfg))
        goto fail;
    const dm_sae_config *cfg = &s->cfg;
    if (cfg->norm == DM_SAE_NORM_EXPECTED_AVERAGE) {
        if (!(scaling_factor > 0) || !isfinite(scaling_factor)) {
            dm_fail("%s: normalize_activations is expected_average_only_in, and its scaling factor is not in the "
                    "folder (SAELens keeps it in pretrained_saes.yaml as norm_scaling_factor): give it with the "
                    "scaling_factor parameter",
                    dir);
            goto fail;
        }
        s->scaling_factor = scaling_factor;
    }
    char *path = dm_xasprintf("%s/sae_weights.safetensors", dir);
    st = dm_st_open(path);
    free(path);
    if (!st || check_open(st, cfg))
        goto fail;
    if (!(s->W_enc = read_tensor(st, "W_enc")) || !(s->W_dec = read_tensor(st, "W_dec")) ||
        !(s->b_enc = read_tensor(st, "b_enc")) || !(s->b_dec = read_tensor(st, "b_dec")))
        goto fail;
    if (cfg->arch == DM_SAE_JUMPRELU) {
        int logt = !dm_st_find(st, "threshold");
        if (!(s->threshold = read_tensor(st, logt ? "log_threshold" : "threshold")))
            goto fail;
        /* relu(pre) * (pre > t) is nonzero exactly where pre > max(t, 0) */
        for (int64_t f = 0; f < cfg->d_sae; f++) {
            float t = logt ? expf(s->threshold[f]) : s->threshold[f];
            s->threshold[f] = t > 0 ? t : 0;
        }
    }
    if (cfg->finetuning_scaling_factor) {
        /* SAELens before 6 decoded f * scaling_factor: fold it into W_dec's rows */
        float *sf = read_tensor(st, "scaling_factor");
        if (!sf)
            goto fail;
        for (int64_t f = 0; f < cfg->d_sae; f++)
            for (int64_t j = 0; j < cfg->d_in; j++)
                s->W_dec[f * cfg->d_in + j] *= sf[f];
        free(sf);
    }
    if (read_sparsity(s))
        goto fail;
    dm_st_close(st);
    pack_encoder(s, c);
    return s;
fail:
    dm_st_close(st);
    dm_sae_free(s);
    return NULL;
}

/* A copy of n floats, allocated as read_tensor allocates. */
static float *copy_floats(const float *src, int64_t n)
{
    float *out = dm_xmalloc_aligned((size_t)n * sizeof(float) + 64);
    memcpy(out, src, (size_t)n * sizeof(float));
    return out;
}

dm_sae *dm_sae_from_arrays(int64_t d_in, int64_t d_sae, const char *hook_name, const char *name,
                           const float *W_enc, const float *W_dec, const float *b_enc, const float *b_dec,
                           const dm_compute *cx)
{
    dm_sae *s = dm_xcalloc(1, sizeof *s);
    s->dir = dm_xstrdup(name);
    s->scaling_factor = 1.0;
    dm_sae_config *c = &s->cfg;
    c->d_in = d_in;
    c->d_sae = d_sae;
    c->arch = DM_SAE_STANDARD;
    c->apply_b_dec_to_input = 0;
    c->norm = DM_SAE_NORM_NONE;
    c->hook_name = dm_xstrdup(hook_name);
    c->model_name = dm_xstrdup("");
    c->dataset_path = dm_xstrdup("");
    c->center_writing_weights = c->prepend_bos = -1;
    c->context_size = -1;
    s->W_enc = copy_floats(W_enc, d_in * d_sae);
    s->W_dec = copy_floats(W_dec, d_sae * d_in);
    s->b_enc = copy_floats(b_enc, d_sae);
    s->b_dec = copy_floats(b_dec, d_in);
    pack_encoder(s, cx);
    return s;
}

/* ---- the kernel --------------------------------------------------------- */

void dm_sae_sparse_free(dm_sae_sparse *sp)
{
    if (!sp)
        return;
    free(sp->start), free(sp->feature), free(sp->value);
    memset(sp, 0, sizeof *sp);
}

void dm_sae_sparse_reset(dm_sae_sparse *sp, int64_t rows)
{
    if (sp->cap_rows < rows + 1) {
        sp->start = dm_xrealloc(sp->start, (size_t)(rows + 1) * sizeof *sp->start);
        sp->cap_rows = rows + 1;
    }
    sp->rows = 0;
    sp->start[0] = 0;
}

void dm_sae_sparse_reserve(dm_sae_sparse *sp, int64_t n)
{
    if (n <= sp->cap)
        return;
    int64_t cap = sp->cap ? sp->cap : 1024;
    while (cap < n)
        cap *= 2;
    sp->feature = dm_xrealloc(sp->feature, (size_t)cap * sizeof *sp->feature);
    sp->value = dm_xrealloc(sp->value, (size_t)cap * sizeof *sp->value);
    sp->cap = cap;
}

/* Rows per float block of the covariances (cov_update states the error bound). */
#define SAE_COV_ROWS 256

/* A per-thread growable list of (row, feature, value), in the order the thread
 * found them: by panel, then row, then feature. */
typedef struct {
    int64_t n, cap;
    int32_t *row, *feature;
    float *value;
    float *xhat; /* (d_in) decode accumulator */
    char pad[64];
} actlist;

struct dm_sae_work {
    int64_t tile, d_in, d_sae;
    dm_compute c;   /* the context the work was made for */
    int topk;
    /* the CPU's buffers, for tiles of ctile rows: made at once for "cpu" and
     * "ref", on the first CPU forward for "cuda" (its fallback) */
    int64_t ctile;
    int nthreads;
    float *pre;     /* topk: (tile, d_sae); else (nthreads, tile, SAE_PANEL) */
    float *xin;     /* (tile, d_in) */
    float *zero;    /* (d_sae) thresholds of a standard SAE */
    double *coef;   /* (tile, 2) per-row normalisation: scale and offset */
    unsigned char *finite; /* (tile) */
    int64_t nseg;   /* panels + threads */
    int64_t *count; /* (nseg, tile) actives per segment and row, then where each goes in sp */
    int64_t *seg;   /* (nseg, 3) a segment's thread and its range in that thread's list */
    actlist *lists; /* (nthreads) */
    void *device;   /* a device backend's state (dm_sae_work_set_device) */
    void (*device_release)(void *);
};

/* Rows of the CPU buffers of a work made for the GPU (its fallback). */
#define SAE_FALLBACK_TILE 256

static int64_t pre_floats(int64_t d_sae, int64_t tile, int topk, int nthreads)
{
    return topk ? tile * d_sae : nthreads * tile * (d_sae < SAE_PANEL ? d_sae : SAE_PANEL);
}

int64_t dm_sae_tile_bytes(int64_t d_in, int64_t d_sae, int64_t tile)
{
    return tile * (d_sae + d_in) * 4 + tile * 32 + d_sae * 4;
}

int64_t dm_sae_work_bytes(const dm_sae *s, int64_t tile, const dm_compute *c)
{
    int nt = c->threads;
    int64_t di = s->cfg.d_in, ds = s->cfg.d_sae;
    int64_t nseg = (ds + SAE_PANEL - 1) / SAE_PANEL + nt;
    return 4 * (pre_floats(ds, tile, s->cfg.arch == DM_SAE_TOPK, nt) + tile * di + ds) + tile * 17 +
           nseg * (tile * 8 + 24) + nt * di * 4;
}

/* The CPU buffers of w, for ctile rows. */
static void work_cpu(dm_sae_work *w)
{
    w->nthreads = w->c.threads;
    w->pre = dm_xmalloc_aligned((size_t)pre_floats(w->d_sae, w->ctile, w->topk, w->nthreads) * sizeof(float));
    w->xin = dm_xmalloc_aligned((size_t)(w->ctile * w->d_in) * sizeof(float));
    w->zero = dm_xcalloc((size_t)w->d_sae, sizeof(float));
    w->coef = dm_xmalloc((size_t)w->ctile * 2 * sizeof(double));
    w->finite = dm_xmalloc((size_t)w->ctile);
    w->nseg = (w->d_sae + SAE_PANEL - 1) / SAE_PANEL + w->nthreads;
    w->count = dm_xmalloc((size_t)(w->nseg * w->ctile) * sizeof(int64_t));
    w->seg = dm_xmalloc((size_t)(w->nseg * 3) * sizeof(int64_t));
    w->lists = dm_xcalloc((size_t)w->nthreads, sizeof *w->lists);
    for (int t = 0; t < w->nthreads; t++)
        w->lists[t].xhat = dm_xmalloc_aligned((size_t)w->d_in * sizeof(float));
}

dm_sae_work *dm_sae_work_new(const dm_sae *s, int64_t tile, const dm_compute *c)
{
    dm_sae_work *w = dm_xcalloc(1, sizeof *w);
    w->tile = tile < 1 ? 1 : tile;
    w->d_in = s->cfg.d_in;
    w->d_sae = s->cfg.d_sae;
    w->c = *c;
    w->topk = s->cfg.arch == DM_SAE_TOPK;
    const dm_sae_backend *be = dm_sae_backend_for(c);
    if (be == &dm_sae_backend_cpu || be == &dm_sae_backend_ref) {
        w->ctile = w->tile;
        work_cpu(w);
    } else
        w->ctile = w->tile < SAE_FALLBACK_TILE ? w->tile : SAE_FALLBACK_TILE;
    return w;
}

void dm_sae_work_free(dm_sae_work *w)
{
    if (!w)
        return;
    if (w->device && w->device_release)
        w->device_release(w->device);
    for (int t = 0; w->lists && t < w->nthreads; t++)
        free(w->lists[t].row), free(w->lists[t].feature), free(w->lists[t].value), free(w->lists[t].xhat);
    free(w->lists), free(w->pre), free(w->xin), free(w->zero), free(w->coef), free(w->finite), free(w->count);
    free(w->seg);
    free(w);
}

int64_t dm_sae_work_tile(const dm_sae_work *w) { return w->tile; }
const dm_compute *dm_sae_work_compute(const dm_sae_work *w) { return &w->c; }
void *dm_sae_work_device(const dm_sae_work *w) { return w->device; }

void dm_sae_work_set_device(dm_sae_work *w, void *state, void (*release)(void *state))
{
    w->device = state;
    w->device_release = release;
}

static void list_reserve(actlist *L, int64_t n)
{
    if (n <= L->cap)
        return;
    while (L->cap < n)
        L->cap = L->cap ? 2 * L->cap : 4096;
    L->row = dm_xrealloc(L->row, (size_t)L->cap * sizeof *L->row);
    L->feature = dm_xrealloc(L->feature, (size_t)L->cap * sizeof *L->feature);
    L->value = dm_xrealloc(L->value, (size_t)L->cap * sizeof *L->value);
}

static void list_push(actlist *L, int32_t r, int32_t f, float v)
{
    if (L->n == L->cap)
        list_reserve(L, L->n + 1);
    L->row[L->n] = r;
    L->feature[L->n] = f;
    L->value[L->n++] = v;
}

static int row_finite(const float *x, int64_t d)
{
    /* x - x is 0 for a finite x and NaN for NaN or Inf. (A product 0 * x * ...
     * does not work: under a SIMD reduction each lane starts from 1, and the
     * product of a lane's share of a row of large values overflows to Inf.) */
    float acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; j++)
        acc += x[j] - x[j];
    return acc == 0;
}

/* Normalisation of one row: x' = (x - offset) * scale; the decode undoes it with
 * x_hat = y / scale' + offset, where scale' is scale except for layer_norm,
 * whose output side multiplies by std rather than dividing by std + eps (as
 * SAELens does). coef[0] = scale, coef[1] = offset; out_scale separately. */
static void row_norm(const dm_sae *s, const float *x, double *scale, double *offset, double *out_mul)
{
    int64_t d = s->cfg.d_in;
    *scale = 1, *offset = 0, *out_mul = 1;
    switch (s->cfg.norm) {
    case DM_SAE_NORM_NONE: break;
    case DM_SAE_NORM_EXPECTED_AVERAGE:
        *scale = s->scaling_factor;
        *out_mul = 1 / s->scaling_factor;
        break;
    case DM_SAE_NORM_CONSTANT: {
        double ss = 0;
        for (int64_t j = 0; j < d; j++)
            ss += (double)x[j] * x[j];
        /* a zero row has no direction to rescale: it is left as it is (SAELens
         * would produce NaN) */
        *scale = ss > 0 ? sqrt((double)d) / sqrt(ss) : 1;
        *out_mul = 1 / *scale;
        break;
    }
    case DM_SAE_NORM_LAYER: {
        double mu = 0, ss = 0;
        for (int64_t j = 0; j < d; j++)
            mu += x[j];
        mu /= (double)d;
        for (int64_t j = 0; j < d; j++)
            ss += ((double)x[j] - mu) * ((double)x[j] - mu);
        double sd = d > 1 ? sqrt(ss / (double)(d - 1)) : 0; /* torch.std: n - 1 */
        *offset = mu;
        *scale = 1 / (sd + 1e-5);
        *out_mul = sd;
        break;
    }
    }
}

/* Any of 16 pre-activations above its threshold: (pre + b > thr), the same
 * float sum and comparison as the scalar test below. */
static inline int any_above16(const float *pre, const float *b, const float *thr)
{
#ifdef __SSE2__
    __m128 m = _mm_cmpgt_ps(_mm_add_ps(_mm_loadu_ps(pre), _mm_loadu_ps(b)), _mm_loadu_ps(thr));
    for (int j = 4; j < 16; j += 4)
        m = _mm_or_ps(m, _mm_cmpgt_ps(_mm_add_ps(_mm_loadu_ps(pre + j), _mm_loadu_ps(b + j)),
                                      _mm_loadu_ps(thr + j)));
    return _mm_movemask_ps(m);
#else
    int any = 0;
    for (int j = 0; j < 16; j++)
        any |= pre[j] + b[j] > thr[j];
    return any;
#endif
}

/* Extracts the active features of one row of pre-activations (bias not yet
 * added) for features f0 .. f0 + d into L as row r; returns how many. Standard
 * and jumprelu: pre + b_enc > thr (thr = 0 for standard). pre, b and thr start
 * at feature f0. Most 16-blocks have no active feature and cost one vector test. */
static int64_t scan_threshold(const float *restrict pre, const float *restrict b, const float *restrict thr,
                              int64_t d, int64_t f0, int32_t r, actlist *L)
{
    int64_t n0 = L->n, f = 0;
    for (; f + 16 <= d; f += 16) {
        if (!any_above16(pre + f, b + f, thr + f))
            continue;
        for (int j = 0; j < 16; j++) {
            float v = pre[f + j] + b[f + j];
            if (v > thr[f + j])
                list_push(L, r, (int32_t)(f0 + f + j), v);
        }
    }
    for (; f < d; f++) {
        float v = pre[f] + b[f];
        if (v > thr[f])
            list_push(L, r, (int32_t)(f0 + f), v);
    }
    return L->n - n0;
}

/* Top k: a min-heap of the k largest (value, feature) pairs, then relu (those
 * at or below zero are inactive), written in increasing feature order. */
static void heap_down(float *hv, int32_t *hf, int64_t k, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < k && hv[l] < hv[m])
            m = l;
        if (r < k && hv[r] < hv[m])
            m = r;
        if (m == i)
            return;
        float tv = hv[i];
        int32_t tf = hf[i];
        hv[i] = hv[m], hf[i] = hf[m], hv[m] = tv, hf[m] = tf;
        i = m;
    }
}

static int64_t scan_topk(const float *restrict pre, const float *restrict b, int64_t d, int64_t k, int32_t r,
                         actlist *L)
{
    /* the heap lives at the end of L's arrays, past the actives already there */
    list_reserve(L, L->n + 2 * k);
    float *hv = L->value + L->n + k;
    int32_t *hf = L->feature + L->n + k;
    for (int64_t f = 0; f < k; f++)
        hv[f] = pre[f] + b[f], hf[f] = (int32_t)f;
    for (int64_t i = k / 2; i-- > 0;)
        heap_down(hv, hf, k, i);
    float floor = hv[0];
    for (int64_t f = k; f < d; f++) {
        float v = pre[f] + b[f];
        if (v > floor) {
            hv[0] = v, hf[0] = (int32_t)f;
            heap_down(hv, hf, k, 0);
            floor = hv[0];
        }
    }
    /* keep the positive ones, sorted by feature (insertion sort: k is small) */
    int64_t n = 0;
    float *ov = L->value + L->n;
    int32_t *of = L->feature + L->n;
    for (int64_t i = 0; i < k; i++) {
        if (!(hv[i] > 0))
            continue;
        int64_t j = n++;
        while (j > 0 && of[j - 1] > hf[i]) {
            of[j] = of[j - 1], ov[j] = ov[j - 1];
            j--;
        }
        of[j] = hf[i], ov[j] = hv[i];
    }
    for (int64_t i = 0; i < n; i++)
        L->row[L->n + i] = r;
    L->n += n;
    return n;
}

static void nan_row(float *r, int64_t d)
{
    for (int64_t j = 0; j < d; j++)
        r[j] = NAN;
}

/* The "cpu" forward (sae.h's backend table; the file header says how). */
static int64_t forward_cpu(dm_sae_work *w, const dm_sae *s, const float *x, int64_t rows, float *recon,
                           float *residual, dm_sae_sparse *sp)
{
    const int64_t di = s->cfg.d_in, ds = s->cfg.d_sae;
    const float *thr = s->cfg.arch == DM_SAE_JUMPRELU ? s->threshold : w->zero;
    const int topk = s->cfg.arch == DM_SAE_TOPK;
    if (!w->pre)
        work_cpu(w); /* a GPU's work, sent to the CPU by a CUDA error */
    const int blas_threads = dm_blas_serial_begin();
    int64_t bad = 0;
    dm_sae_sparse_reset(sp, rows);
    for (int64_t t0 = 0; t0 < rows; t0 += w->ctile) {
        const int64_t m = rows - t0 < w->ctile ? rows - t0 : w->ctile;
        const float *xt = x + t0 * di;
        /* x_in = normalise(x) - b_dec; non-finite rows encode zeros, ignored */
        for (int64_t r = 0; r < m; r++) {
            const float *xr = xt + r * di;
            float *in = w->xin + r * di;
            w->finite[r] = (unsigned char)row_finite(xr, di);
            if (!w->finite[r]) {
                memset(in, 0, (size_t)di * sizeof(float));
                bad++;
                continue;
            }
            double scale, offset, out_mul;
            row_norm(s, xr, &scale, &offset, &out_mul);
            w->coef[2 * r] = offset;
            w->coef[2 * r + 1] = out_mul;
            const float bd = s->cfg.apply_b_dec_to_input ? 1.0f : 0.0f;
            if (scale == 1 && offset == 0)
                for (int64_t j = 0; j < di; j++)
                    in[j] = xr[j] - bd * s->b_dec[j];
            else
                for (int64_t j = 0; j < di; j++)
                    in[j] = (float)(((double)xr[j] - offset) * scale) - bd * s->b_dec[j];
        }
        /* pre (m, d_sae) = x_in (m, d_in) @ W_enc (d_in, d_sae), b_enc added in the scan,
         * by column panels handed out to the threads as they come free (a thread
         * slowed by another process on its core holds no one up), each a
         * single-threaded SGEMM (no hand-over between OpenBLAS's thread pool,
         * which spins between calls, and OpenMP's). Except for topk, a panel is
         * scanned while it is in cache. Topk needs whole rows: its panels fill
         * the tile, then rows are scanned.
         *
         * What a thread finds goes to its own list, in segments: one a panel
         * (threshold) or one a thread's share of rows (topk). The actives of a
         * row are then those of segment 0, segment 1, ..., which is increasing
         * feature order. count (nseg, tile) holds each segment's actives per row. */
        const int nt = w->nthreads;
        const int64_t npanels = (ds + SAE_PANEL - 1) / SAE_PANEL, nseg = topk ? nt : npanels;
        const int64_t slot = s->W_enc_packed ? panel_packed_floats(di, ds) : 0;
        memset(w->count, 0, (size_t)(nseg * w->ctile) * sizeof *w->count);
        memset(w->seg, 0, (size_t)(nseg * 3) * sizeof *w->seg);
        for (int t = 0; t < nt; t++)
            w->lists[t].n = 0;
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num();
            actlist *L = &w->lists[t];
#pragma omp for schedule(dynamic, 1)
            for (int64_t p = 0; p < npanels; p++) {
                const int64_t f0 = p * SAE_PANEL, pw = ds - f0 < SAE_PANEL ? ds - f0 : SAE_PANEL;
                float *out = topk ? w->pre + f0 : w->pre + t * w->ctile * (ds < SAE_PANEL ? ds : SAE_PANEL);
                const int64_t ld = topk ? ds : pw;
                if (s->W_enc_packed)
                    dm_sgemm(out, (int)ld, w->xin, (int)di,
                             s->W_enc_packed + p * slot, NULL, (int)m, (int)pw,
                             (int)di, 0, NULL);
                else
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)pw, (int)di, 1.0f,
                                w->xin, (int)di, s->W_enc + f0, (int)ds, 0.0f, out, (int)ld);
                if (topk)
                    continue;
                int64_t *cnt = w->count + p * w->ctile, *sg = w->seg + 3 * p;
                sg[0] = t, sg[1] = L->n;
                for (int64_t r = 0; r < m; r++)
                    if (w->finite[r])
                        cnt[r] = scan_threshold(out + r * ld, s->b_enc + f0, thr + f0, pw, f0, (int32_t)r, L);
                sg[2] = L->n;
            }
            if (topk) {
                int64_t *cnt = w->count + t * w->ctile, *sg = w->seg + 3 * t;
#pragma omp for schedule(static)
                for (int64_t r = 0; r < m; r++)
                    if (w->finite[r])
                        cnt[r] = scan_topk(w->pre + r * ds, s->b_enc, ds, s->cfg.k, (int32_t)r, L);
                sg[0] = t, sg[1] = 0, sg[2] = L->n;
            }
        }
        /* count becomes each (segment, row)'s first slot in sp */
        int64_t at = sp->start[sp->rows];
        for (int64_t r = 0; r < m; r++) {
            for (int64_t g = 0; g < nseg; g++) {
                int64_t c = w->count[g * w->ctile + r];
                w->count[g * w->ctile + r] = at;
                at += c;
            }
            sp->start[sp->rows + r + 1] = at;
        }
        sp->rows += m;
        dm_sae_sparse_reserve(sp, at);

        /* scatter each thread's segments into sp, then decode from the active
         * rows of W_dec only */
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num();
            const actlist *L = &w->lists[t];
            for (int64_t g = 0; g < nseg; g++) {
                const int64_t *sg = w->seg + 3 * g;
                if (sg[0] != t)
                    continue;
                int64_t *slot = w->count + g * w->ctile;
                for (int64_t a = sg[1]; a < sg[2]; a++) {
                    int64_t to = slot[L->row[a]]++;
                    sp->feature[to] = L->feature[a];
                    sp->value[to] = L->value[a];
                }
            }
#pragma omp barrier
            float *restrict xh = w->lists[t].xhat;
#pragma omp for schedule(dynamic, 8)
            for (int64_t r = 0; r < m; r++) {
                int64_t g = t0 + r;
                if (!w->finite[r]) {
                    if (recon)
                        nan_row(recon + g * di, di);
                    if (residual)
                        nan_row(residual + g * di, di);
                    continue;
                }
                memcpy(xh, s->b_dec, (size_t)di * sizeof(float));
                for (int64_t a = sp->start[g]; a < sp->start[g + 1]; a++) {
                    const float v = sp->value[a];
                    const float *restrict wd = s->W_dec + (int64_t)sp->feature[a] * di;
#pragma omp simd
                    for (int64_t j = 0; j < di; j++)
                        xh[j] += v * wd[j];
                }
                const double offset = w->coef[2 * r], mul = w->coef[2 * r + 1];
                if (mul != 1 || offset != 0)
                    for (int64_t j = 0; j < di; j++)
                        xh[j] = (float)(xh[j] * mul + offset);
                const float *xr = x + g * di;
                if (recon)
                    memcpy(recon + g * di, xh, (size_t)di * sizeof(float));
                if (residual)
#pragma omp simd
                    for (int64_t j = 0; j < di; j++)
                        residual[g * di + j] = xr[j] - xh[j];
            }
        }
    }
    dm_blas_serial_end(blas_threads);
    return bad;
}

typedef struct {
    double v;
    int32_t f;
} ranked;

static int by_value_desc(const void *a, const void *b)
{
    double x = ((const ranked *)a)->v, y = ((const ranked *)b)->v;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* The "ref" forward: one row at a time, a dense pre-activation vector, a dense
 * decode f @ W_dec in double over all d_sae features (zeros skipped). */
static int64_t forward_ref(dm_sae_work *w, const dm_sae *s, const float *x, int64_t rows, float *recon,
                           float *residual, dm_sae_sparse *sp)
{
    const int64_t di = s->cfg.d_in, ds = s->cfg.d_sae;
    float *in = dm_xmalloc((size_t)di * sizeof(float));
    float *f = dm_xmalloc((size_t)ds * sizeof(float));
    double *y = dm_xmalloc((size_t)di * sizeof(double));
    ranked *rk = dm_xmalloc((size_t)ds * sizeof(ranked));
    int64_t bad = 0;
    dm_sae_sparse_reset(sp, rows);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * di;
        int finite = 1;
        for (int64_t j = 0; j < di; j++)
            finite &= isfinite(xr[j]) != 0;
        if (!finite) {
            bad++;
            if (recon)
                nan_row(recon + r * di, di);
            if (residual)
                nan_row(residual + r * di, di);
            sp->start[r + 1] = sp->start[r];
            sp->rows++;
            continue;
        }
        double scale, offset, out_mul;
        row_norm(s, xr, &scale, &offset, &out_mul);
        for (int64_t j = 0; j < di; j++)
            in[j] = (float)(((double)xr[j] - offset) * scale) - (s->cfg.apply_b_dec_to_input ? s->b_dec[j] : 0.0f);
        for (int64_t k = 0; k < ds; k++) {
            double p = 0;
            for (int64_t j = 0; j < di; j++)
                p += (double)in[j] * s->W_enc[j * ds + k];
            f[k] = (float)p + s->b_enc[k];
        }
        switch (s->cfg.arch) {
        case DM_SAE_STANDARD:
            for (int64_t k = 0; k < ds; k++)
                f[k] = f[k] > 0 ? f[k] : 0;
            break;
        case DM_SAE_JUMPRELU:
            for (int64_t k = 0; k < ds; k++)
                f[k] = f[k] > s->threshold[k] ? f[k] : 0;
            break;
        case DM_SAE_TOPK:
            for (int64_t k = 0; k < ds; k++)
                rk[k].v = f[k], rk[k].f = (int32_t)k;
            qsort(rk, (size_t)ds, sizeof *rk, by_value_desc);
            for (int64_t k = 0; k < ds; k++)
                f[k] = 0;
            for (int64_t k = 0; k < s->cfg.k; k++)
                f[rk[k].f] = rk[k].v > 0 ? (float)rk[k].v : 0;
            break;
        }
        for (int64_t j = 0; j < di; j++)
            y[j] = s->b_dec[j];
        int64_t at = sp->start[r];
        for (int64_t k = 0; k < ds; k++) {
            if (f[k] == 0)
                continue;
            for (int64_t j = 0; j < di; j++)
                y[j] += (double)f[k] * s->W_dec[k * di + j];
            dm_sae_sparse_reserve(sp, at + 1);
            sp->feature[at] = (int32_t)k;
            sp->value[at++] = f[k];
        }
        sp->start[r + 1] = at;
        sp->rows++;
        for (int64_t j = 0; j < di; j++) {
            float xh = (float)(y[j] * out_mul + offset);
            if (recon)
                recon[r * di + j] = xh;
            if (residual)
                residual[r * di + j] = xr[j] - xh;
        }
    }
    free(in), free(f), free(y), free(rk);
    return bad;
}

/* ---- statistics --------------------------------------------------------- */

struct dm_sae_stats {
    int64_t d_in, d_sae;
    int predictability;
    int threads;             /* the "cpu" cov_update's team */
    int64_t n, nonfinite;
    dm_moments mx, me;       /* (d_in) of x and of e */
    double sse, cos_sum;
    int64_t cos_undefined, l0_sum, l0_max;
    int64_t *l0_hist;        /* (d_sae + 1) */
    int64_t *count;          /* (d_sae) */
    dm_moments feat, block;  /* (d_sae): running, and one block's */
    int64_t *block_count;    /* (d_sae) */
    dm_covariance cxx;
    dm_xcovariance cex;      /* rows of e against rows of x */
    float *z;                /* (SAE_COV_ROWS, 2 d_in): a block's x and e rows side by side, centred */
    float *cblk;             /* (2 d_in, d_in): z^T z[:, :d_in], the block's co-moments [Cxx; Cex] */
    double *bmean;           /* (2 d_in): the block's means of x, then e, less the running ones */
    float *xbuf, *ebuf;      /* finite rows of a block with non-finite ones */
    int64_t buf_rows;
};

int64_t dm_sae_stats_bytes(int64_t d_in, int64_t d_sae, int predictability)
{
    int64_t b = 8 * (8 * d_in + 12 * d_sae);
    if (predictability)
        b += dm_covariance_bytes(d_in) + dm_xcovariance_bytes(d_in, d_in) +
             4 * (SAE_COV_ROWS * 2 * d_in + 2 * d_in * d_in) + 16 * d_in;
    return b;
}

dm_sae_stats *dm_sae_stats_new(int64_t d_in, int64_t d_sae, int predictability, const dm_compute *c)
{
    dm_sae_stats *st = dm_xcalloc(1, sizeof *st);
    st->d_in = d_in, st->d_sae = d_sae, st->predictability = predictability;
    st->threads = c->threads;
    dm_moments_init(&st->mx, d_in);
    dm_moments_init(&st->me, d_in);
    dm_moments_init(&st->feat, d_sae);
    dm_moments_init(&st->block, d_sae);
    st->l0_hist = dm_xcalloc((size_t)d_sae + 1, sizeof(int64_t));
    st->count = dm_xcalloc((size_t)d_sae, sizeof(int64_t));
    st->block_count = dm_xcalloc((size_t)d_sae, sizeof(int64_t));
    if (predictability) {
        dm_covariance_init(&st->cxx, d_in);
        dm_xcovariance_init(&st->cex, d_in, d_in);
        st->z = dm_xmalloc_aligned((size_t)(SAE_COV_ROWS * 2 * d_in) * sizeof(float));
        st->cblk = dm_xmalloc_aligned((size_t)(2 * d_in * d_in) * sizeof(float));
        st->bmean = dm_xmalloc((size_t)(2 * d_in) * sizeof(double));
    }
    return st;
}

void dm_sae_stats_free(dm_sae_stats *st)
{
    if (!st)
        return;
    dm_moments_free(&st->mx), dm_moments_free(&st->me);
    dm_moments_free(&st->feat), dm_moments_free(&st->block);
    dm_covariance_free(&st->cxx);
    dm_xcovariance_free(&st->cex);
    free(st->l0_hist), free(st->count), free(st->block_count), free(st->xbuf), free(st->ebuf);
    free(st->z), free(st->cblk), free(st->bmean);
    free(st);
}

/* cov(x) and cov(e, x) of nf finite rows, merged into the running co-moments
 * st->cxx and st->cex, in blocks of at most SAE_COV_ROWS rows: each block is
 * centred at its own mean (in double), rounded to float, and its co-moments
 * [Cxx; Cex] = Z^T X come from one single-precision GEMM (2 d_in^2 MACs a row,
 * a thread per share of the output rows), then are merged in double with the
 * pairwise rule C = CA + CB + (nA nB/n) dA dB^T (Chan et al. 1979; stats.c).
 *
 * Why float is enough here. The inputs are float: each centred value carries a
 * relative rounding error of 2^-24 (6e-8) whatever the precision it is summed
 * in. A block's float sum of nb <= 256 products has an error of at most
 * nb * 2^-24 (1.5e-5), typically sqrt(nb) * 2^-24 (1e-6), of sum |z_i z_j|
 * <= nb sqrt(C_ii C_jj) (Higham, gamma_n), and only within the block:
 * blocks are merged in double, so the error does not grow with the number of
 * tokens, and centring at the block mean removes the large-mean cancellation.
 * The linear predictability is a ratio of traces; perturbing Cxx by E of
 * relative size 1e-6 moves it by about that much, except through directions
 * of Cxx with eigenvalues below about 1e-6 of the largest, which float data
 * resolves no better (tests/test_sae.c checks it against numpy in float64). */
static void cov_update(dm_sae_stats *st, const float *xf, const float *ef, int64_t nf)
{
    const int64_t d = st->d_in, d2 = 2 * d;
    const int nt = st->threads, blas_threads = dm_blas_serial_begin();
    for (int64_t b0 = 0; b0 < nf; b0 += SAE_COV_ROWS) {
        const int64_t nb = nf - b0 < SAE_COV_ROWS ? nf - b0 : SAE_COV_ROWS;
        const float *xb = xf + b0 * d, *eb = ef + b0 * d;
        double *mu = st->bmean;
        memset(mu, 0, (size_t)d2 * sizeof(double));
        for (int64_t r = 0; r < nb; r++)
            for (int64_t j = 0; j < d; j++)
                mu[j] += xb[r * d + j], mu[d + j] += eb[r * d + j];
        for (int64_t j = 0; j < d2; j++)
            mu[j] /= (double)nb;
        for (int64_t r = 0; r < nb; r++)
            for (int64_t j = 0; j < d; j++) {
                st->z[r * d2 + j] = (float)(xb[r * d + j] - mu[j]);
                st->z[r * d2 + d + j] = (float)(eb[r * d + j] - mu[d + j]);
            }
        /* mu becomes the block's means less the running ones (0 before any row) */
        for (int64_t j = 0; j < d; j++)
            mu[j] -= st->cxx.mean[j], mu[d + j] -= st->cex.mean_x[j];
        const double nA = (double)st->cxx.n, nB = (double)nb, n = nA + nB, f = nA * nB / n;
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num(), team = omp_get_num_threads();
            const int64_t i0 = d2 * t / team, i1 = d2 * (t + 1) / team;
            if (i1 > i0)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(i1 - i0), (int)d, (int)nb, 1.0f,
                            st->z + i0, (int)d2, st->z, (int)d2, 0.0f, st->cblk + i0 * d, (int)d);
            for (int64_t i = i0; i < i1; i++) {
                const float *cb = st->cblk + i * d;
                const double fi = f * mu[i];
                double *C = i < d ? st->cxx.C + i * d : st->cex.C + (i - d) * d;
                const int64_t jn = i < d ? i + 1 : d; /* Cxx: lower triangle */
                for (int64_t j = 0; j < jn; j++)
                    C[j] += (double)cb[j] + fi * mu[j];
            }
        }
        for (int64_t j = 0; j < d; j++) {
            st->cxx.mean[j] += mu[j] * (nB / n);
            st->cex.mean_x[j] += mu[d + j] * (nB / n); /* e */
            st->cex.mean_y[j] = st->cxx.mean[j];       /* x */
        }
        st->cxx.n += nb, st->cex.n += nb;
    }
    dm_blas_serial_end(blas_threads);
}

/* The per-token sums of a block, for every backend: squared error, cosine, L0
 * and the token counts (non-finite rows have no features and a NaN recon:
 * they are counted and skipped). */
static void token_sums(dm_sae_stats *st, const float *x, const float *recon, const float *residual,
                       const dm_sae_sparse *sp, int64_t rows)
{
    const int64_t d = st->d_in;
    double sse = 0, cs = 0;
    int64_t undef = 0, nf = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *hr = recon + r * d, *er = residual + r * d;
        if (!row_finite(xr, d))
            continue;
        nf++;
        double e2 = 0, xx = 0, hh = 0, xh = 0;
        for (int64_t j = 0; j < d; j++) {
            e2 += (double)er[j] * er[j];
            xx += (double)xr[j] * xr[j];
            hh += (double)hr[j] * hr[j];
            xh += (double)xr[j] * hr[j];
        }
        sse += e2;
        if (xx > 0 && hh > 0)
            cs += xh / sqrt(xx * hh);
        else
            undef++;
        int64_t l0 = sp->start[r + 1] - sp->start[r];
        st->l0_hist[l0]++;
        st->l0_sum += l0;
        if (l0 > st->l0_max)
            st->l0_max = l0;
    }
    st->sse += sse, st->cos_sum += cs, st->cos_undefined += undef;
    st->n += nf;
    st->nonfinite += rows - nf;
}

/* The "cpu" statistics: the block's moments and co-moments at once (stats.h's
 * chunk updates, cov_update), the features' central moments of the block from
 * its actives, merged once (the file header). */
static void stats_update_cpu(dm_sae_work *w, dm_sae_stats *st, const float *x, const float *recon,
                             const float *residual, const dm_sae_sparse *sp, int64_t rows)
{
    const int64_t d = st->d_in, ds = st->d_sae;
    int64_t nf = 0;
    const float *xf = x, *ef = residual;
    /* finite rows; a block with others is compacted first */
    for (int64_t r = 0; r < rows; r++)
        nf += row_finite(x + r * d, d);
    if (nf == 0) {
        st->nonfinite += rows;
        return;
    }
    if (nf < rows) {
        if (st->buf_rows < nf) {
            st->xbuf = dm_xrealloc(st->xbuf, (size_t)(nf * d) * sizeof(float));
            st->ebuf = dm_xrealloc(st->ebuf, (size_t)(nf * d) * sizeof(float));
            st->buf_rows = nf;
        }
        int64_t k = 0;
        for (int64_t r = 0; r < rows; r++)
            if (row_finite(x + r * d, d)) {
                memcpy(st->xbuf + k * d, x + r * d, (size_t)d * sizeof(float));
                memcpy(st->ebuf + k * d, residual + r * d, (size_t)d * sizeof(float));
                k++;
            }
        xf = st->xbuf, ef = st->ebuf;
    }
    dm_moments_update(&st->mx, xf, nf);
    dm_moments_update(&st->me, ef, nf);
    if (st->predictability)
        cov_update(st, xf, ef, nf);
    token_sums(st, x, recon, residual, sp, rows);

    /* per feature, this block's central moments over its nf tokens, then merged */
    dm_moments *b = &st->block;
    const int64_t na = sp->start[rows];
    memset(b->mean, 0, (size_t)ds * sizeof(double));
    memset(b->m2, 0, (size_t)ds * sizeof(double));
    memset(b->m3, 0, (size_t)ds * sizeof(double));
    memset(b->m4, 0, (size_t)ds * sizeof(double));
    memset(st->block_count, 0, (size_t)ds * sizeof(int64_t));
    for (int64_t a = 0; a < na; a++) {
        b->mean[sp->feature[a]] += sp->value[a];
        st->block_count[sp->feature[a]]++;
    }
    const double inv = 1.0 / (double)nf;
    for (int64_t f = 0; f < ds; f++)
        b->mean[f] *= inv;
    for (int64_t a = 0; a < na; a++) {
        int32_t f = sp->feature[a];
        double dv = sp->value[a] - b->mean[f], d2 = dv * dv;
        b->m2[f] += d2;
        b->m3[f] += d2 * dv;
        b->m4[f] += d2 * d2;
    }
    for (int64_t f = 0; f < ds; f++) {
        double z = (double)(nf - st->block_count[f]), m = -b->mean[f], m2 = m * m;
        b->m2[f] += z * m2;
        b->m3[f] += z * m2 * m;
        b->m4[f] += z * m2 * m2;
        st->count[f] += st->block_count[f];
    }
    b->n = nf;
    dm_moments_merge(&st->feat, b);
}

/* The "ref" statistics: every accumulator one row at a time (stats.h's
 * reference updates), cov(x) and cov(e, x) in double, and the features'
 * moments over dense rows of f, zeros written out. */
static void stats_update_ref(dm_sae_work *w, dm_sae_stats *st, const float *x, const float *recon,
                             const float *residual, const dm_sae_sparse *sp, int64_t rows)
{
    const int64_t d = st->d_in;
    float *f = dm_xcalloc((size_t)st->d_sae, sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d, *er = residual + r * d;
        if (!row_finite(xr, d))
            continue;
        dm_moments_update_ref(&st->mx, xr, 1);
        dm_moments_update_ref(&st->me, er, 1);
        if (st->predictability) {
            dm_covariance_update_ref(&st->cxx, xr, 1);
            dm_xcovariance_update_ref(&st->cex, er, xr, 1);
        }
        for (int64_t a = sp->start[r]; a < sp->start[r + 1]; a++)
            f[sp->feature[a]] = sp->value[a], st->count[sp->feature[a]]++;
        dm_moments_update_ref(&st->feat, f, 1);
        for (int64_t a = sp->start[r]; a < sp->start[r + 1]; a++)
            f[sp->feature[a]] = 0;
    }
    free(f);
    token_sums(st, x, recon, residual, sp, rows);
}

/* ---- partial results (shards) ----------------------------------------- */

/* Layout of sae_counts.npy (sae.h): five counts, then the L0 histogram and the
 * feature counts. */
enum { CNT_N, CNT_NONFINITE, CNT_COS_UNDEFINED, CNT_L0_SUM, CNT_L0_MAX, CNT_HEAD };

static char *stats_path(const char *dir, const char *file) { return dm_xasprintf("%s/%s", dir, file); }

static int save_moments(const dm_moments *m, const char *dir, const char *file)
{
    char *p = stats_path(dir, file);
    int rc = dm_moments_save(m, p);
    free(p);
    return rc;
}

int dm_sae_stats_save(const dm_sae_stats *st, const char *dir)
{
    const int64_t ds = st->d_sae, ncnt = CNT_HEAD + 2 * ds + 1, two = 2;
    dm_tensor cnt, sums;
    dm_tensor_init(&cnt, DM_I64, 1, &ncnt);
    dm_tensor_init(&sums, DM_F64, 1, &two);
    int64_t *c = cnt.data;
    c[CNT_N] = st->n, c[CNT_NONFINITE] = st->nonfinite, c[CNT_COS_UNDEFINED] = st->cos_undefined;
    c[CNT_L0_SUM] = st->l0_sum, c[CNT_L0_MAX] = st->l0_max;
    memcpy(c + CNT_HEAD, st->l0_hist, (size_t)(ds + 1) * sizeof *c);
    memcpy(c + CNT_HEAD + ds + 1, st->count, (size_t)ds * sizeof *c);
    ((double *)sums.data)[0] = st->sse, ((double *)sums.data)[1] = st->cos_sum;
    char *pc = stats_path(dir, "sae_counts.npy"), *ps = stats_path(dir, "sae_sums.npy");
    int rc = dm_npy_save(pc, &cnt);
    if (!rc)
        rc = dm_npy_save(ps, &sums);
    free(pc), free(ps);
    dm_tensor_free(&cnt), dm_tensor_free(&sums);
    if (!rc)
        rc = save_moments(&st->mx, dir, "x_moments.npy");
    if (!rc)
        rc = save_moments(&st->me, dir, "e_moments.npy");
    if (!rc)
        rc = save_moments(&st->feat, dir, "feature_moments.npy");
    if (!rc && st->predictability) {
        char *pxx = stats_path(dir, "cov_xx.npy"), *pex = stats_path(dir, "cov_ex.npy");
        rc = dm_covariance_save(&st->cxx, pxx);
        if (!rc)
            rc = dm_xcovariance_save(&st->cex, pex);
        free(pxx), free(pex);
    }
    return rc;
}

/* dir/file as a vector of `len` values of dtype into out, or DM_E_CORRUPT
 * naming the file. */
static int load_vector(const char *dir, const char *file, dm_dtype dtype, int64_t len, void *out)
{
    char *p = stats_path(dir, file);
    dm_npy_map *m = dm_npy_open(p);
    int rc = -1;
    if (m) {
        const dm_npy_header *h = dm_npy_hdr(m);
        if (h->dtype != dtype || h->ndim != 1 || h->shape[0] != len)
            dm_failc(DM_E_CORRUPT, "%s: not the partial statistics expected: want a vector of %lld %s values, found a "
                     "%d-D %s array", p, (long long)len, dm_dtype_name(dtype), h->ndim, dm_dtype_name(h->dtype));
        else {
            memcpy(out, dm_npy_data(m), (size_t)len * dm_dtype_size(dtype));
            rc = 0;
        }
    }
    dm_npy_close(m);
    free(p);
    return rc;
}

static int load_moments(dm_moments *m, const char *dir, const char *file)
{
    char *p = stats_path(dir, file);
    int rc = dm_moments_load(m, p);
    free(p);
    return rc;
}

dm_sae_stats *dm_sae_stats_load(const char *dir, int64_t d_in, int64_t d_sae, int predictability,
                                const dm_compute *c)
{
    dm_sae_stats *st = dm_sae_stats_new(d_in, d_sae, predictability, c);
    const int64_t ncnt = CNT_HEAD + 2 * d_sae + 1;
    int64_t *cnt = dm_xmalloc((size_t)ncnt * sizeof *cnt);
    double sums[2];
    int rc = load_vector(dir, "sae_counts.npy", DM_I64, ncnt, cnt);
    if (!rc)
        rc = load_vector(dir, "sae_sums.npy", DM_F64, 2, sums);
    if (!rc && (cnt[CNT_N] < 0 || cnt[CNT_NONFINITE] < 0 || cnt[CNT_COS_UNDEFINED] < 0 || cnt[CNT_L0_SUM] < 0 ||
                cnt[CNT_L0_MAX] < 0 || cnt[CNT_L0_MAX] > d_sae)) {
        rc = dm_failc(DM_E_CORRUPT, "%s/sae_counts.npy: counts out of range (tokens %lld, non-finite %lld, L0 max %lld "
                      "of %lld features)", dir, (long long)cnt[CNT_N], (long long)cnt[CNT_NONFINITE],
                      (long long)cnt[CNT_L0_MAX], (long long)d_sae);
    }
    if (!rc) {
        st->n = cnt[CNT_N], st->nonfinite = cnt[CNT_NONFINITE], st->cos_undefined = cnt[CNT_COS_UNDEFINED];
        st->l0_sum = cnt[CNT_L0_SUM], st->l0_max = cnt[CNT_L0_MAX];
        memcpy(st->l0_hist, cnt + CNT_HEAD, (size_t)(d_sae + 1) * sizeof *cnt);
        memcpy(st->count, cnt + CNT_HEAD + d_sae + 1, (size_t)d_sae * sizeof *cnt);
        st->sse = sums[0], st->cos_sum = sums[1];
        rc = load_moments(&st->mx, dir, "x_moments.npy");
    }
    if (!rc)
        rc = load_moments(&st->me, dir, "e_moments.npy");
    if (!rc)
        rc = load_moments(&st->feat, dir, "feature_moments.npy");
    if (!rc && predictability) {
        char *pxx = stats_path(dir, "cov_xx.npy"), *pex = stats_path(dir, "cov_ex.npy");
        rc = dm_covariance_load(&st->cxx, pxx);
        if (!rc)
            rc = dm_xcovariance_load(&st->cex, pex);
        free(pxx), free(pex);
    }
    free(cnt);
    if (rc) {
        dm_sae_stats_free(st);
        return NULL;
    }
    return st;
}

int dm_sae_stats_merge(dm_sae_stats *a, const dm_sae_stats *b)
{
    if (a->d_in != b->d_in || a->d_sae != b->d_sae || a->predictability != b->predictability)
        return dm_failc(DM_E_SHAPE, "sae statistics: cannot merge d_in %lld, d_sae %lld%s into d_in %lld, d_sae %lld%s",
                        (long long)b->d_in, (long long)b->d_sae, b->predictability ? " with predictability" : "",
                        (long long)a->d_in, (long long)a->d_sae, a->predictability ? " with predictability" : "");
    /* an empty a takes b's sums as they are (0.0 + -0.0 would be 0.0) */
    int empty = a->n == 0 && a->nonfinite == 0;
    a->sse = empty ? b->sse : a->sse + b->sse;
    a->cos_sum = empty ? b->cos_sum : a->cos_sum + b->cos_sum;
    a->n += b->n, a->nonfinite += b->nonfinite, a->cos_undefined += b->cos_undefined;
    a->l0_sum += b->l0_sum;
    if (b->l0_max > a->l0_max)
        a->l0_max = b->l0_max;
    for (int64_t i = 0; i <= a->d_sae; i++)
        a->l0_hist[i] += b->l0_hist[i];
    for (int64_t f = 0; f < a->d_sae; f++)
        a->count[f] += b->count[f];
    if (dm_moments_merge(&a->mx, &b->mx) || dm_moments_merge(&a->me, &b->me) || dm_moments_merge(&a->feat, &b->feat))
        return -1;
    if (a->predictability && (dm_covariance_merge(&a->cxx, &b->cxx) || dm_xcovariance_merge(&a->cex, &b->cex)))
        return -1;
    return 0;
}

/* ---- the backends ------------------------------------------------------- */

const dm_sae_backend dm_sae_backend_ref = {"ref", forward_ref, stats_update_ref};
const dm_sae_backend dm_sae_backend_cpu = {"cpu", forward_cpu, stats_update_cpu};

const dm_sae_backend *dm_sae_backend_cuda(void)
{
    static dm_sae_backend be;
    static int tried, ok;
    if (!tried)
        tried = 1, ok = dm_cuda_fill("dm_cuda_sae_backend", &dm_sae_backend_cpu, &be);
    return ok ? &be : NULL;
}

const dm_sae_backend *dm_sae_backend_for(const dm_compute *c)
{
    if (c->reference)
        return &dm_sae_backend_ref;
    if (c->device == DM_DEVICE_CUDA && dm_sae_backend_cuda())
        return dm_sae_backend_cuda();
    return &dm_sae_backend_cpu;
}

/* The dense activations of a GPU tile (rows x d_sae floats) are bounded by this. */
#define SAE_GPU_ACTIVATION_BYTES ((int64_t)1 << 30)

int64_t dm_sae_backend_tile(const dm_sae_backend *be, int64_t d_sae, int64_t tile, int64_t chunk)
{
    if (be == &dm_sae_backend_cpu || be == &dm_sae_backend_ref)
        return tile;
    int64_t t = SAE_GPU_ACTIVATION_BYTES / (4 * d_sae);
    t = t < chunk ? t : chunk;
    return t > tile ? t : tile;
}

/* ---- blocks of statistics computed elsewhere ----------------------------- */

void dm_sae_block_init(dm_sae_block *b, const dm_sae_stats *st)
{
    memset(b, 0, sizeof *b);
    b->d_in = st->d_in, b->d_sae = st->d_sae, b->predictability = st->predictability;
    b->l0_hist = dm_xcalloc((size_t)st->d_sae + 1, sizeof(int64_t));
    b->count = dm_xcalloc((size_t)st->d_sae, sizeof(int64_t));
    dm_moments_init(&b->mx, st->d_in);
    dm_moments_init(&b->me, st->d_in);
    dm_moments_init(&b->feat, st->d_sae);
    if (st->predictability) {
        dm_covariance_init(&b->cxx, st->d_in);
        dm_xcovariance_init(&b->cex, st->d_in, st->d_in);
    }
}

void dm_sae_block_free(dm_sae_block *b)
{
    if (!b)
        return;
    free(b->l0_hist), free(b->count);
    dm_moments_free(&b->mx), dm_moments_free(&b->me), dm_moments_free(&b->feat);
    dm_covariance_free(&b->cxx);
    dm_xcovariance_free(&b->cex);
    memset(b, 0, sizeof *b);
}

int dm_sae_stats_add_block(dm_sae_stats *st, const dm_sae_block *b)
{
    if (b->d_in != st->d_in || b->d_sae != st->d_sae || b->predictability != st->predictability)
        return dm_failc(DM_E_SHAPE, "sae statistics: a block of d_in %lld, d_sae %lld%s does not fit d_in %lld, "
                        "d_sae %lld%s", (long long)b->d_in, (long long)b->d_sae,
                        b->predictability ? " with predictability" : "", (long long)st->d_in, (long long)st->d_sae,
                        st->predictability ? " with predictability" : "");
    /* as token_sums and stats_update_cpu add a block */
    st->sse += b->sse, st->cos_sum += b->cos_sum, st->cos_undefined += b->cos_undefined;
    st->n += b->n, st->nonfinite += b->nonfinite;
    st->l0_sum += b->l0_sum;
    if (b->l0_max > st->l0_max)
        st->l0_max = b->l0_max;
    for (int64_t i = 0; i <= st->d_sae; i++)
        st->l0_hist[i] += b->l0_hist[i];
    for (int64_t f = 0; f < st->d_sae; f++)
        st->count[f] += b->count[f];
    if (b->n == 0)
        return 0;
    if (dm_moments_merge(&st->mx, &b->mx) || dm_moments_merge(&st->me, &b->me) ||
        dm_moments_merge(&st->feat, &b->feat))
        return -1;
    if (st->predictability && (dm_covariance_merge(&st->cxx, &b->cxx) || dm_xcovariance_merge(&st->cex, &b->cex)))
        return -1;
    return 0;
}

void dm_sae_result_free(dm_sae_result *r)
{
    if (!r)
        return;
    free(r->l0_histogram), free(r->count), free(r->frequency), free(r->mean), free(r->var), free(r->skew);
    free(r->excess_kurtosis);
    memset(r, 0, sizeof *r);
}

/* tr(Cex Cxx^+ Cxe) / tr(Cee) with Cxx's pseudo-inverse over eigenvalues above
 * 1e-10 of the largest: R^2 of the least-squares map x -> e, whose fitted
 * values have covariance Cex Cxx^+ Cxe (the normal equations). */
static int predictability(const dm_sae_stats *st, double tr_ee, double *out, int64_t *rank)
{
    int64_t d = st->d_in;
    double *cxx = dm_xmalloc((size_t)(d * d) * sizeof(double));
    double *cex = dm_xmalloc((size_t)(d * d) * sizeof(double));
    double *V = dm_xmalloc((size_t)(d * d) * sizeof(double));
    double *B = dm_xmalloc((size_t)(d * d) * sizeof(double));
    double *lam = dm_xmalloc((size_t)d * sizeof(double));
    lapack_int *isuppz = dm_xmalloc((size_t)(2 * d) * sizeof(lapack_int));
    lapack_int found = 0;
    int rc = -1;
    if (dm_covariance_finalize(&st->cxx, cxx, NULL) || dm_xcovariance_finalize(&st->cex, cex, NULL, NULL))
        goto end;
    lapack_int info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'A', 'L', (lapack_int)d, cxx, (lapack_int)d, 0, 0, 0, 0,
                                     LAPACKE_dlamch('S'), &found, lam, V, (lapack_int)d, isuppz);
    if (info || found != d) {
        dm_fail("sae: eigendecomposition of cov(x) failed (LAPACKE_dsyevr info %d)", (int)info);
        goto end;
    }
    /* B = Cex V: column i is Cex v_i; the sum of |Cex v_i|^2 / lambda_i is the trace */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d, (int)d, (int)d, 1.0, cex, (int)d, V, (int)d, 0.0,
                B, (int)d);
    double top = lam[d - 1], num = 0; /* dsyevr: ascending */
    int64_t kept = 0;
    for (int64_t i = 0; i < d; i++) {
        if (!(lam[i] > 1e-10 * top))
            continue;
        double c2 = 0;
        for (int64_t r = 0; r < d; r++)
            c2 += B[r * d + i] * B[r * d + i];
        num += c2 / lam[i];
        kept++;
    }
    *out = tr_ee > 0 ? num / tr_ee : NAN;
    *rank = kept;
    rc = 0;
end:
    free(cxx), free(cex), free(V), free(B), free(lam), free(isuppz);
    return rc;
}

int dm_sae_stats_finalize(const dm_sae_stats *st, dm_sae_result *r)
{
    memset(r, 0, sizeof *r);
    if (st->n == 0)
        return dm_fail("sae: no finite rows to take statistics of (%lld rows had NaN or Inf)",
                       (long long)st->nonfinite);
    const int64_t d = st->d_in, ds = st->d_sae;
    const double n = (double)st->n;
    r->n = st->n, r->nonfinite = st->nonfinite, r->d_in = d, r->d_sae = ds;
    double *vx = dm_xmalloc((size_t)d * sizeof(double)), *ve = dm_xmalloc((size_t)d * sizeof(double));
    dm_moments_finalize(&st->mx, NULL, vx, NULL, NULL);
    dm_moments_finalize(&st->me, NULL, ve, NULL, NULL);
    for (int64_t j = 0; j < d; j++)
        r->var_x += vx[j], r->var_e += ve[j];
    free(vx), free(ve);
    r->fvu = r->var_x > 0 ? r->var_e / r->var_x : NAN;
    r->explained_variance = 1 - r->fvu;
    r->mse = st->sse / (n * (double)d);
    r->sse_per_token = st->sse / n;
    r->cosine_undefined = st->cos_undefined;
    r->mean_cosine = st->n > st->cos_undefined ? st->cos_sum / (double)(st->n - st->cos_undefined) : NAN;
    r->mean_l0 = (double)st->l0_sum / n;
    r->l0_max = st->l0_max;
    r->l0_histogram = dm_xmalloc((size_t)(ds + 1) * sizeof(int64_t));
    memcpy(r->l0_histogram, st->l0_hist, (size_t)(ds + 1) * sizeof(int64_t));
    r->count = dm_xmalloc((size_t)ds * sizeof(int64_t));
    memcpy(r->count, st->count, (size_t)ds * sizeof(int64_t));
    r->frequency = dm_xmalloc((size_t)ds * sizeof(double));
    r->mean = dm_xmalloc((size_t)ds * sizeof(double));
    r->var = dm_xmalloc((size_t)ds * sizeof(double));
    r->skew = dm_xmalloc((size_t)ds * sizeof(double));
    r->excess_kurtosis = dm_xmalloc((size_t)ds * sizeof(double));
    dm_moments_finalize(&st->feat, r->mean, r->var, r->skew, r->excess_kurtosis);
    for (int64_t f = 0; f < ds; f++) {
        r->frequency[f] = (double)st->count[f] / n;
        r->dead += st->count[f] == 0;
        r->dense += r->frequency[f] > 1e-3;
    }
    r->linear_predictability = NAN;
    if (st->predictability && predictability(st, r->var_e, &r->linear_predictability, &r->predictability_rank)) {
        dm_sae_result_free(r);
        return -1;
    }
    return 0;
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

char *dm_sae_result_json(const dm_sae_result *r, const dm_sae *s)
{
    json_t *o = json_object();
    if (s) {
        json_object_set_new(o, "sae", json_string(s->dir));
        json_object_set_new(o, "hook_name", json_string(s->cfg.hook_name));
        json_object_set_new(o, "architecture", json_string(dm_sae_arch_name(s->cfg.arch)));
        if (s->cfg.arch == DM_SAE_TOPK)
            json_object_set_new(o, "k", json_integer(s->cfg.k));
        json_object_set_new(o, "normalize_activations", json_string(dm_sae_norm_name(s->cfg.norm)));
        if (s->cfg.norm == DM_SAE_NORM_EXPECTED_AVERAGE)
            json_object_set_new(o, "scaling_factor", json_real(s->scaling_factor));
        json_object_set_new(o, "apply_b_dec_to_input", json_boolean(s->cfg.apply_b_dec_to_input));
    }
    json_object_set_new(o, "d_in", json_integer(r->d_in));
    json_object_set_new(o, "d_sae", json_integer(r->d_sae));
    json_object_set_new(o, "tokens", json_integer(r->n));
    json_object_set_new(o, "nonfinite_rows", json_integer(r->nonfinite));
    json_object_set_new(o, "fvu", num(r->fvu));
    json_object_set_new(o, "explained_variance", num(r->explained_variance));
    json_object_set_new(o, "total_variance_x", num(r->var_x));
    json_object_set_new(o, "total_variance_residual", num(r->var_e));
    json_object_set_new(o, "mse", num(r->mse));
    json_object_set_new(o, "sse_per_token", num(r->sse_per_token));
    json_object_set_new(o, "mean_cosine", num(r->mean_cosine));
    json_object_set_new(o, "cosine_undefined", json_integer(r->cosine_undefined));
    json_object_set_new(o, "mean_l0", num(r->mean_l0));
    json_object_set_new(o, "l0_max", json_integer(r->l0_max));
    json_t *h = json_array();
    for (int64_t i = 0; i <= r->l0_max; i++)
        json_array_append_new(h, json_integer(r->l0_histogram[i]));
    json_object_set_new(o, "l0_histogram", h);
    json_object_set_new(o, "dead_features", json_integer(r->dead));
    json_object_set_new(o, "dead_fraction", num((double)r->dead / (double)r->d_sae));
    json_object_set_new(o, "dense_features", json_integer(r->dense));
    json_object_set_new(o, "dense_threshold", json_real(1e-3));
    /* sae_feature_kurtosis_mean: over features firing on > 0.1% of tokens */
    double ks = 0;
    int64_t kn = 0;
    for (int64_t f = 0; f < r->d_sae; f++)
        if (r->frequency[f] > 1e-3 && isfinite(r->excess_kurtosis[f]))
            ks += r->excess_kurtosis[f], kn++;
    json_object_set_new(o, "sae_feature_kurtosis_mean", kn ? json_real(ks / (double)kn) : json_null());
    json_object_set_new(o, "linear_predictability", num(r->linear_predictability));
    if (isfinite(r->linear_predictability))
        json_object_set_new(o, "predictability_rank", json_integer(r->predictability_rank));
    char *text = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text)
        return NULL;
    size_t len = strlen(text);
    char *out = dm_xmalloc(len + 2);
    memcpy(out, text, len);
    out[len] = '\n', out[len + 1] = 0;
    free(text);
    return out;
}

int dm_sae_settings(const char *dir, dm_sae_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->center_writing_weights = cfg->prepend_bos = -1;
    cfg->context_size = -1;
    return *dir ? dm_sae_read_config(dir, cfg) : 0;
}

/* The SAE's config against the input: hook name (if given) and width. */
int dm_sae_check_input(const dm_sae_config *c, const char *dir, const char *hook, int64_t width)
{
    if (*hook && *c->hook_name && strcmp(hook, c->hook_name))
        return dm_fail("sae %s reads hook %s, but the input comes from hook %s", dir, c->hook_name, hook);
    if (width >= 0 && width != c->d_in)
        return dm_failc(DM_E_SHAPE, "sae d_in %lld does not match input width %lld (hook %s)", (long long)c->d_in,
                        (long long)width, *hook ? hook : *c->hook_name ? c->hook_name : "unknown");
    return 0;
}
