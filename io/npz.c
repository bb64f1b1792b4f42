/*
 * npz.c: NumPy .npz archives, read by mapping them.
 *
 * The zip format (PKWARE's APPNOTE.TXT, version 6.3.x; the sections cited are
 * its): the members' local headers and data, then the central directory (one
 * entry per member), then the end-of-central-directory record (4.3.16), which
 * a reader finds by scanning back from the end of the file past an optional
 * comment of up to 65535 bytes. Archives whose sizes, offsets or member count
 * do not fit the record's 32- or 16-bit fields also have a ZIP64 end record
 * (4.3.14) and its locator (4.3.15) just before it, and such entries carry
 * their 64-bit sizes and offset in a ZIP64 extra field (4.5.3, id 0x0001),
 * holding only the fields whose 32-bit value is 0xFFFFFFFF, in the order
 * uncompressed size, compressed size, local header offset, disk.
 *
 * numpy.savez writes each array as member "NAME.npy" through Python's zipfile
 * with force_zip64=True, so every local header has 0xFFFFFFFF sizes and a
 * ZIP64 extra field even for tiny arrays; the central directory holds the real
 * sizes. We take sizes and offsets from the central directory only and read a
 * local header just for its name and extra lengths (the data follows them),
 * checking its signature and name against the directory's.
 *
 * Everything is checked against the file size before it is used, and the
 * directory against the data it points to, so a file cut short (a download
 * stopped half way) loses its end record and is refused as truncated, and a
 * damaged one is refused naming the member. Stored members' data are used in
 * place (their .npy data may start at any offset: conv.h's copies need no
 * alignment); deflated ones (numpy.savez_compressed) are inflated with zlib's
 * raw inflate, straight into the caller's floats for float32 arrays.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "npz.h"
#include "conv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef DM_ZLIB
#define DM_ZLIB 0
#endif
#if DM_ZLIB
#include <zlib.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dmica's .npz code assumes a little-endian machine"
#endif

/* Bytes of a deflated member inflated to read its .npy header: numpy's 1.0
 * headers are at most 65535 + 10 bytes. */
#define NPZ_HEAD_MAX ((size_t)1 << 17)

typedef struct {
    char *member;    /* as the archive names it: "W_enc.npy" */
    char *name;      /* the array: "W_enc" */
    char *label;     /* "path (member W_enc.npy)" for messages */
    int method;      /* 0 stored, 8 deflated, ... */
    uint32_t crc;
    uint64_t csize, usize;
    uint64_t data;   /* offset of the member's (compressed) data in the file */
} npz_member;

struct dm_npz {
    char *path;
    int fd;
    const unsigned char *base;
    uint64_t size;
    npz_member *m;
    int n;
};

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

int dm_npz_deflate_supported(void) { return DM_ZLIB; }
const char *dm_npz_path(const dm_npz *z) { return z->path; }
int dm_npz_count(const dm_npz *z) { return z->n; }
const char *dm_npz_name(const dm_npz *z, int i) { return z->m[i].name; }

int dm_npz_find(const dm_npz *z, const char *name)
{
    for (int i = 0; i < z->n; i++)
        if (!strcmp(z->m[i].name, name))
            return i;
    return -1;
}

void dm_npz_close(dm_npz *z)
{
    if (!z)
        return;
    for (int i = 0; i < z->n; i++)
        free(z->m[i].member), free(z->m[i].name), free(z->m[i].label);
    free(z->m);
    if (z->base)
        munmap((void *)z->base, z->size);
    if (z->fd >= 0)
        close(z->fd);
    free(z->path);
    free(z);
}

/* The end-of-central-directory record: its offset, or -1 with dm_fail. */
static int64_t find_end(const dm_npz *z)
{
    const unsigned char *b = z->base;
    if (z->size >= 22) {
        uint64_t lo = z->size - 22 > 65535 ? z->size - 22 - 65535 : 0;
        for (uint64_t o = z->size - 22 + 1; o-- > lo;)
            if (rd32(b + o) == 0x06054b50 && o + 22 + rd16(b + o + 20) == z->size)
                return (int64_t)o;
    }
    if (z->size >= 4 && rd32(b) == 0x04034b50)
        return dm_failc(DM_E_CORRUPT, "%s: truncated: it begins as a zip archive (.npz), but its end-of-central-"
                        "directory record is missing (%" PRIu64 " bytes; a download cut short?)", z->path, z->size);
    if (z->size >= 6 && !memcmp(b, "\x93NUMPY", 6))
        return dm_failc(DM_E_CORRUPT, "%s: a .npy file, not an .npz archive", z->path);
    return dm_failc(DM_E_CORRUPT, "%s: not an .npz file (no zip end-of-central-directory record in its %" PRIu64
                    " bytes)", z->path, z->size);
}

/* The central directory's entry at *pos into m, *pos moved past it. */
static int read_entry(dm_npz *z, uint64_t *pos, uint64_t end, int index, npz_member *m)
{
    const unsigned char *b = z->base, *e = b + *pos;
    if (end - *pos < 46 || rd32(e) != 0x02014b50)
        return dm_failc(DM_E_CORRUPT, "%s: damaged zip central directory (entry %d of the directory is not where "
                        "the end record says)", z->path, index + 1);
    unsigned flags = rd16(e + 8), nlen = rd16(e + 28), xlen = rd16(e + 30), clen = rd16(e + 32);
    if (end - *pos - 46 < (uint64_t)nlen + xlen + clen)
        return dm_failc(DM_E_CORRUPT, "%s: damaged zip central directory (entry %d runs past it)", z->path, index + 1);
    m->method = rd16(e + 10);
    m->crc = rd32(e + 16);
    m->csize = rd32(e + 20);
    m->usize = rd32(e + 24);
    uint64_t lho = rd32(e + 42);
    unsigned disk = rd16(e + 34);
    m->member = dm_xmalloc(nlen + 1);
    memcpy(m->member, e + 46, nlen);
    m->member[nlen] = 0;
    m->label = dm_xasprintf("%s (member %s)", z->path, m->member);
    if (memchr(e + 46, 0, nlen))
        return dm_failc(DM_E_CORRUPT, "%s: damaged zip central directory (entry %d's name holds a NUL byte)",
                        z->path, index + 1);
    /* the ZIP64 extra field: only the fields whose 32-bit value is all ones */
    const unsigned char *x = e + 46 + nlen, *xe = x + xlen;
    while (xe - x >= 4) {
        unsigned id = rd16(x), len = rd16(x + 2);
        if ((unsigned)(xe - x - 4) < len)
            break;
        if (id == 0x0001) {
            const unsigned char *f = x + 4, *fe = f + len;
            uint64_t *v[3] = {&m->usize, &m->csize, &lho};
            for (int k = 0; k < 3; k++) {
                if (*v[k] != 0xFFFFFFFFu)
                    continue;
                if (fe - f < 8)
                    return dm_failc(DM_E_CORRUPT, "%s: damaged zip central directory (a ZIP64 field is missing)",
                                    m->label);
                *v[k] = rd64(f), f += 8;
            }
            if (disk == 0xFFFF && fe - f >= 4)
                disk = rd32(f) ? 1 : 0;
        }
        x += 4 + len;
    }
    *pos += 46 + (uint64_t)nlen + xlen + clen;
    if (flags & 1)
        return dm_failc(DM_E_INPUT, "%s: the member is encrypted; dmica reads unencrypted .npz files", m->label);
    if (disk != 0)
        return dm_failc(DM_E_INPUT, "%s: a multi-disk (split) zip archive; join its parts first", m->label);
    /* the local header: signature, name, and where the data starts */
    if (lho > z->size || z->size - lho < 30 || rd32(b + lho) != 0x04034b50)
        return dm_failc(DM_E_CORRUPT, "%s: damaged: no zip local header where the central directory says (offset "
                        "%" PRIu64 ")", m->label, lho);
    unsigned lnlen = rd16(b + lho + 26), lxlen = rd16(b + lho + 28);
    if (z->size - lho - 30 < (uint64_t)lnlen + lxlen || lnlen != nlen || memcmp(b + lho + 30, m->member, nlen))
        return dm_failc(DM_E_CORRUPT, "%s: damaged: its local header does not name it as the central directory "
                        "does", m->label);
    m->data = lho + 30 + lnlen + lxlen;
    if (m->csize > z->size - m->data)
        return dm_failc(DM_E_CORRUPT, "%s: truncated: its %" PRIu64 " bytes of data run past the end of the file "
                        "(%" PRIu64 " bytes)", m->label, m->csize, z->size);
    if (m->method == 0 && m->csize != m->usize)
        return dm_failc(DM_E_CORRUPT, "%s: damaged: stored, but its sizes differ (%" PRIu64 " and %" PRIu64 ")",
                        m->label, m->csize, m->usize);
    size_t l = strlen(m->member);
    if (l > 4 && !strcmp(m->member + l - 4, ".npy"))
        m->name = dm_xasprintf("%.*s", (int)(l - 4), m->member);
    return 0;
}

dm_npz *dm_npz_open(const char *path)
{
    dm_npz *z = dm_xcalloc(1, sizeof *z);
    z->fd = -1;
    z->path = dm_xstrdup(path);
    z->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (z->fd < 0 || fstat(z->fd, &st) < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        dm_failc(DM_E_IO, "%s: not a regular file", path);
        goto fail;
    }
    z->size = (uint64_t)st.st_size;
    if (z->size == 0) {
        dm_failc(DM_E_CORRUPT, "%s: empty file, not an .npz archive", path);
        goto fail;
    }
    void *p = mmap(NULL, z->size, PROT_READ, MAP_SHARED, z->fd, 0);
    if (p == MAP_FAILED) {
        dm_failc(DM_E_IO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    z->base = p;
    int64_t eocd = find_end(z);
    if (eocd < 0)
        goto fail;
    const unsigned char *e = z->base + eocd;
    uint64_t count = rd16(e + 10), cd_size = rd32(e + 12), cd_off = rd32(e + 16), limit = (uint64_t)eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0 || rd16(e + 8) != rd16(e + 10)) {
        if (rd16(e + 4) != 0xFFFF) {
            dm_failc(DM_E_INPUT, "%s: a multi-disk (split) zip archive; join its parts first", path);
            goto fail;
        }
    }
    /* the ZIP64 end record, through its locator just before the end record */
    if (eocd >= 20 && rd32(e - 20) == 0x07064b50) {
        uint64_t z64 = rd64(e - 20 + 8);
        if (z64 > (uint64_t)eocd - 20 || (uint64_t)eocd - 20 - z64 < 56 || rd32(z->base + z64) != 0x06064b50) {
            dm_failc(DM_E_CORRUPT, "%s: damaged zip: no ZIP64 end record where its locator says", path);
            goto fail;
        }
        const unsigned char *r = z->base + z64;
        if (rd32(r + 16) != 0 || rd32(r + 20) != 0) {
            dm_failc(DM_E_INPUT, "%s: a multi-disk (split) zip archive; join its parts first", path);
            goto fail;
        }
        count = rd64(r + 32), cd_size = rd64(r + 40), cd_off = rd64(r + 48), limit = z64;
    }
    if (cd_off > limit || cd_size > limit - cd_off) {
        dm_failc(DM_E_CORRUPT, "%s: damaged or truncated zip: its central directory (%" PRIu64 " bytes at %" PRIu64
                 ") is not inside the file", path, cd_size, cd_off);
        goto fail;
    }
    if (count > cd_size / 46) {
        dm_failc(DM_E_CORRUPT, "%s: damaged zip: %" PRIu64 " members do not fit its central directory of %" PRIu64
                 " bytes", path, count, cd_size);
        goto fail;
    }
    z->m = dm_xcalloc(count ? count : 1, sizeof *z->m);
    uint64_t pos = cd_off;
    for (uint64_t i = 0; i < count; i++) {
        npz_member m = {0};
        int rc = read_entry(z, &pos, cd_off + cd_size, (int)i, &m);
        if (rc || !m.name) {
            free(m.member), free(m.name), free(m.label);
            if (rc)
                goto fail;
            continue;
        }
        z->m[z->n++] = m;
    }
    return z;
fail:
    dm_npz_close(z);
    return NULL;
}

/* ---- members ------------------------------------------------------------ */

static int check_method(const npz_member *m)
{
    if (m->method == 0 || (m->method == 8 && DM_ZLIB))
        return 0;
    if (m->method == 8)
        return dm_failc(DM_E_INPUT, "%s: deflated (numpy.savez_compressed), and this dmica was built without zlib: "
                        "install zlib1g-dev and rebuild, or save the arrays with numpy.savez", m->label);
    static const struct {
        int id;
        const char *name;
    } known[] = {{1, "shrink"}, {6, "implode"}, {9, "deflate64"}, {12, "bzip2"}, {14, "lzma"}, {93, "zstd"},
                 {95, "xz"}};
    const char *name = "unknown";
    for (size_t k = 0; k < sizeof known / sizeof *known; k++)
        if (known[k].id == m->method)
            name = known[k].name;
    return dm_failc(DM_E_INPUT, "%s: compression method %d (%s) is not supported: dmica reads stored (numpy.savez) "
                    "and deflated (numpy.savez_compressed) members", m->label, m->method, name);
}

#if DM_ZLIB
/* A member being inflated, the CRC-32 of its output so far. */
typedef struct {
    z_stream s;
    const npz_member *m;
    const unsigned char *in;
    uint64_t in_left;
    uint32_t crc;
} npz_inflate;

static int inf_begin(npz_inflate *f, const dm_npz *z, const npz_member *m)
{
    memset(f, 0, sizeof *f);
    f->m = m;
    f->in = z->base + m->data;
    f->in_left = m->csize;
    f->crc = (uint32_t)crc32(0, Z_NULL, 0);
    if (inflateInit2(&f->s, -MAX_WBITS) != Z_OK)
        return dm_failc(DM_E_IO, "%s: cannot start zlib's inflate", m->label);
    return 0;
}

/* Exactly n bytes of the member's next output into dst. */
static int inf_read(npz_inflate *f, void *dst, size_t n)
{
    unsigned char *out = dst;
    while (n > 0) {
        if (f->s.avail_in == 0 && f->in_left > 0) {
            uInt k = f->in_left > (1u << 30) ? 1u << 30 : (uInt)f->in_left;
            f->s.next_in = (Bytef *)(uintptr_t)f->in;
            f->s.avail_in = k;
            f->in += k, f->in_left -= k;
        }
        uInt k = n > (1u << 30) ? 1u << 30 : (uInt)n;
        f->s.next_out = out;
        f->s.avail_out = k;
        int rc = inflate(&f->s, Z_NO_FLUSH);
        size_t got = k - f->s.avail_out;
        f->crc = (uint32_t)crc32(f->crc, out, (uInt)got);
        out += got, n -= got;
        if (n == 0)
            break;
        if (rc == Z_STREAM_END || (rc == Z_BUF_ERROR && f->s.avail_in == 0 && f->in_left == 0))
            return dm_failc(DM_E_CORRUPT, "%s: damaged: its deflated data end %zu bytes early", f->m->label, n);
        if (rc != Z_OK)
            return dm_failc(DM_E_CORRUPT, "%s: damaged deflated data (zlib: %s)", f->m->label,
                            f->s.msg ? f->s.msg : "error");
    }
    return 0;
}

/* The stream must end here (after the bytes still to come up to usize, read
 * into scratch), and its CRC-32 match the directory's. */
static int inf_finish(npz_inflate *f)
{
    uint64_t left = f->m->usize - f->s.total_out;
    unsigned char scratch[4096];
    while (left > 0) {
        size_t k = left < sizeof scratch ? (size_t)left : sizeof scratch;
        if (inf_read(f, scratch, k))
            return -1;
        left -= k;
    }
    if (f->s.avail_in == 0 && f->in_left > 0) {
        uInt k = f->in_left > (1u << 30) ? 1u << 30 : (uInt)f->in_left;
        f->s.next_in = (Bytef *)(uintptr_t)f->in, f->s.avail_in = k;
        f->in += k, f->in_left -= k;
    }
    f->s.next_out = scratch, f->s.avail_out = 1;
    int rc = inflate(&f->s, Z_FINISH);
    if (rc != Z_STREAM_END || f->s.avail_out != 1)
        return dm_failc(DM_E_CORRUPT, "%s: damaged: its deflated data hold more than its %" PRIu64 " bytes",
                        f->m->label, f->m->usize);
    if (f->crc != f->m->crc)
        return dm_failc(DM_E_CORRUPT, "%s: damaged: CRC-32 %08x, the directory says %08x", f->m->label, f->crc,
                        f->m->crc);
    return 0;
}
#endif

int dm_npz_header(dm_npz *z, int i, dm_npy_header *h)
{
    const npz_member *m = &z->m[i];
    if (check_method(m))
        return -1;
    if (m->method == 0)
        return dm_npy_parse(z->base + m->data, (size_t)m->usize, m->usize, m->label, h);
#if DM_ZLIB
    size_t n = m->usize < NPZ_HEAD_MAX ? (size_t)m->usize : NPZ_HEAD_MAX;
    unsigned char *buf = dm_xmalloc(n + 1);
    npz_inflate f;
    int rc = inf_begin(&f, z, m);
    if (!rc) {
        rc = inf_read(&f, buf, n);
        inflateEnd(&f.s);
    }
    if (!rc)
        rc = dm_npy_parse(buf, n, m->usize, m->label, h);
    free(buf);
    return rc;
#else
    return -1;
#endif
}

int dm_npz_read_f32(dm_npz *z, int i, float *out)
{
    const npz_member *m = &z->m[i];
    dm_npy_header h;
    if (dm_npz_header(z, i, &h))
        return -1;
    if (h.dtype != DM_F32 && h.dtype != DM_F16 && h.dtype != DM_BF16 && h.dtype != DM_F64)
        return dm_failc(DM_E_CORRUPT, "%s: dtype %s where a float array (f32, f16, bf16 or f64) is needed", m->label,
                        dm_dtype_name(h.dtype));
    size_t numel = 1;
    for (int k = 0; k < h.ndim; k++)
        numel *= (size_t)h.shape[k];
    if (m->method == 0) {
        const unsigned char *p = z->base + m->data;
#if DM_ZLIB
        uint32_t crc = (uint32_t)crc32(0, Z_NULL, 0);
        for (uint64_t o = 0; o < m->usize; o += 1u << 30) {
            uint64_t k = m->usize - o < (1u << 30) ? m->usize - o : 1u << 30;
            crc = (uint32_t)crc32(crc, p + o, (uInt)k);
        }
        if (crc != m->crc)
            return dm_failc(DM_E_CORRUPT, "%s: damaged: CRC-32 %08x, the directory says %08x", m->label, crc, m->crc);
#endif
        dm_conv_to_f32(h.dtype, p + h.data_offset, out, numel);
        /* drop the member's pages from our mapping (they stay in the page cache) */
        long pg = sysconf(_SC_PAGESIZE);
        uint64_t a = (m->data + (uint64_t)pg - 1) / (uint64_t)pg * (uint64_t)pg;
        uint64_t b = (m->data + m->usize) / (uint64_t)pg * (uint64_t)pg;
        if (b > a)
            madvise((void *)(z->base + a), b - a, MADV_DONTNEED);
        return 0;
    }
#if DM_ZLIB
    size_t bytes = numel * dm_dtype_size(h.dtype);
    npz_inflate f;
    if (inf_begin(&f, z, m))
        return -1;
    unsigned char *head = dm_xmalloc((size_t)h.data_offset);
    void *dst = h.dtype == DM_F32 ? (void *)out : dm_xmalloc(bytes ? bytes : 1);
    int rc = inf_read(&f, head, (size_t)h.data_offset);
    if (!rc)
        rc = inf_read(&f, dst, bytes);
    if (!rc)
        rc = inf_finish(&f);
    inflateEnd(&f.s);
    if (!rc && dst != out)
        dm_conv_to_f32(h.dtype, dst, out, numel);
    if (dst != out)
        free(dst);
    free(head);
    return rc;
#else
    return -1;
#endif
}
