/*
 * stats.c: the streaming statistics kernels declared in stats.h.
 *
 * Workload. A statistics pass sees every token of the run once: at GPT-2 width
 * (d = 768) each row costs about 10 d flops for the moments and d^2 for a
 * covariance rank update, and there are 1e6..1e8 rows. So the per-chunk work
 * must run at BLAS / SIMD speed, while the state stays small (O(d) and O(d^2)
 * doubles) and mergeable across chunks and MPI ranks.
 *
 * Numerics. Raw power sums (sum x, sum x^2, ...) cancel catastrophically when a
 * column's mean is large against its spread (residual streams have means of
 * tens against spreads of one), so every accumulator holds centred sums and
 * combines partial results with the exact pairwise formulas of Pebay (2008) and
 * Chan, Golub and LeVeque (1979), all in double:
 *   n = nA + nB, delta = meanB - meanA
 *   mean = meanA + delta nB/n
 *   M2 = M2A + M2B + delta^2 nA nB/n
 *   M3 = M3A + M3B + delta^3 nA nB (nA - nB)/n^2 + 3 delta (nA M2B - nB M2A)/n
 *   M4 = M4A + M4B + delta^4 nA nB (nA^2 - nA nB + nB^2)/n^3
 *        + 6 delta^2 (nA^2 M2B + nB^2 M2A)/n^2 + 4 delta (nA M3B - nB M3A)/n
 *   C  = CA + CB + (nA nB/n) delta delta^T            (co-moments)
 *
 * Fast path. A chunk is summarised on its own first, by two passes over it
 * (its mean, then its centred powers or its centred Gram matrix), and the
 * summary is merged into the running state once. The two-pass chunk summary is
 * as accurate as the formulas above and vectorises: the moment loops run down
 * the rows with SIMD across a tile of columns, and OpenMP threads take whole
 * column tiles, so no thread ever reduces into another's sums and the result is
 * bitwise the same for any thread count. The co-moments convert a block of the
 * chunk to double, centred by the chunk mean, and hand it to cblas_dsyrk (or
 * cblas_dgemm for the cross-covariance) accumulating in place, then apply the
 * merge term with one cblas_dsyr (dger).
 *
 * Reference path. The *_update_ref functions treat every row as a chunk of one
 * (Welford; Terriberry's extension to M3 and M4; d^2 scalar work per row for
 * the co-moments). They are plain enough to check by eye, and
 * tests/test_stats.c holds the fast path to them.
 *
 * Shards. A shard's partial result is its accumulators saved whole (one
 * float64 vector each, bitwise), merged later in shard order with the same
 * pairwise formulas. A merge into an empty accumulator copies instead of
 * applying them, so one shard's partial reproduces the unsharded state exactly.
 *
 * PCA. LAPACK's dsyevr (MRRR) returns all eigenpairs of the symmetric
 * covariance in ascending order; we reverse them, fix each eigenvector's sign
 * (its largest-|.| entry positive, the first on ties) so results are
 * reproducible across LAPACK builds, and derive explained-variance ratios and a
 * whitening matrix with a relative eigenvalue floor.
 */
#include "stats.h"

#include "device.h"

#include "dm.h"
#include "npy.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Columns per OpenMP work item: 64 doubles of accumulators per power, a few
 * cache lines of each row, wide enough for SIMD and narrow enough that d = 768
 * gives every thread of a small machine work. */
#define DM_STATS_TILE 64
/* Below this many values a chunk is summarised by one thread: thread start-up
 * would cost more than the arithmetic. */
#define DM_STATS_PAR_MIN 32768
/* Scratch for one block of a chunk in double (co-moments): about 4 MiB. */
#define DM_STATS_BLOCK_BYTES (4 << 20)

static int64_t block_rows_for(int64_t width)
{
    int64_t b = DM_STATS_BLOCK_BYTES / (8 * width);
    return b < 64 ? 64 : b > 4096 ? 4096 : b;
}

/* out[j - j0] = mean of column j of x (rows, d), for j in [j0, j1). */
static void column_mean(double *out, const float *x, int64_t rows, int64_t d, int64_t j0,
                        int64_t j1)
{
    int64_t w = j1 - j0;
    for (int64_t j = 0; j < w; j++)
        out[j] = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        const float *row = x + i * d + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++)
            out[j] += (double)row[j];
    }
    for (int64_t j = 0; j < w; j++)
        out[j] /= (double)rows;
}

/* Chunk mean of every column, threads over column tiles. mean is (d). */
static void chunk_mean(double *mean, const float *x, int64_t rows, int64_t d)
{
    int64_t tiles = (d + DM_STATS_TILE - 1) / DM_STATS_TILE;
#pragma omp parallel for schedule(static) if (rows * d >= DM_STATS_PAR_MIN && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t j0 = t * DM_STATS_TILE, j1 = j0 + DM_STATS_TILE < d ? j0 + DM_STATS_TILE : d;
        column_mean(mean + j0, x, rows, d, j0, j1);
    }
}

/* ---- moments ------------------------------------------------------------ */

void dm_moments_init(dm_moments *m, int64_t d)
{
    memset(m, 0, sizeof *m);
    m->d = d;
    m->mean = dm_xcalloc((size_t)(4 * d), sizeof(double));
    m->m2 = m->mean + d;
    m->m3 = m->m2 + d;
    m->m4 = m->m3 + d;
}

void dm_moments_free(dm_moments *m)
{
    if (!m)
        return;
    free(m->mean);
    memset(m, 0, sizeof *m);
}

void dm_moments_reset(dm_moments *m)
{
    m->n = 0;
    memset(m->mean, 0, (size_t)(4 * m->d) * sizeof(double));
}

/* Merges the summary (nB, meanB, M2B, M3B, M4B) of one column into (nA, *mean,
 * *M2, *M3, *M4): Pebay (2008), as written out in the file header. Every
 * right-hand side uses the old A values. */
static inline void merge_column(double nA, double nB, double *mean, double *M2, double *M3,
                                double *M4, double meanB, double M2B, double M3B, double M4B)
{
    if (nB == 0.0)
        return;
    if (nA == 0.0) {
        *mean = meanB, *M2 = M2B, *M3 = M3B, *M4 = M4B;
        return;
    }
    double n = nA + nB, delta = meanB - *mean, delta2 = delta * delta;
    double M2A = *M2, M3A = *M3, M4A = *M4;
    *mean += delta * (nB / n);
    *M2 = M2A + M2B + delta2 * nA * nB / n;
    *M3 = M3A + M3B + delta2 * delta * nA * nB * (nA - nB) / (n * n) +
          3.0 * delta * (nA * M2B - nB * M2A) / n;
    *M4 = M4A + M4B + delta2 * delta2 * nA * nB * (nA * nA - nA * nB + nB * nB) / (n * n * n) +
          6.0 * delta2 * (nA * nA * M2B + nB * nB * M2A) / (n * n) +
          4.0 * delta * (nA * M3B - nB * M3A) / n;
}

/* x is (rows, d). For columns [j0, j1): the chunk's mean and centred power sums
 * (two passes), then the merge into m. Threads own disjoint tiles. */
static void moments_tile(dm_moments *m, const float *x, int64_t rows, int64_t j0, int64_t j1)
{
    int64_t d = m->d, w = j1 - j0;
    double mc[DM_STATS_TILE], s2[DM_STATS_TILE], s3[DM_STATS_TILE], s4[DM_STATS_TILE];

    column_mean(mc, x, rows, d, j0, j1);
    for (int64_t j = 0; j < w; j++)
        s2[j] = s3[j] = s4[j] = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        const float *row = x + i * d + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; j++) {
            double dv = (double)row[j] - mc[j], dv2 = dv * dv;
            s2[j] += dv2;
            s3[j] += dv2 * dv;
            s4[j] += dv2 * dv2;
        }
    }
    for (int64_t j = 0; j < w; j++)
        merge_column((double)m->n, (double)rows, &m->mean[j0 + j], &m->m2[j0 + j],
                     &m->m3[j0 + j], &m->m4[j0 + j], mc[j], s2[j], s3[j], s4[j]);
}

void dm_moments_update(dm_moments *m, const float *x, int64_t rows)
{
    if (rows <= 0)
        return;
    int64_t d = m->d, tiles = (d + DM_STATS_TILE - 1) / DM_STATS_TILE;
#pragma omp parallel for schedule(static) if (rows * d >= DM_STATS_PAR_MIN && tiles > 1)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t j0 = t * DM_STATS_TILE, j1 = j0 + DM_STATS_TILE < d ? j0 + DM_STATS_TILE : d;
        moments_tile(m, x, rows, j0, j1);
    }
    m->n += rows;
}

/* Welford/Terriberry: adding one value x to (n-1 values, mean, M2, M3, M4),
 *   delta = x - mean, dn = delta/n, t = delta dn (n-1)
 *   mean += dn
 *   M4 += t dn^2 (n^2 - 3n + 3) + 6 dn^2 M2 - 4 dn M3
 *   M3 += t dn (n - 2) - 3 dn M2
 *   M2 += t
 * (the pairwise formulas with nB = 1, M2B = M3B = M4B = 0). */
void dm_moments_update_ref(dm_moments *m, const float *x, int64_t rows)
{
    int64_t d = m->d;
    for (int64_t i = 0; i < rows; i++) {
        double n = (double)(m->n + 1);
        for (int64_t j = 0; j < d; j++) {
            double delta = (double)x[i * d + j] - m->mean[j];
            double dn = delta / n, dn2 = dn * dn, t = delta * dn * (n - 1.0);
            m->mean[j] += dn;
            m->m4[j] += t * dn2 * (n * n - 3.0 * n + 3.0) + 6.0 * dn2 * m->m2[j] -
                        4.0 * dn * m->m3[j];
            m->m3[j] += t * dn * (n - 2.0) - 3.0 * dn * m->m2[j];
            m->m2[j] += t;
        }
        m->n++;
    }
}

int dm_moments_merge(dm_moments *a, const dm_moments *b)
{
    if (a->d != b->d)
        return dm_failc(DM_E_SHAPE, "moments: cannot merge %lld columns into %lld", (long long)b->d,
                        (long long)a->d);
    for (int64_t j = 0; j < a->d; j++)
        merge_column((double)a->n, (double)b->n, &a->mean[j], &a->m2[j], &a->m3[j], &a->m4[j],
                     b->mean[j], b->m2[j], b->m3[j], b->m4[j]);
    a->n += b->n;
    return 0;
}

void dm_moments_finalize(const dm_moments *m, double *mean, double *var, double *skew,
                         double *exkurt)
{
    double n = (double)m->n;
    for (int64_t j = 0; j < m->d; j++) {
        double mu = m->n ? m->mean[j] : NAN;
        double v = m->n ? m->m2[j] / n : NAN;
        double s = NAN, k = NAN;
        /* scipy.stats' "nearly constant" test: spread below double resolution of
         * the mean is rounding, and higher moments of rounding are noise. */
        double tiny = 1e-15 * mu;
        if (m->n && v > tiny * tiny) {
            s = (m->m3[j] / n) / pow(v, 1.5);
            k = (m->m4[j] / n) / (v * v) - 3.0;
        }
        if (mean)
            mean[j] = mu;
        if (var)
            var[j] = v;
        if (skew)
            skew[j] = s;
        if (exkurt)
            exkurt[j] = k;
    }
}

/* ---- covariance --------------------------------------------------------- */

int64_t dm_covariance_bytes(int64_t d)
{
    return 8 * (d + d * d + block_rows_for(d) * d);
}

void dm_covariance_init(dm_covariance *c, int64_t d)
{
    memset(c, 0, sizeof *c);
    c->d = d;
    c->block_rows = block_rows_for(d);
    c->mean = dm_xcalloc((size_t)d, sizeof(double));
    c->C = dm_xcalloc((size_t)(d * d), sizeof(double));
    c->work = dm_xmalloc_aligned((size_t)(c->block_rows * d) * sizeof(double));
}

void dm_covariance_free(dm_covariance *c)
{
    if (!c)
        return;
    free(c->mean);
    free(c->C);
    free(c->work);
    memset(c, 0, sizeof *c);
}

void dm_covariance_reset(dm_covariance *c)
{
    c->n = 0;
    memset(c->mean, 0, (size_t)c->d * sizeof(double));
    memset(c->C, 0, (size_t)(c->d * c->d) * sizeof(double));
}

/* work (rows, d) = x (rows, d) - mean (d), in double. */
static void centre_block(double *work, const float *x, const double *mean, int64_t rows,
                         int64_t d)
{
#pragma omp parallel for schedule(static) if (rows * d >= DM_STATS_PAR_MIN)
    for (int64_t i = 0; i < rows; i++) {
#pragma omp simd
        for (int64_t j = 0; j < d; j++)
            work[i * d + j] = (double)x[i * d + j] - mean[j];
    }
}

void dm_covariance_update(dm_covariance *c, const float *x, int64_t rows)
{
    if (rows <= 0)
        return;
    int64_t d = c->d;
    double *mc = dm_xmalloc((size_t)d * sizeof(double));

    /* C += sum over the chunk of (x - mc)(x - mc)^T: the chunk's own co-moment,
     * accumulated straight into the running C (lower triangle) block by block. */
    chunk_mean(mc, x, rows, d);
    for (int64_t b0 = 0; b0 < rows; b0 += c->block_rows) {
        int64_t nb = rows - b0 < c->block_rows ? rows - b0 : c->block_rows;
        centre_block(c->work, x + b0 * d, mc, nb, d);
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)d, (int)nb, 1.0, c->work,
                    (int)d, 1.0, c->C, (int)d);
    }

    /* The merge term (nA nB/n) delta delta^T, delta = mc - mean. */
    if (c->n == 0) {
        memcpy(c->mean, mc, (size_t)d * sizeof(double));
    } else {
        double nA = (double)c->n, nB = (double)rows, n = nA + nB;
        for (int64_t j = 0; j < d; j++)
            mc[j] -= c->mean[j];
        cblas_dsyr(CblasRowMajor, CblasLower, (int)d, nA * nB / n, mc, 1, c->C, (int)d);
        for (int64_t j = 0; j < d; j++)
            c->mean[j] += mc[j] * (nB / n);
    }
    c->n += rows;
    free(mc);
}

void dm_covariance_update_ref(dm_covariance *c, const float *x, int64_t rows)
{
    int64_t d = c->d;
    double *delta = dm_xmalloc((size_t)d * sizeof(double));
    for (int64_t r = 0; r < rows; r++) {
        double nA = (double)c->n, n = nA + 1.0;
        for (int64_t j = 0; j < d; j++)
            delta[j] = (double)x[r * d + j] - c->mean[j];
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = 0; j <= i; j++)
                c->C[i * d + j] += (nA / n) * delta[i] * delta[j];
        for (int64_t j = 0; j < d; j++)
            c->mean[j] += delta[j] / n;
        c->n++;
    }
    free(delta);
}

int dm_covariance_merge(dm_covariance *a, const dm_covariance *b)
{
    int64_t d = a->d;
    if (a->d != b->d)
        return dm_failc(DM_E_SHAPE, "covariance: cannot merge width %lld into width %lld", (long long)b->d,
                        (long long)a->d);
    if (b->n == 0)
        return 0;
    if (a->n == 0) { /* an exact copy: the formula would turn -0.0 into 0.0 and 0 x Inf into NaN */
        memcpy(a->C, b->C, (size_t)(d * d) * sizeof(double));
        memcpy(a->mean, b->mean, (size_t)d * sizeof(double));
        a->n = b->n;
        return 0;
    }
    double nA = (double)a->n, nB = (double)b->n, n = nA + nB, f = nA * nB / n;
    for (int64_t i = 0; i < d; i++) {
        double di = b->mean[i] - a->mean[i];
        for (int64_t j = 0; j <= i; j++)
            a->C[i * d + j] += b->C[i * d + j] + f * di * (b->mean[j] - a->mean[j]);
    }
    for (int64_t j = 0; j < d; j++)
        a->mean[j] += (b->mean[j] - a->mean[j]) * (nB / n);
    a->n += b->n;
    return 0;
}

int dm_covariance_finalize(const dm_covariance *c, double *cov, double *mean)
{
    int64_t d = c->d;
    if (c->n == 0)
        return dm_fail("covariance: no rows seen");
    if (cov)
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = 0; j <= i; j++)
                cov[i * d + j] = cov[j * d + i] = c->C[i * d + j] / (double)c->n;
    if (mean)
        memcpy(mean, c->mean, (size_t)d * sizeof(double));
    return 0;
}

/* ---- cross-covariance ------------------------------------------------------ */

int64_t dm_xcovariance_bytes(int64_t dx, int64_t dy)
{
    return 8 * (dx + dy + dx * dy + block_rows_for(dx + dy) * (dx + dy));
}

void dm_xcovariance_init(dm_xcovariance *c, int64_t dx, int64_t dy)
{
    memset(c, 0, sizeof *c);
    c->dx = dx, c->dy = dy;
    c->block_rows = block_rows_for(dx + dy);
    c->mean_x = dm_xcalloc((size_t)(dx + dy), sizeof(double));
    c->mean_y = c->mean_x + dx;
    c->C = dm_xcalloc((size_t)(dx * dy), sizeof(double));
    c->work_x = dm_xmalloc_aligned((size_t)(c->block_rows * (dx + dy)) * sizeof(double));
    c->work_y = c->work_x + c->block_rows * dx;
}

void dm_xcovariance_free(dm_xcovariance *c)
{
    if (!c)
        return;
    free(c->mean_x);
    free(c->C);
    free(c->work_x);
    memset(c, 0, sizeof *c);
}

void dm_xcovariance_reset(dm_xcovariance *c)
{
    c->n = 0;
    memset(c->mean_x, 0, (size_t)(c->dx + c->dy) * sizeof(double));
    memset(c->C, 0, (size_t)(c->dx * c->dy) * sizeof(double));
}

void dm_xcovariance_update(dm_xcovariance *c, const float *x, const float *y, int64_t rows)
{
    if (rows <= 0)
        return;
    int64_t dx = c->dx, dy = c->dy;
    double *mcx = dm_xmalloc((size_t)(dx + dy) * sizeof(double)), *mcy = mcx + dx;

    chunk_mean(mcx, x, rows, dx);
    chunk_mean(mcy, y, rows, dy);
    for (int64_t b0 = 0; b0 < rows; b0 += c->block_rows) {
        int64_t nb = rows - b0 < c->block_rows ? rows - b0 : c->block_rows;
        centre_block(c->work_x, x + b0 * dx, mcx, nb, dx);
        centre_block(c->work_y, y + b0 * dy, mcy, nb, dy);
        /* C (dx, dy) += Xc^T (dx, nb) Yc (nb, dy) */
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)dx, (int)dy, (int)nb, 1.0,
                    c->work_x, (int)dx, c->work_y, (int)dy, 1.0, c->C, (int)dy);
    }

    if (c->n == 0) {
        memcpy(c->mean_x, mcx, (size_t)(dx + dy) * sizeof(double));
    } else {
        double nA = (double)c->n, nB = (double)rows, n = nA + nB;
        for (int64_t j = 0; j < dx + dy; j++)
            mcx[j] -= c->mean_x[j]; /* mean_y follows mean_x in one allocation */
        cblas_dger(CblasRowMajor, (int)dx, (int)dy, nA * nB / n, mcx, 1, mcy, 1, c->C, (int)dy);
        for (int64_t j = 0; j < dx + dy; j++)
            c->mean_x[j] += mcx[j] * (nB / n);
    }
    c->n += rows;
    free(mcx);
}

void dm_xcovariance_update_ref(dm_xcovariance *c, const float *x, const float *y,
                               int64_t rows)
{
    int64_t dx = c->dx, dy = c->dy;
    double *delx = dm_xmalloc((size_t)(dx + dy) * sizeof(double)), *dely = delx + dx;
    for (int64_t r = 0; r < rows; r++) {
        double nA = (double)c->n, n = nA + 1.0;
        for (int64_t j = 0; j < dx; j++)
            delx[j] = (double)x[r * dx + j] - c->mean_x[j];
        for (int64_t j = 0; j < dy; j++)
            dely[j] = (double)y[r * dy + j] - c->mean_y[j];
        for (int64_t i = 0; i < dx; i++)
            for (int64_t j = 0; j < dy; j++)
                c->C[i * dy + j] += (nA / n) * delx[i] * dely[j];
        for (int64_t j = 0; j < dx + dy; j++)
            c->mean_x[j] += delx[j] / n;
        c->n++;
    }
    free(delx);
}

int dm_xcovariance_merge(dm_xcovariance *a, const dm_xcovariance *b)
{
    int64_t dx = a->dx, dy = a->dy;
    if (a->dx != b->dx || a->dy != b->dy)
        return dm_failc(DM_E_SHAPE, "cross-covariance: cannot merge %lld x %lld into %lld x %lld",
                        (long long)b->dx, (long long)b->dy, (long long)dx, (long long)dy);
    if (b->n == 0)
        return 0;
    if (a->n == 0) { /* an exact copy, as dm_covariance_merge */
        memcpy(a->C, b->C, (size_t)(dx * dy) * sizeof(double));
        memcpy(a->mean_x, b->mean_x, (size_t)(dx + dy) * sizeof(double));
        a->n = b->n;
        return 0;
    }
    double nA = (double)a->n, nB = (double)b->n, n = nA + nB, f = nA * nB / n;
    for (int64_t i = 0; i < dx; i++) {
        double di = b->mean_x[i] - a->mean_x[i];
        for (int64_t j = 0; j < dy; j++)
            a->C[i * dy + j] += b->C[i * dy + j] + f * di * (b->mean_y[j] - a->mean_y[j]);
    }
    for (int64_t j = 0; j < dx + dy; j++)
        a->mean_x[j] += (b->mean_x[j] - a->mean_x[j]) * (nB / n);
    a->n += b->n;
    return 0;
}

int dm_xcovariance_finalize(const dm_xcovariance *c, double *cov, double *mean_x,
                            double *mean_y)
{
    if (c->n == 0)
        return dm_fail("cross-covariance: no rows seen");
    if (cov)
        for (int64_t i = 0; i < c->dx * c->dy; i++)
            cov[i] = c->C[i] / (double)c->n;
    if (mean_x)
        memcpy(mean_x, c->mean_x, (size_t)c->dx * sizeof(double));
    if (mean_y)
        memcpy(mean_y, c->mean_y, (size_t)c->dy * sizeof(double));
    return 0;
}

/* ---- accumulators on disk -------------------------------------------------- */

/* Row counts up to 2^53 are exact in a float64. */
#define DM_FLAT_N_MAX 9007199254740992.0

/* Writes [n, parts[0] (lens[0] values), parts[1], ...] as a 1-D float64 .npy. */
static int save_flat(const char *path, int64_t n, const double *const *parts, const int64_t *lens, int nparts)
{
    if (n < 0 || (double)n > DM_FLAT_N_MAX)
        return dm_failc(DM_E_INTERNAL, "%s: a row count of %lld cannot be saved exactly", path, (long long)n);
    int64_t total = 1;
    for (int i = 0; i < nparts; i++)
        total += lens[i];
    dm_tensor t;
    dm_tensor_init(&t, DM_F64, 1, &total);
    double *v = t.data;
    v[0] = (double)n;
    int64_t off = 1;
    for (int i = 0; i < nparts; off += lens[i], i++)
        memcpy(v + off, parts[i], (size_t)lens[i] * sizeof(double));
    int rc = dm_npy_save(path, &t);
    dm_tensor_free(&t);
    return rc;
}

/* Reads what save_flat wrote with the same lens into parts; *n gets the count.
 * `what` names the accumulator in messages. */
static int load_flat(const char *path, const char *what, int64_t *n, double *const *parts, const int64_t *lens,
                     int nparts)
{
    dm_npy_map *m = dm_npy_open(path);
    if (!m)
        return -1;
    const dm_npy_header *h = dm_npy_hdr(m);
    int64_t total = 1;
    for (int i = 0; i < nparts; i++)
        total += lens[i];
    int rc = -1;
    if (h->dtype != DM_F64 || h->ndim != 1 || h->shape[0] != total) {
        dm_failc(DM_E_CORRUPT, "%s: not the partial %s expected: want a vector of %lld float64 values, found a %d-D %s "
                 "array of %lld values",
                 path, what, (long long)total, h->ndim, dm_dtype_name(h->dtype),
                 (long long)(h->ndim ? h->shape[0] * (h->ndim > 1 ? h->shape[1] : 1) : 1));
        goto end;
    }
    const unsigned char *v = dm_npy_data(m);
    double cnt;
    memcpy(&cnt, v, sizeof cnt);
    if (!(cnt >= 0 && cnt <= DM_FLAT_N_MAX && cnt == floor(cnt))) {
        dm_failc(DM_E_CORRUPT, "%s: partial %s: row count %g is not a count", path, what, cnt);
        goto end;
    }
    *n = (int64_t)cnt;
    size_t off = sizeof(double);
    for (int i = 0; i < nparts; off += (size_t)lens[i] * sizeof(double), i++)
        memcpy(parts[i], v + off, (size_t)lens[i] * sizeof(double));
    rc = 0;
end:
    dm_npy_close(m);
    return rc;
}

int dm_moments_save(const dm_moments *m, const char *path)
{
    const double *parts[4] = {m->mean, m->m2, m->m3, m->m4};
    int64_t lens[4] = {m->d, m->d, m->d, m->d};
    return save_flat(path, m->n, parts, lens, 4);
}

int dm_moments_load(dm_moments *m, const char *path)
{
    double *parts[4] = {m->mean, m->m2, m->m3, m->m4};
    int64_t lens[4] = {m->d, m->d, m->d, m->d};
    char what[64];
    snprintf(what, sizeof what, "moments of %lld columns", (long long)m->d);
    return load_flat(path, what, &m->n, parts, lens, 4);
}

int dm_covariance_save(const dm_covariance *c, const char *path)
{
    const double *parts[2] = {c->mean, c->C};
    int64_t lens[2] = {c->d, c->d * c->d};
    return save_flat(path, c->n, parts, lens, 2);
}

int dm_covariance_load(dm_covariance *c, const char *path)
{
    double *parts[2] = {c->mean, c->C};
    int64_t lens[2] = {c->d, c->d * c->d};
    char what[64];
    snprintf(what, sizeof what, "covariance of width %lld", (long long)c->d);
    return load_flat(path, what, &c->n, parts, lens, 2);
}

int dm_xcovariance_save(const dm_xcovariance *c, const char *path)
{
    const double *parts[3] = {c->mean_x, c->mean_y, c->C};
    int64_t lens[3] = {c->dx, c->dy, c->dx * c->dy};
    return save_flat(path, c->n, parts, lens, 3);
}

int dm_xcovariance_load(dm_xcovariance *c, const char *path)
{
    double *parts[3] = {c->mean_x, c->mean_y, c->C};
    int64_t lens[3] = {c->dx, c->dy, c->dx * c->dy};
    char what[80];
    snprintf(what, sizeof what, "cross-covariance of %lld x %lld", (long long)c->dx, (long long)c->dy);
    return load_flat(path, what, &c->n, parts, lens, 3);
}

/* ---- PCA ------------------------------------------------------------------- */

void dm_pca_free(dm_pca *p)
{
    if (!p)
        return;
    free(p->eigenvalues);
    memset(p, 0, sizeof *p);
}

int dm_pca_fit(dm_pca *p, const double *cov, int64_t d)
{
    memset(p, 0, sizeof *p);
    if (d <= 0 || d > 46340) /* d*d must fit LAPACK's 32-bit int */
        return dm_fail("pca: covariance width %lld out of range", (long long)d);

    double amax = 0.0, asym = 0.0;
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < d; j++) {
            double v = cov[i * d + j];
            if (!isfinite(v))
                return dm_fail("pca: covariance[%lld][%lld] is %g (non-finite input data?)",
                               (long long)i, (long long)j, v);
            amax = fmax(amax, fabs(v));
            asym = fmax(asym, fabs(v - cov[j * d + i]));
        }
    if (asym > 1e-6 * amax)
        return dm_fail("pca: covariance is not symmetric (max |C - C^T| %g, max |C| %g)", asym,
                       amax);

    /* One allocation: eigenvalues, ratios, cumulative (d each), components (d, d),
     * then LAPACK scratch: the input copy a (d, d), ascending w (d), vectors z (d, d). */
    double *buf = dm_xmalloc((size_t)(3 * d + d * d + d * d + d + d * d) * sizeof(double));
    double *a = buf + 3 * d + d * d, *w = a + d * d, *z = w + d;
    lapack_int *isuppz = dm_xmalloc((size_t)(2 * d) * sizeof(lapack_int));
    lapack_int found = 0;
    memcpy(a, cov, (size_t)(d * d) * sizeof(double));
    lapack_int info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'A', 'L', (lapack_int)d, a,
                                     (lapack_int)d, 0.0, 0.0, 0, 0, LAPACKE_dlamch('S'), &found,
                                     w, z, (lapack_int)d, isuppz);
    free(isuppz);
    if (info != 0 || found != d) {
        free(buf);
        return dm_fail("pca: LAPACKE_dsyevr failed (info %d, %d of %lld eigenpairs)", (int)info,
                       (int)found, (long long)d);
    }
    double largest = w[d - 1];
    if (!(largest > 0.0)) {
        free(buf);
        return dm_fail("pca: covariance has no positive eigenvalue (largest %g): every column "
                       "constant?",
                       largest);
    }

    p->d = d;
    p->eigenvalues = buf;
    p->explained_variance_ratio = buf + d;
    p->cumulative_variance_ratio = buf + 2 * d;
    p->components = buf + 3 * d;

    /* z (d, d) holds eigenvector j in column j, ascending; we want rows, descending. */
    double total = 0.0;
    for (int64_t i = 0; i < d; i++) {
        int64_t src = d - 1 - i, argmax = 0;
        double *row = p->components + i * d;
        p->eigenvalues[i] = w[src];
        for (int64_t k = 0; k < d; k++) {
            row[k] = z[k * d + src];
            if (fabs(row[k]) > fabs(row[argmax]))
                argmax = k;
        }
        if (row[argmax] < 0.0)
            for (int64_t k = 0; k < d; k++)
                row[k] = -row[k];
        total += fmax(w[src], 0.0);
    }
    double cum = 0.0;
    for (int64_t i = 0; i < d; i++) {
        p->explained_variance_ratio[i] = fmax(p->eigenvalues[i], 0.0) / total;
        cum += p->explained_variance_ratio[i];
        p->cumulative_variance_ratio[i] = cum;
    }
    return 0;
}

int64_t dm_pca_auto_k(const dm_pca *p, double fraction, int64_t kmax)
{
    int64_t k = p->d;
    for (int64_t i = 0; i < p->d; i++)
        if (p->cumulative_variance_ratio[i] >= fraction - 1e-12) {
            k = i + 1;
            break;
        }
    if (kmax > 0 && k > kmax)
        k = kmax;
    return k < 1 ? 1 : k;
}

int64_t dm_pca_whitening(const dm_pca *p, int64_t k, double floor, double *W)
{
    int64_t d = p->d, kept = 0;
    if (!p->eigenvalues)
        return dm_fail("whitening: no PCA fitted");
    if (k < 1 || k > d)
        return dm_fail("whitening: k %lld outside 1..%lld", (long long)k, (long long)d);
    if (!(floor >= 0.0 && floor < 1.0))
        return dm_fail("whitening: eigenvalue floor %g outside [0, 1)", floor);

    double cut = floor * p->eigenvalues[0];
    while (kept < k && p->eigenvalues[kept] > 0.0 && p->eigenvalues[kept] >= cut)
        kept++;
    if (kept < k)
        dm_warn("whitening: %lld of %lld components have eigenvalue below %g x the largest "
                "(%g); dropping them, keeping %lld",
                (long long)(k - kept), (long long)k, floor, p->eigenvalues[0],
                (long long)kept);
    for (int64_t i = 0; i < kept; i++) {
        double s = 1.0 / sqrt(p->eigenvalues[i]);
        for (int64_t j = 0; j < d; j++)
            W[i * d + j] = s * p->components[i * d + j];
    }
    return kept;
}

/* ---- projection ------------------------------------------------------------ */

void dm_project(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                const float *mean, float *xc)
{
    if (mean) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < d; j++)
                xc[r * d + j] = x[r * d + j] - mean[j];
        x = xc;
    }
    /* out (rows x k) = x (rows x d) @ W^T (d x k) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)k, (int)d, 1.0f, x, (int)d, W, (int)d,
                0.0f, out, (int)k);
}

void dm_project_ref(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                    const float *mean, float *xc)
{
    (void)xc;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < k; i++) {
            double acc = 0.0;
            for (int64_t j = 0; j < d; j++)
                acc += ((double)x[r * d + j] - (mean ? (double)mean[j] : 0.0)) * (double)W[i * d + j];
            out[r * k + i] = (float)acc;
        }
}

/* ---- backends -------------------------------------------------------------- */

const dm_stats_backend dm_stats_backend_ref = {"ref", dm_moments_update_ref, dm_covariance_update_ref,
                                               dm_xcovariance_update_ref, dm_project_ref};
const dm_stats_backend dm_stats_backend_cpu = {"cpu", dm_moments_update, dm_covariance_update,
                                               dm_xcovariance_update, dm_project};

const dm_stats_backend *dm_stats_backend_cuda(void)
{
    static dm_stats_backend be;
    static int tried, ok;
    if (!tried)
        tried = 1, ok = dm_cuda_fill("dm_cuda_stats_backend", &dm_stats_backend_cpu, &be);
    return ok ? &be : NULL;
}

const dm_stats_backend *dm_stats_backend_for(const dm_compute *c)
{
    if (c->reference)
        return &dm_stats_backend_ref;
    if (c->device == DM_DEVICE_CUDA && dm_stats_backend_cuda())
        return dm_stats_backend_cuda();
    return &dm_stats_backend_cpu;
}
