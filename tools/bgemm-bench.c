/*
 * bgemm-bench: GFLOP/s of dmica's bf16-weight dm_bgemm (operators/kernels/bgemm.c)
 * and its float32 dm_sgemm (sgemm.c) on Gemma-2-2B's products at M = 512
 * tokens: d_model 2304 by 2048 (q_proj: 8 heads of 256), by 9216 (gate_proj
 * and up_proj), 9216 by 2304 (down_proj), and 2304 by 256000 (the unembedding,
 * the tied embedding). FLOP are counted as 2 M N K for both (dm_sgemm's rate is
 * effective: one level of Strassen does 7/8 of those multiply-adds;
 * DMICA_SGEMM_CLASSIC=1 turns it off). Then the peak of one core and of THREADS
 * cores: a loop of independent VDPBF16PS (64 FLOP each: 16 lanes x 2 bf16
 * multiply-adds) and of independent VFMADD231PS (32 FLOP), both on zmm,
 * measured before and after the products (the better of the two).
 *
 *   bgemm-bench THREADS [M [UNEMBED_N]]
 *       prints "NAME K N BGEMM SGEMM BF16_MB F32_MB" for each shape (GFLOP/s, and
 *       the packed weights' MiB), then
 *       "peak BF16 FP32" (GFLOP/s of the loops on THREADS threads)
 *
 * Each kernel runs each shape for at least 0.5 s (at least 2 calls) after a
 * warm-up call; packing W is not timed (dmica packs at load). The unembedding's
 * weights (1.2 GB bf16, 4.1 GB as dm_sgemm packs them) are filled in their
 * packed layout directly; the other shapes are packed from the same random W
 * and dm_bgemm's result compared with dm_sgemm's (max |difference| / max |C|,
 * on stderr: A rounded to bf16 makes it about 1e-3).
 */
#include "bgemm.h"
#include "dm.h"
#include "sgemm.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rng = 1;
static float uniform(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)(rng >> 40) / 16777216.0f - 0.5f;
}

#define PEAK_ITERS 20000000L

#if defined(__x86_64__) && defined(__GNUC__)
/* 12 independent accumulators: more than latency x throughput (Zen 4: 6 x 1). */
__attribute__((target("avx512f,avx512bf16"))) static float peak_bf16(long iters, float seed)
{
    __m512 acc[12];
    __m512bh a = (__m512bh)_mm512_set1_ps(seed), b = (__m512bh)_mm512_set1_ps(seed * 0.5f);
    for (int i = 0; i < 12; i++)
        acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a)); /* no hoisting of the products */
    }
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

__attribute__((target("avx512f"))) static float peak_fp32(long iters, float seed)
{
    __m512 acc[12], a = _mm512_set1_ps(seed), b = _mm512_set1_ps(seed * 0.5f);
    for (int i = 0; i < 12; i++)
        acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

/* GFLOP/s of the loop on every thread at once. */
static double peak(int bf16)
{
    double dt = 0;
    float sink = 0;
#pragma omp parallel reduction(+ : sink) reduction(max : dt)
    {
        double t0 = now();
        sink += bf16 ? peak_bf16(PEAK_ITERS, 1e-3f) : peak_fp32(PEAK_ITERS, 1e-3f);
        dt = now() - t0;
    }
    if (sink == 12345.0f)
        printf(" ");
    return (double)omp_get_max_threads() * PEAK_ITERS * 12 * (bf16 ? 64 : 32) / dt / 1e9;
}
#endif

/* Calls per 0.5 s (at least 2) of dm_bgemm or dm_sgemm; GFLOP/s. */
static double rate(int bf16, float *C, const float *A, const void *Wp, int M, int N, int K)
{
    int reps = 0;
    double t0 = now();
    while (now() - t0 < 0.5 || reps < 2) {
        if (bf16)
            dm_bgemm(C, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        else
            dm_sgemm(C, N, A, K, Wp, NULL, M, N, K, 0, NULL);
        reps++;
    }
    return 2.0 * M * N * K * reps / (now() - t0) / 1e9;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1, M = argc > 2 ? atoi(argv[2]) : 512;
    int unembed = argc > 3 ? atoi(argv[3]) : 256000;
    if (threads < 1 || M < 1 || unembed < 32) {
        fprintf(stderr, "usage: bgemm-bench THREADS [M [UNEMBED_N]]\n");
        return 2;
    }
    if (!dm_bgemm_available() || !dm_sgemm_available()) {
        fprintf(stderr, "bgemm-bench: no AVX-512 BF16 here (or DMICA_NO_AVX512 / DMICA_NO_AVX512_BF16 "
                        "set): dm_bgemm would run its plain C micro-kernel: nothing to measure\n");
        return 77;
    }
    omp_set_num_threads(threads);
    static const char *names[] = {"q_proj", "gate_up_proj", "down_proj", "unembed"};
    int shapes[4][2] = {{2304, 2048}, {2304, 9216}, {9216, 2304}, {2304, unembed}};
    float *A = dm_xmalloc_aligned(sizeof(float) * M * 9216);
    for (long i = 0; i < (long)M * 9216; i++)
        A[i] = uniform();
#if defined(__x86_64__) && defined(__GNUC__)
    /* the peak before and after the products: the better of the two (other
     * jobs on a shared machine take cycles at random moments) */
    double pb = peak(1), pf = peak(0);
#endif
    for (int s = 0; s < 4; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        size_t nb = dm_bgemm_packed_size(K, N), nf = dm_sgemm_packed_floats(K, N);
        uint16_t *wb = dm_xmalloc_aligned(sizeof(uint16_t) * nb);
        float *wf = dm_xmalloc_aligned(sizeof(float) * nf);
        float *c1 = dm_xmalloc_aligned(sizeof(float) * M * N), *c2 = dm_xmalloc_aligned(sizeof(float) * M * N);
        if ((size_t)K * N <= 64u << 20) {
            float *w = dm_xmalloc(sizeof(float) * K * N);
            for (size_t i = 0; i < (size_t)K * N; i++)
                w[i] = dm_bf16_to_f32(dm_f32_to_bf16(0.05f * uniform()));
            dm_bgemm_pack_f32(wb, w, N, K, N, DM_BGEMM_KN);
            dm_sgemm_pack(wf, w, N, K, N);
            free(w);
        } else {
#pragma omp parallel for
            for (size_t i = 0; i < nb; i++)
                wb[i] = dm_f32_to_bf16(0.05f * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.025f);
#pragma omp parallel for
            for (size_t i = 0; i < nf; i++)
                wf[i] = 0.05f * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.025f;
        }
        dm_bgemm(c1, N, A, K, wb, NULL, M, N, K, 0, NULL); /* warm-up: C's pages */
        dm_sgemm(c2, N, A, K, wf, NULL, M, N, K, 0, NULL);
        if ((size_t)K * N <= 64u << 20) {
            double num = 0, den = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) {
                num = fmax(num, fabs((double)c1[i] - c2[i]));
                den = fmax(den, fabs((double)c2[i]));
            }
            fprintf(stderr, "bgemm-bench: %s: dm_bgemm vs dm_sgemm: max relative difference %.2g\n",
                    names[s], num / den);
        }
        double gb = rate(1, c1, A, wb, M, N, K), gs = rate(0, c2, A, wf, M, N, K);
        printf("%s %d %d %.1f %.1f %.1f %.1f\n", names[s], K, N, gb, gs, 2.0 * nb / (1 << 20),
               4.0 * nf / (1 << 20));
        fflush(stdout);
        free(wb), free(wf), free(c1), free(c2);
    }
#if defined(__x86_64__) && defined(__GNUC__)
    printf("peak %.1f %.1f\n", fmax(pb, peak(1)), fmax(pf, peak(0)));
#endif
    free(A);
    return 0;
}
