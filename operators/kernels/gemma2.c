/*
 * gemma2.c: the Gemma 2 family of the model runner (gemma2.h, model_impl.h),
 * after Hugging Face transformers' modeling_gemma2.py (4.44.2), the reference
 * of tests/test_gemma2.c (tools/gemma2_reference.py):
 *
 *   x = embed_tokens[ids] * sqrt(hidden_size)            (the normalizer in the
 *                                                         activations' dtype)
 *   per layer l:
 *     a = o_proj(attn(input_layernorm(x)))               attn: GQA, RoPE,
 *     x = x + post_attention_layernorm(a)                q k^T scaled by
 *     m = down_proj(gelu_tanh(gate_proj(h)) * up_proj(h)),   query_pre_attn_scalar^-1/2,
 *         h = pre_feedforward_layernorm(x)               cap tanh(s / cap),
 *     x = x + post_feedforward_layernorm(m)              a sliding window on
 *   logits = cap tanh(norm(x) @ embed_tokens^T / cap)    the even layers
 *
 * with RMSNorm(x) = x / sqrt(mean(x^2) + eps) * (1 + w) in float32. Layers
 * 0, 2, 4, ... are the local ones: Gemma2DecoderLayer.is_sliding = not
 * layer_idx % 2 (and Google's gemma_pytorch: [LOCAL_SLIDING, GLOBAL] * 13);
 * query t of a local layer sees keys t - sliding_window < j <= t (the mask
 * torch.tril(ones, diagonal=-sliding_window) adds). TransformerLens's
 * Gemma 2 config lists layer 0 as global; transformers is the reference here
 * (the two agree whenever windows are no longer than sliding_window, 4096 in
 * Gemma 2).
 *
 * Hooks as TransformerLens places them for models with norms before and after
 * each half (use_normalization_before_and_after): blocks.L.hook_attn_out is the
 * post-attention norm's output, what the half adds to the residual stream, and
 * hook_mlp_out likewise; hook_embed is the scaled embedding (TransformerLens
 * folds sqrt(d_model) into W_E); ln_final.hook_normalized is x / rms(x)
 * without the final norm's (1 + w), which the logits multiply in.
 *
 * Weights are float32 in memory (F32/F16/BF16 files): nn.Linear's (OC, C)
 * transposed at load to the (C, OC) layout the shared linear entries read (and
 * pack for dm_sgemm), RMSNorm weights held as 1 + w (computed in float32, as
 * transformers does). With DM_WEIGHTS_BF16 the runner keeps the linear
 * weights and the embedding bf16 instead (model.h's dm_model_weights): the
 * linear entries then run dm_bgemm, and the embedding's rows come widened
 * through dm_model_embed_row.
 *
 * The kernels Gemma 2 brought (rmsnorm, rope, attention_gqa, geglu, softcap)
 * have plain reference loops and a "cpu" version each, tested against them
 * (tests/test_gemma2.c); the linear layers, GELU, residual adds and the
 * unembedding are GPT-2's entries (gpt2.c). No CUDA entries yet: a model loaded
 * for a GPU runs on the CPU (model.c says so once).
 */
#pragma GCC optimize("no-trapping-math")

#include "gemma2.h"
#include "model_impl.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- kernels ------------------------------------------------------------ */

void gemma2_rmsnorm_forward_ref(float *out, const float *inp, const float *weight, int BT, int C,
                                float eps)
{
    // out is (BT, C), inp is (BT, C), weight is (C) or NULL; out may be inp
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float *o = out + (size_t)bt * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++)
            ss += x[i] * x[i];
        float rstd = 1.0f / sqrtf(ss / C + eps);
        for (int i = 0; i < C; i++)
            o[i] = x[i] * rstd * (weight ? weight[i] : 1.0f);
    }
}

/* gemma2_rmsnorm_forward_ref vectorised, the sum of squares in double. */
void gemma2_rmsnorm_cpu(const dm_compute *cx, float *out, const float *inp, const float *weight,
                        int BT, int C, float eps)
{
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float *o = out + (size_t)bt * C;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++)
            ss += (double)x[i] * x[i];
        float rstd = (float)(1.0 / sqrt(ss / C + eps));
        if (weight) {
#pragma omp simd
            for (int i = 0; i < C; i++)
                o[i] = x[i] * rstd * weight[i];
        } else {
#pragma omp simd
            for (int i = 0; i < C; i++)
                o[i] = x[i] * rstd;
        }
    }
}

void gemma2_rope_table(float *cs, int T, int hd, float theta)
{
    // cs is (T, hd): cos of the hd/2 angles, then their sin
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        /* Gemma2RotaryEmbedding: 1 / base ** (arange(0, dim, 2).float() / dim),
         * then freqs = inv_freq * position, all float32 */
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
        for (int t = 0; t < T; t++) {
            float f = inv * (float)t;
            cs[(size_t)t * hd + i] = cosf(f);
            cs[(size_t)t * hd + half + i] = sinf(f);
        }
    }
}

void gemma2_rope_forward_ref(float *x, const float *cs, int B, int T, int NH, int hd)
{
    // x is (B*T, NH*hd), cs is (T, hd)
    int half = hd / 2;
    for (int bt = 0; bt < B * T; bt++) {
        const float *c = cs + (size_t)(bt % T) * hd, *s = c + half;
        for (int h = 0; h < NH; h++) {
            float *v = x + ((size_t)bt * NH + h) * hd;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* gemma2_rope_forward_ref over OpenMP threads, vectorised within a head. */
void gemma2_rope_cpu(const dm_compute *cx, float *x, const float *cs, int B, int T, int NH, int hd)
{
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int bt = 0; bt < B * T; bt++) {
        const float *c = cs + (size_t)(bt % T) * hd, *s = c + half;
        for (int h = 0; h < NH; h++) {
            float *v = x + ((size_t)bt * NH + h) * hd;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* The first key query t sees: t - window + 1, or 0 (window 0: global). */
static int first_key(int t, int window)
{
    return window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
}

void gemma2_attention_forward_ref(float *out, const float *q, const float *k, const float *v, int B,
                                  int T, int NH, int NKV, int hd, float scale, float softcap,
                                  int window)
{
    // out and q are (B*T, NH*hd), k and v are (B*T, NKV*hd); query head h reads
    // key-value head h / (NH/NKV) (transformers' repeat_kv)
    int group = NH / NKV;
    float *att = dm_xmalloc(sizeof(float) * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const float *qv = q + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
                int kvh = h / group, lo = first_key(t, window);
                float maxv = -INFINITY, sum = 0.0f;
                for (int j = lo; j <= t; j++) {
                    const float *kv = k + ((size_t)b * T + j) * NKV * hd + (size_t)kvh * hd;
                    float s = 0.0f;
                    for (int i = 0; i < hd; i++)
                        s += qv[i] * kv[i];
                    s *= scale;
                    if (softcap > 0)
                        s = softcap * tanhf(s / softcap);
                    att[j] = s;
                    maxv = s > maxv ? s : maxv;
                }
                for (int j = lo; j <= t; j++) {
                    att[j] = expf(att[j] - maxv);
                    sum += att[j];
                }
                float *o = out + ((size_t)b * T + t) * NH * hd + (size_t)h * hd;
                for (int i = 0; i < hd; i++)
                    o[i] = 0.0f;
                for (int j = lo; j <= t; j++) {
                    const float *vv = v + ((size_t)b * T + j) * NKV * hd + (size_t)kvh * hd;
                    for (int i = 0; i < hd; i++)
                        o[i] += att[j] / sum * vv[i];
                }
            }
    free(att);
}

/* Soft-cap and softmax of rows [0, rows) of S (rows, keys) in place: row r is
 * query t0 + r, column j key k0 + j; it sees keys first_key(t0 + r) to t0 + r,
 * and the rest become zero. */
DM_SIMD_CLONES
static void softmax_window_forward(float *S, int rows, int keys, int t0, int k0, int window,
                                   float softcap)
{
    for (int r = 0; r < rows; r++) {
        float *s = S + (size_t)r * keys;
        int a = first_key(t0 + r, window) - k0, e = t0 + r - k0 + 1;
        if (softcap > 0)
            for (int j = a; j < e; j++)
                s[j] = softcap * tanhf(s[j] / softcap);
        float maxv = s[a], sum = 0.0f;
#pragma omp simd reduction(max : maxv)
        for (int j = a + 1; j < e; j++)
            maxv = s[j] > maxv ? s[j] : maxv;
#pragma omp simd reduction(+ : sum)
        for (int j = a; j < e; j++) {
            s[j] = dm_expf(s[j] - maxv);
            sum += s[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = a; j < e; j++)
            s[j] *= inv;
        for (int j = 0; j < a; j++)
            s[j] = 0.0f;
        for (int j = e; j < keys; j++)
            s[j] = 0.0f;
    }
}

/* gemma2_attention_forward_ref by blocks of queries, the products in OpenBLAS. */
void gemma2_attention_cpu(const dm_compute *cx, float *out, const float *q, const float *k,
                          const float *v, int B, int T, int NH, int NKV, int hd, float scale,
                          float softcap, int window)
{
    // Per (window, head) and block of ATT_ROWS queries: scores (rows, keys) =
    // Q K^T scale over the keys the block's queries see (from its first
    // query's first key to its last query), soft-cap, masked softmax in place,
    // then out = P V. Memory: one block of scores per thread. The (window,
    // head) pairs are spread over OpenMP threads, OpenBLAS held to one thread
    // meanwhile (gpt2.c's attention does the same).
    int group = NH / NKV, ldq = NH * hd, ldk = NKV * hd;
    int omp = cx->omp_kernels && B * NH > 1, blas_threads = 0;
    int span = window > 0 && window < T ? window + ATT_ROWS - 1 : T;
    span = span < T ? span : T;
    if (omp)
        blas_threads = dm_blas_serial_begin();
#pragma omp parallel if (omp)
    {
        float *S = dm_xmalloc_aligned(sizeof(float) * (size_t)ATT_ROWS * span);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH, kvh = h / group;
            const float *Q = q + (size_t)b * T * ldq + (size_t)h * hd;
            const float *K = k + (size_t)b * T * ldk + (size_t)kvh * hd;
            const float *V = v + (size_t)b * T * ldk + (size_t)kvh * hd;
            for (int t0 = 0; t0 < T; t0 += ATT_ROWS) {
                int rows = T - t0 < ATT_ROWS ? T - t0 : ATT_ROWS;
                int k0 = first_key(t0, window), keys = t0 + rows - k0;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale,
                            Q + (size_t)t0 * ldq, ldq, K + (size_t)k0 * ldk, ldk, 0.0f, S, keys);
                softmax_window_forward(S, rows, keys, t0, k0, window, softcap);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, S,
                            keys, V + (size_t)k0 * ldk, ldk, 0.0f,
                            out + ((size_t)b * T + t0) * ldq + (size_t)h * hd, ldq);
            }
        }
        free(S);
    }
    if (omp)
        dm_blas_serial_end(blas_threads);
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

void gemma2_geglu_forward_ref(float *gate, const float *up, int64_t N)
{
    // gate and up are (N): PyTorch's gelu(approximate="tanh"), gelu_pytorch_tanh
    for (int64_t i = 0; i < N; i++) {
        float x = gate[i];
        gate[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x))) * up[i];
    }
}

/* gemma2_geglu_forward_ref in chunks of 16384 over OpenMP threads: the GELU by
 * range (gpt2.c's), then the product. */
static void geglu_chunks(const dm_compute *cx, float *gate, const float *up, int64_t N,
                         void (*range)(float *, const float *, int64_t))
{
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int64_t i0 = 0; i0 < N; i0 += 16384) {
        int64_t n = N - i0 < 16384 ? N - i0 : 16384;
        float *g = gate + i0;
        const float *u = up + i0;
        range(g, g, n);
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            g[i] *= u[i];
    }
}

void gemma2_geglu_cpu(const dm_compute *cx, float *gate, const float *up, int64_t N)
{
    geglu_chunks(cx, gate, up, N, gpt2_gelu_range);
}

void gemma2_geglu_avx512(const dm_compute *cx, float *gate, const float *up, int64_t N)
{
#if defined(__x86_64__) && defined(__GNUC__)
    geglu_chunks(cx, gate, up, N, gpt2_gelu_range_avx512);
#else
    geglu_chunks(cx, gate, up, N, gpt2_gelu_range);
#endif
}

void gemma2_softcap_forward_ref(float *x, int64_t N, float cap)
{
    for (int64_t i = 0; i < N; i++)
        x[i] = cap * tanhf(x[i] / cap);
}

void gemma2_softcap_cpu(const dm_compute *cx, float *x, int64_t N, float cap)
{
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int64_t i = 0; i < N; i++)
        x[i] = cap * tanhf(x[i] / cap);
}

/* ---- backend entries of the reference loops ---------------------------------- */

void gemma2_rmsnorm_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *weight,
                              int BT, int C, float eps)
{
    gemma2_rmsnorm_forward_ref(out, inp, weight, BT, C, eps);
}

void gemma2_rope_ref_entry(const dm_compute *cx, float *x, const float *cs, int B, int T, int NH,
                           int hd)
{
    gemma2_rope_forward_ref(x, cs, B, T, NH, hd);
}

void gemma2_attention_ref_entry(const dm_compute *cx, float *out, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int hd, float scale,
                                float softcap, int window)
{
    gemma2_attention_forward_ref(out, q, k, v, B, T, NH, NKV, hd, scale, softcap, window);
}

void gemma2_geglu_ref_entry(const dm_compute *cx, float *gate, const float *up, int64_t N)
{
    gemma2_geglu_forward_ref(gate, up, N);
}

void gemma2_softcap_ref_entry(const dm_compute *cx, float *x, int64_t N, float cap)
{
    gemma2_softcap_forward_ref(x, N, cap);
}

/* ---- the family ------------------------------------------------------------ */

typedef struct {
    float *embed;    // (V, C)  first: the tied unembedding (model.c)
    float *ln1w;     // (L, C)  input_layernorm, 1 + w
    float *qw;       // (L, C, NH*hd)   q_proj, transposed
    float *kw;       // (L, C, NKV*hd)
    float *vw;       // (L, C, NKV*hd)
    float *ow;       // (L, NH*hd, C)   o_proj, transposed
    float *ln1postw; // (L, C)  post_attention_layernorm
    float *ln2w;     // (L, C)  pre_feedforward_layernorm
    float *gatew;    // (L, C, I)
    float *upw;      // (L, C, I)
    float *downw;    // (L, I, C)
    float *ln2postw; // (L, C)  post_feedforward_layernorm
    float *normw;    // (C)     model.norm; NULL unless loaded with DM_MODEL_DEPTH_ALL
} gemma2_params;

enum { PK_Q, PK_K, PK_V, PK_O, PK_GATE, PK_UP, PK_DOWN };
enum { A_Q, A_K, A_V, A_ATTY, A_GATE, A_UP };

/* A positive number key (*out), or with nullable null/absent: 0. */
static int cfg_float(const char *path, json_t *root, const char *key, int nullable, float *out)
{
    json_t *v = json_object_get(root, key);
    *out = 0;
    if (nullable && (!v || json_is_null(v)))
        return 0;
    if (!v)
        return dm_fail("%s: missing key %s", path, key);
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
        return dm_fail("%s: %s must be a positive number%s", path, key, nullable ? " or null" : "");
    *out = (float)json_number_value(v);
    return 0;
}

static int gemma2_read_config(const char *path, json_t *root, dm_model_config *c)
{
    json_t *v;
    if (dm_model_cfg_int(path, root, "hidden_size", &c->n_embd) < 0 ||
        dm_model_cfg_int(path, root, "num_hidden_layers", &c->n_layer) < 0 ||
        dm_model_cfg_int(path, root, "num_attention_heads", &c->n_head) < 0 ||
        dm_model_cfg_int(path, root, "num_key_value_heads", &c->n_kv_head) < 0 ||
        dm_model_cfg_int(path, root, "head_dim", &c->head_dim) < 0 ||
        dm_model_cfg_int(path, root, "intermediate_size", &c->n_inner) < 0 ||
        dm_model_cfg_int(path, root, "vocab_size", &c->vocab_size) < 0 ||
        dm_model_cfg_int(path, root, "max_position_embeddings", &c->n_positions) < 0 ||
        dm_model_cfg_int(path, root, "sliding_window", &c->sliding_window) < 0 ||
        cfg_float(path, root, "rms_norm_eps", 0, &c->layer_norm_epsilon) < 0 ||
        cfg_float(path, root, "rope_theta", 0, &c->rope_theta) < 0 ||
        cfg_float(path, root, "query_pre_attn_scalar", 0, &c->query_pre_attn_scalar) < 0 ||
        cfg_float(path, root, "attn_logit_softcapping", 1, &c->attn_softcap) < 0 ||
        cfg_float(path, root, "final_logit_softcapping", 1, &c->final_softcap) < 0)
        return -1;
    /* transformers reads hidden_activation (default gelu_pytorch_tanh); the
     * Hub's files also carry hidden_act: each one given must be the tanh GELU */
    static const char *const act_keys[] = {"hidden_activation", "hidden_act"};
    for (int i = 0; i < 2; i++)
        if ((v = json_object_get(root, act_keys[i])) && !json_is_null(v) &&
            (!json_is_string(v) || strcmp(json_string_value(v), "gelu_pytorch_tanh")))
            return dm_fail("%s: %s %s is not supported (only gelu_pytorch_tanh, Gemma 2's)", path,
                           act_keys[i], json_is_string(v) ? json_string_value(v) : "(not a string)");
    if ((v = json_object_get(root, "rope_scaling")) && !json_is_null(v))
        return dm_fail("%s: rope_scaling is not supported (plain rotary embeddings only)", path);
    if (json_is_true(json_object_get(root, "attention_bias")))
        return dm_fail("%s: attention_bias true is not supported (Gemma 2 has no biases)", path);
    if (json_is_false(json_object_get(root, "tie_word_embeddings")))
        return dm_fail("%s: tie_word_embeddings false is not supported (Gemma 2 ties its "
                       "unembedding to embed_tokens)", path);
    if (c->n_head % c->n_kv_head)
        return dm_fail("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       path, c->n_head, c->n_kv_head);
    if (c->head_dim % 2)
        return dm_fail("%s: head_dim %d is odd; rotary embeddings rotate pairs", path, c->head_dim);
    return 0;
}

static const char *const gemma2_dim_keys[D_COUNT] = {
    [D_C] = "hidden_size", [D_3C] = "hidden_size", [D_I] = "intermediate_size",
    [D_V] = "vocab_size", [D_P] = "max_position_embeddings",
    [D_Q] = "num_attention_heads * head_dim", [D_KV] = "num_key_value_heads * head_dim",
};

static const dm_tensor_spec gemma2_model_tensors[] = {
    {"model.embed_tokens.weight", 2, {D_V, D_C}, offsetof(gemma2_params, embed), T_EMBED},
    {"model.norm.weight", 1, {D_C}, offsetof(gemma2_params, normw), T_FINAL | T_PLUS_ONE},
};
#define LIN (T_TRANSPOSE | T_PACK)
static const dm_tensor_spec gemma2_block_tensors[] = {
    {"input_layernorm.weight", 1, {D_C}, offsetof(gemma2_params, ln1w), T_PLUS_ONE},
    {"self_attn.q_proj.weight", 2, {D_Q, D_C}, offsetof(gemma2_params, qw), LIN},
    {"self_attn.k_proj.weight", 2, {D_KV, D_C}, offsetof(gemma2_params, kw), LIN},
    {"self_attn.v_proj.weight", 2, {D_KV, D_C}, offsetof(gemma2_params, vw), LIN},
    {"self_attn.o_proj.weight", 2, {D_C, D_Q}, offsetof(gemma2_params, ow), LIN},
    {"post_attention_layernorm.weight", 1, {D_C}, offsetof(gemma2_params, ln1postw), T_PLUS_ONE},
    {"pre_feedforward_layernorm.weight", 1, {D_C}, offsetof(gemma2_params, ln2w), T_PLUS_ONE},
    {"mlp.gate_proj.weight", 2, {D_I, D_C}, offsetof(gemma2_params, gatew), LIN},
    {"mlp.up_proj.weight", 2, {D_I, D_C}, offsetof(gemma2_params, upw), LIN},
    {"mlp.down_proj.weight", 2, {D_C, D_I}, offsetof(gemma2_params, downw), LIN},
    {"post_feedforward_layernorm.weight", 1, {D_C}, offsetof(gemma2_params, ln2postw), T_PLUS_ONE},
};
#undef LIN

static int gemma2_runs_on(const dm_model_backend *be)
{
    /* no device path yet: the embedding and the norms' weights would cross */
    return !be->dev && be->linear && be->residual && be->unembed && be->rmsnorm && be->rope &&
           be->attention_gqa && be->geglu && be->softcap;
}

static void gemma2_act_sizes(const dm_model_config *c, size_t BT, size_t *sizes)
{
    size_t Q = (size_t)c->n_head * c->head_dim, KV = (size_t)c->n_kv_head * c->head_dim;
    sizes[A_Q] = BT * Q;
    sizes[A_K] = BT * KV;
    sizes[A_V] = BT * KV;
    sizes[A_ATTY] = BT * Q;
    sizes[A_GATE] = BT * c->n_inner;
    sizes[A_UP] = BT * c->n_inner;
}

/* The rotary table of the pass's T positions. */
static int gemma2_begin(dm_model *m, int B, int T)
{
    int hd = m->cfg.head_dim;
    gemma2_rope_table(dm_model_scratch(&m->table, &m->table_n, (size_t)T * hd), T, hd,
                      m->cfg.rope_theta);
    return 0;
}

/* Gemma2Model's normalizer: sqrt(hidden_size) as a tensor of the activations'
 * dtype (float32 here). */
static float embed_scale(const dm_model_config *c)
{
    return (float)sqrt((double)c->n_embd);
}

static void gemma2_embed_part(const dm_model *m, dm_model_hook_kind kind, float *row, int32_t token,
                              int pos)
{
    size_t C = m->cfg.n_embd;
    float s = embed_scale(&m->cfg);
    const float *e = dm_model_embed_row(m, token, row);
    for (size_t i = 0; i < C; i++)
        row[i] = e[i] * s;
}

/* x (BT, C) = embed_tokens[token] * sqrt(C) */
static int gemma2_embed(dm_model *m, float *x, const int32_t *tokens, int B, int T)
{
    size_t C = m->cfg.n_embd, BT = (size_t)B * T;
    float s = embed_scale(&m->cfg);
#pragma omp parallel for schedule(static) if (m->cx.omp_kernels)
    for (size_t bt = 0; bt < BT; bt++) {
        float *xr = x + bt * C;
        /* the row itself, or (bf16 weights) widened into xr */
        const float *e = dm_model_embed_row(m, tokens[bt], xr);
        for (size_t i = 0; i < C; i++)
            xr[i] = e[i] * s;
    }
    return 0;
}

/* branch = post_attention_layernorm(o_proj(attn(input_layernorm(x)))); x += branch */
static int gemma2_attn_half(dm_model *m, const void *params, const hook_set *hs, int l)
{
    const gemma2_params *p = params;
    const dm_model_config *c = &m->cfg;
    const dm_model_backend *be = m->be;
    const dm_compute *cx = &m->cx;
    dm_model_acts *a = &m->acts;
    const int C = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_kv_head * c->head_dim;
    const int B = hs->B, T = hs->T, BT = B * T;
    const float eps = c->layer_norm_epsilon;
    dm_model_weight qw = dm_model_block_weight(m, p->qw, PK_Q, l, C, Q);
    dm_model_weight kw = dm_model_block_weight(m, p->kw, PK_K, l, C, KV);
    dm_model_weight vw = dm_model_block_weight(m, p->vw, PK_V, l, C, KV);
    dm_model_weight ow = dm_model_block_weight(m, p->ow, PK_O, l, Q, C);
    be->rmsnorm(cx, a->ln, a->x, p->ln1w + (size_t)l * C, BT, C, eps);
    be->linear(cx, a->f[A_Q], a->ln, &qw, NULL, BT, C, Q, 0);
    be->linear(cx, a->f[A_K], a->ln, &kw, NULL, BT, C, KV, 0);
    be->linear(cx, a->f[A_V], a->ln, &vw, NULL, BT, C, KV, 0);
    be->rope(cx, a->f[A_Q], m->table, B, T, c->n_head, c->head_dim);
    be->rope(cx, a->f[A_K], m->table, B, T, c->n_kv_head, c->head_dim);
    /* Gemma2Attention.scaling = query_pre_attn_scalar ** -0.5 (a Python float) */
    float scale = (float)pow((double)c->query_pre_attn_scalar, -0.5);
    be->attention_gqa(cx, a->f[A_ATTY], a->f[A_Q], a->f[A_K], a->f[A_V], B, T, c->n_head,
                      c->n_kv_head, c->head_dim, scale, c->attn_softcap,
                      l % 2 == 0 ? c->sliding_window : 0);
    be->linear(cx, a->branch, a->f[A_ATTY], &ow, NULL, BT, Q, C, 0);
    be->rmsnorm(cx, a->branch, a->branch, p->ln1postw + (size_t)l * C, BT, C, eps);
    return dm_model_add_branch(m, hs, DM_HOOK_ATTN_OUT, l);
}

/* branch = post_feedforward_layernorm(down(gelu(gate(h)) * up(h))),
 * h = pre_feedforward_layernorm(x); x += branch */
static int gemma2_mlp_half(dm_model *m, const void *params, const hook_set *hs, int l)
{
    const gemma2_params *p = params;
    const dm_model_config *c = &m->cfg;
    const dm_model_backend *be = m->be;
    const dm_compute *cx = &m->cx;
    dm_model_acts *a = &m->acts;
    const int C = c->n_embd, NI = c->n_inner, BT = hs->B * hs->T;
    const float eps = c->layer_norm_epsilon;
    dm_model_weight gw = dm_model_block_weight(m, p->gatew, PK_GATE, l, C, NI);
    dm_model_weight uw = dm_model_block_weight(m, p->upw, PK_UP, l, C, NI);
    dm_model_weight dw = dm_model_block_weight(m, p->downw, PK_DOWN, l, NI, C);
    be->rmsnorm(cx, a->ln, a->x, p->ln2w + (size_t)l * C, BT, C, eps);
    be->linear(cx, a->f[A_GATE], a->ln, &gw, NULL, BT, C, NI, 0);
    be->linear(cx, a->f[A_UP], a->ln, &uw, NULL, BT, C, NI, 0);
    be->geglu(cx, a->f[A_GATE], a->f[A_UP], (int64_t)BT * NI);
    be->linear(cx, a->branch, a->f[A_GATE], &dw, NULL, BT, NI, C, 0);
    be->rmsnorm(cx, a->branch, a->branch, p->ln2postw + (size_t)l * C, BT, C, eps);
    return dm_model_add_branch(m, hs, DM_HOOK_MLP_OUT, l);
}

/* ln_final.hook_normalized: x / rms(x), without the norm's (1 + w) (fold_ln) */
static void gemma2_final_normalize(dm_model *m, float *out, const float *x, int BT)
{
    m->be->rmsnorm(&m->cx, out, x, NULL, BT, m->cfg.n_embd, m->cfg.layer_norm_epsilon);
}

static void gemma2_final_weights(const dm_model *m, float *ln, size_t BT)
{
    const gemma2_params *p = m->params;
    const int C = m->cfg.n_embd;
#pragma omp parallel for schedule(static) if (m->cx.omp_kernels)
    for (size_t bt = 0; bt < BT; bt++)
        for (int i = 0; i < C; i++)
            ln[bt * C + i] *= p->normw[i];
}

/* Gemma2ForCausalLM's final_logit_softcapping */
static void gemma2_logits_post(dm_model *m, float *logits, size_t rows)
{
    if (m->cfg.final_softcap > 0)
        m->be->softcap(&m->cx, logits, (int64_t)rows * m->cfg.vocab_size, m->cfg.final_softcap);
}

const dm_model_family dm_family_gemma2 = {
    .id = DM_FAMILY_GEMMA2,
    .type = "gemma2",
    .title = "Gemma 2",
    .layernorm = 0,
    .pos_embed = 0,
    .read_config = gemma2_read_config,
    .model_tensors = gemma2_model_tensors,
    .n_model_tensors = sizeof gemma2_model_tensors / sizeof *gemma2_model_tensors,
    .block_tensors = gemma2_block_tensors,
    .n_block_tensors = sizeof gemma2_block_tensors / sizeof *gemma2_block_tensors,
    .ignored = NULL,
    .block_prefix = "model.layers.",
    .layer_key = "num_hidden_layers",
    .dim_keys = gemma2_dim_keys,
    .params_size = sizeof(gemma2_params),
    .runs_on = gemma2_runs_on,
    .act_sizes = gemma2_act_sizes,
    .begin = gemma2_begin,
    .embed_part = gemma2_embed_part,
    .embed = gemma2_embed,
    .attn_half = gemma2_attn_half,
    .mlp_half = gemma2_mlp_half,
    .final_normalize = gemma2_final_normalize,
    .final_weights = gemma2_final_weights,
    .logits_post = gemma2_logits_post,
};
