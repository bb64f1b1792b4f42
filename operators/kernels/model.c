/*
 * model.c: the model runner (see model.h), shared by every family; the
 * families' pieces are in gpt2.c and gemma2.c (model_impl.h says what a family
 * supplies).
 *
 * Design, after llm.c's train_gpt2.c:
 *   - config.json's model_type picks the family, whose reader fills one
 *     config struct in GPT-2's names (n_embd, n_layer, ...).
 *   - The weights come from model.safetensors or, as transformers reads them,
 *     from the shards that model.safetensors.index.json's weight_map names.
 *     Every tensor is checked against the family's table before any is read.
 *     Parameters live in one float32 allocation (the family's parameter
 *     struct points into it), converted from the mapped files at load;
 *     nn.Linear weights are transposed to the (C, OC) layout every backend
 *     reads. Only the blocks the deepest hook needs are converted; the files
 *     are unmapped after loading. With DM_WEIGHTS_BF16 on a backend with
 *     bf16 kernels the large matrices (linear weights, the embedding) go to
 *     a second allocation of bf16 values instead: packed once for dm_bgemm
 *     straight from the file (cpu-avx512 where the CPU has AVX-512 BF16), or
 *     plain for the reference loops (ref); elsewhere they are rounded to bf16
 *     and kept float32 (model.h's dm_model_weights).
 *   - Activations of one batch (B windows of T tokens, BT = B*T rows) live in a
 *     second allocation owned by the model, grown when a larger batch arrives:
 *     the residual stream, a norm's output and a branch (the runner's), then
 *     the family's buffers. Attention needs no (B, NH, T, T) tensor, only
 *     scores for ATT_ROWS queries at a time.
 *   - The kernels a pass calls come from a backend table (dm_model_backend),
 *     chosen once when the model is loaded, from its compute context:
 *       "ref"         the plain reference kernels (llm.c style loops);
 *       "cpu"         OpenBLAS sgemm on the weights as loaded, attention's
 *                     products in OpenBLAS, vectorised C for the rest;
 *       "cpu-avx512"  the linear layers (over 95% of the work at GPT-2
 *                     small's shape, T = 128) in dm_sgemm on weights packed
 *                     at load (sgemm.c: one level of Strassen, bias, GELU and
 *                     the residual add fused into its stores, OpenMP
 *                     threads), GPT-2's attention in AVX-512 for head sizes
 *                     that are multiples of 16, GELU in AVX-512 intrinsics;
 *       "cuda"        gpu/gpt2.cu: GPT-2's entries, with the parameters and
 *                     activations in the GPU's memory for the whole pass.
 *     A family whose entries the chosen backend lacks runs on "cpu", with a
 *     one-line notice (Gemma 2 on "cuda" for now).
 *   - Hooks are points in the pass where a caller's callback sees, or edits in
 *     place, the activation (dm_model_run), as TransformerLens's hook points
 *     and ggml's eval callback do; a copy into a caller buffer (with centring)
 *     is the common case and costs what it did before callbacks existed.
 *   - Every fast kernel has a plain reference beside it (the "ref" backend); the
 *     tests compare every backend with it, and whole models with outside
 *     references (tools/gpt2_reference.py, tools/gemma2_reference.py).
 * The forward pass stops at the deepest requested hook, counted in half blocks
 * (attention half, MLP half), as TransformerLens's stop_at_layer does.
 */
/* Float compares (the clamps of dm_expf in the loss) may be if-converted and
 * vectorised only when they are not assumed to trap; nothing here uses
 * floating-point exceptions. */
#pragma GCC optimize("no-trapping-math")

#include "model_impl.h"

#include "device.h"

#include "bgemm.h"
#include "safetensors.h"
#include "sgemm.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const dm_model_family *const families[DM_FAMILY_COUNT] = {
    [DM_FAMILY_GPT2] = &dm_family_gpt2,
    [DM_FAMILY_GEMMA2] = &dm_family_gemma2,
};

/* ---- backends ------------------------------------------------------------ */

static const dm_model_backend backend_ref = {
    .name = "ref",
    .device = DM_DEVICE_CPU,
    .linear = gpt2_linear_ref_entry,
    .gelu = gpt2_gelu_ref_entry,
    .residual = gpt2_residual_ref_entry,
    .bf16 = 1, /* dm_bgemm_ref on bf16 W held (C, OC) */
    .unembed = gpt2_unembed_ref_entry,
    .unembed_bf16 = gpt2_unembed_bf16_ref_entry,
    .layernorm = gpt2_layernorm_ref_entry,
    .attention = gpt2_attention_ref_entry,
    .rmsnorm = gemma2_rmsnorm_ref_entry,
    .rope = gemma2_rope_ref_entry,
    .attention_gqa = gemma2_attention_ref_entry,
    .geglu = gemma2_geglu_ref_entry,
    .softcap = gemma2_softcap_ref_entry,
};

static const dm_model_backend backend_cpu = {
    .name = "cpu",
    .device = DM_DEVICE_CPU,
    .linear = gpt2_linear_cpu,
    .gelu = gpt2_gelu_cpu,
    .residual = gpt2_residual_cpu,
    .unembed = gpt2_unembed_blas,
    .layernorm = gpt2_layernorm_cpu,
    .attention = gpt2_attention_cpu,
    .rmsnorm = gemma2_rmsnorm_cpu,
    .rope = gemma2_rope_cpu,
    .attention_gqa = gemma2_attention_cpu,
    .geglu = gemma2_geglu_cpu,
    .softcap = gemma2_softcap_cpu,
};

#if defined(__x86_64__) && defined(__GNUC__)
#define MODEL_X86 1
static const dm_model_backend backend_cpu_avx512 = {
    .name = "cpu-avx512",
    .device = DM_DEVICE_CPU,
    .packs = 1,
    .bf16 = 1, /* dm_bgemm, where the CPU has AVX-512 BF16 (bf16_hold) */
    .linear = gpt2_linear_avx512,
    .linear_residual = gpt2_linear_residual_avx512,
    .gelu = gpt2_gelu_avx512,
    .residual = gpt2_residual_cpu,
    .unembed = gpt2_unembed_blas,
    .unembed_bf16 = gpt2_unembed_bf16_avx512,
    .layernorm = gpt2_layernorm_cpu,
    .attention = gpt2_attention_avx512,
    .rmsnorm = gemma2_rmsnorm_cpu,
    .rope = gemma2_rope_cpu,
    .attention_gqa = gemma2_attention_cpu,
    .geglu = gemma2_geglu_avx512,
    .softcap = gemma2_softcap_cpu,
};
#endif

static const dm_model_backend *const backends[DM_MODEL_NBACKENDS] = {
    [DM_MODEL_REF] = &backend_ref,
    [DM_MODEL_CPU] = &backend_cpu,
#ifdef MODEL_X86
    [DM_MODEL_CPU_AVX512] = &backend_cpu_avx512,
#endif
    [DM_MODEL_CUDA] = NULL, /* gpu/gpt2.cu, from libdmica-cuda.so where a GPU is (cuda_backend) */
};

/* The "cuda" entry (gpu/gpt2.cu), loaded once where libdmica-cuda.so sees a
 * GPU (device.h); its fallback on a CUDA error is "cpu" (it packs nothing, as
 * the cuda entry does not). The library fills GPT-2's entries; the others stay
 * NULL, so that a family needing them runs on the CPU. */
static const dm_model_backend *cuda_backend(void)
{
    static dm_model_backend be;
    static int tried, ok;
    if (!tried)
        tried = 1, ok = dm_cuda_fill("dm_cuda_model_backend", &backend_cpu, &be);
    return ok ? &be : NULL;
}

const dm_model_backend *dm_model_backend_get(dm_model_backend_id id)
{
    if ((unsigned)id >= DM_MODEL_NBACKENDS)
        return NULL;
    if (id == DM_MODEL_CPU_AVX512 && !dm_compute_default()->avx512)
        return NULL; /* no AVX-512F on this CPU, or DMICA_NO_AVX512=1 */
    if (id == DM_MODEL_CUDA)
        return cuda_backend();
    return backends[id];
}

const dm_model_backend *dm_model_backend_select(const dm_compute *cx)
{
    const dm_model_backend *be;
    if (cx->device == DM_DEVICE_CUDA && (be = dm_model_backend_get(DM_MODEL_CUDA)))
        return be;
    if (cx->reference)
        return dm_model_backend_get(DM_MODEL_REF);
    if (cx->avx512 && (be = dm_model_backend_get(DM_MODEL_CPU_AVX512)))
        return be;
    return dm_model_backend_get(DM_MODEL_CPU);
}

int dm_model_backend_runs(const dm_model_backend *be, dm_model_family_id f)
{
    return be && (unsigned)f < DM_FAMILY_COUNT && families[f]->runs_on(be);
}

/* ---- config ------------------------------------------------------------- */

int dm_model_cfg_int(const char *path, json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v)
        return dm_fail("%s: missing key %s", path, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24))
        return dm_fail("%s: %s must be a positive integer (at most %d)", path, key, 1 << 24);
    *out = (int)json_integer_value(v);
    return 0;
}

const char *dm_model_family_type(dm_model_family_id f)
{
    return (unsigned)f < DM_FAMILY_COUNT ? families[f]->type : "?";
}

const char *dm_model_family_title(dm_model_family_id f)
{
    return (unsigned)f < DM_FAMILY_COUNT ? families[f]->title : "?";
}

int dm_model_can_center(const dm_model_config *c)
{
    return (unsigned)c->family < DM_FAMILY_COUNT && families[c->family]->layernorm;
}

const char *dm_model_weights_name(dm_model_weights w)
{
    return w == DM_WEIGHTS_BF16 ? "bf16" : "f32";
}

int dm_model_read_config(const char *dir, dm_model_config *cfg)
{
    char *path = dm_xasprintf("%s/config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr), *v;
    int rc = -1;
    memset(cfg, 0, sizeof *cfg);
    if (!root) {
        if (jerr.line < 0 || jerr.position == 0)
            dm_fail("%s: cannot read: %s", path, jerr.text);
        else
            dm_fail("%s: not valid JSON: %s (line %d, column %d)", path, jerr.text, jerr.line,
                    jerr.column);
        goto end;
    }
    if (!json_is_object(root)) {
        dm_fail("%s: not a JSON object", path);
        goto end;
    }
    /* GPT-2 folders written before transformers saved model_type have none */
    const dm_model_family *fam = &dm_family_gpt2;
    if ((v = json_object_get(root, "model_type"))) {
        fam = NULL;
        for (int f = 0; f < DM_FAMILY_COUNT && json_is_string(v); f++)
            if (!strcmp(json_string_value(v), families[f]->type))
                fam = families[f];
        if (!fam) {
            dm_failc(DM_E_INPUT, "%s: model_type %s is not supported (gpt2, gemma2)", path,
                     json_is_string(v) ? json_string_value(v) : "(not a string)");
            goto end;
        }
    }
    cfg->family = fam->id;
    rc = fam->read_config(path, root, cfg);
end:
    json_decref(root);
    free(path);
    return rc;
}

/* ---- hooks -------------------------------------------------------------- */

static const char *const block_hook_names[] = {
    [DM_HOOK_RESID_PRE] = "hook_resid_pre", [DM_HOOK_ATTN_OUT] = "hook_attn_out",
    [DM_HOOK_RESID_MID] = "hook_resid_mid", [DM_HOOK_MLP_OUT] = "hook_mlp_out",
    [DM_HOOK_RESID_POST] = "hook_resid_post",
};
static const char *const model_hook_names[] = {
    [DM_HOOK_EMBED] = "hook_embed",
    [DM_HOOK_POS_EMBED] = "hook_pos_embed",
    [DM_HOOK_LN_FINAL] = "ln_final.hook_normalized",
    [DM_HOOK_LOGITS] = "logits",
    [DM_HOOK_LOSS] = "loss",
};

int dm_model_hook_parse(const char *name, dm_model_hook *out)
{
    for (int k = 0; k <= DM_HOOK_LOSS; k++)
        if (k < (int)(sizeof model_hook_names / sizeof *model_hook_names) && model_hook_names[k] &&
            !strcmp(name, model_hook_names[k])) {
            *out = (dm_model_hook){(dm_model_hook_kind)k, -1};
            return 0;
        }
    if (!strncmp(name, "blocks.", 7) && name[7] >= '0' && name[7] <= '9') {
        char *end;
        errno = 0;
        long L = strtol(name + 7, &end, 10);
        if (!errno && L < INT_MAX && *end == '.' && !(name[7] == '0' && end != name + 8))
            for (int k = DM_HOOK_RESID_PRE; k <= DM_HOOK_RESID_POST; k++)
                if (!strcmp(end + 1, block_hook_names[k])) {
                    *out = (dm_model_hook){(dm_model_hook_kind)k, (int)L};
                    return 0;
                }
    }
    return dm_fail("unknown hook '%s' (known: hook_embed, hook_pos_embed, blocks.L.hook_resid_pre, "
                   "blocks.L.hook_attn_out, blocks.L.hook_resid_mid, blocks.L.hook_mlp_out, "
                   "blocks.L.hook_resid_post, ln_final.hook_normalized, logits, loss)",
                   name);
}

const char *dm_model_hook_name(dm_model_hook h, char *buf, size_t n)
{
    if (h.kind >= DM_HOOK_RESID_PRE && h.kind <= DM_HOOK_RESID_POST)
        snprintf(buf, n, "blocks.%d.%s", h.layer, block_hook_names[h.kind]);
    else
        snprintf(buf, n, "%s", model_hook_names[h.kind]);
    return buf;
}

/* Where the forward pass may stop for h, in half blocks: 2L is the input of block
 * L, 2L+1 after its attention, 2L+2 after its MLP; INT_MAX after the final norm. */
static int hook_stop(dm_model_hook h)
{
    switch (h.kind) {
    case DM_HOOK_EMBED:
    case DM_HOOK_POS_EMBED: return 0;
    case DM_HOOK_RESID_PRE: return 2 * h.layer;
    case DM_HOOK_ATTN_OUT:
    case DM_HOOK_RESID_MID: return 2 * h.layer + 1;
    case DM_HOOK_MLP_OUT:
    case DM_HOOK_RESID_POST: return 2 * h.layer + 2;
    default: return INT_MAX;
    }
}

int dm_model_hook_depth(dm_model_hook h)
{
    int s = hook_stop(h);
    return s == INT_MAX ? DM_MODEL_DEPTH_ALL : (s + 1) / 2;
}

int dm_model_hooks_depth(const dm_model_hook *hooks, int n)
{
    int depth = 0;
    for (int i = 0; i < n; i++) {
        int d = dm_model_hook_depth(hooks[i]);
        if (d == DM_MODEL_DEPTH_ALL)
            return DM_MODEL_DEPTH_ALL;
        depth = d > depth ? d : depth;
    }
    return depth;
}

int dm_model_hook_is_residual(dm_model_hook h)
{
    return h.kind <= DM_HOOK_RESID_POST;
}

int dm_model_hook_is_editable(dm_model_hook h)
{
    return dm_model_hook_is_residual(h) || h.kind == DM_HOOK_LN_FINAL;
}

int64_t dm_model_hook_width(const dm_model_config *cfg, dm_model_hook h)
{
    char name[64];
    if (h.layer >= cfg->n_layer || (h.kind >= DM_HOOK_RESID_PRE && h.kind <= DM_HOOK_RESID_POST &&
                                     h.layer < 0))
        return dm_fail("hook %s: the model has %d layers (blocks.0 to blocks.%d)",
                       dm_model_hook_name(h, name, sizeof name), cfg->n_layer, cfg->n_layer - 1);
    if (h.kind == DM_HOOK_POS_EMBED && (unsigned)cfg->family < DM_FAMILY_COUNT &&
        !families[cfg->family]->pos_embed)
        return dm_fail("hook hook_pos_embed: %s has no position embedding (its positions are "
                       "rotary, inside attention)", families[cfg->family]->title);
    if (h.kind == DM_HOOK_LOGITS)
        return cfg->vocab_size;
    if (h.kind == DM_HOOK_LOSS)
        return 1;
    return cfg->n_embd;
}

/* ---- weights: one file, or shards and their index ------------------------- */

/* The tensors of a folder: every name with its file (one, or the index's). */
typedef struct {
    char *index_path;          /* model.safetensors.index.json, or NULL */
    int nfiles;
    dm_safetensors **st;       /* opened files */
    int ntensors;
    const char **names;        /* the index's weight_map keys, or the file's tensors */
    int *file;                 /* names[i]'s file in st */
} weights;

static void weights_close(weights *w)
{
    for (int i = 0; i < w->nfiles; i++)
        dm_st_close(w->st[i]);
    free(w->st);
    for (int i = 0; w->index_path && i < w->ntensors; i++)
        free((char *)w->names[i]);
    free(w->names);
    free(w->file);
    free(w->index_path);
    memset(w, 0, sizeof *w);
}

/* The path errors about the folder's tensors name: the index, or the one file. */
static const char *weights_where(const weights *w)
{
    return w->index_path ? w->index_path : dm_st_path(w->st[0]);
}

/* Opens dir's weights: model.safetensors where it exists (transformers reads
 * it first), else model.safetensors.index.json and every shard its
 * weight_map names, each tensor checked to be in its shard. */
static int weights_open(const char *dir, weights *w)
{
    char *single = dm_xasprintf("%s/model.safetensors", dir);
    char *index = dm_xasprintf("%s/model.safetensors.index.json", dir);
    json_t *root = NULL;
    int rc = -1;
    memset(w, 0, sizeof *w);
    if (access(single, F_OK) == 0 || access(index, F_OK) != 0) {
        w->st = dm_xcalloc(1, sizeof *w->st);
        if (!(w->st[0] = dm_st_open(single)))
            goto end;
        w->nfiles = 1;
        w->ntensors = dm_st_count(w->st[0]);
        w->names = dm_xcalloc((size_t)w->ntensors + 1, sizeof *w->names);
        w->file = dm_xcalloc((size_t)w->ntensors + 1, sizeof *w->file);
        for (int i = 0; i < w->ntensors; i++)
            w->names[i] = dm_st_at(w->st[0], i)->name;
        rc = 0;
        goto end;
    }
    json_error_t jerr;
    w->index_path = index, index = NULL;
    if (!(root = json_load_file(w->index_path, JSON_REJECT_DUPLICATES, &jerr))) {
        dm_failc(DM_E_CORRUPT, "%s: not valid JSON: %s (line %d)", w->index_path, jerr.text, jerr.line);
        goto end;
    }
    json_t *map = json_object_get(root, "weight_map"), *v;
    const char *name;
    if (!json_is_object(map) || !json_object_size(map)) {
        dm_failc(DM_E_CORRUPT, "%s: no weight_map object of tensor names and files", w->index_path);
        goto end;
    }
    size_t n = json_object_size(map);
    w->names = dm_xcalloc(n, sizeof *w->names);
    w->file = dm_xcalloc(n, sizeof *w->file);
    w->st = dm_xcalloc(n, sizeof *w->st);
    char **fnames = dm_xcalloc(n, sizeof *fnames);
    json_object_foreach(map, name, v) {
        const char *f = json_is_string(v) ? json_string_value(v) : NULL;
        if (!f || !*f || strchr(f, '/') || !strcmp(f, "..")) {
            dm_failc(DM_E_CORRUPT, "%s: weight_map: tensor %s: the file must be a file name in "
                     "the folder", w->index_path, name);
            break;
        }
        int k = 0;
        while (k < w->nfiles && strcmp(fnames[k], f))
            k++;
        if (k == w->nfiles) {
            char *p = dm_xasprintf("%s/%s", dir, f);
            w->st[k] = dm_st_open(p);
            free(p);
            if (!w->st[k]) {
                dm_fail_prefix("%s: shard %s (of tensor %s)", w->index_path, f, name);
                break;
            }
            fnames[w->nfiles++] = dm_xstrdup(f);
        }
        if (!dm_st_find(w->st[k], name)) {
            dm_failc(DM_E_CORRUPT, "%s: weight_map puts tensor %s in %s, which does not hold it",
                     w->index_path, name, f);
            break;
        }
        w->names[w->ntensors] = dm_xstrdup(name);
        w->file[w->ntensors++] = k;
    }
    for (int k = 0; k < w->nfiles; k++)
        free(fnames[k]);
    free(fnames);
    rc = w->ntensors == (int)n ? 0 : -1;
end:
    json_decref(root);
    free(single);
    free(index);
    if (rc)
        weights_close(w);
    return rc;
}

/* The tensor called name and its file, or NULL. */
static const dm_st_tensor *weights_find(const weights *w, const char *name, dm_safetensors **st)
{
    for (int i = 0; i < w->ntensors; i++)
        if (!strcmp(w->names[i], name)) {
            *st = w->st[w->file[i]];
            return dm_st_find(*st, name);
        }
    return NULL;
}

/* ---- the model's tensors ---------------------------------------------------- */

static int64_t dim_size(const dm_model_config *c, int d)
{
    switch (d) {
    case D_C: return c->n_embd;
    case D_3C: return 3 * (int64_t)c->n_embd;
    case D_I: return c->n_inner;
    case D_V: return c->vocab_size;
    case D_Q: return (int64_t)c->n_head * c->head_dim;
    case D_KV: return (int64_t)c->n_kv_head * c->head_dim;
    default: return c->n_positions;
    }
}

static int64_t spec_numel(const dm_model_config *c, const dm_tensor_spec *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= dim_size(c, s->dims[i]);
    return n;
}

/* Checks t (called name, in file path) against spec s: a float dtype and the
 * config's shape. */
static int check_tensor(const dm_model_family *f, const char *path, const dm_model_config *c,
                        const char *name, const dm_st_tensor *t, const dm_tensor_spec *s)
{
    int64_t want[2];
    char got_s[128], want_s[128], keys[160];
    size_t k = 0;
    int ok = t->ndim == s->ndim;
    keys[0] = 0;
    for (int i = 0; i < s->ndim; i++) {
        want[i] = dim_size(c, s->dims[i]);
        ok = ok && t->shape[i] == want[i];
        if (!strstr(keys, f->dim_keys[s->dims[i]]) && k < sizeof keys)
            k += snprintf(keys + k, sizeof keys - k, "%s%s %lld", k ? ", " : "",
                          f->dim_keys[s->dims[i]],
                          (long long)dim_size(c, s->dims[i] == D_3C ? D_C : s->dims[i]));
    }
    if (!ok)
        return dm_fail("%s: tensor %s has shape %s, config %s needs %s", path, name,
                       dm_st_shape_str(t->shape, t->ndim, got_s, sizeof got_s), keys,
                       dm_st_shape_str(want, s->ndim, want_s, sizeof want_s));
    if (!dm_st_is_float(t))
        return dm_fail("%s: tensor %s has dtype %s; %s weights must be F32, F16 or BF16", path,
                       name, t->dtype, f->title);
    return 0;
}

/* Finds the spec of a block tensor name "<prefix>L.<suffix>"; *layer gets L.
 * -1 if the name is not of that form; 1 if it is a buffer to ignore. */
static int block_tensor(const dm_model_family *f, const char *name, int *layer,
                        const dm_tensor_spec **spec)
{
    char *end;
    size_t n = strlen(f->block_prefix);
    if (strncmp(name, f->block_prefix, n) || name[n] < '0' || name[n] > '9')
        return -1;
    errno = 0;
    long L = strtol(name + n, &end, 10);
    if (errno || L > INT_MAX || *end != '.')
        return -1;
    *layer = (int)L;
    for (int i = 0; i < f->n_block_tensors; i++)
        if (!strcmp(end + 1, f->block_tensors[i].name)) {
            *spec = &f->block_tensors[i];
            return 0;
        }
    for (int i = 0; f->ignored && f->ignored[i]; i++)
        if (!strcmp(end + 1, f->ignored[i]))
            return 1;
    return -1;
}

/* Checks every tensor of w against cfg: all expected ones present, none unknown. */
static int check_tensors(const dm_model_family *f, const dm_model_config *c, const weights *w)
{
    char name[256];
    const char *where = weights_where(w);
    dm_safetensors *st;
    for (int i = 0; i < w->ntensors; i++) {
        const dm_st_tensor *t = weights_find(w, w->names[i], &st);
        const char *path = dm_st_path(st);
        const dm_tensor_spec *s = NULL;
        int layer, r;
        for (int j = 0; j < f->n_model_tensors; j++)
            if (!strcmp(t->name, f->model_tensors[j].name))
                s = &f->model_tensors[j];
        if (s) {
            if (check_tensor(f, path, c, t->name, t, s) < 0)
                return -1;
            continue;
        }
        if (!strcmp(t->name, "lm_head.weight")) { /* tied to the embedding: ignored, but must fit */
            static const dm_tensor_spec lm_head = {"lm_head.weight", 2, {D_V, D_C}, 0, 0};
            if (check_tensor(f, path, c, t->name, t, &lm_head) < 0)
                return -1;
            continue;
        }
        r = block_tensor(f, t->name, &layer, &s);
        if (r < 0)
            return dm_fail("%s: unexpected tensor %s (not a %s weight)", where, t->name, f->title);
        if (layer >= c->n_layer)
            return dm_fail("%s: unexpected tensor %s: config %s %d has blocks %s0 to %s%d", where,
                           t->name, f->layer_key, c->n_layer, f->block_prefix, f->block_prefix,
                           c->n_layer - 1);
        if (r == 0 && check_tensor(f, path, c, t->name, t, s) < 0)
            return -1;
    }
    for (int j = 0; j < f->n_model_tensors; j++)
        if (!weights_find(w, f->model_tensors[j].name, &st))
            return dm_fail("%s: missing tensor %s", where, f->model_tensors[j].name);
    for (int l = 0; l < c->n_layer; l++)
        for (int j = 0; j < f->n_block_tensors; j++) {
            snprintf(name, sizeof name, "%s%d.%s", f->block_prefix, l, f->block_tensors[j].name);
            if (!weights_find(w, name, &st))
                return dm_fail("%s: missing tensor %s (config %s %d)", where, name, f->layer_key,
                               c->n_layer);
        }
    return 0;
}

/* Drops the whole pages of tensor t from this process's resident set once it
 * is read: the files are mapped read-only (safetensors.c: PROT_READ,
 * MAP_PRIVATE), so the pages stay in the page cache and a later read faults
 * them in again. Loading then holds the weights once, as the runner keeps
 * them, not also the file's pages (about 3 GB of Gemma-2-2B to layer 12,
 * which /usr/bin/time's peak resident set counted). */
static void release_mapped(const dm_st_tensor *t)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)t->data + pg - 1) & ~(pg - 1);
    uintptr_t e = ((uintptr_t)t->data + (uintptr_t)t->nbytes) & ~(pg - 1);
    if (e > a)
        madvise((void *)a, e - a, MADV_DONTNEED);
}

/* Reads tensor name into out as s holds it (transposed, plus one). */
static int read_tensor(const dm_model_config *c, const weights *w, const char *name,
                       const dm_tensor_spec *s, float *out, float **tmp, size_t *tmp_n)
{
    dm_safetensors *st;
    const dm_st_tensor *t = weights_find(w, name, &st);
    int64_t n = spec_numel(c, s);
    if (!(s->flags & T_TRANSPOSE)) {
        if (dm_st_read_f32(st, t, out) < 0)
            return -1;
    } else {
        /* the file's (OC, C) into (C, OC) */
        int64_t OC = dim_size(c, s->dims[0]), C = dim_size(c, s->dims[1]);
        float *src = dm_model_scratch(tmp, tmp_n, (size_t)n);
        if (dm_st_read_f32(st, t, src) < 0)
            return -1;
        for (int64_t i0 = 0; i0 < C; i0 += 32) /* by tiles of 32 x 32: both sides in cache */
            for (int64_t j0 = 0; j0 < OC; j0 += 32)
                for (int64_t i = i0; i < C && i < i0 + 32; i++)
                    for (int64_t j = j0; j < OC && j < j0 + 32; j++)
                        out[i * OC + j] = src[j * C + i];
    }
    if (s->flags & T_PLUS_ONE)
        for (int64_t i = 0; i < n; i++)
            out[i] += 1.0f;
    release_mapped(t);
    return 0;
}

/* Reads large tensor name (spec s) as bf16 values into dst: with hold
 * BF16_PACKED packed by dm_bgemm_pack as W (K, N) (bf16_shape), else plain: a
 * linear weight as (C, OC), the embedding as in the file (V, C). A BF16 tensor
 * is taken as it is, an F32 or F16 one rounded to nearest even. */
static int read_bf16(const dm_model_config *c, const weights *w, const char *name,
                     const dm_tensor_spec *s, int hold, uint16_t *dst, float **tmp, size_t *tmp_n)
{
    dm_safetensors *st;
    const dm_st_tensor *t = weights_find(w, name, &st);
    /* the file's (R, Cn) is W (K, N) (GPT-2's Conv1D) or W transposed
     * (nn.Linear's (OC, C), the embedding (V, C)) */
    int64_t R = dim_size(c, s->dims[0]), Cn = dim_size(c, s->dims[1]);
    int nk = (s->flags & (T_TRANSPOSE | T_EMBED)) != 0, raw = !strcmp(t->dtype, "BF16");
    float *f = NULL;
    if (!raw && dm_st_read_f32(st, t, f = dm_model_scratch(tmp, tmp_n, (size_t)(R * Cn))) < 0)
        return -1;
    if (hold == BF16_PACKED) {
        int K = (int)(nk ? Cn : R), N = (int)(nk ? R : Cn), layout = nk ? DM_BGEMM_NK : DM_BGEMM_KN;
        if (raw)
            dm_bgemm_pack(dst, t->data, (int)Cn, K, N, layout);
        else
            dm_bgemm_pack_f32(dst, f, (int)Cn, K, N, layout);
        release_mapped(t);
        return 0;
    }
    const unsigned char *b = t->data;
    int tr = (s->flags & T_TRANSPOSE) != 0;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < Cn; j++) {
            size_t from = (size_t)(i * Cn + j), to = tr ? (size_t)(j * R + i) : from;
            uint16_t h;
            if (raw)
                memcpy(&h, b + 2 * from, 2);
            else
                h = dm_f32_to_bf16(f[from]);
            dst[to] = h;
        }
    release_mapped(t);
    return 0;
}

/* x (n) rounded to bf16 values (nearest even), held as float32: the weights of
 * DM_WEIGHTS_BF16 where the backend has no bf16 kernels. */
static void round_bf16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = dm_bf16_to_f32(dm_f32_to_bf16(x[i]));
}

size_t dm_model_param_floats(const dm_model_config *c, int depth)
{
    const dm_model_family *f = families[c->family];
    size_t total = 0;
    if (depth == DM_MODEL_DEPTH_ALL)
        depth = c->n_layer;
    for (int j = 0; j < f->n_model_tensors; j++)
        total += spec_numel(c, &f->model_tensors[j]);
    for (int j = 0; j < f->n_block_tensors; j++)
        total += (size_t)depth * spec_numel(c, &f->block_tensors[j]);
    return total;
}

/* The (C, OC) a T_PACK tensor is held as. */
static void held_shape(const dm_model_config *c, const dm_tensor_spec *s, int *C, int *OC)
{
    int t = (s->flags & T_TRANSPOSE) != 0;
    *C = (int)dim_size(c, s->dims[t]);
    *OC = (int)dim_size(c, s->dims[!t]);
}

/* The backend a model of family f with weights w runs on when cx selects be:
 * be, or the CPU entry cx would select without a device when be lacks f's
 * kernels or is a device's and w is bf16 (no device has a bf16 path yet). */
static const dm_model_backend *backend_for(dm_model_family_id f, const dm_model_backend *be,
                                           const dm_compute *cx, dm_model_weights w)
{
    if (!be || (families[f]->runs_on(be) && !(w == DM_WEIGHTS_BF16 && be->dev)))
        return be;
    return dm_model_backend_select(&(dm_compute){.reference = cx->reference, .avx512 = cx->avx512});
}

/* How a model with weights w on be holds its large matrices: BF16_NONE
 * (float32: asked for, or widened where be has no bf16 kernels: "cpu", or
 * cpu-avx512 on a CPU without AVX-512 BF16, where dm_bgemm would run its slow
 * plain C kernel), BF16_PLAIN (ref: dm_bgemm_ref's unpacked W) or
 * BF16_PACKED (dm_bgemm_pack's layout). */
static int bf16_hold(const dm_model_backend *be, dm_model_weights w)
{
    if (w != DM_WEIGHTS_BF16 || !be->bf16)
        return BF16_NONE;
    if (!be->packs)
        return BF16_PLAIN;
    return dm_bgemm_available() ? BF16_PACKED : BF16_NONE;
}

/* 1 for a tensor held bf16 with DM_WEIGHTS_BF16: a linear weight, the embedding. */
static int is_large(const dm_tensor_spec *s)
{
    return (s->flags & (T_PACK | T_EMBED)) != 0;
}

/* The (K, N) of large tensor s as W of out = inp (., K) @ W (K, N): a linear
 * layer's (C, OC); the embedding's (C, V) for the tied unembedding. */
static void bf16_shape(const dm_model_config *c, const dm_tensor_spec *s, int *K, int *N)
{
    if (s->flags & T_EMBED) {
        *K = (int)dim_size(c, s->dims[1]);
        *N = (int)dim_size(c, s->dims[0]);
    } else {
        held_shape(c, s, K, N);
    }
}

/* bf16 values of (one layer of) large tensor s held so (hold), rounded up to
 * 32 (each tensor 64-byte aligned, as dm_bgemm_pack needs). */
static size_t bf16_size(const dm_model_config *c, const dm_tensor_spec *s, int hold)
{
    int K, N;
    bf16_shape(c, s, &K, &N);
    size_t n = hold == BF16_PACKED ? dm_bgemm_packed_size(K, N) : (size_t)K * N;
    return (n + 31) & ~(size_t)31;
}

/* Floats of depth blocks' T_PACK weights packed for dm_sgemm. */
static size_t packed_floats(const dm_model_config *c, int depth)
{
    const dm_model_family *f = families[c->family];
    size_t per = 0;
    int C, OC;
    for (int j = 0; j < f->n_block_tensors; j++)
        if (f->block_tensors[j].flags & T_PACK) {
            held_shape(c, &f->block_tensors[j], &C, &OC);
            per += dm_sgemm_packed_floats(C, OC);
        }
    return (size_t)depth * per;
}

size_t dm_model_packed_floats(const dm_model_config *c, int depth, const dm_compute *cx)
{
    cx = cx ? cx : dm_compute_default();
    const dm_model_backend *be = backend_for(c->family, dm_model_backend_select(cx), cx, DM_WEIGHTS_F32);
    return be && be->packs ? packed_floats(c, depth) : 0;
}

/* What a model of L blocks (and the final norm with has_final) holds: float32
 * parameters, floats packed for dm_sgemm (a backend that packs), bf16 values
 * (hold). The load allocates exactly these. */
static void param_plan(const dm_model_config *c, int L, int has_final, int packs, int hold,
                       size_t *f32, size_t *packed, size_t *bf16)
{
    const dm_model_family *f = families[c->family];
    *f32 = *packed = *bf16 = 0;
    for (int j = 0; j < f->n_model_tensors; j++) {
        const dm_tensor_spec *s = &f->model_tensors[j];
        if ((s->flags & T_FINAL) && !has_final)
            continue;
        if (hold && is_large(s))
            *bf16 += bf16_size(c, s, hold);
        else
            *f32 += spec_numel(c, s);
    }
    for (int j = 0; j < f->n_block_tensors; j++) {
        const dm_tensor_spec *s = &f->block_tensors[j];
        if (hold && is_large(s))
            *bf16 += (size_t)L * bf16_size(c, s, hold);
        else
            *f32 += (size_t)L * spec_numel(c, s);
    }
    *packed = packs && !hold ? packed_floats(c, L) : 0;
}

size_t dm_model_param_bytes(const dm_model_config *c, int depth, const dm_compute *cx,
                            dm_model_weights w)
{
    cx = cx ? cx : dm_compute_default();
    const dm_model_backend *be = backend_for(c->family, dm_model_backend_select(cx), cx, w);
    size_t f32, packed, bf16;
    int all = depth == DM_MODEL_DEPTH_ALL;
    param_plan(c, all ? c->n_layer : depth, all, be && be->packs, be ? bf16_hold(be, w) : 0, &f32,
               &packed, &bf16);
    return sizeof(float) * (f32 + packed) + sizeof(uint16_t) * bf16;
}

size_t dm_model_bytes(const dm_model *m)
{
    return sizeof(float) * (m->params_floats + m->packed_floats) + sizeof(uint16_t) * m->bf16_values;
}

int dm_model_holds_bf16(const dm_model *m)
{
    return m->bf16_hold != BF16_NONE;
}

size_t dm_model_act_floats(const dm_model_config *c, size_t BT, int want_loss_only)
{
    size_t sizes[DM_MODEL_FAMILY_ACTS + 1] = {0}, total = 3 * BT * c->n_embd;
    families[c->family]->act_sizes(c, BT, sizes);
    for (int i = 0; i < DM_MODEL_FAMILY_ACTS && sizes[i]; i++)
        total += sizes[i];
    return total + (want_loss_only ? (size_t)LOGIT_ROWS * c->vocab_size : 0);
}

/* Packs each block's T_PACK weights for dm_sgemm, when the backend reads them so. */
static void pack_weights(dm_model *m)
{
    const dm_model_config *c = &m->cfg;
    const dm_model_family *f = m->fam;
    int L = m->depth, np = 0;
    const float *src[DM_MODEL_MAX_PACKED];
    int Cs[DM_MODEL_MAX_PACKED], OCs[DM_MODEL_MAX_PACKED];
    size_t total = m->be->packs && !m->bf16_hold ? packed_floats(c, L) : 0;
    if (!total)
        return;
    m->packed_floats = total;
    m->packed_memory = dm_xmalloc_huge(sizeof(float) * total);
    float *p = m->packed_memory;
    for (int j = 0; j < f->n_block_tensors; j++) {
        const dm_tensor_spec *s = &f->block_tensors[j];
        if (!(s->flags & T_PACK))
            continue;
        held_shape(c, s, &Cs[np], &OCs[np]);
        src[np] = *(float **)((char *)m->params + s->field);
        m->pk[np] = p;
        m->pk_n[np] = dm_sgemm_packed_floats(Cs[np], OCs[np]);
        p += (size_t)L * m->pk_n[np];
        np++;
    }
#pragma omp parallel for schedule(dynamic) if (m->cx.omp_kernels)
    for (int l = 0; l < L; l++)
        for (int k = 0; k < np; k++)
            dm_sgemm_pack(m->pk[k] + l * m->pk_n[k], src[k] + (size_t)l * Cs[k] * OCs[k], OCs[k],
                          Cs[k], OCs[k]);
}

dm_model_weight dm_model_block_weight(const dm_model *m, const float *w, int pack, int l, int C,
                                      int OC)
{
    dm_model_weight r = {NULL, NULL, NULL};
    if (w)
        r.w = w + (size_t)l * C * OC;
    if (m->pk[pack])
        r.packed = m->pk[pack] + (size_t)l * m->pk_n[pack];
    if (m->bk[pack])
        r.bf16 = m->bk[pack] + (size_t)l * m->bk_n[pack];
    return r;
}

const float *dm_model_embed_row(const dm_model *m, int32_t token, float *buf)
{
    const float *e = *(float *const *)m->params;
    const int C = m->cfg.n_embd;
    if (e)
        return e + (size_t)token * C;
    const uint16_t *w = m->embed_bf16;
    if (m->bf16_hold == BF16_PLAIN) { /* (V, C) as in the file */
        w += (size_t)token * C;
        for (int i = 0; i < C; i++)
            buf[i] = dm_bf16_to_f32(w[i]);
        return buf;
    }
    /* Column token of W (C, V) in dm_bgemm_pack's layout (bgemm.c): panels of
     * DM_BGEMM_NR columns (dm_bgemm_packed_size(C, 1) values each), in which
     * k-pair p is 2 NR values: for columns 0..15, then 16..31, W[2p][j] beside
     * W[2p+1][j]. tests/test_gemma2.c checks the rows against the float32 load. */
    _Static_assert(DM_BGEMM_NR == 32, "the packed layout read here has panels of 32 columns");
    int jj = token % DM_BGEMM_NR;
    w += (size_t)(token / DM_BGEMM_NR) * dm_bgemm_packed_size(C, 1) + (size_t)(jj >> 4) * 32 + (size_t)(jj & 15) * 2;
    for (int k = 0; k < C; k++)
        buf[k] = dm_bf16_to_f32(w[(size_t)(k / 2) * 2 * DM_BGEMM_NR + (k & 1)]);
    return buf;
}

/* The parameters copied to a device backend's memory, and dparams pointing
 * into the copy; -1 when the device cannot take them. */
static int device_params(dm_model *m)
{
    const dm_model_device_ops *dev = m->be->dev;
    size_t total = m->params_floats;
    if (!(m->dparams_memory = dev->alloc(sizeof(float) * total)) ||
        dev->upload(m->dparams_memory, m->params_memory, sizeof(float) * total))
        return -1;
    float *const *h = (float *const *)m->params;
    float **d = (float **)m->dparams;
    for (size_t i = 0; i < m->fam->params_size / sizeof(float *); i++)
        d[i] = h[i] ? m->dparams_memory + (h[i] - m->params_memory) : NULL;
    return 0;
}

/* The model off its device backend, onto "cpu" (which packs nothing), after a
 * device error (said by the device) or at dm_model_free: the device's memory
 * released, the activations to be made again in host memory. */
static void leave_device(dm_model *m)
{
    const dm_model_device_ops *dev = m->be->dev;
    dev->release(m->dparams_memory);
    dev->release(m->acts_memory);
    dev->host_release(m->stage);
    m->stage = NULL, m->stage_n = 0;
    for (int i = 0; i < m->ndcopy; i++)
        dev->release(m->dcopy[i]);
    free(m->dcopy), free(m->dcopy_n), free(m->dcopy_ok);
    m->dcopy = NULL, m->dcopy_n = NULL, m->dcopy_ok = NULL, m->ndcopy = 0;
    m->dparams_memory = m->acts_memory = NULL;
    memset(m->dparams, 0, m->fam->params_size);
    memset(&m->acts, 0, sizeof m->acts);
    m->acts_rows = 0;
    m->be = dm_model_backend_get(DM_MODEL_CPU);
}

dm_model *dm_model_load(const char *dir, int depth, const dm_compute *cx)
{
    return dm_model_load_opts(dir, depth, cx, NULL);
}

dm_model *dm_model_load_backend(const char *dir, int depth, const dm_compute *cx,
                                const dm_model_backend *be)
{
    dm_model_opts o = {.be = be};
    return dm_model_load_opts(dir, depth, cx, &o);
}

dm_model *dm_model_load_opts(const char *dir, int depth, const dm_compute *cx,
                             const dm_model_opts *opts)
{
    static const dm_model_opts defaults;
    dm_model *m = dm_xcalloc(1, sizeof *m);
    char name[256];
    weights w = {0};
    float *tmp = NULL;
    size_t tmp_n = 0;
    dm_model_config *c = &m->cfg;
    opts = opts ? opts : &defaults;
    m->dir = dm_xstrdup(dir);
    m->cx = *(cx ? cx : dm_compute_default());
    if (!(m->be = opts->be ? opts->be : dm_model_backend_select(&m->cx))) {
        dm_fail_prefix("%s", dir);
        goto fail;
    }
    if (dm_model_read_config(dir, c) < 0)
        goto fail;
    const dm_model_family *f = m->fam = families[c->family];
    m->params = dm_xcalloc(1, f->params_size);
    m->dparams = dm_xcalloc(1, f->params_size);
    if (opts->weights != DM_WEIGHTS_F32 && opts->weights != DM_WEIGHTS_BF16) {
        dm_failc(DM_E_INTERNAL, "%s: weights %d are neither f32 nor bf16", dir, (int)opts->weights);
        goto fail;
    }
    if (depth < DM_MODEL_DEPTH_ALL) {
        dm_failc(DM_E_INPUT, "%s: bad depth %d", dir, depth);
        goto fail;
    }
    if (depth > c->n_layer) {
        dm_failc(DM_E_INPUT, "%s: %d blocks needed, config n_layer is %d", dir, depth, c->n_layer);
        goto fail;
    }
    if (!f->runs_on(m->be)) {
        const dm_model_backend *cpu = backend_for(f->id, m->be, &m->cx, opts->weights);
        dm_info("%s: the %s backend has no %s kernels; running on %s", dir, m->be->name, f->title,
                cpu->name);
        m->be = cpu;
    } else if (opts->weights == DM_WEIGHTS_BF16 && m->be->dev) {
        const dm_model_backend *cpu = backend_for(f->id, m->be, &m->cx, opts->weights);
        dm_info("%s: weights bf16: the %s backend has no bf16 path yet; running on %s", dir,
                m->be->name, cpu->name);
        m->be = cpu;
    }
    m->bf16_hold = bf16_hold(m->be, opts->weights);
    if (opts->weights == DM_WEIGHTS_BF16 && !m->bf16_hold)
        dm_info("%s: weights bf16: %s; the bf16 values are widened to float32 and run on the "
                "float32 path (no memory saved)", dir,
                m->be->bf16 ? "this CPU has no AVX-512 BF16 (or DMICA_NO_AVX512_BF16 is set)"
                            : "the backend has no bf16 kernels");
    m->has_final = depth == DM_MODEL_DEPTH_ALL;
    m->depth = m->has_final ? c->n_layer : depth;
    if (weights_open(dir, &w) < 0 || check_tensors(f, c, &w) < 0)
        goto fail;

    /* One float32 allocation: the model tensors, then each block tensor for
     * all loaded layers; with bf16_hold, the large ones in a second of bf16
     * values (their float * fields stay NULL). */
    size_t total, packed, nbf16;
    const int hold = m->bf16_hold, round = opts->weights == DM_WEIGHTS_BF16 && !hold;
    param_plan(c, m->depth, m->has_final, 0, hold, &total, &packed, &nbf16);
    m->params_floats = total;
    m->params_memory = dm_xmalloc_aligned(sizeof(float) * (total ? total : 1));
    if (nbf16) {
        m->bf16_values = nbf16;
        m->bf16_memory = dm_xmalloc_huge(sizeof(uint16_t) * nbf16);
    }
    float *p = m->params_memory;
    uint16_t *q = m->bf16_memory;
    for (int j = 0; j < f->n_model_tensors; j++) {
        const dm_tensor_spec *s = &f->model_tensors[j];
        if ((s->flags & T_FINAL) && !m->has_final)
            continue;
        if (hold && is_large(s)) { /* the embedding */
            m->embed_bf16 = q;
            if (read_bf16(c, &w, s->name, s, hold, q, &tmp, &tmp_n) < 0)
                goto fail;
            q += bf16_size(c, s, hold);
            continue;
        }
        *(float **)((char *)m->params + s->field) = p;
        if (read_tensor(c, &w, s->name, s, p, &tmp, &tmp_n) < 0)
            goto fail;
        if (round && is_large(s))
            round_bf16(p, spec_numel(c, s));
        p += spec_numel(c, s);
    }
    for (int j = 0, slot = 0; j < f->n_block_tensors; j++) {
        const dm_tensor_spec *s = &f->block_tensors[j];
        int64_t n = spec_numel(c, s);
        if (hold && is_large(s)) { /* T_PACK: slot as pack_weights counts them */
            size_t nl = bf16_size(c, s, hold);
            m->bk[slot] = q;
            m->bk_n[slot++] = nl;
            for (int l = 0; l < m->depth; l++, q += nl) {
                snprintf(name, sizeof name, "%s%d.%s", f->block_prefix, l, s->name);
                if (read_bf16(c, &w, name, s, hold, q, &tmp, &tmp_n) < 0)
                    goto fail;
            }
            continue;
        }
        *(float **)((char *)m->params + s->field) = p;
        for (int l = 0; l < m->depth; l++, p += n) {
            snprintf(name, sizeof name, "%s%d.%s", f->block_prefix, l, s->name);
            if (read_tensor(c, &w, name, s, p, &tmp, &tmp_n) < 0)
                goto fail;
            if (round && is_large(s))
                round_bf16(p, n);
        }
        slot += (s->flags & T_PACK) != 0;
    }
    weights_close(&w);
    free(tmp);
    if (m->be->dev && device_params(m))
        leave_device(m);
    pack_weights(m);
    return m;
fail:
    weights_close(&w);
    free(tmp);
    dm_model_free(m);
    return NULL;
}

void dm_model_free(dm_model *m)
{
    if (!m)
        return;
    if (m->be && m->be->dev && m->fam)
        leave_device(m);
    free(m->params_memory);
    free(m->packed_memory);
    free(m->bf16_memory);
    free(m->acts_memory);
    free(m->stage2);
    free(m->host_logits);
    free(m->cb_logits);
    free(m->cb_loss);
    free(m->table);
    free(m->params);
    free(m->dparams);
    free(m->dir);
    free(m);
}

const dm_model_config *dm_model_cfg(const dm_model *m) { return &m->cfg; }
int dm_model_depth(const dm_model *m) { return m->has_final ? DM_MODEL_DEPTH_ALL : m->depth; }
const dm_model_backend *dm_model_backend_of(const dm_model *m) { return m->be; }

float *dm_model_scratch(float **buf, size_t *cap, size_t n)
{
    if (n > *cap) {
        free(*buf);
        *buf = dm_xmalloc_aligned(sizeof(float) * n);
        *cap = n;
    }
    return *buf;
}

/* The activation buffers for BT rows (and LOGIT_ROWS of logits for the loss
 * without logits): in host memory, or a device backend's, with the host
 * buffers of what crosses; -1 when the device cannot take them. */
static int acts_reserve(dm_model *m, size_t BT, int want_logits)
{
    const dm_model_config *c = &m->cfg;
    const dm_model_device_ops *dev = m->be->dev;
    size_t C = c->n_embd;
    size_t logits = want_logits ? (size_t)LOGIT_ROWS * c->vocab_size : 0;
    if (BT <= m->acts_rows && (!want_logits || m->acts.logits))
        return 0;
    BT = BT > m->acts_rows ? BT : m->acts_rows;
    if (dev) { /* the logits of the loss are made in host memory (run_pass) */
        m->acts.logits = logits ? dm_model_scratch(&m->host_logits, &m->host_logits_n, logits) : m->acts.logits;
        if (BT * C > m->stage_n) {
            dev->host_release(m->stage);
            m->stage_n = (m->stage = dev->host_alloc(sizeof(float) * BT * C)) ? BT * C : 0;
        }
        if (!m->stage)
            return -1;
        logits = 0;
        dev->release(m->acts_memory);
    } else {
        free(m->acts_memory);
    }
    /* the runner's x, ln and branch, the family's, then the loss's logits
     * (GPT-2: x, ln, qkv, atty, branch, fch, logits, as before families) */
    size_t fam[DM_MODEL_FAMILY_ACTS + 1] = {0};
    m->fam->act_sizes(c, BT, fam);
    size_t sizes[DM_MODEL_FAMILY_ACTS + 4];
    float **fields[DM_MODEL_FAMILY_ACTS + 4];
    int n = 0;
    sizes[n] = BT * C, fields[n++] = &m->acts.x;
    sizes[n] = BT * C, fields[n++] = &m->acts.ln;
    sizes[n] = BT * C, fields[n++] = &m->acts.branch;
    for (int i = 0; i < DM_MODEL_FAMILY_ACTS && fam[i]; i++)
        sizes[n] = fam[i], fields[n++] = &m->acts.f[i];
    sizes[n] = logits, fields[n++] = &m->acts.logits;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (sizes[i] + 15) & ~(size_t)15; /* keep each buffer 64-byte aligned */
    m->acts_rows = 0;
    if (!dev)
        m->acts_memory = dm_xmalloc_aligned(sizeof(float) * total);
    else if (!(m->acts_memory = dev->alloc(sizeof(float) * total)))
        return -1;
    float *p = m->acts_memory;
    for (int i = 0; i < n - (dev != NULL); i++) {
        *fields[i] = sizes[i] ? p : NULL;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    m->acts_rows = BT;
    return 0;
}

/* out (rows, C) = src (rows, C), minus each row's mean over C when center; out
 * may be src. */
static void hook_copy(const dm_compute *cx, float *out, const float *src, size_t rows, int C,
                      int center)
{
    if (!center) {
        if (out != src)
            memcpy(out, src, sizeof(float) * rows * C);
        return;
    }
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (size_t r = 0; r < rows; r++) {
        const float *s = src + r * C;
        float *o = out + r * C;
        double sum = 0.0;
        for (int i = 0; i < C; i++)
            sum += s[i];
        float mean = (float)(sum / C);
        for (int i = 0; i < C; i++)
            o[i] = s[i] - mean;
    }
}

int dm_model_wants(const hook_set *hs, dm_model_hook_kind kind, int layer, int only_fn)
{
    for (int i = 0; i < hs->n; i++)
        if (hs->p[i].hook.kind == kind && hs->p[i].hook.layer == layer && (!only_fn || hs->p[i].fn))
            return 1;
    return 0;
}

/* The first point at (kind, -1) with a copy, or NULL. */
static float *first_out(const hook_set *hs, dm_model_hook_kind kind)
{
    for (int i = 0; i < hs->n; i++)
        if (hs->p[i].hook.kind == kind && hs->p[i].out)
            return hs->p[i].out;
    return NULL;
}

/* Runs the points at (kind, layer) in their order on x ((B*T, width), the
 * activation itself): each point's callback, then its copy (centred when the
 * pass centres and the hook is residual; none when out is x itself). With
 * on_device, x is in the device backend's memory: the points see its copy in
 * m->stage, copied back after a callback (which may edit it). */
int dm_model_run_points(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int layer,
                        float *x, int width, int on_device)
{
    const dm_model_device_ops *dev = on_device ? m->be->dev : NULL;
    const size_t rows = (size_t)hs->B * hs->T, bytes = sizeof(float) * rows * width;
    float *h = x;
    int edited = 0;
    char name[64];
    if (dev && !dm_model_wants(hs, kind, layer, 1)) {
        /* copies only: each made on the device (kept for the point's consumers,
         * dm_model_device_copy), then sent to its out */
        for (int i = 0; i < hs->n; i++) {
            const dm_model_hook_point *pt = &hs->p[i];
            if (pt->hook.kind != kind || pt->hook.layer != layer || !pt->out)
                continue;
            if (m->dcopy_n[i] < rows * width) {
                dev->release(m->dcopy[i]);
                m->dcopy_n[i] = (m->dcopy[i] = dev->alloc(bytes)) ? rows * width : 0;
            }
            if (!m->dcopy[i] ||
                dev->copy_rows(m->dcopy[i], x, rows, width, hs->center && dm_model_hook_is_residual(pt->hook)) ||
                dev->download(pt->out, m->dcopy[i], bytes))
                return DEVICE_FAILED;
            m->dcopy_ok[i] = 1;
        }
        return 0;
    }
    for (int i = 0; i < hs->n; i++) {
        const dm_model_hook_point *pt = &hs->p[i];
        if (pt->hook.kind != kind || pt->hook.layer != layer)
            continue;
        if (dev && h == x) {
            h = m->stage;
            if (dev->download(h, x, bytes))
                return DEVICE_FAILED;
        }
        if (pt->fn) {
            dm_error_clear();
            edited = 1;
            if (pt->fn(pt->user, pt->hook, h, hs->B, hs->T, width)) {
                dm_model_hook_name(pt->hook, name, sizeof name);
                if (dm_error_code() == DM_OK)
                    return dm_failc(DM_E_INTERNAL, "%s: the callback at hook %s failed without a "
                                    "message", m->dir, name);
                return dm_fail_prefix("%s: hook %s", m->dir, name);
            }
        }
        if (pt->out && pt->out != x)
            hook_copy(&m->cx, pt->out, h, (size_t)hs->B * hs->T, width,
                      hs->center && dm_model_hook_is_residual(pt->hook));
    }
    return dev && edited && dev->upload(x, h, bytes) ? DEVICE_FAILED : 0;
}

/* The embedding hooks' copies made straight from each row's parts (no
 * callbacks at them: the embeddings need not be formed apart). */
static void copy_embed(const dm_model *m, const int32_t *tokens, const hook_set *hs)
{
    int C = m->cfg.n_embd, T = hs->T;
    for (int i = 0; i < hs->n; i++) {
        const dm_model_hook_point *pt = &hs->p[i];
        if ((pt->hook.kind != DM_HOOK_EMBED && pt->hook.kind != DM_HOOK_POS_EMBED) || !pt->out)
            continue;
        for (int bt = 0; bt < hs->B * T; bt++) {
            float *row = pt->out + (size_t)bt * C;
            m->fam->embed_part(m, pt->hook.kind, row, tokens[bt], bt % T);
            hook_copy(&m->cx, row, row, 1, C, hs->center);
        }
    }
}

/* The residual stream's start: x (BT, C) = the sum of the family's embedding
 * parts, with the embedding hooks' points. */
static int embed_forward(dm_model *m, const int32_t *tokens, const hook_set *hs)
{
    const dm_model_device_ops *dev = m->be->dev;
    dm_model_acts *a = &m->acts;
    size_t C = m->cfg.n_embd, BT = (size_t)hs->B * hs->T, T = hs->T;
    int pos = m->fam->pos_embed;
    if (!dm_model_wants(hs, DM_HOOK_EMBED, -1, 1) && !dm_model_wants(hs, DM_HOOK_POS_EMBED, -1, 1)) {
        copy_embed(m, tokens, hs);
        return m->fam->embed(m, a->x, tokens, hs->B, hs->T);
    }
    /* a callback sees (and may edit) each embedding whole: form them apart in
     * two buffers free until the first block (host buffers on a device) */
    float *we = dev ? m->stage : a->branch;
    float *pe = !pos ? NULL : dev ? dm_model_scratch(&m->stage2, &m->stage2_n, BT * C) : a->ln;
    for (size_t bt = 0; bt < BT; bt++) {
        m->fam->embed_part(m, DM_HOOK_EMBED, we + bt * C, tokens[bt], (int)(bt % T));
        if (pe)
            m->fam->embed_part(m, DM_HOOK_POS_EMBED, pe + bt * C, tokens[bt], (int)(bt % T));
    }
    int rc;
    if ((rc = dm_model_run_points(m, hs, DM_HOOK_EMBED, -1, we, (int)C, 0)) ||
        (pe && (rc = dm_model_run_points(m, hs, DM_HOOK_POS_EMBED, -1, pe, (int)C, 0))))
        return rc;
    float *x = dev ? we : a->x;
    if (pe)
        for (size_t i = 0; i < BT * C; i++)
            x[i] = we[i] + pe[i];
    else if (x != we)
        memcpy(x, we, sizeof(float) * BT * C);
    return dev && dev->upload(a->x, x, sizeof(float) * BT * C) ? DEVICE_FAILED : 0;
}

/* log sum_v exp(l[v]) of one row of logits (V). */
DM_SIMD_CLONES
static double logsumexp_row(const float *l, int V)
{
    float maxv = l[0];
#pragma omp simd reduction(max : maxv)
    for (int v = 1; v < V; v++)
        maxv = l[v] > maxv ? l[v] : maxv;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; v++)
        sum += dm_expf(l[v] - maxv);
    return maxv + log(sum);
}

/* Per token next-token cross-entropy of rows [bt0, bt0+rows) from their logits
 * (rows, V): logsumexp(logits) - logits[next token]; NaN at the last position of
 * each window, which has no next token. */
static void loss_forward(const dm_compute *cx, float *loss, const float *logits,
                         const int32_t *tokens, int bt0, int rows, int T, int V)
{
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int r = 0; r < rows; r++) {
        int bt = bt0 + r;
        const float *l = logits + (size_t)r * V;
        loss[bt] = bt % T == T - 1 ? NAN : (float)(logsumexp_row(l, V) - l[tokens[bt + 1]]);
    }
}

int dm_model_add_branch(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int l)
{
    const dm_model_backend *be = m->be;
    size_t BT = (size_t)hs->B * hs->T;
    int C = m->cfg.n_embd;
    int rc = dm_model_run_points(m, hs, kind, l, m->acts.branch, C, be->dev != NULL);
    if (rc)
        return rc;
    be->residual(&m->cx, m->acts.x, m->acts.branch, BT * C);
    return 0;
}

int dm_model_linear_residual(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int l,
                             const float *inp, const dm_model_weight *W, const float *b, int BT,
                             int C, int OC)
{
    const dm_model_backend *be = m->be;
    if (be->linear_residual && !dm_model_wants(hs, kind, l, 0)) {
        be->linear_residual(&m->cx, m->acts.x, inp, W, b, BT, C, OC);
        return 0;
    }
    be->linear(&m->cx, m->acts.branch, inp, W, b, BT, C, OC, 0);
    return dm_model_add_branch(m, hs, kind, l);
}

/* Checks the points against the model; *stop gets the deepest one's half block. */
static int check_points(const dm_model *m, const dm_model_hook_point *points, int n, int *stop)
{
    const dm_model_config *c = &m->cfg;
    char name[64];
    *stop = 0;
    for (int i = 0; i < n; i++) {
        dm_model_hook h = points[i].hook;
        if (dm_model_hook_width(c, h) < 0)
            return dm_fail_prefix("%s", m->dir);
        dm_model_hook_name(h, name, sizeof name);
        int d = dm_model_hook_depth(h);
        if ((d == DM_MODEL_DEPTH_ALL && !m->has_final) || d > m->depth)
            return dm_failc(DM_E_INPUT, "%s: hook %s needs %s; the model was loaded with %d blocks",
                            m->dir, name,
                            d == DM_MODEL_DEPTH_ALL ? "every block and ln_f" : "more blocks",
                            m->depth);
        if (points[i].mode != DM_MODEL_OBSERVE && points[i].mode != DM_MODEL_EDIT)
            return dm_failc(DM_E_INTERNAL, "%s: hook %s: mode %d is neither observe nor edit",
                            m->dir, name, (int)points[i].mode);
        if (points[i].mode == DM_MODEL_EDIT && !points[i].fn)
            return dm_failc(DM_E_INTERNAL, "%s: hook %s: an edit without a callback", m->dir,
                            name);
        if (points[i].mode == DM_MODEL_EDIT && !dm_model_hook_is_editable(h))
            return dm_failc(DM_E_INPUT, "%s: hook %s cannot be edited: nothing in the model "
                            "reads it (edit ln_final.hook_normalized or a residual hook)",
                            m->dir, name);
        int s = hook_stop(h);
        *stop = s > *stop ? s : *stop;
    }
    return 0;
}

/* out (rows, V) = inp (rows, C) @ the embedding^T: the tied unembedding (the
 * family's first parameter, p's on a device, or its bf16 copy). */
static void unembed(dm_model *m, const void *p, float *out, const float *inp, int rows)
{
    const int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    if (m->embed_bf16)
        m->be->unembed_bf16(&m->cx, out, inp, m->embed_bf16, rows, C, V);
    else
        m->be->unembed(&m->cx, out, inp, *(float *const *)p, rows, C, V);
}

/* One pass of dm_model_run on m's backend: 0, -1 (an error, said), or
 * DEVICE_FAILED. On a device backend the blocks read the parameters' copy
 * there; what a hook sees crosses through dm_model_run_points. */
static int run_pass(dm_model *m, const int32_t *tokens, int B, int T, const dm_model_hook_point *points,
                    int npoints, int center, int stop, int from, const float *x0)
{
    const dm_model_config *c = &m->cfg;
    const dm_model_family *f = m->fam;
    const dm_model_backend *be = m->be;
    const dm_model_device_ops *dev = be->dev;
    const void *p = dev ? m->dparams : m->params;
    const dm_compute *cx = &m->cx;
    const int C = c->n_embd, V = c->vocab_size, D = dev != NULL;
    hook_set hs = {points, npoints, B, T, center};
    int want_logits = dm_model_wants(&hs, DM_HOOK_LOGITS, -1, 0), want_loss = dm_model_wants(&hs, DM_HOOK_LOSS, -1, 0), rc;
    size_t BT = (size_t)B * T;
    if (acts_reserve(m, BT, want_loss && !want_logits))
        return DEVICE_FAILED;
    dm_model_acts *a = &m->acts;
    if (dev && npoints > m->ndcopy) {
        m->dcopy = dm_xrealloc(m->dcopy, sizeof *m->dcopy * (size_t)npoints);
        m->dcopy_n = dm_xrealloc(m->dcopy_n, sizeof *m->dcopy_n * (size_t)npoints);
        m->dcopy_ok = dm_xrealloc(m->dcopy_ok, (size_t)npoints);
        for (int i = m->ndcopy; i < npoints; i++)
            m->dcopy[i] = NULL, m->dcopy_n[i] = 0;
        m->ndcopy = npoints;
    }
    if (dev)
        memset(m->dcopy_ok, 0, (size_t)m->ndcopy);
    if (f->begin && (rc = f->begin(m, B, T)))
        return rc;

    if (x0 && dev ? dev->upload(a->x, x0, sizeof(float) * BT * C) : 0)
        return DEVICE_FAILED;
    if (x0 && !dev)
        memcpy(a->x, x0, sizeof(float) * BT * C);
    if (!x0 && (rc = embed_forward(m, tokens, &hs)))
        return rc;
    for (int l = x0 ? from : 0; l < c->n_layer && 2 * l <= stop; l++) {
        if ((rc = dm_model_run_points(m, &hs, DM_HOOK_RESID_PRE, l, a->x, C, D)))
            return rc;
        if (stop == 2 * l)
            break;
        if ((rc = f->attn_half(m, p, &hs, l)) ||
            (rc = dm_model_run_points(m, &hs, DM_HOOK_RESID_MID, l, a->x, C, D)))
            return rc;
        if (stop == 2 * l + 1)
            break;
        if ((rc = f->mlp_half(m, p, &hs, l)) ||
            (rc = dm_model_run_points(m, &hs, DM_HOOK_RESID_POST, l, a->x, C, D)))
            return rc;
        if (dev && dev->status())
            return DEVICE_FAILED;
    }
    if (stop != INT_MAX)
        return dev && dev->status() ? DEVICE_FAILED : 0;

    /* ln_final.hook_normalized is the final norm without its weights (fold_ln) */
    f->final_normalize(m, a->ln, a->x, (int)BT);
    if ((rc = dm_model_run_points(m, &hs, DM_HOOK_LN_FINAL, -1, a->ln, C, D)))
        return rc;
    if (!want_logits && !want_loss)
        return dev && dev->status() ? DEVICE_FAILED : 0;
    /* the final norm's weights, in host memory (on a device: a copy, sent back) */
    float *ln = dev ? m->stage : a->ln;
    if (dev && dev->download(ln, a->ln, sizeof(float) * BT * C))
        return DEVICE_FAILED;
    f->final_weights(m, ln, BT);
    if (dev && dev->upload(a->ln, ln, sizeof(float) * BT * C))
        return DEVICE_FAILED;
    /* logits and loss go straight into the first copy asked for, else into
     * the model's own buffers for the callbacks (host memory on a device too:
     * unembed copies its result out) */
    float *loss = NULL;
    if (want_loss && !(loss = first_out(&hs, DM_HOOK_LOSS)))
        loss = dm_model_scratch(&m->cb_loss, &m->cb_loss_n, BT);
    if (want_logits) {
        float *logits = first_out(&hs, DM_HOOK_LOGITS);
        if (!logits)
            logits = dm_model_scratch(&m->cb_logits, &m->cb_logits_n, BT * V);
        unembed(m, p, logits, a->ln, (int)BT);
        if (dev && dev->status())
            return DEVICE_FAILED;
        if (f->logits_post)
            f->logits_post(m, logits, BT);
        if (loss)
            loss_forward(cx, loss, logits, tokens, 0, (int)BT, T, V);
        if ((rc = dm_model_run_points(m, &hs, DM_HOOK_LOGITS, -1, logits, V, 0)))
            return rc;
    } else {
        for (size_t bt0 = 0; bt0 < BT; bt0 += LOGIT_ROWS) {
            int rows = (int)(BT - bt0 < LOGIT_ROWS ? BT - bt0 : LOGIT_ROWS);
            unembed(m, p, a->logits, a->ln + bt0 * C, rows);
            if (dev && dev->status())
                return DEVICE_FAILED;
            if (f->logits_post)
                f->logits_post(m, a->logits, (size_t)rows);
            loss_forward(cx, loss, a->logits, tokens, (int)bt0, rows, T, V);
        }
    }
    return loss ? dm_model_run_points(m, &hs, DM_HOOK_LOSS, -1, loss, 1, 0) : 0;
}

/* dm_model_run (x0 NULL) or dm_model_run_from (x0 at blocks.<from>.hook_resid_pre). */
static int run_model(dm_model *m, int from, const float *x0, const int32_t *tokens, int B, int T,
                     const dm_model_hook_point *points, int npoints, int center)
{
    const dm_model_config *c = &m->cfg;
    int V = c->vocab_size, stop;
    char name[64];
    if (x0 && (from < 0 || from >= m->depth))
        return dm_failc(DM_E_INPUT, "%s: a run from blocks.%d.hook_resid_pre: the model has %d blocks loaded",
                        m->dir, from, m->depth);
    for (int i = 0; x0 && i < npoints; i++) {
        dm_model_hook h = points[i].hook;
        if (h.kind == DM_HOOK_EMBED || h.kind == DM_HOOK_POS_EMBED || (h.layer >= 0 && h.layer < from))
            return dm_failc(DM_E_INPUT, "%s: hook %s is before blocks.%d.hook_resid_pre, where the run starts",
                            m->dir, dm_model_hook_name(h, name, sizeof name), from);
    }
    if (B <= 0 || T <= 0)
        return dm_failc(DM_E_INPUT, "%s: empty batch (%d windows of %d tokens)", m->dir, B, T);
    if (T > c->n_positions)
        return dm_failc(DM_E_INPUT, "%s: windows of %d tokens are longer than n_positions %d",
                        m->dir, T, c->n_positions);
    if (center && !m->fam->layernorm)
        return dm_failc(DM_E_INPUT, "%s: centring the residual hooks (center_writing_weights) "
                        "applies to LayerNorm models; %s's RMSNorm depends on the mean, so "
                        "TransformerLens does not centre it and its SAEs read raw activations: "
                        "set center false", m->dir, m->fam->title);
    if (check_points(m, points, npoints, &stop) < 0)
        return -1;
    for (int bt = 0; bt < B * T; bt++)
        if (tokens[bt] < 0 || tokens[bt] >= V)
            return dm_failc(DM_E_INPUT,
                            "token id %d at window %d, position %d is not below vocab_size %d",
                            tokens[bt], bt / T, bt % T, V);
    int rc = run_pass(m, tokens, B, T, points, npoints, center, stop, from, x0);
    if (rc != DEVICE_FAILED)
        return rc;
    /* The device failed (it said so): the model goes on on the CPU, and this
     * pass runs again there (its callbacks run again too). */
    leave_device(m);
    return run_pass(m, tokens, B, T, points, npoints, center, stop, from, x0);
}

int dm_model_run(dm_model *m, const int32_t *tokens, int B, int T, const dm_model_hook_point *points,
                 int npoints, int center)
{
    return run_model(m, 0, NULL, tokens, B, T, points, npoints, center);
}

int dm_model_run_from(dm_model *m, int layer, const float *x, const int32_t *tokens, int B, int T,
                      const dm_model_hook_point *points, int npoints, int center)
{
    return run_model(m, layer, x, tokens, B, T, points, npoints, center);
}

const float *dm_model_device_copy(const dm_model *m, int i)
{
    return m->be->dev && i >= 0 && i < m->ndcopy && m->dcopy_ok[i] ? m->dcopy[i] : NULL;
}

int dm_model_forward(dm_model *m, const int32_t *tokens, int B, int T, const dm_model_hook *hooks,
                     int nhooks, float **outs, int center)
{
    dm_model_hook_point stack[64] = {0};
    dm_model_hook_point *pts = nhooks <= 64 ? stack : dm_xmalloc(sizeof *pts * (size_t)nhooks);
    for (int i = 0; i < nhooks; i++)
        pts[i] = (dm_model_hook_point){.hook = hooks[i], .out = outs[i]};
    int rc = dm_model_run(m, tokens, B, T, pts, nhooks, center);
    if (pts != stack)
        free(pts);
    return rc;
}
