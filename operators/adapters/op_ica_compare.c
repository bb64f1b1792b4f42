/*
 * op_ica_compare.c: FastICA's unmixing matrix taken back to activation space
 * (DOMAIN.md §6), and compared with an SAE's decoder rows (the plan's step 6).
 *
 * With whitening z = L^(-1/2) C (e - mean) (L the k top eigenvalues, C their
 * eigenvectors, k x d) and z = A s, W = A^-1 (fastica.unmixing):
 *   mixing      (d, k)  C^T L^(1/2) A: e - mean = mixing s on the top-k span
 *   directions  (k, d)  the patterns: columns of mixing, normalised (what a
 *                       decoder row is the analogue of; compare these)
 *   filters     (k, d)  W L^(-1/2) C: s = filters (e - mean)
 *   offset      (k)     filters mean (s = filters e - offset), 0 without mean
 *   plan_directions (k, d)  the plan's A^T C, rows normalised: it drops
 *                       L^(1/2) and is neither patterns nor filters; kept
 *                       only as a labelled comparison
 * The variance the ICA reconstruction explains (plan step 8b) follows from
 * the eigenvalues alone: mixing filters = C^T C (A W = I), the projection on
 * the top-k span, so it explains sum_{i<k} lambda_i / sum_i lambda_i. The
 * plan's own reconstruction (z C, without L^(1/2)) is reported beside it.
 *
 * SAE comparison (decoder given, W_dec d_sae x d, or d x d_sae which is
 * transposed with a note): |cos| of every pattern with every normalised
 * decoder row in one SGEMM; per component the maximum and the feature that
 * reaches it; their histogram; counts above 0.8 and below 0.3. The null
 * baselines go through the same GEMM: `null_samples` random unit directions,
 * and as many random directions drawn from the residual covariance
 * (C^T L^(1/2) g, g standard normal over all components with lambda > 0).
 * Without a decoder only the back-projection and variance are computed.
 *
 * Products: directions.npy, unmixing.npy (the filters), mixing.npy,
 * plan_directions.npy, and `file` (ica_compare.json). The same JSON is the
 * `summary` output (its UTF-8 bytes as a 1-D u8 tensor), for the report.
 */
#include <cblas.h>
#include <jansson.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastica.h"
#include "fs.h"
#include "npy.h"
#include "op.h"

enum { IN_UNMIXING, IN_EIGENVALUES, IN_COMPONENTS, IN_MEAN, IN_DECODER };
enum { OUT_DIRECTIONS, OUT_FILTERS, OUT_MIXING, OUT_PLAN, OUT_OFFSET, OUT_MAXCOS, OUT_BEST, OUT_SUMMARY };

#define HIST_BINS 20

static const dm_param_spec cmp_params[] = {
    {"decoder", DM_P_PATH, "", "SAE W_dec as a .npy (d_sae x d), if not given on the 'decoder' input"},
    {"null_samples", DM_P_INT, "256", "random directions per null baseline"},
    {"seed", DM_P_INT, "0", "seed of the null baselines' random directions"},
    {"file", DM_P_STRING, "ica_compare.json", "product file (\"\" to publish nothing)"},
    {"directions_file", DM_P_STRING, "directions.npy", "product: the patterns (k x d, unit rows)"},
    {"filters_file", DM_P_STRING, "unmixing.npy", "product: the filters (k x d), sources = filters (e - mean)"},
    {"mixing_file", DM_P_STRING, "mixing.npy", "product: the mixing matrix (d x k)"},
    {"plan_file", DM_P_STRING, "plan_directions.npy", "product: the plan's formula, for comparison"},
    {NULL},
};
static const dm_port_spec cmp_inputs[] = {
    {"unmixing", DM_PORT_TENSOR},
    {"eigenvalues", DM_PORT_TENSOR},
    {"components", DM_PORT_TENSOR},
    {"mean", DM_PORT_TENSOR, 0, 1},
    {"decoder", DM_PORT_TENSOR, 0, 1},
    {NULL},
};
static const dm_port_spec cmp_outputs[] = {
    {"directions", DM_PORT_TENSOR},      {"filters", DM_PORT_TENSOR}, {"mixing", DM_PORT_TENSOR},
    {"plan_directions", DM_PORT_TENSOR}, {"offset", DM_PORT_TENSOR},  {"max_cos", DM_PORT_TENSOR},
    {"best_feature", DM_PORT_TENSOR},    {"summary", DM_PORT_TENSOR},  {NULL},
};

static int cmp_infer(dm_node *n)
{
    static const char *files[] = {"directions_file", "filters_file", "mixing_file", "plan_file"};
    for (int i = 0; i < 4; i++) {
        const char *f = dm_param_str(n, files[i]);
        if (!*f || strchr(f, '/'))
            return dm_fail("%s must be a plain file name, not '%s'", files[i], f);
    }
    const dm_port_desc *w = dm_input_desc(n, IN_UNMIXING), *ev = dm_input_desc(n, IN_EIGENVALUES),
                       *c = dm_input_desc(n, IN_COMPONENTS), *mu = dm_input_desc(n, IN_MEAN);
    if (w->ndim != 2 || (w->shape[0] >= 0 && w->shape[1] >= 0 && w->shape[0] != w->shape[1]))
        return dm_fail("input unmixing must be a square k x k matrix (fastica's 'unmixing')");
    if (c->ndim != 2 || ev->ndim != 1)
        return dm_fail("inputs eigenvalues (d) and components (d x d) must be pca's outputs");
    int64_t k = w->shape[0], d = c->shape[1];
    if (k > 0 && c->shape[0] >= 0 && k > c->shape[0])
        return dm_fail("unmixing is %lld x %lld but pca has only %lld components", (long long)k, (long long)k,
                       (long long)c->shape[0]);
    if (mu && (mu->ndim != 1 || (d >= 0 && mu->shape[0] >= 0 && mu->shape[0] != d)))
        return dm_fail("input mean must be a vector of %lld values", (long long)d);
    if (dm_param_int(n, "null_samples") < 0)
        return dm_fail("null_samples must be >= 0");
    const char *f = dm_param_str(n, "file");
    if (strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || !strcmp(f, "node.json"))
        return dm_fail("file must be a plain file name in the output folder, not '%s'", f);
    int64_t kd[2] = {k, d}, dk[2] = {d, k};
    const int64_t *shapes[] = {kd, kd, dk, kd, kd, kd, kd};
    int ndims[] = {2, 2, 2, 2, 1, 1, 1};
    for (int p = OUT_DIRECTIONS; p <= OUT_BEST; p++) {
        dm_port_desc *o = dm_output_desc(n, p);
        o->dtype = p == OUT_BEST ? DM_I64 : DM_F64;
        o->ndim = ndims[p];
        o->shape[0] = shapes[p][0];
        o->shape[1] = ndims[p] == 2 ? shapes[p][1] : 0;
    }
    dm_port_desc *sm = dm_output_desc(n, OUT_SUMMARY);
    sm->dtype = DM_U8;
    sm->ndim = 1;
    sm->shape[0] = -1;
    return 0;
}

static int64_t cmp_state_bytes(const dm_node *n)
{
    int64_t d = dm_input_desc(n, IN_COMPONENTS)->shape[1];
    int64_t k = dm_input_desc(n, IN_UNMIXING)->shape[0];
    int64_t ns = dm_param_int(n, "null_samples");
    const dm_port_desc *dec = dm_input_desc(n, IN_DECODER);
    int64_t dsae = dec ? dec->shape[0] * dec->shape[1] : 0;
    if (!dec && *dm_param_str(n, "decoder"))
        dsae = 24576 * d; /* not known before reading: GPT-2 small's SAE width as the guide */
    if (d <= 0 || k <= 0)
        return 0;
    /* the decoder in f64 as loaded and f32 normalised, the cosine block, and the outputs */
    return dsae * 12 + (k + 2 * ns) * 4096 * 4 + 8 * (8 * k * d + d * d);
}

static double *as_f64(const dm_tensor *t)
{
    int64_t cnt = dm_tensor_numel(t);
    double *o = dm_xmalloc((size_t)cnt * sizeof(double));
    for (int64_t i = 0; i < cnt; i++)
        o[i] = t->dtype == DM_F64 ? ((const double *)t->data)[i] : (double)((const float *)t->data)[i];
    return o;
}

static int save_product(dm_node *n, const char *file, const dm_tensor *t)
{
    char *path = dm_xasprintf("%s/%s", dm_node_dir(n), file);
    int rc = dm_npy_save(path, t);
    free(path);
    return rc ? rc : dm_publish(n, file);
}

/* Summary of max |cos| values: mean, quantiles, counts, histogram. */
static json_t *summarise(const double *maxc, int64_t m)
{
    json_t *o = json_object(), *h = json_array();
    double *sorted = dm_xmalloc((size_t)(m > 0 ? m : 1) * sizeof(double)), sum = 0;
    int64_t hist[HIST_BINS] = {0}, hi = 0, lo = 0;
    for (int64_t i = 0; i < m; i++) {
        sorted[i] = maxc[i];
        sum += maxc[i];
        int b = (int)(maxc[i] * HIST_BINS);
        hist[b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b]++;
        hi += maxc[i] > 0.8;
        lo += maxc[i] < 0.3;
    }
    for (int64_t i = 1; i < m; i++) /* insertion sort: m is small */
        for (int64_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    json_object_set_new(o, "count", json_integer(m));
    json_object_set_new(o, "mean_max_cosine", m ? json_real(sum / (double)m) : json_null());
    const double qs[] = {0.05, 0.5, 0.95, 0.99};
    const char *qn[] = {"q05", "median", "q95", "q99"};
    for (int q = 0; q < 4; q++)
        json_object_set_new(o, qn[q], m ? json_real(sorted[(int64_t)(qs[q] * (double)(m - 1) + 0.5)]) : json_null());
    json_object_set_new(o, "high_similarity_count", json_integer(hi));
    json_object_set_new(o, "low_similarity_count", json_integer(lo));
    for (int b = 0; b < HIST_BINS; b++)
        json_array_append_new(h, json_integer(hist[b]));
    json_object_set_new(o, "histogram", h);
    json_object_set_new(o, "histogram_edges", json_string("20 bins of width 0.05 over [0, 1]"));
    free(sorted);
    return o;
}

/* For each of the m unit rows of X (m, d) f32, the max |cos| with the rows of
 * D (dsae, d) f32 (unit or zero) and its index: blocks of 4096 decoder rows. */
static void max_abs_cos(const float *X, int64_t m, const float *D, int64_t dsae, int64_t d, double *maxc,
                        int64_t *best)
{
    const int64_t B = 4096;
    float *c = dm_xmalloc((size_t)(m * B) * sizeof(float));
    for (int64_t i = 0; i < m; i++)
        maxc[i] = -1, best[i] = -1;
    for (int64_t b0 = 0; b0 < dsae; b0 += B) {
        int64_t nb = dsae - b0 < B ? dsae - b0 : B;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nb, (int)d, 1.0f, X, (int)d,
                    D + b0 * d, (int)d, 0.0f, c, (int)nb);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < nb; j++) {
                double a = fabs((double)c[i * nb + j]);
                if (a > maxc[i])
                    maxc[i] = a, best[i] = b0 + j;
            }
    }
    free(c);
}

static void normalise_rows(double *X, int64_t m, int64_t d)
{
    for (int64_t i = 0; i < m; i++) {
        double s = 0;
        for (int64_t j = 0; j < d; j++)
            s += X[i * d + j] * X[i * d + j];
        s = s > 0 ? 1.0 / sqrt(s) : 0.0;
        for (int64_t j = 0; j < d; j++)
            X[i * d + j] *= s;
    }
}

static int cmp_finish(dm_node *n)
{
    const dm_tensor *wt = dm_input_tensor(n, IN_UNMIXING), *evt = dm_input_tensor(n, IN_EIGENVALUES),
                    *ct = dm_input_tensor(n, IN_COMPONENTS), *mt = dm_input_tensor(n, IN_MEAN),
                    *dect = dm_input_tensor(n, IN_DECODER);
    const char *file = dm_param_str(n, "file"), *decpath = dm_param_str(n, "decoder");
    int64_t k = wt->shape[0], d = ct->shape[1], ns = dm_param_int(n, "null_samples");
    dm_tensor out[7] = {{0}}, dec = {0}, summary = {0};
    double *W = NULL, *ev = NULL, *C = NULL, *A = NULL, *mean = NULL;
    float *Dn = NULL, *X = NULL;
    json_t *o = NULL;
    int rc = -1;
    if (wt->ndim != 2 || wt->shape[1] != k || ct->ndim != 2 || ct->shape[0] < k || evt->shape[0] < k)
        return dm_fail("unmixing %lld x %lld does not fit pca's %lld components", (long long)wt->shape[0],
                       (long long)wt->shape[1], (long long)ct->shape[0]);
    W = as_f64(wt), ev = as_f64(evt), C = as_f64(ct);
    mean = mt ? as_f64(mt) : NULL;
    for (int64_t i = 0; i < k; i++)
        if (!(ev[i] > 0))
            {
                dm_fail("eigenvalue %lld is %g: the whitening cannot have used it", (long long)i, ev[i]);
                goto end;
            }
    /* A = W^-1 */
    A = dm_xmalloc((size_t)(k * k) * sizeof(double));
    memcpy(A, W, (size_t)(k * k) * sizeof(double));
    lapack_int *piv = dm_xmalloc((size_t)k * sizeof(lapack_int));
    lapack_int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, (int)k, (int)k, A, (int)k, piv);
    if (!info)
        info = LAPACKE_dgetri(LAPACK_ROW_MAJOR, (int)k, A, (int)k, piv);
    free(piv);
    if (info) {
        dm_fail("unmixing matrix is singular (LAPACK info %d)", (int)info);
        goto end;
    }
    int64_t kd[2] = {k, d}, dk[2] = {d, k}, k1[1] = {k};
    for (int p = 0; p < 7; p++)
        dm_tensor_init(&out[p], p == OUT_BEST ? DM_I64 : DM_F64, p >= OUT_OFFSET ? 1 : 2,
                       p >= OUT_OFFSET ? k1 : p == OUT_MIXING ? dk : kd);
    double *dir = out[OUT_DIRECTIONS].data, *fil = out[OUT_FILTERS].data, *mix = out[OUT_MIXING].data,
           *plan = out[OUT_PLAN].data, *off = out[OUT_OFFSET].data, *maxc = out[OUT_MAXCOS].data;
    int64_t *best = out[OUT_BEST].data;
    /* patterns: dir[i] = sum_j A[j,i] sqrt(l_j) C[j]; mixing = dir^T before normalising */
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
            double a = A[j * k + i] * sqrt(ev[j]), f = W[i * k + j] / sqrt(ev[j]), pl = A[j * k + i];
            for (int64_t t = 0; t < d; t++) {
                dir[i * d + t] += a * C[j * d + t];
                fil[i * d + t] += f * C[j * d + t];
                plan[i * d + t] += pl * C[j * d + t];
            }
        }
    for (int64_t i = 0; i < k; i++)
        for (int64_t t = 0; t < d; t++)
            mix[t * k + i] = dir[i * d + t];
    normalise_rows(dir, k, d);
    normalise_rows(plan, k, d);
    for (int64_t i = 0; i < k; i++) {
        double s = 0;
        for (int64_t t = 0; mean && t < d; t++)
            s += fil[i * d + t] * mean[t];
        off[i] = s;
        maxc[i] = NAN;
        best[i] = -1;
    }

    /* variance explained: proper, and the plan's formula */
    double total = 0, top = 0, plan_err = 0;
    for (int64_t i = 0; i < ct->shape[0]; i++) {
        double l = ev[i] > 0 ? ev[i] : 0;
        total += l;
        if (i < k) {
            top += l;
            plan_err += l * (1 - 1 / sqrt(l)) * (1 - 1 / sqrt(l));
        } else
            plan_err += l;
    }
    o = json_object();
    json_object_set_new(o, "k", json_integer(k));
    json_object_set_new(o, "d", json_integer(d));
    json_object_set_new(o, "variance_explained_by_ica", json_real(top / total));
    json_object_set_new(o, "variance_explained_plan_formula", json_real(1 - plan_err / total));
    json_object_set_new(o, "note",
                        json_string("directions = patterns (columns of mixing, unit); unmixing.npy = filters; "
                                    "plan_directions = the plan's mixing^T components (neither)"));

    /* the decoder: input tensor, else the file */
    if (!dect && *decpath) {
        if (dm_npy_load(decpath, &dec)) {
            dm_fail_prefix("decoder");
            goto end;
        }
        dect = &dec;
    }
    if (dect) {
        if (dect->ndim != 2 || (dect->dtype != DM_F32 && dect->dtype != DM_F64)) {
            dm_fail("decoder must be a 2-D float32 or float64 matrix (W_dec, d_sae x %lld)", (long long)d);
            goto end;
        }
        int64_t r = dect->shape[0], c = dect->shape[1], dsae;
        int transposed = 0;
        if (c == d)
            dsae = r;
        else if (r == d) {
            dsae = c, transposed = 1;
            dm_info("%s: decoder is %lld x %lld: taking it as W_dec^T (d x d_sae)", dm_node_name(n), (long long)r,
                    (long long)c);
        } else {
            dm_fail("decoder is %lld x %lld but the residual has d = %lld: neither dimension matches", (long long)r,
                    (long long)c, (long long)d);
            goto end;
        }
        Dn = dm_xmalloc((size_t)(dsae * d) * sizeof(float));
        for (int64_t f = 0; f < dsae; f++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++) {
                int64_t idx = transposed ? t * dsae + f : f * d + t;
                double v = dect->dtype == DM_F64 ? ((double *)dect->data)[idx] : ((float *)dect->data)[idx];
                Dn[f * d + t] = (float)v;
                s += v * v;
            }
            float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
            for (int64_t t = 0; t < d; t++)
                Dn[f * d + t] *= inv;
        }
        dm_tensor_free(&dec);
        /* patterns, then the two nulls, through the same GEMM */
        int64_t m = k + 2 * ns;
        X = dm_xmalloc((size_t)(m * d) * sizeof(float));
        double *row = dm_xmalloc((size_t)d * sizeof(double)), *g = dm_xmalloc((size_t)d * sizeof(double));
        for (int64_t i = 0; i < k * d; i++)
            X[i] = (float)dir[i];
        dm_np_random rng;
        dm_np_random_seed(&rng, (uint32_t)dm_param_int(n, "seed"));
        for (int64_t s = 0; s < ns; s++) {
            for (int64_t t = 0; t < d; t++)
                row[t] = dm_np_random_gauss(&rng);
            normalise_rows(row, 1, d);
            for (int64_t t = 0; t < d; t++)
                X[(k + s) * d + t] = (float)row[t];
        }
        for (int64_t s = 0; s < ns; s++) {
            memset(row, 0, (size_t)d * sizeof(double));
            for (int64_t j = 0; j < ct->shape[0]; j++) {
                double gj = dm_np_random_gauss(&rng);
                if (ev[j] > 0)
                    for (int64_t t = 0; t < d; t++)
                        row[t] += gj * sqrt(ev[j]) * C[j * d + t];
            }
            normalise_rows(row, 1, d);
            for (int64_t t = 0; t < d; t++)
                X[(k + ns + s) * d + t] = (float)row[t];
        }
        free(g);
        double *mc = dm_xmalloc((size_t)m * sizeof(double));
        int64_t *bf = dm_xmalloc((size_t)m * sizeof(int64_t));
        max_abs_cos(X, m, Dn, dsae, d, mc, bf);
        memcpy(maxc, mc, (size_t)k * sizeof(double));
        memcpy(best, bf, (size_t)k * sizeof(int64_t));
        json_t *sae = summarise(mc, k), *per = json_array();
        for (int64_t i = 0; i < k; i++) {
            json_t *e = json_object();
            json_object_set_new(e, "component", json_integer(i));
            json_object_set_new(e, "max_abs_cos", json_real(mc[i]));
            json_object_set_new(e, "best_feature", json_integer(bf[i]));
            json_array_append_new(per, e);
        }
        json_object_set_new(sae, "d_sae", json_integer(dsae));
        json_object_set_new(sae, "components", per);
        json_object_set_new(o, "ica_sae_similarity", sae);
        json_t *nulls = json_object();
        json_object_set_new(nulls, "random_unit", summarise(mc + k, ns));
        json_object_set_new(nulls, "random_from_covariance", summarise(mc + k + ns, ns));
        json_object_set_new(o, "null_baselines", nulls);
        free(mc), free(bf), free(row);
    } else
        json_object_set_new(o, "ica_sae_similarity", json_null());

    if (save_product(n, dm_param_str(n, "directions_file"), &out[OUT_DIRECTIONS]) ||
        save_product(n, dm_param_str(n, "filters_file"), &out[OUT_FILTERS]) ||
        save_product(n, dm_param_str(n, "mixing_file"), &out[OUT_MIXING]) ||
        save_product(n, dm_param_str(n, "plan_file"), &out[OUT_PLAN]))
        goto end;
    if (dm_publish_json(n, file, "ica_compare summary", o, JSON_INDENT(2) | JSON_REAL_PRECISION(10), &summary))
        goto end;
    rc = 0;
    for (int p = 0; p < 7 && !rc; p++)
        rc = dm_set_output(n, p, &out[p]);
    if (!rc)
        rc = dm_set_output(n, OUT_SUMMARY, &summary);
end:
    for (int p = 0; p < 7; p++)
        dm_tensor_free(&out[p]);
    dm_tensor_free(&summary);
    dm_tensor_free(&dec);
    json_decref(o);
    free(W), free(ev), free(C), free(A), free(mean), free(Dn), free(X);
    return rc;
}

const dm_op dm_op_ica_compare = {
    .name = "ica_compare",
    .version = 2,
    .summary = "ICA patterns, filters and mixing in activation space; comparison with SAE decoder rows",
    .params = cmp_params,
    .inputs = cmp_inputs,
    .outputs = cmp_outputs,
    .infer = cmp_infer,
    .state_bytes = cmp_state_bytes,
    .finish = cmp_finish,
};
