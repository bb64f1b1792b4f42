/*
 * safetensors.c: a validating reader of safetensors files (see safetensors.h).
 *
 * The whole file is mapped read-only; the header is parsed once with jansson
 * into a name-sorted table of tensors pointing into the mapping. Every check
 * that can fail is done in dm_st_open, so a handle that opened is safe to read:
 * no later access can run past the file. The mapping lives until dm_st_close.
 */
#include "safetensors.h"
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER (100LL << 20)
#define ST_PREFIX "transformer."

struct dm_safetensors {
    char *path;
    const uint8_t *map;
    size_t map_len;
    int n;
    dm_st_tensor *t;  /* n, sorted by name */
    char **meta;      /* key, value, key, value, ..., NULL */
};

/* Every dtype of the format, with its element size in bytes. */
static const struct {
    const char *name;
    int size;
} st_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2}, {"U8", 1},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

static int st_dtype_size(const char *name, const char **canon)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(name, st_dtypes[i].name)) {
            *canon = st_dtypes[i].name;
            return st_dtypes[i].size;
        }
    return 0;
}

const char *dm_st_shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t k = 0;
    if (n == 0)
        return buf;
    buf[0] = 0;
    k += snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

static int st_cmp_name(const void *a, const void *b)
{
    return strcmp(((const dm_st_tensor *)a)->name, ((const dm_st_tensor *)b)->name);
}

/* Fills t from the header entry of name; data_len is the size of the data area. */
static int st_parse_entry(const char *path, const char *name, json_t *e, const uint8_t *data,
                          int64_t data_len, dm_st_tensor *t)
{
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"),
           *jo = json_object_get(e, "data_offsets");
    char sbuf[256];
    if (!json_is_object(e))
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: header entry is not an object", path, name);
    if (!json_is_string(jd))
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: missing dtype", path, name);
    int esize = st_dtype_size(json_string_value(jd), &t->dtype);
    if (!esize)
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: unknown dtype '%s'", path, name, json_string_value(jd));
    if (!json_is_array(js))
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: missing shape", path, name);
    t->ndim = (int)json_array_size(js);
    if (t->ndim > DM_ST_MAX_DIMS)
        return dm_failc(DM_E_SHAPE, "%s: tensor %s: %d dimensions (at most %d supported)", path, name, t->ndim,
                        DM_ST_MAX_DIMS);
    t->numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return dm_failc(DM_E_CORRUPT, "%s: tensor %s: shape entry %d is not a non-negative integer", path,
                            name, i);
        t->shape[i] = json_integer_value(d);
        if (__builtin_mul_overflow(t->numel, t->shape[i], &t->numel))
            return dm_failc(DM_E_CORRUPT, "%s: tensor %s: shape overflows", path, name);
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: data_offsets must be [begin, end]", path, name);
    int64_t begin = json_integer_value(json_array_get(jo, 0));
    int64_t end = json_integer_value(json_array_get(jo, 1));
    if (begin < 0 || end < begin)
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: bad data_offsets [%lld, %lld]", path, name,
                        (long long)begin, (long long)end);
    if (end > data_len)
        return dm_failc(DM_E_CORRUPT, "%s: truncated: tensor %s data_offsets [%lld, %lld] end past the data "
                        "(%lld bytes after the header)",
                        path, name, (long long)begin, (long long)end, (long long)data_len);
    if (__builtin_mul_overflow(t->numel, (int64_t)esize, &t->nbytes))
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: shape %s of %s needs more than 2^63 bytes", path, name,
                        dm_st_shape_str(t->shape, t->ndim, sbuf, sizeof sbuf), t->dtype);
    if (t->nbytes != end - begin)
        return dm_failc(DM_E_CORRUPT, "%s: tensor %s: shape %s of %s needs %lld bytes, data_offsets [%lld, %lld] "
                        "hold %lld",
                        path, name, dm_st_shape_str(t->shape, t->ndim, sbuf, sizeof sbuf),
                        t->dtype, (long long)t->nbytes, (long long)begin,
                        (long long)end, (long long)(end - begin));
    t->data = data + begin;
    return 0;
}

static int st_parse_header(dm_safetensors *st, const char *json, size_t len, const uint8_t *data,
                           int64_t data_len)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *key;
    json_t *val;
    int rc = -1;
    if (!root)
        return dm_failc(DM_E_CORRUPT, "%s: header is not valid JSON: %s (line %d, column %d)", st->path,
                        jerr.text, jerr.line, jerr.column);
    if (!json_is_object(root)) {
        dm_failc(DM_E_CORRUPT, "%s: header is not a JSON object", st->path);
        goto end;
    }
    st->t = dm_xcalloc(json_object_size(root) + 1, sizeof *st->t);
    json_object_foreach(root, key, val)
    {
        if (!strcmp(key, "__metadata__")) {
            size_t nm = 0;
            const char *mk;
            json_t *mv;
            if (!json_is_object(val)) {
                dm_failc(DM_E_CORRUPT, "%s: __metadata__ is not an object", st->path);
                goto end;
            }
            st->meta = dm_xcalloc(2 * json_object_size(val) + 1, sizeof *st->meta);
            json_object_foreach(val, mk, mv)
            {
                if (!json_is_string(mv))
                    continue;
                st->meta[nm++] = dm_xstrdup(mk);
                st->meta[nm++] = dm_xstrdup(json_string_value(mv));
            }
            continue;
        }
        dm_st_tensor *t = &st->t[st->n];
        if (st_parse_entry(st->path, key, val, data, data_len, t) < 0)
            goto end;
        t->name = dm_xstrdup(strncmp(key, ST_PREFIX, strlen(ST_PREFIX)) ? key
                                                                         : key + strlen(ST_PREFIX));
        st->n++;
    }
    qsort(st->t, st->n, sizeof *st->t, st_cmp_name);
    for (int i = 1; i < st->n; i++)
        if (!strcmp(st->t[i - 1].name, st->t[i].name)) {
            dm_failc(DM_E_CORRUPT, "%s: tensor %s appears twice (with and without the \"" ST_PREFIX "\" prefix)",
                     st->path, st->t[i].name);
            goto end;
        }
    rc = 0;
end:
    json_decref(root);
    return rc;
}

dm_safetensors *dm_st_open(const char *path)
{
    dm_safetensors *st = dm_xcalloc(1, sizeof *st);
    struct stat sb;
    uint64_t hlen = 0;
    st->path = dm_xstrdup(path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dm_failc(DM_E_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &sb) < 0) {
        dm_failc(DM_E_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        dm_failc(DM_E_IO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    if (sb.st_size < 8) {
        dm_failc(DM_E_CORRUPT, "%s: truncated: %lld bytes, too short for a safetensors header", path,
                 (long long)sb.st_size);
        close(fd);
        goto fail;
    }
    st->map_len = (size_t)sb.st_size;
    void *p = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        dm_failc(DM_E_IO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    st->map = p;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)st->map[i] << (8 * i);
    if (hlen > (uint64_t)ST_MAX_HEADER || hlen > st->map_len - 8) {
        dm_failc(DM_E_CORRUPT, "%s: header length %llu exceeds the file (%zu bytes)%s", path,
                 (unsigned long long)hlen, st->map_len,
                 hlen > (uint64_t)ST_MAX_HEADER ? " or the 100 MB limit" : "");
        goto fail;
    }
    if (hlen < 2 || st->map[8] != '{') {
        dm_failc(DM_E_CORRUPT, "%s: not a safetensors file (header does not start with '{')", path);
        goto fail;
    }
    if (st_parse_header(st, (const char *)st->map + 8, hlen, st->map + 8 + hlen,
                        (int64_t)(st->map_len - 8 - hlen)) < 0)
        goto fail;
    return st;
fail:
    dm_st_close(st);
    return NULL;
}

void dm_st_close(dm_safetensors *st)
{
    if (!st)
        return;
    if (st->map)
        munmap((void *)st->map, st->map_len);
    for (int i = 0; i < st->n; i++)
        free((char *)st->t[i].name);
    free(st->t);
    for (char **m = st->meta; m && *m; m++)
        free(*m);
    free(st->meta);
    free(st->path);
    free(st);
}

const char *dm_st_path(const dm_safetensors *st) { return st->path; }
int dm_st_count(const dm_safetensors *st) { return st->n; }
const dm_st_tensor *dm_st_at(const dm_safetensors *st, int i)
{
    return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

const dm_st_tensor *dm_st_find(const dm_safetensors *st, const char *name)
{
    dm_st_tensor key = {.name = name};
    if (!strncmp(name, ST_PREFIX, strlen(ST_PREFIX)))
        key.name = name + strlen(ST_PREFIX);
    return bsearch(&key, st->t, st->n, sizeof *st->t, st_cmp_name);
}

const char *dm_st_metadata(const dm_safetensors *st, const char *key)
{
    for (char **m = st->meta; m && *m; m += 2)
        if (!strcmp(m[0], key))
            return m[1];
    return NULL;
}

int dm_st_is_float(const dm_st_tensor *t)
{
    return !strcmp(t->dtype, "F32") || !strcmp(t->dtype, "F16") || !strcmp(t->dtype, "BF16");
}

int dm_st_read_f32(const dm_safetensors *st, const dm_st_tensor *t, float *out)
{
    const uint8_t *src = t->data;
    if (!strcmp(t->dtype, "F32")) {
        memcpy(out, src, (size_t)t->nbytes);
    } else if (!strcmp(t->dtype, "F16")) {
        for (int64_t i = 0; i < t->numel; i++)
            out[i] = dm_f16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
    } else if (!strcmp(t->dtype, "BF16")) {
        for (int64_t i = 0; i < t->numel; i++)
            out[i] = dm_bf16_to_f32((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
    } else {
        return dm_failc(DM_E_SHAPE, "%s: tensor %s has dtype %s; only F32, F16 and BF16 can be read", st->path,
                        t->name, t->dtype);
    }
    return 0;
}

int dm_st_write_f32(const char *path, const char *const *names, const dm_tensor *ts, int n)
{
    json_t *h = json_object();
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (ts[i].dtype != DM_F32) {
            json_decref(h);
            return dm_failc(DM_E_INTERNAL, "%s: tensor %s: only float32 is written", path, names[i]);
        }
        json_t *shape = json_array(), *e = json_object();
        for (int k = 0; k < ts[i].ndim; k++)
            json_array_append_new(shape, json_integer(ts[i].shape[k]));
        int64_t bytes = dm_tensor_numel(&ts[i]) * 4;
        json_object_set_new(e, "dtype", json_string("F32"));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[I, I]", (json_int_t)off, (json_int_t)(off + bytes)));
        json_object_set_new(h, names[i], e);
        off += bytes;
    }
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    char *text = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    size_t hlen = strlen(text), padded = (hlen + 7) & ~(size_t)7; /* the data starts 8-aligned */
    size_t total = 8 + padded + (size_t)off;
    unsigned char *buf = dm_xmalloc(total);
    uint64_t le = padded;
    for (int b = 0; b < 8; b++)
        buf[b] = (unsigned char)(le >> (8 * b));
    memcpy(buf + 8, text, hlen);
    memset(buf + 8 + hlen, ' ', padded - hlen);
    size_t at = 8 + padded;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)dm_tensor_numel(&ts[i]) * 4;
        memcpy(buf + at, ts[i].data, bytes);
        at += bytes;
    }
    int rc = dm_write_file_atomic(path, buf, total);
    free(buf);
    free(text);
    return rc;
}
