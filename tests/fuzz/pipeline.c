/*
 * pipeline.c: fuzzes the pipeline reader (engine/core/pipeline.c and
 * template.c): YAML, the top-level keys, nodes, params, inputs, spill and
 * publish settings, templates and their expansion; then what `dmica plan
 * --expanded` writes must read back, and the pipeline is bound
 * (engine/core/graph.c: operators, parameters, connections, cycles, shapes).
 *
 * Binding runs operators' infer(), which may read files the pipeline names
 * (an .npy source's header, an SAE's cfg.json): read only, nothing is written.
 */
#include "fuzz.h"
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_pipeline *p = dm_pipeline_parse("fuzz.yaml", (const char *)data, size);
    if (!p) {
        fz_end();
        return 0;
    }
    /* plan --expanded: its YAML reads back to as many nodes. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    dm_pipeline_write(p, f);
    fclose(f);
    dm_pipeline *q = dm_pipeline_parse("expanded.yaml", text, len);
    if (!q || q->nnodes != p->nnodes) {
        fprintf(stderr, "plan --expanded does not read back: %s\n--- written:\n%s", q ? "node count" : dm_error(),
                text);
        abort();
    }
    dm_pipeline_free(q);
    free(text);
    if (p->nnodes > 0) {
        char *set = dm_xasprintf("%s.rows=1", p->nodes[0].name);
        dm_pipeline_set(p, set);
        free(set);
    }
    dm_graph *g = dm_graph_build(p);
    dm_graph_free(g); /* NULL when binding failed */
    dm_pipeline_free(p);
    fz_end();
    return 0;
}
