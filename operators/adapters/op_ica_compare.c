/*
 * op_ica_compare.c: FastICA's unmixing matrix taken back to activation space,
 * and compared with an SAE's decoder rows. The algebra, the null directions
 * and the comparison are in operators/analysis/ica_backproject.h, which
 * defines each output:
 *   directions  (k, d)  the patterns (unit rows): compare these with W_dec
 *   filters     (k, d)  sources = filters (e - mean)
 *   mixing      (d, k)
 *   unscaled_patterns (k, d)  A^T C without the eigenvalue scaling, unit
 *                       rows: neither patterns nor filters, for comparison
 *   offset      (k)     filters mean
 *   max_cos, best_feature (k)  per pattern, the max |cos| with a decoder row
 *                       and that row (NaN and -1 without a decoder)
 *   summary             dm_compare_summary (operators/analysis/summaries.h):
 *                       the variance explained, and the |cos| summaries of the
 *                       patterns and of the two null baselines
 *
 * SAE comparison (decoder given, W_dec d_sae x d, or d x d_sae which is
 * transposed with a note): |cos| of every pattern with every normalised
 * decoder row in one SGEMM; per component the maximum and the feature that
 * reaches it; their histogram; counts above and below the similarity
 * thresholds (operators/analysis/verdict.h). The null baselines go through
 * the same GEMM: `null_samples` random unit directions, and as many random
 * directions drawn from the residual covariance. Without a decoder only the
 * back-projection and variance are computed.
 *
 * RICA (op_rica.c): with the optional input `whitened_mixing` (k x m, rica's
 * `mixing` = W^T), the unmixing may be m x k with m > k: the mixing is taken
 * from that input instead of W^-1 and everything above has m rows
 * (dm_ica_backproject_rect).
 *
 * Products: directions.npy, unmixing.npy (the filters), mixing.npy,
 * unscaled_patterns.npy, and `file` (ica_compare.json).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "ica_backproject.h"
#include "npy.h"
#include "op.h"
#include "summaries.h"

enum { IN_UNMIXING, IN_EIGENVALUES, IN_COMPONENTS, IN_MEAN, IN_DECODER, IN_WMIXING };
enum { OUT_DIRECTIONS, OUT_FILTERS, OUT_MIXING, OUT_UNSCALED, OUT_OFFSET, OUT_MAXCOS, OUT_BEST, OUT_SUMMARY };

static const dm_param_spec cmp_params[] = {
    {"decoder", DM_P_PATH, "", "SAE W_dec as a .npy (d_sae x d), if not given on the 'decoder' input"},
    {"null_samples", DM_P_INT, "256", "random directions per null baseline"},
    {"seed", DM_P_INT, "0", "seed of the null baselines' random directions"},
    {"file", DM_P_STRING, "ica_compare.json", "product file (\"\" to publish nothing)"},
    {"directions_file", DM_P_STRING, "directions.npy", "product: the patterns (k x d, unit rows)"},
    {"filters_file", DM_P_STRING, "unmixing.npy", "product: the filters (k x d), sources = filters (e - mean)"},
    {"mixing_file", DM_P_STRING, "mixing.npy", "product: the mixing matrix (d x k)"},
    {"unscaled_file", DM_P_STRING, "unscaled_patterns.npy",
     "product: the patterns without the eigenvalue scaling (k x d, unit rows), for comparison"},
    {NULL},
};
static const dm_port_spec cmp_inputs[] = {
    {"unmixing", DM_PORT_TENSOR},
    {"eigenvalues", DM_PORT_TENSOR},
    {"components", DM_PORT_TENSOR},
    {"mean", DM_PORT_TENSOR, 0, 1},
    {"decoder", DM_PORT_TENSOR, 0, 1},
    {"whitened_mixing", DM_PORT_TENSOR, 0, 1},
    {NULL},
};
static const dm_port_spec cmp_outputs[] = {
    {"directions", DM_PORT_TENSOR},        {"filters", DM_PORT_TENSOR}, {"mixing", DM_PORT_TENSOR},
    {"unscaled_patterns", DM_PORT_TENSOR}, {"offset", DM_PORT_TENSOR},  {"max_cos", DM_PORT_TENSOR},
    {"best_feature", DM_PORT_TENSOR},      {"summary", DM_PORT_TENSOR}, {NULL},
};

static int cmp_infer(dm_node *n)
{
    static const char *files[] = {"directions_file", "filters_file", "mixing_file", "unscaled_file"};
    for (int i = 0; i < 4; i++) {
        const char *f = dm_param_str(n, files[i]);
        if (!*f || strchr(f, '/'))
            return dm_fail("%s must be a plain file name, not '%s'", files[i], f);
    }
    const dm_port_desc *w = dm_input_desc(n, IN_UNMIXING), *ev = dm_input_desc(n, IN_EIGENVALUES),
                       *c = dm_input_desc(n, IN_COMPONENTS), *mu = dm_input_desc(n, IN_MEAN),
                       *wm = dm_input_desc(n, IN_WMIXING);
    if (wm) {
        if (w->ndim != 2 || wm->ndim != 2 ||
            (w->shape[0] >= 0 && wm->shape[1] >= 0 && (w->shape[0] != wm->shape[1] || w->shape[1] != wm->shape[0])))
            return dm_failc(DM_E_SHAPE, "inputs unmixing (m x k) and whitened_mixing (k x m) must be transposed "
                                        "shapes (rica's 'unmixing' and 'mixing')");
    } else if (w->ndim != 2 || (w->shape[0] >= 0 && w->shape[1] >= 0 && w->shape[0] != w->shape[1]))
        return dm_failc(DM_E_SHAPE, "input unmixing must be a square k x k matrix (fastica's 'unmixing')");
    if (c->ndim != 2 || ev->ndim != 1)
        return dm_failc(DM_E_SHAPE, "inputs eigenvalues (d) and components (d x d) must be pca's outputs");
    int64_t k = w->shape[0], kz = w->shape[1], d = c->shape[1];
    if (kz > 0 && c->shape[0] >= 0 && kz > c->shape[0])
        return dm_failc(DM_E_SHAPE, "unmixing is %lld x %lld but pca has only %lld components", (long long)k,
                        (long long)kz, (long long)c->shape[0]);
    if (mu && (mu->ndim != 1 || (d >= 0 && mu->shape[0] >= 0 && mu->shape[0] != d)))
        return dm_failc(DM_E_SHAPE, "input mean must be a vector of %lld values", (long long)d);
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

static json_t *num_or_null(double x, int64_t m) { return m ? json_real(x) : json_null(); }

/* ica_compare.json's summary of max |cos| values. */
static json_t *cos_json(const dm_cos_summary *s)
{
    json_t *o = json_object(), *h = json_array();
    json_object_set_new(o, "count", json_integer(s->count));
    json_object_set_new(o, "mean_max_cosine", num_or_null(s->mean, s->count));
    json_object_set_new(o, "q05", num_or_null(s->q05, s->count));
    json_object_set_new(o, "median", num_or_null(s->median, s->count));
    json_object_set_new(o, "q95", num_or_null(s->q95, s->count));
    json_object_set_new(o, "q99", num_or_null(s->q99, s->count));
    json_object_set_new(o, "high_similarity_count", json_integer(s->high));
    json_object_set_new(o, "low_similarity_count", json_integer(s->low));
    for (int b = 0; b < DM_COS_BINS; b++)
        json_array_append_new(h, json_integer(s->histogram[b]));
    json_object_set_new(o, "histogram", h);
    json_object_set_new(o, "histogram_edges", json_string("20 bins of width 0.05 over [0, 1]"));
    return o;
}

/* The decoder as unit rows (d_sae, d) float32; *dsae its rows. */
static float *unit_decoder(dm_node *n, const dm_tensor *dect, int64_t d, int64_t *dsae)
{
    if (dect->ndim != 2 || (dect->dtype != DM_F32 && dect->dtype != DM_F64)) {
        dm_failc(DM_E_SHAPE, "decoder must be a 2-D float32 or float64 matrix (W_dec, d_sae x %lld)", (long long)d);
        return NULL;
    }
    int64_t r = dect->shape[0], c = dect->shape[1];
    int transposed = 0;
    if (c == d)
        *dsae = r;
    else if (r == d) {
        *dsae = c, transposed = 1;
        dm_info("%s: decoder is %lld x %lld: taking it as W_dec^T (d x d_sae)", dm_node_name(n), (long long)r,
                (long long)c);
    } else {
        dm_failc(DM_E_SHAPE, "decoder is %lld x %lld but the residual has d = %lld: neither dimension matches",
                 (long long)r, (long long)c, (long long)d);
        return NULL;
    }
    float *Dn = dm_xmalloc((size_t)(*dsae * d) * sizeof(float));
    dm_unit_rows_f32(dect->data, dect->dtype == DM_F64, *dsae, d, transposed, Dn);
    return Dn;
}

static int cmp_finish(dm_node *n)
{
    const dm_tensor *wt = dm_input_tensor(n, IN_UNMIXING), *evt = dm_input_tensor(n, IN_EIGENVALUES),
                    *ct = dm_input_tensor(n, IN_COMPONENTS), *mt = dm_input_tensor(n, IN_MEAN),
                    *dect = dm_input_tensor(n, IN_DECODER), *wmt = dm_input_tensor(n, IN_WMIXING);
    const char *file = dm_param_str(n, "file"), *decpath = dm_param_str(n, "decoder");
    /* k components (rows of W) in kz whitened dimensions: kz = k for FastICA */
    int64_t k = wt->shape[0], kz = wt->ndim == 2 ? wt->shape[1] : -1, d = ct->shape[1];
    int64_t ns = dm_param_int(n, "null_samples");
    dm_tensor out[7] = {{0}}, dec = {0}, summary = {0};
    double *W = NULL, *ev = NULL, *C = NULL, *A = NULL, *mean = NULL, *mc = NULL;
    int64_t *bf = NULL;
    float *Dn = NULL, *X = NULL;
    json_t *o = NULL;
    dm_compare_summary cs;
    int rc = -1;
    if (wt->ndim != 2 || (!wmt && kz != k) || ct->ndim != 2 || ct->shape[0] < kz || evt->shape[0] < kz)
        return dm_failc(DM_E_SHAPE, "unmixing %lld x %lld does not fit pca's %lld components",
                        (long long)wt->shape[0], (long long)wt->shape[1], (long long)ct->shape[0]);
    if (wmt && (wmt->ndim != 2 || wmt->shape[0] != kz || wmt->shape[1] != k))
        return dm_failc(DM_E_SHAPE, "whitened_mixing must be %lld x %lld (the unmixing's transpose shape)",
                        (long long)kz, (long long)k);
    W = as_f64(wt), ev = as_f64(evt), C = as_f64(ct);
    mean = mt ? as_f64(mt) : NULL;
    for (int64_t i = 0; i < kz; i++)
        if (!(ev[i] > 0)) {
            dm_fail("eigenvalue %lld is %g: the whitening cannot have used it", (long long)i, ev[i]);
            goto end;
        }
    if (wmt)
        A = as_f64(wmt); /* RICA: z ~ W^T s, no inverse */
    else {
        A = dm_xmalloc((size_t)(k * k) * sizeof(double));
        if (dm_ica_invert(W, k, A))
            goto end;
    }
    int64_t kd[2] = {k, d}, dk[2] = {d, k}, k1[1] = {k};
    for (int p = 0; p < 7; p++)
        dm_tensor_init(&out[p], p == OUT_BEST ? DM_I64 : DM_F64, p >= OUT_OFFSET ? 1 : 2,
                       p >= OUT_OFFSET ? k1 : p == OUT_MIXING ? dk : kd);
    dm_ica_backprojection bp = {out[OUT_DIRECTIONS].data, out[OUT_FILTERS].data, out[OUT_UNSCALED].data,
                                out[OUT_MIXING].data, out[OUT_OFFSET].data};
    dm_ica_backproject_rect(W, A, ev, C, mean, k, kz, d, &bp);
    double *maxc = out[OUT_MAXCOS].data;
    int64_t *best = out[OUT_BEST].data;
    for (int64_t i = 0; i < k; i++)
        maxc[i] = NAN, best[i] = -1;

    memset(&cs, 0, sizeof cs);
    cs.k = k, cs.d = d;
    dm_ica_variance_explained(ev, ct->shape[0], kz, &cs.variance_explained_by_ica,
                              &cs.variance_explained_by_unscaled_reconstruction);
    o = json_object();
    json_object_set_new(o, "k", json_integer(k));
    json_object_set_new(o, "d", json_integer(d));
    json_object_set_new(o, "variance_explained_by_ica", json_real(cs.variance_explained_by_ica));
    json_object_set_new(o, "variance_explained_by_unscaled_reconstruction",
                        json_real(cs.variance_explained_by_unscaled_reconstruction));
    json_object_set_new(o, "note",
                        json_string("directions = patterns (columns of mixing, unit); unmixing.npy = filters; "
                                    "unscaled_patterns = mixing^T components, without the eigenvalue scaling "
                                    "(neither)"));

    /* the decoder: input tensor, else the file */
    if (!dect && *decpath) {
        if (dm_npy_load(decpath, &dec)) {
            dm_fail_prefix("decoder");
            goto end;
        }
        dect = &dec;
    }
    if (dect) {
        int64_t dsae;
        if (!(Dn = unit_decoder(n, dect, d, &dsae)))
            goto end;
        dm_tensor_free(&dec);
        /* patterns, then the two nulls, through the same GEMM */
        int64_t m = k + 2 * ns;
        X = dm_xmalloc((size_t)(m * d) * sizeof(float));
        for (int64_t i = 0; i < k * d; i++)
            X[i] = (float)bp.directions[i];
        dm_ica_null_directions((uint32_t)dm_param_int(n, "seed"), ns, ev, C, ct->shape[0], d, X + k * d);
        mc = dm_xmalloc((size_t)m * sizeof(double));
        bf = dm_xmalloc((size_t)m * sizeof(int64_t));
        dm_max_abs_cos(X, m, Dn, dsae, d, mc, bf);
        memcpy(maxc, mc, (size_t)k * sizeof(double));
        memcpy(best, bf, (size_t)k * sizeof(int64_t));
        cs.d_sae = dsae;
        dm_cos_summarise(mc, k, &cs.similarity);
        dm_cos_summarise(mc + k, ns, &cs.null_unit);
        dm_cos_summarise(mc + k + ns, ns, &cs.null_covariance);
        json_t *sae = cos_json(&cs.similarity), *per = json_array();
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
        json_object_set_new(nulls, "random_unit", cos_json(&cs.null_unit));
        json_object_set_new(nulls, "random_from_covariance", cos_json(&cs.null_covariance));
        json_object_set_new(o, "null_baselines", nulls);
    } else
        json_object_set_new(o, "ica_sae_similarity", json_null());

    if (save_product(n, dm_param_str(n, "directions_file"), &out[OUT_DIRECTIONS]) ||
        save_product(n, dm_param_str(n, "filters_file"), &out[OUT_FILTERS]) ||
        save_product(n, dm_param_str(n, "mixing_file"), &out[OUT_MIXING]) ||
        save_product(n, dm_param_str(n, "unscaled_file"), &out[OUT_UNSCALED]))
        goto end;
    if (dm_publish_json(n, file, "ica_compare summary", o, JSON_INDENT(2) | JSON_REAL_PRECISION(10), NULL))
        goto end;
    dm_summary_pack(&summary, DM_SUMMARY_COMPARE, DM_SUMMARY_COMPARE_VERSION, &cs, sizeof cs, NULL, 0);
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
    free(W), free(ev), free(C), free(A), free(mean), free(Dn), free(X), free(mc), free(bf);
    return rc;
}

const dm_op dm_op_ica_compare = {
    .name = "ica_compare",
    .version = 3,
    .summary = "ICA patterns, filters and mixing in activation space; comparison with SAE decoder rows",
    .params = cmp_params,
    .inputs = cmp_inputs,
    .outputs = cmp_outputs,
    .infer = cmp_infer,
    .state_bytes = cmp_state_bytes,
    .finish = cmp_finish,
};
