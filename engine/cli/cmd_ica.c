/*
 * cmd_ica.c: `dmica ica`, whitening and FastICA of a .npy matrix (a generated pipeline).
 */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "commands.h"
#include "engine.h"
#include "npy.h"

static const dm_arg_spec ica_specs[] = {
    {"in", DM_ARG_PATH, "X.npy", NULL, 1, 0, 0, 0, "rows x d, float32 or float16"},
    {"components", DM_ARG_INT, "K", NULL, 1, 1, 1e9, 0, "ICA components (whitening to the top K principal components)"},
    {"out", DM_ARG_PATH, "DIR", NULL, 1, 0, 0, 0, "results folder"},
    {"seed", DM_ARG_INT, "S", "42", 0, 0, 9e18, 0, "seed of the first run (sklearn's random_state)"},
    {"seeds", DM_ARG_INT, "N", "3", 0, 1, 1000, 0, "runs from seeds S, S+1, ... for stability"},
    {"max-iter", DM_ARG_INT, "M", "1000", 0, 1, 1e9, 0, "iterations at most"},
    {"tol", DM_ARG_FLOAT, "T", "1e-4", 0, 0, 1, 1, "tolerance"},
    {"fun", DM_ARG_STRING, "F", "logcosh", 0, 0, 0, 0, "logcosh, exp or cube"},
    {"warm-start", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "iterate on a 100000-row subsample first"},
    {"decoder", DM_ARG_PATH, "W.npy", NULL, 0, 0, 0, 0, "SAE W_dec (d_sae x d) to compare the patterns with"},
    {"memory", DM_ARG_SIZE, "SIZE", "1G", 0, 1, 0, 0, "memory budget; the whitened data stays in RAM if it fits"},
    {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "cache folder (default $DMICA_CACHE, else .dmica-cache)"},
    {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output"},
    {NULL},
};

static const dm_arg_cmd ica_cmd = {
    "ica", "--in X.npy --components K --out DIR [options]",
    "Centres X (rows x d, float32 or float16), whitens it with its top K principal components and runs\n"
    "parallel FastICA (scikit-learn's semantics) from several seeds in the same passes. Writes\n"
    "  DIR/directions.npy       K x d patterns (unit rows): what each component writes into X's space\n"
    "  DIR/unmixing.npy         K x d filters: sources = unmixing @ (x - mean)\n"
    "  DIR/mixing.npy           d x K: x - mean ~= mixing @ sources\n"
    "  DIR/unscaled_patterns.npy  mixing^T @ components without the eigenvalue scaling (for comparison)\n"
    "  DIR/ica.json             iterations, convergence per seed, stability, timings\n"
    "  DIR/ica_compare.json     variance explained (and the SAE comparison with --decoder)\n"
    "  DIR/pca.json             the whitening's eigenvalues\n",
    ica_specs, NULL, 0, 0,
};

int dm_cmd_ica(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&ica_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *in = dm_arg_str(&a, "in"), *decoder = dm_arg_str(&a, "decoder");
    long long k = dm_arg_int(&a, "components");
    int64_t memory = dm_arg_int(&a, "memory");
    if (!decoder)
        decoder = "";
    /* Check the input's shape here, to say what is wrong in the user's terms. */
    dm_npy_map *map = dm_npy_open(in);
    if (!map) {
        fprintf(stderr, "dmica ica: %s\n", dm_error());
        dm_args_free(&a);
        return 1;
    }
    const dm_npy_header *h = dm_npy_hdr(map);
    int ndim = h->ndim;
    int64_t rows = ndim >= 1 ? h->shape[0] : 0, d = ndim == 2 ? h->shape[1] : 0;
    dm_npy_close(map);
    if (ndim != 2)
        rc = dm_failc(DM_E_SHAPE, "%s: expected a 2-D matrix (rows x d), got %d dimensions", in, ndim);
    else if (k > d)
        rc = dm_failc(DM_E_INPUT, "--components %lld is more than the %lld columns of %s", k, (long long)d, in);
    else if (rows < 2)
        rc = dm_failc(DM_E_INPUT, "%s has %lld rows: FastICA needs at least 2", in, (long long)rows);
    if (rc) {
        fprintf(stderr, "dmica ica: %s\n", dm_error());
        dm_args_free(&a);
        return 1;
    }
    /* in RAM if the whitened data fits the budget less room for the engine's buffers */
    int64_t ram = memory - (int64_t)(160 << 20);
    /* z in RAM: fastica reads it once, in the whitening pass, and nothing is
     * spilled (the covariance pass and the whitening pass are the only reads of
     * X); otherwise z is spilled and replayed once per iteration. */
    int in_ram = ram > 0 && rows <= ram / (4 * k);
    char *qin = dm_yaml_quote(in), *qdec = dm_yaml_quote(decoder), *qfun = dm_yaml_quote(dm_arg_str(&a, "fun"));
    char *text = dm_xasprintf(
        "name: ica\n"
        "nodes:\n"
        "  input: {op: npy, params: {path: %s}}\n"
        "  covariance: {op: covariance, inputs: {x: input}, params: {file: \"\"}}\n"
        "  pca: {op: pca, inputs: {covariance: covariance.covariance}, params: {k: %lld}}\n"
        "  whiten: {op: project, inputs: {x: input, matrix: pca.whitening, mean: covariance.mean}, spill: %s}\n"
        "  fastica:\n"
        "    op: fastica\n"
        "    inputs: {z: whiten}\n"
        "    params: {fun: %s, tol: %.17g, max_iter: %lld, seed: %lld, seeds: %lld, memory: %lld,"
        " warm_start: %s}\n"
        "  compare:\n"
        "    op: ica_compare\n"
        "    inputs: {unmixing: fastica.unmixing, eigenvalues: pca.eigenvalues, components: pca.components,"
        " mean: covariance.mean}\n"
        "    params: {decoder: %s}\n",
        qin, k, in_ram ? "never" : "auto", qfun, dm_arg_float(&a, "tol"), (long long)dm_arg_int(&a, "max-iter"),
        (long long)dm_arg_int(&a, "seed"), (long long)dm_arg_int(&a, "seeds"), (long long)(ram > 0 ? ram : 0),
        dm_arg_flag(&a, "warm-start") ? "true" : "false", qdec);
    free(qin), free(qdec), free(qfun);
    dm_run_opts ro = {dm_arg_str(&a, "out"), dm_arg_str(&a, "cache"), memory, (int)dm_arg_int(&a, "threads"),
                      dm_arg_flag(&a, "quiet")};
    rc = dm_run_yaml("<dmica ica>", text, &ro);
    free(text);
    dm_args_free(&a);
    return rc;
}
