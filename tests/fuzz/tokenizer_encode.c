/*
 * tokenizer_encode.c: fuzzes encoding arbitrary bytes with the real GPT-2
 * tokenizer (tests/data/gpt2-tokenizer; operators/kernels/tokenizer.c: UTF-8
 * repair, the pre-tokenizer regex, BPE, the word cache, <|endoftext|>).
 *
 * Checks, besides the sanitizers: every id is in the vocabulary; decoding
 * valid UTF-8's ids gives the input back (byte-level BPE loses nothing); the
 * first k ids of encode_prefix are the first k of encode.
 */
#include "fuzz.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dm_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok && !(tok = dm_tokenizer_load(fz_src("tests/data/gpt2-tokenizer")))) {
        fprintf(stderr, "tokenizer_encode: %s\n", dm_error());
        abort();
    }
    int32_t *ids;
    size_t n;
    if (dm_tokenizer_encode(tok, (const char *)data, size, &ids, &n)) {
        fprintf(stderr, "tokenizer_encode: %s\n", dm_error());
        abort(); /* only the regex engine may fail, and it must not on any text */
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= dm_tokenizer_vocab_size(tok))
            abort();
    size_t len;
    char *back = dm_tokenizer_decode(tok, ids, n, &len);
    if (!back || (fz_valid_utf8(data, size) && (len != size || memcmp(back, data, size)))) {
        fprintf(stderr, "tokenizer_encode: decode(encode(text)) is not the text\n");
        abort();
    }
    free(back);
    size_t k = n < 5 ? n : 5;
    dm_token_ids pre = DM_TOKEN_IDS_INIT;
    if (dm_tokenizer_encode_prefix(tok, (const char *)data, size, k, &pre) || pre.n != k ||
        (k && memcmp(pre.ids, ids, k * sizeof *ids))) {
        fprintf(stderr, "tokenizer_encode: encode_prefix(%zu) is not the start of encode\n", k);
        abort();
    }
    dm_token_ids_release(&pre);
    free(ids);
    return 0;
}
