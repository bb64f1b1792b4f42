/*
 * ica_backproject.c: the back-projection of FastICA's unmixing matrix, the
 * null directions and the |cos| comparison (ica_backproject.h).
 */
#include "ica_backproject.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastica.h"
#include "verdict.h"

int dm_ica_invert(const double *W, int64_t k, double *A)
{
    memcpy(A, W, (size_t)(k * k) * sizeof(double));
    lapack_int *piv = dm_xmalloc((size_t)(k > 0 ? k : 1) * sizeof(lapack_int));
    lapack_int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, (int)k, (int)k, A, (int)k, piv);
    if (!info)
        info = LAPACKE_dgetri(LAPACK_ROW_MAJOR, (int)k, A, (int)k, piv);
    free(piv);
    if (info)
        return dm_failc(DM_E_INPUT, "unmixing matrix is singular (LAPACK info %d)", (int)info);
    return 0;
}

static void normalise_rows(double *X, int64_t m, int64_t d)
{
    for (int64_t i = 0; i < m; i++) {
        double s = 0;
        for (int64_t j = 0; j < d; j++)
            s += X[i * d + j] * X[i * d + j];
        s = s > 0 ? 1.0 / sqrt(s) : 0.0;
        for (int64_t j = 0; j < d; j++)
            X[i * d + j] *= s;
    }
}

/* mixing = directions^T before normalising; offset = filters mean. m rows. */
static void finish_outputs(const double *mean, int64_t m, int64_t d, const dm_ica_backprojection *o)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t t = 0; t < d; t++)
            o->mixing[t * m + i] = o->directions[i * d + t];
    normalise_rows(o->directions, m, d);
    normalise_rows(o->unscaled, m, d);
    for (int64_t i = 0; i < m; i++) {
        double s = 0;
        for (int64_t t = 0; mean && t < d; t++)
            s += o->filters[i * d + t] * mean[t];
        o->offset[i] = s;
    }
}

void dm_ica_backproject_rect(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                             int64_t m, int64_t k, int64_t d, const dm_ica_backprojection *o)
{
    size_t md = (size_t)(m * d) * sizeof(double);
    memset(o->directions, 0, md), memset(o->filters, 0, md), memset(o->unscaled, 0, md);
    /* direction i = sum_j A[j,i] sqrt(l_j) C[j]; filter i = sum_j W[i,j] / sqrt(l_j) C[j]; unscaled i = sum_j A[j,i] C[j] */
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++) {
            double a = A[j * m + i] * sqrt(ev[j]), f = W[i * k + j] / sqrt(ev[j]), u = A[j * m + i];
            for (int64_t t = 0; t < d; t++) {
                o->directions[i * d + t] += a * C[j * d + t];
                o->filters[i * d + t] += f * C[j * d + t];
                o->unscaled[i * d + t] += u * C[j * d + t];
            }
        }
    finish_outputs(mean, m, d, o);
}

void dm_ica_backproject(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                        int64_t k, int64_t d, const dm_ica_backprojection *o)
{
    dm_ica_backproject_rect(W, A, ev, C, mean, k, k, d, o);
}

/* out (m, d) = M^T C with M (k, m): out[i] = sum_j M[j, i] C[j]. */
static void mt_times_c(const double *M, const double *C, int64_t m, int64_t k, int64_t d, double *out)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t t = 0; t < d; t++) {
            double s = 0;
            for (int64_t j = 0; j < k; j++)
                s += M[j * m + i] * C[j * d + t];
            out[i * d + t] = s;
        }
}

void dm_ica_backproject_rect_ref(const double *W, const double *A, const double *ev, const double *C,
                                 const double *mean, int64_t m, int64_t k, int64_t d, const dm_ica_backprojection *o)
{
    double *S = dm_xmalloc((size_t)(k * m) * sizeof(double)), *F = dm_xmalloc((size_t)(k * m) * sizeof(double));
    for (int64_t j = 0; j < k; j++)
        for (int64_t i = 0; i < m; i++) {
            S[j * m + i] = sqrt(ev[j]) * A[j * m + i]; /* L^(1/2) A */
            F[j * m + i] = W[i * k + j] / sqrt(ev[j]); /* (W L^(-1/2))^T */
        }
    mt_times_c(S, C, m, k, d, o->directions); /* (L^(1/2) A)^T C = A^T L^(1/2) C */
    mt_times_c(F, C, m, k, d, o->filters);    /* W L^(-1/2) C */
    mt_times_c(A, C, m, k, d, o->unscaled);   /* A^T C */
    free(S), free(F);
    finish_outputs(mean, m, d, o);
}

void dm_ica_backproject_ref(const double *W, const double *A, const double *ev, const double *C, const double *mean,
                            int64_t k, int64_t d, const dm_ica_backprojection *o)
{
    dm_ica_backproject_rect_ref(W, A, ev, C, mean, k, k, d, o);
}

void dm_ica_variance_explained(const double *ev, int64_t nev, int64_t k, double *by_ica, double *by_unscaled)
{
    double total = 0, top = 0, unscaled_err = 0;
    for (int64_t i = 0; i < nev; i++) {
        double l = ev[i] > 0 ? ev[i] : 0;
        total += l;
        if (i < k) {
            top += l;
            unscaled_err += l * (1 - 1 / sqrt(l)) * (1 - 1 / sqrt(l));
        } else
            unscaled_err += l;
    }
    *by_ica = top / total;
    *by_unscaled = 1 - unscaled_err / total;
}

void dm_ica_null_directions(uint32_t seed, int64_t ns, const double *ev, const double *C, int64_t nev, int64_t d,
                            float *X)
{
    double *row = dm_xmalloc((size_t)(d > 0 ? d : 1) * sizeof(double));
    dm_np_random rng;
    dm_np_random_seed(&rng, seed);
    for (int64_t s = 0; s < ns; s++) {
        for (int64_t t = 0; t < d; t++)
            row[t] = dm_np_random_gauss(&rng);
        normalise_rows(row, 1, d);
        for (int64_t t = 0; t < d; t++)
            X[s * d + t] = (float)row[t];
    }
    for (int64_t s = 0; s < ns; s++) {
        memset(row, 0, (size_t)d * sizeof(double));
        for (int64_t j = 0; j < nev; j++) {
            double gj = dm_np_random_gauss(&rng);
            if (ev[j] > 0)
                for (int64_t t = 0; t < d; t++)
                    row[t] += gj * sqrt(ev[j]) * C[j * d + t];
        }
        normalise_rows(row, 1, d);
        for (int64_t t = 0; t < d; t++)
            X[(ns + s) * d + t] = (float)row[t];
    }
    free(row);
}

void dm_unit_rows_f32(const void *M, int is_f64, int64_t rows, int64_t d, int transposed, float *out)
{
    for (int64_t f = 0; f < rows; f++) {
        double s = 0;
        for (int64_t t = 0; t < d; t++) {
            int64_t idx = transposed ? t * rows + f : f * d + t;
            double v = is_f64 ? ((const double *)M)[idx] : ((const float *)M)[idx];
            out[f * d + t] = (float)v;
            s += v * v;
        }
        float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int64_t t = 0; t < d; t++)
            out[f * d + t] *= inv;
    }
}

void dm_max_abs_cos(const float *X, int64_t m, const float *D, int64_t n, int64_t d, double *maxc, int64_t *best)
{
    const int64_t B = 4096;
    float *c = dm_xmalloc((size_t)(m * B > 0 ? m * B : 1) * sizeof(float));
    for (int64_t i = 0; i < m; i++)
        maxc[i] = -1, best[i] = -1;
    for (int64_t b0 = 0; b0 < n; b0 += B) {
        int64_t nb = n - b0 < B ? n - b0 : B;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nb, (int)d, 1.0f, X, (int)d, D + b0 * d,
                    (int)d, 0.0f, c, (int)nb);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < nb; j++) {
                double a = fabs((double)c[i * nb + j]);
                if (a > maxc[i])
                    maxc[i] = a, best[i] = b0 + j;
            }
    }
    free(c);
}

void dm_max_abs_cos_ref(const float *X, int64_t m, const float *D, int64_t n, int64_t d, double *maxc,
                        int64_t *best)
{
    for (int64_t i = 0; i < m; i++) {
        maxc[i] = -1, best[i] = -1;
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t t = 0; t < d; t++)
                s += (double)X[i * d + t] * (double)D[j * d + t];
            if (fabs(s) > maxc[i])
                maxc[i] = fabs(s), best[i] = j;
        }
    }
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void dm_cos_summarise(const double *maxc, int64_t m, dm_cos_summary *s)
{
    double hi = DM_THRESHOLD(DM_T_HIGH_SIMILARITY), lo = DM_THRESHOLD(DM_T_LOW_SIMILARITY), sum = 0;
    double *sorted = dm_xmalloc((size_t)(m > 0 ? m : 1) * sizeof(double));
    memset(s, 0, sizeof *s);
    s->count = m;
    for (int64_t i = 0; i < m; i++) {
        sorted[i] = maxc[i];
        sum += maxc[i];
        int b = (int)(maxc[i] * DM_COS_BINS);
        s->histogram[b < 0 ? 0 : b >= DM_COS_BINS ? DM_COS_BINS - 1 : b]++;
        s->high += maxc[i] > hi;
        s->low += maxc[i] < lo;
    }
    qsort(sorted, (size_t)m, sizeof *sorted, by_value);
    double *q[4] = {&s->q05, &s->median, &s->q95, &s->q99};
    const double at[4] = {0.05, 0.5, 0.95, 0.99};
    s->mean = m ? sum / (double)m : NAN;
    for (int i = 0; i < 4; i++)
        *q[i] = m ? sorted[(int64_t)(at[i] * (double)(m - 1) + 0.5)] : NAN;
    free(sorted);
}
