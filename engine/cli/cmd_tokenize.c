/*
 * cmd_tokenize.c: `dmica tokenize`, the GPT-2 token ids of a text file.
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
/* ---- command ----------------------------------------------------------- */

static const char dm_tokenize_usage[] =
    "usage: dmica tokenize --tokenizer DIR [--bos] FILE\n"
    "\n"
    "Prints the GPT-2 token ids of FILE's whole text on stdout, separated by\n"
    "single spaces. FILE - reads stdin.\n"
    "\n"
    "  --tokenizer DIR  folder with vocab.json and merges.txt (a Hugging Face\n"
    "                   GPT-2 model folder has both)\n"
    "  --bos            put <|endoftext|> (50256) first, as SAELens does\n"
    "  -h, --help       show this help\n";

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

int dm_cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL, *path = NULL;
    int bos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(dm_tokenize_usage, stdout);
            return 0;
        } else if (strcmp(a, "--bos") == 0) {
            bos = 1;
        } else if (strcmp(a, "--tokenizer") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dmica tokenize: --tokenizer needs a folder\n%s",
                        dm_tokenize_usage);
                return 2;
            }
            dir = argv[++i];
        } else if (strncmp(a, "--tokenizer=", 12) == 0) {
            dir = a + 12;
        } else if (a[0] == '-' && a[1] != 0) {
            fprintf(stderr, "dmica tokenize: unknown option %s\n%s", a, dm_tokenize_usage);
            return 2;
        } else if (path) {
            fprintf(stderr, "dmica tokenize: one FILE only (got %s and %s)\n%s", path, a,
                    dm_tokenize_usage);
            return 2;
        } else {
            path = a;
        }
    }
    if (!dir || !path) {
        fprintf(stderr, "dmica tokenize: %s\n%s", !dir ? "--tokenizer DIR is required" : "no FILE",
                dm_tokenize_usage);
        return 2;
    }

    dm_tokenizer *tok = dm_tokenizer_load(dir);
    if (!tok) {
        fprintf(stderr, "dmica tokenize: %s\n", dm_error());
        return 1;
    }
    if (bos && dm_tokenizer_eot(tok) < 0) {
        fprintf(stderr, "dmica tokenize: %s/vocab.json has no <|endoftext|> token for --bos\n",
                dir);
        dm_tokenizer_free(tok);
        return 1;
    }
    size_t len;
    char *text = dm_read_text(path, &len);
    dm_token_ids ids = DM_TOKEN_IDS_INIT;
    if (bos && text)
        dm_token_ids_push(&ids, dm_tokenizer_eot(tok));
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
