/*
 * stats.h: streaming, mergeable statistics kernels: per-column moments,
 * covariance and cross-covariance co-moments, PCA of a covariance, and the
 * projection of a stream on k directions (whitening).
 *
 * These are pure kernels: they know nothing of nodes, ports or chunks' row
 * numbers, only of float32 row-major blocks (rows x d) and double accumulators.
 * Every accumulator merges with another of the same width (dm_*_merge), so a
 * statistic can be split across chunks, threads or MPI ranks and combined in
 * any order; the merge formulas are Pebay's (2008, "Formulas for robust,
 * one-pass parallel computation of covariances and arbitrary-order statistical
 * moments") and Chan, Golub and LeVeque's (1979), written out in stats.c.
 *
 * Each accumulator has a fast update (per chunk: two passes over the chunk, then
 * one merge; BLAS for the co-moments) and a plain reference update (row by row,
 * Welford/Terriberry) kept beside it. tests/test_stats.c holds the two to 1e-10.
 *
 * Conventions:
 *   - variances and covariances are population ones (divide by n, numpy ddof=0,
 *     scipy.stats bias=True): the statistics describe the stream seen, and with
 *     millions of tokens the n vs n-1 distinction is below any tolerance anyway.
 *   - NaN and Inf are not filtered: one NaN in a column makes that column's
 *     statistics NaN (and, for co-moments, its row and column). Callers that can
 *     meet non-finite values must drop or reject them before updating.
 *   - Accumulators are created with *_init (which aborts on out-of-memory, like
 *     dm_xmalloc) and released with *_free (which accepts a zeroed or freed
 *     struct). Functions that can fail return 0 or -1 with dm_fail().
 *   - Fast updates use OpenMP threads and OpenBLAS, with the pools that
 *     dm_compute_set_threads sized (compute.h). Moments are bitwise the same
 *     for any thread count; co-moments may differ in the last bits, as BLAS
 *     sums do.
 *
 * Backends. Nodes reach the per-chunk kernels (the updates and the projection)
 * through dm_stats_backend, chosen once from the compute context when they
 * open: "cpu" is the fast updates, "ref" the plain ones. tests/test_stats.c
 * runs every entry against "ref". A CUDA backend adds an entry (gpu/stats.cu)
 * and a case in dm_stats_backend_for.
 */
#ifndef DM_STATS_H
#define DM_STATS_H

#include <stdint.h>

#include "compute.h"

/* ---- per-column moments up to the fourth ------------------------------- */

/* Centred power sums of each column: m2[j] = sum_i (x_ij - mean_j)^2, etc. */
typedef struct {
    int64_t d; /* columns */
    int64_t n; /* rows seen (the same for every column: no NaN skipping) */
    double *mean; /* (d) */
    double *m2;   /* (d) */
    double *m3;   /* (d) */
    double *m4;   /* (d) */
} dm_moments;

#define DM_MOMENTS_INIT {0, 0, NULL, NULL, NULL, NULL}

/* Zeroed accumulator for d > 0 columns; one allocation of 4*d doubles. */
void dm_moments_init(dm_moments *m, int64_t d);
void dm_moments_free(dm_moments *m); /* accepts NULL and zeroed */
void dm_moments_reset(dm_moments *m); /* back to n = 0, keeping storage */

/* x is (rows, m->d) float32 row-major. Fast: chunk mean, centred powers, merge. */
void dm_moments_update(dm_moments *m, const float *x, int64_t rows);
/* Same result, one row at a time (Welford/Terriberry); the reference. */
void dm_moments_update_ref(dm_moments *m, const float *x, int64_t rows);
/* a <- a merged with b. -1 if the widths differ. b may be empty; an empty a
 * becomes an exact copy of b. */
int dm_moments_merge(dm_moments *a, const dm_moments *b);

/* Population statistics, each output (d) or NULL to skip:
 *   var = m2/n, skew = (m3/n) / (m2/n)^1.5, excess kurtosis = (m4/n)/(m2/n)^2 - 3.
 * With n = 0 everything is NaN. A column with no spread (m2/n at or below
 * (1e-15 |mean|)^2, the test scipy.stats uses) has var as computed (0 or a
 * rounding residue) and NaN skew and kurtosis, since they are 0/0 there. */
void dm_moments_finalize(const dm_moments *m, double *mean, double *var, double *skew,
                         double *exkurt);

/* ---- covariance co-moments ---------------------------------------------- */

/* C = sum_i (x_i - mean)(x_i - mean)^T. Only the lower triangle (C[i*d+j], j <= i)
 * is maintained; the strict upper triangle is scratch until finalize mirrors it. */
typedef struct {
    int64_t d;
    int64_t n;
    double *mean; /* (d) */
    double *C;    /* (d, d), lower triangle valid */
    double *work; /* (block_rows, d) scratch: a block of the chunk, centred, in double */
    int64_t block_rows;
} dm_covariance;

#define DM_COVARIANCE_INIT {0, 0, NULL, NULL, NULL, 0}

void dm_covariance_init(dm_covariance *c, int64_t d);
void dm_covariance_free(dm_covariance *c);
void dm_covariance_reset(dm_covariance *c);
/* Bytes dm_covariance_init allocates for width d (for memory budgets). */
int64_t dm_covariance_bytes(int64_t d);

/* x is (rows, c->d) float32. Fast: chunk mean, then blocks of the centred chunk
 * in double through cblas_dsyrk, then one rank-1 merge. */
void dm_covariance_update(dm_covariance *c, const float *x, int64_t rows);
/* Reference: C += (n_old/n) (x - mean_old)(x - mean_old)^T per row. */
void dm_covariance_update_ref(dm_covariance *c, const float *x, int64_t rows);
/* a <- a merged with b: C = CA + CB + (nA nB/n) delta delta^T. -1 if widths differ.
 * b may be empty; an empty a becomes an exact copy of b. */
int dm_covariance_merge(dm_covariance *a, const dm_covariance *b);
/* cov (d, d), full and exactly symmetric, = C/n (population); mean (d); either
 * may be NULL. -1 if no rows were seen. */
int dm_covariance_finalize(const dm_covariance *c, double *cov, double *mean);

/* ---- cross-covariance of two aligned streams --------------------------- */

/* Row i of x (dx wide) and row i of y (dy wide) belong to the same token.
 * C = sum_i (x_i - mean_x)(y_i - mean_y)^T, full (dx, dy). */
typedef struct {
    int64_t dx, dy;
    int64_t n;
    double *mean_x; /* (dx) */
    double *mean_y; /* (dy) */
    double *C;      /* (dx, dy) */
    double *work_x; /* (block_rows, dx) scratch */
    double *work_y; /* (block_rows, dy) scratch */
    int64_t block_rows;
} dm_xcovariance;

#define DM_XCOVARIANCE_INIT {0, 0, 0, NULL, NULL, NULL, NULL, NULL, 0}

void dm_xcovariance_init(dm_xcovariance *c, int64_t dx, int64_t dy);
void dm_xcovariance_free(dm_xcovariance *c);
void dm_xcovariance_reset(dm_xcovariance *c);
int64_t dm_xcovariance_bytes(int64_t dx, int64_t dy);

/* x is (rows, dx), y is (rows, dy), float32. Fast: cblas_dgemm per block. */
void dm_xcovariance_update(dm_xcovariance *c, const float *x, const float *y, int64_t rows);
void dm_xcovariance_update_ref(dm_xcovariance *c, const float *x, const float *y,
                               int64_t rows);
/* C = CA + CB + (nA nB/n) delta_x delta_y^T. -1 if widths differ. An empty a
 * becomes an exact copy of b. */
int dm_xcovariance_merge(dm_xcovariance *a, const dm_xcovariance *b);
/* cov (dx, dy) = C/n; means may be NULL. -1 if no rows were seen. */
int dm_xcovariance_finalize(const dm_xcovariance *c, double *cov, double *mean_x,
                            double *mean_y);

/* ---- accumulators on disk ------------------------------------------------ */

/* A shard's partial result (op.h, save_partial) is its accumulators, saved
 * whole and merged later with dm_*_merge. Each is one 1-D float64 .npy
 * written atomically, its row count first (exact: at most 2^53 rows):
 *   moments         [n, mean (d), m2 (d), m3 (d), m4 (d)]
 *   covariance      [n, mean (d), C (d x d, row-major; only the lower triangle
 *                    is meaningful)]
 *   cross-covariance [n, mean_x (dx), mean_y (dy), C (dx x dy)]
 * Saving and loading copy the values bitwise, so a saved accumulator merged
 * into an empty one is the accumulator itself.
 * Loading reads into an accumulator already made with *_init at the width the
 * caller expects (its previous contents are replaced); a file that is missing
 * (DM_E_IO), truncated, of another width or dtype, or whose row count is not a
 * count (DM_E_CORRUPT) fails with a message naming it. */
int dm_moments_save(const dm_moments *m, const char *path);
int dm_moments_load(dm_moments *m, const char *path);
int dm_covariance_save(const dm_covariance *c, const char *path);
int dm_covariance_load(dm_covariance *c, const char *path);
int dm_xcovariance_save(const dm_xcovariance *c, const char *path);
int dm_xcovariance_load(dm_xcovariance *c, const char *path);

/* ---- PCA of a covariance ------------------------------------------------ */

typedef struct {
    int64_t d;
    double *eigenvalues; /* (d) descending, as LAPACK returns them (may hold
                            tiny negatives for a singular covariance) */
    double *components;  /* (d, d) row i = unit eigenvector of eigenvalue i */
    double *explained_variance_ratio;  /* (d) max(lambda_i,0) / sum max(lambda,0) */
    double *cumulative_variance_ratio; /* (d) running sum of the above */
} dm_pca;

#define DM_PCA_INIT {0, NULL, NULL, NULL, NULL}

/* Eigendecomposition of the symmetric (d, d) cov with LAPACKE_dsyevr (all pairs).
 * Each component's sign is fixed so that its largest-|.| entry is positive (the
 * first such entry on ties), like scikit-learn's svd_flip: the same covariance
 * always gives the same components, whatever LAPACK build runs.
 * Fails (-1, p left empty) if cov holds a non-finite value, is not symmetric to
 * 1e-6 of its largest entry, has no positive eigenvalue, or LAPACK fails.
 * On success p owns its storage: release with dm_pca_free. */
int dm_pca_fit(dm_pca *p, const double *cov, int64_t d);
void dm_pca_free(dm_pca *p);

/* The smallest k whose cumulative ratio reaches fraction (0 < fraction <= 1;
 * a 1e-12 slack absorbs rounding at fraction 1), then capped at kmax when
 * kmax > 0. Always at least 1. */
int64_t dm_pca_auto_k(const dm_pca *p, double fraction, int64_t kmax);

/* Whitening matrix for the first k components: W = diag(1/sqrt(lambda_i)) C_k,
 * so z = W (x - mean) has identity covariance. W is (k, d), caller-allocated.
 * Components with lambda_i < floor * lambda_max (floor relative, e.g. 1e-10)
 * cannot be whitened stably: they are dropped with a dm_warn naming how many,
 * and only the first kept rows of W are written.
 * Non-positive eigenvalues are always dropped (they have no inverse square root).
 * Returns the number of rows kept (1..k), or -1 with dm_fail if k is outside
 * 1..d, floor outside [0, 1), or p is empty. */
int64_t dm_pca_whitening(const dm_pca *p, int64_t k, double floor, double *W);

/* ---- projection ---------------------------------------------------------- */

/* out (rows, k) = (x (rows, d) - mean (d)) @ W^T, W (k, d), all float32
 * row-major; mean may be NULL (no centring). Fast: x - mean in float into the
 * scratch xc (rows, d; unused without mean), then one SGEMM. */
void dm_project(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                const float *mean, float *xc);
/* Reference: each output a double dot product of x - mean (in double) with a
 * row of W, rounded to float. xc is unused. */
void dm_project_ref(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                    const float *mean, float *xc);

/* ---- backends -------------------------------------------------------------- */

typedef struct dm_stats_backend {
    const char *name; /* "ref", "cpu", "cuda" */
    void (*moments_update)(dm_moments *m, const float *x, int64_t rows);
    void (*covariance_update)(dm_covariance *c, const float *x, int64_t rows);
    void (*xcovariance_update)(dm_xcovariance *c, const float *x, const float *y, int64_t rows);
    void (*project)(float *out, const float *x, int64_t rows, const float *W, int64_t k, int64_t d,
                    const float *mean, float *xc);
} dm_stats_backend;

extern const dm_stats_backend dm_stats_backend_ref, dm_stats_backend_cpu;

/* "ref" when c->reference, else the device's: "cuda" (gpu/stats.cu) for
 * DM_DEVICE_CUDA when libdmica-cuda.so is there and sees a GPU, else "cpu". */
const dm_stats_backend *dm_stats_backend_for(const dm_compute *c);
/* The "cuda" entry, or NULL where there is no GPU library or device (device.h). */
const dm_stats_backend *dm_stats_backend_cuda(void);

#endif
