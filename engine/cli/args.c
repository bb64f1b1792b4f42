/*
 * args.c: the table-driven argument parser of the commands (args.h).
 *
 * Every value is checked when it is read, against the option's type and range,
 * so a command never sees a number it did not ask for: "--seeds 0", "--tol
 * nan" or "--memory 12Q" stop with a message naming the option and exit status
 * 2. Defaults go through the same checks, so a wrong default in a table is
 * found by the first run of its command.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "args.h"
#include "dm.h"

static int nopts(const dm_arg_cmd *c)
{
    int n = 0;
    while (c->opts && c->opts[n].name)
        n++;
    return n;
}

static const char *meta_of(const dm_arg_spec *s)
{
    if (s->meta)
        return s->meta;
    switch (s->type) {
    case DM_ARG_INT: return "N";
    case DM_ARG_FLOAT: return "X";
    case DM_ARG_SIZE: return "SIZE";
    case DM_ARG_BOOL: return "true|false";
    case DM_ARG_PATH: return "PATH";
    default: return "VALUE";
    }
}

static void vusage(const dm_arg_cmd *c, const char *fmt, va_list ap)
{
    fprintf(stderr, "dmica %s: ", c->name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
}

static int usage_error(const dm_arg_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const dm_arg_cmd *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vusage(c, fmt, ap);
    va_end(ap);
    fprintf(stderr, "(dmica %s --help lists the options)\n", c->name);
    return 2;
}

int dm_args_usage_error(const dm_args *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vusage(a->cmd, fmt, ap);
    va_end(ap);
    return 2;
}

/* "from 1 to 4096", "at least 1", "above 0": the range as a user reads it. */
static void range_text(const dm_arg_spec *s, char *buf, size_t n)
{
    if (s->min == 0 && s->max == 0 && !s->min_open)
        buf[0] = 0;
    else if (s->max == 0 || !isfinite(s->max))
        snprintf(buf, n, s->min_open ? "above %.15g" : "at least %.15g", s->min);
    else
        snprintf(buf, n, s->min_open ? "above %.15g and at most %.15g" : "from %.15g to %.15g", s->min, s->max);
}

static int in_range(const dm_arg_spec *s, double v)
{
    if (s->min == 0 && s->max == 0 && !s->min_open)
        return 1;
    if (s->min_open ? !(v > s->min) : !(v >= s->min))
        return 0;
    return s->max == 0 || !isfinite(s->max) || v <= s->max;
}

static int parse_bool(const char *t, int64_t *out)
{
    if (!strcasecmp(t, "true") || !strcasecmp(t, "yes") || !strcasecmp(t, "on") || !strcmp(t, "1"))
        return *out = 1, 0;
    if (!strcasecmp(t, "false") || !strcasecmp(t, "no") || !strcasecmp(t, "off") || !strcmp(t, "0"))
        return *out = 0, 0;
    return -1;
}

/* Checks text as a value of s into v; prints the error and returns 2 if it is not one. */
static int set_value(const dm_arg_cmd *c, const dm_arg_spec *s, dm_arg_value *v, const char *text)
{
    char range[128], *end;
    range_text(s, range, sizeof range);
    switch (s->type) {
    case DM_ARG_INT: {
        errno = 0;
        long long x = strtoll(text, &end, 10);
        if (!*text || *end || errno)
            return usage_error(c, "--%s: must be an integer%s%s, not '%s'", s->name, *range ? " " : "", range, text);
        if (!in_range(s, (double)x))
            return usage_error(c, "--%s: must be %s, not %lld", s->name, range, x);
        v->i = x;
        break;
    }
    case DM_ARG_FLOAT: {
        errno = 0;
        double x = strtod(text, &end);
        if (!*text || *end || errno == ERANGE || !isfinite(x))
            return usage_error(c, "--%s: must be a finite number%s%s, not '%s'", s->name, *range ? " " : "", range,
                               text);
        if (!in_range(s, x))
            return usage_error(c, "--%s: must be %s, not %s", s->name, range, text);
        v->f = x;
        break;
    }
    case DM_ARG_SIZE: {
        int64_t b = dm_parse_size(text);
        if (b < 0)
            return usage_error(c, "--%s: %s", s->name, dm_error());
        if (b == 0 && s->min > 0 && !s->max)
            return usage_error(c, "--%s: must be at least 1 byte (a positive size such as 512M), not '%s'", s->name,
                               text);
        if (!in_range(s, (double)b))
            return usage_error(c, "--%s: must be %s bytes, not %s", s->name, range, text);
        v->i = b;
        break;
    }
    case DM_ARG_BOOL:
        if (parse_bool(text, &v->i))
            return usage_error(c, "--%s: must be true or false, not '%s'", s->name, text);
        break;
    case DM_ARG_PATH:
        if (!*text)
            return usage_error(c, "--%s: needs a file or folder name, not an empty one", s->name);
        break;
    case DM_ARG_LIST:
        v->list = dm_xrealloc(v->list, (size_t)(v->nlist + 1) * sizeof *v->list);
        v->list[v->nlist++] = text;
        break;
    case DM_ARG_FLAG:
    case DM_ARG_STRING: break;
    }
    v->str = text;
    return 0;
}

void dm_args_help(const dm_arg_cmd *c, FILE *f)
{
    fprintf(f, "usage: dmica %s %s\n", c->name, c->synopsis ? c->synopsis : "[options]");
    if (c->about)
        fprintf(f, "\n%s", c->about);
    int n = nopts(c);
    if (n)
        fprintf(f, "\noptions:\n");
    for (int i = 0; i < n; i++) {
        const dm_arg_spec *s = &c->opts[i];
        char head[96], range[128];
        if (s->type == DM_ARG_FLAG)
            snprintf(head, sizeof head, "--%s", s->name);
        else
            snprintf(head, sizeof head, "--%s %s", s->name, meta_of(s));
        fprintf(f, "  %-22s %s", head, s->help ? s->help : "");
        range_text(s, range, sizeof range);
        if (*range && !(s->type == DM_ARG_SIZE && s->min <= 1 && s->max == 0))
            fprintf(f, " (%s)", range);
        if (s->required)
            fprintf(f, " [required]");
        else if (s->def && *s->def && s->type != DM_ARG_FLAG)
            fprintf(f, " [default: %s]", s->def);
        if (s->type == DM_ARG_LIST)
            fprintf(f, " [repeatable]");
        fputc('\n', f);
    }
    fprintf(f, "  %-22s %s\n", "-h, --help", "show this help");
}

static int find_opt(const dm_arg_cmd *c, const char *name, size_t len)
{
    for (int i = 0; c->opts && c->opts[i].name; i++)
        if (strlen(c->opts[i].name) == len && !strncmp(c->opts[i].name, name, len))
            return i;
    return -1;
}

int dm_args_parse(const dm_arg_cmd *c, int argc, char **argv, dm_args *a)
{
    memset(a, 0, sizeof *a);
    a->cmd = c;
    a->nopts = nopts(c);
    a->v = dm_xcalloc((size_t)a->nopts + 1, sizeof *a->v);
    a->pos = dm_xcalloc((size_t)argc + 1, sizeof *a->pos);
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (only_pos || arg[0] != '-' || !arg[1]) {
            if (!c->positional || a->npos == c->max_pos) {
                if (!c->positional)
                    return usage_error(c, "unexpected argument '%s'", arg);
                return usage_error(c, "one %s only (got '%s' and '%s')", c->positional, a->pos[a->npos - 1], arg);
            }
            a->pos[a->npos++] = arg;
            continue;
        }
        if (!strcmp(arg, "--")) {
            only_pos = 1;
            continue;
        }
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            dm_args_help(c, stdout);
            return 1;
        }
        if (arg[1] != '-')
            return usage_error(c, "unknown option %s", arg);
        const char *name = arg + 2, *eq = strchr(name, '=');
        int k = find_opt(c, name, eq ? (size_t)(eq - name) : strlen(name));
        if (k < 0)
            return usage_error(c, "unknown option %.*s", eq ? (int)(eq - arg) : (int)strlen(arg), arg);
        const dm_arg_spec *s = &c->opts[k];
        dm_arg_value *v = &a->v[k];
        if (v->given && s->type != DM_ARG_LIST)
            return usage_error(c, "--%s: given twice", s->name);
        const char *text;
        if (s->type == DM_ARG_FLAG) {
            if (eq)
                return usage_error(c, "--%s: takes no value (got '%s')", s->name, eq + 1);
            text = "1";
            v->i = 1;
        } else if (eq) {
            text = eq + 1;
        } else if (i + 1 < argc) {
            text = argv[++i];
        } else {
            return usage_error(c, "--%s: needs a value (%s)", s->name, meta_of(s));
        }
        if (set_value(c, s, v, text))
            return 2;
        v->given = 1;
    }
    for (int k = 0; k < a->nopts; k++) {
        const dm_arg_spec *s = &c->opts[k];
        if (a->v[k].given)
            continue;
        if (s->required)
            return usage_error(c, "--%s %s is required", s->name, meta_of(s));
        if (s->def && s->type != DM_ARG_FLAG && s->type != DM_ARG_LIST && set_value(c, s, &a->v[k], s->def))
            return 2;
    }
    if (c->positional && a->npos < c->min_pos)
        return usage_error(c, "%s is required", c->positional);
    return 0;
}

void dm_args_free(dm_args *a)
{
    for (int k = 0; a->v && k < a->nopts; k++)
        free(a->v[k].list);
    free(a->v);
    free(a->pos);
    memset(a, 0, sizeof *a);
}

static const dm_arg_value *get(const dm_args *a, const char *name)
{
    int k = find_opt(a->cmd, name, strlen(name));
    if (k < 0) {
        /* a command reading an option its own table lacks: a bug, found by its first run */
        fprintf(stderr, "dmica: bug: command '%s' reads undeclared option --%s\n", a->cmd->name, name);
        exit(70);
    }
    return &a->v[k];
}

const char *dm_arg_str(const dm_args *a, const char *name) { return get(a, name)->str; }
int64_t dm_arg_int(const dm_args *a, const char *name) { return get(a, name)->i; }
double dm_arg_float(const dm_args *a, const char *name) { return get(a, name)->f; }
int dm_arg_flag(const dm_args *a, const char *name) { return get(a, name)->i != 0; }
int dm_arg_given(const dm_args *a, const char *name) { return get(a, name)->given; }

const char *const *dm_arg_list(const dm_args *a, const char *name, int *n)
{
    const dm_arg_value *v = get(a, name);
    *n = v->nlist;
    return v->list;
}
