/*
 * test_gpt2.c: the GPT-2 family (operators/kernels/gpt2.c) of the model runner
 * (model.c), against
 *   - its reference backend: every other backend this CPU has ("cpu", and
 *     "cpu-avx512" with AVX-512F) kernel by kernel through the backend table
 *     (linear with its GELU and residual epilogues, LayerNorm, attention, GELU,
 *     the residual add, the unembedding) on random data;
 *   - a float64 numpy GPT-2 (tools/gpt2_reference.py), through golden files
 *     (tests/golden/gpt2/, written by make_gpt2_golden.py) for three tiny random
 *     models: head sizes 16 (F32, with mask buffers), 12 (BF16, "transformer."
 *     names) and 64 (F16, n_inner set): every hook, centred and raw, logits and
 *     per-token loss, by dm_model_forward on every backend and by the
 *     `dmica activations` command;
 *   - editing hooks (dm_model_run): an edit that changes nothing changes no bit;
 *     blocks.L.hook_resid_pre replaced by a given tensor, or with a direction
 *     removed, against the reference run the same way (edit.safetensors);
 *     edits at branch and embedding hooks; observe callbacks; their errors;
 *   - bad input: missing, extra, misshapen and mistyped tensors, truncated files,
 *     configs that are incomplete or disagree with the weights, token ids out of
 *     range, windows longer than n_positions, unknown hooks.
 *
 * Tolerance: 1e-4 relative, as max |ours - reference| / max |reference| per hook.
 * Float32 with float32 sums over at most 256 terms differs from float64 by about
 * 1e-6 relative here; 1e-4 leaves room for the 124M shape's longer sums while
 * still catching any wrong formula (a missed centring or scale is 1e-1 or more).
 * Kernel against kernel: 1e-5 (same float32 inputs, different summation orders).
 *
 * Runs from the repository root (make test-unit does) so tests/golden is found.
 */
#include "commands.h"
#include "gpt2.h"

#include "commands.h"
#include "dm.h"
#include "npy.h"
#include "bgemm.h"
#include "safetensors.h"
#include "sgemm.h"
#include "test.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GOLDEN "tests/golden/gpt2/"
#define TOL 1e-4

static char tmpdir[] = "/tmp/dmica-test-gpt2-XXXXXX";

/* ---- helpers ---------------------------------------------------------------- */

static float rng_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((test_rng_next() >> 40) / 16777216.0);
}

static float *random_floats(size_t n, float lo, float hi)
{
    float *x = dm_xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_uniform(lo, hi);
    return x;
}

/* max |a - b| / max |b| over n values; NaN in b must be NaN in a (and is skipped). */
static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(b[i])) {
            if (!isnan(a[i]))
                return INFINITY;
            continue;
        }
        double d = fabs((double)a[i] - b[i]);
        num = d > num || isnan(d) ? (isnan(d) ? INFINITY : d) : num;
        den = fabs(b[i]) > den ? fabs(b[i]) : den;
    }
    return den > 0 ? num / den : num;
}

static int has(const char *msg, const char *want)
{
    if (strstr(msg, want))
        return 1;
    fprintf(stderr, "error '%s' lacks '%s'\n", msg, want);
    return 0;
}

/* Every hook of a model with n_layer blocks (at most 64). */
static int all_hooks(int n_layer, dm_model_hook *hooks)
{
    int n = 0;
    hooks[n++] = (dm_model_hook){DM_HOOK_EMBED, -1};
    hooks[n++] = (dm_model_hook){DM_HOOK_POS_EMBED, -1};
    for (int l = 0; l < n_layer; l++)
        for (int k = DM_HOOK_RESID_PRE; k <= DM_HOOK_RESID_POST; k++)
            hooks[n++] = (dm_model_hook){(dm_model_hook_kind)k, l};
    hooks[n++] = (dm_model_hook){DM_HOOK_LN_FINAL, -1};
    hooks[n++] = (dm_model_hook){DM_HOOK_LOGITS, -1};
    hooks[n++] = (dm_model_hook){DM_HOOK_LOSS, -1};
    return n;
}

/* The golden tokens of a model (int32 [B, T]); caller frees. */
static int32_t *golden_tokens(const dm_safetensors *exp, int *B, int *T)
{
    const dm_st_tensor *t = dm_st_find(exp, "tokens");
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->dtype, "I32");
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    int32_t *tok = dm_xmalloc((size_t)t->nbytes);
    memcpy(tok, t->data, (size_t)t->nbytes);
    return tok;
}

/* The expected values of hook (centred or raw) as floats; caller frees. */
static float *golden_hook(const dm_safetensors *exp, const char *hook, int center, size_t n)
{
    char key[128];
    snprintf(key, sizeof key, "%s%s", center ? "" : "raw/", hook);
    const dm_st_tensor *t = dm_st_find(exp, key);
    ck_assert_msg(t != NULL, "golden file lacks %s", key);
    ck_assert_int_eq(t->numel, (int64_t)n);
    float *v = dm_xmalloc(sizeof(float) * n);
    ck_assert_int_eq(dm_st_read_f32(exp, t, v), 0);
    return v;
}

/* ---- backends ------------------------------------------------------------------ */

/* A compute context that selects backend id (the default one otherwise). */
static dm_compute context_for(dm_model_backend_id id)
{
    dm_compute cx = *dm_compute_default();
    cx.reference = id == DM_MODEL_REF;
    cx.avx512 = id == DM_MODEL_CPU_AVX512;
    cx.device = id == DM_MODEL_CUDA ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
    return cx;
}

/* The backends this build and CPU have besides "ref", and "ref" itself. */
static const dm_model_backend *ref_backend(void)
{
    const dm_model_backend *r = dm_model_backend_get(DM_MODEL_REF);
    ck_assert_ptr_nonnull(r);
    return r;
}

#define FOR_EACH_FAST_BACKEND(id, be)                                                          \
    for (dm_model_backend_id id = DM_MODEL_CPU; id < DM_MODEL_NBACKENDS; id++)                   \
        for (const dm_model_backend *be = dm_model_backend_get(id); be; be = NULL)

START_TEST(backend_table)
{
    /* every context selects the entry it asks for; every present entry is whole */
    dm_compute cx = context_for(DM_MODEL_REF);
    ck_assert_ptr_eq(dm_model_backend_select(&cx), ref_backend());
    ck_assert_str_eq(ref_backend()->name, "ref");
    cx = context_for(DM_MODEL_CPU);
    ck_assert_str_eq(dm_model_backend_select(&cx)->name, "cpu");
    cx = context_for(DM_MODEL_CPU_AVX512);
    ck_assert_str_eq(dm_model_backend_select(&cx)->name,
                     dm_compute_default()->avx512 ? "cpu-avx512" : "cpu");
    ck_assert_int_eq(dm_model_backend_get(DM_MODEL_CPU_AVX512) != NULL, dm_compute_default()->avx512);
    for (int id = 0; id < DM_MODEL_NBACKENDS; id++) {
        const dm_model_backend *be = dm_model_backend_get((dm_model_backend_id)id);
        if (!be)
            continue;
        ck_assert(be->layernorm && be->linear && be->attention && be->gelu && be->residual &&
                  be->unembed);
        ck_assert(!be->linear_residual || be->packs); /* the fused add is dm_sgemm's */
    }
    ck_assert_ptr_null(dm_model_backend_get(DM_MODEL_NBACKENDS));
    /* the GPU where libdmica-cuda.so sees one (gpu/gpt2.cu, a whole entry that
     * packs nothing), else the CPU's entry: a CUDA context never fails to load */
    cx = *dm_compute_default();
    cx.device = DM_DEVICE_CUDA;
    const dm_model_backend *cu = dm_model_backend_get(DM_MODEL_CUDA);
    if (cu) {
        ck_assert_str_eq(cu->name, "cuda");
        ck_assert_int_eq(cu->packs, 0);
        ck_assert_ptr_eq(dm_model_backend_select(&cx), cu);
    } else {
        ck_assert_str_eq(dm_model_backend_select(&cx)->name, dm_compute_default()->avx512 ? "cpu-avx512" : "cpu");
    }
    dm_model *m = dm_model_load(GOLDEN "c64h4", 1, &cx);
    ck_assert_msg(m != NULL, "%s", dm_error());
    dm_model_free(m);
}
END_TEST

/* W (C, OC) as a backend's linear reads it: packed for dm_sgemm when it packs. */
static dm_model_weight weight_for(const dm_model_backend *be, const float *w, int C, int OC)
{
    dm_model_weight W = {w, NULL};
    if (be->packs) {
        float *p = dm_xmalloc_aligned(sizeof(float) * dm_sgemm_packed_floats(C, OC));
        dm_sgemm_pack(p, w, OC, C, OC);
        W.packed = p;
    }
    return W;
}

START_TEST(linear_matches_reference)
{
    const dm_model_backend *ref = ref_backend();
    /* odd sizes, and even ones of at least 32 (dm_sgemm's Strassen layout) */
    static const int shapes[][3] = {{37, 48, 70}, {64, 64, 192}, {5, 96, 32}};
    FOR_EACH_FAST_BACKEND(id, be) for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++)
    {
        dm_compute cx = context_for(id);
        int BT = shapes[k][0], C = shapes[k][1], OC = shapes[k][2];
        test_rng = 1 + k;
        float *x = random_floats((size_t)BT * C, -2, 2), *w = random_floats((size_t)C * OC, -1, 1);
        float *b = random_floats(OC, -1, 1), *x0 = random_floats((size_t)BT * OC, -1, 1);
        float *o1 = dm_xmalloc(sizeof(float) * BT * OC), *o2 = dm_xmalloc(sizeof(float) * BT * OC);
        dm_model_weight W = weight_for(be, w, C, OC), Wr = {w, NULL};
        for (int v = 0; v < 4; v++) {
            const float *bias = v & 1 ? b : NULL;
            int flags = v & 2 ? DM_MODEL_GELU : 0;
            be->linear(&cx, o1, x, &W, bias, BT, C, OC, flags);
            ref->linear(&cx, o2, x, &Wr, bias, BT, C, OC, flags);
            ck_assert_msg(rel_err(o1, o2, (size_t)BT * OC) <= 1e-5, "%s linear %dx%dx%d v%d: %g",
                          be->name, BT, C, OC, v, rel_err(o1, o2, (size_t)BT * OC));
        }
        if (be->linear_residual) { /* x0 += x @ W + b, against ref's linear then residual */
            memcpy(o1, x0, sizeof(float) * BT * OC);
            be->linear_residual(&cx, o1, x, &W, b, BT, C, OC);
            float *br = dm_xmalloc(sizeof(float) * BT * OC);
            ref->linear(&cx, br, x, &Wr, b, BT, C, OC, 0);
            memcpy(o2, x0, sizeof(float) * BT * OC);
            ref->residual(&cx, o2, br, (size_t)BT * OC);
            ck_assert_double_le(rel_err(o1, o2, (size_t)BT * OC), 1e-5);
            free(br);
        }
        /* the residual add itself: exact, whatever the backend */
        memcpy(o1, x0, sizeof(float) * BT * OC);
        memcpy(o2, x0, sizeof(float) * BT * OC);
        be->residual(&cx, o1, x, (size_t)BT * (OC < C ? OC : C));
        ref->residual(&cx, o2, x, (size_t)BT * (OC < C ? OC : C));
        ck_assert_mem_eq(o1, o2, sizeof(float) * BT * OC);
        free((void *)W.packed);
        free(x), free(w), free(b), free(x0), free(o1), free(o2);
    }
}
END_TEST

/* The GPU's matrix products in TF32 and BF16 (compute.h), against "ref" in
 * FP32. Each input is rounded to u = 2^-11 (TF32) or 2^-8 (BF16) relative
 * before the product, accumulated in FP32: a dot product of C terms is off by
 * at most 2u sum|x_i w_i|, with random signs about 2u sqrt(C) of a typical
 * term, while the largest output is a few times sqrt(C) of one. Tolerance:
 * 8u of the largest output (rel_err), the worst case over a few thousand
 * outputs with room; the errors seen are printed. GPU only. */
START_TEST(gemm_precisions_match_reference)
{
    const dm_model_backend *cu = dm_model_backend_get(DM_MODEL_CUDA), *ref = ref_backend();
    if (!cu)
        return;
    int BT = 64, C = 768, OC = 256, V = 1000;
    test_rng = 11;
    float *x = random_floats((size_t)BT * C, -2, 2), *w = random_floats((size_t)C * OC, -1, 1);
    float *b = random_floats(OC, -1, 1), *wte = random_floats((size_t)V * C, -1, 1);
    float *o1 = dm_xmalloc(sizeof(float) * BT * V), *o2 = dm_xmalloc(sizeof(float) * BT * V);
    dm_model_weight W = {w, NULL};
    const dm_gemm gemm[] = {DM_GEMM_FP32, DM_GEMM_TF32, DM_GEMM_BF16};
    const double u[] = {0x1p-24, 0x1p-11, 0x1p-8};
    double seen[3] = {0};
    for (int g = 0; g < 3; g++) {
        dm_compute cx = context_for(DM_MODEL_CUDA);
        cx.gemm = gemm[g];
        cu->linear(&cx, o1, x, &W, b, BT, C, OC, DM_MODEL_GELU);
        ref->linear(&cx, o2, x, &W, b, BT, C, OC, DM_MODEL_GELU);
        double e1 = rel_err(o1, o2, (size_t)BT * OC);
        cu->unembed(&cx, o1, x, wte, BT, C, V);
        ref->unembed(&cx, o2, x, wte, BT, C, V);
        double e2 = rel_err(o1, o2, (size_t)BT * V);
        printf("gpt2 cuda %s: linear+gelu relative error %.2g, unembed %.2g (tolerance %.2g)\n",
               dm_gemm_name(gemm[g]), e1, e2, g ? 8 * u[g] : 1e-5);
        ck_assert_double_le(e1, g ? 8 * u[g] : 1e-5);
        ck_assert_double_le(e2, g ? 8 * u[g] : 1e-5);
        if (g) /* not FP32 in disguise: the rounding shows */
            ck_assert_double_gt(e2, u[g] / 64);
        seen[g] = e2;
    }
    /* nor BF16 TF32 in disguise: its rounding is 8 times TF32's */
    ck_assert_double_gt(seen[2], 2 * seen[1]);
    free(x), free(w), free(b), free(wte), free(o1), free(o2);
}
END_TEST

START_TEST(unembed_matches_reference)
{
    const dm_model_backend *ref = ref_backend();
    int BT = 29, C = 48, V = 101;
    test_rng = 9;
    float *x = random_floats((size_t)BT * C, -2, 2), *wte = random_floats((size_t)V * C, -1, 1);
    float *o1 = dm_xmalloc(sizeof(float) * BT * V), *o2 = dm_xmalloc(sizeof(float) * BT * V);
    ref->unembed(NULL, o2, x, wte, BT, C, V);
    /* against the definition: row 3, column 7 */
    double s = 0;
    for (int i = 0; i < C; i++)
        s += (double)x[3 * C + i] * wte[7 * C + i];
    ck_assert_double_le(fabs(o2[3 * V + 7] - s), 1e-5 * (1 + fabs(s)));
    FOR_EACH_FAST_BACKEND(id, be)
    {
        dm_compute cx = context_for(id);
        be->unembed(&cx, o1, x, wte, BT, C, V);
        ck_assert_double_le(rel_err(o1, o2, (size_t)BT * V), 1e-5);
    }
    free(x), free(wte), free(o1), free(o2);
}
END_TEST

/* bf16 weights (DM_WEIGHTS_BF16): each backend with bf16 entries (ref:
 * dm_bgemm_ref on W held plain; cpu-avx512 where the CPU has AVX-512 BF16:
 * dm_bgemm on W packed) against ref's, on the same bf16 W and the same
 * inputs. The products are the same (the inputs rounded to bf16 alike, each
 * product exact); only the sums differ, float32 against double: 1e-5, as for
 * float32 (test_bgemm.c sees 2e-7). Against the float32 product with the
 * unrounded W: W and the input each rounded to u = 2^-8 relative, so at most
 * 2u sum |x w| per output: 8u of the largest output, as
 * gemm_precisions_match_reference allows, and more than u/64 (the rounding
 * shows). ref against the definition at one element. */
START_TEST(bf16_linear_matches_reference)
{
    const dm_model_backend *ref = ref_backend();
    const double u = 0x1p-8;
    static const int shapes[][3] = {{37, 48, 70}, {64, 64, 192}, {5, 96, 32}, {130, 33, 65}};
    for (dm_model_backend_id id = DM_MODEL_REF; id <= DM_MODEL_CPU_AVX512; id++) {
        const dm_model_backend *be = dm_model_backend_get(id);
        if (!be || !be->bf16 || (be->packs && !dm_bgemm_available()))
            continue;
        dm_compute cx = context_for(id);
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
            int BT = shapes[k][0], C = shapes[k][1], OC = shapes[k][2];
            test_rng = 21 + k;
            float *x = random_floats((size_t)BT * C, -2, 2), *w = random_floats((size_t)C * OC, -1, 1);
            float *b = random_floats(OC, -1, 1), *x0 = random_floats((size_t)BT * OC, -1, 1);
            float *o1 = dm_xmalloc(sizeof(float) * BT * OC), *o2 = dm_xmalloc(sizeof(float) * BT * OC);
            uint16_t *wb = dm_xmalloc(sizeof(uint16_t) * C * OC);
            for (size_t i = 0; i < (size_t)C * OC; i++)
                wb[i] = dm_f32_to_bf16(w[i]);
            uint16_t *wp = NULL;
            if (be->packs) {
                wp = dm_xmalloc_aligned(sizeof(uint16_t) * dm_bgemm_packed_size(C, OC));
                dm_bgemm_pack(wp, wb, OC, C, OC, DM_BGEMM_KN);
            }
            dm_model_weight W = {NULL, NULL, wp ? wp : wb}, Wr = {NULL, NULL, wb}, Wf = {w, NULL, NULL};
            for (int v = 0; v < 4; v++) {
                const float *bias = v & 1 ? b : NULL;
                int flags = v & 2 ? DM_MODEL_GELU : 0;
                be->linear(&cx, o1, x, &W, bias, BT, C, OC, flags);
                ref->linear(&cx, o2, x, &Wr, bias, BT, C, OC, flags);
                double e = rel_err(o1, o2, (size_t)BT * OC);
                ck_assert_msg(e <= 1e-5, "%s bf16 linear %dx%dx%d v%d: %g", be->name, BT, C, OC, v, e);
                if (v == 1) {
                    double s = b[7];
                    for (int i = 0; i < C; i++)
                        s += (double)dm_bf16_to_f32(dm_f32_to_bf16(x[3 * C + i])) * dm_bf16_to_f32(wb[i * OC + 7]);
                    ck_assert_double_le(fabs(o2[3 * OC + 7] - s), 1e-6 * (1 + fabs(s)));
                    ref->linear(&cx, o2, x, &Wf, bias, BT, C, OC, 0);
                    e = rel_err(o1, o2, (size_t)BT * OC);
                    ck_assert_msg(e <= 8 * u && e > u / 64, "%s bf16 against float32: %g", be->name, e);
                }
            }
            if (be->linear_residual) { /* x0 += x @ W + b */
                memcpy(o1, x0, sizeof(float) * BT * OC);
                be->linear_residual(&cx, o1, x, &W, b, BT, C, OC);
                float *br = dm_xmalloc(sizeof(float) * BT * OC);
                ref->linear(&cx, br, x, &Wr, b, BT, C, OC, 0);
                memcpy(o2, x0, sizeof(float) * BT * OC);
                ref->residual(&cx, o2, br, (size_t)BT * OC);
                ck_assert_double_le(rel_err(o1, o2, (size_t)BT * OC), 1e-5);
                free(br);
            }
            free(wp), free(wb), free(x), free(w), free(b), free(x0), free(o1), free(o2);
        }
        /* the tied unembedding on a bf16 embedding (V, C): packed as W (C, V) */
        int BT = 29, C = 48, V = 101;
        test_rng = 9;
        float *x = random_floats((size_t)BT * C, -2, 2), *wte = random_floats((size_t)V * C, -1, 1);
        float *o1 = dm_xmalloc(sizeof(float) * BT * V), *o2 = dm_xmalloc(sizeof(float) * BT * V);
        uint16_t *eb = dm_xmalloc(sizeof(uint16_t) * V * C), *ep = NULL;
        for (size_t i = 0; i < (size_t)V * C; i++)
            eb[i] = dm_f32_to_bf16(wte[i]);
        if (be->packs) {
            ep = dm_xmalloc_aligned(sizeof(uint16_t) * dm_bgemm_packed_size(C, V));
            dm_bgemm_pack(ep, eb, C, C, V, DM_BGEMM_NK);
        }
        ref->unembed_bf16(&cx, o2, x, eb, BT, C, V);
        double s = 0;
        for (int i = 0; i < C; i++)
            s += (double)dm_bf16_to_f32(dm_f32_to_bf16(x[3 * C + i])) * dm_bf16_to_f32(eb[7 * C + i]);
        ck_assert_double_le(fabs(o2[3 * V + 7] - s), 1e-6 * (1 + fabs(s)));
        be->unembed_bf16(&cx, o1, x, ep ? ep : eb, BT, C, V);
        ck_assert_double_le(rel_err(o1, o2, (size_t)BT * V), 1e-5);
        ref->unembed(&cx, o2, x, wte, BT, C, V);
        double e = rel_err(o1, o2, (size_t)BT * V);
        ck_assert_msg(e <= 8 * u && e > u / 64, "%s bf16 unembed against float32: %g", be->name, e);
        free(ep), free(eb), free(x), free(wte), free(o1), free(o2);
    }
}
END_TEST

START_TEST(layernorm_fast_matches_reference)
{
    test_rng = 2;
    int BT = 29, C = 96;
    float *x = random_floats((size_t)BT * C, -3, 5), *w = random_floats(C, 0.5f, 1.5f);
    float *b = random_floats(C, -1, 1);
    float *o1 = dm_xmalloc(sizeof(float) * BT * C), *o2 = dm_xmalloc(sizeof(float) * BT * C);
    for (int i = 0; i < C; i++) /* a row with a large offset: two-pass variance needed */
        x[i] += 1000.0f;
    /* The reference sums in float in order, so its mean of the offset row is off by
     * about 1e-4 (relative to the row's spread); the fast kernel sums in double. */
    float *o3 = dm_xmalloc(sizeof(float) * BT * C);
    for (int bt = 0; bt < BT; bt++) {
        double mean = 0, var = 0;
        for (int i = 0; i < C; i++)
            mean += x[bt * C + i];
        mean /= C;
        for (int i = 0; i < C; i++)
            var += (x[bt * C + i] - mean) * (x[bt * C + i] - mean);
        for (int i = 0; i < C; i++)
            o3[bt * C + i] = (float)((x[bt * C + i] - mean) / sqrt(var / C + 1e-5));
    }
    FOR_EACH_FAST_BACKEND(id, be)
    {
        dm_compute cx = context_for(id);
        for (int affine = 0; affine < 2; affine++) {
            be->layernorm(&cx, o1, x, affine ? w : NULL, affine ? b : NULL, BT, C, 1e-5f);
            ref_backend()->layernorm(&cx, o2, x, affine ? w : NULL, affine ? b : NULL, BT, C,
                                     1e-5f);
            ck_assert_double_le(rel_err(o1, o2, (size_t)BT * C), 1e-4);
            ck_assert_double_le(rel_err(o1 + C, o2 + C, (size_t)(BT - 1) * C), 1e-5);
            if (!affine)
                ck_assert_double_le(rel_err(o1, o3, (size_t)BT * C), 1e-5);
        }
        /* without the affine part each row has mean 0 and variance 1 (eps aside) */
        be->layernorm(&cx, o1, x, NULL, NULL, BT, C, 1e-5f);
        double m = 0, v = 0;
        for (int i = 0; i < C; i++)
            m += o1[C + i], v += (double)o1[C + i] * o1[C + i];
        ck_assert_double_le(fabs(m / C), 1e-5);
        ck_assert_double_le(fabs(v / C - 1), 1e-3);
    }
    free(o3);
    free(x), free(w), free(b), free(o1), free(o2);
}
END_TEST

START_TEST(attention_fast_matches_reference)
{
    /* head sizes 12, 64 and 16; T beyond one SIMD width and not a multiple of it */
    const int cases[][4] = {{2, 37, 48, 4}, {1, 130, 128, 2}, {3, 5, 64, 4}, {1, 1, 64, 4}};
    test_rng = 3;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int B = cases[c][0], T = cases[c][1], C = cases[c][2], NH = cases[c][3];
        float *qkv = random_floats((size_t)B * T * 3 * C, -2, 2);
        float *o1 = dm_xmalloc(sizeof(float) * B * T * C), *o2 = dm_xmalloc(sizeof(float) * B * T * C);
        gpt2_attention_forward_ref(o2, qkv, B, T, C, NH);
        FOR_EACH_FAST_BACKEND(id, be)
        {
            dm_compute cx = context_for(id);
            be->attention(&cx, o1, qkv, B, T, C, NH);
            ck_assert_msg(rel_err(o1, o2, (size_t)B * T * C) <= 1e-5, "%s case %zu: %g", be->name,
                          c, rel_err(o1, o2, (size_t)B * T * C));
            /* position 0 attends only to itself: its output is its own value vector */
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < C / NH; i++)
                    ck_assert_float_eq_tol(o1[h * (C / NH) + i], qkv[2 * C + h * (C / NH) + i],
                                           1e-6);
        }
        free(qkv), free(o1), free(o2);
    }
}
END_TEST

START_TEST(gelu_fast_matches_reference)
{
    int N = 200001;
    float *x = dm_xmalloc(sizeof(float) * (N + 8)), *o1 = dm_xmalloc(sizeof(float) * (N + 8)),
          *o2 = dm_xmalloc(sizeof(float) * (N + 8));
    for (int i = 0; i < N; i++)
        x[i] = -20.0f + 40.0f * i / (N - 1);
    float special[8] = {0.0f, -0.0f, 1e-8f, -1e-8f, 100.0f, -100.0f, 1e30f, -1e30f};
    memcpy(x + N, special, sizeof special);
    gpt2_gelu_forward_ref(o2, x, N + 8);
    float *xs = dm_xmalloc(sizeof(float) * (N + 8));
    FOR_EACH_FAST_BACKEND(id, be)
    {
        dm_compute cx = context_for(id);
        be->gelu(&cx, o1, x, N + 8);
        for (int i = 0; i < N + 8; i++)
            ck_assert_msg(fabsf(o1[i] - o2[i]) <= 1e-6f * (1.0f + fabsf(x[i])),
                          "%s gelu(%g): fast %.9g, reference %.9g", be->name, x[i], o1[i], o2[i]);
        ck_assert_float_eq(o1[N + 6], 1e30f);
        ck_assert_float_le(fabsf(o1[N + 7]), 1e-8f);
        memcpy(xs, x, sizeof(float) * N);
        be->gelu(&cx, xs, xs, N); /* in place */
        ck_assert_mem_eq(xs, o1, sizeof(float) * N);
    }
    free(xs);
    free(x), free(o1), free(o2);
}
END_TEST

/* ---- hooks --------------------------------------------------------------------- */

START_TEST(hook_names)
{
    dm_model_hook h;
    char buf[64];
    const char *good[] = {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre",
                          "blocks.11.hook_resid_post", "blocks.6.hook_attn_out",
                          "blocks.3.hook_mlp_out", "blocks.2.hook_resid_mid",
                          "ln_final.hook_normalized", "logits", "loss"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        ck_assert_msg(dm_model_hook_parse(good[i], &h) == 0, "%s: %s", good[i], dm_error());
        ck_assert_str_eq(dm_model_hook_name(h, buf, sizeof buf), good[i]);
    }
    const char *bad[] = {"", "blocks.x.hook_resid_pre", "blocks.1.hook_resid", "hook_resid_pre",
                         "blocks.01.hook_resid_pre", "blocks.-1.hook_resid_pre",
                         "blocks.6.hook_resid_pre ", "blocks.99999999999.hook_resid_pre",
                         "ln_final.hook_scale", "blocks.6.attn.hook_z"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(dm_model_hook_parse(bad[i], &h) < 0, "accepted '%s'", bad[i]);
        ck_assert(has(dm_error(), "unknown hook"));
    }
    dm_model_config cfg = {.n_embd = 768, .n_layer = 12, .vocab_size = 50257};
    dm_model_hook_parse("blocks.6.hook_resid_pre", &h);
    ck_assert_int_eq(dm_model_hook_depth(h), 6);
    ck_assert_int_eq(dm_model_hook_width(&cfg, h), 768);
    ck_assert_int_eq(dm_model_hook_is_residual(h), 1);
    dm_model_hook hs[3];
    dm_model_hook_parse("blocks.3.hook_attn_out", &hs[0]);
    dm_model_hook_parse("hook_embed", &hs[1]);
    dm_model_hook_parse("logits", &hs[2]);
    ck_assert_int_eq(dm_model_hooks_depth(hs, 2), 4);
    ck_assert_int_eq(dm_model_hooks_depth(hs, 3), DM_MODEL_DEPTH_ALL);
    ck_assert_int_eq(dm_model_hooks_depth(hs, 0), 0);
    ck_assert_int_eq(dm_model_hook_width(&cfg, hs[2]), 50257);
    ck_assert_int_eq(dm_model_hook_is_residual(hs[2]), 0);
    dm_model_hook_parse("loss", &h);
    ck_assert_int_eq(dm_model_hook_width(&cfg, h), 1);
    dm_model_hook_parse("blocks.12.hook_resid_pre", &h);
    ck_assert_int_eq(dm_model_hook_width(&cfg, h), -1);
    ck_assert(has(dm_error(), "hook blocks.12.hook_resid_pre: the model has 12 layers "
                              "(blocks.0 to blocks.11)"));
}
END_TEST

/* ---- parity with the float64 reference ---------------------------------------- */

/* Runs every hook of model name, centred and raw, and compares with the golden file.
 * Returns the largest relative error seen. */
static double check_model(const char *name, dm_model_backend_id id, dm_gemm gemm, double tol)
{
    char dir[256], path[256], hname[64];
    snprintf(dir, sizeof dir, GOLDEN "%s", name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    dm_safetensors *exp = dm_st_open(path);
    ck_assert_msg(exp != NULL, "%s", dm_error());
    dm_compute cx = context_for(id);
    cx.gemm = gemm;
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, &cx);
    ck_assert_msg(m != NULL, "%s", dm_error());
    ck_assert_ptr_eq(dm_model_backend_of(m), dm_model_backend_get(id));
    const dm_model_config *c = dm_model_cfg(m);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    dm_model_hook hooks[64];
    float *outs[64];
    int n = all_hooks(c->n_layer, hooks);
    double worst = 0;
    for (int i = 0; i < n; i++)
        outs[i] = dm_xmalloc(sizeof(float) * B * T * dm_model_hook_width(c, hooks[i]));
    for (int center = 1; center >= 0; center--) {
        ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, n, outs, center) == 0, "%s",
                      dm_error());
        for (int i = 0; i < n; i++) {
            size_t len = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
            dm_model_hook_name(hooks[i], hname, sizeof hname);
            float *want = golden_hook(exp, hname, center, len);
            double e = rel_err(outs[i], want, len);
            ck_assert_msg(e <= tol, "%s %s (%s, %s backend, %s): relative error %g", name, hname,
                          center ? "centred" : "raw", dm_model_backend_of(m)->name, dm_gemm_name(gemm), e);
            worst = e > worst ? e : worst;
            free(want);
        }
    }
    for (int i = 0; i < n; i++)
        free(outs[i]);
    free(tok);
    dm_model_free(m);
    dm_st_close(exp);
    return worst;
}

START_TEST(parity_every_hook)
{
    const char *models[] = {"c64h4", "c48h4", "c64h1"};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++)
        for (int id = 0; id < DM_MODEL_NBACKENDS; id++)
            if (dm_model_backend_get((dm_model_backend_id)id))
                printf("gpt2 parity %s: max relative error %.2g (%s backend)\n", models[i],
                       check_model(models[i], (dm_model_backend_id)id, DM_GEMM_FP32, TOL),
                       dm_model_backend_get((dm_model_backend_id)id)->name);
    /* The GPU in TF32 and BF16 through the whole model, every hook against the
     * float64 golden: each layer's products carry gemm_precisions_match_reference's
     * rounding (8u), and the residual stream adds them up over the layers; the
     * bound allows 4 such layers' worth, and the errors seen are printed. */
    if (dm_model_backend_get(DM_MODEL_CUDA))
        for (size_t i = 0; i < sizeof models / sizeof *models; i++) {
            printf("gpt2 parity %s: max relative error %.2g (cuda backend, tf32)\n", models[i],
                   check_model(models[i], DM_MODEL_CUDA, DM_GEMM_TF32, 32 * 0x1p-11));
            printf("gpt2 parity %s: max relative error %.2g (cuda backend, bf16)\n", models[i],
                   check_model(models[i], DM_MODEL_CUDA, DM_GEMM_BF16, 32 * 0x1p-8));
        }
}
END_TEST

/* Every hook of golden model name (centred with center), loaded with weights
 * bf16 on backend id, into outs (each freed by the caller); the backend it ran
 * on and whether it held bf16 into *ran and *held. */
static int bf16_run(const char *name, dm_model_backend_id id, int center, float **outs, size_t *lens,
                    dm_model_hook *hooks, const dm_model_backend **ran, int *held)
{
    char dir[256], path[256];
    snprintf(dir, sizeof dir, GOLDEN "%s", name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    dm_safetensors *exp = dm_st_open(path);
    ck_assert_ptr_nonnull(exp);
    dm_compute cx = context_for(id);
    dm_model_opts o = {.weights = DM_WEIGHTS_BF16};
    dm_model *m = dm_model_load_opts(dir, DM_MODEL_DEPTH_ALL, &cx, &o);
    ck_assert_msg(m != NULL, "%s", dm_error());
    const dm_model_config *c = dm_model_cfg(m);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    int n = all_hooks(c->n_layer, hooks);
    for (int i = 0; i < n; i++) {
        lens[i] = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
        outs[i] = dm_xmalloc(sizeof(float) * lens[i]);
    }
    ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, n, outs, center) == 0, "%s", dm_error());
    *ran = dm_model_backend_of(m);
    *held = dm_model_holds_bf16(m);
    ck_assert_uint_eq(dm_model_bytes(m), dm_model_param_bytes(c, DM_MODEL_DEPTH_ALL, &cx, DM_WEIGHTS_BF16));
    free(tok);
    dm_model_free(m);
    dm_st_close(exp);
    return n;
}

/* The allowance of hook h of an L-block GPT-2 with bf16 weights, relative as
 * rel_err: each linear layer rounds W (F32 and F16 files) and its input to
 * bf16, u = 2^-8 relative each, so each product stage adds at most 2u of the
 * sum of its products' magnitudes, and to first order these add along the
 * path (test_gemma2.c's bf16_tol): 2 stages per half block, 1 for the
 * unembedding, and u for the embedding's own rounding (wpe stays float32).
 * widened (a backend without bf16 kernels: the float32 path on bf16 W): u
 * per stage, W's rounding alone. */
static double gpt2_bf16_tol(dm_model_hook h, int L, int widened)
{
    const double u = 0x1p-8;
    int stages = 0;
    switch (h.kind) {
    case DM_HOOK_POS_EMBED: return TOL;
    case DM_HOOK_RESID_PRE: stages = 4 * h.layer; break;
    case DM_HOOK_ATTN_OUT:
    case DM_HOOK_RESID_MID: stages = 4 * h.layer + 2; break;
    case DM_HOOK_MLP_OUT:
    case DM_HOOK_RESID_POST: stages = 4 * h.layer + 4; break;
    case DM_HOOK_LN_FINAL: stages = 4 * L; break;
    case DM_HOOK_LOGITS:
    case DM_HOOK_LOSS: stages = 4 * L + 1; break;
    default: break;
    }
    return ((widened ? 1 : 2) * stages + 1) * u;
}

START_TEST(bf16_weights)
{
    /* bf16 weights from an F32 (c64h4), a BF16 (c48h4) and an F16 (c64h1)
     * file, on every backend: against the float64 golden within
     * gpt2_bf16_tol, and against ref's bf16 run (the same bf16 W, inputs
     * rounded alike) within the same allowance: the two round the same
     * values except where an input lies within float32's differences of a
     * bf16 rounding boundary, and from there on they drift apart as two bf16
     * runs may (seen: under a fifth of the allowance). The embedding read
     * from the packed copy is the ref's bit for bit. A GPU backend has no
     * bf16 path: the model runs on the CPU. */
    const char *models[] = {"c64h4", "c48h4", "c64h1"};
    char hname[64];
    for (size_t k = 0; k < sizeof models / sizeof *models; k++)
        for (int center = 1; center >= 0; center--) {
            const char *name = models[k];
            char path[256];
            snprintf(path, sizeof path, GOLDEN "%s/expected.safetensors", name);
            dm_safetensors *exp = dm_st_open(path);
            ck_assert_ptr_nonnull(exp);
            float *ref[64], *got[64];
            size_t lens[64];
            dm_model_hook hooks[64];
            const dm_model_backend *ran;
            int held, n = bf16_run(name, DM_MODEL_REF, center, ref, lens, hooks, &ran, &held), L = 0;
            ck_assert_int_eq(held, 1);
            for (int i = 0; i < n; i++)
                L = hooks[i].layer + 1 > L ? hooks[i].layer + 1 : L;
            for (dm_model_backend_id id = DM_MODEL_REF; id < DM_MODEL_NBACKENDS; id++) {
                if (!dm_model_backend_get(id))
                    continue;
                bf16_run(name, id, center, got, lens, hooks, &ran, &held);
                ck_assert_ptr_null(ran->dev);
                double worst = 0, worst_ref = 0, share = 0;
                for (int i = 0; i < n; i++) {
                    dm_model_hook_name(hooks[i], hname, sizeof hname);
                    float *want = golden_hook(exp, hname, center, lens[i]);
                    double e = rel_err(got[i], want, lens[i]), er = rel_err(got[i], ref[i], lens[i]);
                    double t = gpt2_bf16_tol(hooks[i], L, !held);
                    ck_assert_msg(e <= t, "%s %s (%s): against the golden: %g, allowed %g", name, hname, ran->name, e, t);
                    if (held)
                        ck_assert_msg(er <= t, "%s %s (%s): against ref: %g, allowed %g", name, hname, ran->name, er, t);
                    worst = e > worst ? e : worst;
                    worst_ref = er > worst_ref ? er : worst_ref;
                    share = e / t > share ? e / t : share;
                    free(want);
                }
                if (held) /* the embedding's rows from the packed copy */
                    ck_assert_int_eq(memcmp(got[0], ref[0], sizeof(float) * lens[0]), 0);
                printf("gpt2 bf16 %s (%s, %s backend%s): max relative error %.2g against the golden "
                       "(%.2f of its allowance), %.2g against ref\n", name, center ? "centred" : "raw",
                       ran->name, held ? "" : ", widened to float32", worst, share, worst_ref);
                for (int i = 0; i < n; i++)
                    free(got[i]);
            }
            for (int i = 0; i < n; i++)
                free(ref[i]);
            dm_st_close(exp);
        }
}
END_TEST

START_TEST(centring_matters)
{
    /* the golden models are made so that raw and centred residuals differ clearly */
    dm_safetensors *exp = dm_st_open(GOLDEN "c64h4/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    const char *hooks[] = {"hook_embed", "hook_pos_embed", "blocks.0.hook_attn_out",
                           "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"};
    for (size_t i = 0; i < sizeof hooks / sizeof *hooks; i++) {
        float *c = golden_hook(exp, hooks[i], 1, 32 * 64), *r = golden_hook(exp, hooks[i], 0, 32 * 64);
        ck_assert_msg(rel_err(c, r, 32 * 64) > 1e-2, "%s: centring changes little", hooks[i]);
        free(c), free(r);
    }
    dm_st_close(exp);
}
END_TEST

START_TEST(partial_depth_and_batches)
{
    /* c48h4 has 3 blocks; load 2 and run to blocks.1.hook_resid_mid only */
    dm_safetensors *exp = dm_st_open(GOLDEN "c48h4/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    dm_model_hook hooks[3];
    dm_model_hook_parse("blocks.1.hook_resid_mid", &hooks[0]);
    dm_model_hook_parse("blocks.0.hook_mlp_out", &hooks[1]);
    dm_model_hook_parse("blocks.1.hook_resid_mid", &hooks[2]); /* twice: both filled */
    dm_model *m = dm_model_load(GOLDEN "c48h4", dm_model_hooks_depth(hooks, 3), NULL);
    ck_assert_msg(m != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_model_depth(m), 2);
    size_t n = (size_t)B * T * 48;
    float *outs[3] = {dm_xmalloc(sizeof(float) * n), dm_xmalloc(sizeof(float) * n),
                      dm_xmalloc(sizeof(float) * n)};
    ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, 3, outs, 1) == 0, "%s", dm_error());
    float *w0 = golden_hook(exp, "blocks.1.hook_resid_mid", 1, n),
          *w1 = golden_hook(exp, "blocks.0.hook_mlp_out", 1, n);
    ck_assert_double_le(rel_err(outs[0], w0, n), TOL);
    ck_assert_double_le(rel_err(outs[1], w1, n), TOL);
    ck_assert_mem_eq(outs[0], outs[2], sizeof(float) * n);

    /* one window at a time (smaller batch, then the larger again): same rows */
    for (int b = B - 1; b >= 0; b--) {
        ck_assert_int_eq(dm_model_forward(m, tok + b * T, 1, T, hooks, 1, outs, 1), 0);
        ck_assert_double_le(rel_err(outs[0], w0 + (size_t)b * T * 48, (size_t)T * 48), TOL);
    }
    /* a shorter window is its prefix (causal attention) */
    ck_assert_int_eq(dm_model_forward(m, tok, 1, 5, hooks, 1, outs, 1), 0);
    ck_assert_double_le(rel_err(outs[0], w0, 5 * 48), TOL);

    /* deeper hooks than loaded */
    dm_model_hook deep;
    dm_model_hook_parse("blocks.2.hook_resid_pre", &deep); /* the output of block 1: fine */
    ck_assert_int_eq(dm_model_forward(m, tok, B, T, &deep, 1, outs, 1), 0);
    float *w2 = golden_hook(exp, "blocks.2.hook_resid_pre", 1, n);
    ck_assert_double_le(rel_err(outs[0], w2, n), TOL);
    free(w2);
    dm_model_hook_parse("blocks.2.hook_attn_out", &deep);
    ck_assert_int_eq(dm_model_forward(m, tok, B, T, &deep, 1, outs, 1), -1);
    ck_assert(has(dm_error(), "hook blocks.2.hook_attn_out needs more blocks; the model was "
                              "loaded with 2 blocks"));
    dm_model_hook_parse("loss", &deep);
    ck_assert_int_eq(dm_model_forward(m, tok, B, T, &deep, 1, outs, 1), -1);
    ck_assert(has(dm_error(), "every block and ln_f"));
    dm_model_free(m);

    /* the loss alone (logits computed in blocks of rows, not kept) */
    m = dm_model_load(GOLDEN "c48h4", DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(dm_model_forward(m, tok, B, T, &deep, 1, outs, 1), 0);
    float *loss = golden_hook(exp, "loss", 1, (size_t)B * T);
    ck_assert_double_le(rel_err(outs[0], loss, (size_t)B * T), TOL);
    ck_assert(isnan(outs[0][T - 1]) && isnan(outs[0][2 * T - 1]));
    dm_model_free(m);
    free(loss), free(w0), free(w1), free(tok);
    for (int i = 0; i < 3; i++)
        free(outs[i]);
    dm_st_close(exp);
}
END_TEST

/* ---- editing hooks ------------------------------------------------------------- */

/* Counts its calls in *user and adds zero to every value: an edit that changes
 * nothing (x + 0.0f is x for every float but -0.0f, which no activation here is
 * after a sum). */
static int add_zero(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    for (size_t i = 0; i < (size_t)B * T * width; i++)
        x[i] += 0.0f;
    (*(int *)user)++;
    return 0;
}

/* Counts its calls; reads x. */
static int observe_count(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    volatile float v = x[(size_t)B * T * width - 1];
    (void)v;
    (*(int *)user)++;
    return 0;
}

/* x = user's tensor: e.g. an SAE's reconstruction spliced in. */
static int replace(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    memcpy(x, user, sizeof(float) * B * T * width);
    return 0;
}

/* x -= (x . u) u per row, u = user's (width). */
static int remove_direction(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    const float *u = user;
    for (int r = 0; r < B * T; r++) {
        float *row = x + (size_t)r * width;
        double d = 0;
        for (int i = 0; i < width; i++)
            d += (double)row[i] * u[i];
        for (int i = 0; i < width; i++)
            row[i] -= (float)d * u[i];
    }
    return 0;
}

static int zero(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    memset(x, 0, sizeof(float) * B * T * width);
    return 0;
}

/* Copies x to user (an observe callback where no copy is asked for). */
static int grab(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    memcpy(user, x, sizeof(float) * B * T * width);
    return 0;
}

static int fail_with_message(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    return dm_failc(DM_E_SHAPE, "steering vector of width 5, hook width %d", width);
}

static int fail_silently(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    return 1;
}

static dm_model_hook hook_named(const char *name)
{
    dm_model_hook h;
    ck_assert_msg(dm_model_hook_parse(name, &h) == 0, "%s", dm_error());
    return h;
}

/* ---- the runner's device path, with host memory standing in for a GPU's ---------
 *
 * gpt2.h's dm_model_device_ops checked without a GPU: "device memory" is pages
 * the host may not touch (PROT_NONE) except inside the stand-in's own calls,
 * which run the "cpu" entries on them. A runner that reads or writes device
 * memory itself crashes the test; one that forgets a copy, or copies the wrong
 * buffer, gives other numbers than the "cpu" backend, which must be matched
 * bitwise (the same kernels in the same order). */
#define FAKE_REGIONS 64
static struct {
    void *p;
    size_t n;
} fake_mem[FAKE_REGIONS];
static const dm_model_backend *fake_cpu;

static void fake_protect(int prot)
{
    for (int i = 0; i < FAKE_REGIONS; i++)
        if (fake_mem[i].p)
            ck_assert_int_eq(mprotect(fake_mem[i].p, fake_mem[i].n, prot), 0);
}
#define FAKE_CALL(call) (fake_protect(PROT_READ | PROT_WRITE), (call), fake_protect(PROT_NONE))

static void *fake_alloc(size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (bytes + page - 1) / page * page;
    for (int i = 0; i < FAKE_REGIONS; i++)
        if (!fake_mem[i].p) {
            void *p = mmap(NULL, n ? n : page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            ck_assert(p != MAP_FAILED);
            fake_mem[i].p = p, fake_mem[i].n = n ? n : page;
            return p;
        }
    return NULL;
}
static void fake_release(void *p)
{
    for (int i = 0; i < FAKE_REGIONS; i++)
        if (p && fake_mem[i].p == p) {
            munmap(p, fake_mem[i].n);
            fake_mem[i].p = NULL;
        }
}
static int fake_upload(void *dst, const void *src, size_t n) { return FAKE_CALL(memcpy(dst, src, n)), 0; }
static int fake_download(void *dst, const void *src, size_t n) { return FAKE_CALL(memcpy(dst, src, n)), 0; }
static void embed_host(float *x, const int32_t *tok, const float *wte, const float *wpe, int B, int T, int C)
{
    for (size_t bt = 0; bt < (size_t)B * T; bt++)
        for (int i = 0; i < C; i++)
            x[bt * C + i] = wte[(size_t)tok[bt] * C + i] + wpe[(bt % T) * C + i];
}
static int fake_embed(float *x, const int32_t *tok, const float *wte, const float *wpe, int B, int T, int C)
{
    return FAKE_CALL(embed_host(x, tok, wte, wpe, B, T, C)), 0;
}
static int fake_status(void) { return 0; }
static void fake_layernorm(const dm_compute *cx, float *o, const float *x, const float *w, const float *b, int BT, int C,
                           float eps)
{
    FAKE_CALL(fake_cpu->layernorm(cx, o, x, w, b, BT, C, eps));
}
static void fake_linear(const dm_compute *cx, float *o, const float *x, const dm_model_weight *W, const float *b,
                        int BT, int C, int OC, int flags)
{
    FAKE_CALL(fake_cpu->linear(cx, o, x, W, b, BT, C, OC, flags));
}
static void fake_attention(const dm_compute *cx, float *o, const float *qkv, int B, int T, int C, int NH)
{
    FAKE_CALL(fake_cpu->attention(cx, o, qkv, B, T, C, NH));
}
static void fake_gelu(const dm_compute *cx, float *o, const float *x, int64_t N) { FAKE_CALL(fake_cpu->gelu(cx, o, x, N)); }
static void fake_residual(const dm_compute *cx, float *x, const float *b, size_t n)
{
    FAKE_CALL(fake_cpu->residual(cx, x, b, n));
}
static void fake_unembed(const dm_compute *cx, float *o, const float *x, const float *wte, int BT, int C, int V)
{
    FAKE_CALL(fake_cpu->unembed(cx, o, x, wte, BT, C, V));
}
static void *fake_host_alloc(size_t n) { return malloc(n); }
static void copy_rows_host(float *dst, const float *src, size_t rows, int C, int center)
{
    for (size_t r = 0; r < rows; r++) {
        double sum = 0.0;
        for (int i = 0; center && i < C; i++)
            sum += src[r * C + i];
        float mean = (float)(sum / C);
        for (int i = 0; i < C; i++)
            dst[r * C + i] = center ? src[r * C + i] - mean : src[r * C + i];
    }
}
static int fake_copy_rows(float *dst, const float *src, size_t rows, int C, int center)
{
    return FAKE_CALL(copy_rows_host(dst, src, rows, C, center)), 0;
}
static const dm_model_device_ops fake_ops = {fake_alloc,      fake_release, fake_upload,    fake_download,
                                            fake_host_alloc, free,         fake_copy_rows, fake_embed,
                                            fake_status};

/* Doubles x: an edit whose effect shows downstream. */
static int double_it(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    for (size_t i = 0; i < (size_t)B * T * width; i++)
        x[i] *= 2.0f;
    (*(int *)user)++;
    return 0;
}

START_TEST(device_path_matches_cpu)
{
    fake_cpu = dm_model_backend_get(DM_MODEL_CPU);
    dm_model_backend fake = *fake_cpu;
    fake.name = "fake-device";
    fake.dev = &fake_ops;
    fake.layernorm = fake_layernorm, fake.linear = fake_linear, fake.attention = fake_attention;
    fake.gelu = fake_gelu, fake.residual = fake_residual, fake.unembed = fake_unembed;
    ck_assert_ptr_null(fake.linear_residual);
    dm_safetensors *exp = dm_st_open(GOLDEN "c48h4/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    dm_compute cx = context_for(DM_MODEL_CPU);
    dm_model *mc = dm_model_load_backend(GOLDEN "c48h4", DM_MODEL_DEPTH_ALL, &cx, fake_cpu);
    dm_model *md = dm_model_load_backend(GOLDEN "c48h4", DM_MODEL_DEPTH_ALL, &cx, &fake);
    ck_assert(mc && md);
    ck_assert_str_eq(dm_model_backend_of(md)->name, "fake-device");
    const dm_model_config *c = dm_model_cfg(mc);
    dm_model_hook hooks[64];
    float *o1[64], *o2[64];
    size_t len[64];
    int n = all_hooks(c->n_layer, hooks);
    for (int i = 0; i < n; i++) {
        len[i] = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
        o1[i] = dm_xmalloc(sizeof(float) * len[i]);
        o2[i] = dm_xmalloc(sizeof(float) * len[i]);
    }
    /* every hook copied out, centred and raw; then with an edit at each kind
     * of editable hook (a residual one, a branch, an embedding, ln_final), and
     * a batch of fewer windows (buffers kept) */
    const char *edits[] = {NULL, "blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out", "hook_embed",
                           "ln_final.hook_normalized", "blocks.2.hook_resid_post"};
    for (size_t e = 0; e < sizeof edits / sizeof *edits; e++)
        for (int center = 1; center >= 0; center--) {
            int Bn = e == 5 ? B - 1 : B, k1 = 0, k2 = 0;
            dm_model_hook_point p1[65], p2[65];
            for (int i = 0; i < n; i++) {
                p1[i] = (dm_model_hook_point){.hook = hooks[i], .out = o1[i]};
                p2[i] = (dm_model_hook_point){.hook = hooks[i], .out = o2[i]};
            }
            int np = n;
            if (edits[e]) {
                p1[n] = (dm_model_hook_point){hook_named(edits[e]), NULL, double_it, &k1, DM_MODEL_EDIT};
                p2[n] = (dm_model_hook_point){hook_named(edits[e]), NULL, double_it, &k2, DM_MODEL_EDIT};
                np++;
            }
            ck_assert_msg(dm_model_run(mc, tok, Bn, T, p1, np, center) == 0, "%s", dm_error());
            ck_assert_msg(dm_model_run(md, tok, Bn, T, p2, np, center) == 0, "%s", dm_error());
            ck_assert_int_eq(k1, k2);
            ck_assert_int_eq(k1, edits[e] != NULL);
            for (int i = 0; i < n; i++) {
                ck_assert_msg(!memcmp(o1[i], o2[i], sizeof(float) * len[i] / B * Bn),
                              "edit %s, centre %d: hook %d differs", edits[e] ? edits[e] : "none", center, i);
                /* the copy kept on the device: at every block hook without a callback
                 * (the embeddings are formed on the host; logits and loss too) */
                const float *dc = dm_model_device_copy(md, i);
                ck_assert_ptr_null(dm_model_device_copy(mc, i));
                int device_side = hooks[i].layer >= 0 || hooks[i].kind == DM_HOOK_LN_FINAL;
                char hn[64];
                int has_fn = edits[e] && !strcmp(edits[e], dm_model_hook_name(hooks[i], hn, sizeof hn));
                ck_assert_int_eq(dc != NULL, device_side && !has_fn);
                if (dc) {
                    fake_protect(PROT_READ);
                    int same = !memcmp(dc, o2[i], sizeof(float) * len[i] / B * Bn);
                    fake_protect(PROT_NONE);
                    ck_assert_msg(same, "hook %d: the device copy differs from the host's", i);
                }
            }
        }
    /* a run from blocks.1.hook_resid_pre: its x sent to the device */
    {
        dm_model_hook_point p1[64], p2[64];
        int np = 0, at = -1;
        for (int i = 0; i < n; i++) {
            if (hooks[i].kind == DM_HOOK_RESID_PRE && hooks[i].layer == 1)
                at = i;
            if (hooks[i].layer >= 1 || hooks[i].kind >= DM_HOOK_LN_FINAL) {
                p1[np] = (dm_model_hook_point){.hook = hooks[i], .out = o1[i]};
                p2[np++] = (dm_model_hook_point){.hook = hooks[i], .out = o2[i]};
            }
        }
        ck_assert_int_ge(at, 0);
        float *x1 = dm_xmalloc(sizeof(float) * len[at]);
        memcpy(x1, o1[at], sizeof(float) * len[at]);
        for (size_t j = 0; j < len[at]; j++)
            x1[j] *= 1.5f; /* not the model's own */
        ck_assert_int_eq(dm_model_run_from(mc, 1, x1, tok, B, T, p1, np, 0), 0);
        ck_assert_int_eq(dm_model_run_from(md, 1, x1, tok, B, T, p2, np, 0), 0);
        for (int i = 0; i < np; i++)
            ck_assert_msg(!memcmp(p1[i].out, p2[i].out, sizeof(float) * B * T * dm_model_hook_width(c, p1[i].hook)),
                          "run from: point %d differs", i);
        ck_assert_mem_eq(o2[at], x1, sizeof(float) * len[at]);
        free(x1);
    }
    /* the loss alone: logits made LOGIT_ROWS at a time into host memory */
    dm_model_hook ll = hook_named("loss");
    ck_assert_int_eq(dm_model_forward(mc, tok, B, T, &ll, 1, &o1[0], 1), 0);
    ck_assert_int_eq(dm_model_forward(md, tok, B, T, &ll, 1, &o2[0], 1), 0);
    ck_assert_mem_eq(o1[0], o2[0], sizeof(float) * B * T);
    for (int i = 0; i < n; i++)
        free(o1[i]), free(o2[i]);
    dm_model_free(mc);
    dm_model_free(md);
    for (int i = 0; i < FAKE_REGIONS; i++)
        ck_assert_ptr_null(fake_mem[i].p); /* all released */
    free(tok);
    dm_st_close(exp);
}
END_TEST

START_TEST(edit_with_zero_changes_nothing)
{
    /* c48h4 has 3 blocks; every hook is copied out, with and without an edit */
    const char *edited[] = {"hook_embed",           "hook_pos_embed",         "blocks.0.hook_resid_pre",
                            "blocks.0.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out",
                            "blocks.2.hook_resid_post", "ln_final.hook_normalized"};
    dm_safetensors *exp = dm_st_open(GOLDEN "c48h4/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    for (int id = 0; id < DM_MODEL_NBACKENDS; id++) {
        if (!dm_model_backend_get((dm_model_backend_id)id))
            continue;
        dm_compute cx = context_for((dm_model_backend_id)id);
        dm_model *m = dm_model_load(GOLDEN "c48h4", DM_MODEL_DEPTH_ALL, &cx);
        ck_assert_ptr_nonnull(m);
        const dm_model_config *c = dm_model_cfg(m);
        dm_model_hook hooks[64];
        float *base[64], *outs[64];
        size_t len[64];
        int n = all_hooks(c->n_layer, hooks);
        for (int i = 0; i < n; i++) {
            len[i] = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
            base[i] = dm_xmalloc(sizeof(float) * len[i]);
            outs[i] = dm_xmalloc(sizeof(float) * len[i]);
        }
        dm_model_hook_point pts[66];
        for (int center = 1; center >= 0; center--) {
            ck_assert_int_eq(dm_model_forward(m, tok, B, T, hooks, n, base, center), 0);
            for (size_t e = 0; e < sizeof edited / sizeof *edited; e++) {
                int edits = 0, observed = 0;
                pts[0] = (dm_model_hook_point){hook_named(edited[e]), NULL, add_zero, &edits,
                                              DM_MODEL_EDIT};
                for (int i = 0; i < n; i++) {
                    pts[1 + i] = (dm_model_hook_point){.hook = hooks[i], .out = outs[i]};
                    memset(outs[i], 0xff, sizeof(float) * len[i]);
                }
                /* and an observe callback at every hook */
                pts[1 + n] = (dm_model_hook_point){hook_named(edited[(e + 3) % 8]), NULL,
                                                  observe_count, &observed, DM_MODEL_OBSERVE};
                ck_assert_msg(dm_model_run(m, tok, B, T, pts, n + 2, center) == 0, "%s",
                              dm_error());
                ck_assert_int_eq(edits, 1);
                ck_assert_int_eq(observed, 1);
                for (int i = 0; i < n; i++)
                    ck_assert_msg(!memcmp(outs[i], base[i], sizeof(float) * len[i]),
                                  "%s backend, zero edit at %s: hook %d differs",
                                  dm_model_backend_of(m)->name, edited[e], i);
            }
        }
        /* logits and loss only, so that the branches are added straight into the
         * residual stream (the fused path): an edit at a residual hook keeps it */
        dm_model_hook ll[2] = {hook_named("logits"), hook_named("loss")};
        float *ll_base[2] = {base[0], base[1]};
        size_t nl = (size_t)B * T * c->vocab_size;
        float *lg = dm_xmalloc(sizeof(float) * nl), *ls = dm_xmalloc(sizeof(float) * B * T);
        ll_base[0] = dm_xmalloc(sizeof(float) * nl);
        ll_base[1] = dm_xmalloc(sizeof(float) * B * T);
        ck_assert_int_eq(dm_model_forward(m, tok, B, T, ll, 2, ll_base, 1), 0);
        int edits = 0;
        dm_model_hook_point lp[3] = {
            {hook_named("blocks.1.hook_resid_pre"), NULL, add_zero, &edits, DM_MODEL_EDIT},
            {.hook = ll[0], .out = lg},
            {.hook = ll[1], .out = ls},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, lp, 3, 1), 0);
        ck_assert_int_eq(edits, 1);
        ck_assert_mem_eq(lg, ll_base[0], sizeof(float) * nl);
        ck_assert_mem_eq(ls, ll_base[1], sizeof(float) * B * T);
        free(lg), free(ls), free(ll_base[0]), free(ll_base[1]);
        for (int i = 0; i < n; i++)
            free(base[i]), free(outs[i]);
        dm_model_free(m);
    }
    free(tok);
    dm_st_close(exp);
}
END_TEST

/* Replaces blocks.L.hook_resid_pre (what "splice", or removes a direction from it
 * ("ablate"), on model name with backend id, and compares every later hook, the
 * logits and the loss with the float64 reference run the same way
 * (edit.safetensors). With from (a splice), the run starts there instead:
 * dm_model_run_from with the given tensor. Returns the largest relative error. */
static double check_edit(const char *name, const char *what, dm_model_backend_id id, int from)
{
    char path[256], key[128], hname[64];
    snprintf(path, sizeof path, GOLDEN "%s/expected.safetensors", name);
    dm_safetensors *exp = dm_st_open(path);
    snprintf(path, sizeof path, GOLDEN "%s/edit.safetensors", name);
    dm_safetensors *ed = dm_st_open(path);
    ck_assert_msg(exp && ed, "%s", dm_error());
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    const dm_st_tensor *lt = dm_st_find(ed, "layer");
    ck_assert_ptr_nonnull(lt);
    int L = ((const int32_t *)lt->data)[0];
    snprintf(path, sizeof path, GOLDEN "%s", name);
    dm_compute cx = context_for(id);
    dm_model *m = dm_model_load(path, DM_MODEL_DEPTH_ALL, &cx);
    ck_assert_ptr_nonnull(m);
    const dm_model_config *c = dm_model_cfg(m);
    int C = c->n_embd, splice = !strcmp(what, "splice");
    size_t BTC = (size_t)B * T * C;

    /* the hooks from blocks.L.hook_resid_pre on */
    dm_model_hook all[64], hooks[64];
    int na = all_hooks(c->n_layer, all), n = 0;
    for (int i = 0; i < na; i++)
        if (all[i].layer >= L || all[i].kind >= DM_HOOK_LN_FINAL)
            hooks[n++] = all[i];
    snprintf(key, sizeof key, splice ? "splice/given" : "ablate/direction");
    float *arg = golden_hook(ed, key, 1, splice ? BTC : (size_t)C);
    dm_model_hook at = {DM_HOOK_RESID_PRE, L};
    float *before = dm_xmalloc(sizeof(float) * BTC), *outs[64];
    /* a copy before the edit (the model's own), the edit, then a copy of every hook */
    dm_model_hook_point pts[66];
    pts[0] = (dm_model_hook_point){.hook = at, .out = before};
    pts[1] = (dm_model_hook_point){at, NULL, splice ? replace : remove_direction, arg,
                                  DM_MODEL_EDIT};
    for (int i = 0; i < n; i++) {
        outs[i] = dm_xmalloc(sizeof(float) * B * T * dm_model_hook_width(c, hooks[i]));
        pts[2 + i] = (dm_model_hook_point){.hook = hooks[i], .out = outs[i]};
    }
    dm_model_hook_name(at, hname, sizeof hname);
    float *own = golden_hook(exp, hname, 0, BTC);
    if (from) {
        ck_assert(splice);
        ck_assert_msg(dm_model_run_from(m, L, arg, tok, B, T, pts + 2, n, 0) == 0, "%s", dm_error());
    } else {
        ck_assert_msg(dm_model_run(m, tok, B, T, pts, n + 2, 0) == 0, "%s", dm_error());
        ck_assert_double_le(rel_err(before, own, BTC), TOL);
    }
    double worst = 0;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
        snprintf(key, sizeof key, "%s/%s", what, dm_model_hook_name(hooks[i], hname, sizeof hname));
        float *want = golden_hook(ed, key, 1, len);
        double e = rel_err(outs[i], want, len);
        ck_assert_msg(e <= TOL, "%s %s %s (%s backend): relative error %g", name, what, hname,
                      dm_model_backend_of(m)->name, e);
        worst = e > worst ? e : worst;
        free(want);
    }
    /* the edit took: the copy after it is the given tensor, or has no u part */
    if (splice) {
        ck_assert_mem_eq(outs[0], arg, sizeof(float) * BTC);
    } else {
        for (int r = 0; r < B * T; r++) {
            double d = 0, nn = 0;
            for (int i = 0; i < C; i++)
                d += (double)outs[0][(size_t)r * C + i] * arg[i],
                    nn += (double)before[(size_t)r * C + i] * before[(size_t)r * C + i];
            ck_assert_double_le(fabs(d), 1e-5 * sqrt(nn));
        }
    }
    /* and it matters: the loss moved far beyond the tolerance */
    float *loss0 = golden_hook(exp, "loss", 0, (size_t)B * T);
    ck_assert_double_ge(rel_err(outs[n - 1], loss0, (size_t)B * T), 1e-2);
    free(loss0), free(own), free(arg), free(before), free(tok);
    for (int i = 0; i < n; i++)
        free(outs[i]);
    dm_model_free(m);
    dm_st_close(exp);
    dm_st_close(ed);
    return worst;
}

START_TEST(edit_resid_pre_matches_reference)
{
    const char *models[] = {"c64h4", "c48h4"}, *whats[] = {"splice", "ablate"};
    for (size_t i = 0; i < 2; i++)
        for (size_t w = 0; w < 2; w++)
            for (int id = 0; id < DM_MODEL_NBACKENDS; id++)
                if (dm_model_backend_get((dm_model_backend_id)id))
                    printf("gpt2 edit %s %s: max relative error %.2g (%s backend)\n", models[i],
                           whats[w], check_edit(models[i], whats[w], (dm_model_backend_id)id, 0),
                           dm_model_backend_get((dm_model_backend_id)id)->name);
}
END_TEST

/* dm_model_run_from: the splice's blocks without the ones before it, against the
 * same float64 reference; and the points it refuses. */
START_TEST(run_from_matches_reference)
{
    const char *models[] = {"c64h4", "c48h4"};
    for (size_t i = 0; i < 2; i++)
        for (int id = 0; id < DM_MODEL_NBACKENDS; id++)
            if (dm_model_backend_get((dm_model_backend_id)id))
                printf("gpt2 run from %s: max relative error %.2g (%s backend)\n", models[i],
                       check_edit(models[i], "splice", (dm_model_backend_id)id, 1),
                       dm_model_backend_get((dm_model_backend_id)id)->name);
    dm_model *m = dm_model_load(GOLDEN "c64h4", DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_ptr_nonnull(m);
    const dm_model_config *c = dm_model_cfg(m);
    int B = 2, T = 4, C = c->n_embd;
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float *x = calloc((size_t)B * T * C, sizeof(float)), *out = calloc((size_t)B * T * C, sizeof(float));
    dm_model_hook_point pt = {.hook = hook_named("blocks.0.hook_resid_post"), .out = out};
    ck_assert_int_eq(dm_model_run_from(m, 1, x, tok, B, T, &pt, 1, 0), -1);
    ck_assert(has(dm_error(), "hook blocks.0.hook_resid_post is before blocks.1.hook_resid_pre, where the run starts"));
    pt.hook = hook_named("hook_embed");
    ck_assert_int_eq(dm_model_run_from(m, 1, x, tok, B, T, &pt, 1, 0), -1);
    ck_assert(has(dm_error(), "hook hook_embed is before"));
    pt.hook = hook_named("blocks.1.hook_resid_post");
    ck_assert_int_eq(dm_model_run_from(m, c->n_layer, x, tok, B, T, &pt, 1, 0), -1);
    ck_assert(has(dm_error(), "a run from blocks.2.hook_resid_pre: the model has 2 blocks loaded"));
    ck_assert_int_eq(dm_model_run_from(m, 1, x, tok, B, T, &pt, 1, 0), 0);
    free(x), free(out);
    dm_model_free(m);
}
END_TEST

START_TEST(edit_branches_and_embeddings)
{
    dm_safetensors *exp = dm_st_open(GOLDEN "c64h4/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    size_t n = (size_t)B * T * 64, nl = (size_t)B * T * 101;
    float *a = dm_xmalloc(sizeof(float) * nl), *b = dm_xmalloc(sizeof(float) * nl),
          *z = dm_xmalloc(sizeof(float) * n);
    for (int id = 0; id < DM_MODEL_NBACKENDS; id++) {
        if (!dm_model_backend_get((dm_model_backend_id)id))
            continue;
        dm_compute cx = context_for((dm_model_backend_id)id);
        dm_model *m = dm_model_load(GOLDEN "c64h4", DM_MODEL_DEPTH_ALL, &cx);
        ck_assert_ptr_nonnull(m);
        /* attn_out zeroed: resid_mid is resid_pre; the edit point's own copy is zero */
        dm_model_hook_point p1[] = {
            {.hook = hook_named("blocks.0.hook_resid_pre"), .out = a},
            {hook_named("blocks.0.hook_attn_out"), z, zero, NULL, DM_MODEL_EDIT},
            {.hook = hook_named("blocks.0.hook_resid_mid"), .out = b},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p1, 3, 1), 0);
        ck_assert_mem_eq(a, b, sizeof(float) * n);
        for (size_t i = 0; i < n; i++)
            ck_assert_float_eq(z[i], 0.0f);
        /* mlp_out zeroed: resid_post is resid_mid */
        dm_model_hook_point p2[] = {
            {.hook = hook_named("blocks.1.hook_resid_mid"), .out = a},
            {hook_named("blocks.1.hook_mlp_out"), NULL, zero, NULL, DM_MODEL_EDIT},
            {.hook = hook_named("blocks.1.hook_resid_post"), .out = b},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p2, 3, 0), 0);
        ck_assert_mem_eq(a, b, sizeof(float) * n);
        /* hook_embed zeroed: blocks.0.hook_resid_pre is hook_pos_embed */
        dm_model_hook_point p3[] = {
            {hook_named("hook_embed"), NULL, zero, NULL, DM_MODEL_EDIT},
            {.hook = hook_named("hook_pos_embed"), .out = a},
            {.hook = hook_named("blocks.0.hook_resid_pre"), .out = b},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p3, 3, 0), 0);
        ck_assert_mem_eq(a, b, sizeof(float) * n);
        float *pos = golden_hook(exp, "hook_pos_embed", 0, n);
        ck_assert_double_le(rel_err(a, pos, n), TOL);
        free(pos);
        /* ln_final.hook_normalized zeroed: every token's logits are ln_f's bias
         * @ wte^T, the same row */
        dm_model_hook_point p4[] = {
            {hook_named("ln_final.hook_normalized"), NULL, zero, NULL, DM_MODEL_EDIT},
            {.hook = hook_named("logits"), .out = a},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p4, 2, 1), 0);
        for (int r = 1; r < B * T; r++)
            ck_assert_double_le(rel_err(a + (size_t)r * 101, a, 101), 1e-6);

        /* observe callbacks at logits and loss with no copy asked for: the model's
         * own buffers, with logits and loss (one pass) or the loss alone (its
         * logits in blocks of rows) */
        float *want_logits = golden_hook(exp, "logits", 1, nl),
              *want_loss = golden_hook(exp, "loss", 1, (size_t)B * T);
        dm_model_hook_point p5[] = {
            {hook_named("loss"), NULL, grab, b, DM_MODEL_OBSERVE},
            {hook_named("logits"), NULL, grab, a, DM_MODEL_OBSERVE},
        };
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p5, 2, 1), 0);
        ck_assert_double_le(rel_err(a, want_logits, nl), TOL);
        ck_assert_double_le(rel_err(b, want_loss, (size_t)B * T), TOL);
        memset(b, 0, sizeof(float) * B * T);
        ck_assert_int_eq(dm_model_run(m, tok, B, T, p5, 1, 1), 0);
        ck_assert_double_le(rel_err(b, want_loss, (size_t)B * T), TOL);
        free(want_logits), free(want_loss);
        dm_model_free(m);
    }
    free(a), free(b), free(z), free(tok);
    dm_st_close(exp);
}
END_TEST

START_TEST(edit_errors)
{
    dm_model *m = dm_model_load(GOLDEN "c64h4", DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_ptr_nonnull(m);
    int32_t tok[2 * 8] = {0};
    float *out = dm_xmalloc(sizeof(float) * 2 * 8 * 101);
    int calls = 0;
    dm_model_hook_point p = {hook_named("logits"), NULL, add_zero, &calls, DM_MODEL_EDIT};
    ck_assert_int_eq(dm_model_run(m, tok, 2, 8, &p, 1, 1), -1);
    ck_assert(has(dm_error(), "tests/golden/gpt2/c64h4: hook logits cannot be edited"));
    ck_assert_int_eq(dm_error_code(), DM_E_INPUT);
    p.hook = hook_named("loss");
    ck_assert_int_eq(dm_model_run(m, tok, 2, 8, &p, 1, 1), -1);
    ck_assert(has(dm_error(), "hook loss cannot be edited"));
    p = (dm_model_hook_point){hook_named("blocks.0.hook_resid_pre"), out, NULL, NULL, DM_MODEL_EDIT};
    ck_assert_int_eq(dm_model_run(m, tok, 2, 8, &p, 1, 1), -1);
    ck_assert(has(dm_error(), "an edit without a callback"));
    ck_assert_int_eq(dm_error_code(), DM_E_INTERNAL);
    ck_assert_int_eq(calls, 0);
    /* a callback's own error comes back with the model and the hook named */
    p = (dm_model_hook_point){hook_named("blocks.1.hook_resid_mid"), NULL, fail_with_message, NULL,
                             DM_MODEL_EDIT};
    ck_assert_int_eq(dm_model_run(m, tok, 2, 8, &p, 1, 1), -1);
    ck_assert(has(dm_error(), "tests/golden/gpt2/c64h4: hook blocks.1.hook_resid_mid: steering "
                              "vector of width 5, hook width 64"));
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    p.fn = fail_silently;
    p.mode = DM_MODEL_OBSERVE;
    ck_assert_int_eq(dm_model_run(m, tok, 2, 8, &p, 1, 1), -1);
    ck_assert(has(dm_error(), "the callback at hook blocks.1.hook_resid_mid failed without a "
                              "message"));
    ck_assert_int_eq(dm_error_code(), DM_E_INTERNAL);
    /* the model runs on after a failed pass */
    dm_model_hook h = hook_named("blocks.1.hook_resid_mid");
    ck_assert_int_eq(dm_model_forward(m, tok, 2, 8, &h, 1, &out, 1), 0);
    dm_model_free(m);
    free(out);
}
END_TEST

/* ---- the activations command ---------------------------------------------------- */

static int run_cmd(const char *model, const char *hook, const char *tokens, const char *out,
                   const char *extra1, const char *extra2)
{
    char *argv[12] = {"activations", "--model", (char *)model, "--hook", (char *)hook,
                      "--tokens", (char *)tokens, "--out", (char *)out};
    int argc = 9;
    if (extra1)
        argv[argc++] = (char *)extra1;
    if (extra2)
        argv[argc++] = (char *)extra2;
    return dm_cmd_activations(argc, argv);
}

START_TEST(command_matches_golden)
{
    /* tokens.npy is int64 in c64h4, int32 in c48h4, uint16 in c64h1 */
    const char *models[] = {"c64h4", "c48h4", "c64h1"};
    const char *hooks[] = {"blocks.1.hook_resid_post", "blocks.2.hook_attn_out",
                           "blocks.0.hook_resid_mid"};
    char dir[256], tokens[256], expp[256];
    char *out = dm_xasprintf("%s/acts.npy", tmpdir);
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, GOLDEN "%s", models[i]);
        snprintf(tokens, sizeof tokens, "%s/tokens.npy", dir);
        snprintf(expp, sizeof expp, "%s/expected.safetensors", dir);
        dm_safetensors *exp = dm_st_open(expp);
        ck_assert_ptr_nonnull(exp);
        for (int center = 1; center >= 0; center--) {
            /* --batch 1: one window per forward pass, appended in order */
            ck_assert_int_eq(run_cmd(dir, hooks[i], tokens, out, center ? "--batch" : "--no-center",
                                     center ? "1" : NULL),
                             0);
            dm_tensor t = {0};
            ck_assert_msg(dm_npy_load(out, &t) == 0, "%s", dm_error());
            ck_assert_int_eq(t.dtype, DM_F32);
            ck_assert_int_eq(t.ndim, 2);
            ck_assert_int_eq(t.shape[0], 32);
            size_t n = (size_t)dm_tensor_numel(&t);
            float *want = golden_hook(exp, hooks[i], center, n);
            ck_assert_double_le(rel_err(t.data, want, n), TOL);
            free(want);
            dm_tensor_free(&t);
        }
        dm_st_close(exp);
    }
    /* logits through the command: width vocab_size */
    ck_assert_int_eq(run_cmd(GOLDEN "c64h1", "logits", GOLDEN "c64h1/tokens.npy", out, NULL, NULL),
                     0);
    dm_tensor t = {0};
    ck_assert_int_eq(dm_npy_load(out, &t), 0);
    ck_assert_int_eq(t.shape[1], 73);
    dm_tensor_free(&t);
    free(out);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------- */

/* A copy of golden model c64h4 in tmpdir/name with one thing changed. */
typedef struct {
    const char *drop;    /* leave this tensor out */
    const char *reshape; /* give this tensor shape {d0, d1} */
    int64_t d0, d1;
    const char *retype;  /* label this F32 tensor with dtype */
    const char *dtype;
    const char *extra;   /* add this tensor, F32 [4] */
    const char *config_del;   /* remove this config key */
    const char *config_key;   /* set this config key to config_val (JSON) */
    const char *config_val;
    int64_t truncate;    /* cut this many bytes off model.safetensors */
} variant;

static char *make_variant(const char *name, variant v)
{
    char *dir = dm_xasprintf("%s/%s", tmpdir, name), *p;
    p = dm_xasprintf("mkdir -p %s", dir);
    ck_assert_int_eq(system(p), 0);
    free(p);
    dm_safetensors *st = dm_st_open(GOLDEN "c64h4/model.safetensors");
    ck_assert_ptr_nonnull(st);
    json_t *hdr = json_object();
    size_t cap = 1 << 20, len = 0;
    uint8_t *data = dm_xcalloc(cap, 1);
    for (int i = 0; i <= dm_st_count(st); i++) {
        const dm_st_tensor *t = dm_st_at(st, i);
        const char *tname = t ? t->name : v.extra;
        if (!tname || (v.drop && !strcmp(tname, v.drop)))
            continue;
        int64_t shape[DM_ST_MAX_DIMS] = {4};
        int ndim = 1;
        const char *dtype = "F32";
        if (t) {
            ndim = t->ndim;
            memcpy(shape, t->shape, sizeof(int64_t) * ndim);
            dtype = t->dtype;
        }
        if (v.reshape && !strcmp(tname, v.reshape))
            shape[0] = v.d0, shape[1] = v.d1, ndim = 2;
        if (v.retype && !strcmp(tname, v.retype))
            dtype = v.dtype;
        size_t nbytes = 4;
        json_t *js = json_array();
        for (int d = 0; d < ndim; d++) {
            nbytes *= (size_t)shape[d];
            json_array_append_new(js, json_integer(shape[d]));
        }
        ck_assert_uint_le(len + nbytes, cap);
        if (t && nbytes == (size_t)t->nbytes)
            memcpy(data + len, t->data, nbytes);
        json_object_set_new(hdr, tname,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype, "shape", js,
                                      "data_offsets", (json_int_t)len, (json_int_t)(len + nbytes)));
        len += nbytes;
    }
    char *htext = json_dumps(hdr, JSON_COMPACT);
    p = dm_xasprintf("%s/model.safetensors", dir);
    FILE *f = fopen(p, "wb");
    uint64_t hlen = strlen(htext);
    for (int i = 0; i < 8; i++)
        fputc((int)(hlen >> (8 * i)) & 0xff, f);
    fwrite(htext, 1, hlen, f);
    fwrite(data, 1, len - (size_t)v.truncate, f);
    fclose(f);
    free(p), free(htext), free(data);
    json_decref(hdr);
    dm_st_close(st);

    json_error_t jerr;
    json_t *cfg = json_load_file(GOLDEN "c64h4/config.json", 0, &jerr);
    ck_assert_ptr_nonnull(cfg);
    if (v.config_del)
        json_object_del(cfg, v.config_del);
    if (v.config_key)
        json_object_set_new(cfg, v.config_key, json_loads(v.config_val, JSON_DECODE_ANY, &jerr));
    p = dm_xasprintf("%s/config.json", dir);
    ck_assert_int_eq(json_dump_file(cfg, p, JSON_INDENT(2)), 0);
    free(p);
    json_decref(cfg);
    return dir;
}

/* Loading variant v must fail with a message containing want (and the file). */
static void expect_load_error(const char *name, variant v, const char *want)
{
    char *dir = make_variant(name, v);
    dm_error_clear();
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_msg(m == NULL, "%s: loaded", name);
    ck_assert_msg(has(dm_error(), want) && has(dm_error(), dir), "%s", name);
    free(dir);
}

START_TEST(bad_models)
{
    /* the unchanged copy loads (the variant writer itself is sound) */
    char *dir = make_variant("same", (variant){0});
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_msg(m != NULL, "%s", dm_error());
    dm_model_free(m);
    free(dir);

    expect_load_error("missing", (variant){.drop = "h.1.mlp.c_fc.bias"},
                      "model.safetensors: missing tensor h.1.mlp.c_fc.bias");
    expect_load_error("missing_wte", (variant){.drop = "wte.weight"}, "missing tensor wte.weight");
    expect_load_error("shape", (variant){.reshape = "h.1.attn.c_attn.weight", .d0 = 64, .d1 = 190},
                      "model.safetensors: tensor h.1.attn.c_attn.weight has shape [64, 190], "
                      "config n_embd 64 needs [64, 192]");
    expect_load_error("shape_wte", (variant){.reshape = "wte.weight", .d0 = 100, .d1 = 64},
                      "tensor wte.weight has shape [100, 64], config vocab_size 101, n_embd 64 "
                      "needs [101, 64]");
    expect_load_error("dtype", (variant){.retype = "h.0.ln_1.weight", .dtype = "I32"},
                      "tensor h.0.ln_1.weight has dtype I32; GPT-2 weights must be F32, F16 or "
                      "BF16");
    expect_load_error("extra", (variant){.extra = "h.0.mlp.gate.weight"},
                      "unexpected tensor h.0.mlp.gate.weight");
    expect_load_error("extra_layer", (variant){.extra = "h.2.ln_1.weight"},
                      "unexpected tensor h.2.ln_1.weight: config n_layer 2 has blocks h.0 to h.1");
    expect_load_error("truncated", (variant){.truncate = 100}, "truncated");
    expect_load_error("cfg_missing", (variant){.config_del = "n_head"},
                      "config.json: missing key n_head");
    expect_load_error("cfg_eps", (variant){.config_del = "layer_norm_epsilon"},
                      "config.json: missing key layer_norm_epsilon");
    expect_load_error("cfg_act", (variant){.config_key = "activation_function", .config_val = "\"relu\""},
                      "activation_function relu is not supported");
    expect_load_error("cfg_heads", (variant){.config_key = "n_head", .config_val = "5"},
                      "n_embd 64 is not a multiple of n_head 5");
    expect_load_error("cfg_embd", (variant){.config_key = "n_embd", .config_val = "48"},
                      "tensor h.0.attn.c_attn.bias has shape [192], config n_embd 48 needs [144]");
    expect_load_error("cfg_inner", (variant){.config_key = "n_inner", .config_val = "128"},
                      "tensor h.0.mlp.c_fc.bias has shape [256], config n_inner 128 needs [128]");
    expect_load_error("cfg_more_layers", (variant){.config_key = "n_layer", .config_val = "3"},
                      "missing tensor h.2.");
    expect_load_error("cfg_fewer_layers", (variant){.config_key = "n_layer", .config_val = "1"},
                      "unexpected tensor h.1.");
    expect_load_error("cfg_type", (variant){.config_key = "vocab_size", .config_val = "\"101\""},
                      "vocab_size must be a positive integer");

    /* a header length beyond the file */
    dir = make_variant("hlen", (variant){0});
    char *p = dm_xasprintf("%s/model.safetensors", dir);
    FILE *f = fopen(p, "r+b");
    fputc(0x7f, f), fputc(0x7f, f), fputc(0x7f, f);
    fclose(f);
    ck_assert_ptr_null(dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL));
    ck_assert(has(dm_error(), "exceeds the file"));
    free(p), free(dir);
    ck_assert_ptr_null(dm_model_load("/nonexistent-model", 1, NULL));
    ck_assert(has(dm_error(), "/nonexistent-model/config.json: cannot read"));
    ck_assert_ptr_null(dm_model_load(GOLDEN "c64h4", 3, NULL));
    ck_assert(has(dm_error(), "3 blocks needed, config n_layer is 2"));
}
END_TEST

START_TEST(bad_tokens_and_hooks)
{
    dm_model *m = dm_model_load(GOLDEN "c64h4", DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_ptr_nonnull(m);
    int32_t tok[2 * 33] = {0};
    float *out = dm_xmalloc(sizeof(float) * 2 * 33 * 101);
    dm_model_hook h;
    dm_model_hook_parse("blocks.1.hook_resid_pre", &h);
    tok[16 + 7] = 101;
    ck_assert_int_eq(dm_model_forward(m, tok, 2, 16, &h, 1, &out, 1), -1);
    ck_assert(has(dm_error(), "token id 101 at window 1, position 7 is not below vocab_size 101"));
    tok[16 + 7] = -3;
    ck_assert_int_eq(dm_model_forward(m, tok, 2, 16, &h, 1, &out, 1), -1);
    ck_assert(has(dm_error(), "token id -3 at window 1, position 7"));
    tok[16 + 7] = 0;
    ck_assert_int_eq(dm_model_forward(m, tok, 2, 33, &h, 1, &out, 1), -1);
    ck_assert(has(dm_error(), "windows of 33 tokens are longer than n_positions 32"));
    ck_assert_int_eq(dm_model_forward(m, tok, 1, 32, &h, 1, &out, 1), 0); /* the full context */
    dm_model_hook_parse("blocks.2.hook_resid_pre", &h);
    ck_assert_int_eq(dm_model_forward(m, tok, 2, 16, &h, 1, &out, 1), -1);
    ck_assert(has(dm_error(), "the model has 2 layers"));
    dm_model_free(m);
    free(out);

    /* the command: errors name the file; nothing is left at --out */
    char *out_path = dm_xasprintf("%s/bad.npy", tmpdir), *tok_path = dm_xasprintf("%s/t.npy", tmpdir);
    int64_t shape[2] = {2, 16};
    dm_tensor t;
    dm_tensor_init(&t, DM_I64, 2, shape);
    ((int64_t *)t.data)[16 + 5] = 5000;
    ck_assert_int_eq(dm_npy_save(tok_path, &t), 0);
    ck_assert_int_eq(run_cmd(GOLDEN "c64h4", "blocks.1.hook_resid_pre", tok_path, out_path, NULL, NULL), 1);
    ck_assert(has(dm_error(), "t.npy: token id 5000 at [1, 5] is not below vocab_size 101"));
    ck_assert_int_eq(access(out_path, F_OK), -1);
    dm_tensor_free(&t);

    shape[1] = 40;
    dm_tensor_init(&t, DM_I32, 2, shape);
    ck_assert_int_eq(dm_npy_save(tok_path, &t), 0);
    ck_assert_int_eq(run_cmd(GOLDEN "c64h4", "hook_embed", tok_path, out_path, NULL, NULL), 1);
    ck_assert(has(dm_error(), "t.npy: windows of 40 tokens; model tests/golden/gpt2/c64h4 takes 1 "
                              "to 32 (n_positions)"));
    dm_tensor_free(&t);

    dm_tensor_init(&t, DM_F32, 2, shape);
    ck_assert_int_eq(dm_npy_save(tok_path, &t), 0);
    ck_assert_int_eq(run_cmd(GOLDEN "c64h4", "hook_embed", tok_path, out_path, NULL, NULL), 1);
    ck_assert(has(dm_error(), "token ids must be a 2-D int32, int64 or uint16 array"));
    dm_tensor_free(&t);

    ck_assert_int_eq(run_cmd(GOLDEN "c64h4", "blocks.0.resid_pre", GOLDEN "c64h4/tokens.npy",
                             out_path, NULL, NULL),
                     1);
    ck_assert(has(dm_error(), "unknown hook 'blocks.0.resid_pre'"));
    ck_assert_int_eq(run_cmd(GOLDEN "c64h4", "blocks.5.hook_resid_pre", GOLDEN "c64h4/tokens.npy",
                             out_path, NULL, NULL),
                     1);
    ck_assert(has(dm_error(), "5 blocks needed, config n_layer is 2"));
    ck_assert_int_eq(access(out_path, F_OK), -1);
    free(out_path), free(tok_path);
}
END_TEST

int main(void)
{
    /* the kernels as dmica runs them: its main() sets OMP_WAIT_POLICY=PASSIVE,
     * which puts attention and the elementwise passes in OpenMP threads */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("gpt2");
    TCase *tk = tcase_create("kernels");
    tcase_set_timeout(tk, 30);
    tcase_add_test(tk, backend_table);
    tcase_add_test(tk, linear_matches_reference);
    tcase_add_test(tk, unembed_matches_reference);
    tcase_add_test(tk, bf16_linear_matches_reference);
    tcase_add_test(tk, gemm_precisions_match_reference);
    tcase_add_test(tk, layernorm_fast_matches_reference);
    tcase_add_test(tk, attention_fast_matches_reference);
    tcase_add_test(tk, gelu_fast_matches_reference);
    tcase_add_test(tk, hook_names);
    suite_add_tcase(s, tk);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 30);
    tcase_add_test(tm, parity_every_hook);
    tcase_add_test(tm, bf16_weights);
    tcase_add_test(tm, centring_matters);
    tcase_add_test(tm, partial_depth_and_batches);
    tcase_add_test(tm, edit_with_zero_changes_nothing);
    tcase_add_test(tm, device_path_matches_cpu);
    tcase_add_test(tm, edit_resid_pre_matches_reference);
    tcase_add_test(tm, run_from_matches_reference);
    tcase_add_test(tm, edit_branches_and_embeddings);
    tcase_add_test(tm, edit_errors);
    tcase_add_test(tm, command_matches_golden);
    tcase_add_test(tm, bad_models);
    tcase_add_test(tm, bad_tokens_and_hooks);
    suite_add_tcase(s, tm);
    return dm_test_run(s, tmpdir);
}
