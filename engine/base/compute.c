/*
 * compute.c: the default compute context and the BLAS thread policy.
 */
#include <omp.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include "compute.h"
#include "device.h"

#include <stdio.h>
#include <string.h>

/* OpenBLAS's thread control (cblas.h of Debian's libopenblas-dev declares it). */
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);
int openblas_get_parallel(void); /* 0 sequential, 1 pthreads, 2 OpenMP */

static dm_compute ctx;
static int ctx_ready;

static int env_on(const char *name)
{
    const char *e = getenv(name);
    return e && *e && *e != '0';
}

const dm_compute *dm_compute_default(void)
{
    if (!ctx_ready) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        ctx.threads = n > 0 ? (int)n : 1;
        ctx.device = DM_DEVICE_CPU;
        ctx.gemm = DM_GEMM_FP32;
        ctx.reference = 0;
        ctx.avx512 = __builtin_cpu_supports("avx512f") && !env_on("DMICA_NO_AVX512");
        ctx.strassen = !env_on("DMICA_SGEMM_CLASSIC");
        ctx.avx512_bf16 = ctx.avx512 && __builtin_cpu_supports("avx512bf16") &&
                          !env_on("DMICA_NO_AVX512_BF16");
        __builtin_cpu_init();
        ctx.f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c") && !env_on("DMICA_NO_F16C");
        const char *w = getenv("OMP_WAIT_POLICY");
        ctx.omp_kernels = openblas_get_parallel() == 2 || (w && !strcasecmp(w, "passive"));
        ctx_ready = 1;
    }
    return &ctx;
}

void dm_compute_set_threads(int n)
{
    dm_compute_default();
    if (n < 1) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    ctx.threads = n;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

int dm_threads(void) { return dm_compute_default()->threads; }

int dm_device_resolve(const char *device, dm_device *out, char *note, int note_len)
{
    if (note_len > 0)
        note[0] = 0;
    char name[256], why[512];
    if (!strcmp(device, "cpu")) {
        *out = DM_DEVICE_CPU;
    } else if (!strcmp(device, "cuda") || !strcmp(device, "auto")) {
        int ok = dm_cuda_available(name, (int)sizeof name, why, (int)sizeof why);
        *out = ok ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
        if (ok)
            snprintf(note, (size_t)note_len, "running on %s (CUDA) where gpu/ has kernels, the CPU elsewhere", name);
        else if (!strcmp(device, "cuda"))
            snprintf(note, (size_t)note_len, "device cuda: %s; running on the CPU", why);
    } else {
        return -1;
    }
    return 0;
}

int dm_compute_set_gemm(const char *precision)
{
    dm_compute_default();
    for (dm_gemm g = DM_GEMM_FP32; g <= DM_GEMM_BF16; g++)
        if (!strcmp(precision, dm_gemm_name(g))) {
            ctx.gemm = g;
            return 0;
        }
    return -1;
}

const char *dm_gemm_name(dm_gemm g) { return g == DM_GEMM_TF32 ? "tf32" : g == DM_GEMM_BF16 ? "bf16" : "fp32"; }

int dm_compute_set_device(const char *device, char *note, int note_len)
{
    dm_compute_default();
    return dm_device_resolve(device, &ctx.device, note, note_len);
}

int dm_blas_serial_begin(void)
{
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return saved;
}

void dm_blas_serial_end(int saved) { openblas_set_num_threads(saved); }
