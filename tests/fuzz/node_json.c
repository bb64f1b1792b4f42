/*
 * node_json.c: fuzzes what the engine reads of a cache entry's node.json
 * (engine/core/cache.c: dm_cache_entry_json, the plan's checks of an entry, the
 * spilled flags of its outputs), by planning a small pipeline (a spilled source,
 * covariance, pca) against a cache whose every entry holds the input as its
 * node.json. "@KEY@" in the input is replaced by the entry's key, which the
 * fuzzer could not guess.
 *
 * Only planning: running would publish the products an entry lists, and a
 * fuzzer must not write files named by its input on the machine it runs on.
 */
#include "fuzz.h"
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char pipeline[] = "name: fz\n"
                               "nodes:\n"
                               "  src:\n"
                               "    op: synthetic\n"
                               "    params: {rows: 300, cols: 4, seed: 1}\n"
                               "    spill: always\n"
                               "  cov:\n"
                               "    op: covariance\n"
                               "    inputs: {x: src}\n"
                               "    params: {file: cov.npy}\n"
                               "  pca:\n"
                               "    op: pca\n"
                               "    inputs: {covariance: cov.covariance}\n"
                               "    params: {k: 2}\n";

static dm_pipeline *pipe_;
static dm_graph *graph;
static FILE *devnull;

static void setup(void)
{
    pipe_ = dm_pipeline_parse("fz.yaml", pipeline, sizeof pipeline - 1);
    graph = pipe_ ? dm_graph_build(pipe_) : NULL;
    devnull = fopen("/dev/null", "w");
    if (!graph || !devnull) {
        fprintf(stderr, "node_json: %s\n", dm_error());
        abort();
    }
    free(graph->cache);
    graph->cache = dm_xasprintf("%s/cache", fz_dir());
    if (dm_plan(graph)) { /* computes the keys */
        fprintf(stderr, "node_json: %s\n", dm_error());
        abort();
    }
}

/* data with every "@KEY@" replaced by key (malloc'd, *len bytes). */
static char *with_key(const uint8_t *data, size_t size, const char *key, size_t *len)
{
    size_t kl = strlen(key), n = 0;
    char *out = malloc(size / 5 * kl + size + 1);
    for (size_t i = 0; i < size;) {
        if (size - i >= 5 && !memcmp(data + i, "@KEY@", 5)) {
            memcpy(out + n, key, kl);
            n += kl, i += 5;
        } else
            out[n++] = (char)data[i++];
    }
    *len = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!graph)
        setup();
    for (int i = 0; i < graph->nnodes; i++) {
        dm_node *n = graph->nodes[i];
        size_t len;
        char *text = with_key(data, size, n->key, &len);
        char name[64];
        snprintf(name, sizeof name, "cache/%s/node.json", n->key);
        free(fz_write(name, text, len));
        free(text);
    }
    if (dm_plan(graph) == 0)
        dm_plan_print(graph, devnull);
    fz_end();
    return 0;
}
