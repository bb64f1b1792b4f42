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
 * An entry is built in CACHE/tmp/<key>.<pid>.<node index> and renamed into
 * place when the node succeeds, so an entry that exists is complete.
 * CACHE/index/<pipeline>/<node> keeps the material of the node's last run, to
 * say why a node is stale, and CACHE/filehash/ memoises the content identity of
 * input files (fs.c). This file owns that layout: every path under CACHE is
 * made by a function here.
 */
#include "engine.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs.h"
#include "spill.h"

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
    return rc;
}

char *dm_cache_tmp_dir(const dm_graph *g, const dm_node *n)
{
    /* the node's index too: two nodes may share a key (the same computation twice) */
    return dm_xasprintf("%s/tmp/%s.%d.%d", g->cache, n->key, (int)getpid(), n->index);
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

static int dm_cache_record(const dm_graph *g, const dm_node *n)
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
    XXH128_hash_t h = XXH3_128bits(b.s, b.len);
    snprintf(n->key, sizeof n->key, "%016llx%016llx", (unsigned long long)h.high64, (unsigned long long)h.low64);
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
            fprintf(f, "cached%s", n->reproduce ? " (source read again to feed a rerun)" : "");
        else
            fprintf(f, "stale: %s", n->why);
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
static int verify_entry(const char *cache, const char *key, dm_cache_report_fn report, void *arg)
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
            if (kind && !strcmp(kind, "stream") && json_is_true(json_object_get(o, "spilled"))) {
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
    for (int i = 0; i < n && !rc; i++) {
        const char *key = ents[i]->d_name;
        char *dir = dm_xasprintf("%s/%s", cache, key);
        struct stat st;
        if (!is_key_name(key) || stat(dir, &st) || !S_ISDIR(st.st_mode)) {
            free(dir);
            continue;
        }
        ++*nchecked;
        if (verify_entry(cache, key, report, arg)) {
            nbad++;
            if (remove && dm_rm_rf(dir))
                rc = -1;
        }
        free(dir);
    }
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    return rc ? -1 : nbad;
}
