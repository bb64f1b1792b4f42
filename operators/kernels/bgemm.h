/*
 * bgemm.h: C = A @ W for a constant bfloat16 weight matrix W, packed once.
 *
 * The bf16 counterpart of sgemm.h, for models whose weights are stored in
 * bfloat16 (Gemma 2): W stays bf16 in memory (half the bytes of float32), the
 * activations A stay float32 and are rounded to bf16 as they are packed, and
 * the products are summed in float32. dm_bgemm has dm_sgemm's contract (row
 * strides, bias, DM_SGEMM_ACCUMULATE, a row function run on each finished row),
 * so a runner switches between the two by the packed matrix it holds; the
 * float32 path is dm_sgemm itself.
 *
 * W is packed once at load into column panels of DM_BGEMM_NR columns, each
 * holding pairs of consecutive k interleaved per column (the operand layout of
 * the AVX-512 BF16 dot product VDPBF16PS, which multiplies two bf16 pairs and
 * adds both products into one float32 lane); an odd K is padded with a zero
 * row. The packers read W as stored in a file: bf16 (little-endian uint16, as
 * in safetensors; any alignment) or float32 (rounded to nearest even), and in
 * either of the two layouts weights come in.
 *
 * For example, a Hugging Face Linear weight (out, in) = (N, K) in bf16, read
 * from a safetensors file at p:
 *     uint16_t *Wp = dm_xmalloc_aligned(2 * dm_bgemm_packed_size(K, N));
 *     dm_bgemm_pack(Wp, p, K, K, N, DM_BGEMM_NK);
 *     dm_bgemm(y, N, x, K, Wp, NULL, M, N, K, 0, NULL);    y = x W^T
 *
 * Kernels (bgemm.c): where the compute context's avx512_bf16 is set (the CPU
 * has AVX-512F and AVX-512 BF16, DMICA_NO_AVX512 and DMICA_NO_AVX512_BF16
 * unset), an AVX-512 BF16 micro-kernel; elsewhere a plain C micro-kernel that
 * widens both bf16 operands to float32 and sums the same products: correct on
 * any CPU and slow (dm_bgemm_available() is 0; a runner is then faster with
 * its float32 path: widen W to float32 once and use dm_sgemm or OpenBLAS).
 *
 * Accuracy: bf16 keeps 8 significant bits, so rounding A to nearest costs a
 * relative error of at most 2^-8 per product (W is taken as exact: it is the
 * model's own bf16); summed, |C - A W| <= 2^-8 sum_k |a_k w_k| plus the
 * float32 accumulation error. tests/test_bgemm.c states the tolerances it checks.
 */
#ifndef DM_BGEMM_H
#define DM_BGEMM_H

#include "sgemm.h" /* dm_sgemm_rowfn, DM_SGEMM_ACCUMULATE */

#include <stddef.h>
#include <stdint.h>

#define DM_BGEMM_NR 32

/* Where W's element (k, j), k < K (inputs), j < N (outputs), is read. */
enum {
    DM_BGEMM_KN = 0, /* W[k * ldw + j]: (K, N) row-major, GPT-2's Conv1D weights */
    DM_BGEMM_NK = 1, /* W[j * ldw + k]: (N, K) row-major, torch.nn.Linear's (out, in)
                        weights, and a tied embedding (vocab, d_model) used as the
                        unembedding */
};

/* 1 when dm_bgemm runs its AVX-512 BF16 micro-kernel (the compute context's
 * avx512_bf16); 0 when it would run the plain C one. */
int dm_bgemm_available(void);
/* bf16 values of W (K, N) once packed: N rounded up to DM_BGEMM_NR, times K
 * rounded up to even (2 bytes each). */
size_t dm_bgemm_packed_size(int K, int N);
/* Packs W (K, N) of bf16 values (little-endian uint16, any alignment) laid out
 * as layout says with row stride ldw (in elements), into dst
 * (dm_bgemm_packed_size values, 64-byte aligned). OpenMP threads over panels. */
void dm_bgemm_pack(uint16_t *dst, const void *W, int ldw, int K, int N, int layout);
/* The same from float32 values, each rounded to the nearest bf16 (ties to
 * even; NaN stays NaN). */
void dm_bgemm_pack_f32(uint16_t *dst, const float *W, int ldw, int K, int N, int layout);
/* C (M, N; row stride ldc) = A (M, K; row stride lda) @ W + bias (N, or NULL),
 * or += with DM_SGEMM_ACCUMULATE, then fn on each row of C when fn is given
 * (not with DM_SGEMM_ACCUMULATE). Wp from dm_bgemm_pack or dm_bgemm_pack_f32.
 * A is rounded to bf16 (nearest even) as it is read; the products are summed
 * in float32. OpenMP threads over rows of M, or over columns when M is too
 * small to give each thread rows. Runs on any CPU (fast where
 * dm_bgemm_available()). */
void dm_bgemm(float *C, int ldc, const float *A, int lda, const uint16_t *Wp, const float *bias,
              int M, int N, int K, int flags, dm_sgemm_rowfn fn);
/* The plain triple loop of the same contract, W unpacked (K, N) bf16 with row
 * stride N: bf16(A) x W, each product exact in double, summed in double,
 * rounded to float once. */
void dm_bgemm_ref(float *C, int ldc, const float *A, int lda, const uint16_t *W, const float *bias,
                  int M, int N, int K, int flags, dm_sgemm_rowfn fn);

#endif
