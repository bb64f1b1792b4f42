/*
 * gpt2.cu: the "cuda" entry of dm_gpt2_backend (operators/kernels/gpt2.h), the
 * kernels of one GPT-2 block, mirroring gpt2.c's table entry for entry, and
 * the device calls (dm_gpt2_device_ops) through which gpt2.c's runner keeps a
 * model's parameters and activations in the GPU's memory for a whole pass.
 *
 * Each entry takes device memory (the runner's buffers, from ops.alloc) or host
 * memory (the tests): an operand in host memory is copied in, a result in host
 * memory copied out (cudaPointerGetAttributes tells them apart), so the tests
 * check the very kernels the runner uses.
 *   layernorm   one block of 256 threads per row: mean and variance by a
 *               shared-memory reduction (float, two passes as the reference);
 *   linear      a cuBLAS GEMM in cx->gemm's precision (FP32 by default with
 *               pedantic math, never TF32 unasked; TF32 or BF16 tensor cores
 *               when asked, FP32 accumulation), then bias and GELU (tanh form,
 *               gelu_new) in one elementwise kernel;
 *   attention   one thread per (batch, position, head): causal scores,
 *               softmax with the running maximum (online: one pass over the
 *               keys, rescaling the sum and the output); head size 64 (GPT-2)
 *               unrolled in registers, others up to 256;
 *   gelu, residual: elementwise; unembed: a GEMM against wte^T;
 *   embed (ops): wte[token] + wpe[position], one thread per value.
 * Tolerances against "ref" are tests/test_gpt2.c's for the fast CPU entries
 * (float32 sums in another order), and there for TF32 and BF16.
 * On a CUDA error: one warning; a call on host memory then runs on the
 * fallback entry (cuda_abi.h); on device memory, ops.status says so and the
 * runner moves the model to the CPU.
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

/* HS > 0: the head size known at compile time (its loops unrolled, the output
 * in registers); HS == 0: C / NH, at most MAX_HS. */
template <int HS> __global__ void attention_kernel(float *out, const float *qkv, int B, int T, int C, int NH)
{
    long idx = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (idx >= (long)B * T * NH)
        return;
    const int hs = HS > 0 ? HS : C / NH;
    int h = (int)(idx % NH), t = (int)(idx / NH % T), b = (int)(idx / NH / T);
    const float *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
    float scale = 1.0f / sqrtf((float)hs), m = -INFINITY, l = 0.0f, acc[HS > 0 ? HS : MAX_HS];
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

__global__ void embed_kernel(float *x, const int *tokens, const float *wte, const float *wpe, long BT, int T, int C)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= BT * C)
        return;
    long bt = i / C;
    int c = (int)(i % C);
    x[i] = wte[(long)tokens[bt] * C + c] + wpe[(long)(bt % T) * C + c];
}

/* ---- operands in device or host memory ------------------------------------------ */

static int on_device(const void *p)
{
    cudaPointerAttributes a;
    if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* an unknown pointer is host memory; clear the error */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* An operand of n floats on the GPU: p itself, or its copy in buffer i; NULL
 * on failure (and for p NULL). */
static const float *operand(int i, const float *p, size_t n)
{
    if (!p || on_device(p))
        return p;
    float *d = buffer(i, n);
    return d && !up(d, p, n) ? d : NULL;
}

/* Where a result of n floats is written on the GPU: p itself, or buffer i. */
static float *result(int i, float *p, size_t n) { return on_device(p) ? p : buffer(i, n); }

/* After the kernels: the result d copied to p when p is host memory. */
static int finish(float *p, const float *d, size_t n)
{
    return CU(&G, cudaGetLastError()) || (p != d && down(p, d, n)) ? -1 : 0;
}

/* y (rows, n) = x (rows, k) @ W (k, n), all row-major, in cx->gemm's precision
 * (gpu_gemm). Row-major y = x W is column-major y' = W' x'. With transW, W is
 * (n, k) and the product x W^T. */
static int gemm(const dm_compute *cx, float *y, const float *x, const float *W, int rows, int k, int n, int transW)
{
    return gpu_gemm(&G, cx->gemm, transW ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, rows, k, W, transW ? k : n,
                    x, k, y, n);
}

/* ---- the entries ------------------------------------------------------------------ */

static int layernorm_gpu(float *out, const float *inp, const float *w, const float *b, int BT, int C, float eps)
{
    const float *dx = operand(0, inp, (size_t)BT * C), *dw = operand(1, w, C), *db = operand(2, b, C);
    float *dy = result(3, out, (size_t)BT * C);
    if (!dx || !dy || (w && !dw) || (b && !db))
        return -1;
    layernorm_kernel<<<BT, 256>>>(dy, dx, dw, db, C, eps);
    return finish(out, dy, (size_t)BT * C);
}

static void layernorm(const dm_compute *cx, float *out, const float *inp, const float *w, const float *b, int BT, int C,
                      float eps)
{
    if ((gpu_ready(&G) || layernorm_gpu(out, inp, w, b, BT, C, eps)) && !on_device(out))
        fallback.layernorm(cx, out, inp, w, b, BT, C, eps);
}

static int linear_gpu(const dm_compute *cx, float *out, const float *inp, const float *W, const float *bias, int BT,
                      int C, int OC, int flags)
{
    const float *dx = operand(0, inp, (size_t)BT * C), *dW = operand(1, W, (size_t)C * OC),
                *db = operand(2, bias, OC);
    float *dy = result(3, out, (size_t)BT * OC);
    if (!dx || !dW || !dy || (bias && !db) || gemm(cx, dy, dx, dW, BT, C, OC, 0))
        return -1;
    if (db || (flags & DM_GPT2_GELU))
        bias_gelu_kernel<<<blocks((long)BT * OC, 256), 256>>>(dy, db, BT, OC, (flags & DM_GPT2_GELU) != 0);
    return finish(out, dy, (size_t)BT * OC);
}

static void linear(const dm_compute *cx, float *out, const float *inp, const dm_gpt2_weight *W, const float *bias,
                   int BT, int C, int OC, int flags)
{
    if ((gpu_ready(&G) || linear_gpu(cx, out, inp, W->w, bias, BT, C, OC, flags)) && !on_device(out))
        fallback.linear(cx, out, inp, W, bias, BT, C, OC, flags);
}

static int attention_gpu(float *out, const float *qkv, int B, int T, int C, int NH)
{
    if (C / NH > MAX_HS) {
        if (!on_device(out))
            return -1; /* not a CUDA error: this call runs on the CPU */
        return gpu_failed(&G, "attention", "head size above 256");
    }
    const float *dq = operand(0, qkv, (size_t)B * T * 3 * C);
    float *dy = result(3, out, (size_t)B * T * C);
    if (!dq || !dy)
        return -1;
    unsigned grid = blocks((long)B * T * NH, 128);
    if (C / NH == 64)
        attention_kernel<64><<<grid, 128>>>(dy, dq, B, T, C, NH);
    else
        attention_kernel<0><<<grid, 128>>>(dy, dq, B, T, C, NH);
    return finish(out, dy, (size_t)B * T * C);
}

static void attention(const dm_compute *cx, float *out, const float *qkv, int B, int T, int C, int NH)
{
    if ((gpu_ready(&G) || attention_gpu(out, qkv, B, T, C, NH)) && !on_device(out))
        fallback.attention(cx, out, qkv, B, T, C, NH);
}

static int gelu_gpu(float *out, const float *inp, int64_t N)
{
    const float *dx = operand(0, inp, (size_t)N);
    float *dy = result(3, out, (size_t)N);
    if (!dx || !dy)
        return -1;
    gelu_kernel<<<blocks(N, 256), 256>>>(dy, dx, N);
    return finish(out, dy, (size_t)N);
}

static void gelu(const dm_compute *cx, float *out, const float *inp, int64_t N)
{
    if ((gpu_ready(&G) || gelu_gpu(out, inp, N)) && !on_device(out))
        fallback.gelu(cx, out, inp, N);
}

static int residual_gpu(float *x, const float *branch, size_t n)
{
    float *dx = (float *)operand(0, x, n); /* x is read and written */
    const float *db = operand(1, branch, n);
    if (!dx || !db)
        return -1;
    residual_kernel<<<blocks((long)n, 256), 256>>>(dx, db, (long)n);
    return finish(x, dx, n);
}

static void residual(const dm_compute *cx, float *x, const float *branch, size_t n)
{
    if ((gpu_ready(&G) || residual_gpu(x, branch, n)) && !on_device(x))
        fallback.residual(cx, x, branch, n);
}

static int unembed_gpu(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT, int C, int V)
{
    const float *dx = operand(0, inp, (size_t)BT * C), *dw = operand(1, wte, (size_t)V * C);
    float *dy = result(3, out, (size_t)BT * V);
    if (!dx || !dw || !dy || gemm(cx, dy, dx, dw, BT, C, V, 1))
        return -1;
    return finish(out, dy, (size_t)BT * V);
}

static void unembed(const dm_compute *cx, float *out, const float *inp, const float *wte, int BT, int C, int V)
{
    if ((gpu_ready(&G) || unembed_gpu(cx, out, inp, wte, BT, C, V)) && !on_device(out))
        fallback.unembed(cx, out, inp, wte, BT, C, V);
}

/* ---- the runner's device calls (dm_gpt2_device_ops) ------------------------------- */

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    return gpu_ready(&G) || CU(&G, cudaMalloc(&p, bytes ? bytes : 1)) ? NULL : p;
}

static void dev_release(void *p) { cudaFree(p); }

static int dev_upload(void *dst, const void *src, size_t bytes)
{
    return G.broken ? -1 : CU(&G, cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static int dev_download(void *dst, const void *src, size_t bytes)
{
    return G.broken ? -1 : CU(&G, cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

static int dev_embed(float *x, const int32_t *tokens, const float *wte, const float *wpe, int B, int T, int C)
{
    size_t BT = (size_t)B * T;
    int *dt = (int *)gpu_buffer(&G, 5, BT * sizeof(int));
    if (gpu_ready(&G) || !dt || CU(&G, cudaMemcpy(dt, tokens, BT * sizeof(int), cudaMemcpyHostToDevice)))
        return -1;
    embed_kernel<<<blocks((long)(BT * C), 256), 256>>>(x, dt, wte, wpe, (long)BT, T, C);
    return CU(&G, cudaGetLastError());
}

static int dev_status(void) { return G.broken ? -1 : 0; }

static const dm_gpt2_device_ops ops = {dev_alloc, dev_release, dev_upload, dev_download, dev_embed, dev_status};

extern "C" int dm_cuda_gpt2_backend(const void *fb, void *out)
{
    fallback = *(const dm_gpt2_backend *)fb;
    dm_gpt2_backend be = {};
    be.name = "cuda";
    be.device = DM_DEVICE_CUDA;
    be.packs = 0;
    be.dev = &ops;
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
