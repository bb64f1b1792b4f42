/*
 * cmd_activations.c: `dmica activations`, GPT-2 activations at a hook for windows
 * of token ids given as a .npy.
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
/* ---- dmica activations ---------------------------------------------------- */

static void activations_usage(void)
{
    fprintf(stderr,
            "usage: dmica activations --model DIR --hook HOOK --tokens TOKENS.npy --out ACTS.npy\n"
            "                         [--no-center] [--batch WINDOWS]\n"
            "  TOKENS: integer array [B, T] (int32, int64 or uint16); ACTS: float32 [B*T, width],\n"
            "  row b*T+t. Residual hooks are centred per token (TransformerLens) unless --no-center.\n");
}

/* Converts windows [w0, w0+nw) of the token array to int32, checking each id. */
static int tokens_read(const char *path, const dm_npy_header *h, const void *data, int64_t w0,
                       int nw, int T, int V, int32_t *out)
{
    for (int64_t k = 0; k < (int64_t)nw * T; k++) {
        int64_t i = w0 * T + k, id;
        switch (h->dtype) {
        case DM_I32: {
            int32_t v;
            memcpy(&v, (const char *)data + 4 * i, 4);
            id = v;
            break;
        }
        case DM_I64: memcpy(&id, (const char *)data + 8 * i, 8); break;
        default: {
            uint16_t v;
            memcpy(&v, (const char *)data + 2 * i, 2);
            id = v;
        }
        }
        if (id < 0 || id >= V)
            return dm_fail("%s: token id %lld at [%lld, %lld] is not below vocab_size %d", path,
                           (long long)id, (long long)(i / T), (long long)(i % T), V);
        out[k] = (int32_t)id;
    }
    return 0;
}

int dm_cmd_activations(int argc, char **argv)
{
    const char *model = NULL, *hook_name = NULL, *tokens_path = NULL, *out_path = NULL;
    int center = 1, batch = 0, rc = 1;
    dm_gpt2_hook hook;
    dm_npy_map *tok = NULL;
    dm_npy_writer *w = NULL;
    dm_gpt2 *m = NULL;
    int32_t *ids = NULL;
    float *acts = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **dst = !strcmp(arg, "--model")    ? &model
                           : !strcmp(arg, "--hook")   ? &hook_name
                           : !strcmp(arg, "--tokens") ? &tokens_path
                           : !strcmp(arg, "--out")    ? &out_path
                                                      : NULL;
        if (dst && i + 1 < argc) {
            *dst = argv[++i];
        } else if (!strcmp(arg, "--no-center")) {
            center = 0;
        } else if (!strcmp(arg, "--batch") && i + 1 < argc) {
            batch = atoi(argv[++i]);
            if (batch <= 0) {
                fprintf(stderr, "dmica activations: --batch must be a positive number\n");
                return 1;
            }
        } else if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            activations_usage();
            return 0;
        } else {
            fprintf(stderr, "dmica activations: %s '%s'\n",
                    dst ? "missing value after" : "unknown argument", arg);
            activations_usage();
            return 1;
        }
    }
    if (!model || !hook_name || !tokens_path || !out_path) {
        fprintf(stderr, "dmica activations: --model, --hook, --tokens and --out are required\n");
        activations_usage();
        return 1;
    }
    if (dm_gpt2_hook_parse(hook_name, &hook) < 0)
        goto end;
    if (!(tok = dm_npy_open(tokens_path)))
        goto end;
    const dm_npy_header *h = dm_npy_hdr(tok);
    if (h->ndim != 2 || (h->dtype != DM_I32 && h->dtype != DM_I64 && h->dtype != DM_U16)) {
        dm_fail("%s: token ids must be a 2-D int32, int64 or uint16 array [windows, T], not %d-D "
                "%s",
                tokens_path, h->ndim, dm_dtype_name(h->dtype));
        goto end;
    }
    int64_t nwin = h->shape[0];
    int T = (int)h->shape[1];
    if (!(m = dm_gpt2_load(model, dm_gpt2_hook_depth(hook), dm_compute_default())))
        goto end;
    const dm_gpt2_config *c = dm_gpt2_cfg(m);
    int64_t width = dm_gpt2_hook_width(c, hook);
    if (width < 0) {
        dm_fail_prefix("%s", model);
        goto end;
    }
    if (h->shape[1] > c->n_positions || T <= 0) {
        dm_fail("%s: windows of %lld tokens; model %s takes 1 to %d (n_positions)", tokens_path,
                (long long)h->shape[1], model, c->n_positions);
        goto end;
    }
    if (!batch) {
        /* about 4096 rows a pass (large sgemms), and at most 1 GiB of logits */
        int64_t rows = (int64_t)4096 < ((int64_t)256 << 20) / width ? 4096
                                                                   : ((int64_t)256 << 20) / width;
        batch = rows / T > 0 ? (int)(rows / T) : 1;
    }
    ids = dm_xmalloc(sizeof(int32_t) * (size_t)batch * T);
    acts = dm_xmalloc(sizeof(float) * (size_t)batch * T * width);
    if (!(w = dm_npy_writer_open(out_path, DM_F32, width)))
        goto end;
    double t0 = dm_now();
    for (int64_t w0 = 0; w0 < nwin; w0 += batch) {
        int nw = (int)(nwin - w0 < batch ? nwin - w0 : batch);
        if (tokens_read(tokens_path, h, dm_npy_data(tok), w0, nw, T, c->vocab_size, ids) < 0 ||
            dm_gpt2_forward(m, ids, nw, T, &hook, 1, &acts, center) < 0 ||
            dm_npy_writer_append_f32(w, acts, (int64_t)nw * T) < 0)
            goto end;
    }
    if (dm_npy_writer_commit(w) < 0) {
        w = NULL;
        goto end;
    }
    w = NULL;
    if (dm_verbose >= 2)
        dm_info("activations: %lld tokens in %.2f s", (long long)(nwin * T), dm_now() - t0);
    rc = 0;
end:
    if (rc)
        fprintf(stderr, "dmica activations: %s\n", dm_error());
    dm_npy_writer_abort(w);
    dm_npy_close(tok);
    dm_gpt2_free(m);
    free(ids);
    free(acts);
    return rc;
}
