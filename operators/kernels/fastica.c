/*
 * fastica.c: parallel FastICA kernels (see fastica.h for the algorithm and
 * its source, scikit-learn's _ica_par).
 *
 * Where the time goes: per iteration and seed, two GEMMs of 2 k^2 flops per
 * row (W z, then g^T z) and k evaluations of g per row. The GEMMs run in
 * float32 on blocks of at most DM_ICA_BLOCK rows, so each block's g^T z is a
 * float32 sum of at most that many products (relative error about 1e-6)
 * before it is added to the double accumulator; sums over millions of rows
 * stay in double. g = tanh uses a rational approximation that the compiler
 * vectorises, built for AVX-512 and AVX2 as well (libm's tanhf does not
 * vectorise and costs ten times more per value).
 *
 * Threads: each worker runs its own single-threaded SGEMMs on cache-sized
 * blocks of its own rows. Measured at 1M x 64 on 2 cores: 0.12 s per
 * iteration, against 0.40 s for 8192-row blocks with OpenBLAS's threads for
 * the GEMMs and OpenMP's for g (the pools handed the cores back and forth and
 * OpenBLAS's idle workers spun in sched_yield between calls).
 *
 * The reference backend ("ref") is plain double arithmetic one row at a time,
 * kept to check the fast one (tests/test_fastica.c).
 */
#include "fastica.h"

#include "device.h"

#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"

#define DM_ICA_BLOCK 8192

int dm_ica_fun_parse(const char *s, dm_ica_fun *fun)
{
    if (!strcmp(s, "logcosh"))
        *fun = DM_ICA_LOGCOSH;
    else if (!strcmp(s, "exp"))
        *fun = DM_ICA_EXP;
    else if (!strcmp(s, "cube"))
        *fun = DM_ICA_CUBE;
    else
        return dm_fail("fun '%s': expected logcosh, exp or cube", s);
    return 0;
}

const char *dm_ica_fun_name(dm_ica_fun fun)
{
    return fun == DM_ICA_EXP ? "exp" : fun == DM_ICA_CUBE ? "cube" : "logcosh";
}

/* ---- numpy legacy RandomState (numpy/random/src/mt19937, legacy-distributions.c) */

void dm_np_random_seed(dm_np_random *r, uint32_t seed)
{
    r->key[0] = seed;
    for (int i = 1; i < 624; i++)
        r->key[i] = 1812433253u * (r->key[i - 1] ^ (r->key[i - 1] >> 30)) + (uint32_t)i;
    r->pos = 624;
    r->has_gauss = 0;
    r->gauss = 0.0;
}

static void mt_generate(dm_np_random *r)
{
    const uint32_t upper = 0x80000000u, lower = 0x7fffffffu, a = 0x9908b0dfu;
    uint32_t *mt = r->key, y;
    int i;
    for (i = 0; i < 624 - 397; i++) {
        y = (mt[i] & upper) | (mt[i + 1] & lower);
        mt[i] = mt[i + 397] ^ (y >> 1) ^ (-(y & 1u) & a);
    }
    for (; i < 623; i++) {
        y = (mt[i] & upper) | (mt[i + 1] & lower);
        mt[i] = mt[i + 397 - 624] ^ (y >> 1) ^ (-(y & 1u) & a);
    }
    y = (mt[623] & upper) | (mt[0] & lower);
    mt[623] = mt[396] ^ (y >> 1) ^ (-(y & 1u) & a);
    r->pos = 0;
}

uint32_t dm_np_random_u32(dm_np_random *r)
{
    if (r->pos >= 624)
        mt_generate(r);
    uint32_t y = r->key[r->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double dm_np_random_double(dm_np_random *r)
{
    int32_t a = (int32_t)(dm_np_random_u32(r) >> 5), b = (int32_t)(dm_np_random_u32(r) >> 6);
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

double dm_np_random_gauss(dm_np_random *r)
{
    if (r->has_gauss) {
        r->has_gauss = 0;
        return r->gauss;
    }
    double f, x1, x2, r2;
    do {
        x1 = 2.0 * dm_np_random_double(r) - 1.0;
        x2 = 2.0 * dm_np_random_double(r) - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    f = sqrt(-2.0 * log(r2) / r2);
    r->gauss = f * x1;
    r->has_gauss = 1;
    return f * x2;
}

void dm_ica_w_init(double *W, int64_t k, uint32_t seed)
{
    dm_np_random r;
    dm_np_random_seed(&r, seed);
    for (int64_t i = 0; i < k * k; i++)
        W[i] = dm_np_random_gauss(&r);
}

/* ---- linear algebra --------------------------------------------------------- */

int dm_ica_symdecorr(double *W, int64_t k)
{
    size_t kk = (size_t)(k * k);
    double *M = dm_xmalloc(3 * kk * sizeof(double) + (size_t)k * sizeof(double));
    double *T = M + kk, *R = T + kk, *s = R + kk;
    int rc = 0;
    for (size_t i = 0; i < kk; i++)
        if (!isfinite(W[i])) {
            free(M);
            return dm_fail("unmixing matrix has non-finite entries (the data holds NaN or Inf, or the "
                           "iteration diverged)");
        }
    int ik = (int)k;
    /* M = W W^T, full (dsyevd reads the upper triangle) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ik, ik, ik, 1.0, W, ik, W, ik, 0.0, M, ik);
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', ik, M, ik, s);
    if (info != 0) {
        free(M);
        return dm_fail("symmetric decorrelation: LAPACK dsyevd failed (info %d)", (int)info);
    }
    /* columns of M are eigenvectors u_j: T = U diag(1/sqrt(s)), R = T U^T, W = R W */
    for (int64_t j = 0; j < k; j++)
        s[j] = 1.0 / sqrt(s[j] < DBL_MIN ? DBL_MIN : s[j]);
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++)
            T[i * k + j] = M[i * k + j] * s[j];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ik, ik, ik, 1.0, T, ik, M, ik, 0.0, R, ik);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ik, ik, ik, 1.0, R, ik, W, ik, 0.0, T, ik);
    memcpy(W, T, kk * sizeof(double));
    free(M);
    return rc;
}

double dm_ica_lim(const double *W1, const double *W, int64_t k)
{
    double lim = 0.0;
    for (int64_t i = 0; i < k; i++) {
        double d = 0.0;
        for (int64_t j = 0; j < k; j++)
            d += W1[i * k + j] * W[i * k + j];
        double e = fabs(fabs(d) - 1.0);
        if (e > lim || isnan(e))
            lim = e;
    }
    return lim;
}

double dm_amari_distance(const double *P, int64_t k)
{
    if (k < 2)
        return 0.0;
    double total = 0.0;
    for (int64_t i = 0; i < k; i++) {
        double sum = 0.0, max = 0.0;
        for (int64_t j = 0; j < k; j++) {
            double a = fabs(P[i * k + j]);
            sum += a;
            if (a > max)
                max = a;
        }
        total += sum / max - 1.0;
    }
    for (int64_t j = 0; j < k; j++) {
        double sum = 0.0, max = 0.0;
        for (int64_t i = 0; i < k; i++) {
            double a = fabs(P[i * k + j]);
            sum += a;
            if (a > max)
                max = a;
        }
        total += sum / max - 1.0;
    }
    return total / (2.0 * (double)k * (double)(k - 1));
}

void dm_hungarian(const double *cost, int64_t n, int64_t *assign)
{
    /* Kuhn-Munkres with row/column potentials (1-based; p[j] = row of column j). */
    double *u = dm_xcalloc((size_t)n + 1, sizeof(double)), *v = dm_xcalloc((size_t)n + 1, sizeof(double));
    double *minv = dm_xmalloc(((size_t)n + 1) * sizeof(double));
    int64_t *p = dm_xcalloc((size_t)n + 1, sizeof(int64_t)), *way = dm_xcalloc((size_t)n + 1, sizeof(int64_t));
    char *used = dm_xmalloc((size_t)n + 1);
    for (int64_t i = 1; i <= n; i++) {
        p[0] = i;
        int64_t j0 = 0;
        for (int64_t j = 0; j <= n; j++)
            minv[j] = INFINITY;
        memset(used, 0, (size_t)n + 1);
        do {
            used[j0] = 1;
            int64_t i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (int64_t j = 1; j <= n; j++) {
                if (used[j])
                    continue;
                double cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                if (cur < minv[j]) {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if (minv[j] < delta) {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for (int64_t j = 0; j <= n; j++) {
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else
                    minv[j] -= delta;
            }
            j0 = j1;
        } while (p[j0] != 0);
        do {
            int64_t j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    for (int64_t j = 1; j <= n; j++)
        assign[p[j] - 1] = j - 1;
    free(u), free(v), free(minv), free(p), free(way), free(used);
}

void dm_ica_match(const double *A, const double *B, int64_t n, int64_t k, int64_t *match, int *sign, double *cosine)
{
    double *c = dm_xmalloc((size_t)(n * n) * sizeof(double)), *cost = dm_xmalloc((size_t)(n * n) * sizeof(double));
    double *na = dm_xmalloc((size_t)n * sizeof(double)), *nb = dm_xmalloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        double sa = 0, sb = 0;
        for (int64_t j = 0; j < k; j++)
            sa += A[i * k + j] * A[i * k + j], sb += B[i * k + j] * B[i * k + j];
        na[i] = sa > 0 ? 1.0 / sqrt(sa) : 0.0;
        nb[i] = sb > 0 ? 1.0 / sqrt(sb) : 0.0;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double d = 0;
            for (int64_t t = 0; t < k; t++)
                d += A[i * k + t] * B[j * k + t];
            c[i * n + j] = d * na[i] * nb[j];
            cost[i * n + j] = 1.0 - fabs(c[i * n + j]);
        }
    dm_hungarian(cost, n, match);
    for (int64_t i = 0; i < n; i++) {
        double ci = c[i * n + match[i]];
        sign[i] = ci < 0 ? -1 : 1;
        if (cosine)
            cosine[i] = fabs(ci);
    }
    free(c), free(cost), free(na), free(nb);
}

/* ---- vectorised tanh ----------------------------------------------------- */

/* Built for AVX-512, AVX2 and plain x86-64, chosen at load time (GCC function
 * multiversioning): the loops below are 16, 8 or 4 floats wide. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define DM_ICA_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define DM_ICA_CLONES
#endif

/* Eigen's generic_fast_tanh_float: a 13/6 rational minimax fit on [-7.9, 7.9]
 * (beyond it tanh is 1 in float32). */
static inline float tanh_rational(float x)
{
    float v = x;
    v = v > 7.90531110763549805f ? 7.90531110763549805f : v;
    v = v < -7.90531110763549805f ? -7.90531110763549805f : v;
    float v2 = v * v;
    float p = v2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = p * v2 + -8.60467152213735e-11f;
    p = p * v2 + 5.12229709037114e-08f;
    p = p * v2 + 1.48572235717979e-05f;
    p = p * v2 + 6.37261928875436e-04f;
    p = p * v2 + 4.89352455891786e-03f;
    p = p * v;
    float q = v2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = q * v2 + 2.26843463243900e-03f;
    q = q * v2 + 4.89352518554385e-03f;
    float t = p / q;
    return fabsf(v) < 0.0004f ? v : t;
}

DM_ICA_CLONES
void dm_tanhf_vec(float *y, const float *x, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        y[i] = tanh_rational(x[i]);
}

/* ---- sums ---------------------------------------------------------------- */

void dm_ica_sums_init(dm_ica_sums *s, int64_t m, int64_t k, const dm_compute *c)
{
    s->m = m;
    s->k = k;
    s->n = 0;
    s->gz = dm_xcalloc((size_t)(m * k + m), sizeof(double));
    s->dg = s->gz + m * k;
    s->wf = dm_xmalloc((size_t)(m * k) * sizeof(float));
    s->threads = c->threads;
}

int64_t dm_ica_sums_bytes(int64_t m, int64_t k, const dm_compute *c)
{
    /* the sums and W in float, and per worker thread: a block of W z, a
     * block's g^T z and g' (float), and that thread's share of the sums
     * (double) */
    int64_t per_thread = 4 * (DM_ICA_BLOCK * m + m * k + m) + 8 * (m * k + m) + 256;
    return 8 * (m * k + m) + 4 * m * k + (int64_t)c->threads * per_thread + 256;
}

void dm_ica_sums_free(dm_ica_sums *s)
{
    if (!s)
        return;
    free(s->gz);
    free(s->wf);
    memset(s, 0, sizeof *s);
}

void dm_ica_sums_reset(dm_ica_sums *s)
{
    s->n = 0;
    memset(s->gz, 0, (size_t)(s->m * s->k + s->m) * sizeof(double));
}

int dm_ica_sums_merge(dm_ica_sums *a, const dm_ica_sums *b)
{
    if (a->m != b->m || a->k != b->k)
        return dm_failc(DM_E_SHAPE, "FastICA sums of shapes %lld x %lld and %lld x %lld cannot merge",
                        (long long)a->m, (long long)a->k, (long long)b->m, (long long)b->k);
    for (int64_t i = 0; i < a->m * a->k + a->m; i++)
        a->gz[i] += b->gz[i];
    a->n += b->n;
    return 0;
}

/* g in place over a block y (rows, m), and the column sums of g' into dg (m).
 * One loop per row, so y stays in L1 between g and g'. */
DM_ICA_CLONES
static void apply_g(float *y, int64_t rows, int64_t m, dm_ica_fun fun, float alpha, float *dg)
{
    for (int64_t j = 0; j < m; j++)
        dg[j] = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        float *yr = y + r * m;
        if (fun == DM_ICA_LOGCOSH) {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float t = tanh_rational(alpha * yr[j]);
                yr[j] = t;
                dg[j] += alpha * (1.0f - t * t);
            }
        } else if (fun == DM_ICA_EXP) {
            for (int64_t j = 0; j < m; j++) {
                float u = yr[j], e = expf(-0.5f * u * u);
                yr[j] = u * e;
                dg[j] += (1.0f - u * u) * e;
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float u = yr[j];
                yr[j] = u * u * u;
                dg[j] += 3.0f * u * u;
            }
        }
    }
}

/* OpenBLAS's pthread build (0.3.x) keeps its idle workers spinning in
 * sched_yield for 2^28 cycles (OPENBLAS_THREAD_TIMEOUT) after each threaded
 * call: after the whitening pass's GEMMs they take a core from the OpenMP
 * threads here (1M x 64 on 2 cores: 0.2 s of a 1.3 s `dmica ica`, most of its
 * system time). Its own fork handler's function stops them; the next threaded
 * BLAS call starts them again. Weak: absent from other BLAS libraries. */
extern int blas_thread_shutdown_(void) __attribute__((weak));

/* Rows per block: z and W z of a block stay in a core's L2 cache. */
static int64_t block_rows(int64_t m, int64_t k)
{
    int64_t b = ((int64_t)1 << 20) / (4 * (m + k));
    b = b < 64 ? 64 : b > DM_ICA_BLOCK ? DM_ICA_BLOCK : b;
    return b & ~(int64_t)15;
}

/* The "cpu" sums (fastica.h's backend table says how). */
static void sums_update_cpu(dm_ica_sums *s, dm_ica_fun fun, double alpha, const double *Wd, int64_t mrows,
                            const float *z, int64_t rows)
{
    int64_t k = s->k, m = mrows, B = block_rows(m, k), nblocks = (rows + B - 1) / B;
    if (rows <= 0 || m <= 0)
        return;
    float *W = s->wf;
    for (int64_t i = 0; i < m * k; i++)
        W[i] = (float)Wd[i];
    int nt = s->threads;
    if (nt > nblocks)
        nt = (int)nblocks;
    if (nt < 1)
        nt = 1;
    /* One thread per range of blocks, each calling single-threaded SGEMMs on
     * blocks that fit its cache: no hand-over between OpenBLAS's pool (which
     * spins between calls) and OpenMP's, and one merge per call. The shares are
     * added in thread order, so a run is reproducible for a thread count. */
    if (nt > 1 && blas_thread_shutdown_)
        blas_thread_shutdown_();
    int blas_threads = dm_blas_serial_begin();
    double *share = dm_xcalloc((size_t)nt * (size_t)(m * k + m), sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *y = dm_xmalloc_aligned((size_t)(B * m + m * k + m) * sizeof(float));
        float *part = y + B * m, *dgb = part + m * k;
        double *gz = share + (size_t)t * (size_t)(m * k + m), *dg = gz + m * k;
        int64_t b0 = nblocks * t / nt, b1 = nblocks * (t + 1) / nt;
        for (int64_t b = b0; b < b1; b++) {
            int64_t r0 = b * B, nb = rows - r0 < B ? rows - r0 : B;
            const float *zb = z + r0 * k;
            /* y (nb, m) = z_b (nb, k) W^T (k, m) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)m, (int)k, 1.0f, zb, (int)k, W,
                        (int)k, 0.0f, y, (int)m);
            apply_g(y, nb, m, fun, (float)alpha, dgb);
            /* part (m, k) = g^T (m, nb) z_b (nb, k) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)k, (int)nb, 1.0f, y, (int)m, zb,
                        (int)k, 0.0f, part, (int)k);
            for (int64_t i = 0; i < m * k; i++)
                gz[i] += part[i];
            for (int64_t i = 0; i < m; i++)
                dg[i] += dgb[i];
        }
        free(y);
    }
    dm_blas_serial_end(blas_threads);
    for (int t = 0; t < nt; t++) {
        const double *gz = share + (size_t)t * (size_t)(m * k + m), *dg = gz + m * k;
        for (int64_t i = 0; i < m * k; i++)
            s->gz[i] += gz[i];
        for (int64_t i = 0; i < m; i++)
            s->dg[i] += dg[i];
    }
    free(share);
    s->n += rows;
}

/* The "ref" sums: double, one row at a time, libm. */
static void sums_update_ref(dm_ica_sums *s, dm_ica_fun fun, double alpha, const double *W, int64_t mrows,
                            const float *z, int64_t rows)
{
    int64_t k = s->k;
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * k;
        for (int64_t i = 0; i < mrows; i++) {
            double u = 0.0, g, gp;
            for (int64_t j = 0; j < k; j++)
                u += W[i * k + j] * zr[j];
            if (fun == DM_ICA_LOGCOSH) {
                g = tanh(alpha * u);
                gp = alpha * (1.0 - g * g);
            } else if (fun == DM_ICA_EXP) {
                double e = exp(-0.5 * u * u);
                g = u * e;
                gp = (1.0 - u * u) * e;
            } else {
                g = u * u * u;
                gp = 3.0 * u * u;
            }
            for (int64_t j = 0; j < k; j++)
                s->gz[i * k + j] += g * zr[j];
            s->dg[i] += gp;
        }
    }
    s->n += rows;
}

const dm_ica_backend dm_ica_backend_ref = {"ref", sums_update_ref};
const dm_ica_backend dm_ica_backend_cpu = {"cpu", sums_update_cpu};

const dm_ica_backend *dm_ica_backend_cuda(void)
{
    static dm_ica_backend be;
    static int tried, ok;
    if (!tried)
        tried = 1, ok = dm_cuda_fill("dm_cuda_ica_backend", &dm_ica_backend_cpu, &be);
    return ok ? &be : NULL;
}

const dm_ica_backend *dm_ica_backend_for(const dm_compute *c)
{
    if (c->reference)
        return &dm_ica_backend_ref;
    if (c->device == DM_DEVICE_CUDA && dm_ica_backend_cuda())
        return dm_ica_backend_cuda();
    return &dm_ica_backend_cpu;
}

int dm_ica_step(const dm_ica_sums *s, int64_t r0, const double *W, double *W1, double *lim)
{
    int64_t k = s->k;
    if (s->n <= 0)
        return dm_fail("FastICA step with no rows seen");
    double inv = 1.0 / (double)s->n;
    for (int64_t i = 0; i < k; i++) {
        double dgi = s->dg[r0 + i] * inv;
        for (int64_t j = 0; j < k; j++)
            W1[i * k + j] = s->gz[(r0 + i) * k + j] * inv - dgi * W[i * k + j];
    }
    if (dm_ica_symdecorr(W1, k))
        return -1;
    *lim = dm_ica_lim(W1, W, k);
    return 0;
}

int dm_ica_fit(double *W, int64_t k, const float *z, int64_t rows, dm_ica_fun fun, double alpha, double tol,
               int max_iter, const dm_compute *c, dm_ica_result *res)
{
    const dm_ica_backend *be = dm_ica_backend_for(c);
    dm_ica_sums s = DM_ICA_SUMS_INIT;
    double *W1 = dm_xmalloc((size_t)(k * k) * sizeof(double));
    int rc = 0;
    memset(res, 0, sizeof *res);
    res->lim = INFINITY;
    if (dm_ica_symdecorr(W, k)) {
        rc = -1;
        goto end;
    }
    dm_ica_sums_init(&s, k, k, c);
    for (int it = 0; it < max_iter; it++) {
        dm_ica_sums_reset(&s);
        be->sums_update(&s, fun, alpha, W, k, z, rows);
        if (dm_ica_step(&s, 0, W, W1, &res->lim)) {
            rc = -1;
            goto end;
        }
        memcpy(W, W1, (size_t)(k * k) * sizeof(double));
        res->iterations = it + 1;
        if (res->lim < tol) {
            res->converged = 1;
            break;
        }
    }
end:
    dm_ica_sums_free(&s);
    free(W1);
    return rc;
}
