/*
 * registry.c: the operators that exist. The engine finds operators only here,
 * by the name a pipeline gives in `op:`.
 */
#include <string.h>

#include "op.h"

extern const dm_op dm_op_npy, dm_op_npy_sink, dm_op_synthetic;
extern const dm_op dm_op_moments, dm_op_covariance, dm_op_pca, dm_op_project;

static const dm_op *const registry[] = {
    &dm_op_npy, &dm_op_synthetic, &dm_op_npy_sink, &dm_op_moments, &dm_op_covariance, &dm_op_pca, &dm_op_project, NULL,
};

const dm_op *const *dm_registry(void) { return registry; }

const dm_op *dm_find_op(const char *name)
{
    for (int i = 0; registry[i]; i++)
        if (!strcmp(registry[i]->name, name))
            return registry[i];
    return NULL;
}
