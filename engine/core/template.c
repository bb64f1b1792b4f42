/*
 * template.c: a pipeline's templates, expanded into ordinary node declarations.
 *
 * A template is a group of nodes written once with ${VAR} in any of their
 * strings (names, operators, parameter and input names and values, spill
 * settings, publish prefixes) and a table of values, one row per copy
 * (pipeline.c reads the `foreach` forms into that table). Expansion happens
 * when the pipeline is read: each row's copy of each node is an ordinary
 * dm_node_decl, so binding, cache keys, --set and running see exactly what a
 * file that spelled every node out would give. Each copy keeps the line
 * numbers of its template lines and says which row made it (decl->origin,
 * "layer L=6"), so a later error reads "file.yaml:14 (layer L=6): ...".
 *
 * The syntax follows DVC's `foreach`/`matrix` and Hydra's interpolation:
 * "${NAME}" only; there is no arithmetic, nesting or default. A '$' not
 * followed by '{' is kept as it is.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The variable "${NAME}" at s names (s points at '$'), or -1 (*end past '}'
 * either way; NULL when the '}' is missing). */
static int var_at(const dm_template *t, const char *s, const char **end)
{
    const char *close = strchr(s + 2, '}');
    *end = close ? close + 1 : NULL;
    if (!close)
        return -1;
    size_t n = (size_t)(close - (s + 2));
    for (int v = 0; v < t->nvars; v++)
        if (strlen(t->vars[v]) == n && !strncmp(t->vars[v], s + 2, n))
            return v;
    return -1;
}

/* Fails unless every ${...} in s names one of t's variables. */
static int check_refs(const char *path, const dm_template *t, const char *s, int line)
{
    if (!s)
        return 0;
    for (const char *c = strstr(s, "${"); c; c = strstr(c + 1, "${")) {
        const char *end;
        if (var_at(t, c, &end) >= 0)
            continue;
        char known[256] = "";
        for (int v = 0; v < t->nvars; v++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", v ? ", " : "", t->vars[v]);
        if (!end)
            return dm_fail("%s:%d: template '%s': '${' without a closing '}' in '%s'", path, line, t->name, s);
        return dm_fail("%s:%d: template '%s': unknown variable '%.*s' in '%s' (its variables: %s)", path, line,
                       t->name, (int)(end - c), c, s, known);
    }
    return 0;
}

/* s with each ${VAR} replaced by row's value (malloc'd; NULL for NULL).
 * check_refs has accepted s. */
static char *subst(const dm_template *t, const char *const *row, const char *s)
{
    if (!s)
        return NULL;
    size_t cap = strlen(s) + 1, len = 0;
    char *out = dm_xmalloc(cap);
    while (*s) {
        const char *end, *piece = s;
        size_t n = 1;
        int v = s[0] == '$' && s[1] == '{' ? var_at(t, s, &end) : -1;
        if (v >= 0)
            piece = row[v], n = strlen(row[v]);
        if (len + n + 1 > cap)
            out = dm_xrealloc(out, cap = 2 * (len + n + 1));
        memcpy(out + len, piece, n);
        len += n;
        s = v >= 0 ? end : s + 1;
    }
    out[len] = 0;
    return out;
}

static dm_kv *subst_kvs(const dm_template *t, const char *const *row, const dm_kv *kv, int n)
{
    dm_kv *out = dm_xcalloc((size_t)n + 1, sizeof *out);
    for (int i = 0; i < n; i++) {
        out[i].key = subst(t, row, kv[i].key);
        out[i].value = subst(t, row, kv[i].value);
        out[i].line = kv[i].line;
    }
    return out;
}

static int check_decl(const char *path, const dm_template *t, const dm_node_decl *d)
{
    int rc = check_refs(path, t, d->name, d->line) || check_refs(path, t, d->op, d->op_line) ||
             check_refs(path, t, d->spill, d->spill_line) || check_refs(path, t, d->spill_dtype, d->spill_line) ||
             check_refs(path, t, d->spill_codec, d->spill_line) || check_refs(path, t, d->publish, d->publish_line) ||
             check_refs(path, t, d->device, d->device_line);
    for (int i = 0; i < d->nparams && !rc; i++)
        rc = check_refs(path, t, d->params[i].key, d->params[i].line) ||
             check_refs(path, t, d->params[i].value, d->params[i].line);
    for (int i = 0; i < d->ninputs && !rc; i++)
        rc = check_refs(path, t, d->inputs[i].key, d->inputs[i].line) ||
             check_refs(path, t, d->inputs[i].value, d->inputs[i].line);
    return rc ? -1 : 0;
}

int dm_template_expand(dm_pipeline *p, const dm_template *t)
{
    for (int j = 0; j < t->nnodes; j++)
        if (check_decl(p->path, t, &t->nodes[j]))
            return -1;
    p->nodes = dm_xrealloc(p->nodes, ((size_t)p->nnodes + (size_t)t->nrows * (size_t)t->nnodes + 1) * sizeof *p->nodes);
    for (int r = 0; r < t->nrows; r++) {
        const char *const *row = (const char *const *)&t->vals[(size_t)r * (size_t)t->nvars];
        size_t olen = strlen(t->name) + 1;
        for (int v = 0; v < t->nvars; v++)
            olen += strlen(t->vars[v]) + strlen(row[v]) + 3;
        char *origin = dm_xmalloc(olen);
        int w = sprintf(origin, "%s", t->name);
        for (int v = 0; v < t->nvars; v++)
            w += sprintf(origin + w, "%s%s=%s", v ? ", " : " ", t->vars[v], row[v]);
        for (int j = 0; j < t->nnodes; j++) {
            const dm_node_decl *s = &t->nodes[j];
            dm_node_decl *d = &p->nodes[p->nnodes++];
            *d = (dm_node_decl){
                .name = subst(t, row, s->name),
                .line = s->line,
                .op = subst(t, row, s->op),
                .op_line = s->op_line,
                .params = subst_kvs(t, row, s->params, s->nparams),
                .nparams = s->nparams,
                .inputs = subst_kvs(t, row, s->inputs, s->ninputs),
                .ninputs = s->ninputs,
                .spill = subst(t, row, s->spill),
                .spill_dtype = subst(t, row, s->spill_dtype),
                .spill_codec = subst(t, row, s->spill_codec),
                .spill_line = s->spill_line,
                .publish = subst(t, row, s->publish),
                .publish_line = s->publish_line,
                .device = subst(t, row, s->device),
                .device_line = s->device_line,
                .origin = dm_xstrdup(origin),
            };
        }
        free(origin);
    }
    return 0;
}

void dm_template_free(dm_template *t)
{
    if (!t)
        return;
    for (int j = 0; j < t->nnodes; j++)
        dm_node_decl_clear(&t->nodes[j]);
    for (size_t i = 0; i < (size_t)t->nrows * (size_t)t->nvars; i++)
        free(t->vals[i]);
    for (int v = 0; v < t->nvars; v++)
        free(t->vars[v]);
    free(t->nodes), free(t->vals), free(t->vars), free(t->name);
}

/* A block-style YAML scalar that libyaml reads back as s: plain when that is
 * unambiguous, else double-quoted. */
static void put_scalar(FILE *f, const char *s)
{
    int plain = *s && strchr("-?:,[]{}#&*!|>'\"%@` ", s[0]) == NULL;
    for (const char *c = s; *c && plain; c++)
        plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                strchr("_./+-,=", *c);
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\x%02x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

/* s inside a comment line: line breaks and other control characters (a
 * template value may hold them) written as \xNN, so the comment stays one line. */
static void put_comment(FILE *f, const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x20 || *c == 0x7f)
            fprintf(f, "\\x%02x", *c);
        else
            fputc(*c, f);
}

static void put_kvs(FILE *f, const char *what, const dm_kv *kv, int n)
{
    if (!n)
        return;
    fprintf(f, "    %s:\n", what);
    for (int i = 0; i < n; i++) {
        fputs("      ", f);
        put_scalar(f, kv[i].key);
        fputs(": ", f);
        put_scalar(f, kv[i].value);
        fputc('\n', f);
    }
}

void dm_pipeline_write(const dm_pipeline *p, FILE *f)
{
    fputs("# ", f);
    put_comment(f, p->path);
    fputs(", templates expanded\n", f);
    fputs("name: ", f);
    put_scalar(f, p->name);
    fputc('\n', f);
    if (p->memory)
        fprintf(f, "memory: %lld\n", (long long)p->memory);
    if (p->cache) {
        fputs("cache: ", f);
        put_scalar(f, p->cache);
        fputc('\n', f);
    }
    if (p->threads)
        fprintf(f, "threads: %d\n", p->threads);
    if (p->chunk)
        fprintf(f, "chunk: %lld\n", (long long)p->chunk);
    if (p->shard >= 0)
        fprintf(f, "shard: %lld\n", (long long)p->shard);
    fputs("nodes:\n", f);
    for (int i = 0; i < p->nnodes; i++) {
        const dm_node_decl *d = &p->nodes[i];
        if (d->origin) {
            fputs("  # ", f);
            put_comment(f, p->path);
            fprintf(f, ":%d (", d->line);
            put_comment(f, d->origin);
            fputs(")\n", f);
        }
        fputs("  ", f);
        put_scalar(f, d->name);
        fputs(":\n    op: ", f);
        put_scalar(f, d->op);
        fputc('\n', f);
        put_kvs(f, "inputs", d->inputs, d->ninputs);
        put_kvs(f, "params", d->params, d->nparams);
        const char *keys[] = {"spill", "spill_dtype", "spill_codec", "device", "publish"};
        const char *vals[] = {d->spill, d->spill_dtype, d->spill_codec, d->device, d->publish};
        for (int k = 0; k < 5; k++)
            if (vals[k]) {
                fprintf(f, "    %s: ", keys[k]);
                put_scalar(f, vals[k]);
                fputc('\n', f);
            }
    }
}
