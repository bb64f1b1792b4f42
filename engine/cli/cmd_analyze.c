/*
 * cmd_analyze.c: `dmica analyze`, the analysis on activations a user already
 * has (from the SAE's residual to the report).
 *
 * analyze writes the same pipeline as pipelines/gpt2-small-res-jb-l6.yaml
 * without its text and gpt2 nodes: the activations come from a .npy, and the
 * token windows (for contexts) from an integer [windows, T] .npy whose row
 * b*T + t is the activation row of window b, position t (`dmica activations`
 * writes exactly that). It runs through the engine like any pipeline, so a
 * second analyze of the same inputs reuses what did not change.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "engine.h"
#include "npy.h"
#include "sae.h"

static const dm_arg_spec analyze_specs[] = {
    {"acts", DM_ARG_PATH, "ACTS.npy", NULL, 1, 0, 0, 0, "float32/float16 [N, d_in] activations at the SAE's hook"},
    {"sae", DM_ARG_PATH, "DIR", NULL, 1, 0, 0, 0, "SAELens folder (cfg.json, sae_weights.safetensors)"},
    {"tokens", DM_ARG_PATH, "T.npy", NULL, 0, 0, 0, 0, "integer [windows, T] token ids, N = windows x T (for contexts)"},
    {"tokenizer", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "vocab.json + merges.txt, to decode contexts"},
    {"components", DM_ARG_INT, "K", NULL, 1, 1, 1e9, 0, "ICA components (whitening to K PCA components)"},
    {"out", DM_ARG_PATH, "RUN_DIR", NULL, 1, 0, 0, 0, "results folder"},
    {"seeds", DM_ARG_INT, "S", "3", 0, 1, 1000, 0, "FastICA runs for stability"},
    {"seed", DM_ARG_INT, "N", "42", 0, 0, 9e18, 0, "first seed"},
    {"max-iter", DM_ARG_INT, "M", "1000", 0, 1, 1e9, 0, "FastICA iterations at most"},
    {"tol", DM_ARG_FLOAT, "T", "1e-4", 0, 0, 1, 1, "FastICA tolerance"},
    {"rica", DM_ARG_INT, "K", NULL, 0, 1, 65536, 0,
     "also run RICA (overcomplete ICA, K components) beside FastICA: rica_directions.npy and the rest (docs/rica.md)"},
    {"rica-lambda", DM_ARG_FLOAT, "L", "0.5", 0, 0, 0, 0, "RICA's sparsity weight"},
    {"top", DM_ARG_INT, "K", "20", 0, 1, 1e6, 0, "examples per component and direction"},
    {"scaling-factor", DM_ARG_FLOAT, "F", NULL, 0, 0, 0, 1,
     "input scaling of expected_average_only_in SAEs (SAELens norm_scaling_factor)"},
    {"memory", DM_ARG_SIZE, "SIZE", NULL, 0, 1, 0, 0, "memory budget (default 1G)"},
    {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "cache folder (default $DMICA_CACHE, else .dmica-cache)"},
    {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output"},
    {NULL},
};

static const dm_arg_cmd analyze_cmd = {
    "analyze", "--acts ACTS.npy --sae SAE_DIR [--tokens TOKENS.npy --tokenizer DIR] --components K --out RUN_DIR [options]",
    "The analysis on activations you already have: the SAE's residual and statistics, its moments\n"
    "and PCA, whitening to K components, FastICA with several seeds, the comparison with the SAE's\n"
    "decoder, sources, top examples, kurtosis, results.json and report.html. With --rica K, RICA\n"
    "(K components, which may exceed the whitened dimension) runs beside FastICA on the same whitened\n"
    "residual, with the same products prefixed rica_.\n",
    analyze_specs, NULL, 0, 0,
};

int dm_cmd_analyze(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&analyze_cmd, argc, argv, &a);
    if (!rc && dm_arg_str(&a, "tokenizer") && !dm_arg_str(&a, "tokens"))
        rc = dm_args_usage_error(&a, "--tokenizer needs --tokens (the windows whose contexts it decodes)");
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *acts = dm_arg_str(&a, "acts"), *sae = dm_arg_str(&a, "sae"), *tokens = dm_arg_str(&a, "tokens");
    const char *tokenizer = dm_arg_str(&a, "tokenizer");
    int64_t memory = dm_arg_int(&a, "memory");
    long long k = dm_arg_int(&a, "components"), top = dm_arg_int(&a, "top");
    dm_sae_config cfg;
    if (dm_sae_read_config(sae, &cfg)) {
        fprintf(stderr, "dmica analyze: %s\n", dm_error());
        dm_args_free(&a);
        return 1;
    }
    int64_t T = 0;
    if (tokens) { /* windows must tile the activation rows exactly */
        dm_npy_map *tm = dm_npy_open(tokens), *am = dm_npy_open(acts);
        int bad = !tm || !am;
        if (!bad) {
            const dm_npy_header *th = dm_npy_hdr(tm), *ah = dm_npy_hdr(am);
            if (th->ndim != 2)
                bad = dm_failc(DM_E_SHAPE, "%s: token ids must be a 2-D [windows, T] array", tokens);
            else if (ah->ndim != 2 || th->shape[0] * th->shape[1] != ah->shape[0])
                bad = dm_failc(DM_E_SHAPE, "%s: %lld windows x %lld tokens = %lld rows, but %s has %lld rows", tokens,
                              (long long)th->shape[0], (long long)th->shape[1],
                              (long long)(th->shape[0] * th->shape[1]), acts, (long long)ah->shape[0]);
            T = th->shape[1];
        }
        dm_npy_close(tm);
        dm_npy_close(am);
        if (bad) {
            fprintf(stderr, "dmica analyze: %s\n", dm_error());
            dm_sae_config_free(&cfg);
            dm_args_free(&a);
            return 1;
        }
    }
    char *qa = dm_yaml_quote(acts), *qs = dm_yaml_quote(sae), *qh = dm_yaml_quote(cfg.hook_name);
    char *qm = dm_yaml_quote(cfg.model_name ? cfg.model_name : "");
    char *qt = dm_yaml_quote(tokens ? tokens : ""), *qk = dm_yaml_quote(tokenizer ? tokenizer : "");
    char *windows = tokens ? dm_xasprintf("  windows:\n    op: text\n    params: {path: %s, format: npy, context: %lld}\n",
                                          qt, (long long)T)
                           : dm_xstrdup("");
    const char *win_in = tokens ? ", windows: windows.windows" : "";
    /* RICA beside FastICA: the same back-projection, comparison, sources,
     * examples and moments, on rica's W (K x k) with its mixing W^T */
    char *rica = dm_arg_given(&a, "rica")
        ? dm_xasprintf(
              "  rica:\n    op: rica\n    inputs: {z: whiten}\n"
              "    params: {K: %lld, lambda: %.17g, seed: %lld, seeds: %lld, memory: %lld}\n"
              "  rica_compare:\n    op: ica_compare\n"
              "    inputs: {unmixing: rica.unmixing, whitened_mixing: rica.mixing, eigenvalues: pca.eigenvalues,"
              " components: pca.components, mean: residual_covariance.mean, decoder: sae.decoder}\n"
              "    params: {file: rica_compare.json, directions_file: rica_directions.npy,"
              " filters_file: rica_filters.npy, mixing_file: rica_mixing.npy,"
              " unscaled_file: rica_unscaled_patterns.npy}\n"
              "  rica_sources:\n    op: project\n"
              "    inputs: {x: sae.residual, matrix: rica_compare.filters, mean: residual_covariance.mean}\n"
              "  rica_activations:\n    op: project\n    inputs: {x: acts, matrix: rica_compare.directions}\n"
              "  rica_top_sources:\n    op: topk\n    inputs: {values: rica_sources%s}\n"
              "    params: {k: %lld, tokenizer: %s, file: rica_top_examples.json}\n"
              "  rica_top_activations:\n    op: topk\n    inputs: {values: rica_activations%s}\n"
              "    params: {k: %lld, tokenizer: %s, file: rica_activation_top_examples.json}\n"
              "  rica_source_moments: {op: moments, inputs: {x: rica_sources}, params: {file: rica_source_stats.json}}\n"
              "  rica_activation_projection_moments: {op: moments, inputs: {x: rica_activations},"
              " params: {file: rica_activation_stats.json}}\n"
              "  rica_save_sources: {op: npy_sink, inputs: {x: rica_sources}, params: {file: rica_sources.npy}}\n"
              "  rica_save_activations: {op: npy_sink, inputs: {x: rica_activations},"
              " params: {file: rica_activations.npy}}\n",
              (long long)dm_arg_int(&a, "rica"), dm_arg_float(&a, "rica-lambda"), (long long)dm_arg_int(&a, "seed"),
              (long long)dm_arg_int(&a, "seeds"), (long long)((memory > 0 ? memory : (int64_t)1 << 30) / 2), win_in,
              top, qk, win_in, top, qk)
        : dm_xstrdup("");
    const char *rica_report = dm_arg_given(&a, "rica")
        ? "      rica_stability: rica.stability\n      rica_max_cos: rica_compare.max_cos\n"
          "      rica_best_feature: rica_compare.best_feature\n"
          "      rica_source_kurtosis: rica_source_moments.excess_kurtosis\n"
          "      rica_activation_kurtosis: rica_activation_projection_moments.excess_kurtosis\n"
          "      rica_summary: rica.summary\n      rica_compare_summary: rica_compare.summary\n"
          "      rica_examples: rica_top_sources.examples\n"
          "      rica_activation_examples: rica_top_activations.examples\n"
        : "";
    char *yaml = dm_xasprintf(
        "name: analyze\n"
        "nodes:\n"
        "  acts: {op: npy, params: {path: %s}}\n"
        "%s"
        "  sae:\n    op: sae\n    inputs: {x: acts}\n    params: {sae: %s, scaling_factor: %.17g}\n"
        "  activation_moments: {op: moments, inputs: {x: acts}, params: {file: activation_stats.json}}\n"
        "  residual_moments: {op: moments, inputs: {x: sae.residual}, params: {file: residual_stats.json}}\n"
        "  residual_covariance: {op: covariance, inputs: {x: sae.residual}, params: {file: residual_covariance.npy}}\n"
        "  pca: {op: pca, inputs: {covariance: residual_covariance.covariance}, params: {k: %lld}}\n"
        "  whiten:\n    op: project\n    inputs: {x: sae.residual, matrix: pca.whitening, mean: residual_covariance.mean}\n"
        "  ica:\n    op: fastica\n    inputs: {z: whiten}\n"
        "    params: {tol: %.17g, max_iter: %lld, seed: %lld, seeds: %lld, memory: %lld}\n"
        "  compare:\n    op: ica_compare\n"
        "    inputs: {unmixing: ica.unmixing, eigenvalues: pca.eigenvalues, components: pca.components,"
        " mean: residual_covariance.mean, decoder: sae.decoder}\n"
        "    params: {directions_file: ica_directions.npy, filters_file: ica_filters.npy, mixing_file: ica_mixing.npy,"
        " unscaled_file: ica_unscaled_patterns.npy}\n"
        "  sources:\n    op: project\n    inputs: {x: sae.residual, matrix: compare.filters, mean: residual_covariance.mean}\n"
        "  ica_activations:\n    op: project\n    inputs: {x: acts, matrix: compare.directions}\n"
        "  top_sources:\n    op: topk\n    inputs: {values: sources%s}\n"
        "    params: {k: %lld, tokenizer: %s, file: ica_top_examples.json}\n"
        "  top_activations:\n    op: topk\n    inputs: {values: ica_activations%s}\n"
        "    params: {k: %lld, tokenizer: %s, file: ica_activation_top_examples.json}\n"
        "  source_moments: {op: moments, inputs: {x: sources}, params: {file: ica_source_stats.json}}\n"
        "  activation_projection_moments: {op: moments, inputs: {x: ica_activations}, params: {file: ica_activation_stats.json}}\n"
        "  save_sources: {op: npy_sink, inputs: {x: sources}, params: {file: ica_sources.npy}}\n"
        "  save_activations: {op: npy_sink, inputs: {x: ica_activations}, params: {file: ica_activations.npy}}\n"
        "%s"
        "  report:\n    op: report\n"
        "    inputs:\n"
        "      activation_var: activation_moments.var\n      residual_var: residual_moments.var\n"
        "      residual_kurtosis: residual_moments.excess_kurtosis\n      n: residual_moments.n\n"
        "      eigenvalues: pca.eigenvalues\n      source_kurtosis: source_moments.excess_kurtosis\n"
        "      activation_kurtosis: activation_projection_moments.excess_kurtosis\n"
        "      sae_kurtosis: sae.feature_kurtosis\n      sae_frequency: sae.feature_frequency\n"
        "      stability: ica.stability\n      max_cos: compare.max_cos\n      best_feature: compare.best_feature\n"
        "      examples: top_sources.examples\n      activation_examples: top_activations.examples\n"
        "      sae_summary: sae.summary\n      ica_summary: ica.summary\n      compare_summary: compare.summary\n"
        "%s"
        "    params: {model: %s, sae: %s, hook: %s}\n",
        qa, windows, qs, dm_arg_float(&a, "scaling-factor"), k, dm_arg_float(&a, "tol"),
        (long long)dm_arg_int(&a, "max-iter"), (long long)dm_arg_int(&a, "seed"), (long long)dm_arg_int(&a, "seeds"),
        (long long)((memory > 0 ? memory : (int64_t)1 << 30) / 2), win_in, top, qk, win_in, top, qk, rica,
        rica_report, qm, qs, qh);
    free(rica);
    free(qa), free(qs), free(qh), free(qm), free(qt), free(qk), free(windows);
    dm_sae_config_free(&cfg);
    dm_run_opts ro = {dm_arg_str(&a, "out"), dm_arg_str(&a, "cache"), memory, (int)dm_arg_int(&a, "threads"),
                      dm_arg_flag(&a, "quiet")};
    rc = dm_run_yaml("<dmica analyze>", yaml, &ro);
    free(yaml);
    dm_args_free(&a);
    return rc;
}
