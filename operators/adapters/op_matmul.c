/*
 * op_matmul.c: the product of two small tensors, out = a @ b^T, in double.
 *
 * a (m, n) and b (p, n), float32 or float64; out (m, p) float64. It joins two
 * maps into one: the 100M pipeline turns the ICA directions D (k, d) and the
 * PCA's unwhitening U (k', d) into D U^T, so that the ICA activations x D^T come
 * from the stored x W^T (k' numbers a token) instead of from x (op_pca.c).
 */
#include <stdlib.h>

#include "op.h"

static const dm_port_spec matmul_inputs[] = {{"a", DM_PORT_TENSOR}, {"b", DM_PORT_TENSOR}, {NULL}};
static const dm_port_spec matmul_outputs[] = {{"out", DM_PORT_TENSOR}, {NULL}};

static int check_input(const dm_port_desc *t, const char *name)
{
    if (t->ndim != 2)
        return dm_failc(DM_E_SHAPE, "input '%s' must be 2-D, got %d dimensions", name, t->ndim);
    if (t->dtype != DM_F32 && t->dtype != DM_F64)
        return dm_failc(DM_E_SHAPE, "input '%s' must be float32 or float64, not %s", name, dm_dtype_name(t->dtype));
    return 0;
}

static int matmul_infer(dm_node *n)
{
    const dm_port_desc *a = dm_input_desc(n, 0), *b = dm_input_desc(n, 1);
    if (check_input(a, "a") || check_input(b, "b"))
        return -1;
    if (a->shape[1] >= 0 && b->shape[1] >= 0 && a->shape[1] != b->shape[1])
        return dm_failc(DM_E_SHAPE, "inputs a (%lld x %lld) and b (%lld x %lld) need the same number of columns",
                        (long long)a->shape[0], (long long)a->shape[1], (long long)b->shape[0],
                        (long long)b->shape[1]);
    dm_port_desc *o = dm_output_desc(n, 0);
    o->dtype = DM_F64;
    o->ndim = 2;
    o->shape[0] = a->shape[0];
    o->shape[1] = b->shape[0];
    return 0;
}

static double at(const dm_tensor *t, int64_t i)
{
    return t->dtype == DM_F64 ? ((const double *)t->data)[i] : (double)((const float *)t->data)[i];
}

static int matmul_finish(dm_node *n)
{
    const dm_tensor *a = dm_input_tensor(n, 0), *b = dm_input_tensor(n, 1);
    int64_t m = a->shape[0], p = b->shape[0], k = a->shape[1];
    if (b->shape[1] != k)
        return dm_failc(DM_E_SHAPE, "inputs a (%lld x %lld) and b (%lld x %lld) need the same number of columns",
                        (long long)m, (long long)k, (long long)p, (long long)b->shape[1]);
    int64_t shape[2] = {m, p};
    dm_tensor out;
    dm_tensor_init(&out, DM_F64, 2, shape);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < p; j++) {
            double s = 0.0;
            for (int64_t l = 0; l < k; l++)
                s += at(a, i * k + l) * at(b, j * k + l);
            ((double *)out.data)[i * p + j] = s;
        }
    return dm_set_output(n, 0, &out);
}

const dm_op dm_op_matmul = {
    .name = "matmul",
    .version = 1,
    .summary = "out = a @ b^T of two small tensors, in double",
    .params = (const dm_param_spec[]){{NULL}},
    .inputs = matmul_inputs,
    .outputs = matmul_outputs,
    .infer = matmul_infer,
    .finish = matmul_finish,
};
