/*
 * op_gpt2.c: the `gpt2` and `model` operators: windows of token ids in,
 * TransformerLens hook activations out, one output stream per requested hook,
 * from any family the model runner knows (operators/kernels/model.h): GPT-2 or
 * Gemma 2, as the folder's config.json (model_type) says. `gpt2` is the name
 * pipelines have used since GPT-2 was the only family, kept with its
 * parameters (and so its cache keys); `model` is the same operator with a
 * `weights` parameter: f32 (every parameter float32), or bf16 (the linear
 * layers' weights and the embedding kept as bf16 values, the products in
 * dm_bgemm with float32 sums where the CPU has AVX-512 BF16: half the memory;
 * elsewhere widened to float32, model.h's dm_model_weights).
 *
 * Input `tokens`: rows of T int32 token ids (the `text` source's windows, or
 * any i32 stream), one window per row. Each hook in
 * `hooks` becomes an output port of that name (blocks.6.hook_resid_pre, ...;
 * a pipeline reads it as node.blocks.6.hook_resid_pre) with one row per token:
 * window w, position t is row w*T + t, w the window's global row index, so
 * token rows line up with the windows they came from. Widths: d_model, vocab
 * for logits, 1 for loss (operators/kernels/model.h lists the hooks).
 *
 * One forward pass per `batch` windows computes every hook, stopping after the
 * deepest (only the blocks it needs are loaded). Output chunks are cut at the
 * engine's chunk size, the same rows on every port in turn, so a consumer of
 * two hooks sees matching chunks. Residual hooks of a LayerNorm model (GPT-2)
 * are centred per token by default (TransformerLens's center_writing_weights),
 * or as the SAE on input `sae` was trained (its cfg.json's
 * center_writing_weights); an RMSNorm model (Gemma 2) is never centred, as
 * TransformerLens does not centre it: center auto is off there, and true (or
 * an SAE that says it was trained centred) is refused.
 *
 * Memory (state_bytes): the weights of the loaded blocks and the embeddings as
 * the runner holds them (dm_model_param_bytes: float32 and their packed
 * copies on cpu-avx512, or bf16), the runner's activation
 * buffers for batch*T rows, and one output buffer per hook for batch*T rows.
 * Logits are vocab wide: keep `batch` small.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "op.h"
#include "sae_desc.h"

#define MAX_HOOKS 64
#define ATT_ROWS 64 /* query rows of attention scores per thread (model_impl.h) */

static const dm_param_spec gpt2_params[] = {
    {"model", DM_P_PATH, NULL, "Hugging Face model folder, GPT-2 or Gemma 2 (config.json's model_type; model.safetensors, "
                               "or shards and model.safetensors.index.json)"},
    {"hooks", DM_P_STRING, NULL, "comma-separated hook names, e.g. blocks.6.hook_resid_pre; each is an output"},
    {"center", DM_P_STRING, "auto", "subtract each token's mean over d_model from residual hooks (TransformerLens): "
                                    "true, false, or auto (as the SAE on input sae was trained; true without one; "
                                    "never for RMSNorm models such as Gemma 2)"},
    {"batch", DM_P_INT, "32", "windows per forward pass"},
    {NULL},
};
/* `model`: the same, and how the weights are held */
static const dm_param_spec model_params[] = {
    {"model", DM_P_PATH, NULL, "Hugging Face model folder, GPT-2 or Gemma 2 (config.json's model_type; model.safetensors, "
                               "or shards and model.safetensors.index.json)"},
    {"hooks", DM_P_STRING, NULL, "comma-separated hook names, e.g. blocks.6.hook_resid_pre; each is an output"},
    {"center", DM_P_STRING, "auto", "subtract each token's mean over d_model from residual hooks (TransformerLens): "
                                    "true, false, or auto (as the SAE on input sae was trained; true without one; "
                                    "never for RMSNorm models such as Gemma 2)"},
    {"batch", DM_P_INT, "32", "windows per forward pass"},
    {"weights", DM_P_STRING, "f32", "weights in memory: f32 (bf16 files converted at load), or bf16 (linear layers and the "
                                    "embedding kept bf16, FP32 sums: half the memory where the CPU has AVX-512 BF16)"},
    {NULL},
};
/* sae: the SAE whose center_writing_weights is the default centring (sae_config, planted_sae) */
enum { IN_TOKENS, IN_SAE };
static const dm_port_spec gpt2_inputs[] = {{"tokens", DM_PORT_STREAM, .dtype = DM_I32}, {"sae", DM_PORT_TENSOR, .optional = 1}, {NULL}};

typedef struct {
    dm_model *model;
    dm_model_config cfg;
    dm_model_hook hooks[MAX_HOOKS];
    int nhooks, T, batch, center;
    int64_t width[MAX_HOOKS];
    float *outs[MAX_HOOKS]; /* batch*T x width[i] each */
    int32_t *ids;           /* batch x T */
} gpt2_state;

/* 1 the first time node n opens in this process: a node opened once per shard,
 * and again where a later pass recomputes it, says its settings once. */
static int say_once(const dm_node *n)
{
    static const dm_node *said[64];
    static int nsaid;
    for (int i = 0; i < nsaid; i++)
        if (said[i] == n)
            return 0;
    if (nsaid < 64)
        said[nsaid++] = n;
    return 1;
}

/* center = auto | true | false against the center_writing_weights of the SAE on
 * input sae (SAEs trained on TransformerLens residuals need them centred). An
 * explicit value that contradicts the SAE's config wins, with a warning when
 * `say`. A model that cannot be centred (RMSNorm, dm_model_can_center) is not
 * centred by auto, and refuses centring asked for or implied by its SAE. */
static int resolve_center(const dm_node *n, const dm_model_config *cfg, int *center, int say)
{
    const char *v = dm_param_str(n, "center");
    const dm_sae_desc *d;
    if (dm_sae_desc_input(n, IN_SAE, &d))
        return -1;
    int from_sae = d ? d->center_writing_weights : -1;
    if (!dm_model_can_center(cfg)) {
        const char *fam = dm_model_family_title(cfg->family);
        if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
            return dm_failc(DM_E_INPUT, "center true: %s normalises by RMS, which depends on the mean, so its "
                            "residual hooks are not centred (TransformerLens does not either): set center false "
                            "or auto", fam);
        if (strcmp(v, "auto") && strcmp(v, "false") && strcmp(v, "no") && strcmp(v, "0"))
            return dm_failc(DM_E_INPUT, "center must be auto, true or false, not '%s'", v);
        if (!strcmp(v, "auto") && from_sae > 0)
            return dm_failc(DM_E_INPUT, "the SAE on input 'sae' was trained on centred residuals "
                            "(center_writing_weights true), which %s's are not: an SAE for another model?", fam);
        *center = 0;
        if (say && !strcmp(v, "auto"))
            dm_info("node '%s': residual centring off (%s normalises by RMS)", dm_node_name(n), fam);
        return 0;
    }
    if (!strcmp(v, "auto")) {
        *center = from_sae != 0; /* TransformerLens centres unless told not to */
        if (say)
            dm_info("node '%s': residual centring %s (%s)", dm_node_name(n), *center ? "on" : "off",
                    from_sae >= 0 ? "from the SAE's cfg.json center_writing_weights" : "TransformerLens's default");
    } else if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1")) {
        *center = 1;
    } else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0")) {
        *center = 0;
    } else {
        return dm_failc(DM_E_INPUT, "center must be auto, true or false, not '%s'", v);
    }
    if (say && strcmp(v, "auto") && from_sae >= 0 && from_sae != *center)
        dm_warn("node '%s': center: %s overrides the SAE's cfg.json (center_writing_weights: %s)", dm_node_name(n),
                *center ? "true" : "false", from_sae ? "true" : "false");
    return 0;
}

/* Parses the hooks parameter into hooks[] (canonical, no repeats). The hooks
 * are the node's output ports, which other nodes name: so they are written in
 * the pipeline, not taken from an SAE's config. */
static int parse_hooks(const dm_node *n, dm_model_hook *hooks, int *nhooks)
{
    char *list = dm_xstrdup(dm_param_str(n, "hooks")), *save = NULL, name[64], other[64];
    int k = 0, rc = 0;
    for (char *h = strtok_r(list, ",", &save); h && !rc; h = strtok_r(NULL, ",", &save)) {
        while (*h == ' ' || *h == '\t')
            h++;
        for (char *e = h + strlen(h); e > h && (e[-1] == ' ' || e[-1] == '\t');)
            *--e = 0;
        if (!*h)
            continue;
        if (k == MAX_HOOKS) {
            rc = dm_fail("hooks: more than %d hooks", MAX_HOOKS);
            break;
        }
        if (dm_model_hook_parse(h, &hooks[k])) {
            rc = dm_fail_prefix("hooks");
            break;
        }
        dm_model_hook_name(hooks[k], name, sizeof name);
        for (int i = 0; i < k && !rc; i++)
            if (!strcmp(dm_model_hook_name(hooks[i], other, sizeof other), name))
                rc = dm_fail("hooks: %s is listed twice", name);
        k++;
    }
    free(list);
    if (!rc && !k)
        rc = dm_fail("hooks: no hook named (e.g. hooks: blocks.6.hook_resid_pre)");
    *nhooks = k;
    return rc;
}

static int gpt2_ports(dm_node *n, dm_port_spec **outs)
{
    dm_model_hook hooks[MAX_HOOKS];
    int k;
    char name[64];
    if (parse_hooks(n, hooks, &k))
        return -1;
    dm_port_spec *p = dm_xcalloc((size_t)k + 1, sizeof *p);
    for (int i = 0; i < k; i++) {
        p[i].name = dm_xstrdup(dm_model_hook_name(hooks[i], name, sizeof name));
        p[i].kind = DM_PORT_STREAM;
    }
    *outs = p;
    return 0;
}

static int gpt2_infer(dm_node *n)
{
    dm_model_hook hooks[MAX_HOOKS];
    dm_model_config cfg;
    int k;
    const char *model = dm_param_str(n, "model");
    const dm_port_desc *in = dm_input_desc(n, 0);
    int64_t T = in->shape[1];
    int center;
    if (parse_hooks(n, hooks, &k) || dm_model_read_config(model, &cfg) || resolve_center(n, &cfg, &center, 0))
        return -1;
    if (dm_param_int(n, "batch") < 1 || dm_param_int(n, "batch") > 1 << 20)
        return dm_fail("batch must be between 1 and %d windows, not %lld", 1 << 20,
                       (long long)dm_param_int(n, "batch"));
    if (T < 1 || T > cfg.n_positions)
        return dm_fail("input 'tokens' has windows of %lld tokens, but model %s takes at most n_positions %d",
                       (long long)T, model, cfg.n_positions);
    for (int i = 0; i < k; i++) {
        int64_t w = dm_model_hook_width(&cfg, hooks[i]);
        if (w < 0)
            return dm_fail_prefix("model %s", model);
        dm_port_desc *o = dm_output_desc(n, i);
        o->shape[0] = in->shape[0] >= 0 ? in->shape[0] * T : -1;
        o->shape[1] = w;
    }
    return 0;
}

/* The `weights` parameter of the model operator. */
static int parse_weights(const dm_node *n, dm_model_weights *w)
{
    const char *v = dm_param_str(n, "weights");
    if (!strcmp(v, "f32"))
        *w = DM_WEIGHTS_F32;
    else if (!strcmp(v, "bf16"))
        *w = DM_WEIGHTS_BF16;
    else
        return dm_failc(DM_E_INPUT, "weights must be f32 or bf16, not '%s'", v);
    return 0;
}

static int64_t state_bytes(const dm_node *n, dm_model_weights w)
{
    dm_model_hook hooks[MAX_HOOKS];
    dm_model_config c;
    int k;
    if (parse_hooks(n, hooks, &k) || dm_model_read_config(dm_param_str(n, "model"), &c))
        return 0; /* infer has reported it */
    int64_t T = dm_input_desc(n, 0)->shape[1];
    int64_t BT = dm_param_int(n, "batch") * T, loss = 0, logits = 0;
    int64_t weights = (int64_t)dm_model_param_bytes(&c, dm_model_hooks_depth(hooks, k), dm_node_compute(n), w);
    int64_t outs = 0;
    for (int i = 0; i < k; i++) {
        outs += BT * dm_model_hook_width(&c, hooks[i]);
        loss |= hooks[i].kind == DM_HOOK_LOSS;
        logits |= hooks[i].kind == DM_HOOK_LOGITS;
    }
    int64_t acts = (int64_t)dm_model_act_floats(&c, (size_t)BT, loss && !logits) + ATT_ROWS * T * dm_threads();
    return weights + 4 * (acts + outs + BT);
}

static int64_t gpt2_state_bytes(const dm_node *n)
{
    return state_bytes(n, DM_WEIGHTS_F32);
}

static int64_t model_state_bytes(const dm_node *n)
{
    dm_model_weights w;
    return state_bytes(n, parse_weights(n, &w) ? DM_WEIGHTS_F32 : w);
}

static void gpt2_close(dm_node *n)
{
    gpt2_state *s = dm_node_state(n);
    if (!s)
        return;
    dm_model_free(s->model);
    for (int i = 0; i < s->nhooks; i++)
        free(s->outs[i]);
    free(s->ids);
    free(s);
    dm_node_set_state(n, NULL);
}

/* Opens the node; opts: the model operator's (NULL for gpt2: the defaults). */
static int open_any(dm_node *n, const dm_model_opts *opts)
{
    gpt2_state *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    if (parse_hooks(n, s->hooks, &s->nhooks))
        return -1;
    if (!(s->model = dm_model_load_opts(dm_param_str(n, "model"), dm_model_hooks_depth(s->hooks, s->nhooks),
                                        dm_node_compute(n), opts)))
        return -1;
    s->cfg = *dm_model_cfg(s->model);
    s->T = (int)dm_input_desc(n, 0)->shape[1];
    s->batch = (int)dm_param_int(n, "batch");
    if (resolve_center(n, &s->cfg, &s->center, say_once(n)))
        return -1;
    size_t BT = (size_t)s->batch * (size_t)s->T;
    for (int i = 0; i < s->nhooks; i++) {
        s->width[i] = dm_model_hook_width(&s->cfg, s->hooks[i]);
        s->outs[i] = dm_xmalloc_aligned(BT * (size_t)s->width[i] * sizeof(float));
    }
    s->ids = dm_xmalloc(BT * sizeof *s->ids);
    return 0;
}

/* Windows [w0, w0+B) of chunk c as int32 ids, each checked. */
static int windows_to_ids(gpt2_state *s, const dm_node *n, const dm_chunk *c, int64_t w0, int B)
{
    for (int b = 0; b < B; b++) {
        const int32_t *row = c->i32 + (w0 + b) * c->cols;
        for (int t = 0; t < s->T; t++) {
            int32_t v = row[t];
            if (v < 0 || v >= s->cfg.vocab_size)
                return dm_fail("token id %d at window %lld, position %d of input 'tokens' is not below vocab_size %d "
                               "of model %s", (int)v, (long long)(c->row0 + w0 + b), t, s->cfg.vocab_size,
                               dm_param_str(n, "model"));
            s->ids[(size_t)b * s->T + t] = v;
        }
    }
    return 0;
}

static int gpt2_consume(dm_node *n, int port, const dm_chunk *c)
{
    gpt2_state *s = dm_node_state(n);
    int64_t cr = dm_chunk_rows(n) > 0 ? dm_chunk_rows(n) : 4096;
    if (c->cols != s->T)
        return dm_fail("input 'tokens': chunk of %lld columns, expected windows of %d", (long long)c->cols, s->T);
    for (int64_t w0 = 0; w0 < c->rows; w0 += s->batch) {
        int B = (int)(c->rows - w0 < s->batch ? c->rows - w0 : s->batch);
        if (windows_to_ids(s, n, c, w0, B))
            return -1;
        if (dm_model_forward(s->model, s->ids, B, s->T, s->hooks, s->nhooks, s->outs, s->center))
            return -1;
        int64_t BT = (int64_t)B * s->T, row0 = (c->row0 + w0) * s->T;
        for (int64_t off = 0; off < BT; off += cr) {
            int64_t rows = BT - off < cr ? BT - off : cr;
            for (int i = 0; i < s->nhooks; i++) {
                const float *dev = dm_model_device_copy(s->model, i); /* on a GPU: the rows there too */
                dm_chunk o = {.row0 = row0 + off, .rows = rows, .cols = s->width[i],
                              .data = s->outs[i] + off * s->width[i], .dev = dev ? dev + off * s->width[i] : NULL};
                if (dm_emit(n, i, &o))
                    return -1;
            }
        }
    }
    return 0;
}

static int gpt2_open(dm_node *n)
{
    return open_any(n, NULL);
}

static int model_infer(dm_node *n)
{
    dm_model_weights w;
    return parse_weights(n, &w) ? -1 : gpt2_infer(n);
}

static int model_open(dm_node *n)
{
    dm_model_opts o = {0};
    return parse_weights(n, &o.weights) ? -1 : open_any(n, &o);
}

const dm_op dm_op_gpt2 = {
    .name = "gpt2",
    .version = 1,
    .summary = "model (GPT-2, Gemma 2) forward pass to the deepest requested hook; one output stream per hook, one "
               "row per token (the model operator's first name)",
    .params = gpt2_params,
    .inputs = gpt2_inputs,
    .ports = gpt2_ports,
    .infer = gpt2_infer,
    .state_bytes = gpt2_state_bytes,
    .open = gpt2_open,
    .consume = gpt2_consume,
    .close = gpt2_close,
    .shardable = 1, /* a map: each window's rows depend on that window only */
};

const dm_op dm_op_model = {
    .name = "model",
    .version = 1,
    .summary = "model (GPT-2, Gemma 2) forward pass to the deepest requested hook; one output stream per hook, one "
               "row per token; weights: f32 or bf16",
    .params = model_params,
    .inputs = gpt2_inputs,
    .ports = gpt2_ports,
    .infer = model_infer,
    .state_bytes = model_state_bytes,
    .open = model_open,
    .consume = gpt2_consume,
    .close = gpt2_close,
    .shardable = 1,
};
