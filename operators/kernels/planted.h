/*
 * planted.h: a planted data set whose answer is known (the embedded demo's).
 *
 * Activations are sparse sums of `atoms` unit directions in d dimensions (a
 * dictionary D drawn from the seed): each token uses each atom with probability
 * p = l0 / atoms, with magnitude 1 + Exp(1), plus Gaussian noise of std `noise`:
 *
 *   x = sum_j a_j D_j + noise
 *
 * The matching SAE knows every atom but the first `missed`: W_dec = D[missed:],
 * W_enc = D[missed:]^T, b_enc = -threshold, standard ReLU, no b_dec. Its residual
 * holds the missed atoms; whitening and ICA should find them.
 *
 * Two variants (both off by default, which gives the data above): the missed
 * atoms drawn inside a random missed_dim-dimensional subspace of the d
 * dimensions (more of them than missed_dim make an overcomplete residual), and
 * the first `dense` atoms given a dense coefficient on every row, Laplace of
 * unit variance, in place of the sparse 1 + Exp(1) ones (docs/rica.md: where
 * RICA recovers more atoms than FastICA).
 */
#ifndef DM_PLANTED_H
#define DM_PLANTED_H

#include <stdint.h>

#include "dm.h"

/* D: m atoms x d, unit rows (malloc'd); missed_dim > 0 (at most d): the first
 * `missed` atoms lie in a random missed_dim-dimensional subspace, the others
 * are drawn as with missed_dim 0. */
float *dm_planted_dictionary(uint64_t seed, int64_t d, int64_t m, int64_t missed, int64_t missed_dim);
/* Rows [row0, row0 + rows) of the data into out (rows x d); atoms [0, dense)
 * get a Laplace coefficient of unit variance on every row, the others are
 * used with probability p (dense 0: all sparse). */
void dm_planted_rows(float *out, int64_t row0, int64_t rows, const float *D, int64_t d, int64_t m, double p,
                     double noise, int64_t dense, uint64_t seed);
/* The hook_name of the matching SAE's cfg.json: the data come from no model. */
#define DM_PLANTED_HOOK "planted"

/* The matching SAE of dictionary D (m x d) as arrays: W_enc (d, m - missed),
 * W_dec (m - missed, d), b_enc (m - missed) = -threshold, b_dec (d) = 0. */
void dm_planted_sae(const float *D, int64_t d, int64_t m, int64_t missed, double threshold, float *W_enc,
                    float *W_dec, float *b_enc, float *b_dec);
/* Its cfg.json text (SAELens format; malloc'd). */
char *dm_planted_sae_config(int64_t d, int64_t m, int64_t missed, double threshold, uint64_t seed);
/* Writes it into dir (made if missing): cfg.json and sae_weights.safetensors.
 * -1 with dm_fail() on error. */
int dm_planted_write_sae(const char *dir, const float *D, int64_t d, int64_t m, int64_t missed, double threshold,
                         uint64_t seed);

#endif
