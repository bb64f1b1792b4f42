/*
 * op_planted.c: a planted data set for the embedded demo, whose answer is known.
 *
 * Activations are sparse sums of `atoms` unit directions in `d` dimensions (a
 * dictionary D drawn from the seed): each token uses each atom with probability
 * l0 / atoms, with magnitude 1 + Exp(1), plus Gaussian noise of std `noise`:
 *
 *   x = sum_j a_j D_j + noise
 *
 * dm_planted_write_sae() writes, in SAELens format, an SAE that knows all atoms
 * but the first `missed`: W_dec = D[missed:], W_enc = D[missed:]^T, b_enc =
 * -threshold, standard ReLU architecture, no b_dec. Its residual holds the
 * missed atoms (and some interference); whitening and ICA should find them. The
 * source also outputs the missed atoms as a tensor, so the report can say how
 * many ICA recovers (|cos| > 0.9). With the demo's defaults (d 64, 96 atoms, 16
 * missed, L0 2, threshold 0.7, 24 components) scikit-learn recovers 16 of 16.
 *
 * Every draw is a function of (seed, row, atom) through a counter-based
 * generator, so rows are the same in any chunking.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "fs.h"
#include "op.h"
#include "safetensors.h"

static const dm_param_spec planted_params[] = {
    {"rows", DM_P_INT, "50000", "tokens"},
    {"d", DM_P_INT, "64", "activation width"},
    {"atoms", DM_P_INT, "96", "dictionary size"},
    {"missed", DM_P_INT, "16", "atoms the SAE does not know (the first ones)"},
    {"l0", DM_P_FLOAT, "2", "mean number of atoms per token"},
    {"noise", DM_P_FLOAT, "0.05", "std of the Gaussian noise per dimension"},
    {"threshold", DM_P_FLOAT, "0.7", "the SAE's firing threshold (b_enc = -threshold)"},
    {"seed", DM_P_INT, "1", "seed of the dictionary and the data"},
    {"sae", DM_P_STRING, "", "folder of the matching SAE (written by `dmica demo` before the run)"},
    {NULL},
};
static const dm_port_spec planted_outputs[] = {{"out", DM_PORT_STREAM}, {"missed_atoms", DM_PORT_TENSOR}, {NULL}};

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1) from a counter (seed, a, b, c). */
static inline double uni(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t z = mix64(seed * 0x9e3779b97f4a7c15ull + mix64(a * 0xd1342543de82ef95ull + mix64(b + 0x632be59bd9b4e019ull * (c + 1))));
    return ((double)(z >> 11) + 0.5) * 0x1p-53;
}

static inline double gauss(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return sqrt(-2 * log(uni(seed, a, b, 2 * c))) * cos(2 * M_PI * uni(seed, a, b, 2 * c + 1));
}

/* D: atoms x d, unit rows. */
static float *dictionary(uint64_t seed, int64_t d, int64_t m)
{
    float *D = dm_xmalloc((size_t)(m * d) * sizeof *D);
    for (int64_t j = 0; j < m; j++) {
        double norm = 0;
        for (int64_t i = 0; i < d; i++) {
            double g = gauss(seed, 1, (uint64_t)j, (uint64_t)i);
            D[j * d + i] = (float)g;
            norm += g * g;
        }
        for (int64_t i = 0; i < d; i++)
            D[j * d + i] = (float)(D[j * d + i] / sqrt(norm));
    }
    return D;
}

typedef struct {
    int64_t rows, d, m, missed, next;
    double p, noise;
    uint64_t seed;
    float *D;
} planted;

static int check(const dm_node *n)
{
    int64_t d = dm_param_int(n, "d"), m = dm_param_int(n, "atoms"), missed = dm_param_int(n, "missed");
    double l0 = dm_param_float(n, "l0");
    if (dm_param_int(n, "rows") < 2 || d < 2 || m < 2)
        return dm_fail("rows, d and atoms must be at least 2");
    if (missed < 1 || missed >= m)
        return dm_fail("missed must be between 1 and atoms - 1, not %lld", (long long)missed);
    if (!(l0 > 0) || l0 > (double)m)
        return dm_fail("l0 must be in (0, atoms]");
    return 0;
}

static int planted_infer(dm_node *n)
{
    if (check(n))
        return -1;
    dm_port_desc *o = dm_output_desc(n, 0), *t = dm_output_desc(n, 1);
    o->shape[0] = dm_param_int(n, "rows");
    o->shape[1] = dm_param_int(n, "d");
    t->dtype = DM_F32;
    t->ndim = 2;
    t->shape[0] = dm_param_int(n, "missed");
    t->shape[1] = dm_param_int(n, "d");
    return 0;
}

static int64_t planted_state_bytes(const dm_node *n) { return dm_param_int(n, "atoms") * dm_param_int(n, "d") * 4; }

static int planted_open(dm_node *n)
{
    planted *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->rows = dm_param_int(n, "rows");
    s->d = dm_param_int(n, "d");
    s->m = dm_param_int(n, "atoms");
    s->missed = dm_param_int(n, "missed");
    s->p = dm_param_float(n, "l0") / (double)s->m;
    s->noise = dm_param_float(n, "noise");
    s->seed = (uint64_t)dm_param_int(n, "seed");
    s->D = dictionary(s->seed, s->d, s->m);
    return 0;
}

static int planted_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    planted *s = dm_node_state(n);
    int64_t rows = s->rows - s->next < max_rows ? s->rows - s->next : max_rows;
    out->row0 = s->next;
    out->rows = rows;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        uint64_t row = (uint64_t)(s->next + r);
        float *x = out->data + r * s->d;
        for (int64_t i = 0; i < s->d; i++)
            x[i] = (float)(s->noise * gauss(s->seed, 2, row, (uint64_t)i));
        for (int64_t j = 0; j < s->m; j++) {
            if (uni(s->seed, 3, row, (uint64_t)j) >= s->p)
                continue;
            float a = (float)(1 - log(uni(s->seed, 4, row, (uint64_t)j)));
            for (int64_t i = 0; i < s->d; i++)
                x[i] += a * s->D[j * s->d + i];
        }
    }
    s->next += rows;
    return 0;
}

static int planted_finish(dm_node *n)
{
    planted *s = dm_node_state(n);
    dm_tensor t;
    int64_t shape[2] = {s->missed, s->d};
    dm_tensor_init(&t, DM_F32, 2, shape);
    memcpy(t.data, s->D, (size_t)(s->missed * s->d) * sizeof(float));
    return dm_set_output(n, 1, &t);
}

static void planted_close(dm_node *n)
{
    planted *s = dm_node_state(n);
    if (!s)
        return;
    free(s->D);
    free(s);
}

const dm_op dm_op_planted = {
    .name = "planted",
    .version = 1,
    .summary = "sparse sums of a known dictionary's atoms (the demo's planted data)",
    .params = planted_params,
    .outputs = planted_outputs,
    .infer = planted_infer,
    .state_bytes = planted_state_bytes,
    .open = planted_open,
    .produce = planted_produce,
    .finish = planted_finish,
    .close = planted_close,
};

/* ---- the matching SAE ------------------------------------------------------ */

/* A planted node's parameter as written, else the operator's default. */
static const char *kv(const dm_node_decl *d, const char *key)
{
    for (int i = 0; i < d->nparams; i++)
        if (!strcmp(d->params[i].key, key))
            return d->params[i].value;
    for (int i = 0; planted_params[i].name; i++)
        if (!strcmp(planted_params[i].name, key))
            return planted_params[i].def;
    return "";
}

/* Writes the SAE of every `planted` node of p into its `sae` folder (see the file
 * comment), unless it is there already with the same settings. */
int dm_planted_prepare(const dm_pipeline *p)
{
    for (int i = 0; i < p->nnodes; i++) {
        const dm_node_decl *d = &p->nodes[i];
        if (strcmp(d->op, "planted") || !*kv(d, "sae"))
            continue;
        const char *dir = kv(d, "sae");
        int64_t dd = atoll(kv(d, "d")), m = atoll(kv(d, "atoms")), missed = atoll(kv(d, "missed"));
        double th = atof(kv(d, "threshold"));
        uint64_t seed = (uint64_t)atoll(kv(d, "seed"));
        if (dd < 2 || missed < 1 || missed >= m)
            return dm_fail("%s: node '%s': bad planted settings (d %lld, atoms %lld, missed %lld)", p->path, d->name,
                           (long long)dd, (long long)m, (long long)missed);
        char *cfg = dm_xasprintf(
            "{\n  \"architecture\": \"standard\",\n  \"d_in\": %lld,\n  \"d_sae\": %lld,\n"
            "  \"activation_fn_str\": \"relu\",\n  \"apply_b_dec_to_input\": false,\n"
            "  \"normalize_activations\": \"none\",\n  \"hook_name\": \"planted\",\n  \"context_size\": 128,\n"
            "  \"prepend_bos\": true,\n  \"model_name\": \"planted (dmica demo): seed %llu, %lld atoms, "
            "the first %lld unknown to this SAE, threshold %g\",\n"
            "  \"model_from_pretrained_kwargs\": {\"center_writing_weights\": false}\n}\n",
            (long long)dd, (long long)(m - missed), (unsigned long long)seed, (long long)m, (long long)missed, th);
        char *cfg_path = dm_xasprintf("%s/cfg.json", dir), *w_path = dm_xasprintf("%s/sae_weights.safetensors", dir);
        size_t old_len = 0;
        char *old = dm_file_exists(cfg_path) && dm_file_exists(w_path) ? dm_read_file(cfg_path, &old_len) : NULL;
        int rc = 0;
        if (!old || strcmp(old, cfg)) {
            float *D = dictionary(seed, dd, m);
            int64_t k = m - missed;
            dm_tensor t[4];
            int64_t s_enc[2] = {dd, k}, s_dec[2] = {k, dd}, s_k[1] = {k}, s_d[1] = {dd};
            dm_tensor_init(&t[0], DM_F32, 2, s_enc);
            dm_tensor_init(&t[1], DM_F32, 2, s_dec);
            dm_tensor_init(&t[2], DM_F32, 1, s_k);
            dm_tensor_init(&t[3], DM_F32, 1, s_d);
            for (int64_t j = 0; j < k; j++) {
                for (int64_t i = 0; i < dd; i++) {
                    float v = D[(missed + j) * dd + i];
                    ((float *)t[0].data)[i * k + j] = v;
                    ((float *)t[1].data)[j * dd + i] = v;
                }
                ((float *)t[2].data)[j] = (float)-th;
            }
            static const char *names[] = {"W_enc", "W_dec", "b_enc", "b_dec"};
            rc = dm_mkdir_p(dir);
            if (!rc)
                rc = dm_st_write_f32(w_path, names, t, 4);
            if (!rc)
                rc = dm_write_file_atomic(cfg_path, cfg, strlen(cfg));
            for (int q = 0; q < 4; q++)
                dm_tensor_free(&t[q]);
            free(D);
        }
        free(old), free(cfg), free(cfg_path), free(w_path);
        if (rc)
            return dm_fail_prefix("writing the planted SAE of node '%s'", d->name);
    }
    return 0;
}
