/*
 * test_pipeline.c: pipeline templates (engine/core/template.c): the order and
 * values of the rows of both foreach forms, ${VAR} in every kind of string,
 * the lines and origins expanded nodes keep, a template's graph equal to the
 * graph of the same nodes written out, and --set on an expanded node.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "test.h"

static dm_pipeline *parse(const char *text)
{
    dm_pipeline *p = dm_pipeline_parse("t.yaml", text, strlen(text));
    ck_assert_msg(p != NULL, "parse failed: %s", dm_error());
    return p;
}

static const dm_node_decl *find(const dm_pipeline *p, const char *name)
{
    for (int i = 0; i < p->nnodes; i++)
        if (!strcmp(p->nodes[i].name, name))
            return &p->nodes[i];
    ck_abort_msg("no node '%s'", name);
    return NULL;
}

static const char *param(const dm_node_decl *d, const char *key)
{
    for (int i = 0; i < d->nparams; i++)
        if (!strcmp(d->params[i].key, key))
            return d->params[i].value;
    return NULL;
}

/* {a: [...], b: [...]}: every combination, the last variable fastest; the
 * written nodes first, then template by template, row by row. */
START_TEST(test_matrix)
{
    dm_pipeline *p = parse("nodes:\n"
                           "  first: {op: synthetic, params: {rows: 10, cols: 2}}\n"
                           "templates:\n"
                           "  grid:\n"
                           "    foreach: {L: [0, 6], seed: [1, 2, 3]}\n"
                           "    nodes:\n"
                           "      \"src_${L}_${seed}\":\n"
                           "        op: synthetic\n"
                           "        params: {rows: 10, cols: \"${L}\", seed: \"${seed}${seed}\"}\n"
                           "      \"m_${L}_${seed}\":\n"
                           "        op: moments\n"
                           "        inputs: {x: \"src_${L}_${seed}\"}\n"
                           "        publish: \"layer${L}/s${seed}_\"\n");
    ck_assert_int_eq(p->nnodes, 1 + 2 * 3 * 2);
    const char *order[] = {"first", "src_0_1", "m_0_1", "src_0_2", "m_0_2", "src_0_3", "m_0_3",
                           "src_6_1", "m_6_1", "src_6_2", "m_6_2", "src_6_3", "m_6_3"};
    for (int i = 0; i < p->nnodes; i++)
        ck_assert_str_eq(p->nodes[i].name, order[i]);
    ck_assert_ptr_null(p->nodes[0].origin);
    const dm_node_decl *s = find(p, "src_6_2");
    ck_assert_str_eq(s->origin, "grid L=6, seed=2");
    ck_assert_str_eq(param(s, "cols"), "6");
    ck_assert_str_eq(param(s, "seed"), "22");
    ck_assert_int_eq(s->line, 7);
    ck_assert_int_eq(s->op_line, 8);
    ck_assert_int_eq(s->params[1].line, 9);
    const dm_node_decl *m = find(p, "m_0_3");
    ck_assert_str_eq(m->inputs[0].value, "src_0_3");
    ck_assert_int_eq(m->inputs[0].line, 12);
    ck_assert_str_eq(m->publish, "layer0/s3_");
    ck_assert_int_eq(m->publish_line, 13);
    dm_pipeline_free(p);
}
END_TEST

/* [{...}, {...}]: one row per map, in order; keys order within a map free;
 * a '$' without '{' stays; variables in keys too. */
START_TEST(test_rows)
{
    dm_pipeline *p = parse("templates:\n"
                           "  sweep:\n"
                           "    foreach:\n"
                           "      - {name: b, n: 20}\n"
                           "      - {n: 10, name: a}\n"
                           "    nodes:\n"
                           "      \"src_${name}\":\n"
                           "        op: synthetic\n"
                           "        params: {rows: \"${n}\", cols: 3, \"se${name}d\": $5}\n");
    ck_assert_int_eq(p->nnodes, 2);
    ck_assert_str_eq(p->nodes[0].name, "src_b");
    ck_assert_str_eq(p->nodes[1].name, "src_a");
    ck_assert_str_eq(param(&p->nodes[0], "rows"), "20");
    ck_assert_str_eq(param(&p->nodes[1], "rows"), "10");
    ck_assert_str_eq(param(&p->nodes[1], "sead"), "$5");
    ck_assert_str_eq(p->nodes[1].origin, "sweep name=a, n=10");
    dm_pipeline_free(p);
}
END_TEST

START_TEST(test_errors)
{
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1]}\n    nodes:\n      \"a_${k}\": {op: npy}\n",
                 "e.yaml:5:", "unknown variable '${k}'");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1]}\n    nodes:\n      a_x: {op: npy, publish: \"${i\"}\n",
                 "e.yaml:5:", "without a closing");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {\"1x\": [1]}\n    nodes:\n      a: {op: npy}\n", "e.yaml:3:",
                 "variable name");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: 1}\n    nodes:\n      a: {op: npy}\n", "e.yaml:3:",
                 "must be a list of values");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [{a: 1}]}\n    nodes:\n      a: {op: npy}\n", "e.yaml:3:",
                 "not a mapping");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach:\n      - {i: 1}\n      - {i: 2, j: 3}\n    nodes:\n      a: {op: npy}\n",
                 "e.yaml:5:", "variable 'j' is not in the first entry");
    dm_test_expect_pipeline_error("templates:\n  t:\n    nodes:\n      a: {op: npy}\n", "e.yaml:2:", "has no 'foreach'");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1]}\n", "e.yaml:2:", "has no nodes");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1]}\n    nodes:\n      a: {op: npy}\n    extra: 1\n",
                 "e.yaml:6:", "unknown key 'extra'");
    dm_test_expect_pipeline_error("templates: []\n", "e.yaml:1:", "'templates' must be a mapping");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1, 2]}\n    nodes:\n"
                 "      \"a_${i}\": {op: synthetic, params: {rows: 1, cols: 2}}\n"
                 "      \"b_${i}\": {op: nope}\n",
                 "e.yaml:6 (t i=1): node 'b_1'", "unknown operator 'nope'");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [1, ../x]}\n    nodes:\n"
                 "      \"a_${i}\":\n        op: npy\n        publish: \"${i}/\"\n",
                 "e.yaml:5 (t i=../x)", "is not a plain word");
    dm_test_expect_pipeline_error("templates:\n  t:\n    foreach: {i: [\"..\"]}\n    nodes:\n"
                 "      a:\n        op: npy\n        publish: \"${i}/\"\n",
                 "e.yaml:7 (t i=..)", "publish must be a relative");
}
END_TEST

/* The graph of a template is the graph of its nodes written out: same keys;
 * --set reaches one expanded node. */
START_TEST(test_same_graph)
{
    const char *tpl = "name: k\n"
                      "nodes:\n"
                      "  src: {op: synthetic, params: {rows: 100, cols: 6, seed: 3}}\n"
                      "templates:\n"
                      "  proj:\n"
                      "    foreach: {k: [2, 4]}\n"
                      "    nodes:\n"
                      "      \"cov_${k}\": {op: covariance, inputs: {x: src}, params: {file: \"cov${k}.npy\"}}\n"
                      "      \"pca_${k}\": {op: pca, inputs: {covariance: \"cov_${k}.covariance\"}, params: {k: \"${k}\"}}\n";
    const char *spelled = "name: k\n"
                          "nodes:\n"
                          "  src: {op: synthetic, params: {rows: 100, cols: 6, seed: 3}}\n"
                          "  cov_2: {op: covariance, inputs: {x: src}, params: {file: cov2.npy}}\n"
                          "  pca_2: {op: pca, inputs: {covariance: cov_2.covariance}, params: {k: 2}}\n"
                          "  cov_4: {op: covariance, inputs: {x: src}, params: {file: cov4.npy}}\n"
                          "  pca_4: {op: pca, inputs: {covariance: cov_4.covariance}, params: {k: 4}}\n";
    const char *sets[] = {NULL, "pca_4.k=3"};
    for (int s = 0; s < 2; s++) {
        dm_pipeline *pt = parse(tpl), *ps = parse(spelled);
        if (sets[s]) {
            ck_assert_int_eq(dm_pipeline_set(pt, sets[s]), 0);
            ck_assert_int_eq(dm_pipeline_set(ps, sets[s]), 0);
        }
        dm_graph *gt = dm_graph_build(pt), *gs = dm_graph_build(ps);
        ck_assert_ptr_nonnull(gt);
        ck_assert_ptr_nonnull(gs);
        gt->cache = dm_xstrdup("/nonexistent-dmica-cache"), gs->cache = dm_xstrdup("/nonexistent-dmica-cache");
        ck_assert_int_eq(dm_plan(gt), 0);
        ck_assert_int_eq(dm_plan(gs), 0);
        ck_assert_int_eq(gt->nnodes, 5);
        for (int i = 0; i < gs->nnodes; i++) {
            dm_node *a = dm_graph_find(gt, gs->nodes[i]->decl->name);
            ck_assert_ptr_nonnull(a);
            ck_assert_str_eq(a->key, gs->nodes[i]->key);
        }
        ck_assert_int_eq(dm_input_desc(dm_graph_find(gt, "pca_4"), 0)->shape[0], 6);
        ck_assert_str_eq(dm_graph_find(gt, "pca_4")->pval[0], sets[s] ? "3" : "4");
        ck_assert_str_ne(dm_graph_find(gt, "pca_2")->key, dm_graph_find(gt, "pca_4")->key);
        dm_graph_free(gt), dm_graph_free(gs);
        dm_pipeline_free(pt), dm_pipeline_free(ps);
    }
}
END_TEST

/* dm_pipeline_write's YAML reads back to the same declarations. */
START_TEST(test_write_round_trip)
{
    dm_pipeline *p = parse("name: \"odd: name\"\n"
                           "memory: 64M\n"
                           "threads: 2\n"
                           "templates:\n"
                           "  t:\n"
                           "    foreach: {v: [\"a b\", \"x\\\"y\", \"-1\", \"\"]}\n"
                           "    nodes:\n"
                           "      \"n${v}\": {op: report, params: {title: \"t ${v}: #1\", model: \"${v}\"}, "
                           "spill: never, publish: \"l_${v}\"}\n");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    dm_pipeline_write(p, f);
    fclose(f);
    dm_pipeline *q = dm_pipeline_parse("w.yaml", buf, len);
    ck_assert_msg(q != NULL, "%s\n%s", dm_error(), buf);
    ck_assert_str_eq(q->name, p->name);
    ck_assert_int_eq(q->memory, p->memory);
    ck_assert_int_eq(q->threads, 2);
    ck_assert_int_eq(q->nnodes, 4);
    for (int i = 0; i < p->nnodes; i++) {
        const dm_node_decl *a = &p->nodes[i], *b = &q->nodes[i];
        ck_assert_str_eq(a->name, b->name);
        ck_assert_str_eq(a->op, b->op);
        ck_assert_str_eq(a->spill, b->spill);
        ck_assert_str_eq(a->publish, b->publish);
        ck_assert_int_eq(a->nparams, b->nparams);
        for (int j = 0; j < a->nparams; j++) {
            ck_assert_str_eq(a->params[j].key, b->params[j].key);
            ck_assert_str_eq(a->params[j].value, b->params[j].value);
        }
    }
    ck_assert_str_eq(param(&q->nodes[1], "title"), "t x\"y: #1");
    ck_assert_str_eq(param(&q->nodes[3], "model"), "");
    free(buf);
    dm_pipeline_free(p), dm_pipeline_free(q);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pipeline");
    TCase *tc = tcase_create("templates");
    tcase_add_test(tc, test_matrix);
    tcase_add_test(tc, test_rows);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_same_graph);
    tcase_add_test(tc, test_write_round_trip);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
