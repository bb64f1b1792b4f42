/*
 * test_gemma2.c: the Gemma 2 family of the model runner (operators/kernels/
 * gemma2.c on model.c), against
 *   - its reference kernels: the "cpu" and "cpu-avx512" entries Gemma 2 brought
 *     (RMSNorm, rotary embedding, grouped-query attention with soft-capping and
 *     a sliding window, GeGLU, soft-cap) on random data, and the reference
 *     kernels themselves on values worked by hand;
 *   - Hugging Face transformers' Gemma2ForCausalLM (4.44.2, float32, eager
 *     attention), through golden files (tests/golden/gemma2/, written by
 *     tools/gemma2_reference.py) for two small random models of the real
 *     structure (GQA and MQA, head_dim != hidden_size / heads, a sliding window
 *     shorter than the windows, both soft-caps bending), saved as sharded
 *     safetensors with model.safetensors.index.json in float32 and in bfloat16
 *     (the same values): every hook, the logits and the per-token loss, on
 *     every backend;
 *   - its hooks: run_from and edits agree with the whole pass, attn_out is what
 *     the attention half adds;
 *   - bad input: a missing shard, an index naming a tensor its shard lacks, a
 *     tensor of the wrong shape, config values the runner does not implement,
 *     centring asked of an RMSNorm model, hook_pos_embed.
 *
 * Tolerance against transformers: 1e-4 relative (max |ours - theirs| / max
 * |theirs| per hook). Both compute in float32 from the same float32 weights;
 * they differ only in the order of sums (BLAS blocking, the RMSNorm's double
 * sum here) and in libm's tanh/exp/cos against PyTorch's, each about 1e-7
 * relative per operation; the errors seen are about 1e-6 after four layers.
 * 1e-4 leaves room for that to grow through the layers and the soft-caps,
 * and catches any wrong formula (a missed (1 + w), scale, window or cap moves
 * a hook by 1e-2 or more: the golden models are made so, tools/gemma2_reference.py
 * checks the attention cap moves the last layer by over 1e-2).
 * Kernel against kernel: 1e-5 (same float32 inputs, different summation
 * orders, a 1-ulp exp).
 *
 * Runs from the repository root (make test-unit does) so tests/golden is found.
 */
#include "commands.h"
#include "bgemm.h"
#include "gemma2.h"
#include "model.h"

#include "dm.h"
#include "npy.h"
#include "safetensors.h"
#include "test.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GOLDEN "tests/golden/gemma2/"
#define TOL 1e-4
#define KTOL 1e-5

static char tmpdir[] = "/tmp/dmica-test-gemma2-XXXXXX";

/* ---- helpers ---------------------------------------------------------------- */

static float *random_floats(size_t n, float lo, float hi)
{
    float *x = dm_xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((test_rng_next() >> 40) / 16777216.0);
    return x;
}

static float *copy_floats(const float *x, size_t n)
{
    float *y = dm_xmalloc(sizeof(float) * n);
    memcpy(y, x, sizeof(float) * n);
    return y;
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

/* A compute context that selects backend id. */
static dm_compute context_for(dm_model_backend_id id)
{
    dm_compute cx = *dm_compute_default();
    cx.reference = id == DM_MODEL_REF;
    cx.avx512 = id == DM_MODEL_CPU_AVX512;
    cx.device = id == DM_MODEL_CUDA ? DM_DEVICE_CUDA : DM_DEVICE_CPU;
    return cx;
}

#define FOR_EACH_FAST_BACKEND(id, be)                                                          \
    for (dm_model_backend_id id = DM_MODEL_CPU; id < DM_MODEL_CUDA; id++)                     \
        for (const dm_model_backend *be = dm_model_backend_get(id); be; be = NULL)

/* Every hook of a Gemma 2 model with n_layer blocks (no hook_pos_embed). */
static int all_hooks(int n_layer, dm_model_hook *hooks)
{
    int n = 0;
    hooks[n++] = (dm_model_hook){DM_HOOK_EMBED, -1};
    for (int l = 0; l < n_layer; l++)
        for (int k = DM_HOOK_RESID_PRE; k <= DM_HOOK_RESID_POST; k++)
            hooks[n++] = (dm_model_hook){(dm_model_hook_kind)k, l};
    hooks[n++] = (dm_model_hook){DM_HOOK_LN_FINAL, -1};
    hooks[n++] = (dm_model_hook){DM_HOOK_LOGITS, -1};
    hooks[n++] = (dm_model_hook){DM_HOOK_LOSS, -1};
    return n;
}

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

static float *golden_hook(const dm_safetensors *exp, const char *hook, size_t n)
{
    const dm_st_tensor *t = dm_st_find(exp, hook);
    ck_assert_msg(t != NULL, "golden file lacks %s", hook);
    ck_assert_int_eq(t->numel, (int64_t)n);
    float *v = dm_xmalloc(sizeof(float) * n);
    ck_assert_int_eq(dm_st_read_f32(exp, t, v), 0);
    return v;
}

/* ---- kernels ------------------------------------------------------------------ */

START_TEST(reference_kernels_by_hand)
{
    /* RMSNorm of (3, 4): rms = sqrt(12.5); weight (1 + w) held as given */
    float x[2] = {3, 4}, w[2] = {1.5f, 0.5f}, o[2];
    gemma2_rmsnorm_forward_ref(o, x, w, 1, 2, 0.0f);
    ck_assert_float_eq_tol(o[0], 3 / sqrtf(12.5f) * 1.5f, 1e-6);
    ck_assert_float_eq_tol(o[1], 4 / sqrtf(12.5f) * 0.5f, 1e-6);
    /* rotary: position 0 leaves x; position 1 with hd 2 rotates by 1 radian */
    float cs[2 * 2], q[2 * 2] = {1, 2, 1, 2};
    gemma2_rope_table(cs, 2, 2, 10000.0f);
    gemma2_rope_forward_ref(q, cs, 1, 2, 1, 2);
    ck_assert_float_eq_tol(q[0], 1, 1e-7);
    ck_assert_float_eq_tol(q[1], 2, 1e-7);
    ck_assert_float_eq_tol(q[2], cosf(1) - 2 * sinf(1), 1e-6);
    ck_assert_float_eq_tol(q[3], 2 * cosf(1) + sinf(1), 1e-6);
    /* soft-cap: about x for small x, bounded by the cap */
    float s[3] = {0.01f, 100.0f, -100.0f};
    gemma2_softcap_forward_ref(s, 3, 5.0f);
    ck_assert_float_eq_tol(s[0], 0.01f, 1e-6);
    ck_assert_float_eq_tol(s[1], 5.0f, 1e-6);
    ck_assert_float_eq_tol(s[2], -5.0f, 1e-6);
    /* GeGLU: gelu(1) * 2 */
    float g = 1.0f, u = 2.0f;
    gemma2_geglu_forward_ref(&g, &u, 1);
    ck_assert_float_eq_tol(g, 2 * 0.841192f, 1e-5);
    /* attention, one head, window 1: each query sees only its own key, so out = v */
    float qa[3] = {1, 2, 3}, ka[3] = {3, 1, 2}, va[3] = {5, 6, 7}, oa[3];
    gemma2_attention_forward_ref(oa, qa, ka, va, 1, 3, 1, 1, 1, 1.0f, 0.0f, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq_tol(oa[i], va[i], 1e-6);
    /* global: query 1 mixes keys 0 and 1 by softmax(q k) */
    gemma2_attention_forward_ref(oa, qa, ka, va, 1, 3, 1, 1, 1, 1.0f, 0.0f, 0);
    float p0 = expf(2 * 3), p1 = expf(2 * 1);
    ck_assert_float_eq_tol(oa[1], (p0 * 5 + p1 * 6) / (p0 + p1), 1e-5);
}
END_TEST

START_TEST(kernels_match_reference)
{
    test_rng = 7;
    const int B = 2, C = 72, BT = B * 150;
    float *x = random_floats((size_t)BT * C, -3, 3), *w = random_floats(C, 0.5f, 1.5f);
    float *want = dm_xmalloc(sizeof(float) * BT * C), *got = dm_xmalloc(sizeof(float) * BT * C);
    gemma2_rmsnorm_forward_ref(want, x, w, BT, C, 1e-6f);
    FOR_EACH_FAST_BACKEND(id, be) {
        dm_compute cx = context_for(id);
        be->rmsnorm(&cx, got, x, w, BT, C, 1e-6f);
        ck_assert_msg(rel_err(got, want, (size_t)BT * C) <= KTOL, "%s rmsnorm", be->name);
        float *inplace = copy_floats(x, (size_t)BT * C);
        be->rmsnorm(&cx, inplace, inplace, NULL, BT, C, 1e-6f);
        gemma2_rmsnorm_forward_ref(want, x, NULL, BT, C, 1e-6f);
        ck_assert_msg(rel_err(inplace, want, (size_t)BT * C) <= KTOL, "%s rmsnorm, no weight", be->name);
        gemma2_rmsnorm_forward_ref(want, x, w, BT, C, 1e-6f);
        free(inplace);
    }
    free(want), free(got), free(x), free(w);

    /* rope on 3 heads of 24 */
    const int T = 150, NH = 3, hd = 24;
    float *cs = dm_xmalloc(sizeof(float) * T * hd);
    gemma2_rope_table(cs, T, hd, 10000.0f);
    float *q = random_floats((size_t)B * T * NH * hd, -2, 2), *qr = copy_floats(q, (size_t)B * T * NH * hd);
    gemma2_rope_forward_ref(qr, cs, B, T, NH, hd);
    FOR_EACH_FAST_BACKEND(id, be) {
        dm_compute cx = context_for(id);
        float *qg = copy_floats(q, (size_t)B * T * NH * hd);
        be->rope(&cx, qg, cs, B, T, NH, hd);
        ck_assert_msg(rel_err(qg, qr, (size_t)B * T * NH * hd) <= KTOL, "%s rope", be->name);
        free(qg);
    }
    /* rotation keeps each pair's length; position t differs from position 0 */
    double n0 = 0, n1 = 0;
    for (int i = 0; i < hd; i++) {
        size_t r = (size_t)(T - 1) * NH * hd + i;
        n0 += (double)q[r] * q[r], n1 += (double)qr[r] * qr[r];
    }
    ck_assert_double_eq_tol(n0, n1, 1e-4 * n0);
    ck_assert(rel_err(qr + (size_t)(T - 1) * NH * hd, q + (size_t)(T - 1) * NH * hd, hd) > 1e-2);
    free(q), free(qr), free(cs);

    /* attention: GQA (4 query heads on 2 key-value heads) and MQA, windows
     * shorter than a block of queries, longer, none; caps on and off; T spans
     * three blocks of ATT_ROWS queries */
    struct { int NH, NKV, window; float cap; } cases[] = {
        {4, 2, 40, 50.0f}, {4, 2, 0, 3.0f}, {3, 1, 7, 0.0f}, {4, 4, 100, 2.0f}, {2, 1, 500, 1.0f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int nh = cases[c].NH, nkv = cases[c].NKV, d = 16;
        size_t nq = (size_t)B * T * nh * d, nk = (size_t)B * T * nkv * d;
        float *qq = random_floats(nq, -1, 1), *kk = random_floats(nk, -1, 1), *vv = random_floats(nk, -1, 1);
        float *ow = dm_xmalloc(sizeof(float) * nq), *og = dm_xmalloc(sizeof(float) * nq);
        gemma2_attention_forward_ref(ow, qq, kk, vv, B, T, nh, nkv, d, 1.7f, cases[c].cap, cases[c].window);
        FOR_EACH_FAST_BACKEND(id, be) {
            dm_compute cx = context_for(id);
            be->attention_gqa(&cx, og, qq, kk, vv, B, T, nh, nkv, d, 1.7f, cases[c].cap, cases[c].window);
            double e = rel_err(og, ow, nq);
            ck_assert_msg(e <= KTOL, "%s attention case %zu: %g", be->name, c, e);
        }
        if (cases[c].window && cases[c].window < T) { /* the window matters */
            gemma2_attention_forward_ref(og, qq, kk, vv, B, T, nh, nkv, d, 1.7f, cases[c].cap, 0);
            ck_assert_msg(rel_err(og, ow, nq) > 1e-3, "case %zu: the window changes nothing", c);
        }
        free(qq), free(kk), free(vv), free(ow), free(og);
    }

    /* GeGLU and the soft-cap over more than one chunk of 16384 */
    const int64_t N = 40000;
    float *gate = random_floats(N, -6, 6), *up = random_floats(N, -2, 2);
    float *gw = copy_floats(gate, N);
    gemma2_geglu_forward_ref(gw, up, N);
    FOR_EACH_FAST_BACKEND(id, be) {
        dm_compute cx = context_for(id);
        float *gg = copy_floats(gate, N);
        be->geglu(&cx, gg, up, N);
        ck_assert_msg(rel_err(gg, gw, N) <= KTOL, "%s geglu", be->name);
        memcpy(gg, gate, sizeof(float) * N);
        float *gs = copy_floats(gate, N);
        gemma2_softcap_forward_ref(gs, N, 3.0f);
        be->softcap(&cx, gg, N, 3.0f);
        ck_assert_msg(rel_err(gg, gs, N) <= KTOL, "%s softcap", be->name);
        free(gg), free(gs);
    }
    free(gate), free(up), free(gw);
}
END_TEST

/* ---- parity with transformers ----------------------------------------------- */

/* Every hook of folder dir on backend id against NAME/expected.safetensors;
 * the largest relative error. */
static double check_model(const char *dir, const char *name, dm_model_backend_id id)
{
    char path[256], hname[64];
    snprintf(path, sizeof path, GOLDEN "%s/expected.safetensors", name);
    dm_safetensors *exp = dm_st_open(path);
    ck_assert_msg(exp != NULL, "%s", dm_error());
    dm_compute cx = context_for(id);
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, &cx);
    ck_assert_msg(m != NULL, "%s", dm_error());
    ck_assert_ptr_eq(dm_model_backend_of(m), dm_model_backend_get(id));
    const dm_model_config *c = dm_model_cfg(m);
    ck_assert_int_eq(c->family, DM_FAMILY_GEMMA2);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    ck_assert_int_lt(c->sliding_window, T);
    ck_assert_int_lt(c->n_kv_head, c->n_head);
    dm_model_hook hooks[64];
    float *outs[64];
    int n = all_hooks(c->n_layer, hooks);
    double worst = 0;
    for (int i = 0; i < n; i++)
        outs[i] = dm_xmalloc(sizeof(float) * B * T * dm_model_hook_width(c, hooks[i]));
    ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, n, outs, 0) == 0, "%s", dm_error());
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
        dm_model_hook_name(hooks[i], hname, sizeof hname);
        float *want = golden_hook(exp, hname, len);
        double e = rel_err(outs[i], want, len);
        ck_assert_msg(e <= TOL, "%s %s (%s backend): relative error %g", dir, hname,
                      dm_model_backend_of(m)->name, e);
        worst = e > worst ? e : worst;
        free(want);
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
    const char *models[] = {"h32kv2", "h24kv1"};
    char dir[256];
    for (size_t i = 0; i < sizeof models / sizeof *models; i++)
        for (int bf16 = 0; bf16 <= 1; bf16++)
            for (int id = 0; id < DM_MODEL_CUDA; id++)
                if (dm_model_backend_get((dm_model_backend_id)id)) {
                    snprintf(dir, sizeof dir, GOLDEN "%s%s", models[i], bf16 ? "-bf16" : "");
                    printf("gemma2 parity %s: max relative error %.2g (%s backend)\n", dir,
                           check_model(dir, models[i], (dm_model_backend_id)id),
                           dm_model_backend_get((dm_model_backend_id)id)->name);
                }
}
END_TEST

/* ---- hooks ------------------------------------------------------------------- */

static int zero_fn(void *user, dm_model_hook h, float *x, int B, int T, int width)
{
    memset(x, 0, sizeof(float) * B * T * width);
    return 0;
}

START_TEST(hooks_run_from_and_edits)
{
    dm_model *m = dm_model_load(GOLDEN "h32kv2", DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_msg(m != NULL, "%s", dm_error());
    const dm_model_config *c = dm_model_cfg(m);
    int B = 2, T = 20, C = c->n_embd, V = c->vocab_size;
    int32_t tok[40];
    for (int i = 0; i < B * T; i++)
        tok[i] = (i * 37 + 5) % V;
    size_t BT = (size_t)B * T;
    float *pre1 = dm_xmalloc(sizeof(float) * BT * C), *post2 = dm_xmalloc(sizeof(float) * BT * C);
    float *logits = dm_xmalloc(sizeof(float) * BT * V), *logits2 = dm_xmalloc(sizeof(float) * BT * V);
    float *post2b = dm_xmalloc(sizeof(float) * BT * C);
    dm_model_hook hooks[3] = {{DM_HOOK_RESID_PRE, 1}, {DM_HOOK_RESID_POST, 2}, {DM_HOOK_LOGITS, -1}};
    float *outs[3] = {pre1, post2, logits};
    ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, 3, outs, 0) == 0, "%s", dm_error());
    /* from blocks.1.hook_resid_pre: the same later hooks, bit for bit */
    dm_model_hook_point pts[2] = {{.hook = {DM_HOOK_RESID_POST, 2}, .out = post2b},
                                  {.hook = {DM_HOOK_LOGITS, -1}, .out = logits2}};
    ck_assert_msg(dm_model_run_from(m, 1, pre1, tok, B, T, pts, 2, 0) == 0, "%s", dm_error());
    ck_assert_int_eq(memcmp(post2, post2b, sizeof(float) * BT * C), 0);
    ck_assert_int_eq(memcmp(logits, logits2, sizeof(float) * BT * V), 0);
    /* the logits are soft-capped */
    for (size_t i = 0; i < BT * V; i++)
        ck_assert(fabsf(logits[i]) <= c->final_softcap);
    /* attn_out zeroed at layer 1: resid_mid = resid_pre there */
    float *mid = dm_xmalloc(sizeof(float) * BT * C);
    dm_model_hook_point ed[3] = {{.hook = {DM_HOOK_ATTN_OUT, 1}, .fn = zero_fn, .mode = DM_MODEL_EDIT},
                                 {.hook = {DM_HOOK_RESID_PRE, 1}, .out = pre1},
                                 {.hook = {DM_HOOK_RESID_MID, 1}, .out = mid}};
    ck_assert_msg(dm_model_run(m, tok, B, T, ed, 3, 0) == 0, "%s", dm_error());
    ck_assert_int_eq(memcmp(pre1, mid, sizeof(float) * BT * C), 0);
    /* an edit of the embedding changes what follows */
    dm_model_hook_point emb[2] = {{.hook = {DM_HOOK_EMBED, -1}, .fn = zero_fn, .mode = DM_MODEL_EDIT},
                                  {.hook = {DM_HOOK_RESID_POST, 2}, .out = post2b}};
    ck_assert_msg(dm_model_run(m, tok, B, T, emb, 2, 0) == 0, "%s", dm_error());
    ck_assert(rel_err(post2b, post2, BT * C) > 1e-2);
    /* centring is refused; hook_pos_embed does not exist */
    ck_assert_int_eq(dm_model_can_center(c), 0);
    ck_assert_int_ne(dm_model_forward(m, tok, B, T, hooks, 1, outs, 1), 0);
    ck_assert(has(dm_error(), "set center false"));
    ck_assert_int_lt(dm_model_hook_width(c, (dm_model_hook){DM_HOOK_POS_EMBED, -1}), 0);
    ck_assert(has(dm_error(), "Gemma 2 has no position embedding"));
    free(pre1), free(post2), free(post2b), free(logits), free(logits2), free(mid);
    dm_model_free(m);

    /* a partial load runs to its depth and refuses what lies beyond */
    m = dm_model_load(GOLDEN "h32kv2", 1, NULL);
    ck_assert_msg(m != NULL, "%s", dm_error());
    float *post0 = dm_xmalloc(sizeof(float) * BT * C);
    dm_model_hook h0 = {DM_HOOK_RESID_POST, 0};
    ck_assert_msg(dm_model_forward(m, tok, B, T, &h0, 1, &post0, 0) == 0, "%s", dm_error());
    dm_model_hook hl = {DM_HOOK_LOGITS, -1};
    ck_assert_int_ne(dm_model_forward(m, tok, B, T, &hl, 1, &post0, 0), 0);
    free(post0);
    dm_model_free(m);
}
END_TEST

START_TEST(backend_fallback)
{
    /* a backend without Gemma 2's entries (as the cuda one): the model runs on
     * the CPU, with the same values */
    dm_model_backend fake = *dm_model_backend_get(DM_MODEL_CPU);
    fake.name = "gpt2-only";
    fake.rmsnorm = NULL;
    ck_assert_int_eq(dm_model_backend_runs(&fake, DM_FAMILY_GEMMA2), 0);
    ck_assert_int_eq(dm_model_backend_runs(&fake, DM_FAMILY_GPT2), 1);
    dm_model *m = dm_model_load_backend(GOLDEN "h24kv1", DM_MODEL_DEPTH_ALL, NULL, &fake);
    ck_assert_msg(m != NULL, "%s", dm_error());
    ck_assert_ptr_ne(dm_model_backend_of(m), &fake);
    ck_assert(dm_model_backend_runs(dm_model_backend_of(m), DM_FAMILY_GEMMA2));
    dm_model_free(m);
    const dm_model_backend *cu = dm_model_backend_get(DM_MODEL_CUDA);
    if (cu)
        ck_assert_int_eq(dm_model_backend_runs(cu, DM_FAMILY_GEMMA2), 0);
}
END_TEST

/* ---- bf16 weights ------------------------------------------------------------ */

/* Every hook of folder dir, loaded with weights w on backend id, on the golden
 * tokens of NAME: n hooks into hooks, their values returned (free with
 * free_outs), lens[i] floats each; *held gets dm_model_holds_bf16. */
static float **run_every_hook(const char *dir, const char *name, dm_model_backend_id id,
                              dm_model_weights w, dm_model_hook *hooks, int *n, size_t *lens,
                              int *held)
{
    char path[256];
    snprintf(path, sizeof path, GOLDEN "%s/expected.safetensors", name);
    dm_safetensors *exp = dm_st_open(path);
    ck_assert_msg(exp != NULL, "%s", dm_error());
    dm_compute cx = context_for(id);
    dm_model_opts o = {.weights = w};
    dm_model *m = dm_model_load_opts(dir, DM_MODEL_DEPTH_ALL, &cx, &o);
    ck_assert_msg(m != NULL, "%s", dm_error());
    ck_assert_ptr_eq(dm_model_backend_of(m), dm_model_backend_get(id));
    const dm_model_config *c = dm_model_cfg(m);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    *n = all_hooks(c->n_layer, hooks);
    float **outs = dm_xcalloc(65, sizeof *outs);
    for (int i = 0; i < *n; i++) {
        lens[i] = (size_t)B * T * dm_model_hook_width(c, hooks[i]);
        outs[i] = dm_xmalloc(sizeof(float) * lens[i]);
    }
    ck_assert_msg(dm_model_forward(m, tok, B, T, hooks, *n, outs, 0) == 0, "%s", dm_error());
    *held = dm_model_holds_bf16(m);
    free(tok);
    dm_model_free(m);
    dm_st_close(exp);
    return outs;
}

static void free_outs(float **outs)
{
    for (int i = 0; outs[i]; i++)
        free(outs[i]);
    free(outs);
}

/* The tolerance of hook h of a model of L blocks computed with bf16 weights
 * (DM_WEIGHTS_BF16), relative as rel_err. Each linear layer rounds its input
 * to bf16 (8 significant bits, nearest: a relative error of at most
 * u = 2^-8 per product, bgemm.h), so its output is off by at most u of the
 * sum of its products' magnitudes; to first order these errors add along
 * the path to a hook, each rescaled with the values by the norms. So hook h is
 * allowed u per bf16 product stage before it: 2 per half block (q/k/v then
 * o_proj; gate/up then down_proj), 1 for the unembedding (the loss: as the
 * logits); the embedding and blocks.0.hook_resid_pre are the weights' own
 * values (TOL). Seen: about a quarter to a half of that (0.5u to 5.6u), the
 * logits the largest. A wrong weight, layout or scale moves a hook by far
 * more (order 1); inputs not rounded at all would leave the float32 path's
 * 1e-6, which bf16_weights rules out too. */
static double bf16_tol(dm_model_hook h, int L)
{
    const double u = 0x1p-8;
    switch (h.kind) {
    case DM_HOOK_RESID_PRE: return h.layer ? 4 * h.layer * u : TOL;
    case DM_HOOK_ATTN_OUT:
    case DM_HOOK_RESID_MID: return (4 * h.layer + 2) * u;
    case DM_HOOK_MLP_OUT:
    case DM_HOOK_RESID_POST: return (4 * h.layer + 4) * u;
    case DM_HOOK_LN_FINAL: return 4 * L * u;
    case DM_HOOK_LOGITS:
    case DM_HOOK_LOSS: return (4 * L + 1) * u;
    default: return TOL;
    }
}

/* Checks every hook of a against b, or against the golden values of NAME with
 * b NULL, within bf16_tol (tol 0) or tol; what is printed: the largest
 * relative error and the largest fraction of its allowance. */
static void check_bf16(const char *what, const char *name, float **a, float **b,
                       const dm_model_hook *hooks, int n, double tol)
{
    char path[256], hname[64], worst_hook[64] = "";
    snprintf(path, sizeof path, GOLDEN "%s/expected.safetensors", name);
    dm_safetensors *exp = dm_st_open(path);
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    dm_model_config c;
    snprintf(path, sizeof path, GOLDEN "%s", name);
    ck_assert_int_eq(dm_model_read_config(path, &c), 0);
    double worst = 0, share = 0;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)B * T * dm_model_hook_width(&c, hooks[i]);
        dm_model_hook_name(hooks[i], hname, sizeof hname);
        float *want = b ? b[i] : golden_hook(exp, hname, len);
        double e = rel_err(a[i], want, len), t = tol > 0 ? tol : bf16_tol(hooks[i], c.n_layer);
        ck_assert_msg(e <= t, "%s %s: %s: relative error %g, allowed %g", name, what, hname, e, t);
        if (e >= worst)
            worst = e, strcpy(worst_hook, hname);
        share = e / t > share ? e / t : share;
        if (!b)
            free(want);
    }
    printf("gemma2 bf16 %s %s: max relative error %.2g (%s), %.2f of its allowance\n", name, what,
           worst, worst_hook, share);
    free(tok);
    dm_st_close(exp);
}

START_TEST(bf16_weights)
{
    /* the golden models' weights are bf16 values (tools/gemma2_reference.py):
     * DM_WEIGHTS_BF16 holds exactly the weights transformers ran, so what
     * differs is the rounding of the linear layers' inputs */
    const char *models[] = {"h32kv2", "h24kv1"};
    char dir[256];
    for (size_t k = 0; k < sizeof models / sizeof *models; k++) {
        const char *name = models[k];
        dm_model_hook hooks[64];
        size_t lens[64];
        int n, held;
        snprintf(dir, sizeof dir, GOLDEN "%s-bf16", name);
        /* the reference: bf16 W held as such, inputs rounded to bf16, double sums */
        float **ref = run_every_hook(dir, name, DM_MODEL_REF, DM_WEIGHTS_BF16, hooks, &n, lens, &held);
        ck_assert_int_eq(held, 1);
        check_bf16("ref backend against transformers", name, ref, NULL, hooks, n, 0);
        /* the inputs are rounded: the logits move well beyond float32's 1e-6 */
        float **f32 = run_every_hook(dir, name, DM_MODEL_REF, DM_WEIGHTS_F32, hooks, &n, lens, &held);
        ck_assert_int_eq(held, 0);
        ck_assert_int_eq(hooks[n - 2].kind, DM_HOOK_LOGITS);
        ck_assert(rel_err(ref[n - 2], f32[n - 2], lens[n - 2]) > 1e-4);
        FOR_EACH_FAST_BACKEND(id, be) {
            float **got = run_every_hook(dir, name, id, DM_WEIGHTS_BF16, hooks, &n, lens, &held);
            ck_assert_int_eq(held, id == DM_MODEL_CPU_AVX512 && dm_bgemm_available());
            char what[128];
            if (!held) { /* widened: the float32 path on the same weights */
                snprintf(what, sizeof what, "%s backend (widened to float32) against transformers", be->name);
                check_bf16(what, name, got, NULL, hooks, n, TOL);
                free_outs(got);
                continue;
            }
            snprintf(what, sizeof what, "%s backend against transformers", be->name);
            check_bf16(what, name, got, NULL, hooks, n, 0);
            snprintf(what, sizeof what, "%s backend against the ref backend", be->name);
            check_bf16(what, name, got, ref, hooks, n, 0);
            /* the embedding's rows, read from the packed copy, are the weights' own */
            ck_assert_int_eq(hooks[0].kind, DM_HOOK_EMBED);
            ck_assert_int_eq(memcmp(got[0], f32[0], sizeof(float) * lens[0]), 0);
            free_outs(got);
        }
        free_outs(ref), free_outs(f32);
    }
}
END_TEST

START_TEST(bf16_memory)
{
    /* what a model holds is what the accounting says, on every backend, for
     * both weights and a partial depth */
    const int depths[] = {DM_MODEL_DEPTH_ALL, 1};
    for (int id = 0; id < DM_MODEL_CUDA; id++) {
        if (!dm_model_backend_get((dm_model_backend_id)id))
            continue;
        dm_compute cx = context_for((dm_model_backend_id)id);
        for (int w = DM_WEIGHTS_F32; w <= DM_WEIGHTS_BF16; w++)
            for (int d = 0; d < 2; d++) {
                dm_model_opts o = {.weights = (dm_model_weights)w};
                dm_model *m = dm_model_load_opts(GOLDEN "h32kv2-bf16", depths[d], &cx, &o);
                ck_assert_msg(m != NULL, "%s", dm_error());
                ck_assert_uint_eq(dm_model_bytes(m), dm_model_param_bytes(dm_model_cfg(m), depths[d], &cx, o.weights));
                dm_model_free(m);
            }
    }
    /* held bf16, about half the float32 parameters: 2 bytes for the large
     * matrices, 4 for the norms' weights (h32kv2's shapes are multiples of
     * the packing's 32 columns: no padding) */
    dm_model_opts o = {.weights = DM_WEIGHTS_BF16};
    for (int id = DM_MODEL_REF; id <= DM_MODEL_CPU_AVX512; id++) {
        dm_compute cx = context_for((dm_model_backend_id)id);
        if (!dm_model_backend_get((dm_model_backend_id)id))
            continue;
        dm_model *m = dm_model_load_opts(GOLDEN "h32kv2-bf16", DM_MODEL_DEPTH_ALL, &cx, &o);
        ck_assert_ptr_nonnull(m);
        double f32 = 4.0 * dm_model_param_floats(dm_model_cfg(m), DM_MODEL_DEPTH_ALL);
        double r = dm_model_bytes(m) / f32;
        printf("gemma2 bf16 memory h32kv2 (%s backend, %s): %.3f of the float32 parameters\n",
               dm_model_backend_of(m)->name, dm_model_holds_bf16(m) ? "held bf16" : "widened", r);
        if (dm_model_holds_bf16(m))
            ck_assert(r > 0.5 && r < 0.52);
        else
            ck_assert(r >= 1);
        dm_model_free(m);
    }
    /* Gemma-2-2B's shape (the accounting alone): to blocks.12.hook_resid_post
     * (13 blocks), bf16 on ref is half the float32 parameters within 1e-3 (the
     * norms' weights); on cpu-avx512 with AVX-512 BF16, float32 also holds
     * the linear weights packed for dm_sgemm (sgemm.h: more floats than the
     * weights), and bf16 is about a quarter of that (0.24) */
    dm_model_config g = {.family = DM_FAMILY_GEMMA2, .n_embd = 2304, .n_layer = 26, .n_head = 8,
                         .n_kv_head = 4, .head_dim = 256, .n_inner = 9216, .vocab_size = 256000,
                         .n_positions = 8192};
    dm_compute rcx = context_for(DM_MODEL_REF);
    double f = (double)dm_model_param_bytes(&g, 13, &rcx, DM_WEIGHTS_F32);
    double b = (double)dm_model_param_bytes(&g, 13, &rcx, DM_WEIGHTS_BF16);
    ck_assert_double_eq_tol(f, 4.0 * (dm_model_param_floats(&g, 13) - 2304), 1);
    ck_assert(b / f > 0.5 && b / f < 0.501);
    printf("gemma2 2B shape, 13 blocks: float32 %.2f GB, bf16 %.2f GB (ref)", f / 1e9, b / 1e9);
    if (dm_model_backend_get(DM_MODEL_CPU_AVX512) && dm_bgemm_available()) {
        dm_compute acx = context_for(DM_MODEL_CPU_AVX512);
        double fa = (double)dm_model_param_bytes(&g, 13, &acx, DM_WEIGHTS_F32);
        double ba = (double)dm_model_param_bytes(&g, 13, &acx, DM_WEIGHTS_BF16);
        ck_assert_double_eq_tol(ba, b, 1e-3 * b);
        ck_assert(ba / fa > 0.2 && ba / fa < 0.3);
        printf("; cpu-avx512: float32 with packed copies %.2f GB, bf16 packed %.2f GB", fa / 1e9, ba / 1e9);
    }
    printf("\n");
}
END_TEST

/* ---- the command ---------------------------------------------------------------- */

START_TEST(command_matches_golden)
{
    /* dmica activations on the sharded bf16 folder: raw activations (never
     * centred, --no-center or not), the golden tokens written as int32 .npy */
    dm_safetensors *exp = dm_st_open(GOLDEN "h24kv1/expected.safetensors");
    ck_assert_ptr_nonnull(exp);
    int B, T;
    int32_t *tok = golden_tokens(exp, &B, &T);
    char *tokens = dm_xasprintf("%s/tokens.npy", tmpdir), *out = dm_xasprintf("%s/acts.npy", tmpdir);
    dm_tensor tt = {.dtype = DM_I32, .ndim = 2, .shape = {B, T}, .data = tok};
    ck_assert_int_eq(dm_npy_save(tokens, &tt), 0);
    const char *hook = "blocks.2.hook_mlp_out";
    for (int flag = 0; flag <= 1; flag++) {
        char *argv[] = {"activations", "--model", GOLDEN "h24kv1-bf16", "--hook", (char *)hook, "--tokens",
                        tokens, "--out", out, "--quiet", flag ? "--no-center" : NULL};
        ck_assert_int_eq(dm_cmd_activations(10 + flag, argv), 0);
        dm_tensor t = {0};
        ck_assert_msg(dm_npy_load(out, &t) == 0, "%s", dm_error());
        ck_assert_int_eq(t.shape[0], B * T);
        size_t n = (size_t)dm_tensor_numel(&t);
        float *want = golden_hook(exp, hook, n);
        ck_assert_double_le(rel_err(t.data, want, n), TOL);
        free(want);
        dm_tensor_free(&t);
    }
    free(tokens), free(out), free(tok);
    dm_st_close(exp);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------ */

/* A copy of golden folder name in tmpdir/tag (config.json, the shards, the
 * index); returns the path. */
static char *copy_model(const char *name, const char *tag)
{
    char *dir = dm_xasprintf("%s/%s", tmpdir, tag);
    char *cmd = dm_xasprintf("rm -rf '%s' && mkdir -p '%s' && cp " GOLDEN "%s/config.json " GOLDEN
                             "%s/model* '%s/'", dir, dir, name, name, dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    return dir;
}

static void set_config(const char *dir, const char *key, const char *value)
{
    char *p = dm_xasprintf("%s/config.json", dir);
    json_error_t jerr;
    json_t *cfg = json_load_file(p, 0, &jerr);
    ck_assert_ptr_nonnull(cfg);
    if (value)
        json_object_set_new(cfg, key, json_loads(value, JSON_DECODE_ANY, &jerr));
    else
        json_object_del(cfg, key);
    ck_assert_int_eq(json_dump_file(cfg, p, JSON_INDENT(2)), 0);
    json_decref(cfg);
    free(p);
}

/* index.json's weight_map: tensor -> file (NULL: removed). */
static void set_index(const char *dir, const char *tensor, const char *file)
{
    char *p = dm_xasprintf("%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *idx = json_load_file(p, 0, &jerr);
    ck_assert_ptr_nonnull(idx);
    json_t *map = json_object_get(idx, "weight_map");
    if (file)
        json_object_set_new(map, tensor, json_string(file));
    else
        json_object_del(map, tensor);
    ck_assert_int_eq(json_dump_file(idx, p, JSON_INDENT(2)), 0);
    json_decref(idx);
    free(p);
}

static const char *shard_of(const char *dir, const char *tensor, char *buf, size_t n)
{
    char *p = dm_xasprintf("%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *idx = json_load_file(p, 0, &jerr);
    ck_assert_ptr_nonnull(idx);
    snprintf(buf, n, "%s", json_string_value(json_object_get(json_object_get(idx, "weight_map"), tensor)));
    json_decref(idx);
    free(p);
    return buf;
}

static void expect_load_error(const char *dir, const char *want1, const char *want2)
{
    dm_error_clear();
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_msg(m == NULL, "%s: loaded", dir);
    ck_assert_msg(has(dm_error(), want1) && (!want2 || has(dm_error(), want2)), "%s", dir);
}

START_TEST(bad_models)
{
    char shard[128], *dir, *p;
    /* the unchanged copy loads */
    dir = copy_model("h32kv2", "same");
    dm_model *m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL);
    ck_assert_msg(m != NULL, "%s", dm_error());
    dm_model_free(m);
    free(dir);

    /* a missing shard: the index, the shard and a tensor in it named */
    dir = copy_model("h32kv2", "no_shard");
    shard_of(dir, "model.layers.1.mlp.up_proj.weight", shard, sizeof shard);
    p = dm_xasprintf("%s/%s", dir, shard);
    ck_assert_int_eq(unlink(p), 0);
    expect_load_error(dir, "model.safetensors.index.json: shard ", shard);
    free(p), free(dir);

    /* the index names a tensor its shard lacks */
    dir = copy_model("h32kv2", "index_wrong");
    set_index(dir, "model.layers.0.self_attn.q_proj.weight",
              strcmp(shard_of(dir, "model.layers.0.self_attn.q_proj.weight", shard, sizeof shard),
                     shard_of(dir, "model.norm.weight", shard + 64, 64))
                  ? shard + 64 : shard_of(dir, "model.embed_tokens.weight", shard + 64, 64));
    expect_load_error(dir, "weight_map puts tensor model.layers.0.self_attn.q_proj.weight in ",
                      "which does not hold it");
    free(dir);

    /* the index names a tensor no shard has */
    dir = copy_model("h32kv2", "index_extra");
    set_index(dir, "model.layers.0.mlp.extra.weight", shard_of(dir, "model.norm.weight", shard, sizeof shard));
    expect_load_error(dir, "model.layers.0.mlp.extra.weight", "does not hold it");
    free(dir);

    /* a tensor the index lacks */
    dir = copy_model("h32kv2", "index_missing");
    set_index(dir, "model.layers.2.mlp.up_proj.weight", NULL);
    expect_load_error(dir, "model.safetensors.index.json: missing tensor model.layers.2.mlp.up_proj.weight",
                      NULL);
    free(dir);

    /* a tensor of the wrong shape, in a shard of its own */
    dir = copy_model("h32kv2", "shape");
    p = dm_xasprintf("%s/bad.safetensors", dir);
    float z[64 * 31] = {0};
    dm_tensor t = {.dtype = DM_F32, .ndim = 2, .shape = {64, 31}, .data = z};
    const char *nm = "model.layers.1.mlp.up_proj.weight";
    ck_assert_int_eq(dm_st_write_f32(p, &nm, &t, 1), 0);
    set_index(dir, nm, "bad.safetensors");
    expect_load_error(dir, "bad.safetensors: tensor model.layers.1.mlp.up_proj.weight has shape [64, 31], "
                      "config intermediate_size 64, hidden_size 32 needs [64, 32]", NULL);
    free(p), free(dir);

    /* an index that is not JSON, or has no weight_map */
    dir = copy_model("h32kv2", "index_bad");
    p = dm_xasprintf("%s/model.safetensors.index.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"metadata\": {}}", f);
    fclose(f);
    expect_load_error(dir, "model.safetensors.index.json: no weight_map", NULL);
    f = fopen(p, "w");
    fputs("{\"weight_map\": ", f);
    fclose(f);
    expect_load_error(dir, "model.safetensors.index.json: not valid JSON", NULL);
    free(p), free(dir);

    /* config values the runner does not implement, refused by name */
    struct { const char *key, *value, *want; } cfgs[] = {
        {"hidden_act", "\"gelu\"", "hidden_act gelu is not supported"},
        {"hidden_activation", "\"silu\"", "hidden_activation silu is not supported"},
        {"rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", "rope_scaling is not supported"},
        {"attention_bias", "true", "attention_bias true is not supported"},
        {"tie_word_embeddings", "false", "tie_word_embeddings false is not supported"},
        {"num_key_value_heads", "3", "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
        {"model_type", "\"llama\"", "model_type llama is not supported"},
        {"query_pre_attn_scalar", NULL, "missing key query_pre_attn_scalar"},
        {"sliding_window", "null", "sliding_window must be a positive integer"},
        {"final_logit_softcapping", "-1", "final_logit_softcapping must be a positive number or null"},
        {"head_dim", "15", "head_dim 15 is odd"},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        dir = copy_model("h32kv2", "cfg");
        set_config(dir, cfgs[i].key, cfgs[i].value);
        expect_load_error(dir, cfgs[i].want, "config.json");
        free(dir);
    }
    /* caps may be off (null), as Gemma2Config allows: the model loads */
    dir = copy_model("h32kv2", "nocap");
    set_config(dir, "attn_logit_softcapping", "null");
    ck_assert_ptr_nonnull(m = dm_model_load(dir, DM_MODEL_DEPTH_ALL, NULL));
    ck_assert_float_eq(dm_model_cfg(m)->attn_softcap, 0.0f);
    dm_model_free(m);
    free(dir);

    /* a GPT-2 config with another family's key */
    char *g = dm_xasprintf("%s/gpt2", tmpdir);
    char *cmd = dm_xasprintf("mkdir -p '%s' && cp tests/golden/gpt2/c64h4/config.json tests/golden/gpt2/c64h4/model.safetensors '%s/'", g, g);
    ck_assert_int_eq(system(cmd), 0);
    set_config(g, "attn_logit_softcapping", "50.0");
    expect_load_error(g, "attn_logit_softcapping is not supported by GPT-2", NULL);
    free(cmd), free(g);
}
END_TEST

int main(void)
{
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("gemma2");
    TCase *tk = tcase_create("kernels");
    tcase_set_timeout(tk, 60);
    tcase_add_test(tk, reference_kernels_by_hand);
    tcase_add_test(tk, kernels_match_reference);
    suite_add_tcase(s, tk);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, parity_every_hook);
    tcase_add_test(tm, hooks_run_from_and_edits);
    tcase_add_test(tm, backend_fallback);
    tcase_add_test(tm, bf16_weights);
    tcase_add_test(tm, bf16_memory);
    tcase_add_test(tm, command_matches_golden);
    tcase_add_test(tm, bad_models);
    suite_add_tcase(s, tm);
    return dm_test_run(s, tmpdir);
}
