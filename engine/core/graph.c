/*
 * graph.c: binds a parsed pipeline into a graph of nodes, and implements the
 * node accessors of op.h.
 *
 * Binding checks, in this order and before any work starts: every operator
 * exists; every parameter is declared by its operator and parses as its type;
 * required parameters are present; input files are readable; every input names
 * an existing node and port of the same kind (stream or tensor); required inputs
 * are connected; there is no cycle; and each operator's infer() accepts the
 * shapes and dtypes on its inputs. Every message starts with "file:line".
 */
#include "engine.h"
#include "fs.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int count_specs_params(const dm_param_spec *s)
{
    int n = 0;
    while (s && s[n].name)
        n++;
    return n;
}

static int count_specs_ports(const dm_port_spec *s)
{
    int n = 0;
    while (s && s[n].name)
        n++;
    return n;
}

/* "file:line", and for a template's node the row that made it:
 * "file:line (layer L=6)" (template.c). */
static char *where(const dm_pipeline *p, const dm_node_decl *d, int line)
{
    if (line <= 0)
        return dm_xasprintf("%s (--set)", p->path);
    if (d->origin)
        return dm_xasprintf("%s:%d (%s)", p->path, line, d->origin);
    return dm_xasprintf("%s:%d", p->path, line);
}

static int parse_bool(const char *s, int *out)
{
    if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcmp(s, "1") || !strcasecmp(s, "on"))
        return *out = 1, 0;
    if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcmp(s, "0") || !strcasecmp(s, "off"))
        return *out = 0, 0;
    return -1;
}

/* Checks a parameter's text against its type; returns a canonical form. */
static char *check_param(const dm_param_spec *s, const char *v)
{
    char *e;
    switch (s->type) {
    case DM_P_INT: {
        errno = 0;
        long long x = strtoll(v, &e, 10);
        if (errno || e == v || *e) {
            /* accept 1e6-style integers */
            double d = strtod(v, &e);
            if (e == v || *e || d != floor(d) || fabs(d) > 9e18) {
                dm_fail("parameter '%s' must be an integer, not '%s'", s->name, v);
                return NULL;
            }
            x = (long long)d;
        }
        return dm_xasprintf("%lld", x);
    }
    case DM_P_FLOAT: {
        double d = strtod(v, &e);
        if (e == v || *e || !isfinite(d)) {
            dm_fail("parameter '%s' must be a number, not '%s'", s->name, v);
            return NULL;
        }
        return dm_xasprintf("%.17g", d);
    }
    case DM_P_BOOL: {
        int b;
        if (parse_bool(v, &b)) {
            dm_fail("parameter '%s' must be true or false, not '%s'", s->name, v);
            return NULL;
        }
        return dm_xstrdup(b ? "true" : "false");
    }
    case DM_P_SIZE: {
        int64_t b = dm_parse_size(v);
        if (b < 0) {
            dm_fail_prefix("parameter '%s'", s->name);
            return NULL;
        }
        return dm_xasprintf("%lld", (long long)b);
    }
    case DM_P_PATH:
        if (*v && access(v, R_OK)) {
            dm_fail("parameter '%s': cannot read '%s': %s", s->name, v, strerror(errno));
            return NULL;
        }
        return dm_xstrdup(v);
    case DM_P_STRING:
    default:
        return dm_xstrdup(v);
    }
}

static void known_list(char *buf, size_t n, const char *const *names, size_t stride, int count)
{
    buf[0] = 0;
    for (int i = 0; i < count; i++) {
        const char *nm = *(const char *const *)((const char *)names + stride * (size_t)i);
        if (i)
            strncat(buf, ", ", n - strlen(buf) - 1);
        strncat(buf, nm, n - strlen(buf) - 1);
    }
    if (!count)
        strncat(buf, "none", n - strlen(buf) - 1);
}

dm_node *dm_graph_find(dm_graph *g, const char *name)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!strcmp(g->nodes[i]->decl->name, name))
            return g->nodes[i];
    return NULL;
}

static int port_index(const dm_port_spec *s, const char *name)
{
    for (int i = 0; s && s[i].name; i++)
        if (!strcmp(s[i].name, name))
            return i;
    return -1;
}

static int bind_node(dm_pipeline *p, dm_node *n)
{
    dm_node_decl *d = n->decl;
    char known[1024];
    n->op = dm_find_op(d->op);
    if (!n->op) {
        const dm_op *const *r = dm_registry();
        int cnt = 0;
        while (r[cnt])
            cnt++;
        known[0] = 0;
        for (int i = 0; i < cnt; i++) {
            if (i)
                strncat(known, ", ", sizeof known - strlen(known) - 1);
            strncat(known, r[i]->name, sizeof known - strlen(known) - 1);
        }
        char *w = where(p, d, d->op_line);
        dm_fail("%s: node '%s': unknown operator '%s' (known: %s)", w, d->name, d->op, known);
        free(w);
        return -1;
    }
    const dm_op *op = n->op;
    n->nparams = count_specs_params(op->params);
    n->nin = count_specs_ports(op->inputs);
    n->pval = dm_xcalloc((size_t)n->nparams + 1, sizeof *n->pval);
    n->in = dm_xcalloc((size_t)n->nin + 1, sizeof *n->in);
    n->readers = dm_xcalloc((size_t)n->nin + 1, sizeof *n->readers);
    n->where = where(p, d, d->line);

    for (int i = 0; i < d->nparams; i++) {
        int k;
        for (k = 0; k < n->nparams; k++)
            if (!strcmp(op->params[k].name, d->params[i].key))
                break;
        char *w = where(p, d, d->params[i].line);
        if (k == n->nparams) {
            known_list(known, sizeof known, op->params ? &op->params[0].name : NULL, sizeof *op->params, n->nparams);
            dm_fail("%s: node '%s': unknown parameter '%s' for operator '%s' (known: %s)", w, d->name,
                    d->params[i].key, op->name, known);
            free(w);
            return -1;
        }
        char *v = check_param(&op->params[k], d->params[i].value);
        if (!v) {
            dm_fail_prefix("%s: node '%s'", w, d->name);
            free(w);
            return -1;
        }
        free(w);
        n->pval[k] = v;
    }
    for (int k = 0; k < n->nparams; k++) {
        if (n->pval[k])
            continue;
        if (!op->params[k].def)
            return dm_fail("%s: node '%s': operator '%s' needs parameter '%s' (%s)", n->where, d->name,
                           op->name, op->params[k].name, op->params[k].help ? op->params[k].help : "");
        n->pval[k] = dm_xstrdup(op->params[k].def);
    }

    /* Outputs: fixed by the operator, or named by its parameters (one per requested hook, say). */
    if (op->ports) {
        dm_port_spec *outs = NULL;
        if (dm_node_check_params(n, op->ports(n, &outs))) {
            if (!dm_error_subject())
                dm_fail_prefix("%s: node '%s' (%s)", n->where, d->name, op->name);
            return -1;
        }
        n->outs = outs;
        n->own_outs = 1;
    } else {
        n->outs = op->outputs;
    }
    n->nout = count_specs_ports(n->outs);
    n->outdesc = dm_xcalloc((size_t)n->nout + 1, sizeof *n->outdesc);
    n->outtensor = dm_xcalloc((size_t)n->nout + 1, sizeof *n->outtensor);
    n->cons = dm_xcalloc((size_t)n->nout + 1, sizeof *n->cons);
    n->ncons = dm_xcalloc((size_t)n->nout + 1, sizeof *n->ncons);
    n->spill = dm_xcalloc((size_t)n->nout + 1, sizeof *n->spill);
    n->writers = dm_xcalloc((size_t)n->nout + 1, sizeof *n->writers);

    const char *spill = d->spill ? d->spill : "auto";
    if (strcmp(spill, "auto") && strcmp(spill, "always") && strcmp(spill, "never") && strcmp(spill, "recompute")) {
        char *w = where(p, d, d->spill_line);
        dm_fail("%s: node '%s': spill must be auto, always, never or recompute, not '%s'", w, d->name, spill);
        free(w);
        return -1;
    }
    dm_dtype t;
    if (d->spill_dtype && (dm_dtype_parse(d->spill_dtype, &t) || (t != DM_F32 && t != DM_F16 && t != DM_BF16))) {
        char *w = where(p, d, d->spill_line);
        dm_fail("%s: node '%s': spill_dtype must be f32, f16 or bf16, not '%s'", w, d->name, d->spill_dtype);
        free(w);
        return -1;
    }
    if (d->spill_codec && strcmp(d->spill_codec, "none") && strcmp(d->spill_codec, "zstd")) {
        char *w = where(p, d, d->spill_line);
        dm_fail("%s: node '%s': spill_codec must be none or zstd, not '%s'", w, d->name, d->spill_codec);
        free(w);
        return -1;
    }
    if (d->device && strcmp(d->device, "cpu") && strcmp(d->device, "cuda") && strcmp(d->device, "auto")) {
        char *w = where(p, d, d->device_line);
        dm_fail("%s: node '%s': device must be cpu, cuda or auto, not '%s'", w, d->name, d->device);
        free(w);
        return -1;
    }
    return 0;
}

static int connect_node(dm_graph *g, dm_node *n)
{
    dm_node_decl *d = n->decl;
    const dm_op *op = n->op;
    char known[1024];
    for (int i = 0; i < d->ninputs; i++) {
        dm_kv *kv = &d->inputs[i];
        char *w = where(g->pipe, d, kv->line);
        int port = port_index(op->inputs, kv->key);
        if (port < 0) {
            known_list(known, sizeof known, op->inputs ? &op->inputs[0].name : NULL, sizeof *op->inputs, n->nin);
            dm_fail("%s: node '%s': operator '%s' has no input '%s' (inputs: %s)", w, d->name, op->name,
                    kv->key, known);
            goto fail;
        }
        char *srcname = dm_xstrdup(kv->value), *dot = strchr(srcname, '.');
        if (dot)
            *dot++ = 0;
        dm_node *src = dm_graph_find(g, srcname);
        if (!src) {
            dm_fail("%s: node '%s': input '%s' names node '%s', which does not exist", w, d->name, kv->key, srcname);
            free(srcname);
            goto fail;
        }
        int sport;
        if (dot) {
            sport = port_index(src->outs, dot);
            if (sport < 0) {
                known_list(known, sizeof known, &src->outs[0].name, sizeof src->outs[0], src->nout);
                dm_fail("%s: node '%s': input '%s': node '%s' has no output '%s' (outputs: %s)", w, d->name,
                        kv->key, srcname, dot, known);
                free(srcname);
                goto fail;
            }
        } else {
            /* A bare node name means its only output of the right kind. */
            sport = -1;
            int nmatch = 0;
            for (int k = 0; k < src->nout; k++)
                if (src->outs[k].kind == op->inputs[port].kind)
                    sport = sport < 0 ? k : sport, nmatch++;
            if (nmatch != 1) {
                known_list(known, sizeof known, &src->outs[0].name, sizeof src->outs[0], src->nout);
                dm_fail("%s: node '%s': input '%s': node '%s' has %s (outputs: %s); write %s.PORT", w,
                        d->name, kv->key, srcname, nmatch ? "several outputs of that kind" : "no output of that kind",
                        known, srcname);
                free(srcname);
                goto fail;
            }
        }
        if (src->outs[sport].kind != op->inputs[port].kind) {
            dm_fail("%s: node '%s': input '%s' takes a %s but %s.%s is a %s", w, d->name, kv->key,
                    op->inputs[port].kind == DM_PORT_STREAM ? "stream" : "tensor", srcname,
                    src->outs[sport].name,
                    src->outs[sport].kind == DM_PORT_STREAM ? "stream" : "tensor");
            free(srcname);
            goto fail;
        }
        free(srcname);
        free(w);
        n->in[port].src = src;
        n->in[port].port = sport;
        src->cons[sport] = dm_xrealloc(src->cons[sport], (size_t)(src->ncons[sport] + 1) * sizeof(dm_edge));
        src->cons[sport][src->ncons[sport]].src = n;
        src->cons[sport][src->ncons[sport]].port = port;
        src->ncons[sport]++;
        continue;
    fail:
        free(w);
        return -1;
    }
    for (int k = 0; k < n->nin; k++)
        if (!n->in[k].src && !op->inputs[k].optional)
            return dm_fail("%s: node '%s': missing input '%s' (operator '%s')", n->where, d->name,
                           op->inputs[k].name, op->name);
    if (n->nin > 0 && !op->consume && !op->finish && !op->open)
        return dm_fail("%s: node '%s': operator '%s' cannot take inputs", n->where, d->name, op->name);
    return 0;
}

/* Depth-first topological sort; on a cycle, names it. */
static int visit(dm_graph *g, dm_node *n, int *mark, dm_node **stack, int depth, dm_node **order, int *norder)
{
    if (mark[n->index] == 2)
        return 0;
    stack[depth] = n;
    if (mark[n->index] == 1) {
        char buf[2048] = "";
        int start = 0;
        for (int i = 0; i < depth; i++)
            if (stack[i] == n)
                start = i;
        for (int i = start; i <= depth; i++) {
            if (i > start)
                strncat(buf, " -> ", sizeof buf - strlen(buf) - 1);
            strncat(buf, stack[i]->decl->name, sizeof buf - strlen(buf) - 1);
        }
        return dm_fail("%s: cycle: %s", n->where, buf);
    }
    mark[n->index] = 1;
    for (int k = 0; k < n->nin; k++)
        if (n->in[k].src && visit(g, n->in[k].src, mark, stack, depth + 1, order, norder))
            return -1;
    mark[n->index] = 2;
    order[(*norder)++] = n;
    return 0;
}

/* A stream input takes the dtype its port declares (unless any_dtype): the
 * producer's output must carry that dtype. Runs before n's infer(), which may
 * then rely on it. */
static int check_input_dtypes(dm_node *n)
{
    for (int k = 0; k < n->nin; k++) {
        const dm_port_spec *in = &n->op->inputs[k];
        dm_node *s = n->in[k].src;
        if (!s || in->kind != DM_PORT_STREAM || in->any_dtype)
            continue;
        dm_dtype have = s->outdesc[n->in[k].port].dtype;
        if (have == in->dtype)
            continue;
        int line = n->decl->line;
        for (int i = 0; i < n->decl->ninputs; i++)
            if (!strcmp(n->decl->inputs[i].key, in->name))
                line = n->decl->inputs[i].line;
        char *w = where(((dm_graph *)n->graph)->pipe, n->decl, line);
        dm_failc(DM_E_SHAPE, "%s: node '%s': input '%s' takes %s rows, but %s.%s carries %s", w, n->decl->name,
                 in->name, dm_dtype_name(in->dtype), s->decl->name, s->outs[n->in[k].port].name,
                 dm_dtype_name(have));
        free(w);
        return -1;
    }
    return 0;
}

dm_graph *dm_graph_build(dm_pipeline *p)
{
    dm_graph *g = dm_xcalloc(1, sizeof *g);
    g->pipe = p;
    g->shard = p->shard >= 0 ? p->shard : DM_DEFAULT_SHARD;
    g->nranks = 1;
    g->nnodes = p->nnodes;
    g->nodes = dm_xcalloc((size_t)p->nnodes, sizeof *g->nodes);
    for (int i = 0; i < p->nnodes; i++) {
        dm_node *n = dm_xcalloc(1, sizeof *n);
        n->index = i;
        n->graph = g;
        n->decl = &p->nodes[i];
        n->group = -1;
        g->nodes[i] = n;
    }
    for (int i = 0; i < g->nnodes; i++)
        if (bind_node(p, g->nodes[i]))
            goto fail;
    for (int i = 0; i < g->nnodes; i++)
        if (connect_node(g, g->nodes[i]))
            goto fail;

    int *mark = dm_xcalloc((size_t)g->nnodes, sizeof *mark), norder = 0;
    dm_node **order = dm_xcalloc((size_t)g->nnodes, sizeof *order);
    dm_node **stack = dm_xcalloc((size_t)g->nnodes + 1, sizeof *stack);
    int rc = 0;
    for (int i = 0; i < g->nnodes && !rc; i++)
        rc = visit(g, g->nodes[i], mark, stack, 0, order, &norder);
    free(mark), free(stack);
    if (rc) {
        free(order);
        goto fail;
    }
    memcpy(g->nodes, order, (size_t)g->nnodes * sizeof *order);
    free(order);
    for (int i = 0; i < g->nnodes; i++)
        g->nodes[i]->index = i;

    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        for (int k = 0; k < n->nout; k++) {
            n->outdesc[k].kind = n->outs[k].kind;
            n->outdesc[k].dtype = DM_F32;
            if (n->outdesc[k].kind == DM_PORT_STREAM) {
                n->outdesc[k].dtype = n->outs[k].dtype;
                n->outdesc[k].ndim = 2;
                n->outdesc[k].shape[0] = -1;
            }
        }
        if (check_input_dtypes(n))
            goto fail;
        n->single_pass = 0;
        if (dm_node_check_params(n, n->op->infer ? n->op->infer(n) : 0)) {
            if (!dm_error_subject())
                dm_fail_prefix("%s: node '%s' (%s)", n->where, n->decl->name, n->op->name);
            goto fail;
        }
        for (int k = 0; k < n->nout; k++) {
            dm_port_desc *o = &n->outdesc[k];
            if (o->kind == DM_PORT_STREAM && o->shape[1] == 0) {
                dm_fail("%s: node '%s': operator '%s' did not set the width of output '%s'", n->where,
                        n->decl->name, n->op->name, n->outs[k].name);
                goto fail;
            }
            if (o->kind == DM_PORT_STREAM && o->dtype != DM_F32 && o->dtype != DM_I32 && o->dtype != DM_I64) {
                dm_failc(DM_E_INTERNAL, "%s: node '%s': operator '%s' gives stream output '%s' dtype %s (streams "
                         "are f32, i32 or i64)", n->where, n->decl->name, n->op->name, n->outs[k].name,
                         dm_dtype_name(o->dtype));
                goto fail;
            }
        }
    }
    return g;
fail:
    dm_graph_free(g);
    return NULL;
}

void dm_graph_free(dm_graph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        if (!n)
            continue;
        for (int k = 0; k < n->nparams && n->pval; k++)
            free(n->pval[k]);
        for (int k = 0; k < n->nout && n->outtensor; k++)
            dm_tensor_free(&n->outtensor[k]);
        for (int k = 0; k < n->nout && n->cons; k++)
            free(n->cons[k]);
        for (int k = 0; k < n->nproducts; k++)
            free(n->products[k]);
        free(n->products);
        if (n->own_outs) {
            for (int k = 0; n->outs[k].name; k++)
                free((char *)n->outs[k].name);
            free((dm_port_spec *)n->outs);
        }
        free(n->pval), free(n->in), free(n->outdesc), free(n->outtensor), free(n->cons), free(n->ncons);
        free(n->spill), free(n->writers), free(n->readers), free(n->building), free((char *)n->where), free(n->material), free(n->why), free(n->dir);
        free(n->bad_param);
        free(n);
    }
    for (int i = 0; i < g->nforce; i++)
        free(g->force[i]);
    free(g->force), free(g->nodes), free(g->cache), free(g->out);
    free(g);
}

/* ---- node accessors (op.h) ------------------------------------------------ */

/* The index of parameter key, or -1 when the operator did not declare it: a bug
 * in the operator, not in the pipeline. The accessors then return an empty or
 * zero value and the node remembers the name; the engine reports it as an
 * internal error once the callback returns (dm_node_check_params). */
static int param_index(const dm_node *n, const char *key)
{
    for (int k = 0; k < n->nparams; k++)
        if (!strcmp(n->op->params[k].name, key))
            return k;
    dm_node *m = (dm_node *)n;
    if (!m->bad_param)
        m->bad_param = dm_xstrdup(key);
    return -1;
}

int dm_node_check_params(dm_node *n, int rc)
{
    if (!n->bad_param)
        return rc;
    dm_failc(DM_E_INTERNAL, "%s: node '%s': operator '%s' reads parameter '%s', which it does not declare "
             "(a bug in the operator)", n->where, n->decl->name, n->op->name, n->bad_param);
    dm_error_attribute(n);
    return -1;
}

const char *dm_node_name(const dm_node *n) { return n->decl->name; }
const char *dm_node_where(const dm_node *n) { return n->where; }

const dm_compute *dm_node_compute(const dm_node *n)
{
    dm_node *m = (dm_node *)n; /* the context is recomputed, not state: the run's may change between runs */
    m->compute = *dm_compute_default();
    if (n->decl->device) {
        char note[600];
        dm_compute c = *dm_compute_default();
        dm_device_resolve(n->decl->device, &c.device, note, (int)sizeof note);
        m->compute.device = c.device;
        static int said;
        if (note[0] && !said++)
            dm_warn("%s: node '%s': %s", n->where, n->decl->name, note);
    }
    return &m->compute;
}

const char *dm_param_str(const dm_node *n, const char *key)
{
    int k = param_index(n, key);
    return k < 0 ? "" : n->pval[k];
}

int64_t dm_param_int(const dm_node *n, const char *key) { return strtoll(dm_param_str(n, key), NULL, 10); }
double dm_param_float(const dm_node *n, const char *key) { return strtod(dm_param_str(n, key), NULL); }

int64_t dm_param_size(const dm_node *n, const char *key)
{
    int k = param_index(n, key);
    return k < 0 ? 0 : dm_parse_size(n->pval[k]);
}

int dm_param_bool(const dm_node *n, const char *key)
{
    int b = 0;
    parse_bool(dm_param_str(n, key), &b);
    return b;
}

const dm_port_desc *dm_input_desc(const dm_node *n, int port)
{
    if (port < 0 || port >= n->nin || !n->in[port].src)
        return NULL;
    return &n->in[port].src->outdesc[n->in[port].port];
}

dm_port_desc *dm_output_desc(dm_node *n, int port) { return port >= 0 && port < n->nout ? &n->outdesc[port] : NULL; }
int dm_input_connected(const dm_node *n, int port) { return port >= 0 && port < n->nin && n->in[port].src; }

void dm_input_single_pass(dm_node *n, int port)
{
    if (port >= 0 && port < n->nin && port < 64)
        n->single_pass |= (uint64_t)1 << port;
}

const dm_tensor *dm_input_tensor(const dm_node *n, int port)
{
    if (!dm_input_connected(n, port))
        return NULL;
    const dm_tensor *t = &n->in[port].src->outtensor[n->in[port].port];
    return t->data ? t : NULL;
}

int dm_set_output(dm_node *n, int port, dm_tensor *t)
{
    if (port < 0 || port >= n->nout || n->outdesc[port].kind != DM_PORT_TENSOR)
        return dm_fail("node '%s': output %d is not a tensor", n->decl->name, port);
    dm_tensor_free(&n->outtensor[port]);
    n->outtensor[port] = *t;
    memset(t, 0, sizeof *t);
    return 0;
}

const char *dm_node_dir(const dm_node *n) { return n->dir; }

int dm_publish(dm_node *n, const char *file)
{
    n->products = dm_xrealloc(n->products, (size_t)(n->nproducts + 1) * sizeof *n->products);
    n->products[n->nproducts++] = dm_xstrdup(file);
    return 0;
}

int dm_publish_text(dm_node *n, const char *file, const char *text, size_t len)
{
    if (!*file)
        return 0;
    char *path = dm_xasprintf("%s/%s", n->dir, file);
    int rc = dm_write_file_atomic(path, text, len);
    free(path);
    return rc ? rc : dm_publish(n, file);
}

int dm_publish_json(dm_node *n, const char *file, const char *what, const json_t *o, size_t flags,
                    dm_tensor *text)
{
    char *s = json_dumps(o, flags);
    if (!s)
        return dm_fail("%s: cannot encode JSON", *file ? file : what);
    size_t len = strlen(s);
    if (text)
        dm_tensor_from_text(text, s, len);
    s[len] = '\n'; /* json_dumps leaves no final newline; overwrite its NUL */
    int rc = dm_publish_text(n, file, s, len + 1);
    free(s);
    return rc;
}

void *dm_node_state(const dm_node *n) { return n->state_ptr; }
void dm_node_set_state(dm_node *n, void *state) { ((dm_node *)n)->state_ptr = state; }
int64_t dm_chunk_rows(const dm_node *n) { return n->chunk_rows; }
