/*
 * hints.cu: device copies of host rows (device.h's hints), shared by every
 * family of gpu/: while the engine has a hint pushed, a kernel's upload of
 * host memory inside the hinted range copies from the device copy instead
 * (gpu_upload in common.cuh): a chunk that a GPU entry made (the model's
 * activations, the SAE's residual) reaches its consumers' GPU entries
 * without crossing back from the host.
 *
 * A hint holds for one consume call (the engine pushes and pops it around
 * it); hints nest as emits do (a consumer emits in turn). Per thread.
 * DMICA_NO_DEVICE_COPIES=1 turns them off (every upload from the host).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.cuh"

#define MAX_HINTS 64

static __thread struct {
    const char *host, *dev;
    size_t bytes;
} hints[MAX_HINTS];
static __thread int nhints, lost; /* lost: pushes beyond MAX_HINTS, popped without effect */

extern "C" void dm_cuda_hint_push(const void *host, const void *dev, size_t bytes)
{
    if (nhints == MAX_HINTS) {
        lost++;
        return;
    }
    hints[nhints].host = (const char *)host, hints[nhints].dev = (const char *)dev, hints[nhints].bytes = bytes;
    nhints++;
}

extern "C" void dm_cuda_hint_pop(void)
{
    if (lost)
        lost--;
    else if (nhints)
        nhints--;
}

const void *gpu_hinted(const void *host, size_t bytes)
{
    static int off = -1; /* DMICA_NO_DEVICE_COPIES=1: every upload from host memory */
    if (off < 0) {
        const char *v = getenv("DMICA_NO_DEVICE_COPIES");
        off = v && *v && *v != '0';
    }
    if (off)
        return NULL;
    const char *h = (const char *)host;
    for (int i = nhints - 1; i >= 0; i--)
        if (hints[i].dev && h >= hints[i].host && h + bytes <= hints[i].host + hints[i].bytes)
            return hints[i].dev + (h - hints[i].host);
    return NULL;
}

/* Uploads by source, for DMICA_CUDA_VERBOSE=1's line at exit. */
static unsigned long long n_hinted, n_host, b_hinted, b_host;

void gpu_count_upload(int hinted, size_t bytes)
{
    __atomic_add_fetch(hinted ? &n_hinted : &n_host, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(hinted ? &b_hinted : &b_host, (unsigned long long)bytes, __ATOMIC_RELAXED);
}

__attribute__((destructor)) static void say_uploads(void)
{
    const char *v = getenv("DMICA_CUDA_VERBOSE");
    if (v && *v && *v != '0' && (n_hinted || n_host))
        fprintf(stderr, "dmica: cuda: %llu uploads from device copies (%.1f MB), %llu from host memory (%.1f MB)\n",
                n_hinted, b_hinted / 1e6, n_host, b_host / 1e6);
}
