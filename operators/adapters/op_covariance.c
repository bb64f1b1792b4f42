/*
 * op_covariance.c: the covariance matrix of a stream, in one pass.
 *
 * Each chunk is centred on its own mean and folded into a dm_covariance
 * accumulator (stats.h) with one cblas_dsyrk per block plus a rank-1 merge
 * term, all in double: state d^2 doubles plus a few MiB of scratch, whatever
 * the stream's length. At the end the node sets two tensor outputs,
 *   covariance  f64 (d, d), exactly symmetric
 *   mean        f64 (d)
 * and saves covariance.npy into its folder for the user. The normalisation is
 * the population one, sum (x - mean)(x - mean)^T / n (numpy ddof=0): it matches
 * the moments operator's variances, and PCA/whitening downstream want the
 * covariance of the data seen, not an estimate for unseen data; at the row
 * counts of a real run the two differ by 1/n anyway.
 *
 * Shards: a shard's partial result is its accumulator (mean and co-moments),
 * comoments.npy (stats.h, "accumulators on disk"); merge_partial folds each
 * into the node's with Chan et al.'s formula, in the order the engine calls it.
 */
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "op.h"
#include "stats.h"

enum { OUT_COV, OUT_MEAN };

static const dm_param_spec covariance_params[] = {
    {"file", DM_P_STRING, "covariance.npy",
     "product file in the output folder (\"\" to publish nothing)"},
    {NULL},
};
static const dm_port_spec covariance_inputs[] = {{"x", DM_PORT_STREAM, 0, 0}, {NULL}};
static const dm_port_spec covariance_outputs[] = {
    {"covariance", DM_PORT_TENSOR, 0, 0},
    {"mean", DM_PORT_TENSOR, 0, 0},
    {NULL},
};

typedef struct {
    const dm_stats_backend *be; /* chosen at open from the compute context */
    dm_covariance c;
} covariance_state;

static int64_t width(const dm_node *n) { return dm_input_desc(n, 0)->shape[1]; }

static int covariance_infer(dm_node *n)
{
    int64_t d = width(n);
    const char *f = dm_param_str(n, "file");
    if (d == 0)
        return dm_fail("input x has no columns");
    if (strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || !strcmp(f, "node.json"))
        return dm_fail("file must be a plain file name in the output folder, not '%s'", f);
    dm_port_desc *cov = dm_output_desc(n, OUT_COV), *mean = dm_output_desc(n, OUT_MEAN);
    cov->dtype = mean->dtype = DM_F64;
    cov->ndim = 2;
    cov->shape[0] = cov->shape[1] = d;
    mean->ndim = 1;
    mean->shape[0] = d;
    return 0;
}

/* The accumulator (co-moments, mean, scratch) and the outputs it finishes into. */
static int64_t covariance_state_bytes(const dm_node *n)
{
    int64_t d = width(n);
    return dm_covariance_bytes(d) + 8 * (d * d + d);
}

static int covariance_open(dm_node *n)
{
    covariance_state *s = dm_xcalloc(1, sizeof *s);
    s->be = dm_stats_backend_for(dm_node_compute(n));
    dm_covariance_init(&s->c, width(n));
    dm_node_set_state(n, s);
    return 0;
}

static int covariance_consume(dm_node *n, int port, const dm_chunk *c)
{
    covariance_state *s = dm_node_state(n);
    if (c->cols != s->c.d)
        return dm_fail("input x: chunk of %lld columns, expected %lld", (long long)c->cols,
                       (long long)s->c.d);
    s->be->covariance_update(&s->c, c->data, c->rows);
    return 0;
}

#define PARTIAL_FILE "comoments.npy"

static int covariance_save_partial(dm_node *n, const char *dir)
{
    covariance_state *s = dm_node_state(n);
    char *path = dm_xasprintf("%s/" PARTIAL_FILE, dir);
    int rc = dm_covariance_save(&s->c, path);
    free(path);
    return rc;
}

static int covariance_merge_partial(dm_node *n, const char *dir)
{
    covariance_state *s = dm_node_state(n);
    dm_covariance part;
    char *path = dm_xasprintf("%s/" PARTIAL_FILE, dir);
    dm_covariance_init(&part, s->c.d);
    int rc = dm_covariance_load(&part, path);
    if (!rc)
        rc = dm_covariance_merge(&s->c, &part);
    dm_covariance_free(&part);
    free(path);
    return rc;
}

static int covariance_finish(dm_node *n)
{
    covariance_state *s = dm_node_state(n);
    int64_t d = s->c.d, shape[2] = {d, d};
    const char *file = dm_param_str(n, "file");
    dm_tensor cov = {0}, mean = {0};
    int rc = -1;

    if (s->c.n == 0)
        return dm_fail("input x is empty: no rows to take a covariance of");
    dm_tensor_init(&cov, DM_F64, 2, shape);
    dm_tensor_init(&mean, DM_F64, 1, shape);
    if (dm_covariance_finalize(&s->c, cov.data, mean.data))
        goto end;
    if (*file) {
        char *path = dm_xasprintf("%s/%s", dm_node_dir(n), file);
        int bad = dm_npy_save(path, &cov);
        free(path);
        if (bad || dm_publish(n, file))
            goto end;
    }
    if (dm_set_output(n, OUT_COV, &cov) || dm_set_output(n, OUT_MEAN, &mean))
        goto end;
    rc = 0;
end:
    dm_tensor_free(&cov);
    dm_tensor_free(&mean);
    return rc;
}

static void covariance_close(dm_node *n)
{
    covariance_state *s = dm_node_state(n);
    if (!s)
        return;
    dm_covariance_free(&s->c);
    free(s);
    dm_node_set_state(n, NULL);
}

const dm_op dm_op_covariance = {
    .name = "covariance",
    .version = 1,
    .summary = "covariance matrix (population, f64) and mean of a stream",
    .params = covariance_params,
    .inputs = covariance_inputs,
    .outputs = covariance_outputs,
    .infer = covariance_infer,
    .state_bytes = covariance_state_bytes,
    .open = covariance_open,
    .consume = covariance_consume,
    .finish = covariance_finish,
    .close = covariance_close,
    .shardable = 1,
    .save_partial = covariance_save_partial,
    .merge_partial = covariance_merge_partial,
};
