/*
 * pipeline.c: reads a pipeline's YAML into declarations that remember their
 * line numbers, so that every later check can say "file:line: ...".
 *
 * The format (docs/pipelines.md is the reference):
 *
 *   name: demo                 # optional
 *   memory: 512M               # optional budget, --memory overrides
 *   cache: .dmica-cache        # optional cache folder
 *   threads: 2                 # optional, --threads overrides
 *   nodes:
 *     source:
 *       op: synthetic
 *       params: {rows: 100000, cols: 64, seed: 1}
 *     moments:
 *       op: moments
 *       inputs: {x: source}    # "node" or "node.port"
 *       spill: auto            # auto | always | never (stream outputs)
 *       publish: layer6/       # optional prefix of its files in --out
 *   templates:                 # optional: nodes repeated over values
 *     layer:
 *       foreach: {L: [0, 6]}   # or a list of {VAR: value} maps
 *       nodes:
 *         "moments_${L}": {op: moments, inputs: {x: "gpt2.blocks.${L}.hook_resid_pre"}}
 *
 * libyaml's document API gives a tree with marks; this file only checks the
 * structure. Templates are read here and expanded by template.c into ordinary
 * declarations that keep their template lines, so nothing downstream knows
 * they existed. Operators, parameters and connections are checked in graph.c.
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

static int line_of(yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static const char *scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* Node names are plain words: "node.port" and publish folders split on '.' and '/'. */
static int name_ok(const char *nm) { return nm && *nm && !strchr(nm, '.') && !strchr(nm, '/'); }

static int publish_ok(const char *s) { return s && !strstr(s, "..") && s[0] != '/'; }

static int read_map(const char *path, yaml_document_t *doc, yaml_node_t *map, const char *what,
                    dm_kv **out, int *nout)
{
    if (map->type != YAML_MAPPING_NODE)
        return dm_fail("%s:%d: %s must be a mapping of key: value", path, line_of(map), what);
    int n = (int)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    dm_kv *kv = dm_xcalloc((size_t)n, sizeof *kv);
    int i = 0;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++, i++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key), *v = yaml_document_get_node(doc, p->value);
        const char *ks = scalar(k), *vs = scalar(v);
        if (!ks || !vs) {
            for (int j = 0; j < i; j++)
                free(kv[j].key), free(kv[j].value);
            free(kv);
            return dm_fail("%s:%d: %s: '%s' must be a plain value", path, line_of(v ? v : k), what,
                           ks ? ks : "?");
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(kv[j].key, ks)) {
                int line = line_of(k);
                for (int m = 0; m < i; m++)
                    free(kv[m].key), free(kv[m].value);
                free(kv);
                return dm_fail("%s:%d: %s: key '%s' given twice", path, line, what, ks);
            }
        kv[i].key = dm_xstrdup(ks);
        kv[i].value = dm_xstrdup(vs);
        kv[i].line = line_of(v);
    }
    *out = kv;
    *nout = n;
    return 0;
}

typedef struct {
    const char *key;
    int line;
} key_at;

static int cmp_key_at(const void *a, const void *b)
{
    const key_at *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Fails if any mapping in the document, at any depth, gives a key twice
 * (libyaml keeps both pairs; YAML 1.2 section 3.2.1.1 says keys are unique), naming
 * both lines. Walks the document's node table, so aliases are checked once and
 * nesting costs no stack; sorted keys find duplicates in n log n. */
/* The value of key `key` in mapping m, or NULL. */
static yaml_node_t *value_of(yaml_document_t *doc, yaml_node_t *m, const char *key)
{
    if (!m || m->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
        const char *k = scalar(yaml_document_get_node(doc, pr->key));
        if (k && !strcmp(k, key))
            return yaml_document_get_node(doc, pr->value);
    }
    return NULL;
}

/* 1 if m is a mapping of node names: the pipeline's or a template's 'nodes'. */
static int is_node_map(yaml_document_t *doc, yaml_node_t *m)
{
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (m == value_of(doc, root, "nodes"))
        return 1;
    yaml_node_t *tm = value_of(doc, root, "templates");
    if (!tm || tm->type != YAML_MAPPING_NODE)
        return 0;
    for (yaml_node_pair_t *pr = tm->data.mapping.pairs.start; pr < tm->data.mapping.pairs.top; pr++)
        if (m == value_of(doc, yaml_document_get_node(doc, pr->value), "nodes"))
            return 1;
    return 0;
}

static int check_unique_keys(const char *path, yaml_document_t *doc)
{
    key_at *keys = NULL;
    size_t cap = 0;
    int rc = 0;
    for (yaml_node_t *m = doc->nodes.start; m < doc->nodes.top && !rc; m++) {
        if (m->type != YAML_MAPPING_NODE)
            continue;
        size_t n = 0;
        for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
            yaml_node_t *k = yaml_document_get_node(doc, pr->key);
            if (!scalar(k))
                continue; /* a key that is not a plain value is refused where it is read */
            if (n == cap)
                keys = dm_xrealloc(keys, (cap = cap ? 2 * cap : 16) * sizeof *keys);
            keys[n++] = (key_at){scalar(k), line_of(k)};
        }
        if (n > 1)
            qsort(keys, n, sizeof *keys, cmp_key_at);
        for (size_t i = 1; i < n && !rc; i++)
            if (!strcmp(keys[i - 1].key, keys[i].key))
                rc = dm_fail("%s:%d: %s '%s' %s twice (first at line %d)", path, keys[i].line,
                             is_node_map(doc, m) ? "node" : "key", keys[i].key,
                             is_node_map(doc, m) ? "declared" : "given", keys[i - 1].line);
    }
    free(keys);
    return rc;
}

static int parse_node(const char *path, yaml_document_t *doc, yaml_node_t *k, yaml_node_t *v,
                      dm_node_decl *d)
{
    d->name = dm_xstrdup(scalar(k));
    d->line = line_of(k);
    if (v->type != YAML_MAPPING_NODE)
        return dm_fail("%s:%d: node '%s' must be a mapping with op, params and inputs", path,
                       line_of(v), d->name);
    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        yaml_node_t *kk = yaml_document_get_node(doc, p->key), *vv = yaml_document_get_node(doc, p->value);
        const char *key = scalar(kk);
        char what[300];
        if (!key)
            return dm_fail("%s:%d: node '%s': keys must be plain words", path, line_of(kk), d->name);
        snprintf(what, sizeof what, "node '%s': %s", d->name, key);
        if (!strcmp(key, "op")) {
            if (!scalar(vv))
                return dm_fail("%s:%d: node '%s': op must be an operator name", path, line_of(vv), d->name);
            d->op = dm_xstrdup(scalar(vv));
            d->op_line = line_of(vv);
        } else if (!strcmp(key, "params")) {
            if (read_map(path, doc, vv, what, &d->params, &d->nparams))
                return -1;
        } else if (!strcmp(key, "inputs")) {
            if (read_map(path, doc, vv, what, &d->inputs, &d->ninputs))
                return -1;
        } else if (!strcmp(key, "spill") || !strcmp(key, "spill_dtype") || !strcmp(key, "spill_codec")) {
            const char *s = scalar(vv);
            if (!s)
                return dm_fail("%s:%d: node '%s': %s must be a plain value", path, line_of(vv), d->name, key);
            char **dst = !strcmp(key, "spill") ? &d->spill : !strcmp(key, "spill_dtype") ? &d->spill_dtype : &d->spill_codec;
            *dst = dm_xstrdup(s);
            d->spill_line = line_of(vv);
        } else if (!strcmp(key, "device")) {
            const char *s = scalar(vv);
            if (!s)
                return dm_fail("%s:%d: node '%s': device must be a plain value", path, line_of(vv), d->name);
            free(d->device);
            d->device = dm_xstrdup(s);
            d->device_line = line_of(vv);
        } else if (!strcmp(key, "publish")) {
            const char *s = scalar(vv);
            if (!publish_ok(s))
                return dm_fail("%s:%d: node '%s': publish must be a relative file-name prefix such as "
                               "\"layer6/\" or \"l6_\"", path, line_of(vv), d->name);
            d->publish = dm_xstrdup(s);
            d->publish_line = line_of(vv);
        } else {
            return dm_fail("%s:%d: node '%s': unknown key '%s' (expected op, params, inputs, spill, "
                           "spill_dtype, spill_codec, device, publish)", path, line_of(kk), d->name, key);
        }
    }
    if (!d->op)
        return dm_fail("%s:%d: node '%s' has no 'op'", path, d->line, d->name);
    return 0;
}

static int var_name_ok(const char *s)
{
    if (!(s[0] == '_' || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z')))
        return 0;
    for (; *s; s++)
        if (!(*s == '_' || (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
            return 0;
    return 1;
}

/* Adds variable `name` (a fresh one) to t, checking its name. */
static int add_var(const char *path, dm_template *t, yaml_node_t *k)
{
    const char *name = scalar(k);
    if (!name || !var_name_ok(name))
        return dm_fail("%s:%d: template '%s': foreach: a variable name is letters, digits and '_' "
                       "(for ${NAME}), not '%s'", path, line_of(k), t->name, name ? name : "?");
    for (int v = 0; v < t->nvars; v++)
        if (!strcmp(t->vars[v], name))
            return dm_fail("%s:%d: template '%s': foreach: variable '%s' given twice", path, line_of(k),
                           t->name, name);
    t->vars = dm_xrealloc(t->vars, (size_t)(t->nvars + 1) * sizeof *t->vars);
    t->vars[t->nvars++] = dm_xstrdup(name);
    return 0;
}

/* A foreach value must be a scalar: the text ${VAR} becomes. */
static int value_ok(const char *path, const dm_template *t, const char *var, yaml_node_t *v)
{
    if (scalar(v))
        return 0;
    return dm_fail("%s:%d: template '%s': foreach: the values of '%s' must be plain values (numbers, "
                   "words, paths), not a %s", path, line_of(v), t->name, var,
                   v->type == YAML_SEQUENCE_NODE ? "list" : "mapping");
}

#define MAX_TEMPLATE_ROWS 100000

/*
 * foreach, two forms:
 *   {L: [0, 3, 6], seed: [1, 2]}            every combination (L varies slowest), like
 *                                           DVC's `matrix` or a Hydra sweep;
 *   [{L: 0, sae: a}, {L: 6, sae: b}]        one row per map, every map the same variables,
 *                                           like DVC's `foreach` over a list of dicts.
 */
static int parse_foreach(const char *path, yaml_document_t *doc, yaml_node_t *f, dm_template *t)
{
    static const char *forms = "{VAR: [value, ...]} or a list of {VAR: value, ...} maps";
    if (f->type == YAML_MAPPING_NODE) {
        yaml_node_pair_t *b = f->data.mapping.pairs.start, *e = f->data.mapping.pairs.top;
        if (b == e)
            return dm_fail("%s:%d: template '%s': foreach is empty (expected %s)", path, line_of(f), t->name,
                           forms);
        int64_t rows = 1;
        for (yaml_node_pair_t *pr = b; pr < e; pr++) {
            yaml_node_t *k = yaml_document_get_node(doc, pr->key), *v = yaml_document_get_node(doc, pr->value);
            if (add_var(path, t, k))
                return -1;
            const char *var = t->vars[t->nvars - 1];
            if (v->type != YAML_SEQUENCE_NODE)
                return dm_fail("%s:%d: template '%s': foreach: '%s' must be a list of values, such as "
                               "[0, 3, 6]", path, line_of(v), t->name, var);
            int64_t n = v->data.sequence.items.top - v->data.sequence.items.start;
            if (n == 0)
                return dm_fail("%s:%d: template '%s': foreach: '%s' is an empty list", path, line_of(v), t->name,
                               var);
            for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++)
                if (value_ok(path, t, var, yaml_document_get_node(doc, *it)))
                    return -1;
            if ((rows *= n) > MAX_TEMPLATE_ROWS)
                return dm_fail("%s:%d: template '%s': foreach makes more than %d combinations", path,
                               line_of(f), t->name, MAX_TEMPLATE_ROWS);
        }
        t->nrows = (int)rows;
        t->vals = dm_xcalloc((size_t)rows * (size_t)t->nvars, sizeof *t->vals);
        /* row r in mixed radix: the last variable is the fastest digit */
        int64_t stride = rows, v = 0;
        for (yaml_node_pair_t *pr = b; pr < e; pr++, v++) {
            yaml_node_t *list = yaml_document_get_node(doc, pr->value);
            yaml_node_item_t *items = list->data.sequence.items.start;
            int64_t n = list->data.sequence.items.top - items;
            stride /= n;
            for (int64_t r = 0; r < rows; r++)
                t->vals[r * t->nvars + v] = dm_xstrdup(scalar(yaml_document_get_node(doc, items[(r / stride) % n])));
        }
        return 0;
    }
    if (f->type != YAML_SEQUENCE_NODE)
        return dm_fail("%s:%d: template '%s': foreach must be %s", path, line_of(f), t->name, forms);
    yaml_node_item_t *items = f->data.sequence.items.start;
    int n = (int)(f->data.sequence.items.top - items);
    if (n == 0)
        return dm_fail("%s:%d: template '%s': foreach is empty (expected %s)", path, line_of(f), t->name, forms);
    if (n > MAX_TEMPLATE_ROWS)
        return dm_fail("%s:%d: template '%s': foreach makes more than %d combinations", path, line_of(f),
                       t->name, MAX_TEMPLATE_ROWS);
    for (int r = 0; r < n; r++) {
        yaml_node_t *m = yaml_document_get_node(doc, items[r]);
        if (m->type != YAML_MAPPING_NODE || m->data.mapping.pairs.start == m->data.mapping.pairs.top)
            return dm_fail("%s:%d: template '%s': a foreach list holds {VAR: value} maps (for one variable "
                           "write {L: [0, 3, 6]}), not '%s'", path, line_of(m), t->name,
                           scalar(m) ? scalar(m) : m->type == YAML_SEQUENCE_NODE ? "[...]" : "{}");
        int nv = (int)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
        if (r == 0) {
            for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++)
                if (add_var(path, t, yaml_document_get_node(doc, pr->key)))
                    return -1;
            t->vals = dm_xcalloc((size_t)n * (size_t)t->nvars, sizeof *t->vals);
            t->nrows = n;
        }
        for (yaml_node_pair_t *pr = m->data.mapping.pairs.start; pr < m->data.mapping.pairs.top; pr++) {
            yaml_node_t *k = yaml_document_get_node(doc, pr->key), *v = yaml_document_get_node(doc, pr->value);
            const char *var = scalar(k);
            int j = 0;
            while (j < t->nvars && (!var || strcmp(t->vars[j], var)))
                j++;
            if (j == t->nvars)
                return dm_fail("%s:%d: template '%s': foreach: variable '%s' is not in the first entry (every "
                               "entry needs the same variables)", path, line_of(k), t->name, var ? var : "?");
            if (t->vals[r * t->nvars + j])
                return dm_fail("%s:%d: template '%s': foreach: variable '%s' given twice", path, line_of(k),
                               t->name, var);
            if (value_ok(path, t, var, v))
                return -1;
            t->vals[r * t->nvars + j] = dm_xstrdup(scalar(v));
        }
        if (nv != t->nvars)
            for (int j = 0; j < t->nvars; j++)
                if (!t->vals[r * t->nvars + j])
                    return dm_fail("%s:%d: template '%s': foreach: this entry lacks variable '%s' (every entry "
                                   "needs the same variables)", path, line_of(m), t->name, t->vars[j]);
    }
    return 0;
}

static int parse_template(const char *path, yaml_document_t *doc, yaml_node_t *k, yaml_node_t *v,
                          dm_template *t)
{
    t->name = dm_xstrdup(scalar(k));
    t->line = line_of(k);
    if (v->type != YAML_MAPPING_NODE)
        return dm_fail("%s:%d: template '%s' must be a mapping with foreach and nodes", path, line_of(v), t->name);
    yaml_node_t *foreach = NULL, *nodes = NULL;
    for (yaml_node_pair_t *pr = v->data.mapping.pairs.start; pr < v->data.mapping.pairs.top; pr++) {
        yaml_node_t *kk = yaml_document_get_node(doc, pr->key), *vv = yaml_document_get_node(doc, pr->value);
        const char *key = scalar(kk);
        if (key && !strcmp(key, "foreach"))
            foreach = vv;
        else if (key && !strcmp(key, "nodes"))
            nodes = vv;
        else
            return dm_fail("%s:%d: template '%s': unknown key '%s' (expected foreach, nodes)", path, line_of(kk),
                           t->name, key ? key : "?");
    }
    if (!foreach)
        return dm_fail("%s:%d: template '%s' has no 'foreach' (the values to repeat its nodes over)", path,
                       t->line, t->name);
    if (!nodes || (nodes->type == YAML_MAPPING_NODE && nodes->data.mapping.pairs.start == nodes->data.mapping.pairs.top) ||
        (nodes->type == YAML_SCALAR_NODE && !*scalar(nodes)))
        return dm_fail("%s:%d: template '%s' has no nodes", path, nodes ? line_of(nodes) : t->line, t->name);
    if (nodes->type != YAML_MAPPING_NODE)
        return dm_fail("%s:%d: template '%s': nodes must be a mapping of node name to node", path,
                       line_of(nodes), t->name);
    if (parse_foreach(path, doc, foreach, t))
        return -1;
    int n = (int)(nodes->data.mapping.pairs.top - nodes->data.mapping.pairs.start);
    t->nodes = dm_xcalloc((size_t)n, sizeof *t->nodes);
    for (yaml_node_pair_t *pr = nodes->data.mapping.pairs.start; pr < nodes->data.mapping.pairs.top; pr++) {
        yaml_node_t *kk = yaml_document_get_node(doc, pr->key), *vv = yaml_document_get_node(doc, pr->value);
        if (!name_ok(scalar(kk)))
            return dm_fail("%s:%d: node names must be plain words without '.' or '/'", path, line_of(kk));
        if (parse_node(path, doc, kk, vv, &t->nodes[t->nnodes++]))
            return -1;
    }
    return 0;
}

static int parse_templates(const char *path, yaml_document_t *doc, yaml_node_t *tm, dm_pipeline *p)
{
    if (tm->type != YAML_MAPPING_NODE || tm->data.mapping.pairs.start == tm->data.mapping.pairs.top)
        return dm_fail("%s:%d: 'templates' must be a mapping of template name to {foreach, nodes}", path,
                       line_of(tm));
    for (yaml_node_pair_t *pr = tm->data.mapping.pairs.start; pr < tm->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(doc, pr->key), *v = yaml_document_get_node(doc, pr->value);
        if (!scalar(k) || !*scalar(k))
            return dm_fail("%s:%d: template names must be plain words", path, line_of(k));
        dm_template t = {0};
        int rc = parse_template(path, doc, k, v, &t);
        if (!rc)
            rc = dm_template_expand(p, &t);
        dm_template_free(&t);
        if (rc)
            return -1;
    }
    return 0;
}

static int cmp_decl_name(const void *a, const void *b)
{
    const dm_node_decl *x = *(const dm_node_decl *const *)a, *y = *(const dm_node_decl *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x > y) - (x < y);
}

/* Checks that only expansion can break (a value that puts '.' in a name or
 * ".." in a publish prefix), then that names are unique across everything. */
static int check_nodes(const dm_pipeline *p)
{
    for (int i = 0; i < p->nnodes; i++) {
        const dm_node_decl *d = &p->nodes[i];
        if (!d->origin)
            continue;
        if (!name_ok(d->name))
            return dm_fail("%s:%d (%s): node name '%s' is not a plain word without '.' or '/'", p->path, d->line,
                           d->origin, d->name);
        if (d->publish && !publish_ok(d->publish))
            return dm_fail("%s:%d (%s): node '%s': publish must be a relative file-name prefix, not '%s'",
                           p->path, d->publish_line, d->origin, d->name, d->publish);
    }
    /* sorted names find duplicates in n log n: 87 nodes or 100000 alike */
    int n = p->nnodes;
    const dm_node_decl **by = dm_xmalloc((size_t)n * sizeof *by);
    for (int i = 0; i < n; i++)
        by[i] = &p->nodes[i];
    qsort(by, (size_t)n, sizeof *by, cmp_decl_name);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++) {
        if (strcmp(by[i - 1]->name, by[i]->name))
            continue;
        const dm_node_decl *a = by[i - 1], *b = by[i]; /* a declared first (the sort is by name, then index) */
        char first[400];
        snprintf(first, sizeof first, "line %d%s%s", a->line, a->origin ? ", for " : "", a->origin ? a->origin : "");
        const char *hint = a->origin && b->origin && a->line == b->line
                               ? "; a template's node names need its variables, as in 'name_${VAR}'" : "";
        rc = dm_fail("%s:%d%s%s%s: node '%s' declared twice (first at %s)%s", p->path, b->line,
                     b->origin ? " (" : "", b->origin ? b->origin : "", b->origin ? ")" : "", b->name, first, hint);
    }
    free(by);
    return rc;
}

int dm_parse_rows(const char *s, int64_t *out)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    double mult = 1;
    if (e != s && *e && !e[1])
        mult = *e == 'k' || *e == 'K' ? 1e3 : *e == 'M' ? 1e6 : *e == 'G' ? 1e9 : 0, e += mult > 0;
    if (e == s || *e || errno || !(v >= 0) || v * mult > 1e15 || v * mult != (double)(int64_t)(v * mult))
        return -1;
    *out = (int64_t)(v * mult);
    return 0;
}

dm_pipeline *dm_pipeline_parse(const char *path, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    dm_pipeline *p = dm_xcalloc(1, sizeof *p);
    p->shard = -1;
    p->path = dm_xstrdup(path);

    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        dm_fail("%s:%zu: malformed YAML: %s%s%s", path, parser.problem_mark.line + 1,
                parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        dm_pipeline_free(p);
        return NULL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc = 0;
    if (!root) {
        rc = dm_fail("%s: empty pipeline (expected a mapping with 'nodes')", path);
        goto end;
    }
    /* a second document ("---" and more) would be ignored: refuse it */
    yaml_document_t next;
    if (!yaml_parser_load(&parser, &next)) {
        rc = dm_fail("%s:%zu: malformed YAML: %s%s%s", path, parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "syntax error", parser.context ? " " : "",
                     parser.context ? parser.context : "");
        goto end;
    }
    int more = yaml_document_get_root_node(&next) != NULL;
    size_t more_line = next.start_mark.line + 1;
    yaml_document_delete(&next);
    if (more) {
        rc = dm_fail("%s:%zu: a second YAML document; a pipeline file holds one (remove the '---' and what "
                     "follows, or merge it into the first)", path, more_line);
        goto end;
    }
    if ((rc = check_unique_keys(path, &doc)))
        goto end;
    if (root->type != YAML_MAPPING_NODE) {
        rc = dm_fail("%s:%d: a pipeline must be a mapping with 'nodes'", path, line_of(root));
        goto end;
    }
    yaml_node_t *nodes = NULL, *templates = NULL;
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key), *v = yaml_document_get_node(&doc, pr->value);
        const char *key = scalar(k), *val = scalar(v);
        if (!key) {
            rc = dm_fail("%s:%d: keys must be plain words", path, line_of(k));
            goto end;
        }
        if (!strcmp(key, "nodes")) {
            nodes = v;
            continue;
        }
        if (!strcmp(key, "templates")) {
            templates = v;
            continue;
        }
        if (!val) {
            rc = dm_fail("%s:%d: '%s' must be a plain value", path, line_of(v), key);
            goto end;
        }
        if (!strcmp(key, "name")) {
            p->name = dm_xstrdup(val);
        } else if (!strcmp(key, "memory")) {
            if ((p->memory = dm_parse_size(val)) < 0) {
                rc = dm_fail_prefix("%s:%d: memory", path, line_of(v));
                goto end;
            }
            if (!p->memory) {
                rc = dm_fail("%s:%d: memory must be at least 1 byte (a positive size such as 512M), not '%s'", path, line_of(v), val);
                goto end;
            }
        } else if (!strcmp(key, "cache")) {
            p->cache = dm_xstrdup(val);
        } else if (!strcmp(key, "threads")) {
            char *e;
            long t = strtol(val, &e, 10);
            if (*e || t < 1 || t > 4096) {
                rc = dm_fail("%s:%d: threads must be a positive integer, not '%s'", path, line_of(v), val);
                goto end;
            }
            p->threads = (int)t;
        } else if (!strcmp(key, "chunk")) {
            char *e;
            errno = 0;
            long long c = strtoll(val, &e, 10);
            if (*e || errno || c < 64 || c > 65536) {
                rc = dm_fail("%s:%d: chunk must be a number of rows from 64 to 65536, not '%s'", path,
                             line_of(v), val);
                goto end;
            }
            p->chunk = c;
        } else if (!strcmp(key, "shard")) {
            if (dm_parse_rows(val, &p->shard)) {
                rc = dm_fail("%s:%d: shard must be a number of rows (tokens), such as 1000000 or 1M, or 0 "
                             "for no shards, not '%s'", path, line_of(v), val);
                goto end;
            }
        } else {
            rc = dm_fail("%s:%d: unknown key '%s' (expected name, memory, cache, threads, chunk, shard, nodes, templates)",
                         path, line_of(k), key);
            goto end;
        }
    }
    if ((!nodes && !templates) || (nodes && nodes->type != YAML_MAPPING_NODE)) {
        rc = dm_fail("%s:%d: the pipeline needs 'nodes', a mapping of node name to node", path,
                     nodes ? line_of(nodes) : line_of(root));
        goto end;
    }
    int n = nodes ? (int)(nodes->data.mapping.pairs.top - nodes->data.mapping.pairs.start) : 0;
    if (nodes && n == 0) {
        rc = dm_fail("%s:%d: 'nodes' is empty", path, line_of(nodes));
        goto end;
    }
    p->nodes = dm_xcalloc((size_t)n + 1, sizeof *p->nodes);
    for (int i = 0; i < n; i++) {
        yaml_node_pair_t *pr = &nodes->data.mapping.pairs.start[i];
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key), *v = yaml_document_get_node(&doc, pr->value);
        if (!name_ok(scalar(k))) {
            rc = dm_fail("%s:%d: node names must be plain words without '.' or '/'", path, line_of(k));
            goto end;
        }
        p->nnodes++;
        if ((rc = parse_node(path, &doc, k, v, &p->nodes[p->nnodes - 1])))
            goto end;
    }
    /* expanded nodes come after the written ones, template by template, row by row */
    if (templates && (rc = parse_templates(path, &doc, templates, p)))
        goto end;
    if ((rc = check_nodes(p)))
        goto end;
    if (!p->name) {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        p->name = dm_xstrdup(base);
        char *dot = strrchr(p->name, '.');
        if (dot && dot != p->name)
            *dot = 0;
    }
end:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc) {
        dm_pipeline_free(p);
        return NULL;
    }
    return p;
}

/* The largest pipeline file read: thousands of nodes fit in far less, and a
 * mistaken argument (a data file, /dev/zero) is refused instead of filling memory. */
#define DM_PIPELINE_MAX_BYTES ((size_t)16 << 20)

dm_pipeline *dm_pipeline_load(const char *path)
{
    size_t len;
    char *text = dm_read_file_max(path, DM_PIPELINE_MAX_BYTES, "pipeline file", &len);
    if (!text)
        return NULL;
    dm_pipeline *p = dm_pipeline_parse(path, text, len);
    free(text);
    return p;
}

static void free_kvs(dm_kv *kv, int n)
{
    for (int i = 0; i < n; i++)
        free(kv[i].key), free(kv[i].value);
    free(kv);
}

void dm_node_decl_clear(dm_node_decl *d)
{
    free(d->name), free(d->op), free(d->spill), free(d->spill_dtype), free(d->spill_codec), free(d->publish), free(d->device);
    free(d->origin);
    free_kvs(d->params, d->nparams);
    free_kvs(d->inputs, d->ninputs);
}

void dm_pipeline_free(dm_pipeline *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->nnodes; i++)
        dm_node_decl_clear(&p->nodes[i]);
    free(p->nodes), free(p->path), free(p->name), free(p->cache);
    free(p);
}

int dm_pipeline_set(dm_pipeline *p, const char *assignment)
{
    const char *dot = strchr(assignment, '.'), *eq = strchr(assignment, '=');
    if (!dot || !eq || eq < dot || dot == assignment || eq == dot + 1)
        return dm_fail("--set '%s': expected node.key=value", assignment);
    for (int i = 0; i < p->nnodes; i++) {
        dm_node_decl *d = &p->nodes[i];
        if (strlen(d->name) != (size_t)(dot - assignment) || strncmp(d->name, assignment, (size_t)(dot - assignment)))
            continue;
        char *key = strndup(dot + 1, (size_t)(eq - dot - 1));
        for (int j = 0; j < d->nparams; j++)
            if (!strcmp(d->params[j].key, key)) {
                free(d->params[j].value);
                d->params[j].value = dm_xstrdup(eq + 1);
                free(key);
                return 0;
            }
        d->params = dm_xrealloc(d->params, (size_t)(d->nparams + 1) * sizeof *d->params);
        d->params[d->nparams].key = key; /* checked against the operator in graph.c */
        d->params[d->nparams].value = dm_xstrdup(eq + 1);
        d->params[d->nparams].line = 0;
        d->nparams++;
        return 0;
    }
    return dm_fail("--set '%s': no node named '%.*s' in %s", assignment, (int)(dot - assignment),
                   assignment, p->path);
}
