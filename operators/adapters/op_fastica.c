/*
 * op_fastica.c: parallel FastICA of a whitened stream, S seeds at once.
 *
 * Input: stream `z` (rows of whitened data, k wide, identity covariance: the
 * project operator's output with pca.whitening and covariance.mean), declared
 * multipass. Each pass over z is one fixed-point iteration (fastica.h) for
 * every seed still running: the seeds' unmixing matrices are stacked into one
 * (S k x k) matrix, so the S runs share the passes and the GEMMs.
 *
 * Three ways through the data (the input's side is unmixing.c's, shared with
 * op_rica.c):
 *   - streamed: end_pass() asks the engine for another pass (a replay of z's
 *     spill file) until every seed converged or reached max_iter;
 *   - in RAM: when the rows are known and k x rows float32 fit in `memory`,
 *     the node reads z once (dm_input_single_pass: it runs in its producer's
 *     pass, and `dmica ica` then spills nothing), copies it into memory, and
 *     every iteration runs there over the whole block. Same arithmetic as the
 *     streamed path up to the float32 blocking of the sums;
 *   - warm start (`warm_start`): the first pass also keeps a uniform sample of
 *     `warm_rows` rows (reservoir sampling), iterates on a quarter of it to
 *     tol, then on all of it, and only then on the full data, to the same tol:
 *     most of the iterations cost warm_rows / (4 rows) of a pass.
 *
 * Seeds: seed s_i = seed + i. s_0 = seed starts from sklearn's matrix for
 * random_state=seed (fastica.h), so `unmixing` (seed s_0) can be compared with
 * scikit-learn's components_ directly. The other seeds' components are matched
 * to s_0's by the Hungarian algorithm on |cos| between unmixing rows (in the
 * whitened space rows are orthonormal, so |cos| = |w_i . w'_j|); a component's
 * stability is its smallest matched |cos| over the seeds, and it is flagged
 * unstable below `stable`.
 *
 * Outputs (tensors, f64 unless said):
 *   unmixing   (k, k)     W of seed s_0: sources s = W z
 *   unmixings  (S, k, k)  every seed's W, rows permuted and signs flipped to
 *                         match s_0's components (unmixings[0] = unmixing)
 *   stability  (k)        smallest matched |cos| of each component of s_0
 *   match      (S, k) i64 row of seed i matched to component j of s_0
 *   summary    dm_ica_summary (operators/analysis/summaries.h) with the text
 *              of ica.json, for the report operator
 * Product: ica.json (iterations, convergence flags and per-iteration log per
 * seed, timings, stability, unstable components). Non-convergence is a warning
 * and is recorded in ica.json ("converged": false).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastica.h"
#include "op.h"
#include "unmixing.h"

enum { OUT_UNMIXING, OUT_UNMIXINGS, OUT_STABILITY, OUT_MATCH, OUT_SUMMARY };

static const dm_param_spec ica_params[] = {
    {"fun", DM_P_STRING, "logcosh", "contrast function: logcosh, exp or cube (sklearn's fun)"},
    {"alpha", DM_P_FLOAT, "1", "logcosh's alpha (sklearn's fun_args), in [1, 2]"},
    {"tol", DM_P_FLOAT, "1e-4", "stop when max |(|diag(W_new W^T)| - 1)| < tol"},
    {"max_iter", DM_P_INT, "1000", "iterations (full passes) at most per seed"},
    DM_UNMIX_PARAMS("ica.json"), /* seed (sklearn's random_state for the first run), seeds, ..., file */
    {NULL},
};
static const dm_port_spec ica_inputs[] = {{"z", DM_PORT_STREAM, 1, 0}, {NULL}};
static const dm_port_spec ica_outputs[] = {
    {"unmixing", DM_PORT_TENSOR},
    {"unmixings", DM_PORT_TENSOR},
    {"stability", DM_PORT_TENSOR},
    {"match", DM_PORT_TENSOR},
    {"summary", DM_PORT_TENSOR},
    {NULL},
};

typedef struct {
    dm_unmix u;               /* z's way in, the passes (unmixing.h) */
    const dm_ica_backend *be; /* chosen at open from the compute context */
    int64_t k, S;
    dm_ica_fun fun;
    double alpha, tol;
    int max_iter;
    double *W;      /* (S, k, k) current unmixing per seed */
    double *W1;     /* (k, k) scratch */
    double *Wrun;   /* (S k, k) stacked W of the running seeds */
    int64_t *run;   /* (S) running seeds, in stack order */
    int nrun;
    int *iters, *conv, *warm_iters, *warm_conv;
    int *stage_iters; /* (S) warm-start iterations in the current stage */
    double *lim;    /* (S) last convergence measure */
    json_t **log;   /* (S) per-iteration lim */
    dm_ica_sums sums;
    int sums_active;    /* this pass accumulates sums */
} fastica;

static int64_t width(const dm_node *n) { return dm_input_desc(n, 0)->shape[1]; }

static int check_params(const dm_node *n, int64_t k)
{
    dm_ica_fun f;
    double tol = dm_param_float(n, "tol"), alpha = dm_param_float(n, "alpha");
    if (dm_ica_fun_parse(dm_param_str(n, "fun"), &f))
        return -1;
    if (!(tol > 0.0))
        return dm_fail("tol %g: need a positive tolerance", tol);
    if (!(alpha >= 1.0 && alpha <= 2.0))
        return dm_fail("alpha %g: need 1 <= alpha <= 2 (sklearn's range)", alpha);
    if (dm_param_int(n, "max_iter") < 1 || dm_param_int(n, "max_iter") > 1000000)
        return dm_fail("max_iter %lld: need 1 to 1000000", (long long)dm_param_int(n, "max_iter"));
    return dm_unmix_check(n, k, "FastICA");
}

static int ica_infer(dm_node *n)
{
    const dm_port_desc *z = dm_input_desc(n, 0);
    int64_t k = z->shape[1], S = dm_param_int(n, "seeds");
    if (check_params(n, k))
        return -1;
    dm_port_desc *u = dm_output_desc(n, OUT_UNMIXING), *us = dm_output_desc(n, OUT_UNMIXINGS);
    dm_port_desc *st = dm_output_desc(n, OUT_STABILITY), *m = dm_output_desc(n, OUT_MATCH);
    u->dtype = us->dtype = st->dtype = DM_F64;
    m->dtype = DM_I64;
    u->ndim = 2, u->shape[0] = u->shape[1] = k;
    us->ndim = 3, us->shape[0] = S, us->shape[1] = us->shape[2] = k;
    st->ndim = 1, st->shape[0] = k;
    m->ndim = 2, m->shape[0] = S, m->shape[1] = k;
    dm_port_desc *sm = dm_output_desc(n, OUT_SUMMARY);
    sm->dtype = DM_U8;
    sm->ndim = 1;
    sm->shape[0] = -1;
    dm_unmix_infer(n);
    return 0;
}

static int64_t ica_state_bytes(const dm_node *n)
{
    int64_t k = width(n), S = dm_param_int(n, "seeds");
    if (k <= 0)
        return 0;
    return dm_ica_sums_bytes(S * k, k, dm_node_compute(n)) + 8 * (S * k * k * 3 + k * k) + dm_unmix_bytes(n);
}

static void ica_close(dm_node *n)
{
    fastica *s = dm_node_state(n);
    if (!s)
        return;
    for (int64_t i = 0; s->log && i < s->S; i++)
        json_decref(s->log[i]);
    free(s->log);
    free(s->W), free(s->W1), free(s->Wrun), free(s->run);
    free(s->iters), free(s->conv), free(s->warm_iters), free(s->warm_conv), free(s->stage_iters), free(s->lim);
    dm_unmix_free(&s->u);
    dm_ica_sums_free(&s->sums);
    free(s);
    dm_node_set_state(n, NULL);
}

static void stack_running(fastica *s)
{
    int64_t k = s->k;
    s->nrun = 0;
    for (int64_t i = 0; i < s->S; i++) {
        if (s->conv[i] || s->iters[i] >= s->max_iter)
            continue;
        memcpy(s->Wrun + (int64_t)s->nrun * k * k, s->W + i * k * k, (size_t)(k * k) * sizeof(double));
        s->run[s->nrun++] = i;
    }
}

static int ica_open(dm_node *n)
{
    const dm_compute *cc = dm_node_compute(n);
    fastica *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->be = dm_ica_backend_for(cc);
    int64_t k = s->k = width(n), S = s->S = dm_param_int(n, "seeds");
    dm_unmix_open(&s->u, n);
    if (dm_ica_fun_parse(dm_param_str(n, "fun"), &s->fun))
        return -1;
    s->alpha = dm_param_float(n, "alpha");
    s->tol = dm_param_float(n, "tol");
    s->max_iter = (int)dm_param_int(n, "max_iter");
    s->W = dm_xmalloc((size_t)(S * k * k) * sizeof(double));
    s->W1 = dm_xmalloc((size_t)(k * k) * sizeof(double));
    s->Wrun = dm_xmalloc((size_t)(S * k * k) * sizeof(double));
    s->run = dm_xcalloc((size_t)S, sizeof(int64_t));
    s->iters = dm_xcalloc((size_t)S, sizeof(int));
    s->conv = dm_xcalloc((size_t)S, sizeof(int));
    s->warm_iters = dm_xcalloc((size_t)S, sizeof(int));
    s->warm_conv = dm_xcalloc((size_t)S, sizeof(int));
    s->stage_iters = dm_xcalloc((size_t)S, sizeof(int));
    s->lim = dm_xcalloc((size_t)S, sizeof(double));
    s->log = dm_xcalloc((size_t)S, sizeof(json_t *));
    for (int64_t i = 0; i < S; i++) {
        s->log[i] = json_array();
        s->lim[i] = INFINITY;
        dm_ica_w_init(s->W + i * k * k, k, (uint32_t)(dm_param_int(n, "seed") + i));
        if (dm_ica_symdecorr(s->W + i * k * k, k))
            return -1;
    }
    dm_ica_sums_init(&s->sums, S * k, k, cc);
    /* the first pass only samples with a warm start, and only copies in RAM */
    s->sums_active = !s->u.sample && !s->u.in_ram;
    stack_running(s);
    return 0;
}

static int ica_consume(dm_node *n, int port, const dm_chunk *c)
{
    fastica *s = dm_node_state(n);
    if (dm_unmix_consume(&s->u, c))
        return -1;
    if (s->sums_active && s->nrun)
        s->be->sums_update(&s->sums, s->fun, s->alpha, s->Wrun, (int64_t)s->nrun * s->k, c->data, c->rows);
    return 0;
}

/* Applies the accumulated sums: one step for each running seed. warm = 1 logs
 * to the warm-start counters. Returns 0, -1 on error. */
static int apply_step(dm_node *n, fastica *s, int warm)
{
    int64_t k = s->k;
    for (int r = 0; r < s->nrun; r++) {
        int64_t i = s->run[r];
        double *W = s->W + i * k * k, lim;
        if (dm_ica_step(&s->sums, (int64_t)r * k, W, s->W1, &lim))
            return dm_fail_prefix("seed %lld", (long long)(dm_param_int(n, "seed") + i));
        memcpy(W, s->W1, (size_t)(k * k) * sizeof(double));
        if (warm) {
            s->warm_iters[i]++;
            s->stage_iters[i]++;
            s->warm_conv[i] = lim < s->tol;
        } else {
            s->iters[i]++;
            s->lim[i] = lim;
            s->conv[i] = lim < s->tol;
            json_array_append_new(s->log[i], json_real(lim));
        }
    }
    return 0;
}

/* Iterates the running seeds on rows held in memory until they stop: to tol or
 * max_iter, or with warm = 1 to tol or warm_cap iterations of this call. */
static int iterate_rows(dm_node *n, fastica *s, const float *z, int64_t rows, int warm, int warm_cap);

static int iterate_in_memory(dm_node *n, fastica *s, const float *z, int64_t rows, int warm, int warm_cap)
{
    if (s->be->hold)
        s->be->hold(z, rows, s->k);
    int rc = iterate_rows(n, s, z, rows, warm, warm_cap);
    if (s->be->hold)
        s->be->hold(NULL, 0, 0);
    return rc;
}

static int iterate_rows(dm_node *n, fastica *s, const float *z, int64_t rows, int warm, int warm_cap)
{
    int64_t k = s->k;
    for (int64_t i = 0; i < s->S; i++)
        s->stage_iters[i] = 0;
    for (;;) {
        /* the warm start runs each seed to tol or max_iter on the sample */
        s->nrun = 0;
        for (int64_t i = 0; i < s->S; i++) {
            int done = warm ? s->warm_conv[i] || s->stage_iters[i] >= warm_cap
                            : s->conv[i] || s->iters[i] >= s->max_iter;
            if (done)
                continue;
            memcpy(s->Wrun + (int64_t)s->nrun * k * k, s->W + i * k * k, (size_t)(k * k) * sizeof(double));
            s->run[s->nrun++] = i;
        }
        if (!s->nrun)
            return 0;
        dm_ica_sums_reset(&s->sums);
        s->be->sums_update(&s->sums, s->fun, s->alpha, s->Wrun, (int64_t)s->nrun * k, z, rows);
        if (apply_step(n, s, warm))
            return -1;
    }
}

/* The warm start in two stages: a quarter of the sample to tol (at most 40
 * iterations: on a small sample a nearly Gaussian component can wander at the
 * sampling noise and never settle), then all of it to tol from there; the
 * first stage is skipped under 4096 rows (or 64 k). The second stage starts
 * off its fixed point by the first's sampling error only, so it takes a few
 * iterations where a cold start takes them all at the larger size (1M x 64
 * planted mixture: 12 iterations on 100000 rows before, 22 on 25000 and 3 on
 * 100000 now, 0.43 s -> 0.29 s).
 * The reservoir's slot order is not random (a slot keeps its first row with
 * probability warm_rows / rows), so a partial Fisher-Yates shuffle first makes
 * the quarter a uniform random subset of the sample. */
static int warm_start(dm_node *n, fastica *s)
{
    float *z = s->u.sample;
    int64_t k = s->k, m = s->u.sample_rows, lo = 4096 > 64 * k ? 4096 : 64 * k;
    if (m / 4 >= lo) {
        float *row = dm_xmalloc((size_t)k * sizeof(float));
        for (int64_t i = 0; i < m / 4; i++) {
            int64_t j = i + (int64_t)(dm_splitmix64(&s->u.rng) % (uint64_t)(m - i));
            memcpy(row, z + i * k, (size_t)k * sizeof(float));
            memcpy(z + i * k, z + j * k, (size_t)k * sizeof(float));
            memcpy(z + j * k, row, (size_t)k * sizeof(float));
        }
        free(row);
        if (iterate_in_memory(n, s, z, m / 4, 1, s->max_iter < 40 ? s->max_iter : 40))
            return -1;
        for (int64_t i = 0; i < s->S; i++)
            s->warm_conv[i] = 0;
    }
    return iterate_in_memory(n, s, z, m, 1, s->max_iter);
}

static int ica_end_pass(dm_node *n, int pass)
{
    fastica *s = dm_node_state(n);
    dm_unmix *u = &s->u;
    double t0 = dm_now();
    if (dm_unmix_end_pass(u, pass, s->sums.n, "FastICA"))
        return -1;
    if (s->sums_active) {
        if (apply_step(n, s, 0))
            return -1;
    } else if (u->sample) {
        /* first pass sampled: warm start on the sample, in stages */
        if (warm_start(n, s))
            return -1;
        free(u->sample);
        u->sample = NULL;
        u->t_warm = dm_now() - t0;
        s->sums_active = 1;
    }
    if (u->in_ram) {
        if (iterate_in_memory(n, s, u->ram, u->ram_rows, 0, 0))
            return -1;
        u->t_iter += dm_now() - t0 - u->t_warm;
        return 0;
    }
    stack_running(s);
    dm_ica_sums_reset(&s->sums);
    u->t_iter += dm_now() - t0;
    return s->nrun > 0;
}

/* Shards of a pass (op.h): the sums of a shard's rows, [n, gz (m x k), dg (m)]. */
static int64_t ica_pass_partial_size(const dm_node *n)
{
    int64_t ram, k = width(n), m = dm_param_int(n, "seeds") * k;
    if (k <= 0 || dm_unmix_in_ram(n, &ram) || dm_param_bool(n, "warm_start"))
        return 0; /* in RAM, or sampled in the first pass: not split */
    return 1 + m * k + m;
}

static int ica_pass_partial(dm_node *n, double *out)
{
    fastica *s = dm_node_state(n);
    s->u.split = 1;
    out[0] = (double)s->sums.n;
    memcpy(out + 1, s->sums.gz, (size_t)(s->sums.m * s->k + s->sums.m) * sizeof(double));
    dm_ica_sums_reset(&s->sums);
    return 0;
}

static int ica_pass_merge(dm_node *n, const double *in)
{
    fastica *s = dm_node_state(n);
    s->sums.n += (int64_t)in[0];
    for (int64_t i = 0; i < s->sums.m * s->k + s->sums.m; i++)
        s->sums.gz[i] += in[1 + i];
    return 0;
}

static json_t *int_array(const int *v, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static int ica_finish(dm_node *n)
{
    fastica *s = dm_node_state(n);
    int64_t k = s->k, S = s->S, seed = dm_param_int(n, "seed");
    const char *file = dm_param_str(n, "file");
    int64_t shape[3] = {S, k, k};
    dm_tensor un = {0}, uns = {0}, stab = {0}, match = {0}, summary = {0};
    int rc = -1;
    if (s->u.passes == 0)
        return dm_fail("input z is empty: no rows to run FastICA on");
    dm_tensor_init(&uns, DM_F64, 3, shape);
    dm_tensor_init(&match, DM_I64, 2, shape);
    dm_tensor_init(&un, DM_F64, 2, shape + 1);
    dm_tensor_init(&stab, DM_F64, 1, shape + 1);
    memcpy(un.data, s->W, (size_t)(k * k) * sizeof(double));
    json_t *o = json_object(), *seeds = json_array();
    json_t **si = dm_xcalloc((size_t)S, sizeof *si);
    for (int64_t i = 0; i < S; i++) {
        si[i] = json_object();
        json_array_append_new(seeds, si[i]);
        json_object_set_new(si[i], "seed", json_integer(seed + i));
        json_object_set_new(si[i], "iterations", json_integer(s->iters[i]));
        json_object_set_new(si[i], "converged", json_boolean(s->conv[i]));
        json_object_set_new(si[i], "final_lim", isfinite(s->lim[i]) ? json_real(s->lim[i]) : json_null());
        if (dm_param_bool(n, "warm_start")) {
            json_object_set_new(si[i], "warm_iterations", json_integer(s->warm_iters[i]));
            json_object_set_new(si[i], "warm_converged", json_boolean(s->warm_conv[i]));
        }
    }
    dm_unmix_match_seeds(s->W, S, k, k, uns.data, match.data, stab.data, si);
    for (int64_t i = 0; i < S; i++) {
        json_object_set_new(si[i], "log", json_incref(s->log[i]));
        if (!s->conv[i])
            dm_warn("%s: FastICA seed %lld did not converge in %d iterations (last max |(|diag(W1 W^T)| - 1)| "
                    "%.3g, tol %g); results are flagged unconverged in %s",
                    dm_node_name(n), (long long)(seed + i), s->iters[i], s->lim[i], s->tol,
                    *file ? file : "the outputs");
    }
    free(si);
    json_object_set_new(o, "k", json_integer(k));
    json_object_set_new(o, "rows", json_integer(s->u.seen));
    json_object_set_new(o, "fun", json_string(dm_ica_fun_name(s->fun)));
    json_object_set_new(o, "alpha", json_real(s->alpha));
    json_object_set_new(o, "tol", json_real(s->tol));
    json_object_set_new(o, "max_iter", json_integer(s->max_iter));
    json_object_set_new(o, "seed", json_integer(seed));
    json_object_set_new(o, "iterations", json_integer(s->iters[0]));
    json_object_set_new(o, "converged", json_boolean(s->conv[0]));
    json_object_set_new(o, "all_converged", json_boolean(1));
    for (int64_t i = 0; i < S; i++)
        if (!s->conv[i])
            json_object_set_new(o, "all_converged", json_boolean(0));
    json_object_set_new(o, "iterations_per_seed", int_array(s->iters, S));
    dm_unmix_result r = {"ica summary", k, S, s->iters[0], s->conv};
    int bad = dm_unmix_publish(n, &s->u, &r, stab.data, o, seeds, &summary);
    json_decref(o);
    if (bad)
        goto end;
    if (dm_set_output(n, OUT_UNMIXING, &un) || dm_set_output(n, OUT_UNMIXINGS, &uns) ||
        dm_set_output(n, OUT_STABILITY, &stab) || dm_set_output(n, OUT_MATCH, &match) ||
        dm_set_output(n, OUT_SUMMARY, &summary))
        goto end;
    rc = 0;
end:
    dm_tensor_free(&un), dm_tensor_free(&uns), dm_tensor_free(&stab), dm_tensor_free(&match);
    dm_tensor_free(&summary);
    return rc;
}

const dm_op dm_op_fastica = {
    .name = "fastica",
    .version = 3,
    .summary = "parallel FastICA (sklearn semantics) of a whitened stream, several seeds, stability",
    .params = ica_params,
    .inputs = ica_inputs,
    .outputs = ica_outputs,
    .infer = ica_infer,
    .state_bytes = ica_state_bytes,
    .open = ica_open,
    .consume = ica_consume,
    .end_pass = ica_end_pass,
    .finish = ica_finish,
    .close = ica_close,
    .pass_partial_size = ica_pass_partial_size,
    .pass_partial = ica_pass_partial,
    .pass_merge = ica_pass_merge,
};
