/*
 * run.c: executes a plan.
 *
 * The nodes that run (stale ones, and cached sources produced again to feed
 * them) are cut into groups. A group is driven by one or more streams: a
 * source's produce(), or the replay of a spill file. Each chunk a driver yields
 * is pushed depth-first through every node of the group (dm_emit), so a chain
 * source -> map -> reduction holds one chunk per stream at a time, whatever the
 * number of rows. A node joins the group of its stream inputs unless:
 *   - it needs several passes (a multipass input that its infer() did not mark
 *     dm_input_single_pass): it gets its own group, whose drivers are replayed
 *     from spill files once per pass;
 *   - one of its tensor inputs is made in the same group (a tensor is complete
 *     only when its producer finishes): it gets a group of its own that replays
 *     (or produces again) its stream inputs;
 *   - its stream inputs come from different groups.
 * Stream edges between groups are spilled; a producer whose outputs must cross
 * groups but that says `spill: never` is an error found before work starts.
 *
 * Memory: the chunk size of a group is the budget, less the state the group's
 * operators declare (state_bytes), divided by the bytes every chunk row costs
 * across the group's streams and spill buffers.
 *
 * A node's results are built in CACHE/tmp/<key>.<pid> and renamed to CACHE/<key>
 * when its group succeeds; on error every temporary folder is removed, so the
 * cache only ever holds complete entries. A corrupt spill found while replaying
 * invalidates its entry, and the run is planned again (the producer reruns).
 */
#include "engine.h"

#include <cblas.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"
#include "npy.h"
#include "spill.h"

#define DM_MAX_CHUNK_ROWS 65536
#define DM_SPILL_BUFFERS 5 /* per spilled stream: the writer's ring plus slack */

static int current_group = -1;
static int64_t run_spilled_bytes;


typedef struct {
    dm_node *src;
    int port;
    dm_spill_reader *reader; /* NULL: src->op->produce */
    dm_chunk buf;
    int64_t total; /* rows, -1 unknown */
} driver;

typedef struct {
    dm_node **members;
    int nmembers;
    driver *drivers;
    int ndrivers;
    int multipass;
} group;

static int is_active(const dm_node *n) { return n->run || n->reproduce; }

/* Names node n in the recorded error, once: "file:line: node 'x' (op): ..."
 * (or "node 'x' (op): ..." without where). An error already attributed to a
 * node (one that failed inside n's dm_emit, say) keeps that node's name alone.
 * Returns -1. */
static int blame(dm_node *n, int with_where)
{
    if (dm_error_subject())
        return -1;
    if (with_where)
        dm_fail_prefix("%s: node '%s' (%s)", n->where, n->decl->name, n->op->name);
    else
        dm_fail_prefix("node '%s' (%s)", n->decl->name, n->op->name);
    dm_error_attribute(n);
    return -1;
}

static int has_multipass_input(const dm_node *n)
{
    for (int k = 0; k < n->nin; k++)
        if (n->in[k].src && n->op->inputs[k].multipass && !(k < 64 && (n->single_pass >> k & 1)))
            return 1;
    return 0;
}

/* Cuts the active nodes into groups (see the file comment). */
static int make_groups(dm_graph *g, group **out, int *nout)
{
    group *gs = NULL;
    int ng = 0;
    *out = NULL;
    *nout = 0;
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        if (!is_active(n))
            continue;
        int join = -1;
        if (!n->op->produce && !has_multipass_input(n)) {
            int ok = 1, nstreams = 0;
            for (int k = 0; k < n->nin && ok; k++) {
                dm_node *s = n->in[k].src;
                if (!s)
                    continue;
                if (s->outs[n->in[k].port].kind == DM_PORT_STREAM && !n->op->inputs[k].random) {
                    nstreams++;
                    if (!is_active(s) || has_multipass_input(s) || (join >= 0 && s->group != join))
                        ok = 0;
                    else
                        join = s->group;
                }
            }
            for (int k = 0; k < n->nin && ok; k++) {
                dm_node *s = n->in[k].src;
                /* groups run in the order made: a tensor must come from an earlier one */
                if (s && (s->outs[n->in[k].port].kind == DM_PORT_TENSOR || n->op->inputs[k].random) &&
                    is_active(s) && s->group >= join)
                    ok = 0;
            }
            if (!ok || !nstreams)
                join = -1;
        }
        if (join < 0) {
            gs = dm_xrealloc(gs, (size_t)(ng + 1) * sizeof *gs);
            memset(&gs[ng], 0, sizeof gs[ng]);
            join = ng++;
            *out = gs; /* the caller frees what was made, also on error */
            *nout = ng;
            group *G = &gs[join];
            G->multipass = has_multipass_input(n);
            for (int k = 0; k < n->nin; k++) {
                dm_node *s = n->in[k].src;
                if (!s || s->outs[n->in[k].port].kind != DM_PORT_STREAM || n->op->inputs[k].random)
                    continue;
                G->drivers = dm_xrealloc(G->drivers, (size_t)(G->ndrivers + 1) * sizeof *G->drivers);
                driver *d = &G->drivers[G->ndrivers++];
                memset(d, 0, sizeof *d);
                d->src = s;
                d->port = n->in[k].port;
                if (!s->op->produce && s->run && !s->spill[d->port]) {
                    if (s->decl->spill && !strcmp(s->decl->spill, "never"))
                        return dm_fail("%s: node '%s' reads output '%s' of node '%s' in a separate pass, "
                                       "which needs it spilled, but '%s' has spill: never",
                                       n->where, n->decl->name, s->outs[d->port].name,
                                       s->decl->name, s->decl->name);
                    s->spill[d->port] = 1;
                }
            }
        }
        for (int k = 0; k < n->nin; k++) {
            dm_node *s = n->in[k].src;
            if (!s || !n->op->inputs[k].random || !s->run)
                continue;
            if (s->decl->spill && !strcmp(s->decl->spill, "never"))
                return dm_fail("%s: node '%s' reads output '%s' of node '%s' by row, which needs it spilled, "
                               "but '%s' has spill: never", n->where, n->decl->name, s->outs[n->in[k].port].name,
                               s->decl->name, s->decl->name);
            s->spill[n->in[k].port] = 1;
        }
        n->group = join;
        group *G = &gs[join];
        G->members = dm_xrealloc(G->members, (size_t)(G->nmembers + 1) * sizeof *G->members);
        G->members[G->nmembers++] = n;
    }
    *out = gs;
    *nout = ng;
    return 0;
}

static void free_groups(group *gs, int ng)
{
    for (int i = 0; i < ng; i++) {
        free(gs[i].members);
        free(gs[i].drivers);
    }
    free(gs);
}

int dm_emit(dm_node *n, int port, const dm_chunk *c)
{
    if (n->writers[port]) {
        if (dm_spill_write(n->writers[port], c)) {
            dm_fail_prefix("node '%s': spilling output '%s'", n->decl->name, n->outs[port].name);
            dm_error_attribute(n);
            return -1;
        }
    }
    for (int i = 0; i < n->ncons[port]; i++) {
        dm_node *c2 = n->cons[port][i].src;
        if (c2->group != current_group || !c2->run || !c2->opened)
            continue;
        double t0 = dm_now();
        c2->in_consume = 1;
        int rc = c2->op->consume(c2, n->cons[port][i].port, c);
        c2->in_consume = 0;
        if (dm_node_check_params(c2, rc))
            return blame(c2, 0);
        /* a node's time is its own: what its consumers take inside its emit is theirs */
        double dt = dm_now() - t0;
        c2->seconds += dt;
        if (n->in_consume)
            n->seconds -= dt;
        c2->rows_in += n->cons[port][i].port == 0 ? c->rows : 0;
    }
    return 0;
}

int64_t dm_input_rows(const dm_node *n, int port)
{
    return port >= 0 && port < n->nin && n->readers[port] ? dm_spill_rows(n->readers[port]) : -1;
}

int dm_input_read_rows(dm_node *n, int port, int64_t row0, int64_t rows, float *out)
{
    if (port < 0 || port >= n->nin || !n->readers[port]) {
        dm_failc(DM_E_INTERNAL, "node '%s': input %d is not a random-access input", n->decl->name, port);
        dm_error_attribute(n);
        return -1;
    }
    if (row0 < 0 || rows < 0 || row0 + rows > dm_spill_rows(n->readers[port])) {
        dm_failc(DM_E_SHAPE, "node '%s': input '%s': rows %lld..%lld out of range (%lld rows)", n->decl->name,
                 n->op->inputs[port].name, (long long)row0, (long long)(row0 + rows),
                 (long long)dm_spill_rows(n->readers[port]));
        dm_error_attribute(n);
        return -1;
    }
    return dm_spill_read_rows(n->readers[port], row0, rows, out);
}

char *dm_stage_times(const dm_node *n)
{
    dm_graph *g = n->graph;
    json_t *a = json_array();
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *m = g->nodes[i];
        if (m == n || (m->run && m->group >= n->group))
            continue; /* itself, or not finished yet */
        double secs = m->seconds;
        if (!m->run) { /* cached: the time of the run that made it */
            char *path = dm_xasprintf("%s/%s/node.json", g->cache, m->key);
            json_error_t err;
            json_t *j = json_load_file(path, 0, &err);
            free(path);
            secs = j ? json_number_value(json_object_get(j, "seconds")) : 0;
            json_decref(j);
        }
        json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:f}", "node", m->decl->name, "op", m->op->name,
                                           "state", m->run ? "ran" : "cached", "seconds", secs));
    }
    char *text = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    return text;
}

static int is_member(const group *G, const dm_node *n)
{
    for (int i = 0; i < G->nmembers; i++)
        if (G->members[i] == n)
            return 1;
    return 0;
}

/* Loads the tensor outputs of cached producers that members read. */
static int load_tensor_inputs(dm_graph *g, group *G)
{
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        for (int k = 0; k < n->nin; k++) {
            dm_node *s = n->in[k].src;
            int p = n->in[k].port;
            if (!s || s->outdesc[p].kind != DM_PORT_TENSOR || s->outtensor[p].data)
                continue;
            char *path = dm_xasprintf("%s/%s/%s.npy", g->cache, s->key, s->outs[p].name);
            int rc = dm_npy_load(path, &s->outtensor[p]);
            free(path);
            if (rc) {
                dm_cache_invalidate(g, s->key);
                return dm_fail_prefix("cached output '%s' of node '%s' is unreadable (entry removed; run again)",
                                      s->outs[p].name, s->decl->name);
            }
        }
    }
    return 0;
}

/* Tensors whose size depends on the data (a PCA with k chosen by variance) are
 * known only once made: give consumers their real shapes and infer again. */
static int refresh_descs(group *G)
{
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        for (int k = 0; k < n->nin; k++) {
            dm_node *s = n->in[k].src;
            int p = n->in[k].port;
            if (!s || s->outdesc[p].kind != DM_PORT_TENSOR || !s->outtensor[p].data)
                continue;
            dm_port_desc *d = &s->outdesc[p];
            const dm_tensor *t = &s->outtensor[p];
            d->ndim = t->ndim;
            d->dtype = t->dtype;
            memcpy(d->shape, t->shape, sizeof d->shape);
        }
        /* the groups are made: a second infer() cannot change how often an input is read */
        uint64_t single_pass = n->single_pass;
        if (dm_node_check_params(n, n->op->infer ? n->op->infer(n) : 0))
            return blame(n, 1);
        n->single_pass = single_pass;
        for (int k = 0; k < n->nout; k++)
            if (n->outdesc[k].kind == DM_PORT_STREAM && n->outdesc[k].shape[1] <= 0)
                return dm_failc(DM_E_SHAPE, "%s: node '%s': the width of output '%s' is still unknown when it runs", n->where,
                                n->decl->name, n->outs[k].name);
    }
    return 0;
}

static int64_t row_bytes_of(const dm_node *n, int port) { return n->outdesc[port].shape[1] * 4; }

static int size_chunks(dm_graph *g, group *G, int gi)
{
    int64_t fixed = 0, per_row = 0;
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        if (n->op->state_bytes)
            fixed += n->op->state_bytes(n);
        if (dm_node_check_params(n, 0))
            return -1;
        for (int k = 0; k < n->nout; k++)
            if (n->outdesc[k].kind == DM_PORT_STREAM)
                per_row += row_bytes_of(n, k) * (1 + (n->spill[k] ? DM_SPILL_BUFFERS : 0));
    }
    for (int j = 0; j < G->ndrivers; j++)
        per_row += row_bytes_of(G->drivers[j].src, G->drivers[j].port) * 4; /* buffer + read-ahead */
    int64_t avail = g->memory - fixed - (64 << 20); /* code, libraries, small allocations */
    int64_t rows = per_row ? avail / per_row : DM_MAX_CHUNK_ROWS;
    if (rows > DM_MAX_CHUNK_ROWS)
        rows = DM_MAX_CHUNK_ROWS;
    if (rows < 64) {
        char names[512] = "";
        for (int i = 0; i < G->nmembers; i++) {
            strncat(names, i ? ", " : "", sizeof names - strlen(names) - 1);
            strncat(names, G->members[i]->decl->name, sizeof names - strlen(names) - 1);
        }
        return dm_failc(DM_E_NOMEM, "memory budget %lld MiB is too small for nodes %s (state %lld MiB, %lld bytes per row); "
                        "raise it with --memory", (long long)(g->memory >> 20), names, (long long)(fixed >> 20),
                        (long long)per_row);
    }
    for (int i = 0; i < G->nmembers; i++)
        G->members[i]->chunk_rows = rows;
    for (int j = 0; j < G->ndrivers; j++)
        if (!G->drivers[j].reader && !is_member(G, G->drivers[j].src))
            G->drivers[j].src->chunk_rows = rows;
    (void)gi;
    return 0;
}

static char *node_tmp_dir(dm_graph *g, dm_node *n)
{
    /* the node's index too: two nodes may share a key (the same computation twice) */
    return dm_xasprintf("%s/tmp/%s.%d.%d", g->cache, n->key, (int)getpid(), n->index);
}

static int open_node(dm_graph *g, dm_node *n, int spills)
{
    free(n->dir);
    n->dir = node_tmp_dir(g, n);
    dm_rm_rf(n->dir);
    if (dm_mkdir_p(n->dir))
        return -1;
    for (int k = 0; k < n->nproducts; k++)
        free(n->products[k]);
    n->nproducts = 0;
    n->seconds = 0;
    n->rows_in = 0;
    if (n->run && spills) {
        const char *dt = n->decl->spill_dtype ? n->decl->spill_dtype : "f32";
        dm_dtype t = DM_F32;
        dm_codec codec = DM_CODEC_NONE;
        dm_dtype_parse(dt, &t);
        if (n->decl->spill_codec)
            dm_codec_parse(n->decl->spill_codec, &codec);
        for (int k = 0; k < n->nout; k++) {
            if (n->outdesc[k].kind != DM_PORT_STREAM)
                continue;
            if (n->decl->spill && !strcmp(n->decl->spill, "always"))
                n->spill[k] = 1;
            if (!n->spill[k])
                continue;
            n->writers[k] = dm_spill_writer_open(n->dir, n->outs[k].name, n->outdesc[k].shape[1], t, codec);
            if (!n->writers[k])
                return dm_fail_prefix("node '%s'", n->decl->name);
        }
    }
    for (int k = 0; k < n->nin && spills; k++) {
        dm_node *s = n->in[k].src;
        if (!s || !n->op->inputs[k].random)
            continue;
        char *dir = dm_cache_entry(g, s->key);
        n->readers[k] = dm_spill_reader_open(dir, s->outs[n->in[k].port].name);
        free(dir);
        if (!n->readers[k]) {
            dm_cache_invalidate(g, s->key);
            return dm_fail_prefix("node '%s': input '%s' (entry removed; run again)", n->decl->name,
                                  n->op->inputs[k].name);
        }
    }
    if (dm_node_check_params(n, n->op->open ? n->op->open(n) : 0)) {
        blame(n, 1);
        if (n->op->close)
            n->op->close(n);
        n->state_ptr = NULL;
        return -1;
    }
    n->opened = 1;
    return 0;
}

static void close_node(dm_node *n, int failed)
{
    if (n->opened && n->op->close)
        n->op->close(n);
    n->opened = 0;
    n->state_ptr = NULL;
    for (int k = 0; k < n->nout; k++) {
        if (n->writers[k])
            dm_spill_writer_abort(n->writers[k]);
        n->writers[k] = NULL;
    }
    for (int k = 0; k < n->nin; k++) {
        if (n->readers[k])
            dm_spill_reader_close(n->readers[k]);
        n->readers[k] = NULL;
    }
    if (failed && n->dir)
        dm_rm_rf(n->dir);
}

/* Writes node.json and moves the node's folder into the cache. */
static int commit_node(dm_graph *g, dm_node *n)
{
    json_t *j = json_object(), *outs = json_object(), *prods = json_array();
    json_object_set_new(j, "key", json_string(n->key));
    json_object_set_new(j, "node", json_string(n->decl->name));
    json_object_set_new(j, "op", json_string(n->op->name));
    json_object_set_new(j, "material", json_string(n->material));
    json_object_set_new(j, "seconds", json_real(n->seconds));
    for (int k = 0; k < n->nout; k++) {
        json_t *o = json_object();
        if (n->outdesc[k].kind == DM_PORT_STREAM) {
            json_object_set_new(o, "kind", json_string("stream"));
            json_object_set_new(o, "spilled", json_boolean(n->spill[k]));
            json_object_set_new(o, "cols", json_integer(n->outdesc[k].shape[1]));
            if (n->writers[k]) {
                run_spilled_bytes += dm_spill_writer_bytes(n->writers[k]);
                int rc = dm_spill_writer_close(n->writers[k]);
                n->writers[k] = NULL;
                if (rc) {
                    json_decref(o), json_decref(j), json_decref(outs), json_decref(prods);
                    return dm_fail_prefix("node '%s'", n->decl->name);
                }
            }
        } else {
            char *path = dm_xasprintf("%s/%s.npy", n->dir, n->outs[k].name);
            json_object_set_new(o, "kind", json_string("tensor"));
            int rc = 0;
            if (!n->outtensor[k].data)
                rc = dm_failc(DM_E_INTERNAL, "node '%s': operator '%s' did not set output '%s'", n->decl->name, n->op->name,
                              n->outs[k].name);
            else
                rc = dm_npy_save(path, &n->outtensor[k]);
            free(path);
            if (rc) {
                json_decref(o), json_decref(j), json_decref(outs), json_decref(prods);
                return -1;
            }
        }
        json_object_set_new(outs, n->outs[k].name, o);
    }
    for (int k = 0; k < n->nproducts; k++)
        json_array_append_new(prods, json_string(n->products[k]));
    json_object_set_new(j, "outputs", outs);
    json_object_set_new(j, "products", prods);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    char *path = dm_xasprintf("%s/node.json", n->dir);
    int rc = dm_write_file_atomic(path, text, strlen(text));
    free(text), free(path);
    if (rc)
        return -1;
    char *final = dm_cache_entry(g, n->key);
    rc = dm_fsync_path(n->dir);
    if (!rc)
        rc = dm_dir_publish(n->dir, final);
    free(final);
    if (rc)
        return -1;
    free(n->dir);
    n->dir = NULL;
    return dm_cache_record(g, n);
}

/* A driver's next chunk; 0 with rows == 0 at the end. A spill that cannot be
 * replayed sets *bad to its producer (which the run then recomputes). */
static int driver_next(driver *d, dm_node **bad)
{
    if (d->reader) {
        if (dm_spill_next(d->reader, &d->buf)) {
            *bad = d->src;
            return -1;
        }
        return 0;
    }
    d->buf.rows = 0;
    double t0 = dm_now();
    int rc = d->src->op->produce(d->src, &d->buf, d->src->chunk_rows);
    d->src->seconds += dm_now() - t0;
    if (dm_node_check_params(d->src, rc))
        return blame(d->src, 1);
    d->buf.cols = d->src->outdesc[d->port].shape[1];
    return 0;
}

static char *group_label(const group *G)
{
    char buf[512] = "";
    for (int i = 0; i < G->nmembers; i++) {
        strncat(buf, i ? ", " : "", sizeof buf - strlen(buf) - 1);
        strncat(buf, G->members[i]->decl->name, sizeof buf - strlen(buf) - 1);
    }
    return dm_xstrdup(buf);
}

/* Returns 0 or -1; when the error is a spill that cannot be replayed, *bad is
 * set to its producer. */
static int run_group(dm_graph *g, group *G, int gi, dm_node **bad)
{
    int rc = 0, opened_drivers = 0;
    current_group = gi;
    /* Spilled inputs first: their manifests give widths decided at run time. */
    for (int j = 0; j < G->ndrivers && !rc; j++) {
        driver *d = &G->drivers[j];
        d->total = d->src->outdesc[d->port].shape[0];
        opened_drivers = j + 1;
        /* sources are produced again, unless they keep a spill (spill_source) */
        if (d->src->op->produce && !(d->src->op->spill_source && (d->src->spill[d->port] || !is_active(d->src))))
            continue;
        char *dir = dm_cache_entry(g, d->src->key);
        d->reader = dm_spill_reader_open(dir, d->src->outs[d->port].name);
        free(dir);
        if (!d->reader) {
            *bad = d->src;
            rc = -1;
            break;
        }
        d->total = dm_spill_rows(d->reader);
        d->src->outdesc[d->port].shape[1] = dm_spill_cols(d->reader);
    }
    if (!rc && !(rc = load_tensor_inputs(g, G)) && !(rc = refresh_descs(G)))
        rc = size_chunks(g, G, gi);
    for (int i = 0; i < G->nmembers && !rc; i++)
        rc = open_node(g, G->members[i], 1);
    for (int j = 0; j < G->ndrivers && !rc; j++) {
        driver *d = &G->drivers[j];
        int64_t cols = d->src->outdesc[d->port].shape[1];
        if (d->reader) {
            d->buf.data = dm_xmalloc_aligned((size_t)dm_spill_max_chunk_rows(d->reader) * (size_t)cols * 4);
        } else {
            d->buf.data = dm_xmalloc_aligned((size_t)d->src->chunk_rows * (size_t)cols * 4);
            if (!is_member(G, d->src))
                rc = open_node(g, d->src, 0);
        }
    }
    /* Sources that are members drive themselves. */
    driver *own = NULL;
    int nown = 0;
    for (int i = 0; i < G->nmembers && !rc; i++) {
        dm_node *n = G->members[i];
        if (!n->op->produce)
            continue;
        own = dm_xrealloc(own, (size_t)(nown + 1) * sizeof *own);
        memset(&own[nown], 0, sizeof *own);
        own[nown].src = n;
        own[nown].total = n->outdesc[0].shape[0];
        own[nown].buf.data = dm_xmalloc_aligned((size_t)n->chunk_rows * (size_t)n->outdesc[0].shape[1] * 4);
        nown++;
    }

    /* A source whose rows nobody in its group reads or spills is not read at all
     * (its consumers, if any, produce it again in their own group). */
    int needed = G->ndrivers > 0;
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        needed |= !n->op->produce;
        for (int k = 0; k < n->nout; k++)
            needed |= n->writers[k] != NULL;
    }
    char *label = group_label(G);
    for (int pass = 0; !rc && needed; pass++) {
        int64_t total = -1, done = 0;
        driver *all = dm_xcalloc((size_t)(G->ndrivers + nown) + 1, sizeof *all);
        int nall = 0;
        for (int j = 0; j < G->ndrivers; j++)
            all[nall++] = G->drivers[j];
        for (int j = 0; j < nown; j++)
            all[nall++] = own[j];
        if (nall)
            total = all[0].total;
        char *plabel = pass ? dm_xasprintf("%s [pass %d]", label, pass + 1) : dm_xstrdup(label);
        dm_progress *pr = nall ? dm_progress_start(plabel, total) : NULL;
        free(plabel);
        while (nall > 0) {
            int ended = 0;
            for (int j = 0; j < nall && !rc; j++) {
                rc = driver_next(&all[j], bad);
                if (!rc && all[j].buf.rows == 0)
                    ended++;
            }
            if (rc)
                break;
            if (ended) {
                if (ended != nall)
                    rc = dm_failc(DM_E_SHAPE, "the stream inputs of nodes %s have different numbers of rows", label);
                break;
            }
            for (int j = 1; j < nall && !rc; j++)
                if (all[j].buf.row0 != all[0].buf.row0 || all[j].buf.rows != all[0].buf.rows)
                    rc = dm_failc(DM_E_SHAPE, "nodes %s: stream inputs are chunked differently (rows %lld+%lld vs %lld+%lld); "
                                  "spill them with the same chunk size", label, (long long)all[0].buf.row0,
                                  (long long)all[0].buf.rows, (long long)all[j].buf.row0, (long long)all[j].buf.rows);
            for (int j = 0; j < nall && !rc; j++)
                rc = dm_emit(all[j].src, all[j].port, &all[j].buf);
            if (rc)
                break;
            done += all[0].buf.rows;
            if (pr) {
                int64_t sp = run_spilled_bytes;
                for (int i = 0; i < G->nmembers; i++)
                    for (int k = 0; k < G->members[i]->nout; k++)
                        if (G->members[i]->writers[k])
                            sp += dm_spill_writer_bytes(G->members[i]->writers[k]);
                dm_progress_update(pr, done, sp);
            }
        }
        if (pr)
            dm_progress_end(pr, done, run_spilled_bytes, pass == 0);
        free(all);
        if (rc)
            break;
        int more = 0;
        for (int i = 0; i < G->nmembers && !rc; i++) {
            dm_node *n = G->members[i];
            if (!n->op->end_pass || n->op->produce)
                continue;
            int r = n->op->end_pass(n, pass);
            if (dm_node_check_params(n, r < 0 ? -1 : 0))
                rc = blame(n, 1);
            else if (r > 0 && !has_multipass_input(n))
                rc = dm_failc(DM_E_INTERNAL, "node '%s': operator '%s' asked for another pass over an input it did not declare "
                              "multipass, or said it reads once", n->decl->name, n->op->name);
            more |= r > 0;
        }
        if (rc || !more)
            break;
        for (int j = 0; j < G->ndrivers && !rc; j++) {
            driver *d = &G->drivers[j];
            if (d->reader)
                rc = dm_spill_rewind(d->reader);
            else {
                close_node(d->src, 0);
                rc = open_node(g, d->src, 0);
            }
        }
    }
    free(label);
    for (int i = 0; i < G->nmembers && !rc; i++) {
        dm_node *n = G->members[i];
        double t0 = dm_now();
        if (dm_node_check_params(n, n->op->finish ? n->op->finish(n) : 0))
            rc = blame(n, 1);
        n->seconds += dm_now() - t0;
    }
    for (int i = 0; i < G->nmembers && !rc; i++) {
        dm_node *n = G->members[i];
        if (n->run)
            rc = commit_node(g, n);
    }
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        close_node(n, rc != 0 || !n->run);
    }
    for (int j = 0; j < opened_drivers; j++) {
        driver *d = &G->drivers[j];
        if (d->reader)
            dm_spill_reader_close(d->reader);
        else if (!is_member(G, d->src))
            close_node(d->src, 1);
        free(d->buf.data);
        d->reader = NULL;
        d->buf.data = NULL;
    }
    for (int j = 0; j < nown; j++)
        free(own[j].buf.data);
    free(own);
    current_group = -1;
    return rc;
}

/* Copies every node's product files into the output folder. */
static int publish_products(dm_graph *g)
{
    if (!g->out)
        return 0;
    if (dm_mkdir_p(g->out))
        return -1;
    char **seen = NULL;
    const char **owner = NULL;
    int nseen = 0, rc = 0;
    /* run.json: what ran and what came from the cache, and the time each node
     * took (when it last ran) */
    json_t *runj = json_object(), *stages = json_array();
    json_object_set_new(runj, "pipeline", json_string(g->pipe->name));
    json_object_set_new(runj, "dmica", json_string(DM_VERSION));
    json_object_set_new(runj, "nodes", stages);
    for (int i = 0; i < g->nnodes && !rc; i++) {
        dm_node *n = g->nodes[i];
        char *path = dm_xasprintf("%s/%s/node.json", g->cache, n->key);
        json_error_t err;
        json_t *j = json_load_file(path, 0, &err);
        free(path);
        json_t *st = json_object();
        json_object_set_new(st, "node", json_string(n->decl->name));
        json_object_set_new(st, "op", json_string(n->op->name));
        json_object_set_new(st, "key", json_string(n->key));
        json_object_set_new(st, "state", json_string(n->run ? "ran" : "cached"));
        json_object_set_new(st, "seconds", json_incref(j ? json_object_get(j, "seconds") : json_null()));
        json_array_append_new(stages, st);
        if (!j)
            continue; /* a source read again, or a node that did not run */
        size_t idx;
        json_t *v;
        json_array_foreach(json_object_get(j, "products"), idx, v)
        {
            const char *prod = json_string_value(v);
            if (!prod)
                continue;
            char *file = dm_xasprintf("%s%s", n->decl->publish ? n->decl->publish : "", prod);
            for (int s = 0; s < nseen; s++)
                if (!strcmp(seen[s], file)) {
                    rc = dm_fail("nodes '%s' and '%s' both write '%s' into %s; give one of them another file "
                                 "name or a publish: prefix", owner[s], n->decl->name, file, g->out);
                    break;
                }
            if (rc) {
                free(file);
                break;
            }
            seen = dm_xrealloc(seen, (size_t)(nseen + 1) * sizeof *seen);
            owner = dm_xrealloc(owner, (size_t)(nseen + 1) * sizeof *owner);
            seen[nseen] = file;
            owner[nseen++] = n->decl->name;
            char *src = dm_xasprintf("%s/%s/%s", g->cache, n->key, prod);
            char *dst = dm_xasprintf("%s/%s", g->out, file);
            char *slash = strrchr(dst, '/');
            *slash = 0;
            rc = dm_mkdir_p(dst);
            *slash = '/';
            if (!rc)
                rc = dm_copy_file(src, dst);
            free(src), free(dst);
        }
        json_decref(j);
    }
    for (int s = 0; s < nseen; s++)
        free(seen[s]);
    free(seen), free(owner);
    if (!rc) {
        char *text = json_dumps(runj, JSON_INDENT(2));
        char *path = dm_xasprintf("%s/run.json", g->out);
        rc = dm_write_file_atomic(path, text, strlen(text));
        free(text), free(path);
    }
    json_decref(runj);
    return rc;
}

int dm_run(dm_graph *g)
{
    for (int attempt = 0;; attempt++) {
        if (dm_plan(g))
            return -1;
        char *tmp = dm_xasprintf("%s/tmp", g->cache);
        int rc = dm_mkdir_p(tmp);
        free(tmp);
        if (rc)
            return -1;
        for (int i = 0; i < g->nnodes; i++) {
            dm_node *n = g->nodes[i];
            n->group = -1;
            for (int k = 0; k < n->nout; k++)
                n->spill[k] = n->run && n->outdesc[k].kind == DM_PORT_STREAM && n->ncons[k] > 0 &&
                              (!n->op->produce || n->op->spill_source) &&
                              !(n->decl->spill && !strcmp(n->decl->spill, "never"));
        }
        group *gs = NULL;
        int ng = 0;
        if (make_groups(g, &gs, &ng)) {
            free_groups(gs, ng);
            return -1;
        }
        dm_node *bad = NULL;
        run_spilled_bytes = 0;
        for (int gi = 0; gi < ng && !rc; gi++)
            rc = run_group(g, &gs[gi], gi, &bad);
        free_groups(gs, ng);
        if (rc && bad && attempt < 2) {
            dm_warn("%s; recomputing node '%s'", dm_error(), bad->decl->name);
            dm_cache_invalidate(g, bad->key);
            for (int i = 0; i < g->nnodes; i++)
                dm_tensor_free(g->nodes[i]->outtensor);
            continue;
        }
        if (rc)
            return -1;
        g->ran = 1;
        return publish_products(g);
    }
}

char *dm_yaml_quote(const char *s)
{
    size_t n = strlen(s);
    char *q = dm_xmalloc(2 * n + 3), *w = q;
    *w++ = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            *w++ = '\\';
        *w++ = *s;
    }
    *w++ = '"';
    *w = 0;
    return q;
}

int dm_run_yaml(const char *label, const char *yaml, const dm_run_opts *o)
{
    dm_pipeline *p = dm_pipeline_parse(label, yaml, strlen(yaml));
    dm_graph *g = p ? dm_graph_build(p) : NULL;
    if (!g) {
        fprintf(stderr, "dmica: %s\n", dm_error());
        dm_pipeline_free(p);
        return dm_error_exit();
    }
    const char *env = getenv("DMICA_CACHE");
    g->cache = dm_xstrdup(o->cache ? o->cache : env && *env ? env : ".dmica-cache");
    g->out = o->out ? dm_xstrdup(o->out) : NULL;
    g->memory = o->memory > 0 ? o->memory : (int64_t)1 << 30;
    dm_compute_set_threads(o->threads);
    dm_progress_enabled = !o->quiet;
    int rc = dm_run(g);
    if (rc)
        fprintf(stderr, "dmica: %s\n", dm_error());
    else if (!o->quiet && o->out)
        fprintf(stderr, "dmica: results in %s\n", o->out);
    dm_graph_free(g);
    dm_pipeline_free(p);
    return rc ? dm_error_exit() : 0;
}
