/*
 * planted.c: the demo's planted data (see planted.h): a counter-based generator,
 * so every row is the same in any chunking, and the SAE that misses the first
 * atoms, as arrays and in SAELens's format.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "planted.h"
#include "safetensors.h"

/* Uniform in (0, 1) from a counter (seed, a, b, c). */
static inline double uni(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t z = dm_mix64(seed * 0x9e3779b97f4a7c15ull + dm_mix64(a * 0xd1342543de82ef95ull + dm_mix64(b + 0x632be59bd9b4e019ull * (c + 1))));
    return ((double)(z >> 11) + 0.5) * 0x1p-53;
}

static inline double gauss(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return sqrt(-2 * log(uni(seed, a, b, 2 * c))) * cos(2 * M_PI * uni(seed, a, b, 2 * c + 1));
}

/* A unit Gaussian direction: row j of stream `tag`, n wide, into v (double). */
static void gauss_unit(double *v, uint64_t seed, uint64_t tag, uint64_t j, int64_t n)
{
    double norm = 0;
    for (int64_t i = 0; i < n; i++)
        v[i] = gauss(seed, tag, j, (uint64_t)i), norm += v[i] * v[i];
    for (int64_t i = 0; i < n; i++)
        v[i] /= sqrt(norm);
}

float *dm_planted_dictionary(uint64_t seed, int64_t d, int64_t m, int64_t missed, int64_t missed_dim)
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
    if (missed_dim <= 0)
        return D;
    /* the first `missed` atoms inside span(B): B (missed_dim x d) orthonormal
     * rows by modified Gram-Schmidt on Gaussian rows (stream 5), each atom a
     * Gaussian combination of them (stream 6), unit */
    double *B = dm_xmalloc((size_t)(missed_dim * d + d) * sizeof *B), *a = B + missed_dim * d;
    for (int64_t b = 0; b < missed_dim; b++) {
        double *v = B + b * d;
        gauss_unit(v, seed, 5, (uint64_t)b, d);
        for (int pass = 0; pass < 2; pass++) /* twice: orthogonal to rounding */
            for (int64_t c = 0; c < b; c++) {
                double dot = 0;
                for (int64_t i = 0; i < d; i++)
                    dot += v[i] * B[c * d + i];
                for (int64_t i = 0; i < d; i++)
                    v[i] -= dot * B[c * d + i];
            }
        double norm = 0;
        for (int64_t i = 0; i < d; i++)
            norm += v[i] * v[i];
        for (int64_t i = 0; i < d; i++)
            v[i] /= sqrt(norm);
    }
    for (int64_t j = 0; j < missed; j++) {
        double norm = 0;
        for (int64_t i = 0; i < d; i++)
            a[i] = 0;
        for (int64_t b = 0; b < missed_dim; b++) {
            double g = gauss(seed, 6, (uint64_t)j, (uint64_t)b);
            for (int64_t i = 0; i < d; i++)
                a[i] += g * B[b * d + i];
        }
        for (int64_t i = 0; i < d; i++)
            norm += a[i] * a[i];
        for (int64_t i = 0; i < d; i++)
            D[j * d + i] = (float)(a[i] / sqrt(norm));
    }
    free(B);
    return D;
}

void dm_planted_rows(float *out, int64_t row0, int64_t rows, const float *D, int64_t d, int64_t m, double p,
                     double noise, int64_t dense, uint64_t seed)
{
    /* a Laplace(0, b) draw of unit variance (2 b^2 = 1) by inversion */
    const double b = sqrt(0.5);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        uint64_t row = (uint64_t)(row0 + r);
        float *x = out + r * d;
        for (int64_t i = 0; i < d; i++)
            x[i] = (float)(noise * gauss(seed, 2, row, (uint64_t)i));
        for (int64_t j = 0; j < m; j++) {
            float a;
            if (j < dense) {
                double u = uni(seed, 5, row, (uint64_t)j) - 0.5;
                a = (float)(u < 0 ? b * log(1 + 2 * u) : -b * log(1 - 2 * u));
            } else {
                if (uni(seed, 3, row, (uint64_t)j) >= p)
                    continue;
                a = (float)(1 - log(uni(seed, 4, row, (uint64_t)j)));
            }
            for (int64_t i = 0; i < d; i++)
                x[i] += a * D[j * d + i];
        }
    }
}

void dm_planted_sae(const float *D, int64_t d, int64_t m, int64_t missed, double threshold, float *W_enc,
                    float *W_dec, float *b_enc, float *b_dec)
{
    int64_t k = m - missed;
    for (int64_t j = 0; j < k; j++) {
        for (int64_t i = 0; i < d; i++) {
            float v = D[(missed + j) * d + i];
            W_enc[i * k + j] = v;
            W_dec[j * d + i] = v;
        }
        b_enc[j] = (float)-threshold;
    }
    memset(b_dec, 0, (size_t)d * sizeof *b_dec);
}

char *dm_planted_sae_config(int64_t d, int64_t m, int64_t missed, double threshold, uint64_t seed)
{
    return dm_xasprintf(
        "{\n  \"architecture\": \"standard\",\n  \"d_in\": %lld,\n  \"d_sae\": %lld,\n"
        "  \"activation_fn_str\": \"relu\",\n  \"apply_b_dec_to_input\": false,\n"
        "  \"normalize_activations\": \"none\",\n  \"hook_name\": \"" DM_PLANTED_HOOK "\",\n"
        "  \"context_size\": 128,\n"
        "  \"prepend_bos\": true,\n  \"model_name\": \"planted (dmica demo): seed %llu, %lld atoms, "
        "the first %lld unknown to this SAE, threshold %g\",\n"
        "  \"model_from_pretrained_kwargs\": {\"center_writing_weights\": false}\n}\n",
        (long long)d, (long long)(m - missed), (unsigned long long)seed, (long long)m, (long long)missed, threshold);
}

int dm_planted_write_sae(const char *dir, const float *D, int64_t d, int64_t m, int64_t missed, double threshold,
                         uint64_t seed)
{
    char *cfg = dm_planted_sae_config(d, m, missed, threshold, seed);
    char *cfg_path = dm_xasprintf("%s/cfg.json", dir), *w_path = dm_xasprintf("%s/sae_weights.safetensors", dir);
    int64_t k = m - missed;
    dm_tensor t[4];
    int64_t s_enc[2] = {d, k}, s_dec[2] = {k, d}, s_k[1] = {k}, s_d[1] = {d};
    dm_tensor_init(&t[0], DM_F32, 2, s_enc);
    dm_tensor_init(&t[1], DM_F32, 2, s_dec);
    dm_tensor_init(&t[2], DM_F32, 1, s_k);
    dm_tensor_init(&t[3], DM_F32, 1, s_d);
    dm_planted_sae(D, d, m, missed, threshold, t[0].data, t[1].data, t[2].data, t[3].data);
    static const char *names[] = {"W_enc", "W_dec", "b_enc", "b_dec"};
    int rc = dm_mkdir_p(dir);
    if (!rc)
        rc = dm_st_write_f32(w_path, names, t, 4);
    if (!rc)
        rc = dm_write_file_atomic(cfg_path, cfg, strlen(cfg));
    for (int q = 0; q < 4; q++)
        dm_tensor_free(&t[q]);
    free(cfg), free(cfg_path), free(w_path);
    return rc;
}
