/*
 * dm.h: what every part of dmica shares: the error model, dtypes, chunks of rows
 * and small tensors.
 *
 * Errors: a function that can fail returns an int (0 ok, -1 failed) or a pointer
 * (NULL failed) and records a message with dm_fail(). The caller either adds
 * context with dm_fail_prefix() and returns -1 in turn, or shows dm_error() to the
 * user. Messages name the file, key or tensor ("x.npy: truncated: header says
 * 1000 rows, file holds 998"). Library code never exits the process, except
 * dm_xmalloc and friends on out-of-memory.
 */
#ifndef DM_H
#define DM_H

#include <stddef.h>
#include <stdint.h>

#define DM_VERSION "0.1.0"

/* ---- errors ------------------------------------------------------------ */

/* Records a formatted message (thread-local) and returns -1. */
int dm_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prepends "context: " to the recorded message and returns -1. */
int dm_fail_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last recorded message ("" if none). Valid until the next dm_fail*. */
const char *dm_error(void);
void dm_error_clear(void);

/* Diagnostics on stderr: "dmica: warning: ...". */
void dm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dm_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int dm_verbose; /* 0 quiet, 1 normal (default), 2 debug */

/* ---- memory ------------------------------------------------------------ */

/* Abort with a message on out-of-memory; never return NULL. Free with free(3). */
void *dm_xmalloc(size_t n);
void *dm_xcalloc(size_t n, size_t size);
void *dm_xrealloc(void *p, size_t n);
char *dm_xstrdup(const char *s);
char *dm_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* 64-byte aligned; free with free(3). */
void *dm_xmalloc_aligned(size_t n);
/* Like dm_xmalloc_aligned for large, long-lived buffers (packed weights): 2 MiB
 * aligned and marked for transparent huge pages, so that filling it takes few
 * page faults and reading it few TLB misses. Freed with free(). */
void *dm_xmalloc_huge(size_t n);

/* ---- dtypes ------------------------------------------------------------ */

typedef enum {
    DM_F32 = 0,
    DM_F64,
    DM_F16,
    DM_BF16,
    DM_I32,
    DM_I64,
    DM_U16,
    DM_U8,
    DM_DTYPE_COUNT
} dm_dtype;

size_t dm_dtype_size(dm_dtype t);
const char *dm_dtype_name(dm_dtype t);          /* "f32", "f64", "f16", "bf16", ... */
int dm_dtype_parse(const char *s, dm_dtype *out); /* inverse of dm_dtype_name; -1 if unknown */

/* IEEE half and bfloat16 conversions (round to nearest even). */
float dm_f16_to_f32(uint16_t h);
uint16_t dm_f32_to_f16(float f);
float dm_bf16_to_f32(uint16_t h);
uint16_t dm_f32_to_bf16(float f);

/* ---- data -------------------------------------------------------------- */

/*
 * A chunk: rows [row0, row0+rows) of a stream, float32, row-major, cols wide.
 * Streams are the unit the engine moves; every stream in memory is float32.
 */
typedef struct {
    int64_t row0; /* global index of the first row */
    int64_t rows;
    int64_t cols;
    float *data; /* rows x cols; owned by whoever produced the chunk */
} dm_chunk;

/* A small dense array (a covariance, eigenvalues, a whitening matrix). */
#define DM_MAX_DIMS 4
typedef struct {
    dm_dtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    void *data; /* owned by the tensor: dm_tensor_free releases it */
} dm_tensor;

/* Allocates zeroed storage for the given shape. */
void dm_tensor_init(dm_tensor *t, dm_dtype dtype, int ndim, const int64_t *shape);
int64_t dm_tensor_numel(const dm_tensor *t);
void dm_tensor_free(dm_tensor *t); /* accepts a zeroed or freed tensor */

/* A 1-D u8 tensor holding text (a JSON document passed between operators). */
void dm_tensor_from_text(dm_tensor *t, const char *text, size_t len);

/* A growing string: `dm_strbuf b = DM_STRBUF_INIT; dm_strbuf_addf(&b, ...);`
 * b.s is NUL-terminated (NULL while empty); free it with free(3). */
typedef struct {
    char *s;
    size_t len, cap;
} dm_strbuf;
#define DM_STRBUF_INIT {NULL, 0, 0}
void dm_strbuf_addf(dm_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses "512M", "2G", "1.5GiB", "100000" into bytes; -1 on error. */
int64_t dm_parse_size(const char *s);
/* Monotonic seconds. */
double dm_now(void);

#endif
