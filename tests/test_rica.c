/*
 * test_rica.c: Reconstruction ICA (operators/kernels/rica.c) and its L-BFGS
 * (operators/kernels/lbfgs.c), against
 *   - known minima: the Rosenbrock function (2 and 10 variables) and a convex
 *     quadratic with condition number 100, from their textbook starts;
 *   - numpy in float64 (tests/golden/rica/, tools/rica_reference.py): f, its
 *     two terms and the gradient in V, for g = logcosh and sqrt, computed
 *     there from the residuals row by row (here from the covariance), and
 *     numpy's RandomState normals of the starting matrix;
 *   - central finite differences of f in V (the "ref" backend);
 *   - the "ref" backend: the "cpu" sums (float32 GEMMs, one-exp g and g'),
 *     across chunks and thread counts;
 *   - planted data (the known answer): 40 Laplace atoms in 24 whitened
 *     dimensions. RICA with K = 40 recovers most atoms at |cos| > 0.9, FastICA
 *     (k = 24 components, fastica.h) cannot recover more than 24 and here
 *     recovers far fewer.
 *
 * Tolerances: "ref" against numpy differs by the order of double sums only
 * (1e-10 relative). "cpu" against "ref": float32 products over blocks of rows
 * and g, g' from a float exp (relative error about 1e-7 per value), so the
 * sums are held to 1e-5 of their scale (|sum| + rows).
 */
#include "rica.h"

#include "dm.h"
#include "fastica.h"
#include "ica_backproject.h"
#include "lbfgs.h"
#include "npy.h"
#include "report.h"
#include "test.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/golden/rica/"

static double rng_laplace(void)
{
    double u = test_rng_uniform();
    return u < 0.5 ? log(2 * u) : -log(2 - 2 * u);
}

/* ---- L-BFGS ---------------------------------------------------------------- */

/* Extended Rosenbrock (Nocedal and Wright, eq. 9.2 / More, Garbow and
 * Hillstrom 1981 no. 21): minimum 0 at all ones. */
static double rosenbrock(const double *x, int64_t n, double *g)
{
    double f = 0;
    memset(g, 0, (size_t)n * sizeof(double));
    for (int64_t i = 0; i + 1 < n; i += 2) {
        double a = x[i + 1] - x[i] * x[i], b = 1 - x[i];
        f += 100 * a * a + b * b;
        g[i] += -400 * x[i] * a - 2 * b;
        g[i + 1] += 200 * a;
    }
    return f;
}

/* Drives L-BFGS on fn until |g|_inf < 1e-8 or it stops; returns iterations. */
static int drive(dm_lbfgs *o, double (*fn)(const double *, int64_t, double *), int64_t n, int max_iter)
{
    double *g = dm_xmalloc((size_t)n * sizeof(double));
    for (;;) {
        double f = fn(o->xt, n, g);
        int st = dm_lbfgs_tell(o, f, g);
        if (st == DM_LBFGS_STUCK)
            break;
        if (st == DM_LBFGS_ITER) {
            double gm = 0;
            for (int64_t i = 0; i < n; i++)
                gm = fmax(gm, fabs(o->g[i]));
            if (gm < 1e-8 || o->iterations >= max_iter)
                break;
        }
    }
    free(g);
    return o->iterations;
}

START_TEST(lbfgs_rosenbrock)
{
    for (int64_t n = 2; n <= 10; n += 8) {
        double x0[10];
        for (int64_t i = 0; i < n; i++)
            x0[i] = i % 2 ? 1.0 : -1.2; /* the standard start */
        dm_lbfgs o;
        dm_lbfgs_init(&o, n, 10, x0);
        int it = drive(&o, rosenbrock, n, 500);
        printf("rosenbrock n=%lld: %d iterations, %d evaluations, f %.3g\n", (long long)n, it, o.evaluations,
               o.f);
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(fabs(o.x[i] - 1) < 1e-6, "x[%lld] = %.10g, expected 1", (long long)i, o.x[i]);
        ck_assert_int_lt(it, 200);
        /* every search stops at a strong-Wolfe point: few evaluations per iteration */
        ck_assert_int_lt(o.evaluations, 3 * it);
        dm_lbfgs_free(&o);
    }
}
END_TEST

/* f = 1/2 x^T Q x - b^T x, Q = diag(1 .. 100) rotated, b = ones. */
static double Qm[20 * 20];
static double quadratic(const double *x, int64_t n, double *g)
{
    double f = 0;
    for (int64_t i = 0; i < n; i++) {
        double qx = 0;
        for (int64_t j = 0; j < n; j++)
            qx += Qm[i * n + j] * x[j];
        g[i] = qx - 1.0;
        f += 0.5 * x[i] * qx - x[i];
    }
    return f;
}

START_TEST(lbfgs_quadratic)
{
    int64_t n = 20;
    /* Q = U D U^T with U from the QR of a random matrix */
    double U[400], tau[20], D[20];
    test_rng = 5;
    for (int i = 0; i < 400; i++)
        U[i] = test_rng_normal();
    LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, 20, 20, U, 20, tau);
    LAPACKE_dorgqr(LAPACK_ROW_MAJOR, 20, 20, 20, U, 20, tau);
    for (int i = 0; i < 20; i++)
        D[i] = 1 + 99.0 * i / 19;
    for (int i = 0; i < 20; i++)
        for (int j = 0; j < 20; j++) {
            double s = 0;
            for (int t = 0; t < 20; t++)
                s += U[i * 20 + t] * D[t] * U[j * 20 + t];
            Qm[i * 20 + j] = s;
        }
    double x0[20] = {0}, xs[20], Qc[400];
    for (int i = 0; i < 20; i++)
        xs[i] = 1.0;
    memcpy(Qc, Qm, sizeof Qc);
    lapack_int piv[20];
    ck_assert_int_eq(LAPACKE_dgesv(LAPACK_ROW_MAJOR, 20, 1, Qc, 20, piv, xs, 1), 0); /* Q x* = b */
    dm_lbfgs o;
    dm_lbfgs_init(&o, n, 10, x0);
    int it = drive(&o, quadratic, n, 500);
    printf("quadratic n=20, condition 100: %d iterations, %d evaluations\n", it, o.evaluations);
    for (int i = 0; i < 20; i++)
        ck_assert_msg(fabs(o.x[i] - xs[i]) < 1e-7, "x[%d] = %.12g, expected %.12g", i, o.x[i], xs[i]);
    ck_assert_int_lt(it, 100);
    dm_lbfgs_free(&o);
}
END_TEST

static double bad_fn(const double *x, int64_t n, double *g)
{
    for (int64_t i = 0; i < n; i++)
        g[i] = 1.0;
    return x[0] == 0 ? 0.0 : NAN; /* finite only at the start */
}

START_TEST(lbfgs_non_finite_is_stuck)
{
    double x0[3] = {0, 0, 0};
    dm_lbfgs o;
    dm_lbfgs_init(&o, 3, 5, x0);
    double g[3];
    int st = DM_LBFGS_EVAL, evals = 0;
    while (st == DM_LBFGS_EVAL && evals < 100) {
        double f = bad_fn(o.xt, 3, g);
        st = dm_lbfgs_tell(&o, f, g);
        evals++;
    }
    ck_assert_int_eq(st, DM_LBFGS_STUCK);
    ck_assert_int_le(evals, 1 + o.max_ls);
    ck_assert(o.x[0] == 0 && o.f == 0); /* the start is still the iterate */
    dm_lbfgs_free(&o);
}
END_TEST

/* ---- the objective against numpy and finite differences ------------------ */

static void load(const char *name, dm_tensor *t, dm_dtype dtype, int64_t numel)
{
    char path[256];
    snprintf(path, sizeof path, GOLDEN "%s.npy", name);
    ck_assert_msg(dm_npy_load(path, t) == 0, "%s", dm_error());
    ck_assert_msg(t->dtype == dtype && dm_tensor_numel(t) == numel,
                  "%s: dtype %s, %lld values (regenerate with tools/rica_reference.py)", path,
                  dm_dtype_name(t->dtype), (long long)dm_tensor_numel(t));
}

/* f, its terms and gV at V (K, k) on z, with backend be. */
static void evaluate(const dm_rica_backend *be, dm_rica_fun fun, const float *z, int64_t rows, const double *V,
                     int64_t K, int64_t k, double lambda, double *out /* 3 + K k */)
{
    dm_rica_sums s = DM_RICA_SUMS_INIT;
    double *W = dm_xmalloc((size_t)(K * k) * sizeof(double)), *G = dm_xmalloc((size_t)(K * k) * sizeof(double));
    dm_rica_sums_init(&s, K, k, dm_compute_default());
    ck_assert_int_eq(dm_rica_rownorm(V, K, k, W), 0);
    be->sums_update(&s, fun, 0.01, W, K, z, rows, 1);
    ck_assert_int_eq(dm_rica_objective(&s, 0, K, W, lambda, &out[0], G, &out[1], &out[2]), 0);
    dm_rica_grad_v(V, W, G, K, k, out + 3);
    dm_rica_sums_free(&s);
    free(W), free(G);
}

START_TEST(objective_matches_numpy)
{
    dm_tensor z = {0}, v = {0}, w0 = {0};
    load("z", &z, DM_F32, 300 * 6);
    load("v", &v, DM_F64, 60);
    load("w_init", &w0, DM_F64, 60);
    static const char *names[] = {"logcosh", "sqrt"};
    const dm_rica_backend *bes[] = {&dm_rica_backend_ref, &dm_rica_backend_cpu};
    for (int f = 0; f < 2; f++) {
        dm_tensor e = {0};
        load(names[f], &e, DM_F64, 63);
        const double *ex = e.data;
        for (int b = 0; b < 2; b++) {
            double got[63];
            evaluate(bes[b], (dm_rica_fun)f, z.data, 300, v.data, 10, 6, 0.5, got);
            /* ref: double sums in another order (1e-10); cpu: float32 (1e-5) */
            double tol = b == 0 ? 1e-10 : 1e-5;
            for (int i = 0; i < 63; i++)
                ck_assert_msg(fabs(got[i] - ex[i]) <= tol * (1 + fabs(ex[i])), "%s %s [%d]: %.12g, numpy %.12g",
                              names[f], bes[b]->name, i, got[i], ex[i]);
        }
        dm_tensor_free(&e);
    }
    double W[60];
    dm_rica_w_init(W, 10, 6, 7);
    for (int i = 0; i < 60; i++)
        ck_assert_msg(fabs(W[i] - ((double *)w0.data)[i]) < 1e-15, "w_init[%d] %.17g, numpy %.17g", i, W[i],
                      ((double *)w0.data)[i]);
    dm_tensor_free(&z), dm_tensor_free(&v), dm_tensor_free(&w0);
}
END_TEST

START_TEST(gradient_matches_finite_differences)
{
    int64_t rows = 500, k = 5, K = 8;
    float *z = dm_xmalloc((size_t)(rows * k) * sizeof(float));
    double V[40], out[43], op[43], om[43];
    test_rng = 11;
    for (int64_t i = 0; i < rows * k; i++)
        z[i] = (float)rng_laplace();
    for (int i = 0; i < 40; i++)
        V[i] = test_rng_normal() * (1 + i % 3);
    for (int f = 0; f < 2; f++) {
        evaluate(&dm_rica_backend_ref, (dm_rica_fun)f, z, rows, V, K, k, 0.7, out);
        double worst = 0;
        for (int i = 0; i < 40; i++) {
            double h = 1e-6, keep = V[i];
            V[i] = keep + h;
            evaluate(&dm_rica_backend_ref, (dm_rica_fun)f, z, rows, V, K, k, 0.7, op);
            V[i] = keep - h;
            evaluate(&dm_rica_backend_ref, (dm_rica_fun)f, z, rows, V, K, k, 0.7, om);
            V[i] = keep;
            double fd = (op[0] - om[0]) / (2 * h);
            worst = fmax(worst, fabs(fd - out[3 + i]) / (1e-3 + fabs(fd)));
        }
        /* central differences: O(h^2) truncation and 1e-16 / h rounding */
        ck_assert_msg(worst < 1e-6, "%s: worst relative gradient error %.3g", f ? "sqrt" : "logcosh", worst);
    }
    free(z);
}
END_TEST

START_TEST(cpu_sums_match_reference)
{
    int64_t rows = 9001, k = 13, m = 3 * 17;
    float *z = dm_xmalloc((size_t)(rows * k) * sizeof(float));
    double *W = dm_xmalloc((size_t)(m * k) * sizeof(double));
    test_rng = 3;
    for (int64_t i = 0; i < rows * k; i++)
        z[i] = (float)(rng_laplace() * (i % 7 == 0 ? 3 : 1)); /* some large |u| too */
    for (int64_t i = 0; i < m * k; i++)
        W[i] = test_rng_normal();
    dm_rica_rownorm(W, m, k, W);
    for (int f = 0; f < 2; f++) {
        dm_rica_sums ref = DM_RICA_SUMS_INIT;
        dm_rica_sums_init(&ref, m, k, dm_compute_default());
        dm_rica_backend_ref.sums_update(&ref, (dm_rica_fun)f, 0.01, W, m, z, rows, 1);
        for (int threads = 1; threads <= 3; threads++) {
            dm_compute c = *dm_compute_default();
            c.threads = threads;
            dm_rica_sums cpu = DM_RICA_SUMS_INIT;
            dm_rica_sums_init(&cpu, m, k, &c);
            /* uneven chunks: the sums are plain sums over them */
            int64_t cuts[] = {0, 1, 700, 4096, 9001};
            for (int i = 0; i < 4; i++)
                dm_rica_backend_cpu.sums_update(&cpu, (dm_rica_fun)f, 0.01, W, m, z + cuts[i] * k,
                                                cuts[i + 1] - cuts[i], 1);
            ck_assert_int_eq(dm_rica_sums_rows(&cpu), rows);
            int64_t size = dm_rica_sums_size(m, k);
            for (int64_t i = 0; i < size; i++)
                ck_assert_msg(fabs(cpu.data[i] - ref.data[i]) <= 1e-5 * (fabs(ref.data[i]) + (double)rows),
                              "fun %d threads %d sum %lld: cpu %.10g ref %.10g", f, threads, (long long)i,
                              cpu.data[i], ref.data[i]);
            dm_rica_sums_free(&cpu);
        }
        dm_rica_sums_free(&ref);
    }
    free(z), free(W);
}
END_TEST

START_TEST(match_finds_permutation_and_signs)
{
    int64_t K = 9, k = 4;
    double A[36], B[36];
    int64_t perm[9] = {3, 0, 8, 1, 5, 2, 7, 4, 6}, match[9];
    int sign[9];
    double cosv[9];
    dm_rica_w_init(A, K, k, 3);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < k; j++)
            B[perm[i] * k + j] = (i % 2 ? -1 : 1) * A[i * k + j];
    dm_ica_match(A, B, K, k, match, sign, cosv); /* K rows in k dimensions */
    for (int64_t i = 0; i < K; i++) {
        ck_assert_int_eq(match[i], perm[i]);
        ck_assert_int_eq(sign[i], i % 2 ? -1 : 1);
        ck_assert(fabs(cosv[i] - 1) < 1e-12);
    }
}
END_TEST

/* The overcomplete back-projection: fast against reference, and RICA's
 * patterns (A = W^T) are the rows of W L^(1/2) C made unit. */
START_TEST(backproject_overcomplete)
{
    int64_t m = 7, k = 4, d = 9;
    double W[28], A[28], ev[4] = {5, 3, 2, 0.5}, C[36], mean[9], bufs[2][5][7 * 9];
    test_rng = 17;
    for (int i = 0; i < 28; i++)
        W[i] = test_rng_normal();
    dm_rica_rownorm(W, m, k, W);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++)
            A[j * m + i] = W[i * k + j];
    for (int i = 0; i < 36; i++)
        C[i] = test_rng_normal();
    for (int i = 0; i < 9; i++)
        mean[i] = test_rng_normal();
    dm_ica_backprojection o[2];
    for (int v = 0; v < 2; v++)
        o[v] = (dm_ica_backprojection){bufs[v][0], bufs[v][1], bufs[v][2], bufs[v][3], bufs[v][4]};
    dm_ica_backproject_rect(W, A, ev, C, mean, m, k, d, &o[0]);
    dm_ica_backproject_rect_ref(W, A, ev, C, mean, m, k, d, &o[1]);
    for (int p = 0; p < 4; p++)
        for (int i = 0; i < m * d; i++)
            ck_assert_msg(fabs(bufs[0][p][i] - bufs[1][p][i]) < 1e-12, "output %d [%d]", p, i);
    for (int64_t i = 0; i < m; i++) {
        double row[9], nn = 0, dot = 0;
        for (int64_t t = 0; t < d; t++) {
            row[t] = 0;
            for (int64_t j = 0; j < k; j++)
                row[t] += W[i * k + j] * sqrt(ev[j]) * C[j * d + t];
            nn += row[t] * row[t];
        }
        for (int64_t t = 0; t < d; t++)
            dot += row[t] / sqrt(nn) * o[0].directions[i * d + t];
        ck_assert_msg(fabs(dot - 1) < 1e-12, "pattern %lld: cos %.15g with W L^(1/2) C", (long long)i, dot);
    }
}
END_TEST

/* The report's RICA numbers: planted atoms found by RICA's patterns, SAE
 * similarity counts with ICA's thresholds, results.json's "rica" and the
 * page's side-by-side table; without RICA nothing of it appears. */
START_TEST(report_shows_rica_beside_ica)
{
    double atoms[3 * 4] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};
    double ica_dirs[2 * 4] = {1, 0.1, 0, 0, 0, 0.7, 0.7, 0};  /* finds atom 0 only */
    double rica_dirs[4 * 4] = {0, 0, 0, 1, 0.05, 1, 0, 0, -1, 0, 0, 0, 0, 0.1, 1, 0}; /* atoms 1, 0, 2 */
    double rmc[4] = {0.95, 0.2, 0.5, 0.85}, rst[4] = {0.99, 0.5, 0.95, 0.91};
    dm_ica_summary rs = {.k = 4, .seeds = 3, .iterations = 77};
    const char *doc = "{\"method\": \"rica\", \"K\": 4}";
    dm_report_in in = {0};
    in.model = in.sae = in.hook = in.title = in.neuronpedia = "";
    in.version = "test";
    in.planted = 1, in.atoms = atoms, in.directions = ica_dirs, in.n_atoms = 3, in.n_directions = 2, in.atom_d = 4;
    double imc[2] = {0.9, 0.1};
    in.max_cos = (dm_report_vec){imc, 2}; /* two FastICA components, for their cards */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            in.rica_summary = &rs, in.rica_doc = doc, in.rica_doc_len = strlen(doc);
            in.rica_max_cos = (dm_report_vec){rmc, 4}, in.rica_stability = (dm_report_vec){rst, 4};
            in.rica_directions = rica_dirs, in.n_rica_directions = 4;
        }
        dm_report_numbers r;
        dm_report_compute(&in, &r);
        json_t *res = NULL;
        ck_assert_int_eq(dm_results_json(&in, &r, &res), 0);
        char *svgs[DM_REPORT_SVGS] = {NULL};
        char *html = dm_report_html(&in, &r, svgs);
        json_t *x = json_object_get(res, "rica");
        ck_assert_int_eq(r.planted_recovered, 1);
        if (pass == 0) {
            ck_assert_ptr_null(x);
            ck_assert_ptr_null(strstr(html, "FastICA and RICA"));
        } else {
            ck_assert_int_eq(r.rica_planted_recovered, 3);
            ck_assert_int_eq(r.rica_high, 2); /* above 0.8 */
            ck_assert_int_eq(r.rica_low, 1);  /* below 0.3 */
            ck_assert_int_eq(r.rica_unstable, 1);
            ck_assert_ptr_nonnull(x);
            ck_assert_int_eq(json_integer_value(json_object_get(x, "planted_recovered")), 3);
            ck_assert_int_eq(json_array_size(json_object_get(x, "components")), 4);
            ck_assert_str_eq(json_string_value(json_object_get(json_object_get(x, "run"), "method")), "rica");
            ck_assert_ptr_nonnull(strstr(html, "<table id=\"rica\">"));
            ck_assert_ptr_nonnull(strstr(html, "<tr><th>planted atoms recovered</th><td class=\"num\">1</td>"
                                               "<td class=\"num\">3</td></tr>"));
        }
        free(html);
        /* RICA's plots and cards only with RICA; FastICA's cards unchanged by it */
        in.cards = 10;
        dm_report_svgs(&in, &r, svgs);
        html = dm_report_html(&in, &r, svgs);
        ck_assert_int_eq(svgs[5] != NULL, pass);
        ck_assert_int_eq(svgs[6] != NULL, pass);
        ck_assert_int_eq(strstr(html, "<h2>RICA components</h2>") != NULL, pass);
        ck_assert_int_eq(strstr(html, "<h3>RICA component 3</h3>") != NULL, pass);
        ck_assert_ptr_null(strstr(html, "<h3>RICA component 4</h3>"));
        ck_assert_ptr_nonnull(strstr(html, "<h3>Component 1</h3>"));
        if (pass)
            ck_assert_ptr_nonnull(strstr(svgs[5], "RICA component similarity to SAE features"));
        for (int i = 0; i < DM_REPORT_SVGS; i++)
            free(svgs[i]), svgs[i] = NULL;
        in.cards = 0;
        free(html);
        json_decref(res);
        dm_report_numbers_free(&r);
    }
}
END_TEST

/* ---- the known answer ----------------------------------------------------- */

/* N rows of x = A s (s: K Laplace sources, A: k x K Gaussian with unit
 * columns), centred and PCA-whitened to z (N, k); at (K, k) = the atoms in
 * the whitened space, unit rows. */
static float *planted_overcomplete(int64_t N, int64_t k, int64_t K, double *at, uint64_t seed)
{
    double *A = dm_xmalloc((size_t)(k * K) * sizeof(double)), *X = dm_xmalloc((size_t)(N * k) * sizeof(double));
    double C[64 * 64] = {0}, ev[64], mean[64] = {0};
    test_rng = seed;
    for (int64_t i = 0; i < k * K; i++)
        A[i] = test_rng_normal();
    for (int64_t j = 0; j < K; j++) {
        double s = 0;
        for (int64_t i = 0; i < k; i++)
            s += A[i * K + j] * A[i * K + j];
        for (int64_t i = 0; i < k; i++)
            A[i * K + j] /= sqrt(s);
    }
    double *s = dm_xmalloc((size_t)K * sizeof(double));
    for (int64_t t = 0; t < N; t++) {
        for (int64_t j = 0; j < K; j++)
            s[j] = rng_laplace();
        for (int64_t i = 0; i < k; i++) {
            double x = 0;
            for (int64_t j = 0; j < K; j++)
                x += A[i * K + j] * s[j];
            X[t * k + i] = x;
            mean[i] += x / N;
        }
    }
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < k; i++)
            X[t * k + i] -= mean[i];
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < k; i++)
            for (int64_t j = 0; j < k; j++)
                C[i * k + j] += X[t * k + i] * X[t * k + j] / N;
    ck_assert_int_eq(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', (int)k, C, (int)k, ev), 0);
    /* whitening Wh = L^(-1/2) V^T: z_i = sum_j C[j, i] x_j / sqrt(ev_i) */
    float *z = dm_xmalloc((size_t)(N * k) * sizeof(float));
    for (int64_t t = 0; t < N; t++)
        for (int64_t i = 0; i < k; i++) {
            double v = 0;
            for (int64_t j = 0; j < k; j++)
                v += C[j * k + i] * X[t * k + j];
            z[t * k + i] = (float)(v / sqrt(ev[i]));
        }
    for (int64_t a = 0; a < K; a++) {
        double nn = 0;
        for (int64_t i = 0; i < k; i++) {
            double v = 0;
            for (int64_t j = 0; j < k; j++)
                v += C[j * k + i] * A[j * K + a];
            at[a * k + i] = v / sqrt(ev[i]);
            nn += at[a * k + i] * at[a * k + i];
        }
        for (int64_t i = 0; i < k; i++)
            at[a * k + i] /= sqrt(nn);
    }
    free(A), free(X), free(s);
    return z;
}

/* Atoms (rows of at, K) matched by some row of W (m rows) at |cos| > 0.9. */
static int recovered(const double *at, int64_t K, const double *W, int64_t m, int64_t k)
{
    int count = 0;
    for (int64_t a = 0; a < K; a++) {
        double best = 0;
        for (int64_t i = 0; i < m; i++) {
            double c = 0, nw = 0;
            for (int64_t j = 0; j < k; j++)
                c += at[a * k + j] * W[i * k + j], nw += W[i * k + j] * W[i * k + j];
            best = fmax(best, fabs(c) / sqrt(nw));
        }
        count += best > 0.9;
    }
    return count;
}

START_TEST(planted_overcomplete_rica_beats_fastica)
{
    int64_t N = 20000, k = 24, K = 40;
    double *at = dm_xmalloc((size_t)(K * k) * sizeof(double)), *W = dm_xmalloc((size_t)(K * k) * sizeof(double));
    double *Wf = dm_xmalloc((size_t)(k * k) * sizeof(double));
    float *z = planted_overcomplete(N, k, K, at, 2024);
    dm_rica_result rr;
    dm_rica_w_init(W, K, k, 42);
    double t0 = dm_now();
    ck_assert_msg(dm_rica_fit(W, K, k, z, N, DM_RICA_LOGCOSH, 0.01, 0.5, 1e-9, 1e-6, 2000, dm_compute_default(), &rr)
                      == 0,
                  "%s", dm_error());
    double t_rica = dm_now() - t0;
    dm_ica_result ir;
    dm_ica_w_init(Wf, k, 42);
    t0 = dm_now();
    ck_assert_int_eq(dm_ica_fit(Wf, k, z, N, DM_ICA_LOGCOSH, 1.0, 1e-4, 1000, dm_compute_default(), &ir), 0);
    double t_ica = dm_now() - t0;
    int nr = recovered(at, K, W, K, k), nf = recovered(at, K, Wf, k, k);
    printf("planted overcomplete (40 Laplace atoms, k = 24, N = 20000): RICA K=40 recovers %d of 40 atoms at "
           "|cos| > 0.9 (%d iterations, %d evaluations, f %.6g, converged %d, %.2f s); FastICA k=24 recovers %d "
           "(%d iterations, %.2f s)\n",
           nr, rr.iterations, rr.evaluations, rr.f, rr.converged, t_rica, nf, ir.iterations, t_ica);
    /* the reported f is f at the result: a fresh evaluation by "ref" */
    double fresh[3 + 40 * 24];
    evaluate(&dm_rica_backend_ref, DM_RICA_LOGCOSH, z, N, W, K, k, 0.5, fresh);
    ck_assert_msg(fabs(fresh[0] - rr.f) < 1e-5 * fabs(fresh[0]), "f %.10g, ref %.10g", rr.f, fresh[0]);
    ck_assert(rr.converged && !rr.stuck);
    ck_assert_int_ge(nr, 30);
    ck_assert_int_le(nf, 24);
    ck_assert_int_ge(nr - nf, 10);
    free(at), free(W), free(Wf), free(z);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rica");
    TCase *tc = tcase_create("rica");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, lbfgs_rosenbrock);
    tcase_add_test(tc, lbfgs_quadratic);
    tcase_add_test(tc, lbfgs_non_finite_is_stuck);
    tcase_add_test(tc, objective_matches_numpy);
    tcase_add_test(tc, gradient_matches_finite_differences);
    tcase_add_test(tc, cpu_sums_match_reference);
    tcase_add_test(tc, match_finds_permutation_and_signs);
    tcase_add_test(tc, backproject_overcomplete);
    tcase_add_test(tc, report_shows_rica_beside_ica);
    tcase_add_test(tc, planted_overcomplete_rica_beats_fastica);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
