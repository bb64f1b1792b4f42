/*
 * cache.c: cache keys and the plan.
 *
 * A node's key is the XXH3-128 hash of its "material", a few lines of text:
 *
 *   op=<name>                the operator
 *   version=1                its version (bumped when its results change)
 *   param.k=100              every resolved parameter, defaults included
 *   file.path=<xxh3-128>     the content identity of every input file
 *   input.x=<key>:<port>     the key of each input's producer and the port
 *   spill_dtype=f32          how stream outputs are stored
 *
 * so, as in DVC, a key changes exactly when something that can change the
 * node's results changes, and keys chain: a changed node changes the keys of
 * everything downstream. The cache folder holds one entry per key:
 *
 *   CACHE/<key>/node.json    what the entry holds (outputs, products), written last
 *   CACHE/<key>/<port>.spill + <port>.json   spilled stream outputs
 *   CACHE/<key>/<port>.npy   tensor outputs
 *   CACHE/<key>/...          product files (stats.json, ...)
 *
 * An entry is built in CACHE/tmp/<key>.<pid>.<start>.<node index> and renamed
 * into place when the node succeeds, so an entry that exists is complete; the
 * pid and its start time let a later run remove the folders of a process that
 * was killed (see "temporary folders" below).
 * CACHE/index/<pipeline>/<node> keeps the material of the node's last run, to
 * say why a node is stale, and CACHE/filehash/ memoises the content identity of
 * input files (fs.c). This file owns that layout: every path under CACHE is
 * made by a function here.
 */
#include "engine.h"

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs.h"
#include "spill.h"

static const char *tmp_owner_tag(void);

char *dm_cache_dir(const char *given, const char *pipeline)
{
    const char *env = getenv("DMICA_CACHE");
    return dm_xstrdup(given ? given : pipeline ? pipeline : env && *env ? env : ".dmica-cache");
}

char *dm_cache_entry(const dm_graph *g, const char *key) { return dm_xasprintf("%s/%s", g->cache, key); }

char *dm_cache_entry_file(const dm_graph *g, const char *key, const char *file)
{
    return dm_xasprintf("%s/%s/%s", g->cache, key, file);
}

char *dm_cache_tensor_file(const char *entry_dir, const char *port)
{
    return dm_xasprintf("%s/%s.npy", entry_dir, port);
}

int dm_cache_prepare(const dm_graph *g)
{
    char *tmp = dm_xasprintf("%s/tmp", g->cache);
    int rc = dm_mkdir_p(tmp);
    free(tmp);
    /* what killed runs left (their processes are gone): a failure to remove it
     * does not stop this run */
    if (!rc && dm_cache_clean_tmp(g->cache))
        dm_warn("cleaning %s/tmp: %s", g->cache, dm_error());
    return rc;
}

char *dm_cache_tmp_dir(const dm_graph *g, const dm_node *n)
{
    /* the node's index too: two nodes may share a key (the same computation
     * twice); the pid and its start time say whose it is (dm_cache_clean_tmp) */
    return dm_xasprintf("%s/tmp/%s.%s.%d", g->cache, n->building ? n->building : n->key, tmp_owner_tag(), n->index);
}

char *dm_cache_tmp_path(const char *cache, const char *name, const char *suffix)
{
    return dm_xasprintf("%s/tmp/%s.%s.%s", cache, name, tmp_owner_tag(), suffix);
}

json_t *dm_cache_entry_json(const dm_graph *g, const char *key)
{
    char *path = dm_cache_entry_file(g, key, "node.json");
    json_error_t err;
    json_t *j = dm_file_exists(path) ? json_load_file(path, 0, &err) : NULL;
    free(path);
    return j;
}

int dm_cache_invalidate(const dm_graph *g, const char *key)
{
    char *e = dm_cache_entry(g, key);
    int rc = dm_rm_rf(e);
    free(e);
    return rc;
}

static char *index_path(const dm_graph *g, const dm_node *n)
{
    return dm_xasprintf("%s/index/%s/%s", g->cache, g->pipe->name, n->decl->name);
}

int dm_cache_record(const dm_graph *g, const dm_node *n)
{
    char *dir = dm_xasprintf("%s/index/%s", g->cache, g->pipe->name), *path = index_path(g, n);
    int rc = dm_mkdir_p(dir);
    if (!rc)
        rc = dm_write_file_atomic(path, n->material, strlen(n->material));
    free(dir), free(path);
    return rc;
}

int dm_cache_commit(const dm_graph *g, dm_node *n, const json_t *entry)
{
    char *text = json_dumps(entry, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text)
        dm_oom(0, "a cache entry's node.json");
    char *path = dm_xasprintf("%s/node.json", n->dir);
    int rc = dm_write_file_atomic(path, text, strlen(text));
    free(text), free(path);
    if (rc)
        return -1;
    int shard = n->building && strcmp(n->building, n->key);
    char *final = dm_cache_entry(g, shard ? n->building : n->key);
    rc = dm_fsync_path(n->dir);
    if (!rc)
        rc = dm_dir_publish(n->dir, final);
    free(final);
    if (rc)
        return -1;
    free(n->dir);
    n->dir = NULL;
    return shard ? 0 : dm_cache_record(g, n);
}


static int has_stream_output(const dm_node *n)
{
    for (int k = 0; k < n->nout; k++)
        if (n->outdesc[k].kind == DM_PORT_STREAM)
            return 1;
    return 0;
}

/* A file's identity, or a folder's: the identities of its files (not
 * recursive, sorted by name, hidden files skipped) hashed together with names. */
static int path_identity(const char *path, const char *memo, char out[33])
{
    struct stat st;
    if (stat(path, &st))
        return dm_fail("%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return dm_file_identity(path, memo, out);
    struct dirent **ents;
    int n = scandir(path, &ents, NULL, alphasort);
    if (n < 0)
        return dm_fail("%s: cannot list folder: %s", path, strerror(errno));
    dm_strbuf b = DM_STRBUF_INIT;
    int rc = 0;
    dm_strbuf_addf(&b, "folder\n");
    for (int i = 0; i < n; i++) {
        char *f = dm_xasprintf("%s/%s", path, ents[i]->d_name), id[33];
        if (ents[i]->d_name[0] != '.' && !stat(f, &st) && S_ISREG(st.st_mode)) {
            if (!rc && !(rc = dm_file_identity(f, memo, id)))
                dm_strbuf_addf(&b, "%s=%s\n", ents[i]->d_name, id);
        }
        free(f);
        free(ents[i]);
    }
    free(ents);
    if (!rc) {
        XXH128_hash_t h = XXH3_128bits(b.s, b.len);
        snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
    }
    free(b.s);
    return rc;
}

/* A key: XXH3-128 of the material, as 32 hex digits. */
static void key_of_material(const char *material, size_t len, char out[33])
{
    XXH128_hash_t h = XXH3_128bits(material, len);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
}

void dm_cache_shard_key(const char *key, int64_t shard_rows, int64_t index, char out[33])
{
    char material[128];
    int len = snprintf(material, sizeof material, "shard of %s\nrows=%lld\nindex=%lld\n", key,
                       (long long)shard_rows, (long long)index);
    key_of_material(material, (size_t)len, out);
}

static int compute_key(dm_graph *g, dm_node *n)
{
    dm_strbuf b = DM_STRBUF_INIT;
    dm_strbuf_addf(&b, "op=%s\nversion=%d\n", n->op->name, n->op->version);
    for (int k = 0; k < n->nparams; k++) {
        dm_strbuf_addf(&b, "param.%s=%s\n", n->op->params[k].name, n->pval[k]);
        if (n->op->params[k].type == DM_P_PATH && n->pval[k][0]) {
            char id[33], *memo = dm_xasprintf("%s/filehash", g->cache);
            int rc = path_identity(n->pval[k], memo, id);
            free(memo);
            if (rc) {
                free(b.s);
                return dm_fail_prefix("%s: node '%s': parameter '%s'", n->where, n->decl->name,
                                      n->op->params[k].name);
            }
            dm_strbuf_addf(&b, "file.%s=%s\n", n->op->params[k].name, id);
        }
    }
    for (int k = 0; k < n->nin; k++)
        if (n->in[k].src)
            dm_strbuf_addf(&b, "input.%s=%s:%s\n", n->op->inputs[k].name, n->in[k].src->key,
                   n->in[k].src->outs[n->in[k].port].name);
    if (has_stream_output(n))
        dm_strbuf_addf(&b, "spill_dtype=%s\n", n->decl->spill_dtype ? n->decl->spill_dtype : "f32");
    /* kernels on the GPU sum in other orders than the CPU's */
    if (dm_node_compute(n)->device == DM_DEVICE_CUDA) {
        dm_strbuf_addf(&b, "device=cuda\n");
        if (dm_node_compute(n)->gemm != DM_GEMM_FP32)
            dm_strbuf_addf(&b, "gemm=%s\n", dm_gemm_name(dm_node_compute(n)->gemm));
    }
    /* a node run in shards (or whose passes split by shard) merges partial
     * results: they depend on the shard size */
    if ((n->op->shardable || n->op->pass_partial) && g->shard > 0)
        dm_strbuf_addf(&b, "shard=%lld\n", (long long)g->shard);
    key_of_material(b.s, b.len, n->key);
    free(n->material);
    n->material = b.s;
    return 0;
}

/* The first line that differs between the recorded and the current material,
 * in words. */
static char *why_changed(const char *old, const char *cur)
{
    const char *a = old, *b = cur;
    while (*a || *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a), lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || strncmp(a, b, la)) {
            const char *eqa = memchr(a, '=', la), *eqb = memchr(b, '=', lb);
            if (eqa && eqb && (eqa - a) == (eqb - b) && !strncmp(a, b, (size_t)(eqa - a))) {
                int nl = (int)(eqa - a);
                if (!strncmp(a, "param.", 6))
                    return dm_xasprintf("parameter %.*s changed (%.*s -> %.*s)", nl - 6, a + 6,
                                        (int)(la - (size_t)nl - 1), eqa + 1, (int)(lb - (size_t)nl - 1), eqb + 1);
                if (!strncmp(a, "file.", 5))
                    return dm_xasprintf("the content of input file '%.*s' changed", nl - 5, a + 5);
                if (!strncmp(a, "input.", 6))
                    return dm_xasprintf("input '%.*s' changed upstream", nl - 6, a + 6);
                return dm_xasprintf("%.*s changed", nl, a);
            }
            return dm_xasprintf("its definition changed (%.*s)", (int)lb, b);
        }
        a += la + (ea ? 1 : 0);
        b += lb + (eb ? 1 : 0);
    }
    return dm_xstrdup("its cache entry is missing");
}

/* Reads CACHE/<key>/node.json; 0 if it is a complete entry. */
static json_t *read_entry(const dm_graph *g, const dm_node *n)
{
    json_t *j = dm_cache_entry_json(g, n->key);
    if (j && (!json_is_object(json_object_get(j, "outputs")) ||
              strcmp(json_string_value(json_object_get(j, "key")) ? json_string_value(json_object_get(j, "key")) : "", n->key))) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

static int is_forced(const dm_graph *g, const dm_node *n)
{
    for (int i = 0; i < g->nforce; i++)
        if (!strcmp(g->force[i], n->decl->name))
            return 1;
    return 0;
}

static int entry_spilled(json_t *entry, const char *port)
{
    json_t *o = json_object_get(json_object_get(entry, "outputs"), port);
    return json_is_true(json_object_get(o, "spilled"));
}

int dm_plan(dm_graph *g)
{
    for (int i = 0; i < g->nforce; i++)
        if (!dm_graph_find(g, g->force[i]))
            return dm_fail("--force %s: no node named '%s' in %s", g->force[i], g->force[i], g->pipe->path);
    json_t **entries = dm_xcalloc((size_t)g->nnodes, sizeof *entries);
    int rc = 0;
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        if ((rc = compute_key(g, n)))
            goto end;
        free(n->why);
        n->why = NULL;
        n->run = n->reproduce = 0;
        entries[i] = read_entry(g, n);
        int forced_in = 0;
        for (int k = 0; k < n->nin; k++)
            if (n->in[k].src && n->in[k].src->forced)
                forced_in = 1;
        n->forced = is_forced(g, n) || forced_in;
        if (is_forced(g, n)) {
            n->why = dm_xstrdup("forced (--force)");
        } else if (forced_in) {
            n->why = dm_xstrdup("forced (an input is forced)");
        } else if (!entries[i]) {
            char *ip = index_path(g, n);
            char *old = dm_file_exists(ip) ? dm_read_file(ip, NULL) : NULL;
            n->why = old ? why_changed(old, n->material) : dm_xstrdup("never run");
            free(old), free(ip);
        }
        n->state = n->why ? DM_STATE_STALE : DM_STATE_CACHED;
        n->run = n->state == DM_STATE_STALE;
    }
    /* A node that reruns needs its stream inputs: replayed from a spill, produced
     * again by a source (cheap and deterministic), or recomputed. */
    for (int i = g->nnodes - 1; i >= 0; i--) {
        dm_node *n = g->nodes[i];
        if (!n->run && !n->reproduce)
            continue;
        for (int k = 0; k < n->nin; k++) {
            dm_node *s = n->in[k].src;
            if (!s || s->run || s->outs[n->in[k].port].kind != DM_PORT_STREAM)
                continue;
            if (n->op->inputs[k].random) {
                /* read by row from a spill, which the cached entry must have */
                if (!entry_spilled(entries[s->index], s->outs[n->in[k].port].name)) {
                    s->run = 1;
                    s->state = DM_STATE_STALE;
                    free(s->why);
                    s->why = dm_xasprintf("output '%s' was not spilled and node '%s' reads it by row",
                                          s->outs[n->in[k].port].name, n->decl->name);
                }
                continue;
            }
            if (s->op->produce && !(s->op->spill_source && entry_spilled(entries[s->index], s->outs[n->in[k].port].name)))
                s->reproduce = 1;
            else if (s->decl->spill && !strcmp(s->decl->spill, "recompute"))
                s->reproduce = 1; /* run again in n's group from its own inputs (run.c) */
            else if (!entry_spilled(entries[s->index], s->outs[n->in[k].port].name)) {
                s->run = 1;
                s->state = DM_STATE_STALE;
                free(s->why);
                s->why = dm_xasprintf("output '%s' was not spilled and node '%s' reruns",
                                      s->outs[n->in[k].port].name, n->decl->name);
            }
        }
    }
end:
    for (int i = 0; i < g->nnodes; i++)
        json_decref(entries[i]);
    free(entries);
    return rc;
}

static char *shards_note_path(const dm_graph *g, const dm_node *n)
{
    return dm_xasprintf("%s/index/%s/%s.shards", g->cache, g->pipe->name, n->decl->name);
}

int dm_cache_note_shards(const dm_graph *g, const dm_node *n, int64_t shard_rows, int64_t count)
{
    char *dir = dm_xasprintf("%s/index/%s", g->cache, g->pipe->name), *path = shards_note_path(g, n);
    char text[96];
    int len = snprintf(text, sizeof text, "%s %lld %lld\n", n->key, (long long)shard_rows, (long long)count);
    int rc = dm_mkdir_p(dir);
    if (!rc)
        rc = dm_write_file_atomic(path, text, (size_t)len);
    free(dir), free(path);
    return rc;
}

/* For a stale node that runs in shards: how many of its shards are cached
 * (0 when unknown: its sharded group has not started with this key). */
static int shards_cached(const dm_graph *g, const dm_node *n, int64_t *done, int64_t *count)
{
    char *path = shards_note_path(g, n), *text = dm_file_exists(path) ? dm_read_file(path, NULL) : NULL;
    free(path);
    char key[40];
    long long R = 0, S = 0;
    int ok = text && sscanf(text, "%39s %lld %lld", key, &R, &S) == 3 && !strcmp(key, n->key) && R > 0 && S > 0;
    free(text);
    if (!ok)
        return 0;
    *count = S;
    *done = 0;
    for (int64_t i = 0; i < S; i++) {
        char k[33];
        dm_cache_shard_key(n->key, R, i, k);
        char *nj = dm_cache_entry_file(g, k, "node.json");
        *done += dm_file_exists(nj);
        free(nj);
    }
    return 1;
}

void dm_plan_print(dm_graph *g, FILE *f)
{
    fprintf(f, "pipeline %s (%s), cache %s\n", g->pipe->name, g->pipe->path, g->cache);
    int w = 4;
    for (int i = 0; i < g->nnodes; i++)
        if ((int)strlen(g->nodes[i]->decl->name) > w)
            w = (int)strlen(g->nodes[i]->decl->name);
    for (int i = 0; i < g->nnodes; i++) {
        dm_node *n = g->nodes[i];
        char ins[512] = "";
        for (int k = 0; k < n->nin; k++) {
            if (!n->in[k].src)
                continue;
            char one[160];
            snprintf(one, sizeof one, "%s%s.%s", ins[0] ? ", " : "", n->in[k].src->decl->name,
                     n->in[k].src->outs[n->in[k].port].name);
            strncat(ins, one, sizeof ins - strlen(ins) - 1);
        }
        fprintf(f, "  %-*s  %-12s %.12s  ", w, n->decl->name, n->op->name, n->key);
        if (g->ran && n->run)
            fprintf(f, "ran (%s)", n->why);
        else if (n->state == DM_STATE_CACHED)
            fprintf(f, "cached%s", !n->reproduce ? "" : n->op->produce ? " (source read again to feed a rerun)" : " (recomputed to feed a rerun: spill: recompute)");
        else
            fprintf(f, "stale: %s", n->why);
        int64_t done, count;
        if (!(g->ran && n->run) && n->state != DM_STATE_CACHED && shards_cached(g, n, &done, &count))
            fprintf(f, " (%lld of %lld shards cached)", (long long)done, (long long)count);
        if (ins[0])
            fprintf(f, "  <- %s", ins);
        fputc('\n', f);
    }
}

/* ---- checksums of an entry's files --------------------------------------------
 *
 * node.json records, under "files", the size and XXH3-64 of every tensor output
 * (<port>.npy) and product file of the entry:
 *
 *   "files": {"whitening.npy": {"bytes": 4736, "xxh3": "9f2c61d0e4a87b13"}, ...}
 *
 * Spills carry their own per-chunk XXH64 in their manifest (spill.c). Tensors
 * are checked when loaded for a consumer (run.c), products when published to
 * --out, spills when replayed, and all of them by `dmica cache verify`. A file
 * without a record (an entry written before checksums were) counts as bad: the
 * node is recomputed once rather than trusted. */

int dm_cache_sum_record(const char *dir, const char *file, json_t *files)
{
    char *path = dm_xasprintf("%s/%s", dir, file), hex[17];
    dm_file_sum s;
    int rc = dm_file_sum_of(path, &s);
    free(path);
    if (rc)
        return -1;
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)s.xxh3);
    json_object_set_new(files, file, json_pack("{s:I, s:s}", "bytes", (json_int_t)s.size, "xxh3", hex));
    return 0;
}

int dm_cache_sum_recorded(const json_t *entry, const char *file, const char *path, dm_file_sum *out)
{
    json_t *r = json_object_get(json_object_get(entry, "files"), file);
    json_t *b = json_object_get(r, "bytes");
    const char *hex = json_string_value(json_object_get(r, "xxh3"));
    char *end = NULL;
    if (!r)
        return dm_failc(DM_E_CORRUPT, "%s: no checksum recorded in its entry's node.json (an entry made by an "
                        "older dmica)", path);
    if (json_is_integer(b) && hex && strlen(hex) == 16) {
        errno = 0;
        out->xxh3 = strtoull(hex, &end, 16);
        out->size = json_integer_value(b);
        if (!errno && end && !*end && out->size >= 0)
            return 0;
    }
    return dm_failc(DM_E_CORRUPT, "%s: its record in node.json is malformed", path);
}

int dm_cache_check_file(const char *entry_dir, const json_t *entry, const char *file)
{
    char *path = dm_xasprintf("%s/%s", entry_dir, file);
    dm_file_sum want, got;
    int rc = dm_cache_sum_recorded(entry, file, path, &want);
    if (!rc && !dm_file_exists(path))
        rc = dm_failc(DM_E_CORRUPT, "%s: missing", path);
    if (!rc)
        rc = dm_file_sum_of(path, &got);
    if (!rc)
        rc = dm_file_sum_check(path, &want, &got);
    free(path);
    return rc;
}

static int is_key_name(const char *s)
{
    if (strlen(s) != 32)
        return 0;
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Checks one entry; calls report for each problem. Returns the number of problems. */
/* CACHE/<key>/node.json, or NULL. */
static json_t *entry_json_at(const char *cache, const char *key)
{
    char *path = dm_xasprintf("%s/%s/node.json", cache, key);
    json_error_t err;
    json_t *j = dm_file_exists(path) ? json_load_file(path, 0, &err) : NULL;
    free(path);
    return j;
}

/* bad_shards: keys of shard entries found bad already, which the segments of a
 * node's stream must not name. */
static int verify_entry(const char *cache, const char *key, dm_cache_report_fn report, void *arg,
                        char (*bad_shards)[33], int nbad_shards)
{
    char *dir = dm_xasprintf("%s/%s", cache, key), *path = dm_xasprintf("%s/node.json", dir);
    json_error_t jerr;
    json_t *j = dm_file_exists(path) ? json_load_file(path, 0, &jerr) : NULL;
    const char *node = json_string_value(json_object_get(j, "node"));
    int bad = 0;
    if (!j) {
        dm_failc(DM_E_CORRUPT, "%s: %s", path, dm_file_exists(path) ? jerr.text : "missing");
        report(arg, key, NULL, "node.json", dm_error());
        bad++;
    } else if (!json_is_object(json_object_get(j, "outputs")) ||
               strcmp(json_string_value(json_object_get(j, "key")) ? json_string_value(json_object_get(j, "key")) : "",
                      key)) {
        dm_failc(DM_E_CORRUPT, "%s: not the manifest of entry %s (no outputs, or another key)", path, key);
        report(arg, key, node, "node.json", dm_error());
        bad++;
    } else {
        const char *port;
        json_t *o, *v;
        size_t i;
        json_object_foreach(json_object_get(j, "outputs"), port, o)
        {
            const char *kind = json_string_value(json_object_get(o, "kind"));
            char *file = NULL;
            int rc = 0;
            json_t *segs = json_object_get(o, "segments"), *sg;
            size_t si;
            if (segs) { /* the shards' spills: checked as their own entries; here, that they are there */
                json_array_foreach(segs, si, sg)
                {
                    const char *sk = json_string_value(json_object_get(sg, "key"));
                    char *sp = dm_xasprintf("%s/%s/node.json", cache, sk ? sk : "?");
                    int was_bad = 0;
                    for (int b = 0; sk && b < nbad_shards; b++)
                        was_bad |= !strcmp(bad_shards[b], sk);
                    if (!rc && (!sk || !dm_file_exists(sp) || was_bad)) {
                        file = dm_xasprintf("%s.spill", port);
                        rc = dm_failc(DM_E_CORRUPT, "%s: shard %zu of output '%s' is %s", sp, si, port,
                                      was_bad ? "bad" : "missing");
                    }
                    free(sp);
                }
            } else if (kind && !strcmp(kind, "stream") && json_is_true(json_object_get(o, "spilled"))) {
                file = dm_xasprintf("%s.spill", port);
                rc = dm_spill_verify(dir, port);
            } else if (kind && !strcmp(kind, "tensor") && !json_is_false(json_object_get(o, "written"))) {
                file = dm_xasprintf("%s.npy", port);
                rc = dm_cache_check_file(dir, j, file);
            }
            if (rc) {
                report(arg, key, node, file, dm_error());
                bad++;
            }
            free(file);
        }
        json_array_foreach(json_object_get(j, "products"), i, v)
        {
            const char *prod = json_string_value(v);
            if (prod && dm_cache_check_file(dir, j, prod)) {
                report(arg, key, node, prod, dm_error());
                bad++;
            }
        }
        const char *file;
        json_object_foreach(json_object_get(j, "files"), file, v)
        {
            /* a shard's partial results (its other files are spills and products) */
            if (json_object_get(j, "shard") && dm_cache_check_file(dir, j, file)) {
                report(arg, key, node, file, dm_error());
                bad++;
            }
        }
    }
    json_decref(j);
    free(dir), free(path);
    return bad;
}

int dm_cache_verify(const char *cache, int remove, dm_cache_report_fn report, void *arg, int *nchecked)
{
    *nchecked = 0;
    struct dirent **ents;
    int n = scandir(cache, &ents, NULL, alphasort);
    if (n < 0)
        return dm_failc(DM_E_IO, "%s: cannot list the cache folder: %s", cache, strerror(errno));
    int nbad = 0, rc = 0;
    char (*bad)[33] = dm_xcalloc((size_t)n + 1, sizeof *bad);
    /* shards' entries first: a node whose stream lies in a bad shard is bad too */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n && !rc; i++) {
            const char *key = ents[i]->d_name;
            char *dir = dm_xasprintf("%s/%s", cache, key);
            struct stat st;
            if (!is_key_name(key) || stat(dir, &st) || !S_ISDIR(st.st_mode)) {
                free(dir);
                continue;
            }
            json_t *j = entry_json_at(cache, key);
            int shard = json_object_get(j, "shard") != NULL;
            json_decref(j);
            if (shard != (pass == 0)) {
                free(dir);
                continue;
            }
            ++*nchecked;
            if (verify_entry(cache, key, report, arg, bad, nbad)) {
                snprintf(bad[nbad++], 33, "%s", key);
                if (remove && dm_rm_rf(dir))
                    rc = -1;
            }
            free(dir);
        }
    free(bad);
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    return rc ? -1 : nbad;
}

/* ---- temporary folders, disk use, garbage collection ----------------------
 *
 * A temporary folder is CACHE/tmp/<key>.<pid>.<start>.<suffix>, where start is
 * the start time of process pid (field 22 of /proc/PID/stat, clock ticks since
 * boot; proc(5)). A pid is reused once its process is gone, a (pid, start
 * time) pair is not, so a folder whose pair names no live process belongs to a
 * run that was killed (SIGKILL, a power cut) and can go, and a live run's
 * folder is never taken: every run removes the dead ones before it starts
 * (dm_cache_prepare), and `dmica cache gc` does too. The check sees this
 * machine's processes only (one pid namespace): two machines that share a
 * cache folder over a network file system must not run at once.
 *
 * `dmica cache du` and `gc` read the entries (CACHE/<32 hex digits>) and
 * CACHE/index/<pipeline>/<node>, whose material hashes to the key of the
 * node's last run (key_of_material). An entry's age is the mtime of its folder:
 * set when it was made and again by every run that uses it (dm_cache_touch).
 */

/* The start time of process pid: 1 and *start when it runs, 0 when there is no
 * such process (or only its zombie), -1 when this system cannot say (no /proc). */
static int proc_start_time(long pid, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? (access("/proc/self/stat", R_OK) ? -1 : 0) : -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* field 2 is the command name in parentheses, which may hold spaces and
     * parentheses itself: count fields from the last ')' (field 3 on) */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p++;
    if (p[0] == ' ' && (p[1] == 'Z' || p[1] == 'X'))
        return 0; /* a zombie (field 3, the state): it has exited, only not been reaped */
    for (int field = 3; field < 22; field++) {
        while (*p == ' ')
            p++;
        while (*p && *p != ' ')
            p++;
    }
    char *end;
    *start = strtoull(p, &end, 10);
    return end == p ? -1 : 1;
}

/* "<pid>.<start>" of this process (recomputed after a fork). */
/* This machine, as 8 hex digits (a hash of its host name): a cache folder
 * shared by MPI ranks on several machines holds the temporary folders of
 * processes whose pids mean nothing here. */
static unsigned host_id(void)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    return (unsigned)XXH32(host, strlen(host), 0);
}

static const char *tmp_owner_tag(void)
{
    static char tag[64];
    static long tag_pid;
    long pid = (long)getpid();
    if (tag_pid != pid) {
        unsigned long long start = 0;
        if (proc_start_time(pid, &start) != 1)
            start = 0;
        snprintf(tag, sizeof tag, "%ld.%llu-%08x", pid, start, host_id());
        tag_pid = pid;
    }
    return tag;
}

/* 1 when the process that made temporary folder `name` is gone; 0 when it may
 * run (alive, on another machine, or a name this version did not make: left
 * alone). *pid gets its pid (0 if none). Names are
 * "<key>.<pid>.<start>-<host>.<suffix>", or without "-<host>" or "<start>" from
 * earlier versions (judged on this machine, by pid alone without a start). */
static int tmp_owner_gone(const char *name, long *pid)
{
    *pid = 0;
    const char *dot = strchr(name, '.');
    if (!dot || dot - name != 32)
        return 0;
    char *end;
    long p = strtol(dot + 1, &end, 10);
    if (end == dot + 1 || *end != '.' || p <= 0)
        return 0;
    const char *a = end + 1;
    unsigned long long start = strtoull(a, &end, 10);
    if (end != a && *end == '-') { /* "-<host>": another machine's process is left alone */
        char *h = end + 1;
        unsigned long host = strtoul(h, &end, 16);
        if (end != h + 8 || host != host_id())
            return 0;
    }
    if (end == a || (*end && *end != '.'))
        return 0;
    *pid = p;
    int new_form = *end == '.' && end[1];
    unsigned long long now_start;
    int r = proc_start_time(p, &now_start);
    if (r < 0 || !new_form || start == 0) /* by pid alone */
        return kill((pid_t)p, 0) < 0 && errno == ESRCH;
    return r == 0 || now_start != start;
}

/* Bytes on disk under path (du's count: allocated blocks), not following links. */
static int64_t path_bytes(const char *path)
{
    struct stat st;
    if (lstat(path, &st))
        return 0;
    int64_t sum = (int64_t)st.st_blocks * 512;
    if (!S_ISDIR(st.st_mode))
        return sum;
    DIR *d = opendir(path);
    if (!d)
        return sum;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *sub = dm_xasprintf("%s/%s", path, e->d_name);
        sum += path_bytes(sub);
        free(sub);
    }
    closedir(d);
    return sum;
}


/* "3.2 days" (malloc'd). */
static char *human_age(double s)
{
    if (s < 120)
        return dm_xasprintf("%.0f s", s < 0 ? 0 : s);
    if (s < 7200)
        return dm_xasprintf("%.0f min", s / 60);
    if (s < 2 * 86400)
        return dm_xasprintf("%.1f h", s / 3600);
    return dm_xasprintf("%.1f days", s / 86400);
}

typedef struct {
    int count;
    int64_t bytes;
} tally;

/* Temporary folders: those whose process is gone are removed (unless dry_run)
 * and counted in *gone, the others in *live. Lines for the removed ones go to
 * report (NULL: none). */
static int sweep_tmp(const char *cache, int dry_run, FILE *report, tally *gone, tally *live)
{
    char *tmp = dm_xasprintf("%s/tmp", cache);
    struct dirent **ents;
    int n = scandir(tmp, &ents, NULL, alphasort), rc = 0;
    if (n < 0) {
        rc = errno == ENOENT ? 0 : dm_failc(DM_E_IO, "%s: cannot list folder: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        long pid;
        if (strcmp(name, ".") && strcmp(name, "..")) {
            char *path = dm_xasprintf("%s/%s", tmp, name);
            int64_t bytes = gone || live || report ? path_bytes(path) : 0;
            if (tmp_owner_gone(name, &pid)) {
                if (report) {
                    char *h = dm_human_bytes(bytes);
                    fprintf(report, "%s tmp/%s  %s  (its run, pid %ld, is gone)\n",
                            dry_run ? "would remove" : "removed", name, h, pid);
                    free(h);
                }
                if (!dry_run && dm_rm_rf(path) && !rc)
                    rc = -1;
                if (gone)
                    gone->count++, gone->bytes += bytes;
            } else if (live) {
                live->count++, live->bytes += bytes;
            }
            free(path);
        }
        free(ents[i]);
    }
    free(ents);
    free(tmp);
    return rc;
}

int dm_cache_clean_tmp(const char *cache) { return sweep_tmp(cache, 0, NULL, NULL, NULL); }

void dm_cache_touch(const dm_graph *g, const char *key)
{
    char *e = dm_cache_entry(g, key);
    utimensat(AT_FDCWD, e, NULL, 0); /* best effort: a read-only cache still runs */
    free(e);
}

typedef struct {
    char key[33];
    int64_t bytes;
    time_t used; /* made or last used */
    int refs;    /* index records naming it */
    int victim;
    const char *why;
    int shard_of; /* a shard's entry: the index of its node's entry, whose size includes it
                     and with which it goes (-1: an entry of its own) */
} cache_entry;

typedef struct {
    char *pipeline, *node, key[33];
} cache_ref;

typedef struct {
    cache_entry *e;
    int n;
    cache_ref *refs;
    int nrefs;
    char (*running)[33]; /* nodes whose shards are being made (index/<pipeline>/<node>.shards) */
    int nrunning;
    int64_t meta_bytes; /* index/, filehash/ and anything else that is not an entry or tmp/ */
} cache_scan;

static int entry_cmp(const void *a, const void *b) { return strcmp(((const cache_entry *)a)->key, ((const cache_entry *)b)->key); }

static cache_entry *scan_find(cache_scan *s, const char *key)
{
    cache_entry k;
    if (!s->n)
        return NULL;
    snprintf(k.key, sizeof k.key, "%s", key);
    return bsearch(&k, s->e, (size_t)s->n, sizeof *s->e, entry_cmp);
}

static void scan_free(cache_scan *s)
{
    for (int i = 0; i < s->nrefs; i++)
        free(s->refs[i].pipeline), free(s->refs[i].node);
    free(s->refs);
    free(s->running);
    free(s->e);
}


/* The index: every CACHE/index/<pipeline>/<node> record, with its key. */
static int scan_index(const char *cache, cache_scan *s)
{
    char *index = dm_xasprintf("%s/index", cache);
    struct dirent **pipes;
    int np = scandir(index, &pipes, NULL, alphasort), rc = 0;
    if (np < 0) {
        rc = errno == ENOENT ? 0 : dm_failc(DM_E_IO, "%s: cannot list folder: %s", index, strerror(errno));
        free(index);
        return rc;
    }
    for (int i = 0; i < np; i++) {
        char *pdir = dm_xasprintf("%s/%s", index, pipes[i]->d_name);
        struct dirent **nodes;
        int nn = pipes[i]->d_name[0] == '.' ? -1 : scandir(pdir, &nodes, NULL, alphasort);
        for (int j = 0; j < nn; j++) {
            char *f = dm_xasprintf("%s/%s", pdir, nodes[j]->d_name);
            struct stat st;
            /* skip a half-written record (dm_write_file_atomic's "<path>.tmp.<pid>") */
            if (nodes[j]->d_name[0] != '.' && !strstr(nodes[j]->d_name, ".tmp.") && !stat(f, &st) &&
                S_ISREG(st.st_mode)) {
                size_t len;
                char *material = dm_read_file(f, &len);
                size_t nl = strlen(nodes[j]->d_name);
                if (material && nl > 7 && !strcmp(nodes[j]->d_name + nl - 7, ".shards")) {
                    s->running = dm_xrealloc(s->running, (size_t)(s->nrunning + 1) * sizeof *s->running);
                    if (sscanf(material, "%32s", s->running[s->nrunning]) == 1)
                        s->nrunning++;
                    free(material);
                } else if (material) {
                    s->refs = dm_xrealloc(s->refs, (size_t)(s->nrefs + 1) * sizeof *s->refs);
                    cache_ref *r = &s->refs[s->nrefs++];
                    r->pipeline = dm_xstrdup(pipes[i]->d_name);
                    r->node = dm_xstrdup(nodes[j]->d_name);
                    key_of_material(material, len, r->key);
                    free(material);
                }
            }
            free(f);
            free(nodes[j]);
        }
        if (nn >= 0)
            free(nodes);
        free(pdir);
        free(pipes[i]);
    }
    free(pipes);
    free(index);
    return rc;
}

/* Reads the cache folder: its entries with sizes and ages, and the index. */
static int scan_cache(const char *cache, cache_scan *s)
{
    memset(s, 0, sizeof *s);
    struct stat st;
    if (stat(cache, &st))
        return dm_failc(DM_E_IO, "%s: no cache folder here: %s", cache, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return dm_fail("%s is not a folder (give the cache folder with --cache)", cache);
    char *index = dm_xasprintf("%s/index", cache), *tmp = dm_xasprintf("%s/tmp", cache);
    int looks = dm_file_exists(index) || dm_file_exists(tmp);
    free(index), free(tmp);
    if (!looks)
        return dm_fail("%s is not a dmica cache (it has no index/ or tmp/ folder)", cache);
    struct dirent **ents;
    int n = scandir(cache, &ents, NULL, alphasort);
    if (n < 0)
        return dm_failc(DM_E_IO, "%s: cannot list folder: %s", cache, strerror(errno));
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        char *path = dm_xasprintf("%s/%s", cache, name);
        if (!strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "tmp")) {
        } else if (is_key_name(name) && !stat(path, &st) && S_ISDIR(st.st_mode)) {
            s->e = dm_xrealloc(s->e, (size_t)(s->n + 1) * sizeof *s->e);
            cache_entry *e = &s->e[s->n++];
            memset(e, 0, sizeof *e);
            snprintf(e->key, sizeof e->key, "%s", name);
            e->shard_of = -1;
            e->bytes = path_bytes(path);
            e->used = st.st_mtime;
        } else {
            s->meta_bytes += path_bytes(path);
        }
        free(path);
        free(ents[i]);
    }
    free(ents);
    if (s->n) /* sorted by scandir already; scan_find's bsearch relies on it */
        qsort(s->e, (size_t)s->n, sizeof *s->e, entry_cmp);
    if (scan_index(cache, s)) {
        scan_free(s);
        return -1;
    }
    for (int i = 0; i < s->nrefs; i++) {
        cache_entry *e = scan_find(s, s->refs[i].key);
        if (e)
            e->refs++;
    }
    /* A shard's entry belongs to its node's entry (its size counts there, and
     * it goes with it); while the node is being made, it is used if the node's
     * shards are being made (index/<pipeline>/<node>.shards) */
    for (int i = 0; i < s->n; i++) {
        json_t *j = entry_json_at(cache, s->e[i].key);
        const char *of = json_string_value(json_object_get(json_object_get(j, "shard"), "of"));
        cache_entry *node = of ? scan_find(s, of) : NULL;
        if (node) {
            s->e[i].shard_of = (int)(node - s->e);
        } else {
            for (int r = 0; of && r < s->nrunning && !s->e[i].refs; r++)
                s->e[i].refs += !strcmp(s->running[r], of);
        }
        json_decref(j);
    }
    for (int i = 0; i < s->n; i++)
        if (s->e[i].shard_of >= 0)
            s->e[s->e[i].shard_of].bytes += s->e[i].bytes;
    return 0;
}

typedef struct {
    const cache_ref *ref;
    int64_t bytes; /* -1: its entry is gone */
} du_row;

static int du_row_cmp(const void *a, const void *b)
{
    const du_row *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? 1 : -1;
    return strcmp(x->ref->node, y->ref->node);
}

int dm_cache_du(const char *cache, FILE *f)
{
    cache_scan s;
    if (scan_cache(cache, &s))
        return -1;
    tally gone = {0}, live = {0};
    if (sweep_tmp(cache, 1, NULL, &gone, &live)) {
        scan_free(&s);
        return -1;
    }
    int64_t entries = 0, unref = 0;
    int nunref = 0, n = 0;
    for (int i = 0; i < s.n; i++) {
        if (s.e[i].shard_of >= 0)
            continue; /* counted in its node's entry */
        n++;
        entries += s.e[i].bytes;
        if (!s.e[i].refs)
            unref += s.e[i].bytes, nunref++;
    }
    int64_t total = entries + gone.bytes + live.bytes + s.meta_bytes;
    char *h = dm_human_bytes(total), *he = dm_human_bytes(entries);
    fprintf(f, "cache %s: %s (%d %s: %s)\n", cache, h, n, n == 1 ? "entry" : "entries", he);
    free(h), free(he);
    du_row *rows = dm_xcalloc((size_t)s.nrefs + 1, sizeof *rows);
    for (int i = 0; i < s.nrefs;) {
        int j = i, nr = 0, w = 4;
        int64_t sum = 0;
        for (; j < s.nrefs && !strcmp(s.refs[j].pipeline, s.refs[i].pipeline); j++) {
            cache_entry *e = scan_find(&s, s.refs[j].key);
            rows[nr].ref = &s.refs[j];
            rows[nr].bytes = e ? e->bytes : -1;
            /* two nodes of one pipeline may share an entry: count it once */
            int dup = 0;
            for (int k = i; k < j && e; k++)
                dup |= !strcmp(s.refs[k].key, s.refs[j].key);
            if (e && !dup)
                sum += e->bytes;
            if ((int)strlen(s.refs[j].node) > w)
                w = (int)strlen(s.refs[j].node);
            nr++;
        }
        qsort(rows, (size_t)nr, sizeof *rows, du_row_cmp);
        h = dm_human_bytes(sum);
        fprintf(f, "  pipeline %s (%d node%s): %s\n", s.refs[i].pipeline, nr, nr == 1 ? "" : "s", h);
        free(h);
        for (int k = 0; k < nr; k++) {
            char *b = rows[k].bytes < 0 ? dm_xstrdup("missing") : dm_human_bytes(rows[k].bytes);
            fprintf(f, "    %-*s  %10s  %.12s%s\n", w, rows[k].ref->node, b, rows[k].ref->key,
                    rows[k].bytes < 0 ? "  (its entry was removed; the node reruns)" : "");
            free(b);
        }
        i = j;
    }
    free(rows);
    h = dm_human_bytes(unref);
    fprintf(f, "  unreferenced: %d %s, %s (no pipeline's last run uses them; `dmica cache gc` removes them)\n",
            nunref, nunref == 1 ? "entry" : "entries", h);
    free(h);
    h = dm_human_bytes(live.bytes);
    he = dm_human_bytes(gone.bytes);
    fprintf(f, "  temporary: %d %s of runs in progress, %s; %d of runs that are gone, %s\n", live.count,
            live.count == 1 ? "folder" : "folders", h, gone.count, he);
    free(h), free(he);
    h = dm_human_bytes(s.meta_bytes);
    fprintf(f, "  index and file hashes: %s\n", h);
    free(h);
    scan_free(&s);
    return 0;
}

static int used_cmp(const void *a, const void *b)
{
    const cache_entry *x = *(cache_entry *const *)a, *y = *(cache_entry *const *)b;
    return x->used != y->used ? (x->used < y->used ? -1 : 1) : strcmp(x->key, y->key);
}

/* Removes an entry: renamed into tmp/ under this process's name first, so an
 * entry is either whole or gone, and a removal cut short is a temporary folder
 * that the next run sweeps. */
static int remove_entry(const char *cache, const char *key)
{
    char *path = dm_xasprintf("%s/%s", cache, key);
    char *aside = dm_xasprintf("%s/tmp/%s.%s.gc", cache, key, tmp_owner_tag());
    int rc = 0;
    if (rename(path, aside)) {
        if (errno != ENOENT)
            rc = dm_failc(DM_E_IO, "%s: cannot move it to %s: %s", path, aside, strerror(errno));
    } else {
        rc = dm_rm_rf(aside);
    }
    free(path), free(aside);
    return rc;
}

int dm_cache_gc(const char *cache, const dm_cache_gc_opts *o, FILE *f)
{
    cache_scan s;
    if (scan_cache(cache, &s))
        return -1;
    char *tmp = dm_xasprintf("%s/tmp", cache);
    int rc = dm_mkdir_p(tmp);
    free(tmp);
    if (rc) {
        scan_free(&s);
        return -1;
    }
    time_t now = time(NULL);
    int by_rule = o->older_than >= 0 || o->max_size >= 0;
    for (int i = 0; i < s.n; i++) {
        cache_entry *e = &s.e[i];
        if (e->shard_of >= 0) {
            continue; /* goes with its node's entry */
        } else if (!by_rule && !e->refs) {
            e->victim = 1;
            e->why = "no pipeline's last run uses it";
        } else if (o->older_than >= 0 && difftime(now, e->used) > o->older_than) {
            e->victim = 1;
            e->why = "not used for longer than --older-than";
        }
    }
    if (o->max_size >= 0) {
        cache_entry **by_age = dm_xcalloc((size_t)s.n + 1, sizeof *by_age);
        int64_t kept = 0;
        int nage = 0;
        for (int i = 0; i < s.n; i++) {
            if (s.e[i].shard_of >= 0)
                continue;
            by_age[nage++] = &s.e[i];
            kept += s.e[i].victim ? 0 : s.e[i].bytes;
        }
        qsort(by_age, (size_t)nage, sizeof *by_age, used_cmp);
        for (int i = 0; i < nage && kept > o->max_size; i++)
            if (!by_age[i]->victim) {
                by_age[i]->victim = 1;
                by_age[i]->why = "least recently used, over --max-size";
                kept -= by_age[i]->bytes;
            }
        free(by_age);
    }
    tally removed = {0}, kept = {0};
    for (int i = 0; i < s.n && !rc; i++) {
        cache_entry *e = &s.e[i];
        if (e->shard_of >= 0)
            continue;
        if (!e->victim) {
            kept.count++, kept.bytes += e->bytes;
            continue;
        }
        char *h = dm_human_bytes(e->bytes), *age = human_age(difftime(now, e->used));
        fprintf(f, "%s %s  %s  last used %s ago: %s\n", o->dry_run ? "would remove" : "removed", e->key, h, age, e->why);
        free(h), free(age);
        /* the node first: an entry never lists shards that are gone (shards left by
         * an interruption are valid shards, and the next gc takes them) */
        if (!o->dry_run)
            rc = remove_entry(cache, e->key);
        for (int k = 0; k < s.n && !rc && !o->dry_run; k++)
            if (s.e[k].shard_of == i)
                rc = remove_entry(cache, s.e[k].key);
        removed.count++, removed.bytes += e->bytes;
    }
    tally gone = {0}, live = {0};
    if (!rc)
        rc = sweep_tmp(cache, o->dry_run, f, &gone, &live);
    if (!rc) {
        char *hr = dm_human_bytes(removed.bytes), *ht = dm_human_bytes(gone.bytes),
             *hk = dm_human_bytes(kept.bytes + live.bytes + s.meta_bytes);
        fprintf(f, "dmica cache gc: %s %d %s (%s) and %d temporary %s of runs that are gone (%s); %s %s in %d %s%s\n",
                o->dry_run ? "would remove" : "removed", removed.count, removed.count == 1 ? "entry" : "entries", hr,
                gone.count, gone.count == 1 ? "folder" : "folders", ht, o->dry_run ? "would keep" : "kept", hk,
                kept.count, kept.count == 1 ? "entry" : "entries", o->dry_run ? " (--dry-run: nothing removed)" : "");
        free(hr), free(ht), free(hk);
    }
    scan_free(&s);
    return rc;
}
