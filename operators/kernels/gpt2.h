/*
 * gpt2.h: the GPT-2 layer runner: a Hugging Face GPT-2 folder in, TransformerLens
 * hook activations out, and hooks that can edit the residual stream on the way.
 *
 * Load a model with dm_gpt2_load (config.json + model.safetensors, F32/F16/BF16
 * weights converted to float32 at load, every tensor name and shape checked
 * against the config; the compute context picks the kernels), then call
 * dm_gpt2_forward on batches of B windows of T token ids: one pass computes any
 * set of hooks, each into its own caller buffer of [B*T, width] floats, row
 * b*T+t, and stops after the deepest one. dm_gpt2_run is the general form: at
 * each hook point a callback may observe the activation or edit it in place
 * before the rest of the model runs on it (TransformerLens's hook points,
 * ggml's eval callback), e.g. to add a steering vector, splice in an SAE's
 * reconstruction or remove a direction, and then read the logits and the loss.
 *
 * Hooks (TransformerLens names):
 *   hook_embed, hook_pos_embed                         wte[token], wpe[position]
 *   blocks.L.hook_resid_pre                            input of block L
 *   blocks.L.hook_attn_out, blocks.L.hook_resid_mid    attention output, pre + attn_out
 *   blocks.L.hook_mlp_out, blocks.L.hook_resid_post    MLP output, mid + mlp_out
 *   ln_final.hook_normalized   (x - mean) / sqrt(var + eps) of the final residual,
 *                              without ln_f's gain and bias (TransformerLens folds
 *                              them into the unembedding by default, fold_ln)
 *   logits                     ln_f(x) @ wte^T, width vocab_size (not centred: the
 *                              model's own logits)
 *   loss                       per token next-token cross-entropy, width 1; NaN at
 *                              the last position of a window (no next token)
 * With center on (the default, TransformerLens's center_writing_weights) every hook
 * that is or writes into the residual stream (embed, pos_embed, resid_pre/mid/post,
 * attn_out, mlp_out) has its own per-token mean over d_model subtracted.
 *
 * The kernels come from a backend table (dm_gpt2_backend) chosen once at load:
 * "ref" (plain loops), "cpu" (OpenBLAS sgemm, vectorised C), "cpu-avx512"
 * (dm_sgemm on packed weights with fused epilogues, AVX-512 attention and GELU)
 * and a slot for "cuda". The plain reference kernels are also exported, llm.c
 * style: gpt2_<op>_forward_ref(out, ..., in, weights, dims).
 */
#ifndef DM_GPT2_H
#define DM_GPT2_H

#include "compute.h"
#include "dm.h"

typedef struct {
    int n_embd;      /* C, d_model */
    int n_layer;
    int n_head;
    int n_positions; /* longest window */
    int vocab_size;
    int n_inner;     /* MLP width; config null or absent = 4 * n_embd */
    float layer_norm_epsilon;
} dm_gpt2_config;

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
} dm_gpt2_hook_kind;

typedef struct {
    dm_gpt2_hook_kind kind;
    int layer; /* L of blocks.L.*; -1 for the others */
} dm_gpt2_hook;

/* Loads every block and ln_f: what ln_final, logits and loss need. */
#define DM_GPT2_DEPTH_ALL (-1)

/* ---- hooks ------------------------------------------------------------- */

/* Parses a hook name. -1 with dm_fail() listing the accepted forms if unknown. */
int dm_gpt2_hook_parse(const char *name, dm_gpt2_hook *out);
/* The canonical name of h into buf ("blocks.6.hook_resid_pre"); returns buf. */
const char *dm_gpt2_hook_name(dm_gpt2_hook h, char *buf, size_t n);
/* Blocks that must be loaded for h: L for resid_pre L, L+1 for the other
 * blocks.L hooks, 0 for the embeddings, DM_GPT2_DEPTH_ALL for ln_final, logits
 * and loss. dm_gpt2_hooks_depth gives the deepest of n hooks (0 if n is 0). */
int dm_gpt2_hook_depth(dm_gpt2_hook h);
int dm_gpt2_hooks_depth(const dm_gpt2_hook *hooks, int n);
/* 1 if h is or writes into the residual stream (centring applies). */
int dm_gpt2_hook_is_residual(dm_gpt2_hook h);
/* 1 if a callback may edit h (DM_GPT2_EDIT): the residual hooks and
 * ln_final.hook_normalized, whose values later computation reads; not logits
 * or loss. */
int dm_gpt2_hook_is_editable(dm_gpt2_hook h);
/* Checks h against cfg (layer < n_layer) and returns its width (n_embd,
 * vocab_size or 1), or -1 with dm_fail(). */
int64_t dm_gpt2_hook_width(const dm_gpt2_config *cfg, dm_gpt2_hook h);

/* ---- the model --------------------------------------------------------- */

/* Reads and checks dir/config.json (no weights). Errors name the file and key. */
int dm_gpt2_read_config(const char *dir, dm_gpt2_config *cfg);

typedef struct dm_gpt2 dm_gpt2;
struct dm_gpt2_backend;

/* Loads dir: config.json and model.safetensors, every tensor's name, dtype and
 * shape checked against the config (extra or missing tensors are errors; the
 * attn.bias / attn.masked_bias mask buffers and a tied lm_head.weight are
 * ignored). Only blocks 0..depth-1 are converted to float32 (depth from
 * dm_gpt2_hooks_depth), all of them plus ln_f for DM_GPT2_DEPTH_ALL.
 * cx (copied; NULL: dm_compute_default()) picks the backend
 * (dm_gpt2_backend_select) and so whether the weights are also packed for
 * dm_sgemm. NULL with the error recorded on failure. Free with dm_gpt2_free. */
dm_gpt2 *dm_gpt2_load(const char *dir, int depth, const dm_compute *cx);
/* On a device backend, point i's copy (its out) of the last dm_gpt2_run in the
 * device's memory too, or NULL (a host backend, no copy asked, a callback at
 * that hook, or another run since). Valid until the next run: a node hands it
 * on as its chunks' dev (dm.h). */
const float *dm_gpt2_device_copy(const dm_gpt2 *m, int i);
/* The same with the backend be rather than the one cx selects (tests stand in
 * a device with it); be must not pack. */
dm_gpt2 *dm_gpt2_load_backend(const char *dir, int depth, const dm_compute *cx, const struct dm_gpt2_backend *be);
/* Floats a model of depth blocks adds for its weights packed for dm_sgemm (the
 * four matrices again) under cx (NULL: the default context): 0 unless its
 * backend packs (cpu-avx512). */
size_t dm_gpt2_packed_floats(const dm_gpt2_config *c, int depth, const dm_compute *cx);
void dm_gpt2_free(dm_gpt2 *m); /* accepts NULL */
const dm_gpt2_config *dm_gpt2_cfg(const dm_gpt2 *m);
/* Blocks loaded, and whether ln_f is (both set by dm_gpt2_load's depth). */
int dm_gpt2_depth(const dm_gpt2 *m);

/*
 * Runs tokens (B windows of T ids, row-major [B, T]) through the model up to the
 * deepest of hooks, writing hook i into outs[i] ([B*T, width_i] floats, row b*T+t,
 * caller-owned). center: subtract each token's mean over d_model from residual
 * hooks (1 = TransformerLens default). Checks T <= n_positions, every id against
 * vocab_size ("token id 50300 at window 1, position 17 is not below vocab_size
 * 50257") and that the hooks fit the loaded depth. Not reentrant on one model:
 * the activation buffers are the model's (kept between calls, grown as needed).
 * The same as dm_gpt2_run with one copy-only point per hook.
 */
int dm_gpt2_forward(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook *hooks,
                    int nhooks, float **outs, int center);

/* ---- hook points: observe and edit ------------------------------------------
 *
 * A point names a hook and what happens there: a copy into a caller buffer
 * (out, centred as dm_gpt2_forward centres), a callback (fn), or both. The
 * callback gets the activation itself, x ([B*T, width] floats, row b*T+t; the
 * model's own values, never centred):
 *   DM_GPT2_OBSERVE  fn reads x and must not write it.
 *   DM_GPT2_EDIT     fn may change x in place; the rest of the pass (later
 *                    hooks, logits, loss) runs on the changed values. Only at
 *                    editable hooks (dm_gpt2_hook_is_editable).
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
 * The callback returns 0, or non-zero to stop the pass (dm_gpt2_run then fails
 * with the error it recorded by dm_fail*, prefixed with the model and hook).
 */
typedef enum { DM_GPT2_OBSERVE = 0, DM_GPT2_EDIT = 1 } dm_gpt2_hook_mode;

typedef int (*dm_gpt2_hook_fn)(void *user, dm_gpt2_hook h, float *x, int B, int T, int width);

typedef struct {
    dm_gpt2_hook hook;
    float *out;             /* [B*T, width] copy, caller-owned; NULL: none */
    dm_gpt2_hook_fn fn;     /* NULL: none */
    void *user;             /* fn's first argument */
    dm_gpt2_hook_mode mode; /* what fn may do */
} dm_gpt2_hook_point;

/* Runs tokens through the model to the deepest point (as dm_gpt2_forward), with
 * the points' copies and callbacks. Errors as dm_gpt2_forward's, and: an edit at
 * a hook that is not editable, or without a callback; a failed callback. */
int dm_gpt2_run(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook_point *points,
                int npoints, int center);
/* The same from blocks.L.hook_resid_pre with x (B*T, n_embd) as the residual
 * stream there: blocks 0..L-1 are not run (an ablation study runs them once
 * and every edit from here; a residual stream centred per row gives the same
 * branches, logits and loss as the model's own, and the same centred copies
 * of the later residual hooks, every read of it going through a LayerNorm). tokens give the loss its targets. Points before that
 * hook (the embeddings, earlier blocks) are refused; one at it sees x, and
 * may edit it. */
int dm_gpt2_run_from(dm_gpt2 *m, int layer, const float *x, const int32_t *tokens, int B, int T,
                     const dm_gpt2_hook_point *points, int npoints, int center);

/* ---- backends ----------------------------------------------------------------
 *
 * What one pass asks of its kernels, as one table per device and instruction
 * set. The runner calls only these for a block (embedding, copies, the loss and
 * ln_f's affine part stay in the runner). Every entry takes the model's compute
 * context first (its omp_kernels says whether elementwise work may use OpenMP
 * threads). Float32; BT = B*T rows. To add a backend (a CUDA one in gpu/): fill
 * a dm_gpt2_backend, put it in its slot in gpt2.c's table, and the tests run it
 * against "ref".
 */

/* A linear layer's weight: W (C, OC) as loaded (Conv1D layout: x @ W), and the
 * same packed for dm_sgemm when the backend packs (NULL otherwise). */
typedef struct {
    const float *w;      /* (C, OC) */
    const float *packed; /* dm_sgemm_pack(w), or NULL */
} dm_gpt2_weight;

enum { DM_GPT2_GELU = 1 }; /* linear's flags: gelu_new on the result (the MLP's c_fc) */

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
    /* x (B*T, C) = wte[tokens] + wpe[position]; tokens in host memory */
    int (*embed)(float *x, const int32_t *tokens, const float *wte, const float *wpe, int B, int T, int C);
    /* 0, or -1 when a kernel since the last call has failed (the table's
     * entries return nothing) */
    int (*status)(void);
} dm_gpt2_device_ops;

typedef struct dm_gpt2_backend {
    const char *name; /* "ref", "cpu", "cpu-avx512", "cuda" */
    dm_device device;
    int packs;        /* 1: linear and linear_residual read dm_gpt2_weight.packed */
    /* NULL: the entries take host memory. Otherwise they take memory made by
     * dev->alloc (the cuda entries also take host memory, copying it in and
     * out on each call: the tests call them so). */
    const dm_gpt2_device_ops *dev;
    /* out (BT, C) = (inp - mean) / sqrt(var + eps) * weight + bias per row;
     * weight and bias (C) may both be NULL (no affine part) */
    void (*layernorm)(const dm_compute *cx, float *out, const float *inp, const float *weight,
                      const float *bias, int BT, int C, float eps);
    /* out (BT, OC) = inp (BT, C) @ W + bias (OC, or NULL), then GELU with
     * DM_GPT2_GELU. On a GPU, in cx->gemm's precision (compute.h). */
    void (*linear)(const dm_compute *cx, float *out, const float *inp, const dm_gpt2_weight *W,
                   const float *bias, int BT, int C, int OC, int flags);
    /* x (BT, OC) += inp (BT, C) @ W + bias without the branch in memory (a
     * fused epilogue); NULL: the runner calls linear into a buffer, then
     * residual */
    void (*linear_residual)(const dm_compute *cx, float *x, const float *inp,
                            const dm_gpt2_weight *W, const float *bias, int BT, int C, int OC);
    /* out (B, T, C) = causal softmax(q k^T / sqrt(C/NH)) v per head, from qkv
     * (B, T, 3C) laid out [q | k | v], head h at columns h*C/NH of each */
    void (*attention)(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                      int NH);
    /* out (N) = gelu_new(inp); out may be inp */
    void (*gelu)(const dm_compute *cx, float *out, const float *inp, int64_t N);
    /* x (n) += branch (n) */
    void (*residual)(const dm_compute *cx, float *x, const float *branch, size_t n);
    /* out (BT, V) = inp (BT, C) @ wte^T, wte (V, C): the tied unembedding */
    void (*unembed)(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT,
                    int C, int V);
} dm_gpt2_backend;

typedef enum {
    DM_GPT2_REF = 0,    /* the plain reference kernels */
    DM_GPT2_CPU,        /* OpenBLAS sgemm and vectorised C: any CPU */
    DM_GPT2_CPU_AVX512, /* dm_sgemm on packed weights, AVX-512 attention and GELU */
    DM_GPT2_CUDA,       /* gpu/gpt2.cu, where libdmica-cuda.so sees a GPU */
    DM_GPT2_NBACKENDS
} dm_gpt2_backend_id;

/* The entry id, or NULL where this build or machine has none: cpu-avx512
 * without AVX-512F or under DMICA_NO_AVX512=1, cuda without libdmica-cuda.so or
 * a GPU (device.h). */
const dm_gpt2_backend *dm_gpt2_backend_get(dm_gpt2_backend_id id);
/* The entry a context selects: cuda for DM_DEVICE_CUDA where gpu/ fills it,
 * else ref if cx->reference, else cpu-avx512 if cx->avx512 and the CPU has it,
 * else cpu. */
const dm_gpt2_backend *dm_gpt2_backend_select(const dm_compute *cx);
/* The backend a model was loaded with. */
const dm_gpt2_backend *dm_gpt2_backend_of(const dm_gpt2 *m);

/* ---- reference kernels (float32; BT = B*T rows) -----------------------------
 * The "ref" backend's loops, with the shapes of the table's entries. */

/* out (BT, OC) = inp (BT, C) @ weight (C, OC) + bias (OC): the Conv1D layout, no
 * transpose; bias may be NULL. */
void gpt2_matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                             int BT, int C, int OC);
void gpt2_layernorm_forward_ref(float *out, const float *inp, const float *weight,
                                const float *bias, int BT, int C, float eps);
void gpt2_attention_forward_ref(float *out, const float *qkv, int B, int T, int C, int NH);
/* out (N) = gelu_new(inp) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void gpt2_gelu_forward_ref(float *out, const float *inp, int64_t N);
void gpt2_residual_forward_ref(float *x, const float *branch, size_t n);
void gpt2_unembed_forward_ref(float *out, const float *inp, const float *wte, int BT, int C, int V);

#endif
