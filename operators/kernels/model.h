/*
 * model.h: the model runner for decoder-only transformers: a Hugging Face model
 * folder in, TransformerLens hook activations out, and hooks that can edit the
 * residual stream on the way. One runner serves every family; a family (GPT-2,
 * Gemma 2: config.json's model_type) supplies only its pieces: the config's
 * keys, its tensors, the embedding, the two halves of a block, the final norm
 * and the unembedding (docs/models.md).
 *
 * Load a model with dm_model_load (config.json, then model.safetensors or
 * shards listed by model.safetensors.index.json; F32/F16/BF16 weights
 * converted to float32 at load, or the large matrices kept bf16 with
 * DM_WEIGHTS_BF16; every tensor name and shape checked against the config;
 * the compute context picks the kernels), then call
 * dm_model_forward on batches of B windows of T token ids: one pass computes
 * any set of hooks, each into its own caller buffer of [B*T, width] floats,
 * row b*T+t, and stops after the deepest one. dm_model_run is the general
 * form: at each hook point a callback may observe the activation or edit it in
 * place before the rest of the model runs on it (TransformerLens's hook
 * points, ggml's eval callback), e.g. to add a steering vector, splice in an
 * SAE's reconstruction or remove a direction, and then read the logits and the
 * loss.
 *
 * Hooks (TransformerLens names):
 *   hook_embed                 the token embedding (GPT-2: wte[token]; Gemma 2:
 *                              embed_tokens[token] * sqrt(d_model), as
 *                              TransformerLens folds the scale into W_E)
 *   hook_pos_embed             wpe[position] (GPT-2 only: Gemma 2 has rotary
 *                              positions inside attention)
 *   blocks.L.hook_resid_pre                            input of block L
 *   blocks.L.hook_attn_out, blocks.L.hook_resid_mid    what the attention half
 *                              adds (Gemma 2: after its post-attention norm),
 *                              pre + attn_out
 *   blocks.L.hook_mlp_out, blocks.L.hook_resid_post    what the MLP half adds
 *                              (Gemma 2: after its post-feed-forward norm),
 *                              mid + mlp_out
 *   ln_final.hook_normalized   the final norm without its weights: GPT-2
 *                              (x - mean) / sqrt(var + eps), Gemma 2
 *                              x / sqrt(mean(x^2) + eps) (TransformerLens folds
 *                              the norm's weights into the unembedding, fold_ln)
 *   logits                     the model's own logits, width vocab_size (Gemma
 *                              2: soft-capped, as Hugging Face returns them)
 *   loss                       per token next-token cross-entropy, width 1; NaN at
 *                              the last position of a window (no next token)
 * With center on (TransformerLens's center_writing_weights) every hook that is
 * or writes into the residual stream (embed, pos_embed, resid_pre/mid/post,
 * attn_out, mlp_out) has its own per-token mean over d_model subtracted. Only
 * LayerNorm families can be centred (dm_model_can_center): TransformerLens
 * skips centring for RMSNorm models, whose output depends on the mean, and the
 * SAEs trained on them (Gemma Scope) read raw activations; the runner refuses
 * center on them rather than skip it silently.
 *
 * The kernels come from a backend table (dm_model_backend) chosen once at load:
 * "ref" (plain loops), "cpu" (OpenBLAS sgemm, vectorised C), "cpu-avx512"
 * (dm_sgemm on packed weights with fused epilogues, AVX-512 attention and GELU)
 * and "cuda" (gpu/gpt2.cu: GPT-2's entries only; a family whose entries a
 * backend lacks runs on "cpu", with a one-line notice). The plain reference
 * kernels are exported by each family's header (gpt2.h, gemma2.h), llm.c
 * style: <family>_<op>_forward_ref(out, ..., in, weights, dims).
 */
#ifndef DM_MODEL_H
#define DM_MODEL_H

#include "compute.h"
#include "dm.h"

typedef enum {
    DM_FAMILY_GPT2 = 0, /* model_type gpt2 (or none: GPT-2 folders predate the key) */
    DM_FAMILY_GEMMA2,   /* model_type gemma2 */
    DM_FAMILY_COUNT
} dm_model_family_id;

/* One config for every family, in GPT-2's names (Hugging Face's GPT2Config);
 * each family's reader (gpt2.c, gemma2.c) fills them from its own keys. */
typedef struct {
    dm_model_family_id family;
    int n_embd;      /* C, d_model (Gemma 2: hidden_size) */
    int n_layer;     /* (num_hidden_layers) */
    int n_head;      /* query heads (num_attention_heads) */
    int n_positions; /* longest window (max_position_embeddings) */
    int vocab_size;
    int n_inner;     /* MLP width; GPT-2: config null or absent = 4 * n_embd
                        (intermediate_size) */
    float layer_norm_epsilon; /* every norm's eps (rms_norm_eps) */
    /* set for every family; GPT-2: n_head and n_embd / n_head */
    int n_kv_head;   /* key-value heads, n_head a multiple of it (num_key_value_heads) */
    int head_dim;
    /* Gemma 2 (0 elsewhere) */
    float rope_theta;            /* rotary base */
    float query_pre_attn_scalar; /* queries scaled by its -1/2 power */
    float attn_softcap;          /* attention logits: cap tanh(s / cap); 0: none */
    float final_softcap;         /* logits likewise; 0: none */
    int sliding_window;          /* keys seen by a local layer's query, itself included */
} dm_model_config;

typedef enum {
    DM_HOOK_EMBED = 0,
    DM_HOOK_POS_EMBED,
    DM_HOOK_RESID_PRE,
    DM_HOOK_ATTN_OUT,
    DM_HOOK_RESID_MID,
    DM_HOOK_MLP_OUT,
    DM_HOOK_RESID_POST,
    DM_HOOK_LN_FINAL, /* ln_final.hook_normalized */
    DM_HOOK_LOGITS,
    DM_HOOK_LOSS,
} dm_model_hook_kind;

typedef struct {
    dm_model_hook_kind kind;
    int layer; /* L of blocks.L.*; -1 for the others */
} dm_model_hook;

/* Loads every block and the final norm: what ln_final, logits and loss need. */
#define DM_MODEL_DEPTH_ALL (-1)

/* ---- hooks ------------------------------------------------------------- */

/* Parses a hook name. -1 with dm_fail() listing the accepted forms if unknown. */
int dm_model_hook_parse(const char *name, dm_model_hook *out);
/* The canonical name of h into buf ("blocks.6.hook_resid_pre"); returns buf. */
const char *dm_model_hook_name(dm_model_hook h, char *buf, size_t n);
/* Blocks that must be loaded for h: L for resid_pre L, L+1 for the other
 * blocks.L hooks, 0 for the embeddings, DM_MODEL_DEPTH_ALL for ln_final, logits
 * and loss. dm_model_hooks_depth gives the deepest of n hooks (0 if n is 0). */
int dm_model_hook_depth(dm_model_hook h);
int dm_model_hooks_depth(const dm_model_hook *hooks, int n);
/* 1 if h is or writes into the residual stream (centring applies). */
int dm_model_hook_is_residual(dm_model_hook h);
/* 1 if a callback may edit h (DM_MODEL_EDIT): the residual hooks and
 * ln_final.hook_normalized, whose values later computation reads; not logits
 * or loss. */
int dm_model_hook_is_editable(dm_model_hook h);
/* Checks h against cfg (layer < n_layer, a hook the family has) and returns
 * its width (n_embd, vocab_size or 1), or -1 with dm_fail(). */
int64_t dm_model_hook_width(const dm_model_config *cfg, dm_model_hook h);

/* ---- the model --------------------------------------------------------- */

/* Reads and checks dir/config.json (no weights): model_type picks the family
 * (gpt2, gemma2; absent: gpt2), whose reader checks its keys and refuses by
 * name the values the runner does not implement. Errors name the file and
 * key. */
int dm_model_read_config(const char *dir, dm_model_config *cfg);
/* The family's model_type ("gpt2", "gemma2") and its name for people
 * ("GPT-2", "Gemma 2"). */
const char *dm_model_family_type(dm_model_family_id f);
const char *dm_model_family_title(dm_model_family_id f);
/* 1 if the family's norms subtract the mean (LayerNorm), so that centring
 * the residual hooks changes nothing downstream: GPT-2; 0 for RMSNorm
 * families (Gemma 2). */
int dm_model_can_center(const dm_model_config *cfg);

typedef struct dm_model dm_model;
struct dm_model_backend;

/* How weights are held in memory.
 *   DM_WEIGHTS_F32   every parameter float32 (F16 and BF16 files converted).
 *   DM_WEIGHTS_BF16  the large matrices (every linear layer's weight and the
 *                    embedding, which the tied unembedding reads) are bf16
 *                    values, rounded to nearest even from F32/F16 files and
 *                    taken as they are from BF16 ones; norms' weights, biases
 *                    and GPT-2's position embedding stay float32. On
 *                    cpu-avx512 with AVX-512 BF16 (dm_bgemm_available) they
 *                    are held only as bf16, packed once for dm_bgemm (half the
 *                    bytes; the products' inputs rounded to bf16, sums in
 *                    float32, bgemm.h); the embedding's rows are read from the
 *                    packed copy, widened to float32. On "ref" they are held
 *                    bf16 unpacked and the plain loops (dm_bgemm_ref) round
 *                    the inputs likewise, summing in double: the reference.
 *                    Without bf16 kernels (the "cpu" backend, a CPU without
 *                    AVX-512 BF16, DMICA_NO_AVX512_BF16=1) the bf16 values
 *                    are widened once to float32 and run on the float32 path
 *                    (a one-line notice): the same weights, the inputs not
 *                    rounded, no memory saved. A device backend (cuda) has
 *                    no bf16 path yet: such a model runs on the CPU backend
 *                    the context would pick without the device (a notice). */
typedef enum { DM_WEIGHTS_F32 = 0, DM_WEIGHTS_BF16 } dm_model_weights;
const char *dm_model_weights_name(dm_model_weights w); /* "f32", "bf16" */

typedef struct {
    const struct dm_model_backend *be; /* NULL: dm_model_backend_select(cx) */
    dm_model_weights weights;
} dm_model_opts;

/* Loads dir: config.json and the weights (model.safetensors if present, else
 * the shards that model.safetensors.index.json's weight_map names, as
 * transformers does), every tensor's name, dtype and shape checked against
 * the config (extra or missing tensors are errors, naming the file; buffers
 * such as GPT-2's attn.bias masks and a tied lm_head.weight are ignored).
 * Only blocks 0..depth-1 are converted to float32 (depth from
 * dm_model_hooks_depth), all of them plus the final norm for
 * DM_MODEL_DEPTH_ALL. cx (copied; NULL: dm_compute_default()) picks the
 * backend (dm_model_backend_select) and so whether the weights are also
 * packed for dm_sgemm. NULL with the error recorded on failure. Free with
 * dm_model_free. */
dm_model *dm_model_load(const char *dir, int depth, const dm_compute *cx);
/* The same with the backend be rather than the one cx selects (tests stand in
 * a device with it); be must not pack. */
dm_model *dm_model_load_backend(const char *dir, int depth, const dm_compute *cx,
                                const struct dm_model_backend *be);
/* The same with options (opts NULL: the defaults). */
dm_model *dm_model_load_opts(const char *dir, int depth, const dm_compute *cx,
                             const dm_model_opts *opts);
/* On a device backend, point i's copy (its out) of the last dm_model_run in the
 * device's memory too, or NULL (a host backend, no copy asked, a callback at
 * that hook, or another run since). Valid until the next run: a node hands it
 * on as its chunks' dev (dm.h). */
const float *dm_model_device_copy(const dm_model *m, int i);
/* Floats of a model of depth blocks: its float32 parameters (the embeddings,
 * depth blocks, and the final norm when depth is DM_MODEL_DEPTH_ALL), and
 * what its weights packed for dm_sgemm add under cx (NULL: the default
 * context; 0 unless its backend packs: cpu-avx512). */
size_t dm_model_param_floats(const dm_model_config *c, int depth);
size_t dm_model_packed_floats(const dm_model_config *c, int depth, const dm_compute *cx);
/* Bytes of the parameters a model loaded with depth (DM_MODEL_DEPTH_ALL: every
 * block and the final norm), cx (NULL: the default context) and weights holds:
 * float32 parameters, their copies packed for dm_sgemm, bf16 matrices (packed
 * or not), as dm_model_load_opts would hold them on the backend it would
 * choose. dm_model_bytes gives the same for a loaded model. */
size_t dm_model_param_bytes(const dm_model_config *c, int depth, const dm_compute *cx,
                            dm_model_weights weights);
size_t dm_model_bytes(const dm_model *m);
/* 1 if m holds its large matrices as bf16 (DM_WEIGHTS_BF16 on a backend with
 * bf16 kernels); 0 if float32 (asked for, or widened: see dm_model_weights). */
int dm_model_holds_bf16(const dm_model *m);
/* Floats of the runner's activation buffers for BT rows (logits of the loss
 * without logits included with want_loss_only), attention's per-thread
 * scratch excluded. */
size_t dm_model_act_floats(const dm_model_config *c, size_t BT, int want_loss_only);
void dm_model_free(dm_model *m); /* accepts NULL */
const dm_model_config *dm_model_cfg(const dm_model *m);
/* Blocks loaded, and whether the final norm is (both set by dm_model_load's depth). */
int dm_model_depth(const dm_model *m);

/*
 * Runs tokens (B windows of T ids, row-major [B, T]) through the model up to the
 * deepest of hooks, writing hook i into outs[i] ([B*T, width_i] floats, row b*T+t,
 * caller-owned). center: subtract each token's mean over d_model from residual
 * hooks (1 = TransformerLens default for LayerNorm models; refused for the
 * others, dm_model_can_center). Checks T <= n_positions, every id against
 * vocab_size ("token id 50300 at window 1, position 17 is not below vocab_size
 * 50257") and that the hooks fit the loaded depth. Not reentrant on one model:
 * the activation buffers are the model's (kept between calls, grown as needed).
 * The same as dm_model_run with one copy-only point per hook.
 */
int dm_model_forward(dm_model *m, const int32_t *tokens, int B, int T, const dm_model_hook *hooks,
                     int nhooks, float **outs, int center);

/* ---- hook points: observe and edit ------------------------------------------
 *
 * A point names a hook and what happens there: a copy into a caller buffer
 * (out, centred as dm_model_forward centres), a callback (fn), or both. The
 * callback gets the activation itself, x ([B*T, width] floats, row b*T+t; the
 * model's own values, never centred):
 *   DM_MODEL_OBSERVE  fn reads x and must not write it.
 *   DM_MODEL_EDIT     fn may change x in place; the rest of the pass (later
 *                     hooks, logits, loss) runs on the changed values. Only at
 *                     editable hooks (dm_model_hook_is_editable).
 * At one hook the points run in the order given, each its callback and then its
 * copy: a copy listed before an edit holds the value before it, one in the edit's
 * own point or after holds the edited value. Editing blocks.L.hook_attn_out or
 * hook_mlp_out changes what that half block adds to the residual stream
 * (blocks.L.hook_resid_mid = resid_pre + the edited attn_out); editing
 * hook_embed or hook_pos_embed changes the sum that is blocks.0.hook_resid_pre.
 * Examples: x += alpha v (steering), x = an SAE's reconstruction of x (splicing),
 * x -= (x . u) u per row (removing direction u).
 *
 * A point at a branch hook (attn_out, mlp_out) makes the pass form that branch
 * in memory instead of adding it straight into the residual stream (the fused
 * epilogue of cpu-avx512), as a copy there always did; copies and callbacks
 * elsewhere cost nothing beyond themselves.
 *
 * The callback returns 0, or non-zero to stop the pass (dm_model_run then fails
 * with the error it recorded by dm_fail*, prefixed with the model and hook).
 */
typedef enum { DM_MODEL_OBSERVE = 0, DM_MODEL_EDIT = 1 } dm_model_hook_mode;

typedef int (*dm_model_hook_fn)(void *user, dm_model_hook h, float *x, int B, int T, int width);

typedef struct {
    dm_model_hook hook;
    float *out;              /* [B*T, width] copy, caller-owned; NULL: none */
    dm_model_hook_fn fn;     /* NULL: none */
    void *user;              /* fn's first argument */
    dm_model_hook_mode mode; /* what fn may do */
} dm_model_hook_point;

/* Runs tokens through the model to the deepest point (as dm_model_forward), with
 * the points' copies and callbacks. Errors as dm_model_forward's, and: an edit at
 * a hook that is not editable, or without a callback; a failed callback. */
int dm_model_run(dm_model *m, const int32_t *tokens, int B, int T, const dm_model_hook_point *points,
                 int npoints, int center);
/* The same from blocks.L.hook_resid_pre with x (B*T, n_embd) as the residual
 * stream there: blocks 0..L-1 are not run (an ablation study runs them once
 * and every edit from here; in a LayerNorm family a residual stream centred
 * per row gives the same branches, logits and loss as the model's own, and
 * the same centred copies of the later residual hooks, every read of it going
 * through a LayerNorm). tokens give the loss its targets. Points before that
 * hook (the embeddings, earlier blocks) are refused; one at it sees x, and
 * may edit it. */
int dm_model_run_from(dm_model *m, int layer, const float *x, const int32_t *tokens, int B, int T,
                      const dm_model_hook_point *points, int npoints, int center);

/* ---- backends ----------------------------------------------------------------
 *
 * What one pass asks of its kernels, as one table per device and instruction
 * set. The runner and the families call only these for a block (embedding,
 * copies, the loss and the final norm's weights stay in the runner). Every
 * entry takes the model's compute context first (its omp_kernels says whether
 * elementwise work may use OpenMP threads). Float32; BT = B*T rows. Entries a
 * family does not use may be NULL: a family runs on a backend only when every
 * entry it needs is there (else on "cpu", with a notice). To add a backend (a
 * CUDA one in gpu/): fill a dm_model_backend, put it in its slot in model.c's
 * table, and the tests run it against "ref".
 */

/* A linear layer's weight: W (C, OC) as the runner holds it (GPT-2's Conv1D
 * layout, x @ W; nn.Linear's (OC, C) weights are transposed at load), and the
 * same packed for dm_sgemm when the backend packs (NULL otherwise); or, for a
 * model holding bf16 weights (w and packed NULL), W's bf16 values: packed by
 * dm_bgemm_pack on a backend that packs, else (C, OC) row-major. */
typedef struct {
    const float *w;      /* (C, OC) */
    const float *packed; /* dm_sgemm_pack(w), or NULL */
    const uint16_t *bf16; /* bf16 W, or NULL */
} dm_model_weight;

enum { DM_MODEL_GELU = 1 }; /* linear's flags: gelu_new on the result (GPT-2's c_fc) */

/* A backend whose kernels run where the host cannot read (a GPU's memory): the
 * runner keeps the model's parameters and its activation buffers there, and
 * crosses to host memory through these calls only at the hooks (a copy out,
 * and back after a callback that may edit), for the logits and loss, and for
 * the embedding. Each returns 0, or -1 after a device error, which the device
 * has said once on stderr (the runner then runs the model on the CPU). */
typedef struct {
    void *(*alloc)(size_t bytes); /* NULL on failure */
    void (*release)(void *p);     /* accepts NULL */
    int (*upload)(void *dst, const void *src, size_t bytes);
    int (*download)(void *dst, const void *src, size_t bytes);
    /* host memory the device copies to and from fastest (page-locked), for
     * what crosses at the hooks; NULL on failure */
    void *(*host_alloc)(size_t bytes);
    void (*host_release)(void *p); /* accepts NULL */
    /* dst (rows, width) = src, less each row's mean over width with center
     * (hook_copy's rule), both in device memory */
    int (*copy_rows)(float *dst, const float *src, size_t rows, int width, int center);
    /* x (B*T, C) = wte[tokens] + wpe[position]; tokens in host memory (GPT-2's
     * embedding) */
    int (*embed)(float *x, const int32_t *tokens, const float *wte, const float *wpe, int B, int T, int C);
    /* 0, or -1 when a kernel since the last call has failed (the table's
     * entries return nothing) */
    int (*status)(void);
} dm_model_device_ops;

typedef struct dm_model_backend {
    const char *name; /* "ref", "cpu", "cpu-avx512", "cuda" */
    dm_device device;
    int packs;        /* 1: linear and linear_residual read dm_model_weight.packed */
    /* 1: linear and linear_residual take bf16 weights (dm_model_weight.bf16:
     * dm_bgemm_pack's layout where the backend packs, else plain) and
     * unembed_bf16 is set (DM_WEIGHTS_BF16) */
    int bf16;
    /* NULL: the entries take host memory. Otherwise they take memory made by
     * dev->alloc (the cuda entries also take host memory, copying it in and
     * out on each call: the tests call them so). */
    const dm_model_device_ops *dev;

    /* -- shared by the families -- */
    /* out (BT, OC) = inp (BT, C) @ W + bias (OC, or NULL), then GELU with
     * DM_MODEL_GELU. On a GPU, in cx->gemm's precision (compute.h). */
    void (*linear)(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *W,
                   const float *bias, int BT, int C, int OC, int flags);
    /* x (BT, OC) += inp (BT, C) @ W + bias without the branch in memory (a
     * fused epilogue); NULL: the runner calls linear into a buffer, then
     * residual */
    void (*linear_residual)(const dm_compute *cx, float *x, const float *inp,
                            const dm_model_weight *W, const float *bias, int BT, int C, int OC);
    /* out (N) = gelu_new(inp) (tanh form; PyTorch's gelu_pytorch_tanh); out may be inp */
    void (*gelu)(const dm_compute *cx, float *out, const float *inp, int64_t N);
    /* x (n) += branch (n) */
    void (*residual)(const dm_compute *cx, float *x, const float *branch, size_t n);
    /* out (BT, V) = inp (BT, C) @ wte^T, wte (V, C): the tied unembedding */
    void (*unembed)(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT,
                    int C, int V);
    /* the same with wte bf16: dm_bgemm_pack's layout of W (C, V) (from wte
     * (V, C), DM_BGEMM_NK) where the backend packs, else wte (V, C) plain */
    void (*unembed_bf16)(const dm_compute *cx, float *out, const float *inp, const uint16_t *wte,
                         int BT, int C, int V);

    /* -- GPT-2 (gpt2.h) -- */
    /* out (BT, C) = (inp - mean) / sqrt(var + eps) * weight + bias per row;
     * weight and bias (C) may both be NULL (no affine part) */
    void (*layernorm)(const dm_compute *cx, float *out, const float *inp, const float *weight,
                      const float *bias, int BT, int C, float eps);
    /* out (B, T, C) = causal softmax(q k^T / sqrt(C/NH)) v per head, from qkv
     * (B, T, 3C) laid out [q | k | v], head h at columns h*C/NH of each */
    void (*attention)(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                      int NH);

    /* -- Gemma 2 (gemma2.h) -- */
    /* out (BT, C) = inp / sqrt(mean(inp^2) + eps) * weight per row, in
     * float32; weight (C) may be NULL (none). Gemma's (1 + w) is added to the
     * weight at load. out may be inp. */
    void (*rmsnorm)(const dm_compute *cx, float *out, const float *inp, const float *weight, int BT,
                    int C, float eps);
    /* Rotary position embedding in place on x (B*T, NH * hd), row b*T+t at
     * position t, each head's halves rotated as Hugging Face's rotate_half:
     * cs (T, hd) holds cos then sin of t * theta^(-2i/hd), i < hd/2
     * (gemma2_rope_table). */
    void (*rope)(const dm_compute *cx, float *x, const float *cs, int B, int T, int NH, int hd);
    /* Grouped-query attention: out (B*T, NH * hd) = softmax over the keys a
     * query sees of cap tanh(q k^T scale / cap) (no cap when softcap is 0), times
     * v; q (B*T, NH * hd), k and v (B*T, NKV * hd), query head h reading
     * key-value head h / (NH / NKV). Query t sees keys t - window < j <= t
     * (window 0: all j <= t). */
    void (*attention_gqa)(const dm_compute *cx, float *out, const float *q, const float *k,
                          const float *v, int B, int T, int NH, int NKV, int hd, float scale,
                          float softcap, int window);
    /* gate (N) = gelu_new(gate) * up (N): the GeGLU MLP's product */
    void (*geglu)(const dm_compute *cx, float *gate, const float *up, int64_t N);
    /* x (N) = cap tanh(x / cap) */
    void (*softcap)(const dm_compute *cx, float *x, int64_t N, float cap);
} dm_model_backend;

typedef enum {
    DM_MODEL_REF = 0,    /* the plain reference kernels */
    DM_MODEL_CPU,        /* OpenBLAS sgemm and vectorised C: any CPU */
    DM_MODEL_CPU_AVX512, /* dm_sgemm on packed weights, AVX-512 attention and GELU */
    DM_MODEL_CUDA,       /* gpu/gpt2.cu, where libdmica-cuda.so sees a GPU */
    DM_MODEL_NBACKENDS
} dm_model_backend_id;

/* The entry id, or NULL where this build or machine has none: cpu-avx512
 * without AVX-512F or under DMICA_NO_AVX512=1, cuda without libdmica-cuda.so or
 * a GPU (device.h). */
const dm_model_backend *dm_model_backend_get(dm_model_backend_id id);
/* The entry a context selects: cuda for DM_DEVICE_CUDA where gpu/ fills it,
 * else ref if cx->reference, else cpu-avx512 if cx->avx512 and the CPU has it,
 * else cpu. */
const dm_model_backend *dm_model_backend_select(const dm_compute *cx);
/* 1 if be has every entry family f's blocks call. */
int dm_model_backend_runs(const dm_model_backend *be, dm_model_family_id f);
/* The backend a model runs on (after any fallback). */
const dm_model_backend *dm_model_backend_of(const dm_model *m);

#endif
