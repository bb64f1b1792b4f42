/*
 * op_project.c: a linear map of a stream, out = (x - mean) @ matrix^T.
 *
 * With pca.whitening (k x d, rows of L^(-1/2) C) and covariance.mean this is
 * the whitening pass (z has identity covariance); with other matrices it
 * projects rows onto any k directions. The kernel is stats.h's projection (one
 * SGEMM per chunk on the "cpu" backend); the matrix arrives as a float64
 * tensor and is used in float32 (rows of activations are float32).
 */
#include <stdlib.h>
#include <string.h>

#include "op.h"
#include "stats.h"

static const dm_port_spec proj_inputs[] = {
    {"x", DM_PORT_STREAM},
    {"matrix", DM_PORT_TENSOR},
    {"mean", DM_PORT_TENSOR, 0, 1},
    {NULL},
};
static const dm_port_spec proj_outputs[] = {{"out", DM_PORT_STREAM}, {NULL}};

typedef struct {
    const dm_stats_backend *be; /* chosen at open from the compute context */
    int64_t d, k;
    float *W, *mean, *xc, *out; /* k x d, d, chunk x d, chunk x k */
} project;

static int proj_infer(dm_node *n)
{
    const dm_port_desc *x = dm_input_desc(n, 0), *m = dm_input_desc(n, 1), *mu = dm_input_desc(n, 2);
    if (m->ndim != 2)
        return dm_fail("input 'matrix' must be 2-D (k x d), got %d dimensions", m->ndim);
    if (m->shape[1] >= 0 && m->shape[1] != x->shape[1])
        return dm_fail("input 'matrix' is %lld x %lld but stream 'x' has %lld columns: shapes do not match",
                       (long long)m->shape[0], (long long)m->shape[1], (long long)x->shape[1]);
    if (mu && (mu->ndim != 1 || (mu->shape[0] >= 0 && mu->shape[0] != x->shape[1])))
        return dm_fail("input 'mean' must be a vector of %lld values (the width of 'x'), got shape [%lld%s]",
                       (long long)x->shape[1], (long long)mu->shape[0], mu->ndim > 1 ? ", ..." : "");
    dm_port_desc *o = dm_output_desc(n, 0);
    o->shape[0] = x->shape[0];
    o->shape[1] = m->shape[0];
    return 0;
}

static int64_t proj_state_bytes(const dm_node *n)
{
    const dm_port_desc *x = dm_input_desc(n, 0), *m = dm_input_desc(n, 1);
    return (m->shape[0] * m->shape[1] + x->shape[1]) * 4;
}

static float *to_f32(const dm_tensor *t)
{
    int64_t cnt = dm_tensor_numel(t);
    float *f = dm_xmalloc((size_t)cnt * sizeof *f);
    for (int64_t i = 0; i < cnt; i++)
        f[i] = t->dtype == DM_F64 ? (float)((const double *)t->data)[i] : ((const float *)t->data)[i];
    return f;
}

static int proj_open(dm_node *n)
{
    const dm_tensor *m = dm_input_tensor(n, 1), *mu = dm_input_tensor(n, 2);
    if (m->dtype != DM_F64 && m->dtype != DM_F32)
        return dm_fail("input 'matrix' must be float32 or float64, not %s", dm_dtype_name(m->dtype));
    if (mu && mu->dtype != DM_F64 && mu->dtype != DM_F32)
        return dm_fail("input 'mean' must be float32 or float64, not %s", dm_dtype_name(mu->dtype));
    project *p = dm_xcalloc(1, sizeof *p);
    dm_node_set_state(n, p);
    p->be = dm_stats_backend_for(dm_node_compute(n));
    p->k = m->shape[0];
    p->d = m->shape[1];
    p->W = to_f32(m);
    p->mean = mu ? to_f32(mu) : NULL;
    p->xc = dm_xmalloc_aligned((size_t)dm_chunk_rows(n) * (size_t)p->d * sizeof(float));
    p->out = dm_xmalloc_aligned((size_t)dm_chunk_rows(n) * (size_t)p->k * sizeof(float));
    return 0;
}

static int proj_consume(dm_node *n, int port, const dm_chunk *c)
{
    project *p = dm_node_state(n);
    p->be->project(p->out, c->data, c->rows, p->W, p->k, p->d, p->mean, p->xc);
    dm_chunk o = {.row0 = c->row0, .rows = c->rows, .cols = p->k, .data = p->out};
    return dm_emit(n, 0, &o);
}

static void proj_close(dm_node *n)
{
    project *p = dm_node_state(n);
    if (!p)
        return;
    free(p->W), free(p->mean), free(p->xc), free(p->out);
    free(p);
}

const dm_op dm_op_project = {
    .name = "project",
    .version = 1,
    .summary = "(x - mean) @ matrix^T per row: whitening, or projection on k directions",
    .inputs = proj_inputs,
    .outputs = proj_outputs,
    .infer = proj_infer,
    .state_bytes = proj_state_bytes,
    .open = proj_open,
    .consume = proj_consume,
    .close = proj_close,
    .shardable = 1, /* a map: each row's output depends on that row and the tensors only */
};
