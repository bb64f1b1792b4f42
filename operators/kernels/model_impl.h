/*
 * model_impl.h: private to the model runner (model.c) and its families
 * (gpt2.c, gemma2.c): the model's struct, what a family supplies, and the
 * runner's helpers a family's half blocks call. Not part of the API: callers
 * use model.h.
 *
 * A family is a const dm_model_family: its config reader, its tensors as a
 * table (names, shapes in the config's sizes, where each goes in the family's
 * parameter struct, how it is held), its activation buffers, and the pieces
 * of one pass: the embedding, the attention half and MLP half of a block, the
 * final norm and what follows the unembedding. The runner owns everything
 * else: the folder's files, the checks, one allocation of float32 parameters
 * (and one of bf16 matrices with DM_WEIGHTS_BF16), packing for dm_sgemm, the device copy and the fallback to the CPU, the
 * activation buffers, the layer walk, the hook points, the logits' buffers and
 * the loss.
 */
#ifndef DM_MODEL_IMPL_H
#define DM_MODEL_IMPL_H

#include "model.h"
#include "vmath.h"

#include <jansson.h>
#include <stddef.h>

/* Queries per block of attention scores (gpt2.c, gemma2.c). */
#define ATT_ROWS 64
/* Rows of logits computed at a time for the loss alone. */
#define LOGIT_ROWS 64
/* What the pass returns after a device error (the device has said it). */
#define DEVICE_FAILED (-2)

/* ---- tensors ----------------------------------------------------------------- */

/* Sizes a tensor's shape can name: n_embd, 3 n_embd, n_inner, vocab_size,
 * n_positions, n_head * head_dim, n_kv_head * head_dim. */
enum { D_C, D_3C, D_I, D_V, D_P, D_Q, D_KV, D_COUNT };

enum {
    T_FINAL = 1,     /* loaded only with the final norm (DM_MODEL_DEPTH_ALL) */
    T_TRANSPOSE = 2, /* nn.Linear's (OC, C) in the file, held as (C, OC) */
    T_PLUS_ONE = 4,  /* held as 1 + w (Gemma's RMSNorm weights, as transformers
                        and TransformerLens compute them) */
    T_PACK = 8,      /* a linear layer's weight: packed for dm_sgemm when the
                        backend packs, in the order of the table; held bf16
                        with DM_WEIGHTS_BF16 */
    T_EMBED = 16,    /* the embedding (V, C), the family's first parameter, read
                        by the tied unembedding: held bf16 with DM_WEIGHTS_BF16
                        (rows through dm_model_embed_row) */
};

typedef struct {
    const char *name; /* model tensors: the whole name; block tensors: after
                         the block prefix and "L." */
    int ndim;
    int dims[2];  /* the shape in the file, as D_ codes */
    size_t field; /* offsetof(the family's parameter struct, ...) */
    int flags;
} dm_tensor_spec;

/* ---- the model ----------------------------------------------------------------- */

#define DM_MODEL_MAX_PACKED 8 /* T_PACK tensors of a block */
#define DM_MODEL_FAMILY_ACTS 8

typedef struct {
    float *x;      // (BT, C) the residual stream
    float *ln;     // (BT, C) a norm's output
    float *branch; // (BT, C) attn_out, then mlp_out
    float *logits; // (LOGIT_ROWS, V) when loss is wanted without logits
    float *f[DM_MODEL_FAMILY_ACTS]; // the family's (its act_sizes)
} dm_model_acts;

typedef struct dm_model_family dm_model_family;

struct dm_model {
    char *dir;
    dm_model_config cfg;
    const dm_model_family *fam;
    int depth;  /* blocks loaded */
    int has_final;
    dm_compute cx;              /* the context it was loaded with (a copy) */
    const dm_model_backend *be; /* chosen from cx at load */
    /* The family's parameter struct (fam->params_size bytes of float *,
     * pointing into params_memory), and the one allocation. */
    void *params;
    float *params_memory;
    size_t params_floats;
    /* The T_PACK weights of every loaded block packed for dm_sgemm (NULL
     * unless the backend packs): block tensor k's layer l at pk[k] + l * pk_n[k]. */
    float *packed_memory;
    size_t packed_floats;
    float *pk[DM_MODEL_MAX_PACKED];
    size_t pk_n[DM_MODEL_MAX_PACKED];
    /* DM_WEIGHTS_BF16 held bf16 (bf16_hold: BF16_PLAIN or BF16_PACKED; their
     * float * fields in params are NULL): the T_PACK weights, block tensor
     * k's layer l at bk[k] + l * bk_n[k], and the embedding, in one
     * allocation of bf16_values */
    int bf16_hold;
    uint16_t *bf16_memory;
    size_t bf16_values;
    uint16_t *bk[DM_MODEL_MAX_PACKED];
    size_t bk_n[DM_MODEL_MAX_PACKED];
    uint16_t *embed_bf16;
    dm_model_acts acts;
    float *acts_memory;
    size_t acts_rows; /* BT the activations were allocated for */
    /* On a device backend (be->dev): the parameters' copy in its memory
     * (dparams points into it as params into params_memory; acts_memory is
     * there too), and host buffers for what crosses: stage (BT, C) at the hooks
     * and embeddings, stage2 (BT, C) for the position embeddings, logits. */
    float *dparams_memory;
    void *dparams;
    float *stage, *stage2, *host_logits; /* stage from dev->host_alloc */
    size_t stage_n, stage2_n, host_logits_n;
    /* the hook points' copies in the device's memory (dm_model_device_copy):
     * point i's in dcopy[i] (dcopy_n[i] floats), made by the last run when
     * dcopy_ok[i] */
    float **dcopy;
    size_t *dcopy_n;
    unsigned char *dcopy_ok;
    int ndcopy;
    /* logits (BT, V) and loss (BT) for callbacks at those hooks when no copy
     * is asked for (grown as needed) */
    float *cb_logits, *cb_loss;
    size_t cb_logits_n, cb_loss_n;
    /* per-pass tables of the family (Gemma 2's rotary cos and sin) */
    float *table;
    size_t table_n;
};

/* The hook points of one pass. */
typedef struct {
    const dm_model_hook_point *p;
    int n, B, T, center;
} hook_set;

struct dm_model_family {
    dm_model_family_id id;
    const char *type;  /* config.json's model_type */
    const char *title; /* for people: "GPT-2" */
    int layernorm;     /* 1: its norms subtract the mean (centring is harmless) */
    int pos_embed;     /* 1: hook_pos_embed exists */
    /* Fills c (zeroed, family set) from config.json's root; path for errors. */
    int (*read_config)(const char *path, json_t *root, dm_model_config *c);

    /* tensors: model tensors by whole name, block tensors as
     * block_prefix "L." name; a block tensor whose name is in ignored (NULL
     * ends it) is skipped; lm_head.weight, tied to the embedding, is checked
     * and skipped */
    const dm_tensor_spec *model_tensors;
    int n_model_tensors;
    const dm_tensor_spec *block_tensors;
    int n_block_tensors;
    const char *const *ignored;
    const char *block_prefix;          /* "h.", "model.layers." */
    const char *layer_key;             /* the config's key of n_layer */
    const char *const *dim_keys;       /* the config's key of each D_ code */
    /* its parameter struct: float * fields only, the first the embedding
     * (V, C), which the tied unembedding reads */
    size_t params_size;

    /* 1 if be has every entry the family's pass calls */
    int (*runs_on)(const dm_model_backend *be);
    /* floats of each of its activation buffers for BT rows (up to
     * DM_MODEL_FAMILY_ACTS; 0 ends the list) */
    void (*act_sizes)(const dm_model_config *c, size_t BT, size_t *sizes);

    /* -- one pass -- */
    /* Once per pass before the embedding (may be NULL): per-pass tables. */
    int (*begin)(dm_model *m, int B, int T);
    /* row (C) = the embedding part kind (DM_HOOK_EMBED, DM_HOOK_POS_EMBED) of
     * token at position pos, from the host parameters */
    void (*embed_part)(const dm_model *m, dm_model_hook_kind kind, float *row, int32_t token, int pos);
    /* x (B*T, C) = the sum of the embedding parts (in device memory on a
     * device backend); 0, or DEVICE_FAILED */
    int (*embed)(dm_model *m, float *x, const int32_t *tokens, int B, int T);
    /* The attention half and the MLP half of block l on m->acts.x, each
     * ending with its branch added to x and the points at its branch hook
     * run (dm_model_add_branch, dm_model_linear_residual); 0, -1 or
     * DEVICE_FAILED. p: the parameters the backend reads. */
    int (*attn_half)(dm_model *m, const void *p, const hook_set *hs, int l);
    int (*mlp_half)(dm_model *m, const void *p, const hook_set *hs, int l);
    /* out (BT, C) = the final norm of x without its weights (the backend's) */
    void (*final_normalize)(dm_model *m, float *out, const float *x, int BT);
    /* ln (BT, C) in host memory times the final norm's weights (and bias) */
    void (*final_weights)(const dm_model *m, float *ln, size_t BT);
    /* After the unembedding, on rows of logits in host memory (may be NULL):
     * Gemma 2's final soft-cap */
    void (*logits_post)(dm_model *m, float *logits, size_t rows);
};

extern const dm_model_family dm_family_gpt2;   /* gpt2.c */
extern const dm_model_family dm_family_gemma2; /* gemma2.c */

/* ---- the runner's helpers for the families ------------------------------------ */

/* 1 if a point is at (kind, layer); with only_fn, a point with a callback. */
int dm_model_wants(const hook_set *hs, dm_model_hook_kind kind, int layer, int only_fn);
/* Runs the points at (kind, layer) in their order on x ((B*T, width), the
 * activation itself; in device memory with on_device). */
int dm_model_run_points(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int layer,
                        float *x, int width, int on_device);
/* m->acts.branch (BT, C) is a half block's output: its points at (kind, l)
 * run on it, then x += branch. */
int dm_model_add_branch(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int l);
/* x += inp (BT, C) @ W + b (width OC = n_embd) for a half block whose output
 * is that linear layer's: straight into x where the backend fuses it and no
 * point is at (kind, l), else through acts.branch and dm_model_add_branch. */
int dm_model_linear_residual(dm_model *m, const hook_set *hs, dm_model_hook_kind kind, int l,
                             const float *inp, const dm_model_weight *W, const float *b, int BT,
                             int C, int OC);
/* How a model holds its large matrices (dm_model.bf16_hold). */
enum { BF16_NONE = 0, BF16_PLAIN, BF16_PACKED };

/* The embedding's row token (C) as float32: a pointer into the float32
 * parameters, or buf (C floats) filled with the bf16 row widened. */
const float *dm_model_embed_row(const dm_model *m, int32_t token, float *buf);
/* Block tensor field's layer l as a linear weight: W (C, OC) and its packed
 * copy, or its bf16 values (pack: its T_PACK slot). */
dm_model_weight dm_model_block_weight(const dm_model *m, const float *w, int pack, int l, int C,
                                      int OC);
/* A buffer of at least n floats in *buf (capacity *cap floats), grown as needed. */
float *dm_model_scratch(float **buf, size_t *cap, size_t n);
/* A positive integer key of root, as the config readers take it. */
int dm_model_cfg_int(const char *path, json_t *root, const char *key, int *out);

/* ---- kernels of the backend tables (model.c builds the tables) --------------- */

void gpt2_linear_ref_entry(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *w,
                           const float *bias, int BT, int C, int OC, int flags);
void gpt2_linear_cpu(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *w,
                     const float *bias, int BT, int C, int OC, int flags);
void gpt2_linear_avx512(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *w,
                        const float *bias, int BT, int C, int OC, int flags);
void gpt2_linear_residual_avx512(const dm_compute *cx, float *x, const float *inp,
                                 const dm_model_weight *w, const float *bias, int BT, int C, int OC);
void gpt2_gelu_ref_entry(const dm_compute *cx, float *out, const float *inp, int64_t N);
void gpt2_gelu_cpu(const dm_compute *cx, float *out, const float *inp, int64_t N);
void gpt2_gelu_avx512(const dm_compute *cx, float *out, const float *inp, int64_t N);
void gpt2_residual_ref_entry(const dm_compute *cx, float *x, const float *branch, size_t n);
void gpt2_residual_cpu(const dm_compute *cx, float *x, const float *branch, size_t n);
void gpt2_unembed_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *wte,
                            int BT, int C, int V);
void gpt2_unembed_blas(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT,
                       int C, int V);
void gpt2_unembed_bf16_ref_entry(const dm_compute *cx, float *out, const float *inp,
                                 const uint16_t *wte, int BT, int C, int V);
void gpt2_unembed_bf16_avx512(const dm_compute *cx, float *out, const float *inp,
                              const uint16_t *wte, int BT, int C, int V);
void gpt2_layernorm_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *weight,
                              const float *bias, int BT, int C, float eps);
void gpt2_layernorm_cpu(const dm_compute *cx, float *out, const float *inp, const float *weight,
                        const float *bias, int BT, int C, float eps);
void gpt2_attention_ref_entry(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                              int NH);
void gpt2_attention_cpu(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                        int NH);
void gpt2_attention_avx512(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                           int NH);
/* gelu_range (out, inp, n) of the cpu and avx512 GELU, for GeGLU (gpt2.c) */
void gpt2_gelu_range(float *out, const float *inp, int64_t n);
void gpt2_gelu_range_avx512(float *out, const float *inp, int64_t n);

void gemma2_rmsnorm_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *weight,
                              int BT, int C, float eps);
void gemma2_rmsnorm_cpu(const dm_compute *cx, float *out, const float *inp, const float *weight,
                        int BT, int C, float eps);
void gemma2_rope_ref_entry(const dm_compute *cx, float *x, const float *cs, int B, int T, int NH,
                           int hd);
void gemma2_rope_cpu(const dm_compute *cx, float *x, const float *cs, int B, int T, int NH, int hd);
void gemma2_attention_ref_entry(const dm_compute *cx, float *out, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int hd, float scale,
                                float softcap, int window);
void gemma2_attention_cpu(const dm_compute *cx, float *out, const float *q, const float *k,
                          const float *v, int B, int T, int NH, int NKV, int hd, float scale,
                          float softcap, int window);
void gemma2_geglu_ref_entry(const dm_compute *cx, float *gate, const float *up, int64_t N);
void gemma2_geglu_cpu(const dm_compute *cx, float *gate, const float *up, int64_t N);
void gemma2_geglu_avx512(const dm_compute *cx, float *gate, const float *up, int64_t N);
void gemma2_softcap_ref_entry(const dm_compute *cx, float *x, int64_t N, float cap);
void gemma2_softcap_cpu(const dm_compute *cx, float *x, int64_t N, float cap);

#endif
