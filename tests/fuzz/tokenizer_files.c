/*
 * tokenizer_files.c: fuzzes the loading of a tokenizer folder
 * (operators/kernels/tokenizer.c: vocab.json, merges.txt, the tables built
 * from them), then encodes and decodes text with what loaded.
 *
 * The input is vocab.json, FZ_SEP, merges.txt, FZ_SEP, text to encode.
 */
#include "fuzz.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *parts[3];
    size_t lens[3];
    fz_split(data, size, 3, parts, lens);
    char *v = fz_write("tok/vocab.json", parts[0], lens[0]);
    char *m = fz_write("tok/merges.txt", parts[1], lens[1]);
    char *dir = strdup(v);
    *strrchr(dir, '/') = 0;
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    if (tok) {
        int32_t *ids;
        size_t n;
        if (dm_tokenizer_encode(tok, (const char *)parts[2], lens[2], &ids, &n) == 0) {
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= dm_tokenizer_vocab_size(tok) || !dm_tokenizer_token_text(tok, ids[i]))
                    abort(); /* every id is a token of the vocabulary */
            free(dm_tokenizer_decode(tok, ids, n, NULL));
            free(ids);
        }
        dm_token_ids out = DM_TOKEN_IDS_INIT;
        dm_tokenizer_encode_prefix(tok, (const char *)parts[2], lens[2], 3, &out);
        if (out.n > 3)
            abort();
        dm_token_ids_release(&out);
        size_t bl;
        for (int32_t id = 0; id < dm_tokenizer_vocab_size(tok) && id < 1024; id++)
            dm_tokenizer_token_bytes(tok, id, &bl);
        dm_tokenizer_free(tok);
    }
    fz_end();
    free(dir);
    free(v);
    free(m);
    return 0;
}
