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
 *
 * libyaml's document API gives a tree with marks; this file only checks the
 * structure. Operators, parameters and connections are checked in graph.c.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "fs.h"

static int line_of(yaml_node_t *n) { return (int)n->start_mark.line + 1; }

static const char *scalar(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

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
        } else if (!strcmp(key, "publish")) {
            const char *s = scalar(vv);
            if (!s || strstr(s, "..") || s[0] == '/')
                return dm_fail("%s:%d: node '%s': publish must be a relative file-name prefix such as "
                               "\"layer6/\" or \"l6_\"", path, line_of(vv), d->name);
            d->publish = dm_xstrdup(s);
        } else {
            return dm_fail("%s:%d: node '%s': unknown key '%s' (expected op, params, inputs, spill, "
                           "spill_dtype, spill_codec, publish)", path, line_of(kk), d->name, key);
        }
    }
    if (!d->op)
        return dm_fail("%s:%d: node '%s' has no 'op'", path, d->line, d->name);
    return 0;
}

dm_pipeline *dm_pipeline_parse(const char *path, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    dm_pipeline *p = dm_xcalloc(1, sizeof *p);
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
    if (root->type != YAML_MAPPING_NODE) {
        rc = dm_fail("%s:%d: a pipeline must be a mapping with 'nodes'", path, line_of(root));
        goto end;
    }
    yaml_node_t *nodes = NULL;
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
        } else {
            rc = dm_fail("%s:%d: unknown key '%s' (expected name, memory, cache, threads, nodes)", path,
                         line_of(k), key);
            goto end;
        }
    }
    if (!nodes || nodes->type != YAML_MAPPING_NODE) {
        rc = dm_fail("%s:%d: the pipeline needs 'nodes', a mapping of node name to node", path,
                     nodes ? line_of(nodes) : line_of(root));
        goto end;
    }
    int n = (int)(nodes->data.mapping.pairs.top - nodes->data.mapping.pairs.start);
    if (n == 0) {
        rc = dm_fail("%s:%d: 'nodes' is empty", path, line_of(nodes));
        goto end;
    }
    p->nodes = dm_xcalloc((size_t)n, sizeof *p->nodes);
    for (yaml_node_pair_t *pr = nodes->data.mapping.pairs.start; pr < nodes->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key), *v = yaml_document_get_node(&doc, pr->value);
        const char *nm = scalar(k);
        if (!nm || !*nm || strchr(nm, '.') || strchr(nm, '/')) {
            rc = dm_fail("%s:%d: node names must be plain words without '.' or '/'", path, line_of(k));
            goto end;
        }
        for (int j = 0; j < p->nnodes; j++)
            if (!strcmp(p->nodes[j].name, nm)) {
                rc = dm_fail("%s:%d: node '%s' declared twice (first at line %d)", path, line_of(k), nm,
                             p->nodes[j].line);
                goto end;
            }
        p->nnodes++;
        if ((rc = parse_node(path, &doc, k, v, &p->nodes[p->nnodes - 1])))
            goto end;
    }
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

dm_pipeline *dm_pipeline_load(const char *path)
{
    size_t len;
    char *text = dm_read_file(path, &len);
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

void dm_pipeline_free(dm_pipeline *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->nnodes; i++) {
        dm_node_decl *d = &p->nodes[i];
        free(d->name), free(d->op), free(d->spill), free(d->spill_dtype), free(d->spill_codec), free(d->publish);
        free_kvs(d->params, d->nparams);
        free_kvs(d->inputs, d->ninputs);
    }
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
