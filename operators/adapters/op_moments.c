/*
 * op_moments.c: per-column mean, variance, skewness and excess kurtosis of a
 * stream, in one pass.
 *
 * The node folds every chunk into a dm_moments accumulator (stats.h: centred
 * power sums in double, merged chunk by chunk with Pebay's formulas), so its
 * state is 4 d doubles however long the stream. At the end it writes the
 * product stats.json,
 *   {"n": N, "d": d, "mean": [...], "var": [...], "skew": [...],
 *    "excess_kurtosis": [...]}
 * with population moments (divide by n; scipy.stats.skew / kurtosis defaults),
 * and sets the same four vectors as f64 [d] tensor outputs for later nodes.
 * A column with no spread has no skewness or kurtosis (0/0): those entries are
 * NaN in the tensors and null in the JSON, which has no NaN.
 *
 * NaN or Inf in the input propagate into their column's statistics; the
 * operator does not filter them (a model producing them is a bug to see).
 *
 * Shards: a shard's partial result is its accumulator, moments.npy (stats.h,
 * "accumulators on disk"); merge_partial folds each into the node's with
 * Pebay's formulas, in the order the engine calls it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fs.h"
#include "op.h"
#include "stats.h"

enum { OUT_MEAN, OUT_VAR, OUT_SKEW, OUT_KURT, OUT_COUNT };

static const dm_param_spec moments_params[] = {
    {"file", DM_P_STRING, "stats.json", "product file in the output folder (\"\" for none)"},
    {NULL},
};
static const dm_port_spec moments_inputs[] = {{"x", DM_PORT_STREAM, 0, 0}, {NULL}};
static const dm_port_spec moments_outputs[] = {
    {"mean", DM_PORT_TENSOR, 0, 0},
    {"var", DM_PORT_TENSOR, 0, 0},
    {"skew", DM_PORT_TENSOR, 0, 0},
    {"excess_kurtosis", DM_PORT_TENSOR, 0, 0},
    {"n", DM_PORT_TENSOR, 0, 0},
    {NULL},
};

typedef struct {
    const dm_stats_backend *be; /* chosen at open from the compute context */
    dm_moments m;
} moments_state;

static int check_file_name(const char *f)
{
    if (strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || !strcmp(f, "node.json"))
        return dm_fail("file must be a plain file name in the output folder, not '%s'", f);
    return 0;
}

static int64_t width(const dm_node *n) { return dm_input_desc(n, 0)->shape[1]; }

static int moments_infer(dm_node *n)
{
    int64_t d = width(n);
    if (d == 0)
        return dm_fail("input x has no columns");
    if (check_file_name(dm_param_str(n, "file")))
        return -1;
    for (int k = 0; k < OUT_COUNT; k++) {
        dm_port_desc *o = dm_output_desc(n, k);
        o->dtype = DM_F64;
        o->ndim = 1;
        o->shape[0] = d;
    }
    dm_port_desc *cnt = dm_output_desc(n, OUT_COUNT);
    cnt->dtype = DM_I64;
    cnt->ndim = 1;
    cnt->shape[0] = 1;
    return 0;
}

/* The accumulator and the four output vectors. */
static int64_t moments_state_bytes(const dm_node *n) { return 8 * 8 * width(n); }

static int moments_open(dm_node *n)
{
    moments_state *s = dm_xcalloc(1, sizeof *s);
    s->be = dm_stats_backend_for(dm_node_compute(n));
    dm_moments_init(&s->m, width(n));
    dm_node_set_state(n, s);
    return 0;
}

static int moments_consume(dm_node *n, int port, const dm_chunk *c)
{
    moments_state *s = dm_node_state(n);
    if (c->cols != s->m.d)
        return dm_fail("input x: chunk of %lld columns, expected %lld", (long long)c->cols,
                       (long long)s->m.d);
    s->be->moments_update(&s->m, c->data, c->rows);
    return 0;
}

#define PARTIAL_FILE "moments.npy"

static int moments_save_partial(dm_node *n, const char *dir)
{
    moments_state *s = dm_node_state(n);
    char *path = dm_xasprintf("%s/" PARTIAL_FILE, dir);
    int rc = dm_moments_save(&s->m, path);
    free(path);
    return rc;
}

static int moments_merge_partial(dm_node *n, const char *dir)
{
    moments_state *s = dm_node_state(n);
    dm_moments part;
    char *path = dm_xasprintf("%s/" PARTIAL_FILE, dir);
    dm_moments_init(&part, s->m.d);
    int rc = dm_moments_load(&part, path);
    if (!rc)
        rc = dm_moments_merge(&s->m, &part);
    dm_moments_free(&part);
    free(path);
    return rc;
}

/* A JSON array of doubles, null where not finite. */
static json_t *json_vector(const double *v, int64_t d)
{
    json_t *a = json_array();
    for (int64_t j = 0; j < d; j++)
        json_array_append_new(a, isfinite(v[j]) ? json_real(v[j]) : json_null());
    return a;
}

static int write_stats_json(dm_node *n, const char *file, const dm_moments *m, dm_tensor *out)
{
    json_t *o = json_object();
    json_object_set_new(o, "n", json_integer(m->n));
    json_object_set_new(o, "d", json_integer(m->d));
    static const char *keys[OUT_COUNT] = {"mean", "var", "skew", "excess_kurtosis"};
    for (int k = 0; k < OUT_COUNT; k++)
        json_object_set_new(o, keys[k], json_vector(out[k].data, m->d));
    int rc = dm_publish_json(n, file, "moments", o, JSON_INDENT(2) | JSON_REAL_PRECISION(17), NULL);
    json_decref(o);
    return rc;
}

static int moments_finish(dm_node *n)
{
    moments_state *s = dm_node_state(n);
    int64_t d = s->m.d, shape[1] = {d};
    const char *file = dm_param_str(n, "file");
    dm_tensor out[OUT_COUNT];
    int rc = 0;

    if (s->m.n == 0)
        return dm_fail("input x is empty: no rows to take moments of");
    for (int k = 0; k < OUT_COUNT; k++)
        dm_tensor_init(&out[k], DM_F64, 1, shape);
    dm_moments_finalize(&s->m, out[OUT_MEAN].data, out[OUT_VAR].data, out[OUT_SKEW].data,
                        out[OUT_KURT].data);
    if (*file)
        rc = write_stats_json(n, file, &s->m, out);
    for (int k = 0; k < OUT_COUNT && !rc; k++)
        rc = dm_set_output(n, k, &out[k]);
    if (!rc) {
        dm_tensor cnt;
        int64_t one[1] = {1};
        dm_tensor_init(&cnt, DM_I64, 1, one);
        ((int64_t *)cnt.data)[0] = s->m.n;
        rc = dm_set_output(n, OUT_COUNT, &cnt);
    }
    for (int k = 0; k < OUT_COUNT; k++)
        dm_tensor_free(&out[k]); /* no-op for those handed over */
    return rc;
}

static void moments_close(dm_node *n)
{
    moments_state *s = dm_node_state(n);
    if (!s)
        return;
    dm_moments_free(&s->m);
    free(s);
    dm_node_set_state(n, NULL);
}

const dm_op dm_op_moments = {
    .name = "moments",
    .version = 2,
    .summary = "per-column mean, variance, skewness, excess kurtosis (population) of a stream",
    .params = moments_params,
    .inputs = moments_inputs,
    .outputs = moments_outputs,
    .infer = moments_infer,
    .state_bytes = moments_state_bytes,
    .open = moments_open,
    .consume = moments_consume,
    .finish = moments_finish,
    .close = moments_close,
    .shardable = 1,
    .save_partial = moments_save_partial,
    .merge_partial = moments_merge_partial,
};
