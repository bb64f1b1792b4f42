/*
 * cmd_ica.c: `dmica ica`, whitening and FastICA of a .npy matrix (a generated pipeline).
 */
/* ---- dmica ica ----------------------------------------------------------- */

#include <getopt.h>

#include "commands.h"
#include "engine.h"
#include "npy.h"

static void ica_usage(FILE *f)
{
    fputs("usage: dmica ica --in X.npy --components K --out DIR [options]\n"
          "\n"
          "Centres X (rows x d, float32 or float16), whitens it with its top K principal components and runs\n"
          "parallel FastICA (scikit-learn's semantics) from several seeds in the same passes. Writes\n"
          "  DIR/directions.npy       K x d patterns (unit rows): what each component writes into X's space\n"
          "  DIR/unmixing.npy         K x d filters: sources = unmixing @ (x - mean)\n"
          "  DIR/mixing.npy           d x K: x - mean ~= mixing @ sources\n"
          "  DIR/unscaled_patterns.npy  mixing^T @ components without the eigenvalue scaling (for comparison)\n"
          "  DIR/ica.json             iterations, convergence per seed, stability, timings\n"
          "  DIR/ica_compare.json     variance explained (and the SAE comparison with --decoder)\n"
          "  DIR/pca.json             the whitening's eigenvalues\n"
          "\n"
          "  --seed S          seed of the first run (sklearn's random_state; default 42)\n"
          "  --seeds N         runs from seeds S, S+1, ... for stability (default 3)\n"
          "  --max-iter M      iterations at most (default 1000)\n"
          "  --tol T           tolerance (default 1e-4)\n"
          "  --fun F           logcosh (default), exp or cube\n"
          "  --warm-start      iterate on a 100000-row subsample first\n"
          "  --decoder W.npy   SAE W_dec (d_sae x d) to compare the patterns with\n"
          "  --memory SIZE     memory budget (default 1G); the whitened data stays in RAM if it fits\n"
          "  --threads N       worker threads (default: all cores)\n"
          "  --cache DIR       cache folder (default $DMICA_CACHE, else .dmica-cache)\n"
          "  --quiet           no progress output\n",
          f);
}

int dm_cmd_ica(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"in", required_argument, 0, 'i'},     {"components", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'},   {"seeds", required_argument, 0, 'S'},
        {"max-iter", required_argument, 0, 'M'}, {"tol", required_argument, 0, 'T'},
        {"fun", required_argument, 0, 'F'},    {"memory", required_argument, 0, 'm'},
        {"threads", required_argument, 0, 't'}, {"cache", required_argument, 0, 'c'},
        {"out", required_argument, 0, 'o'},    {"decoder", required_argument, 0, 'D'},
        {"warm-start", no_argument, 0, 'w'},   {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0},
    };
    const char *in = NULL, *out = NULL, *cache = NULL, *fun = "logcosh", *decoder = "";
    long long k = 0, seed = 42, seeds = 3, max_iter = 1000, threads = 0;
    double tol = 1e-4;
    int64_t memory = (int64_t)1 << 30;
    int quiet = 0, warm = 0, c;
    char *e;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'c': cache = optarg; break;
        case 'F': fun = optarg; break;
        case 'D': decoder = optarg; break;
        case 'w': warm = 1; break;
        case 'q': quiet = 1; break;
        case 'k': case 's': case 'S': case 'M': case 't': {
            long long v = strtoll(optarg, &e, 10);
            if (*e || !*optarg || v < 0) {
                fprintf(stderr, "dmica ica: --%s needs a non-negative integer, not '%s'\n",
                        c == 'k' ? "components" : c == 's' ? "seed" : c == 'S' ? "seeds" : c == 'M' ? "max-iter"
                                                                                                 : "threads",
                        optarg);
                return 2;
            }
            *(c == 'k' ? &k : c == 's' ? &seed : c == 'S' ? &seeds : c == 'M' ? &max_iter : &threads) = v;
            break;
        }
        case 'T':
            tol = strtod(optarg, &e);
            if (*e || !*optarg || !(tol > 0)) {
                fprintf(stderr, "dmica ica: --tol needs a positive number, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'm':
            if ((memory = dm_parse_size(optarg)) <= 0) {
                fprintf(stderr, "dmica ica: --memory: %s\n", dm_error());
                return 2;
            }
            break;
        case 'h': ica_usage(stdout); return 0;
        default: ica_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "dmica ica: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!in || !out || k < 1) {
        fprintf(stderr, "dmica ica: --in X.npy, --components K (>= 1) and --out DIR are required "
                        "(see dmica ica --help)\n");
        return 2;
    }
    /* Check the input's shape here, to say what is wrong in the user's terms. */
    dm_npy_map *map = dm_npy_open(in);
    if (!map) {
        fprintf(stderr, "dmica ica: %s\n", dm_error());
        return 1;
    }
    const dm_npy_header *h = dm_npy_hdr(map);
    int ndim = h->ndim;
    int64_t rows = ndim >= 1 ? h->shape[0] : 0, d = ndim == 2 ? h->shape[1] : 0;
    dm_npy_close(map);
    if (ndim != 2) {
        fprintf(stderr, "dmica ica: %s: expected a 2-D matrix (rows x d), got %d dimensions\n", in, ndim);
        return 1;
    }
    if (k > d) {
        fprintf(stderr, "dmica ica: --components %lld is more than the %lld columns of %s\n", k, (long long)d, in);
        return 1;
    }
    if (rows < 2) {
        fprintf(stderr, "dmica ica: %s has %lld rows: FastICA needs at least 2\n", in, (long long)rows);
        return 1;
    }
    /* in RAM if the whitened data fits the budget less room for the engine's buffers */
    int64_t ram = memory - (int64_t)(160 << 20);
    /* z in RAM: fastica reads it once, in the whitening pass, and nothing is
     * spilled (the covariance pass and the whitening pass are the only reads of
     * X); otherwise z is spilled and replayed once per iteration. */
    int in_ram = ram > 0 && rows <= ram / (4 * k);
    char *qin = dm_yaml_quote(in), *qdec = dm_yaml_quote(decoder);
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
        qin, k, in_ram ? "never" : "auto", fun, tol, max_iter, seed, seeds, (long long)(ram > 0 ? ram : 0), warm ? "true" : "false", qdec);
    free(qin), free(qdec);
    dm_run_opts ro = {out, cache, memory, (int)threads, quiet};
    int rc = dm_run_yaml("<dmica ica>", text, &ro);
    free(text);
    return rc;
}
