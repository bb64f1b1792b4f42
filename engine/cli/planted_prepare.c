/*
 * planted_prepare.c: writes the SAE that `planted` nodes are analysed with before
 * the pipeline is bound.
 */
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "engine.h"
#include "planted.h"

extern const dm_op dm_op_planted;

/* A planted node's parameter as written, else the operator's default. */
static const char *kv(const dm_node_decl *d, const char *key)
{
    for (int i = 0; i < d->nparams; i++)
        if (!strcmp(d->params[i].key, key))
            return d->params[i].value;
    for (int i = 0; dm_op_planted.params[i].name; i++)
        if (!strcmp(dm_op_planted.params[i].name, key))
            return dm_op_planted.params[i].def;
    return "";
}

/* Writes the SAE of every `planted` node of p into its `sae` folder (see the file
 * comment), unless it is there already with the same settings. */
int dm_planted_prepare(const dm_pipeline *p)
{
    for (int i = 0; i < p->nnodes; i++) {
        const dm_node_decl *d = &p->nodes[i];
        if (strcmp(d->op, "planted") || !*kv(d, "sae"))
            continue;
        const char *dir = kv(d, "sae");
        int64_t dd = atoll(kv(d, "d")), m = atoll(kv(d, "atoms")), missed = atoll(kv(d, "missed"));
        double th = atof(kv(d, "threshold"));
        uint64_t seed = (uint64_t)atoll(kv(d, "seed"));
        if (dd < 2 || missed < 1 || missed >= m)
            return dm_fail("%s: node '%s': bad planted settings (d %lld, atoms %lld, missed %lld)", p->path, d->name,
                           (long long)dd, (long long)m, (long long)missed);
        int rc = dm_planted_write_sae(dir, dd, m, missed, th, seed);
        if (rc)
            return dm_fail_prefix("writing the planted SAE of node '%s'", d->name);
    }
    return 0;
}
