/*
 * spill.c: spill files, a stream's rows on disk, written behind and read ahead.
 *
 * Workload: a node's output is written once (chunk after chunk, a few MiB to a
 * few tens of MiB each, gigabytes in total) and replayed sequentially once per
 * pass of each consumer, sometimes read at random by row range. The disk should
 * be the bottleneck, so:
 *   - writing a chunk costs one conversion pass over the caller's rows, into one
 *     of DM_SPILL_NBUF write buffers, with the XXH64 checksum computed block by
 *     block while the block is still in cache; the buffer is then written at its
 *     offset with one large write, asynchronously through io_uring, and the call
 *     returns: the caller computes the next chunk while the kernel writes this
 *     one. Writeback of completed bytes is started every few MiB
 *     (sync_file_range), so the disk works during the run rather than in one
 *     long fsync at close, and gigabytes of dirty pages never pile up.
 *   - the data file is fsynced once, at close, then the manifest is written
 *     (temporary name, fsync, rename): a spill with a manifest is complete.
 *   - replay of codec none reads each chunk straight into the caller's buffer
 *     (f32) or through a 1 MiB staging piece (f16, bf16), hashing piece by piece
 *     while in cache: one copy from the page cache, no chunk-sized buffers, and
 *     the kernel's own sequential read-ahead (measured faster than announcing
 *     chunks ourselves; see dm_spill_next_plain).
 *   - replay of zstd reads the compressed bytes of the next DM_SPILL_AHEAD
 *     chunks into buffers through io_uring while the caller works on the
 *     current one; decompression needs the bytes in memory anyway.
 * Without io_uring (an old kernel, a seccomp profile that forbids it, a ring
 * that stops accepting work, or DMICA_NO_URING=1) the same code writes with
 * pwrite and reads with pread.
 *
 * Layout of NAME.spill: chunks back to back from offset 0, each either the raw
 * little-endian values (codec none: bytes == raw_bytes == rows*cols*size) or one
 * zstd frame of them. NAME.json (format "dmica-spill", version 1):
 *   {"format": "dmica-spill", "version": 1, "rows": R, "cols": C, "row0": R0,
 *    "dtype": "f16", "codec": "zstd", "bytes": B,
 *    "chunks": [{"row0", "rows", "offset", "bytes", "raw_bytes", "xxh64"}, ...]}
 * xxh64 is a hex string ("0x..."): JSON numbers lose 64-bit precision in most
 * readers. Chunks are contiguous in rows from the first chunk's row0 and in bytes
 * from 0; the reader checks all of that, and the data file's length, before it
 * reads a byte, and checks each chunk's XXH64 before decoding it.
 *
 * Memory: a writer holds up to DM_SPILL_NBUF chunks of stored bytes (plus one raw
 * chunk for zstd of f16/bf16); a reader of codec none 1 MiB, of zstd
 * DM_SPILL_AHEAD + 1 chunks of compressed bytes (plus one raw chunk for f16/bf16),
 * plus one decoded chunk once dm_spill_read_rows is used on a zstd spill.
 *
 * Errors: a failed write makes the writer refuse further chunks; close then
 * returns the first error and removes both files. Checksum and size errors name
 * the file, the chunk and its rows.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "spill.h"
#include "conv.h"
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define DM_SPILL_NBUF 4   /* write buffers: chunks in flight behind the caller */
#define DM_SPILL_AHEAD 2  /* replay: chunks read ahead of the one being delivered */
#define DM_SPILL_RBUF (DM_SPILL_AHEAD + 1)
#define DM_SPILL_VERSION 1
#define DM_SPILL_ZSTD_LEVEL 1
/* Values converted and hashed per step: 64 KiB of float32, well inside L2. */
#define DM_SPILL_BLOCK ((size_t)16384)

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

int dm_codec_parse(const char *s, dm_codec *out)
{
    if (!strcmp(s, "none"))
        *out = DM_CODEC_NONE;
    else if (!strcmp(s, "zstd"))
        *out = DM_CODEC_ZSTD;
    else
        return dm_fail("unknown spill codec '%s' (none, zstd)", s);
    return 0;
}

const char *dm_codec_name(dm_codec c)
{
    return c == DM_CODEC_NONE ? "none" : c == DM_CODEC_ZSTD ? "zstd" : "?";
}

typedef struct {
    int64_t row0, rows;
    int64_t offset, bytes; /* stored bytes in the data file */
    int64_t raw_bytes;     /* rows x cols x dtype size */
    uint64_t xxh64;        /* of the stored bytes */
} dm_spill_chunk;

/* A buffer and the transfer (write or read) it takes part in. */
typedef struct {
    unsigned char *data;
    size_t cap;
    size_t len;   /* bytes to transfer */
    size_t done;  /* bytes transferred so far (short transfers are resubmitted) */
    int64_t off;  /* file offset of data[0] */
    int busy;     /* submitted and not yet complete */
    int64_t chunk; /* reader: which chunk it holds, -1 none */
} dm_spill_buf;

static int dm_spill_uring_wanted(void)
{
    const char *s = getenv("DMICA_NO_URING");
    return !(s && *s && strcmp(s, "0"));
}

/* Grows b to hold n bytes (contents not kept). Page alignment lets the kernel
 * copy whole pages. */
static void dm_spill_buf_reserve(dm_spill_buf *b, size_t n)
{
    if (b->cap >= n)
        return;
    free(b->data);
    void *p = NULL;
    size_t cap = (n + 4095) & ~(size_t)4095;
    if (posix_memalign(&p, 4096, cap))
        dm_oom(cap, "a spill buffer");
    b->data = p;
    b->cap = cap;
}

static void dm_spill_submit(struct io_uring *ring, dm_spill_buf *b, int idx, int fd, int write)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    /* The ring has more entries than there are buffers, so a slot is always free;
     * submitting after each prep keeps it that way. */
    if (write)
        io_uring_prep_write(sqe, fd, b->data + b->done, (unsigned)(b->len - b->done),
                            (uint64_t)(b->off + (int64_t)b->done));
    else
        io_uring_prep_read(sqe, fd, b->data + b->done, (unsigned)(b->len - b->done),
                           (uint64_t)(b->off + (int64_t)b->done));
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
    b->busy = 1;
}

/* A single io_uring transfer is at most this long (Linux caps one read or write
 * near 2 GiB); longer buffers complete in several short transfers, exactly as
 * when the kernel returns a short count. Tests set DMICA_SPILL_MAX_IO to a few
 * KiB to run that path on small spills. */
#define DM_SPILL_MAX_IO ((size_t)1 << 30)

static size_t dm_spill_max_io(void)
{
    const char *s = getenv("DMICA_SPILL_MAX_IO");
    long long v = s ? atoll(s) : 0;
    return v > 0 && (size_t)v < DM_SPILL_MAX_IO ? (size_t)v : DM_SPILL_MAX_IO;
}

static void dm_spill_submit_capped(struct io_uring *ring, dm_spill_buf *b, int idx, int fd,
                                   int write)
{
    size_t len = b->len, max = dm_spill_max_io();
    if (b->len - b->done > max)
        b->len = b->done + max;
    dm_spill_submit(ring, b, idx, fd, write);
    b->len = len;
}

/*
 * Takes one completion from ring (waiting for it unless nowait) and accounts it
 * to its buffer: a short transfer is resubmitted, an error or end of file is
 * reported with the file and offset. Returns 1 (a transfer progressed), 0
 * (nowait and nothing completed) or -1 (a transfer failed; *broken, when given,
 * is set to 1 if the ring itself failed, so nothing more will complete).
 * *idx_out gets the buffer.
 */
static int dm_spill_reap_one(struct io_uring *ring, dm_spill_buf *bufs, int fd, int write,
                             const char *path, int *idx_out, int nowait, int *broken)
{
    struct io_uring_cqe *cqe;
    int rc;
    do
        rc = nowait ? io_uring_peek_cqe(ring, &cqe) : io_uring_wait_cqe(ring, &cqe);
    while (rc == -EINTR);
    if (nowait && rc == -EAGAIN)
        return 0;
    if (rc < 0) {
        if (broken)
            *broken = 1;
        return dm_failc(DM_E_IO, "%s: waiting for %s: %s", path, write ? "a write" : "a read", strerror(-rc));
    }
    int idx = (int)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    dm_spill_buf *b = &bufs[idx];
    *idx_out = idx;
    int64_t at = b->off + (int64_t)b->done;
    if (res > 0)
        b->done += (size_t)res;
    if (res < 0 && res != -EINTR && res != -EAGAIN) {
        b->busy = 0;
        b->len = b->done; /* nothing more will happen to this buffer */
        return dm_failc(DM_E_IO, "%s: %s failed at offset %" PRId64 ": %s", path, write ? "write" : "read",
                        at, strerror(-res));
    }
    if (res == 0) {
        b->busy = 0;
        b->len = b->done;
        return write ? dm_failc(DM_E_IO, "%s: write failed at offset %" PRId64 ": the system wrote nothing",
                                path, at)
                     : dm_failc(DM_E_CORRUPT, "%s: unexpected end of file at offset %" PRId64
                                " (the file shrank while being read)", path, at);
    }
    if (b->done == b->len) {
        b->busy = 0;
        return 1;
    }
    /* A short transfer (or EINTR/EAGAIN): queue the rest. */
    dm_spill_submit_capped(ring, b, idx, fd, write);
    int rc2 = io_uring_submit(ring);
    if (rc2 < 0) {
        b->busy = 0;
        b->len = b->done;
        return dm_failc(DM_E_IO, "%s: cannot submit the rest of a %s at offset %" PRId64 ": %s", path,
                        write ? "write" : "read", b->off + (int64_t)b->done, strerror(-rc2));
    }
    return 1;
}

/* Waits for one completion: 0 or -1 (and *broken) as above. */
static int dm_spill_reap(struct io_uring *ring, dm_spill_buf *bufs, int fd, int write,
                         const char *path, int *idx_out, int *broken)
{
    int rc = dm_spill_reap_one(ring, bufs, fd, write, path, idx_out, 0, broken);
    return rc > 0 ? 0 : rc;
}

/* Waits until no buffer of bufs[0..n) is in flight; the first error is returned
 * (-1), the transfers it concerns are abandoned. */
static int dm_spill_drain_ring(struct io_uring *ring, dm_spill_buf *bufs, int n, int fd, int write,
                               const char *path)
{
    int rc = 0;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < n; i++)
            busy |= bufs[i].busy;
        if (!busy)
            return rc;
        int idx, broken = 0, got = dm_spill_reap(ring, bufs, fd, write, path, &idx, &broken);
        if (got < 0 && rc == 0)
            rc = -1;
        if (broken) { /* stop waiting for it */
            for (int i = 0; i < n; i++)
                bufs[i].busy = 0;
            return -1;
        }
    }
}

static int dm_spill_checksum_error(const char *path, int64_t ci, const dm_spill_chunk *c,
                                   uint64_t computed)
{
    return dm_failc(DM_E_CORRUPT, "%s: chunk %" PRId64 " (rows %" PRId64 "..%" PRId64 "): checksum mismatch "
                    "(stored 0x%016" PRIx64 ", computed 0x%016" PRIx64 "): the spill is corrupt",
                    path, ci, c->row0, c->row0 + c->rows - 1, c->xxh64, computed);
}

/* A stream's values in memory are f32, i32 or i64. A spill of an f32 stream
 * may store them as f16 or bf16 (converted when written and read); every other
 * dtype is stored exactly as it is in memory. */
static int dm_spill_converts(dm_dtype stored) { return stored == DM_F16 || stored == DM_BF16; }
static dm_dtype dm_spill_mem_dtype(dm_dtype stored) { return dm_spill_converts(stored) ? DM_F32 : stored; }
static int dm_spill_storable(dm_dtype t)
{
    return t == DM_F32 || t == DM_F16 || t == DM_BF16 || t == DM_I32 || t == DM_I64;
}

/* n values from memory (src) to their stored form (dst), and back. */
static void dm_spill_store(dm_dtype stored, const void *src, void *dst, size_t n)
{
    if (dm_spill_converts(stored))
        dm_conv_from_f32(stored, src, dst, n);
    else
        memcpy(dst, src, n * dm_dtype_size(stored));
}

static void dm_spill_load(dm_dtype stored, const void *src, void *dst, size_t n)
{
    if (dm_spill_converts(stored))
        dm_conv_to_f32(stored, src, dst, n);
    else
        memcpy(dst, src, n * dm_dtype_size(stored));
}

/* ---- writer ------------------------------------------------------------- */

struct dm_spill_writer {
    char *data_path, *manifest_path;
    int fd;
    int64_t cols;
    dm_dtype stored;
    dm_codec codec;
    int64_t row0;   /* first row (the first chunk's row0) */
    int64_t rows;   /* rows written so far */
    int64_t offset; /* stored bytes so far */
    dm_spill_chunk *chunks;
    int64_t nchunks, chunks_cap;
    dm_spill_buf buf[DM_SPILL_NBUF];
    int64_t flushed; /* writeback was started for bytes below this offset */
    int uring; /* 1: writes go through ring */
    struct io_uring ring;
    ZSTD_CCtx *cctx;
    void *raw; /* zstd of f16/bf16: the converted chunk before compression */
    size_t raw_cap;
    XXH64_state_t *hash;
    char *error; /* the first failure, repeated by close */
    dm_errc error_code;
};

static int dm_spill_writer_fail(dm_spill_writer *w)
{
    if (!w->error) {
        w->error = dm_xstrdup(dm_error());
        w->error_code = dm_error_code();
    }
    return -1;
}

dm_spill_writer *dm_spill_writer_open(const char *dir, const char *name, int64_t cols,
                                      dm_dtype stored, dm_codec codec)
{
    if (!dm_spill_storable(stored)) {
        dm_failc(DM_E_INTERNAL, "%s/%s.spill: spills store f32, f16, bf16, i32 or i64, not %s", dir, name,
                 dm_dtype_name(stored));
        return NULL;
    }
    if (codec != DM_CODEC_NONE && codec != DM_CODEC_ZSTD) {
        dm_failc(DM_E_INTERNAL, "%s/%s.spill: unknown codec %d", dir, name, (int)codec);
        return NULL;
    }
    if (cols <= 0) {
        dm_failc(DM_E_SHAPE, "%s/%s.spill: a spill needs at least one column (cols %" PRId64 ")", dir, name, cols);
        return NULL;
    }
    if (dm_mkdir_p(dir) < 0)
        return NULL;
    dm_spill_writer *w = dm_xcalloc(1, sizeof *w);
    w->data_path = dm_xasprintf("%s/%s.spill", dir, name);
    w->manifest_path = dm_xasprintf("%s/%s.json", dir, name);
    w->cols = cols;
    w->stored = stored;
    w->codec = codec;
    w->fd = -1;
    /* A manifest left by an earlier spill of the same name must not vouch for
     * the data about to be written. */
    if (unlink(w->manifest_path) < 0 && errno != ENOENT) {
        dm_failc(DM_E_IO, "%s: cannot remove the old manifest: %s", w->manifest_path, strerror(errno));
        goto fail;
    }
    w->fd = open(w->data_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot create: %s", w->data_path, strerror(errno));
        goto fail;
    }
    w->hash = XXH64_createState();
    if (codec == DM_CODEC_ZSTD)
        w->cctx = ZSTD_createCCtx();
    if (!w->hash || (codec == DM_CODEC_ZSTD && !w->cctx)) {
        dm_failc(DM_E_NOMEM, "%s: out of memory for the checksum or compression state", w->data_path);
        goto fail;
    }
    w->uring = dm_spill_uring_wanted() && io_uring_queue_init(2 * DM_SPILL_NBUF, &w->ring, 0) == 0;
    return w;
fail:
    dm_spill_writer_abort(w);
    return NULL;
}

/* Start writeback when this many completed bytes are dirty (see below). */
#define DM_SPILL_FLUSH_BYTES ((int64_t)8 << 20)

/*
 * Starts writeback of the bytes whose writes have completed, without waiting for
 * it (sync_file_range WRITE; the "bytes_per_sync" of RocksDB). The disk then
 * works while we produce, instead of gigabytes of dirty pages piling up for the
 * kernel to throttle and for the fsync at close to flush in one go.
 */
static void dm_spill_start_writeback(dm_spill_writer *w)
{
    int64_t done = w->offset;
    for (int i = 0; i < DM_SPILL_NBUF; i++)
        if (w->buf[i].busy && w->buf[i].off < done)
            done = w->buf[i].off;
    if (done - w->flushed >= DM_SPILL_FLUSH_BYTES) {
        sync_file_range(w->fd, w->flushed, done - w->flushed, SYNC_FILE_RANGE_WRITE);
        w->flushed = done;
    }
}

static int dm_spill_writer_drain(dm_spill_writer *w);

/* Converts c into b as the stored dtype and codec; *sum gets the checksum of
 * the stored bytes. 0 or -1. */
static int dm_spill_encode(dm_spill_writer *w, const dm_chunk *c, dm_spill_buf *b, uint64_t *sum)
{
    size_t n = (size_t)c->rows * (size_t)c->cols, isz = dm_dtype_size(w->stored);
    size_t raw = n * isz, msz = dm_dtype_size(dm_spill_mem_dtype(w->stored));
    if (w->codec == DM_CODEC_NONE) {
        dm_spill_buf_reserve(b, raw);
        XXH64_reset(w->hash, 0);
        for (size_t i = 0; i < n; i += DM_SPILL_BLOCK) {
            size_t k = n - i < DM_SPILL_BLOCK ? n - i : DM_SPILL_BLOCK;
            dm_spill_store(w->stored, (const char *)c->ptr + i * msz, b->data + i * isz, k);
            XXH64_update(w->hash, b->data + i * isz, k * isz);
        }
        b->len = raw;
        *sum = XXH64_digest(w->hash);
        return 0;
    }
    const void *src = c->ptr;
    if (dm_spill_converts(w->stored)) {
        if (w->raw_cap < raw) {
            free(w->raw);
            w->raw = dm_xmalloc_aligned(raw);
            w->raw_cap = raw;
        }
        dm_spill_store(w->stored, c->ptr, w->raw, n);
        src = w->raw;
    }
    size_t bound = ZSTD_compressBound(raw);
    dm_spill_buf_reserve(b, bound);
    size_t z = ZSTD_compressCCtx(w->cctx, b->data, b->cap, src, raw, DM_SPILL_ZSTD_LEVEL);
    if (ZSTD_isError(z)) /* not expected with a compressBound-sized buffer */
        return dm_failc(DM_E_INTERNAL, "%s: zstd: %s", w->data_path, ZSTD_getErrorName(z));
    b->len = z;
    *sum = XXH64(b->data, z, 0);
    return 0;
}

int dm_spill_write(dm_spill_writer *w, const dm_chunk *c)
{
    if (w->error)
        return dm_failc(w->error_code, "%s: not written: an earlier write failed (%s)", w->data_path, w->error);
    if (c->cols != w->cols) {
        dm_failc(DM_E_SHAPE, "%s: chunk has %" PRId64 " columns, the spill %" PRId64, w->data_path, c->cols,
                 w->cols);
        return dm_spill_writer_fail(w);
    }
    if (c->rows < 0) {
        dm_failc(DM_E_SHAPE, "%s: chunk with negative row count %" PRId64, w->data_path, c->rows);
        return dm_spill_writer_fail(w);
    }
    if (c->dtype != dm_spill_mem_dtype(w->stored)) {
        dm_failc(DM_E_SHAPE, "%s: a chunk of %s values, but the spill stores a stream of %s", w->data_path,
                 dm_dtype_name(c->dtype), dm_dtype_name(dm_spill_mem_dtype(w->stored)));
        return dm_spill_writer_fail(w);
    }
    if (c->rows == 0)
        return 0;
    if (w->nchunks == 0)
        w->row0 = c->row0;
    else if (c->row0 != w->row0 + w->rows) {
        dm_failc(DM_E_SHAPE, "%s: chunk starts at row %" PRId64 ", expected %" PRId64 " (chunks must arrive "
                 "in row order)", w->data_path, c->row0, w->row0 + w->rows);
        return dm_spill_writer_fail(w);
    }

    /* A free buffer: with io_uring, take what has completed, then wait for a
     * write if all buffers are still busy. */
    int idx = 0;
    if (w->uring) {
        int any, got;
        while ((got = dm_spill_reap_one(&w->ring, w->buf, w->fd, 1, w->data_path, &any, 1, NULL)) > 0)
            ;
        if (got < 0)
            return dm_spill_writer_fail(w);
        for (;;) {
            for (idx = 0; idx < DM_SPILL_NBUF && w->buf[idx].busy; idx++)
                ;
            if (idx < DM_SPILL_NBUF)
                break;
            if (dm_spill_reap(&w->ring, w->buf, w->fd, 1, w->data_path, &any, NULL) < 0)
                return dm_spill_writer_fail(w);
        }
    }
    dm_spill_buf *b = &w->buf[idx];
    uint64_t sum = 0;
    if (dm_spill_encode(w, c, b, &sum) < 0)
        return dm_spill_writer_fail(w);
    b->off = w->offset;
    b->done = 0;

    if (w->uring) {
        if (dm_fault_check(b->len, w->data_path) < 0)
            return dm_spill_writer_fail(w);
        dm_spill_submit_capped(&w->ring, b, idx, w->fd, 1);
        int rc = io_uring_submit(&w->ring);
        if (rc < 0) {
            /* The ring refuses work: finish what it holds, then go on with
             * pwrite (this buffer included). */
            b->busy = 0;
            dm_warn("%s: io_uring submission failed (%s); writing with pwrite from here on",
                    w->data_path, strerror(-rc));
            if (dm_spill_writer_drain(w) < 0)
                return -1;
            io_uring_queue_exit(&w->ring);
            w->uring = 0;
        }
    }
    if (!w->uring && dm_pwrite_all(w->fd, b->data, b->len, b->off, w->data_path) < 0)
        return dm_spill_writer_fail(w);

    if (w->nchunks == w->chunks_cap) {
        w->chunks_cap = w->chunks_cap ? 2 * w->chunks_cap : 64;
        w->chunks = dm_xrealloc(w->chunks, (size_t)w->chunks_cap * sizeof *w->chunks);
    }
    w->chunks[w->nchunks++] = (dm_spill_chunk){
        .row0 = c->row0, .rows = c->rows, .offset = w->offset, .bytes = (int64_t)b->len,
        .raw_bytes = c->rows * c->cols * (int64_t)dm_dtype_size(w->stored), .xxh64 = sum};
    w->offset += (int64_t)b->len;
    w->rows += c->rows;
    dm_spill_start_writeback(w);
    return 0;
}

/* Waits for every write in flight; the first error is kept (and returned). */
static int dm_spill_writer_drain(dm_spill_writer *w)
{
    if (!w->uring)
        return 0;
    if (dm_spill_drain_ring(&w->ring, w->buf, DM_SPILL_NBUF, w->fd, 1, w->data_path) < 0)
        return dm_spill_writer_fail(w);
    return 0;
}

static void dm_spill_writer_free(dm_spill_writer *w)
{
    dm_spill_writer_drain(w);
    if (w->uring)
        io_uring_queue_exit(&w->ring);
    if (w->fd >= 0)
        close(w->fd);
    for (int i = 0; i < DM_SPILL_NBUF; i++)
        free(w->buf[i].data);
    ZSTD_freeCCtx(w->cctx);
    XXH64_freeState(w->hash);
    free(w->raw);
    free(w->chunks);
    free(w->data_path);
    free(w->manifest_path);
    free(w->error);
    free(w);
}

static char *dm_spill_manifest_text(const dm_spill_writer *w)
{
    json_t *root = json_object(), *chunks = json_array();
    json_object_set_new(root, "format", json_string("dmica-spill"));
    json_object_set_new(root, "version", json_integer(DM_SPILL_VERSION));
    json_object_set_new(root, "rows", json_integer(w->rows));
    json_object_set_new(root, "cols", json_integer(w->cols));
    json_object_set_new(root, "row0", json_integer(w->row0));
    json_object_set_new(root, "dtype", json_string(dm_dtype_name(w->stored)));
    json_object_set_new(root, "codec", json_string(dm_codec_name(w->codec)));
    json_object_set_new(root, "bytes", json_integer(w->offset));
    for (int64_t i = 0; i < w->nchunks; i++) {
        const dm_spill_chunk *c = &w->chunks[i];
        char hex[24];
        snprintf(hex, sizeof hex, "0x%016" PRIx64, c->xxh64);
        json_t *o = json_object();
        json_object_set_new(o, "row0", json_integer(c->row0));
        json_object_set_new(o, "rows", json_integer(c->rows));
        json_object_set_new(o, "offset", json_integer(c->offset));
        json_object_set_new(o, "bytes", json_integer(c->bytes));
        json_object_set_new(o, "raw_bytes", json_integer(c->raw_bytes));
        json_object_set_new(o, "xxh64", json_string(hex));
        json_array_append_new(chunks, o);
    }
    json_object_set_new(root, "chunks", chunks);
    /* Indented for people debugging a spill; small next to the data either way. */
    char *text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(1));
    json_decref(root);
    if (!text)
        dm_oom(0, "a spill manifest");
    return text;
}

int dm_spill_writer_close(dm_spill_writer *w)
{
    if (!w)
        return dm_failc(DM_E_INTERNAL, "spill: close of a writer that failed to open");
    dm_spill_writer_drain(w); /* a failure is recorded in w->error */
    /* Data first, durably; only then the manifest that declares it complete. */
    if (!w->error && dm_fs_durable() && fsync(w->fd) < 0) {
        dm_failc(DM_E_IO, "%s: fsync failed: %s", w->data_path, strerror(errno));
        dm_spill_writer_fail(w);
    }
    if (!w->error) {
        int fd = w->fd;
        w->fd = -1;
        if (close(fd) < 0) {
            dm_failc(DM_E_IO, "%s: close failed: %s", w->data_path, strerror(errno));
            dm_spill_writer_fail(w);
        }
    }
    if (!w->error) {
        char *text = dm_spill_manifest_text(w);
        size_t len = strlen(text);
        text[len++] = '\n'; /* replaces the NUL; the length is explicit */
        if (dm_write_file_atomic(w->manifest_path, text, len) < 0)
            dm_spill_writer_fail(w);
        free(text);
    }
    if (w->error) {
        dm_failc(w->error_code, "%s", w->error);
        unlink(w->data_path);
        unlink(w->manifest_path);
        dm_spill_writer_free(w);
        return -1;
    }
    dm_spill_writer_free(w);
    return 0;
}

void dm_spill_writer_abort(dm_spill_writer *w)
{
    if (!w)
        return;
    dm_spill_writer_drain(w);
    unlink(w->data_path);
    unlink(w->manifest_path);
    dm_spill_writer_free(w);
}

int64_t dm_spill_writer_bytes(const dm_spill_writer *w) { return w->offset; }

/* ---- manifest ----------------------------------------------------------- */

struct dm_spill_reader {
    char *data_path, *manifest_path;
    int fd;
    int64_t rows, cols, row0;
    dm_dtype stored;
    dm_codec codec;
    int64_t bytes; /* data file length */
    dm_spill_chunk *chunks;
    int64_t nchunks, max_chunk_rows, max_chunk_bytes;

    /* replay */
    int uring;
    struct io_uring ring;
    dm_spill_buf buf[DM_SPILL_RBUF];
    int64_t next_chunk;  /* the chunk the next dm_spill_next delivers */
    int64_t next_submit; /* zstd: the first chunk not yet being read */
    unsigned char *stage; /* codec none, f16/bf16: one piece of stored bytes */
    int failed;          /* replay stopped by an error until rewound */
    ZSTD_DCtx *dctx;
    void *raw; /* zstd of f16/bf16: the decompressed chunk */
    size_t raw_cap;
    XXH64_state_t *hash;

    /* random access */
    unsigned char *map;
    uint8_t *verified; /* per chunk: checksum already checked */
    void *cache;       /* zstd: the last decoded chunk */
    int64_t cached_chunk;
};

static int dm_json_int(json_t *o, const char *key, int64_t *out, const char *path, int64_t ci)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        if (ci >= 0)
            return dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 ": %s key '%s'", path, ci,
                            v ? "non-integer or negative" : "missing", key);
        return dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: %s key '%s'", path,
                        v ? "non-integer or negative" : "missing", key);
    }
    *out = (int64_t)json_integer_value(v);
    return 0;
}

static const char *dm_json_str(json_t *o, const char *key, const char *path, int64_t ci)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        return json_string_value(v);
    if (ci >= 0)
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 ": %s key '%s'", path, ci,
                 v ? "non-string" : "missing", key);
    else
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: %s key '%s'", path, v ? "non-string" : "missing", key);
    return NULL;
}

/* Reads and cross-checks the manifest into r. */
static int dm_spill_load_manifest(dm_spill_reader *r)
{
    const char *mp = r->manifest_path;
    if (!dm_file_exists(mp))
        return dm_failc(DM_E_CORRUPT, "%s: spill manifest missing: the spill is incomplete (its writer did not "
                        "finish) or was removed", mp);
    size_t len;
    char *text = dm_read_file(mp, &len);
    if (!text)
        return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!root)
        return dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: %s (line %d, column %d)", mp, jerr.text,
                        jerr.line, jerr.column);
    int rc = -1;
    int64_t version, total_bytes;
    const char *format = dm_json_str(root, "format", mp, -1), *dtype, *codec;
    if (!format)
        goto end;
    if (strcmp(format, "dmica-spill")) {
        dm_failc(DM_E_CORRUPT, "%s: not a spill manifest (format '%s')", mp, format);
        goto end;
    }
    if (dm_json_int(root, "version", &version, mp, -1) < 0)
        goto end;
    if (version != DM_SPILL_VERSION) {
        dm_failc(DM_E_CORRUPT, "%s: spill format version %" PRId64 " is not supported (this dmica reads %d)", mp,
                 version, DM_SPILL_VERSION);
        goto end;
    }
    if (dm_json_int(root, "rows", &r->rows, mp, -1) < 0 ||
        dm_json_int(root, "cols", &r->cols, mp, -1) < 0 ||
        dm_json_int(root, "row0", &r->row0, mp, -1) < 0 ||
        dm_json_int(root, "bytes", &total_bytes, mp, -1) < 0 ||
        !(dtype = dm_json_str(root, "dtype", mp, -1)) || !(codec = dm_json_str(root, "codec", mp, -1)))
        goto end;
    if (dm_dtype_parse(dtype, &r->stored) < 0 || !dm_spill_storable(r->stored)) {
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: dtype '%s' (f32, f16, bf16, i32 or i64 expected)", mp,
                 dtype);
        goto end;
    }
    if (dm_codec_parse(codec, &r->codec) < 0) {
        dm_fail_prefix("%s: malformed spill manifest", mp);
        goto end;
    }
    if (r->cols <= 0) {
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: cols %" PRId64, mp, r->cols);
        goto end;
    }
    json_t *chunks = json_object_get(root, "chunks");
    if (!json_is_array(chunks)) {
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: %s key 'chunks'", mp, chunks ? "non-array" : "missing");
        goto end;
    }
    r->nchunks = (int64_t)json_array_size(chunks);
    r->chunks = dm_xcalloc((size_t)r->nchunks + 1, sizeof *r->chunks);
    int64_t row = r->row0, off = 0, isz = (int64_t)dm_dtype_size(r->stored);
    for (int64_t i = 0; i < r->nchunks; i++) {
        json_t *o = json_array_get(chunks, (size_t)i);
        dm_spill_chunk *c = &r->chunks[i];
        const char *hex;
        if (!json_is_object(o)) {
            dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 " is not an object", mp, i);
            goto end;
        }
        if (dm_json_int(o, "row0", &c->row0, mp, i) < 0 || dm_json_int(o, "rows", &c->rows, mp, i) < 0 ||
            dm_json_int(o, "offset", &c->offset, mp, i) < 0 ||
            dm_json_int(o, "bytes", &c->bytes, mp, i) < 0 ||
            dm_json_int(o, "raw_bytes", &c->raw_bytes, mp, i) < 0 ||
            !(hex = dm_json_str(o, "xxh64", mp, i)))
            goto end;
        char *end;
        errno = 0;
        c->xxh64 = strtoull(hex, &end, 16);
        if (errno || end == hex || *end || strncmp(hex, "0x", 2)) {
            dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 ": xxh64 '%s' is not a hex "
                     "number", mp, i, hex);
            goto end;
        }
        int64_t raw;
        if (c->rows <= 0 || __builtin_mul_overflow(c->rows, r->cols, &raw) ||
            __builtin_mul_overflow(raw, isz, &raw) || raw != c->raw_bytes) {
            dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 ": %" PRId64 " rows of %" PRId64
                     " %s columns cannot be %" PRId64 " raw bytes", mp, i, c->rows, r->cols,
                     dm_dtype_name(r->stored), c->raw_bytes);
            goto end;
        }
        if (c->row0 != row || c->offset != off ||
            (r->codec == DM_CODEC_NONE && c->bytes != c->raw_bytes) || c->bytes == 0) {
            dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 " (row0 %" PRId64 ", offset %"
                     PRId64 ", %" PRId64 " bytes) does not follow the previous one (row %" PRId64
                     ", offset %" PRId64 ")", mp, i, c->row0, c->offset, c->bytes, row, off);
            goto end;
        }
        if (__builtin_add_overflow(row, c->rows, &row) || __builtin_add_overflow(off, c->bytes, &off)) {
            dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: chunk %" PRId64 ": rows or bytes past 2^63", mp, i);
            goto end;
        }
        if (c->rows > r->max_chunk_rows)
            r->max_chunk_rows = c->rows;
        if (c->bytes > r->max_chunk_bytes)
            r->max_chunk_bytes = c->bytes;
    }
    if (row - r->row0 != r->rows || off != total_bytes) {
        dm_failc(DM_E_CORRUPT, "%s: malformed spill manifest: the chunks hold %" PRId64 " rows and %" PRId64
                 " bytes, the header says %" PRId64 " rows and %" PRId64 " bytes", mp, row - r->row0,
                 off, r->rows, total_bytes);
        goto end;
    }
    r->bytes = off;
    rc = 0;
end:
    json_decref(root);
    return rc;
}

/* ---- reader ------------------------------------------------------------- */

dm_spill_reader *dm_spill_reader_open(const char *dir, const char *name)
{
    dm_spill_reader *r = dm_xcalloc(1, sizeof *r);
    r->fd = -1;
    r->cached_chunk = -1;
    r->data_path = dm_xasprintf("%s/%s.spill", dir, name);
    r->manifest_path = dm_xasprintf("%s/%s.json", dir, name);
    for (int i = 0; i < DM_SPILL_RBUF; i++)
        r->buf[i].chunk = -1;
    if (dm_spill_load_manifest(r) < 0)
        goto fail;
    r->fd = open(r->data_path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", r->data_path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(r->fd, &st) < 0) {
        dm_failc(DM_E_IO, "%s: cannot stat: %s", r->data_path, strerror(errno));
        goto fail;
    }
    if (st.st_size < r->bytes) {
        dm_failc(DM_E_CORRUPT, "%s: truncated: the manifest says %" PRId64 " bytes, the file has %lld",
                 r->data_path, r->bytes, (long long)st.st_size);
        goto fail;
    }
    if (st.st_size > r->bytes) {
        dm_failc(DM_E_CORRUPT, "%s: the file has %lld bytes, its manifest %s says %" PRId64 ": they do not "
                 "belong together", r->data_path, (long long)st.st_size, r->manifest_path, r->bytes);
        goto fail;
    }
    r->hash = XXH64_createState();
    if (r->codec == DM_CODEC_ZSTD)
        r->dctx = ZSTD_createDCtx();
    if (!r->hash || (r->codec == DM_CODEC_ZSTD && !r->dctx)) {
        dm_failc(DM_E_NOMEM, "%s: out of memory for the checksum or decompression state", r->data_path);
        goto fail;
    }
    r->verified = dm_xcalloc((size_t)r->nchunks + 1, 1);
    /* Codec none reads with plain pread (see dm_spill_next_plain): no ring. */
    r->uring = r->codec == DM_CODEC_ZSTD && r->nchunks > 0 && dm_spill_uring_wanted() &&
               io_uring_queue_init(2 * DM_SPILL_RBUF, &r->ring, 0) == 0;
    /* Doubles the kernel's read-ahead window: replay is one sequential sweep. */
    posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return r;
fail:
    dm_spill_reader_close(r);
    return NULL;
}

/* Waits for every read in flight (errors ignored: the reads are abandoned). */
static void dm_spill_reader_drain(dm_spill_reader *r)
{
    if (!r->uring)
        return;
    dm_spill_drain_ring(&r->ring, r->buf, DM_SPILL_RBUF, r->fd, 0, r->data_path);
    for (int i = 0; i < DM_SPILL_RBUF; i++)
        r->buf[i].chunk = -1;
}

void dm_spill_reader_close(dm_spill_reader *r)
{
    if (!r)
        return;
    dm_spill_reader_drain(r);
    if (r->uring)
        io_uring_queue_exit(&r->ring);
    if (r->map)
        munmap(r->map, (size_t)r->bytes);
    if (r->fd >= 0)
        close(r->fd);
    for (int i = 0; i < DM_SPILL_RBUF; i++)
        free(r->buf[i].data);
    ZSTD_freeDCtx(r->dctx);
    XXH64_freeState(r->hash);
    free(r->raw);
    free(r->stage);
    free(r->cache);
    free(r->verified);
    free(r->chunks);
    free(r->data_path);
    free(r->manifest_path);
    free(r);
}

int64_t dm_spill_rows(const dm_spill_reader *r) { return r->rows; }
int64_t dm_spill_row0(const dm_spill_reader *r) { return r->row0; }
int64_t dm_spill_cols(const dm_spill_reader *r) { return r->cols; }
int64_t dm_spill_nchunks(const dm_spill_reader *r) { return r->nchunks; }
int64_t dm_spill_max_chunk_rows(const dm_spill_reader *r) { return r->max_chunk_rows; }

/*
 * Decodes chunk ci from its stored bytes into out (rows x cols values of the
 * stream's dtype),
 * verifying the checksum first. For codec none the check and the conversion run
 * block by block so each block is read from memory once; on a mismatch out holds
 * garbage and the call fails.
 */
static int dm_spill_decode(dm_spill_reader *r, int64_t ci, const unsigned char *src, void *out)
{
    const dm_spill_chunk *c = &r->chunks[ci];
    size_t n = (size_t)c->rows * (size_t)r->cols, isz = dm_dtype_size(r->stored);
    size_t msz = dm_dtype_size(dm_spill_mem_dtype(r->stored));
    uint64_t sum = 0;
    if (r->codec == DM_CODEC_NONE) {
        XXH64_reset(r->hash, 0);
        for (size_t i = 0; i < n; i += DM_SPILL_BLOCK) {
            size_t k = n - i < DM_SPILL_BLOCK ? n - i : DM_SPILL_BLOCK;
            XXH64_update(r->hash, src + i * isz, k * isz);
            dm_spill_load(r->stored, src + i * isz, (char *)out + i * msz, k);
        }
        sum = XXH64_digest(r->hash);
        if (sum != c->xxh64)
            return dm_spill_checksum_error(r->data_path, ci, c, sum);
        r->verified[ci] = 1;
        return 0;
    }
    sum = XXH64(src, (size_t)c->bytes, 0);
    if (sum != c->xxh64)
        return dm_spill_checksum_error(r->data_path, ci, c, sum);
    r->verified[ci] = 1;
    void *dst = out;
    if (dm_spill_converts(r->stored)) {
        if (r->raw_cap < (size_t)c->raw_bytes) {
            free(r->raw);
            r->raw = dm_xmalloc_aligned((size_t)c->raw_bytes);
            r->raw_cap = (size_t)c->raw_bytes;
        }
        dst = r->raw;
    }
    size_t got = ZSTD_decompressDCtx(r->dctx, dst, (size_t)c->raw_bytes, src, (size_t)c->bytes);
    if (ZSTD_isError(got))
        return dm_failc(DM_E_CORRUPT, "%s: chunk %" PRId64 " (rows %" PRId64 "..%" PRId64 "): zstd: %s", r->data_path,
                        ci, c->row0, c->row0 + c->rows - 1, ZSTD_getErrorName(got));
    if (got != (size_t)c->raw_bytes)
        return dm_failc(DM_E_CORRUPT, "%s: chunk %" PRId64 ": decompressed to %zu bytes, the manifest says %" PRId64,
                        r->data_path, ci, got, c->raw_bytes);
    if (dst != out)
        dm_spill_load(r->stored, dst, out, n);
    return 0;
}

/* Bytes read per step on the codec-none path: large enough for few system
 * calls, small enough to stay in L2 between the read, the hash and the
 * conversion. A multiple of every dtype size. */
#define DM_SPILL_PIECE ((size_t)1 << 20)

/*
 * Codec none: the stored bytes go straight from the page cache into out (f32,
 * i32, i64) or through one piece-sized staging buffer (f16, bf16), hashed piece by piece
 * while in cache. One copy in all: reading whole chunks into read-ahead buffers
 * first would cost a second, and replay from the page cache is bounded by
 * XXH64 (about 10 GB/s on one core) plus the copy. Read-ahead is left to the
 * kernel (sequential, window doubled by POSIX_FADV_SEQUENTIAL): measured on a
 * virtio disk, cold replay ran at 1.7-2.5 GB/s so, and at 1.2-1.5 GB/s with our
 * own fadvise(WILLNEED) of the next chunks, which disturbs the kernel's
 * read-ahead state. Out may hold a corrupt chunk's values when the checksum
 * fails; the call fails then.
 */
static int dm_spill_next_plain(dm_spill_reader *r, int64_t ci, void *out)
{
    const dm_spill_chunk *c = &r->chunks[ci];
    size_t isz = dm_dtype_size(r->stored), total = (size_t)c->bytes;
    size_t msz = dm_dtype_size(dm_spill_mem_dtype(r->stored));
    int converts = dm_spill_converts(r->stored);
    if (converts && !r->stage)
        r->stage = dm_xmalloc_aligned(DM_SPILL_PIECE);
    XXH64_reset(r->hash, 0);
    for (size_t done = 0; done < total; done += DM_SPILL_PIECE) {
        size_t k = total - done < DM_SPILL_PIECE ? total - done : DM_SPILL_PIECE;
        unsigned char *dst = !converts ? (unsigned char *)out + done : r->stage;
        if (dm_pread_all(r->fd, dst, k, c->offset + (int64_t)done, r->data_path) < 0)
            return -1;
        XXH64_update(r->hash, dst, k);
        if (converts)
            dm_spill_load(r->stored, dst, (char *)out + done / isz * msz, k / isz);
    }
    uint64_t sum = XXH64_digest(r->hash);
    if (sum != c->xxh64)
        return dm_spill_checksum_error(r->data_path, ci, c, sum);
    r->verified[ci] = 1;
    return 0;
}

/* Starts reading chunks ahead, as far as free buffers and the window allow. */
static void dm_spill_read_ahead(dm_spill_reader *r)
{
    int submitted = 0;
    while (r->next_submit < r->nchunks && r->next_submit < r->next_chunk + DM_SPILL_RBUF) {
        int idx;
        for (idx = 0; idx < DM_SPILL_RBUF && r->buf[idx].chunk >= 0; idx++)
            ;
        if (idx == DM_SPILL_RBUF)
            break;
        const dm_spill_chunk *c = &r->chunks[r->next_submit];
        dm_spill_buf *b = &r->buf[idx];
        dm_spill_buf_reserve(b, (size_t)c->bytes);
        b->off = c->offset;
        b->len = (size_t)c->bytes;
        b->done = 0;
        b->chunk = r->next_submit++;
        dm_spill_submit_capped(&r->ring, b, idx, r->fd, 0);
        submitted |= 1 << idx;
    }
    if (submitted) {
        int rc = io_uring_submit(&r->ring);
        if (rc < 0) {
            /* The ring refuses work: let what it holds finish, then replay
             * with pread from the chunk due next. */
            dm_warn("%s: io_uring submission failed (%s); reading with pread from here on",
                    r->data_path, strerror(-rc));
            for (int i = 0; i < DM_SPILL_RBUF; i++)
                if (submitted & (1 << i))
                    r->buf[i].busy = 0;
            dm_spill_reader_drain(r);
            io_uring_queue_exit(&r->ring);
            r->uring = 0;
        }
    }
}

/* zstd with io_uring: waits for chunk ci's read (started ahead), decodes it
 * and starts the next read ahead. 0 or -1. */
static int dm_spill_next_uring(dm_spill_reader *r, int64_t ci, void *out)
{
    int idx;
    for (idx = 0; idx < DM_SPILL_RBUF && r->buf[idx].chunk != ci; idx++)
        ;
    if (idx == DM_SPILL_RBUF) { /* cannot happen: read_ahead always covers next_chunk */
        return dm_failc(DM_E_INTERNAL, "%s: chunk %" PRId64 " was not read", r->data_path, ci);
    }
    dm_spill_buf *b = &r->buf[idx];
    while (b->busy) {
        int any;
        if (dm_spill_reap(&r->ring, r->buf, r->fd, 0, r->data_path, &any, NULL) < 0)
            return -1;
    }
    int rc = dm_spill_decode(r, ci, b->data, out);
    b->chunk = -1;
    /* Keep the disk busy while the caller works on this chunk. */
    if (rc == 0)
        dm_spill_read_ahead(r);
    return rc;
}

/* zstd without io_uring: reads chunk ci with pread (the kernel's read-ahead
 * fetches what follows). 0 or -1. */
static int dm_spill_next_pread(dm_spill_reader *r, int64_t ci, void *out)
{
    const dm_spill_chunk *c = &r->chunks[ci];
    dm_spill_buf *b = &r->buf[0];
    dm_spill_buf_reserve(b, (size_t)c->bytes);
    if (dm_pread_all(r->fd, b->data, (size_t)c->bytes, c->offset, r->data_path) < 0)
        return -1;
    return dm_spill_decode(r, ci, b->data, out);
}

int dm_spill_next(dm_spill_reader *r, dm_chunk *out)
{
    out->cols = r->cols;
    out->rows = 0;
    out->dtype = dm_spill_mem_dtype(r->stored);
    if (r->failed)
        return dm_failc(DM_E_IO, "%s: replay stopped by an earlier error (rewind to start again)", r->data_path);
    if (r->next_chunk >= r->nchunks) {
        out->row0 = r->row0 + r->rows;
        return 0;
    }
    int64_t ci = r->next_chunk;
    const dm_spill_chunk *c = &r->chunks[ci];
    int rc;
    if (r->codec == DM_CODEC_NONE) {
        rc = dm_spill_next_plain(r, ci, out->ptr);
    } else {
        if (r->uring)
            dm_spill_read_ahead(r); /* may give up on io_uring, for pread */
        rc = r->uring ? dm_spill_next_uring(r, ci, out->ptr) : dm_spill_next_pread(r, ci, out->ptr);
    }
    r->next_chunk++;
    if (rc < 0) {
        r->failed = 1; /* until rewound: the chunks after a bad one are not delivered */
        return -1;
    }
    out->row0 = c->row0;
    out->rows = c->rows;
    return 0;
}

dm_dtype dm_spill_dtype(const dm_spill_reader *r) { return dm_spill_mem_dtype(r->stored); }

int dm_spill_rewind(dm_spill_reader *r)
{
    dm_spill_reader_drain(r);
    r->next_chunk = r->next_submit = 0;
    r->failed = 0;
    return 0;
}

/* The data file mapped read-only, once. */
static int dm_spill_map(dm_spill_reader *r)
{
    if (r->map || r->bytes == 0)
        return 0;
    void *p = mmap(NULL, (size_t)r->bytes, PROT_READ, MAP_SHARED, r->fd, 0);
    if (p == MAP_FAILED)
        return dm_failc(DM_E_IO, "%s: cannot map: %s", r->data_path, strerror(errno));
    r->map = p;
    return 0;
}

/* Maps chunk c's pages in one call (instead of a fault per few pages). */
static void dm_spill_populate(dm_spill_reader *r, const dm_spill_chunk *c)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t a = (size_t)c->offset / pg * pg;
    madvise(r->map + a, (size_t)(c->offset + c->bytes) - a, MADV_POPULATE_READ);
}

/* Index of the chunk holding row (row0 <= row < row0 + rows). */
static int64_t dm_spill_find(const dm_spill_reader *r, int64_t row)
{
    int64_t lo = 0, hi = r->nchunks - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (r->chunks[mid].row0 <= row)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Lets the kernel drop our mapping of chunk c's whole pages: they are page
 * cache, and random access should not grow resident memory without bound. */
static void dm_spill_unmap_pages(dm_spill_reader *r, const dm_spill_chunk *c)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t a = ((size_t)c->offset + pg - 1) / pg * pg, b = (size_t)(c->offset + c->bytes) / pg * pg;
    if (b > a)
        madvise(r->map + a, b - a, MADV_DONTNEED);
}

int dm_spill_read_rows(dm_spill_reader *r, int64_t row0, int64_t rows, void *out)
{
    if (row0 < r->row0 || rows < 0 || row0 - r->row0 > r->rows || rows > r->rows - (row0 - r->row0))
        return dm_failc(DM_E_SHAPE, "%s: rows %" PRId64 "..%" PRId64 " are out of range (the spill holds rows %"
                        PRId64 "..%" PRId64 ")", r->data_path, row0, row0 + rows - 1, r->row0,
                        r->row0 + r->rows - 1);
    if (rows == 0)
        return 0;
    if (dm_spill_map(r) < 0)
        return -1;
    size_t isz = dm_dtype_size(r->stored), msz = dm_dtype_size(dm_spill_mem_dtype(r->stored));
    size_t row_bytes = (size_t)r->cols * msz;
    int64_t row = row0, end = row0 + rows;
    for (int64_t ci = dm_spill_find(r, row0); row < end; ci++) {
        const dm_spill_chunk *c = &r->chunks[ci];
        const unsigned char *src = r->map + c->offset;
        int64_t skip = row - c->row0, take = c->row0 + c->rows - row;
        if (take > end - row)
            take = end - row;
        char *dst = (char *)out + (size_t)(row - row0) * row_bytes;
        dm_spill_populate(r, c);
        if (r->codec == DM_CODEC_NONE) {
            if (!r->verified[ci]) {
                uint64_t sum = XXH64(src, (size_t)c->bytes, 0);
                if (sum != c->xxh64)
                    return dm_spill_checksum_error(r->data_path, ci, c, sum);
                r->verified[ci] = 1;
            }
            dm_spill_load(r->stored, src + (size_t)skip * (size_t)r->cols * isz, dst, (size_t)take * (size_t)r->cols);
        } else {
            if (r->cached_chunk != ci) {
                if (!r->cache)
                    r->cache = dm_xmalloc_aligned((size_t)r->max_chunk_rows * row_bytes);
                r->cached_chunk = -1;
                if (dm_spill_decode(r, ci, src, r->cache) < 0)
                    return -1;
                r->cached_chunk = ci;
            }
            memcpy(dst, (char *)r->cache + (size_t)skip * row_bytes, (size_t)take * row_bytes);
        }
        dm_spill_unmap_pages(r, c);
        row += take;
    }
    return 0;
}

int dm_spill_verify(const char *dir, const char *name)
{
    dm_spill_reader *r = dm_spill_reader_open(dir, name);
    if (!r)
        return -1;
    int rc = dm_spill_map(r);
    for (int64_t ci = 0; rc == 0 && ci < r->nchunks; ci++) {
        const dm_spill_chunk *c = &r->chunks[ci];
        dm_spill_populate(r, c);
        uint64_t sum = XXH64(r->map + c->offset, (size_t)c->bytes, 0);
        if (sum != c->xxh64)
            rc = dm_spill_checksum_error(r->data_path, ci, c, sum);
        dm_spill_unmap_pages(r, c);
    }
    dm_spill_reader_close(r);
    return rc;
}
