/*
 * op_planted.c: a planted data set for the embedded demo, whose answer is known.
 *
 * Activations are sparse sums of `atoms` unit directions in `d` dimensions (a
 * dictionary D drawn from the seed): each token uses each atom with probability
 * l0 / atoms, with magnitude 1 + Exp(1), plus Gaussian noise of std `noise`:
 *
 *   x = sum_j a_j D_j + noise
 *
 * dm_planted_write_sae() (operators/kernels/planted.c) writes, in SAELens format, an SAE that knows all atoms
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

#include "op.h"
#include "planted.h"

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
    s->D = dm_planted_dictionary(s->seed, s->d, s->m);
    return 0;
}

static int planted_produce(dm_node *n, dm_chunk *out, int64_t max_rows)
{
    planted *s = dm_node_state(n);
    int64_t rows = s->rows - s->next < max_rows ? s->rows - s->next : max_rows;
    out->row0 = s->next;
    out->rows = rows;
    dm_planted_rows(out->data, s->next, rows, s->D, s->d, s->m, s->p, s->noise, s->seed);
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
