/*
 * cmd_sae.c: `dmica sae`, an SAE's residual and statistics on a .npy of activations.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "engine.h"
#include "fs.h"
#include "gpt2.h"
#include "npy.h"
#include "sae.h"
#include "tokenizer.h"
/* ---- dmica sae ---------------------------------------------------------- */

static void sae_usage(FILE *f)
{
    fputs("usage: dmica sae --sae DIR --in ACTS.npy --residual E.npy [--recon R.npy] [--stats STATS.json]\n"
          "                 [--hook NAME] [--tile ROWS] [--scaling-factor S] [--no-predictability]\n"
          "                 [--threads N] [--quiet]\n"
          "\n"
          "Applies the SAELens SAE in DIR to every row of ACTS (2-D float32/float16/bfloat16/float64,\n"
          "d_in columns) and writes the residual x - SAE(x) to E.npy (float32), optionally the\n"
          "reconstruction, and the statistics of the pass (FVU, MSE, L0, per-feature firing, linear\n"
          "predictability of the residual; docs/sae.md) as JSON. Files are written atomically. Rows with\n"
          "NaN or Inf get NaN rows and are left out of the statistics.\n",
          f);
}

int dm_cmd_sae(int argc, char **argv)
{
    const char *dir = NULL, *in = NULL, *res_path = NULL, *rec_path = NULL, *stats_path = NULL, *hook = "";
    int64_t tile = 256;
    double sf = 0;
    int predict = 1, quiet = 0, threads = 0, rc = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--sae")        ? &dir
                           : !strcmp(a, "--in")       ? &in
                           : !strcmp(a, "--residual") ? &res_path
                           : !strcmp(a, "--recon")    ? &rec_path
                           : !strcmp(a, "--stats")    ? &stats_path
                           : !strcmp(a, "--hook")     ? &hook
                                                      : NULL;
        char *e = NULL;
        if (dst && i + 1 < argc)
            *dst = argv[++i];
        else if (!strcmp(a, "--tile") && i + 1 < argc) {
            tile = strtoll(argv[++i], &e, 10);
            if (*e || tile < 1 || tile > 65536) {
                fprintf(stderr, "dmica sae: --tile must be 1 to 65536 rows, not '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--scaling-factor") && i + 1 < argc) {
            sf = strtod(argv[++i], &e);
            if (*e || !(sf > 0)) {
                fprintf(stderr, "dmica sae: --scaling-factor must be a positive number, not '%s'\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            threads = atoi(argv[++i]);
            if (threads < 1) {
                fprintf(stderr, "dmica sae: --threads must be a positive integer\n");
                return 2;
            }
        } else if (!strcmp(a, "--no-predictability"))
            predict = 0;
        else if (!strcmp(a, "--quiet"))
            quiet = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            sae_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "dmica sae: %s '%s'\n", dst ? "missing value after" : "unknown argument", a);
            sae_usage(stderr);
            return 2;
        }
    }
    if (!dir || !in || !res_path) {
        fprintf(stderr, "dmica sae: --sae, --in and --residual are required (see dmica sae --help)\n");
        return 2;
    }
    dm_compute_set_threads(threads);
    double t_start = dm_now();
    dm_sae *sae = NULL;
    dm_npy_map *map = NULL;
    dm_npy_writer *wr = NULL, *wh = NULL;
    dm_sae_work *work = NULL;
    dm_sae_stats *st = NULL;
    dm_sae_sparse sp = {0};
    dm_sae_result res = {0};
    int have_res = 0;
    float *x = NULL, *recon = NULL, *resid = NULL;
    char *json = NULL;
    if (!(map = dm_npy_open(in)))
        goto end;
    const dm_npy_header *h = dm_npy_hdr(map);
    if (h->ndim != 2) {
        dm_fail("%s: expected a 2-D array (tokens x d_in), got %d dimensions", in, h->ndim);
        goto end;
    }
    const dm_compute *cc = dm_compute_default();
    const dm_sae_backend *be = dm_sae_backend_for(cc);
    if (!(sae = dm_sae_load(dir, sf, cc)))
        goto end;
    if (dm_sae_check_input(&sae->cfg, dir, hook, h->shape[1])) {
        dm_fail_prefix("%s", in);
        goto end;
    }
    const int64_t d = sae->cfg.d_in, N = h->shape[0];
    /* rows per read: a few tiles, and about 64 MiB of each buffer at most */
    int64_t chunk = tile * 8;
    if (chunk * d * 4 > (64 << 20))
        chunk = ((64 << 20) / (d * 4) / tile) * tile;
    if (chunk < tile)
        chunk = tile;
    work = dm_sae_work_new(sae, tile, cc);
    st = dm_sae_stats_new(d, sae->cfg.d_sae, predict, cc);
    x = dm_xmalloc_aligned((size_t)(chunk * d) * sizeof(float));
    recon = dm_xmalloc_aligned((size_t)(chunk * d) * sizeof(float));
    resid = dm_xmalloc_aligned((size_t)(chunk * d) * sizeof(float));
    if (!(wr = dm_npy_writer_open(res_path, DM_F32, d)))
        goto end;
    if (rec_path && !(wh = dm_npy_writer_open(rec_path, DM_F32, d)))
        goto end;
    double t0 = dm_now();
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        int64_t rows = N - r0 < chunk ? N - r0 : chunk;
        if (dm_npy_read_rows_f32(map, r0, rows, x))
            goto end;
        for (int64_t t = 0; t < rows; t += tile) {
            int64_t m = rows - t < tile ? rows - t : tile;
            be->forward(work, sae, x + t * d, m, recon + t * d, resid + t * d, &sp);
            be->stats_update(st, x + t * d, recon + t * d, resid + t * d, &sp, m);
        }
        if (dm_npy_writer_append_f32(wr, resid, rows) || (wh && dm_npy_writer_append_f32(wh, recon, rows)))
            goto end;
    }
    double t_pass = dm_now() - t0;
    if (dm_sae_stats_finalize(st, &res))
        goto end;
    have_res = 1;
    int bad = dm_npy_writer_commit(wr);
    wr = NULL;
    if (bad)
        goto end;
    if (wh) {
        bad = dm_npy_writer_commit(wh);
        wh = NULL;
        if (bad)
            goto end;
    }
    if (stats_path) {
        if (!(json = dm_sae_result_json(&res, sae)) || dm_write_file_atomic(stats_path, json, strlen(json)))
            goto end;
    }
    if (res.nonfinite)
        dm_warn("sae: %lld of %lld rows of %s hold NaN or Inf: their residual is NaN and they are left out of "
                "the statistics",
                (long long)res.nonfinite, (long long)N, in);
    if (!quiet)
        fprintf(stderr,
                "dmica sae: %lld tokens in %.3f s (%.1f tokens/s; %.3f s with loading), fvu %.6g, mean L0 %.2f, "
                "%lld dead features\n",
                (long long)N, t_pass, (double)N / t_pass, dm_now() - t_start, res.fvu, res.mean_l0,
                (long long)res.dead);
    rc = 0;
end:
    if (rc)
        fprintf(stderr, "dmica sae: %s\n", dm_error());
    dm_npy_writer_abort(wr);
    dm_npy_writer_abort(wh);
    dm_npy_close(map);
    dm_sae_free(sae);
    dm_sae_work_free(work);
    dm_sae_stats_free(st);
    dm_sae_sparse_free(&sp);
    if (have_res)
        dm_sae_result_free(&res);
    free(x), free(recon), free(resid), free(json);
    return rc;
}
