/*
 * registry.c: the operators that exist. The engine finds operators only here,
 * by the name a pipeline gives in `op:`.
 * The references are strong, so any program that runs pipelines (a test
 * calling a command, say) links every operator.
 */
#include <string.h>

#include "op.h"

extern const dm_op dm_op_npy, dm_op_npy_sink, dm_op_synthetic;
extern const dm_op dm_op_moments, dm_op_covariance, dm_op_pca, dm_op_project, dm_op_topk;
extern const dm_op dm_op_report, dm_op_text, dm_op_planted, dm_op_planted_sae, dm_op_sae_config;
extern const dm_op dm_op_gpt2, dm_op_sae, dm_op_fastica, dm_op_ica_compare;

static const dm_op *const all[] = {
    &dm_op_npy, &dm_op_synthetic, &dm_op_planted_sae, &dm_op_planted, &dm_op_sae_config, &dm_op_text, &dm_op_gpt2, &dm_op_sae, &dm_op_npy_sink, &dm_op_moments,
    &dm_op_covariance, &dm_op_pca, &dm_op_project, &dm_op_fastica, &dm_op_ica_compare, &dm_op_topk, &dm_op_report,
};
#define NALL (sizeof all / sizeof all[0])
static const dm_op *registry[NALL + 1];

const dm_op *const *dm_registry(void)
{
    if (!registry[0]) {
        size_t n = 0;
        for (size_t i = 0; i < NALL; i++)
            if (all[i])
                registry[n++] = all[i];
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
