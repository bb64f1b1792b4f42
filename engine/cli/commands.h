/*
 * commands.h: the dmica commands besides run, plan, demo, stats and ops
 * (main.c). Each takes argv with argv[0] the command's name, parses it with
 * args.h, and returns the process exit status: 0 ok, 1 error (message on
 * stderr), 2 usage error.
 *
 * The commands that compute (stats, sae, activations, ica, analyze) write a
 * pipeline as YAML and run it through the engine (generated.c), so they are
 * the same nodes, checks and cache as `dmica run`. tokenize and top only read
 * (a vocabulary, a results file) and print: they run directly.
 */
#ifndef DM_COMMANDS_H
#define DM_COMMANDS_H

#include <stdint.h>

/*
 * `dmica tokenize --tokenizer DIR [--bos] FILE`: prints the ids of the whole
 * file (FILE "-" reads stdin) on stdout, separated by single spaces, then a
 * newline; --bos puts `<|endoftext|>` first.
 */
int dm_cmd_tokenize(int argc, char **argv);

/* `dmica activations --model DIR --hook HOOK --tokens TOKENS.npy --out ACTS.npy
 * [--no-center] [--batch N]`: TOKENS an integer array [B, T] (int32, int64 or
 * uint16), ACTS float32 [B*T, width], row b*T+t, written atomically; nothing
 * is left at ACTS on error. */
int dm_cmd_activations(int argc, char **argv);

/* `dmica sae --sae DIR --in ACTS.npy --residual E.npy [--recon R.npy] [--stats S.json] ...` */
int dm_cmd_sae(int argc, char **argv);
/* `dmica ica --in X.npy --components K --out DIR ...` */
int dm_cmd_ica(int argc, char **argv);
/* `dmica analyze --acts ACTS.npy --sae DIR --components K --out RUN_DIR ...` */
int dm_cmd_analyze(int argc, char **argv);
/* `dmica causal RUN_DIR [--tokens N] [--nulls N] ...`: the causal tests of a run
 * (its pipeline.yaml plus a causal node, through the engine and its cache). */
int dm_cmd_causal(int argc, char **argv);
/* `dmica top RUN_DIR --component N [--k 20] [--bottom] [--activations]` */
int dm_cmd_top(int argc, char **argv);
/* `dmica export RUN_DIR --format jsonl|neuronpedia [--out PATH] [--prompts DIR]`:
 * the run's components for autointerp and Neuronpedia (cmd_export.c, docs/exports.md). */
int dm_cmd_export(int argc, char **argv);
/* `dmica cache verify [--cache DIR] [--remove]` (argv[0] "verify"): checks
 * every cache entry's checksums; 1 if an entry is bad. */
int dm_cmd_cache_verify(int argc, char **argv);
/* `dmica cache du [--cache DIR]`, `dmica cache gc [--cache DIR] [--older-than AGE]
 * [--max-size SIZE] [--dry-run]` (cmd_cache.c) */
int dm_cmd_cache(int argc, char **argv);

/* ---- generated.c: running a pipeline a command wrote ---------------------- */

/* A product of the generated pipeline (a file its nodes publish) and the path
 * the user asked for it at; path NULL: not wanted. */
typedef struct {
    const char *product;
    const char *path;
    char **text; /* if not NULL: gets the product's content (malloc'd, NUL-terminated) */
} dm_cli_product;

/*
 * Runs the pipeline `yaml` for command `cmd` and moves the products listed in
 * want[0..nwant) to their paths (atomically: renamed from the run's results
 * folder, or copied beside its path and renamed over it across file systems;
 * never a name shared with a kept cache). The run's results folder and, unless
 * cache is given, its cache are temporary folders beside the first wanted path,
 * removed afterwards, so nothing but the wanted files is left, and nothing at
 * all on error. Prints the error as "dmica CMD: ..." and returns the exit
 * status (0 or 1).
 */
int dm_cli_run_to_files(const char *cmd, const char *yaml, const char *cache, int64_t memory, int threads,
                        int quiet, const dm_cli_product *want, int nwant);

#endif
