/*
 * causal.h: does the model use the ICA components of an SAE's residual?
 * Ablations at the SAE's hook, blocks.L.hook_resid_pre, each measured by the
 * next-token cross-entropy and the KL divergence from the clean run over a set
 * of token windows (issue 14; docs/causal.md holds the definitions, and
 * tools/causal_reference.py the float64 reference the tests hold this to).
 *
 * At the hook, per token t: x_t the activation centred per row (as the SAE
 * reads it), recon_t = SAE(x_t), e_t = x_t - recon_t, s_it = f_i . (e_t - mu).
 * Each ablation replaces every x_t by an x'_t and runs the model from the hook
 * (dm_model_run_from: the blocks before it ran once, in dm_causal_new):
 *   the SAE spliced in     x' = recon          (SAELens's evals: CE and KL scores)
 *   zero                   x' = 0
 *   component i            x' = x - s_i a_i    (a_i the mixing column)
 *   all components         x' = x - sum_i s_i a_i
 *   null j matched to i    x' = x - c_ij (u_j . (e - mu)) u_j, c_ij giving the
 *                          removed part the mean squared norm of component i's
 *                          (or, with energy levels, of each level: below)
 *   the PCA control        x' = x - P^T P (e - mu), P the top k principal
 *                          directions of e (as many as there are components)
 * CE is the mean over windows and positions 0..T-2 of -log p(next token); KL
 * the mean over the same positions of KL(p_clean || p_new), both from float32
 * logits with the log-softmax, differences and sums in double.
 *
 * Memory: x and recon of every token (2 W T d floats), cov(e) (d^2 doubles),
 * and each model call's logits (at most `rows` token rows x vocab floats, for
 * the clean run and the ablations).
 */
#ifndef DM_CAUSAL_H
#define DM_CAUSAL_H

#include <stdint.h>

#include "compute.h"
#include "model.h"
#include "sae.h"

typedef struct dm_causal dm_causal;

/* The first pass over W windows of T token ids: the model to blocks.<layer>.
 * hook_resid_pre (m loaded whole, with ln_f: dm_model_load with
 * DM_MODEL_DEPTH_ALL), the SAE on its rows, centred per row with center (as
 * the SAE was trained: its cfg.json's center_writing_weights), on c's
 * backend, kept; the
 * residual's co-moments about mu (d) in double. rows: the most token rows a
 * model call takes (at least T). NULL with the error recorded on failure. */
dm_causal *dm_causal_new(dm_model *m, int layer, const dm_sae *sae, const dm_compute *c, const int32_t *windows,
                         int64_t W, int T, int center, const float *mu, int64_t rows);
void dm_causal_free(dm_causal *cz); /* accepts NULL */
/* cov(e) (d, d) = mean over the tokens of (e - mu)(e - mu)^T: where the nulls
 * of the second kind come from, and the PCA control's directions. */
const double *dm_causal_cov(const dm_causal *cz);

/* The directions of an ablation study (float32, row-major). */
typedef struct {
    int64_t k;
    const float *filters; /* (k, d) */
    const float *mixing;  /* (d, k) */
    int64_t nnull;
    const float *nulls;   /* (nnull, d) directions, unit length */
    const float *pcs;     /* (k, d) the PCA control's unit directions, or NULL: none */
    /* 0: each null is scaled to each component's energy (k nnull ablations).
     * L >= 2: to L energies spaced evenly in log between the smallest and the
     * largest component's (L nnull ablations), and null j's KL and delta CE at
     * component i's energy interpolated between the two levels around it,
     * linearly in log energy (KL in log KL: KL grows as a power of the removed
     * energy). The extreme components sit on a level, exactly matched. */
    int64_t levels;
} dm_causal_dirs;

typedef struct {
    int64_t k, nnull, positions; /* positions scored: W (T - 1) */
    double ce_clean;
    double ce_sae, kl_sae, ce_zero, kl_zero, ce_loss_score, kl_div_score;
    double all_delta_ce, all_kl;
    double pca_delta_ce, pca_kl;   /* NaN without pcs */
    double *delta_ce, *kl;         /* (k) per component: CE - ce_clean, KL */
    double *energy;                /* (k) mean_t |s_it a_i|^2, the removed energy */
    double *null_delta_ce, *null_kl; /* (k, nnull): null j matched to component i */
    int64_t levels;                /* dirs->levels */
    double *level_energy;          /* (levels) */
    double *level_delta_ce, *level_kl; /* (levels, nnull): null j at each level, measured */
    double *null_percentile, *z;   /* (k): 100 x the share of matched nulls with a smaller KL;
                                      (KL - their mean) / their standard deviation (n - 1) */
} dm_causal_result;

/* Every ablation of dirs over the windows of cz, into r (owned by r: free with
 * dm_causal_result_free). 0, or -1 with the error recorded (shapes, a model
 * that fails). */
int dm_causal_measure(dm_causal *cz, const dm_causal_dirs *dirs, dm_causal_result *r);
void dm_causal_result_free(dm_causal_result *r); /* accepts zeroed */

/* The k principal directions of cov (d, d), rows of pcs (k, d): the top k
 * eigenvectors (stats.h's dm_pca_fit). -1 if it fails. */
int dm_causal_top_pcs(const double *cov, int64_t d, int64_t k, float *pcs);
#endif
