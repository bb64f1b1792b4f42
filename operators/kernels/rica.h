/*
 * rica.h: Reconstruction ICA (Le, Karpenko, Ngiam and Ng, "ICA with
 * Reconstruction Cost for Efficient Overcomplete Feature Learning", NeurIPS
 * 2011) on whitened data z (k wide), with W (K x k) and K free to exceed k:
 *
 *   f(W) = (lambda / N) sum_t sum_j g(w_j . z_t) + (1 / N) sum_t ||W^T W z_t - z_t||^2
 *
 * g a smooth L1: log cosh(u) (g' = tanh u) or sqrt(u^2 + eps) (g' = u / g).
 * The rows of W are kept at unit norm as in the paper, by optimising V with
 * W = rownorm(V) (w_j = v_j / ||v_j||): the gradient in V is
 * (I - w_j w_j^T) G_j / ||v_j|| for G the gradient in W.
 *
 * Only the sparsity term needs the rows each time. With C = (1/N) sum z z^T
 * (k x k) and A = W^T W - I, the reconstruction term is tr(A C A) (A is
 * symmetric) and its gradient in W is 2 W (A C + C A). So a pass accumulates
 *   obj (m)      sum_t g(w_i . z_t)            per stacked row i
 *   gz  (m, k)   sum_t g'(w_i . z_t) z_t^T
 * (and, once, cov (k, k) = sum_t z_t z_t^T), all in double and all plain
 * sums: they merge across chunks, threads, shards and MPI ranks by addition.
 * Several runs (seeds) are stacked into one (m = S K) matrix and share the
 * pass and its GEMMs, as FastICA's seeds do (fastica.h).
 *
 * Backends (dm_rica_backend, chosen from the compute context): "ref" plain
 * double arithmetic one row at a time with libm; "cpu" float32 SGEMMs on
 * cache-sized blocks of rows per thread, g and g' from one vectorised exp.
 * tests/test_rica.c runs "cpu" against "ref" and both against a float64 numpy
 * golden (tools/rica_reference.py).
 *
 * Every function that can fail returns 0 or -1 with dm_fail(); *_free accepts
 * a zeroed struct.
 */
#ifndef DM_RICA_H
#define DM_RICA_H

#include <stdint.h>

#include "compute.h"

typedef enum { DM_RICA_LOGCOSH = 0, DM_RICA_SQRT } dm_rica_fun;

/* "logcosh", "sqrt" -> fun; -1 with dm_fail otherwise. */
int dm_rica_fun_parse(const char *s, dm_rica_fun *fun);
const char *dm_rica_fun_name(dm_rica_fun fun);

/* The sums of a pass, in one array so that a pass's partial is one block of
 * doubles: data = [n, cov (k*k), obj (m), gz (m*k)]. */
typedef struct {
    int64_t m;    /* stacked rows (seeds x K) */
    int64_t k;    /* width of z */
    double *data; /* (dm_rica_sums_size(m, k)) */
    double *cov;  /* (k, k) sum z z^T, added only by updates with_cov */
    double *obj;  /* (m) sum g(w_i . z) */
    double *gz;   /* (m, k) sum g'(w_i . z) z^T */
    float *wf;    /* (m, k) W in float32, the "cpu" update's copy */
    int threads;  /* the "cpu" update's worker threads */
} dm_rica_sums;

#define DM_RICA_SUMS_INIT {0, 0, NULL, NULL, NULL, NULL, NULL, 0}

/* Doubles in data: 1 + k k + m + m k. */
int64_t dm_rica_sums_size(int64_t m, int64_t k);
void dm_rica_sums_init(dm_rica_sums *s, int64_t m, int64_t k, const dm_compute *c);
void dm_rica_sums_free(dm_rica_sums *s);
/* Zeroes the sums and the row count (keep_cov: all but cov). */
void dm_rica_sums_reset(dm_rica_sums *s, int keep_cov);
/* Rows seen. */
int64_t dm_rica_sums_rows(const dm_rica_sums *s);
/* Bytes init and an update (per worker thread of c) allocate. */
int64_t dm_rica_sums_bytes(int64_t m, int64_t k, const dm_compute *c);

typedef struct dm_rica_backend {
    const char *name; /* "ref", "cpu" */
    /* Adds z (rows, k) float32 to the first mrows rows of the sums under W
     * (mrows, k) (every row unit), and z z^T to cov when with_cov. eps is
     * sqrt's eps (unused by logcosh). The "cpu" entry splits the rows into
     * s->threads ranges walked in blocks of about 2048 rows with
     * single-threaded SGEMMs (y = z W^T, then g'(y)^T z), and adds the
     * threads' shares in thread order (reproducible for a thread count). */
    void (*sums_update)(dm_rica_sums *s, dm_rica_fun fun, double eps, const double *W, int64_t mrows,
                        const float *z, int64_t rows, int with_cov);
} dm_rica_backend;

extern const dm_rica_backend dm_rica_backend_ref, dm_rica_backend_cpu;
/* "ref" when c->reference, else "cpu". */
const dm_rica_backend *dm_rica_backend_for(const dm_compute *c);

/* W (K, k) = the rows of V divided by their norms; -1 if a row is 0 or not
 * finite. */
int dm_rica_rownorm(const double *V, int64_t K, int64_t k, double *W);

/* The objective of the K stacked rows starting at row r0 of the sums (one
 * seed), at W (K, k, unit rows), with the covariance in s->cov:
 *   *f = lambda obj / n + tr(A C A), G (K, k) = lambda gz / n + 2 W (A C + C A)
 * with C = cov / n and A = W^T W - I; *sparsity and *recon (either may be
 * NULL) get the two terms. -1 with dm_fail when no rows were seen. */
int dm_rica_objective(const dm_rica_sums *s, int64_t r0, int64_t K, const double *W, double lambda, double *f,
                      double *G, double *sparsity, double *recon);

/* The gradient in V: gV_j = (G_j - (G_j . w_j) w_j) / ||v_j||. */
void dm_rica_grad_v(const double *V, const double *W, const double *G, int64_t K, int64_t k, double *gV);

/* W (K, k) = rownorm(RandomState(seed).normal(size=(K, k))): numpy draws the
 * same start (fastica.h's dm_np_random). */
void dm_rica_w_init(double *W, int64_t K, int64_t k, uint32_t seed);

/* ---- whole runs on data in memory ---------------------------------------- */

typedef struct {
    int iterations, evaluations;
    int converged; /* the relative decrease or the gradient fell below its tolerance */
    int stuck;     /* the line search found no lower point (a stop, not an error) */
    double f, sparsity, recon, gnorm; /* at the result; gnorm = max |gV| */
} dm_rica_result;

/* Runs RICA on z (rows, k) in memory from W (K, k) (rows made unit), which is
 * overwritten by the result: L-BFGS (lbfgs.h, 10 pairs) until the relative
 * decrease of f over an iteration is below tol, or max |gV| below gtol, or
 * max_iter iterations. cov (k, k) may be NULL (then computed from z). -1 with
 * dm_fail on non-finite sums. */
int dm_rica_fit(double *W, int64_t K, int64_t k, const float *z, int64_t rows, dm_rica_fun fun, double eps,
                double lambda, double tol, double gtol, int max_iter, const dm_compute *c, dm_rica_result *res);

#endif
