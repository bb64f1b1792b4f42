/*
 * tokenizer_json.c: fuzzes loading a tokenizer.json (operators/kernels/
 * tokenizer_json.c: the model, added tokens, normalizers, pre-tokenizers,
 * post-processor and decoder it reads) and encoding text with what loaded,
 * and encoding the same text with a fixed tokenizer of Gemma's structure
 * (tests/golden/tokenizer_json/gemma: added tokens, the Replace normalizer,
 * BPE with byte fallback over whole pieces).
 *
 * The input is tokenizer.json, FZ_SEP, text to encode. Checks, besides the
 * sanitizers: every id is in the vocabulary; the first k ids of
 * encode_prefix are the first k of encode; with Gemma's tokenizer, decoding
 * gives the text back with "▁" read as a space (byte fallback loses nothing)
 * when the text is valid UTF-8.
 */
#include "fuzz.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dm_tokenizer *gemma;

/* Encodes text with tok and checks the ids; returns them (yours) in *out. */
static void check(dm_tokenizer *tok, const char *text, size_t len, int32_t **out, size_t *out_n)
{
    int32_t *ids;
    size_t n;
    if (dm_tokenizer_encode(tok, text, len, &ids, &n)) {
        *out = NULL, *out_n = 0; /* a user regex may fail (match limit): an error, not a crash */
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= dm_tokenizer_vocab_size(tok) || !dm_tokenizer_token_text(tok, ids[i]))
            abort();
    size_t k = n < 5 ? n : 5;
    dm_token_ids pre = DM_TOKEN_IDS_INIT;
    if (dm_tokenizer_encode_prefix(tok, text, len, k, &pre) == 0 &&
        (pre.n != k || (k && memcmp(pre.ids, ids, k * sizeof *ids)))) {
        fprintf(stderr, "tokenizer_json: encode_prefix(%zu) is not the start of encode\n", k);
        abort();
    }
    dm_token_ids_release(&pre);
    *out = ids, *out_n = n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!gemma && !(gemma = dm_tokenizer_load(fz_src("tests/golden/tokenizer_json/gemma")))) {
        fprintf(stderr, "tokenizer_json: %s\n", dm_error());
        abort();
    }
    const uint8_t *parts[2];
    size_t lens[2];
    fz_split(data, size, 2, parts, lens);
    const char *text = (const char *)parts[1];
    char *path = fz_write("tok/tokenizer.json", parts[0], lens[0]);
    dm_tokenizer *tok = dm_tokenizer_load(path);
    int32_t *ids;
    size_t n;
    if (tok) {
        check(tok, text, lens[1], &ids, &n);
        free(dm_tokenizer_decode(tok, ids, n, NULL));
        free(ids);
        dm_tokenizer_bos(tok);
        size_t bl;
        for (int32_t id = 0; id < dm_tokenizer_vocab_size(tok) && id < 1024; id++)
            dm_tokenizer_token_bytes(tok, id, &bl);
        dm_tokenizer_free(tok);
    }
    fz_end();

    check(gemma, text, lens[1], &ids, &n);
    if (!ids)
        abort(); /* Gemma's pipeline has no regex that could fail */
    size_t len;
    char *back = dm_tokenizer_decode(gemma, ids, n, &len);
    if (!back)
        abort();
    if (fz_valid_utf8(parts[1], lens[1])) {
        /* the text with each "▁" a space is what decoding gives */
        char *want = malloc(lens[1] + 1);
        size_t m = 0;
        for (size_t i = 0; i < lens[1];) {
            if (i + 3 <= lens[1] && memcmp(text + i, "\xe2\x96\x81", 3) == 0)
                want[m++] = ' ', i += 3;
            else
                want[m++] = text[i++];
        }
        if (len != m || memcmp(back, want, m)) {
            fprintf(stderr, "tokenizer_json: Gemma's decode(encode(text)) is not the text\n");
            abort();
        }
        free(want);
    }
    free(back);
    free(ids);
    free(path);
    return 0;
}
