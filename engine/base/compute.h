/*
 * compute.h: the compute context handed to kernels.
 *
 * One struct says how kernels may run: how many threads, on which device, and
 * which of the CPU's instruction-set paths to take. It replaces thread toggles
 * and environment switches scattered through the kernels: the switches are read
 * once, here, and a node chooses its backend entry (reference, CPU, CUDA) from
 * the context once, when it opens.
 *
 * Environment switches (read by dm_compute_default):
 *   DMICA_NO_AVX512=1       the OpenBLAS/scalar paths even where the CPU has AVX-512F
 *   DMICA_NO_AVX512_BF16=1  dm_bgemm's plain C path even where the CPU has AVX-512 BF16
 *   DMICA_SGEMM_CLASSIC=1   dm_sgemm without its level of Strassen
 *   DMICA_NO_F16C=1         scalar half-precision conversions
 *   OMP_WAIT_POLICY=passive (libgomp's own; dmica's main() sets it) lets the
 *                           elementwise kernels run in OpenMP threads (omp_kernels)
 */
#ifndef DM_COMPUTE_H
#define DM_COMPUTE_H

typedef enum { DM_DEVICE_CPU = 0, DM_DEVICE_CUDA } dm_device;

/* The precision of a GPU's large matrix products (the model's linear layers,
 * the SAE's encoder and decoder); statistics stay in FP32/FP64 whatever this
 * says, and the CPU always computes in FP32. TF32 and BF16 round the inputs
 * of each product to 10 and 7 mantissa bits (tensor cores), accumulating in
 * FP32: their errors are stated beside each kernel's test (tests/test_gpt2.c,
 * tests/test_sae.c). */
typedef enum { DM_GEMM_FP32 = 0, DM_GEMM_TF32, DM_GEMM_BF16 } dm_gemm;

typedef struct dm_compute {
    int threads;      /* worker threads (OpenMP regions, OpenBLAS outside them) */
    dm_device device; /* where the kernels run */
    dm_gemm gemm;     /* the GPU's matrix products (DM_GEMM_FP32 by default) */
    int reference;    /* 1: the plain reference kernels (tests) */
    int avx512;       /* 1: the CPU has AVX-512F and DMICA_NO_AVX512 is unset */
    int strassen;     /* 1: dm_sgemm uses one level of Strassen */
    int avx512_bf16;  /* 1: avx512 and the CPU has AVX-512 BF16 (VDPBF16PS), and
                         DMICA_NO_AVX512_BF16 is unset (dm_bgemm's kernel) */
    int f16c;         /* 1: the CPU has AVX and F16C and DMICA_NO_F16C is unset
                         (io/conv.h's vector half-precision conversions) */
    /* 1: elementwise kernels and attention may run in OpenMP threads beside
     * OpenBLAS: it is built on OpenMP itself (one pool of threads), or idle
     * OpenMP threads sleep (OMP_WAIT_POLICY=passive). Otherwise OpenMP threads
     * spinning after a region take the cores from the next OpenBLAS sgemm
     * (measured on 2 cores: GPT-2 at 716 tokens/s with them, 1120 without). */
    int omp_kernels;
} dm_compute;

/* The process's context: all cores (until dm_compute_set_threads), the CPU,
 * the fast kernels, switches from the environment. */
const dm_compute *dm_compute_default(void);
/* Sets the default context's threads and the OpenMP and OpenBLAS pools (n < 1:
 * all cores). */
void dm_compute_set_threads(int n);
/* The default context's threads (dm_compute_default()->threads). */
int dm_threads(void);
/* Sets the default context's device: "cpu", "cuda" or "auto" (the GPU where
 * libdmica-cuda.so sees one, device.h). Without a GPU, "cuda" runs on the CPU
 * too, never fails: note (note_len bytes) then says why, for a one-line notice;
 * with one, it names the GPU. -1 for another word. */
int dm_compute_set_device(const char *device, char *note, int note_len);
/* Sets the default context's GPU matrix products: "fp32", "tf32" or "bf16";
 * -1 for another word. */
int dm_compute_set_gemm(const char *precision);
const char *dm_gemm_name(dm_gemm g); /* "fp32", "tf32", "bf16" */
/* The device "cpu", "cuda" or "auto" means here, into *out, with the same note;
 * -1 for another word. */
int dm_device_resolve(const char *device, dm_device *out, char *note, int note_len);

/* The BLAS policy inside OpenMP regions: each thread calls BLAS on one thread.
 * dm_blas_serial_begin() returns the pool size to restore with _end. */
int dm_blas_serial_begin(void);
void dm_blas_serial_end(int saved);

#endif
