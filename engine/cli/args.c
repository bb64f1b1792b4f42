/*
 * args.c: command-line argument helpers shared by the commands.
 */
#include <string.h>

#include "commands.h"

const char *dm_arg_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (!strcmp(argv[*i], name) && *i + 1 < argc)
        return argv[++*i];
    if (!strncmp(argv[*i], name, n) && argv[*i][n] == '=')
        return argv[*i] + n + 1;
    return NULL;
}
