/*
 * gpt2.c: the GPT-2 layer runner (see gpt2.h; the model is Radford et al.,
 * "Language Models are Unsupervised Multitask Learners", 2019, as Hugging Face's
 * modeling_gpt2.py computes it; the hooks and centring are TransformerLens's).
 *
 * Design, after llm.c's train_gpt2.c:
 *   - Parameters live in one float32 allocation (dm_gpt2_params points into it),
 *     converted from the mapped safetensors file at load. Only the blocks the
 *     deepest hook needs are converted; the file is unmapped after loading.
 *   - Activations of one batch (B windows of T tokens, BT = B*T rows) live in a
 *     second allocation owned by the model, grown when a larger batch arrives.
 *     The largest buffer is the MLP hidden layer (BT, n_inner); attention needs
 *     no (B, NH, T, T) tensor, only scores for ATT_ROWS queries at a time.
 *   - The kernels a pass calls come from a backend table (dm_gpt2_backend),
 *     chosen once when the model is loaded, from its compute context:
 *       "ref"         the plain reference kernels (llm.c style loops);
 *       "cpu"         OpenBLAS sgemm on the weights as loaded, attention's
 *                     products in OpenBLAS, vectorised C for the rest;
 *       "cpu-avx512"  the four linear layers (over 95% of the work at GPT-2
 *                     small's shape, T = 128) in dm_sgemm on weights packed
 *                     at load (sgemm.c: one level of Strassen, bias, GELU and
 *                     the residual add fused into its stores, OpenMP
 *                     threads), attention in AVX-512 for head sizes that are
 *                     multiples of 16, GELU in AVX-512 intrinsics;
 *       "cuda"        an empty slot: gpu/ will mirror this file.
 *     LayerNorm, GELU, softmax and the other passes are vectorised (omp simd;
 *     the exp-heavy ones compiled for AVX-512/AVX2 too) and run in OpenMP
 *     threads only when that does not slow OpenBLAS down (the context's
 *     omp_kernels, compute.h).
 *   - Hooks are points in the pass where a caller's callback sees, or edits in
 *     place, the activation (dm_gpt2_run), as TransformerLens's hook points
 *     and ggml's eval callback do; a copy into a caller buffer (with centring)
 *     is the common case and costs what it did before callbacks existed.
 *   - Every fast kernel has a plain reference beside it (the "ref" backend); the
 *     tests compare every backend with it, and the whole model against a
 *     float64 numpy GPT-2 (tools/gpt2_reference.py).
 * The forward pass stops at the deepest requested hook, counted in half blocks
 * (attention half, MLP half), as TransformerLens's stop_at_layer does.
 */
/* Float compares (the clamps of gpt2_expf) may be if-converted and vectorised only
 * when they are not assumed to trap; nothing here uses floating-point exceptions. */
#pragma GCC optimize("no-trapping-math")

#include "gpt2.h"

#include "device.h"

#include "npy.h"
#include "safetensors.h"
#include "sgemm.h"

#include <cblas.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
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

/* The vectorised elementwise kernels are compiled for AVX-512 and AVX2 as well as
 * the baseline, picked at load time (ifunc): the build has no -march. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GPT2_SIMD_CLONES \
    __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GPT2_SIMD_CLONES
#endif

/* Queries per block of attention scores. */
#define ATT_ROWS 64

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
static void layernorm_cpu(const dm_compute *cx, float *out, const float *inp, const float *weight,
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

/*
 * exp(x) in float, vectorisable (no libm call): x = n ln2 + r with |r| <= ln2/2
 * (Cody-Waite split of ln 2), exp(r) by the Cephes expf polynomial (about 1 ulp),
 * times 2^n built in the exponent bits. x is clamped to [-87, 88], where the result
 * stays a normal float.
 */
static inline __attribute__((always_inline)) float gpt2_expf(float x)
{
    union {
        int32_t i;
        float f;
    } pow2n;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    pow2n.i = ((int32_t)n + 127) << 23;
    return p * pow2n.f;
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
GPT2_SIMD_CLONES
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
            s[j] = gpt2_expf(s[j] - maxv);
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

static void attention_cpu(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                          int NH)
{
    attention_cpu_any(cx, out, qkv, B, T, C, NH, 0);
}

static void attention_avx512(const dm_compute *cx, float *out, const float *qkv, int B, int T,
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
GPT2_SIMD_CLONES
static void gelu_range(float *out, const float *inp, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_SCALE * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + gpt2_expf(-2.0f * u));
    }
}

#ifdef GPT2_X86
/* gelu_range in AVX-512 intrinsics: the same exp (Cody-Waite split, Cephes
 * polynomial, times 2^n by vscalefps), and the division replaced by a 14-bit
 * reciprocal and one Newton step (relative error about 2^-27): the division was
 * a third of the time. */
__attribute__((target("avx512f"))) static void gelu_range_avx512(float *out, const float *inp,
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

static void gelu_cpu(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gelu_chunks(cx, out, inp, N, gelu_range);
}

#ifdef GPT2_X86
static void gelu_avx512(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gelu_chunks(cx, out, inp, N, gelu_range_avx512);
}

/* GELU on one finished row of a dm_sgemm tile (its epilogue). */
static void gelu_row_avx512(float *row, int n)
{
    gelu_range_avx512(row, row, n);
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

static void unembed_blas(const dm_compute *cx, float *out, const float *inp, const float *wte,
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

static void residual_cpu(const dm_compute *cx, float *x, const float *branch, size_t n)
{
#pragma omp parallel for simd schedule(static) if (cx->omp_kernels)
    for (size_t i = 0; i < n; i++)
        x[i] += branch[i];
}

/* ---- backends ------------------------------------------------------------ */

static void layernorm_ref(const dm_compute *cx, float *out, const float *inp, const float *weight,
                          const float *bias, int BT, int C, float eps)
{
    gpt2_layernorm_forward_ref(out, inp, weight, bias, BT, C, eps);
}

static void linear_ref(const dm_compute *cx, float *out, const float *inp, const dm_gpt2_weight *w,
                       const float *bias, int BT, int C, int OC, int flags)
{
    gpt2_matmul_forward_ref(out, inp, w->w, bias, BT, C, OC);
    if (flags & DM_GPT2_GELU)
        gpt2_gelu_forward_ref(out, out, (int64_t)BT * OC);
}

static void attention_ref(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C,
                          int NH)
{
    gpt2_attention_forward_ref(out, qkv, B, T, C, NH);
}

static void gelu_ref(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    gpt2_gelu_forward_ref(out, inp, N);
}

static void residual_ref(const dm_compute *cx, float *x, const float *branch, size_t n)
{
    gpt2_residual_forward_ref(x, branch, n);
}

static void unembed_ref(const dm_compute *cx, float *out, const float *inp, const float *wte,
                        int BT, int C, int V)
{
    gpt2_unembed_forward_ref(out, inp, wte, BT, C, V);
}

static void linear_cpu(const dm_compute *cx, float *out, const float *inp, const dm_gpt2_weight *w,
                       const float *bias, int BT, int C, int OC, int flags)
{
    matmul_blas(cx, out, inp, w->w, bias, BT, C, OC);
    if (flags & DM_GPT2_GELU)
        gelu_cpu(cx, out, out, (int64_t)BT * OC);
}

#ifdef GPT2_X86
static void linear_avx512(const dm_compute *cx, float *out, const float *inp,
                          const dm_gpt2_weight *w, const float *bias, int BT, int C, int OC,
                          int flags)
{
    dm_sgemm(out, OC, inp, C, w->packed, bias, BT, OC, C, 0,
             flags & DM_GPT2_GELU ? gelu_row_avx512 : NULL);
}

static void linear_residual_avx512(const dm_compute *cx, float *x, const float *inp,
                                   const dm_gpt2_weight *w, const float *bias, int BT, int C,
                                   int OC)
{
    dm_sgemm(x, OC, inp, C, w->packed, bias, BT, OC, C, DM_SGEMM_ACCUMULATE, NULL);
}
#endif

static const dm_gpt2_backend backend_ref = {
    .name = "ref",
    .device = DM_DEVICE_CPU,
    .layernorm = layernorm_ref,
    .linear = linear_ref,
    .attention = attention_ref,
    .gelu = gelu_ref,
    .residual = residual_ref,
    .unembed = unembed_ref,
};

static const dm_gpt2_backend backend_cpu = {
    .name = "cpu",
    .device = DM_DEVICE_CPU,
    .layernorm = layernorm_cpu,
    .linear = linear_cpu,
    .attention = attention_cpu,
    .gelu = gelu_cpu,
    .residual = residual_cpu,
    .unembed = unembed_blas,
};

#ifdef GPT2_X86
static const dm_gpt2_backend backend_cpu_avx512 = {
    .name = "cpu-avx512",
    .device = DM_DEVICE_CPU,
    .packs = 1,
    .layernorm = layernorm_cpu,
    .linear = linear_avx512,
    .linear_residual = linear_residual_avx512,
    .attention = attention_avx512,
    .gelu = gelu_avx512,
    .residual = residual_cpu,
    .unembed = unembed_blas,
};
#endif

static const dm_gpt2_backend *const backends[DM_GPT2_NBACKENDS] = {
    [DM_GPT2_REF] = &backend_ref,
    [DM_GPT2_CPU] = &backend_cpu,
#ifdef GPT2_X86
    [DM_GPT2_CPU_AVX512] = &backend_cpu_avx512,
#endif
    [DM_GPT2_CUDA] = NULL, /* gpu/gpt2.cu, from libdmica-cuda.so where a GPU is (cuda_backend) */
};

/* The "cuda" entry (gpu/gpt2.cu), loaded once where libdmica-cuda.so sees a
 * GPU (device.h); its fallback on a CUDA error is "cpu" (it packs nothing, as
 * the cuda entry does not). */
static const dm_gpt2_backend *cuda_backend(void)
{
    static dm_gpt2_backend be;
    static int tried, ok;
    if (!tried)
        tried = 1, ok = dm_cuda_fill("dm_cuda_gpt2_backend", &backend_cpu, &be);
    return ok ? &be : NULL;
}

const dm_gpt2_backend *dm_gpt2_backend_get(dm_gpt2_backend_id id)
{
    if ((unsigned)id >= DM_GPT2_NBACKENDS)
        return NULL;
    if (id == DM_GPT2_CPU_AVX512 && !dm_compute_default()->avx512)
        return NULL; /* no AVX-512F on this CPU, or DMICA_NO_AVX512=1 */
    if (id == DM_GPT2_CUDA)
        return cuda_backend();
    return backends[id];
}

const dm_gpt2_backend *dm_gpt2_backend_select(const dm_compute *cx)
{
    const dm_gpt2_backend *be;
    /* the GPU's entry where gpu/ has one; until then GPT-2 runs on the CPU */
    if (cx->device == DM_DEVICE_CUDA && (be = dm_gpt2_backend_get(DM_GPT2_CUDA)))
        return be;
    if (cx->reference)
        return dm_gpt2_backend_get(DM_GPT2_REF);
    if (cx->avx512 && (be = dm_gpt2_backend_get(DM_GPT2_CPU_AVX512)))
        return be;
    return dm_gpt2_backend_get(DM_GPT2_CPU);
}

/* ---- config ------------------------------------------------------------- */

static int cfg_int(const char *path, json_t *root, const char *key, int *out)
{
    json_t *v = json_object_get(root, key);
    if (!v)
        return dm_fail("%s: missing key %s", path, key);
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 24))
        return dm_fail("%s: %s must be a positive integer (at most %d)", path, key, 1 << 24);
    *out = (int)json_integer_value(v);
    return 0;
}

int dm_gpt2_read_config(const char *dir, dm_gpt2_config *cfg)
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
    if (cfg_int(path, root, "n_embd", &cfg->n_embd) < 0 ||
        cfg_int(path, root, "n_layer", &cfg->n_layer) < 0 ||
        cfg_int(path, root, "n_head", &cfg->n_head) < 0 ||
        cfg_int(path, root, "n_positions", &cfg->n_positions) < 0 ||
        cfg_int(path, root, "vocab_size", &cfg->vocab_size) < 0)
        goto end;
    v = json_object_get(root, "n_inner");
    if (!v || json_is_null(v))
        cfg->n_inner = 4 * cfg->n_embd;
    else if (cfg_int(path, root, "n_inner", &cfg->n_inner) < 0)
        goto end;
    v = json_object_get(root, "layer_norm_epsilon");
    if (!v) {
        dm_fail("%s: missing key layer_norm_epsilon", path);
        goto end;
    }
    if (!json_is_number(v) || !(json_number_value(v) > 0)) {
        dm_fail("%s: layer_norm_epsilon must be a positive number", path);
        goto end;
    }
    cfg->layer_norm_epsilon = (float)json_number_value(v);
    v = json_object_get(root, "activation_function");
    if (!v) {
        dm_fail("%s: missing key activation_function", path);
        goto end;
    }
    if (!json_is_string(v) || strcmp(json_string_value(v), "gelu_new")) {
        dm_fail("%s: activation_function %s is not supported (only gelu_new, GPT-2's)", path,
                json_is_string(v) ? json_string_value(v) : "(not a string)");
        goto end;
    }
    if (cfg->n_embd % cfg->n_head) {
        dm_fail("%s: n_embd %d is not a multiple of n_head %d", path, cfg->n_embd, cfg->n_head);
        goto end;
    }
    /* Variants of GPT2Config that change the numbers and are not implemented. */
    if (json_is_false(json_object_get(root, "scale_attn_weights"))) {
        dm_fail("%s: scale_attn_weights false is not supported", path);
        goto end;
    }
    if (json_is_true(json_object_get(root, "scale_attn_by_inverse_layer_idx"))) {
        dm_fail("%s: scale_attn_by_inverse_layer_idx true is not supported", path);
        goto end;
    }
    rc = 0;
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

int dm_gpt2_hook_parse(const char *name, dm_gpt2_hook *out)
{
    for (int k = 0; k <= DM_HOOK_LOSS; k++)
        if (k < (int)(sizeof model_hook_names / sizeof *model_hook_names) && model_hook_names[k] &&
            !strcmp(name, model_hook_names[k])) {
            *out = (dm_gpt2_hook){(dm_gpt2_hook_kind)k, -1};
            return 0;
        }
    if (!strncmp(name, "blocks.", 7) && name[7] >= '0' && name[7] <= '9') {
        char *end;
        errno = 0;
        long L = strtol(name + 7, &end, 10);
        if (!errno && L < INT_MAX && *end == '.' && !(name[7] == '0' && end != name + 8))
            for (int k = DM_HOOK_RESID_PRE; k <= DM_HOOK_RESID_POST; k++)
                if (!strcmp(end + 1, block_hook_names[k])) {
                    *out = (dm_gpt2_hook){(dm_gpt2_hook_kind)k, (int)L};
                    return 0;
                }
    }
    return dm_fail("unknown hook '%s' (known: hook_embed, hook_pos_embed, blocks.L.hook_resid_pre, "
                   "blocks.L.hook_attn_out, blocks.L.hook_resid_mid, blocks.L.hook_mlp_out, "
                   "blocks.L.hook_resid_post, ln_final.hook_normalized, logits, loss)",
                   name);
}

const char *dm_gpt2_hook_name(dm_gpt2_hook h, char *buf, size_t n)
{
    if (h.kind >= DM_HOOK_RESID_PRE && h.kind <= DM_HOOK_RESID_POST)
        snprintf(buf, n, "blocks.%d.%s", h.layer, block_hook_names[h.kind]);
    else
        snprintf(buf, n, "%s", model_hook_names[h.kind]);
    return buf;
}

/* Where the forward pass may stop for h, in half blocks: 2L is the input of block
 * L, 2L+1 after its attention, 2L+2 after its MLP; INT_MAX after ln_f. */
static int hook_stop(dm_gpt2_hook h)
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

int dm_gpt2_hook_depth(dm_gpt2_hook h)
{
    int s = hook_stop(h);
    return s == INT_MAX ? DM_GPT2_DEPTH_ALL : (s + 1) / 2;
}

int dm_gpt2_hooks_depth(const dm_gpt2_hook *hooks, int n)
{
    int depth = 0;
    for (int i = 0; i < n; i++) {
        int d = dm_gpt2_hook_depth(hooks[i]);
        if (d == DM_GPT2_DEPTH_ALL)
            return DM_GPT2_DEPTH_ALL;
        depth = d > depth ? d : depth;
    }
    return depth;
}

int dm_gpt2_hook_is_residual(dm_gpt2_hook h)
{
    return h.kind <= DM_HOOK_RESID_POST;
}

int64_t dm_gpt2_hook_width(const dm_gpt2_config *cfg, dm_gpt2_hook h)
{
    char name[64];
    if (h.layer >= cfg->n_layer || (h.kind >= DM_HOOK_RESID_PRE && h.kind <= DM_HOOK_RESID_POST &&
                                     h.layer < 0))
        return dm_fail("hook %s: the model has %d layers (blocks.0 to blocks.%d)",
                       dm_gpt2_hook_name(h, name, sizeof name), cfg->n_layer, cfg->n_layer - 1);
    if (h.kind == DM_HOOK_LOGITS)
        return cfg->vocab_size;
    if (h.kind == DM_HOOK_LOSS)
        return 1;
    return cfg->n_embd;
}

/* ---- the model ------------------------------------------------------------ */

typedef struct {
    float *wte;      // (V, C)
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
    float *lnfw;     // (C); NULL unless loaded with DM_GPT2_DEPTH_ALL
    float *lnfb;     // (C)
} dm_gpt2_params;

typedef struct {
    float *x;      // (BT, C) the residual stream
    float *ln;     // (BT, C) LayerNorm output
    float *qkv;    // (BT, 3C)
    float *atty;   // (BT, C) attention output before c_proj
    float *branch; // (BT, C) attn_out, then mlp_out
    float *fch;    // (BT, I) MLP hidden layer
    float *logits; // (LOGIT_ROWS, V) when loss is wanted without logits
} dm_gpt2_acts;

/* Rows of logits computed at a time for the loss alone. */
#define LOGIT_ROWS 64

struct dm_gpt2 {
    char *dir;
    dm_gpt2_config cfg;
    int depth;  /* blocks loaded */
    int has_lnf;
    dm_compute cx;             /* the context it was loaded with (a copy) */
    const dm_gpt2_backend *be; /* chosen from cx at load */
    dm_gpt2_params params;
    float *params_memory;
    /* The four weight matrices of every loaded block packed for dm_sgemm (NULL
     * unless the backend packs): layer l's at pk_qkv + l * pk_qkv_n, and so on. */
    float *packed_memory;
    float *pk_qkv, *pk_attproj, *pk_fc, *pk_fcproj;
    size_t pk_qkv_n, pk_attproj_n, pk_fc_n, pk_fcproj_n;
    dm_gpt2_acts acts;
    float *acts_memory;
    size_t acts_rows; /* BT the activations were allocated for */
    /* On a device backend (be->dev): the parameters' copy in its memory
     * (dparams points into it as params into params_memory; acts_memory is
     * there too), and host buffers for what crosses: stage (BT, C) at the hooks
     * and embeddings, stage2 (BT, C) for the position embeddings, logits. */
    float *dparams_memory;
    dm_gpt2_params dparams;
    float *stage, *stage2, *host_logits; /* stage from dev->host_alloc */
    size_t stage_n, stage2_n, host_logits_n;
    /* the hook points' copies in the device's memory (dm_gpt2_device_copy):
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
};

/* Sizes a tensor's shape can name, for the table below and its error messages. */
enum { D_C, D_3C, D_I, D_V, D_P };
static const char *const dim_key[] = {"n_embd", "n_embd", "n_inner", "vocab_size", "n_positions"};

typedef struct {
    const char *name; /* block tensors: after "h.L." */
    int ndim;
    int dims[2];
    size_t field; /* offsetof(dm_gpt2_params, ...) */
} tensor_spec;

static const tensor_spec model_tensors[] = {
    {"wte.weight", 2, {D_V, D_C}, offsetof(dm_gpt2_params, wte)},
    {"wpe.weight", 2, {D_P, D_C}, offsetof(dm_gpt2_params, wpe)},
    {"ln_f.weight", 1, {D_C}, offsetof(dm_gpt2_params, lnfw)},
    {"ln_f.bias", 1, {D_C}, offsetof(dm_gpt2_params, lnfb)},
};
static const tensor_spec block_tensors[] = {
    {"ln_1.weight", 1, {D_C}, offsetof(dm_gpt2_params, ln1w)},
    {"ln_1.bias", 1, {D_C}, offsetof(dm_gpt2_params, ln1b)},
    {"attn.c_attn.weight", 2, {D_C, D_3C}, offsetof(dm_gpt2_params, qkvw)},
    {"attn.c_attn.bias", 1, {D_3C}, offsetof(dm_gpt2_params, qkvb)},
    {"attn.c_proj.weight", 2, {D_C, D_C}, offsetof(dm_gpt2_params, attprojw)},
    {"attn.c_proj.bias", 1, {D_C}, offsetof(dm_gpt2_params, attprojb)},
    {"ln_2.weight", 1, {D_C}, offsetof(dm_gpt2_params, ln2w)},
    {"ln_2.bias", 1, {D_C}, offsetof(dm_gpt2_params, ln2b)},
    {"mlp.c_fc.weight", 2, {D_C, D_I}, offsetof(dm_gpt2_params, fcw)},
    {"mlp.c_fc.bias", 1, {D_I}, offsetof(dm_gpt2_params, fcb)},
    {"mlp.c_proj.weight", 2, {D_I, D_C}, offsetof(dm_gpt2_params, fcprojw)},
    {"mlp.c_proj.bias", 1, {D_C}, offsetof(dm_gpt2_params, fcprojb)},
};
#define N_MODEL_TENSORS (int)(sizeof model_tensors / sizeof *model_tensors)
#define N_BLOCK_TENSORS (int)(sizeof block_tensors / sizeof *block_tensors)

static int64_t dim_size(const dm_gpt2_config *c, int d)
{
    switch (d) {
    case D_C: return c->n_embd;
    case D_3C: return 3 * (int64_t)c->n_embd;
    case D_I: return c->n_inner;
    case D_V: return c->vocab_size;
    default: return c->n_positions;
    }
}

static int64_t spec_numel(const dm_gpt2_config *c, const tensor_spec *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= dim_size(c, s->dims[i]);
    return n;
}

/* Checks t (called name) against spec s: a float dtype and the config's shape. */
static int check_tensor(const char *path, const dm_gpt2_config *c, const char *name,
                        const dm_st_tensor *t, const tensor_spec *s)
{
    int64_t want[2];
    char got_s[128], want_s[128], keys[128];
    size_t k = 0;
    int ok = t->ndim == s->ndim;
    keys[0] = 0;
    for (int i = 0; i < s->ndim; i++) {
        want[i] = dim_size(c, s->dims[i]);
        ok = ok && t->shape[i] == want[i];
        if (!strstr(keys, dim_key[s->dims[i]]) && k < sizeof keys)
            k += snprintf(keys + k, sizeof keys - k, "%s%s %lld", k ? ", " : "",
                          dim_key[s->dims[i]], (long long)dim_size(c, s->dims[i] == D_3C ? D_C : s->dims[i]));
    }
    if (!ok)
        return dm_fail("%s: tensor %s has shape %s, config %s needs %s", path, name,
                       dm_st_shape_str(t->shape, t->ndim, got_s, sizeof got_s), keys,
                       dm_st_shape_str(want, s->ndim, want_s, sizeof want_s));
    if (!dm_st_is_float(t))
        return dm_fail("%s: tensor %s has dtype %s; GPT-2 weights must be F32, F16 or BF16",
                       path, name, t->dtype);
    return 0;
}

/* Finds the spec of a block tensor name "h.L.<suffix>"; *layer gets L. -1 if the
 * name is not of that form; 1 if it is a mask buffer to ignore. */
static int block_tensor(const char *name, int *layer, const tensor_spec **spec)
{
    char *end;
    if (strncmp(name, "h.", 2) || name[2] < '0' || name[2] > '9')
        return -1;
    errno = 0;
    long L = strtol(name + 2, &end, 10);
    if (errno || L > INT_MAX || *end != '.')
        return -1;
    *layer = (int)L;
    for (int i = 0; i < N_BLOCK_TENSORS; i++)
        if (!strcmp(end + 1, block_tensors[i].name)) {
            *spec = &block_tensors[i];
            return 0;
        }
    if (!strcmp(end + 1, "attn.bias") || !strcmp(end + 1, "attn.masked_bias"))
        return 1;
    return -1;
}

/* Checks every tensor of st against cfg: all expected ones present, none unknown. */
static int check_tensors(const char *path, const dm_gpt2_config *c, const dm_safetensors *st)
{
    char name[256];
    for (int i = 0; i < dm_st_count(st); i++) {
        const dm_st_tensor *t = dm_st_at(st, i);
        const tensor_spec *s = NULL;
        int layer, r;
        for (int j = 0; j < N_MODEL_TENSORS; j++)
            if (!strcmp(t->name, model_tensors[j].name))
                s = &model_tensors[j];
        if (s) {
            if (check_tensor(path, c, t->name, t, s) < 0)
                return -1;
            continue;
        }
        if (!strcmp(t->name, "lm_head.weight")) { /* tied to wte: ignored, but must fit */
            static const tensor_spec lm_head = {"lm_head.weight", 2, {D_V, D_C}, 0};
            if (check_tensor(path, c, t->name, t, &lm_head) < 0)
                return -1;
            continue;
        }
        r = block_tensor(t->name, &layer, &s);
        if (r < 0)
            return dm_fail("%s: unexpected tensor %s (not a GPT-2 weight)", path, t->name);
        if (layer >= c->n_layer)
            return dm_fail("%s: unexpected tensor %s: config n_layer %d has blocks h.0 to h.%d",
                           path, t->name, c->n_layer, c->n_layer - 1);
        if (r == 0 && check_tensor(path, c, t->name, t, s) < 0)
            return -1;
    }
    for (int j = 0; j < N_MODEL_TENSORS; j++)
        if (!dm_st_find(st, model_tensors[j].name))
            return dm_fail("%s: missing tensor %s", path, model_tensors[j].name);
    for (int l = 0; l < c->n_layer; l++)
        for (int j = 0; j < N_BLOCK_TENSORS; j++) {
            snprintf(name, sizeof name, "h.%d.%s", l, block_tensors[j].name);
            if (!dm_st_find(st, name))
                return dm_fail("%s: missing tensor %s (config n_layer %d)", path, name,
                               c->n_layer);
        }
    return 0;
}

size_t dm_gpt2_packed_floats(const dm_gpt2_config *c, int depth, const dm_compute *cx)
{
    int C = c->n_embd, NI = c->n_inner;
    const dm_gpt2_backend *be = dm_gpt2_backend_select(cx ? cx : dm_compute_default());
    if (!be || !be->packs)
        return 0;
    return (size_t)depth * (dm_sgemm_packed_floats(C, 3 * C) + dm_sgemm_packed_floats(C, C) +
                            dm_sgemm_packed_floats(C, NI) + dm_sgemm_packed_floats(NI, C));
}

/* Packs each block's four weight matrices for dm_sgemm, when the backend reads them so. */
static void pack_weights(dm_gpt2 *m)
{
    const dm_gpt2_config *c = &m->cfg;
    const dm_gpt2_params *p = &m->params;
    int C = c->n_embd, NI = c->n_inner, L = m->depth;
    size_t total = m->be->packs ? dm_gpt2_packed_floats(c, L, &m->cx) : 0;
    if (!total)
        return;
    m->pk_qkv_n = dm_sgemm_packed_floats(C, 3 * C);
    m->pk_attproj_n = dm_sgemm_packed_floats(C, C);
    m->pk_fc_n = dm_sgemm_packed_floats(C, NI);
    m->pk_fcproj_n = dm_sgemm_packed_floats(NI, C);
    m->packed_memory = dm_xmalloc_huge(sizeof(float) * total);
    m->pk_qkv = m->packed_memory;
    m->pk_attproj = m->pk_qkv + L * m->pk_qkv_n;
    m->pk_fc = m->pk_attproj + L * m->pk_attproj_n;
    m->pk_fcproj = m->pk_fc + L * m->pk_fc_n;
#pragma omp parallel for schedule(dynamic) if (m->cx.omp_kernels)
    for (int l = 0; l < L; l++) {
        dm_sgemm_pack(m->pk_qkv + l * m->pk_qkv_n, p->qkvw + (size_t)l * C * 3 * C, 3 * C, C, 3 * C);
        dm_sgemm_pack(m->pk_attproj + l * m->pk_attproj_n, p->attprojw + (size_t)l * C * C, C, C, C);
        dm_sgemm_pack(m->pk_fc + l * m->pk_fc_n, p->fcw + (size_t)l * C * NI, NI, C, NI);
        dm_sgemm_pack(m->pk_fcproj + l * m->pk_fcproj_n, p->fcprojw + (size_t)l * NI * C, C, NI, C);
    }
}

/* The parameters (total floats) copied to a device backend's memory, and
 * dparams pointing into the copy; -1 when the device cannot take them. */
static int device_params(dm_gpt2 *m, size_t total)
{
    const dm_gpt2_device_ops *dev = m->be->dev;
    if (!(m->dparams_memory = dev->alloc(sizeof(float) * total)) ||
        dev->upload(m->dparams_memory, m->params_memory, sizeof(float) * total))
        return -1;
    float *const *h = (float *const *)&m->params;
    float **d = (float **)&m->dparams;
    for (size_t i = 0; i < sizeof m->params / sizeof(float *); i++)
        d[i] = h[i] ? m->dparams_memory + (h[i] - m->params_memory) : NULL;
    return 0;
}

/* The model off its device backend, onto "cpu" (which packs nothing), after a
 * device error (said by the device) or at dm_gpt2_free: the device's memory
 * released, the activations to be made again in host memory. */
static void leave_device(dm_gpt2 *m)
{
    const dm_gpt2_device_ops *dev = m->be->dev;
    dev->release(m->dparams_memory);
    dev->release(m->acts_memory);
    dev->host_release(m->stage);
    m->stage = NULL, m->stage_n = 0;
    for (int i = 0; i < m->ndcopy; i++)
        dev->release(m->dcopy[i]);
    free(m->dcopy), free(m->dcopy_n), free(m->dcopy_ok);
    m->dcopy = NULL, m->dcopy_n = NULL, m->dcopy_ok = NULL, m->ndcopy = 0;
    m->dparams_memory = m->acts_memory = NULL;
    memset(&m->dparams, 0, sizeof m->dparams);
    memset(&m->acts, 0, sizeof m->acts);
    m->acts_rows = 0;
    m->be = dm_gpt2_backend_get(DM_GPT2_CPU);
}

dm_gpt2 *dm_gpt2_load(const char *dir, int depth, const dm_compute *cx)
{
    return dm_gpt2_load_backend(dir, depth, cx, NULL);
}

dm_gpt2 *dm_gpt2_load_backend(const char *dir, int depth, const dm_compute *cx, const dm_gpt2_backend *be)
{
    dm_gpt2 *m = dm_xcalloc(1, sizeof *m);
    char *path = dm_xasprintf("%s/model.safetensors", dir);
    char name[256];
    dm_safetensors *st = NULL;
    dm_gpt2_config *c = &m->cfg;
    m->dir = dm_xstrdup(dir);
    m->cx = *(cx ? cx : dm_compute_default());
    if (!(m->be = be ? be : dm_gpt2_backend_select(&m->cx))) {
        dm_fail_prefix("%s", dir);
        goto fail;
    }
    if (dm_gpt2_read_config(dir, c) < 0)
        goto fail;
    if (depth < DM_GPT2_DEPTH_ALL) {
        dm_failc(DM_E_INPUT, "%s: bad depth %d", dir, depth);
        goto fail;
    }
    if (depth > c->n_layer) {
        dm_failc(DM_E_INPUT, "%s: %d blocks needed, config n_layer is %d", dir, depth, c->n_layer);
        goto fail;
    }
    m->has_lnf = depth == DM_GPT2_DEPTH_ALL;
    m->depth = m->has_lnf ? c->n_layer : depth;
    if (!(st = dm_st_open(path)) || check_tensors(path, c, st) < 0)
        goto fail;

    /* One allocation: the model tensors, then each block tensor for all loaded layers. */
    size_t total = 0;
    for (int j = 0; j < N_MODEL_TENSORS; j++)
        if (j < 2 || m->has_lnf)
            total += spec_numel(c, &model_tensors[j]);
    for (int j = 0; j < N_BLOCK_TENSORS; j++)
        total += (size_t)m->depth * spec_numel(c, &block_tensors[j]);
    m->params_memory = dm_xmalloc_aligned(sizeof(float) * (total ? total : 1));
    float *p = m->params_memory;
    for (int j = 0; j < N_MODEL_TENSORS; j++) {
        if (j >= 2 && !m->has_lnf)
            continue;
        *(float **)((char *)&m->params + model_tensors[j].field) = p;
        if (dm_st_read_f32(st, dm_st_find(st, model_tensors[j].name), p) < 0)
            goto fail;
        p += spec_numel(c, &model_tensors[j]);
    }
    for (int j = 0; j < N_BLOCK_TENSORS; j++) {
        int64_t n = spec_numel(c, &block_tensors[j]);
        *(float **)((char *)&m->params + block_tensors[j].field) = p;
        for (int l = 0; l < m->depth; l++, p += n) {
            snprintf(name, sizeof name, "h.%d.%s", l, block_tensors[j].name);
            if (dm_st_read_f32(st, dm_st_find(st, name), p) < 0)
                goto fail;
        }
    }
    dm_st_close(st);
    free(path);
    if (m->be->dev && device_params(m, total))
        leave_device(m);
    pack_weights(m);
    return m;
fail:
    dm_st_close(st);
    free(path);
    dm_gpt2_free(m);
    return NULL;
}

void dm_gpt2_free(dm_gpt2 *m)
{
    if (!m)
        return;
    if (m->be && m->be->dev)
        leave_device(m);
    free(m->params_memory);
    free(m->packed_memory);
    free(m->acts_memory);
    free(m->stage2);
    free(m->host_logits);
    free(m->cb_logits);
    free(m->cb_loss);
    free(m->dir);
    free(m);
}

const dm_gpt2_config *dm_gpt2_cfg(const dm_gpt2 *m) { return &m->cfg; }
int dm_gpt2_depth(const dm_gpt2 *m) { return m->has_lnf ? DM_GPT2_DEPTH_ALL : m->depth; }
const dm_gpt2_backend *dm_gpt2_backend_of(const dm_gpt2 *m) { return m->be; }

/* A buffer of at least n floats in *buf (capacity *cap floats), grown as needed. */
static float *scratch(float **buf, size_t *cap, size_t n)
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
static int acts_reserve(dm_gpt2 *m, size_t BT, int want_logits)
{
    const dm_gpt2_config *c = &m->cfg;
    const dm_gpt2_device_ops *dev = m->be->dev;
    size_t C = c->n_embd, NI = c->n_inner;
    size_t logits = want_logits ? (size_t)LOGIT_ROWS * c->vocab_size : 0;
    if (BT <= m->acts_rows && (!want_logits || m->acts.logits))
        return 0;
    BT = BT > m->acts_rows ? BT : m->acts_rows;
    if (dev) { /* the logits of the loss are made in host memory (run_pass) */
        m->acts.logits = logits ? scratch(&m->host_logits, &m->host_logits_n, logits) : m->acts.logits;
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
    size_t sizes[] = {BT * C, BT * C, BT * 3 * C, BT * C, BT * C, BT * NI, logits};
    float **fields[] = {&m->acts.x,    &m->acts.ln,  &m->acts.qkv,   &m->acts.atty,
                        &m->acts.branch, &m->acts.fch, &m->acts.logits};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        total += (sizes[i] + 15) & ~(size_t)15; /* keep each buffer 64-byte aligned */
    m->acts_rows = 0;
    if (!dev)
        m->acts_memory = dm_xmalloc_aligned(sizeof(float) * total);
    else if (!(m->acts_memory = dev->alloc(sizeof(float) * total)))
        return -1;
    float *p = m->acts_memory;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes - (dev != NULL); i++) {
        *fields[i] = sizes[i] ? p : NULL;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    m->acts_rows = BT;
    return 0;
}

/* out (rows, C) = src (rows, C), minus each row's mean over C when center. */
static void hook_copy(const dm_compute *cx, float *out, const float *src, size_t rows, int C,
                      int center)
{
    if (!center) {
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

/* The hook points of one pass. */
typedef struct {
    const dm_gpt2_hook_point *p;
    int n, B, T, center;
} hook_set;

/* 1 if a point is at (kind, layer); with only_fn, a point with a callback. */
static int wants(const hook_set *hs, dm_gpt2_hook_kind kind, int layer, int only_fn)
{
    for (int i = 0; i < hs->n; i++)
        if (hs->p[i].hook.kind == kind && hs->p[i].hook.layer == layer && (!only_fn || hs->p[i].fn))
            return 1;
    return 0;
}

/* The first point at (kind, -1) with a copy, or NULL. */
static float *first_out(const hook_set *hs, dm_gpt2_hook_kind kind)
{
    for (int i = 0; i < hs->n; i++)
        if (hs->p[i].hook.kind == kind && hs->p[i].out)
            return hs->p[i].out;
    return NULL;
}

/* What run_pass returns after a device error (the device has said it). */
#define DEVICE_FAILED (-2)

/* Runs the points at (kind, layer) in their order on x ((B*T, width), the
 * activation itself): each point's callback, then its copy (centred when the
 * pass centres and the hook is residual; none when out is x itself). With
 * on_device, x is in the device backend's memory: the points see its copy in
 * m->stage, copied back after a callback (which may edit it). */
static int run_points(dm_gpt2 *m, const hook_set *hs, dm_gpt2_hook_kind kind, int layer, float *x,
                      int width, int on_device)
{
    const dm_gpt2_device_ops *dev = on_device ? m->be->dev : NULL;
    const size_t rows = (size_t)hs->B * hs->T, bytes = sizeof(float) * rows * width;
    float *h = x;
    int edited = 0;
    char name[64];
    if (dev && !wants(hs, kind, layer, 1)) {
        /* copies only: each made on the device (kept for the point's consumers,
         * dm_gpt2_device_copy), then sent to its out */
        for (int i = 0; i < hs->n; i++) {
            const dm_gpt2_hook_point *pt = &hs->p[i];
            if (pt->hook.kind != kind || pt->hook.layer != layer || !pt->out)
                continue;
            if (m->dcopy_n[i] < rows * width) {
                dev->release(m->dcopy[i]);
                m->dcopy_n[i] = (m->dcopy[i] = dev->alloc(bytes)) ? rows * width : 0;
            }
            if (!m->dcopy[i] ||
                dev->copy_rows(m->dcopy[i], x, rows, width, hs->center && dm_gpt2_hook_is_residual(pt->hook)) ||
                dev->download(pt->out, m->dcopy[i], bytes))
                return DEVICE_FAILED;
            m->dcopy_ok[i] = 1;
        }
        return 0;
    }
    for (int i = 0; i < hs->n; i++) {
        const dm_gpt2_hook_point *pt = &hs->p[i];
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
                dm_gpt2_hook_name(pt->hook, name, sizeof name);
                if (dm_error_code() == DM_OK)
                    return dm_failc(DM_E_INTERNAL, "%s: the callback at hook %s failed without a "
                                    "message", m->dir, name);
                return dm_fail_prefix("%s: hook %s", m->dir, name);
            }
        }
        if (pt->out && pt->out != x)
            hook_copy(&m->cx, pt->out, h, (size_t)hs->B * hs->T, width,
                      hs->center && dm_gpt2_hook_is_residual(pt->hook));
    }
    return dev && edited && dev->upload(x, h, bytes) ? DEVICE_FAILED : 0;
}

/* The embedding hooks copied straight from wte[token] and wpe[position] of each
 * row (no callbacks at them: the embeddings need not be formed apart). */
static void copy_embed(const dm_gpt2 *m, const int32_t *tokens, const hook_set *hs)
{
    int C = m->cfg.n_embd, T = hs->T;
    for (int i = 0; i < hs->n; i++) {
        const dm_gpt2_hook_point *pt = &hs->p[i];
        if ((pt->hook.kind != DM_HOOK_EMBED && pt->hook.kind != DM_HOOK_POS_EMBED) || !pt->out)
            continue;
        for (int bt = 0; bt < hs->B * T; bt++) {
            const float *src = pt->hook.kind == DM_HOOK_EMBED
                                   ? m->params.wte + (size_t)tokens[bt] * C
                                   : m->params.wpe + (size_t)(bt % T) * C;
            hook_copy(&m->cx, pt->out + (size_t)bt * C, src, 1, C, hs->center);
        }
    }
}

/* The residual stream's start: x (BT, C) = wte[token] + wpe[position], with
 * the embedding hooks' points. */
static int embed_forward(dm_gpt2 *m, const int32_t *tokens, const hook_set *hs)
{
    const dm_gpt2_params *p = &m->params;
    const dm_gpt2_device_ops *dev = m->be->dev;
    dm_gpt2_acts *a = &m->acts;
    size_t C = m->cfg.n_embd, BT = (size_t)hs->B * hs->T, T = hs->T;
    if (!wants(hs, DM_HOOK_EMBED, -1, 1) && !wants(hs, DM_HOOK_POS_EMBED, -1, 1)) {
        copy_embed(m, tokens, hs);
        if (dev)
            return dev->embed(a->x, tokens, m->dparams.wte, m->dparams.wpe, hs->B, hs->T, (int)C)
                       ? DEVICE_FAILED
                       : 0;
#pragma omp parallel for schedule(static) if (m->cx.omp_kernels)
        for (size_t bt = 0; bt < BT; bt++) {
            const float *we = p->wte + (size_t)tokens[bt] * C, *pe = p->wpe + (bt % T) * C;
            float *x = a->x + bt * C;
            for (size_t i = 0; i < C; i++)
                x[i] = we[i] + pe[i];
        }
        return 0;
    }
    /* a callback sees (and may edit) each embedding whole: form them apart in
     * two buffers free until the first block (host buffers on a device) */
    float *we = dev ? m->stage : a->branch, *pe = dev ? scratch(&m->stage2, &m->stage2_n, BT * C) : a->ln;
    for (size_t bt = 0; bt < BT; bt++) {
        memcpy(we + bt * C, p->wte + (size_t)tokens[bt] * C, sizeof(float) * C);
        memcpy(pe + bt * C, p->wpe + (bt % T) * C, sizeof(float) * C);
    }
    int rc;
    if ((rc = run_points(m, hs, DM_HOOK_EMBED, -1, we, (int)C, 0)) ||
        (rc = run_points(m, hs, DM_HOOK_POS_EMBED, -1, pe, (int)C, 0)))
        return rc;
    float *x = dev ? we : a->x;
    for (size_t i = 0; i < BT * C; i++)
        x[i] = we[i] + pe[i];
    return dev && dev->upload(a->x, x, sizeof(float) * BT * C) ? DEVICE_FAILED : 0;
}

/* log sum_v exp(l[v]) of one row of logits (V). */
GPT2_SIMD_CLONES
static double logsumexp_row(const float *l, int V)
{
    float maxv = l[0];
#pragma omp simd reduction(max : maxv)
    for (int v = 1; v < V; v++)
        maxv = l[v] > maxv ? l[v] : maxv;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; v++)
        sum += gpt2_expf(l[v] - maxv);
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

/* Layer l's packed matrix in the packed array base (NULL when nothing is packed). */
static const float *pk(const float *base, int l, size_t n)
{
    return base ? base + (size_t)l * n : NULL;
}

/* One half block's output into the residual stream: x += inp (BT, C) @ W + b
 * (width OC = n_embd). When a point is at the branch's hook (kind, l) the branch
 * is formed in acts.branch and its points run on it (an edit changes what is
 * added); otherwise a backend with linear_residual adds it straight into x. */
static int residual_half(dm_gpt2 *m, const hook_set *hs, dm_gpt2_hook_kind kind, int l,
                         const float *inp, const dm_gpt2_weight *W, const float *b, int BT, int C,
                         int OC)
{
    const dm_gpt2_backend *be = m->be;
    if (be->linear_residual && !wants(hs, kind, l, 0)) {
        be->linear_residual(&m->cx, m->acts.x, inp, W, b, BT, C, OC);
        return 0;
    }
    be->linear(&m->cx, m->acts.branch, inp, W, b, BT, C, OC, 0);
    int rc = run_points(m, hs, kind, l, m->acts.branch, OC, be->dev != NULL);
    if (rc)
        return rc;
    be->residual(&m->cx, m->acts.x, m->acts.branch, (size_t)BT * OC);
    return 0;
}

int dm_gpt2_hook_is_editable(dm_gpt2_hook h)
{
    return dm_gpt2_hook_is_residual(h) || h.kind == DM_HOOK_LN_FINAL;
}

/* Checks the points against the model; *stop gets the deepest one's half block. */
static int check_points(const dm_gpt2 *m, const dm_gpt2_hook_point *points, int n, int *stop)
{
    const dm_gpt2_config *c = &m->cfg;
    char name[64];
    *stop = 0;
    for (int i = 0; i < n; i++) {
        dm_gpt2_hook h = points[i].hook;
        if (dm_gpt2_hook_width(c, h) < 0)
            return dm_fail_prefix("%s", m->dir);
        dm_gpt2_hook_name(h, name, sizeof name);
        int d = dm_gpt2_hook_depth(h);
        if ((d == DM_GPT2_DEPTH_ALL && !m->has_lnf) || d > m->depth)
            return dm_failc(DM_E_INPUT, "%s: hook %s needs %s; the model was loaded with %d blocks",
                            m->dir, name,
                            d == DM_GPT2_DEPTH_ALL ? "every block and ln_f" : "more blocks",
                            m->depth);
        if (points[i].mode != DM_GPT2_OBSERVE && points[i].mode != DM_GPT2_EDIT)
            return dm_failc(DM_E_INTERNAL, "%s: hook %s: mode %d is neither observe nor edit",
                            m->dir, name, (int)points[i].mode);
        if (points[i].mode == DM_GPT2_EDIT && !points[i].fn)
            return dm_failc(DM_E_INTERNAL, "%s: hook %s: an edit without a callback", m->dir,
                            name);
        if (points[i].mode == DM_GPT2_EDIT && !dm_gpt2_hook_is_editable(h))
            return dm_failc(DM_E_INPUT, "%s: hook %s cannot be edited: nothing in the model "
                            "reads it (edit ln_final.hook_normalized or a residual hook)",
                            m->dir, name);
        int s = hook_stop(h);
        *stop = s > *stop ? s : *stop;
    }
    return 0;
}

/* One pass of dm_gpt2_run on m's backend: 0, -1 (an error, said), or
 * DEVICE_FAILED. On a device backend the blocks read the parameters' copy
 * there; what a hook sees crosses through run_points. */
static int run_pass(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook_point *points,
                    int npoints, int center, int stop, int from, const float *x0)
{
    const dm_gpt2_config *c = &m->cfg;
    const dm_gpt2_backend *be = m->be;
    const dm_gpt2_device_ops *dev = be->dev;
    const dm_gpt2_params *p = dev ? &m->dparams : &m->params;
    const dm_compute *cx = &m->cx;
    const int C = c->n_embd, NI = c->n_inner, V = c->vocab_size, NH = c->n_head, D = dev != NULL;
    float eps = c->layer_norm_epsilon;
    hook_set hs = {points, npoints, B, T, center};
    int want_logits = wants(&hs, DM_HOOK_LOGITS, -1, 0), want_loss = wants(&hs, DM_HOOK_LOSS, -1, 0), rc;
    size_t BT = (size_t)B * T;
    if (acts_reserve(m, BT, want_loss && !want_logits))
        return DEVICE_FAILED;
    dm_gpt2_acts *a = &m->acts;
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

    if (x0 && dev ? dev->upload(a->x, x0, sizeof(float) * BT * C) : 0)
        return DEVICE_FAILED;
    if (x0 && !dev)
        memcpy(a->x, x0, sizeof(float) * BT * C);
    if (!x0 && (rc = embed_forward(m, tokens, &hs)))
        return rc;
    for (int l = x0 ? from : 0; l < c->n_layer && 2 * l <= stop; l++) {
        if ((rc = run_points(m, &hs, DM_HOOK_RESID_PRE, l, a->x, C, D)))
            return rc;
        if (stop == 2 * l)
            break;
        dm_gpt2_weight qkvw = {p->qkvw + (size_t)l * C * 3 * C, pk(m->pk_qkv, l, m->pk_qkv_n)};
        dm_gpt2_weight attprojw = {p->attprojw + (size_t)l * C * C,
                                   pk(m->pk_attproj, l, m->pk_attproj_n)};
        dm_gpt2_weight fcw = {p->fcw + (size_t)l * C * NI, pk(m->pk_fc, l, m->pk_fc_n)};
        dm_gpt2_weight fcprojw = {p->fcprojw + (size_t)l * NI * C,
                                  pk(m->pk_fcproj, l, m->pk_fcproj_n)};
        // attention half: branch = attn(ln_1(x)) @ c_proj + b; x += branch
        be->layernorm(cx, a->ln, a->x, p->ln1w + (size_t)l * C, p->ln1b + (size_t)l * C, (int)BT,
                      C, eps);
        be->linear(cx, a->qkv, a->ln, &qkvw, p->qkvb + (size_t)l * 3 * C, (int)BT, C, 3 * C, 0);
        be->attention(cx, a->atty, a->qkv, B, T, C, NH);
        if ((rc = residual_half(m, &hs, DM_HOOK_ATTN_OUT, l, a->atty, &attprojw,
                                p->attprojb + (size_t)l * C, (int)BT, C, C)) ||
            (rc = run_points(m, &hs, DM_HOOK_RESID_MID, l, a->x, C, D)))
            return rc;
        if (stop == 2 * l + 1)
            break;
        // MLP half: branch = gelu(ln_2(x) @ c_fc + b) @ c_proj + b; x += branch
        be->layernorm(cx, a->ln, a->x, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, (int)BT,
                      C, eps);
        be->linear(cx, a->fch, a->ln, &fcw, p->fcb + (size_t)l * NI, (int)BT, C, NI, DM_GPT2_GELU);
        if ((rc = residual_half(m, &hs, DM_HOOK_MLP_OUT, l, a->fch, &fcprojw,
                                p->fcprojb + (size_t)l * C, (int)BT, NI, C)) ||
            (rc = run_points(m, &hs, DM_HOOK_RESID_POST, l, a->x, C, D)))
            return rc;
        if (dev && dev->status())
            return DEVICE_FAILED;
    }
    if (stop != INT_MAX)
        return dev && dev->status() ? DEVICE_FAILED : 0;

    // ln_final.hook_normalized is LayerNorm without its affine part (fold_ln)
    be->layernorm(cx, a->ln, a->x, NULL, NULL, (int)BT, C, eps);
    if ((rc = run_points(m, &hs, DM_HOOK_LN_FINAL, -1, a->ln, C, D)))
        return rc;
    if (!want_logits && !want_loss)
        return dev && dev->status() ? DEVICE_FAILED : 0;
    /* ln_f's affine part, in host memory (on a device: a copy, sent back) */
    float *ln = dev ? m->stage : a->ln;
    if (dev && dev->download(ln, a->ln, sizeof(float) * BT * C))
        return DEVICE_FAILED;
#pragma omp parallel for schedule(static) if (cx->omp_kernels)
    for (size_t bt = 0; bt < BT; bt++)
        for (int i = 0; i < C; i++)
            ln[bt * C + i] = ln[bt * C + i] * m->params.lnfw[i] + m->params.lnfb[i];
    if (dev && dev->upload(a->ln, ln, sizeof(float) * BT * C))
        return DEVICE_FAILED;
    /* logits and loss go straight into the first copy asked for, else into
     * the model's own buffers for the callbacks (host memory on a device too:
     * unembed copies its result out) */
    float *loss = NULL;
    if (want_loss && !(loss = first_out(&hs, DM_HOOK_LOSS)))
        loss = scratch(&m->cb_loss, &m->cb_loss_n, BT);
    if (want_logits) {
        float *logits = first_out(&hs, DM_HOOK_LOGITS);
        if (!logits)
            logits = scratch(&m->cb_logits, &m->cb_logits_n, BT * V);
        be->unembed(cx, logits, a->ln, p->wte, (int)BT, C, V);
        if (dev && dev->status())
            return DEVICE_FAILED;
        if (loss)
            loss_forward(cx, loss, logits, tokens, 0, (int)BT, T, V);
        if ((rc = run_points(m, &hs, DM_HOOK_LOGITS, -1, logits, V, 0)))
            return rc;
    } else {
        for (size_t bt0 = 0; bt0 < BT; bt0 += LOGIT_ROWS) {
            int rows = (int)(BT - bt0 < LOGIT_ROWS ? BT - bt0 : LOGIT_ROWS);
            be->unembed(cx, a->logits, a->ln + bt0 * C, p->wte, rows, C, V);
            if (dev && dev->status())
                return DEVICE_FAILED;
            loss_forward(cx, loss, a->logits, tokens, (int)bt0, rows, T, V);
        }
    }
    return loss ? run_points(m, &hs, DM_HOOK_LOSS, -1, loss, 1, 0) : 0;
}

/* dm_gpt2_run (x0 NULL) or dm_gpt2_run_from (x0 at blocks.<from>.hook_resid_pre). */
static int run_model(dm_gpt2 *m, int from, const float *x0, const int32_t *tokens, int B, int T,
                     const dm_gpt2_hook_point *points, int npoints, int center)
{
    const dm_gpt2_config *c = &m->cfg;
    int V = c->vocab_size, stop;
    char name[64];
    if (x0 && (from < 0 || from >= m->depth))
        return dm_failc(DM_E_INPUT, "%s: a run from blocks.%d.hook_resid_pre: the model has %d blocks loaded",
                        m->dir, from, m->depth);
    for (int i = 0; x0 && i < npoints; i++) {
        dm_gpt2_hook h = points[i].hook;
        if (h.kind == DM_HOOK_EMBED || h.kind == DM_HOOK_POS_EMBED || (h.layer >= 0 && h.layer < from))
            return dm_failc(DM_E_INPUT, "%s: hook %s is before blocks.%d.hook_resid_pre, where the run starts",
                            m->dir, dm_gpt2_hook_name(h, name, sizeof name), from);
    }
    if (B <= 0 || T <= 0)
        return dm_failc(DM_E_INPUT, "%s: empty batch (%d windows of %d tokens)", m->dir, B, T);
    if (T > c->n_positions)
        return dm_failc(DM_E_INPUT, "%s: windows of %d tokens are longer than n_positions %d",
                        m->dir, T, c->n_positions);
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

int dm_gpt2_run(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook_point *points,
                int npoints, int center)
{
    return run_model(m, 0, NULL, tokens, B, T, points, npoints, center);
}

int dm_gpt2_run_from(dm_gpt2 *m, int layer, const float *x, const int32_t *tokens, int B, int T,
                     const dm_gpt2_hook_point *points, int npoints, int center)
{
    return run_model(m, layer, x, tokens, B, T, points, npoints, center);
}

const float *dm_gpt2_device_copy(const dm_gpt2 *m, int i)
{
    return m->be->dev && i >= 0 && i < m->ndcopy && m->dcopy_ok[i] ? m->dcopy[i] : NULL;
}

int dm_gpt2_forward(dm_gpt2 *m, const int32_t *tokens, int B, int T, const dm_gpt2_hook *hooks,
                    int nhooks, float **outs, int center)
{
    dm_gpt2_hook_point stack[64] = {0};
    dm_gpt2_hook_point *pts = nhooks <= 64 ? stack : dm_xmalloc(sizeof *pts * (size_t)nhooks);
    for (int i = 0; i < nhooks; i++)
        pts[i] = (dm_gpt2_hook_point){.hook = hooks[i], .out = outs[i]};
    int rc = dm_gpt2_run(m, tokens, B, T, pts, nhooks, center);
    if (pts != stack)
        free(pts);
    return rc;
}
