/*
 * cmd_cache_verify.c: `dmica cache verify [--cache DIR] [--remove]`, every cache
 * entry checked against the checksums it recorded (cache.c, dm_cache_verify).
 */
#include <stdio.h>
#include <stdlib.h>

#include "args.h"
#include "commands.h"
#include "engine.h"

static const dm_arg_spec verify_specs[] = {
    {"cache", DM_ARG_PATH, "DIR", NULL, 0, 0, 0, 0, "cache folder (default: $DMICA_CACHE, else .dmica-cache)"},
    {"remove", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "delete the bad entries (their nodes rerun next time)"},
    {NULL},
};

static const dm_arg_cmd verify_cmd = {
    "cache verify", "[--cache DIR] [--remove]",
    "Checks every entry of the cache: each tensor and product file against the size and XXH3 checksum\n"
    "its node.json recorded, each spill chunk against its XXH64. Prints one line per problem (node,\n"
    "file, what is wrong) and exits 1 if an entry is bad; with --remove, bad entries are deleted.\n",
    verify_specs, NULL, 0, 0,
};

static void report(void *arg, const char *key, const char *node, const char *file, const char *problem)
{
    (void)arg;
    printf("bad entry %s (node '%s'): %s: %s\n", key, node ? node : "?", file ? file : "?", problem);
}

int dm_cmd_cache_verify(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&verify_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    char *cache = dm_cache_dir(dm_arg_str(&a, "cache"), NULL);
    int remove = dm_arg_flag(&a, "remove"), n = 0;
    dm_args_free(&a);
    int nbad = dm_cache_verify(cache, remove, report, NULL, &n);
    if (nbad < 0) {
        fprintf(stderr, "dmica cache verify: %s\n", dm_error());
        free(cache);
        return dm_error_exit();
    }
    fflush(stdout);
    fprintf(stderr, "dmica cache verify: %s: %d entr%s checked, %d bad%s\n", cache, n, n == 1 ? "y" : "ies", nbad,
            nbad && remove ? " (removed)" : "");
    free(cache);
    return nbad ? 1 : 0;
}
