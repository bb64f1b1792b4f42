/*
 * cmd_sae.c: `dmica sae`, an SAE's residual and statistics on a .npy of
 * activations, as a generated pipeline:
 *
 *   acts (npy) -> sae -> residual (npy_sink) [, reconstruction (npy_sink)]
 *
 * whose products (residual.npy, reconstruction.npy, sae_stats.json) are moved
 * to the paths the user gave (generated.c). The sae node does not spill its
 * streams: the sinks in its pass are their only readers.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "engine.h"

static const dm_arg_spec sae_specs[] = {
    {"sae", DM_ARG_PATH, "DIR", NULL, 1, 0, 0, 0, "SAELens folder (cfg.json, sae_weights.safetensors)"},
    {"in", DM_ARG_PATH, "ACTS.npy", NULL, 1, 0, 0, 0, "2-D float32/float16/bfloat16/float64 activations, d_in columns"},
    {"residual", DM_ARG_PATH, "E.npy", NULL, 1, 0, 0, 0, "where the residual x - SAE(x) goes (float32)"},
    {"recon", DM_ARG_PATH, "R.npy", NULL, 0, 0, 0, 0, "where the reconstruction SAE(x) goes (float32)"},
    {"stats", DM_ARG_PATH, "STATS.json", NULL, 0, 0, 0, 0, "where the statistics of the pass go (docs/sae.md)"},
    {"hook", DM_ARG_STRING, "NAME", "", 0, 0, 0, 0, "the hook ACTS come from, checked against the SAE's hook_name"},
    {"tile", DM_ARG_INT, "ROWS", "256", 0, 1, 65536, 0, "rows per encode tile"},
    {"scaling-factor", DM_ARG_FLOAT, "S", NULL, 0, 0, 0, 1,
     "input scaling of expected_average_only_in SAEs (SAELens norm_scaling_factor)"},
    {"no-predictability", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0,
     "skip the linear predictability of the residual (2 d_in^2 multiply-adds a token)"},
    {"memory", DM_ARG_SIZE, "SIZE", NULL, 0, 1, 0, 0, "memory budget (default 1G)"},
    {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0,
     "keep the run's cache in DIR, to reuse it (default: a temporary one, removed afterwards)"},
    {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output or summary line"},
    {NULL},
};

static const dm_arg_cmd sae_cmd = {
    "sae", "--sae DIR --in ACTS.npy --residual E.npy [--recon R.npy] [--stats STATS.json] [options]",
    "Applies the SAELens SAE in DIR to every row of ACTS and writes the residual x - SAE(x) to E.npy\n"
    "(float32), optionally the reconstruction, and the statistics of the pass (FVU, MSE, L0,\n"
    "per-feature firing, linear predictability of the residual; docs/sae.md) as JSON. Files are\n"
    "written atomically, and none on error. Rows with NaN or Inf get NaN rows and are left out of\n"
    "the statistics. It runs as a pipeline: npy -> sae -> npy_sink.\n",
    sae_specs, NULL, 0, 0,
};

/* Seconds of the streaming pass (run.json): the nodes' own time reading the
 * activations, running the SAE with its statistics and writing the outputs;
 * loading the SAE (open), the statistics' last step (finish) and the engine's
 * bookkeeping left out. */
static double pass_seconds(const char *run_json)
{
    json_error_t err;
    json_t *j = run_json ? json_loads(run_json, 0, &err) : NULL, *v;
    double s = 0;
    size_t i;
    json_array_foreach(json_object_get(j, "nodes"), i, v) s += json_number_value(json_object_get(v, "seconds")) - json_number_value(json_object_get(v, "finish_seconds"));
    json_decref(j);
    return s;
}

/* The closing lines from the statistics: rows left out, and a summary with the
 * pass's rate (pass) and the whole command's time (total). */
static void report(const char *stats, const char *in, int quiet, double pass, double total)
{
    json_error_t err;
    json_t *j = json_loads(stats, 0, &err);
    if (!j)
        return;
    long long n = json_integer_value(json_object_get(j, "tokens"));
    long long bad = json_integer_value(json_object_get(j, "nonfinite_rows"));
    if (bad)
        dm_warn("sae: %lld of %lld rows of %s hold NaN or Inf: their residual is NaN and they are left out of "
                "the statistics",
                bad, n + bad, in);
    if (!quiet)
        fprintf(stderr,
                "dmica sae: %lld tokens in %.3f s (%.1f tokens/s; %.3f s with loading), fvu %.6g, mean L0 %.2f, "
                "%lld dead features\n",
                n + bad, pass, pass > 0 ? (double)(n + bad) / pass : 0.0, total,
                json_number_value(json_object_get(j, "fvu")), json_number_value(json_object_get(j, "mean_l0")),
                (long long)json_integer_value(json_object_get(j, "dead_features")));
    json_decref(j);
}

int dm_cmd_sae(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&sae_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *recon = dm_arg_str(&a, "recon");
    int quiet = dm_arg_flag(&a, "quiet");
    char *qin = dm_yaml_quote(dm_arg_str(&a, "in")), *qsae = dm_yaml_quote(dm_arg_str(&a, "sae"));
    char *qhook = dm_yaml_quote(dm_arg_str(&a, "hook"));
    /* chunks of 8 tiles (at most 64 MiB of a d_in 768 row buffer): x, the
     * reconstruction and the residual of a chunk stay near the cache, and the
     * memory does not grow with the number of tokens */
    int64_t tile = dm_arg_int(&a, "tile"), chunk = tile * 8 < 65536 ? tile * 8 : 65536;
    if (chunk < 64)
        chunk = 64;
    char *yaml = dm_xasprintf(
        "name: sae\n"
        "chunk: %lld\n"
        "nodes:\n"
        "  acts: {op: npy, params: {path: %s}}\n"
        "  sae:\n"
        "    op: sae\n"
        "    inputs: {x: acts}\n"
        "    params: {sae: %s, hook: %s, tile: %lld, scaling_factor: %.17g, predictability: %s,"
        " stats: sae_stats.json}\n"
        "    spill: never\n"
        "  residual: {op: npy_sink, inputs: {x: sae.residual}, params: {file: residual.npy}}\n"
        "%s",
        (long long)chunk, qin, qsae, qhook, (long long)tile, dm_arg_float(&a, "scaling-factor"),
        dm_arg_flag(&a, "no-predictability") ? "false" : "true",
        recon ? "  recon: {op: npy_sink, inputs: {x: sae.reconstruction}, params: {file: reconstruction.npy}}\n"
              : "");
    free(qin), free(qsae), free(qhook);
    char *stats = NULL, *run = NULL;
    dm_cli_product want[] = {
        {"residual.npy", dm_arg_str(&a, "residual"), NULL},
        {"reconstruction.npy", recon, NULL},
        {"sae_stats.json", dm_arg_str(&a, "stats"), &stats},
        {"run.json", NULL, &run},
    };
    double t0 = dm_now();
    rc = dm_cli_run_to_files("sae", yaml, dm_arg_str(&a, "cache"), dm_arg_int(&a, "memory"),
                             (int)dm_arg_int(&a, "threads"), quiet, want, 4);
    if (!rc && stats)
        report(stats, dm_arg_str(&a, "in"), quiet, pass_seconds(run), dm_now() - t0);
    free(stats), free(run), free(yaml);
    dm_args_free(&a);
    return rc;
}
