/*
 * op_planted.c: a planted data set for the embedded demo, whose answer is
 * known: `planted_sae`, a dictionary and the SAE that misses some of its atoms
 * (tensors only), and `planted`, the activations drawn from that dictionary.
 *
 * Activations are sparse sums of `atoms` unit directions in `d` dimensions (a
 * dictionary D drawn from planted_sae's seed): each token uses each atom with
 * probability l0 / atoms, with magnitude 1 + Exp(1), plus Gaussian noise of std
 * `noise`:
 *
 *   x = sum_j a_j D_j + noise
 *
 * The SAE (operators/kernels/planted.c) knows all atoms but the first
 * `missed`: W_dec = D[missed:], W_enc = D[missed:]^T, b_enc = -threshold,
 * standard ReLU architecture, no b_dec. Its residual holds the missed atoms
 * (and some interference); whitening and ICA should find them. planted_sae
 * hands it to the sae node on its `sae` output (a sae_desc.h record with the
 * weights), writes it in SAELens format among its products (`name`/cfg.json,
 * `name`/sae_weights.safetensors, so `dmica sae` and `dmica analyze` can use
 * it), and outputs the missed atoms, so the report can say how many ICA
 * recovers (|cos| > 0.9). With the demo's defaults (d 64, 96 atoms, 16
 * missed, L0 2, threshold 0.7, 24 components) scikit-learn recovers 16 of 16.
 *
 * The overcomplete variant (pipelines/demo-overcomplete.yaml, docs/rica.md):
 * planted_sae's `missed_dim` draws the missed atoms inside a random subspace of
 * that dimension (40 atoms in 24 dimensions: more than whitening to 24 keeps
 * components), and planted's `missed_law: laplace` gives each missed atom (the
 * rows of its `missed_atoms` input, the dictionary's first) a dense Laplace
 * coefficient of unit variance on every row, the known atoms staying sparse.
 * The defaults (0, sparse) give the data above bit for bit.
 *
 * planted_sae's outputs depend only on its parameters, and are small: it sets
 * them already in infer(), so the sae node knows the SAE's sizes before any
 * work.
 *
 * Every draw is a function of (seed, row, atom) through a counter-based
 * generator, so rows are the same in any chunking, and `planted` can start
 * anywhere: seek() makes it produce any range of its rows (a shard).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "op.h"
#include "planted.h"
#include "sae_desc.h"

/* ---- planted_sae: the dictionary and the SAE ------------------------------ */

enum { SAE_OUT_DICTIONARY, SAE_OUT_MISSED, SAE_OUT_SAE };

static const dm_param_spec planted_sae_params[] = {
    {"d", DM_P_INT, "64", "activation width"},
    {"atoms", DM_P_INT, "96", "dictionary size"},
    {"missed", DM_P_INT, "16", "atoms the SAE does not know (the first ones)"},
    {"missed_dim", DM_P_INT, "0", "draw the missed atoms inside a random subspace of this dimension (0: anywhere)"},
    {"threshold", DM_P_FLOAT, "0.7", "the SAE's firing threshold (b_enc = -threshold)"},
    {"seed", DM_P_INT, "1", "seed of the dictionary"},
    {"name", DM_P_STRING, "planted-sae", "the SAE's name in products, and the folder of its SAELens files"},
    {NULL},
};
static const dm_port_spec planted_sae_outputs[] = {
    {"dictionary", DM_PORT_TENSOR}, {"missed_atoms", DM_PORT_TENSOR}, {"sae", DM_PORT_TENSOR}, {NULL}};

static int planted_sae_check(const dm_node *n)
{
    int64_t d = dm_param_int(n, "d"), m = dm_param_int(n, "atoms"), missed = dm_param_int(n, "missed");
    const char *name = dm_param_str(n, "name");
    if (d < 2 || m < 2)
        return dm_failc(DM_E_INPUT, "d and atoms must be at least 2");
    if ((double)d * (double)m > 1e9)
        return dm_failc(DM_E_INPUT, "d x atoms = %.3g: at most 1e9 (the dictionary is held in memory)",
                        (double)d * (double)m);
    if (missed < 1 || missed >= m)
        return dm_failc(DM_E_INPUT, "missed must be between 1 and atoms - 1, not %lld", (long long)missed);
    if (dm_param_int(n, "missed_dim") < 0 || dm_param_int(n, "missed_dim") > d)
        return dm_failc(DM_E_INPUT, "missed_dim must be between 0 (no subspace) and d = %lld, not %lld", (long long)d,
                        (long long)dm_param_int(n, "missed_dim"));
    if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "node.json"))
        return dm_failc(DM_E_INPUT, "name must be a plain folder name, not '%s'", name);
    return 0;
}

/* Sets the three outputs (and their descriptions) from the parameters. */
static int planted_sae_outputs_set(dm_node *n, float **dict_out)
{
    if (planted_sae_check(n))
        return -1;
    int64_t d = dm_param_int(n, "d"), m = dm_param_int(n, "atoms"), missed = dm_param_int(n, "missed");
    int64_t k = m - missed;
    double th = dm_param_float(n, "threshold");
    float *D = dm_planted_dictionary((uint64_t)dm_param_int(n, "seed"), d, m, missed, dm_param_int(n, "missed_dim"));
    dm_tensor t[3];
    int64_t s_dict[2] = {m, d}, s_missed[2] = {missed, d};
    dm_tensor_init(&t[SAE_OUT_DICTIONARY], DM_F32, 2, s_dict);
    memcpy(t[SAE_OUT_DICTIONARY].data, D, (size_t)(m * d) * sizeof(float));
    dm_tensor_init(&t[SAE_OUT_MISSED], DM_F32, 2, s_missed);
    memcpy(t[SAE_OUT_MISSED].data, D, (size_t)(missed * d) * sizeof(float));

    dm_sae_desc desc;
    memset(&desc, 0, sizeof desc);
    memcpy(desc.magic, DM_SAE_DESC_MAGIC, sizeof DM_SAE_DESC_MAGIC);
    desc.version = DM_SAE_DESC_VERSION;
    desc.record_bytes = sizeof desc;
    desc.d_in = d;
    desc.d_sae = k;
    /* as dm_planted_sae_config's cfg.json says */
    desc.context_size = 128;
    desc.prepend_bos = 1;
    desc.center_writing_weights = 0;
    desc.weight_floats = 2 * d * k + k + d;
    snprintf(desc.hook_name, sizeof desc.hook_name, "%s", DM_PLANTED_HOOK);
    snprintf(desc.dir, sizeof desc.dir, "%s", dm_param_str(n, "name"));
    float *w = dm_xmalloc((size_t)desc.weight_floats * sizeof *w);
    dm_planted_sae(D, d, m, missed, th, w, w + d * k, w + 2 * d * k, w + 2 * d * k + k);
    dm_sae_desc_tensor(&t[SAE_OUT_SAE], &desc, w);
    free(w);

    int rc = 0;
    for (int p = 0; p < 3; p++) {
        dm_port_desc *o = dm_output_desc(n, p);
        o->dtype = t[p].dtype;
        o->ndim = t[p].ndim;
        memcpy(o->shape, t[p].shape, sizeof o->shape);
        if (!rc)
            rc = dm_set_output(n, p, &t[p]);
        dm_tensor_free(&t[p]);
    }
    if (dict_out && !rc)
        *dict_out = D;
    else
        free(D);
    return rc;
}

static int planted_sae_infer(dm_node *n) { return planted_sae_outputs_set(n, NULL); }

static int planted_sae_finish(dm_node *n)
{
    float *D = NULL;
    if (planted_sae_outputs_set(n, &D))
        return -1;
    const char *name = dm_param_str(n, "name");
    char *dir = dm_xasprintf("%s/%s", dm_node_dir(n), name);
    char *cfg = dm_xasprintf("%s/cfg.json", name), *weights = dm_xasprintf("%s/sae_weights.safetensors", name);
    int rc = dm_planted_write_sae(dir, D, dm_param_int(n, "d"), dm_param_int(n, "atoms"), dm_param_int(n, "missed"),
                                  dm_param_float(n, "threshold"), (uint64_t)dm_param_int(n, "seed"));
    if (!rc)
        rc = dm_publish(n, cfg);
    if (!rc)
        rc = dm_publish(n, weights);
    free(D), free(dir), free(cfg), free(weights);
    return rc;
}

const dm_op dm_op_planted_sae = {
    .name = "planted_sae",
    .version = 1,
    .summary = "the demo's dictionary of known atoms, and an SAE that misses the first of them",
    .params = planted_sae_params,
    .outputs = planted_sae_outputs,
    .infer = planted_sae_infer,
    .finish = planted_sae_finish,
};

/* ---- planted: the activations ------------------------------------------ */

static const dm_param_spec planted_params[] = {
    {"rows", DM_P_INT, "50000", "tokens"},
    {"l0", DM_P_FLOAT, "2", "mean number of sparse atoms per token"},
    {"noise", DM_P_FLOAT, "0.05", "std of the Gaussian noise per dimension"},
    {"seed", DM_P_INT, "1", "seed of the data (planted_sae's seed draws the dictionary)"},
    {"missed_law", DM_P_STRING, "sparse",
     "coefficients of the missed atoms: sparse (as the others) or laplace (dense, unit variance; needs missed_atoms)"},
    {NULL},
};
enum { IN_DICTIONARY, IN_MISSED };
static const dm_port_spec planted_inputs[] = {
    {"dictionary", DM_PORT_TENSOR}, {"missed_atoms", DM_PORT_TENSOR, 0, 1}, {NULL}};
static const dm_port_spec planted_outputs[] = {{"out", DM_PORT_STREAM}, {NULL}};

typedef struct {
    int64_t rows, d, m, next, end; /* rows [next, end) are still to come */
    int64_t dense;                 /* the first atoms, with Laplace coefficients on every row */
    double p, noise;
    uint64_t seed;
    const float *D; /* the dictionary input's */
} planted;

static int planted_infer(dm_node *n)
{
    const dm_port_desc *D = dm_input_desc(n, 0);
    double l0 = dm_param_float(n, "l0");
    if (D->dtype != DM_F32 || D->ndim != 2 || D->shape[0] < 2 || D->shape[1] < 2)
        return dm_failc(DM_E_SHAPE, "input 'dictionary' must be a float32 matrix of at least 2 x 2 (atoms x d)");
    if (dm_param_int(n, "rows") < 2)
        return dm_failc(DM_E_INPUT, "rows must be at least 2");
    if (!(l0 > 0) || l0 > (double)D->shape[0])
        return dm_failc(DM_E_INPUT, "l0 must be in (0, atoms], atoms = %lld", (long long)D->shape[0]);
    if (!(dm_param_float(n, "noise") >= 0))
        return dm_failc(DM_E_INPUT, "noise must be 0 or more");
    const char *law = dm_param_str(n, "missed_law");
    const dm_port_desc *M = dm_input_desc(n, IN_MISSED);
    if (strcmp(law, "sparse") && strcmp(law, "laplace"))
        return dm_failc(DM_E_INPUT, "missed_law '%s': expected sparse or laplace", law);
    if (!strcmp(law, "laplace") && !M)
        return dm_failc(DM_E_INPUT, "missed_law laplace needs input 'missed_atoms' (planted_sae.missed_atoms)");
    if (M && (M->dtype != DM_F32 || M->ndim != 2 || M->shape[1] != D->shape[1] || M->shape[0] >= D->shape[0]))
        return dm_failc(DM_E_SHAPE, "input 'missed_atoms' must be a float32 matrix of fewer than %lld rows of width "
                        "%lld (the dictionary's first rows)", (long long)D->shape[0], (long long)D->shape[1]);
    if (M && !strcmp(law, "laplace") && l0 > (double)(D->shape[0] - M->shape[0]))
        return dm_failc(DM_E_INPUT, "l0 must be in (0, %lld], the atoms with sparse coefficients",
                        (long long)(D->shape[0] - M->shape[0]));
    dm_port_desc *o = dm_output_desc(n, 0);
    o->shape[0] = dm_param_int(n, "rows");
    o->shape[1] = D->shape[1];
    return 0;
}

static int planted_open(dm_node *n)
{
    planted *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    const dm_tensor *D = dm_input_tensor(n, 0);
    if (!D)
        return dm_failc(DM_E_INTERNAL, "input 'dictionary' is not there when the node opens");
    s->rows = s->end = dm_param_int(n, "rows");
    s->m = D->shape[0];
    s->d = D->shape[1];
    s->noise = dm_param_float(n, "noise");
    s->seed = (uint64_t)dm_param_int(n, "seed");
    s->D = D->data;
    const dm_tensor *M = dm_input_tensor(n, IN_MISSED);
    if (M && memcmp(M->data, D->data, (size_t)dm_tensor_numel(M) * sizeof(float)))
        return dm_failc(DM_E_INPUT, "input 'missed_atoms' is not the first %lld rows of input 'dictionary'",
                        (long long)M->shape[0]);
    s->dense = M && !strcmp(dm_param_str(n, "missed_law"), "laplace") ? M->shape[0] : 0;
    s->p = dm_param_float(n, "l0") / (double)(s->m - s->dense); /* over the sparse atoms */
    return 0;
}

static int planted_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    planted *s = dm_node_state(n);
    int64_t rows = s->end - s->next < max_rows ? s->end - s->next : max_rows;
    out->row0 = s->next;
    out->rows = rows;
    dm_planted_rows(out->data, s->next, rows, s->D, s->d, s->m, s->p, s->noise, s->dense, s->seed);
    s->next += rows;
    return 0;
}

static int planted_seek(dm_node *n, int64_t row0, int64_t rows)
{
    planted *s = dm_node_state(n);
    if (row0 < 0 || rows < 0 || row0 > s->rows || rows > s->rows - row0)
        return dm_failc(DM_E_INTERNAL, "seek to rows %lld..%lld, outside the %lld rows of this source",
                        (long long)row0, (long long)(row0 + rows - 1), (long long)s->rows);
    s->next = row0;
    s->end = row0 + rows;
    return 0;
}

static void planted_close(dm_node *n)
{
    free(dm_node_state(n));
    dm_node_set_state(n, NULL);
}

const dm_op dm_op_planted = {
    .name = "planted",
    .version = 2,
    .summary = "sparse sums of a dictionary's atoms (the demo's planted data)",
    .params = planted_params,
    .inputs = planted_inputs,
    .outputs = planted_outputs,
    .infer = planted_infer,
    .open = planted_open,
    .produce = planted_produce,
    .close = planted_close,
    .shardable = 1,
    .seek = planted_seek,
};
