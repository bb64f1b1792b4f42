/*
 * op_rica.c: Reconstruction ICA (operators/kernels/rica.h) of a whitened
 * stream: K components in k dimensions, K free to exceed k (an overcomplete
 * basis, which FastICA's k x k unmixing cannot give), S seeds at once.
 *
 * Input: stream `z` (k wide, identity covariance: the project operator's
 * output with pca.whitening and covariance.mean), declared multipass. Each
 * seed runs its own L-BFGS (operators/kernels/lbfgs.h) in V, W = rownorm(V);
 * every pass over z evaluates the objective and its gradient at the point
 * each running seed's L-BFGS asks for: the seeds' W are stacked into one
 * (S K x k) matrix, so the S runs share the passes and the GEMMs. A pass is
 * one evaluation, not one iteration: an iteration takes one evaluation when
 * its first step satisfies the Wolfe conditions (most do) and more when the
 * line search brackets or zooms.
 *
 * Three ways through the data, as op_fastica.c (the machinery both share is
 * in unmixing.c):
 *   - streamed: end_pass() asks for another pass until every seed stopped;
 *     a pass split by shards (and MPI ranks) returns its sums through
 *     pass_partial / pass_merge (plain sums: rica.h);
 *   - in RAM: when k x rows float32 fit in `memory`, z is read once and every
 *     evaluation runs there;
 *   - warm start (`warm_start`): the first pass keeps a uniform sample of
 *     `warm_rows` rows (reservoir sampling), every seed runs to its stopping
 *     rule on the sample, and the full-data L-BFGS starts from there (with a
 *     fresh memory): most iterations cost warm_rows / rows of a pass.
 * The covariance (1/N) sum z z^T, which gives the reconstruction term, is
 * accumulated in the first pass of the data that is optimised and kept.
 *
 * Stopping, per seed: the relative decrease of f over an iteration,
 * (f_prev - f) / max(|f_prev|, |f|, 1), below `tol`, or max |grad_V f| below
 * `gtol` ("converged"); the line search finding no lower point ("stalled":
 * f is at its minimum to the precision of the float32 sums; counted as
 * converged); or `max_iter` iterations (not converged: a warning).
 *
 * Seeds: seed s_i = seed + i; s_i starts from rownorm(RandomState(s_i).normal
 * (size=(K, k))) (numpy reproduces it). The other seeds' rows are matched to
 * s_0's by the Hungarian algorithm on |cos| between rows (rows are unit, so
 * |cos| = |w_i . w'_j|), exactly as op_fastica.c matches unmixing rows
 * (unmixing.c); a component's stability is its smallest matched |cos| over
 * the seeds, and it is flagged unstable below `stable`.
 *
 * Back to activation space: sources are s = W z and the reconstruction is
 * z ~ W^T s, so W plays the unmixing (filters, rows) and W^T the mixing (its
 * columns the patterns) in the whitened space; ica_compare takes W with
 * mixing = W^T (its `whitened_mixing` input) to patterns, filters and the SAE
 * comparison (ica_backproject.h).
 *
 * Outputs (tensors, f64 unless said):
 *   unmixing   (K, k)     W of seed s_0, unit rows
 *   mixing     (k, K)     W^T: z ~ mixing s
 *   unmixings  (S, K, k)  every seed's W, rows permuted and signs flipped to
 *                         match s_0's components
 *   stability  (K)        smallest matched |cos| of each component of s_0
 *   match      (S, K) i64 row of seed i matched to component j of s_0
 *   objective  (S)        f at each seed's result
 *   summary    dm_ica_summary (summaries.h; k = K) with rica.json's text
 * Product: rica.json (parameters, per seed iterations, evaluations, the stop
 * and f per iteration, stability, timings).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbfgs.h"
#include "op.h"
#include "rica.h"
#include "unmixing.h"

enum { OUT_UNMIXING, OUT_MIXING, OUT_UNMIXINGS, OUT_STABILITY, OUT_MATCH, OUT_OBJECTIVE, OUT_SUMMARY };
enum { RUNNING = 0, CONVERGED, STALLED, MAX_ITER };
static const char *stop_names[] = {"running", "converged", "stalled", "max_iter"};

static const dm_param_spec rica_params[] = {
    {"K", DM_P_INT, "0", "components (rows of W); 0: twice the width k of z"},
    {"lambda", DM_P_FLOAT, "0.5", "weight of the sparsity term against the reconstruction term"},
    {"g", DM_P_STRING, "logcosh", "the smooth L1: logcosh or sqrt (sqrt(u^2 + eps))"},
    {"eps", DM_P_FLOAT, "0.01", "sqrt's eps"},
    {"tol", DM_P_FLOAT, "1e-8", "stop when an iteration lowers f by less than tol relative"},
    {"gtol", DM_P_FLOAT, "1e-6", "stop when max |gradient| falls below gtol"},
    {"max_iter", DM_P_INT, "1000", "L-BFGS iterations at most per seed"},
    DM_UNMIX_PARAMS("rica.json"), /* seed, seeds, stable, warm_start, warm_rows, memory, file */
    {NULL},
};
static const dm_port_spec rica_inputs[] = {{"z", DM_PORT_STREAM, 1, 0}, {NULL}};
static const dm_port_spec rica_outputs[] = {
    {"unmixing", DM_PORT_TENSOR}, {"mixing", DM_PORT_TENSOR},    {"unmixings", DM_PORT_TENSOR},
    {"stability", DM_PORT_TENSOR}, {"match", DM_PORT_TENSOR},    {"objective", DM_PORT_TENSOR},
    {"summary", DM_PORT_TENSOR},   {NULL},
};

typedef struct {
    dm_unmix u; /* z's way in, the passes (unmixing.h) */
    const dm_rica_backend *be;
    int64_t k, K, S;
    dm_rica_fun fun;
    double lambda, eps, tol, gtol;
    int max_iter;
    dm_lbfgs *opt;   /* (S) one L-BFGS per seed, in V */
    int *stop;       /* (S) RUNNING, CONVERGED, STALLED, MAX_ITER */
    double *fprev;   /* (S) f at the previous iterate */
    int *warm_iters; /* (S) iterations on the warm-start sample */
    json_t **log;    /* (S) f per iteration */
    double *Wrun;    /* (S K, k) the running seeds' trial W, stacked */
    double *G, *gV;  /* (K, k) scratch */
    int64_t *run;    /* (S) running seeds, in stack order */
    int nrun;
    dm_rica_sums sums;
    double *cov;     /* (k, k) sum z z^T of the optimised rows, once known */
    int cov_ready;
    int sums_active; /* this pass accumulates sums */
} rica;

static int64_t width(const dm_node *n) { return dm_input_desc(n, 0)->shape[1]; }

static int64_t components(const dm_node *n, int64_t k)
{
    int64_t K = dm_param_int(n, "K");
    return K > 0 ? K : 2 * k;
}

static int check_params(const dm_node *n, int64_t k)
{
    dm_rica_fun f;
    double lambda = dm_param_float(n, "lambda"), eps = dm_param_float(n, "eps");
    int64_t K = dm_param_int(n, "K");
    if (dm_rica_fun_parse(dm_param_str(n, "g"), &f))
        return -1;
    if (!(lambda >= 0.0) || !isfinite(lambda))
        return dm_fail("lambda %g: need a finite weight >= 0", lambda);
    if (!(eps > 0.0))
        return dm_fail("eps %g: need eps > 0", eps);
    if (!(dm_param_float(n, "tol") >= 0.0) || !(dm_param_float(n, "gtol") >= 0.0))
        return dm_fail("tol %g, gtol %g: need tolerances >= 0", dm_param_float(n, "tol"), dm_param_float(n, "gtol"));
    if (dm_param_int(n, "max_iter") < 1 || dm_param_int(n, "max_iter") > 1000000)
        return dm_fail("max_iter %lld: need 1 to 1000000", (long long)dm_param_int(n, "max_iter"));
    if (K < 0 || K > 65536)
        return dm_fail("K %lld: need 0 (twice k) to 65536 components", (long long)K);
    return dm_unmix_check(n, k, "RICA");
}

static int rica_infer(dm_node *n)
{
    int64_t k = dm_input_desc(n, 0)->shape[1], S = dm_param_int(n, "seeds");
    if (check_params(n, k))
        return -1;
    int64_t K = components(n, k);
    dm_port_desc *o[OUT_SUMMARY + 1];
    for (int p = 0; p <= OUT_SUMMARY; p++)
        o[p] = dm_output_desc(n, p), o[p]->dtype = DM_F64;
    o[OUT_UNMIXING]->ndim = 2, o[OUT_UNMIXING]->shape[0] = K, o[OUT_UNMIXING]->shape[1] = k;
    o[OUT_MIXING]->ndim = 2, o[OUT_MIXING]->shape[0] = k, o[OUT_MIXING]->shape[1] = K;
    o[OUT_UNMIXINGS]->ndim = 3, o[OUT_UNMIXINGS]->shape[0] = S, o[OUT_UNMIXINGS]->shape[1] = K;
    o[OUT_UNMIXINGS]->shape[2] = k;
    o[OUT_STABILITY]->ndim = 1, o[OUT_STABILITY]->shape[0] = K;
    o[OUT_MATCH]->dtype = DM_I64, o[OUT_MATCH]->ndim = 2, o[OUT_MATCH]->shape[0] = S, o[OUT_MATCH]->shape[1] = K;
    o[OUT_OBJECTIVE]->ndim = 1, o[OUT_OBJECTIVE]->shape[0] = S;
    o[OUT_SUMMARY]->dtype = DM_U8, o[OUT_SUMMARY]->ndim = 1, o[OUT_SUMMARY]->shape[0] = -1;
    dm_unmix_infer(n);
    return 0;
}

static int64_t rica_state_bytes(const dm_node *n)
{
    int64_t k = width(n), S = dm_param_int(n, "seeds");
    if (k <= 0)
        return 0;
    int64_t K = components(n, k);
    /* the sums, and per seed an L-BFGS (10 pairs: 25 vectors of K k) */
    return dm_rica_sums_bytes(S * K, k, dm_node_compute(n)) + 8 * (S * 25 * K * k + S * K * k + 2 * K * k + k * k) +
           dm_unmix_bytes(n);
}

static void rica_close(dm_node *n)
{
    rica *s = dm_node_state(n);
    if (!s)
        return;
    for (int64_t i = 0; i < s->S; i++) {
        if (s->opt)
            dm_lbfgs_free(&s->opt[i]);
        if (s->log)
            json_decref(s->log[i]);
    }
    free(s->opt), free(s->log), free(s->stop), free(s->fprev), free(s->warm_iters);
    free(s->Wrun), free(s->G), free(s->gV), free(s->run), free(s->cov);
    dm_unmix_free(&s->u);
    dm_rica_sums_free(&s->sums);
    free(s);
    dm_node_set_state(n, NULL);
}

/* Stacks the running seeds' trial points, as unit rows, into Wrun. */
static int stack_running(rica *s)
{
    int64_t Kk = s->K * s->k;
    s->nrun = 0;
    for (int64_t i = 0; i < s->S; i++) {
        if (s->stop[i] != RUNNING)
            continue;
        if (dm_rica_rownorm(s->opt[i].xt, s->K, s->k, s->Wrun + (int64_t)s->nrun * Kk))
            return dm_fail_prefix("seed %lld", (long long)i);
        s->run[s->nrun++] = i;
    }
    return 0;
}

/* Starts every seed's L-BFGS afresh from x (its current iterate, or the
 * initial matrix when from_init). */
static void restart_seeds(dm_node *n, rica *s, int from_init)
{
    int64_t Kk = s->K * s->k;
    double *x = dm_xmalloc((size_t)Kk * sizeof(double));
    for (int64_t i = 0; i < s->S; i++) {
        if (from_init)
            dm_rica_w_init(x, s->K, s->k, (uint32_t)(dm_param_int(n, "seed") + i));
        else
            dm_rica_rownorm(s->opt[i].x, s->K, s->k, x);
        dm_lbfgs_free(&s->opt[i]);
        dm_lbfgs_init(&s->opt[i], Kk, 10, x);
        s->stop[i] = RUNNING;
        s->fprev[i] = INFINITY;
    }
    free(x);
}

static int rica_open(dm_node *n)
{
    const dm_compute *cc = dm_node_compute(n);
    rica *s = dm_xcalloc(1, sizeof *s);
    dm_node_set_state(n, s);
    s->be = dm_rica_backend_for(cc);
    int64_t k = s->k = width(n), K = s->K = components(n, k), S = s->S = dm_param_int(n, "seeds");
    dm_unmix_open(&s->u, n);
    if (dm_rica_fun_parse(dm_param_str(n, "g"), &s->fun))
        return -1;
    s->lambda = dm_param_float(n, "lambda");
    s->eps = dm_param_float(n, "eps");
    s->tol = dm_param_float(n, "tol");
    s->gtol = dm_param_float(n, "gtol");
    s->max_iter = (int)dm_param_int(n, "max_iter");
    s->opt = dm_xcalloc((size_t)S, sizeof(dm_lbfgs));
    s->stop = dm_xcalloc((size_t)S, sizeof(int));
    s->fprev = dm_xcalloc((size_t)S, sizeof(double));
    s->warm_iters = dm_xcalloc((size_t)S, sizeof(int));
    s->log = dm_xcalloc((size_t)S, sizeof(json_t *));
    s->Wrun = dm_xmalloc((size_t)(S * K * k) * sizeof(double));
    s->G = dm_xmalloc((size_t)(K * k) * sizeof(double));
    s->gV = dm_xmalloc((size_t)(K * k) * sizeof(double));
    s->run = dm_xcalloc((size_t)S, sizeof(int64_t));
    s->cov = dm_xcalloc((size_t)(k * k), sizeof(double));
    for (int64_t i = 0; i < S; i++)
        s->log[i] = json_array();
    restart_seeds(n, s, 1);
    dm_rica_sums_init(&s->sums, S * K, k, cc);
    s->sums_active = !s->u.sample && !s->u.in_ram;
    return stack_running(s);
}

static int rica_consume(dm_node *n, int port, const dm_chunk *c)
{
    rica *s = dm_node_state(n);
    if (dm_unmix_consume(&s->u, c))
        return -1;
    if (s->sums_active && s->nrun)
        s->be->sums_update(&s->sums, s->fun, s->eps, s->Wrun, (int64_t)s->nrun * s->K, c->data, c->rows,
                           !s->cov_ready);
    return 0;
}

/* The sums of one evaluation are complete: each running seed takes its f and
 * gradient, and its L-BFGS says what next. warm = 1 counts warm iterations. */
static int step_seeds(rica *s, int warm)
{
    int64_t K = s->K, k = s->k, Kk = K * k;
    if (!s->cov_ready) {
        memcpy(s->cov, s->sums.cov, (size_t)(k * k) * sizeof(double));
        s->cov_ready = 1;
    } else
        memcpy(s->sums.cov, s->cov, (size_t)(k * k) * sizeof(double));
    for (int r = 0; r < s->nrun; r++) {
        int64_t i = s->run[r];
        dm_lbfgs *o = &s->opt[i];
        const double *W = s->Wrun + (int64_t)r * Kk;
        double f;
        if (dm_rica_objective(&s->sums, (int64_t)r * K, K, W, s->lambda, &f, s->G, NULL, NULL))
            return dm_fail_prefix("seed %lld", (long long)i);
        dm_rica_grad_v(o->xt, W, s->G, K, k, s->gV);
        int st = dm_lbfgs_tell(o, f, s->gV);
        if (st == DM_LBFGS_STUCK) {
            s->stop[i] = STALLED;
        } else if (st == DM_LBFGS_ITER) {
            double gmax = 0, fp = s->fprev[i];
            for (int64_t j = 0; j < Kk; j++)
                gmax = fmax(gmax, fabs(o->g[j]));
            double rel = (fp - o->f) / fmax(fmax(fabs(fp), fabs(o->f)), 1.0);
            s->fprev[i] = o->f;
            if (warm)
                s->warm_iters[i]++;
            else
                json_array_append_new(s->log[i], json_real(o->f));
            if (rel < s->tol || gmax < s->gtol)
                s->stop[i] = CONVERGED;
            else if ((warm ? s->warm_iters[i] : o->iterations) >= s->max_iter)
                s->stop[i] = MAX_ITER;
        }
    }
    return stack_running(s);
}

/* Runs every seed to its stop on rows in memory. */
static int iterate_in_memory(rica *s, const float *z, int64_t rows, int warm)
{
    s->cov_ready = 0;
    while (s->nrun) {
        dm_rica_sums_reset(&s->sums, 0);
        s->be->sums_update(&s->sums, s->fun, s->eps, s->Wrun, (int64_t)s->nrun * s->K, z, rows, !s->cov_ready);
        if (step_seeds(s, warm))
            return -1;
    }
    return 0;
}

static int rica_end_pass(dm_node *n, int pass)
{
    rica *s = dm_node_state(n);
    dm_unmix *u = &s->u;
    double t0 = dm_now();
    if (dm_unmix_end_pass(u, pass, dm_rica_sums_rows(&s->sums), "RICA"))
        return -1;
    if (s->sums_active) {
        if (step_seeds(s, 0))
            return -1;
    } else if (u->sample) {
        if (iterate_in_memory(s, u->sample, u->sample_rows, 1))
            return -1;
        free(u->sample);
        u->sample = NULL;
        restart_seeds(n, s, 0); /* the full data from the sample's result */
        s->cov_ready = 0;
        if (stack_running(s))
            return -1;
        u->t_warm = dm_now() - t0;
        s->sums_active = 1;
    }
    if (u->in_ram) {
        if (iterate_in_memory(s, u->ram, u->ram_rows, 0))
            return -1;
        u->t_iter += dm_now() - t0 - u->t_warm;
        return 0;
    }
    dm_rica_sums_reset(&s->sums, 0);
    u->t_iter += dm_now() - t0;
    return s->nrun > 0;
}

/* Shards of a pass (op.h): the sums of a shard's rows (rica.h's one array). */
static int64_t rica_pass_partial_size(const dm_node *n)
{
    int64_t ram, k = width(n);
    if (k <= 0 || dm_unmix_in_ram(n, &ram) || dm_param_bool(n, "warm_start"))
        return 0; /* in RAM, or sampled in the first pass: not split */
    return dm_rica_sums_size(dm_param_int(n, "seeds") * components(n, k), k);
}

static int rica_pass_partial(dm_node *n, double *out)
{
    rica *s = dm_node_state(n);
    s->u.split = 1;
    memcpy(out, s->sums.data, (size_t)dm_rica_sums_size(s->sums.m, s->k) * sizeof(double));
    dm_rica_sums_reset(&s->sums, 0);
    return 0;
}

static int rica_pass_merge(dm_node *n, const double *in)
{
    rica *s = dm_node_state(n);
    int64_t size = dm_rica_sums_size(s->sums.m, s->k);
    for (int64_t i = 0; i < size; i++)
        s->sums.data[i] += in[i];
    return 0;
}

static int rica_finish(dm_node *n)
{
    rica *s = dm_node_state(n);
    int64_t k = s->k, K = s->K, S = s->S, Kk = K * k, seed = dm_param_int(n, "seed");
    const char *file = dm_param_str(n, "file");
    dm_tensor t[OUT_SUMMARY + 1] = {{0}};
    int rc = -1;
    if (s->u.passes == 0)
        return dm_fail("input z is empty: no rows to run RICA on");
    int64_t sh_w[2] = {K, k}, sh_m[2] = {k, K}, sh_all[3] = {S, K, k}, sh_k[1] = {K}, sh_sk[2] = {S, K}, sh_s[1] = {S};
    dm_tensor_init(&t[OUT_UNMIXING], DM_F64, 2, sh_w);
    dm_tensor_init(&t[OUT_MIXING], DM_F64, 2, sh_m);
    dm_tensor_init(&t[OUT_UNMIXINGS], DM_F64, 3, sh_all);
    dm_tensor_init(&t[OUT_STABILITY], DM_F64, 1, sh_k);
    dm_tensor_init(&t[OUT_MATCH], DM_I64, 2, sh_sk);
    dm_tensor_init(&t[OUT_OBJECTIVE], DM_F64, 1, sh_s);
    double *W = dm_xmalloc((size_t)(S * Kk) * sizeof(double)), *obj = t[OUT_OBJECTIVE].data;
    int *conv = dm_xmalloc((size_t)S * sizeof(int));
    json_t *o = json_object(), *seeds = json_array();
    json_t **si = dm_xcalloc((size_t)S, sizeof *si);
    for (int64_t i = 0; i < S; i++) {
        if (dm_rica_rownorm(s->opt[i].x, K, k, W + i * Kk)) {
            dm_fail_prefix("seed %lld", (long long)(seed + i));
            goto end;
        }
        obj[i] = s->opt[i].f;
        conv[i] = s->stop[i] != MAX_ITER;
        si[i] = json_object();
        json_array_append_new(seeds, si[i]);
        json_object_set_new(si[i], "seed", json_integer(seed + i));
        json_object_set_new(si[i], "iterations", json_integer(s->opt[i].iterations));
        json_object_set_new(si[i], "evaluations", json_integer(s->opt[i].evaluations));
        json_object_set_new(si[i], "stop", json_string(stop_names[s->stop[i]]));
        json_object_set_new(si[i], "converged", json_boolean(conv[i]));
        json_object_set_new(si[i], "objective", isfinite(obj[i]) ? json_real(obj[i]) : json_null());
        if (dm_param_bool(n, "warm_start"))
            json_object_set_new(si[i], "warm_iterations", json_integer(s->warm_iters[i]));
    }
    memcpy(t[OUT_UNMIXING].data, W, (size_t)Kk * sizeof(double));
    for (int64_t a = 0; a < K; a++)
        for (int64_t j = 0; j < k; j++)
            ((double *)t[OUT_MIXING].data)[j * K + a] = W[a * k + j];
    dm_unmix_match_seeds(W, S, K, k, t[OUT_UNMIXINGS].data, t[OUT_MATCH].data, t[OUT_STABILITY].data, si);
    for (int64_t i = 0; i < S; i++) {
        json_object_set_new(si[i], "log", json_incref(s->log[i]));
        if (!conv[i])
            dm_warn("%s: RICA seed %lld stopped at max_iter %d before its relative decrease reached tol %g; "
                    "results are flagged unconverged in %s",
                    dm_node_name(n), (long long)(seed + i), s->max_iter, s->tol, *file ? file : "the outputs");
    }
    json_object_set_new(o, "method", json_string("rica"));
    json_object_set_new(o, "K", json_integer(K));
    json_object_set_new(o, "k", json_integer(k));
    json_object_set_new(o, "rows", json_integer(s->u.seen));
    json_object_set_new(o, "g", json_string(dm_rica_fun_name(s->fun)));
    json_object_set_new(o, "lambda", json_real(s->lambda));
    if (s->fun == DM_RICA_SQRT)
        json_object_set_new(o, "eps", json_real(s->eps));
    json_object_set_new(o, "tol", json_real(s->tol));
    json_object_set_new(o, "gtol", json_real(s->gtol));
    json_object_set_new(o, "max_iter", json_integer(s->max_iter));
    json_object_set_new(o, "seed", json_integer(seed));
    json_object_set_new(o, "iterations", json_integer(s->opt[0].iterations));
    json_object_set_new(o, "converged", json_boolean(conv[0]));
    int all = 1;
    for (int64_t i = 0; i < S; i++)
        all &= conv[i];
    json_object_set_new(o, "all_converged", json_boolean(all));
    json_object_set_new(o, "objective", json_real(obj[0]));
    dm_unmix_result r = {"rica summary", K, S, s->opt[0].iterations, conv};
    json_t *sd = seeds;
    seeds = NULL; /* dm_unmix_publish takes it */
    if (dm_unmix_publish(n, &s->u, &r, t[OUT_STABILITY].data, o, sd, &t[OUT_SUMMARY]))
        goto end;
    rc = 0;
    for (int p = 0; p <= OUT_SUMMARY && !rc; p++)
        rc = dm_set_output(n, p, &t[p]);
end:
    json_decref(seeds);
    json_decref(o);
    for (int p = 0; p <= OUT_SUMMARY; p++)
        dm_tensor_free(&t[p]);
    free(W), free(conv), free(si);
    return rc;
}

const dm_op dm_op_rica = {
    .name = "rica",
    .version = 1,
    .summary = "Reconstruction ICA (overcomplete, L-BFGS) of a whitened stream, several seeds, stability",
    .params = rica_params,
    .inputs = rica_inputs,
    .outputs = rica_outputs,
    .infer = rica_infer,
    .state_bytes = rica_state_bytes,
    .open = rica_open,
    .consume = rica_consume,
    .end_pass = rica_end_pass,
    .finish = rica_finish,
    .close = rica_close,
    .pass_partial_size = rica_pass_partial_size,
    .pass_partial = rica_pass_partial,
    .pass_merge = rica_pass_merge,
};
