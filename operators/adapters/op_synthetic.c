/*
 * op_synthetic.c: a seeded generator of heavy-tailed, correlated rows, for tests
 * and benchmarks of any size without files.
 *
 * Row r is   x = mu + sigma * e + f U
 * with e (cols) and f (factors) independent scale mixtures of uniforms: a
 * centred uniform of unit variance, multiplied by `outlier_scale` with
 * probability `outlier_prob` (excess kurtosis about 6.9 with the defaults, so
 * the data is clearly non-Gaussian), U a fixed factors x cols loading matrix
 * that correlates the columns, and mu, sigma fixed per column. Everything is a
 * function of (seed, r) alone: a counter-based generator seeded per row makes
 * rows reproducible in any chunking, in parallel, and in any shard: seek()
 * makes the node produce any range of its rows (the engine's shards).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "op.h"

static const dm_param_spec syn_params[] = {
    {"rows", DM_P_INT, NULL, "number of rows"},
    {"cols", DM_P_INT, NULL, "row width"},
    {"seed", DM_P_INT, "0", "generator seed"},
    {"factors", DM_P_INT, "8", "shared factors that correlate the columns"},
    {"outlier_prob", DM_P_FLOAT, "0.1", "probability of a scaled-up draw (heavy tails)"},
    {"outlier_scale", DM_P_FLOAT, "5", "the scale of those draws"},
    {"shard", DM_P_INT, "0", "which shard of the rows to produce (0-based)"},
    {"shards", DM_P_INT, "1", "how many shards the rows are split into"},
    {NULL},
};
static const dm_port_spec syn_outputs[] = {{"out", DM_PORT_STREAM}, {NULL}};

typedef struct {
    int64_t cols, q, begin, end, next;
    uint64_t seed;
    double p;
    float scale, norm;
    float *mu, *sigma, *U; /* cols, cols, q x cols */
} synthetic;

/* One heavy-tailed draw of unit-variance uniform, scaled up with probability p. */
static inline float draw(uint64_t *s, const synthetic *g)
{
    uint64_t z = dm_splitmix64(s);
    float u = (float)(z >> 40) * (1.0f / 16777216.0f) - 0.5f; /* 24 bits */
    float v = (float)(z & 0xffffff) * (1.0f / 16777216.0f);
    return u * g->norm * ((double)v < g->p ? g->scale : 1.0f);
}

static int syn_infer(dm_node *n)
{
    int64_t rows = dm_param_int(n, "rows"), cols = dm_param_int(n, "cols"), q = dm_param_int(n, "factors");
    int64_t r = dm_param_int(n, "shard"), s = dm_param_int(n, "shards");
    double p = dm_param_float(n, "outlier_prob");
    if (rows < 1 || cols < 1)
        return dm_fail("rows and cols must be positive (rows %lld, cols %lld)", (long long)rows, (long long)cols);
    if (q < 0 || q > 4096)
        return dm_fail("factors must be between 0 and 4096, not %lld", (long long)q);
    if (p < 0 || p > 1)
        return dm_fail("outlier_prob must be in [0, 1], not %g", p);
    if (s < 1 || r < 0 || r >= s)
        return dm_fail("shard %lld of %lld: need 0 <= shard < shards", (long long)r, (long long)s);
    dm_port_desc *o = dm_output_desc(n, 0);
    o->shape[0] = rows * (r + 1) / s - rows * r / s;
    o->shape[1] = cols;
    return 0;
}

static int64_t syn_state_bytes(const dm_node *n)
{
    return (dm_param_int(n, "factors") + 2) * dm_param_int(n, "cols") * 4;
}

static int syn_open(dm_node *n)
{
    synthetic *g = dm_xcalloc(1, sizeof *g);
    dm_node_set_state(n, g);
    int64_t rows = dm_param_int(n, "rows"), r = dm_param_int(n, "shard"), s = dm_param_int(n, "shards");
    g->cols = dm_param_int(n, "cols");
    g->q = dm_param_int(n, "factors");
    g->seed = (uint64_t)dm_param_int(n, "seed");
    g->p = dm_param_float(n, "outlier_prob");
    g->scale = (float)dm_param_float(n, "outlier_scale");
    /* unit variance for the uniform-scale mixture: E[u^2] = 1/12 before scaling */
    g->norm = (float)sqrt(12.0 / (g->p * g->scale * g->scale + (1 - g->p)));
    g->begin = g->next = rows * r / s;
    g->end = rows * (r + 1) / s;
    g->mu = dm_xmalloc((size_t)g->cols * sizeof(float));
    g->sigma = dm_xmalloc((size_t)g->cols * sizeof(float));
    g->U = dm_xmalloc((size_t)(g->q * g->cols + 1) * sizeof(float));
    uint64_t st = g->seed ^ 0x5eed5eed5eed5eedull;
    for (int64_t i = 0; i < g->cols; i++) {
        g->mu[i] = (float)((double)(dm_splitmix64(&st) >> 11) * 0x1p-53 * 2.0 - 1.0);
        g->sigma[i] = (float)(0.5 + 1.5 * (double)(dm_splitmix64(&st) >> 11) * 0x1p-53);
    }
    for (int64_t i = 0; i < g->q * g->cols; i++)
        g->U[i] = (float)(((double)(dm_splitmix64(&st) >> 11) * 0x1p-53 - 0.5) * sqrt(12.0 / (double)g->q));
    return 0;
}

/* Row r of the stream (see the file comment). */
static void syn_row(const synthetic *g, int64_t r, float *x)
{
    uint64_t st = g->seed * 0xd1342543de82ef95ull + (uint64_t)r * 0x9e3779b97f4a7c15ull + 1;
    dm_splitmix64(&st);
    for (int64_t i = 0; i < g->cols; i++)
        x[i] = g->mu[i] + g->sigma[i] * draw(&st, g);
    for (int64_t j = 0; j < g->q; j++) {
        float f = draw(&st, g);
        const float *u = g->U + j * g->cols;
        for (int64_t i = 0; i < g->cols; i++)
            x[i] += f * u[i];
    }
}

static int syn_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    synthetic *g = dm_node_state(n);
    int64_t rows = g->end - g->next < max_rows ? g->end - g->next : max_rows;
    out->row0 = g->next;
    out->rows = rows;
    out->cols = g->cols;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; i++)
        syn_row(g, g->next + i, out->data + i * g->cols);
    g->next += rows;
    return 0;
}

/* Rows [row0, row0 + rows), numbered as produce() numbers them: within this
 * node's slice [begin, end) when the shard and shards parameters cut one. */
static int syn_seek(dm_node *n, int64_t row0, int64_t rows)
{
    synthetic *g = dm_node_state(n);
    row0 += g->begin; /* an offset from the first row this source makes */
    if (row0 < g->begin || rows < 0 || row0 > g->end || rows > g->end - row0)
        return dm_failc(DM_E_INTERNAL, "seek to rows %lld..%lld, outside rows %lld..%lld of this source",
                        (long long)row0, (long long)(row0 + rows - 1), (long long)g->begin,
                        (long long)(g->end - 1));
    g->next = row0;
    g->end = row0 + rows;
    return 0;
}

static void syn_close(dm_node *n)
{
    synthetic *g = dm_node_state(n);
    if (!g)
        return;
    free(g->mu), free(g->sigma), free(g->U);
    free(g);
}

const dm_op dm_op_synthetic = {
    .name = "synthetic",
    .version = 1,
    .summary = "seeded heavy-tailed, correlated rows of any width",
    .params = syn_params,
    .outputs = syn_outputs,
    .infer = syn_infer,
    .state_bytes = syn_state_bytes,
    .open = syn_open,
    .produce = syn_produce,
    .close = syn_close,
    .shardable = 1,
    .seek = syn_seek,
};
