/*
 * cmd_top.c: `dmica top`, a component's top tokens from a run folder.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "dm.h"

static const dm_arg_spec top_specs[] = {
    {"component", DM_ARG_INT, "N", NULL, 1, 0, 1e9, 0, "the component (0-based)"},
    {"k", DM_ARG_INT, "K", "20", 0, 1, 1e9, 0, "examples to print"},
    {"bottom", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0, "the most negative examples instead of the top ones"},
    {"activations", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0,
     "by the activations' projection on the direction (ica_activation_top_examples.json)"},
    {NULL},
};

/* A read of a results file, printed: nothing to compute or cache, so no
 * pipeline (the topk node that made the file is the computation). */
static const dm_arg_cmd top_cmd = {
    "top", "RUN_DIR --component N [--k 20] [--bottom] [--activations]",
    "A component's top (or, with --bottom, most negative) tokens with their contexts, from\n"
    "RUN_DIR/ica_top_examples.json (by source value; --activations: by the activations' projection,\n"
    "RUN_DIR/ica_activation_top_examples.json).\n",
    top_specs, "RUN_DIR", 1, 1,
};

int dm_cmd_top(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&top_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *run = a.pos[0];
    long long comp = dm_arg_int(&a, "component"), k = dm_arg_int(&a, "k");
    int bottom = dm_arg_flag(&a, "bottom"), activations = dm_arg_flag(&a, "activations");
    dm_args_free(&a);
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
