/*
 * dm.c: the shared basics declared in dm.h: error messages, allocation, dtype
 * names and half-precision conversions, sizes and clocks.
 */
#include "dm.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>

#define DM_ERRMAX 4096
static _Thread_local char dm_errbuf[DM_ERRMAX];
static _Thread_local dm_errc dm_errcode;
static _Thread_local const void *dm_errsubject;
int dm_verbose = 1;

int dm_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dm_errbuf, sizeof dm_errbuf, fmt, ap);
    va_end(ap);
    dm_errcode = DM_E_INPUT;
    dm_errsubject = NULL;
    return -1;
}

int dm_failc(dm_errc code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dm_errbuf, sizeof dm_errbuf, fmt, ap);
    va_end(ap);
    dm_errcode = code > DM_OK && code < DM_ERRC_COUNT ? code : DM_E_INTERNAL;
    dm_errsubject = NULL;
    return -1;
}

int dm_fail_prefix(const char *fmt, ...)
{
    char prefix[1024], old[DM_ERRMAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, dm_errbuf, sizeof old);
    snprintf(dm_errbuf, sizeof dm_errbuf, "%s: %s", prefix, old);
    return -1;
}

const char *dm_error(void) { return dm_errbuf; }
dm_errc dm_error_code(void) { return dm_errbuf[0] && dm_errcode == DM_OK ? DM_E_INPUT : dm_errcode; }
void dm_error_clear(void)
{
    dm_errbuf[0] = 0;
    dm_errcode = DM_OK;
    dm_errsubject = NULL;
}

void dm_error_attribute(const void *subject) { dm_errsubject = subject; }
const void *dm_error_subject(void) { return dm_errsubject; }

const char *dm_errc_name(dm_errc code)
{
    static const char *names[DM_ERRC_COUNT] = {"ok",    "input",     "usage",       "io",      "corrupt",
                                               "shape", "no memory", "interrupted", "internal"};
    return (unsigned)code < DM_ERRC_COUNT ? names[code] : "internal";
}

int dm_errc_exit(dm_errc code)
{
    if (code == DM_E_INTERRUPTED)
        return 128 + (dm_interrupted() ? dm_interrupted() : SIGINT);
    return code == DM_OK ? 0 : code == DM_E_USAGE ? 2 : 1;
}

int dm_error_exit(void)
{
    dm_errc code = dm_error_code();
    return code == DM_OK ? 1 : dm_errc_exit(code);
}

/* ---- interruption ------------------------------------------------------ */

static volatile sig_atomic_t dm_signal_seen;
static int dm_catch_depth;
static struct sigaction dm_old_int, dm_old_term;

static void dm_on_signal(int sig) { dm_signal_seen = sig; }

void dm_signals_catch(void)
{
    if (dm_catch_depth++)
        return;
    dm_signal_seen = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dm_on_signal;
    sigemptyset(&sa.sa_mask);
    /* SA_RESTART: system calls in progress finish, the engine stops at the next
     * chunk; SA_RESETHAND: the second signal takes the default action */
    sa.sa_flags = SA_RESTART | SA_RESETHAND;
    /* a signal ignored when dmica started stays ignored (the shell ignores
     * SIGINT for a script's background jobs, nohup SIGHUP): the usual rule of
     * programs that catch signals, as GNU sort does */
    sigaction(SIGINT, NULL, &dm_old_int);
    sigaction(SIGTERM, NULL, &dm_old_term);
    if (dm_old_int.sa_handler != SIG_IGN)
        sigaction(SIGINT, &sa, NULL);
    if (dm_old_term.sa_handler != SIG_IGN)
        sigaction(SIGTERM, &sa, NULL);
}

void dm_signals_restore(void)
{
    if (dm_catch_depth <= 0 || --dm_catch_depth)
        return;
    sigaction(SIGINT, &dm_old_int, NULL);
    sigaction(SIGTERM, &dm_old_term, NULL);
}

int dm_interrupted(void) { return dm_signal_seen; }

const char *dm_signal_name(int sig)
{
    static _Thread_local char buf[32];
    if (sig == SIGINT)
        return "SIGINT";
    if (sig == SIGTERM)
        return "SIGTERM";
    snprintf(buf, sizeof buf, "signal %d", sig);
    return buf;
}

int dm_check_interrupt(void)
{
    int sig = dm_signal_seen;
    return sig ? dm_failc(DM_E_INTERRUPTED, "interrupted by %s", dm_signal_name(sig)) : 0;
}

void dm_warn(const char *fmt, ...)
{
    va_list ap;
    if (dm_verbose < 0)
        return;
    fputs("dmica: warning: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void dm_info(const char *fmt, ...)
{
    va_list ap;
    if (dm_verbose < 1)
        return;
    fputs("dmica: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void dm_oom(size_t n, const char *what)
{
    fprintf(stderr, "dmica: out of memory allocating %zu bytes%s%s%s\n", n, what ? " (" : "", what ? what : "",
            what ? ")" : "");
    abort();
}

void *dm_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        dm_oom(n, NULL);
    return p;
}

void *dm_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        dm_oom(n * size, NULL);
    return p;
}

void *dm_xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        dm_oom(n, NULL);
    return p;
}

char *dm_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(dm_xmalloc(n), s, n);
}

char *dm_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        dm_oom(strlen(fmt), "a formatted string");
    va_end(ap);
    return s;
}

void *dm_xmalloc_aligned(size_t n)
{
    void *p = NULL;
    n = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, n ? n : 64))
        dm_oom(n, NULL);
    return p;
}

void *dm_xmalloc_huge(size_t n)
{
    void *p = NULL;
    n = (n + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    if (posix_memalign(&p, 2u << 20, n ? n : 64))
        dm_oom(n, NULL);
    madvise(p, n, MADV_HUGEPAGE); /* advice only: without THP it is an ordinary buffer */
    return p;
}

static const struct {
    const char *name;
    size_t size;
} dm_dtypes[DM_DTYPE_COUNT] = {
    [DM_F32] = {"f32", 4}, [DM_F64] = {"f64", 8}, [DM_F16] = {"f16", 2},
    [DM_BF16] = {"bf16", 2}, [DM_I32] = {"i32", 4}, [DM_I64] = {"i64", 8},
    [DM_U16] = {"u16", 2}, [DM_U8] = {"u8", 1},
};

size_t dm_dtype_size(dm_dtype t) { return (unsigned)t < DM_DTYPE_COUNT ? dm_dtypes[t].size : 0; }
const char *dm_dtype_name(dm_dtype t) { return (unsigned)t < DM_DTYPE_COUNT ? dm_dtypes[t].name : "?"; }

int dm_dtype_parse(const char *s, dm_dtype *out)
{
    for (int i = 0; i < DM_DTYPE_COUNT; i++)
        if (!strcmp(s, dm_dtypes[i].name)) {
            *out = (dm_dtype)i;
            return 0;
        }
    return dm_fail("unknown dtype '%s' (f32, f64, f16, bf16, i32, i64, u16, u8)", s);
}

/* Half precision per IEEE 754-2008 binary16. */
float dm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    float f;
    if (exp == 0) {
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((exp + 112) << 23) | (man << 13);
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t dm_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 | (man >> 13) : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++; /* may carry into the exponent, which is the correct rounding */
    return (uint16_t)h;
}

float dm_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t dm_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffff))
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

void dm_tensor_init(dm_tensor *t, dm_dtype dtype, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->data = dm_xcalloc((size_t)dm_tensor_numel(t), dm_dtype_size(dtype));
}

int64_t dm_tensor_numel(const dm_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

void dm_tensor_free(dm_tensor *t)
{
    if (!t)
        return;
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* What every size error ends with: the form a size takes. */
#define DM_SIZE_FORM "sizes are a number with an optional unit K, M, G, T (powers of 1024), e.g. 512M"

int64_t dm_parse_size(const char *s)
{
    if (!s || !*s)
        return dm_fail("an empty size; " DM_SIZE_FORM);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || isspace((unsigned char)s[0]))
        return dm_fail("invalid size '%s' (not a number); " DM_SIZE_FORM, s);
    double mul = 1;
    if (*end) {
        switch (*end == 'k' ? 'K' : *end) {
        case 'K': mul = 1024.0; break;
        case 'M': mul = 1024.0 * 1024; break;
        case 'G': mul = 1024.0 * 1024 * 1024; break;
        case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
        default: return dm_fail("invalid size '%s' (unknown unit '%s'); " DM_SIZE_FORM, s, end);
        }
        end++;
        if (*end && strcasecmp(end, "B") && strcasecmp(end, "iB"))
            return dm_fail("invalid size '%s' (unknown unit '%s'); " DM_SIZE_FORM, s, end - 1);
    }
    if (isnan(v))
        return dm_fail("'%s' is not a number; " DM_SIZE_FORM, s);
    if (v < 0)
        return dm_fail("'%s' is negative; " DM_SIZE_FORM, s);
    /* strtod's ERANGE: overflow to HUGE_VAL (too large) or underflow towards 0 (under a byte) */
    double bytes = v * mul;
    if (isinf(bytes) || bytes >= 9223372036854775808.0) /* 2^63: the first double past INT64_MAX */
        return dm_fail("'%s' is too large (at most 8 EiB); " DM_SIZE_FORM, s);
    if ((bytes > 0 && bytes < 1) || (errno == ERANGE && v == 0))
        return dm_fail("'%s' is less than one byte; " DM_SIZE_FORM, s);
    return (int64_t)bytes;
}

double dm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dm_tensor_from_text(dm_tensor *t, const char *text, size_t len)
{
    int64_t shape[1] = {(int64_t)len};
    dm_tensor_init(t, DM_U8, 1, shape);
    memcpy(t->data, text, len);
}

void dm_strbuf_addf(dm_strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->s = dm_xrealloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}
