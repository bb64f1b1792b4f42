/*
 * device.h: the GPU library, opened at run time.
 *
 * libdmica-cuda.so (gpu/, built by `make` when nvcc is present) holds the CUDA
 * entries of the kernels' backend tables (operators/kernels/cuda.h says what it
 * exports). It is opened with dlopen the first time a context asks for the GPU,
 * never linked: bin/dmica starts the same on a machine without a GPU, a driver
 * or the library, and runs on the CPU.
 *
 * Where it is looked for: $DMICA_CUDA_LIB; then next to the executable, in
 * ../build/ beside it (bin/dmica in a checkout), and one folder up
 * (the tests in build/tests/); then the loader's own search path.
 */
#ifndef DM_DEVICE_H
#define DM_DEVICE_H

#include <stddef.h>

/* 1 when the library is there, speaks this build's interface, and sees a
 * device (its name into name, len bytes, when name is not NULL); 0 with the
 * reason into why (a line for a notice) otherwise. Opens the library once. */
int dm_cuda_available(char *name, int len, char *why, int why_len);
/* A symbol of the opened library, or NULL (not available). */
void *dm_cuda_sym(const char *symbol);
/* Fills *out, a kernel family's backend table, with the library's "cuda"
 * entry through its `symbol` (cuda_abi.h), that entry falling back to
 * `fallback` on a CUDA error. 1 when filled, 0 when not available. */
int dm_cuda_fill(const char *symbol, const void *fallback, void *out);

/* Hints: while one is pushed, a GPU entry asked to copy host memory inside
 * [host, host + bytes) to the GPU copies it from dev, the same values in the
 * GPU's memory, instead (gpu/hints.cu). The engine pushes one around each
 * consume of a chunk that has a device copy (dm_chunk.dev) and pops it after;
 * they nest. Without the library, nothing. */
void dm_device_hint_push(const void *host, const void *dev, size_t bytes);
void dm_device_hint_pop(void);

#endif
