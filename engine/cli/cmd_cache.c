/*
 * cmd_cache.c: `dmica cache du` and `dmica cache gc`, what a cache holds and
 * taking back its space. The cache's layout is cache.c's: this file parses
 * the options and calls dm_cache_du and dm_cache_gc.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "engine.h"

#define CACHE_OPTION                                                                                             \
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "cache folder (default: $DMICA_CACHE, else .dmica-cache)"}

static const dm_arg_spec du_specs[] = {
    CACHE_OPTION,
    {NULL},
};

static const dm_arg_spec gc_specs[] = {
    CACHE_OPTION,
    {"older-than", DM_ARG_STRING, "AGE", NULL, 0, 0, 0, 0,
     "remove the entries no run has used for AGE (a number and a unit: 45s, 90m, 12h, 30d, 2w)"},
    {"max-size", DM_ARG_SIZE, "SIZE", NULL, 0, 0, 0, 0,
     "remove the least recently used entries until the entries hold SIZE at most (e.g. 20G)"},
    {"dry-run", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "say what would be removed, remove nothing"},
    {NULL},
};

static const dm_arg_cmd du_cmd = {
    "cache du", "[--cache DIR]",
    "The cache's size on disk: per pipeline and node (the entries of each node's last run, from\n"
    "CACHE/index), the entries no pipeline's last run uses, and the temporary folders of runs in\n"
    "progress or killed.\n",
    du_specs, NULL, 0, 0,
};

static const dm_arg_cmd gc_cmd = {
    "cache gc", "[--cache DIR] [--older-than AGE] [--max-size SIZE] [--dry-run]",
    "Removes cache entries. Without --older-than or --max-size: the entries no pipeline's last run\n"
    "uses (the index keeps the last run of each node of each pipeline). With them: the entries no\n"
    "run has used for AGE, and then the least recently used ones until the rest holds SIZE at most.\n"
    "Always removes the temporary folders of runs whose process is gone. Do not run it while a run\n"
    "uses the cache: an entry taken from under a run makes that run fail (running it again works).\n",
    gc_specs, NULL, 0, 0,
};

/* "30d" -> seconds; -1 with *why set when it is not an age. */
static double parse_age(const char *s, const char **why)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v < 0) {
        *why = "must be a number of seconds, minutes, hours, days or weeks (45s, 90m, 12h, 30d, 2w)";
        return -1;
    }
    static const struct {
        const char *unit;
        double seconds;
    } units[] = {{"s", 1}, {"m", 60}, {"min", 60}, {"h", 3600}, {"d", 86400}, {"w", 7 * 86400}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].unit))
            return v * units[i].seconds;
    *why = *end ? "unknown unit (use s, m, h, d or w: 45s, 90m, 12h, 30d, 2w)"
                : "needs a unit (s, m, h, d or w: 45s, 90m, 12h, 30d, 2w)";
    return -1;
}

static void cache_usage(FILE *f)
{
    fputs("usage: dmica cache du [--cache DIR]\n"
          "       dmica cache gc [--cache DIR] [--older-than AGE] [--max-size SIZE] [--dry-run]\n"
          "       dmica cache verify [--cache DIR] [--remove]\n"
          "\n"
          "  du      the cache's size per pipeline and node, unreferenced entries, temporary folders\n"
          "  gc      remove entries no pipeline uses, or older than AGE, or beyond SIZE\n"
          "  verify  check every entry's files against their checksums (--remove: delete bad entries)\n"
          "\n"
          "`dmica cache du --help` (gc, verify) describes the options.\n",
          f);
}

int dm_cmd_cache(int argc, char **argv)
{
    if (argc < 2) {
        fputs("dmica cache: say du, gc or verify\n", stderr);
        cache_usage(stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        cache_usage(stdout);
        return 0;
    }
    if (!strcmp(sub, "verify")) /* cmd_cache_verify.c */
        return dm_cmd_cache_verify(argc - 1, argv + 1);
    const dm_arg_cmd *c = !strcmp(sub, "du") ? &du_cmd : !strcmp(sub, "gc") ? &gc_cmd : NULL;
    if (!c) {
        fprintf(stderr, "dmica cache: unknown subcommand '%s' (du, gc or verify)\n", sub);
        cache_usage(stderr);
        return 2;
    }
    dm_args a;
    int rc = dm_args_parse(c, argc - 1, argv + 1, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    dm_cache_gc_opts o = {-1, -1, 0};
    if (c == &gc_cmd) {
        const char *age = dm_arg_str(&a, "older-than"), *why = NULL;
        if (age && (o.older_than = parse_age(age, &why)) < 0) {
            rc = dm_args_usage_error(&a, "--older-than: %s, not '%s'", why, age);
            dm_args_free(&a);
            return rc;
        }
        if (dm_arg_given(&a, "max-size"))
            o.max_size = dm_arg_int(&a, "max-size");
        o.dry_run = dm_arg_flag(&a, "dry-run");
    }
    char *cache = dm_cache_dir(dm_arg_str(&a, "cache"), NULL);
    rc = c == &du_cmd ? dm_cache_du(cache, stdout) : dm_cache_gc(cache, &o, stdout);
    if (rc)
        fprintf(stderr, "dmica %s: %s\n", c->name, dm_error());
    free(cache);
    dm_args_free(&a);
    return rc ? dm_error_exit() : 0;
}
