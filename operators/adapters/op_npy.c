/*
 * op_npy.c: the .npy source and sink.
 *
 * npy (source): a 2-D float32, float16, bfloat16 or float64 array in C order
 * (read as float32 rows), or, with `dtype: i32` or `i64`, an integer array read
 * as a stream of that dtype (token ids, row indices); of any size, read
 * through a memory map chunk by chunk (pages dropped behind the reader, so the
 * resident set stays at a few chunks). `shard`/`shards` select a contiguous
 * slice of rows so several processes can split one file; row0 stays the global
 * row index. seek() narrows it to any range of those rows (the engine's shards).
 *
 * npy_sink: streams rows of any count into a .npy (the header's row count is
 * written at the end), published to the run's output folder. Integer streams
 * are written as they are (int32, int64); `dtype` applies to f32 streams.
 * Shards: a shard's partial result is its rows as a .npy of their own,
 * segment.npy (written as the file would be, then moved into the shard's
 * folder); merge_partial appends each segment's bytes to the file, so after
 * the merges in shard order the file is byte for byte the unsharded one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "npy.h"
#include "op.h"

/* ---- source ----------------------------------------------------------- */

typedef struct {
    dm_npy_map *map;
    int64_t begin, end, next; /* rows of this shard */
    dm_dtype dtype;           /* of the stream: f32, i32 or i64 */
} npy_source;

static const dm_param_spec npy_params[] = {
    {"path", DM_P_PATH, NULL, "the .npy file (2-D float32, float16, bfloat16 or float64, C order)"},
    {"shard", DM_P_INT, "0", "which shard of the rows to read (0-based)"},
    {"shards", DM_P_INT, "1", "how many shards the rows are split into"},
    {"dtype", DM_P_STRING, "f32", "the stream's dtype: f32 (float files), i32 or i64 (integer files)"},
    {NULL},
};
static const dm_port_spec npy_outputs[] = {{"out", DM_PORT_STREAM}, {NULL}};

static int shard_range(const dm_node *n, int64_t rows, int64_t *begin, int64_t *end)
{
    int64_t r = dm_param_int(n, "shard"), s = dm_param_int(n, "shards");
    if (s < 1 || r < 0 || r >= s)
        return dm_fail("shard %lld of %lld: need 0 <= shard < shards", (long long)r, (long long)s);
    *begin = rows * r / s;
    *end = rows * (r + 1) / s;
    return 0;
}

static int is_int(dm_dtype t) { return t == DM_I32 || t == DM_I64 || t == DM_U16 || t == DM_U8; }

/* The stream dtype the `dtype` parameter asks for. */
static int stream_dtype(const dm_node *n, dm_dtype *out)
{
    const char *v = dm_param_str(n, "dtype");
    if (dm_dtype_parse(v, out) || (*out != DM_F32 && *out != DM_I32 && *out != DM_I64))
        return dm_fail("dtype must be f32, i32 or i64, not '%s'", v);
    return 0;
}

static int check_npy(const char *path, const dm_npy_header *h, dm_dtype want)
{
    if (h->ndim != 2)
        return dm_fail("%s: expected a 2-D array (rows x columns), found %d dimensions", path, h->ndim);
    if (want == DM_F32 && h->dtype != DM_F32 && h->dtype != DM_F16 && h->dtype != DM_BF16 && h->dtype != DM_F64)
        return dm_fail("%s: unsupported dtype %s (float32, float16, bfloat16 or float64 expected)", path,
                       dm_dtype_name(h->dtype));
    if (want != DM_F32 && !is_int(h->dtype))
        return dm_fail("%s: dtype %s: a stream of %s needs an integer array (int32, int64, uint16 or uint8)", path,
                       dm_dtype_name(h->dtype), dm_dtype_name(want));
    if (h->shape[1] < 1)
        return dm_fail("%s: the array has no columns", path);
    if (h->shape[0] < 1)
        return dm_fail("%s: the array has no rows", path);
    return 0;
}

static int npy_infer(dm_node *n)
{
    const char *path = dm_param_str(n, "path");
    dm_npy_map *m = dm_npy_open(path);
    if (!m)
        return -1;
    const dm_npy_header *h = dm_npy_hdr(m);
    int64_t b, e;
    dm_dtype want;
    int rc = stream_dtype(n, &want);
    if (!rc)
        rc = check_npy(path, h, want);
    if (!rc)
        rc = shard_range(n, h->shape[0], &b, &e);
    if (!rc) {
        dm_port_desc *o = dm_output_desc(n, 0);
        o->shape[0] = e - b;
        o->shape[1] = h->shape[1];
        o->dtype = want;
    }
    dm_npy_close(m);
    return rc;
}

static int npy_open(dm_node *n)
{
    npy_source *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    const char *path = dm_param_str(n, "path");
    if (stream_dtype(n, &s->dtype) || !(s->map = dm_npy_open(path)) || check_npy(path, dm_npy_hdr(s->map), s->dtype))
        return -1;
    if (shard_range(n, dm_npy_hdr(s->map)->shape[0], &s->begin, &s->end))
        return -1;
    s->next = s->begin;
    return 0;
}

/* Rows [s->next, s->next + rows) of an integer array as the stream's i32 or i64. */
static int read_int_rows(npy_source *s, const dm_node *n, int64_t rows, dm_chunk *out)
{
    const dm_npy_header *h = dm_npy_hdr(s->map);
    const unsigned char *p = (const unsigned char *)dm_npy_data(s->map);
    size_t isz = dm_dtype_size(h->dtype), cnt = (size_t)(rows * h->shape[1]);
    p += (size_t)(s->next * h->shape[1]) * isz;
    for (size_t i = 0; i < cnt; i++) {
        int64_t v;
        switch (h->dtype) {
        case DM_I32: { int32_t x; memcpy(&x, p + 4 * i, 4); v = x; break; }
        case DM_I64: memcpy(&v, p + 8 * i, 8); break;
        case DM_U16: { uint16_t x; memcpy(&x, p + 2 * i, 2); v = x; break; }
        default: v = p[i]; break;
        }
        if (s->dtype == DM_I64)
            out->i64[i] = v;
        else if (v < INT32_MIN || v > INT32_MAX)
            return dm_fail("%s: value %lld at row %lld does not fit dtype i32", dm_param_str(n, "path"),
                           (long long)v, (long long)(s->next + (int64_t)i / h->shape[1]));
        else
            out->i32[i] = (int32_t)v;
    }
    return 0;
}

static int npy_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    npy_source *s = dm_node_state(n);
    int64_t rows = s->end - s->next < max_rows ? s->end - s->next : max_rows;
    out->row0 = s->next;
    out->rows = rows;
    out->cols = dm_npy_hdr(s->map)->shape[1];
    if (s->dtype != DM_F32) {
        if (read_int_rows(s, n, rows, out))
            return -1;
    } else if (rows > 0 && dm_npy_read_rows_f32(s->map, s->next, rows, out->data)) {
        return -1;
    }
    s->next += rows;
    return 0;
}

/* Rows [row0, row0 + rows), numbered as produce() numbers them (within the
 * slice the shard and shards parameters cut). */
static int npy_seek(dm_node *n, int64_t row0, int64_t rows)
{
    npy_source *s = dm_node_state(n);
    row0 += s->begin; /* an offset from the first row this source makes */
    if (row0 < s->begin || rows < 0 || row0 > s->end || rows > s->end - row0)
        return dm_failc(DM_E_INTERNAL, "%s: seek to rows %lld..%lld, outside rows %lld..%lld of this source",
                        dm_param_str(n, "path"), (long long)row0, (long long)(row0 + rows - 1),
                        (long long)s->begin, (long long)(s->end - 1));
    s->next = row0;
    s->end = row0 + rows;
    return 0;
}

static void npy_close(dm_node *n)
{
    npy_source *s = dm_node_state(n);
    if (!s)
        return;
    dm_npy_close(s->map);
    free(s);
}

const dm_op dm_op_npy = {
    .name = "npy",
    .version = 1,
    .summary = "rows of a 2-D .npy file (float32/float16, or integers as i32/i64), memory-mapped",
    .params = npy_params,
    .outputs = npy_outputs,
    .infer = npy_infer,
    .open = npy_open,
    .produce = npy_produce,
    .close = npy_close,
    .shardable = 1,
    .seek = npy_seek,
};

/* ---- sink ------------------------------------------------------------- */

static const dm_param_spec sink_params[] = {
    {"file", DM_P_STRING, "", "file name in the output folder (default NODE.npy)"},
    {"dtype", DM_P_STRING, "f32", "f32 or f16 (for f32 streams; integer streams are written as they are)"},
    {NULL},
};
static const dm_port_spec sink_inputs[] = {{"x", DM_PORT_STREAM, .any_dtype = 1}, {NULL}};

typedef struct {
    dm_npy_writer *w;
    char *file;
} npy_sink;

static char *sink_file(const dm_node *n)
{
    const char *f = dm_param_str(n, "file");
    return *f ? dm_xstrdup(f) : dm_xasprintf("%s.npy", dm_node_name(n));
}

static int sink_infer(dm_node *n)
{
    const char *dt = dm_param_str(n, "dtype");
    if (strcmp(dt, "f32") && strcmp(dt, "f16"))
        return dm_fail("dtype must be f32 or f16, not '%s'", dt);
    /* checked here, before any work, so the message names the node and its line: the
     * file lands in the node's folder in the cache and then in --out */
    char *f = sink_file(n);
    size_t len = strlen(f);
    int bad = strchr(f, '/') != NULL || !strcmp(f, ".") || !strcmp(f, "..") || len <= 4 ||
              strcmp(f + len - 4, ".npy");
    free(f);
    if (bad)
        return dm_fail("file must be a plain file name ending in .npy (no '/'), such as \"sources.npy\", "
                       "not '%s'", dm_param_str(n, "file"));
    return 0;
}

static int sink_open(dm_node *n)
{
    npy_sink *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->file = sink_file(n);
    char *path = dm_xasprintf("%s/%s", dm_node_dir(n), s->file);
    const dm_port_desc *in = dm_input_desc(n, 0);
    dm_dtype t = in->dtype != DM_F32 ? in->dtype : strcmp(dm_param_str(n, "dtype"), "f16") ? DM_F32 : DM_F16;
    s->w = dm_npy_writer_open(path, t, in->shape[1]);
    free(path);
    return s->w ? 0 : -1;
}

static int sink_consume(dm_node *n, int port, const dm_chunk *c)
{
    npy_sink *s = dm_node_state(n);
    if (c->dtype != DM_F32)
        return dm_npy_writer_append(s->w, c->ptr, c->rows);
    return dm_npy_writer_append_f32(s->w, c->data, c->rows);
}

static int sink_finish(dm_node *n)
{
    npy_sink *s = dm_node_state(n);
    int rc = dm_npy_writer_commit(s->w);
    s->w = NULL;
    return rc ? rc : dm_publish(n, s->file);
}

#define SEGMENT_FILE "segment.npy"

static int sink_save_partial(dm_node *n, const char *dir)
{
    npy_sink *s = dm_node_state(n);
    int rc = dm_npy_writer_commit(s->w);
    s->w = NULL;
    if (rc)
        return -1;
    char *path = dm_xasprintf("%s/%s", dm_node_dir(n), s->file), *seg = dm_xasprintf("%s/" SEGMENT_FILE, dir);
    rc = dm_move_file(path, seg);
    free(path), free(seg);
    return rc;
}

static int sink_merge_partial(dm_node *n, const char *dir)
{
    npy_sink *s = dm_node_state(n);
    char *seg = dm_xasprintf("%s/" SEGMENT_FILE, dir);
    int rc = dm_npy_writer_append_npy(s->w, seg);
    free(seg);
    return rc;
}

static void sink_close(dm_node *n)
{
    npy_sink *s = dm_node_state(n);
    if (!s)
        return;
    dm_npy_writer_abort(s->w);
    free(s->file);
    free(s);
}

/* The disk for `rows` rows (the disk estimate, op.h): the file, and as much
 * again for the shards' segments, which stay in the shards' cache entries. */
static int64_t sink_disk_bytes(const dm_node *n, int64_t rows)
{
    const dm_port_desc *x = dm_input_desc(n, 0);
    int64_t size = x->dtype == DM_F32 && !strcmp(dm_param_str(n, "dtype"), "f16") ? 2 : (int64_t)dm_dtype_size(x->dtype);
    return 128 + 2 * rows * x->shape[1] * size;
}

const dm_op dm_op_npy_sink = {
    .name = "npy_sink",
    .version = 1,
    .summary = "writes a stream to a .npy file in the output folder",
    .params = sink_params,
    .inputs = sink_inputs,
    .outputs = (const dm_port_spec[]){{NULL}},
    .infer = sink_infer,
    .open = sink_open,
    .consume = sink_consume,
    .finish = sink_finish,
    .close = sink_close,
    .shardable = 1,
    .save_partial = sink_save_partial,
    .merge_partial = sink_merge_partial,
    .disk_bytes = sink_disk_bytes,
};
