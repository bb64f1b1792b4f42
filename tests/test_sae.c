/*
 * test_sae.c: the SAE kernels and statistics of operators/kernels/sae.c, every
 * backend of the table (sae.h), against
 *   - the independent float64 numpy reference (tests/golden/sae/, written by
 *     tests/golden/make_sae_golden.py from tools/sae_reference.py): residuals to
 *     1e-4 relative (max abs error / max abs value) for the three architectures,
 *     the four normalisations, old and SAELens 6 config layouts, NaN/Inf rows,
 *     and a Gemma Scope SAE in its release's params.npz (gemmascope_npz, from
 *     tests/golden/make_npz_golden.py); statistics to 1e-4 (counts exactly);
 *   - the "ref" backend (dense pre, dense decode in double, statistics one row
 *     at a time): the same active features and residuals to 1e-5 relative, for
 *     several tile sizes, on the dm_sgemm and the OpenBLAS encode; statistics
 *     with the tolerances stated at stats_backends_match_reference;
 *   - bad folders: unknown architecture, missing tensor, wrong shape (both
 *     shapes named), expected_average_only_in without its factor, topk without
 *     k, a boolean key that is not a boolean, no cfg.json; each with its error
 *     code (sae.h);
 *   - the per-feature moments of a feature that fires on every token with a
 *     steady value (mean/std 1e5), where raw power sums would lose the kurtosis;
 *   - Gemma Scope: the release's settings and the hook its path names,
 *     savez_compressed as savez, bad archives (a missing array, wrong shapes,
 *     a threshold of the wrong length or dtype, bzip2, a truncated file), and
 *     a SAELens-format Gemma Scope folder at Gemma 2 2B's d_in 2304 against
 *     the formula in double.
 *
 * Why 1e-4: the kernel runs in float32 (SGEMM over d_in <= 64 terms, then a
 * float sum of a few dozen decoder rows), so its residual differs from float64
 * by a few float32 ulps of the largest terms, about 1e-6 of the residual's
 * scale; the margin covers longer sums. Runs from the repository root.
 */
#include "sae.h"

#include "dm.h"
#include "npy.h"
#include "npz.h"
#include "test.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN "tests/golden/sae/"

static const char *cases[] = {"standard_jb",       "jumprelu_v6_constnorm", "jumprelu_log_nobdec",
                              "topk_v6_layernorm", "topk_old_expavg",       "gemmascope_npz"};
#define NCASES (int)(sizeof cases / sizeof *cases)

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    ck_assert_msg(j, "%s: %s", path, e.text);
    return j;
}

static double jnum(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    ck_assert_msg(json_is_number(v), "key %s", k);
    return json_number_value(v);
}

static void load_npy(const char *path, dm_tensor *t)
{
    ck_assert_msg(dm_npy_load(path, t) == 0, "%s: %s", path, dm_error());
}

/* max |a - b| / max |b| over entries finite in b; NaN positions must agree. */
static double rel_err_f32_f64(const float *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(b[i])) {
            ck_assert_msg(isnan(a[i]), "entry %lld: expected NaN, got %g", (long long)i, a[i]);
            continue;
        }
        num = fmax(num, fabs(a[i] - b[i]));
        den = fmax(den, fabs(b[i]));
    }
    return num / den;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-300); }

/* Every entry of the backend table; "ref" first; "cuda" (gpu/sae.cu) where
 * libdmica-cuda.so sees a GPU, listed inside each test: CUDA must not start
 * before Check forks the test's process. On a GPU, "cuda" is held to the same
 * tolerances as "cpu" (FP32 GEMMs summed in another order, statistics in
 * double: see each test), and its reduced-precision GEMMs to the bounds of
 * cuda_gemm_precisions. */
#define MAXBACKENDS 3
static const dm_sae_backend *backends[MAXBACKENDS];
static int NBACKENDS;
static void list_backends(void)
{
    backends[0] = &dm_sae_backend_ref;
    backends[1] = &dm_sae_backend_cpu;
    NBACKENDS = 2;
    if (dm_sae_backend_cuda())
        backends[NBACKENDS++] = dm_sae_backend_cuda();
}

/* The default context for backend be (the reference flag, the CUDA device),
 * with the AVX-512 path where asked and the CPU has it. */
static dm_compute context(const dm_sae_backend *be, int avx512)
{
    dm_compute c = *dm_compute_default();
    c.reference = be == &dm_sae_backend_ref;
    c.device = be && be == dm_sae_backend_cuda() ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
    c.avx512 = avx512 && c.avx512;
    return c;
}

START_TEST(backend_choice)
{
    list_backends();
    dm_compute ref = context(&dm_sae_backend_ref, 1), cpu = context(&dm_sae_backend_cpu, 1);
    ck_assert_ptr_eq(dm_sae_backend_for(&ref), &dm_sae_backend_ref);
    ck_assert_ptr_eq(dm_sae_backend_for(&cpu), &dm_sae_backend_cpu);
    ck_assert_str_eq(dm_sae_backend_ref.name, "ref");
    ck_assert_str_eq(dm_sae_backend_cpu.name, "cpu");
    for (int b = 0; b < NBACKENDS; b++)
        ck_assert(backends[b]->forward && backends[b]->stats_update);
    /* only the cpu backend with AVX-512F packs W_enc */
    ck_assert_int_eq(dm_sae_packed_floats(32, 256, &ref), 0);
    ck_assert_int_eq(dm_sae_packed_floats(32, 256, &cpu) > 0, cpu.avx512);
    /* the CPU's tile; the GPU's chunk, within 1 GiB of activations, never below the tile */
    ck_assert_int_eq(dm_sae_backend_tile(&dm_sae_backend_cpu, 24576, 256, 65536), 256);
    /* a CUDA device: "cuda" where the library sees a GPU, else "cpu" */
    dm_compute gpu = cpu;
    gpu.device = DM_DEVICE_CUDA;
    const dm_sae_backend *cu = dm_sae_backend_cuda();
    ck_assert_ptr_eq(dm_sae_backend_for(&gpu), cu ? cu : &dm_sae_backend_cpu);
    if (cu) {
        ck_assert_str_eq(cu->name, "cuda");
        ck_assert_int_eq(dm_sae_packed_floats(32, 256, &gpu), 0);
        ck_assert_int_eq(dm_sae_backend_tile(cu, 24576, 256, 65536), ((int64_t)1 << 30) / (4 * 24576));
        ck_assert_int_eq(dm_sae_backend_tile(cu, 24576, 256, 4096), 4096);
        ck_assert_int_eq(dm_sae_backend_tile(cu, 1 << 22, 256, 4096), 256);
    }
}
END_TEST

START_TEST(golden_parity_and_statistics)
{
    list_backends();
    for (int c = 0; c < NCASES * NBACKENDS; c++) {
        const dm_sae_backend *be = backends[c % NBACKENDS];
        dm_compute cc = context(be, 1);
        char *dir = dm_xasprintf(GOLDEN "%s", cases[c / NBACKENDS]), *p;
        p = dm_xasprintf("%s/expected_stats.json", dir);
        json_t *js = load_json(p);
        free(p);
        dm_sae *s = dm_sae_load(dir, jnum(js, "scaling_factor"), &cc);
        ck_assert_msg(s, "%s: %s", dir, dm_error());
        ck_assert_str_eq(dm_sae_arch_name(s->cfg.arch), json_string_value(json_object_get(js, "architecture")));
        dm_tensor x = {0}, er = {0}, ef = {0};
        p = dm_xasprintf("%s/x.npy", dir), load_npy(p, &x), free(p);
        p = dm_xasprintf("%s/expected_residual.npy", dir), load_npy(p, &er), free(p);
        p = dm_xasprintf("%s/expected_features.npy", dir), load_npy(p, &ef), free(p);
        int64_t n = x.shape[0], d = x.shape[1], ds = s->cfg.d_sae;
        ck_assert_int_eq(d, s->cfg.d_in);
        float *recon = malloc(sizeof(float) * n * d), *resid = malloc(sizeof(float) * n * d);
        dm_sae_work *w = dm_sae_work_new(s, 64, &cc);
        dm_sae_sparse sp = {0};
        dm_sae_stats *st = dm_sae_stats_new(d, ds, 1, &cc);
        /* uneven blocks through the operator's path: forward, then statistics */
        int64_t bad = 0;
        for (int64_t r0 = 0, b = 37; r0 < n; r0 += b, b = b * 2 % 97 + 1) {
            int64_t m = n - r0 < b ? n - r0 : b;
            bad += be->forward(w, s, (float *)x.data + r0 * d, m, recon + r0 * d, resid + r0 * d, &sp);
            be->stats_update(w, st, (float *)x.data + r0 * d, recon + r0 * d, resid + r0 * d, &sp, m);
        }
        const char *name = cases[c / NBACKENDS];
        double e = rel_err_f32_f64(resid, er.data, n * d);
        ck_assert_msg(e < 1e-4, "%s %s: residual differs from the float64 reference by %g (relative)", be->name,
                      name, e);
        ck_assert_int_eq(bad, (int64_t)jnum(js, "nonfinite_rows"));

        dm_sae_result r;
        ck_assert_msg(dm_sae_stats_finalize(st, &r) == 0, "%s", dm_error());
        ck_assert_int_eq(r.n, (int64_t)jnum(js, "tokens"));
        ck_assert_int_eq(r.nonfinite, (int64_t)jnum(js, "nonfinite_rows"));
        static const char *keys[] = {"fvu", "mse", "sse_per_token", "mean_cosine", "mean_l0",
                                     "linear_predictability", "total_variance_x", "total_variance_residual"};
        double got[] = {r.fvu, r.mse, r.sse_per_token, r.mean_cosine, r.mean_l0, r.linear_predictability,
                        r.var_x, r.var_e};
        for (int k = 0; k < 8; k++)
            ck_assert_msg(rel(got[k], jnum(js, keys[k])) < 1e-4, "%s %s: %s %.9g, numpy %.9g", be->name, name,
                          keys[k], got[k], jnum(js, keys[k]));
        ck_assert_int_eq(r.dead, (int64_t)jnum(js, "dead_features"));
        ck_assert_int_eq(r.dense, (int64_t)jnum(js, "dense_features"));
        ck_assert_int_eq(r.l0_max, (int64_t)jnum(js, "l0_max"));
        json_t *h = json_object_get(js, "l0_histogram");
        for (size_t i = 0; i < json_array_size(h); i++)
            ck_assert_int_eq(r.l0_histogram[i], json_integer_value(json_array_get(h, i)));
        /* per feature: count, frequency, mean, var, skew, kurtosis */
        const double *F = ef.data;
        double sd_max = 0;
        for (int64_t f = 0; f < ds; f++)
            sd_max = fmax(sd_max, sqrt(F[f * 6 + 3]));
        for (int64_t f = 0; f < ds; f++) {
            const double *g = F + f * 6;
            ck_assert_int_eq(r.count[f], (int64_t)g[0]);
            ck_assert(rel(r.frequency[f], g[1]) < 1e-12 || g[1] == 0);
            ck_assert_msg(fabs(r.mean[f] - g[2]) < 1e-5 * sd_max, "%s %s feature %lld mean", be->name, name,
                          (long long)f);
            ck_assert_msg(fabs(r.var[f] - g[3]) < 1e-4 * sd_max * sd_max, "%s %s feature %lld var", be->name, name,
                          (long long)f);
            if (isnan(g[5]) || r.count[f] < 2)
                continue;
            ck_assert_msg(fabs(r.skew[f] - g[4]) < 1e-3 * fmax(1, fabs(g[4])), "%s %s feature %lld skew %g vs %g",
                          be->name, name, (long long)f, r.skew[f], g[4]);
            ck_assert_msg(fabs(r.excess_kurtosis[f] - g[5]) < 1e-3 * fmax(1, fabs(g[5])),
                          "%s %s feature %lld kurtosis %g vs %g", be->name, name, (long long)f, r.excess_kurtosis[f],
                          g[5]);
        }
        char *text = dm_sae_result_json(&r, s);
        ck_assert(text && strstr(text, "\"linear_predictability\""));
        free(text);
        dm_sae_result_free(&r);
        dm_sae_stats_free(st);
        dm_sae_sparse_free(&sp);
        dm_sae_work_free(w);
        free(recon), free(resid);
        dm_tensor_free(&x), dm_tensor_free(&er), dm_tensor_free(&ef);
        dm_sae_free(s);
        json_decref(js);
        free(dir);
    }
}
END_TEST

/* Every backend's forward against "ref", for several tiles, with W_enc packed
 * for dm_sgemm (where the CPU has AVX-512F) and without (OpenBLAS). */
START_TEST(backends_match_reference)
{
    static const int64_t tiles[] = {1, 7, 64, 1000};
    list_backends();
    dm_compute refc = context(&dm_sae_backend_ref, 0);
    for (int c = 0; c < NCASES; c++) {
        char *dir = dm_xasprintf(GOLDEN "%s", cases[c]), *p = dm_xasprintf("%s/x.npy", dir);
        dm_tensor x = {0};
        load_npy(p, &x);
        free(p);
        dm_sae *s = dm_sae_load(dir, 0.5, &refc); /* 0.5 is ignored unless expected_average_only_in */
        ck_assert_msg(s, "%s", dm_error());
        ck_assert_ptr_null(s->W_enc_packed);
        int64_t n = x.shape[0], d = x.shape[1];
        float *rr = malloc(sizeof(float) * n * d), *re = malloc(sizeof(float) * n * d);
        float *fr = malloc(sizeof(float) * n * d), *fe = malloc(sizeof(float) * n * d);
        dm_sae_sparse sr = {0}, sf = {0};
        dm_sae_work *wr = dm_sae_work_new(s, n, &refc);
        int64_t bad_ref = dm_sae_backend_ref.forward(wr, s, x.data, n, rr, re, &sr);
        dm_sae_work_free(wr);
        dm_sae_free(s);
        for (int v = 0; v < 2 * NBACKENDS; v++) {
            const dm_sae_backend *be = backends[v / 2];
            dm_compute cc = context(be, v % 2);
            s = dm_sae_load(dir, 0.5, &cc);
            ck_assert_msg(s, "%s", dm_error());
            ck_assert_int_eq(s->W_enc_packed != NULL, be == &dm_sae_backend_cpu && cc.avx512);
            for (int t = 0; t < 4; t++) {
                dm_sae_work *w = dm_sae_work_new(s, tiles[t], &cc);
                int64_t bad = be->forward(w, s, x.data, n, fr, fe, &sf);
                ck_assert_int_eq(bad, bad_ref);
                ck_assert_int_eq(sf.rows, n);
                double num = 0, den = 0;
                for (int64_t i = 0; i < n * d; i++) {
                    ck_assert(isnan(re[i]) == isnan(fe[i]) && isnan(rr[i]) == isnan(fr[i]));
                    if (isnan(re[i]))
                        continue;
                    num = fmax(num, fabs(fe[i] - re[i]));
                    den = fmax(den, fabs(re[i]));
                }
                ck_assert_msg(num / den < 1e-5, "%s %s%s tile %lld: residual differs from ref by %g", be->name,
                              cases[c], s->W_enc_packed ? " (dm_sgemm)" : "", (long long)tiles[t], num / den);
                for (int64_t r = 0; r <= n; r++)
                    ck_assert_int_eq(sf.start[r], sr.start[r]);
                for (int64_t a = 0; a < sr.start[n]; a++) {
                    ck_assert_int_eq(sf.feature[a], sr.feature[a]);
                    ck_assert(fabsf(sf.value[a] - sr.value[a]) <= 1e-5f * (1 + fabsf(sr.value[a])));
                }
                /* recon alone (residual NULL), as a model hook that splices the SAE in asks */
                memset(fe, 0, sizeof(float) * n * d);
                ck_assert_int_eq(be->forward(w, s, x.data, n, fe, NULL, &sf), bad_ref);
                ck_assert_int_eq(memcmp(fe, fr, sizeof(float) * n * d), 0);
                dm_sae_work_free(w);
            }
            dm_sae_free(s);
        }
        dm_sae_sparse_free(&sr), dm_sae_sparse_free(&sf);
        free(rr), free(re), free(fr), free(fe);
        dm_tensor_free(&x);
        free(dir);
    }
}
END_TEST

/* Every backend's statistics against "ref" on the same forward outputs, fed in
 * uneven blocks. Tolerances: counts, L0 histograms, dead and dense features
 * exactly; the sums and moments are double in every backend and differ only
 * in summation order (chunk two-pass and Pebay merges against Welford row by
 * row), about n * 2^-53 = 1e-13 relative here, so 1e-10 (per-feature moments:
 * of the largest feature's spread, as in stats' tests). The linear
 * predictability: "cpu" sums its co-moments in float over blocks of <= 256
 * rows, an error of about sqrt(256) * 2^-24 = 1e-6 of sum |z_i z_j| (sae.c's
 * cov_update), which the ratio of traces carries over; 1e-5 absolute. */
START_TEST(stats_backends_match_reference)
{
    list_backends();
    dm_compute refc = context(&dm_sae_backend_ref, 0);
    for (int c = 0; c < NCASES; c++) {
        char *dir = dm_xasprintf(GOLDEN "%s", cases[c]), *p = dm_xasprintf("%s/x.npy", dir);
        dm_tensor x = {0};
        load_npy(p, &x);
        free(p);
        dm_sae *s = dm_sae_load(dir, 0.5, &refc);
        ck_assert_msg(s, "%s", dm_error());
        int64_t n = x.shape[0], d = x.shape[1], ds = s->cfg.d_sae;
        float *rc = malloc(sizeof(float) * n * d), *re = malloc(sizeof(float) * n * d);
        dm_sae_sparse sp = {0};
        dm_sae_work *w = dm_sae_work_new(s, n, &refc);
        dm_sae_backend_ref.forward(w, s, x.data, n, rc, re, &sp);
        dm_sae_result r[MAXBACKENDS];
        for (int b = 0; b < NBACKENDS; b++) {
            dm_compute cc = context(backends[b], 1);
            dm_sae_stats *st = dm_sae_stats_new(d, ds, 1, &cc);
            /* a work of this backend's that made none of these rows ("cuda" uploads them) */
            dm_sae_work *wb = dm_sae_work_new(s, 300, &cc);
            for (int64_t r0 = 0, m = 300; r0 < n; r0 += m, m = m * 3 % 301 + 1) {
                int64_t rows = n - r0 < m ? n - r0 : m;
                dm_sae_sparse blk = sp;
                int64_t *start = malloc(sizeof(int64_t) * (rows + 1));
                for (int64_t i = 0; i <= rows; i++)
                    start[i] = sp.start[r0 + i] - sp.start[r0];
                blk.start = start, blk.rows = rows;
                blk.feature = sp.feature + sp.start[r0], blk.value = sp.value + sp.start[r0];
                backends[b]->stats_update(wb, st, (float *)x.data + r0 * d, rc + r0 * d, re + r0 * d, &blk, rows);
                free(start);
            }
            ck_assert_msg(dm_sae_stats_finalize(st, &r[b]) == 0, "%s", dm_error());
            dm_sae_stats_free(st);
            dm_sae_work_free(wb);
        }
        const dm_sae_result *a = &r[0];
        for (int b = 1; b < NBACKENDS; b++) {
            const dm_sae_result *o = &r[b];
            const char *nm = backends[b]->name;
            ck_assert_int_eq(o->n, a->n);
            ck_assert_int_eq(o->nonfinite, a->nonfinite);
            ck_assert_int_eq(o->l0_max, a->l0_max);
            ck_assert_int_eq(o->dead, a->dead);
            ck_assert_int_eq(o->dense, a->dense);
            ck_assert_int_eq(o->cosine_undefined, a->cosine_undefined);
            ck_assert_int_eq(o->predictability_rank, a->predictability_rank);
            for (int64_t i = 0; i <= a->l0_max; i++)
                ck_assert_int_eq(o->l0_histogram[i], a->l0_histogram[i]);
            double got[] = {o->fvu, o->mse, o->sse_per_token, o->mean_cosine, o->mean_l0, o->var_x, o->var_e};
            double want[] = {a->fvu, a->mse, a->sse_per_token, a->mean_cosine, a->mean_l0, a->var_x, a->var_e};
            for (int k = 0; k < 7; k++)
                ck_assert_msg(rel(got[k], want[k]) < 1e-10, "%s %s: statistic %d: %.17g vs ref %.17g", nm, cases[c],
                              k, got[k], want[k]);
            ck_assert_msg(fabs(o->linear_predictability - a->linear_predictability) < 1e-5,
                          "%s %s: linear predictability %.9g vs ref %.9g", nm, cases[c], o->linear_predictability,
                          a->linear_predictability);
            double sd_max = 0;
            for (int64_t f = 0; f < ds; f++)
                sd_max = fmax(sd_max, sqrt(a->var[f]));
            for (int64_t f = 0; f < ds; f++) {
                ck_assert_int_eq(o->count[f], a->count[f]);
                ck_assert(fabs(o->mean[f] - a->mean[f]) <= 1e-10 * sd_max);
                ck_assert(fabs(o->var[f] - a->var[f]) <= 1e-10 * sd_max * sd_max);
                ck_assert(isnan(o->skew[f]) == isnan(a->skew[f]));
                if (isnan(a->skew[f]) || a->count[f] < 2)
                    continue;
                ck_assert_msg(fabs(o->skew[f] - a->skew[f]) < 1e-10 * fmax(1, fabs(a->skew[f])),
                              "%s %s feature %lld skew %.17g vs %.17g", nm, cases[c], (long long)f, o->skew[f],
                              a->skew[f]);
                ck_assert_msg(fabs(o->excess_kurtosis[f] - a->excess_kurtosis[f]) <
                                  1e-10 * fmax(1, fabs(a->excess_kurtosis[f])),
                              "%s %s feature %lld kurtosis", nm, cases[c], (long long)f);
            }
        }
        for (int b = 0; b < NBACKENDS; b++)
            dm_sae_result_free(&r[b]);
        dm_sae_work_free(w);
        dm_sae_sparse_free(&sp);
        free(rc), free(re);
        dm_tensor_free(&x);
        dm_sae_free(s);
        free(dir);
    }
}
END_TEST

/* |x_in| of row x (sae.h: normalise, then less b_dec where the SAE says so),
 * and the multiplier the decode's denormalisation applies (sae.c's row_norm). */
static double input_norm(const dm_sae *s, const float *x, double *out_mul)
{
    const int64_t d = s->cfg.d_in;
    double scale = 1, offset = 0, ss = 0, mu = 0;
    *out_mul = 1;
    if (s->cfg.norm == DM_SAE_NORM_EXPECTED_AVERAGE)
        scale = s->scaling_factor, *out_mul = 1 / s->scaling_factor;
    else if (s->cfg.norm == DM_SAE_NORM_CONSTANT) {
        for (int64_t j = 0; j < d; j++)
            ss += (double)x[j] * x[j];
        scale = ss > 0 ? sqrt((double)d / ss) : 1, *out_mul = 1 / scale;
    } else if (s->cfg.norm == DM_SAE_NORM_LAYER) {
        for (int64_t j = 0; j < d; j++)
            mu += x[j] / (double)d;
        for (int64_t j = 0; j < d; j++)
            ss += (x[j] - mu) * (x[j] - mu);
        double sd = sqrt(ss / (double)(d - 1));
        offset = mu, scale = 1 / (sd + 1e-5), *out_mul = sd;
    }
    double n2 = 0;
    for (int64_t j = 0; j < d; j++) {
        double v = (x[j] - offset) * scale - (s->cfg.apply_b_dec_to_input ? s->b_dec[j] : 0);
        n2 += v * v;
    }
    return sqrt(n2);
}

/* The GPU's encoder and decoder in TF32 and BF16 (compute.h's c.gemm) against
 * "ref", on a GPU only. Each input of a product is rounded to 10 (TF32) or 7
 * (BF16) mantissa bits: a relative error of at most u = 2^-10 or 2^-7 (twice
 * round-to-nearest's 2^-11, 2^-8, in case the tensor cores truncate), 2u for a
 * product of two rounded inputs, and the FP32 accumulation adds d_in 2^-24.
 * So a pre-activation is off by at most
 *   tau_f = (2u + d_in 2^-24) sum_i |x_in,i W_enc,if| <= (2u + d_in 2^-24) |x_in| |W_enc[:, f]|
 * (Cauchy-Schwarz; the sum of d_in independent roundings is typically sqrt(d_in)
 * times smaller, so the bound is safe rather than tight). Checks, per row:
 *   - a feature active in both: values within tau_f (+ 2^-22 relative: the
 *     float b_enc addition);
 *   - a feature active in one only: within tau_f of its threshold (standard,
 *     jumprelu), or for topk within 2 max tau of the other's k-th value or of 0;
 *   - the residual within out_mul sum_f (tau_f + 4u |f_f|) max_j |W_dec,fj|
 *     over the features active in both (the error of f, and W_dec's and f's
 *     rounding in the decode), plus (|f_f| + tau_f) max_j |W_dec,fj| for a
 *     feature active in one only, plus 2^-21 (|x| + |recon|) for the final
 *     float operations. */
START_TEST(cuda_gemm_precisions)
{
    const dm_sae_backend *cu = dm_sae_backend_cuda();
    if (!cu)
        return; /* no GPU here: nothing to check */
    static const dm_gemm gemms[] = {DM_GEMM_TF32, DM_GEMM_BF16};
    static const double units[] = {0x1p-10, 0x1p-7};
    dm_compute refc = context(&dm_sae_backend_ref, 0);
    for (int c = 0; c < NCASES; c++) {
        char *dir = dm_xasprintf(GOLDEN "%s", cases[c]), *p = dm_xasprintf("%s/x.npy", dir);
        dm_tensor x = {0};
        load_npy(p, &x);
        free(p);
        dm_sae *s = dm_sae_load(dir, 0.5, &refc);
        ck_assert_msg(s, "%s", dm_error());
        const int64_t n = x.shape[0], d = x.shape[1], ds = s->cfg.d_sae;
        const float *X = x.data;
        float *rr = malloc(sizeof(float) * n * d), *re = malloc(sizeof(float) * n * d);
        float *fr = malloc(sizeof(float) * n * d), *fe = malloc(sizeof(float) * n * d);
        float *dense_r = malloc(sizeof(float) * ds), *dense_g = malloc(sizeof(float) * ds);
        double *wn = malloc(sizeof(double) * ds), *wd = malloc(sizeof(double) * ds);
        for (int64_t f = 0; f < ds; f++) {
            wn[f] = wd[f] = 0;
            for (int64_t i = 0; i < d; i++)
                wn[f] += (double)s->W_enc[i * ds + f] * s->W_enc[i * ds + f];
            wn[f] = sqrt(wn[f]);
            for (int64_t j = 0; j < d; j++)
                wd[f] = fmax(wd[f], fabs(s->W_dec[f * d + j]));
        }
        dm_sae_sparse sr = {0}, sg = {0};
        dm_sae_work *wr = dm_sae_work_new(s, n, &refc);
        int64_t bad_ref = dm_sae_backend_ref.forward(wr, s, X, n, rr, re, &sr);
        dm_sae_work_free(wr);
        for (int g = 0; g < 2; g++) {
            const double u = units[g];
            dm_compute cc = context(cu, 0);
            cc.gemm = gemms[g];
            dm_sae *sgpu = dm_sae_load(dir, 0.5, &cc);
            ck_assert_msg(sgpu, "%s", dm_error());
            dm_sae_work *w = dm_sae_work_new(sgpu, 64, &cc);
            ck_assert_int_eq(cu->forward(w, sgpu, X, n, fr, fe, &sg), bad_ref);
            int64_t flips = 0;
            for (int64_t r = 0; r < n; r++) {
                const float *xr = X + r * d;
                if (isnan(re[r * d])) {
                    ck_assert(isnan(fe[r * d]) && sg.start[r + 1] == sg.start[r]);
                    continue;
                }
                double out_mul, xn = input_norm(s, xr, &out_mul), tmax = 0;
                const double k_u = 2 * u + (double)d * 0x1p-24;
                for (int64_t f = 0; f < ds; f++)
                    dense_r[f] = dense_g[f] = 0, tmax = fmax(tmax, k_u * xn * wn[f]);
                for (int64_t a = sr.start[r]; a < sr.start[r + 1]; a++)
                    dense_r[sr.feature[a]] = sr.value[a];
                for (int64_t a = sg.start[r]; a < sg.start[r + 1]; a++)
                    dense_g[sg.feature[a]] = sg.value[a];
                /* topk: each side's k-th value (0 when fewer than k are positive) */
                double kth_r = 0, kth_g = 0;
                if (s->cfg.arch == DM_SAE_TOPK) {
                    if (sr.start[r + 1] - sr.start[r] == s->cfg.k)
                        for (int64_t a = sr.start[r], i = 0; a < sr.start[r + 1]; a++, i++)
                            kth_r = i ? fmin(kth_r, sr.value[a]) : sr.value[a];
                    if (sg.start[r + 1] - sg.start[r] == s->cfg.k)
                        for (int64_t a = sg.start[r], i = 0; a < sg.start[r + 1]; a++, i++)
                            kth_g = i ? fmin(kth_g, sg.value[a]) : sg.value[a];
                }
                double tol = 0;
                for (int64_t f = 0; f < ds; f++) {
                    const double a = dense_r[f], b = dense_g[f], tau = k_u * xn * wn[f];
                    const double thr = s->cfg.arch == DM_SAE_JUMPRELU ? s->threshold[f] : 0;
                    if (a != 0 && b != 0) {
                        ck_assert_msg(fabs(a - b) <= tau + 0x1p-22 * fabs(a),
                                      "%s %s row %lld feature %lld: %.9g vs ref %.9g, bound %.3g", dm_gemm_name(gemms[g]),
                                      cases[c], (long long)r, (long long)f, b, a, tau);
                        tol += (tau + 4 * u * fabs(a)) * wd[f];
                    } else if (a != 0 || b != 0) {
                        const double v = a != 0 ? a : b, other_kth = a != 0 ? kth_g : kth_r;
                        flips++;
                        if (s->cfg.arch == DM_SAE_TOPK)
                            ck_assert_msg(v <= fmax(other_kth, 0) + 2 * tmax, "%s %s row %lld feature %lld: %.9g "
                                          "in one top k only, the other's k-th %.9g, bound %.3g",
                                          dm_gemm_name(gemms[g]), cases[c], (long long)r, (long long)f, v, other_kth,
                                          2 * tmax);
                        else
                            ck_assert_msg(v - thr <= tau + 0x1p-22 * fabs(v), "%s %s row %lld feature %lld: %.9g "
                                          "active on one side only, threshold %.9g, bound %.3g",
                                          dm_gemm_name(gemms[g]), cases[c], (long long)r, (long long)f, v, thr, tau);
                        tol += (fabs(v) + tau) * wd[f];
                    }
                }
                double err = 0, scale = 0;
                for (int64_t j = 0; j < d; j++) {
                    err = fmax(err, fabs(fe[r * d + j] - re[r * d + j]));
                    scale = fmax(scale, fabs(xr[j]) + fabs(rr[r * d + j]));
                }
                tol = out_mul * tol + 0x1p-21 * scale;
                ck_assert_msg(err <= tol, "%s %s row %lld: residual off by %.3g, bound %.3g", dm_gemm_name(gemms[g]),
                              cases[c], (long long)r, err, tol);
            }
            fprintf(stderr, "test_sae: %s %s: %lld features active on one side only, within the bound\n",
                    dm_gemm_name(gemms[g]), cases[c], (long long)flips);
            dm_sae_work_free(w);
            dm_sae_free(sgpu);
        }
        dm_sae_sparse_free(&sr), dm_sae_sparse_free(&sg);
        free(rr), free(re), free(fr), free(fe), free(dense_r), free(dense_g), free(wn), free(wd);
        dm_tensor_free(&x);
        dm_sae_free(s);
        free(dir);
    }
}
END_TEST

/* A row of large but finite values is finite: it is encoded, and counted in the
 * statistics. (A product-based finiteness test overflowed to Inf for such rows
 * under a SIMD reduction and dropped them as NaN.) */
START_TEST(large_rows_are_finite)
{
    list_backends();
    for (int b = 0; b < NBACKENDS; b++) {
        const dm_sae_backend *be = backends[b];
        dm_compute cc = context(be, 1);
        dm_sae *s = dm_sae_load(GOLDEN "standard_jb", 0, &cc);
        ck_assert_msg(s, "%s", dm_error());
        int64_t n = 3, d = s->cfg.d_in;
        float *x = malloc(sizeof(float) * n * d), *rc = malloc(sizeof(float) * n * d), *re = malloc(sizeof(float) * n * d);
        for (int64_t i = 0; i < n * d; i++)
            x[i] = (i % 2 ? 1e5f : -3e5f) * (float)(1 + i % 5);
        dm_sae_sparse sp = {0};
        dm_sae_work *w = dm_sae_work_new(s, 2, &cc);
        ck_assert_int_eq(be->forward(w, s, x, n, rc, re, &sp), 0);
        for (int64_t i = 0; i < n * d; i++)
            ck_assert(isfinite(re[i]));
        dm_sae_stats *st = dm_sae_stats_new(d, s->cfg.d_sae, 1, &cc);
        be->stats_update(w, st, x, rc, re, &sp, n);
        dm_sae_result r;
        ck_assert_int_eq(dm_sae_stats_finalize(st, &r), 0);
        ck_assert_int_eq(r.n, n);
        ck_assert_int_eq(r.nonfinite, 0);
        dm_sae_result_free(&r);
        dm_sae_stats_free(st);
        dm_sae_work_free(w);
        dm_sae_sparse_free(&sp);
        free(x), free(rc), free(re);
        dm_sae_free(s);
    }
}
END_TEST

/* ---- bad folders ------------------------------------------------------- */

static char tmpdir[64];

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fputs(text, f);
    fclose(f);
}

/* A safetensors file of F32 tensors given by name and shape, with the values
 * vals[i] (numel floats each), or zeros where vals is NULL. */
static void write_st_values(const char *path, int nt, const char **names, const int64_t (*shapes)[2],
                            const int *ndims, const float *const *vals)
{
    char hdr[2048] = "{";
    int64_t off = 0;
    for (int i = 0; i < nt; i++) {
        int64_t numel = 1;
        char shp[64] = "";
        for (int k = 0; k < ndims[i]; k++) {
            numel *= shapes[i][k];
            snprintf(shp + strlen(shp), sizeof shp - strlen(shp), "%s%lld", k ? "," : "", (long long)shapes[i][k]);
        }
        snprintf(hdr + strlen(hdr), sizeof hdr - strlen(hdr),
                 "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%s],\"data_offsets\":[%lld,%lld]}", i ? "," : "", names[i],
                 shp, (long long)off, (long long)(off + 4 * numel));
        off += 4 * numel;
    }
    strcat(hdr, "}");
    while (strlen(hdr) % 8)
        strcat(hdr, " ");
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    uint64_t len = strlen(hdr);
    fwrite(&len, 8, 1, f);
    fwrite(hdr, 1, len, f);
    if (vals)
        for (int i = 0; i < nt; i++)
            fwrite(vals[i], 4, (size_t)(shapes[i][0] * (ndims[i] == 2 ? shapes[i][1] : 1)), f);
    else
        for (int64_t i = 0; i < off; i++)
            fputc(0, f);
    fclose(f);
}

static void write_st(const char *path, int nt, const char **names, const int64_t (*shapes)[2], const int *ndims)
{
    write_st_values(path, nt, names, shapes, ndims, NULL);
}

static void make_folder(const char *cfg, int drop, int bad_shape)
{
    char p[256];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sae.%d", (int)getpid());
    mkdir(tmpdir, 0755);
    snprintf(p, sizeof p, "%s/cfg.json", tmpdir);
    write_text(p, cfg);
    const char *names[] = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"};
    int64_t shapes[5][2] = {{8, 16}, {16, 8}, {16, 0}, {8, 0}, {16, 0}};
    int ndims[5] = {2, 2, 1, 1, 1};
    if (bad_shape)
        shapes[0][1] = 20;
    const char *nm[5];
    int64_t sh[5][2];
    int nd[5], k = 0;
    for (int i = 0; i < 5; i++)
        if (i != drop)
            nm[k] = names[i], memcpy(sh[k], shapes[i], sizeof sh[k]), nd[k] = ndims[i], k++;
    snprintf(p, sizeof p, "%s/sae_weights.safetensors", tmpdir);
    write_st(p, k, nm, (const int64_t(*)[2])sh, nd);
}

static void expect_load_error(const char *what, dm_errc code, const char *const *needles)
{
    dm_sae *s = dm_sae_load(tmpdir, 0, dm_compute_default());
    ck_assert_msg(!s, "%s: loaded", what);
    for (int i = 0; needles[i]; i++)
        ck_assert_msg(strstr(dm_error(), needles[i]), "%s: message '%s' lacks '%s'", what, dm_error(), needles[i]);
    ck_assert_msg(dm_error_code() == code, "%s: error code %s, expected %s", what, dm_errc_name(dm_error_code()),
                  dm_errc_name(code));
}

START_TEST(bad_folders)
{
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"architecture\": \"gated\"}", -1, 0);
    expect_load_error("unknown architecture", DM_E_INPUT,
                      (const char *[]){"unknown architecture 'gated'", "standard, jumprelu, topk", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16}", 2, 0);
    expect_load_error("missing tensor", DM_E_CORRUPT, (const char *[]){"tensor b_enc is missing", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"architecture\": \"jumprelu\"}", 4, 0);
    expect_load_error("missing threshold", DM_E_CORRUPT, (const char *[]){"threshold is missing", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16}", -1, 1);
    expect_load_error("shape", DM_E_SHAPE, (const char *[]){"tensor W_enc has shape [8, 20]", "needs [8, 16]", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"architecture\": \"topk\"}", -1, 0);
    expect_load_error("topk without k", DM_E_INPUT, (const char *[]){"needs k", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"normalize_activations\": \"expected_average_only_in\"}", -1, 0);
    expect_load_error("no scaling factor", DM_E_INPUT, (const char *[]){"scaling_factor", NULL});
    make_folder("{\"d_sae\": 16}", -1, 0);
    expect_load_error("no d_in", DM_E_CORRUPT, (const char *[]){"d_in is missing", NULL});
    /* a boolean key holding a string was once read as absent (its default) */
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"apply_b_dec_to_input\": \"no\"}", -1, 0);
    expect_load_error("string for a boolean", DM_E_CORRUPT,
                      (const char *[]){"cfg.json: key apply_b_dec_to_input must be true or false", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"model_from_pretrained_kwargs\": {\"center_writing_weights\": 0.5}}",
                -1, 0);
    expect_load_error("float for a nested boolean", DM_E_CORRUPT,
                      (const char *[]){"key model_from_pretrained_kwargs.center_writing_weights must be", NULL});
    make_folder("{\"d_in\": 8, \"d_sae\": 16,", -1, 0);
    expect_load_error("cfg.json not JSON", DM_E_CORRUPT, (const char *[]){"cfg.json", NULL});
    char cfg_path[128];
    snprintf(cfg_path, sizeof cfg_path, "%s/cfg.json", tmpdir);
    ck_assert_int_eq(unlink(cfg_path), 0);
    expect_load_error("no cfg.json", DM_E_IO, (const char *[]){"cfg.json", "is this a SAELens SAE folder?", NULL});
    /* and a good one, with old keys, for the config helper */
    make_folder("{\"d_in\": 8, \"d_sae\": 16, \"hook_point\": \"blocks.3.hook_resid_pre\", \"context_size\": 64,"
                " \"model_from_pretrained_kwargs\": {\"center_writing_weights\": false}, \"prepend_bos\": false}",
                -1, 0);
    dm_sae_config c;
    ck_assert_msg(dm_sae_read_config(tmpdir, &c) == 0, "%s", dm_error());
    ck_assert_str_eq(c.hook_name, "blocks.3.hook_resid_pre");
    ck_assert_int_eq(c.center_writing_weights, 0);
    ck_assert_int_eq(c.prepend_bos, 0);
    ck_assert_int_eq(c.context_size, 64);
    ck_assert_int_eq(c.apply_b_dec_to_input, 1);
    dm_sae_config_free(&c);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A feature firing on every token with value 1e5 + u, u in {-1, 0, 2} (a skewed
 * three-point law), beside a sparse one: the moments must match closed forms. */
START_TEST(feature_moments_are_stable)
{
    list_backends();
    for (int be = 0; be < NBACKENDS; be++) {
        const int64_t d = 2, ds = 2, n = 3000;
        dm_compute cc = context(backends[be], 1);
        dm_sae_stats *st = dm_sae_stats_new(d, ds, 0, &cc);
        /* a work of the sizes (its SAE unused: the rows are made here) */
        static const float wts[2 * 2 * 2 + 2 + 2] = {0};
        dm_sae *sae = dm_sae_from_arrays(d, ds, "", "test", wts, wts + 4, wts + 8, wts + 10, &cc);
        dm_sae_work *w = dm_sae_work_new(sae, 256, &cc);
        float *x = malloc(sizeof(float) * n * d), *h = malloc(sizeof(float) * n * d), *e = malloc(sizeof(float) * n * d);
        for (int64_t i = 0; i < n * d; i++)
            x[i] = (float)(i % 7) + 1, h[i] = x[i] * 0.5f, e[i] = x[i] - h[i];
        dm_sae_sparse sp = {0};
        sp.start = malloc(sizeof(int64_t) * (n + 1));
        sp.feature = malloc(sizeof(int32_t) * 2 * n);
        sp.value = malloc(sizeof(float) * 2 * n);
        static const float u[3] = {-1, 0, 2};
        int64_t a = 0;
        sp.start[0] = 0;
        for (int64_t r = 0; r < n; r++) {
            sp.feature[a] = 0, sp.value[a++] = 100000.0f + u[r % 3];
            if (r % 100 == 0)
                sp.feature[a] = 1, sp.value[a++] = 3.0f;
            sp.start[r + 1] = a;
        }
        sp.rows = n;
        /* in blocks, as the operator feeds it */
        for (int64_t r0 = 0; r0 < n; r0 += 256) {
            int64_t m = n - r0 < 256 ? n - r0 : 256;
            dm_sae_sparse b = sp;
            int64_t *start = malloc(sizeof(int64_t) * (m + 1));
            for (int64_t r = 0; r <= m; r++)
                start[r] = sp.start[r0 + r] - sp.start[r0];
            b.start = start, b.feature = sp.feature + sp.start[r0], b.value = sp.value + sp.start[r0], b.rows = m;
            backends[be]->stats_update(w, st, x + r0 * d, h + r0 * d, e + r0 * d, &b, m);
            free(start);
        }
        dm_sae_result r;
        ck_assert(dm_sae_stats_finalize(st, &r) == 0);
        /* u uniform on {-1, 0, 2}: mean 1/3, central moments m2 = 14/9, m3 = 38/27... computed here */
        double mu = 1.0 / 3, m2 = 0, m3 = 0, m4 = 0;
        for (int k = 0; k < 3; k++) {
            double dv = u[k] - mu;
            m2 += dv * dv / 3, m3 += dv * dv * dv / 3, m4 += dv * dv * dv * dv / 3;
        }
        ck_assert(fabs(r.mean[0] - (100000 + mu)) < 1e-9 * 1e5);
        ck_assert_msg(fabs(r.var[0] - m2) < 1e-9, "var %.12g vs %.12g", r.var[0], m2);
        ck_assert_msg(fabs(r.skew[0] - m3 / pow(m2, 1.5)) < 1e-8, "skew %.12g", r.skew[0]);
        ck_assert_msg(fabs(r.excess_kurtosis[0] - (m4 / (m2 * m2) - 3)) < 1e-8, "kurt %.12g", r.excess_kurtosis[0]);
        /* sparse: Bernoulli(p) * 3 with p = 30/3000 */
        double p = 0.01;
        ck_assert_int_eq(r.count[1], 30);
        ck_assert(fabs(r.var[1] - 9 * p * (1 - p)) < 1e-12);
        ck_assert(fabs(r.excess_kurtosis[1] - ((1 - 6 * p * (1 - p)) / (p * (1 - p)))) < 1e-9);
        ck_assert_int_eq(r.l0_histogram[1], n - 30);
        ck_assert_int_eq(r.l0_histogram[2], 30);
        ck_assert(fabs(r.fvu - 0.25) < 1e-12);
        ck_assert(fabs(r.mean_cosine - 1) < 1e-12);
        dm_sae_result_free(&r);
        dm_sae_sparse_free(&sp);
        dm_sae_stats_free(st);
        dm_sae_work_free(w);
        dm_sae_free(sae);
        free(x), free(h), free(e);
    }
}
END_TEST

/* ---- Gemma Scope ------------------------------------------------------- */

#define SMALL GOLDEN "gemmascope_small"

/* Loads path (expecting failure) and checks the message and code. */
static void expect_npz_error(const char *path, dm_errc code, const char *const *needles)
{
    dm_sae *s = dm_sae_load(path, 0, dm_compute_default());
    ck_assert_msg(!s, "%s: loaded", path);
    for (int i = 0; needles[i]; i++)
        ck_assert_msg(strstr(dm_error(), needles[i]), "%s: message '%s' lacks '%s'", path, dm_error(), needles[i]);
    ck_assert_msg(dm_error_code() == code, "%s: error code %s, expected %s (%s)", path,
                  dm_errc_name(dm_error_code()), dm_errc_name(code), dm_error());
}

/* dir/rel made, with rel/params.npz a link to the small golden params.npz. */
static char *release_folder(const char *dir, const char *rel)
{
    char *f = dm_xasprintf("%s/%s", dir, rel), *cmd = dm_xasprintf("mkdir -p '%s'", f);
    ck_assert_int_eq(system(cmd), 0);
    char *target = realpath(SMALL "/params.npz", NULL), *link = dm_xasprintf("%s/params.npz", f);
    ck_assert_int_eq(symlink(target, link), 0);
    free(cmd), free(target), free(link);
    return f;
}

/* The release's settings (SAELens's gemma_2 loader), and the hook from its path. */
START_TEST(gemma_scope_config)
{
    dm_sae_config c;
    ck_assert_msg(dm_sae_read_config(SMALL, &c) == 0, "%s", dm_error());
    ck_assert_int_eq(c.d_in, 8);
    ck_assert_int_eq(c.d_sae, 16);
    ck_assert_int_eq(c.arch, DM_SAE_JUMPRELU);
    ck_assert_int_eq(c.apply_b_dec_to_input, 0);
    ck_assert_int_eq(c.norm, DM_SAE_NORM_NONE);
    ck_assert_int_eq(c.finetuning_scaling_factor, 0);
    ck_assert_int_eq(c.context_size, 1024);
    ck_assert_int_eq(c.prepend_bos, 1);
    ck_assert_int_eq(c.center_writing_weights, 0);
    ck_assert_str_eq(c.hook_name, ""); /* the path names no release: the pipeline gives it */
    ck_assert_str_eq(c.model_name, "");
    dm_sae_config_free(&c);
    ck_assert_int_eq(dm_sae_check(SMALL, &(dm_sae_config){.d_in = 8, .d_sae = 16}), 0);

    char *dir = dm_test_tmpdir("gemmascope");
    static const struct {
        const char *rel, *hook, *model;
    } rel[] = {
        {"gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82", "blocks.12.hook_resid_post", "gemma-2-2b"},
        {"hub/models--google--gemma-scope-9b-it-mlp/snapshots/0123abc/layer_3/width_131k/average_l0_50",
         "blocks.3.hook_mlp_out", "gemma-2-9b-it"},
        {"gemma-scope-27b-pt-att/layer_20/width_16k/average_l0_9", "blocks.20.attn.hook_z", "gemma-2-27b"},
        {"gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6", "hook_embed", "gemma-2-2b"},
        {"scopes/layer_12/width_16k", "", ""},
    };
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
        char *f = release_folder(dir, rel[i].rel), *file = dm_xasprintf("%s/params.npz", f);
        for (int as_file = 0; as_file < 2; as_file++) {
            ck_assert_msg(dm_sae_read_config(as_file ? file : f, &c) == 0, "%s", dm_error());
            ck_assert_str_eq(c.hook_name, rel[i].hook);
            ck_assert_str_eq(c.model_name, rel[i].model);
            ck_assert_str_eq(c.dataset_path, *rel[i].model ? "monology/pile-uncopyrighted" : "");
            dm_sae_config_free(&c);
        }
        free(f), free(file);
    }

    /* an embedding SAE: W_enc / sqrt(d_in) and W_dec * sqrt(d_in), as SAELens loads it */
    dm_compute cc = context(&dm_sae_backend_ref, 0);
    dm_sae *plain = dm_sae_load(SMALL, 0, &cc);
    char *emb = dm_xasprintf("%s/%s", dir, rel[3].rel);
    dm_sae *e = dm_sae_load(emb, 0, &cc);
    ck_assert_msg(plain && e, "%s", dm_error());
    for (int64_t i = 0; i < 8 * 16; i++) {
        ck_assert(fabsf(e->W_enc[i] - plain->W_enc[i] / sqrtf(8)) <= 1e-6f * fabsf(plain->W_enc[i]));
        ck_assert(fabsf(e->W_dec[i] - plain->W_dec[i] * sqrtf(8)) <= 1e-6f * fabsf(plain->W_dec[i] * 3));
    }
    dm_sae_free(e);
    free(emb);

    /* a folder with cfg.json is a SAELens folder, params.npz or not */
    char *both = release_folder(dir, "gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_1");
    char *cfgp = dm_xasprintf("%s/cfg.json", both);
    write_text(cfgp, "{\"d_in\": 8, \"d_sae\": 16, \"hook_name\": \"blocks.5.hook_resid_pre\"}");
    ck_assert_int_eq(dm_sae_read_config(both, &c), 0);
    ck_assert_str_eq(c.hook_name, "blocks.5.hook_resid_pre");
    ck_assert_int_eq(c.apply_b_dec_to_input, 1);
    dm_sae_config_free(&c);
    free(both), free(cfgp);

    /* the loaded thresholds: max(threshold, 0) (make_npz_golden.py makes the first three negative) */
    for (int f = 0; f < 3; f++)
        ck_assert(plain->threshold[f] == 0);
    ck_assert(plain->threshold[3] > 0);
    dm_sae_free(plain);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

/* savez_compressed gives the same SAE as savez; bad archives are refused by name. */
START_TEST(gemma_scope_npz_files)
{
    dm_compute cc = context(&dm_sae_backend_ref, 0);
    dm_sae *a = dm_sae_load(SMALL "/params.npz", 0, &cc);
    ck_assert_msg(a, "%s", dm_error());
    ck_assert_str_eq(a->dir, SMALL "/params.npz");
    if (dm_npz_deflate_supported()) {
        dm_sae *b = dm_sae_load(SMALL "/params_deflated.npz", 0, &cc);
        ck_assert_msg(b, "%s", dm_error());
        ck_assert_int_eq(memcmp(a->W_enc, b->W_enc, 8 * 16 * 4), 0);
        ck_assert_int_eq(memcmp(a->W_dec, b->W_dec, 8 * 16 * 4), 0);
        ck_assert_int_eq(memcmp(a->b_enc, b->b_enc, 16 * 4), 0);
        ck_assert_int_eq(memcmp(a->b_dec, b->b_dec, 8 * 4), 0);
        ck_assert_int_eq(memcmp(a->threshold, b->threshold, 16 * 4), 0);
        dm_sae_free(b);
    } else
        expect_npz_error(SMALL "/params_deflated.npz", DM_E_INPUT,
                         (const char *[]){"(member W_enc.npy): deflated", "built without zlib", NULL});
    dm_sae_free(a);

    expect_npz_error(SMALL "/missing_threshold.npz", DM_E_CORRUPT,
                     (const char *[]){"missing_threshold.npz: array threshold is missing", NULL});
    expect_npz_error(SMALL "/bad_shape.npz", DM_E_SHAPE,
                     (const char *[]){"bad_shape.npz: array W_dec has shape [8, 16]",
                                      "W_enc's (d_in 8, d_sae 16) needs [16, 8]", NULL});
    expect_npz_error(SMALL "/short_threshold.npz", DM_E_SHAPE,
                     (const char *[]){"short_threshold.npz: array threshold has shape [15]", "needs [16]", NULL});
    expect_npz_error(SMALL "/int_threshold.npz", DM_E_CORRUPT,
                     (const char *[]){"int_threshold.npz: array threshold has dtype i32", NULL});
    expect_npz_error(SMALL "/bzip2.npz", DM_E_INPUT,
                     (const char *[]){"bzip2.npz (member W_enc.npy): compression method 12 (bzip2) is not supported",
                                      NULL});
    /* a download cut short, given as the folder's params.npz */
    char *dir = dm_test_tmpdir("gemmascope"), *cut = dm_xasprintf("%s/params.npz", dir);
    FILE *in = fopen(SMALL "/params.npz", "rb"), *out = fopen(cut, "wb");
    ck_assert(in && out);
    char buf[1500];
    ck_assert(fread(buf, 1, sizeof buf, in) == sizeof buf);
    fwrite(buf, 1, sizeof buf, out);
    fclose(in), fclose(out);
    expect_npz_error(dir, DM_E_CORRUPT, (const char *[]){cut, "truncated", NULL});
    dm_sae_config c;
    ck_assert_int_eq(dm_sae_read_config(dir, &c), -1);
    assert_error_has("truncated");
    /* neither cfg.json nor params.npz: the SAELens message */
    ck_assert_int_eq(unlink(cut), 0);
    expect_npz_error(dir, DM_E_IO, (const char *[]){"cfg.json", "is this a SAELens SAE folder?", NULL});
    dm_test_rm_tree(dir);
    free(dir), free(cut);
}
END_TEST

/* A Gemma Scope SAE in SAELens's own format (cfg.json as SAELens's gemma_2
 * loader writes it, sae_weights.safetensors with threshold) at Gemma 2 2B's
 * width d_in 2304 (and 32 features, to stay small), through every backend,
 * against the formula computed here in double: pre = x W_enc + b_enc (no b_dec
 * on the input), f = pre where pre > threshold (and > 0), x_hat = f W_dec +
 * b_dec. Tolerance 1e-4 relative as for the goldens (float32 sums over 2304
 * terms: about sqrt(2304) 2^-24 = 3e-6 of the terms' scale). */
START_TEST(gemma_scope_saelens_folder)
{
    const int64_t d = 2304, ds = 32, n = 40;
    char *dir = dm_test_tmpdir("gemmascope"), *p = dm_xasprintf("%s/cfg.json", dir);
    write_text(p, "{\"architecture\": \"jumprelu\", \"d_in\": 2304, \"d_sae\": 32, \"dtype\": \"float32\","
                  " \"model_name\": \"gemma-2-2b\", \"hook_name\": \"blocks.12.hook_resid_post\","
                  " \"hook_head_index\": null, \"activation_fn\": \"relu\", \"finetuning_scaling_factor\": false,"
                  " \"sae_lens_training_version\": null, \"prepend_bos\": true,"
                  " \"dataset_path\": \"monology/pile-uncopyrighted\", \"context_size\": 1024,"
                  " \"dataset_trust_remote_code\": true, \"apply_b_dec_to_input\": false,"
                  " \"normalize_activations\": null}");
    free(p);
    float *we = malloc(sizeof(float) * d * ds), *wd = malloc(sizeof(float) * d * ds), be[32], bd[2304], th[32];
    float *x = malloc(sizeof(float) * n * d);
    uint64_t r = 88172645463325252ull;
#define RND() (r ^= r << 13, r ^= r >> 7, r ^= r << 17, (float)((double)(r >> 11) / 9007199254740992.0) - 0.5f)
    for (int64_t i = 0; i < d * ds; i++)
        we[i] = RND() * 0.1f, wd[i] = RND() * 0.2f;
    for (int64_t f = 0; f < ds; f++)
        be[f] = RND() * 0.2f, th[f] = f < 2 ? -0.1f : 0.05f + 0.3f * (RND() + 0.5f);
    for (int64_t j = 0; j < d; j++)
        bd[j] = RND() * 0.1f;
    for (int64_t i = 0; i < n * d; i++)
        x[i] = RND() * 2;
#undef RND
    const char *names[] = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"};
    const int64_t shapes[5][2] = {{d, ds}, {ds, d}, {ds, 0}, {d, 0}, {ds, 0}};
    const int nd[5] = {2, 2, 1, 1, 1};
    const float *vals[5] = {we, wd, be, bd, th};
    p = dm_xasprintf("%s/sae_weights.safetensors", dir);
    write_st_values(p, 5, names, shapes, nd, vals);
    free(p);

    dm_sae_config c;
    ck_assert_msg(dm_sae_read_config(dir, &c) == 0, "%s", dm_error());
    ck_assert_str_eq(c.hook_name, "blocks.12.hook_resid_post");
    ck_assert_int_eq(c.arch, DM_SAE_JUMPRELU);
    ck_assert_int_eq(c.apply_b_dec_to_input, 0);
    ck_assert_int_eq(c.norm, DM_SAE_NORM_NONE);
    ck_assert_int_eq(c.context_size, 1024);
    ck_assert_int_eq(c.prepend_bos, 1);
    dm_sae_config_free(&c);

    /* the reference, in double */
    double *want = malloc(sizeof(double) * n * d);
    int64_t active = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < d; j++)
            want[i * d + j] = bd[j];
        for (int64_t f = 0; f < ds; f++) {
            double pre = be[f];
            for (int64_t j = 0; j < d; j++)
                pre += (double)x[i * d + j] * we[j * ds + f];
            if (!(pre > th[f] && pre > 0))
                continue;
            active++;
            for (int64_t j = 0; j < d; j++)
                want[i * d + j] += pre * wd[f * d + j];
        }
        for (int64_t j = 0; j < d; j++)
            want[i * d + j] = x[i * d + j] - want[i * d + j];
    }
    ck_assert_msg(active > n && active < n * ds, "%lld actives: the case tests nothing", (long long)active);
    list_backends();
    float *resid = malloc(sizeof(float) * n * d);
    for (int b = 0; b < NBACKENDS; b++) {
        dm_compute cc = context(backends[b], 1);
        dm_sae *s = dm_sae_load(dir, 0, &cc);
        ck_assert_msg(s, "%s", dm_error());
        dm_sae_work *w = dm_sae_work_new(s, 16, &cc);
        dm_sae_sparse sp = {0};
        ck_assert_int_eq(backends[b]->forward(w, s, x, n, NULL, resid, &sp), 0);
        ck_assert_int_eq(sp.start[n], active);
        double e = rel_err_f32_f64(resid, want, n * d);
        ck_assert_msg(e < 1e-4, "%s: residual off by %g (relative)", backends[b]->name, e);
        dm_sae_sparse_free(&sp);
        dm_sae_work_free(w);
        dm_sae_free(s);
    }
    free(we), free(wd), free(x), free(want), free(resid);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sae");
    TCase *tc = tcase_create("sae");
    tcase_set_timeout(tc, 120); /* the backends on every golden SAE: ~10 s alone, several times that on a loaded machine */
    tcase_add_test(tc, backend_choice);
    tcase_add_test(tc, golden_parity_and_statistics);
    tcase_add_test(tc, backends_match_reference);
    tcase_add_test(tc, stats_backends_match_reference);
    tcase_add_test(tc, cuda_gemm_precisions);
    tcase_add_test(tc, large_rows_are_finite);
    tcase_add_test(tc, bad_folders);
    tcase_add_test(tc, feature_moments_are_stable);
    tcase_add_test(tc, gemma_scope_config);
    tcase_add_test(tc, gemma_scope_npz_files);
    tcase_add_test(tc, gemma_scope_saelens_folder);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
