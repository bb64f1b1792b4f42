/*
 * cuda_abi.h: what libdmica-cuda.so (the .cu files of gpu/) offers the CPU build (a plain C interface: no
 * CUDA header is needed to use it).
 *
 * `make` builds the .cu files of gpu/ into build/libdmica-cuda.so whenever nvcc is present.
 * bin/dmica never links it: engine/base/device.c opens it with dlopen when a
 * run asks for the GPU (--device cuda|auto), so the same binary starts on
 * machines without a GPU, without a driver, or without the library, and then
 * runs on the CPU after a one-line notice.
 *
 * Each kernel family of operators/kernels/ has its file here (stats.h ->
 * gpu/stats.cu, ...) and an entry point that fills the family's backend table
 * with the CUDA entry. An entry takes and returns host memory, as the CPU
 * entries do; on a CUDA error it says so once on stderr and computes that call
 * (and every later one) with the fallback entry it was given, so a run never
 * loses data to a GPU failure.
 */
#ifndef DM_CUDA_ABI_H
#define DM_CUDA_ABI_H

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version of this interface: the loader refuses another. */
#define DM_CUDA_ABI 2

/* Symbols the library exports (looked up by name with dlsym): */

/* int dm_cuda_abi(void): DM_CUDA_ABI. */
typedef int (*dm_cuda_abi_fn)(void);
/* int dm_cuda_probe(char *name, int len): the number of CUDA devices (0: none
 * or no driver); the first one's name into name. Never fails otherwise. */
typedef int (*dm_cuda_probe_fn)(char *name, int len);
/* One per kernel family, int NAME(const void *fallback, void *out): fills out
 * (the family's backend table) with the "cuda" entry, which falls back to
 * `fallback` (a table of the same type) on a CUDA error; 0, or -1:
 *   dm_cuda_stats_backend   dm_stats_backend (stats.h)
 *   dm_cuda_ica_backend     dm_ica_backend (fastica.h)
 *   dm_cuda_model_backend   dm_model_backend (model.h: GPT-2's entries); the
 *                           fallback must not pack its weights
 *   dm_cuda_sae_backend     dm_sae_backend (sae.h); the fallback runs on the
 *                           same dm_sae_work (its CPU buffers made then) */
typedef int (*dm_cuda_backend_fn)(const void *fallback, void *out);

#ifdef __cplusplus
}
#endif

#endif
