/*
 * test_partials.c: the operators' side of shards (op.h: shardable, seek,
 * save_partial, merge_partial), driven by hand on the nodes of a bound graph,
 * as the engine's sharded groups will drive them:
 *   - sources (synthetic, planted, npy): after seek(row0, rows), produce()
 *     yields exactly those rows, bitwise the rows of a full pass, row0 global;
 *   - reductions (moments, covariance, topk, npy_sink, sae): per shard a fresh
 *     node sees only the shard's chunks and saves its partial into a folder;
 *     a fresh node merges the partials in shard order and finishes. One shard
 *     gives bitwise the unsharded results; several give the same results up to
 *     the rounding of a different summation order (doubles: 1e-12 relative),
 *     except top-k lists, histograms and the sink's file, which are exact;
 *   - partial files that are truncated, of another shape or missing fail with
 *     a message naming the file.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "fs.h"
#include "npy.h"
#include "test.h"

#define ROWS 1000
#define COLS 6
#define CHUNK 128

/* ---- driving nodes by hand ------------------------------------------------ */

static dm_graph *build(const char *yaml, dm_pipeline **pp)
{
    dm_pipeline *p = dm_pipeline_parse("partials.yaml", yaml, strlen(yaml));
    ck_assert_msg(p != NULL, "%s", dm_error());
    dm_graph *g = dm_graph_build(p);
    ck_assert_msg(g != NULL, "%s", dm_error());
    *pp = p;
    return g;
}

static dm_node *find(dm_graph *g, const char *name)
{
    dm_node *n = dm_graph_find(g, name);
    ck_assert_ptr_nonnull(n);
    return n;
}

/* What the engine does before open(): a fresh folder for the node's products
 * and the chunk size. */
static void node_open(dm_node *n, const char *dir)
{
    free(n->dir);
    n->dir = dm_xstrdup(dir);
    ck_assert_int_eq(dm_rm_rf(dir), 0);
    ck_assert_int_eq(dm_mkdir_p(dir), 0);
    for (int k = 0; k < n->nproducts; k++)
        free(n->products[k]);
    n->nproducts = 0;
    n->chunk_rows = CHUNK;
    ck_assert_msg(n->op->open(n) == 0, "open %s: %s", n->decl->name, dm_error());
    n->opened = 1;
}

static void node_close(dm_node *n)
{
    if (n->op->close)
        n->op->close(n);
    n->opened = 0;
    n->state_ptr = NULL;
}

static size_t row_bytes(const dm_node *src) { return (size_t)src->outdesc[0].shape[1] * dm_dtype_size(src->outdesc[0].dtype); }

/* Everything src produces after open (and seek, when rows >= 0), in chunks of
 * `chunk` rows; *first gets the first chunk's row0, *got the rows. Checks that
 * chunks follow each other. */
static unsigned char *produce_all(dm_node *src, int64_t chunk, int64_t row0, int64_t rows, int64_t *first, int64_t *got)
{
    char *dir = dm_test_tmpdir("src");
    node_open(src, dir);
    if (rows >= 0)
        ck_assert_msg(src->op->seek(src, row0, rows) == 0, "seek: %s", dm_error());
    size_t rb = row_bytes(src);
    int64_t cap = 64, n = 0, next = -1;
    unsigned char *all = dm_xmalloc((size_t)cap * rb);
    dm_chunk c = {.cols = src->outdesc[0].shape[1], .dtype = src->outdesc[0].dtype};
    c.ptr = dm_xmalloc_aligned((size_t)chunk * rb);
    *first = -1;
    for (;;) {
        c.rows = -1;
        ck_assert_msg(src->op->produce(src, &c, chunk) == 0, "produce: %s", dm_error());
        if (c.rows == 0)
            break;
        ck_assert(c.rows > 0 && c.rows <= chunk);
        if (*first < 0)
            *first = next = c.row0;
        ck_assert_int_eq(c.row0, next);
        next += c.rows;
        while (n + c.rows > cap)
            all = dm_xrealloc(all, (size_t)(cap *= 2) * rb);
        memcpy(all + (size_t)n * rb, c.ptr, (size_t)c.rows * rb);
        n += c.rows;
    }
    free(c.ptr);
    node_close(src);
    dm_test_rm_tree(dir);
    free(dir);
    *got = n;
    return all;
}

/* Rows [r0, r1) of data (row-major, `cols` floats a row, row 0 = global row 0)
 * into n, in chunks of CHUNK rows from r0. */
static void feed(dm_node *n, const float *data, int64_t cols, int64_t r0, int64_t r1)
{
    for (int64_t a = r0; a < r1; a += CHUNK) {
        int64_t rows = r1 - a < CHUNK ? r1 - a : CHUNK;
        dm_chunk c = {.row0 = a, .rows = rows, .cols = cols, .data = (float *)data + a * cols};
        ck_assert_msg(n->op->consume(n, 0, &c) == 0, "consume %s: %s", n->decl->name, dm_error());
    }
}

static void feed_ints(dm_node *n, const int64_t *data, int64_t cols, int64_t r0, int64_t r1)
{
    for (int64_t a = r0; a < r1; a += CHUNK) {
        int64_t rows = r1 - a < CHUNK ? r1 - a : CHUNK;
        dm_chunk c = {.row0 = a, .rows = rows, .cols = cols, .i64 = (int64_t *)data + a * cols, .dtype = DM_I64};
        ck_assert_msg(n->op->consume(n, 0, &c) == 0, "consume %s: %s", n->decl->name, dm_error());
    }
}

/* The tensor outputs after finish, copied. */
typedef struct {
    int n;
    dm_tensor t[32];
} outputs;

static void snapshot(dm_node *n, outputs *o)
{
    memset(o, 0, sizeof *o);
    ck_assert(n->nout <= 32);
    o->n = n->nout;
    for (int k = 0; k < n->nout; k++) {
        const dm_tensor *t = &n->outtensor[k];
        if (n->outdesc[k].kind != DM_PORT_TENSOR || !t->data)
            continue;
        dm_tensor_init(&o->t[k], t->dtype, t->ndim, t->shape);
        memcpy(o->t[k].data, t->data, (size_t)dm_tensor_numel(t) * dm_dtype_size(t->dtype));
    }
}

static void outputs_free(outputs *o)
{
    for (int k = 0; k < o->n; k++)
        dm_tensor_free(&o->t[k]);
}

static void finish(dm_node *n, outputs *o)
{
    ck_assert_msg(n->op->finish(n) == 0, "finish %s: %s", n->decl->name, dm_error());
    snapshot(n, o);
}

/* A data source of the reductions' tests: rows [r0, r1) into a node. */
typedef void (*feeder)(dm_node *n, const void *data, int64_t cols, int64_t r0, int64_t r1);
static void feed_f32(dm_node *n, const void *d, int64_t cols, int64_t r0, int64_t r1) { feed(n, d, cols, r0, r1); }
static void feed_i64(dm_node *n, const void *d, int64_t cols, int64_t r0, int64_t r1) { feed_ints(n, d, cols, r0, r1); }

/* One pass over rows [0, rows) into a fresh node in folder base/whole. */
static void run_whole(dm_node *n, feeder f, const void *data, int64_t cols, int64_t rows, const char *base, outputs *o)
{
    char *dir = dm_xasprintf("%s/whole", base);
    node_open(n, dir);
    f(n, data, cols, 0, rows);
    finish(n, o);
    node_close(n);
    free(dir);
}

/* The engine's sharded run: shard i has rows [bounds[i], bounds[i+1]), its
 * partial in base/part<i>; then one node merges them in order and finishes, its
 * products in base/merged. */
static void run_sharded(dm_node *n, feeder f, const void *data, int64_t cols, const int64_t *bounds, int shards,
                        const char *base, outputs *o)
{
    for (int i = 0; i < shards; i++) {
        char *dir = dm_xasprintf("%s/shard%d", base, i), *part = dm_xasprintf("%s/part%d", base, i);
        ck_assert_int_eq(dm_rm_rf(part), 0);
        ck_assert_int_eq(dm_mkdir_p(part), 0);
        node_open(n, dir);
        f(n, data, cols, bounds[i], bounds[i + 1]);
        ck_assert_msg(n->op->save_partial(n, part) == 0, "save_partial %s: %s", n->decl->name, dm_error());
        node_close(n);
        free(dir), free(part);
    }
    char *dir = dm_xasprintf("%s/merged", base);
    node_open(n, dir);
    for (int i = 0; i < shards; i++) {
        char *part = dm_xasprintf("%s/part%d", base, i);
        ck_assert_msg(n->op->merge_partial(n, part) == 0, "merge_partial %s: %s", n->decl->name, dm_error());
        free(part);
    }
    finish(n, o);
    node_close(n);
    free(dir);
}

/* Every tensor output bitwise the same. */
static void assert_same(const char *what, const outputs *a, const outputs *b)
{
    ck_assert_int_eq(a->n, b->n);
    for (int k = 0; k < a->n; k++) {
        const dm_tensor *x = &a->t[k], *y = &b->t[k];
        ck_assert_msg(!x->data == !y->data, "%s: output %d set in one run only", what, k);
        if (!x->data)
            continue;
        ck_assert_int_eq(x->dtype, y->dtype);
        ck_assert_int_eq(dm_tensor_numel(x), dm_tensor_numel(y));
        ck_assert_msg(!memcmp(x->data, y->data, (size_t)dm_tensor_numel(x) * dm_dtype_size(x->dtype)),
                      "%s: output %d differs", what, k);
    }
}

/* Every tensor output equal: float64 within tol (1 + |value|), others bitwise,
 * text outputs (u8) left out when skip_text. NaN matches NaN. */
static void assert_close(const char *what, const outputs *a, const outputs *b, double tol, int skip_text)
{
    ck_assert_int_eq(a->n, b->n);
    for (int k = 0; k < a->n; k++) {
        const dm_tensor *x = &a->t[k], *y = &b->t[k];
        ck_assert_msg(!x->data == !y->data, "%s: output %d set in one run only", what, k);
        if (!x->data || (skip_text && x->dtype == DM_U8))
            continue;
        ck_assert_int_eq(x->dtype, y->dtype);
        int64_t cnt = dm_tensor_numel(x);
        ck_assert_int_eq(cnt, dm_tensor_numel(y));
        if (x->dtype != DM_F64) {
            ck_assert_msg(!memcmp(x->data, y->data, (size_t)cnt * dm_dtype_size(x->dtype)), "%s: output %d differs",
                          what, k);
            continue;
        }
        const double *u = x->data, *v = y->data;
        for (int64_t i = 0; i < cnt; i++)
            ck_assert_msg((isnan(u[i]) && isnan(v[i])) || fabs(u[i] - v[i]) <= tol * (1 + fabs(u[i])),
                          "%s: output %d [%lld]: %.17g vs %.17g", what, k, (long long)i, u[i], v[i]);
    }
}

static void assert_same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = dm_read_file(a, &la), *y = dm_read_file(b, &lb);
    ck_assert_msg(x && y, "%s", dm_error());
    ck_assert_msg(la == lb && !memcmp(x, y, la), "%s and %s differ (%zu and %zu bytes)", a, b, la, lb);
    free(x), free(y);
}

/* The bitwise and the rounding checks of one reduction: unsharded, one shard,
 * three shards of uneven sizes (not multiples of the chunk), two shards.
 * `product` (a file in the node's folder) is compared bytewise for one shard,
 * and for every sharding when `exact`. */
static void check_reduction(dm_node *n, feeder f, const void *data, int64_t cols, int64_t rows, const char *product,
                            int exact, double tol)
{
    char *base = dm_test_tmpdir(n->decl->name);
    outputs whole, one, three, two;
    run_whole(n, f, data, cols, rows, base, &whole);
    char *ref = dm_xasprintf("%s/ref", base), *wf = dm_xasprintf("%s/whole/%s", base, product);
    ck_assert_int_eq(dm_mkdir_p(ref), 0);
    char *kept = dm_xasprintf("%s/%s", ref, product), *mf = dm_xasprintf("%s/merged/%s", base, product);
    ck_assert_int_eq(dm_copy_file(wf, kept), 0);

    int64_t b1[] = {0, rows};
    run_sharded(n, f, data, cols, b1, 1, base, &one);
    assert_same(n->decl->name, &whole, &one);
    assert_same_file(kept, mf);

    int64_t b3[] = {0, rows * 3 / 10 + 1, rows * 13 / 20 + 3, rows};
    run_sharded(n, f, data, cols, b3, 3, base, &three);
    if (exact) {
        assert_same(n->decl->name, &whole, &three);
        assert_same_file(kept, mf);
    } else {
        assert_close(n->decl->name, &whole, &three, tol, 1);
    }
    int64_t b2[] = {0, rows / 2, rows};
    run_sharded(n, f, data, cols, b2, 2, base, &two);
    if (exact) {
        assert_same(n->decl->name, &whole, &two);
        assert_same_file(kept, mf);
    } else {
        assert_close(n->decl->name, &whole, &two, tol, 1);
    }
    outputs_free(&whole), outputs_free(&one), outputs_free(&three), outputs_free(&two);
    free(ref), free(wf), free(kept), free(mf);
    dm_test_rm_tree(base);
    free(base);
}

/* ---- the pipelines ---------------------------------------------------------- */

/* f32 and i64 .npy files of ROWS x COLS for the npy source and sink; returns
 * the folder. */
static char *write_npy_inputs(void)
{
    char *dir = dm_test_tmpdir("npyin");
    int64_t shape[2] = {ROWS, COLS};
    dm_tensor f, i;
    dm_tensor_init(&f, DM_F32, 2, shape);
    dm_tensor_init(&i, DM_I64, 2, shape);
    for (int64_t k = 0; k < ROWS * COLS; k++) {
        ((float *)f.data)[k] = (float)sin((double)k * 0.37) * 3.0f;
        ((int64_t *)i.data)[k] = (k * 7919) % 100003 - 50000;
    }
    char *pf = dm_xasprintf("%s/f.npy", dir), *pi = dm_xasprintf("%s/i.npy", dir);
    ck_assert_int_eq(dm_npy_save(pf, &f), 0);
    ck_assert_int_eq(dm_npy_save(pi, &i), 0);
    dm_tensor_free(&f), dm_tensor_free(&i);
    free(pf), free(pi);
    return dir;
}

static char *pipeline_text(const char *npydir)
{
    return dm_xasprintf(
        "name: partials\n"
        "nodes:\n"
        "  src: {op: synthetic, params: {rows: %d, cols: %d, seed: 3}}\n"
        "  half: {op: synthetic, params: {rows: %d, cols: %d, seed: 3, shard: 1, shards: 2}}\n"
        "  planted_sae: {op: planted_sae, params: {d: 16, atoms: 24, missed: 4, threshold: 0.5, seed: 1}}\n"
        "  acts: {op: planted, inputs: {dictionary: planted_sae.dictionary}, params: {rows: %d, l0: 2, seed: 2}}\n"
        "  fl: {op: npy, params: {path: %s/f.npy}}\n"
        "  ints: {op: npy, params: {path: %s/i.npy, dtype: i64}}\n"
        "  mom: {op: moments, inputs: {x: src}}\n"
        "  cov: {op: covariance, inputs: {x: src}}\n"
        "  top: {op: topk, inputs: {values: src}, params: {k: 7}}\n"
        "  fixed: {op: topk, inputs: {values: src}, params: {k: 3, hist_range: 2.5, file: fixed.json}}\n"
        "  sink: {op: npy_sink, inputs: {x: src}}\n"
        "  sink16: {op: npy_sink, inputs: {x: src}, params: {dtype: f16}}\n"
        "  sinki: {op: npy_sink, inputs: {x: ints}}\n"
        "  sae: {op: sae, inputs: {x: acts, sae: planted_sae.sae}}\n",
        ROWS, COLS, ROWS, COLS, ROWS, npydir, npydir);
}

typedef struct {
    char *npydir, *text;
    dm_pipeline *p;
    dm_graph *g;
} fixture;

static void setup(fixture *f)
{
    f->npydir = write_npy_inputs();
    f->text = pipeline_text(f->npydir);
    f->g = build(f->text, &f->p);
}

static void teardown(fixture *f)
{
    dm_graph_free(f->g);
    dm_pipeline_free(f->p);
    dm_test_rm_tree(f->npydir);
    free(f->npydir), free(f->text);
}

/* The source's full pass as floats (its own chunking). */
static float *all_rows(dm_node *src, int64_t *rows)
{
    int64_t first;
    float *d = (float *)produce_all(src, 100, 0, -1, &first, rows);
    ck_assert_int_eq(first, 0);
    return d;
}

/* ---- the cases ------------------------------------------------------------- */

/* Which operators say they shard; the rest must not. */
START_TEST(test_shardable_flags)
{
    static const char *yes[] = {"planted", "synthetic", "npy", "gpt2", "project", "moments", "covariance",
                                "sae", "topk", "npy_sink"};
    static const char *seekable[] = {"planted", "synthetic", "npy"};
    static const char *with_partials[] = {"moments", "covariance", "sae", "topk", "npy_sink"};
    static const char *no[] = {"text", "fastica", "sae_config", "pca", "ica_compare", "report", "planted_sae"};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        ck_assert_msg(dm_find_op(yes[i]) && dm_find_op(yes[i])->shardable, "%s is not shardable", yes[i]);
    for (size_t i = 0; i < sizeof seekable / sizeof *seekable; i++)
        ck_assert_ptr_nonnull(dm_find_op(seekable[i])->seek);
    for (size_t i = 0; i < sizeof with_partials / sizeof *with_partials; i++) {
        ck_assert_ptr_nonnull(dm_find_op(with_partials[i])->save_partial);
        ck_assert_ptr_nonnull(dm_find_op(with_partials[i])->merge_partial);
    }
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        ck_assert_msg(dm_find_op(no[i]) && !dm_find_op(no[i])->shardable, "%s says it shards", no[i]);
    /* maps keep nothing across rows */
    ck_assert_ptr_null(dm_find_op("gpt2")->save_partial);
    ck_assert_ptr_null(dm_find_op("project")->merge_partial);
}
END_TEST

/* Seeking a source: any range, any chunk size, bitwise the full pass's rows. */
static void check_seek(dm_node *src, int64_t begin, int64_t end)
{
    int64_t first, rows;
    unsigned char *full = produce_all(src, 97, 0, -1, &first, &rows);
    size_t rb = row_bytes(src);
    ck_assert_int_eq(first, begin);
    ck_assert_int_eq(rows, end - begin);
    int64_t ranges[][2] = {{begin, end - begin}, {begin + 137, end - begin - 200}, {end - 1, 1}, {begin + 5, 0}, {begin, 33}};
    int64_t chunks[] = {CHUNK, 7, 1000, 1};
    for (size_t r = 0; r < sizeof ranges / sizeof *ranges; r++)
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
            int64_t f, got;
            /* seek takes offsets from the first row; chunks keep the source's row numbers */
            unsigned char *part = produce_all(src, chunks[c], ranges[r][0] - begin, ranges[r][1], &f, &got);
            ck_assert_int_eq(got, ranges[r][1]);
            if (got)
                ck_assert_int_eq(f, ranges[r][0]);
            ck_assert_msg(!memcmp(part, full + (size_t)(ranges[r][0] - begin) * rb, (size_t)got * rb),
                          "%s: rows %lld.. differ after seek", src->decl->name, (long long)ranges[r][0]);
            free(part);
        }
    free(full);
    /* outside the source's rows: an error, not a short read */
    char *dir = dm_test_tmpdir("seek");
    node_open(src, dir);
    ck_assert_int_eq(src->op->seek(src, end - begin - 10, 11), -1);
    assert_error_has("outside");
    ck_assert_int_eq(src->op->seek(src, -1, 1), -1);
    node_close(src);
    dm_test_rm_tree(dir);
    free(dir);
}

START_TEST(test_seek_sources)
{
    fixture f;
    setup(&f);
    check_seek(find(f.g, "src"), 0, ROWS);
    check_seek(find(f.g, "acts"), 0, ROWS);
    check_seek(find(f.g, "fl"), 0, ROWS);
    check_seek(find(f.g, "ints"), 0, ROWS);
    /* a source cut by its shard parameters numbers its rows globally; seek counts from its first */
    check_seek(find(f.g, "half"), ROWS / 2, ROWS);
    teardown(&f);
}
END_TEST

START_TEST(test_moments_covariance)
{
    fixture f;
    setup(&f);
    int64_t rows;
    float *x = all_rows(find(f.g, "src"), &rows);
    ck_assert_int_eq(rows, ROWS);
    /* Several shards change the order of the pairwise merges: each is exact
     * in real arithmetic and rounds once more in double, so the moments of 1000
     * rows of O(1) values agree to ~1e-15 relative; 1e-12 leaves room. */
    check_reduction(find(f.g, "mom"), feed_f32, x, COLS, rows, "stats.json", 0, 1e-12);
    check_reduction(find(f.g, "cov"), feed_f32, x, COLS, rows, "covariance.npy", 0, 1e-12);
    free(x);
    teardown(&f);
}
END_TEST

START_TEST(test_topk)
{
    fixture f;
    setup(&f);
    int64_t rows;
    float *x = all_rows(find(f.g, "src"), &rows);
    /* heaps ordered by (value, row): the same lists; histograms re-binned exactly */
    check_reduction(find(f.g, "top"), feed_f32, x, COLS, rows, "topk.json", 1, 0);
    check_reduction(find(f.g, "fixed"), feed_f32, x, COLS, rows, "fixed.json", 1, 0);

    /* Many ties (a few distinct values), broken by the row; and histograms
     * whose range is wider in rows 320..599 only: the three shards' ranges are
     * then narrow, wide, narrow, so merges widen the node's histograms and the
     * partial's in turn. */
    float *t = dm_xmalloc((size_t)(ROWS * COLS) * sizeof *t);
    for (int64_t r = 0; r < ROWS; r++)
        for (int64_t j = 0; j < COLS; j++)
            t[r * COLS + j] = (float)((r * 7 + j * 13) % 11 - 5) * (r >= 320 && r < 600 ? 3.0f : 0.25f);
    check_reduction(find(f.g, "top"), feed_f32, t, COLS, ROWS, "topk.json", 1, 0);
    free(t), free(x);
    teardown(&f);
}
END_TEST

START_TEST(test_npy_sink)
{
    fixture f;
    setup(&f);
    int64_t rows;
    float *x = all_rows(find(f.g, "src"), &rows);
    check_reduction(find(f.g, "sink"), feed_f32, x, COLS, rows, "sink.npy", 1, 0);
    check_reduction(find(f.g, "sink16"), feed_f32, x, COLS, rows, "sink16.npy", 1, 0);
    int64_t first, irows;
    int64_t *ints = (int64_t *)produce_all(find(f.g, "ints"), 100, 0, -1, &first, &irows);
    check_reduction(find(f.g, "sinki"), feed_i64, ints, COLS, irows, "sinki.npy", 1, 0);
    free(x), free(ints);
    teardown(&f);
}
END_TEST

START_TEST(test_sae)
{
    fixture f;
    setup(&f);
    int64_t rows;
    dm_node *acts = find(f.g, "acts");
    float *x = all_rows(acts, &rows);
    /* Sums of squares, cosines and moments over 1000 tokens merged in another
     * order: ~1e-15 relative; the FVU, the predictability (an eigensolve of a
     * covariance that differs in the last bits) and the rest of the summary
     * text are compared bitwise for one shard only. */
    check_reduction(find(f.g, "sae"), feed_f32, x, acts->outdesc[0].shape[1], rows, "sae_stats.json", 0, 1e-12);
    free(x);
    teardown(&f);
}
END_TEST

/* ---- bad partials ------------------------------------------------------------ */

/* Saves node n's partial of rows [0, 300) into base/part (returned). */
static char *save_one(dm_node *n, feeder fd, const void *data, int64_t cols, const char *base)
{
    char *dir = dm_xasprintf("%s/shard", base), *part = dm_xasprintf("%s/part", base);
    ck_assert_int_eq(dm_mkdir_p(part), 0);
    node_open(n, dir);
    fd(n, data, cols, 0, 300);
    ck_assert_msg(n->op->save_partial(n, part) == 0, "%s", dm_error());
    node_close(n);
    free(dir);
    return part;
}

/* Merging part into a fresh node fails with code and a message naming file. */
static void expect_merge_error(dm_node *n, const char *base, const char *part, dm_errc code, const char *file)
{
    char *dir = dm_xasprintf("%s/merged", base);
    node_open(n, dir);
    ck_assert_int_eq(n->op->merge_partial(n, part), -1);
    char *path = dm_xasprintf("%s/%s", part, file);
    assert_error_has(path);
    assert_error_code(code);
    node_close(n);
    free(dir), free(path);
}

static void truncate_file(const char *part, const char *file, int64_t keep)
{
    char *p = dm_xasprintf("%s/%s", part, file);
    ck_assert_int_eq(truncate(p, keep), 0);
    free(p);
}

START_TEST(test_bad_partials)
{
    fixture f;
    setup(&f);
    int64_t rows;
    float *x = all_rows(find(f.g, "src"), &rows);
    char *base = dm_test_tmpdir("bad");

    /* truncated inside the data, and inside the header */
    dm_node *mom = find(f.g, "mom");
    char *part = save_one(mom, feed_f32, x, COLS, base);
    truncate_file(part, "moments.npy", 200);
    expect_merge_error(mom, base, part, DM_E_CORRUPT, "moments.npy");
    assert_error_has("truncated");
    truncate_file(part, "moments.npy", 40);
    expect_merge_error(mom, base, part, DM_E_CORRUPT, "moments.npy");
    free(part);

    /* another node's partial: a covariance's co-moments saved as moments */
    dm_node *cov = find(f.g, "cov");
    part = save_one(cov, feed_f32, x, COLS, base);
    char *from = dm_xasprintf("%s/comoments.npy", part), *to = dm_xasprintf("%s/moments.npy", part);
    ck_assert_int_eq(rename(from, to), 0);
    expect_merge_error(mom, base, part, DM_E_CORRUPT, "moments.npy");
    assert_error_has("6 columns");
    /* and the co-moments missing */
    expect_merge_error(cov, base, part, DM_E_IO, "comoments.npy");
    free(from), free(to), free(part);

    /* a row count that is not a count */
    part = save_one(mom, feed_f32, x, COLS, base);
    char *mp = dm_xasprintf("%s/moments.npy", part);
    dm_tensor t;
    ck_assert_int_eq(dm_npy_load(mp, &t), 0);
    ((double *)t.data)[0] = -3.5;
    ck_assert_int_eq(dm_npy_save(mp, &t), 0);
    dm_tensor_free(&t);
    expect_merge_error(mom, base, part, DM_E_CORRUPT, "moments.npy");
    assert_error_has("not a count");
    free(mp), free(part);

    /* topk: counts beyond k, and a histogram of another shape */
    dm_node *top = find(f.g, "top");
    part = save_one(top, feed_f32, x, COLS, base);
    char *cp = dm_xasprintf("%s/counts.npy", part);
    ck_assert_int_eq(dm_npy_load(cp, &t), 0);
    ((int64_t *)t.data)[4] = 8; /* column 1's top heap: k is 7 */
    ck_assert_int_eq(dm_npy_save(cp, &t), 0);
    dm_tensor_free(&t);
    expect_merge_error(top, base, part, DM_E_CORRUPT, "counts.npy");
    assert_error_has("at most k = 7");
    free(cp), free(part);
    part = save_one(top, feed_f32, x, COLS, base);
    truncate_file(part, "hist.npy", 4096);
    expect_merge_error(top, base, part, DM_E_CORRUPT, "hist.npy");
    free(part);
    part = save_one(top, feed_f32, x, COLS, base);
    char *sp = dm_xasprintf("%s/scale.npy", part);
    ck_assert_int_eq(dm_npy_load(sp, &t), 0);
    ((double *)t.data)[2] = 3.0; /* not a power of two */
    ck_assert_int_eq(dm_npy_save(sp, &t), 0);
    dm_tensor_free(&t);
    expect_merge_error(top, base, part, DM_E_CORRUPT, "scale.npy");
    free(sp), free(part);

    /* npy_sink: a segment of another width, and a truncated one */
    dm_node *sink = find(f.g, "sink");
    part = save_one(sink, feed_f32, x, COLS, base);
    char *seg = dm_xasprintf("%s/segment.npy", part);
    int64_t shape[2] = {5, COLS + 1};
    dm_tensor_init(&t, DM_F32, 2, shape);
    ck_assert_int_eq(dm_npy_save(seg, &t), 0);
    dm_tensor_free(&t);
    expect_merge_error(sink, base, part, DM_E_CORRUPT, "segment.npy");
    free(seg), free(part);
    part = save_one(sink, feed_f32, x, COLS, base);
    truncate_file(part, "segment.npy", 1000);
    expect_merge_error(sink, base, part, DM_E_CORRUPT, "segment.npy");
    free(part);

    /* sae: a truncated feature moments file, and a missing co-moment */
    dm_node *acts = find(f.g, "acts"), *sae = find(f.g, "sae");
    int64_t arows;
    float *a = all_rows(acts, &arows);
    int64_t d = acts->outdesc[0].shape[1];
    part = save_one(sae, feed_f32, a, d, base);
    truncate_file(part, "feature_moments.npy", 300);
    expect_merge_error(sae, base, part, DM_E_CORRUPT, "feature_moments.npy");
    free(part);
    part = save_one(sae, feed_f32, a, d, base);
    char *ex = dm_xasprintf("%s/cov_ex.npy", part);
    ck_assert_int_eq(unlink(ex), 0);
    expect_merge_error(sae, base, part, DM_E_IO, "cov_ex.npy");
    free(ex), free(part);
    part = save_one(sae, feed_f32, a, d, base);
    truncate_file(part, "sae_counts.npy", 100);
    expect_merge_error(sae, base, part, DM_E_CORRUPT, "sae_counts.npy");
    free(part), free(a);

    free(x);
    dm_test_rm_tree(base);
    free(base);
    teardown(&f);
}
END_TEST

static Suite *partials_suite(void)
{
    Suite *s = suite_create("partials");
    TCase *tc = tcase_create("shards");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_shardable_flags);
    tcase_add_test(tc, test_seek_sources);
    tcase_add_test(tc, test_moments_covariance);
    tcase_add_test(tc, test_topk);
    tcase_add_test(tc, test_npy_sink);
    tcase_add_test(tc, test_sae);
    tcase_add_test(tc, test_bad_partials);
    suite_add_tcase(s, tc);
    return s;
}

DM_TEST_MAIN(partials_suite)
