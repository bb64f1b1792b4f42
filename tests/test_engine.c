/*
 * test_engine.c: the engine's own pieces without the command line: sizes and
 * half floats, pipeline parsing and its line numbers, --set, graph binding
 * errors, and cache keys (stable, and changed exactly by what changes results);
 * then, with mock operators registered beside the real ones, the scheduler
 * itself: grouping, multipass replay, spill decisions, chunk sizes from the
 * memory budget, error attribution, and run state kept per graph.
 */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine.h"
#include "fs.h"
#include "npy.h"
#include "test.h"

START_TEST(test_sizes)
{
    ck_assert_int_eq(dm_parse_size("512M"), 512LL << 20);
    ck_assert_int_eq(dm_parse_size("2G"), 2LL << 30);
    ck_assert_int_eq(dm_parse_size("1.5GiB"), 3LL << 29);
    ck_assert_int_eq(dm_parse_size("1000"), 1000);
    ck_assert_int_eq(dm_parse_size("12X"), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "12X"));
    ck_assert_int_eq(dm_parse_size("lots"), -1);
}
END_TEST

/* Every half and bfloat16 value converts to float and back exactly. */
START_TEST(test_half_round_trip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dm_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        ck_assert_uint_eq(dm_f32_to_f16(f), h);
        float b = dm_bf16_to_f32((uint16_t)h);
        if (!isnan(b))
            ck_assert_uint_eq(dm_f32_to_bf16(b), h);
    }
    ck_assert_float_eq(dm_f16_to_f32(dm_f32_to_f16(1.0f / 3)), 0.333251953125f);
    ck_assert_uint_eq(dm_f32_to_f16(65520.0f), 0x7c00); /* rounds to infinity */
    ck_assert_uint_eq(dm_f32_to_f16(1e-8f), 0);         /* below the smallest subnormal */
}
END_TEST

static const char *good = "name: t\n"
                          "memory: 64M\n"
                          "nodes:\n"
                          "  src:\n"
                          "    op: synthetic\n"
                          "    params: {rows: 1000, cols: 5, seed: 3}\n"
                          "  cov:\n"
                          "    op: covariance\n"
                          "    inputs: {x: src}\n"
                          "  pca:\n"
                          "    op: pca\n"
                          "    inputs: {covariance: cov.covariance}\n"
                          "  mom:\n"
                          "    op: moments\n"
                          "    inputs: {x: src.out}\n";

START_TEST(test_parse)
{
    dm_pipeline *p = dm_pipeline_parse("t.yaml", good, strlen(good));
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p->name, "t");
    ck_assert_int_eq(p->memory, 64 << 20);
    ck_assert_int_eq(p->nnodes, 4);
    ck_assert_str_eq(p->nodes[1].name, "cov");
    ck_assert_int_eq(p->nodes[1].line, 7);
    ck_assert_int_eq(p->nodes[0].params[1].line, 6);
    ck_assert_int_eq(dm_pipeline_set(p, "src.rows=2000"), 0);
    ck_assert_str_eq(p->nodes[0].params[0].value, "2000");
    ck_assert_int_eq(dm_pipeline_set(p, "nosuch.rows=1"), -1);
    ck_assert_int_eq(dm_pipeline_set(p, "norows"), -1);
    dm_pipeline_free(p);
}
END_TEST

START_TEST(test_errors)
{
    dm_test_expect_pipeline_error("", "e.yaml", "empty pipeline");
    dm_test_expect_pipeline_error("nodes: [a, b]\n", "e.yaml:1", "nodes");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: x}\n  a: {op: y}\n", "e.yaml:3", "declared twice");
    dm_test_expect_pipeline_error("nodes:\n  a: {params: {}}\n", "e.yaml:2", "has no 'op'");
    dm_test_expect_pipeline_error("nodes:\n  a.b: {op: npy}\n", "e.yaml:2", "plain words");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2, rows: 3}}\n", "e.yaml:2",
                       "given twice");
    dm_test_expect_pipeline_error("memory: lots\nnodes:\n  a: {op: npy}\n", "e.yaml:1", "memory");
    dm_test_expect_pipeline_error("name: c\nchunk: 10\nnodes:\n  a: {op: npy}\n", "e.yaml:2", "chunk must be a number of rows");
    dm_test_expect_pipeline_error("chunk: 1e3\nnodes:\n  a: {op: npy}\n", "e.yaml:1", "not '1e3'");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}}\n  b:\n    op: moments\n"
                       "    inputs: {x: a.nope}\n",
                       "e.yaml:5", "has no output 'nope'");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}}\n  b:\n    op: moments\n"
                       "    inputs: {y: a}\n",
                       "e.yaml:5", "has no input 'y'");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}, spill: sometimes}\n",
                       "e.yaml:2", "spill must be");
    dm_test_expect_pipeline_error("nodes:\n  a: {op: synthetic, params: {rows: 0, cols: 2}}\n", "e.yaml:2",
                       "must be positive");
}
END_TEST

static dm_graph *build(const char *text, const char *set, dm_pipeline **pp)
{
    dm_pipeline *p = dm_pipeline_parse("k.yaml", text, strlen(text));
    ck_assert_ptr_nonnull(p);
    if (set)
        ck_assert_int_eq(dm_pipeline_set(p, set), 0);
    dm_graph *g = dm_graph_build(p);
    ck_assert_msg(g != NULL, "%s", dm_error());
    g->cache = dm_xstrdup("/nonexistent-dmica-cache");
    ck_assert_int_eq(dm_plan(g), 0);
    *pp = p;
    return g;
}

START_TEST(test_keys)
{
    dm_pipeline *p1, *p2, *p3;
    dm_graph *a = build(good, NULL, &p1), *b = build(good, NULL, &p2), *c = build(good, "pca.k=3", &p3);
    for (int i = 0; i < a->nnodes; i++) {
        dm_node *na = a->nodes[i], *nb = dm_graph_find(b, na->decl->name), *nc = dm_graph_find(c, na->decl->name);
        ck_assert_str_eq(na->key, nb->key); /* deterministic */
        ck_assert_int_eq(strlen(na->key), 32);
        ck_assert_int_eq(na->state, DM_STATE_STALE);
        ck_assert_str_eq(na->why, "never run");
        /* a changed pca parameter changes pca's key only */
        if (!strcmp(na->decl->name, "pca"))
            ck_assert_str_ne(na->key, nc->key);
        else
            ck_assert_str_eq(na->key, nc->key);
    }
    /* keys chain: a changed source changes every key below it */
    dm_pipeline *p4;
    dm_graph *d = build(good, "src.seed=4", &p4);
    for (int i = 0; i < a->nnodes; i++)
        ck_assert_str_ne(a->nodes[i]->key, dm_graph_find(d, a->nodes[i]->decl->name)->key);
    /* a default written out is the same parameter */
    dm_pipeline *p5;
    dm_graph *e = build(good, "pca.floor=1e-10", &p5);
    ck_assert_str_eq(dm_graph_find(a, "pca")->key, dm_graph_find(e, "pca")->key);
    dm_graph *gs[] = {a, b, c, d, e};
    dm_pipeline *ps[] = {p1, p2, p3, p4, p5};
    for (int i = 0; i < 5; i++) {
        dm_graph_free(gs[i]);
        dm_pipeline_free(ps[i]);
    }
}
END_TEST

START_TEST(test_topology)
{
    /* declared out of order: sorted so producers come first */
    const char *text = "nodes:\n"
                       "  pca: {op: pca, inputs: {covariance: cov.covariance}}\n"
                       "  cov: {op: covariance, inputs: {x: src}}\n"
                       "  src: {op: synthetic, params: {rows: 10, cols: 3}}\n";
    dm_pipeline *p;
    dm_graph *g = build(text, NULL, &p);
    ck_assert_str_eq(g->nodes[0]->decl->name, "src");
    ck_assert_str_eq(g->nodes[1]->decl->name, "cov");
    ck_assert_str_eq(g->nodes[2]->decl->name, "pca");
    ck_assert_int_eq(dm_input_desc(g->nodes[2], 0)->shape[0], 3);
    dm_graph_free(g);
    dm_pipeline_free(p);
}
END_TEST

/* ---- mock operators: the engine's scheduling, tested without real operators ---- */

/* What the mocks saw, for the tests to check. */
#define MAX_PASSES 8
static struct {
    int64_t rows[MAX_PASSES]; /* rows seen by mock_multipass, per pass */
    double sum[MAX_PASSES];   /* and the sum of their values */
    int64_t chunks[MAX_PASSES];
    int in_order;             /* every chunk started where the previous ended */
    int passes;               /* end_pass calls */
    int64_t map_chunks;       /* chunks mock_map consumed */
    int nested_runs;
} seen;

/* Row r, column c of mock_source's stream: small integers, so sums are exact. */
static float src_value(int64_t r, int64_t c) { return (float)(r % 1000 + c); }

typedef struct {
    int64_t next, rows, cols;
} src_state;

static int src_infer(dm_node *n)
{
    dm_output_desc(n, 0)->shape[0] = dm_param_int(n, "rows");
    dm_output_desc(n, 0)->shape[1] = dm_param_int(n, "cols");
    return 0;
}

static int src_open(dm_node *n)
{
    src_state *s = dm_xcalloc(1, sizeof *s);
    s->rows = dm_param_int(n, "rows");
    s->cols = dm_param_int(n, "cols");
    dm_node_set_state(n, s);
    return 0;
}

static int src_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    src_state *s = dm_node_state(n);
    int64_t r = s->rows - s->next < max_rows ? s->rows - s->next : max_rows;
    for (int64_t i = 0; i < r; i++)
        for (int64_t c = 0; c < s->cols; c++)
            out->data[i * s->cols + c] = src_value(s->next + i, c);
    out->row0 = s->next;
    out->rows = r;
    s->next += r;
    return 0;
}

static void free_state(dm_node *n) { free(dm_node_state(n)); }

static const dm_param_spec src_params[] = {
    {"rows", DM_P_INT, "10000", NULL}, {"cols", DM_P_INT, "16", NULL}, {NULL}};
static const dm_port_spec stream_out[] = {{"out", DM_PORT_STREAM}, {NULL}};
static const dm_op mock_source = {.name = "mock_source", .version = 1, .params = src_params,
                                  .outputs = stream_out, .infer = src_infer, .open = src_open,
                                  .produce = src_produce, .close = free_state};
/* The same, as a source that is dear to produce: `spill: auto` keeps its rows. */
static const dm_op mock_dear_source = {.name = "mock_dear_source", .version = 1, .params = src_params,
                                       .outputs = stream_out, .spill_source = 1, .infer = src_infer,
                                       .open = src_open, .produce = src_produce, .close = free_state};

/* mock_map: y = x + 1; `state` bytes declared for the memory budget; `nested`
 * names a cache folder in which its first consume() runs a whole other graph. */
typedef struct {
    float *y;
    size_t cap;
} map_state;

static int same_width(dm_node *n)
{
    dm_output_desc(n, 0)->shape[1] = dm_input_desc(n, 0)->shape[1];
    return 0;
}

static int64_t map_state_bytes(const dm_node *n) { return dm_param_size(n, "state"); }

static int map_open(dm_node *n)
{
    dm_node_set_state(n, dm_xcalloc(1, sizeof(map_state)));
    return 0;
}

static int run_inner_graph(const char *cache);

static int map_consume(dm_node *n, int port, const dm_chunk *c)
{
    map_state *s = dm_node_state(n);
    if (*dm_param_str(n, "nested") && seen.map_chunks == 0 && run_inner_graph(dm_param_str(n, "nested")))
        return -1;
    seen.map_chunks++;
    size_t len = (size_t)(c->rows * c->cols);
    if (len > s->cap) {
        free(s->y);
        s->y = dm_xmalloc(len * sizeof *s->y);
        s->cap = len;
    }
    for (size_t i = 0; i < len; i++)
        s->y[i] = c->data[i] + 1;
    dm_chunk out = {.row0 = c->row0, .rows = c->rows, .cols = c->cols, .data = s->y};
    return dm_emit(n, 0, &out);
}

static void map_close(dm_node *n)
{
    map_state *s = dm_node_state(n);
    if (s)
        free(s->y);
    free(s);
}

static const dm_param_spec map_params[] = {
    {"state", DM_P_SIZE, "0", NULL}, {"nested", DM_P_STRING, "", NULL}, {NULL}};
static const dm_port_spec x_in[] = {{"x", DM_PORT_STREAM}, {NULL}};
static const dm_port_spec y_out[] = {{"y", DM_PORT_STREAM}, {NULL}};
static const dm_op mock_map = {.name = "mock_map", .version = 1, .params = map_params, .inputs = x_in,
                               .outputs = y_out, .infer = same_width, .state_bytes = map_state_bytes,
                               .open = map_open, .consume = map_consume, .close = map_close};

/* mock_multipass: asks for `passes` passes over x and records what each saw. */
typedef struct {
    int64_t next;
    int pass;
} mp_state;

static int mp_infer(dm_node *n)
{
    dm_port_desc *d = dm_output_desc(n, 0);
    d->dtype = DM_F64;
    d->ndim = 1;
    d->shape[0] = dm_param_int(n, "passes");
    return 0;
}

static int mp_open(dm_node *n)
{
    dm_node_set_state(n, dm_xcalloc(1, sizeof(mp_state)));
    seen.in_order = 1;
    return 0;
}

static int mp_consume(dm_node *n, int port, const dm_chunk *c)
{
    mp_state *s = dm_node_state(n);
    if (c->row0 != s->next)
        seen.in_order = 0;
    s->next = c->row0 + c->rows;
    seen.rows[s->pass] += c->rows;
    seen.chunks[s->pass]++;
    for (int64_t i = 0; i < c->rows * c->cols; i++)
        seen.sum[s->pass] += c->data[i];
    return 0;
}

static int mp_end_pass(dm_node *n, int pass)
{
    mp_state *s = dm_node_state(n);
    seen.passes++;
    s->next = 0;
    s->pass = pass + 1;
    return pass + 1 < dm_param_int(n, "passes") && pass + 1 < MAX_PASSES;
}

static int mp_finish(dm_node *n)
{
    dm_tensor t;
    int64_t shape[1] = {dm_param_int(n, "passes")};
    dm_tensor_init(&t, DM_F64, 1, shape);
    for (int64_t i = 0; i < shape[0] && i < MAX_PASSES; i++)
        ((double *)t.data)[i] = (double)seen.rows[i];
    return dm_set_output(n, 0, &t);
}

static const dm_param_spec mp_params[] = {{"passes", DM_P_INT, "3", NULL}, {NULL}};
static const dm_port_spec mp_in[] = {{"x", DM_PORT_STREAM, .multipass = 1}, {NULL}};
static const dm_port_spec tensor_out[] = {{"t", DM_PORT_TENSOR}, {NULL}};
static const dm_op mock_multipass = {.name = "mock_multipass", .version = 1, .params = mp_params,
                                     .inputs = mp_in, .outputs = tensor_out, .infer = mp_infer,
                                     .open = mp_open, .consume = mp_consume, .end_pass = mp_end_pass,
                                     .finish = mp_finish, .close = free_state};

/* mock_sum: a reduction whose tensor output (column sums, f64) is complete
 * only when it finishes. */
static int sum_infer(dm_node *n)
{
    dm_port_desc *d = dm_output_desc(n, 0);
    d->dtype = DM_F64;
    d->ndim = 1;
    d->shape[0] = dm_input_desc(n, 0)->shape[1];
    return 0;
}

static int sum_open(dm_node *n)
{
    dm_tensor *t = dm_xcalloc(1, sizeof *t);
    int64_t shape[1] = {dm_input_desc(n, 0)->shape[1]};
    dm_tensor_init(t, DM_F64, 1, shape);
    dm_node_set_state(n, t);
    return 0;
}

static int sum_consume(dm_node *n, int port, const dm_chunk *c)
{
    dm_tensor *t = dm_node_state(n);
    for (int64_t i = 0; i < c->rows; i++)
        for (int64_t k = 0; k < c->cols; k++)
            ((double *)t->data)[k] += c->data[i * c->cols + k];
    return 0;
}

static int sum_finish(dm_node *n) { return dm_set_output(n, 0, dm_node_state(n)); }

static void sum_close(dm_node *n)
{
    dm_tensor_free(dm_node_state(n));
    free(dm_node_state(n));
}

static const dm_op mock_sum = {.name = "mock_sum", .version = 1, .inputs = x_in, .outputs = tensor_out,
                               .infer = sum_infer, .open = sum_open, .consume = sum_consume,
                               .finish = sum_finish, .close = sum_close};

/* mock_center: x less the column means of tensor t (a consumer that needs a
 * tensor before its first row). */
static int center_consume(dm_node *n, int port, const dm_chunk *c)
{
    const dm_tensor *t = dm_input_tensor(n, 1);
    if (!t)
        return dm_fail("tensor input 't' is not there when rows arrive");
    return 0;
}

static const dm_port_spec center_in[] = {{"x", DM_PORT_STREAM}, {"t", DM_PORT_TENSOR}, {NULL}};
static const dm_op mock_center = {.name = "mock_center", .version = 1, .inputs = center_in,
                                  .consume = center_consume};

/* mock_gather: reads its input by row, in reverse order, in finish(). */
static int gather_infer(dm_node *n)
{
    dm_port_desc *d = dm_output_desc(n, 0);
    d->dtype = DM_F64;
    d->ndim = 1;
    d->shape[0] = 1;
    return 0;
}

static int gather_finish(dm_node *n)
{
    int64_t rows = dm_input_rows(n, 0), cols = dm_input_desc(n, 0)->shape[1];
    float *buf = dm_xmalloc((size_t)(100 * cols) * sizeof *buf);
    double total = 0;
    for (int64_t r = rows; r > 0; r -= 100) {
        int64_t r0 = r >= 100 ? r - 100 : 0;
        if (dm_input_read_rows(n, 0, r0, r - r0, buf)) {
            free(buf);
            return -1;
        }
        for (int64_t i = 0; i < (r - r0) * cols; i++)
            total += buf[i];
    }
    free(buf);
    dm_tensor t;
    int64_t shape[1] = {1};
    dm_tensor_init(&t, DM_F64, 1, shape);
    *(double *)t.data = total;
    return dm_set_output(n, 0, &t);
}

static const dm_port_spec gather_in[] = {{"table", DM_PORT_STREAM, .random = 1}, {NULL}};
static const dm_op mock_gather = {.name = "mock_gather", .version = 1, .inputs = gather_in,
                                  .outputs = tensor_out, .infer = gather_infer, .finish = gather_finish};

/* mock_fail: fails in consume() once row `at` arrives, or in finish(). */
static int fail_consume(dm_node *n, int port, const dm_chunk *c)
{
    int64_t at = dm_param_int(n, "at");
    if (at >= 0 && c->row0 + c->rows > at)
        return dm_fail("boom at row %lld", (long long)at);
    return 0;
}

static int fail_finish(dm_node *n) { return dm_fail("boom in finish"); }

static const dm_param_spec fail_params[] = {{"at", DM_P_INT, "-1", NULL}, {NULL}};
static const dm_op mock_fail = {.name = "mock_fail", .version = 1, .params = fail_params, .inputs = x_in,
                                .consume = fail_consume, .finish = fail_finish};

/* mock_bug: reads a parameter it never declared. */
static int bug_open(dm_node *n) { return dm_param_int(n, "undeclared") == 0 ? 0 : -1; }
static const dm_op mock_bug = {.name = "mock_bug", .version = 1, .inputs = x_in, .open = bug_open,
                               .consume = fail_consume};

/* Shards: mock_ssource seeks (rows [row0, row0 + rows) of mock_source's
 * values), mock_smap is a shardable map (x + 1), mock_ssum a shardable column
 * sum whose partial is its sums (an .npy of f64) and which counts the rows it
 * consumes; its optional tensor input `after` only orders it after a node. */
static int64_t ssum_rows_seen, smap_rows_seen;

static int ssrc_seek(dm_node *n, int64_t row0, int64_t rows)
{
    src_state *s = dm_node_state(n);
    s->next = row0;
    s->rows = row0 + rows;
    return 0;
}

static int smap_consume(dm_node *n, int port, const dm_chunk *c)
{
    smap_rows_seen += c->rows;
    float *y = dm_xmalloc((size_t)(c->rows * c->cols) * sizeof *y);
    for (int64_t i = 0; i < c->rows * c->cols; i++)
        y[i] = c->data[i] + 1;
    dm_chunk o = *c;
    o.data = y;
    int rc = dm_emit(n, 0, &o);
    free(y);
    return rc;
}

static int ssum_consume(dm_node *n, int port, const dm_chunk *c)
{
    ssum_rows_seen += c->rows;
    return sum_consume(n, port, c);
}

static int ssum_save(dm_node *n, const char *dir)
{
    char *path = dm_xasprintf("%s/sums.npy", dir);
    int rc = dm_npy_save(path, dm_node_state(n));
    free(path);
    return rc;
}

static int ssum_merge(dm_node *n, const char *dir)
{
    char *path = dm_xasprintf("%s/sums.npy", dir);
    dm_tensor t;
    int rc = dm_npy_load(path, &t);
    free(path);
    if (rc)
        return -1;
    dm_tensor *acc = dm_node_state(n);
    for (int64_t k = 0; k < acc->shape[0]; k++)
        ((double *)acc->data)[k] += ((double *)t.data)[k];
    dm_tensor_free(&t);
    return 0;
}

static const dm_op mock_ssource = {.name = "mock_ssource", .version = 1, .params = src_params,
                                   .outputs = stream_out, .infer = src_infer, .open = src_open,
                                   .produce = src_produce, .close = free_state, .shardable = 1,
                                   .seek = ssrc_seek};
static const dm_op mock_smap = {.name = "mock_smap", .version = 1, .inputs = x_in, .outputs = stream_out,
                                .infer = same_width, .consume = smap_consume, .shardable = 1};
static const dm_port_spec ssum_in[] = {{"x", DM_PORT_STREAM}, {"after", DM_PORT_TENSOR, .optional = 1}, {NULL}};
static const dm_op mock_ssum = {.name = "mock_ssum", .version = 1, .inputs = ssum_in, .outputs = tensor_out,
                                .infer = sum_infer, .open = sum_open, .consume = ssum_consume,
                                .finish = sum_finish, .close = sum_close, .shardable = 1,
                                .save_partial = ssum_save, .merge_partial = ssum_merge};

static const dm_op mock_ids, mock_idcheck;
static void register_mocks(void)
{
    static int done;
    if (done)
        return;
    const dm_op *ops[] = {&mock_source, &mock_dear_source, &mock_map, &mock_multipass, &mock_sum,
                          &mock_center, &mock_gather, &mock_fail, &mock_bug, &mock_ids, &mock_idcheck,
                          &mock_ssource, &mock_smap, &mock_ssum};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        ck_assert_int_eq(dm_registry_add(ops[i]), 0);
    ck_assert_int_eq(dm_registry_add(&mock_map), -1); /* a name is registered once */
    done = 1;
    dm_progress_enabled = 0;
}

/* Binds text (with "node.key=value" settings) against cache. */
static dm_graph *mock_graph(const char *text, const char *cache, const char *set, dm_pipeline **pp)
{
    register_mocks();
    memset(&seen, 0, sizeof seen);
    dm_pipeline *p = dm_pipeline_parse("m.yaml", text, strlen(text));
    ck_assert_msg(p != NULL, "%s", dm_error());
    if (set)
        ck_assert_int_eq(dm_pipeline_set(p, set), 0);
    dm_graph *g = dm_graph_build(p);
    ck_assert_msg(g != NULL, "%s", dm_error());
    g->cache = dm_xstrdup(cache);
    g->memory = p->memory ? p->memory : (int64_t)1 << 30;
    *pp = p;
    return g;
}

static void free_graph(dm_graph *g, dm_pipeline *p)
{
    dm_graph_free(g);
    dm_pipeline_free(p);
}

#define N_ROWS 10000
#define N_COLS 16
/* sum over rows and columns of src_value (+1 per value after mock_map) */
static double src_sum(int plus)
{
    double s = 0;
    for (int64_t r = 0; r < N_ROWS; r++)
        for (int64_t c = 0; c < N_COLS; c++)
            s += src_value(r, c) + plus;
    return s;
}

static const char *chain = "nodes:\n"
                           "  src: {op: mock_source}\n"
                           "  map: {op: mock_map, inputs: {x: src}}\n"
                           "  mp: {op: mock_multipass, inputs: {x: map}}\n"
                           "  sum: {op: mock_sum, inputs: {x: src}}\n"
                           "  center: {op: mock_center, inputs: {x: src, t: sum}}\n";

/* Which nodes share a group, and why the others do not. */
START_TEST(test_mock_grouping)
{
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(chain, cache, NULL, &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    dm_node *src = dm_graph_find(g, "src"), *map = dm_graph_find(g, "map"), *mp = dm_graph_find(g, "mp"),
            *sum = dm_graph_find(g, "sum"), *center = dm_graph_find(g, "center");
    /* one pass over src feeds the map and the reduction */
    ck_assert_int_eq(map->group, src->group);
    ck_assert_int_eq(sum->group, src->group);
    /* several passes: a group of its own, replaying map's spill */
    ck_assert_int_ne(mp->group, src->group);
    /* its tensor input is complete only after src's group: a later group */
    ck_assert_int_gt(center->group, sum->group);
    ck_assert_int_ne(center->group, mp->group);
    /* spill: auto spills what crosses groups, except a cheap source's stream
     * (center's group produces src again) */
    ck_assert_int_eq(map->spill[0], 1);
    ck_assert_int_eq(src->spill[0], 0);
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

/* A command's temporary cache (ephemeral) keeps the tensors the graph reads and
 * skips the others; a lasting cache keeps them all. sum and same are one cache
 * entry (the same node twice): the tensor center reads through sum stays even
 * though nothing reads same's. */
START_TEST(test_mock_ephemeral)
{
    static const char *text = "nodes:\n"
                              "  src: {op: mock_source}\n"
                              "  map: {op: mock_map, inputs: {x: src}}\n"
                              "  sum: {op: mock_sum, inputs: {x: src}}\n"
                              "  same: {op: mock_sum, inputs: {x: src}}\n"
                              "  sum2: {op: mock_sum, inputs: {x: map}}\n"
                              "  center: {op: mock_center, inputs: {x: src, t: sum}}\n";
    for (int ephemeral = 0; ephemeral < 2; ephemeral++) {
        char *cache = dm_test_tmpdir("engine");
        dm_pipeline *p;
        dm_graph *g = mock_graph(text, cache, NULL, &p);
        g->ephemeral = ephemeral;
        ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
        char *read = dm_xasprintf("%s/%s/t.npy", cache, dm_graph_find(g, "sum")->key);
        char *unread = dm_xasprintf("%s/%s/t.npy", cache, dm_graph_find(g, "sum2")->key);
        ck_assert_msg(access(read, F_OK) == 0, "%s: the tensor center reads was not written", read);
        ck_assert_int_eq(access(unread, F_OK) == 0, !ephemeral);
        free(read), free(unread);
        free_graph(g, p);
        dm_rm_rf(cache);
        free(cache);
    }
}
END_TEST

/* The multipass consumer sees the same rows, in order, once per pass it asks for. */
START_TEST(test_mock_multipass)
{
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(chain, cache, "mp.passes=4", &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(seen.passes, 4);
    ck_assert(seen.in_order);
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(seen.rows[k], N_ROWS);
        ck_assert_double_eq(seen.sum[k], src_sum(1));
        ck_assert_int_eq(seen.chunks[k], seen.chunks[0]);
    }
    ck_assert_int_eq(seen.rows[4], 0);
    const dm_tensor *t = &dm_graph_find(g, "mp")->outtensor[0];
    ck_assert_int_eq(t->shape[0], 4);
    ck_assert_double_eq(((double *)t->data)[3], N_ROWS);
    free_graph(g, p);

    /* A cached producer is replayed from its spill: only mp reruns (more passes),
     * map is not run and src is not even read. */
    g = mock_graph(chain, cache, "mp.passes=2", &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "mp")->run, 1);
    ck_assert_int_eq(dm_graph_find(g, "map")->run, 0);
    ck_assert_int_eq(dm_graph_find(g, "src")->run, 0);
    ck_assert_int_eq(dm_graph_find(g, "src")->reproduce, 0);
    ck_assert_int_eq(seen.map_chunks, 0);
    ck_assert_int_eq(seen.passes, 2);
    ck_assert_double_eq(seen.sum[1], src_sum(1));
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

/* spill: auto, always and never, and the random-access reader's spill. */
START_TEST(test_mock_spills)
{
    static const char *text = "nodes:\n"
                              "  src: {op: mock_source}\n"
                              "  dear: {op: mock_dear_source}\n"
                              "  map: {op: mock_map, inputs: {x: src}}\n"
                              "  sum: {op: mock_sum, inputs: {x: dear}}\n"
                              "  center: {op: mock_center, inputs: {x: dear, t: sum}}\n"
                              "  gather: {op: mock_gather, inputs: {table: map}}\n";
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(text, cache, NULL, &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "src")->spill[0], 0);  /* read by map in its own group */
    ck_assert_int_eq(dm_graph_find(g, "dear")->spill[0], 1); /* spill_source: replayed, not produced again */
    ck_assert_int_eq(dm_graph_find(g, "map")->spill[0], 1);  /* read by row */
    ck_assert_double_eq(*(double *)dm_graph_find(g, "gather")->outtensor[0].data, src_sum(1));
    free_graph(g, p);
    dm_rm_rf(cache);

    /* always: spilled though nothing reads it in another group */
    g = mock_graph(text, cache, NULL, &p);
    free(p->nodes[0].spill);
    p->nodes[0].spill = dm_xstrdup("always");
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "src")->spill[0], 1);
    free_graph(g, p);
    dm_rm_rf(cache);

    /* never: the dear source is produced again for center instead of replayed */
    g = mock_graph(text, cache, NULL, &p);
    free(p->nodes[1].spill);
    p->nodes[1].spill = dm_xstrdup("never");
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "dear")->spill[0], 0);
    free_graph(g, p);
    dm_rm_rf(cache);

    /* never, where a node reads the output by row: refused before any work */
    g = mock_graph(text, cache, NULL, &p);
    free(p->nodes[2].spill);
    p->nodes[2].spill = dm_xstrdup("never");
    ck_assert_int_eq(dm_run(g), -1);
    ck_assert_msg(strstr(dm_error(), "node 'gather' reads output 'y' of node 'map' by row") &&
                  strstr(dm_error(), "spill: never"), "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "src")->opened, 0);
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

/* The memory budget less the declared state, over the bytes a row costs in
 * the group, is the chunk size. */
START_TEST(test_mock_chunk_size)
{
    static const char *text = "memory: 65M\n"
                              "nodes:\n"
                              "  src: {op: mock_source}\n"
                              "  map: {op: mock_map, inputs: {x: src}}\n"
                              "  mp: {op: mock_multipass, inputs: {x: map}, params: {passes: 1}}\n";
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(text, cache, NULL, &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    /* 1 MiB above the 64 MiB reserve; src's row (16 floats, not spilled) plus
     * map's row and its 5 spill buffers: 64 + 6 * 64 = 448 bytes */
    ck_assert_int_eq(dm_graph_find(g, "src")->chunk_rows, (1 << 20) / 448);
    ck_assert_int_eq(dm_graph_find(g, "map")->chunk_rows, (1 << 20) / 448);
    /* mp's group: the replayed row, buffered and read ahead: 4 * 64 bytes */
    ck_assert_int_eq(dm_graph_find(g, "mp")->chunk_rows, (1 << 20) / 256);
    ck_assert_int_eq(seen.chunks[0], (N_ROWS + (1 << 20) / 448 - 1) / ((1 << 20) / 448));
    free_graph(g, p);
    dm_rm_rf(cache);

    /* declared state comes off the budget */
    g = mock_graph(text, cache, "map.state=512K", &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "map")->chunk_rows, (1 << 19) / 448);
    free_graph(g, p);
    dm_rm_rf(cache);

    /* `chunk:` caps the rows below what the budget allows */
    char *capped = dm_xasprintf("chunk: 1000\n%s", text);
    g = mock_graph(capped, cache, NULL, &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_graph_find(g, "src")->chunk_rows, 1000);
    ck_assert_int_eq(dm_graph_find(g, "mp")->chunk_rows, 1000);
    ck_assert_int_eq(seen.chunks[0], N_ROWS / 1000);
    free_graph(g, p);
    dm_rm_rf(cache);
    free(capped);

    /* and a budget that leaves too little is a no-memory error */
    g = mock_graph(text, cache, "map.state=1M", &p);
    ck_assert_int_eq(dm_run(g), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_NOMEM);
    ck_assert_msg(strstr(dm_error(), "memory budget 65 MiB is too small for nodes src, map"), "%s", dm_error());
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

static int count(const char *s, const char *what)
{
    int n = 0;
    for (const char *q = strstr(s, what); q; q = strstr(q + 1, what))
        n++;
    return n;
}

/* An operator's error gets its node's name exactly once, wherever it is raised. */
START_TEST(test_mock_errors)
{
    static const char *text = "nodes:\n"
                              "  src: {op: mock_source}\n"
                              "  map: {op: mock_map, inputs: {x: src}}\n"
                              "  bad: {op: mock_fail, inputs: {x: map}, params: {at: 5000}}\n";
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(text, cache, NULL, &p);
    ck_assert_int_eq(dm_run(g), -1);
    /* raised in bad's consume, inside map's dm_emit, inside src's: named once,
     * and map (which did nothing wrong) not at all */
    ck_assert_str_eq(dm_error(), "node 'bad' (mock_fail): boom at row 5000");
    ck_assert_int_eq(dm_error_code(), DM_E_INPUT);
    ck_assert_int_eq(dm_error_exit(), 1);
    free_graph(g, p);

    /* in finish: with the file and line */
    g = mock_graph(text, cache, "bad.at=-1", &p);
    ck_assert_int_eq(dm_run(g), -1);
    ck_assert_str_eq(dm_error(), "m.yaml:4: node 'bad' (mock_fail): boom in finish");
    ck_assert_int_eq(count(dm_error(), "node 'bad'"), 1);
    free_graph(g, p);

    /* an operator reading a parameter it does not declare: an internal error,
     * whatever the operator made of the empty value */
    static const char *bug = "nodes:\n"
                             "  src: {op: mock_source}\n"
                             "  bug: {op: mock_bug, inputs: {x: src}}\n";
    g = mock_graph(bug, cache, NULL, &p);
    ck_assert_int_eq(dm_run(g), -1);
    ck_assert_int_eq(dm_error_code(), DM_E_INTERNAL);
    ck_assert_str_eq(dm_error(), "m.yaml:3: node 'bug': operator 'mock_bug' reads parameter 'undeclared', which it "
                                 "does not declare (a bug in the operator)");
    free_graph(g, p);
    /* nothing half-made is left in the cache */
    char *tmp = dm_xasprintf("%s/tmp", cache), *cmd = dm_xasprintf("test -z \"$(ls -A '%s')\"", tmp);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd), free(tmp);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

static int run_inner_graph(const char *cache)
{
    static const char *text = "nodes:\n"
                              "  src: {op: mock_source, params: {rows: 100}}\n"
                              "  sum: {op: mock_sum, inputs: {x: src}}\n";
    dm_pipeline *p = dm_pipeline_parse("inner.yaml", text, strlen(text));
    dm_graph *g = p ? dm_graph_build(p) : NULL;
    int rc = -1;
    if (g) {
        g->cache = dm_xstrdup(cache);
        g->memory = (int64_t)1 << 30;
        rc = dm_run(g);
        seen.nested_runs += rc == 0;
    }
    dm_graph_free(g);
    dm_pipeline_free(p);
    return rc;
}

/* Run state belongs to a graph: a graph run inside another's callback (between
 * two chunks of the outer group) leaves the outer run intact. */
START_TEST(test_mock_nested_runs)
{
    char *cache = dm_test_tmpdir("engine"), *inner = dm_xasprintf("%s/inner", cache);
    dm_pipeline *p;
    char *set = dm_xasprintf("map.nested=%s", inner);
    dm_graph *g = mock_graph(chain, cache, set, &p);
    g->memory = (int64_t)65 << 20; /* several chunks: the inner run comes between two */
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(seen.nested_runs, 1);
    ck_assert_int_gt(seen.chunks[0], 1);
    ck_assert_int_eq(seen.rows[0], N_ROWS); /* every chunk still reached map and mp */
    ck_assert_double_eq(seen.sum[2], src_sum(1));
    free_graph(g, p);
    dm_rm_rf(cache);
    free(set), free(inner), free(cache);
}
END_TEST

/* mock_ids: an i64 stream of row indices past 2^24 (float32 would round them). */
#define ID_BASE ((int64_t)1 << 40)
static int ids_infer(dm_node *n)
{
    dm_output_desc(n, 0)->shape[1] = 2;
    return 0;
}

static int ids_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    src_state *s = dm_node_state(n);
    int64_t r = s->rows - s->next < max_rows ? s->rows - s->next : max_rows;
    for (int64_t i = 0; i < r; i++) {
        out->i64[2 * i] = ID_BASE + s->next + i;
        out->i64[2 * i + 1] = -(s->next + i);
    }
    out->row0 = s->next;
    out->rows = r;
    s->next += r;
    return 0;
}

static const dm_port_spec ids_out[] = {{"ids", DM_PORT_STREAM, .dtype = DM_I64}, {NULL}};
static const dm_op mock_ids = {.name = "mock_ids", .version = 1, .params = src_params, .outputs = ids_out,
                               .spill_source = 1, /* replayed from its spill, not produced again */
                               .infer = ids_infer, .open = src_open, .produce = ids_produce,
                               .close = free_state};

/* mock_idcheck: two passes over an i64 stream; every value must be exact. */
static int idcheck_consume(dm_node *n, int port, const dm_chunk *c)
{
    if (c->dtype != DM_I64)
        return dm_fail("a chunk of %s", dm_dtype_name(c->dtype));
    for (int64_t i = 0; i < c->rows; i++)
        if (c->i64[2 * i] != ID_BASE + c->row0 + i || c->i64[2 * i + 1] != -(c->row0 + i))
            return dm_fail("row %lld holds %lld", (long long)(c->row0 + i), (long long)c->i64[2 * i]);
    return mp_consume(n, port, &(dm_chunk){.row0 = c->row0, .rows = c->rows, .cols = 0});
}

static const dm_port_spec idcheck_in[] = {{"x", DM_PORT_STREAM, .multipass = 1, .dtype = DM_I64}, {NULL}};
static const dm_op mock_idcheck = {.name = "mock_idcheck", .version = 1, .params = mp_params,
                                   .inputs = idcheck_in, .outputs = tensor_out, .infer = mp_infer,
                                   .open = mp_open, .consume = idcheck_consume, .end_pass = mp_end_pass,
                                   .finish = mp_finish, .close = free_state};

/* Typed streams: an i64 stream reaches its consumer exactly, also replayed
 * from a spill (stored as i64 whatever spill_dtype says); a consumer of
 * another dtype is refused when binding, naming the file and line. */
START_TEST(test_mock_typed_streams)
{
    static const char *text = "nodes:\n"
                              "  ids: {op: mock_ids, spill_dtype: f16}\n"
                              "  check: {op: mock_idcheck, inputs: {x: ids}, params: {passes: 2}}\n";
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(text, cache, NULL, &p);
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(seen.passes, 2);
    ck_assert_int_eq(seen.rows[1], N_ROWS);
    ck_assert_int_eq(dm_graph_find(g, "ids")->spill[0], 1);
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);

    static const char *bad = "nodes:\n"
                             "  ids: {op: mock_ids}\n"
                             "  map:\n"
                             "    op: mock_map\n"
                             "    inputs: {x: ids}\n";
    register_mocks();
    p = dm_pipeline_parse("t.yaml", bad, strlen(bad));
    ck_assert_ptr_null(dm_graph_build(p));
    ck_assert_str_eq(dm_error(), "t.yaml:5: node 'map': input 'x' takes f32 rows, but ids.ids carries i64");
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_pipeline_free(p);
}
END_TEST

/* Shards: a source that seeks, a map and a reduction run per shard of 3000
 * rows (4 shards of 10000 rows), each into its own entry, and merge in shard
 * order; a later sharded group and a multipass node replay the map's stream
 * from its shards' spills. Results equal those of an unsharded run exactly
 * (integer-valued sums). A rerun after losing one shard's entries (a run killed
 * halfway) computes that shard only. */
static const char *sharded = "shard: 3000\n"
                             "nodes:\n"
                             "  src: {op: mock_ssource, params: {rows: 10000, cols: 4}}\n"
                             "  map: {op: mock_smap, inputs: {x: src}}\n"
                             "  sum: {op: mock_ssum, inputs: {x: map}}\n"
                             "  late: {op: mock_ssum, inputs: {x: map, after: sum}}\n"
                             "  mp: {op: mock_multipass, inputs: {x: map}, params: {passes: 2}}\n";

static double tensor_sum(const dm_node *n)
{
    double s = 0;
    for (int64_t k = 0; k < n->outtensor[0].shape[0]; k++)
        s += ((double *)n->outtensor[0].data)[k];
    return s;
}

START_TEST(test_mock_shards)
{
    double want = 0;
    for (int64_t r = 0; r < 10000; r++)
        for (int64_t c = 0; c < 4; c++)
            want += src_value(r, c) + 1;
    char *cache = dm_test_tmpdir("engine");
    dm_pipeline *p;
    dm_graph *g = mock_graph(sharded, cache, NULL, &p);
    ck_assert_int_eq(g->shard, 3000);
    ssum_rows_seen = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    dm_node *src = dm_graph_find(g, "src"), *map = dm_graph_find(g, "map"), *sum = dm_graph_find(g, "sum"),
            *late = dm_graph_find(g, "late");
    ck_assert_int_eq(map->group, src->group);
    ck_assert_int_eq(sum->group, src->group);
    ck_assert_int_gt(late->group, sum->group);
    ck_assert(tensor_sum(sum) == want);
    ck_assert(tensor_sum(late) == want);
    ck_assert_int_eq(ssum_rows_seen, 20000); /* sum and late, each row once */
    ck_assert_int_eq(seen.rows[0], 10000);   /* mp: both passes over the four segments */
    ck_assert_int_eq(seen.rows[1], 10000);
    ck_assert_int_eq(seen.in_order, 1);
    /* map's entry lists its shards' spills */
    json_t *e = dm_cache_entry_json(g, map->key);
    json_t *segs = json_object_get(json_object_get(json_object_get(e, "outputs"), "out"), "segments");
    ck_assert_int_eq((int)json_array_size(segs), 4);
    ck_assert_int_eq((int)json_integer_value(json_object_get(json_array_get(segs, 3), "rows")), 1000);
    json_decref(e);
    char map_key[33], sum_key[33];
    memcpy(map_key, map->key, 33);
    memcpy(sum_key, sum->key, 33);
    free_graph(g, p);

    /* a damaged shard of map's stream: late (forced) fails to replay it, the
     * shard's entry goes, map merges again with that shard recomputed */
    char k1[33];
    dm_cache_shard_key(map_key, 3000, 1, k1);
    char *spill = dm_xasprintf("%s/%s/out.spill", cache, k1);
    FILE *fp = fopen(spill, "r+b");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 100, SEEK_SET);
    fputc(0x5a, fp);
    fclose(fp);
    free(spill);
    g = mock_graph(sharded, cache, NULL, &p);
    g->force = dm_xcalloc(1, sizeof *g->force);
    g->force[0] = dm_xstrdup("late");
    g->nforce = 1;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert(tensor_sum(dm_graph_find(g, "late")) == want);
    ck_assert_int_eq(dm_graph_find(g, "map")->run, 1);
    free_graph(g, p);

    /* a run killed in shard 2: the node entries and shard 2's entries are gone */
    char k2[33];
    dm_cache_shard_key(sum_key, 3000, 2, k2);
    char *d = dm_xasprintf("%s/%s", cache, k2);
    ck_assert_int_eq(dm_file_exists(d), 1);
    dm_rm_rf(d);
    free(d);
    dm_cache_shard_key(map_key, 3000, 2, k2);
    d = dm_xasprintf("%s/%s", cache, k2);
    dm_rm_rf(d);
    free(d);
    for (int i = 0; i < 2; i++) {
        d = dm_xasprintf("%s/%s", cache, i ? map_key : sum_key);
        dm_rm_rf(d);
        free(d);
    }
    g = mock_graph(sharded, cache, NULL, &p);
    ssum_rows_seen = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(ssum_rows_seen, 3000); /* sum: shard 2 only (late is cached: its inputs' keys are the same) */
    ck_assert(tensor_sum(dm_graph_find(g, "sum")) == want);
    free_graph(g, p);

    /* killed between two members' entries of shard 1: map's is gone, sum's was
     * made; the rerun computes shard 1 again (sum needs map's rows) but keeps
     * sum's entry as it was */
    char s1[33], m1[33];
    dm_cache_shard_key(sum_key, 3000, 1, s1);
    dm_cache_shard_key(map_key, 3000, 1, m1);
    char *sj = dm_xasprintf("%s/%s/node.json", cache, s1);
    struct stat before, after;
    ck_assert_int_eq(stat(sj, &before), 0);
    for (int i = 0; i < 3; i++) {
        d = dm_xasprintf("%s/%s", cache, i == 0 ? m1 : i == 1 ? map_key : sum_key);
        dm_rm_rf(d);
        free(d);
    }
    g = mock_graph(sharded, cache, NULL, &p);
    ssum_rows_seen = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(ssum_rows_seen, 3000);
    ck_assert(tensor_sum(dm_graph_find(g, "sum")) == want);
    ck_assert_int_eq(stat(sj, &after), 0);
    ck_assert(before.st_ino == after.st_ino && before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
    char *tmp = dm_xasprintf("%s/tmp", cache);
    DIR *td = opendir(tmp);
    ck_assert_ptr_nonnull(td);
    struct dirent *te;
    while ((te = readdir(td)))
        ck_assert_msg(te->d_name[0] == '.', "a temporary folder was left in %s: %s", tmp, te->d_name);
    closedir(td);
    free(tmp), free(sj);
    free_graph(g, p);

    /* map recomputed where late and mp read it, instead of spilled */
    char *dir2 = dm_test_tmpdir("engine2");
    static const char *recompute = "shard: 3000\n"
                                   "nodes:\n"
                                   "  src: {op: mock_ssource, params: {rows: 10000, cols: 4}}\n"
                                   "  map: {op: mock_smap, inputs: {x: src}, spill: recompute}\n"
                                   "  sum: {op: mock_ssum, inputs: {x: map}}\n"
                                   "  late: {op: mock_ssum, inputs: {x: map, after: sum}}\n"
                                   "  late2: {op: mock_ssum, inputs: {x: map, after: sum}}\n"
                                   "  mp: {op: mock_multipass, inputs: {x: map}, params: {passes: 2}}\n";
    g = mock_graph(recompute, dir2, NULL, &p);
    ssum_rows_seen = smap_rows_seen = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert(tensor_sum(dm_graph_find(g, "sum")) == want);
    ck_assert(tensor_sum(dm_graph_find(g, "late")) == want);
    ck_assert(tensor_sum(dm_graph_find(g, "late2")) == want);
    /* late and late2 share one pass that recomputes map: map runs over the rows
     * four times (its own pass, that one, and mp's two passes) */
    ck_assert_int_eq(dm_graph_find(g, "late")->group, dm_graph_find(g, "late2")->group);
    ck_assert_int_eq(smap_rows_seen, 4 * 10000);
    ck_assert_int_eq(seen.rows[1], 10000);
    ck_assert_int_eq(dm_graph_find(g, "map")->spill[0], 0);
    e = dm_cache_entry_json(g, dm_graph_find(g, "map")->key);
    ck_assert(json_is_false(json_object_get(json_object_get(json_object_get(e, "outputs"), "out"), "spilled")));
    json_decref(e);
    free_graph(g, p);
    /* a rerun of late alone recomputes map from src */
    g = mock_graph(recompute, dir2, NULL, &p);
    g->force = dm_xcalloc(1, sizeof *g->force);
    g->force[0] = dm_xstrdup("late");
    g->nforce = 1;
    ssum_rows_seen = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert_int_eq(ssum_rows_seen, 10000);
    ck_assert(tensor_sum(dm_graph_find(g, "late")) == want);
    ck_assert_int_eq(dm_graph_find(g, "map")->run, 0);
    free_graph(g, p);
    dm_rm_rf(dir2);
    free(dir2);

    /* unsharded: the same sums */
    g = mock_graph(sharded, cache, NULL, &p);
    g->shard = 0;
    ck_assert_msg(dm_run(g) == 0, "%s", dm_error());
    ck_assert(tensor_sum(dm_graph_find(g, "sum")) == want);
    ck_assert(tensor_sum(dm_graph_find(g, "late")) == want);
    free_graph(g, p);
    dm_rm_rf(cache);
    free(cache);
}
END_TEST

int main(void)
{

    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_half_round_trip);
    tcase_add_test(tc, test_parse);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_keys);
    tcase_add_test(tc, test_topology);
    tcase_add_test(tc, test_mock_grouping);
    tcase_add_test(tc, test_mock_multipass);
    tcase_add_test(tc, test_mock_spills);
    tcase_add_test(tc, test_mock_chunk_size);
    tcase_add_test(tc, test_mock_errors);
    tcase_add_test(tc, test_mock_nested_runs);
    tcase_add_test(tc, test_mock_typed_streams);
    tcase_add_test(tc, test_mock_ephemeral);
    tcase_add_test(tc, test_mock_shards);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
