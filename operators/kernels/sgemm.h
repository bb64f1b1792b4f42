/*
 * sgemm.h: C = A @ W for a constant weight matrix W, packed once.
 *
 * The GPT-2 runner's four linear layers (and the SAE's encoder) multiply
 * activations A (M, K) by weights W (K, N) that never change, so W is packed once
 * at load into column panels of DM_SGEMM_NR (the layout the micro-kernel reads)
 * instead of on every call as a general sgemm must; when K and N are even, as
 * the seven matrices of one level of Strassen (7/8 of the multiply-adds;
 * sgemm.c explains, and DMICA_SGEMM_CLASSIC=1 turns it off). The epilogue is
 * fused: the bias is added as the result is
 * stored, the result can be added into C (a residual stream) instead of
 * overwriting it, and a row function (GELU) can run on each tile while it is
 * still in L1. An AVX-512 micro-kernel (12 x 32 tile, BLIS-style blocking) does
 * the work; on CPUs without AVX-512F (or with DMICA_NO_AVX512=1) a plain C
 * micro-kernel does, correct but slow: dm_sgemm_available() is then 0 and the
 * runners use OpenBLAS with the unpacked weights instead. dm_sgemm_ref is the
 * plain loop both are tested against.
 *
 * The switches come from the process's compute context (compute.h,
 * dm_compute_default: avx512 and strassen, read from the environment once), so
 * the packed layout is the same when W is packed and when it is multiplied.
 */
#ifndef DM_SGEMM_H
#define DM_SGEMM_H

#include <stddef.h>

#define DM_SGEMM_NR 32

enum {
    DM_SGEMM_ACCUMULATE = 1, /* C += A @ W + bias instead of C = A @ W + bias */
};

/* Row function run on every finished row segment of C (in place), e.g. GELU. */
typedef void (*dm_sgemm_rowfn)(float *row, int n);

/* 1 when dm_sgemm runs its AVX-512 micro-kernel (dm_compute_default()->avx512:
 * the CPU has AVX-512F and DMICA_NO_AVX512 is unset); 0 when it would run the
 * plain C one, where callers are faster with OpenBLAS (make test-unit runs the
 * GPT-2, SAE and sgemm tests that way too). */
int dm_sgemm_available(void);
/* Floats of W (K, N) once packed: N rounded up to DM_SGEMM_NR, times K. */
size_t dm_sgemm_packed_floats(int K, int N);
/* Packs W (K, N), row-major with row stride ldw, into dst (dm_sgemm_packed_floats,
 * 64-byte aligned). */
void dm_sgemm_pack(float *dst, const float *W, int ldw, int K, int N);
/* C (M, N; row stride ldc) = A (M, K; row stride lda) @ W + bias (N, or NULL),
 * or += with DM_SGEMM_ACCUMULATE, then fn on each row of C when fn is given
 * (not with DM_SGEMM_ACCUMULATE). Wp from dm_sgemm_pack. OpenMP threads over
 * rows of M. Runs on any CPU (fast where dm_sgemm_available()). */
void dm_sgemm(float *C, int ldc, const float *A, int lda, const float *Wp, const float *bias,
              int M, int N, int K, int flags, dm_sgemm_rowfn fn);
/* The plain triple loop of the same contract, W unpacked (K, N). */
void dm_sgemm_ref(float *C, int ldc, const float *A, int lda, const float *W, const float *bias,
                  int M, int N, int K, int flags, dm_sgemm_rowfn fn);

#endif
