/*
 * cmd_tokenize.c: `dmica tokenize`, the token ids of a text file (GPT-2's
 * vocab.json and merges.txt, or a tokenizer.json such as Gemma's).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "fs.h"
#include "tokenizer.h"

static const dm_arg_spec tokenize_specs[] = {
    {"tokenizer", DM_ARG_PATH, "DIR", NULL, 1, 0, 0, 0,
     "folder with vocab.json and merges.txt (GPT-2), or with tokenizer.json (Gemma); or a "
     "tokenizer.json file"},
    {"bos", DM_ARG_FLAG, NULL, NULL, 0, 0, 0, 0,
     "put the tokenizer's BOS first (<|endoftext|> 50256 for GPT-2, <bos> for Gemma), as "
     "SAELens does"},
    {NULL},
};

/* A read, not a computation: the ids go to stdout, nothing is cached, so the
 * command calls the tokenizer directly rather than through a pipeline. */
static const dm_arg_cmd tokenize_cmd = {
    "tokenize", "--tokenizer DIR [--bos] FILE",
    "Prints the token ids of FILE's whole text on stdout, separated by single\n"
    "spaces, exactly as Hugging Face tokenizers gives them. FILE - reads stdin.\n",
    tokenize_specs, "FILE", 1, 1,
};

static char *dm_put_id(char *p, int32_t id)
{
    char tmp[12];
    int k = 0;
    uint32_t v = (uint32_t)id;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (k)
        *p++ = tmp[--k];
    return p;
}

/* Prints the ids of path's text; returns the exit status. */
static int tokenize(const char *dir, const char *path, int bos)
{
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    if (!tok) {
        fprintf(stderr, "dmica tokenize: %s\n", dm_error());
        return 1;
    }
    if (bos && dm_tokenizer_bos(tok) < 0) {
        fprintf(stderr, "dmica tokenize: %s: the tokenizer has no BOS token for --bos (no "
                "<|endoftext|>, no TemplateProcessing post-processor naming one)\n", dir);
        dm_tokenizer_free(tok);
        return 1;
    }
    size_t len;
    char *text = dm_read_text(path, &len);
    dm_token_ids ids = DM_TOKEN_IDS_INIT;
    if (bos && text)
        dm_token_ids_push(&ids, dm_tokenizer_bos(tok));
    int rc = text ? dm_tokenizer_encode_append(tok, text, len, &ids) : -1;
    free(text);
    dm_tokenizer_free(tok);
    if (rc != 0) {
        fprintf(stderr, "dmica tokenize: %s\n", dm_error());
        dm_token_ids_release(&ids);
        return 1;
    }

    char buf[1 << 16];
    char *p = buf;
    for (size_t i = 0; i < ids.n; i++) {
        if (p - buf > (ptrdiff_t)sizeof buf - 16) {
            fwrite(buf, 1, (size_t)(p - buf), stdout);
            p = buf;
        }
        if (i > 0)
            *p++ = ' ';
        p = dm_put_id(p, ids.ids[i]);
    }
    *p++ = '\n';
    fwrite(buf, 1, (size_t)(p - buf), stdout);
    dm_token_ids_release(&ids);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "dmica tokenize: writing the ids to stdout failed: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

int dm_cmd_tokenize(int argc, char **argv)
{
    dm_args a;
    int rc = dm_args_parse(&tokenize_cmd, argc, argv, &a);
    if (rc) {
        dm_args_free(&a);
        return rc == 1 ? 0 : rc;
    }
    const char *dir = dm_arg_str(&a, "tokenizer"), *path = a.pos[0];
    int bos = dm_arg_flag(&a, "bos");
    rc = tokenize(dir, path, bos);
    dm_args_free(&a);
    return rc;
}

