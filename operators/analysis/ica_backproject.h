/*
 * ica_backproject.h: FastICA's unmixing matrix taken back to activation
 * space, and the comparison of its patterns with an SAE's decoder rows.
 *
 * With PCA whitening z = L^(-1/2) C (e - mean) (L the k top eigenvalues, C
 * their eigenvectors as rows, k x d) and the ICA model z = A s, W = A^-1
 * (Hyvarinen & Oja 2000, "Independent component analysis: algorithms and
 * applications", sections 5.2 and 6.3):
 *   mixing      (d, k)  C^T L^(1/2) A: e - mean = mixing s on the top-k span
 *   directions  (k, d)  the patterns: columns of mixing, normalised. A pattern
 *                       is what a component writes into activation space, the
 *                       analogue of an SAE decoder row (Haufe et al. 2014, "On
 *                       the interpretation of weight vectors of linear models
 *                       in multivariate neuroimaging", NeuroImage 87)
 *   filters     (k, d)  W L^(-1/2) C: s = filters (e - mean)
 *   offset      (k)     filters mean (s = filters e - offset), 0 without mean
 *   unscaled    (k, d)  A^T C, rows normalised: the mixing columns taken back
 *                       with the eigenvectors only, leaving out L^(1/2) (as if
 *                       every principal direction had unit variance). Neither
 *                       patterns nor filters; kept as a labelled comparison.
 * The variance the ICA reconstruction explains follows from the eigenvalues
 * alone: mixing filters = C^T C (A W = I), the projection on the top-k span,
 * so it explains sum_{i<k} l_i / sum_i l_i. The unscaled reconstruction z C
 * (without L^(1/2)) leaves l_i (1 - 1/sqrt(l_i))^2 of each top direction's
 * variance and all of the others'.
 *
 * The comparison: |cos| of every row of X with every unit decoder row, per row
 * the maximum and the decoder row reaching it. The null baselines are random
 * directions compared the same way: unit directions (isotropic Gaussian,
 * normalised) and directions drawn from the covariance (C^T L^(1/2) g over all
 * components with l > 0, g standard normal, normalised), from numpy's legacy
 * RandomState(seed) so that numpy reproduces them exactly.
 */
#ifndef DM_ICA_BACKPROJECT_H
#define DM_ICA_BACKPROJECT_H

#include <stdint.h>

#include "summaries.h"

typedef struct {
    double *directions; /* (k, d) */
    double *filters;    /* (k, d) */
    double *unscaled;   /* (k, d) */
    double *mixing;     /* (d, k) */
    double *offset;     /* (k) */
} dm_ica_backprojection;

/* A = W^-1 (k x k, row-major). -1 with DM_E_INPUT when W is singular. */
int dm_ica_invert(const double *W, int64_t k, double *A);

/* Every output of o from W, A = W^-1 (k x k), the top k eigenvalues ev (all
 * > 0), their eigenvectors C (k rows of d) and mean (d, or NULL). The fast
 * version fuses the three products in one pass over C; the reference forms
 * L^(1/2) A, W L^(-1/2) and A^T first and multiplies each by C. */
void dm_ica_backproject(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                        int64_t k, int64_t d, const dm_ica_backprojection *o);
void dm_ica_backproject_ref(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                            int64_t k, int64_t d, const dm_ica_backprojection *o);

/* The same for m components in k whitened dimensions (m may exceed k:
 * RICA's overcomplete W, operators/kernels/rica.h): W (m, k) the unmixing
 * (sources s = W z), A (k, m) the whitened mixing (z ~ A s; for RICA
 * A = W^T, its reconstruction W^T W z). directions, filters and unscaled are
 * (m, d), mixing (d, m) = C^T L^(1/2) A, offset (m). dm_ica_backproject is
 * this with m = k. */
void dm_ica_backproject_rect(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                             int64_t m, int64_t k, int64_t d, const dm_ica_backprojection *o);
void dm_ica_backproject_rect_ref(const double *W, const double *A, const double *ev, const double *C,
                                 const double *mean, int64_t m, int64_t k, int64_t d, const dm_ica_backprojection *o);

/* Of the variance sum_i max(ev_i, 0) over nev eigenvalues: the part the ICA
 * reconstruction on the top k explains, and the part the unscaled one does. */
void dm_ica_variance_explained(const double *ev, int64_t nev, int64_t k, double *by_ica, double *by_unscaled);

/* 2 ns rows of d into X (float32): ns random unit directions, then ns random
 * directions from the covariance (nev eigenvalues ev, eigenvectors C, nev x d),
 * from RandomState(seed): each unit row draws d normals, each covariance row
 * nev normals (one per eigenvalue, used only where ev > 0). */
void dm_ica_null_directions(uint32_t seed, int64_t ns, const double *ev, const double *C, int64_t nev, int64_t d,
                            float *X);

/* rows x d unit rows (float32) of M (f64 when is_f64, else f32): M is
 * (rows, d), or (d, rows) when transposed. Zero rows stay zero. */
void dm_unit_rows_f32(const void *M, int is_f64, int64_t rows, int64_t d, int transposed, float *out);

/* For each of the m rows of X (m, d), the max |x . D_j| over the n rows of D
 * (n, d) and the first j reaching it; maxc -1 and best -1 when n = 0. The fast
 * version: SGEMM blocks of 4096 rows of D; the reference: double sums. */
void dm_max_abs_cos(const float *X, int64_t m, const float *D, int64_t n, int64_t d, double *maxc, int64_t *best);
void dm_max_abs_cos_ref(const float *X, int64_t m, const float *D, int64_t n, int64_t d, double *maxc,
                        int64_t *best);

/* Mean, quantiles (nearest rank: sorted[round(q (m - 1))]), counts above the
 * high and below the low similarity threshold, and 20 bins over [0, 1]. */
void dm_cos_summarise(const double *maxc, int64_t m, dm_cos_summary *s);

#endif
