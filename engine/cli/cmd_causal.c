/*
 * cmd_causal.c: `dmica causal RUN_DIR`, the causal tests (issue 14;
 * docs/causal.md) of a finished run.
 *
 * `dmica run --out RUN_DIR` leaves the pipeline as it ran in
 * RUN_DIR/pipeline.yaml. This command reads it, adds a `causal` node wired to
 * the run's own nodes (the gpt2 node's token windows and model, the SAE, the
 * ica_compare node's filters and mixing, and the mean and PCA it used), and
 * runs it through the engine with the run's cache: every node but the new one
 * is cached, so only the ablations run, and causal.json and causal_windows.npy
 * land in RUN_DIR. Run it from the folder the run was started in (the
 * pipeline's relative paths are relative to it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "engine.h"

static const dm_arg_spec causal_specs[] = {
    {"tokens", DM_ARG_INT, "N", "16384", 0, 2, 1e12, 0, "tokens of the run's windows to ablate on"},
    {"nulls", DM_ARG_INT, "N", "100", 0, 0, 1e6, 0, "random directions of each kind (isotropic, covariance)"},
    {"seed", DM_ARG_INT, "S", "0", 0, 0, 4294967295.0, 0, "seed of the null directions"},
    {"energy-levels", DM_ARG_INT, "L", "8", 0, 0, 1e6, 0,
     "nulls scaled to L energies and interpolated (0: to each component's own; docs/causal.md)"},
    {"rows", DM_ARG_INT, "R", "512", 0, 1, 1e9, 0, "token rows per model call (logits: rows x vocabulary floats)"},
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "cache folder (default: the run's pipeline's, else $DMICA_CACHE, else .dmica-cache)"},
    {"memory", DM_ARG_SIZE, "SIZE", NULL, 0, 1, 0, 0, "memory budget (default: the run's pipeline's, else 1G)"},
    {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},
    {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output"},
    {NULL},
};

static const dm_arg_cmd causal_cmd = {
    "causal", "RUN_DIR [--tokens 16384] [--nulls 100] [--energy-levels 8] [--seed 0] [options]",
    "The causal tests of a finished run (docs/causal.md): each ICA component removed at the SAE's\n"
    "hook against null directions of the same energy, a same-rank PCA control, and the SAE's splice\n"
    "scores, over the first tokens of the run's windows. Reads RUN_DIR/pipeline.yaml (written by\n"
    "dmica run --out), reuses the run's cache, writes RUN_DIR/causal.json and causal_windows.npy.\n",
    causal_specs, "RUN_DIR", 1, 1,
};

/* 1 if op is one of the names in ops ("gpt2|model"). */
static int op_in(const char *op, const char *ops)
{
    size_t n = strlen(op);
    for (const char *s = ops; s; s = strchr(s, '|') ? strchr(s, '|') + 1 : NULL)
        if (!strncmp(s, op, n) && (s[n] == '|' || !s[n]))
            return 1;
    return 0;
}

/* The one node whose operator is in ops; NULL with the error recorded. */
static const dm_node_decl *by_op(const dm_pipeline *p, const char *op, const char *path)
{
    const dm_node_decl *found = NULL;
    for (int i = 0; i < p->nnodes; i++)
        if (op_in(p->nodes[i].op, op)) {
            if (found) {
                dm_failc(DM_E_INPUT, "%s: two %s nodes ('%s', '%s'): which one the causal tests follow is not clear",
                         path, op, found->name, p->nodes[i].name);
                return NULL;
            }
            found = &p->nodes[i];
        }
    if (!found)
        dm_failc(DM_E_INPUT, "%s: no %s node: the causal tests need a run with a language model, an SAE and the ICA "
                 "comparison",
                 path, op);
    return found;
}

static const char *kv(const dm_kv *v, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].key, key))
            return v[i].value;
    return NULL;
}

/* The causal node's YAML, wired to p's nodes; NULL with the error recorded. */
static char *causal_node(const dm_pipeline *p, const char *path, const dm_args *a)
{
    const dm_node_decl *lm = by_op(p, "gpt2|model", path), *sae = lm ? by_op(p, "sae", path) : NULL;
    const dm_node_decl *cmp = sae ? by_op(p, "ica_compare", path) : NULL;
    if (!cmp)
        return NULL;
    for (int i = 0; i < p->nnodes; i++)
        if (!strcmp(p->nodes[i].name, "causal") || !strcmp(p->nodes[i].op, "causal")) {
            dm_failc(DM_E_INPUT, "%s: the run has its causal stage already (node '%s', results in causal.json); for "
                                 "another study run its pipeline again with --set %s.tokens=N (or nulls, "
                                 "energy_levels, seed): the rest comes from the cache",
                     path, p->nodes[i].name, p->nodes[i].name);
            return NULL;
        }
    const char *windows = kv(lm->inputs, lm->ninputs, "tokens"), *model = kv(lm->params, lm->nparams, "model");
    const char *mean = kv(cmp->inputs, cmp->ninputs, "mean"), *ev = kv(cmp->inputs, cmp->ninputs, "eigenvalues");
    const char *comp = kv(cmp->inputs, cmp->ninputs, "components");
    const char *sae_in = kv(sae->inputs, sae->ninputs, "sae"), *sae_param = kv(sae->params, sae->nparams, "sae");
    if (!windows || !model || !mean || !ev || !comp || (!sae_in && !sae_param)) {
        dm_failc(DM_E_INPUT, "%s: node '%s' needs its tokens and model, node '%s' its mean, eigenvalues and "
                             "components, node '%s' its SAE, for the causal tests to follow them",
                 path, lm->name, cmp->name, sae->name);
        return NULL;
    }
    char *qw = dm_yaml_quote(windows), *qm = dm_yaml_quote(model), *qmean = dm_yaml_quote(mean);
    char *qev = dm_yaml_quote(ev), *qc = dm_yaml_quote(comp), *qs = dm_yaml_quote(sae_in ? sae_in : sae_param);
    char *y = dm_xasprintf("  causal:\n    op: causal\n"
                           "    inputs: {windows: %s, filters: %s.filters, mixing: %s.mixing, mean: %s, eigenvalues: %s,"
                           " components: %s%s%s}\n"
                           "    params: {model: %s, tokens: %lld, nulls: %lld, seed: %lld, energy_levels: %lld, rows: %lld%s%s}\n",
                           qw, cmp->name, cmp->name, qmean, qev, qc, sae_in ? ", sae: " : "", sae_in ? qs : "", qm,
                           (long long)dm_arg_int(a, "tokens"), (long long)dm_arg_int(a, "nulls"),
                           (long long)dm_arg_int(a, "seed"), (long long)dm_arg_int(a, "energy-levels"),
                           (long long)dm_arg_int(a, "rows"),
                           sae_in ? "" : ", sae: ", sae_in ? "" : qs);
    free(qw), free(qm), free(qmean), free(qev), free(qc), free(qs);
    return y;
}

int dm_cmd_causal(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&causal_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *run = a.pos[0];
    char *path = dm_xasprintf("%s/pipeline.yaml", run), *node = NULL, *yaml = NULL, *text = NULL;
    size_t len = 0;
    dm_pipeline *p = dm_pipeline_load(path);
    if (p && (node = causal_node(p, path, &a))) {
        /* the pipeline as it ran, then the new node (the written form ends with its nodes) */
        FILE *f = open_memstream(&text, &len);
        dm_pipeline_write(p, f);
        fclose(f);
        yaml = dm_xasprintf("%s%s", text, node);
    }
    if (!yaml) {
        fprintf(stderr, "dmica causal: %s\n", dm_error());
        rc = dm_error_exit();
    } else {
        dm_run_opts ro = {run, dm_arg_str(&a, "cache"), dm_arg_int(&a, "memory"), (int)dm_arg_int(&a, "threads"),
                          dm_arg_flag(&a, "quiet")};
        rc = dm_run_yaml(path, yaml, &ro);
    }
    free(text), free(yaml), free(node), free(path);
    dm_pipeline_free(p);
    dm_args_free(&a);
    return rc;
}
