/*
 * dm.h: what every part of dmica shares: the error model, dtypes, chunks of rows
 * and small tensors.
 *
 * Errors: a function that can fail returns an int (0 ok, -1 failed) or a pointer
 * (NULL failed) and records an error: a code (what kind of failure, dm_errc) and
 * a message naming the file, key or tensor ("x.npy: truncated: header says 1000
 * rows, file holds 998"). The caller either adds context with dm_fail_prefix()
 * (the code stays) and returns -1 in turn, or shows dm_error() to the user; the
 * command line turns the code into the exit status (dm_errc_exit). There are no
 * other return conventions: no sentinel values besides -1/NULL.
 * Library code never exits the process, with one documented exception: running
 * out of memory in dm_xmalloc and friends (dm_oom), which prints and aborts.
 */
#ifndef DM_H
#define DM_H

#include <stddef.h>
#include <stdint.h>

#define DM_VERSION "0.1.0"

/* ---- errors ------------------------------------------------------------ */

typedef enum {
    DM_OK = 0,
    DM_E_INPUT,       /* a value, parameter, pipeline or file the user gave is not acceptable */
    DM_E_USAGE,       /* the command line itself: unknown option, missing argument */
    DM_E_IO,          /* a file could not be opened, read or written (missing, full disk) */
    DM_E_CORRUPT,     /* data that is not what it says: bad header, checksum, truncation */
    DM_E_SHAPE,       /* shapes or dtypes that do not fit together */
    DM_E_NOMEM,       /* over the memory budget, or an allocation that may fail failed */
    DM_E_INTERRUPTED, /* stopped by a signal */
    DM_E_INTERNAL,    /* a bug in dmica (an operator reading an undeclared parameter, ...) */
    DM_ERRC_COUNT
} dm_errc;

/* Records a formatted message (thread-local) with code DM_E_INPUT and returns -1. */
int dm_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with a code. */
int dm_failc(dm_errc code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "context: " to the recorded message (the code stays) and returns -1. */
int dm_fail_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last recorded message ("" if none). Valid until the next dm_fail*. */
const char *dm_error(void);
/* The last recorded code (DM_OK if none). */
dm_errc dm_error_code(void);
void dm_error_clear(void);
/* Which part of a program the recorded error has been attributed to (an opaque
 * pointer: the engine marks an error with the node it prefixed "node 'x' (op)"
 * to, so that the levels above it do not name a node again). dm_fail and
 * dm_failc clear the mark (a new error is nobody's yet); dm_fail_prefix keeps it. */
void dm_error_attribute(const void *subject);
const void *dm_error_subject(void);
/* "input", "usage", "io", "corrupt", "shape", "no memory", "interrupted", "internal". */
const char *dm_errc_name(dm_errc code);
/* The process exit status for a code: 2 for usage, 128 + the signal for
 * interrupted (130 for SIGINT, 143 for SIGTERM; 130 when no signal was
 * recorded), else 1. */
int dm_errc_exit(dm_errc code);
/* dm_errc_exit(dm_error_code()), but 1 when nothing was recorded: a command that
 * failed never exits 0. */
int dm_error_exit(void);

/* ---- interruption ------------------------------------------------------ */

/*
 * SIGINT and SIGTERM stop a run cleanly (run.c): while dm_signals_catch() is in
 * force, a handler records the signal and does nothing else (it sets a
 * volatile sig_atomic_t, the one async-signal-safe thing it needs; POSIX
 * "Signal Concepts"), and the engine checks dm_interrupted() between chunks,
 * fails with DM_E_INTERRUPTED and takes its normal error path. The handler is
 * installed with SA_RESETHAND, so a second Ctrl-C kills at once. Calls nest:
 * the outermost dm_signals_catch clears the recorded signal and installs the
 * handler, the matching dm_signals_restore puts back the previous actions. The
 * recorded signal stays readable afterwards (for the exit status).
 */
void dm_signals_catch(void);
void dm_signals_restore(void);
/* The signal recorded (SIGINT or SIGTERM), or 0. */
int dm_interrupted(void);
/* "SIGINT", "SIGTERM" or "signal N". */
const char *dm_signal_name(int sig);
/* Records DM_E_INTERRUPTED "interrupted by SIGINT" and returns -1 when a signal
 * was recorded; returns 0 otherwise. */
int dm_check_interrupt(void);

/* Diagnostics on stderr: "dmica: warning: ...". */
void dm_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dm_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern int dm_verbose; /* 0 quiet, 1 normal (default), 2 debug */

/* ---- memory ------------------------------------------------------------ */

/* The one place dmica stops the process: an allocation that cannot fail has
 * failed. Prints "dmica: out of memory allocating N bytes (what)" and aborts. */
void dm_oom(size_t n, const char *what) __attribute__((noreturn));
/* Never return NULL (dm_oom on failure). Free with free(3). */
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

/* ---- seeded draws ------------------------------------------------------- */

/* splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
 * generators", OOPSLA 2014): dm_mix64 is its finaliser, a bijection that
 * scatters counters and keys; dm_splitmix64 the generator on state *s. */
static inline uint64_t dm_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t dm_splitmix64(uint64_t *s) { return dm_mix64(*s += 0x9e3779b97f4a7c15ULL); }

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
 * A chunk: rows [row0, row0+rows) of a stream, row-major, cols wide. Streams are
 * the unit the engine moves; a stream's values are f32 (activations, the
 * default), i32 (token ids) or i64 (row indices), the same for every chunk of
 * it. A zeroed chunk is f32, so `{row0, rows, cols, floats}` still builds one.
 */
typedef struct {
    int64_t row0; /* global index of the first row */
    int64_t rows;
    int64_t cols;
    union { /* rows x cols values; owned by whoever produced the chunk */
        float *data;  /* dtype DM_F32 */
        int32_t *i32; /* dtype DM_I32 */
        int64_t *i64; /* dtype DM_I64 */
        void *ptr;
    };
    dm_dtype dtype; /* DM_F32 (0), DM_I32 or DM_I64 */
    /* The same values in a GPU's memory, where a GPU entry made them (NULL
     * otherwise): the engine hints it to its consumers' GPU entries, which
     * then read it rather than the host's copy (device.h). Valid, like data,
     * for the emit only. */
    const void *dev;
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

/* Parses "512M", "2G", "1.5GiB", "100000" into bytes (units are powers of 1024;
 * a fraction of a byte is dropped): 0 up to 8 EiB - 1. -1 on error (DM_E_INPUT) with a
 * message that says what is wrong and what a size looks like, for the caller to
 * prefix with what the size is ("--memory: ..."). Callers that need a positive
 * size check 0 themselves. */
int64_t dm_parse_size(const char *s);
/* Monotonic seconds. */
double dm_now(void);

#endif
