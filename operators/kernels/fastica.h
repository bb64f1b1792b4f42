/*
 * fastica.h: kernels of parallel FastICA on whitened data, with
 * scikit-learn's semantics (Hyvarinen 1999; sklearn/decomposition/_fastica.py,
 * _ica_par), split so that the data can stream:
 *
 *   W <- symdecorr(E[g(W z) z^T] - diag(E[g'(W z)]) W)
 *   symdecorr(W) = (W W^T)^(-1/2) W   (eigendecomposition of W W^T)
 *   stop when max_i | |(W_new W^T)_ii| - 1 | < tol
 *
 * An iteration needs only two sums over the rows z (k wide): sum g(Wz) z^T
 * (k x k) and sum g'(Wz) (k). dm_ica_sums holds them in double; it takes any
 * number of chunks and merges with another accumulator, so one iteration may
 * be split over chunks, threads or processes. Several starting matrices (S
 * seeds) are stacked into one (S k x k) matrix and updated by the same GEMMs.
 *
 * The starting matrix is sklearn's: numpy's legacy RandomState(seed).normal
 * (MT19937, polar Box-Muller: dm_np_random), drawn as a k x k matrix in C
 * order. Given the same whitened data in float64, sklearn's FastICA(whiten=
 * False, random_state=seed) and these kernels start from the same W; they then
 * differ only by the float32 arithmetic of the fast path.
 *
 * Backends. The sums are reached through dm_ica_backend, chosen once from the
 * compute context when a node opens: "cpu" runs float32 GEMMs on cache-sized
 * blocks with a vectorised tanh, "ref" plain double arithmetic one row at a
 * time with libm. tests/test_fastica.c runs every entry against "ref". A CUDA
 * backend adds an entry (gpu/fastica.cu) and a case in dm_ica_backend_for.
 *
 * Every function that can fail returns 0 or -1 with dm_fail(); storage made by
 * *_init is released by *_free (which accepts a zeroed struct).
 */
#ifndef DM_FASTICA_H
#define DM_FASTICA_H

#include <stdint.h>

#include "compute.h"

/* The contrast function G (sklearn's `fun`): logcosh (g = tanh(alpha u),
 * g' = alpha (1 - g^2)), exp (g = u exp(-u^2/2), g' = (1 - u^2) exp(-u^2/2)),
 * cube (g = u^3, g' = 3 u^2). */
typedef enum { DM_ICA_LOGCOSH = 0, DM_ICA_EXP, DM_ICA_CUBE } dm_ica_fun;

/* "logcosh", "exp", "cube" -> fun; -1 with dm_fail otherwise. */
int dm_ica_fun_parse(const char *s, dm_ica_fun *fun);
const char *dm_ica_fun_name(dm_ica_fun fun);

/* ---- numpy's legacy RandomState, for sklearn's starting matrix ---------- */

typedef struct {
    uint32_t key[624];
    int pos;
    int has_gauss;
    double gauss;
} dm_np_random;

/* RandomState(seed): MT19937 init_genrand, no cached gaussian. */
void dm_np_random_seed(dm_np_random *r, uint32_t seed);
uint32_t dm_np_random_u32(dm_np_random *r);
/* random_sample(): 53-bit double in [0, 1). */
double dm_np_random_double(dm_np_random *r);
/* standard_normal() of the legacy generator (polar method, pairs cached). */
double dm_np_random_gauss(dm_np_random *r);

/* W (k, k) = RandomState(seed).normal(size=(k, k)): sklearn's w_init. */
void dm_ica_w_init(double *W, int64_t k, uint32_t seed);

/* ---- linear algebra ------------------------------------------------------ */

/* W (k, k) <- (W W^T)^(-1/2) W in place, with sklearn's clip of the
 * eigenvalues at DBL_MIN. -1 if LAPACK fails or W is not finite. */
int dm_ica_symdecorr(double *W, int64_t k);

/* max_i | |sum_j W1[i,j] W[i,j]| - 1 |, sklearn's convergence measure. */
double dm_ica_lim(const double *W1, const double *W, int64_t k);

/* Amari distance of P = W_est A_true (k, k) (Amari, Cichocki and Yang 1996,
 * normalised to [0, 1] by 2 k (k - 1)): 0 is perfect. */
double dm_amari_distance(const double *P, int64_t k);

/* Matches the rows of B (n, k) to the rows of A (n, k) maximising the sum of
 * |cos| (the Hungarian algorithm on cost 1 - |cos|). match[i] is the row of B
 * assigned to row i of A, sign[i] is +1 or -1 (the sign of the cosine), and
 * cosine[i] (may be NULL) the matched |cos|. Rows need not be unit. FastICA's
 * seeds have n = k rows, RICA's n = K (op_rica.c). */
void dm_ica_match(const double *A, const double *B, int64_t n, int64_t k, int64_t *match, int *sign,
                  double *cosine);

/* Minimum-cost assignment of an (n, n) cost matrix (Hungarian algorithm with
 * potentials, O(n^3)): assign[i] = column of row i. */
void dm_hungarian(const double *cost, int64_t n, int64_t *assign);

/* ---- the two sums of an iteration ---------------------------------------- */

typedef struct {
    int64_t m;    /* rows of the stacked unmixing matrix (seeds x k) */
    int64_t k;    /* width of z */
    int64_t n;    /* rows of z seen */
    double *gz;   /* (m, k) sum over rows of g(W z) z^T */
    double *dg;   /* (m) sum over rows of g'(W z) */
    float *wf;    /* (m, k) W in float32, the "cpu" update's copy */
    int threads;  /* the "cpu" update's worker threads (the context's) */
} dm_ica_sums;

#define DM_ICA_SUMS_INIT {0, 0, 0, NULL, NULL, NULL, 0}

/* Zeroed sums for m stacked rows of width k, updated on c's threads. */
void dm_ica_sums_init(dm_ica_sums *s, int64_t m, int64_t k, const dm_compute *c);
void dm_ica_sums_free(dm_ica_sums *s);
void dm_ica_sums_reset(dm_ica_sums *s);
/* Bytes dm_ica_sums_init and an update (per worker thread of c) allocate. */
int64_t dm_ica_sums_bytes(int64_t m, int64_t k, const dm_compute *c);
/* a <- a + b; -1 (DM_E_SHAPE) if the shapes differ. */
int dm_ica_sums_merge(dm_ica_sums *a, const dm_ica_sums *b);

typedef struct dm_ica_backend {
    const char *name; /* "ref", "cpu", "cuda" */
    /* Adds z (rows, k) float32 row-major to the first mrows rows of the sums,
     * under W (mrows <= s->m, k): the stacked unmixing matrices of the seeds
     * still running.
     *   "cpu": W is rounded to float32; the rows are split into s->threads
     *     ranges; each thread walks its range in blocks that fit its L2 cache
     *     (about 2048 rows at k = 64) with single-threaded SGEMMs: W z, then g
     *     and the sum of g' in one vectorised loop, then g^T z, each block's
     *     float sums added into the thread's double sums, and the threads' sums
     *     added in thread order (reproducible for a given thread count). Pass
     *     as many rows as are at hand (a whole in-RAM matrix): one call, one
     *     fork and join.
     *   "ref": the same sums in double, one row at a time, libm tanh / exp. */
    void (*sums_update)(dm_ica_sums *s, dm_ica_fun fun, double alpha, const double *W, int64_t mrows,
                        const float *z, int64_t rows);
    /* NULL, or: z (rows, k) stays unchanged until the next call (z NULL: from
     * now on nothing is promised), so the backend may keep a copy where it
     * computes ("cuda": in the GPU's memory, sent once for all iterations in
     * memory) and read that for sums_update's rows inside it. */
    void (*hold)(const float *z, int64_t rows, int64_t k);
} dm_ica_backend;

extern const dm_ica_backend dm_ica_backend_ref, dm_ica_backend_cpu;

/* "ref" when c->reference, else the device's: "cuda" (gpu/fastica.cu) for
 * DM_DEVICE_CUDA when libdmica-cuda.so sees a GPU, else "cpu". */
const dm_ica_backend *dm_ica_backend_for(const dm_compute *c);
/* The "cuda" entry, or NULL where there is no GPU library or device (device.h). */
const dm_ica_backend *dm_ica_backend_cuda(void);

/* One fixed-point step for the k rows of the stack starting at row r0 (a
 * seed): W1 = symdecorr(gz/n - diag(dg/n) W), *lim the convergence measure.
 * -1 with dm_fail if no rows were seen or the sums are not finite. */
int dm_ica_step(const dm_ica_sums *s, int64_t r0, const double *W, double *W1, double *lim);

/* Vectorised float32 tanh (rational minimax approximation, max abs error
 * about 1e-7 over the reals): y[i] = tanh(x[i]); x and y may alias. */
void dm_tanhf_vec(float *y, const float *x, int64_t n);

/* ---- whole runs on data in memory (tests, warm starts) ------------------- */

typedef struct {
    int iterations;  /* fixed-point steps taken */
    int converged;   /* lim < tol was reached */
    double lim;      /* the last convergence measure */
} dm_ica_result;

/* Runs parallel FastICA on z (rows, k) float32 in memory from W (k, k), which
 * is first decorrelated (as sklearn does with w_init) and then overwritten by
 * the result, with the sums of c's backend. -1 with dm_fail on non-finite
 * sums. */
int dm_ica_fit(double *W, int64_t k, const float *z, int64_t rows, dm_ica_fun fun, double alpha,
               double tol, int max_iter, const dm_compute *c, dm_ica_result *res);

#endif
