/*
 * unmixing.c: the input, seeds and products the unmixing operators share
 * (unmixing.h).
 */
#include "unmixing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastica.h"
#include "summaries.h"

int dm_unmix_check(const dm_node *n, int64_t k, const char *method)
{
    int64_t seed = dm_param_int(n, "seed"), S = dm_param_int(n, "seeds");
    if (seed < 0 || seed > 4294967295LL)
        return dm_fail("seed %lld: need 0 to 2^32 - 1 (numpy's RandomState range)", (long long)seed);
    if (S < 1 || S > 64)
        return dm_fail("seeds %lld: need 1 to 64", (long long)S);
    if (seed + S - 1 > 4294967295LL)
        return dm_fail("seed %lld + seeds %lld exceeds 2^32 - 1", (long long)seed, (long long)S);
    if (dm_param_int(n, "warm_rows") < 1)
        return dm_fail("warm_rows %lld: need at least 1", (long long)dm_param_int(n, "warm_rows"));
    if (k == 0)
        return dm_fail("input z has no columns");
    if (k > 4096)
        return dm_fail("input z has %lld columns: %s here supports at most 4096", (long long)k, method);
    const char *file = dm_param_str(n, "file");
    if (strchr(file, '/') || !strcmp(file, ".") || !strcmp(file, "..") || !strcmp(file, "node.json"))
        return dm_fail("file must be a plain file name in the output folder, not '%s'", file);
    return 0;
}

int dm_unmix_in_ram(const dm_node *n, int64_t *bytes)
{
    const dm_port_desc *z = dm_input_desc(n, 0);
    int64_t rows = z->shape[0], k = z->shape[1], mem = dm_param_size(n, "memory");
    *bytes = rows > 0 && k > 0 ? rows * k * 4 : 0;
    return mem > 0 && rows > 0 && k > 0 && *bytes <= mem;
}

void dm_unmix_infer(dm_node *n)
{
    int64_t ram;
    if (dm_unmix_in_ram(n, &ram))
        dm_input_single_pass(n, 0);
}

int64_t dm_unmix_bytes(const dm_node *n)
{
    int64_t ram, b = 0;
    if (dm_unmix_in_ram(n, &ram))
        b += ram;
    if (dm_param_bool(n, "warm_start"))
        b += 4 * dm_input_desc(n, 0)->shape[1] * dm_param_int(n, "warm_rows");
    return b;
}

void dm_unmix_open(dm_unmix *u, const dm_node *n)
{
    int64_t ram;
    memset(u, 0, sizeof *u);
    u->t_open = dm_now();
    u->k = dm_input_desc(n, 0)->shape[1];
    u->rows_known = dm_input_desc(n, 0)->shape[0];
    u->in_ram = dm_unmix_in_ram(n, &ram);
    if (u->in_ram) /* on 2 MiB pages where the kernel allows: few faults while the first pass fills it */
        u->ram = dm_xmalloc_huge((size_t)ram);
    if (dm_param_bool(n, "warm_start")) {
        u->warm_rows = dm_param_int(n, "warm_rows");
        u->sample = dm_xmalloc((size_t)(u->warm_rows * u->k) * sizeof(float));
    }
    u->rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)dm_param_int(n, "seed");
}

void dm_unmix_free(dm_unmix *u)
{
    free(u->ram);
    free(u->sample);
    u->ram = u->sample = NULL;
}

int dm_unmix_consume(dm_unmix *u, const dm_chunk *c)
{
    int64_t k = u->k;
    if (c->cols != k)
        return dm_fail("input z: chunk of %lld columns, expected %lld", (long long)c->cols, (long long)k);
    if (u->passes > 0)
        return 0;
    if (u->in_ram) {
        if (u->ram_rows + c->rows > u->rows_known)
            return dm_fail("input z has more rows than the %lld announced", (long long)u->rows_known);
        memcpy(u->ram + u->ram_rows * k, c->data, (size_t)(c->rows * k) * sizeof(float));
        u->ram_rows += c->rows;
    }
    for (int64_t r = 0; u->sample && r < c->rows; r++) {
        /* Algorithm R: row t (0-based) replaces a random slot with probability m/(t+1) */
        int64_t t = u->seen + r;
        int64_t slot = t < u->warm_rows ? t : (int64_t)(dm_splitmix64(&u->rng) % (uint64_t)(t + 1));
        if (slot < u->warm_rows)
            memcpy(u->sample + slot * k, c->data + r * k, (size_t)k * sizeof(float));
    }
    u->seen += c->rows;
    if (u->sample)
        u->sample_rows = u->seen < u->warm_rows ? u->seen : u->warm_rows;
    return 0;
}

int dm_unmix_end_pass(dm_unmix *u, int pass, int64_t merged_rows, const char *method)
{
    if (pass == 0 && u->split)
        u->seen = merged_rows; /* every rank's rows, merged */
    if (pass == 0 && u->seen == 0)
        return dm_fail("input z is empty: no rows to run %s on", method);
    if (u->in_ram && u->ram_rows != u->rows_known)
        return dm_fail("input z had %lld rows, %lld announced", (long long)u->ram_rows, (long long)u->rows_known);
    u->passes = pass + 1;
    return 0;
}

void dm_unmix_match_seeds(const double *W, int64_t S, int64_t K, int64_t k, double *unmixings, int64_t *match,
                          double *stability, json_t *const *seeds)
{
    double *cosv = dm_xmalloc((size_t)K * sizeof(double));
    int *sign = dm_xmalloc((size_t)K * sizeof(int));
    for (int64_t j = 0; j < K; j++)
        stability[j] = 1.0;
    for (int64_t i = 0; i < S; i++) {
        const double *Wi = W + i * K * k;
        int64_t *mt = match + i * K;
        json_t *perm = json_array(), *sg = json_array(), *cs = json_array();
        dm_ica_match(W, Wi, K, k, mt, sign, cosv);
        for (int64_t j = 0; j < K; j++) {
            for (int64_t t = 0; t < k; t++)
                unmixings[(i * K + j) * k + t] = sign[j] * Wi[mt[j] * k + t];
            if (cosv[j] < stability[j])
                stability[j] = cosv[j];
            json_array_append_new(perm, json_integer(mt[j]));
            json_array_append_new(sg, json_integer(sign[j]));
            json_array_append_new(cs, json_real(cosv[j]));
        }
        json_object_set_new(seeds[i], "match", perm);
        json_object_set_new(seeds[i], "sign", sg);
        json_object_set_new(seeds[i], "matched_abs_cos", cs);
    }
    free(cosv);
    free(sign);
}

int dm_unmix_publish(dm_node *n, const dm_unmix *u, const dm_unmix_result *r, const double *stability,
                     json_t *o, json_t *seeds, dm_tensor *summary)
{
    double stable = dm_param_float(n, "stable");
    json_t *stj = json_array(), *unst = json_array();
    for (int64_t j = 0; j < r->K; j++) {
        json_array_append_new(stj, json_real(stability[j]));
        if (r->S > 1 && stability[j] < stable)
            json_array_append_new(unst, json_integer(j));
    }
    int64_t unstable = (int64_t)json_array_size(unst);
    json_object_set_new(o, "in_ram", json_boolean(u->in_ram));
    json_object_set_new(o, "warm_start", json_boolean(dm_param_bool(n, "warm_start")));
    json_object_set_new(o, "passes", json_integer(u->passes));
    json_object_set_new(o, "stability", stj);
    json_object_set_new(o, "stable_threshold", json_real(stable));
    json_object_set_new(o, "unstable", unst);
    json_object_set_new(o, "unstable_count", json_integer((json_int_t)unstable));
    json_t *tm = json_object();
    json_object_set_new(tm, "total_s", json_real(dm_now() - u->t_open));
    json_object_set_new(tm, "warm_start_s", json_real(u->t_warm));
    json_object_set_new(tm, "iterations_s", json_real(u->t_iter));
    json_object_set_new(o, "timings", tm);
    json_object_set_new(o, "seeds", seeds);
    dm_tensor doc = {0};
    if (dm_publish_json(n, dm_param_str(n, "file"), r->what, o, JSON_INDENT(2) | JSON_REAL_PRECISION(10), &doc))
        return -1;
    dm_ica_summary sm;
    memset(&sm, 0, sizeof sm);
    sm.k = r->K, sm.rows = u->seen, sm.seeds = r->S, sm.passes = u->passes;
    sm.iterations = r->iterations, sm.converged = r->converged[0] != 0, sm.all_converged = 1;
    for (int64_t i = 0; i < r->S; i++)
        sm.all_converged &= r->converged[i] != 0;
    sm.unstable_count = unstable;
    dm_summary_pack(summary, DM_SUMMARY_ICA, DM_SUMMARY_ICA_VERSION, &sm, sizeof sm, doc.data,
                    (uint64_t)dm_tensor_numel(&doc));
    dm_tensor_free(&doc);
    return 0;
}
