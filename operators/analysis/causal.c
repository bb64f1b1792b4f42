/*
 * causal.c: ablations of an SAE's residual components at the SAE's hook,
 * scored by cross-entropy and KL divergence (causal.h; docs/causal.md).
 *
 * Two passes. dm_causal_new runs the model to the hook once per window and the
 * SAE on it, and keeps both (x, recon), with cov(e) about mu. dm_causal_measure
 * then runs every ablation from the hook (dm_model_run_from), a group of
 * windows at a time: the clean run first (its logits, log-sum-exp and
 * probabilities kept for the group), then the ablations stacked side by side
 * into model calls of at most `rows` token rows, each row's CE and KL summed
 * in double:
 *   CE  = lse_new - logit_new[next]
 *   KL  = sum_v p_clean,v (logit_clean,v - logit_new,v) - (lse_clean - lse_new)
 * (log p = logit - lse; p_clean sums to 1), with lse = max + log sum exp(l - max)
 * from the float32 logits: each exp in float (vmath.h's, within about an ulp),
 * the sums in double.
 */
/* The clamps of dm_expf vectorise only where float compares are not assumed to
 * trap; nothing here uses floating-point exceptions. */
#pragma GCC optimize("no-trapping-math")

#include "causal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "vmath.h"

struct dm_causal {
    dm_model *m;
    int layer, T, threads;
    int64_t W, d, V, rows;
    int32_t *windows; /* (W, T) */
    float *x, *recon; /* (W T, d) */
    float *mu;        /* (d) */
    double *cov;      /* (d, d) */
};

void dm_causal_free(dm_causal *cz)
{
    if (!cz)
        return;
    free(cz->windows), free(cz->x), free(cz->recon), free(cz->mu), free(cz->cov);
    free(cz);
}

const double *dm_causal_cov(const dm_causal *cz) { return cz->cov; }

dm_causal *dm_causal_new(dm_model *m, int layer, const dm_sae *sae, const dm_compute *c, const int32_t *windows,
                         int64_t W, int T, int center, const float *mu, int64_t rows)
{
    const dm_model_config *g = dm_model_cfg(m);
    const int64_t d = g->n_embd;
    if (layer < 0 || layer >= g->n_layer || dm_model_depth(m) != DM_MODEL_DEPTH_ALL) {
        dm_failc(DM_E_INPUT, "causal: hook blocks.%d.hook_resid_pre needs the whole model (%d layers) loaded", layer,
                 g->n_layer);
        return NULL;
    }
    if (sae->cfg.d_in != d) {
        dm_failc(DM_E_SHAPE, "causal: the SAE reads %lld values a token, the model's residual stream has %lld",
                 (long long)sae->cfg.d_in, (long long)d);
        return NULL;
    }
    if (W < 1 || T < 2 || T > g->n_positions) {
        dm_failc(DM_E_INPUT, "causal: %lld windows of %d tokens (at least one window of 2 to %d tokens)", (long long)W,
                 T, g->n_positions);
        return NULL;
    }
    dm_causal *cz = dm_xcalloc(1, sizeof *cz);
    cz->m = m, cz->layer = layer, cz->T = T, cz->W = W, cz->d = d, cz->V = g->vocab_size;
    cz->rows = rows < T ? T : rows;
    cz->threads = c->threads > 0 ? c->threads : 1;
    const int64_t N = W * T, Bw = cz->rows / T;
    cz->windows = dm_xmalloc(sizeof(int32_t) * (size_t)N);
    memcpy(cz->windows, windows, sizeof(int32_t) * (size_t)N);
    cz->x = dm_xmalloc(sizeof(float) * (size_t)(N * d));
    cz->recon = dm_xmalloc(sizeof(float) * (size_t)(N * d));
    cz->mu = dm_xmalloc(sizeof(float) * (size_t)d);
    memcpy(cz->mu, mu, sizeof(float) * (size_t)d);
    cz->cov = dm_xcalloc((size_t)(d * d), sizeof(double));

    const dm_sae_backend *be = dm_sae_backend_for(c);
    dm_sae_work *work = dm_sae_work_new(sae, Bw * T, c);
    dm_sae_sparse sp = {0};
    double *ec = dm_xmalloc(sizeof(double) * (size_t)(Bw * T * d));
    dm_model_hook hook = {DM_HOOK_RESID_PRE, layer};
    int rc = 0;
    for (int64_t w0 = 0; w0 < W && !rc; w0 += Bw) {
        const int B = (int)(W - w0 < Bw ? W - w0 : Bw);
        const int64_t n = (int64_t)B * T, r0 = w0 * T;
        float *xo = cz->x + r0 * d;
        if (dm_model_forward(m, cz->windows + r0, B, T, &hook, 1, &xo, center)) {
            rc = -1;
            break;
        }
        if (be->forward(work, sae, xo, n, cz->recon + r0 * d, NULL, &sp)) {
            rc = dm_failc(DM_E_INPUT, "causal: non-finite activations at blocks.%d.hook_resid_pre", layer);
            break;
        }
        for (int64_t t = 0; t < n; t++)
            for (int64_t j = 0; j < d; j++)
                ec[t * d + j] = (double)xo[t * d + j] - cz->recon[(r0 + t) * d + j] - mu[j];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)n, 1.0, ec, (int)d, 1.0, cz->cov, (int)d);
    }
    free(ec);
    dm_sae_sparse_free(&sp);
    dm_sae_work_free(work);
    if (rc) {
        dm_causal_free(cz);
        return NULL;
    }
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++)
            cz->cov[i * d + j] = cz->cov[j * d + i] = cz->cov[i * d + j] / (double)N;
    return cz;
}

/* ---- the ablations ------------------------------------------------------------ */

enum { A_SAE, A_ZERO, A_COMP, A_ALL, A_NULL, A_PCA };

typedef struct {
    int kind;
    int64_t i, j; /* component; null */
} ablation;

/* The per-token coefficients of every direction, from e - mu in double:
 * s (N, k) = filters (e - mu), r (N, nnull) = nulls (e - mu), q (N, k) = pcs (e - mu);
 * the energies the nulls are scaled to, and their scales. */
typedef struct {
    double *s, *r, *q;
    double *energy; /* (k) sum_t |s_it a_i|^2 */
    int64_t nt;     /* targets: k components, or the levels */
    double *target; /* (nt) the energies (sums over t) the nulls are scaled to */
    double *c;      /* (nt, nnull) the nulls' scales */
} coefs;

static void coefs_make(const dm_causal *cz, const dm_causal_dirs *dd, coefs *cf)
{
    const int64_t N = cz->W * cz->T, d = cz->d, k = dd->k, nn = dd->nnull;
    cf->s = dm_xcalloc((size_t)(N * k), sizeof(double));
    cf->r = dm_xcalloc((size_t)(N * (nn ? nn : 1)), sizeof(double));
    cf->q = dm_xcalloc((size_t)(N * k), sizeof(double));
    cf->energy = dm_xcalloc((size_t)k, sizeof(double));
    double *e = dm_xmalloc(sizeof(double) * (size_t)d);
    for (int64_t t = 0; t < N; t++) {
        for (int64_t j = 0; j < d; j++)
            e[j] = (double)cz->x[t * d + j] - cz->recon[t * d + j] - cz->mu[j];
        for (int64_t i = 0; i < k; i++) {
            double s = 0, q = 0;
            for (int64_t j = 0; j < d; j++) {
                s += dd->filters[i * d + j] * e[j];
                q += dd->pcs ? dd->pcs[i * d + j] * e[j] : 0.0;
            }
            cf->s[t * k + i] = s, cf->q[t * k + i] = q;
        }
        for (int64_t u = 0; u < nn; u++) {
            double r = 0;
            for (int64_t j = 0; j < d; j++)
                r += dd->nulls[u * d + j] * e[j];
            cf->r[t * nn + u] = r;
        }
    }
    free(e);
    double lo = INFINITY, hi = 0;
    for (int64_t i = 0; i < k; i++) {
        double a2 = 0, s2 = 0;
        for (int64_t j = 0; j < d; j++)
            a2 += (double)dd->mixing[j * k + i] * dd->mixing[j * k + i];
        for (int64_t t = 0; t < N; t++)
            s2 += cf->s[t * k + i] * cf->s[t * k + i];
        cf->energy[i] = s2 * a2;
        lo = cf->energy[i] < lo ? cf->energy[i] : lo;
        hi = cf->energy[i] > hi ? cf->energy[i] : hi;
    }
    /* the targets: each component's energy, or L levels from lo to hi, even in
     * log (a component with no energy at all gets the lowest level's nulls) */
    const int64_t L = dd->levels;
    lo = lo > 0 ? lo : hi * 1e-12;
    cf->nt = L ? L : k;
    cf->target = dm_xmalloc(sizeof(double) * (size_t)cf->nt);
    for (int64_t b = 0; b < cf->nt; b++)
        cf->target[b] = !L ? cf->energy[b] : b == 0 ? lo : b == L - 1 ? hi
                                                        : exp(log(lo) + (double)b / (double)(L - 1) * (log(hi) - log(lo)));
    /* c_bj^2 = target_b / sum_t (r_jt^2 |u_j|^2) (the means' ratio) */
    cf->c = dm_xcalloc((size_t)(cf->nt * (nn ? nn : 1)), sizeof(double));
    for (int64_t u = 0; u < nn; u++) {
        double u2 = 0, r2 = 0;
        for (int64_t j = 0; j < d; j++)
            u2 += (double)dd->nulls[u * d + j] * dd->nulls[u * d + j];
        for (int64_t t = 0; t < N; t++)
            r2 += cf->r[t * nn + u] * cf->r[t * nn + u];
        for (int64_t b = 0; b < cf->nt; b++)
            cf->c[b * nn + u] = r2 * u2 > 0 ? sqrt(cf->target[b] / (r2 * u2)) : 0.0;
    }
}

/* Null j's (KL, delta CE) at energy E, from its values at the levels: linear in
 * log E between the two levels around E, KL in log KL where both are positive. */
static void level_interp(const double *level, int64_t L, const double *kl, const double *dce, int64_t nn, int64_t j,
                         double E, double *kl_out, double *dce_out)
{
    int64_t b = 0;
    while (b + 2 < L && E > level[b + 1])
        b++;
    const double x0 = log(level[b]), x1 = log(level[b + 1]);
    double w = x1 > x0 && E > 0 ? (log(E) - x0) / (x1 - x0) : 0.0;
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    const double k0 = kl[b * nn + j], k1 = kl[(b + 1) * nn + j];
    *kl_out = k0 > 0 && k1 > 0 ? exp((1 - w) * log(k0) + w * log(k1)) : (1 - w) * k0 + w * k1;
    *dce_out = (1 - w) * dce[b * nn + j] + w * dce[(b + 1) * nn + j];
}

static void coefs_free(coefs *cf) { free(cf->s), free(cf->r), free(cf->q), free(cf->energy), free(cf->target), free(cf->c); }

/* Token row t's x' (d) under ablation a. */
static void ablate_row(const dm_causal *cz, const dm_causal_dirs *dd, const coefs *cf, const ablation *a, int64_t t,
                       double *acc, float *out)
{
    const int64_t d = cz->d, k = dd->k, nn = dd->nnull;
    const float *x = cz->x + t * d;
    if (a->kind == A_SAE) {
        memcpy(out, cz->recon + t * d, sizeof(float) * (size_t)d);
        return;
    }
    if (a->kind == A_ZERO) {
        memset(out, 0, sizeof(float) * (size_t)d);
        return;
    }
    for (int64_t j = 0; j < d; j++)
        acc[j] = x[j];
    switch (a->kind) {
    case A_COMP:
        for (int64_t j = 0; j < d; j++)
            acc[j] -= cf->s[t * k + a->i] * dd->mixing[j * k + a->i];
        break;
    case A_ALL:
        for (int64_t i = 0; i < k; i++)
            for (int64_t j = 0; j < d; j++)
                acc[j] -= cf->s[t * k + i] * dd->mixing[j * k + i];
        break;
    case A_NULL: {
        const double w = cf->c[a->i * nn + a->j] * cf->r[t * nn + a->j];
        for (int64_t j = 0; j < d; j++)
            acc[j] -= w * dd->nulls[a->j * d + j];
        break;
    }
    case A_PCA:
        for (int64_t i = 0; i < k; i++)
            for (int64_t j = 0; j < d; j++)
                acc[j] -= cf->q[t * k + i] * dd->pcs[i * d + j];
        break;
    }
    for (int64_t j = 0; j < d; j++)
        out[j] = (float)acc[j];
}

/* Row sums over the vocabulary, vectorised (SIMD clones for the CPU at hand):
 * float terms (exp within about an ulp, dm_expf) added in double lanes. */

/* log sum_v exp(l_v). */
DM_SIMD_CLONES static double lse(const float *l, int64_t V)
{
    float mx = l[0];
    for (int64_t v = 1; v < V; v++)
        mx = l[v] > mx ? l[v] : mx;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < V; v++)
        s += (double)dm_expf(l[v] - mx);
    return mx + log(s);
}

/* sum_v p_v (l0_v - l_v). */
DM_SIMD_CLONES static double cross(const float *p, const float *l0, const float *l, int64_t V)
{
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t v = 0; v < V; v++)
        s += (double)p[v] * ((double)l0[v] - l[v]);
    return s;
}

/* p_v = exp(l_v - lse). */
DM_SIMD_CLONES static void probs(float *p, const float *l, float lse, int64_t V)
{
#pragma omp simd
    for (int64_t v = 0; v < V; v++)
        p[v] = dm_expf(l[v] - lse);
}

int dm_causal_measure(dm_causal *cz, const dm_causal_dirs *dd, dm_causal_result *r)
{
    memset(r, 0, sizeof *r);
    const int64_t d = cz->d, V = cz->V, T = cz->T, W = cz->W, k = dd->k, nn = dd->nnull;
    if (k < 1 || !dd->filters || !dd->mixing || nn < 0 || (nn && !dd->nulls))
        return dm_failc(DM_E_INPUT, "causal: %lld components (filters and mixing) and %lld nulls", (long long)k,
                        (long long)nn);
    if (dd->levels < 0 || dd->levels == 1)
        return dm_failc(DM_E_INPUT, "causal: %lld energy levels (0, every component's own, or at least 2)",
                        (long long)dd->levels);
    /* the ablations in order */
    const int64_t nt = dd->levels ? dd->levels : k;
    const int64_t na = 2 + k + 1 + nt * nn + (dd->pcs != NULL);
    ablation *ab = dm_xmalloc(sizeof *ab * (size_t)na);
    int64_t n = 0;
    ab[n++] = (ablation){A_SAE, 0, 0};
    ab[n++] = (ablation){A_ZERO, 0, 0};
    for (int64_t i = 0; i < k; i++)
        ab[n++] = (ablation){A_COMP, i, 0};
    ab[n++] = (ablation){A_ALL, 0, 0};
    for (int64_t i = 0; i < nt; i++)
        for (int64_t j = 0; j < nn; j++)
            ab[n++] = (ablation){A_NULL, i, j};
    if (dd->pcs)
        ab[n++] = (ablation){A_PCA, 0, 0};
    coefs cf;
    coefs_make(cz, dd, &cf);

    const int64_t Bw = cz->rows / T;
    double *ce = dm_xcalloc((size_t)na, sizeof(double)), *kl = dm_xcalloc((size_t)na, sizeof(double));
    double ce_clean = 0;
    float *lc = dm_xmalloc(sizeof(float) * (size_t)(Bw * T * V)), *pc = dm_xmalloc(sizeof(float) * (size_t)(Bw * T * V));
    double *lse_c = dm_xmalloc(sizeof(double) * (size_t)(Bw * T));
    float *xp = dm_xmalloc(sizeof(float) * (size_t)(cz->rows * d)), *ln = dm_xmalloc(sizeof(float) * (size_t)(cz->rows * V));
    int32_t *tok = dm_xmalloc(sizeof(int32_t) * (size_t)cz->rows);
    double *row_ce = dm_xmalloc(sizeof(double) * (size_t)cz->rows), *row_kl = dm_xmalloc(sizeof(double) * (size_t)cz->rows);
    double *acc = dm_xmalloc(sizeof(double) * (size_t)d);
    dm_model_hook_point logits = {.hook = {DM_HOOK_LOGITS, -1}};
    int rc = 0;
    for (int64_t w0 = 0; w0 < W && !rc; w0 += Bw) {
        const int B = (int)(W - w0 < Bw ? W - w0 : Bw);
        const int64_t nb = (int64_t)B * T, r0 = w0 * T;
        const int32_t *wt = cz->windows + r0;
        /* the clean run: its logits, lse and probabilities for the group */
        logits.out = lc;
        if (dm_model_run_from(cz->m, cz->layer, cz->x + r0 * d, wt, B, (int)T, &logits, 1, 0)) {
            rc = -1;
            break;
        }
#pragma omp parallel for schedule(static) num_threads(cz->threads)
        for (int64_t t = 0; t < nb; t++) {
            const float *l = lc + t * V;
            lse_c[t] = lse(l, V);
            probs(pc + t * V, l, (float)lse_c[t], V);
        }
        for (int64_t t = 0; t < nb; t++)
            if (t % T < T - 1)
                ce_clean += lse_c[t] - lc[t * V + wt[t + 1]];
        /* the ablations, G at a time */
        const int64_t G = cz->rows / nb;
        for (int64_t a0 = 0; a0 < na && !rc; a0 += G) {
            const int64_t g = na - a0 < G ? na - a0 : G;
            for (int64_t a = 0; a < g; a++) {
                for (int64_t t = 0; t < nb; t++)
                    ablate_row(cz, dd, &cf, &ab[a0 + a], r0 + t, acc, xp + (a * nb + t) * d);
                memcpy(tok + a * nb, wt, sizeof(int32_t) * (size_t)nb);
            }
            logits.out = ln;
            if (dm_model_run_from(cz->m, cz->layer, xp, tok, (int)(g * B), (int)T, &logits, 1, 0)) {
                rc = -1;
                break;
            }
            /* each row's CE and KL on the threads, then summed in row order
             * (the same result whatever the threads) */
#pragma omp parallel for schedule(static) num_threads(cz->threads)
            for (int64_t q = 0; q < g * nb; q++) {
                const int64_t t = q % nb;
                if (t % T == T - 1)
                    continue;
                const float *l = ln + q * V, *l0 = lc + t * V, *p = pc + t * V;
                const double s = lse(l, V);
                row_ce[q] = s - l[wt[t + 1]];
                row_kl[q] = cross(p, l0, l, V) - (lse_c[t] - s);
            }
            for (int64_t a = 0; a < g; a++)
                for (int64_t t = 0; t < nb; t++)
                    if (t % T < T - 1)
                        ce[a0 + a] += row_ce[a * nb + t], kl[a0 + a] += row_kl[a * nb + t];
        }
    }
    free(lc), free(pc), free(lse_c), free(xp), free(ln), free(tok), free(acc), free(row_ce), free(row_kl);
    if (rc) {
        coefs_free(&cf);
        free(ce), free(kl), free(ab);
        return -1;
    }
    /* means over the positions, and what they say */
    const double P = (double)(W * (T - 1));
    r->k = k, r->nnull = nn, r->positions = W * (T - 1);
    r->ce_clean = ce_clean / P;
    r->delta_ce = dm_xmalloc(sizeof(double) * (size_t)k), r->kl = dm_xmalloc(sizeof(double) * (size_t)k);
    r->null_delta_ce = dm_xmalloc(sizeof(double) * (size_t)(k * (nn ? nn : 1)));
    r->null_kl = dm_xmalloc(sizeof(double) * (size_t)(k * (nn ? nn : 1)));
    r->null_percentile = dm_xmalloc(sizeof(double) * (size_t)k), r->z = dm_xmalloc(sizeof(double) * (size_t)k);
    r->energy = dm_xmalloc(sizeof(double) * (size_t)k);
    for (int64_t i = 0; i < k; i++)
        r->energy[i] = cf.energy[i] / (double)(W * T);
    r->levels = dd->levels;
    double *nkl = r->null_kl, *ndce = r->null_delta_ce; /* where the null ablations land */
    if (dd->levels) {
        r->level_energy = dm_xmalloc(sizeof(double) * (size_t)nt);
        for (int64_t b = 0; b < nt; b++)
            r->level_energy[b] = cf.target[b] / (double)(W * T);
        nkl = r->level_kl = dm_xmalloc(sizeof(double) * (size_t)(nt * (nn ? nn : 1)));
        ndce = r->level_delta_ce = dm_xmalloc(sizeof(double) * (size_t)(nt * (nn ? nn : 1)));
    }
    r->pca_delta_ce = r->pca_kl = NAN;
    for (int64_t a = 0; a < na; a++) {
        const double c = ce[a] / P, q = kl[a] / P;
        switch (ab[a].kind) {
        case A_SAE: r->ce_sae = c, r->kl_sae = q; break;
        case A_ZERO: r->ce_zero = c, r->kl_zero = q; break;
        case A_COMP: r->delta_ce[ab[a].i] = c - r->ce_clean, r->kl[ab[a].i] = q; break;
        case A_ALL: r->all_delta_ce = c - r->ce_clean, r->all_kl = q; break;
        case A_NULL: ndce[ab[a].i * nn + ab[a].j] = c - r->ce_clean, nkl[ab[a].i * nn + ab[a].j] = q; break;
        case A_PCA: r->pca_delta_ce = c - r->ce_clean, r->pca_kl = q; break;
        }
    }
    for (int64_t i = 0; dd->levels && i < k; i++)
        for (int64_t j = 0; j < nn; j++)
            level_interp(r->level_energy, nt, r->level_kl, r->level_delta_ce, nn, j, r->energy[i],
                         &r->null_kl[i * nn + j], &r->null_delta_ce[i * nn + j]);
    r->ce_loss_score = (r->ce_zero - r->ce_sae) / (r->ce_zero - r->ce_clean);
    r->kl_div_score = (r->kl_zero - r->kl_sae) / r->kl_zero;
    for (int64_t i = 0; i < k; i++) {
        double below = 0, m = 0, v = 0;
        for (int64_t j = 0; j < nn; j++) {
            below += r->null_kl[i * nn + j] < r->kl[i];
            m += r->null_kl[i * nn + j];
        }
        m = nn ? m / (double)nn : NAN;
        for (int64_t j = 0; j < nn; j++)
            v += (r->null_kl[i * nn + j] - m) * (r->null_kl[i * nn + j] - m);
        r->null_percentile[i] = nn ? 100.0 * below / (double)nn : NAN;
        r->z[i] = nn > 1 ? (r->kl[i] - m) / sqrt(v / (double)(nn - 1)) : NAN;
    }
    coefs_free(&cf);
    free(ce), free(kl), free(ab);
    return 0;
}

void dm_causal_result_free(dm_causal_result *r)
{
    free(r->delta_ce), free(r->kl), free(r->null_delta_ce), free(r->null_kl), free(r->null_percentile), free(r->z);
    free(r->energy), free(r->level_energy), free(r->level_delta_ce), free(r->level_kl);
    memset(r, 0, sizeof *r);
}

/* ---- directions -------------------------------------------------------------- */

int dm_causal_top_pcs(const double *cov, int64_t d, int64_t k, float *pcs)
{
    dm_pca p;
    if (k > d || dm_pca_fit(&p, cov, d))
        return k > d ? dm_failc(DM_E_INPUT, "causal: %lld principal directions of %lld", (long long)k, (long long)d)
                     : -1;
    for (int64_t i = 0; i < k * d; i++)
        pcs[i] = (float)p.components[i];
    dm_pca_free(&p);
    return 0;
}
