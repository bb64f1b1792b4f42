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
 * groups but that says `spill: never` is an error found before work starts. A
 * producer that says `spill: recompute` is taken into the later group as a
 * guest instead (run again from its own inputs, never committed).
 *
 * Groups whose members can all run in shards do so (the "shards" section
 * below): once per shard of their rows, each shard its own cache entry, then a
 * merge in shard order. Multipass groups whose sums split by shard read their
 * passes shard by shard ("passes split by shard"). With MPI ranks (dist.h) the
 * shards are spread over the ranks, the other groups run on rank 0, and after
 * each group the ranks agree on errors and copy new entries where missing.
 *
 * A group runs in phases, one function each:
 *   open_replays        open the spills of stream inputs made in earlier groups
 *   load_tensor_inputs  read the tensors of cached producers from the cache
 *   refresh_descs       give consumers the real shapes of those tensors
 *   size_chunks         rows per chunk, from the memory budget
 *   open_members        the operators' open()
 *   open_sources        buffers; sources outside the group opened to produce again
 *   drive               every pass: push the drivers' chunks through the group,
 *                       then end_pass(); rewind for another pass if one is asked
 *   finish_members      finish(): tensor outputs and product files
 *   commit_members      each node's folder becomes its cache entry
 *   close_group         close() and free, after success or error
 * and once every group ran, publish_products copies the products to --out.
 *
 * Memory: the chunk size of a group is the budget, less the state the group's
 * operators declare (state_bytes), divided by the bytes every chunk row costs
 * across the group's streams and spill buffers.
 *
 * A node's results are built in a temporary folder (cache.c) and become its
 * cache entry when its group succeeds; on error every temporary folder is
 * removed, so the cache only ever holds complete entries. A spill that cannot be
 * replayed, or a tensor or product whose size or checksum is not the one its
 * entry recorded (cache.c), invalidates its entry, and the run is planned again
 * (the producer reruns).
 *
 * SIGINT and SIGTERM (dm_signals_catch, dm.h) stop a run at the next chunk, or
 * between the phases of a group: the run fails with DM_E_INTERRUPTED and takes
 * the same error path, so the temporary folders go and the entries of groups
 * that finished stay; the command exits 130 or 143. A run killed outright
 * (SIGKILL) leaves its temporary folders, which the next run removes
 * (dm_cache_prepare) once their process is gone.
 *
 * The state of a run lives in a dm_run_ctx that the graph holds while dm_run
 * runs: graphs run one after another, or one inside a callback of another,
 * share nothing.
 */
#include "engine.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "dist.h"
#include "fs.h"
#include "npy.h"
#include "spill.h"

#define DM_MAX_CHUNK_ROWS 65536
#define DM_SPILL_BUFFERS 5 /* per spilled stream: the writer's ring plus slack */
#define DM_RESERVED_BYTES ((int64_t)64 << 20) /* code, libraries, small allocations */

struct dm_run_ctx {
    dm_graph *g;
    int group;             /* the group running, -1 between groups */
    struct group *cur;     /* that group */
    int64_t spilled_bytes; /* stored bytes of the spills closed so far */
    dm_node *unreadable;   /* the producer of a spill that could not be replayed */
    char *bad_entry;       /* a shard's entry that could not be read: removed before the retry */
    char *stopped_in;      /* the label of the group a signal stopped */
    int committed;         /* nodes whose entries this run made */
};

typedef struct {
    dm_node *src;
    int port;
    dm_replay *reader; /* replayed from the cache; NULL: src->op->produce */
    int opened;              /* src was opened here to produce again */
    dm_chunk buf;
    int64_t total; /* rows, -1 unknown */
} driver;

typedef struct group {
    dm_node **members;
    int nmembers;
    /* drivers[0, nexternal): stream inputs made outside the group; then the
     * member sources (added by open_sources) */
    driver *drivers;
    int ndrivers, nexternal;
    int multipass;
    dm_node **guests; /* nodes run again to recompute streams (`spill: recompute`) */
    int nguests;
    char *label; /* the members' names, for messages and progress */
    /* Shards (run_sharded): the group runs once per shard of its driving
     * stream's rows, then merges. While a shard runs, the drivers yield rows
     * [row0, row0 + rows) only; rows < 0: all of them. */
    int sharded, cannot_shard;
    int split;         /* a multipass group whose passes split by shard (pass_partial) */
    int64_t R, S;      /* rows per shard, shards (sharded and split groups) */
    int64_t *seg_row0, *seg_rows; /* the shards of a driving stream kept in shards: the group's */
    int64_t row0, rows;
    dm_progress *progress; /* across the shards of a sharded group */
    int64_t done_rows;     /* rows of the shards done so far, for it */
    int64_t shards_done;   /* by this rank (cached ones too) */
} group;

static int is_active(const dm_node *n) { return n->run || n->reproduce; }

/* Every rank's rc (dist.h): 0 when all succeeded, else -1 with the failing
 * rank's message. One process: rc. */
static int dist_agree(dm_run_ctx *ctx, int rc)
{
    return ctx->g->nranks > 1 ? dm_dist_agree(rc) : rc;
}

static int spill_never(const dm_node *n) { return n->decl->spill && !strcmp(n->decl->spill, "never"); }

/* `spill: recompute`: a later group that reads its streams runs it again (as a
 * guest: opened, fed, never finished or committed) from its own inputs. */
static int recomputes(const dm_node *n)
{
    return n->decl->spill && !strcmp(n->decl->spill, "recompute") && !n->op->produce;
}

static int has_multipass_input(const dm_node *n)
{
    for (int k = 0; k < n->nin; k++)
        if (n->in[k].src && n->op->inputs[k].multipass && !(k < 64 && (n->single_pass >> k & 1)))
            return 1;
    return 0;
}

static int is_stream_input(const dm_node *n, int k)
{
    const dm_node *s = n->in[k].src;
    return s && s->outs[n->in[k].port].kind == DM_PORT_STREAM && !n->op->inputs[k].random;
}

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

/* ---- grouping ------------------------------------------------------------- */

/* 1 if n runs in shards: sharding is on and its operator says it can. */
static int is_sharded_member(const dm_node *n)
{
    const dm_graph *g = n->graph;
    return g->shard > 0 && n->op->shardable && !has_multipass_input(n);
}

/* A stream that drives a sharded group must be readable by range: replayed from
 * the cache, or made by a source that can seek. */
static int can_drive_shards(const dm_node *s)
{
    return !s->op->produce || s->op->seek || (s->op->spill_source && !is_active(s));
}

/* The group node n joins, or -1 when it starts one (see the file comment). */
static int group_to_join(const dm_node *n, const group *gs)
{
    if (n->op->produce || has_multipass_input(n))
        return -1;
    int join = -1, nstreams = 0;
    for (int k = 0; k < n->nin; k++) {
        if (!is_stream_input(n, k))
            continue;
        const dm_node *s = n->in[k].src;
        nstreams++;
        if (!is_active(s) || s->group < 0 || has_multipass_input(s) || (join >= 0 && s->group != join))
            return -1;
        join = s->group;
    }
    if (!nstreams)
        return -1;
    /* a sharded group takes only nodes that run in shards; a node that can
     * joins an unsharded group only when that group's streams cannot be read by
     * range anyway (else it starts a sharded group replaying them) */
    if (gs[join].sharded ? !is_sharded_member(n) : is_sharded_member(n) && !gs[join].cannot_shard)
        return -1;
    /* groups run in the order made: a tensor, or a stream read by row, must come
     * from an earlier one */
    for (int k = 0; k < n->nin; k++) {
        const dm_node *s = n->in[k].src;
        if (s && (s->outs[n->in[k].port].kind == DM_PORT_TENSOR || n->op->inputs[k].random) && is_active(s) &&
            s->group >= join)
            return -1;
    }
    return join;
}

/* Adds the stream (s, port) that a member or guest of G reads: a driver, or,
 * when s recomputes its streams, s as a guest and its own stream inputs. */
static int add_stream(group *G, dm_node *n, dm_node *s, int port)
{
    if (recomputes(s)) {
        for (int i = 0; i < G->nguests; i++)
            if (G->guests[i] == s)
                return 0;
        G->guests = dm_xrealloc(G->guests, (size_t)(G->nguests + 1) * sizeof *G->guests);
        G->guests[G->nguests++] = s;
        if (G->sharded && !s->op->shardable)
            G->sharded = 0, G->cannot_shard = 1;
        for (int k = 0; k < s->nin; k++)
            if (is_stream_input(s, k) && add_stream(G, s, s->in[k].src, s->in[k].port))
                return -1;
        return 0;
    }
    for (int j = 0; j < G->ndrivers; j++)
        if (G->drivers[j].src == s && G->drivers[j].port == port)
            return 0;
    G->drivers = dm_xrealloc(G->drivers, (size_t)(G->ndrivers + 1) * sizeof *G->drivers);
    driver *d = &G->drivers[G->ndrivers++];
    memset(d, 0, sizeof *d);
    d->src = s;
    d->port = port;
    if (s->op->produce && s->op->spill_source && is_active(s) && !spill_never(s))
        s->spill[port] = 1; /* a group of its own before: replayed */
    else if (!can_drive_shards(s))
        G->sharded = 0, G->cannot_shard = 1;
    if (s->op->produce || !s->run || s->spill[port])
        return 0;
    if (spill_never(s))
        return dm_fail("%s: node '%s' reads output '%s' of node '%s' in a separate pass, "
                       "which needs it spilled, but '%s' has spill: never",
                       n->where, n->decl->name, s->outs[port].name, s->decl->name, s->decl->name);
    s->spill[port] = 1;
    return 0;
}

/* Starts a group for n, driven by its stream inputs (which get spilled, or
 * recomputed). */
static int start_group(group *G, dm_node *n)
{
    G->multipass = has_multipass_input(n);
    G->sharded = is_sharded_member(n) && (!n->op->produce || n->op->seek);
    G->cannot_shard = n->op->produce && !n->op->seek && !n->op->spill_source;
    G->rows = -1;
    for (int k = 0; k < n->nin; k++)
        if (is_stream_input(n, k) && add_stream(G, n, n->in[k].src, n->in[k].port))
            return -1;
    G->nexternal = G->ndrivers;
    return 0;
}

/* Inputs read by row are read from their producer's spill. */
static int spill_random_inputs(dm_node *n)
{
    for (int k = 0; k < n->nin; k++) {
        dm_node *s = n->in[k].src;
        if (!s || !n->op->inputs[k].random || !s->run)
            continue;
        if (spill_never(s))
            return dm_fail("%s: node '%s' reads output '%s' of node '%s' by row, which needs it spilled, "
                           "but '%s' has spill: never", n->where, n->decl->name, s->outs[n->in[k].port].name,
                           s->decl->name, s->decl->name);
        s->spill[n->in[k].port] = 1;
    }
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

static int is_guest(const group *G, const dm_node *n);

/* A group that recomputes streams (guests) and that n, which has just started
 * group `fresh` for the same reason, can join instead: one pass over the same
 * drivers (the cached token windows, say) then runs GPT-2 once for both. It must
 * come after the groups that make n's tensor inputs and its inputs read by row.
 * Returns its index, or -1. */
static int pass_with_guests(const group *gs, int fresh, const dm_node *n)
{
    const group *F = &gs[fresh];
    if (!F->nguests || F->multipass)
        return -1;
    int after = -1; /* the last group n's tensors (and rows read by index) come from */
    for (int k = 0; k < n->nin; k++) {
        const dm_node *s = n->in[k].src;
        if (s && is_active(s) && s->group >= 0 && !is_stream_input(n, k) && s->group > after)
            after = s->group;
    }
    for (int j = fresh - 1; j > after; j--) {
        const group *J = &gs[j];
        if (!J->nguests || J->multipass || J->sharded != F->sharded || J->nexternal != F->ndrivers)
            continue;
        int same = 1;
        for (int d = 0; d < F->ndrivers && same; d++) {
            int found = 0;
            for (int e = 0; e < J->nexternal && !found; e++)
                found = J->drivers[e].src == F->drivers[d].src && J->drivers[e].port == F->drivers[d].port;
            same = found;
        }
        if (same)
            return j;
    }
    return -1;
}

/* Cuts the active nodes into groups, in topological order. *out is set also on
 * error: the caller frees what was made with free_groups. */
static int make_groups(dm_graph *g, group **out, int *nout)
{
    group *gs = NULL;
    int ng = 0;
    *out = NULL;
    *nout = 0;
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        if (!is_active(n) || (!n->run && recomputes(n)))
            continue; /* a cached node that recomputes is only ever a guest */
        int join = group_to_join(n, gs);
        if (join < 0) {
            gs = dm_xrealloc(gs, (size_t)(ng + 1) * sizeof *gs);
            memset(&gs[ng], 0, sizeof gs[ng]);
            join = ng++;
            *out = gs;
            *nout = ng;
            if (start_group(&gs[join], n))
                return -1;
            int same = pass_with_guests(gs, join, n);
            if (same >= 0) { /* one pass recomputes for both: n joins it */
                for (int k = 0; k < gs[join].nguests; k++)
                    if (!is_guest(&gs[same], gs[join].guests[k])) {
                        gs[same].guests = dm_xrealloc(gs[same].guests, (size_t)(gs[same].nguests + 1) * sizeof(dm_node *));
                        gs[same].guests[gs[same].nguests++] = gs[join].guests[k];
                    }
                free(gs[join].guests), free(gs[join].drivers);
                *nout = --ng;
                join = same;
            }
        }
        if (spill_random_inputs(n))
            return -1;
        n->group = join;
        group *G = &gs[join];
        G->members = dm_xrealloc(G->members, (size_t)(G->nmembers + 1) * sizeof *G->members);
        G->members[G->nmembers++] = n;
    }
    for (int i = 0; i < ng; i++)
        gs[i].label = group_label(&gs[i]);
    return 0;
}

static void free_groups(group *gs, int ng)
{
    for (int i = 0; i < ng; i++) {
        free(gs[i].members);
        free(gs[i].guests);
        free(gs[i].seg_row0), free(gs[i].seg_rows);
        free(gs[i].drivers);
        free(gs[i].label);
    }
    free(gs);
}

/* Member i of G, then its guests. */
static dm_node *taking_part(const group *G, int i)
{
    return i < G->nmembers ? G->members[i] : G->guests[i - G->nmembers];
}

static int is_guest(const group *G, const dm_node *n)
{
    for (int i = 0; G && i < G->nguests; i++)
        if (G->guests[i] == n)
            return 1;
    return 0;
}

static int is_member(const group *G, const dm_node *n)
{
    for (int i = 0; i < G->nmembers; i++)
        if (G->members[i] == n)
            return 1;
    return 0;
}

/* A stream kept in shards failed to read: that shard's entry goes too. */
static void note_failed_shard(dm_run_ctx *ctx, const dm_replay *r)
{
    if (dm_replay_failed_shard(r)) {
        free(ctx->bad_entry);
        ctx->bad_entry = dm_xstrdup(dm_replay_failed_shard(r));
    }
}

/* ---- what operators call while running (op.h) ------------------------------- */

int dm_emit(dm_node *n, int port, const dm_chunk *c)
{
    if (c->dtype != n->outdesc[port].dtype) {
        dm_failc(DM_E_INTERNAL, "node '%s' (%s): a chunk of %s values on output '%s', which carries %s",
                 n->decl->name, n->op->name, dm_dtype_name(c->dtype), n->outs[port].name,
                 dm_dtype_name(n->outdesc[port].dtype));
        dm_error_attribute(n);
        return -1;
    }
    if (n->writers[port] && dm_spill_write(n->writers[port], c)) {
        dm_fail_prefix("node '%s': spilling output '%s'", n->decl->name, n->outs[port].name);
        dm_error_attribute(n);
        return -1;
    }
    dm_graph *g = n->graph;
    int group = g->run ? g->run->group : -1;
    for (int i = 0; i < n->ncons[port]; i++) {
        dm_node *c2 = n->cons[port][i].src;
        if (!c2->opened || !((c2->group == group && c2->run) || (g->run && is_guest(g->run->cur, c2))))
            continue;
        double t0 = dm_now();
        c2->in_consume = 1;
        if (c->dev) /* the GPU's copy of the rows, for c2's GPU entries */
            dm_device_hint_push(c->ptr, c->dev, (size_t)(c->rows * c->cols) * dm_dtype_size(c->dtype));
        int rc = c2->op->consume(c2, n->cons[port][i].port, c);
        if (c->dev)
            dm_device_hint_pop();
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
    return port >= 0 && port < n->nin && n->readers[port] ? dm_replay_rows(n->readers[port]) : -1;
}

int dm_input_read_rows(dm_node *n, int port, int64_t row0, int64_t rows, void *out)
{
    if (port < 0 || port >= n->nin || !n->readers[port]) {
        dm_failc(DM_E_INTERNAL, "node '%s': input %d is not a random-access input", n->decl->name, port);
        dm_error_attribute(n);
        return -1;
    }
    int64_t first = dm_replay_row0(n->readers[port]);
    if (row0 < first || rows < 0 || row0 + rows > first + dm_replay_rows(n->readers[port])) {
        dm_failc(DM_E_SHAPE, "node '%s': input '%s': rows %lld..%lld out of range (%lld rows)", n->decl->name,
                 n->op->inputs[port].name, (long long)row0, (long long)(row0 + rows),
                 (long long)dm_replay_rows(n->readers[port]));
        dm_error_attribute(n);
        return -1;
    }
    if (dm_replay_read_rows(n->readers[port], row0, rows, out)) {
        dm_graph *g = n->graph;
        if (g->run && dm_error_code() == DM_E_CORRUPT) {
            g->run->unreadable = n->in[port].src; /* planned again: the producer recomputes it (dm_run) */
            note_failed_shard(g->run, n->readers[port]);
        }
        return -1;
    }
    return 0;
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
            json_t *j = dm_cache_entry_json(g, m->key);
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

/* ---- opening and closing nodes ----------------------------------------------- */

/* Opens spill writers for n's stream outputs that are spilled in this run. */
static int open_spill_writers(dm_node *n)
{
    dm_dtype f = DM_F32;
    dm_codec codec = DM_CODEC_NONE;
    if (n->decl->spill_dtype)
        dm_dtype_parse(n->decl->spill_dtype, &f); /* checked when binding */
    if (n->decl->spill_codec)
        dm_codec_parse(n->decl->spill_codec, &codec);
    for (int k = 0; k < n->nout; k++) {
        if (n->outdesc[k].kind != DM_PORT_STREAM)
            continue;
        /* spill_dtype narrows f32 streams only: integers are stored exactly */
        dm_dtype t = n->outdesc[k].dtype == DM_F32 ? f : n->outdesc[k].dtype;
        if (n->decl->spill && !strcmp(n->decl->spill, "always"))
            n->spill[k] = 1;
        if (!n->spill[k])
            continue;
        n->writers[k] = dm_spill_writer_open(n->dir, n->outs[k].name, n->outdesc[k].shape[1], t, codec);
        if (!n->writers[k])
            return dm_fail_prefix("node '%s'", n->decl->name);
    }
    return 0;
}

/* Output `port` of cached node s, rows [row0, row0 + rows) (rows < 0: all). */
static dm_replay *open_replay(const dm_graph *g, const dm_node *s, int port, int64_t row0, int64_t rows)
{
    json_t *entry = dm_cache_entry_json(g, s->key);
    if (!entry) {
        char *dir = dm_cache_entry(g, s->key);
        dm_failc(DM_E_CORRUPT, "%s/node.json: missing or unreadable", dir);
        free(dir);
        return NULL;
    }
    dm_replay *r = dm_replay_open(g, s->key, s->outs[port].name, entry, row0, rows);
    json_decref(entry);
    return r;
}

/* Opens the spills of n's inputs read by row. */
static int open_random_inputs(dm_graph *g, dm_node *n)
{
    for (int k = 0; k < n->nin; k++) {
        dm_node *s = n->in[k].src;
        if (!s || !n->op->inputs[k].random)
            continue;
        n->readers[k] = open_replay(g, s, n->in[k].port, 0, -1);
        if (!n->readers[k]) {
            if (g->run)
                g->run->unreadable = s; /* planned again: s recomputes it (dm_run) */
            return dm_fail_prefix("node '%s': input '%s'", n->decl->name, n->op->inputs[k].name);
        }
    }
    return 0;
}

/* Gives n a fresh folder and calls its open(). A member of the running group
 * (`member`) also gets its spill writers and the readers of inputs read by
 * row; a source outside the group, opened only to produce again, does not. */
enum { OPEN_WRITERS = 1, OPEN_RANDOM = 2, OPEN_MEMBER = 3 };
static int open_node(dm_graph *g, dm_node *n, int member)
{
    free(n->dir);
    n->dir = dm_cache_tmp_dir(g, n);
    dm_rm_rf(n->dir);
    if (dm_mkdir_p(n->dir))
        return -1;
    for (int k = 0; k < n->nproducts; k++)
        free(n->products[k]);
    n->nproducts = 0;
    n->seconds = n->finish_seconds = 0;
    n->rows_in = 0;
    n->nshards = 0;
    if ((member & OPEN_WRITERS) && n->run && open_spill_writers(n))
        return -1;
    if ((member & OPEN_RANDOM) && open_random_inputs(g, n))
        return -1;
    double t0 = dm_now();
    int rc = n->op->open ? n->op->open(n) : 0;
    n->open_seconds = dm_now() - t0;
    if (dm_node_check_params(n, rc)) {
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
        dm_replay_close(n->readers[k]);
        n->readers[k] = NULL;
    }
    if (failed && n->dir)
        dm_rm_rf(n->dir);
}

/* ---- the phases of a group ------------------------------------------------------ */

/* Sources are produced again, unless they keep a spill (spill_source); other
 * producers outside the group are replayed from their spill. */
static int replays(const driver *d)
{
    const dm_node *s = d->src;
    return !s->op->produce || (s->op->spill_source && (s->spill[d->port] || !is_active(s)));
}

/* Opens the spills of the stream inputs first: their manifests give widths
 * decided at run time. */
static int open_replays(dm_run_ctx *ctx, group *G)
{
    for (int j = 0; j < G->nexternal; j++) {
        driver *d = &G->drivers[j];
        d->total = d->src->outdesc[d->port].shape[0];
        if (!replays(d))
            continue;
        d->reader = open_replay(ctx->g, d->src, d->port, G->row0, G->rows);
        if (!d->reader) {
            if (dm_error_code() != DM_E_SHAPE)
                ctx->unreadable = d->src;
            return -1;
        }
        if (dm_replay_dtype(d->reader) != d->src->outdesc[d->port].dtype) {
            ctx->unreadable = d->src;
            return dm_failc(DM_E_CORRUPT, "node '%s': the spill of output '%s' holds %s values, the output carries %s",
                            d->src->decl->name, d->src->outs[d->port].name, dm_dtype_name(dm_replay_dtype(d->reader)),
                            dm_dtype_name(d->src->outdesc[d->port].dtype));
        }
        d->total = dm_replay_rows(d->reader);
        d->src->outdesc[d->port].shape[1] = dm_replay_cols(d->reader);
    }
    return 0;
}

/* Loads the tensor outputs of cached producers that members read, each checked
 * against the size and checksum its entry recorded. A file that is missing,
 * short or changed makes its producer "unreadable": the run is planned again
 * and the producer recomputes it (dm_run). */
static int load_tensor_inputs(dm_graph *g, group *G)
{
    for (int i = 0; i < G->nmembers + G->nguests; i++) {
        dm_node *n = taking_part(G, i);
        for (int k = 0; k < n->nin; k++) {
            dm_node *s = n->in[k].src;
            int p = n->in[k].port;
            if (!s || s->outdesc[p].kind != DM_PORT_TENSOR || s->outtensor[p].data)
                continue;
            char *dir = dm_cache_entry(g, s->key), *file = dm_xasprintf("%s.npy", s->outs[p].name);
            json_t *entry = dm_cache_entry_json(g, s->key);
            int rc = entry ? dm_cache_check_file(dir, entry, file)
                           : dm_failc(DM_E_CORRUPT, "%s/node.json: missing or unreadable", dir);
            if (!rc) {
                char *path = dm_cache_tensor_file(dir, s->outs[p].name);
                rc = dm_npy_load(path, &s->outtensor[p]);
                free(path);
            }
            json_decref(entry);
            free(file), free(dir);
            if (rc) {
                if (g->run)
                    g->run->unreadable = s;
                return dm_fail_prefix("cached output '%s' of node '%s'", s->outs[p].name, s->decl->name);
            }
        }
    }
    return 0;
}

/* Tensors whose size depends on the data (a decomposition that keeps as many
 * components as the data need) are known only once made: give consumers their
 * real shapes and infer again. */
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
                return dm_failc(DM_E_SHAPE, "%s: node '%s': the width of output '%s' is still unknown when it runs",
                                n->where, n->decl->name, n->outs[k].name);
    }
    return 0;
}

static int64_t row_bytes_of(const dm_node *n, int port)
{
    return n->outdesc[port].shape[1] * (int64_t)dm_dtype_size(n->outdesc[port].dtype);
}

static int size_chunks(dm_graph *g, group *G)
{
    int64_t fixed = 0, per_row = 0;
    for (int i = 0; i < G->nmembers + G->nguests; i++) {
        dm_node *n = taking_part(G, i);
        if (n->op->state_bytes)
            fixed += n->op->state_bytes(n);
        if (dm_node_check_params(n, 0))
            return -1;
        for (int k = 0; k < n->nout; k++)
            if (n->outdesc[k].kind == DM_PORT_STREAM)
                per_row += row_bytes_of(n, k) * (1 + (n->spill[k] ? DM_SPILL_BUFFERS : 0));
    }
    for (int j = 0; j < G->nexternal; j++)
        per_row += row_bytes_of(G->drivers[j].src, G->drivers[j].port) * 4; /* buffer + read-ahead */
    int64_t avail = g->memory - fixed - DM_RESERVED_BYTES;
    int64_t rows = per_row ? avail / per_row : DM_MAX_CHUNK_ROWS;
    if (rows > DM_MAX_CHUNK_ROWS)
        rows = DM_MAX_CHUNK_ROWS;
    if (g->pipe->chunk && rows > g->pipe->chunk)
        rows = g->pipe->chunk;
    if (rows < 64)
        return dm_failc(DM_E_NOMEM, "memory budget %lld MiB is too small for nodes %s (state %lld MiB at %d "
                        "threads, %lld bytes per row); raise it with --memory, or use fewer "
                        "--threads", (long long)(g->memory >> 20), G->label,
                        (long long)(fixed >> 20), dm_threads(), (long long)per_row);
    for (int i = 0; i < G->nmembers + G->nguests; i++)
        taking_part(G, i)->chunk_rows = rows;
    for (int j = 0; j < G->nexternal; j++)
        if (!G->drivers[j].reader && !is_member(G, G->drivers[j].src))
            G->drivers[j].src->chunk_rows = rows;
    return 0;
}

static int open_members(dm_graph *g, group *G)
{
    for (int i = 0; i < G->nmembers; i++)
        if (open_node(g, G->members[i], OPEN_MEMBER))
            return -1;
    for (int i = 0; i < G->nguests; i++) {
        free(G->guests[i]->building);
        G->guests[i]->building = NULL;
        if (open_node(g, G->guests[i], 0))
            return -1;
    }
    return 0;
}

/* In a shard: a source yields the shard's rows only. */
static int seek_source(group *G, dm_node *n)
{
    if (G->rows < 0)
        return 0;
    if (dm_node_check_params(n, n->op->seek(n, G->row0, G->rows)))
        return blame(n, 1);
    return 0;
}

/* Chunk buffers for every driver; sources outside the group are opened to
 * produce again, and member sources become drivers too. */
static int open_sources(dm_graph *g, group *G)
{
    for (int j = 0; j < G->nexternal; j++) {
        driver *d = &G->drivers[j];
        int64_t rows = d->reader ? dm_replay_max_chunk_rows(d->reader) : d->src->chunk_rows;
        d->buf.ptr = dm_xmalloc_aligned((size_t)rows * (size_t)row_bytes_of(d->src, d->port));
        d->buf.dtype = d->src->outdesc[d->port].dtype;
        if (!d->reader && !is_member(G, d->src)) {
            d->opened = 1;
            if (open_node(g, d->src, 0) || seek_source(G, d->src))
                return -1;
        }
    }
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        if (!n->op->produce)
            continue;
        G->drivers = dm_xrealloc(G->drivers, (size_t)(G->ndrivers + 1) * sizeof *G->drivers);
        driver *d = &G->drivers[G->ndrivers++];
        memset(d, 0, sizeof *d);
        d->src = n;
        d->total = n->outdesc[0].shape[0];
        if (seek_source(G, n))
            return -1;
        if (G->rows >= 0)
            d->total = G->rows;
        d->buf.ptr = dm_xmalloc_aligned((size_t)n->chunk_rows * (size_t)row_bytes_of(n, 0));
        d->buf.dtype = n->outdesc[0].dtype;
    }
    return 0;
}

/* A driver's next chunk; 0 with rows == 0 at the end. */
static int driver_next(dm_run_ctx *ctx, driver *d)
{
    if (d->reader) {
        if (dm_replay_next(d->reader, &d->buf)) {
            ctx->unreadable = d->src;
            note_failed_shard(ctx, d->reader);
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
    d->buf.dtype = d->src->outdesc[d->port].dtype;
    return 0;
}

/* Next chunk of every driver: *ended = 1 when all of them ended together. */
static int next_chunks(dm_run_ctx *ctx, group *G, int *ended)
{
    int nended = 0;
    for (int j = 0; j < G->ndrivers; j++) {
        if (driver_next(ctx, &G->drivers[j]))
            return -1;
        nended += G->drivers[j].buf.rows == 0;
    }
    *ended = nended > 0;
    if (nended && nended != G->ndrivers)
        return dm_failc(DM_E_SHAPE, "the stream inputs of nodes %s have different numbers of rows", G->label);
    const dm_chunk *a = &G->drivers[0].buf;
    for (int j = 1; j < G->ndrivers && !nended; j++) {
        const dm_chunk *b = &G->drivers[j].buf;
        if (b->row0 != a->row0 || b->rows != a->rows)
            return dm_failc(DM_E_SHAPE, "nodes %s: stream inputs are chunked differently (rows %lld+%lld vs "
                            "%lld+%lld); spill them with the same chunk size", G->label, (long long)a->row0,
                            (long long)a->rows, (long long)b->row0, (long long)b->rows);
    }
    return 0;
}

static int64_t group_spilled_bytes(const dm_run_ctx *ctx, const group *G)
{
    int64_t sp = ctx->spilled_bytes;
    for (int i = 0; i < G->nmembers; i++)
        for (int k = 0; k < G->members[i]->nout; k++)
            if (G->members[i]->writers[k])
                sp += dm_spill_writer_bytes(G->members[i]->writers[k]);
    return sp;
}

/* One pass: every driver's chunks, in step, pushed through the group. */
static int stream_pass(dm_run_ctx *ctx, group *G, int pass)
{
    if (!G->ndrivers)
        return 0;
    dm_progress *pr = G->progress;
    if (!pr) {
        char *label = pass ? dm_xasprintf("%s [pass %d]", G->label, pass + 1) : dm_xstrdup(G->label);
        pr = dm_progress_start(label, G->drivers[0].total);
        free(label);
    }
    int64_t done = G->done_rows;
    int rc = 0;
    for (;;) {
        int ended;
        if ((rc = next_chunks(ctx, G, &ended)) || ended)
            break;
        for (int j = 0; j < G->ndrivers && !rc; j++)
            rc = dm_emit(G->drivers[j].src, G->drivers[j].port, &G->drivers[j].buf);
        if (rc || (rc = dm_check_interrupt()))
            break;
        done += G->drivers[0].buf.rows;
        int64_t spilled = group_spilled_bytes(ctx, G);
        if (ctx->g->nranks > 1) { /* rank 0 shows every rank's rows */
            int64_t units, all_rows, all_bytes;
            dm_dist_progress_post(G->progress ? G->shards_done : 0, done, spilled);
            dm_dist_progress_totals(&units, &all_rows, &all_bytes);
            if (G->progress)
                dm_progress_shards(pr, units, G->S);
            dm_progress_update(pr, all_rows, all_bytes);
        } else {
            dm_progress_update(pr, done, spilled);
        }
    }
    if (G->progress)
        G->done_rows = done;
    else
        dm_progress_end(pr, done, ctx->spilled_bytes, pass == 0);
    return rc;
}

/* end_pass() of every member that reads streams; *more = 1 if one asks for another pass. */
static int end_passes(group *G, int pass, int *more)
{
    *more = 0;
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        if (!n->op->end_pass || n->op->produce)
            continue;
        double t0 = dm_now();
        int r = n->op->end_pass(n, pass);
        n->seconds += dm_now() - t0; /* in-RAM FastICA and RICA iterate here */
        if (dm_node_check_params(n, r < 0 ? -1 : 0))
            return blame(n, 1);
        if (r > 0 && !has_multipass_input(n))
            return dm_failc(DM_E_INTERNAL, "node '%s': operator '%s' asked for another pass over an input it "
                            "did not declare multipass, or said it reads once", n->decl->name, n->op->name);
        *more |= r > 0;
    }
    return 0;
}

/* Back to the first row of every stream input, for another pass. */
static int rewind_drivers(dm_graph *g, group *G)
{
    for (int j = 0; j < G->nexternal; j++) {
        driver *d = &G->drivers[j];
        if (d->reader) {
            if (dm_replay_rewind(d->reader))
                return -1;
        } else {
            close_node(d->src, 0);
            if (open_node(g, d->src, 0))
                return -1;
        }
    }
    return 0;
}

/* A source whose rows nobody in its group reads or spills is not read at all
 * (its consumers, if any, produce it again in their own group). */
static int reads_streams(const group *G)
{
    if (G->nexternal > 0)
        return 1;
    for (int i = 0; i < G->nmembers; i++) {
        const dm_node *n = G->members[i];
        if (!n->op->produce)
            return 1;
        for (int k = 0; k < n->nout; k++)
            if (n->writers[k])
                return 1;
    }
    return 0;
}

static int drive(dm_run_ctx *ctx, group *G)
{
    if (!reads_streams(G))
        return 0;
    for (int pass = 0;; pass++) {
        int more;
        if (stream_pass(ctx, G, pass) || end_passes(G, pass, &more))
            return -1;
        if (!more)
            return 0;
        if (dm_check_interrupt() || rewind_drivers(ctx->g, G))
            return -1;
    }
}

/* n's finish(), timed as its own. */
static int finish_node(dm_node *n)
{
    double t0 = dm_now();
    int rc = n->op->finish ? n->op->finish(n) : 0;
    n->finish_seconds = dm_now() - t0;
    n->seconds += n->finish_seconds;
    return dm_node_check_params(n, rc) ? blame(n, 1) : 0;
}

static int finish_members(group *G)
{
    for (int i = 0; i < G->nmembers; i++)
        if (finish_node(G->members[i]))
            return -1;
    return 0;
}

/* 1 if a node of the graph reads tensor output k of n's entry (n or a node with
 * the same key: identical nodes share one cache entry). */
static int tensor_read(const dm_graph *g, const dm_node *n, int k)
{
    for (int i = 0; i < g->nnodes; i++)
        if (!strcmp(g->nodes[i]->key, n->key) && g->nodes[i]->ncons[k])
            return 1;
    return 0;
}

static int shard_segments(dm_run_ctx *ctx, dm_node *n, int k, int64_t R, int64_t S, json_t *o);

/* What node.json says of output k; closes its spill writer, saves its tensor. */
static int commit_output(dm_run_ctx *ctx, dm_node *n, int k, json_t *o)
{
    if (n->outdesc[k].kind == DM_PORT_STREAM) {
        json_object_set_new(o, "kind", json_string("stream"));
        json_object_set_new(o, "spilled", json_boolean(n->spill[k]));
        json_object_set_new(o, "cols", json_integer(n->outdesc[k].shape[1]));
        if (!n->writers[k])
            return n->nshards && n->spill[k] ? shard_segments(ctx, n, k, n->shard_rows, n->nshards, o) : 0;
        ctx->spilled_bytes += dm_spill_writer_bytes(n->writers[k]);
        int rc = dm_spill_writer_close(n->writers[k]);
        n->writers[k] = NULL;
        return rc ? dm_fail_prefix("node '%s'", n->decl->name) : 0;
    }
    json_object_set_new(o, "kind", json_string("tensor"));
    if (!n->outtensor[k].data)
        return dm_failc(DM_E_INTERNAL, "node '%s': operator '%s' did not set output '%s'", n->decl->name,
                        n->op->name, n->outs[k].name);
    if (ctx->g->ephemeral && !tensor_read(ctx->g, n, k)) {
        json_object_set_new(o, "written", json_false());
        return 0;
    }
    char *path = dm_cache_tensor_file(n->dir, n->outs[k].name);
    int rc = dm_npy_save(path, &n->outtensor[k]);
    free(path);
    return rc;
}

/* Writes node.json (with the size and checksum of every tensor and product
 * file, cache.c) and makes the node's folder its cache entry. */
static int commit_node(dm_run_ctx *ctx, dm_node *n)
{
    json_t *j = json_object(), *outs = json_object(), *prods = json_array(), *files = json_object();
    json_object_set_new(j, "key", json_string(n->key));
    json_object_set_new(j, "node", json_string(n->decl->name));
    json_object_set_new(j, "op", json_string(n->op->name));
    json_object_set_new(j, "material", json_string(n->material));
    json_object_set_new(j, "seconds", json_real(n->seconds));
    json_object_set_new(j, "open_seconds", json_real(n->open_seconds));
    json_object_set_new(j, "finish_seconds", json_real(n->finish_seconds));
    json_object_set_new(j, "outputs", outs);
    json_object_set_new(j, "products", prods);
    json_object_set_new(j, "files", files);
    int rc = 0;
    for (int k = 0; k < n->nout && !rc; k++) {
        json_t *o = json_object();
        json_object_set_new(outs, n->outs[k].name, o);
        rc = commit_output(ctx, n, k, o);
        if (!rc && n->outdesc[k].kind == DM_PORT_TENSOR && !json_is_false(json_object_get(o, "written"))) {
            char *file = dm_xasprintf("%s.npy", n->outs[k].name);
            rc = dm_cache_sum_record(n->dir, file, files);
            free(file);
        }
    }
    /* a temporary cache's products are linked to --out and removed: no sums */
    for (int k = 0; k < n->nproducts && !rc; k++) {
        json_array_append_new(prods, json_string(n->products[k]));
        if (!ctx->g->ephemeral)
            rc = dm_cache_sum_record(n->dir, n->products[k], files);
    }
    if (!rc)
        rc = dm_cache_commit(ctx->g, n, j);
    json_decref(j);
    return rc;
}

static int commit_members(dm_run_ctx *ctx, group *G)
{
    for (int i = 0; i < G->nmembers; i++)
        if (G->members[i]->run && commit_node(ctx, G->members[i]))
            return -1;
    return 0;
}

static void close_group(group *G, int failed)
{
    for (int i = 0; i < G->nmembers; i++)
        close_node(G->members[i], failed || !G->members[i]->run);
    for (int i = 0; i < G->nguests; i++)
        close_node(G->guests[i], 1); /* nothing of a guest is kept */
    for (int j = 0; j < G->ndrivers; j++) {
        driver *d = &G->drivers[j];
        dm_replay_close(d->reader);
        if (d->opened)
            close_node(d->src, 1);
        free(d->buf.ptr);
        d->reader = NULL;
        d->opened = 0;
        d->buf.ptr = NULL;
    }
    G->ndrivers = G->nexternal; /* member sources are added again when it reruns */
}

/* The phases before the data flows: replays, tensor inputs, shapes, chunk
 * size, the members and sources opened. A signal is looked at between the
 * phases that may take long (open() loads weights, finish() may iterate), and
 * between chunks (stream_pass). */
static int open_group(dm_run_ctx *ctx, group *G)
{
    dm_graph *g = ctx->g;
    if (dm_check_interrupt() || open_replays(ctx, G) || load_tensor_inputs(g, G) || refresh_descs(G) ||
        size_chunks(g, G))
        return -1;
    if (open_members(g, G) || open_sources(g, G) || dm_check_interrupt())
        return -1;
    return 0;
}

static int run_group_phases(dm_run_ctx *ctx, group *G)
{
    if (open_group(ctx, G) || drive(ctx, G) || dm_check_interrupt() || finish_members(G) || commit_members(ctx, G))
        return -1;
    return 0;
}

static int sync_group(dm_run_ctx *ctx, const group *G, int shards);

/* ---- shards -------------------------------------------------------------------
 *
 * A sharded group (every member's operator is shardable, and its streams can be
 * read by range: replayed from the cache, or made by a source that seeks) runs
 * once per shard of the rows of its driving stream: shard i holds rows
 * [i * R, (i + 1) * R). R is the shard size (`shard:`, --shard), counted in tokens:
 * a stream of token windows (i32) holds cols tokens per row. Each member that
 * runs builds its shard's own cache entry (dm_cache_shard_key): the spills of its
 * streams for those rows and its partial results (save_partial). A shard whose
 * entries all exist is done, so a run killed halfway resumes with the missing
 * shards. With MPI ranks, rank r runs the shards i with i mod N = r. Then rank 0
 * merges: each member is opened once more, merges every shard's partial in
 * shard order, finishes, and commits its node entry, whose streams list the
 * shards' spills as segments (replay.c). The merge order is the shard order
 * whoever ran them, so the results do not depend on the number of ranks.
 */

/* The rows of G's driving stream (its first stream input, or its first member
 * source) and the tokens per row; *total = -1 when not known before the run. */
static int shard_stream_rows(dm_run_ctx *ctx, group *G, int64_t *total, int64_t *per_row)
{
    dm_node *s = NULL;
    int port = 0;
    if (G->nexternal) {
        s = G->drivers[0].src;
        port = G->drivers[0].port;
    } else {
        for (int i = 0; i < G->nmembers && !s; i++)
            if (G->members[i]->op->produce)
                s = G->members[i];
    }
    if (!s)
        return dm_failc(DM_E_INTERNAL, "nodes %s: a sharded group without a stream", G->label);
    *total = s->outdesc[port].shape[0];
    int64_t cols = s->outdesc[port].shape[1];
    G->S = 0;
    if (G->nexternal && replays(&G->drivers[0])) {
        dm_replay *r = open_replay(ctx->g, s, port, 0, -1);
        if (!r) {
            ctx->unreadable = s;
            return -1;
        }
        *total = dm_replay_rows(r);
        cols = dm_replay_cols(r);
        free(G->seg_row0), free(G->seg_rows);
        G->S = dm_replay_segments(r, &G->seg_row0, &G->seg_rows);
        dm_replay_close(r);
    }
    *per_row = s->outdesc[port].dtype == DM_I32 && cols > 0 ? cols : 1;
    return 0;
}

static int64_t shard_count(int64_t total, int64_t R) { return total <= 0 ? 1 : (total + R - 1) / R; }

/* 1 when every member that runs has the entry of shard i. */
static int shard_done(const dm_graph *g, const group *G, int64_t R, int64_t i)
{
    for (int m = 0; m < G->nmembers; m++) {
        const dm_node *n = G->members[m];
        if (!n->run)
            continue;
        if (n->forced)
            return 0; /* --force: computed again, shards too */
        char key[33];
        dm_cache_shard_key(n->key, R, i, key);
        char *path = dm_cache_entry_file(g, key, "node.json");
        int have = dm_file_exists(path);
        free(path);
        if (!have)
            return 0;
    }
    return 1;
}

/* After a shard: each member that runs writes its partial results. */
static int save_partials(group *G)
{
    for (int i = 0; i < G->nmembers; i++) {
        dm_node *n = G->members[i];
        if (!n->run || !n->op->save_partial)
            continue;
        double t0 = dm_now();
        int rc = n->op->save_partial(n, n->dir);
        n->seconds += dm_now() - t0;
        if (dm_node_check_params(n, rc))
            return blame(n, 1);
    }
    return 0;
}

/* Records the size and checksum of every file in n's folder but its spills. */
static int sum_partial_files(dm_node *n, json_t *files)
{
    DIR *d = opendir(n->dir);
    if (!d)
        return dm_failc(DM_E_IO, "%s: cannot list: %s", n->dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int spill = 0;
        for (int k = 0; k < n->nout && !spill; k++) {
            size_t l = strlen(n->outs[k].name);
            spill = n->spill[k] && !strncmp(e->d_name, n->outs[k].name, l) &&
                    (!strcmp(e->d_name + l, ".spill") || !strcmp(e->d_name + l, ".json"));
        }
        if (!spill)
            rc = dm_cache_sum_record(n->dir, e->d_name, files);
    }
    closedir(d);
    return rc;
}

/* Makes the folder of n's shard its cache entry (CACHE/<shard key>). */
static int commit_shard(dm_run_ctx *ctx, const group *G, dm_node *n, int64_t i, int64_t S)
{
    json_t *j = json_object(), *outs = json_object(), *files = json_object();
    json_object_set_new(j, "key", json_string(n->building));
    json_object_set_new(j, "node", json_string(n->decl->name));
    json_object_set_new(j, "op", json_string(n->op->name));
    json_object_set_new(j, "shard", json_pack("{s:s, s:I, s:I, s:I, s:I}", "of", n->key, "index", (json_int_t)i,
                                              "count", (json_int_t)S, "row0", (json_int_t)G->row0, "rows",
                                              (json_int_t)G->rows));
    json_object_set_new(j, "seconds", json_real(n->seconds));
    n->shard_seconds += n->seconds;
    json_object_set_new(j, "outputs", outs);
    json_object_set_new(j, "products", json_array());
    json_object_set_new(j, "files", files);
    int rc = 0;
    for (int k = 0; k < n->nout && !rc; k++) {
        if (n->outdesc[k].kind != DM_PORT_STREAM)
            continue;
        json_t *o = json_object();
        json_object_set_new(outs, n->outs[k].name, o);
        rc = commit_output(ctx, n, k, o);
    }
    if (!rc)
        rc = sum_partial_files(n, files);
    if (!rc)
        rc = dm_cache_commit(ctx->g, n, j);
    json_decref(j);
    return rc;
}

static void set_building(group *G, int64_t R, int64_t i)
{
    for (int m = 0; m < G->nmembers; m++) {
        dm_node *n = G->members[m];
        free(n->building);
        n->building = NULL;
        if (i >= 0 && n->run) {
            n->building = dm_xmalloc(33);
            dm_cache_shard_key(n->key, R, i, n->building);
        }
    }
}

static int run_shard_phases(dm_run_ctx *ctx, group *G, int64_t i, int64_t S)
{
    if (open_group(ctx, G) || drive(ctx, G) || dm_check_interrupt() || save_partials(G))
        return -1;
    for (int m = 0; m < G->nmembers; m++) {
        dm_node *n = G->members[m];
        if (!n->run)
            continue;
        /* a member whose entry of this shard a killed run already made keeps it
         * (the others needed its rows again): what is finished is not rewritten */
        char *have = dm_cache_entry_file(ctx->g, n->building, "node.json");
        int keep = !n->forced && dm_file_exists(have);
        free(have);
        if (keep) {
            for (int k = 0; k < n->nout; k++) {
                dm_spill_writer_abort(n->writers[k]);
                n->writers[k] = NULL;
            }
            dm_rm_rf(n->dir);
            free(n->dir);
            n->dir = NULL;
        } else if (commit_shard(ctx, G, n, i, S)) {
            return -1;
        }
    }
    return 0;
}

/* The shard's entries, checked, merged into n in shard order. */
static int merge_partials(dm_run_ctx *ctx, dm_node *n, int64_t R, int64_t S)
{
    for (int64_t i = 0; i < S; i++) {
        char key[33];
        dm_cache_shard_key(n->key, R, i, key);
        char *dir = dm_cache_entry(ctx->g, key);
        json_t *entry = dm_cache_entry_json(ctx->g, key);
        int rc = 0;
        if (!entry)
            rc = dm_failc(DM_E_CORRUPT, "%s/node.json: missing or unreadable (shard %lld of %lld of node '%s')", dir,
                          (long long)i, (long long)S, n->decl->name);
        const char *file;
        json_t *v;
        json_object_foreach(json_object_get(entry, "files"), file, v)
        {
            if (!rc)
                rc = dm_cache_check_file(dir, entry, file);
        }
        if (!rc && n->op->merge_partial) {
            double t0 = dm_now();
            rc = n->op->merge_partial(n, dir);
            n->seconds += dm_now() - t0;
            if (dm_node_check_params(n, rc))
                rc = blame(n, 1);
        }
        json_decref(entry);
        if (rc && dm_error_code() == DM_E_CORRUPT) {
            free(ctx->bad_entry);
            ctx->bad_entry = dir; /* removed; the retry computes the shard again */
            return -1;
        }
        free(dir);
        if (rc)
            return -1;
    }
    return 0;
}

/* The segments of stream output k of sharded node n: its shards' spills. */
static int shard_segments(dm_run_ctx *ctx, dm_node *n, int k, int64_t R, int64_t S, json_t *o)
{
    json_t *segs = json_array();
    json_object_set_new(o, "segments", segs);
    json_object_set_new(o, "dtype", json_string(dm_dtype_name(n->outdesc[k].dtype)));
    int64_t row = 0;
    for (int64_t i = 0; i < S; i++) {
        char key[33];
        dm_cache_shard_key(n->key, R, i, key);
        char *dir = dm_cache_entry(ctx->g, key);
        dm_spill_reader *r = dm_spill_reader_open(dir, n->outs[k].name);
        if (!r) {
            free(ctx->bad_entry);
            ctx->bad_entry = dir;
            return -1;
        }
        /* rows follow on from the shard before: a stream tied to the source's
         * rows keeps its numbers, one that counts its own (feature pairs) is
         * renumbered (replay.c) */
        if (i == 0)
            row = dm_spill_row0(r);
        json_array_append_new(segs, json_pack("{s:s, s:I, s:I, s:I, s:I}", "key", key, "row0", (json_int_t)row,
                                               "spill_row0", (json_int_t)dm_spill_row0(r), "rows",
                                               (json_int_t)dm_spill_rows(r), "max_chunk_rows",
                                               (json_int_t)dm_spill_max_chunk_rows(r)));
        row += dm_spill_rows(r);
        dm_spill_reader_close(r);
        free(dir);
    }
    return 0;
}

static int merge_group(dm_run_ctx *ctx, group *G, int64_t R, int64_t S)
{
    dm_graph *g = ctx->g;
    G->row0 = 0;
    G->rows = -1;
    set_building(G, R, -1);
    if (dm_check_interrupt() || load_tensor_inputs(g, G) || refresh_descs(G))
        return -1;
    for (int m = 0; m < G->nmembers; m++) {
        dm_node *n = G->members[m];
        if (!n->run)
            continue;
        if (open_node(g, n, OPEN_RANDOM))
            return -1;
        n->seconds = n->shard_seconds; /* a sharded node's time: its shards' in this run, then the merge's */
        n->shard_seconds = 0;
        if (merge_partials(ctx, n, R, S) || dm_check_interrupt() || finish_node(n))
            return -1;
        n->shard_rows = R;
        n->nshards = S;
        if (commit_node(ctx, n))
            return -1;
    }
    return 0;
}

/* The shard size in rows of G's driving stream, and the number of shards;
 * -1 when the stream cannot be read. */
static int shard_plan(dm_run_ctx *ctx, group *G, int64_t *total, int64_t *per_row)
{
    *total = -1;
    *per_row = 1;
    if (shard_stream_rows(ctx, G, total, per_row))
        return -1;
    G->R = ctx->g->shard / *per_row > 0 ? ctx->g->shard / *per_row : 1;
    /* a stream kept in shards keeps them: each rank reads the shards it made */
    if (!G->S)
        G->S = shard_count(*total, G->R);
    return 0;
}

/* The rows of shard i of a stream of `total` rows (-1: all of them). */
static void set_shard(group *G, int64_t i, int64_t total)
{
    if (G->seg_row0) {
        G->row0 = G->seg_row0[i];
        G->rows = G->seg_rows[i];
        return;
    }
    G->row0 = i * G->R;
    G->rows = total < 0 ? -1 : total - i * G->R < G->R ? total - i * G->R : G->R;
}

static int run_sharded(dm_run_ctx *ctx, group *G)
{
    dm_graph *g = ctx->g;
    int64_t total, per_row;
    int rc = shard_plan(ctx, G, &total, &per_row);
    for (int m = 0; m < G->nmembers && g->rank == 0 && !rc; m++)
        if (G->members[m]->run)
            rc = dm_cache_note_shards(g, G->members[m], G->R, G->S);
    if ((rc = dist_agree(ctx, rc)))
        return -1;
    if (g->nranks > 1)
        dm_dist_progress_reset();
    G->progress = dm_progress_start(G->label, total);
    dm_progress_units(G->progress, per_row > 1 ? "tokens" : "rows", per_row);
    G->done_rows = G->shards_done = 0;
    for (int64_t i = g->rank; i < G->S && !rc; i += g->nranks) {
        set_shard(G, i, total);
        if (!shard_done(g, G, G->R, i)) {
            set_building(G, G->R, i);
            dm_progress_shards(G->progress, G->shards_done, G->S);
            rc = run_shard_phases(ctx, G, i, G->S);
            close_group(G, rc != 0);
        } else if (G->rows > 0) {
            G->done_rows += G->rows; /* cached: counted, not timed */
        }
        G->shards_done++;
        if (g->nranks > 1)
            dm_dist_progress_post(G->shards_done, G->done_rows, ctx->spilled_bytes);
    }
    set_building(G, G->R, -1);
    int64_t shards = G->shards_done, rows = G->done_rows;
    if (g->nranks > 1) {
        dm_dist_progress_reset();
        dm_dist_progress_final(&shards, &rows, NULL);
    }
    dm_progress_shards(G->progress, shards, G->S);
    dm_progress_end(G->progress, rows, ctx->spilled_bytes, 1);
    G->progress = NULL;
    rc = dist_agree(ctx, rc);
    if (!rc && g->nranks > 1)
        rc = sync_group(ctx, G, 1);
    if (!rc && g->rank == 0)
        rc = merge_group(ctx, G, G->R, G->S);
    return rc;
}

/* ---- passes split by shard -------------------------------------------------------
 *
 * A multipass group (FastICA) whose members all split their per-pass sums by
 * shard (pass_partial, op.h) runs on every rank: each pass, a rank reads its
 * shards of the stream (shard i on rank i mod N), hands each shard's partial
 * sums to the others (dm_dist_allgather_doubles), and every rank merges all of
 * them in shard order before end_pass(): the same sums, so the same iterates,
 * in every process, for any N. Rank 0 commits the results.
 */
static int splits_passes(const dm_run_ctx *ctx, const group *G)
{
    if (ctx->g->shard <= 0 || !G->multipass || G->nguests || !G->nexternal)
        return 0;
    for (int j = 0; j < G->nexternal; j++)
        if (!replays(&G->drivers[j]))
            return 0;
    for (int i = 0; i < G->nmembers; i++) {
        const dm_op *op = G->members[i]->op;
        if (!op->pass_partial_size || !op->pass_partial || !op->pass_merge ||
            op->pass_partial_size(G->members[i]) <= 0 || op->produce)
            return 0;
    }
    return 1;
}

/* Reopens the drivers (replays) on the rows of the current shard. */
static int reopen_drivers(dm_run_ctx *ctx, group *G)
{
    for (int j = 0; j < G->nexternal; j++) {
        dm_replay_close(G->drivers[j].reader);
        G->drivers[j].reader = NULL;
    }
    return open_replays(ctx, G);
}

static int drive_split(dm_run_ctx *ctx, group *G)
{
    dm_graph *g = ctx->g;
    int64_t total, per_row;
    int rc = shard_plan(ctx, G, &total, &per_row);
    if ((rc = dist_agree(ctx, rc)))
        return -1;
    int64_t size = 0, N = g->nranks, slots = (G->S + N - 1) / N;
    int64_t *off = dm_xcalloc((size_t)G->nmembers + 1, sizeof *off);
    for (int m = 0; m < G->nmembers; m++) {
        off[m] = size;
        size += G->members[m]->op->pass_partial_size(G->members[m]);
    }
    if (slots * size * N > INT32_MAX) {
        free(off);
        return dist_agree(ctx, dm_failc(DM_E_NOMEM, "nodes %s: %lld shards of %lld partial sums each are too many "
                                        "to exchange; raise the shard size", G->label, (long long)G->S,
                                        (long long)size));
    }
    double *mine = dm_xcalloc((size_t)(slots * size), sizeof *mine);
    double *all = dm_xcalloc((size_t)(slots * size * N), sizeof *all);
    for (int pass = 0;; pass++) {
        memset(mine, 0, (size_t)(slots * size) * sizeof *mine);
        char *label = dm_xasprintf("%s [pass %d]", G->label, pass + 1);
        G->progress = dm_progress_start(label, total);
        free(label);
        G->done_rows = G->shards_done = 0;
        if (N > 1)
            dm_dist_progress_reset();
        for (int64_t i = g->rank; i < G->S && !rc; i += N) {
            set_shard(G, i, total);
            rc = reopen_drivers(ctx, G);
            if (!rc)
                rc = stream_pass(ctx, G, pass);
            for (int m = 0; m < G->nmembers && !rc; m++) {
                dm_node *n = G->members[m];
                rc = dm_node_check_params(n, n->op->pass_partial(n, mine + (i / N) * size + off[m]));
                if (rc)
                    blame(n, 1);
            }
            G->shards_done++;
            if (N > 1)
                dm_dist_progress_post(G->shards_done, G->done_rows, ctx->spilled_bytes);
        }
        int64_t shards = G->shards_done, rows = G->done_rows;
        if (N > 1) {
            dm_dist_progress_reset();
            dm_dist_progress_final(&shards, &rows, NULL);
        }
        dm_progress_shards(G->progress, shards, G->S);
        dm_progress_end(G->progress, rows, ctx->spilled_bytes, pass == 0);
        G->progress = NULL;
        if ((rc = dist_agree(ctx, rc)))
            break;
        if (N > 1 && dm_dist_allgather_doubles(mine, (int)(slots * size), all))
            rc = -1;
        const double *from = N > 1 ? all : mine;
        for (int64_t i = 0; i < G->S && !rc; i++) /* shard order, whoever read it */
            for (int m = 0; m < G->nmembers && !rc; m++) {
                dm_node *n = G->members[m];
                rc = dm_node_check_params(n, n->op->pass_merge(n, from + ((i % N) * slots + i / N) * size + off[m]));
                if (rc)
                    blame(n, 1);
            }
        int more = 0;
        if (!rc)
            rc = end_passes(G, pass, &more);
        if ((rc = dist_agree(ctx, rc)) || !more)
            break;
        if ((rc = dist_agree(ctx, dm_check_interrupt())))
            break;
    }
    G->rows = -1;
    free(off), free(mine), free(all);
    return rc;
}

/* A split group's phases on every rank (drive_split); rank 0 commits. */
static int run_split(dm_run_ctx *ctx, group *G)
{
    dm_graph *g = ctx->g;
    int rc;
    if ((rc = dist_agree(ctx, open_group(ctx, G))) || (rc = drive_split(ctx, G)))
        return -1;
    if ((rc = dist_agree(ctx, finish_members(G))))
        return -1;
    return g->rank == 0 ? commit_members(ctx, G) : 0;
}

/* With several ranks: every rank's cache gets the entries G made (dist.h; a
 * shared cache folder sends nothing): the shards' entries (`shards`, for rank
 * 0 to merge), or the nodes' entries. */
static int sync_group(dm_run_ctx *ctx, const group *G, int shards)
{
    char **keys = NULL;
    int nkeys = 0;
    for (int m = 0; m < G->nmembers; m++) {
        const dm_node *n = G->members[m];
        if (!n->run)
            continue;
        for (int64_t i = 0; i < (shards ? G->S : 1); i++) {
            keys = dm_xrealloc(keys, (size_t)(nkeys + 1) * sizeof *keys);
            keys[nkeys] = dm_xmalloc(33);
            if (shards)
                dm_cache_shard_key(n->key, G->R, i, keys[nkeys]);
            else
                memcpy(keys[nkeys], n->key, 33);
            nkeys++;
        }
    }
    int rc = dm_dist_sync_entries(ctx->g->cache, keys, nkeys);
    for (int i = 0; i < nkeys; i++)
        free(keys[i]);
    free(keys);
    return rc;
}

static int run_group(dm_run_ctx *ctx, group *G, int gi)
{
    ctx->group = gi;
    ctx->cur = G;
    dm_graph *g = ctx->g;
    int rc;
    G->split = !G->sharded && splits_passes(ctx, G);
    if (G->sharded)
        rc = run_sharded(ctx, G);
    else if (G->split)
        rc = run_split(ctx, G);
    else if (g->rank == 0)
        rc = run_group_phases(ctx, G);
    else
        rc = 0; /* rank 0 runs the groups that are neither sharded nor split */
    close_group(G, rc != 0 || g->rank != 0); /* only rank 0 keeps what it committed */
    ctx->cur = NULL;
    rc = dist_agree(ctx, rc);
    if (!rc && g->nranks > 1)
        rc = sync_group(ctx, G, 0);
    for (int i = 0; i < G->nmembers && !rc && g->rank != 0; i++)
        if (G->members[i]->run) /* rank 0 committed it: this rank's index says so too */
            rc = dm_cache_record(g, G->members[i]);
    if (g->nranks > 1)
        rc = dist_agree(ctx, rc);
    ctx->group = -1;
    if (rc && dm_interrupted() && !ctx->stopped_in)
        ctx->stopped_in = dm_xstrdup(G->label);
    for (int i = 0; i < G->nmembers && !rc; i++)
        ctx->committed += G->members[i]->run;
    return rc;
}

/* Copies product `prod` of n's entry (node.json j) from src to dst. The copy is
 * the user's to edit: a reflink or a copy, never a hard link into the cache
 * (fs.c), and its bytes are checked against the entry's record on the way; a
 * product that is missing or changed makes n "unreadable", so the run is planned
 * again and n recomputes it (dm_run). A temporary cache is removed after the run,
 * so its products are simply linked. */
static int publish_file(dm_graph *g, dm_node *n, const json_t *j, const char *prod, const char *src,
                        const char *dst)
{
    if (g->ephemeral)
        return dm_link_file(src, dst);
    dm_file_sum want;
    int rc = dm_cache_sum_recorded(j, prod, src, &want);
    if (!rc && !dm_file_exists(src))
        rc = dm_failc(DM_E_CORRUPT, "%s: missing", src);
    if (!rc)
        rc = dm_copy_file_checked(src, dst, &want);
    if (rc && dm_error_code() == DM_E_CORRUPT) {
        if (g->run)
            g->run->unreadable = n;
        return dm_fail_prefix("product '%s' of node '%s'", prod, n->decl->name);
    }
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
        json_t *j = dm_cache_entry_json(g, n->key);
        json_t *st = json_object();
        json_object_set_new(st, "node", json_string(n->decl->name));
        json_object_set_new(st, "op", json_string(n->op->name));
        json_object_set_new(st, "key", json_string(n->key));
        json_object_set_new(st, "state", json_string(n->run ? "ran" : "cached"));
        static const char *times[] = {"seconds", "open_seconds", "finish_seconds"};
        for (int t = 0; t < 3; t++)
            json_object_set_new(st, times[t], json_incref(j && json_object_get(j, times[t]) ? json_object_get(j, times[t])
                                                                                           : json_null()));
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
            char *src = dm_cache_entry_file(g, n->key, prod);
            char *dst = dm_xasprintf("%s/%s", g->out, file);
            char *slash = strrchr(dst, '/');
            *slash = 0;
            rc = dm_mkdir_p(dst);
            *slash = '/';
            if (!rc)
                rc = publish_file(g, n, j, prod, src, dst);
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

/* Which stream outputs of a node that runs are spilled, before grouping adds
 * the ones that cross groups: those with consumers, unless they are a cheap
 * source's (produced again instead) or the node says `spill: never`. */
static void plan_spills(dm_graph *g)
{
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        n->group = -1;
        for (int k = 0; k < n->nout; k++)
            n->spill[k] = n->run && n->outdesc[k].kind == DM_PORT_STREAM && n->ncons[k] > 0 &&
                          (!n->op->produce || n->op->spill_source) && !spill_never(n) && !recomputes(n);
    }
}

/* ---- the disk a run needs --------------------------------------------------- */

/* Rows of stream output `port` of n: known, bounded (max_rows), or as many as
 * its first stream input's; a stream of token windows (i32) becomes one row per
 * token (gpt2). -1 when not known. */
static int64_t est_rows(const dm_node *n, int port)
{
    const dm_port_desc *d = &n->outdesc[port];
    if (d->shape[0] >= 0)
        return d->shape[0];
    if (d->max_rows > 0)
        return d->max_rows;
    for (int k = 0; k < n->nin; k++) {
        if (!is_stream_input(n, k))
            continue;
        const dm_node *s = n->in[k].src;
        const dm_port_desc *in = &s->outdesc[n->in[k].port];
        int64_t r = est_rows(s, n->in[k].port);
        return r < 0 ? -1 : in->dtype == DM_I32 && d->dtype != DM_I32 ? r * in->shape[1] : r;
    }
    return -1;
}

static int64_t stored_size(const dm_node *n, int k)
{
    dm_dtype f = DM_F32;
    if (n->decl->spill_dtype)
        dm_dtype_parse(n->decl->spill_dtype, &f);
    return (int64_t)dm_dtype_size(n->outdesc[k].dtype == DM_F32 ? f : n->outdesc[k].dtype);
}

int dm_run_disk_estimate(dm_graph *g, dm_disk_estimate *e)
{
    memset(e, 0, sizeof *e);
    plan_spills(g);
    group *gs = NULL;
    int ng = 0, rc = make_groups(g, &gs, &ng);
    free_groups(gs, ng);
    if (rc)
        return -1;
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        if (!n->run)
            continue;
        for (int k = 0; k < n->nout; k++) {
            const dm_port_desc *d = &n->outdesc[k];
            if (d->kind == DM_PORT_TENSOR) {
                int64_t b = (int64_t)dm_dtype_size(d->dtype);
                for (int j = 0; j < d->ndim && b >= 0; j++)
                    b = d->shape[j] >= 0 ? b * d->shape[j] : -1;
                e->tensors += b > 0 ? b : 0;
                continue;
            }
            if (!n->spill[k] && !(n->decl->spill && !strcmp(n->decl->spill, "always")))
                continue;
            int64_t rows = est_rows(n, k);
            if (rows < 0) {
                e->unknown++;
                continue;
            }
            e->spills += rows * d->shape[1] * stored_size(n, k);
        }
        if (n->op->disk_bytes) {
            int64_t rows = -1;
            for (int k = 0; k < n->nin && rows < 0; k++)
                if (is_stream_input(n, k))
                    rows = est_rows(n->in[k].src, n->in[k].port);
            if (rows >= 0)
                e->products += n->op->disk_bytes(n, rows);
        }
    }
    e->total = e->spills + e->tensors + e->products * (g->out ? 2 : 1);
    e->free = dm_fs_free_bytes(g->cache);
    return e->free < 0 ? -1 : 0;
}

/* One attempt: plan, group, run every group, publish the products. */
/* With several ranks, every rank plans against the same cache: the entries of
 * the pipeline's nodes, then the shards their streams are kept in, are copied
 * to the ranks whose cache folder lacks them (nothing with a shared folder),
 * and every rank plans again. */
static int sync_plan(dm_run_ctx *ctx)
{
    dm_graph *g = ctx->g;
    char **keys = dm_xcalloc((size_t)g->nnodes + 1, sizeof *keys);
    int nkeys = 0;
    for (int i = 0; i < g->nnodes; i++)
        keys[nkeys++] = dm_xstrdup(g->nodes[i]->key);
    int rc = dm_dist_sync_entries(g->cache, keys, nkeys);
    for (int i = 0; i < g->nnodes && !rc; i++) { /* the same node.json on every rank now */
        json_t *e = dm_cache_entry_json(g, g->nodes[i]->key), *o, *sg;
        const char *port;
        size_t j;
        json_object_foreach(json_object_get(e, "outputs"), port, o)
        {
            json_array_foreach(json_object_get(o, "segments"), j, sg)
            {
                const char *k = json_string_value(json_object_get(sg, "key"));
                keys = dm_xrealloc(keys, (size_t)(nkeys + 1) * sizeof *keys);
                keys[nkeys++] = dm_xstrdup(k ? k : "");
            }
        }
        json_decref(e);
    }
    if (!rc && nkeys > g->nnodes)
        rc = dm_dist_sync_entries(g->cache, keys + g->nnodes, nkeys - g->nnodes);
    for (int i = 0; i < nkeys; i++)
        free(keys[i]);
    free(keys);
    return rc;
}

static int run_attempt(dm_run_ctx *ctx)
{
    dm_graph *g = ctx->g;
    int rc = dm_plan(g);
    /* the ranks sweep dead runs' temporary folders one after another: a shared
     * cache folder is swept once, by rank 0, not by several at the same time */
    for (int r = 0; r < g->nranks; r++) {
        if (r == g->rank && !rc)
            rc = dm_cache_prepare(g);
        if (g->nranks > 1)
            dm_dist_barrier();
    }
    if (g->nranks > 1 && !(rc = dist_agree(ctx, rc)) && !(rc = sync_plan(ctx)))
        rc = dist_agree(ctx, dm_plan(g));
    if (rc)
        return -1;
    dm_disk_estimate e;
    if ((rc = dist_agree(ctx, dm_run_disk_estimate(g, &e))))
        return -1;
    if (e.total > e.free) {
        char *need = dm_human_bytes(e.total), *have = dm_human_bytes(e.free);
        dm_failc(DM_E_IO, "this run needs about %s of disk in %s (spills, tensors and products%s), but its file "
                 "system has %s free: free some space (dmica cache gc), use another --cache, or spill less "
                 "(spill: recompute, spill_dtype: f16; docs/pipelines.md)", need, g->cache,
                 g->out ? ", with their copies in --out" : "", have);
        free(need), free(have);
        return -1;
    }
    if (dm_progress_enabled && dm_verbose > 0 && e.total >= ((int64_t)1 << 30)) {
        char *need = dm_human_bytes(e.total), *have = dm_human_bytes(e.free);
        fprintf(stderr, "dmica: this run will write about %s into %s (%s free)\n", need, g->cache, have);
        free(need), free(have);
    }
    plan_spills(g);
    group *gs = NULL;
    int ng = 0;
    rc = dist_agree(ctx, make_groups(g, &gs, &ng));
    for (int gi = 0; gi < ng && !rc; gi++)
        rc = run_group(ctx, &gs[gi], gi);
    free_groups(gs, ng);
    if (!rc && g->rank == 0)
        rc = publish_products(g); /* rank 0 writes the results */
    return dist_agree(ctx, rc);
}

/* The error of a run a signal stopped: whatever the signal cut short (a
 * callback, a write) failed because of it. */
static int interrupted_error(dm_run_ctx *ctx)
{
    dm_strbuf b = DM_STRBUF_INIT;
    dm_strbuf_addf(&b, "interrupted by %s", dm_signal_name(dm_interrupted()));
    if (ctx->stopped_in)
        dm_strbuf_addf(&b, " while running node%s %s", strchr(ctx->stopped_in, ',') ? "s" : "", ctx->stopped_in);
    dm_strbuf_addf(&b, "; its temporary files are removed");
    if (ctx->committed)
        dm_strbuf_addf(&b, ", and the %d node%s that finished %s cached: running again continues from there",
                       ctx->committed, ctx->committed == 1 ? "" : "s", ctx->committed == 1 ? "is" : "are");
    dm_failc(DM_E_INTERRUPTED, "%s", b.s);
    free(b.s);
    return -1;
}

/* Collective: the entries some rank could not read (a node's, a shard's) are
 * dropped on every rank, so the retry recomputes them everywhere (and no rank
 * copies a bad one back). A key travels as 16 bytes in two doubles. */
static void share_unreadable(dm_run_ctx *ctx)
{
    dm_graph *g = ctx->g;
    double mine[4] = {0}, *all = dm_xcalloc((size_t)g->nranks * 4, sizeof *all);
    char keys[2][33] = {"", ""};
    if (ctx->unreadable)
        memcpy(keys[0], ctx->unreadable->key, 33);
    if (ctx->bad_entry) {
        const char *b = strrchr(ctx->bad_entry, '/');
        snprintf(keys[1], 33, "%s", b ? b + 1 : ctx->bad_entry);
    }
    for (int k = 0; k < 2; k++)
        for (int h = 0; h < 2 && keys[k][0]; h++) {
            unsigned long long v;
            char half[17];
            memcpy(half, keys[k] + 16 * h, 16);
            half[16] = 0;
            v = strtoull(half, NULL, 16);
            memcpy(&mine[2 * k + h], &v, 8);
        }
    if (dm_dist_allgather_doubles(mine, 4, all)) {
        free(all);
        return;
    }
    for (int r = 0; r < g->nranks; r++)
        for (int k = 0; k < 2; k++) {
            unsigned long long hi, lo;
            memcpy(&hi, &all[4 * r + 2 * k], 8);
            memcpy(&lo, &all[4 * r + 2 * k + 1], 8);
            if (!hi && !lo)
                continue;
            char key[33];
            snprintf(key, sizeof key, "%016llx%016llx", hi, lo);
            if (k == 0) {
                for (int i = 0; i < g->nnodes && !ctx->unreadable; i++)
                    if (!strcmp(g->nodes[i]->key, key))
                        ctx->unreadable = g->nodes[i];
            } else if (!ctx->bad_entry) {
                ctx->bad_entry = dm_cache_entry(g, key);
            }
        }
    free(all);
}

static int run_attempts(dm_graph *g, dm_run_ctx *ctx)
{
    int rc;
    for (int attempt = 0;; attempt++) {
        ctx->spilled_bytes = 0;
        ctx->unreadable = NULL;
        free(ctx->bad_entry);
        ctx->bad_entry = NULL;
        rc = run_attempt(ctx);
        if (g->nranks > 1)
            share_unreadable(ctx); /* every rank drops what one could not read */
        if (!rc || (!ctx->unreadable && !ctx->bad_entry) || attempt >= 2 || dm_interrupted())
            break;
        if (ctx->bad_entry) { /* a shard's entry that cannot be read: computed again */
            dm_warn("%s; recomputing that shard", dm_error());
            dm_rm_rf(ctx->bad_entry);
        }
        /* a spill that cannot be replayed: recompute its producer */
        if (ctx->unreadable) {
            dm_warn("%s; recomputing node '%s'", dm_error(), ctx->unreadable->decl->name);
            dm_cache_invalidate(g, ctx->unreadable->key);
        }
        for (int i = 0; i < g->nnodes; i++)
            for (int k = 0; k < g->nodes[i]->nout; k++)
                dm_tensor_free(&g->nodes[i]->outtensor[k]);
    }
    return rc;
}

int dm_run(dm_graph *g)
{
    dm_run_ctx ctx = {.g = g, .group = -1};
    g->run = &ctx;
    dm_signals_catch();
    int rc = run_attempts(g, &ctx);
    if (!rc)
        rc = dm_check_interrupt();
    if (rc && dm_interrupted())
        interrupted_error(&ctx);
    free(ctx.stopped_in);
    free(ctx.bad_entry);
    g->run = NULL;
    if (!rc) {
        g->ran = 1;
        /* every entry this run used is young again for `dmica cache gc --older-than` */
        for (int i = 0; i < g->nnodes && !g->ephemeral; i++)
            dm_cache_touch(g, g->nodes[i]->key);
    }
    dm_signals_restore();
    return rc;
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
    g->cache = dm_cache_dir(o->cache, p->cache);
    g->out = o->out ? dm_xstrdup(o->out) : NULL;
    g->memory = o->memory > 0 ? o->memory : p->memory > 0 ? p->memory : (int64_t)1 << 30;
    g->shard = p->shard > 0 ? p->shard : 0; /* a command runs in one piece unless its YAML says */
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
