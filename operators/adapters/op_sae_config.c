/*
 * op_sae_config.c: the `sae_config` operator, a SAELens folder's settings as a
 * tensor for the nodes that follow the SAE (sae_desc.h), and the functions of
 * that record.
 *
 * A pipeline names the SAE once:
 *
 *   sae_config: {op: sae_config, params: {path: models/gpt2-small-res-jb/blocks.6.hook_resid_pre}}
 *   text: {op: text, inputs: {sae: sae_config}, ...}       context_size, prepend_bos
 *   gpt2: {op: gpt2, inputs: {tokens: text.windows, sae: sae_config}, ...}   center_writing_weights
 *   sae:  {op: sae, inputs: {x: gpt2.blocks.6.hook_resid_pre, sae: sae_config}}   the weights' folder
 *
 * The SAE may also be Gemma Scope's original release, a params.npz (sae.h):
 * its settings are the release's, and its hook is the one its path names
 * (gemma-scope-2b-pt-res/layer_12/... reads blocks.12.hook_resid_post) or,
 * where the path does not say, the `hook` parameter.
 *
 * The node reads only cfg.json (the sae node checks and loads the weights), and
 * does so in infer(), so its consumers know the settings before any work: the
 * text node's window width is the SAE's context_size. `path` is a path
 * parameter, so the folder's content is in this node's cache key and, through
 * the chain, in every consumer's.
 */
#include <stdlib.h>
#include <string.h>

#include "op.h"
#include "sae.h"
#include "sae_desc.h"

int dm_sae_desc_from_config(dm_sae_desc *d, const dm_sae_config *c, const char *dir)
{
    memset(d, 0, sizeof *d);
    memcpy(d->magic, DM_SAE_DESC_MAGIC, sizeof DM_SAE_DESC_MAGIC);
    d->version = DM_SAE_DESC_VERSION;
    d->record_bytes = sizeof *d;
    d->d_in = c->d_in;
    d->d_sae = c->d_sae;
    d->context_size = c->context_size;
    d->prepend_bos = c->prepend_bos;
    d->center_writing_weights = c->center_writing_weights;
    const char *hook = c->hook_name ? c->hook_name : "";
    if (strlen(dir) >= sizeof d->dir)
        return dm_failc(DM_E_INPUT, "sae folder name of %zu bytes: at most %zu", strlen(dir), sizeof d->dir - 1);
    if (strlen(hook) >= sizeof d->hook_name)
        return dm_failc(DM_E_INPUT, "%s/cfg.json: hook_name of %zu bytes: at most %zu", dir, strlen(hook),
                        sizeof d->hook_name - 1);
    strcpy(d->dir, dir);
    strcpy(d->hook_name, hook);
    return 0;
}

void dm_sae_desc_tensor(dm_tensor *t, const dm_sae_desc *d, const float *weights)
{
    int64_t bytes = (int64_t)sizeof *d + 4 * d->weight_floats;
    dm_tensor_init(t, DM_U8, 1, &bytes);
    memcpy(t->data, d, sizeof *d);
    if (d->weight_floats)
        memcpy((char *)t->data + sizeof *d, weights, (size_t)d->weight_floats * sizeof(float));
}

int dm_sae_desc_input(const dm_node *n, int port, const dm_sae_desc **out)
{
    *out = NULL;
    if (!dm_input_connected(n, port))
        return 0;
    const dm_tensor *t = dm_input_tensor(n, port);
    if (!t)
        return dm_failc(DM_E_INPUT, "input sae is not known before the run: connect it to an sae_config or "
                                    "planted_sae node's output sae");
    const dm_sae_desc *d = t->data;
    int64_t bytes = t->ndim == 1 ? t->shape[0] : -1;
    const char *why = NULL;
    if (t->dtype != DM_U8 || bytes < (int64_t)sizeof *d || memcmp(d->magic, DM_SAE_DESC_MAGIC, sizeof DM_SAE_DESC_MAGIC))
        why = "is not an SAE (connect it to an sae_config or planted_sae node's output sae)";
    else if (d->version != DM_SAE_DESC_VERSION || d->record_bytes != sizeof *d)
        why = "holds an SAE record of another version (its producer is from another dmica: run it again)";
    else if (d->weight_floats < 0 || bytes != (int64_t)sizeof *d + 4 * d->weight_floats || d->d_in < 1 ||
             d->d_sae < 1 || memchr(d->dir, 0, sizeof d->dir) == NULL ||
             memchr(d->hook_name, 0, sizeof d->hook_name) == NULL)
        why = "holds a damaged SAE record (sizes do not agree)";
    if (why)
        return dm_failc(DM_E_CORRUPT, "input 'sae' %s", why);
    *out = d;
    return 0;
}

/* ---- the operator ------------------------------------------------------- */

static const dm_param_spec sae_config_params[] = {
    {"path", DM_P_PATH, NULL,
     "SAELens folder (its cfg.json is read here; the sae node loads the weights), or a Gemma Scope params.npz "
     "(the file, or its folder)"},
    {"hook", DM_P_STRING, "",
     "the hook the SAE reads, where its files do not say (a params.npz outside a Gemma Scope release path); "
     "checked against what they say otherwise (\"\" = theirs)"},
    {NULL},
};
static const dm_port_spec sae_config_outputs[] = {{"sae", DM_PORT_TENSOR}, {NULL}};

static int set_desc(dm_node *n)
{
    const char *dir = dm_param_str(n, "path"), *hook = dm_param_str(n, "hook");
    dm_sae_config c;
    dm_sae_desc d;
    dm_tensor t;
    if (dm_sae_read_config(dir, &c))
        return -1;
    if (*hook && *c.hook_name && strcmp(hook, c.hook_name)) {
        dm_failc(DM_E_INPUT, "hook %s, but the SAE %s reads %s", hook, dir, c.hook_name);
        dm_sae_config_free(&c);
        return -1;
    }
    if (*hook) {
        free(c.hook_name);
        c.hook_name = dm_xstrdup(hook);
    }
    int rc = dm_sae_desc_from_config(&d, &c, dir);
    dm_sae_config_free(&c);
    if (rc)
        return -1;
    dm_sae_desc_tensor(&t, &d, NULL);
    dm_port_desc *o = dm_output_desc(n, 0);
    o->dtype = DM_U8;
    o->ndim = 1;
    o->shape[0] = t.shape[0];
    return dm_set_output(n, 0, &t);
}

const dm_op dm_op_sae_config = {
    .name = "sae_config",
    .version = 1,
    .summary = "an SAE's settings (a SAELens cfg.json, or a Gemma Scope params.npz's) for the text, gpt2 and sae "
               "nodes that follow the SAE",
    .params = sae_config_params,
    .outputs = sae_config_outputs,
    .infer = set_desc,
    .finish = set_desc,
};
