/*
 * planted.c: the demo's planted data (see planted.h): a counter-based generator,
 * so every row is the same in any chunking, and the SAE that misses the first
 * atoms, written in SAELens's format.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "planted.h"
#include "safetensors.h"

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

float *dm_planted_dictionary(uint64_t seed, int64_t d, int64_t m)
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

void dm_planted_rows(float *out, int64_t row0, int64_t rows, const float *D, int64_t d, int64_t m, double p,
                     double noise, uint64_t seed)
{
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        uint64_t row = (uint64_t)(row0 + r);
        float *x = out + r * d;
        for (int64_t i = 0; i < d; i++)
            x[i] = (float)(noise * gauss(seed, 2, row, (uint64_t)i));
        for (int64_t j = 0; j < m; j++) {
            if (uni(seed, 3, row, (uint64_t)j) >= p)
                continue;
            float a = (float)(1 - log(uni(seed, 4, row, (uint64_t)j)));
            for (int64_t i = 0; i < d; i++)
                x[i] += a * D[j * d + i];
        }
    }
}

int dm_planted_write_sae(const char *dir, int64_t dd, int64_t m, int64_t missed, double th, uint64_t seed)
{
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
        float *D = dm_planted_dictionary(seed, dd, m);
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
    return rc;
}
