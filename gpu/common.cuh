/*
 * common.cuh: what every file of gpu/ needs: one state per kernel family (its
 * cuBLAS handle, its device buffers, whether it has given up on the GPU), the
 * error rule of cuda_abi.h (a CUDA error is said once, then the family's calls
 * run on the CPU entry), and grid sizes.
 */
#ifndef DM_GPU_COMMON_CUH
#define DM_GPU_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_abi.h"

extern "C" {
#include "compute.h"
}

#define GPU_BUFFERS 12
#define GPU_BF16_A 6 /* buffers gpu_gemm takes for BF16 operands */
#define GPU_BF16_B 7

typedef struct {
    const char *family; /* "the statistics", "FastICA", "GPT-2": for the warning */
    int broken;         /* a CUDA call failed: the CPU entry from now on */
    cublasHandle_t blas;
    void *buf[GPU_BUFFERS];
    size_t cap[GPU_BUFFERS];
} gpu_family;

/* The device copy of host memory [host, host + bytes) while the engine has
 * one hinted (hints.cu), or NULL. */
const void *gpu_hinted(const void *host, size_t bytes);

/* Host rows to device memory dst: copied from their device copy where a hint
 * has one, else from the host. */
void gpu_count_upload(int hinted, size_t bytes);
static cudaError_t gpu_upload(void *dst, const void *host, size_t bytes)
{
    const void *d = gpu_hinted(host, bytes);
    gpu_count_upload(d != NULL, bytes);
    return cudaMemcpy(dst, d ? d : host, bytes, d ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice);
}

/* Records a failed call (once said on stderr); returns -1. */
static int gpu_failed(gpu_family *g, const char *what, const char *err)
{
    if (!g->broken)
        fprintf(stderr, "dmica: warning: CUDA: %s: %s; %s continue on the CPU\n", what, err, g->family);
    g->broken = 1;
    return -1;
}

static int gpu_cu(gpu_family *g, cudaError_t e, const char *what)
{
    return e == cudaSuccess ? 0 : gpu_failed(g, what, cudaGetErrorString(e));
}

static int gpu_bl(gpu_family *g, cublasStatus_t e, const char *what)
{
    return e == CUBLAS_STATUS_SUCCESS ? 0 : gpu_failed(g, what, cublasGetStatusString(e));
}

/* 0 or -1 after a failure, with the call's text as the message */
#define CU(g, call) gpu_cu(g, (call), #call)
#define BL(g, call) gpu_bl(g, (call), #call)

/* 0 when the family may use the GPU: not broken, and its cuBLAS handle made
 * (FP32 and FP64 as written, never TF32: the tests' tolerances). */
static int gpu_ready(gpu_family *g)
{
    if (g->broken)
        return -1;
    if (!g->blas && (BL(g, cublasCreate(&g->blas)) || BL(g, cublasSetMathMode(g->blas, CUBLAS_PEDANTIC_MATH))))
        return -1;
    return 0;
}

/* Device buffer i of the family with room for n bytes (grown, kept for the next call); NULL on failure. */
static void *gpu_buffer(gpu_family *g, int i, size_t n)
{
    if (g->cap[i] < n) {
        cudaFree(g->buf[i]);
        g->buf[i] = NULL;
        g->cap[i] = 0;
        if (CU(g, cudaMalloc(&g->buf[i], n)))
            return NULL;
        g->cap[i] = n;
    }
    return g->buf[i];
}

static unsigned gpu_blocks(long n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Rows one block of gpu_col_sums takes (32 columns by 8 threads of rows). */
#define GPU_COL_ROWS 512

/* One block's column sums of x (rows, d) over its GPU_COL_ROWS rows, those with
 * ok NULL or ok[r] >= 0, in double: with mean NULL the sum of x; else the sums
 * of (x - mean)^2, ^3 and ^4. Into partial (P, nb, d) at [p][blockIdx.x][j],
 * P = 1 or 3, nb = gridDim.x: each thread's rows in order, then the 8 threads
 * in order (reproducible). */
static __global__ void gpu_col_sums(const float *x, long rows, long d, const int *ok, const double *mean,
                                    double *partial)
{
    __shared__ double red[3][8][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    long j = blockIdx.y * 32L + tx, r0 = blockIdx.x * (long)GPU_COL_ROWS, nb = gridDim.x;
    double a1 = 0.0, a2 = 0.0, a3 = 0.0;
    if (j < d) {
        double mu = mean ? mean[j] : 0.0;
        for (long r = r0 + ty; r < r0 + GPU_COL_ROWS && r < rows; r += 8) {
            if (ok && ok[r] < 0)
                continue;
            double c = (double)x[r * d + j] - mu;
            if (mean) {
                double c2 = c * c;
                a1 += c2, a2 += c2 * c, a3 += c2 * c2;
            } else {
                a1 += c;
            }
        }
    }
    red[0][ty][tx] = a1, red[1][ty][tx] = a2, red[2][ty][tx] = a3;
    __syncthreads();
    if (ty || j >= d)
        return;
    for (int t = 1; t < 8; t++)
        a1 += red[0][t][tx], a2 += red[1][t][tx], a3 += red[2][t][tx];
    partial[blockIdx.x * d + j] = a1;
    if (mean) {
        partial[(nb + blockIdx.x) * d + j] = a2;
        partial[(2 * nb + blockIdx.x) * d + j] = a3;
    }
}

/* out[p * d + j] = scale * the sum over blocks, in block order, of partial (P, nb, d). */
static __global__ void gpu_sum_blocks(const double *partial, long nb, long d, int P, double scale, double *out)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= d * P)
        return;
    long p = i / d, j = i % d;
    double s = 0.0;
    for (long b = 0; b < nb; b++)
        s += partial[(p * nb + b) * d + j];
    out[i] = s * scale;
}

/* One pass over the columns of x (rows, d) on the GPU, the n rows with ok NULL
 * or ok[r] >= 0: without mean, their means into out (d); with mean (d), their
 * centred power sums of orders 2, 3, 4 into out (3, d). Blocks of rows summed
 * in double, then in block order (the same result run to run); family buffer
 * buf holds the blocks' sums. 0, or -1 after an error (said). */
static int gpu_column_pass(gpu_family *g, int buf, const float *x, long rows, long d, const int *ok, long n,
                           const double *mean, double *out)
{
    long nb = (rows + GPU_COL_ROWS - 1) / GPU_COL_ROWS;
    int P = mean ? 3 : 1;
    double *part = (double *)gpu_buffer(g, buf, (size_t)(P * nb * d) * sizeof(double));
    if (!part)
        return -1;
    gpu_col_sums<<<dim3((unsigned)nb, (unsigned)((d + 31) / 32)), dim3(32, 8)>>>(x, rows, d, ok, mean, part);
    gpu_sum_blocks<<<gpu_blocks(d * P, 256), 256>>>(part, nb, d, P, mean ? 1.0 : 1.0 / (double)n, out);
    return gpu_cu(g, cudaGetLastError(), "column sums");
}

static __global__ void gpu_to_bf16(__nv_bfloat16 *out, const float *in, long n)
{
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = __float2bfloat16_rn(in[i]);
}

/* An operand of n floats rounded to BF16 (to nearest) in buffer i; NULL on failure. */
static const __nv_bfloat16 *gpu_bf16(gpu_family *g, int i, const float *p, long n)
{
    __nv_bfloat16 *b = (__nv_bfloat16 *)gpu_buffer(g, i, (size_t)n * sizeof(__nv_bfloat16));
    if (!b)
        return NULL;
    gpu_to_bf16<<<gpu_blocks(n, 256), 256>>>(b, p, n);
    return CU(g, cudaGetLastError()) ? NULL : b;
}

/* C (M x N, column-major, FP32) = op(A) op(B), A and B FP32 in device memory
 * (column-major, lda and ldb their leading dimensions), in precision p,
 * always accumulating in FP32:
 *   FP32  cuBLAS's FP32 path with pedantic math (no tensor cores);
 *   TF32  FP32 operands, CUBLAS_COMPUTE_32F_FAST_TF32: rounded to 10 mantissa
 *         bits on the tensor cores;
 *   BF16  the operands rounded to BF16 first (7 mantissa bits; buffers
 *         GPU_BF16_A and _B), then a BF16 x BF16 -> FP32 product. (cuBLAS's
 *         CUBLAS_COMPUTE_32F_FAST_16BF on FP32 operands ran TF32 kernels on an
 *         H200: TF32's bits at TF32's speed.)
 * 0, or -1 after an error (said). */
static int gpu_gemm(gpu_family *g, dm_gemm p, cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K,
                    const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    if (BL(g, cublasSetMathMode(g->blas, p == DM_GEMM_FP32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH)))
        return -1;
    if (p == DM_GEMM_BF16) {
        const __nv_bfloat16 *a = gpu_bf16(g, GPU_BF16_A, A, (long)lda * (ta == CUBLAS_OP_N ? K : M));
        const __nv_bfloat16 *b = a ? gpu_bf16(g, GPU_BF16_B, B, (long)ldb * (tb == CUBLAS_OP_N ? N : K)) : NULL;
        return !b || BL(g, cublasGemmEx(g->blas, ta, tb, M, N, K, &one, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb,
                                        &zero, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT))
                   ? -1
                   : 0;
    }
    return BL(g, cublasGemmEx(g->blas, ta, tb, M, N, K, &one, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &zero, C,
                              CUDA_R_32F, ldc,
                              p == DM_GEMM_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F_PEDANTIC,
                              CUBLAS_GEMM_DEFAULT));
}

#endif
