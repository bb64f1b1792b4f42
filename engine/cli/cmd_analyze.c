/*
 * cmd_analyze.c: `dmica analyze`, the plan's steps 4-9 on activations a user
 * already has, and `dmica top`, one component's examples on the terminal.
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

#include "commands.h"
#include "engine.h"
#include "npy.h"
#include "sae.h"

static void analyze_usage(FILE *f)
{
    fputs("usage: dmica analyze --acts ACTS.npy --sae SAE_DIR [--tokens TOKENS.npy --tokenizer DIR]\n"
          "                     --components K --out RUN_DIR [options]\n"
          "\n"
          "The plan's steps 4-9 on activations you already have: the SAE's residual and statistics,\n"
          "its moments and PCA, whitening to K components, FastICA with several seeds, the comparison\n"
          "with the SAE's decoder, sources, top examples, kurtosis, results.json and report.html.\n"
          "\n"
          "  --acts ACTS.npy     float32/float16 [N, d_in] activations at the SAE's hook\n"
          "  --sae DIR           SAELens folder (cfg.json, sae_weights.safetensors)\n"
          "  --tokens T.npy      integer [windows, T] token ids, N = windows x T (for contexts)\n"
          "  --tokenizer DIR     vocab.json + merges.txt, to decode contexts\n"
          "  --components K      ICA components (whitening to K PCA components)\n"
          "  --seeds S           FastICA runs for stability (default 3)\n"
          "  --seed N            first seed (default 42)\n"
          "  --max-iter M        (default 1000)   --tol T (default 1e-4)\n"
          "  --top K             examples per component and direction (default 20)\n"
          "  --scaling-factor F  for expected_average_only_in SAEs\n"
          "  --memory SIZE --threads N --cache DIR --quiet\n",
          f);
}

int dm_cmd_analyze(int argc, char **argv)
{
    const char *acts = NULL, *sae = NULL, *tokens = NULL, *tokenizer = NULL, *out = NULL, *cache = NULL;
    const char *v;
    long long k = 0, seeds = 3, seed = 42, max_iter = 1000, top = 20, threads = 0;
    double tol = 1e-4, scaling = 0;
    int64_t memory = 0;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            analyze_usage(stdout);
            return 0;
        } else if ((v = dm_arg_value(argc, argv, &i, "--acts"))) {
            acts = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--sae"))) {
            sae = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--tokens"))) {
            tokens = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--tokenizer"))) {
            tokenizer = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--out"))) {
            out = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--cache"))) {
            cache = v;
        } else if ((v = dm_arg_value(argc, argv, &i, "--components"))) {
            k = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--seeds"))) {
            seeds = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--seed"))) {
            seed = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--max-iter"))) {
            max_iter = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--top"))) {
            top = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--threads"))) {
            threads = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--tol"))) {
            tol = atof(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--scaling-factor"))) {
            scaling = atof(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--memory"))) {
            if ((memory = dm_parse_size(v)) <= 0) {
                fprintf(stderr, "dmica analyze: --memory: %s\n", dm_error());
                return 2;
            }
        } else if (!strcmp(argv[i], "--quiet")) {
            quiet = 1;
        } else {
            fprintf(stderr, "dmica analyze: unknown or incomplete option '%s'\n", argv[i]);
            analyze_usage(stderr);
            return 2;
        }
    }
    if (!acts || !sae || !out || k < 1) {
        fprintf(stderr, "dmica analyze: --acts, --sae, --components K (>= 1) and --out are required\n");
        analyze_usage(stderr);
        return 2;
    }
    if (seeds < 1 || max_iter < 1 || top < 1 || !(tol > 0)) {
        fprintf(stderr, "dmica analyze: --seeds, --max-iter and --top must be >= 1 and --tol > 0\n");
        return 2;
    }
    if (tokenizer && !tokens) {
        fprintf(stderr, "dmica analyze: --tokenizer needs --tokens (the windows whose contexts it decodes)\n");
        return 2;
    }
    dm_sae_config cfg;
    if (dm_sae_read_config(sae, &cfg)) {
        fprintf(stderr, "dmica analyze: %s\n", dm_error());
        return 1;
    }
    int64_t T = 0;
    if (tokens) { /* windows must tile the activation rows exactly */
        dm_npy_map *tm = dm_npy_open(tokens), *am = dm_npy_open(acts);
        int bad = !tm || !am;
        if (!bad) {
            const dm_npy_header *th = dm_npy_hdr(tm), *ah = dm_npy_hdr(am);
            if (th->ndim != 2)
                bad = dm_fail("%s: token ids must be a 2-D [windows, T] array", tokens);
            else if (ah->ndim != 2 || th->shape[0] * th->shape[1] != ah->shape[0])
                bad = dm_fail("%s: %lld windows x %lld tokens = %lld rows, but %s has %lld rows", tokens,
                              (long long)th->shape[0], (long long)th->shape[1],
                              (long long)(th->shape[0] * th->shape[1]), acts, (long long)ah->shape[0]);
            T = th->shape[1];
        }
        dm_npy_close(tm);
        dm_npy_close(am);
        if (bad) {
            fprintf(stderr, "dmica analyze: %s\n", dm_error());
            dm_sae_config_free(&cfg);
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
        "    params: {model: %s, sae: %s, hook: %s}\n",
        qa, windows, qs, scaling, k, tol, max_iter, seed, seeds,
        (long long)((memory > 0 ? memory : (int64_t)1 << 30) / 2), win_in, top, qk, win_in, top, qk,
        qm, qs, qh);
    free(qa), free(qs), free(qh), free(qm), free(qt), free(qk), free(windows);
    dm_sae_config_free(&cfg);
    dm_run_opts ro = {out, cache, memory, (int)threads, quiet};
    int rc = dm_run_yaml("<dmica analyze>", yaml, &ro);
    free(yaml);
    return rc;
}
