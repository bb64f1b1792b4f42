/*
 * gpt2.cu: the "cuda" entry of dm_gpt2_backend (operators/kernels/gpt2.h), the
 * kernels of one GPT-2 block, mirroring gpt2.c's table entry for entry.
 *
 * This first version keeps the table's interface: every entry takes host
 * pointers, copies its inputs (weights included) to the GPU, computes, and
 * copies its output back. Correct, and slow where the copies dominate; keeping
 * a group's activations on the GPU from model to SAE to statistics is the next
 * step (gpu/README.md).
 *   layernorm   one block of 256 threads per row: mean and variance by a
 *               shared-memory reduction (float, two passes as the reference);
 *   linear      cublasSgemm in FP32 (pedantic math: never TF32), then bias
 *               and GELU (tanh form, gelu_new) in one elementwise kernel;
 *   attention   one thread per (batch, position, head): causal scores,
 *               softmax with the running maximum (online: one pass over the
 *               keys, rescaling the sum and the output), head size at most 256;
 *   gelu, residual: elementwise; unembed: cublasSgemm against wte^T.
 * Tolerances against "ref" are tests/test_gpt2.c's for the fast CPU entries
 * (float32 sums in another order). On a CUDA error: one warning, and the call
 * (and every later one) runs on the fallback entry (cuda_abi.h).
 */
#include <math.h>
#include <stdlib.h>

#include "common.cuh"

extern "C" {
#include "gpt2.h"
}

static dm_gpt2_backend fallback;
static gpu_family G = {"GPT-2's blocks"};

static float *buffer(int i, size_t floats) { return (float *)gpu_buffer(&G, i, floats * sizeof(float)); }
static int up(float *d, const float *h, size_t n) { return CU(&G, cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice)); }
static int down(float *h, const float *d, size_t n) { return CU(&G, cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost)); }
static unsigned blocks(long n, int threads) { return gpu_blocks(n, threads); }

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

/* ---- kernels --------------------------------------------------------------------- */

__global__ void layernorm_kernel(float *out, const float *inp, const float *w, const float *b, int C, float eps)
{
    __shared__ float red[256];
    const float *x = inp + (size_t)blockIdx.x * C;
    float *o = out + (size_t)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        s += x[i];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if (threadIdx.x < k)
            red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    float mean = red[0] / C;
    __syncthreads();
    s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float d = x[i] - mean;
        s += d * d;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if (threadIdx.x < k)
            red[threadIdx.x] += red[threadIdx.x + k];
        __syncthreads();
    }
    float rstd = 1.0f / sqrtf(red[0] / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float v = (x[i] - mean) * rstd;
        o[i] = w ? v * w[i] + (b ? b[i] : 0.0f) : v;
    }
}

__device__ float gelu_new(float x) { return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x))); }

__global__ void bias_gelu_kernel(float *out, const float *bias, long rows, int OC, int gelu)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= rows * OC)
        return;
    float v = out[i] + (bias ? bias[i % OC] : 0.0f);
    out[i] = gelu ? gelu_new(v) : v;
}

__global__ void gelu_kernel(float *out, const float *inp, long n)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = gelu_new(inp[i]);
}

__global__ void residual_kernel(float *x, const float *branch, long n)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += branch[i];
}

#define MAX_HS 256

__global__ void attention_kernel(float *out, const float *qkv, int B, int T, int C, int NH)
{
    long idx = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * NH)
        return;
    int h = (int)(idx % NH), t = (int)(idx / NH % T), b = (int)(idx / NH / T), hs = C / NH;
    const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
    float scale = 1.0f / sqrtf((float)hs), m = -INFINITY, l = 0.0f, acc[MAX_HS];
    for (int i = 0; i < hs; i++)
        acc[i] = 0.0f;
    for (int t2 = 0; t2 <= t; t2++) {
        const float *k = qkv + ((size_t)b * T + t2) * 3 * C + C + h * hs;
        const float *v = k + C;
        float s = 0.0f;
        for (int i = 0; i < hs; i++)
            s += q[i] * k[i];
        s *= scale;
        float m2 = fmaxf(m, s), corr = expf(m - m2), p = expf(s - m2);
        l = l * corr + p;
        for (int i = 0; i < hs; i++)
            acc[i] = acc[i] * corr + p * v[i];
        m = m2;
    }
    float *o = out + ((size_t)b * T + t) * C + h * hs;
    for (int i = 0; i < hs; i++)
        o[i] = acc[i] / l;
}

/* ---- the entries ------------------------------------------------------------------ */

static int layernorm_gpu(float *out, const float *inp, const float *w, const float *b, int BT, int C, float eps)
{
    float *dx = buffer(0, (size_t)BT * C), *dw = buffer(1, (size_t)2 * C);
    if (!dx || !dw || up(dx, inp, (size_t)BT * C) || (w && up(dw, w, C)) || (b && up(dw + C, b, C)))
        return -1;
    layernorm_kernel<<<BT, 256>>>(dx, dx, w ? dw : NULL, b ? dw + C : NULL, C, eps);
    return CU(&G, cudaGetLastError()) || down(out, dx, (size_t)BT * C) ? -1 : 0;
}

static void layernorm(const dm_compute *cx, float *out, const float *inp, const float *w, const float *b, int BT, int C,
                      float eps)
{
    if (gpu_ready(&G) || layernorm_gpu(out, inp, w, b, BT, C, eps))
        fallback.layernorm(cx, out, inp, w, b, BT, C, eps);
}

static int linear_gpu(float *out, const float *inp, const float *W, const float *bias, int BT, int C, int OC, int flags)
{
    float *dx = buffer(0, (size_t)BT * C), *dW = buffer(1, (size_t)C * OC + OC), *dy = buffer(2, (size_t)BT * OC);
    if (!dx || !dW || !dy || up(dx, inp, (size_t)BT * C) || up(dW, W, (size_t)C * OC) ||
        (bias && up(dW + (size_t)C * OC, bias, OC)))
        return -1;
    const float one = 1.0f, zero = 0.0f;
    /* row-major y (BT, OC) = x W is column-major (OC, BT) = W' x', W row-major
     * (C, OC) being column-major (OC, C) and x row-major column-major (C, BT) */
    if (BL(&G, cublasSgemm(G.blas, CUBLAS_OP_N, CUBLAS_OP_N, OC, BT, C, &one, dW, OC, dx, C, &zero, dy, OC)))
        return -1;
    bias_gelu_kernel<<<blocks((long)BT * OC, 256), 256>>>(dy, bias ? dW + (size_t)C * OC : NULL, BT, OC,
                                                           (flags & DM_GPT2_GELU) != 0);
    return CU(&G, cudaGetLastError()) || down(out, dy, (size_t)BT * OC) ? -1 : 0;
}

static void linear(const dm_compute *cx, float *out, const float *inp, const dm_gpt2_weight *W, const float *bias,
                   int BT, int C, int OC, int flags)
{
    if (gpu_ready(&G) || linear_gpu(out, inp, W->w, bias, BT, C, OC, flags))
        fallback.linear(cx, out, inp, W, bias, BT, C, OC, flags);
}

static int attention_gpu(float *out, const float *qkv, int B, int T, int C, int NH)
{
    if (C / NH > MAX_HS)
        return -1; /* not a CUDA error: this call runs on the CPU */
    float *dq = buffer(0, (size_t)B * T * 3 * C), *dout = buffer(2, (size_t)B * T * C);
    if (!dq || !dout || up(dq, qkv, (size_t)B * T * 3 * C))
        return -1;
    attention_kernel<<<blocks((long)B * T * NH, 128), 128>>>(dout, dq, B, T, C, NH);
    return CU(&G, cudaGetLastError()) || down(out, dout, (size_t)B * T * C) ? -1 : 0;
}

static void attention(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C, int NH)
{
    if (gpu_ready(&G) || attention_gpu(out, qkv, B, T, C, NH))
        fallback.attention(cx, out, qkv, B, T, C, NH);
}

static int gelu_gpu(float *out, const float *inp, int64_t N)
{
    float *d = buffer(0, (size_t)N);
    if (!d || up(d, inp, (size_t)N))
        return -1;
    gelu_kernel<<<blocks(N, 256), 256>>>(d, d, N);
    return CU(&G, cudaGetLastError()) || down(out, d, (size_t)N) ? -1 : 0;
}

static void gelu(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    if (gpu_ready(&G) || gelu_gpu(out, inp, N))
        fallback.gelu(cx, out, inp, N);
}

static int residual_gpu(float *x, const float *branch, size_t n)
{
    float *dx = buffer(0, n), *db = buffer(1, n);
    if (!dx || !db || up(dx, x, n) || up(db, branch, n))
        return -1;
    residual_kernel<<<blocks((long)n, 256), 256>>>(dx, db, (long)n);
    return CU(&G, cudaGetLastError()) || down(x, dx, n) ? -1 : 0;
}

static void residual(const dm_compute *cx, float *x, const float *branch, size_t n)
{
    if (gpu_ready(&G) || residual_gpu(x, branch, n))
        fallback.residual(cx, x, branch, n);
}

static int unembed_gpu(float *out, const float *inp, const float *wte, int BT, int C, int V)
{
    float *dx = buffer(0, (size_t)BT * C), *dw = buffer(1, (size_t)V * C), *dy = buffer(2, (size_t)BT * V);
    if (!dx || !dw || !dy || up(dx, inp, (size_t)BT * C) || up(dw, wte, (size_t)V * C))
        return -1;
    const float one = 1.0f, zero = 0.0f;
    /* row-major y (BT, V) = x wte^T is column-major (V, BT) = wte' x': wte
     * row-major (V, C) is column-major (C, V), transposed */
    return BL(&G, cublasSgemm(G.blas, CUBLAS_OP_T, CUBLAS_OP_N, V, BT, C, &one, dw, C, dx, C, &zero, dy, V)) ||
                   down(out, dy, (size_t)BT * V)
               ? -1
               : 0;
}

static void unembed(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT, int C, int V)
{
    if (gpu_ready(&G) || unembed_gpu(out, inp, wte, BT, C, V))
        fallback.unembed(cx, out, inp, wte, BT, C, V);
}

extern "C" int dm_cuda_gpt2_backend(const void *fb, void *out)
{
    fallback = *(const dm_gpt2_backend *)fb;
    dm_gpt2_backend be = {};
    be.name = "cuda";
    be.device = DM_DEVICE_CUDA;
    be.packs = 0;
    be.layernorm = layernorm;
    be.linear = linear;
    be.linear_residual = NULL; /* the runner calls linear, then residual */
    be.attention = attention;
    be.gelu = gelu;
    be.residual = residual;
    be.unembed = unembed;
    *(dm_gpt2_backend *)out = be;
    return 0;
}
