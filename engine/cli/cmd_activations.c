/*
 * cmd_activations.c: `dmica activations`, GPT-2 activations at a hook for
 * windows of token ids given as a .npy, as a generated pipeline:
 *
 *   tokens (text, 2-D .npy windows used as they are) -> gpt2 -> acts (npy_sink)
 *
 * whose product is moved to --out (generated.c). Before the run the command
 * checks the token array against the model's config, so a bad id or window
 * length is reported in the file's own terms ([window, position]).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "engine.h"
#include "model.h"
#include "npy.h"

static const dm_arg_spec activations_specs[] = {
    {"model", DM_ARG_PATH, "DIR", NULL, 1, 0, 0, 0, "Hugging Face model folder, GPT-2 or Gemma 2 (config.json and its safetensors)"},
    {"hook", DM_ARG_STRING, "HOOK", NULL, 1, 0, 0, 0, "TransformerLens hook name, e.g. blocks.6.hook_resid_pre"},
    {"tokens", DM_ARG_PATH, "TOKENS.npy", NULL, 1, 0, 0, 0, "integer array [B, T] (int32, int64 or uint16)"},
    {"out", DM_ARG_PATH, "ACTS.npy", NULL, 1, 0, 0, 0, "float32 [B*T, width], row b*T+t"},
    {"no-center", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0,
     "leave residual hooks as they are (default: centred per token, as TransformerLens does; "
     "RMSNorm models such as Gemma 2 are never centred)"},
    {"batch", DM_ARG_INT, "WINDOWS", NULL, 0, 1, 1 << 20, 0,
     "windows per forward pass (default: about 4096 tokens, at most 1 GiB of outputs)"},
    {"memory", DM_ARG_SIZE, "SIZE", "4G", 0, 1, 0, 0, "memory budget the run is planned within"},
    {"threads", DM_ARG_INT, "N", NULL, 0, 1, 4096, 0, "worker threads (default: all cores)"},
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0,
     "keep the run's cache in DIR, to reuse it (default: a temporary one, removed afterwards)"},
    {"quiet", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "no progress output"},
    {NULL},
};

static const dm_arg_cmd activations_cmd = {
    "activations", "--model DIR --hook HOOK --tokens TOKENS.npy --out ACTS.npy [options]",
    "A model's (GPT-2, Gemma 2) activations at HOOK for every window of TOKENS, one row per token.\nIt runs as a "
    "pipeline: text (the windows as they are) -> gpt2 -> npy_sink.\n",
    activations_specs, NULL, 0, 0,
};

/* Checks every id of the [windows, T] array against the vocabulary, naming the
 * first bad one by its place in the file. */
static int check_ids(const char *path, const dm_npy_header *h, const void *data, int V)
{
    int64_t n = h->shape[0] * h->shape[1], T = h->shape[1];
    for (int64_t i = 0; i < n; i++) {
        int64_t id;
        if (h->dtype == DM_I32) {
            int32_t v;
            memcpy(&v, (const char *)data + 4 * i, 4);
            id = v;
        } else if (h->dtype == DM_I64) {
            memcpy(&id, (const char *)data + 8 * i, 8);
        } else {
            uint16_t v;
            memcpy(&v, (const char *)data + 2 * i, 2);
            id = v;
        }
        if (id < 0 || id >= V)
            return dm_failc(DM_E_INPUT, "%s: token id %lld at [%lld, %lld] is not below vocab_size %d", path,
                            (long long)id, (long long)(i / T), (long long)(i % T), V);
    }
    return 0;
}

/* The checks of the old direct command, in the user's terms; *T, *width and
 * *hook_name (canonical) for the pipeline. */
static int check_inputs(const char *model, const char *hook_arg, const char *tokens, int64_t *T, int64_t *width,
                        char *hook_name, size_t hook_len, int *can_center)
{
    dm_model_hook hook;
    dm_model_config c;
    if (dm_model_hook_parse(hook_arg, &hook))
        return -1;
    dm_model_hook_name(hook, hook_name, hook_len);
    size_t l = strlen(tokens);
    if (l < 4 || strcmp(tokens + l - 4, ".npy"))
        return dm_failc(DM_E_INPUT, "%s: token windows are read from a .npy file (its name ending in .npy)", tokens);
    dm_npy_map *tm = dm_npy_open(tokens);
    if (!tm)
        return -1;
    const dm_npy_header *h = dm_npy_hdr(tm);
    int rc = 0;
    if (h->ndim != 2 || (h->dtype != DM_I32 && h->dtype != DM_I64 && h->dtype != DM_U16))
        rc = dm_failc(DM_E_SHAPE, "%s: token ids must be a 2-D int32, int64 or uint16 array [windows, T], not %d-D %s",
                      tokens, h->ndim, dm_dtype_name(h->dtype));
    else if (dm_model_read_config(model, &c))
        rc = -1;
    else if (dm_model_hook_depth(hook) > c.n_layer) /* what loading the model would say */
        rc = dm_failc(DM_E_INPUT, "%s: %d blocks needed, config n_layer is %d", model, dm_model_hook_depth(hook),
                      c.n_layer);
    else if ((*width = dm_model_hook_width(&c, hook)) < 0)
        rc = dm_fail_prefix("%s", model);
    else if (h->shape[1] < 1 || h->shape[1] > c.n_positions || h->shape[0] < 1)
        rc = dm_failc(DM_E_SHAPE, "%s: windows of %lld tokens; model %s takes 1 to %d (n_positions)", tokens,
                      (long long)h->shape[1], model, c.n_positions);
    else
        rc = check_ids(tokens, h, dm_npy_data(tm), c.vocab_size);
    if (!rc)
        *T = h->shape[1], *can_center = dm_model_can_center(&c);
    dm_npy_close(tm);
    return rc;
}

int dm_cmd_activations(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&activations_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *model = dm_arg_str(&a, "model"), *tokens = dm_arg_str(&a, "tokens");
    char hook[64];
    int64_t T = 0, width = 0;
    int can_center = 1;
    if (check_inputs(model, dm_arg_str(&a, "hook"), tokens, &T, &width, hook, sizeof hook, &can_center)) {
        fprintf(stderr, "dmica activations: %s\n", dm_error());
        dm_args_free(&a);
        return 1;
    }
    int64_t batch = dm_arg_int(&a, "batch");
    if (!batch) {
        /* about 4096 rows a pass (large sgemms), and at most 1 GiB of logits */
        int64_t rows = (int64_t)4096 < ((int64_t)256 << 20) / width ? 4096 : ((int64_t)256 << 20) / width;
        batch = rows / T > 0 ? rows / T : 1;
    }
    char *qt = dm_yaml_quote(tokens), *qm = dm_yaml_quote(model), *qh = dm_yaml_quote(hook);
    char *port = dm_xasprintf("gpt2.%s", hook), *qp = dm_yaml_quote(port);
    char *yaml = dm_xasprintf(
        "name: activations\n"
        "nodes:\n"
        "  tokens: {op: text, params: {path: %s, format: npy, context: %lld, bos: false}, spill: never}\n"
        "  gpt2:\n"
        "    op: gpt2\n"
        "    inputs: {tokens: tokens}\n"
        "    params: {model: %s, hooks: %s, center: %s, batch: %lld}\n"
        "    spill: never\n"
        "  acts: {op: npy_sink, inputs: {x: %s}, params: {file: activations.npy}}\n",
        qt, (long long)T, qm, qh, dm_arg_flag(&a, "no-center") || !can_center ? "false" : "true", (long long)batch, qp);
    free(qt), free(qm), free(qh), free(port), free(qp);
    dm_cli_product want[] = {{"activations.npy", dm_arg_str(&a, "out"), NULL}};
    rc = dm_cli_run_to_files("activations", yaml, dm_arg_str(&a, "cache"), dm_arg_int(&a, "memory"),
                             (int)dm_arg_int(&a, "threads"), dm_arg_flag(&a, "quiet"), want, 1);
    free(yaml);
    dm_args_free(&a);
    return rc;
}
