/*
 * replay.c: reading a cached stream back.
 *
 * A node's stream output lives in the cache in one of two forms (node.json's
 * "outputs"): one spill in the node's entry (CACHE/<key>/<port>.spill), or, for a
 * node that ran in shards, one spill per shard in the shard entries, listed in
 * order as "segments": [{"key", "row0", "rows", "max_chunk_rows"}, ...]. A
 * dm_replay hides the difference: it yields the chunks of either form in row
 * order, all of them or only rows [row0, row0 + rows) (one shard of a later
 * group), and reads rows by index. Segments are opened one at a time, so a
 * stream of thousands of shards does not hold thousands of files open.
 *
 * Every chunk is checked against its checksum as it is read (spill.c); an entry
 * that cannot be read fails with DM_E_CORRUPT or DM_E_IO naming the file, and the
 * caller recomputes the producer (run.c).
 */
#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "spill.h"

typedef struct {
    char *dir; /* the entry folder holding the spill */
    int64_t row0, rows, max_chunk_rows;
    int64_t delta; /* row0 less the spill's own first row: a shard numbers rows of its own
                      (the SAE's feature pairs) from 0 */
} segment;

struct dm_replay {
    char *name; /* the port: the spill's name */
    segment *segs;
    int nsegs;
    int64_t cols;
    dm_dtype dtype;
    int64_t begin, end; /* the rows replayed: [begin, end) */
    int64_t max_chunk_rows;
    /* sequential position */
    int cur;                 /* segment being read */
    int64_t next_row;        /* next row to deliver */
    dm_spill_reader *reader; /* of segs[open_seg] */
    int open_seg;
    int whole;               /* reader is read chunk by chunk (the segment lies inside the range) */
    int segmented;           /* the stream lives in its shards' entries */
    const char *failed;      /* the shard entry of the segment that failed to read */
};

/* Notes which shard's entry a failure came from; returns -1. */
static int failed_in(dm_replay *r, int i)
{
    if (r->segmented && i >= 0 && i < r->nsegs)
        r->failed = r->segs[i].dir;
    return -1;
}

const char *dm_replay_failed_shard(const dm_replay *r) { return r ? r->failed : NULL; }

static int open_segment(dm_replay *r, int i)
{
    if (r->reader && r->open_seg == i)
        return 0;
    dm_spill_reader_close(r->reader);
    r->reader = dm_spill_reader_open(r->segs[i].dir, r->name);
    r->open_seg = r->reader ? i : -1;
    if (!r->reader)
        return -1;
    segment *s = &r->segs[i];
    if (dm_spill_rows(r->reader) != s->rows || (s->rows && dm_spill_row0(r->reader) + s->delta != s->row0) ||
        dm_spill_cols(r->reader) != r->cols || dm_spill_dtype(r->reader) != r->dtype) {
        dm_failc(DM_E_CORRUPT, "%s/%s.json: holds %lld rows of %lld %s values from row %lld; its node's entry "
                 "lists %lld rows of %lld %s values from row %lld", s->dir, r->name,
                 (long long)dm_spill_rows(r->reader), (long long)dm_spill_cols(r->reader),
                 dm_dtype_name(dm_spill_dtype(r->reader)), (long long)dm_spill_row0(r->reader), (long long)s->rows,
                 (long long)r->cols, dm_dtype_name(r->dtype), (long long)s->row0);
        dm_spill_reader_close(r->reader);
        r->reader = NULL;
        r->open_seg = -1;
        return -1;
    }
    return 0;
}

/* The segments of output `port` of entry `key` (node.json `entry`). */
static int list_segments(dm_replay *r, const dm_graph *g, const char *key, const json_t *entry)
{
    const json_t *segs = json_object_get(json_object_get(json_object_get(entry, "outputs"), r->name), "segments");
    char *dir = dm_cache_entry(g, key);
    if (!segs) { /* one spill in the entry itself: its manifest says the rest */
        r->segs = dm_xcalloc(1, sizeof *r->segs);
        r->nsegs = 1;
        r->segs[0].dir = dir;
        dm_spill_reader *sr = dm_spill_reader_open(dir, r->name);
        if (!sr)
            return -1;
        r->segs[0].row0 = dm_spill_row0(sr);
        r->segs[0].rows = dm_spill_rows(sr);
        r->segs[0].max_chunk_rows = dm_spill_max_chunk_rows(sr);
        r->cols = dm_spill_cols(sr);
        r->dtype = dm_spill_dtype(sr);
        r->reader = sr;
        r->open_seg = 0;
        return 0;
    }
    r->segmented = 1;
    size_t n = json_array_size(segs);
    json_int_t cols = json_integer_value(json_object_get(json_object_get(json_object_get(entry, "outputs"), r->name), "cols"));
    const char *dt = json_string_value(json_object_get(json_object_get(json_object_get(entry, "outputs"), r->name), "dtype"));
    if (!json_is_array(segs) || !n || cols <= 0 || !dt || dm_dtype_parse(dt, &r->dtype)) {
        dm_failc(DM_E_CORRUPT, "%s/node.json: output '%s': malformed segments", dir, r->name);
        free(dir);
        return -1;
    }
    free(dir);
    r->cols = cols;
    r->segs = dm_xcalloc(n, sizeof *r->segs);
    r->nsegs = (int)n;
    int64_t row = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(segs, i);
        const char *k = json_string_value(json_object_get(s, "key"));
        segment *sg = &r->segs[i];
        sg->row0 = json_integer_value(json_object_get(s, "row0"));
        sg->rows = json_integer_value(json_object_get(s, "rows"));
        sg->max_chunk_rows = json_integer_value(json_object_get(s, "max_chunk_rows"));
        sg->delta = sg->row0 - json_integer_value(json_object_get(s, "spill_row0"));
        if (!k || strlen(k) != 32 || sg->rows < 0 || sg->max_chunk_rows < 0 || (i && sg->rows && sg->row0 != row)) {
            char *d = dm_cache_entry(g, key);
            dm_failc(DM_E_CORRUPT, "%s/node.json: output '%s': malformed segment %zu", d, r->name, i);
            free(d);
            return -1;
        }
        if (sg->rows)
            row = sg->row0 + sg->rows;
        sg->dir = dm_cache_entry(g, k);
    }
    return 0;
}

dm_replay *dm_replay_open(const dm_graph *g, const char *key, const char *port, const json_t *entry, int64_t row0,
                          int64_t rows)
{
    dm_replay *r = dm_xcalloc(1, sizeof *r);
    r->name = dm_xstrdup(port);
    r->open_seg = -1;
    if (list_segments(r, g, key, entry)) {
        dm_replay_close(r);
        return NULL;
    }
    int64_t first = -1, last = 0;
    for (int i = 0; i < r->nsegs; i++) {
        if (!r->segs[i].rows)
            continue;
        if (first < 0)
            first = r->segs[i].row0;
        last = r->segs[i].row0 + r->segs[i].rows;
        if (r->segs[i].max_chunk_rows > r->max_chunk_rows)
            r->max_chunk_rows = r->segs[i].max_chunk_rows;
    }
    if (first < 0)
        first = last = 0;
    r->begin = first;
    r->end = last;
    if (rows >= 0) {
        row0 += first; /* an offset from the stream's first row */
        if (row0 < first || row0 + rows > last) {
            dm_failc(DM_E_SHAPE, "output '%s': rows %lld..%lld asked, the stream holds rows %lld..%lld", port,
                     (long long)row0, (long long)(row0 + rows), (long long)first, (long long)last);
            dm_replay_close(r);
            return NULL;
        }
        r->begin = row0;
        r->end = row0 + rows;
    }
    if (r->max_chunk_rows < 1)
        r->max_chunk_rows = 1;
    dm_replay_rewind(r);
    return r;
}

void dm_replay_close(dm_replay *r)
{
    if (!r)
        return;
    dm_spill_reader_close(r->reader);
    for (int i = 0; i < r->nsegs; i++)
        free(r->segs[i].dir);
    free(r->segs);
    free(r->name);
    free(r);
}

int64_t dm_replay_rows(const dm_replay *r) { return r->end - r->begin; }
int64_t dm_replay_row0(const dm_replay *r) { return r->begin; }
int64_t dm_replay_cols(const dm_replay *r) { return r->cols; }
dm_dtype dm_replay_dtype(const dm_replay *r) { return r->dtype; }
int64_t dm_replay_max_chunk_rows(const dm_replay *r) { return r->max_chunk_rows; }

int dm_replay_rewind(dm_replay *r)
{
    r->cur = 0;
    r->next_row = r->begin;
    r->whole = 0;
    return 0;
}

int dm_replay_next(dm_replay *r, dm_chunk *out)
{
    out->cols = r->cols;
    out->dtype = r->dtype;
    out->rows = 0;
    out->row0 = r->next_row;
    while (r->next_row < r->end && r->cur < r->nsegs) {
        segment *s = &r->segs[r->cur];
        if (!s->rows || s->row0 + s->rows <= r->next_row) {
            r->cur++;
            r->whole = 0;
            continue;
        }
        int starting = r->open_seg != r->cur || !r->whole;
        if (starting) {
            /* a segment inside the range is read chunk by chunk, with read-ahead;
             * the ends of a range by row (mmap) */
            if (open_segment(r, r->cur))
                return failed_in(r, r->cur);
            r->whole = s->row0 >= r->next_row && s->row0 + s->rows <= r->end && s->row0 == r->next_row;
            if (r->whole && dm_spill_rewind(r->reader))
                return failed_in(r, r->cur);
        }
        if (r->whole) {
            if (dm_spill_next(r->reader, out))
                return failed_in(r, r->cur);
            if (!out->rows) { /* the segment ended */
                r->cur++;
                r->whole = 0;
                continue;
            }
            out->row0 += s->delta;
            r->next_row = out->row0 + out->rows;
            return 0;
        }
        int64_t n = s->row0 + s->rows - r->next_row;
        if (n > r->end - r->next_row)
            n = r->end - r->next_row;
        if (n > r->max_chunk_rows)
            n = r->max_chunk_rows;
        if (dm_spill_read_rows(r->reader, r->next_row - s->delta, n, out->ptr))
            return failed_in(r, r->cur);
        out->row0 = r->next_row;
        out->rows = n;
        r->next_row += n;
        return 0;
    }
    out->row0 = r->next_row;
    return 0;
}

int dm_replay_read_rows(dm_replay *r, int64_t row0, int64_t rows, void *out)
{
    size_t row_bytes = (size_t)r->cols * dm_dtype_size(r->dtype);
    while (rows > 0) {
        int i = 0;
        while (i < r->nsegs && !(r->segs[i].rows && row0 >= r->segs[i].row0 && row0 < r->segs[i].row0 + r->segs[i].rows))
            i++;
        if (i == r->nsegs)
            return dm_failc(DM_E_SHAPE, "output '%s': row %lld is not in the stream (rows %lld..%lld)", r->name,
                            (long long)row0, (long long)r->begin, (long long)r->end);
        int64_t n = r->segs[i].row0 + r->segs[i].rows - row0;
        if (n > rows)
            n = rows;
        if (open_segment(r, i))
            return failed_in(r, i);
        r->whole = 0; /* the sequential position reopens its segment */
        if (dm_spill_read_rows(r->reader, row0 - r->segs[i].delta, n, out))
            return failed_in(r, i);
        out = (char *)out + (size_t)n * row_bytes;
        row0 += n;
        rows -= n;
    }
    return 0;
}

int dm_replay_segments(const dm_replay *r, int64_t **row0, int64_t **rows)
{
    *row0 = *rows = NULL;
    if (!r->segmented)
        return 0;
    *row0 = dm_xcalloc((size_t)r->nsegs, sizeof **row0);
    *rows = dm_xcalloc((size_t)r->nsegs, sizeof **rows);
    int64_t first = r->begin;
    for (int i = 0; i < r->nsegs; i++) {
        (*row0)[i] = r->segs[i].rows ? r->segs[i].row0 - first : (i ? (*row0)[i - 1] + (*rows)[i - 1] : 0);
        (*rows)[i] = r->segs[i].rows;
    }
    return r->nsegs;
}
