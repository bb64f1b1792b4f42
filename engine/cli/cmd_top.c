/*
 * cmd_top.c: `dmica top`, a component's top tokens from a run folder.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "engine.h"
#include "fs.h"
#include "gpt2.h"
#include "npy.h"
#include "sae.h"
#include "tokenizer.h"
/* ---- dmica top ------------------------------------------------------------ */

int dm_cmd_top(int argc, char **argv)
{
    const char *run = NULL, *v;
    long long comp = -1, k = 20;
    int bottom = 0, activations = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: dmica top RUN_DIR --component N [--k 20] [--bottom] [--activations]\n"
                 "\n"
                 "A component's top (or, with --bottom, most negative) tokens with their contexts, from\n"
                 "RUN_DIR/ica_top_examples.json (by source value; --activations: by the plan's activation\n"
                 "projection, RUN_DIR/ica_activation_top_examples.json).");
            return 0;
        } else if ((v = dm_arg_value(argc, argv, &i, "--component"))) {
            comp = atoll(v);
        } else if ((v = dm_arg_value(argc, argv, &i, "--k"))) {
            k = atoll(v);
        } else if (!strcmp(argv[i], "--bottom")) {
            bottom = 1;
        } else if (!strcmp(argv[i], "--activations")) {
            activations = 1;
        } else if (argv[i][0] != '-' && !run) {
            run = argv[i];
        } else {
            fprintf(stderr, "dmica top: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!run || comp < 0 || k < 1) {
        fprintf(stderr, "dmica top: RUN_DIR and --component N are required (see dmica top --help)\n");
        return 2;
    }
    char *path = dm_xasprintf("%s/%s", run, activations ? "ica_activation_top_examples.json" : "ica_top_examples.json");
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j) {
        fprintf(stderr, "dmica top: %s: %s\n", path, err.text);
        free(path);
        return 1;
    }
    json_t *comps = json_object_get(j, "components");
    json_t *c = json_array_get(comps, (size_t)comp);
    if (!c) {
        fprintf(stderr, "dmica top: %s has %zu components; no component %lld\n", path, json_array_size(comps), comp);
        json_decref(j);
        free(path);
        return 1;
    }
    json_t *list = json_object_get(c, bottom ? "bottom" : "top");
    printf("component %lld, %s %lld by %s (%s)\n", comp, bottom ? "bottom" : "top", k,
           activations ? "activation projection" : "source value", path);
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
    {
        if ((long long)i >= k)
            break;
        printf("%+9.3f  ", json_number_value(json_object_get(e, "value")));
        if (json_object_get(e, "token")) {
            const char *parts[3] = {json_string_value(json_object_get(e, "left")),
                                    json_string_value(json_object_get(e, "token")),
                                    json_string_value(json_object_get(e, "right"))};
            for (int p = 0; p < 3; p++) {
                if (p == 1)
                    fputs("[[", stdout);
                for (const char *s = parts[p] ? parts[p] : ""; *s; s++)
                    fputs(*s == '\n' ? "\\n" : *s == '\t' ? "\\t" : (char[2]){*s, 0}, stdout);
                if (p == 1)
                    fputs("]]", stdout);
            }
            printf("   (window %lld, position %lld)\n", (long long)json_integer_value(json_object_get(e, "window")),
                   (long long)json_integer_value(json_object_get(e, "position")));
        } else {
            printf("row %lld\n", (long long)json_integer_value(json_object_get(e, "row")));
        }
    }
    json_decref(j);
    free(path);
    return 0;
}
