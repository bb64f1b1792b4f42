/*
 * sgemm-bench: GFLOP/s of OpenBLAS's cblas_sgemm and of dmica's packed-weight
 * dm_sgemm (operators/kernels/sgemm.c) on the four GEMMs of a GPT-2 small block at
 * B*T = 4096 rows: 4096x768 by 768x2304 (qkv), 768x768 (attention proj) and
 * 768x3072 (MLP up); 4096x3072 by 3072x768 (MLP down). FLOP are counted as
 * 2 M N K for both, so dm_sgemm's figure is "effective" when it runs Strassen
 * (7/8 of the multiply-adds; DMICA_SGEMM_CLASSIC=1 turns that off).
 *
 *   sgemm-bench THREADS     prints "OPENBLAS DMSGEMM" (GFLOP/s, all four shapes)
 *
 * Each side runs each shape for at least 0.5 s after a warm-up call; packing W
 * is not timed (dmica packs at load). dm_sgemm's result is checked against
 * OpenBLAS's (relative error printed on stderr).
 */
#include "dm.h"
#include "sgemm.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv)
{
    int M = 4096, shapes[4][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1) {
        fprintf(stderr, "usage: sgemm-bench THREADS\n");
        return 2;
    }
    if (!dm_sgemm_available()) {
        fprintf(stderr, "sgemm-bench: dm_sgemm would run its plain C micro-kernel here (no AVX-512F, "
                        "or DMICA_NO_AVX512 set): nothing to measure\n");
        return 77;
    }
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
    float *a = dm_xmalloc_aligned(sizeof(float) * M * 3072), *w = dm_xmalloc_aligned(sizeof(float) * 3072 * 3072);
    float *c1 = dm_xmalloc_aligned(sizeof(float) * M * 3072), *c2 = dm_xmalloc_aligned(sizeof(float) * M * 3072);
    uint64_t r = 1;
    for (long i = 0; i < (long)M * 3072; i++, r = r * 6364136223846793005ULL + 1)
        a[i] = (float)(r >> 40) / 16777216.0f - 0.5f;
    for (long i = 0; i < 3072L * 3072; i++, r = r * 6364136223846793005ULL + 1)
        w[i] = ((float)(r >> 40) / 16777216.0f - 0.5f) * 0.1f;
    double flop = 0, t_blas = 0, t_dm = 0, worst = 0;
    for (int s = 0; s < 4; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        float *wp = dm_xmalloc_aligned(sizeof(float) * dm_sgemm_packed_floats(K, N));
        dm_sgemm_pack(wp, w, N, K, N);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, w, N, 0, c1, N);
        dm_sgemm(c2, N, a, K, wp, NULL, M, N, K, 0, NULL);
        double num = 0, den = 0;
        for (long i = 0; i < (long)M * N; i++) {
            num = fmax(num, fabs((double)c1[i] - c2[i]));
            den = fmax(den, fabs((double)c1[i]));
        }
        worst = fmax(worst, num / den);
        int reps = 0;
        double t0 = now();
        while (now() - t0 < 0.5 || reps < 2) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1, a, K, w, N, 0, c1, N);
            reps++;
        }
        double t1 = now();
        for (int i = 0; i < reps; i++)
            dm_sgemm(c2, N, a, K, wp, NULL, M, N, K, 0, NULL);
        double t2 = now();
        t_blas += t1 - t0;
        t_dm += t2 - t1;
        flop += 2.0 * M * N * K * reps;
        free(wp);
    }
    fprintf(stderr, "sgemm-bench: dm_sgemm vs OpenBLAS: max relative difference %.2g\n", worst);
    printf("%.1f %.1f\n", flop / t_blas / 1e9, flop / t_dm / 1e9);
    free(a), free(w), free(c1), free(c2);
    return 0;
}
