/*
 * gpt2.h: the GPT-2 layer runner: a Hugging Face GPT-2 folder in, TransformerLens
 * hook activations out (shared/DOMAIN.md sections 1 and 3).
 *
 * Load a model with dm_gpt2_load (config.json + model.safetensors, F32/F16/BF16
 * weights converted to float32 at load, every tensor name and shape checked
 * against the config), then call dm_gpt2_forward on batches of B windows of T
 * token ids: one pass computes any set of hooks, each into its own caller buffer
 * of [B*T, width] floats, row b*T+t, and stops after the deepest one.
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
 * Beside the fast kernels (dm_sgemm on packed weights or OpenBLAS sgemm, AVX-512
 * attention and GELU, OpenMP) the plain reference kernels are
 * exported for tests, llm.c style: <op>_forward(out, ..., in, weights, dims).
 */
#ifndef DM_GPT2_H
#define DM_GPT2_H

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
/* Checks h against cfg (layer < n_layer) and returns its width (n_embd,
 * vocab_size or 1), or -1 with dm_fail(). */
int64_t dm_gpt2_hook_width(const dm_gpt2_config *cfg, dm_gpt2_hook h);

/* ---- the model --------------------------------------------------------- */

/* Reads and checks dir/config.json (no weights). Errors name the file and key. */
int dm_gpt2_read_config(const char *dir, dm_gpt2_config *cfg);

typedef struct dm_gpt2 dm_gpt2;

/* Loads dir: config.json and model.safetensors, every tensor's name, dtype and
 * shape checked against the config (extra or missing tensors are errors; the
 * attn.bias / attn.masked_bias mask buffers and a tied lm_head.weight are
 * ignored). Only blocks 0..depth-1 are converted to float32 (depth from
 * dm_gpt2_hooks_depth), all of them plus ln_f for DM_GPT2_DEPTH_ALL.
 * NULL with dm_fail() on error. Free with dm_gpt2_free. */
dm_gpt2 *dm_gpt2_load(const char *dir, int depth);
/* Floats a model of depth blocks adds for its weights packed for dm_sgemm (the
 * four matrices again; 0 on CPUs without AVX-512F, where OpenBLAS runs them). */
size_t dm_gpt2_packed_floats(const dm_gpt2_config *c, int depth);
void dm_gpt2_free(dm_gpt2 *m); /* accepts NULL */
const dm_gpt2_config *dm_gpt2_cfg(const dm_gpt2 *m);
/* Blocks loaded, and whether ln_f is (both set by dm_gpt2_load's depth). */
int dm_gpt2_depth(const dm_gpt2 *m);
/* Use the reference kernels instead of the fast ones (tests). */
void dm_gpt2_use_reference(dm_gpt2 *m, int on);

/*
 * Runs tokens (B windows of T ids, row-major [B, T]) through the model up to the
 * deepest of hooks, writing hook i into outs[i] ([B*T, width_i] floats, row b*T+t,
 * caller-owned). center: subtract each token's mean over d_model from residual
 * hooks (1 = TransformerLens default). Checks T <= n_positions, every id against
 * vocab_size ("token id 50300 at window 1, position 17 is not below vocab_size
 * 50257") and that the hooks fit the loaded depth. Not reentrant on one model:
 * the activation buffers are the model's (kept between calls, grown as needed).
 */
int dm_gpt2_forward(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook *hooks,
                    int nhooks, float **outs, int center);

/* ---- kernels (float32; BT = B*T rows) --------------------------------------
 * Each fast kernel has a plain _ref version beside it; tests compare the two. */

/* out (BT, OC) = inp (BT, C) @ weight (C, OC) + bias (OC): the Conv1D layout, no
 * transpose; bias may be NULL. Fast: OpenBLAS sgemm (the runner itself uses
 * dm_sgemm on packed weights where the CPU has AVX-512F; see sgemm.h). */
void gpt2_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                         int BT, int C, int OC);
void gpt2_matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                             int BT, int C, int OC);
/* out (BT, C) = (inp - mean) / sqrt(var + eps) * weight + bias per row; weight and
 * bias (C) may both be NULL (no affine part). */
void gpt2_layernorm_forward(float *out, const float *inp, const float *weight, const float *bias,
                            int BT, int C, float eps);
void gpt2_layernorm_forward_ref(float *out, const float *inp, const float *weight,
                                const float *bias, int BT, int C, float eps);
/* out (B, T, C) = causal softmax(q k^T / sqrt(C/NH)) v per head, from qkv (B, T, 3C)
 * laid out [q | k | v], head h at columns h*C/NH of each. Fast: blocks of queries,
 * no (T, T) buffer; AVX-512 products for head sizes that are multiples of 16,
 * else OpenBLAS sgemm. */
void gpt2_attention_forward(float *out, const float *qkv, int B, int T, int C, int NH);
void gpt2_attention_forward_ref(float *out, const float *qkv, int B, int T, int C, int NH);
/* out (N) = gelu_new(inp) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); out may
 * be inp. */
void gpt2_gelu_forward(float *out, const float *inp, int64_t N);
void gpt2_gelu_forward_ref(float *out, const float *inp, int64_t N);

#endif
