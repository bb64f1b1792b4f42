/*
 * registry.c: the operators that exist. The engine finds operators only here,
 * by the name a pipeline gives in `op:`. The references are strong, so any
 * program that runs pipelines (a test calling a command, say) links every
 * operator. Tests add their own (mock) operators with dm_registry_add.
 */
#include <string.h>

#include "op.h"

extern const dm_op dm_op_npy, dm_op_npy_sink, dm_op_synthetic;
extern const dm_op dm_op_moments, dm_op_covariance, dm_op_pca, dm_op_project, dm_op_topk;
extern const dm_op dm_op_report, dm_op_text, dm_op_planted, dm_op_planted_sae, dm_op_sae_config;
extern const dm_op dm_op_gpt2, dm_op_model, dm_op_sae, dm_op_fastica, dm_op_rica, dm_op_ica_compare, dm_op_matmul, dm_op_causal;

static const dm_op *const all[] = {
    &dm_op_npy,     &dm_op_synthetic, &dm_op_planted_sae, &dm_op_planted, &dm_op_sae_config, &dm_op_text,
    &dm_op_gpt2,    &dm_op_model, &dm_op_sae,       &dm_op_npy_sink,    &dm_op_moments, &dm_op_covariance, &dm_op_pca, &dm_op_project, &dm_op_fastica, &dm_op_rica, &dm_op_ica_compare, &dm_op_causal, &dm_op_matmul, &dm_op_topk, &dm_op_report,
};
#define NALL (sizeof all / sizeof all[0])
static const dm_op **registry; /* NULL-terminated: the operators above, then added ones */
static size_t nregistry;

const dm_op *const *dm_registry(void)
{
    if (!registry) {
        registry = dm_xcalloc(NALL + 1, sizeof *registry);
        for (size_t i = 0; i < NALL; i++)
            registry[nregistry++] = all[i];
    }
    return registry;
}

const dm_op *dm_find_op(const char *name)
{
    const dm_op *const *r = dm_registry();
    for (int i = 0; r[i]; i++)
        if (!strcmp(r[i]->name, name))
            return r[i];
    return NULL;
}

int dm_registry_add(const dm_op *op)
{
    if (dm_find_op(op->name))
        return dm_failc(DM_E_INTERNAL, "operator '%s' is registered already", op->name);
    registry = dm_xrealloc(registry, (nregistry + 2) * sizeof *registry);
    registry[nregistry++] = op;
    registry[nregistry] = NULL;
    return 0;
}
