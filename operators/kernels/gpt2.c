/*
 * gpt2.c: the GPT-2 family of the model runner (model.h, model_impl.h): Radford
 * et al., "Language Models are Unsupervised Multitask Learners", 2019, as
 * Hugging Face's modeling_gpt2.py computes it; the hooks and centring are
 * TransformerLens's.
 *
 * Its pieces: config.json's GPT2Config keys, the tensors of a GPT2LMHeadModel
 * (Conv1D weights, (C, OC), used as they are), the embedding wte[token] +
 * wpe[position], the attention half (ln_1, c_attn, causal attention, c_proj)
 * and the MLP half (ln_2, c_fc with GELU, c_proj) of a block, and ln_f.
 *
 * And the kernels of the backend tables that GPT-2 brought (model.c builds the
 * tables; gemma2.c reuses linear, GELU, residual and unembed):
 *   ref         plain loops (llm.c style), exported as gpt2_<op>_forward_ref;
 *   cpu         OpenBLAS sgemm on the weights as loaded, attention's products
 *               in OpenBLAS, vectorised C for the rest;
 *   cpu-avx512  the four linear layers (over 95% of the work at GPT-2 small's
 *               shape, T = 128) in dm_sgemm on weights packed at load (sgemm.c:
 *               one level of Strassen, bias, GELU and the residual add fused
 *               into its stores, OpenMP threads), attention in AVX-512 for head
 *               sizes that are multiples of 16, GELU in AVX-512 intrinsics.
 * LayerNorm, GELU, softmax and the other passes are vectorised (omp simd; the
 * exp-heavy ones compiled for AVX-512/AVX2 too) and run in OpenMP threads only
 * when that does not slow OpenBLAS down (the context's omp_kernels, compute.h).
 */
/* Float compares (the clamps of dm_expf) may be if-converted and vectorised only
 * when they are not assumed to trap; nothing here uses floating-point exceptions. */
#pragma GCC optimize("no-trapping-math")

#include "gpt2.h"
#include "model_impl.h"

#include "bgemm.h"
#include "sgemm.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GPT2_X86 1
#endif

/* ---- kernels ------------------------------------------------------------ */

void gpt2_matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                             int BT, int C, int OC)
{
    // out is (BT, OC), inp is (BT, C), weight is (C, OC) (Conv1D: x @ W), bias is (OC)
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float *o = out + (size_t)bt * OC;
        for (int j = 0; j < OC; j++)
            o[j] = bias ? bias[j] : 0.0f;
        for (int i = 0; i < C; i++) {
            const float *w = weight + (size_t)i * OC;
            for (int j = 0; j < OC; j++)
                o[j] += x[i] * w[j];
        }
    }
}

/* gpt2_matmul_forward_ref in OpenBLAS sgemm, the bias copied in first. */
static void matmul_blas(const dm_compute *cx, float *out, const float *inp, const float *weight,
                        const float *bias, int BT, int C, int OC)
{
    // out is (BT, OC), inp is (BT, C), weight is (C, OC), bias is (OC)
    if (bias) {
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
        for (int bt = 0; bt < BT; bt++)
            memcpy(out + (size_t)bt * OC, bias, sizeof(float) * OC);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, BT, OC, C, 1.0f, inp, C, weight, OC,
                bias ? 1.0f : 0.0f, out, OC);
}

void gpt2_layernorm_forward_ref(float *out, const float *inp, const float *weight,
                                const float *bias, int BT, int C, float eps)
{
    // out is (BT, C), inp is (BT, C), weight and bias are (C) or NULL
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float *o = out + (size_t)bt * C;
        float mean = 0.0f, var = 0.0f;
        for (int i = 0; i < C; i++)
            mean += x[i];
        mean /= C;
        for (int i = 0; i < C; i++)
            var += (x[i] - mean) * (x[i] - mean);
        var /= C;
        float rstd = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < C; i++) {
            float n = (x[i] - mean) * rstd;
            o[i] = n * (weight ? weight[i] : 1.0f) + (bias ? bias[i] : 0.0f);
        }
    }
}

/* gpt2_layernorm_forward_ref vectorised, with double sums. */
void gpt2_layernorm_cpu(const dm_compute *cx, float *out, const float *inp, const float *weight,
                          const float *bias, int BT, int C, float eps)
{
    // out is (BT, C), inp is (BT, C), weight and bias are (C) or NULL
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float *o = out + (size_t)bt * C;
        /* double sums: a residual row can carry a large common offset */
        double sum = 0.0, ss = 0.0;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < C; i++)
            sum += x[i];
        float mean = (float)(sum / C);
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++)
            ss += (double)(x[i] - mean) * (x[i] - mean);
        float rstd = (float)(1.0 / sqrt(ss / C + eps));
        if (weight && bias) {
#pragma omp simd
            for (int i = 0; i < C; i++)
                o[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
        } else {
#pragma omp simd
            for (int i = 0; i < C; i++)
                o[i] = (x[i] - mean) * rstd;
        }
    }
}

void gpt2_attention_forward_ref(float *out, const float *qkv, int B, int T, int C, int NH)
{
    // out is (B, T, C), qkv is (B, T, 3C): [q | k | v], head h at columns h*hs
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    float *att = dm_xmalloc(sizeof(float) * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                float maxv = -INFINITY, sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
                    float s = 0.0f;
                    for (int i = 0; i < hs; i++)
                        s += q[i] * k[i];
                    att[t2] = s * scale;
                    if (att[t2] > maxv)
                        maxv = att[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    att[t2] = expf(att[t2] - maxv);
                    sum += att[t2];
                }
                float *o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++)
                    o[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = qkv + ((size_t)b * T + t2) * 3 * C + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++)
                        o[i] += att[t2] / sum * v[i];
                }
            }
    free(att);
}

/* Softmax of rows [0, rows) of S (rows, keys) in place, row r seeing keys
 * 0..t0+r (causal) and zero beyond. */
DM_SIMD_CLONES
static void softmax_causal_forward(float *S, int rows, int keys, int t0)
{
    for (int r = 0; r < rows; r++) {
        float *s = S + (size_t)r * keys;
        int n = t0 + r + 1;
        float maxv = s[0], sum = 0.0f;
#pragma omp simd reduction(max : maxv)
        for (int j = 1; j < n; j++)
            maxv = s[j] > maxv ? s[j] : maxv;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) {
            s[j] = dm_expf(s[j] - maxv);
            sum += s[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < n; j++)
            s[j] *= inv;
        for (int j = n; j < keys; j++)
            s[j] = 0.0f;
    }
}

#ifdef GPT2_X86
/* One (window, head) of attention in AVX-512, for head sizes that are a multiple
 * of 16. kt (hs, Tp) gets K^T times the scale, Tp = T rounded up to 32 and the
 * extra keys zero; S holds ATT_ROWS rows of Tp scores. Scores: 8 queries x 32
 * keys a tile (16 zmm accumulators; per d, two loads of kt and 8 broadcasts of
 * q), only up to the tile's last query's key; out: 4 queries x 64 columns a
 * tile over the keys the tile's last query sees (softmax left zeros past each
 * row's own). */
__attribute__((target("avx512f"))) static void attention_head_avx512(
    float *out, const float *Q, const float *K, const float *V, int T, int hs, int C3, int C,
    float scale, float *kt, float *S)
{
    int Tp = (T + 31) / 32 * 32;
    for (int d = 0; d < hs; d++) {
        for (int j = 0; j < T; j++)
            kt[(size_t)d * Tp + j] = K[(size_t)j * C3 + d] * scale;
        for (int j = T; j < Tp; j++)
            kt[(size_t)d * Tp + j] = 0.0f;
    }
    for (int t0 = 0; t0 < T; t0 += ATT_ROWS) {
        int rows = T - t0 < ATT_ROWS ? T - t0 : ATT_ROWS;
        for (int r0 = 0; r0 < rows; r0 += 8) {
            int nr = rows - r0 < 8 ? rows - r0 : 8, keys = t0 + r0 + nr;
            const float *q[8];
            for (int r = 0; r < 8; r++)
                q[r] = Q + (size_t)(t0 + r0 + (r < nr ? r : nr - 1)) * C3;
            for (int j0 = 0; j0 < keys; j0 += 32) {
                __m512 acc[8][2];
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++)
                    acc[r][0] = acc[r][1] = _mm512_setzero_ps();
                for (int d = 0; d < hs; d++) {
                    __m512 k0 = _mm512_loadu_ps(kt + (size_t)d * Tp + j0);
                    __m512 k1 = _mm512_loadu_ps(kt + (size_t)d * Tp + j0 + 16);
#pragma GCC unroll 8
                    for (int r = 0; r < 8; r++) {
                        __m512 qv = _mm512_set1_ps(q[r][d]);
                        acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
                    }
                }
                for (int r = 0; r < nr; r++) {
                    _mm512_storeu_ps(S + (size_t)(r0 + r) * Tp + j0, acc[r][0]);
                    _mm512_storeu_ps(S + (size_t)(r0 + r) * Tp + j0 + 16, acc[r][1]);
                }
            }
        }
        softmax_causal_forward(S, rows, Tp, t0);
        for (int r0 = 0; r0 < rows; r0 += 4) {
            int nr = rows - r0 < 4 ? rows - r0 : 4, keys = t0 + r0 + nr;
            const float *p[4];
            for (int r = 0; r < 4; r++)
                p[r] = S + (size_t)(r0 + (r < nr ? r : nr - 1)) * Tp;
            for (int c0 = 0; c0 < hs; c0 += 64) {
                int nz = (hs - c0) / 16 < 4 ? (hs - c0) / 16 : 4;
                __m512 acc[4][4];
#pragma GCC unroll 4
                for (int r = 0; r < 4; r++)
                    acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
                for (int j = 0; j < keys; j++) {
                    const float *v = V + (size_t)j * C3 + c0;
                    __m512 v0 = _mm512_loadu_ps(v);
                    __m512 v1 = nz > 1 ? _mm512_loadu_ps(v + 16) : v0;
                    __m512 v2 = nz > 2 ? _mm512_loadu_ps(v + 32) : v0;
                    __m512 v3 = nz > 3 ? _mm512_loadu_ps(v + 48) : v0;
#pragma GCC unroll 4
                    for (int r = 0; r < 4; r++) {
                        __m512 pv = _mm512_set1_ps(p[r][j]);
                        acc[r][0] = _mm512_fmadd_ps(pv, v0, acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(pv, v1, acc[r][1]);
                        acc[r][2] = _mm512_fmadd_ps(pv, v2, acc[r][2]);
                        acc[r][3] = _mm512_fmadd_ps(pv, v3, acc[r][3]);
                    }
                }
                for (int r = 0; r < nr; r++) {
                    float *o = out + (size_t)(t0 + r0 + r) * C + c0;
                    for (int z = 0; z < nz; z++)
                        _mm512_storeu_ps(o + 16 * z, acc[r][z]);
                }
            }
        }
    }
}
#endif

/* gpt2_attention_forward_ref by blocks of queries; avx512: attention_head_avx512
 * where the head size allows. */
static void attention_cpu_any(const dm_compute *cx, float *out, const float *qkv, int B, int T,
                              int C, int NH, int avx512)
{
    // out is (B, T, C), qkv is (B, T, 3C): [q | k | v], head h at columns h*hs
    // Per (window, head) and block of ATT_ROWS queries: scores (rows, keys) =
    // Q K^T / sqrt(hs) over the keys up to the block's last query only, causal
    // softmax in place, then out = P V. Memory: one block of scores per thread.
    // With AVX-512 and a head size that is a multiple of 16 (GPT-2's 64) the
    // products are attention_head_avx512's; otherwise OpenBLAS sgemm. At T = 128
    // these sgemms are small enough that OpenBLAS runs each on the calling
    // thread, so the (window, head) pairs are spread over OpenMP threads;
    // OpenBLAS is held to one thread meanwhile, so a larger T cannot nest its
    // threads inside ours.
    int hs = C / NH, Tp = (T + 31) / 32 * 32, fast = 0;
    float scale = 1.0f / sqrtf((float)hs);
#ifdef GPT2_X86
    fast = avx512 && hs % 16 == 0;
#endif
    int C3 = 3 * C, omp = cx->omp_kernels && B * NH > 1, blas_threads = 0;
    if (omp && !fast)
        blas_threads = dm_blas_serial_begin();
#pragma omp parallel if (omp)
    {
        float *S = dm_xmalloc_aligned(sizeof(float) * (size_t)ATT_ROWS * Tp);
        float *kt = fast ? dm_xmalloc_aligned(sizeof(float) * (size_t)hs * Tp) : NULL;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            const float *Q = qkv + (size_t)b * T * C3 + h * hs, *K = Q + C, *V = Q + 2 * C;
#ifdef GPT2_X86
            if (fast) {
                attention_head_avx512(out + (size_t)b * T * C + h * hs, Q, K, V, T, hs, C3, C,
                                      scale, kt, S);
                continue;
            }
#endif
            for (int t0 = 0; t0 < T; t0 += ATT_ROWS) {
                int rows = T - t0 < ATT_ROWS ? T - t0 : ATT_ROWS, keys = t0 + rows;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, scale,
                            Q + (size_t)t0 * C3, C3, K, C3, 0.0f, S, keys);
                softmax_causal_forward(S, rows, keys, t0);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f, S,
                            keys, V, C3, 0.0f, out + ((size_t)b * T + t0) * C + h * hs, C);
            }
        }
        free(kt);
        free(S);
    }
    if (omp && !fast)
        dm_blas_serial_end(blas_threads);
}

void gpt2_attention_cpu(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                          int NH)
{
    attention_cpu_any(cx, out, qkv, B, T, C, NH, 0);
}

void gpt2_attention_avx512(const dm_compute *cx, float *out, const float *qkv, int B, int T,
                             int C, int NH)
{
    attention_cpu_any(cx, out, qkv, B, T, C, NH, 1);
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

void gpt2_gelu_forward_ref(float *out, const float *inp, int64_t N)
{
    // out and inp are (N)
    for (int64_t i = 0; i < N; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

/* 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one exp instead of tanhf, and no
 * cancellation for large negative x. */
DM_SIMD_CLONES
void gpt2_gelu_range(float *out, const float *inp, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + dm_expf(-2.0f * u));
    }
}

#ifdef GPT2_X86
/* gelu_range in AVX-512 intrinsics: the same exp (Cody-Waite split, Cephes
 * polynomial, times 2^n by vscalefps), and the division replaced by a 14-bit
 * reciprocal and one Newton step (relative error about 2^-27): the division was
 * a third of the time. */
__attribute__((target("avx512f"))) void gpt2_gelu_range_avx512(float *out, const float *inp,
                                                                int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(m, inp + i);
        __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
        __m512 t = _mm512_mul_ps(_mm512_set1_ps(-2.0f * GELU_SCALE),
                                 _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
        t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
        __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), t);
        r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
        __m512 p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), one);
        __m512 d = _mm512_add_ps(one, _mm512_scalef_ps(p, k)); /* 1 + exp(t) */
        __m512 q = _mm512_rcp14_ps(d);
        q = _mm512_mul_ps(q, _mm512_fnmadd_ps(d, q, two));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(x, q));
    }
}
#endif

/* gpt2_gelu_forward_ref in chunks of 16384 floats over OpenMP threads, each by
 * range (gelu_range or gelu_range_avx512); out may be inp. */
static void gelu_chunks(const dm_compute *cx, float *out, const float *inp, int64_t N,
                        void (*range)(float *, const float *, int64_t))
{
    // out and inp are (N)
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (int64_t i0 = 0; i0 < N; i0 += 16384)
        range(out + i0, inp + i0, N - i0 < 16384 ? N - i0 : 16384);
}

void gpt2_gelu_cpu(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gelu_chunks(cx, out, inp, N, gpt2_gelu_range);
}

#ifdef GPT2_X86
void gpt2_gelu_avx512(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gelu_chunks(cx, out, inp, N, gpt2_gelu_range_avx512);
}

/* GELU on one finished row of a dm_sgemm tile (its epilogue). */
static void gelu_row_avx512(float *row, int n)
{
    gpt2_gelu_range_avx512(row, row, n);
}
#endif

void gpt2_unembed_forward_ref(float *out, const float *inp, const float *wte, int BT, int C, int V)
{
    // out is (BT, V), inp is (BT, C), wte is (V, C): the tied unembedding
    for (int bt = 0; bt < BT; bt++)
        for (int v = 0; v < V; v++) {
            float s = 0.0f;
            for (int i = 0; i < C; i++)
                s += inp[(size_t)bt * C + i] * wte[(size_t)v * C + i];
            out[(size_t)bt * V + v] = s;
        }
}

void gpt2_unembed_bf16_forward_ref(float *out, const float *inp, const uint16_t *wte, int BT, int C,
                                   int V)
{
    // out is (BT, V), inp is (BT, C), wte is (V, C) bf16: inp rounded to bf16
    // (nearest even) as dm_bgemm rounds it, each product exact in double,
    // summed in double (dm_bgemm_ref's convention)
    for (int bt = 0; bt < BT; bt++)
        for (int v = 0; v < V; v++) {
            double s = 0.0;
            for (int i = 0; i < C; i++)
                s += (double)dm_bf16_to_f32(dm_f32_to_bf16(inp[(size_t)bt * C + i])) *
                     dm_bf16_to_f32(wte[(size_t)v * C + i]);
            out[(size_t)bt * V + v] = (float)s;
        }
}

void gpt2_unembed_blas(const dm_compute *cx, float *out, const float *inp, const float *wte,
                         int BT, int C, int V)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BT, V, C, 1.0f, inp, C, wte, C, 0.0f, out,
                V);
}

void gpt2_residual_forward_ref(float *x, const float *branch, size_t n)
{
    // x and branch are (n): the residual stream x += what a block's half adds
    for (size_t i = 0; i < n; i++)
        x[i] += branch[i];
}

void gpt2_residual_cpu(const dm_compute *cx, float *x, const float *branch, size_t n)
{
#pragma omp parallel for simd schedule(static) if (cx->omp_kernels)
    for (size_t i = 0; i < n; i++)
        x[i] += branch[i];
}

/* ---- backends ------------------------------------------------------------ */

void gpt2_layernorm_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *weight,
                          const float *bias, int BT, int C, float eps)
{
    gpt2_layernorm_forward_ref(out, inp, weight, bias, BT, C, eps);
}

void gpt2_linear_ref_entry(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *w,
                       const float *bias, int BT, int C, int OC, int flags)
{
    if (w->bf16) /* bf16 W (C, OC) unpacked (DM_WEIGHTS_BF16) */
        dm_bgemm_ref(out, OC, inp, C, w->bf16, bias, BT, OC, C, 0, NULL);
    else
        gpt2_matmul_forward_ref(out, inp, w->w, bias, BT, C, OC);
    if (flags & DM_MODEL_GELU)
        gpt2_gelu_forward_ref(out, out, (int64_t)BT * OC);
}

void gpt2_attention_ref_entry(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                          int NH)
{
    gpt2_attention_forward_ref(out, qkv, B, T, C, NH);
}

void gpt2_gelu_ref_entry(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gpt2_gelu_forward_ref(out, inp, N);
}

void gpt2_residual_ref_entry(const dm_compute *cx, float *x, const float *branch, size_t n)
{
    gpt2_residual_forward_ref(x, branch, n);
}

void gpt2_unembed_ref_entry(const dm_compute *cx, float *out, const float *inp, const float *wte,
                        int BT, int C, int V)
{
    gpt2_unembed_forward_ref(out, inp, wte, BT, C, V);
}

void gpt2_unembed_bf16_ref_entry(const dm_compute *cx, float *out, const float *inp,
                                 const uint16_t *wte, int BT, int C, int V)
{
    gpt2_unembed_bf16_forward_ref(out, inp, wte, BT, C, V);
}

void gpt2_linear_cpu(const dm_compute *cx, float *out, const float *inp, const dm_model_weight *w,
                       const float *bias, int BT, int C, int OC, int flags)
{
    matmul_blas(cx, out, inp, w->w, bias, BT, C, OC);
    if (flags & DM_MODEL_GELU)
        gpt2_gelu_cpu(cx, out, out, (int64_t)BT * OC);
}

#ifdef GPT2_X86
void gpt2_linear_avx512(const dm_compute *cx, float *out, const float *inp,
                          const dm_model_weight *w, const float *bias, int BT, int C, int OC,
                          int flags)
{
    dm_sgemm_rowfn fn = flags & DM_MODEL_GELU ? gelu_row_avx512 : NULL;
    if (w->bf16) /* DM_WEIGHTS_BF16: packed by dm_bgemm_pack */
        dm_bgemm(out, OC, inp, C, w->bf16, bias, BT, OC, C, 0, fn);
    else
        dm_sgemm(out, OC, inp, C, w->packed, bias, BT, OC, C, 0, fn);
}

void gpt2_linear_residual_avx512(const dm_compute *cx, float *x, const float *inp,
                                   const dm_model_weight *w, const float *bias, int BT, int C,
                                   int OC)
{
    if (w->bf16)
        dm_bgemm(x, OC, inp, C, w->bf16, bias, BT, OC, C, DM_SGEMM_ACCUMULATE, NULL);
    else
        dm_sgemm(x, OC, inp, C, w->packed, bias, BT, OC, C, DM_SGEMM_ACCUMULATE, NULL);
}

/* The tied unembedding on bf16 weights: wte packed as W (C, V) by
 * dm_bgemm_pack (DM_BGEMM_NK from the (V, C) embedding). */
void gpt2_unembed_bf16_avx512(const dm_compute *cx, float *out, const float *inp,
                              const uint16_t *wte, int BT, int C, int V)
{
    dm_bgemm(out, V, inp, C, wte, NULL, BT, V, C, 0, NULL);
}
#endif


/* ---- the family ------------------------------------------------------------ */

typedef struct {
    float *wte;      // (V, C)  first: the tied unembedding (model.c)
    float *wpe;      // (maxT, C)
    float *ln1w;     // (L, C)
    float *ln1b;     // (L, C)
    float *qkvw;     // (L, C, 3C)  Conv1D: [in, out]
    float *qkvb;     // (L, 3C)
    float *attprojw; // (L, C, C)
    float *attprojb; // (L, C)
    float *ln2w;     // (L, C)
    float *ln2b;     // (L, C)
    float *fcw;      // (L, C, I)  I = n_inner
    float *fcb;      // (L, I)
    float *fcprojw;  // (L, I, C)
    float *fcprojb;  // (L, C)
    float *lnfw;     // (C); NULL unless loaded with DM_MODEL_DEPTH_ALL
    float *lnfb;     // (C)
} gpt2_params;

/* The T_PACK weights in table order, and the family's activation buffers. */
enum { PK_QKV, PK_ATTPROJ, PK_FC, PK_FCPROJ };
enum { A_QKV, A_ATTY, A_FCH };

static int gpt2_read_config(const char *path, json_t *root, dm_model_config *cfg)
{
    json_t *v;
    if (dm_model_cfg_int(path, root, "n_embd", &cfg->n_embd) < 0 ||
        dm_model_cfg_int(path, root, "n_layer", &cfg->n_layer) < 0 ||
        dm_model_cfg_int(path, root, "n_head", &cfg->n_head) < 0 ||
        dm_model_cfg_int(path, root, "n_positions", &cfg->n_positions) < 0 ||
        dm_model_cfg_int(path, root, "vocab_size", &cfg->vocab_size) < 0)
        return -1;
    v = json_object_get(root, "n_inner");
    if (!v || json_is_null(v))
        cfg->n_inner = 4 * cfg->n_embd;
    else if (dm_model_cfg_int(path, root, "n_inner", &cfg->n_inner) < 0)
        return -1;
    v = json_object_get(root, "layer_norm_epsilon");
    if (!v)
        return dm_fail("%s: missing key layer_norm_epsilon", path);
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return dm_fail("%s: layer_norm_epsilon must be a positive number", path);
    cfg->layer_norm_epsilon = (float)json_number_value(v);
    v = json_object_get(root, "activation_function");
    if (!v)
        return dm_fail("%s: missing key activation_function", path);
    if (!json_is_string(v) || strcmp(json_string_value(v), "gelu_new"))
        return dm_fail("%s: activation_function %s is not supported (only gelu_new, GPT-2's)", path,
                       json_is_string(v) ? json_string_value(v) : "(not a string)");
    if (cfg->n_embd % cfg->n_head)
        return dm_fail("%s: n_embd %d is not a multiple of n_head %d", path, cfg->n_embd,
                       cfg->n_head);
    /* Variants of GPT2Config that change the numbers and are not implemented. */
    if (json_is_false(json_object_get(root, "scale_attn_weights")))
        return dm_fail("%s: scale_attn_weights false is not supported", path);
    if (json_is_true(json_object_get(root, "scale_attn_by_inverse_layer_idx")))
        return dm_fail("%s: scale_attn_by_inverse_layer_idx true is not supported", path);
    /* Other families' keys: a GPT-2 has none of them */
    static const char *const foreign[] = {"attn_logit_softcapping", "final_logit_softcapping",
                                          "rope_scaling", "sliding_window", NULL};
    for (int i = 0; foreign[i]; i++)
        if ((v = json_object_get(root, foreign[i])) && !json_is_null(v))
            return dm_fail("%s: %s is not supported by GPT-2 (model_type gpt2)", path, foreign[i]);
    cfg->n_kv_head = cfg->n_head;
    cfg->head_dim = cfg->n_embd / cfg->n_head;
    return 0;
}

static const char *const gpt2_dim_keys[D_COUNT] = {
    [D_C] = "n_embd", [D_3C] = "n_embd", [D_I] = "n_inner", [D_V] = "vocab_size",
    [D_P] = "n_positions", [D_Q] = "n_embd", [D_KV] = "n_embd",
};

static const dm_tensor_spec gpt2_model_tensors[] = {
    {"wte.weight", 2, {D_V, D_C}, offsetof(gpt2_params, wte), T_EMBED},
    {"wpe.weight", 2, {D_P, D_C}, offsetof(gpt2_params, wpe), 0},
    {"ln_f.weight", 1, {D_C}, offsetof(gpt2_params, lnfw), T_FINAL},
    {"ln_f.bias", 1, {D_C}, offsetof(gpt2_params, lnfb), T_FINAL},
};
static const dm_tensor_spec gpt2_block_tensors[] = {
    {"ln_1.weight", 1, {D_C}, offsetof(gpt2_params, ln1w), 0},
    {"ln_1.bias", 1, {D_C}, offsetof(gpt2_params, ln1b), 0},
    {"attn.c_attn.weight", 2, {D_C, D_3C}, offsetof(gpt2_params, qkvw), T_PACK},
    {"attn.c_attn.bias", 1, {D_3C}, offsetof(gpt2_params, qkvb), 0},
    {"attn.c_proj.weight", 2, {D_C, D_C}, offsetof(gpt2_params, attprojw), T_PACK},
    {"attn.c_proj.bias", 1, {D_C}, offsetof(gpt2_params, attprojb), 0},
    {"ln_2.weight", 1, {D_C}, offsetof(gpt2_params, ln2w), 0},
    {"ln_2.bias", 1, {D_C}, offsetof(gpt2_params, ln2b), 0},
    {"mlp.c_fc.weight", 2, {D_C, D_I}, offsetof(gpt2_params, fcw), T_PACK},
    {"mlp.c_fc.bias", 1, {D_I}, offsetof(gpt2_params, fcb), 0},
    {"mlp.c_proj.weight", 2, {D_I, D_C}, offsetof(gpt2_params, fcprojw), T_PACK},
    {"mlp.c_proj.bias", 1, {D_C}, offsetof(gpt2_params, fcprojb), 0},
};
/* the causal-mask buffers GPT2Attention saves beside its weights */
static const char *const gpt2_ignored[] = {"attn.bias", "attn.masked_bias", NULL};

static int gpt2_runs_on(const dm_model_backend *be)
{
    return be->layernorm && be->linear && be->attention && be->residual && be->unembed;
}

static void gpt2_act_sizes(const dm_model_config *c, size_t BT, size_t *sizes)
{
    sizes[A_QKV] = BT * 3 * c->n_embd;
    sizes[A_ATTY] = BT * c->n_embd;
    sizes[A_FCH] = BT * c->n_inner;
}

static void gpt2_embed_part(const dm_model *m, dm_model_hook_kind kind, float *row, int32_t token,
                            int pos)
{
    const gpt2_params *p = m->params;
    size_t C = m->cfg.n_embd;
    const float *e = kind == DM_HOOK_EMBED ? dm_model_embed_row(m, token, row) : p->wpe + (size_t)pos * C;
    if (e != row)
        memcpy(row, e, sizeof(float) * C);
}

/* x (BT, C) = wte[token] + wpe[position] */
static int gpt2_embed(dm_model *m, float *x, const int32_t *tokens, int B, int T)
{
    const gpt2_params *p = m->params;
    const dm_model_device_ops *dev = m->be->dev;
    size_t C = m->cfg.n_embd, BT = (size_t)B * T;
    if (dev) {
        const gpt2_params *d = m->dparams;
        return dev->embed(x, tokens, d->wte, d->wpe, B, T, (int)C) ? DEVICE_FAILED : 0;
    }
#pragma omp parallel for schedule(static) if (m->cx.omp_kernels)
    for (size_t bt = 0; bt < BT; bt++) {
        float *xr = x + bt * C;
        /* the row itself, or (bf16 weights) widened into xr */
        const float *we = dm_model_embed_row(m, tokens[bt], xr), *pe = p->wpe + (bt % T) * C;
        for (size_t i = 0; i < C; i++)
            xr[i] = we[i] + pe[i];
    }
    return 0;
}

/* branch = attn(ln_1(x)) @ c_proj + b; x += branch */
static int gpt2_attn_half(dm_model *m, const void *params, const hook_set *hs, int l)
{
    const gpt2_params *p = params;
    const dm_model_backend *be = m->be;
    const dm_compute *cx = &m->cx;
    dm_model_acts *a = &m->acts;
    const int C = m->cfg.n_embd, BT = hs->B * hs->T;
    dm_model_weight qkvw = dm_model_block_weight(m, p->qkvw, PK_QKV, l, C, 3 * C);
    dm_model_weight attprojw = dm_model_block_weight(m, p->attprojw, PK_ATTPROJ, l, C, C);
    be->layernorm(cx, a->ln, a->x, p->ln1w + (size_t)l * C, p->ln1b + (size_t)l * C, BT, C,
                  m->cfg.layer_norm_epsilon);
    be->linear(cx, a->f[A_QKV], a->ln, &qkvw, p->qkvb + (size_t)l * 3 * C, BT, C, 3 * C, 0);
    be->attention(cx, a->f[A_ATTY], a->f[A_QKV], hs->B, hs->T, C, m->cfg.n_head);
    return dm_model_linear_residual(m, hs, DM_HOOK_ATTN_OUT, l, a->f[A_ATTY], &attprojw,
                                    p->attprojb + (size_t)l * C, BT, C, C);
}

/* branch = gelu(ln_2(x) @ c_fc + b) @ c_proj + b; x += branch */
static int gpt2_mlp_half(dm_model *m, const void *params, const hook_set *hs, int l)
{
    const gpt2_params *p = params;
    const dm_model_backend *be = m->be;
    const dm_compute *cx = &m->cx;
    dm_model_acts *a = &m->acts;
    const int C = m->cfg.n_embd, NI = m->cfg.n_inner, BT = hs->B * hs->T;
    dm_model_weight fcw = dm_model_block_weight(m, p->fcw, PK_FC, l, C, NI);
    dm_model_weight fcprojw = dm_model_block_weight(m, p->fcprojw, PK_FCPROJ, l, NI, C);
    be->layernorm(cx, a->ln, a->x, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, BT, C,
                  m->cfg.layer_norm_epsilon);
    be->linear(cx, a->f[A_FCH], a->ln, &fcw, p->fcb + (size_t)l * NI, BT, C, NI, DM_MODEL_GELU);
    return dm_model_linear_residual(m, hs, DM_HOOK_MLP_OUT, l, a->f[A_FCH], &fcprojw,
                                    p->fcprojb + (size_t)l * C, BT, NI, C);
}

/* ln_final.hook_normalized is LayerNorm without its affine part (fold_ln) */
static void gpt2_final_normalize(dm_model *m, float *out, const float *x, int BT)
{
    m->be->layernorm(&m->cx, out, x, NULL, NULL, BT, m->cfg.n_embd, m->cfg.layer_norm_epsilon);
}

static void gpt2_final_weights(const dm_model *m, float *ln, size_t BT)
{
    const gpt2_params *p = m->params;
    const int C = m->cfg.n_embd;
#pragma omp parallel for schedule(static) if (m->cx.omp_kernels)
    for (size_t bt = 0; bt < BT; bt++)
        for (int i = 0; i < C; i++)
            ln[bt * C + i] = ln[bt * C + i] * p->lnfw[i] + p->lnfb[i];
}

const dm_model_family dm_family_gpt2 = {
    .id = DM_FAMILY_GPT2,
    .type = "gpt2",
    .title = "GPT-2",
    .layernorm = 1,
    .pos_embed = 1,
    .read_config = gpt2_read_config,
    .model_tensors = gpt2_model_tensors,
    .n_model_tensors = sizeof gpt2_model_tensors / sizeof *gpt2_model_tensors,
    .block_tensors = gpt2_block_tensors,
    .n_block_tensors = sizeof gpt2_block_tensors / sizeof *gpt2_block_tensors,
    .ignored = gpt2_ignored,
    .block_prefix = "h.",
    .layer_key = "n_layer",
    .dim_keys = gpt2_dim_keys,
    .params_size = sizeof(gpt2_params),
    .runs_on = gpt2_runs_on,
    .act_sizes = gpt2_act_sizes,
    .embed_part = gpt2_embed_part,
    .embed = gpt2_embed,
    .attn_half = gpt2_attn_half,
    .mlp_half = gpt2_mlp_half,
    .final_normalize = gpt2_final_normalize,
    .final_weights = gpt2_final_weights,
};
