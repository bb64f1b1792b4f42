/*
 * args.h: the one argument parser of the dmica commands.
 *
 * A command declares its options in a table (dm_arg_spec: name, type, default
 * or required, range, help) and calls dm_args_parse(). The parser accepts
 * `--name VALUE` and `--name=VALUE`, checks every value against its type and
 * range (integers with strtoll, numbers finite, sizes through dm_parse_size),
 * collects positional arguments, answers `--help` / `-h` with help text made
 * from the same table, and reports every mistake as
 *
 *   dmica CMD: --opt: what is wrong
 *
 * on stderr. Commands then read values by option name (dm_arg_str,
 * dm_arg_int, ...); a name the table does not declare is a bug in the command
 * and stops the program with a message.
 */
#ifndef DM_ARGS_H
#define DM_ARGS_H

#include <stdint.h>
#include <stdio.h>

typedef enum {
    DM_ARG_STRING = 0, /* any text */
    DM_ARG_PATH,       /* a file or folder name: any non-empty text (opening it says what is wrong) */
    DM_ARG_INT,        /* int64, within [min, max] */
    DM_ARG_FLOAT,      /* a finite double, within [min, max] (exclusive at min when min_open) */
    DM_ARG_SIZE,       /* bytes: "512M", "4G" (dm_parse_size), within [min, max] */
    DM_ARG_BOOL,       /* true/false/yes/no/on/off/1/0 */
    DM_ARG_FLAG,       /* no value: present or not */
    DM_ARG_LIST,       /* a string that may be given several times, kept in order */
} dm_arg_type;

typedef struct {
    const char *name; /* without the dashes: "components" for --components */
    dm_arg_type type;
    const char *meta; /* the value's placeholder in the help: "K", "DIR" (NULL: by type) */
    const char *def;  /* default as text (parsed like a given value); NULL: none */
    int required;
    double min, max;  /* range of INT, FLOAT and SIZE values; both 0 (and min_open 0): any; max 0: no upper bound */
    int min_open;     /* FLOAT: the value must be above min, not equal to it */
    const char *help;
} dm_arg_spec;

typedef struct {
    const char *name;     /* "ica" */
    const char *synopsis; /* after "usage: dmica NAME ": "--in X.npy --components K --out DIR [options]" */
    const char *about;    /* a paragraph printed after the usage line (may be NULL) */
    const dm_arg_spec *opts; /* terminated by {NULL} */
    const char *positional;  /* placeholder of positional arguments ("PIPELINE.yaml"); NULL: none allowed */
    int min_pos, max_pos;    /* how many positional arguments */
} dm_arg_cmd;

typedef struct {
    int given;       /* on the command line (not by default) */
    const char *str; /* the text (given or default); NULL when neither */
    int64_t i;       /* INT, SIZE, BOOL, FLAG */
    double f;        /* FLOAT */
    const char **list; /* LIST: every value given, in order */
    int nlist;
} dm_arg_value;

typedef struct {
    const dm_arg_cmd *cmd;
    dm_arg_value *v; /* one per option of cmd->opts */
    int nopts;
    const char **pos; /* positional arguments */
    int npos;
} dm_args;

/*
 * Parses argv (argv[0] is the command's name) against cmd. Returns 0 when the
 * command should run, 1 after printing the help on stdout (the command then
 * exits 0), 2 after printing a usage error on stderr (exit 2). On 0 and 1 the
 * caller frees a with dm_args_free (also safe after 2).
 */
int dm_args_parse(const dm_arg_cmd *cmd, int argc, char **argv, dm_args *a);
void dm_args_free(dm_args *a);
/* The help text made from cmd's table (usage, about, options) on f. */
void dm_args_help(const dm_arg_cmd *cmd, FILE *f);

/* Values by option name. str is NULL for an option neither given nor
 * defaulted; int, float and flag read 0 then. */
const char *dm_arg_str(const dm_args *a, const char *name);
int64_t dm_arg_int(const dm_args *a, const char *name);
double dm_arg_float(const dm_args *a, const char *name);
int dm_arg_flag(const dm_args *a, const char *name); /* FLAG and BOOL */
int dm_arg_given(const dm_args *a, const char *name); /* on the command line, not by default */
const char *const *dm_arg_list(const dm_args *a, const char *name, int *n);

/* Prints "dmica CMD: " and the formatted message on stderr; returns 2 (usage). */
int dm_args_usage_error(const dm_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
