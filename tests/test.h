/*
 * test.h: the harness every unit-test program shares (Check, libcheck).
 *
 * Each tests/test_*.c is one program: its START_TEST cases, a suite, and
 * DM_TEST_MAIN(suite_fn) or its own main() ending in dm_test_run(). Check runs
 * each case in its own process (CK_FORK, the default), so a crash fails one case;
 * tests that need a fork (fault injection through the environment, say) ask
 * dm_test_forked() and skip themselves under CK_FORK=no.
 */
#ifndef DM_TEST_H
#define DM_TEST_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dm.h"

/* The recorded error message contains s. */
#define assert_error_has(s) \
    ck_assert_msg(strstr(dm_error(), (s)) != NULL, "error '%s' lacks '%s'", dm_error(), (s))
/* The recorded error has code c (dm_errc). */
#define assert_error_code(c)                                                                                  \
    ck_assert_msg(dm_error_code() == (c), "error code %s, expected %s (message: %s)",                         \
                  dm_errc_name(dm_error_code()), dm_errc_name(c), dm_error())

/* A new empty folder $TMPDIR/dmica-test-TAG-XXXXXX (malloc'd path). */
static inline char *dm_test_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *t = dm_xasprintf("%s/dmica-test-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    ck_assert_ptr_nonnull(mkdtemp(t));
    return t;
}

/* rm -rf dir (a test's scratch folder). */
static inline void dm_test_rm_tree(const char *dir)
{
    char *cmd = dm_xasprintf("rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    free(cmd);
}

/* 1 when each case runs in its own process (CK_FORK unset or not "no"). */
static inline int dm_test_forked(void)
{
    const char *f = getenv("CK_FORK");
    return !(f && !strcmp(f, "no"));
}

/* Entries in dir, "." and ".." excluded. */
static inline int dm_test_count_entries(const char *dir)
{
    char *cmd = dm_xasprintf("ls -A '%s' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    ck_assert_ptr_nonnull(p);
    ck_assert(fscanf(p, "%d", &n) == 1);
    pclose(p);
    free(cmd);
    return n;
}

/* Runs the suite; removes scratch (a folder the program made for all its cases)
 * when given. Returns main's exit status. */
static inline int dm_test_run(Suite *s, const char *scratch)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (scratch)
        dm_test_rm_tree(scratch);
    return failed ? 1 : 0;
}

#ifdef DM_ENGINE_H
/* The pipeline text (file "e.yaml") fails to parse or bind, with an error
 * holding where ("e.yaml:3") and what. */
static inline void dm_test_expect_pipeline_error(const char *text, const char *where, const char *what)
{
    dm_pipeline *p = dm_pipeline_parse("e.yaml", text, strlen(text));
    dm_graph *g = p ? dm_graph_build(p) : NULL;
    ck_assert_msg(g == NULL, "accepted: %s", text);
    ck_assert_msg(strstr(dm_error(), where) && strstr(dm_error(), what), "error '%s' lacks '%s' or '%s'",
                  dm_error(), where, what);
    dm_pipeline_free(p);
}
#endif

/* Seeded test data: splitmix64 (dm_splitmix64). A test sets test_rng to its
 * seed, then draws. */
static uint64_t test_rng __attribute__((unused));

static inline uint64_t test_rng_next(void) { return dm_splitmix64(&test_rng); }

/* Uniform in (0, 1), 53 bits. */
static inline double test_rng_uniform(void) { return ((double)(test_rng_next() >> 11) + 0.5) / 9007199254740992.0; }

/* Standard normal (Box-Muller, one of the pair). */
static inline double test_rng_normal(void)
{
    return sqrt(-2.0 * log(test_rng_uniform())) * cos(6.283185307179586 * test_rng_uniform());
}

/* main() for a program whose cases need no shared scratch folder. */
#define DM_TEST_MAIN(suite_fn) \
    int main(void) { return dm_test_run(suite_fn(), NULL); }

#endif
