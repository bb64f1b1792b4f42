/*
 * npy.c: NumPy .npy files, read by mapping them and written atomically.
 *
 * The format (numpy/lib/format.py, "NEP 1"): the magic "\x93NUMPY", a major and
 * minor version byte, the header length (2 bytes little-endian in 1.0, 4 bytes
 * in 2.0 and 3.0; 3.0 only allows UTF-8 in the header), then the header: a Python
 * dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (R, C), }
 * padded with spaces and ended by '\n' so the data starts at a multiple of 64
 * (16 in old files). The data follows, C order, nothing after it.
 *
 * Reading: users hand us files from anywhere (numpy, torch.save().numpy(), other
 * tools, a copy cut short by a full disk), so the header is parsed as a small
 * language, not matched against a template: either quote, any spacing, keys in
 * any order, trailing commas, Python 2's "3L". Everything is checked before a
 * byte of data is used, and the data size against the file size, so a truncated
 * file is an error naming both sizes, never a SIGBUS in the middle of a run.
 * Big-endian data and Fortran order are refused with a message saying how to
 * convert (we do not want a silent byte-swapping or transposing copy of 30 GB).
 *
 * bfloat16 has no NumPy dtype. ml_dtypes (and so JAX) save it as the 2-byte void
 * type 'V2', so that is what we read as bf16 and write for bf16:
 * np.load(...).view(ml_dtypes.bfloat16) recovers it.
 *
 * Streaming reads (dm_npy_read_rows_f32) copy rows out of the mapping and then
 * tell the kernel the fully consumed pages may go (MADV_DONTNEED): without that
 * the mapped file's pages count as our resident memory and a 30 GB input would
 * fill RAM while being read once. Pages are page-cache backed, so dropping them
 * from our mapping is always safe: touching them again reads them back.
 *
 * Writing a stream (dm_npy_writer): the row count is unknown until the end, so
 * the header is written first with room for a 20-digit row count, and rewritten
 * in place at commit with the real count, same total length. Data goes to
 * "<path>.tmp.<pid>" and is renamed over path only after fsync.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "npy.h"
#include "conv.h"
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dmica's .npy and spill code assumes a little-endian machine"
#endif

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older kernels answer EINVAL, which we ignore */
#endif

static const char dm_npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

struct dm_npy_map {
    char *path;
    int fd;
    unsigned char *base; /* the whole file, read-only */
    size_t size;
    dm_npy_header hdr;
    int64_t data_bytes; /* numel x itemsize */
};

/* ---- header text -------------------------------------------------------- */

typedef struct {
    const char *p, *end;
    const char *path; /* for messages */
} dm_npy_lex;

static void dm_npy_ws(dm_npy_lex *lx)
{
    while (lx->p < lx->end && (*lx->p == ' ' || *lx->p == '\t' || *lx->p == '\n' || *lx->p == '\r'))
        lx->p++;
}

static int dm_npy_bad(dm_npy_lex *lx, const char *what)
{
    return dm_failc(DM_E_CORRUPT, "%s: malformed .npy header: %s at \"%.20s\"", lx->path, what,
                    lx->p < lx->end ? lx->p : "<end>");
}

/* A quoted string (either quote) into out (cap bytes, NUL-terminated). */
static int dm_npy_string(dm_npy_lex *lx, char *out, size_t cap)
{
    dm_npy_ws(lx);
    if (lx->p >= lx->end || (*lx->p != '\'' && *lx->p != '"'))
        return dm_npy_bad(lx, "expected a quoted string");
    char q = *lx->p++;
    size_t n = 0;
    while (lx->p < lx->end && *lx->p != q) {
        if (*lx->p == '\\' && lx->p + 1 < lx->end)
            lx->p++;
        if (n + 1 < cap)
            out[n++] = *lx->p;
        else
            return dm_npy_bad(lx, "string too long");
        lx->p++;
    }
    if (lx->p >= lx->end)
        return dm_npy_bad(lx, "unterminated string");
    lx->p++;
    out[n] = 0;
    return 0;
}

static int dm_npy_punct(dm_npy_lex *lx, char c)
{
    dm_npy_ws(lx);
    if (lx->p < lx->end && *lx->p == c) {
        lx->p++;
        return 1;
    }
    return 0;
}

static int dm_npy_word(dm_npy_lex *lx, const char *w)
{
    size_t n = strlen(w);
    dm_npy_ws(lx);
    if ((size_t)(lx->end - lx->p) >= n && !memcmp(lx->p, w, n)) {
        lx->p += n;
        return 1;
    }
    return 0;
}

/* A Python tuple of non-negative ints: "()", "(3,)", "(2, 3)", "(2L, 3L)". */
static int dm_npy_shape(dm_npy_lex *lx, dm_npy_header *h)
{
    if (!dm_npy_punct(lx, '('))
        return dm_npy_bad(lx, "'shape' is not a tuple");
    int n = 0;
    int64_t dims[64];
    while (!dm_npy_punct(lx, ')')) {
        dm_npy_ws(lx);
        if (lx->p >= lx->end || *lx->p < '0' || *lx->p > '9')
            return dm_npy_bad(lx, "expected a non-negative integer in 'shape'");
        int64_t v = 0;
        while (lx->p < lx->end && *lx->p >= '0' && *lx->p <= '9') {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *lx->p - '0', &v))
                return dm_failc(DM_E_CORRUPT, "%s: malformed .npy header: a dimension in 'shape' overflows", lx->path);
            lx->p++;
        }
        if (lx->p < lx->end && (*lx->p == 'L' || *lx->p == 'l'))
            lx->p++;
        if (n == 64)
            return dm_npy_bad(lx, "too many dimensions");
        dims[n++] = v;
        if (!dm_npy_punct(lx, ',')) {
            if (!dm_npy_punct(lx, ')'))
                return dm_npy_bad(lx, "expected ',' or ')' in 'shape'");
            break;
        }
    }
    if (n > DM_MAX_DIMS)
        return dm_failc(DM_E_SHAPE, "%s: %d-dimensional arrays are not supported (at most %d dimensions)",
                        lx->path, n, DM_MAX_DIMS);
    h->ndim = n;
    for (int i = 0; i < n; i++)
        h->shape[i] = dims[i];
    return 0;
}

/* descr string -> dtype. Byte order: '<' little, '=' native (little here), '|'
 * not applicable (single bytes and void), '>' big (refused). */
static int dm_npy_descr(const char *descr, const char *path, dm_dtype *out)
{
    char order = descr[0];
    const char *code = descr + 1;
    if (!order || !strchr("<>=|", order)) {
        order = '=';
        code = descr; /* numpy accepts a bare "f4" */
    }
    static const struct {
        const char *code;
        dm_dtype dtype;
    } map[] = {
        {"f4", DM_F32}, {"f8", DM_F64}, {"f2", DM_F16}, {"e", DM_F16}, {"V2", DM_BF16},
        {"i4", DM_I32}, {"i8", DM_I64}, {"u2", DM_U16}, {"u1", DM_U8}, {"B", DM_U8},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(code, map[i].code))
            continue;
        dm_dtype t = map[i].dtype;
        int single = dm_dtype_size(t) == 1 || t == DM_BF16;
        if (order == '>' && !single)
            return dm_fail("%s: big-endian dtype '%s' is not supported (convert it with "
                           "np.save(path, arr.astype('<%s')))", path, descr, code);
        if (order == '|' && !single)
            return dm_fail("%s: unsupported dtype '%s' (byte order '|' on a multi-byte type)",
                           path, descr);
        *out = t;
        return 0;
    }
    return dm_fail("%s: unsupported dtype '%s' (supported: <f4 <f8 <f2 <i4 <i8 <u2 |u1, and "
                   "V2 as bfloat16)", path, descr);
}

/* Parses the dict in [text, text+len) into h (all but data_offset). */
static int dm_npy_parse_dict(const char *text, size_t len, const char *path, dm_npy_header *h)
{
    dm_npy_lex lx = {text, text + len, path};
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!dm_npy_punct(&lx, '{'))
        return dm_npy_bad(&lx, "expected '{'");
    while (!dm_npy_punct(&lx, '}')) {
        char key[64];
        if (dm_npy_string(&lx, key, sizeof key) < 0)
            return -1;
        if (!dm_npy_punct(&lx, ':'))
            return dm_npy_bad(&lx, "expected ':'");
        if (!strcmp(key, "descr")) {
            char descr[64];
            dm_npy_ws(&lx);
            if (lx.p < lx.end && *lx.p == '[')
                return dm_fail("%s: unsupported dtype: structured arrays (a list 'descr') are "
                               "not supported", path);
            if (dm_npy_string(&lx, descr, sizeof descr) < 0 ||
                dm_npy_descr(descr, path, &h->dtype) < 0)
                return -1;
            have_descr = 1;
        } else if (!strcmp(key, "fortran_order")) {
            if (dm_npy_word(&lx, "True"))
                return dm_fail("%s: fortran_order arrays are not supported (save it in C order: "
                               "np.save(path, np.ascontiguousarray(arr)))", path);
            if (!dm_npy_word(&lx, "False"))
                return dm_npy_bad(&lx, "'fortran_order' is neither True nor False");
            have_order = 1;
        } else if (!strcmp(key, "shape")) {
            if (dm_npy_shape(&lx, h) < 0)
                return -1;
            have_shape = 1;
        } else {
            return dm_failc(DM_E_CORRUPT, "%s: malformed .npy header: unexpected key '%s'", path, key);
        }
        if (!dm_npy_punct(&lx, ',')) {
            if (!dm_npy_punct(&lx, '}'))
                return dm_npy_bad(&lx, "expected ',' or '}'");
            break;
        }
    }
    dm_npy_ws(&lx);
    if (lx.p != lx.end && *lx.p != 0)
        return dm_npy_bad(&lx, "text after the dict");
    if (!have_descr || !have_order || !have_shape)
        return dm_failc(DM_E_CORRUPT, "%s: malformed .npy header: missing key '%s'", path,
                        !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    return 0;
}

/* "2 x 3 f32", "scalar f32" */
static void dm_npy_shape_text(const dm_npy_header *h, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    if (h->ndim == 0)
        n += (size_t)snprintf(buf, cap, "scalar");
    for (int i = 0; i < h->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? " x " : "", h->shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, " %s", dm_dtype_name(h->dtype));
}

/* ---- reading ------------------------------------------------------------ */

/* Bytes of h's data: numel x itemsize, INT64_MAX if that overflows. */
static int64_t dm_npy_data_bytes(const dm_npy_header *h)
{
    int64_t numel = 1, bytes;
    for (int i = 0; i < h->ndim; i++)
        if (__builtin_mul_overflow(numel, h->shape[i], &numel))
            numel = INT64_MAX;
    if (__builtin_mul_overflow(numel, (int64_t)dm_dtype_size(h->dtype), &bytes))
        bytes = INT64_MAX;
    return bytes;
}

int dm_npy_parse(const void *buf, size_t avail, uint64_t size, const char *path, dm_npy_header *h)
{
    const unsigned char *base = buf;
    memset(h, 0, sizeof *h);
    if (size < 10 || avail < 10) {
        if (size >= 6 && avail >= 6 && !memcmp(base, dm_npy_magic, 6))
            return dm_failc(DM_E_CORRUPT, "%s: truncated: the file ends inside the .npy header (%zu bytes)", path,
                            (size_t)size);
        return dm_failc(DM_E_CORRUPT, "%s: not a .npy file (%zu bytes, no \\x93NUMPY magic)", path, (size_t)size);
    }
    if (memcmp(base, dm_npy_magic, 6))
        return dm_failc(DM_E_CORRUPT, "%s: not a .npy file (no \\x93NUMPY magic at the start)", path);
    int major = base[6], minor = base[7];
    size_t hlen, prefix;
    if (major == 1) {
        hlen = (size_t)base[8] | (size_t)base[9] << 8;
        prefix = 10;
    } else if ((major == 2 || major == 3) && (size < 12 || avail < 12)) {
        return dm_failc(DM_E_CORRUPT, "%s: truncated: the file ends inside the .npy header (%zu bytes)", path,
                        (size_t)size);
    } else if (major == 2 || major == 3) {
        hlen = (size_t)base[8] | (size_t)base[9] << 8 | (size_t)base[10] << 16 | (size_t)base[11] << 24;
        prefix = 12;
    } else {
        return dm_fail("%s: unsupported .npy format version %d.%d (1.0, 2.0 and 3.0 are known)", path, major, minor);
    }
    if (prefix + hlen > size)
        return dm_failc(DM_E_CORRUPT, "%s: truncated: the header says it is %zu bytes long, the file has %zu", path,
                        prefix + hlen, (size_t)size);
    if (prefix + hlen > avail)
        return dm_failc(DM_E_CORRUPT, "%s: a .npy header of %zu bytes: at most %zu are read", path, prefix + hlen,
                        avail);
    if (dm_npy_parse_dict((const char *)base + prefix, hlen, path, h) < 0)
        return -1;
    h->data_offset = (int64_t)(prefix + hlen);
    int64_t bytes = dm_npy_data_bytes(h), have = (int64_t)(size - (uint64_t)h->data_offset);
    if (bytes > have) {
        char shape[256];
        dm_npy_shape_text(h, shape, sizeof shape);
        return dm_failc(DM_E_CORRUPT, "%s: truncated: header says %s = %" PRId64 " bytes, file has %" PRId64, path,
                        shape, bytes, have);
    }
    return 0;
}

dm_npy_map *dm_npy_open(const char *path)
{
    dm_npy_map *m = dm_xcalloc(1, sizeof *m);
    m->fd = -1;
    m->path = dm_xstrdup(path);
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(m->fd, &st) < 0) {
        dm_failc(DM_E_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        dm_failc(DM_E_IO, "%s: not a regular file", path);
        goto fail;
    }
    m->size = (size_t)st.st_size;
    if (m->size < 10) {
        unsigned char head[6] = {0};
        if (m->size >= 6 && dm_pread_all(m->fd, head, 6, 0, path) == 0 &&
            !memcmp(head, dm_npy_magic, 6))
            dm_failc(DM_E_CORRUPT, "%s: truncated: the file ends inside the .npy header (%zu bytes)", path, m->size);
        else
            dm_failc(DM_E_CORRUPT, "%s: not a .npy file (%zu bytes, no \\x93NUMPY magic)", path, m->size);
        goto fail;
    }
    m->base = mmap(NULL, m->size, PROT_READ, MAP_SHARED, m->fd, 0);
    if (m->base == MAP_FAILED) {
        m->base = NULL;
        dm_failc(DM_E_IO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    if (dm_npy_parse(m->base, m->size, m->size, path, &m->hdr) < 0)
        goto fail;
    m->data_bytes = dm_npy_data_bytes(&m->hdr);
    return m;
fail:
    dm_npy_close(m);
    return NULL;
}

void dm_npy_close(dm_npy_map *m)
{
    if (!m)
        return;
    if (m->base)
        munmap(m->base, m->size);
    if (m->fd >= 0)
        close(m->fd);
    free(m->path);
    free(m);
}

const dm_npy_header *dm_npy_hdr(const dm_npy_map *m) { return &m->hdr; }
const void *dm_npy_data(const dm_npy_map *m) { return m->base + m->hdr.data_offset; }

int dm_npy_read_rows_f32(dm_npy_map *m, int64_t row0, int64_t rows, float *out)
{
    const dm_npy_header *h = &m->hdr;
    if (h->ndim != 2) {
        char shape[256];
        dm_npy_shape_text(h, shape, sizeof shape);
        return dm_failc(DM_E_SHAPE, "%s: expected a 2-D array (rows x cols), found %s", m->path, shape);
    }
    if (h->dtype != DM_F32 && h->dtype != DM_F16 && h->dtype != DM_BF16 && h->dtype != DM_F64)
        return dm_failc(DM_E_SHAPE, "%s: dtype %s cannot be read as float rows (f32, f16, bf16 or f64 "
                        "expected)", m->path, dm_dtype_name(h->dtype));
    if (row0 < 0 || rows < 0 || row0 > h->shape[0] || rows > h->shape[0] - row0)
        return dm_failc(DM_E_SHAPE, "%s: rows %" PRId64 "..%" PRId64 " are out of range (the array has %" PRId64
                        " rows)", m->path, row0, row0 + rows - 1, h->shape[0]);
    if (rows == 0 || h->shape[1] == 0)
        return 0;
    size_t isz = dm_dtype_size(h->dtype);
    size_t row_bytes = (size_t)h->shape[1] * isz;
    size_t a = (size_t)h->data_offset + (size_t)row0 * row_bytes;
    size_t b = a + (size_t)rows * row_bytes;
    long pg = sysconf(_SC_PAGESIZE);
    size_t pa = a / (size_t)pg * (size_t)pg;
    /* One call maps the whole range instead of a page fault per 64 KiB. */
    madvise(m->base + pa, b - pa, MADV_POPULATE_READ);
    dm_conv_to_f32(h->dtype, m->base + a, out, (size_t)rows * (size_t)h->shape[1]);
    /* Drop the pages wholly before b: the last one may hold the next rows. The
     * first one may hold earlier rows, already consumed by a streaming reader. */
    size_t pb = b / (size_t)pg * (size_t)pg;
    if (pb > pa)
        madvise(m->base + pa, pb - pa, MADV_DONTNEED);
    return 0;
}

/* ---- writing ------------------------------------------------------------ */

static const char *dm_npy_descr_of(dm_dtype t)
{
    switch (t) {
    case DM_F32: return "<f4";
    case DM_F64: return "<f8";
    case DM_F16: return "<f2";
    case DM_BF16: return "<V2";
    case DM_I32: return "<i4";
    case DM_I64: return "<i8";
    case DM_U16: return "<u2";
    case DM_U8: return "|u1";
    default: return NULL;
    }
}

/*
 * Formats a complete header (magic to '\n') into buf (cap bytes): version 1.0,
 * or 2.0 when the dict does not fit a 2-byte length. The total is a multiple of
 * 64 and at least min_total. Returns the total length, or 0 when cap is too small.
 */
static size_t dm_npy_format_header(char *buf, size_t cap, dm_dtype t, int ndim,
                                   const int64_t *shape, size_t min_total)
{
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dm_npy_descr_of(t));
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%" PRId64, i ? ", " : "", shape[i]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    size_t prefix = 10;
    size_t total = (prefix + (size_t)n + 1 + 63) / 64 * 64;
    if (total < min_total)
        total = min_total;
    if (total - prefix > 65535) {
        prefix = 12;
        total = (prefix + (size_t)n + 1 + 63) / 64 * 64;
        if (total < min_total)
            total = min_total;
    }
    if (total > cap || (size_t)n + 1 + prefix > total)
        return 0;
    size_t hlen = total - prefix;
    memcpy(buf, dm_npy_magic, 6);
    buf[6] = prefix == 10 ? 1 : 2;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8 & 0xff);
    if (prefix == 12) {
        buf[10] = (char)(hlen >> 16 & 0xff);
        buf[11] = (char)(hlen >> 24 & 0xff);
    }
    memcpy(buf + prefix, dict, (size_t)n);
    memset(buf + prefix + n, ' ', total - prefix - (size_t)n - 1);
    buf[total - 1] = '\n';
    return total;
}

struct dm_npy_writer {
    char *path, *tmp;
    int fd;
    dm_dtype dtype;
    int64_t cols, rows;
    size_t header_len; /* reserved at open, rewritten at commit */
    int failed;        /* an append failed: commit must not publish */
    void *cvt;         /* conversion buffer for append_f32 */
};

/* Values converted per block by append_f32: 4 MiB of float32, a good write size. */
#define DM_NPY_CVT_VALUES ((size_t)1 << 20)

dm_npy_writer *dm_npy_writer_open(const char *path, dm_dtype dtype, int64_t cols)
{
    if (!dm_npy_descr_of(dtype)) {
        dm_failc(DM_E_INTERNAL, "%s: cannot write dtype %d", path, (int)dtype);
        return NULL;
    }
    if (cols < 0) {
        dm_failc(DM_E_INTERNAL, "%s: negative column count %" PRId64, path, cols);
        return NULL;
    }
    /* The widest header the commit can need: a 20-digit row count. */
    char hdr[256];
    int64_t wide[2] = {INT64_MAX, cols};
    size_t reserve = dm_npy_format_header(hdr, sizeof hdr, dtype, 2, wide, 0) + 64;
    int64_t now[2] = {0, cols};
    size_t len = dm_npy_format_header(hdr, sizeof hdr, dtype, 2, now, reserve);
    dm_npy_writer *w = dm_xcalloc(1, sizeof *w);
    w->path = dm_xstrdup(path);
    w->dtype = dtype;
    w->cols = cols;
    w->header_len = len;
    w->fd = dm_atomic_open(path, &w->tmp);
    if (w->fd < 0 || dm_write_all(w->fd, hdr, len, w->tmp) < 0) {
        dm_npy_writer_abort(w);
        return NULL;
    }
    return w;
}

static int dm_npy_writer_check(dm_npy_writer *w, int64_t rows)
{
    if (w->failed)
        return dm_failc(DM_E_IO, "%s: an earlier write failed", w->path);
    if (rows < 0)
        return dm_failc(DM_E_INTERNAL, "%s: negative row count %" PRId64, w->path, rows);
    return 0;
}

int dm_npy_writer_append(dm_npy_writer *w, const void *data, int64_t rows)
{
    if (dm_npy_writer_check(w, rows) < 0)
        return -1;
    size_t n = (size_t)rows * (size_t)w->cols * dm_dtype_size(w->dtype);
    if (dm_write_all(w->fd, data, n, w->tmp) < 0) {
        w->failed = 1;
        return -1;
    }
    w->rows += rows;
    return 0;
}

int dm_npy_writer_append_f32(dm_npy_writer *w, const float *data, int64_t rows)
{
    if (dm_npy_writer_check(w, rows) < 0)
        return -1;
    if (w->dtype == DM_F32)
        return dm_npy_writer_append(w, data, rows);
    if (w->dtype != DM_F16 && w->dtype != DM_BF16 && w->dtype != DM_F64)
        return dm_failc(DM_E_INTERNAL, "%s: cannot convert float32 rows to %s", w->path, dm_dtype_name(w->dtype));
    size_t isz = dm_dtype_size(w->dtype);
    if (!w->cvt)
        w->cvt = dm_xmalloc_aligned(DM_NPY_CVT_VALUES * isz);
    size_t total = (size_t)rows * (size_t)w->cols;
    for (size_t i = 0; i < total; i += DM_NPY_CVT_VALUES) {
        size_t k = total - i < DM_NPY_CVT_VALUES ? total - i : DM_NPY_CVT_VALUES;
        dm_conv_from_f32(w->dtype, data + i, w->cvt, k);
        if (dm_write_all(w->fd, w->cvt, k * isz, w->tmp) < 0) {
            w->failed = 1;
            return -1;
        }
    }
    w->rows += rows;
    return 0;
}

/* Bytes copied per block by append_npy: 8 MiB. */
#define DM_NPY_COPY_BYTES ((size_t)8 << 20)

int dm_npy_writer_append_npy(dm_npy_writer *w, const char *path)
{
    if (dm_npy_writer_check(w, 0) < 0)
        return -1;
    dm_npy_map *m = dm_npy_open(path);
    if (!m)
        return -1;
    const dm_npy_header *h = &m->hdr;
    int rc = -1;
    if (h->ndim != 2 || h->dtype != w->dtype || h->shape[1] != w->cols) {
        char shape[256];
        dm_npy_shape_text(h, shape, sizeof shape);
        dm_failc(DM_E_CORRUPT, "%s: a segment of %s, but %s is written as rows of %" PRId64 " %s", path, shape,
                 w->path, w->cols, dm_dtype_name(w->dtype));
        goto end;
    }
    size_t row_bytes = (size_t)w->cols * dm_dtype_size(w->dtype);
    size_t rows_per = row_bytes ? DM_NPY_COPY_BYTES / row_bytes : 0;
    if (rows_per < 1)
        rows_per = 1;
    long pg = sysconf(_SC_PAGESIZE);
    for (int64_t r0 = 0; r0 < h->shape[0];) {
        int64_t rows = h->shape[0] - r0 < (int64_t)rows_per ? h->shape[0] - r0 : (int64_t)rows_per;
        size_t a = (size_t)h->data_offset + (size_t)r0 * row_bytes, b = a + (size_t)rows * row_bytes;
        if (dm_npy_writer_append(w, m->base + a, rows) < 0)
            goto end;
        /* the pages wholly read (see dm_npy_read_rows_f32) */
        size_t pa = a / (size_t)pg * (size_t)pg, pb = b / (size_t)pg * (size_t)pg;
        if (pb > pa)
            madvise(m->base + pa, pb - pa, MADV_DONTNEED);
        r0 += rows;
    }
    rc = 0;
end:
    dm_npy_close(m);
    return rc;
}

static void dm_npy_writer_free(dm_npy_writer *w)
{
    free(w->path);
    free(w->cvt);
    free(w);
}

int dm_npy_writer_commit(dm_npy_writer *w)
{
    if (!w)
        return dm_failc(DM_E_INTERNAL, "npy writer: commit of a writer that failed to open");
    if (w->failed) {
        dm_failc(DM_E_IO, "%s: not written: an earlier write failed", w->path);
        dm_npy_writer_abort(w);
        return -1;
    }
    char hdr[256];
    int64_t shape[2] = {w->rows, w->cols};
    size_t len = dm_npy_format_header(hdr, sizeof hdr, w->dtype, 2, shape, w->header_len);
    if (len != w->header_len) { /* cannot happen: the reservation covers any int64 */
        dm_failc(DM_E_INTERNAL, "%s: the final header does not fit the space reserved for it", w->path);
        dm_npy_writer_abort(w);
        return -1;
    }
    if (dm_pwrite_all(w->fd, hdr, len, 0, w->tmp) < 0) {
        dm_npy_writer_abort(w);
        return -1;
    }
    int rc = dm_atomic_commit(w->fd, w->tmp, w->path);
    w->tmp = NULL;
    dm_npy_writer_free(w);
    return rc;
}

void dm_npy_writer_abort(dm_npy_writer *w)
{
    if (!w)
        return;
    dm_atomic_discard(w->fd, w->tmp);
    dm_npy_writer_free(w);
}

/* ---- whole arrays ------------------------------------------------------- */

int dm_npy_save(const char *path, const dm_tensor *t)
{
    if (!dm_npy_descr_of(t->dtype))
        return dm_failc(DM_E_INTERNAL, "%s: cannot save dtype %d", path, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > DM_MAX_DIMS)
        return dm_failc(DM_E_INTERNAL, "%s: cannot save a %d-dimensional tensor", path, t->ndim);
    char hdr[1024];
    size_t len = dm_npy_format_header(hdr, sizeof hdr, t->dtype, t->ndim, t->shape, 0);
    size_t bytes = (size_t)dm_tensor_numel(t) * dm_dtype_size(t->dtype);
    char *tmp;
    int fd = dm_atomic_open(path, &tmp);
    if (fd < 0)
        return -1;
    if (dm_write_all(fd, hdr, len, tmp) < 0 || dm_write_all(fd, t->data, bytes, tmp) < 0) {
        dm_atomic_discard(fd, tmp);
        return -1;
    }
    return dm_atomic_commit(fd, tmp, path);
}

int dm_npy_load(const char *path, dm_tensor *out)
{
    dm_npy_map *m = dm_npy_open(path);
    if (!m)
        return -1;
    dm_tensor_init(out, m->hdr.dtype, m->hdr.ndim, m->hdr.shape);
    memcpy(out->data, dm_npy_data(m), (size_t)m->data_bytes);
    dm_npy_close(m);
    return 0;
}
