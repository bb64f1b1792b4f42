/*
 * rica.c: Reconstruction ICA's objective and gradient from streamed sums, and
 * whole runs in memory (rica.h gives the objective and its source).
 *
 * Where the time goes: per evaluation and stacked row, two GEMMs of 2 k flops
 * per row of z (y = z W^T, then g'(y)^T z) and one exp per value of y: the
 * same shape of work as a FastICA iteration (fastica.c), with m = S K rows in
 * place of S k. The reconstruction term costs O(K k^2) per evaluation from the
 * covariance, nothing per row. The float32 GEMMs run on blocks of at most
 * 8192 rows, each block's sums added to double accumulators.
 *
 * g and g' from one exp: for a = |u| and e = exp(-2a),
 *   log cosh u = a - log 2 + log(1 + e),  tanh u = sign(u) (1 - e) / (1 + e),
 * with log(1 + e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3], by its series to
 * s^15 (truncation error below 1e-9): branch-free, so the loop vectorises.
 */
#pragma GCC optimize("no-trapping-math")
#include "rica.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "dm.h"
#include "fastica.h"
#include "lbfgs.h"
#include "vmath.h"

#define DM_RICA_BLOCK 8192

int dm_rica_fun_parse(const char *s, dm_rica_fun *fun)
{
    if (!strcmp(s, "logcosh"))
        *fun = DM_RICA_LOGCOSH;
    else if (!strcmp(s, "sqrt"))
        *fun = DM_RICA_SQRT;
    else
        return dm_fail("g '%s': expected logcosh or sqrt", s);
    return 0;
}

const char *dm_rica_fun_name(dm_rica_fun fun) { return fun == DM_RICA_SQRT ? "sqrt" : "logcosh"; }

/* ---- sums ---------------------------------------------------------------- */

int64_t dm_rica_sums_size(int64_t m, int64_t k) { return 1 + k * k + m + m * k; }

void dm_rica_sums_init(dm_rica_sums *s, int64_t m, int64_t k, const dm_compute *c)
{
    s->m = m, s->k = k;
    s->data = dm_xcalloc((size_t)dm_rica_sums_size(m, k), sizeof(double));
    s->cov = s->data + 1;
    s->obj = s->cov + k * k;
    s->gz = s->obj + m;
    s->wf = dm_xmalloc((size_t)(m * k > 0 ? m * k : 1) * sizeof(float));
    s->threads = c->threads;
}

void dm_rica_sums_free(dm_rica_sums *s)
{
    if (!s)
        return;
    free(s->data);
    free(s->wf);
    memset(s, 0, sizeof *s);
}

void dm_rica_sums_reset(dm_rica_sums *s, int keep_cov)
{
    s->data[0] = 0;
    if (!keep_cov)
        memset(s->cov, 0, (size_t)(s->k * s->k) * sizeof(double));
    memset(s->obj, 0, (size_t)(s->m + s->m * s->k) * sizeof(double));
}

int64_t dm_rica_sums_rows(const dm_rica_sums *s) { return (int64_t)s->data[0]; }

static int64_t block_rows(int64_t m, int64_t k)
{
    int64_t b = ((int64_t)1 << 20) / (4 * (m + k));
    b = b < 64 ? 64 : b > DM_RICA_BLOCK ? DM_RICA_BLOCK : b;
    return b & ~(int64_t)15;
}

int64_t dm_rica_sums_bytes(int64_t m, int64_t k, const dm_compute *c)
{
    /* per worker: a block of y, a block's g'^T z, the g sums and z z^T
     * (float), and the thread's share of the sums (double) */
    int64_t B = block_rows(m, k);
    int64_t per_thread = 4 * (B * m + m * k + m + k * k) + 8 * dm_rica_sums_size(m, k) + 256;
    return 8 * dm_rica_sums_size(m, k) + 4 * m * k + (int64_t)c->threads * per_thread + 256;
}

/* ---- the "cpu" update ---------------------------------------------------- */

/* g summed per column into gsum (m), and y <- g'(y) in place, over a block y
 * (rows, m). */
DM_SIMD_CLONES
static void apply_g(float *y, int64_t rows, int64_t m, dm_rica_fun fun, float eps, float *gsum)
{
    for (int64_t j = 0; j < m; j++)
        gsum[j] = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        float *yr = y + r * m;
        if (fun == DM_RICA_LOGCOSH) {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float u = yr[j], a = fabsf(u), e = dm_expf(-2.0f * a);
                float s = e / (2.0f + e), s2 = s * s;
                float p = 1.0f / 15.0f;
                p = p * s2 + 1.0f / 13.0f;
                p = p * s2 + 1.0f / 11.0f;
                p = p * s2 + 1.0f / 9.0f;
                p = p * s2 + 1.0f / 7.0f;
                p = p * s2 + 1.0f / 5.0f;
                p = p * s2 + 1.0f / 3.0f;
                p = p * s2 + 1.0f;
                gsum[j] += a - 0.693147180559945309f + 2.0f * s * p;
                float t = (1.0f - e) / (1.0f + e);
                yr[j] = copysignf(t, u);
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float u = yr[j], g = sqrtf(u * u + eps);
                gsum[j] += g;
                yr[j] = u / g;
            }
        }
    }
}

/* OpenBLAS's idle pthread workers spin after a threaded call (fastica.c says
 * what this costs); its shutdown hook stops them. Weak: absent elsewhere. */
extern int blas_thread_shutdown_(void) __attribute__((weak));

static void sums_update_cpu(dm_rica_sums *s, dm_rica_fun fun, double eps, const double *Wd, int64_t mrows,
                            const float *z, int64_t rows, int with_cov)
{
    int64_t k = s->k, m = mrows, B = block_rows(m, k), nblocks = (rows + B - 1) / B;
    int64_t size = dm_rica_sums_size(s->m, k);
    if (rows <= 0)
        return;
    float *W = s->wf;
    for (int64_t i = 0; i < m * k; i++)
        W[i] = (float)Wd[i];
    int nt = s->threads;
    nt = nt > nblocks ? (int)nblocks : nt < 1 ? 1 : nt;
    if (nt > 1 && blas_thread_shutdown_)
        blas_thread_shutdown_();
    int blas_threads = dm_blas_serial_begin();
    double *share = dm_xcalloc((size_t)nt * (size_t)size, sizeof(double));
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        float *y = dm_xmalloc_aligned((size_t)(B * m + m * k + m + k * k + 16) * sizeof(float));
        float *part = y + B * m, *gsum = part + m * k, *cz = gsum + m;
        double *sh = share + (size_t)t * (size_t)size, *cov = sh + 1, *obj = cov + k * k, *gz = obj + s->m;
        int64_t b0 = nblocks * t / nt, b1 = nblocks * (t + 1) / nt;
        for (int64_t b = b0; b < b1; b++) {
            int64_t r0 = b * B, nb = rows - r0 < B ? rows - r0 : B;
            const float *zb = z + r0 * k;
            if (m > 0) {
                /* y (nb, m) = z_b (nb, k) W^T (k, m) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)m, (int)k, 1.0f, zb, (int)k, W,
                            (int)k, 0.0f, y, (int)m);
                apply_g(y, nb, m, fun, (float)eps, gsum);
                /* part (m, k) = g'(y)^T (m, nb) z_b (nb, k) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)k, (int)nb, 1.0f, y, (int)m, zb,
                            (int)k, 0.0f, part, (int)k);
                for (int64_t i = 0; i < m * k; i++)
                    gz[i] += part[i];
                for (int64_t i = 0; i < m; i++)
                    obj[i] += gsum[i];
            }
            if (with_cov) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)k, (int)nb, 1.0f, zb, (int)k, zb,
                            (int)k, 0.0f, cz, (int)k);
                for (int64_t i = 0; i < k * k; i++)
                    cov[i] += cz[i];
            }
        }
        free(y);
    }
    dm_blas_serial_end(blas_threads);
    for (int t = 0; t < nt; t++) {
        const double *sh = share + (size_t)t * (size_t)size;
        for (int64_t i = 1; i < size; i++)
            s->data[i] += sh[i];
    }
    free(share);
    s->data[0] += (double)rows;
}

/* ---- the "ref" update: double, one row at a time, libm ------------------- */

static void sums_update_ref(dm_rica_sums *s, dm_rica_fun fun, double eps, const double *W, int64_t mrows,
                            const float *z, int64_t rows, int with_cov)
{
    int64_t k = s->k;
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * k;
        for (int64_t i = 0; i < mrows; i++) {
            double u = 0.0, g, gp;
            for (int64_t j = 0; j < k; j++)
                u += W[i * k + j] * zr[j];
            if (fun == DM_RICA_LOGCOSH) {
                g = fabs(u) + log1p(exp(-2.0 * fabs(u))) - log(2.0);
                gp = tanh(u);
            } else {
                g = sqrt(u * u + eps);
                gp = u / g;
            }
            s->obj[i] += g;
            for (int64_t j = 0; j < k; j++)
                s->gz[i * k + j] += gp * zr[j];
        }
        for (int64_t i = 0; with_cov && i < k; i++)
            for (int64_t j = 0; j < k; j++)
                s->cov[i * k + j] += (double)zr[i] * zr[j];
    }
    s->data[0] += (double)rows;
}

const dm_rica_backend dm_rica_backend_ref = {"ref", sums_update_ref};
const dm_rica_backend dm_rica_backend_cpu = {"cpu", sums_update_cpu};

const dm_rica_backend *dm_rica_backend_for(const dm_compute *c)
{
    return c->reference ? &dm_rica_backend_ref : &dm_rica_backend_cpu;
}

/* ---- objective ----------------------------------------------------------- */

int dm_rica_rownorm(const double *V, int64_t K, int64_t k, double *W)
{
    for (int64_t i = 0; i < K; i++) {
        double s = 0;
        for (int64_t j = 0; j < k; j++)
            s += V[i * k + j] * V[i * k + j];
        if (!(s > 0) || !isfinite(s))
            return dm_fail("RICA row %lld has norm %g: cannot be made unit", (long long)i, sqrt(s));
        s = 1.0 / sqrt(s);
        for (int64_t j = 0; j < k; j++)
            W[i * k + j] = V[i * k + j] * s;
    }
    return 0;
}

int dm_rica_objective(const dm_rica_sums *s, int64_t r0, int64_t K, const double *W, double lambda, double *f,
                      double *G, double *sparsity, double *recon)
{
    int64_t k = s->k, n = dm_rica_sums_rows(s);
    if (n <= 0)
        return dm_fail("RICA objective with no rows seen");
    double inv = 1.0 / (double)n, sp = 0, rc = 0;
    double *C = dm_xmalloc((size_t)(3 * k * k) * sizeof(double)), *A = C + k * k, *AC = A + k * k;
    for (int64_t i = 0; i < k * k; i++)
        C[i] = s->cov[i] * inv;
    /* A = W^T W - I (k, k) */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)k, (int)K, 1.0, W, (int)k, W, (int)k, 0.0, A,
                (int)k);
    for (int64_t i = 0; i < k; i++)
        A[i * k + i] -= 1.0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)k, (int)k, (int)k, 1.0, A, (int)k, C, (int)k, 0.0,
                AC, (int)k);
    /* tr(A C A) = sum_ij (AC)_ij A_ji, A symmetric; then AC <- AC + CA = AC + (AC)^T */
    for (int64_t i = 0; i < k * k; i++)
        rc += AC[i] * A[i];
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = i; j < k; j++) {
            double v = AC[i * k + j] + AC[j * k + i];
            AC[i * k + j] = AC[j * k + i] = v;
        }
    for (int64_t i = 0; i < K; i++) {
        sp += s->obj[r0 + i];
        for (int64_t j = 0; j < k; j++)
            G[i * k + j] = lambda * s->gz[(r0 + i) * k + j] * inv;
    }
    sp *= lambda * inv;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)K, (int)k, (int)k, 2.0, W, (int)k, AC, (int)k, 1.0, G,
                (int)k);
    free(C);
    *f = sp + rc;
    if (sparsity)
        *sparsity = sp;
    if (recon)
        *recon = rc;
    if (!isfinite(*f))
        return dm_fail("RICA objective is not finite (sparsity %g, reconstruction %g)", sp, rc);
    return 0;
}

void dm_rica_grad_v(const double *V, const double *W, const double *G, int64_t K, int64_t k, double *gV)
{
    for (int64_t i = 0; i < K; i++) {
        double gw = 0, vn = 0;
        for (int64_t j = 0; j < k; j++) {
            gw += G[i * k + j] * W[i * k + j];
            vn += V[i * k + j] * V[i * k + j];
        }
        vn = 1.0 / sqrt(vn);
        for (int64_t j = 0; j < k; j++)
            gV[i * k + j] = (G[i * k + j] - gw * W[i * k + j]) * vn;
    }
}

void dm_rica_w_init(double *W, int64_t K, int64_t k, uint32_t seed)
{
    dm_np_random r;
    dm_np_random_seed(&r, seed);
    for (int64_t i = 0; i < K * k; i++)
        W[i] = dm_np_random_gauss(&r);
    dm_rica_rownorm(W, K, k, W); /* a zero row has probability 0 */
}

/* ---- whole runs in memory ------------------------------------------------ */

static double max_abs(const double *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

int dm_rica_fit(double *W, int64_t K, int64_t k, const float *z, int64_t rows, dm_rica_fun fun, double eps,
                double lambda, double tol, double gtol, int max_iter, const dm_compute *c, dm_rica_result *res)
{
    const dm_rica_backend *be = dm_rica_backend_for(c);
    int64_t n = K * k;
    dm_rica_sums s = DM_RICA_SUMS_INIT;
    dm_lbfgs o;
    double *Wt = dm_xmalloc((size_t)n * sizeof(double)), *G = dm_xmalloc((size_t)n * sizeof(double));
    double *gV = dm_xmalloc((size_t)n * sizeof(double));
    int rc = -1;
    memset(res, 0, sizeof *res);
    if (dm_rica_rownorm(W, K, k, W))
        goto out;
    dm_rica_sums_init(&s, K, k, c);
    dm_lbfgs_init(&o, n, 10, W);
    double fprev = INFINITY;
    for (int first = 1;; first = 0) {
        double f, sp, rcn;
        if (dm_rica_rownorm(o.xt, K, k, Wt))
            goto end;
        dm_rica_sums_reset(&s, !first);
        be->sums_update(&s, fun, eps, Wt, K, z, rows, first);
        if (dm_rica_objective(&s, 0, K, Wt, lambda, &f, G, &sp, &rcn))
            goto end;
        dm_rica_grad_v(o.xt, Wt, G, K, k, gV);
        res->evaluations++;
        int st = dm_lbfgs_tell(&o, f, gV);
        if (st == DM_LBFGS_EVAL)
            continue;
        if (st == DM_LBFGS_STUCK) {
            res->stuck = 1;
            break;
        }
        res->iterations = o.iterations;
        res->gnorm = max_abs(o.g, n);
        double rel = (fprev - o.f) / fmax(fmax(fabs(fprev), fabs(o.f)), 1.0);
        fprev = o.f;
        if (rel < tol || res->gnorm < gtol) {
            res->converged = 1;
            break;
        }
        if (o.iterations >= max_iter)
            break;
    }
    /* the result: o.x, and its terms evaluated once more */
    if (dm_rica_rownorm(o.x, K, k, W))
        goto end;
    dm_rica_sums_reset(&s, 1);
    be->sums_update(&s, fun, eps, W, K, z, rows, 0);
    if (dm_rica_objective(&s, 0, K, W, lambda, &res->f, G, &res->sparsity, &res->recon))
        goto end;
    dm_rica_grad_v(o.x, W, G, K, k, gV);
    res->gnorm = max_abs(gV, n);
    rc = 0;
end:
    dm_lbfgs_free(&o);
    dm_rica_sums_free(&s);
out:
    free(Wt), free(G), free(gV);
    return rc;
}
