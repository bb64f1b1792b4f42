/*
 * op_topk.c: for every column of a stream (an ICA component's source values per
 * token, say), the k rows with the largest and the k with the smallest values,
 * in one pass with bounded memory (two heaps of k per column), and their token
 * contexts.
 *
 * Rows of token streams are numbered window * T + position (the gpt2 operator's
 * convention), so with the token windows connected (a random-access input: the
 * windows are read by row from their spill at the end, only for the examples) a
 * row's window, position, token and +-context tokens are known; they are decoded
 * to text with the tokenizer (byte-level decoding; bytes that are not UTF-8 on
 * their own become U+FFFD). Position 0 holds BOS in windows made with BOS, whose
 * activations are an artefact of attention sinks: skipped unless skip_bos is off.
 *
 * Heaps merge, so shards of the stream can be tracked apart and combined.
 * A shard's partial result (save_partial) is its heaps, counts and fine
 * histograms as .npy files; merge_partial pushes each heap entry into the
 * node's heaps and adds the histograms after widening the narrower of the two
 * to the other's range. Heaps order entries by (value, row), a total order on
 * a stream's entries, so the merged heaps hold exactly the entries one pass
 * would have kept, whatever the shards; widening is exact re-binning (pairs of
 * fine bins), so the histograms agree with one pass too, but for values within
 * about 1e-16 of 0 relative to the range, which one pass may bin on either
 * side of 0 depending on the range when they came.
 *
 * Beside the extremes, a uniform random sample of `random` rows per column
 * (what feature dashboards and autointerp show as random examples: delphi's
 * random samples, Neuronpedia's activation-interval samples): each value gets
 * the key mix(seed + row) XOR mix(seed + salt(column)), mix being splitmix64's
 * finaliser, and the rows of the `random` smallest keys are kept (a bottom-k
 * sketch, Cohen and Kaplan, PODC 2007). The XOR with a per-column constant is
 * a bijection, so each column's keys are as random as the rows' and each
 * column's sample is uniform, while the hashing costs one per row, not one per
 * value (the keys of a chunk's rows are made once, before the columns). Unlike
 * reservoir sampling by arrival (Vitter's algorithm R) the sample depends only
 * on the seed and the rows, not on chunking, so shards merge it exactly as they
 * merge the heaps.
 *
 * With the token windows connected, every kept example also keeps its column's
 * values at the rows of its context (`context_values`): what dashboards and
 * autointerp show per token (`dmica export`), without the whole (rows x
 * columns) stream kept on disk, which the 100M-token pipeline cannot afford.
 * Each heap entry owns a slot of 2 context + 1 floats for as long as it is in
 * the heap (an entry that evicts another takes its slot). A pushed row's
 * context is filled from its chunk, from the last `context` rows of the
 * previous chunk (kept when chunks follow each other), and the rest from the
 * chunks after it as they come: each chunk first fills the context rows it
 * holds of the entries kept so far. A context row that no chunk of this node
 * held (across a shard's edge: shards of token streams are whole windows, so
 * only when they are not) stays NaN, null in the product.
 *
 * Output `examples`: the typed examples summary (operators/analysis/summaries.h:
 * per column its histogram, top and bottom examples with their decoded
 * contexts), for the report. Product: `file` (topk.json), the same and more
 * (token ids, windows, positions, the context's values), and the random sample
 * (`random`, by row).
 */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "npy.h"
#include "op.h"
#include "summaries.h"
#include "tokenizer.h"

enum { IN_VALUES, IN_WINDOWS };
enum { OUT_EXAMPLES };

static const dm_param_spec topk_params[] = {
    {"k", DM_P_INT, "20", "examples per component and direction"},
    {"tokenizer", DM_P_PATH, "", "folder with vocab.json and merges.txt, or tokenizer.json, to decode contexts "
                                 "(\"\": ids only)"},
    {"context", DM_P_INT, "5", "tokens of context on each side"},
    {"skip_bos", DM_P_BOOL, "true", "leave out position 0 of each window"},
    {"file", DM_P_STRING, "topk.json", "product file (\"\" for none)"},
    {"hist_bins", DM_P_INT, "60", "bins of each column's histogram"},
    {"hist_range", DM_P_FLOAT, "0", "histogram over [-range, range]; 0: from the column's extremes"},
    {"random", DM_P_INT, "-1", "rows sampled uniformly per column (-1: k; 0: none)"},
    {"seed", DM_P_INT, "0", "seed of the random sample"},
    {NULL},
};
static const dm_port_spec topk_inputs[] = {
    {"values", DM_PORT_STREAM},
    {"windows", DM_PORT_STREAM, 0, 1, 1, DM_I32},
    {NULL},
};
static const dm_port_spec topk_outputs[] = {{"examples", DM_PORT_TENSOR}, {NULL}};

/* slot: the entry's context values, slot * cw in its heap's pool */
typedef struct {
    float value;
    int32_t slot;
    int64_t row;
} entry;

/* A sampled row: its key orders the sample (a max-heap on key keeps the
 * smallest keys). */
typedef struct {
    uint64_t key;
    float value;
    int32_t slot;
    int64_t row;
} sample;

typedef struct {
    int64_t cols, k, T;
    int64_t m;           /* random rows per column */
    uint64_t seed;
    uint64_t *keys;      /* the current chunk's row keys */
    int64_t nkeys;
    sample *rnd;         /* cols x m max-heaps on key */
    int64_t *nrnd;
    int skip_bos;
    entry *top, *bot; /* cols x k heaps: top is a min-heap of the largest, bot a max-heap of the smallest */
    int64_t *ntop, *nbot;
    /* histograms: fixed bins when hist_range > 0; otherwise values are binned at
     * the end from the extremes, which needs them kept: a second pass is avoided
     * by binning into 4096 fine bins over a range that widens by doubling. */
    int64_t bins;
    double range;
    int64_t *hist;       /* cols x FINE */
    double *scale;       /* per column: fine bins span [-scale, scale] */
    int64_t *under_over; /* cols x 2 (fixed range only) */
    /* context values (cw = 2 context + 1 with windows, else 0): per column a
     * pool of k slots for each extreme heap and m for the sample */
    int64_t ctx, cw;
    float *ctop, *cbot, *crnd; /* cols x k x cw, cols x k x cw, cols x m x cw */
    float *tail;               /* (tail_rows, cols) the rows just before tail_end */
    int64_t tail_rows, tail_end;
} topk;

#define FINE 4096

static uint64_t row_key(uint64_t seed, int64_t row) { return dm_mix64(seed + (uint64_t)row * 0x9e3779b97f4a7c15ull); }
static uint64_t col_salt(uint64_t seed, int64_t col) { return dm_mix64(seed + ~(uint64_t)col * 0xc2b2ae3d27d4eb4full); }
static uint64_t sample_key(uint64_t seed, int64_t col, int64_t row) { return row_key(seed, row) ^ col_salt(seed, col); }

/* a above b in the max-heap on (key, row) */
static int sample_above(const sample *a, const sample *b)
{
    return a->key > b->key || (a->key == b->key && a->row > b->row);
}

/* Pushes e; returns the slot it took, or -1 when not kept. */
static int32_t sample_push(sample *h, int64_t *n, int64_t m, sample e)
{
    if (*n < m) {
        int64_t i = (*n)++;
        e.slot = (int32_t)i;
        h[i] = e;
        while (i > 0 && sample_above(&h[i], &h[(i - 1) / 2])) {
            sample t = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = t;
            i = (i - 1) / 2;
        }
        return e.slot;
    }
    if (!sample_above(&h[0], &e))
        return -1;
    e.slot = h[0].slot;
    h[0] = e;
    for (int64_t i = 0;;) {
        int64_t l = 2 * i + 1, r = l + 1, x = i;
        if (l < *n && sample_above(&h[l], &h[x]))
            x = l;
        if (r < *n && sample_above(&h[r], &h[x]))
            x = r;
        if (x == i)
            break;
        sample t = h[i];
        h[i] = h[x];
        h[x] = t;
        i = x;
    }
    return e.slot;
}

/* Min-heap on value (sign = 1) or max-heap (sign = -1), ties broken by row so
 * results do not depend on chunking. */
static int before(const entry *a, const entry *b, int sign)
{
    float x = sign * a->value, y = sign * b->value;
    return x < y || (x == y && a->row > b->row);
}

/* Pushes e; returns the slot it took, or -1 when not kept. */
static int32_t heap_push(entry *h, int64_t *n, int64_t k, entry e, int sign)
{
    if (*n < k) {
        int64_t i = (*n)++;
        e.slot = (int32_t)i;
        h[i] = e;
        while (i > 0 && before(&h[i], &h[(i - 1) / 2], sign)) {
            entry t = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = t;
            i = (i - 1) / 2;
        }
        return e.slot;
    }
    if (!before(&h[0], &e, sign))
        return -1;
    e.slot = h[0].slot;
    h[0] = e;
    for (int64_t i = 0;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && before(&h[l], &h[m], sign))
            m = l;
        if (r < *n && before(&h[r], &h[m], sign))
            m = r;
        if (m == i)
            break;
        entry t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return e.slot;
}

static int topk_infer(dm_node *n)
{
    if (dm_param_int(n, "k") < 1 || dm_param_int(n, "k") > 100000)
        return dm_fail("k must be between 1 and 100000, not %lld", (long long)dm_param_int(n, "k"));
    if (dm_param_int(n, "context") < 0)
        return dm_fail("context must be >= 0");
    if (dm_param_int(n, "random") < -1 || dm_param_int(n, "random") > 100000)
        return dm_fail("random must be between -1 (k) and 100000, not %lld", (long long)dm_param_int(n, "random"));
    if (dm_param_int(n, "hist_bins") < 1 || dm_param_int(n, "hist_bins") > FINE)
        return dm_fail("hist_bins must be between 1 and %d", FINE);
    const char *f = dm_param_str(n, "file");
    if (strchr(f, '/'))
        return dm_fail("file must be a plain file name, not '%s'", f);
    dm_port_desc *o = dm_output_desc(n, OUT_EXAMPLES);
    o->dtype = DM_U8;
    o->ndim = 1;
    o->shape[0] = -1;
    return 0;
}

static int64_t topk_state_bytes(const dm_node *n)
{
    int64_t cols = dm_input_desc(n, IN_VALUES)->shape[1];
    int64_t m = dm_param_int(n, "random") < 0 ? dm_param_int(n, "k") : dm_param_int(n, "random");
    int64_t c = dm_param_int(n, "context"), cw = dm_input_connected(n, IN_WINDOWS) ? 2 * c + 1 : 0;
    return (cols > 0 ? cols : 1) * (dm_param_int(n, "k") * 2 * (int64_t)(sizeof(entry) + 16 + 4 * cw) +
                                    m * (int64_t)(sizeof(sample) + 16 + 4 * cw) + FINE * 8 + 4 * c);
}

static int topk_open(dm_node *n)
{
    topk *t = dm_xcalloc(1, sizeof *t);
    dm_node_set_state(n, t);
    t->cols = dm_input_desc(n, IN_VALUES)->shape[1];
    t->k = dm_param_int(n, "k");
    t->T = dm_input_connected(n, IN_WINDOWS) ? dm_input_desc(n, IN_WINDOWS)->shape[1] : 0;
    t->skip_bos = dm_param_bool(n, "skip_bos") && t->T > 0;
    t->top = dm_xmalloc((size_t)(t->cols * t->k) * sizeof *t->top);
    t->bot = dm_xmalloc((size_t)(t->cols * t->k) * sizeof *t->bot);
    t->ntop = dm_xcalloc((size_t)t->cols, sizeof *t->ntop);
    t->nbot = dm_xcalloc((size_t)t->cols, sizeof *t->nbot);
    t->m = dm_param_int(n, "random") < 0 ? t->k : dm_param_int(n, "random");
    t->seed = (uint64_t)dm_param_int(n, "seed");
    t->rnd = dm_xmalloc((size_t)(t->cols * (t->m > 0 ? t->m : 1)) * sizeof *t->rnd);
    t->nrnd = dm_xcalloc((size_t)t->cols, sizeof *t->nrnd);
    t->bins = dm_param_int(n, "hist_bins");
    t->range = dm_param_float(n, "hist_range");
    t->hist = dm_xcalloc((size_t)(t->cols * FINE), sizeof *t->hist);
    t->scale = dm_xcalloc((size_t)t->cols, sizeof *t->scale);
    t->under_over = dm_xcalloc((size_t)(t->cols * 2), sizeof *t->under_over);
    for (int64_t j = 0; j < t->cols; j++)
        t->scale[j] = t->range > 0 ? t->range : 1.0;
    if (t->T) {
        t->ctx = dm_param_int(n, "context");
        t->cw = 2 * t->ctx + 1;
        t->ctop = dm_xmalloc((size_t)(t->cols * t->k * t->cw) * sizeof(float));
        t->cbot = dm_xmalloc((size_t)(t->cols * t->k * t->cw) * sizeof(float));
        t->crnd = dm_xmalloc((size_t)(t->cols * (t->m > 0 ? t->m : 1) * t->cw) * sizeof(float));
        t->tail = dm_xmalloc((size_t)(t->cols * (t->ctx > 0 ? t->ctx : 1)) * sizeof(float));
    }
    return 0;
}

/* The context of `row` in slot v (cw floats for rows row - ctx ... row + ctx):
 * column j's values at the rows chunk c holds (and, with tail, the rows just
 * before it), NaN elsewhere when fresh, else left as they are. Rows of other
 * windows are not context: left NaN. */
static void fill_context(const topk *t, float *v, int64_t row, int64_t j, const dm_chunk *c, int fresh)
{
    int64_t w = row / t->T, tail0 = t->tail_end - t->tail_rows;
    for (int64_t i = 0; i < t->cw; i++) {
        int64_t r = row - t->ctx + i;
        if (r < 0 || r / t->T != w) {
            if (fresh)
                v[i] = NAN;
        } else if (r >= c->row0 && r < c->row0 + c->rows) {
            v[i] = c->data[(r - c->row0) * t->cols + j];
        } else if (fresh && t->tail_end == c->row0 && r >= tail0 && r < t->tail_end) {
            v[i] = t->tail[(r - tail0) * t->cols + j];
        } else if (fresh) {
            v[i] = NAN;
        }
    }
}

/* The rows of c that lie in the contexts of the entries kept before it. */
static void fill_pending(topk *t, int64_t j, const dm_chunk *c)
{
    for (int h = 0; h < 3; h++) {
        int64_t n = h == 0 ? t->ntop[j] : h == 1 ? t->nbot[j] : t->nrnd[j], cap = h == 2 ? t->m : t->k;
        float *pool = (h == 0 ? t->ctop : h == 1 ? t->cbot : t->crnd) + j * cap * t->cw;
        for (int64_t i = 0; i < n; i++) {
            int64_t row = h == 0 ? t->top[j * t->k + i].row : h == 1 ? t->bot[j * t->k + i].row : t->rnd[j * t->m + i].row;
            int32_t slot = h == 0 ? t->top[j * t->k + i].slot : h == 1 ? t->bot[j * t->k + i].slot
                                                                       : t->rnd[j * t->m + i].slot;
            if (row + t->ctx >= c->row0 && row - t->ctx < c->row0 + c->rows)
                fill_context(t, pool + slot * t->cw, row, j, c, 0);
        }
    }
}

/* Keeps the last ctx rows seen (of the previous tail and chunk c, when they
 * follow each other). */
static void keep_tail(topk *t, const dm_chunk *c)
{
    int64_t keep = c->rows < t->ctx ? c->rows : t->ctx, old = 0;
    if (t->tail_end == c->row0 && keep < t->ctx) /* a short chunk: the older rows stay too */
        old = t->tail_rows + keep > t->ctx ? t->ctx - keep : t->tail_rows;
    memmove(t->tail, t->tail + (t->tail_rows - old) * t->cols, (size_t)(old * t->cols) * sizeof(float));
    memcpy(t->tail + old * t->cols, c->data + (c->rows - keep) * t->cols, (size_t)(keep * t->cols) * sizeof(float));
    t->tail_rows = old + keep;
    t->tail_end = c->row0 + c->rows;
}

/* Fine bins over [-s, s) to fine bins over [-2s, 2s): pairs of bins merged,
 * centred (bin b's edges are those of bin FINE/4 + b/2 at twice the range). */
static void widen(int64_t *h)
{
    int64_t nh[FINE] = {0};
    for (int b = 0; b < FINE; b++)
        nh[FINE / 4 + b / 2] += h[b];
    memcpy(h, nh, sizeof nh);
}

static int topk_consume(dm_node *n, int port, const dm_chunk *c)
{
    topk *t = dm_node_state(n);
    if (t->m && t->nkeys < c->rows) {
        free(t->keys);
        t->keys = dm_xmalloc((size_t)c->rows * sizeof *t->keys);
        t->nkeys = c->rows;
    }
    for (int64_t r = 0; t->m && r < c->rows; r++)
        t->keys[r] = row_key(t->seed, c->row0 + r);
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < t->cols; j++) {
        uint64_t salt = col_salt(t->seed, j);
        float *ctop = NULL, *cbot = NULL, *crnd = NULL;
        if (t->cw) {
            ctop = t->ctop + j * t->k * t->cw, cbot = t->cbot + j * t->k * t->cw, crnd = t->crnd + j * t->m * t->cw;
            fill_pending(t, j, c);
        }
        int64_t pos = t->T ? c->row0 % t->T : 1; /* the row's position in its window, without a division */
        for (int64_t r = 0; r < c->rows; r++) {
            int64_t row = c->row0 + r;
            float v = c->data[r * t->cols + j];
            int bos = t->skip_bos && pos == 0;
            if (t->T && ++pos == t->T)
                pos = 0;
            if (isnan(v) || bos)
                continue;
            entry e = {v, 0, row};
            int32_t st = heap_push(t->top + j * t->k, &t->ntop[j], t->k, e, 1);
            int32_t sb = heap_push(t->bot + j * t->k, &t->nbot[j], t->k, e, -1);
            int32_t sr = -1;
            if (t->m) {
                sample s = {t->keys[r] ^ salt, v, 0, row};
                sr = sample_push(t->rnd + j * t->m, &t->nrnd[j], t->m, s);
            }
            if (t->cw && st >= 0)
                fill_context(t, ctop + st * t->cw, row, j, c, 1);
            if (t->cw && sb >= 0)
                fill_context(t, cbot + sb * t->cw, row, j, c, 1);
            if (t->cw && sr >= 0)
                fill_context(t, crnd + sr * t->cw, row, j, c, 1);
            int64_t *h = t->hist + j * FINE;
            if (t->range <= 0)
                while (fabs(v) >= t->scale[j]) {
                    widen(h);
                    t->scale[j] *= 2;
                }
            double pos = (v + t->scale[j]) / (2 * t->scale[j]) * FINE;
            if (pos < 0)
                t->under_over[2 * j]++;
            else if (pos >= FINE)
                t->under_over[2 * j + 1]++;
            else
                h[(int64_t)pos]++;
        }
    }
    if (t->cw)
        keep_tail(t, c);
    return 0;
}

/* ---- partial results (shards) ----------------------------------------------
 *
 * Files in a shard's folder (cols columns, k entries per heap):
 *   heap_values.npy  f32 (2, cols, k)  top then bottom heaps, as held (unused
 *                                      slots 0)
 *   heap_rows.npy    i64 (2, cols, k)  their rows
 *   counts.npy       i64 (cols, 4)     entries in the top and bottom heaps,
 *                                      values below and above a fixed range
 *   hist.npy         i64 (cols, FINE)  fine histograms
 *   scale.npy        f64 (cols)        their half-ranges
 * and, when the node samples (random > 0, m rows per column):
 *   sample_values.npy f32 (cols, m)    the sampled rows' values (unused 0)
 *   sample_rows.npy   i64 (cols, m)    their rows
 *   sample_counts.npy i64 (cols)       rows held per column
 * (the keys are recomputed from the rows); with windows (cw context values):
 *   heap_context.npy   f32 (2, cols, k, cw)  each heap entry's context values
 *   sample_context.npy f32 (cols, m, cw)     each sampled row's
 */

static int save_array(const char *dir, const char *name, dm_dtype dtype, int ndim, const int64_t *shape,
                      const void *data)
{
    dm_tensor t = {.dtype = dtype, .ndim = ndim};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    t.data = (void *)data;
    char *path = dm_xasprintf("%s/%s", dir, name);
    int rc = dm_npy_save(path, &t);
    free(path);
    return rc;
}

static int topk_save_partial(dm_node *n, const char *dir)
{
    topk *t = dm_node_state(n);
    int64_t ck = t->cols * t->k, cw = t->cw;
    float *values = dm_xcalloc((size_t)(2 * ck), sizeof *values);
    int64_t *rows = dm_xcalloc((size_t)(2 * ck), sizeof *rows);
    int64_t *counts = dm_xmalloc((size_t)(4 * t->cols) * sizeof *counts);
    float *ctx = dm_xcalloc((size_t)(2 * ck * cw + 1), sizeof *ctx);
    for (int h = 0; h < 2; h++) {
        const entry *heap = h ? t->bot : t->top;
        const int64_t *cnt = h ? t->nbot : t->ntop;
        const float *pool = h ? t->cbot : t->ctop;
        for (int64_t j = 0; j < t->cols; j++)
            for (int64_t i = 0; i < cnt[j]; i++) {
                const entry *e = &heap[j * t->k + i];
                values[h * ck + j * t->k + i] = e->value;
                rows[h * ck + j * t->k + i] = e->row;
                if (cw)
                    memcpy(ctx + (h * ck + j * t->k + i) * cw, pool + (j * t->k + e->slot) * cw,
                           (size_t)cw * sizeof *ctx);
            }
    }
    for (int64_t j = 0; j < t->cols; j++) {
        counts[4 * j] = t->ntop[j], counts[4 * j + 1] = t->nbot[j];
        counts[4 * j + 2] = t->under_over[2 * j], counts[4 * j + 3] = t->under_over[2 * j + 1];
    }
    int64_t s_heaps[3] = {2, t->cols, t->k}, s_counts[2] = {t->cols, 4}, s_hist[2] = {t->cols, FINE},
            s_scale[1] = {t->cols};
    int rc = save_array(dir, "heap_values.npy", DM_F32, 3, s_heaps, values);
    if (!rc)
        rc = save_array(dir, "heap_rows.npy", DM_I64, 3, s_heaps, rows);
    if (!rc)
        rc = save_array(dir, "counts.npy", DM_I64, 2, s_counts, counts);
    if (!rc)
        rc = save_array(dir, "hist.npy", DM_I64, 2, s_hist, t->hist);
    if (!rc)
        rc = save_array(dir, "scale.npy", DM_F64, 1, s_scale, t->scale);
    int64_t s_hctx[4] = {2, t->cols, t->k, cw};
    if (!rc && cw)
        rc = save_array(dir, "heap_context.npy", DM_F32, 4, s_hctx, ctx);
    if (!rc && t->m) {
        float *sv = dm_xcalloc((size_t)(t->cols * t->m), sizeof *sv);
        int64_t *sr = dm_xcalloc((size_t)(t->cols * t->m), sizeof *sr);
        float *sx = dm_xcalloc((size_t)(t->cols * t->m * cw + 1), sizeof *sx);
        for (int64_t j = 0; j < t->cols; j++)
            for (int64_t i = 0; i < t->nrnd[j]; i++) {
                const sample *e = &t->rnd[j * t->m + i];
                sv[j * t->m + i] = e->value;
                sr[j * t->m + i] = e->row;
                if (cw)
                    memcpy(sx + (j * t->m + i) * cw, t->crnd + (j * t->m + e->slot) * cw, (size_t)cw * sizeof *sx);
            }
        int64_t s_sample[2] = {t->cols, t->m}, s_sctx[3] = {t->cols, t->m, cw};
        rc = save_array(dir, "sample_values.npy", DM_F32, 2, s_sample, sv);
        if (!rc)
            rc = save_array(dir, "sample_rows.npy", DM_I64, 2, s_sample, sr);
        if (!rc)
            rc = save_array(dir, "sample_counts.npy", DM_I64, 1, s_scale, t->nrnd);
        if (!rc && cw)
            rc = save_array(dir, "sample_context.npy", DM_F32, 3, s_sctx, sx);
        free(sv), free(sr), free(sx);
    }
    free(values), free(rows), free(counts), free(ctx);
    return rc;
}

/* "f32 2 x 6 x 7" */
static void shape_text(char *buf, size_t cap, dm_dtype dtype, int ndim, const int64_t *shape)
{
    int a = snprintf(buf, cap, "%s", dm_dtype_name(dtype));
    for (int i = 0; i < ndim && (size_t)a < cap; i++)
        a += snprintf(buf + a, cap - (size_t)a, "%s%lld", i ? " x " : " ", (long long)shape[i]);
}

/* dir/name as a tensor of exactly this dtype and shape, or DM_E_CORRUPT naming
 * the file. */
static int load_array(const char *dir, const char *name, dm_dtype dtype, int ndim, const int64_t *shape,
                      dm_tensor *out)
{
    char *path = dm_xasprintf("%s/%s", dir, name);
    int rc = dm_npy_load(path, out);
    if (!rc && (out->dtype != dtype || out->ndim != ndim || memcmp(out->shape, shape, (size_t)ndim * sizeof *shape))) {
        char want[96], got[96];
        shape_text(want, sizeof want, dtype, ndim, shape);
        shape_text(got, sizeof got, out->dtype, out->ndim, out->shape);
        rc = dm_failc(DM_E_CORRUPT, "%s: not a partial result of this node: %s expected, found %s", path, want, got);
        dm_tensor_free(out);
    }
    free(path);
    return rc;
}

/* A half-range a column can have: the fixed range, or a power of two >= 1. */
static int scale_ok(const topk *t, double s)
{
    int e;
    return t->range > 0 ? s == t->range : isfinite(s) && s >= 1 && frexp(s, &e) == 0.5;
}

static int topk_merge_partial(dm_node *n, const char *dir)
{
    topk *t = dm_node_state(n);
    int64_t ck = t->cols * t->k, cw = t->cw;
    int64_t s_heaps[3] = {2, t->cols, t->k}, s_counts[2] = {t->cols, 4}, s_hist[2] = {t->cols, FINE},
            s_scale[1] = {t->cols}, s_hctx[4] = {2, t->cols, t->k, cw};
    dm_tensor values = {0}, rows = {0}, counts = {0}, hist = {0}, scale = {0}, hctx = {0};
    int rc = load_array(dir, "heap_values.npy", DM_F32, 3, s_heaps, &values);
    if (!rc)
        rc = load_array(dir, "heap_rows.npy", DM_I64, 3, s_heaps, &rows);
    if (!rc)
        rc = load_array(dir, "counts.npy", DM_I64, 2, s_counts, &counts);
    if (!rc)
        rc = load_array(dir, "hist.npy", DM_I64, 2, s_hist, &hist);
    if (!rc)
        rc = load_array(dir, "scale.npy", DM_F64, 1, s_scale, &scale);
    if (!rc && cw)
        rc = load_array(dir, "heap_context.npy", DM_F32, 4, s_hctx, &hctx);
    const int64_t *cnt = counts.data;
    const double *sc = scale.data;
    for (int64_t j = 0; j < t->cols && !rc; j++) {
        if (cnt[4 * j] < 0 || cnt[4 * j] > t->k || cnt[4 * j + 1] < 0 || cnt[4 * j + 1] > t->k)
            rc = dm_failc(DM_E_CORRUPT, "%s/counts.npy: column %lld holds %lld and %lld heap entries, at most k = %lld "
                          "can be", dir, (long long)j, (long long)cnt[4 * j], (long long)cnt[4 * j + 1],
                          (long long)t->k);
        else if (!scale_ok(t, sc[j]))
            rc = dm_failc(DM_E_CORRUPT, "%s/scale.npy: column %lld has histogram range %g, not %s", dir, (long long)j,
                          sc[j], t->range > 0 ? "the node's hist_range" : "a power of two of at least 1");
    }
    for (int64_t j = 0; j < t->cols && !rc; j++) {
        const float *v = values.data;
        const int64_t *r = rows.data;
        for (int h = 0; h < 2; h++)
            for (int64_t i = 0; i < cnt[4 * j + h]; i++) {
                int64_t at = h * ck + j * t->k + i;
                entry e = {v[at], 0, r[at]};
                int32_t slot = h ? heap_push(t->bot + j * t->k, &t->nbot[j], t->k, e, -1)
                                 : heap_push(t->top + j * t->k, &t->ntop[j], t->k, e, 1);
                if (cw && slot >= 0)
                    memcpy((h ? t->cbot : t->ctop) + (j * t->k + slot) * cw, (const float *)hctx.data + at * cw,
                           (size_t)cw * sizeof(float));
            }
        t->under_over[2 * j] += cnt[4 * j + 2];
        t->under_over[2 * j + 1] += cnt[4 * j + 3];
        /* both histograms at the wider of the two ranges, then added */
        int64_t *mine = t->hist + j * FINE, theirs[FINE];
        memcpy(theirs, (const int64_t *)hist.data + j * FINE, sizeof theirs);
        for (double s = sc[j]; s < t->scale[j]; s *= 2)
            widen(theirs);
        while (t->scale[j] < sc[j]) {
            widen(mine);
            t->scale[j] *= 2;
        }
        for (int b = 0; b < FINE; b++)
            mine[b] += theirs[b];
    }
    dm_tensor_free(&values), dm_tensor_free(&rows), dm_tensor_free(&counts), dm_tensor_free(&hist);
    dm_tensor_free(&scale), dm_tensor_free(&hctx);
    if (!rc && t->m) {
        int64_t s_sample[2] = {t->cols, t->m}, s_sctx[3] = {t->cols, t->m, cw};
        dm_tensor sv = {0}, sr = {0}, sc = {0}, sx = {0};
        rc = load_array(dir, "sample_values.npy", DM_F32, 2, s_sample, &sv);
        if (!rc)
            rc = load_array(dir, "sample_rows.npy", DM_I64, 2, s_sample, &sr);
        if (!rc)
            rc = load_array(dir, "sample_counts.npy", DM_I64, 1, s_scale, &sc);
        if (!rc && cw)
            rc = load_array(dir, "sample_context.npy", DM_F32, 3, s_sctx, &sx);
        const int64_t *cn = sc.data;
        for (int64_t j = 0; j < t->cols && !rc; j++) {
            if (cn[j] < 0 || cn[j] > t->m) {
                rc = dm_failc(DM_E_CORRUPT, "%s/sample_counts.npy: column %lld holds %lld sampled rows, at most "
                              "random = %lld can be", dir, (long long)j, (long long)cn[j], (long long)t->m);
                break;
            }
            for (int64_t i = 0; i < cn[j]; i++) {
                int64_t at = j * t->m + i, row = ((const int64_t *)sr.data)[at];
                sample e = {sample_key(t->seed, j, row), ((const float *)sv.data)[at], 0, row};
                int32_t slot = sample_push(t->rnd + j * t->m, &t->nrnd[j], t->m, e);
                if (cw && slot >= 0)
                    memcpy(t->crnd + (j * t->m + slot) * cw, (const float *)sx.data + at * cw,
                           (size_t)cw * sizeof(float));
            }
        }
        dm_tensor_free(&sv), dm_tensor_free(&sr), dm_tensor_free(&sc), dm_tensor_free(&sx);
    }
    return rc;
}

static int by_value_desc(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    return x->value < y->value ? 1 : x->value > y->value ? -1 : (x->row > y->row) - (x->row < y->row);
}

static int by_value_asc(const void *a, const void *b) { return -by_value_desc(a, b); }

static int by_row(const void *a, const void *b)
{
    const sample *x = a, *y = b;
    return (x->row > y->row) - (x->row < y->row);
}

/* Bytes as a JSON-safe UTF-8 string: invalid sequences become U+FFFD. */
static json_t *json_text(const char *s, size_t len)
{
    char *out = dm_xmalloc(len * 3 + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = need > 0 && i + need <= len && !(c == 0);
        for (size_t j = 1; ok && j < need; j++)
            ok = ((unsigned char)s[i + j] >> 6) == 2;
        if (ok && need > 1) {
            json_t *probe = json_stringn(s + i, need); /* rejects overlongs and surrogates */
            ok = probe != NULL;
            json_decref(probe);
        }
        if (ok) {
            memcpy(out + o, s + i, need);
            o += need;
            i += need;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j;
}

/* The example's JSON for the product; the same example into the typed summary
 * b (top: among the largest) unless b is NULL. */
static json_t *example_json(dm_node *n, topk *t, const entry *e, const float *cv, dm_tokenizer *tok,
                            int32_t *window, dm_examples_builder *b, int top)
{
    json_t *x = json_object();
    json_object_set_new(x, "row", json_integer(e->row));
    json_object_set_new(x, "value", json_real(e->value));
    if (b && (!t->T || !tok))
        dm_examples_add(b, top, e->value, e->row, NULL, 0, NULL, 0, NULL, 0);
    if (!t->T)
        return x;
    int64_t w = e->row / t->T, pos = e->row % t->T, ctx = dm_param_int(n, "context");
    json_object_set_new(x, "window", json_integer(w));
    json_object_set_new(x, "position", json_integer(pos));
    if (dm_input_read_rows(n, IN_WINDOWS, w, 1, window)) {
        json_decref(x);
        return NULL;
    }
    int64_t lo = pos - ctx < 0 ? 0 : pos - ctx, hi = pos + ctx + 1 > t->T ? t->T : pos + ctx + 1;
    int32_t ids[4096];
    json_t *jids = json_array();
    for (int64_t i = lo; i < hi && i - lo < 4096; i++) {
        ids[i - lo] = window[i];
        json_array_append_new(jids, json_integer(ids[i - lo]));
    }
    json_object_set_new(x, "token_id", json_integer(window[pos]));
    json_object_set_new(x, "context_ids", jids);
    json_object_set_new(x, "context_start", json_integer(lo));
    /* cv[i] is the value at row - ctx + i: the context [lo, hi) starts at i = lo - pos + ctx */
    json_t *jv = json_array();
    for (int64_t i = lo; i < hi && i - lo < 4096; i++) {
        float v = cv[i - pos + ctx];
        json_array_append_new(jv, isfinite(v) ? json_real(v) : json_null());
    }
    json_object_set_new(x, "context_values", jv);
    if (tok) {
        size_t len;
        char *left = dm_tokenizer_decode(tok, ids, (size_t)(pos - lo), &len);
        json_t *jl = json_text(left ? left : "", left ? len : 0);
        free(left);
        char *mid = dm_tokenizer_decode(tok, ids + (pos - lo), 1, &len);
        json_t *jm = json_text(mid ? mid : "", mid ? len : 0);
        free(mid);
        char *right = dm_tokenizer_decode(tok, ids + (pos - lo) + 1, (size_t)(hi - pos - 1), &len);
        json_t *jr = json_text(right ? right : "", right ? len : 0);
        free(right);
        if (b)
            dm_examples_add(b, top, e->value, e->row, json_string_value(jl), json_string_length(jl),
                            json_string_value(jm), json_string_length(jm), json_string_value(jr),
                            json_string_length(jr));
        json_object_set_new(x, "left", jl);
        json_object_set_new(x, "token", jm);
        json_object_set_new(x, "right", jr);
    }
    return x;
}

/* The column's histogram in `bins` bins over its occupied span; also into b. */
static json_t *histogram_json(const topk *t, int64_t j, dm_examples_builder *b)
{
    const int64_t *h = t->hist + j * FINE;
    int64_t first = 0, last = FINE - 1;
    if (t->range <= 0) {
        while (first < FINE - 1 && !h[first])
            first++;
        while (last > first && !h[last])
            last--;
    }
    double w = 2 * t->scale[j] / FINE, lo = -t->scale[j] + (double)first * w, hi = -t->scale[j] + (double)(last + 1) * w;
    int64_t m = last - first + 1, bins = t->bins < m ? t->bins : m;
    json_t *counts = json_array();
    int64_t *out = dm_xcalloc((size_t)bins, sizeof *out);
    for (int64_t b = first; b <= last; b++)
        out[(b - first) * bins / m] += h[b];
    for (int64_t i = 0; i < bins; i++)
        json_array_append_new(counts, json_integer(out[i]));
    dm_examples_column_add(b, lo, hi, out, bins);
    free(out);
    json_t *o = json_object();
    json_object_set_new(o, "lo", json_real(lo));
    json_object_set_new(o, "hi", json_real(hi));
    json_object_set_new(o, "counts", counts);
    json_object_set_new(o, "below", json_integer(t->under_over[2 * j]));
    json_object_set_new(o, "above", json_integer(t->under_over[2 * j + 1]));
    return o;
}

/* The context values of the entry in slot `slot` of column j's pool (cap
 * slots), or NULL without windows. */
static const float *ctx_of(const topk *t, const float *pool, int64_t cap, int64_t j, int32_t slot)
{
    return t->cw ? pool + (j * cap + slot) * t->cw : NULL;
}

static int topk_finish(dm_node *n)
{
    topk *t = dm_node_state(n);
    const char *tokdir = dm_param_str(n, "tokenizer");
    dm_tokenizer *tok = NULL;
    if (*tokdir && t->T && !(tok = dm_tokenizer_load(tokdir)))
        return -1;
    int32_t *window = dm_xmalloc((size_t)(t->T > 0 ? t->T : 1) * sizeof *window);
    json_t *root = json_object(), *comps = json_array();
    json_object_set_new(root, "k", json_integer(t->k));
    json_object_set_new(root, "context", json_integer(dm_param_int(n, "context")));
    json_object_set_new(root, "skip_bos", json_boolean(t->skip_bos));
    json_object_set_new(root, "random", json_integer(t->m));
    json_object_set_new(root, "seed", json_integer((json_int_t)t->seed));
    dm_examples_builder b;
    dm_examples_begin(&b, t->k, tok != NULL);
    int rc = 0;
    for (int64_t j = 0; j < t->cols && !rc; j++) {
        entry *top = t->top + j * t->k, *bot = t->bot + j * t->k;
        qsort(top, (size_t)t->ntop[j], sizeof *top, by_value_desc);
        qsort(bot, (size_t)t->nbot[j], sizeof *bot, by_value_asc);
        json_t *c = json_object(), *jt = json_array(), *jb = json_array();
        json_object_set_new(c, "component", json_integer(j));
        json_t *hist = histogram_json(t, j, &b);
        for (int64_t i = 0; i < t->ntop[j] && !rc; i++) {
            json_t *x = example_json(n, t, &top[i], ctx_of(t, t->ctop, t->k, j, top[i].slot), tok, window, &b, 1);
            rc = x ? json_array_append_new(jt, x) : -1;
        }
        for (int64_t i = 0; i < t->nbot[j] && !rc; i++) {
            json_t *x = example_json(n, t, &bot[i], ctx_of(t, t->cbot, t->k, j, bot[i].slot), tok, window, &b, 0);
            rc = x ? json_array_append_new(jb, x) : -1;
        }
        json_t *jr = t->m ? json_array() : NULL;
        sample *rnd = t->rnd + j * t->m;
        if (t->m)
            qsort(rnd, (size_t)t->nrnd[j], sizeof *rnd, by_row);
        for (int64_t i = 0; t->m && i < t->nrnd[j] && !rc; i++) {
            entry e = {rnd[i].value, rnd[i].slot, rnd[i].row};
            json_t *x = example_json(n, t, &e, ctx_of(t, t->crnd, t->m, j, e.slot), tok, window, NULL, 0);
            rc = x ? json_array_append_new(jr, x) : -1;
        }
        json_object_set_new(c, "histogram", hist);
        json_object_set_new(c, "top", jt);
        json_object_set_new(c, "bottom", jb);
        if (jr)
            json_object_set_new(c, "random", jr);
        json_array_append_new(comps, c);
    }
    json_object_set_new(root, "components", comps);
    free(window);
    dm_tokenizer_free(tok);
    char *text = rc ? NULL : json_dumps(root, JSON_INDENT(1));
    json_decref(root);
    dm_tensor out;
    dm_examples_end(&b, &out);
    if (rc || !text) {
        free(text);
        dm_tensor_free(&out);
        return rc ? -1 : dm_failc(DM_E_INTERNAL, "cannot encode the examples as JSON");
    }
    size_t len = strlen(text);
    rc = dm_publish_text(n, dm_param_str(n, "file"), text, len);
    free(text);
    if (!rc)
        rc = dm_set_output(n, OUT_EXAMPLES, &out);
    dm_tensor_free(&out);
    return rc;
}

static void topk_close(dm_node *n)
{
    topk *t = dm_node_state(n);
    if (!t)
        return;
    free(t->top), free(t->bot), free(t->ntop), free(t->nbot), free(t->hist), free(t->scale), free(t->under_over);
    free(t->rnd), free(t->nrnd), free(t->keys);
    free(t->ctop), free(t->cbot), free(t->crnd), free(t->tail);
    free(t);
}

const dm_op dm_op_topk = {
    .name = "topk",
    .version = 4,
    .summary = "per column, the k largest and smallest rows and a random sample, with their token contexts",
    .params = topk_params,
    .inputs = topk_inputs,
    .outputs = topk_outputs,
    .infer = topk_infer,
    .state_bytes = topk_state_bytes,
    .open = topk_open,
    .consume = topk_consume,
    .finish = topk_finish,
    .close = topk_close,
    .shardable = 1,
    .save_partial = topk_save_partial,
    .merge_partial = topk_merge_partial,
};
