/*
 * corpus.c: documents out of plain, compressed and archived corpus files
 * (see corpus.h for the formats and their rules).
 *
 * The reader is a small state machine driven by dm_corpus_next:
 *   NONE      between files: open the next one (map it, or start libarchive)
 *   TEXT      one text document pending (a .txt file or archive member)
 *   LINES     handing out the lines of a .jsonl held in memory
 *   TOKENS    handing out eot-separated id runs of a .bin or 1-D .npy
 *   ARCHIVE   reading the next member of the innermost open archive
 * LINES, TOKENS and TEXT return to ARCHIVE when an archive is open, else to
 * NONE. Nested archives form a stack; each nested level owns the bytes of the
 * member it was opened from (libarchive reads it from memory).
 *
 * Why libarchive: it detects every compression filter (gzip, xz, zstd, bzip2,
 * lz4, ...) and archive format by content, and streams, so one code path reads
 * a .txt.gz, a .jsonl.zst and OpenWebText's .tar.xz of .xz archives. Archives
 * whose decompressed name says "a document" (x.txt.gz) are opened with only the
 * raw format, so no text is ever mistaken for an exotic archive format.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "corpus.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npy.h"

#define MAX_NESTING 4
#define ID_LIMIT (1 << 24) /* ids travel as float32: exact below 2^24 */

int dm_corpus_format_parse(const char *s, dm_corpus_format *out)
{
    static const char *names[] = {"auto", "txt", "jsonl", "bin", "npy"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i]))
            return *out = (dm_corpus_format)i, 0;
    return dm_fail("format must be auto, txt, jsonl, bin or npy, not '%s'", s);
}

/* ---- listing ---------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void dm_corpus_list_free(char **files, int n)
{
    for (int i = 0; files && i < n; i++)
        free(files[i]);
    free(files);
}

int dm_corpus_list(const char *path, const char *glob, char ***files, int *n)
{
    struct stat st;
    *files = NULL;
    *n = 0;
    if (stat(path, &st))
        return dm_failc(DM_E_IO, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        if (glob && *glob)
            return dm_fail("%s: glob '%s' needs path to be a folder, and this is a file", path, glob);
        *files = dm_xmalloc(sizeof **files);
        (*files)[0] = dm_xstrdup(path);
        *n = 1;
        return 0;
    }
    DIR *d = opendir(path);
    if (!d)
        return dm_failc(DM_E_IO, "%s: cannot list folder: %s", path, strerror(errno));
    char **v = NULL;
    int cnt = 0, subdirs = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *f = dm_xasprintf("%s/%s", path, e->d_name);
        if (stat(f, &st) || !S_ISREG(st.st_mode)) {
            subdirs += S_ISDIR(st.st_mode) ? 1 : 0;
            free(f);
            continue;
        }
        if (glob && *glob && fnmatch(glob, e->d_name, 0)) {
            free(f);
            continue;
        }
        v = dm_xrealloc(v, (size_t)(cnt + 1) * sizeof *v);
        v[cnt++] = f;
    }
    closedir(d);
    if (!cnt)
        return dm_fail("%s: no files%s%s%s%s", path, glob && *glob ? " match '" : "", glob && *glob ? glob : "",
                       glob && *glob ? "'" : "", subdirs ? " (subfolders are not read)" : "");
    if (subdirs)
        dm_warn("%s: %d subfolder%s not read (a corpus folder is read one level deep)", path, subdirs,
                subdirs > 1 ? "s" : "");
    qsort(v, (size_t)cnt, sizeof *v, cmp_str);
    *files = v;
    *n = cnt;
    return 0;
}

/* ---- names and magic -------------------------------------------------- */

static const char *const packed_ext[] = {".gz",  ".xz",  ".zst", ".zstd", ".bz2", ".lz4", ".lzma", ".tar",
                                         ".tgz", ".txz", ".tbz2", ".tzst", ".zip", ".7z",  NULL};

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

static int packed_name(const char *name)
{
    for (int i = 0; packed_ext[i]; i++)
        if (ends_with(name, packed_ext[i]))
            return 1;
    return 0;
}

static int packed_magic(const unsigned char *b, size_t n)
{
    return (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) ||                           /* gzip */
           (n >= 6 && !memcmp(b, "\xfd" "7zXZ\0", 6)) ||                          /* xz */
           (n >= 4 && !memcmp(b, "\x28\xb5\x2f\xfd", 4)) ||                       /* zstd */
           (n >= 10 && !memcmp(b, "BZh", 3) && !memcmp(b + 4, "1AY&SY", 6)) ||   /* bzip2 */
           (n >= 4 && !memcmp(b, "\x04\x22\x4d\x18", 4)) ||                       /* lz4 */
           (n >= 4 && !memcmp(b, "PK\x03\x04", 4)) ||                             /* zip */
           (n >= 6 && !memcmp(b, "7z\xbc\xaf\x27\x1c", 6)) ||                     /* 7z */
           (n >= 262 && !memcmp(b + 257, "ustar", 5));                            /* tar */
}

/* The name a compressed file stands for: "a.jsonl.gz" -> "a.jsonl", "b.tgz" -> "b.tar". */
static char *unpacked_name(const char *name)
{
    char *s = dm_xstrdup(name);
    static const char *const tars[] = {".tgz", ".txz", ".tbz2", ".tzst", NULL};
    for (int i = 0; tars[i]; i++)
        if (ends_with(s, tars[i])) {
            strcpy(s + strlen(s) - strlen(tars[i]), ".tar");
            return s;
        }
    for (int i = 0; packed_ext[i]; i++)
        if (strcmp(packed_ext[i], ".tar") && strcmp(packed_ext[i], ".zip") && strcmp(packed_ext[i], ".7z") &&
            ends_with(s, packed_ext[i])) {
            s[strlen(s) - strlen(packed_ext[i])] = 0;
            break;
        }
    return s;
}

dm_corpus_format dm_corpus_file_format(const char *path, dm_corpus_format format)
{
    if (format != DM_CORPUS_AUTO)
        return format;
    if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson"))
        return DM_CORPUS_JSONL;
    if (ends_with(path, ".bin"))
        return DM_CORPUS_BIN;
    if (ends_with(path, ".npy"))
        return DM_CORPUS_NPY;
    return DM_CORPUS_TXT;
}

int dm_corpus_needs_tokenizer(const char *path, dm_corpus_format format)
{
    char *u = unpacked_name(path);
    dm_corpus_format f = dm_corpus_file_format(u, format);
    int tar = ends_with(u, ".tar") || ends_with(u, ".zip") || ends_with(u, ".7z");
    free(u);
    return tar || f == DM_CORPUS_TXT || f == DM_CORPUS_JSONL;
}

/* A name that surely holds one document once decompressed (no archive inside). */
static int document_name(const char *name)
{
    return ends_with(name, ".txt") || ends_with(name, ".jsonl") || ends_with(name, ".ndjson") ||
           ends_with(name, ".bin") || ends_with(name, ".json") || ends_with(name, ".md");
}

/* ---- the reader ------------------------------------------------------- */

typedef enum { M_NONE = 0, M_TEXT, M_LINES, M_TOKENS, M_ARCHIVE } mode;

typedef struct {
    struct archive *a;
    void *mem;  /* the member bytes this level reads (nested levels own them) */
    char *name; /* "c.tar.xz" or "c.tar.xz: inner/x.xz" */
    char *unpacked; /* the name a raw (single compressed file) entry stands for */
} level;

struct dm_corpus {
    char **files;
    int nfiles, next_file;
    dm_corpus_format format;
    char *field;
    int32_t eot;
    mode m;

    /* the current plain file */
    void *map;
    size_t maplen;
    dm_npy_map *npy;

    /* the current source of documents: its bytes and name */
    const char *buf;
    size_t len, pos;
    char *name;
    int64_t lineno;
    json_t *json; /* keeps the current line's string alive */

    /* token sources */
    dm_dtype tdtype;
    size_t tcount, tpos;
    int in_doc, part;
    int32_t *piece;

    level stack[MAX_NESTING + 1];
    int depth;
    char *member;
    size_t member_cap;

    int64_t ndocs;
    char *where;
};

dm_corpus *dm_corpus_open(char *const *files, int nfiles, dm_corpus_format format, const char *text_field,
                          int32_t eot)
{
    dm_corpus *c = dm_xcalloc(1, sizeof *c);
    c->files = dm_xcalloc((size_t)nfiles + 1, sizeof *c->files);
    for (int i = 0; i < nfiles; i++)
        c->files[i] = dm_xstrdup(files[i]);
    c->nfiles = nfiles;
    c->format = format;
    c->field = dm_xstrdup(text_field ? text_field : "text");
    c->eot = eot;
    return c;
}

static void set_where(dm_corpus *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_where(dm_corpus *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(c->where);
    if (vasprintf(&c->where, fmt, ap) < 0)
        dm_oom(strlen(fmt), "a corpus position");
    va_end(ap);
}

static void unmap_file(dm_corpus *c)
{
    if (c->map && c->maplen)
        munmap(c->map, c->maplen);
    c->map = NULL;
    c->maplen = 0;
    dm_npy_close(c->npy);
    c->npy = NULL;
}

static void pop_level(dm_corpus *c)
{
    level *l = &c->stack[--c->depth];
    archive_read_free(l->a);
    free(l->mem), free(l->name), free(l->unpacked);
    memset(l, 0, sizeof *l);
}

/* Where a source ends: back to its archive, or on to the next file. */
static void source_done(dm_corpus *c)
{
    json_decref(c->json);
    c->json = NULL;
    free(c->name);
    c->name = NULL;
    c->buf = NULL;
    c->len = c->pos = 0;
    c->m = c->depth ? M_ARCHIVE : M_NONE;
    if (!c->depth)
        unmap_file(c);
}

void dm_corpus_close(dm_corpus *c)
{
    if (!c)
        return;
    json_decref(c->json);
    while (c->depth)
        pop_level(c);
    unmap_file(c);
    dm_corpus_list_free(c->files, c->nfiles);
    free(c->field), free(c->name), free(c->piece), free(c->member), free(c->where);
    free(c);
}

int64_t dm_corpus_documents(const dm_corpus *c) { return c->ndocs; }

/* Starts a source over bytes buf[0, len) named name (ownership of name passes). */
static int start_source(dm_corpus *c, const char *buf, size_t len, char *name, dm_corpus_format f)
{
    c->buf = buf;
    c->len = len;
    c->pos = 0;
    c->lineno = 0;
    free(c->name);
    c->name = name;
    switch (f) {
    case DM_CORPUS_JSONL: c->m = M_LINES; return 0;
    case DM_CORPUS_BIN:
        if (len % 2)
            return dm_failc(DM_E_CORRUPT, "%s: a .bin token file holds uint16 ids, but its size %zu is odd", name, len);
        c->tdtype = DM_U16;
        c->tcount = len / 2;
        c->tpos = 0;
        c->in_doc = 0;
        c->m = M_TOKENS;
        return 0;
    case DM_CORPUS_NPY: return dm_fail("%s: .npy token arrays inside archives are not supported: unpack it", name);
    default: c->m = M_TEXT; return 0;
    }
}

static struct archive *new_archive(const char *name)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    char *u = unpacked_name(name);
    if (!document_name(u))
        archive_read_support_format_all(a);
    else
        archive_read_support_format_empty(a);
    archive_read_support_format_raw(a);
    free(u);
    return a;
}

/* libarchive's reason for the last failure on a (it may have none). */
static const char *la_error(struct archive *a)
{
    const char *e = archive_error_string(a);
    return e ? e : "libarchive gave no reason";
}

static int push_level(dm_corpus *c, const char *name, void *mem, size_t len, const char *file)
{
    if (c->depth >= MAX_NESTING) {
        free(mem);
        return dm_fail("%s: archives nested more than %d deep", name, MAX_NESTING);
    }
    level *l = &c->stack[c->depth];
    l->a = new_archive(name);
    l->mem = mem;
    l->name = dm_xstrdup(name);
    char *base = strrchr(name, '/');
    l->unpacked = unpacked_name(base ? base + 1 : name);
    int r = file ? archive_read_open_filename(l->a, file, 1 << 16) : archive_read_open_memory(l->a, mem, len);
    c->depth++;
    if (r != ARCHIVE_OK)
        return dm_failc(DM_E_CORRUPT, "%s: unreadable archive or compressed file: %s", name, la_error(l->a));
    return 0;
}

static int open_next_file(dm_corpus *c)
{
    const char *path = c->files[c->next_file++];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_failc(DM_E_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        close(fd);
        return dm_failc(DM_E_IO, "%s: %s", path, strerror(errno));
    }
    unsigned char head[512];
    ssize_t got = pread(fd, head, sizeof head, 0);
    if (got < 0) {
        close(fd);
        return dm_failc(DM_E_IO, "%s: read failed: %s", path, strerror(errno));
    }
    if (packed_name(path) || packed_magic(head, (size_t)got)) {
        close(fd);
        c->m = M_ARCHIVE;
        return push_level(c, path, NULL, 0, path);
    }
    dm_corpus_format f = dm_corpus_file_format(path, c->format);
    if (f == DM_CORPUS_NPY) {
        close(fd);
        if (!(c->npy = dm_npy_open(path)))
            return -1;
        const dm_npy_header *h = dm_npy_hdr(c->npy);
        if (h->ndim != 1)
            return dm_failc(DM_E_SHAPE,
                            "%s: a %d-D array: token arrays are 1-D (a stream of ids) or 2-D windows, and 2-D "
                           "windows cannot be mixed with other inputs",
                           path, h->ndim);
        if (h->dtype != DM_I32 && h->dtype != DM_I64 && h->dtype != DM_U16 && h->dtype != DM_U8)
            return dm_failc(DM_E_SHAPE, "%s: token ids must be integers (int32, int64, uint16 or uint8), not %s", path,
                            dm_dtype_name(h->dtype));
        c->name = dm_xstrdup(path);
        c->buf = dm_npy_data(c->npy);
        c->tdtype = h->dtype;
        c->tcount = (size_t)h->shape[0];
        c->tpos = 0;
        c->in_doc = 0;
        c->m = M_TOKENS;
        return 0;
    }
    if (st.st_size > 0) {
        c->map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (c->map == MAP_FAILED) {
            c->map = NULL;
            close(fd);
            return dm_failc(DM_E_IO, "%s: cannot map: %s", path, strerror(errno));
        }
        c->maplen = (size_t)st.st_size;
        madvise(c->map, c->maplen, MADV_SEQUENTIAL);
    }
    close(fd);
    return start_source(c, c->map, c->maplen, dm_xstrdup(path), f);
}

/* Reads the current member of the innermost archive whole into c->member. */
static int read_member(dm_corpus *c, struct archive *a, const char *where, size_t *len)
{
    size_t n = 0;
    for (;;) {
        if (c->member_cap - n < (1 << 16)) {
            c->member_cap = c->member_cap ? c->member_cap * 2 : (1 << 20);
            c->member = dm_xrealloc(c->member, c->member_cap);
        }
        la_ssize_t r = archive_read_data(a, c->member + n, c->member_cap - n - 1);
        if (r < 0)
            return dm_failc(DM_E_CORRUPT, "%s: corrupt or truncated data: %s", where, la_error(a));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *len = n;
    return 0;
}

/* Advances the innermost archive to its next document source; 0 when one is set
 * (or the level ended and was popped), -1 on error. */
static int next_member(dm_corpus *c)
{
    level *l = &c->stack[c->depth - 1];
    struct archive_entry *e;
    int r = archive_read_next_header(l->a, &e);
    if (r == ARCHIVE_EOF) {
        pop_level(c);
        if (!c->depth)
            source_done(c);
        return 0;
    }
    if (r < ARCHIVE_WARN)
        return dm_failc(DM_E_CORRUPT, "%s: unreadable archive or compressed file: %s", l->name, la_error(l->a));
    int raw = archive_format(l->a) == ARCHIVE_FORMAT_RAW;
    /* raw with no decompression filter: libarchive recognised nothing, yet the name or
     * the first bytes said archive; reading the bytes as text would hand out noise */
    if (raw && archive_filter_code(l->a, 0) == ARCHIVE_FILTER_NONE) {
        const char *why = archive_error_string(l->a);
        return dm_failc(DM_E_CORRUPT, "%s: not a readable archive or compressed file (its name or first bytes "
                        "say it is one, but %s)", l->name, why ? why : "libarchive recognises no format or "
                        "compression in it");
    }
    if (!raw && archive_entry_filetype(e) != AE_IFREG)
        return 0;
    const char *mname = raw ? l->unpacked : archive_entry_pathname(e);
    if (!mname)
        mname = "?";
    char *where = raw ? dm_xstrdup(l->name) : dm_xasprintf("%s: %s", l->name, mname);
    size_t len = 0;
    if (read_member(c, l->a, where, &len)) {
        free(where);
        return -1;
    }
    if (!raw && (packed_name(mname) || packed_magic((unsigned char *)c->member, len))) {
        void *mem = c->member;
        c->member = NULL;
        c->member_cap = 0;
        int rc = push_level(c, where, mem, len, NULL);
        free(where);
        return rc;
    }
    return start_source(c, c->member, len, where, dm_corpus_file_format(mname, c->format));
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* The next document of a .jsonl: 1, 0 at its end, -1 on error. */
static int next_line(dm_corpus *c, dm_doc *doc)
{
    while (c->pos < c->len) {
        const char *s = c->buf + c->pos, *nl = memchr(s, '\n', c->len - c->pos);
        size_t n = nl ? (size_t)(nl - s) : c->len - c->pos;
        c->pos += n + (nl ? 1 : 0);
        c->lineno++;
        if (is_blank(s, n))
            continue;
        json_error_t err;
        json_decref(c->json);
        c->json = json_loadb(s, n, 0, &err);
        if (!c->json)
            return dm_failc(DM_E_CORRUPT, "%s:%lld: not a JSON line: %s (column %d)", c->name, (long long)c->lineno,
                            err.text, err.column);
        json_t *v = json_is_object(c->json) ? json_object_get(c->json, c->field) : NULL;
        if (!json_is_string(v))
            return dm_fail("%s:%lld: no string field '%s'%s", c->name, (long long)c->lineno, c->field,
                           json_is_object(c->json) ? "" : " (the line is not a JSON object)");
        if (!json_string_length(v))
            continue;
        set_where(c, "%s:%lld", c->name, (long long)c->lineno);
        doc->is_tokens = 0;
        doc->text = json_string_value(v);
        doc->len = json_string_length(v);
        doc->index = c->ndocs++;
        doc->part = 0;
        doc->where = c->where;
        return 1;
    }
    return 0;
}

static int64_t token_at(const dm_corpus *c, size_t i)
{
    switch (c->tdtype) {
    case DM_I32: { int32_t v; memcpy(&v, c->buf + 4 * i, 4); return v; }
    case DM_I64: { int64_t v; memcpy(&v, c->buf + 8 * i, 8); return v; }
    case DM_U16: { uint16_t v; memcpy(&v, c->buf + 2 * i, 2); return v; }
    default: return (uint8_t)c->buf[i];
    }
}

/* The next piece of a token document: 1, 0 at the source's end, -1 on error. */
static int next_tokens(dm_corpus *c, dm_doc *doc)
{
    if (!c->piece)
        c->piece = dm_xmalloc(sizeof(int32_t) * DM_CORPUS_PIECE);
    while (c->tpos < c->tcount) {
        size_t n = 0;
        int ended = 0;
        while (c->tpos < c->tcount && n < DM_CORPUS_PIECE) {
            int64_t v = token_at(c, c->tpos);
            if (v < 0 || v >= ID_LIMIT)
                return dm_failc(DM_E_CORRUPT, "%s: token id %lld at index %zu is out of range (0 to %d)", c->name,
                                (long long)v, c->tpos, ID_LIMIT - 1);
            c->tpos++;
            if (v == c->eot) {
                ended = 1;
                break;
            }
            c->piece[n++] = (int32_t)v;
        }
        if (!n) {
            if (ended && c->in_doc)
                c->in_doc = 0;
            continue;
        }
        if (!c->in_doc) {
            c->in_doc = 1;
            c->part = 0;
            c->ndocs++;
            set_where(c, "%s: document %lld (token %zu)", c->name, (long long)c->ndocs - 1, c->tpos - n - ended);
        } else {
            c->part++;
        }
        doc->is_tokens = 1;
        doc->ids = c->piece;
        doc->n = n;
        doc->index = c->ndocs - 1;
        doc->part = c->part;
        doc->where = c->where;
        if (ended)
            c->in_doc = 0;
        return 1;
    }
    return 0;
}

void dm_corpus_skip_rest(dm_corpus *c)
{
    if (c->m != M_TOKENS || !c->in_doc)
        return;
    while (c->tpos < c->tcount) {
        int64_t v = token_at(c, c->tpos++);
        if (v == c->eot)
            break;
    }
    c->in_doc = 0;
}

int dm_corpus_next(dm_corpus *c, dm_doc *doc)
{
    for (;;) {
        int r;
        switch (c->m) {
        case M_NONE:
            if (c->next_file >= c->nfiles)
                return 0;
            if (open_next_file(c))
                return -1;
            break;
        case M_ARCHIVE:
            if (next_member(c))
                return -1;
            break;
        case M_TEXT:
            if (!c->len) {
                source_done(c);
                break;
            }
            set_where(c, "%s", c->name);
            doc->is_tokens = 0;
            doc->text = c->buf;
            doc->len = c->len;
            doc->index = c->ndocs++;
            doc->part = 0;
            doc->where = c->where;
            c->len = 0; /* handed out; the bytes stay valid until the next call */
            c->m = M_TEXT;
            return 1;
        case M_LINES:
            if ((r = next_line(c, doc)))
                return r;
            source_done(c);
            break;
        case M_TOKENS:
            if ((r = next_tokens(c, doc)))
                return r;
            source_done(c);
            break;
        }
    }
}
