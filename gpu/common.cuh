/*
 * common.cuh: what every file of gpu/ needs: one state per kernel family (its
 * cuBLAS handle, its device buffers, whether it has given up on the GPU), the
 * error rule of cuda_abi.h (a CUDA error is said once, then the family's calls
 * run on the CPU entry), and grid sizes.
 */
#ifndef DM_GPU_COMMON_CUH
#define DM_GPU_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_abi.h"

#define GPU_BUFFERS 6

typedef struct {
    const char *family; /* "the statistics", "FastICA", "GPT-2": for the warning */
    int broken;         /* a CUDA call failed: the CPU entry from now on */
    cublasHandle_t blas;
    void *buf[GPU_BUFFERS];
    size_t cap[GPU_BUFFERS];
} gpu_family;

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

#endif
