/*
 * test_engine.c: the engine's own pieces without the command line: sizes and
 * half floats, pipeline parsing and its line numbers, --set, graph binding
 * errors, and cache keys (stable, and changed exactly by what changes results).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

START_TEST(test_sizes)
{
    ck_assert_int_eq(dm_parse_size("512M"), 512LL << 20);
    ck_assert_int_eq(dm_parse_size("2G"), 2LL << 30);
    ck_assert_int_eq(dm_parse_size("1.5GiB"), 3LL << 29);
    ck_assert_int_eq(dm_parse_size("1000"), 1000);
    ck_assert_int_eq(dm_parse_size("12X"), -1);
    ck_assert_ptr_nonnull(strstr(dm_error(), "12X"));
    ck_assert_int_eq(dm_parse_size("lots"), -1);
}
END_TEST

/* Every half and bfloat16 value converts to float and back exactly. */
START_TEST(test_half_round_trip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dm_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        ck_assert_uint_eq(dm_f32_to_f16(f), h);
        float b = dm_bf16_to_f32((uint16_t)h);
        if (!isnan(b))
            ck_assert_uint_eq(dm_f32_to_bf16(b), h);
    }
    ck_assert_float_eq(dm_f16_to_f32(dm_f32_to_f16(1.0f / 3)), 0.333251953125f);
    ck_assert_uint_eq(dm_f32_to_f16(65520.0f), 0x7c00); /* rounds to infinity */
    ck_assert_uint_eq(dm_f32_to_f16(1e-8f), 0);         /* below the smallest subnormal */
}
END_TEST

static const char *good = "name: t\n"
                          "memory: 64M\n"
                          "nodes:\n"
                          "  src:\n"
                          "    op: synthetic\n"
                          "    params: {rows: 1000, cols: 5, seed: 3}\n"
                          "  cov:\n"
                          "    op: covariance\n"
                          "    inputs: {x: src}\n"
                          "  pca:\n"
                          "    op: pca\n"
                          "    inputs: {covariance: cov.covariance}\n"
                          "  mom:\n"
                          "    op: moments\n"
                          "    inputs: {x: src.out}\n";

START_TEST(test_parse)
{
    dm_pipeline *p = dm_pipeline_parse("t.yaml", good, strlen(good));
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p->name, "t");
    ck_assert_int_eq(p->memory, 64 << 20);
    ck_assert_int_eq(p->nnodes, 4);
    ck_assert_str_eq(p->nodes[1].name, "cov");
    ck_assert_int_eq(p->nodes[1].line, 7);
    ck_assert_int_eq(p->nodes[0].params[1].line, 6);
    ck_assert_int_eq(dm_pipeline_set(p, "src.rows=2000"), 0);
    ck_assert_str_eq(p->nodes[0].params[0].value, "2000");
    ck_assert_int_eq(dm_pipeline_set(p, "nosuch.rows=1"), -1);
    ck_assert_int_eq(dm_pipeline_set(p, "norows"), -1);
    dm_pipeline_free(p);
}
END_TEST

static void expect_parse_error(const char *text, const char *where, const char *what)
{
    dm_pipeline *p = dm_pipeline_parse("e.yaml", text, strlen(text));
    dm_graph *g = p ? dm_graph_build(p) : NULL;
    ck_assert_msg(g == NULL, "accepted: %s", text);
    ck_assert_msg(strstr(dm_error(), where) && strstr(dm_error(), what), "error '%s' lacks '%s' or '%s'",
                  dm_error(), where, what);
    dm_pipeline_free(p);
}

START_TEST(test_errors)
{
    expect_parse_error("", "e.yaml", "empty pipeline");
    expect_parse_error("nodes: [a, b]\n", "e.yaml:1", "nodes");
    expect_parse_error("nodes:\n  a: {op: x}\n  a: {op: y}\n", "e.yaml:3", "declared twice");
    expect_parse_error("nodes:\n  a: {params: {}}\n", "e.yaml:2", "has no 'op'");
    expect_parse_error("nodes:\n  a.b: {op: npy}\n", "e.yaml:2", "plain words");
    expect_parse_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2, rows: 3}}\n", "e.yaml:2",
                       "given twice");
    expect_parse_error("memory: lots\nnodes:\n  a: {op: npy}\n", "e.yaml:1", "memory");
    expect_parse_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}}\n  b:\n    op: moments\n"
                       "    inputs: {x: a.nope}\n",
                       "e.yaml:5", "has no output 'nope'");
    expect_parse_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}}\n  b:\n    op: moments\n"
                       "    inputs: {y: a}\n",
                       "e.yaml:5", "has no input 'y'");
    expect_parse_error("nodes:\n  a: {op: synthetic, params: {rows: 1, cols: 2}, spill: sometimes}\n",
                       "e.yaml:2", "spill must be");
    expect_parse_error("nodes:\n  a: {op: synthetic, params: {rows: 0, cols: 2}}\n", "e.yaml:2",
                       "must be positive");
}
END_TEST

static dm_graph *build(const char *text, const char *set, dm_pipeline **pp)
{
    dm_pipeline *p = dm_pipeline_parse("k.yaml", text, strlen(text));
    ck_assert_ptr_nonnull(p);
    if (set)
        ck_assert_int_eq(dm_pipeline_set(p, set), 0);
    dm_graph *g = dm_graph_build(p);
    ck_assert_msg(g != NULL, "%s", dm_error());
    g->cache = dm_xstrdup("/nonexistent-dmica-cache");
    ck_assert_int_eq(dm_plan(g), 0);
    *pp = p;
    return g;
}

START_TEST(test_keys)
{
    dm_pipeline *p1, *p2, *p3;
    dm_graph *a = build(good, NULL, &p1), *b = build(good, NULL, &p2), *c = build(good, "pca.k=3", &p3);
    for (int i = 0; i < a->nnodes; i++) {
        dm_node *na = a->nodes[i], *nb = dm_graph_find(b, na->decl->name), *nc = dm_graph_find(c, na->decl->name);
        ck_assert_str_eq(na->key, nb->key); /* deterministic */
        ck_assert_int_eq(strlen(na->key), 32);
        ck_assert_int_eq(na->state, DM_STATE_STALE);
        ck_assert_str_eq(na->why, "never run");
        /* a changed pca parameter changes pca's key only */
        if (!strcmp(na->decl->name, "pca"))
            ck_assert_str_ne(na->key, nc->key);
        else
            ck_assert_str_eq(na->key, nc->key);
    }
    /* keys chain: a changed source changes every key below it */
    dm_pipeline *p4;
    dm_graph *d = build(good, "src.seed=4", &p4);
    for (int i = 0; i < a->nnodes; i++)
        ck_assert_str_ne(a->nodes[i]->key, dm_graph_find(d, a->nodes[i]->decl->name)->key);
    /* a default written out is the same parameter */
    dm_pipeline *p5;
    dm_graph *e = build(good, "pca.floor=1e-10", &p5);
    ck_assert_str_eq(dm_graph_find(a, "pca")->key, dm_graph_find(e, "pca")->key);
    dm_graph *gs[] = {a, b, c, d, e};
    dm_pipeline *ps[] = {p1, p2, p3, p4, p5};
    for (int i = 0; i < 5; i++) {
        dm_graph_free(gs[i]);
        dm_pipeline_free(ps[i]);
    }
}
END_TEST

START_TEST(test_topology)
{
    /* declared out of order: sorted so producers come first */
    const char *text = "nodes:\n"
                       "  pca: {op: pca, inputs: {covariance: cov.covariance}}\n"
                       "  cov: {op: covariance, inputs: {x: src}}\n"
                       "  src: {op: synthetic, params: {rows: 10, cols: 3}}\n";
    dm_pipeline *p;
    dm_graph *g = build(text, NULL, &p);
    ck_assert_str_eq(g->nodes[0]->decl->name, "src");
    ck_assert_str_eq(g->nodes[1]->decl->name, "cov");
    ck_assert_str_eq(g->nodes[2]->decl->name, "pca");
    ck_assert_int_eq(dm_input_desc(g->nodes[2], 0)->shape[0], 3);
    dm_graph_free(g);
    dm_pipeline_free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("engine");
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_half_round_trip);
    tcase_add_test(tc, test_parse);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_keys);
    tcase_add_test(tc, test_topology);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
