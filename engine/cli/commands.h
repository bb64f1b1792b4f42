/*
 * commands.h: the dmica commands besides run, plan, demo and ops (main.c). Each
 * takes argv with argv[0] the command's name and returns the process exit
 * status: 0 ok, 1 error (message on stderr), 2 usage error.
 */
#ifndef DM_COMMANDS_H
#define DM_COMMANDS_H

/*
 * `dmica tokenize --tokenizer DIR [--bos] FILE`: prints the ids of the whole
 * file (FILE "-" reads stdin) on stdout, separated by single spaces, then a
 * newline; --bos puts `<|endoftext|>` first. argv[0] is the command's name
 * ("tokenize"); options follow. Returns the exit status: 0 ok, 1 error
 * (message on stderr), 2 usage error.
 */
int dm_cmd_tokenize(int argc, char **argv);

/* `dmica activations --model DIR --hook HOOK --tokens TOKENS.npy --out ACTS.npy
 * [--no-center] [--batch N]`: TOKENS an integer array [B, T] (int32, int64 or
 * uint16), ACTS float32 [B*T, width], row b*T+t, written atomically. Returns
 * the process exit status (0, or 1 with the message printed). */
int dm_cmd_activations(int argc, char **argv);

int dm_cmd_sae(int argc, char **argv);
int dm_cmd_ica(int argc, char **argv);
int dm_cmd_analyze(int argc, char **argv);
int dm_cmd_top(int argc, char **argv);

/* argv[*i] as "--name VALUE" (advancing *i) or "--name=VALUE": the value, else NULL. */
const char *dm_arg_value(int argc, char **argv, int *i, const char *name);

#endif
