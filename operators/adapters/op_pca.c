/*
 * op_pca.c: principal components of a covariance, and the whitening matrix
 * that later nodes apply to the stream.
 *
 * Input: the tensor `covariance`, f64 (d, d) (the covariance operator's output).
 * Outputs, all f64:
 *   eigenvalues  (d)     descending
 *   components   (d, d)  one unit eigenvector per row, sign fixed so its
 *                        largest-|.| entry is positive (reproducible)
 *   whitening    (k, d)  W = diag(1/sqrt(lambda_i)) C_k: z = W (x - mean) has
 *                        identity covariance
 *   unwhitening  (k, d)  U = diag(sqrt(lambda_i)) C_k, W's inverse on the span of
 *                        C_k (W U^T = I): a direction v in that span is U^T (W v),
 *                        so x v = (x W^T)(U v): what the 100M pipeline projects
 *                        its stored x W^T with
 * Products: pca.json ({"eigenvalues", "explained_variance_ratio",
 * "cumulative_variance_ratio", "k", ...}) and pca_components.npy (d, d).
 *
 * Choosing k. `k` > 0 asks for that many components, 0 for all d; `variance`
 * > 0 picks the smallest k whose components explain that fraction of the total
 * variance, capped by `k` when that is > 0. Components whose eigenvalue is
 * below `floor` times the largest cannot be whitened stably (1/sqrt of a
 * rounding residue: e.g. TransformerLens' centred residuals have an exact null
 * direction); they are dropped with a warning, so the whitening matrix can have
 * fewer rows than asked. Its row count is therefore known at validation only
 * when `k` is given and `variance` is 0, and even then the floor may shrink it;
 * otherwise infer() declares it -1. pca.json records what happened.
 *
 * The eigendecomposition is LAPACK dsyevr on the whole matrix: O(d^3), about a
 * second at d = 768, negligible beside the pass that built the covariance.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fs.h"
#include "npy.h"
#include "op.h"
#include "stats.h"

enum { OUT_EIGENVALUES, OUT_COMPONENTS, OUT_WHITENING, OUT_UNWHITENING };

static const dm_param_spec pca_params[] = {
    {"k", DM_P_INT, "0", "components to keep for whitening (0: all)"},
    {"variance", DM_P_FLOAT, "0",
     "if > 0, keep the fewest components explaining this fraction of the variance (at most k)"},
    {"floor", DM_P_FLOAT, "1e-10",
     "drop components with eigenvalue below floor x the largest (relative)"},
    {NULL},
};
static const dm_port_spec pca_inputs[] = {{"covariance", DM_PORT_TENSOR, 0, 0}, {NULL}};
static const dm_port_spec pca_outputs[] = {
    {"eigenvalues", DM_PORT_TENSOR, 0, 0},
    {"components", DM_PORT_TENSOR, 0, 0},
    {"whitening", DM_PORT_TENSOR, 0, 0},
    {"unwhitening", DM_PORT_TENSOR, 0, 0},
    {NULL},
};

/* Checks a covariance's description; d gets its width (-1 if not yet known). */
static int check_covariance(dm_dtype dtype, int ndim, const int64_t *shape, int64_t *d)
{
    char dims[160] = ""; /* DM_MAX_DIMS numbers of at most 20 digits */
    for (int i = 0, at = 0; i < ndim && i < DM_MAX_DIMS; i++)
        at += snprintf(dims + at, sizeof dims - (size_t)at, "%s%lld", i ? " x " : "",
                       (long long)shape[i]);
    if (dtype != DM_F64 || ndim != 2 || (shape[0] >= 0 && shape[1] >= 0 && shape[0] != shape[1]))
        return dm_fail("input covariance: expected a square 2-D f64 matrix (d x d), got %s [%s]",
                       dm_dtype_name(dtype), dims);
    *d = shape[0] >= 0 ? shape[0] : shape[1];
    if (*d == 0)
        return dm_fail("input covariance is empty [%s]", dims);
    return 0;
}

static int check_params(const dm_node *n, int64_t d)
{
    int64_t k = dm_param_int(n, "k");
    double variance = dm_param_float(n, "variance"), floor = dm_param_float(n, "floor");
    if (k < 0 || (d > 0 && k > d))
        return dm_fail("k %lld: need 0 (all) to %lld (the covariance width)", (long long)k,
                       (long long)d);
    if (!(variance >= 0.0 && variance <= 1.0))
        return dm_fail("variance %g: need a fraction in [0, 1] (0: use k)", variance);
    if (!(floor >= 0.0 && floor < 1.0))
        return dm_fail("floor %g: need a relative eigenvalue floor in [0, 1)", floor);
    return 0;
}

static int pca_infer(dm_node *n)
{
    const dm_port_desc *in = dm_input_desc(n, 0);
    int64_t d, k = dm_param_int(n, "k");
    if (in->kind != DM_PORT_TENSOR)
        return dm_fail("input covariance must be a tensor (the covariance operator's "
                       "'covariance' output), not a stream");
    if (check_covariance(in->dtype, in->ndim, in->shape, &d) || check_params(n, d))
        return -1;

    dm_port_desc *ev = dm_output_desc(n, OUT_EIGENVALUES);
    dm_port_desc *comp = dm_output_desc(n, OUT_COMPONENTS);
    dm_port_desc *wh = dm_output_desc(n, OUT_WHITENING), *uw = dm_output_desc(n, OUT_UNWHITENING);
    ev->dtype = comp->dtype = wh->dtype = uw->dtype = DM_F64;
    ev->ndim = 1;
    ev->shape[0] = d;
    comp->ndim = wh->ndim = uw->ndim = 2;
    comp->shape[0] = comp->shape[1] = d;
    wh->shape[0] = uw->shape[0] = k > 0 && dm_param_float(n, "variance") == 0.0 ? k : -1;
    wh->shape[1] = uw->shape[1] = d;
    return 0;
}

/* Outputs (eigenvalues, components, whitening up to d x d) and LAPACK's copies. */
static int64_t pca_state_bytes(const dm_node *n)
{
    int64_t d = dm_input_desc(n, 0)->shape[0];
    return d > 0 ? 8 * (5 * d * d + 6 * d) : 0;
}

static json_t *json_vector(const double *v, int64_t d)
{
    json_t *a = json_array();
    for (int64_t j = 0; j < d; j++)
        json_array_append_new(a, isfinite(v[j]) ? json_real(v[j]) : json_null());
    return a;
}

static int write_pca_json(dm_node *n, const dm_pca *p, int64_t chosen, int64_t kept)
{
    json_t *o = json_object();
    json_object_set_new(o, "d", json_integer(p->d));
    json_object_set_new(o, "k", json_integer(kept));
    json_object_set_new(o, "k_before_floor", json_integer(chosen));
    json_object_set_new(o, "floor", json_real(dm_param_float(n, "floor")));
    json_object_set_new(o, "eigenvalues", json_vector(p->eigenvalues, p->d));
    json_object_set_new(o, "explained_variance_ratio",
                        json_vector(p->explained_variance_ratio, p->d));
    json_object_set_new(o, "cumulative_variance_ratio",
                        json_vector(p->cumulative_variance_ratio, p->d));
    int rc = dm_publish_json(n, "pca.json", "pca", o, JSON_INDENT(2) | JSON_REAL_PRECISION(17), NULL);
    json_decref(o);
    return rc;
}

static int pca_finish(dm_node *n)
{
    const dm_tensor *cov = dm_input_tensor(n, 0);
    int64_t d, k = dm_param_int(n, "k");
    double variance = dm_param_float(n, "variance"), floor = dm_param_float(n, "floor");
    dm_pca p = DM_PCA_INIT;
    dm_tensor ev = {0}, comp = {0}, wh = {0}, uw = {0};
    int rc = -1;

    if (!cov)
        return dm_fail("input covariance was not produced");
    /* Checked again on the real tensor: a cached or upstream tensor of unknown
     * shape at validation may still be wrong. */
    if (check_covariance(cov->dtype, cov->ndim, cov->shape, &d) || check_params(n, d))
        return -1;
    /* dm_pca_fit refuses these too, but only this node knows which input it was */
    const double *c = cov->data;
    for (int64_t i = 0; i < d * d; i++)
        if (!isfinite(c[i]))
            return dm_fail("input covariance holds %s at [%lld][%lld]: the statistics' input had non-finite "
                           "(NaN or Inf) rows (check the data upstream)", isnan(c[i]) ? "NaN" : c[i] > 0 ? "Inf" : "-Inf",
                           (long long)(i / d), (long long)(i % d));
    if (dm_pca_fit(&p, cov->data, d))
        return -1;

    int64_t chosen = k > 0 ? k : d;
    if (variance > 0.0)
        chosen = dm_pca_auto_k(&p, variance, k);
    int64_t shape[2] = {d, d};
    dm_tensor_init(&ev, DM_F64, 1, shape);
    dm_tensor_init(&comp, DM_F64, 2, shape);
    memcpy(ev.data, p.eigenvalues, (size_t)d * sizeof(double));
    memcpy(comp.data, p.components, (size_t)(d * d) * sizeof(double));

    double *W = dm_xmalloc((size_t)(chosen * d) * sizeof(double));
    int64_t kept = dm_pca_whitening(&p, chosen, floor, W);
    if (kept < 0) {
        free(W);
        goto end;
    }
    shape[0] = kept;
    dm_tensor_init(&wh, DM_F64, 2, shape);
    memcpy(wh.data, W, (size_t)(kept * d) * sizeof(double));
    free(W);
    dm_tensor_init(&uw, DM_F64, 2, shape);
    for (int64_t i = 0; i < kept; i++)
        for (int64_t j = 0; j < d; j++)
            ((double *)uw.data)[i * d + j] = sqrt(p.eigenvalues[i]) * p.components[i * d + j];
    if (variance > 0.0 && dm_pca_auto_k(&p, variance, 0) > chosen)
        dm_warn("%s: k %lld components explain %.4g of the variance, short of the %.4g asked "
                "(%lld would reach it)",
                dm_node_name(n), (long long)chosen, p.cumulative_variance_ratio[chosen - 1],
                variance, (long long)dm_pca_auto_k(&p, variance, 0));
    else if (variance > 0.0)
        dm_info("%s: %lld components explain %.4g of the variance (asked %.4g)",
                dm_node_name(n), (long long)chosen, p.cumulative_variance_ratio[chosen - 1],
                variance);

    char *path = dm_xasprintf("%s/pca_components.npy", dm_node_dir(n));
    int bad = dm_npy_save(path, &comp);
    free(path);
    if (bad || dm_publish(n, "pca_components.npy") || write_pca_json(n, &p, chosen, kept))
        goto end;
    if (dm_set_output(n, OUT_EIGENVALUES, &ev) || dm_set_output(n, OUT_COMPONENTS, &comp) ||
        dm_set_output(n, OUT_WHITENING, &wh) || dm_set_output(n, OUT_UNWHITENING, &uw))
        goto end;
    rc = 0;
end:
    dm_pca_free(&p);
    dm_tensor_free(&ev);
    dm_tensor_free(&comp);
    dm_tensor_free(&wh);
    dm_tensor_free(&uw);
    return rc;
}

const dm_op dm_op_pca = {
    .name = "pca",
    .version = 1,
    .summary = "eigendecomposition of a covariance: components, explained variance, whitening",
    .params = pca_params,
    .inputs = pca_inputs,
    .outputs = pca_outputs,
    .infer = pca_infer,
    .state_bytes = pca_state_bytes,
    .finish = pca_finish,
};
