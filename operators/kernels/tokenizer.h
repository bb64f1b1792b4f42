/*
 * tokenizer.h: byte-pair encoding exact to Hugging Face `tokenizers`, for
 * GPT-2 (byte-level BPE from vocab.json and merges.txt, with `<|endoftext|>`
 * added as a special token: the encoder of OpenAI's gpt-2 repository,
 * src/encoder.py, and Hugging Face's GPT2Tokenizer) and for any BPE
 * tokenizer.json the library writes whose parts dmica knows (Gemma's: byte
 * fallback, its Replace normalizer, <bos> <eos> <pad> ... as added tokens;
 * GPT-2's; docs/tokenizer.md lists the parts).
 *
 * Text is bytes. Invalid UTF-8 is first replaced by U+FFFD, one per maximal
 * invalid subsequence, exactly as Python's bytes.decode("utf-8", "replace")
 * does: that is how invalid bytes reach the reference, which works on str.
 * Added tokens in the text (the literal `<|endoftext|>` for GPT-2, `<bos>`,
 * `<start_of_turn>`, ... for Gemma) become their own ids, as in the library.
 * Encoding never adds a BOS: callers that want one put dm_tokenizer_bos first
 * (the library's encode(text, add_special_tokens=True) is that id, then
 * encode(text)).
 *
 * A dm_tokenizer is reusable but not thread-safe: encoding updates its word
 * cache and scratch buffers. Use one per thread (loading takes ~0.1 s).
 */
#ifndef DM_TOKENIZER_H
#define DM_TOKENIZER_H

#include "dm.h"

typedef struct dm_tokenizer dm_tokenizer;

/* A growable array of token ids; DM_TOKEN_IDS_INIT is empty. The ids belong to
 * the struct: release them with dm_token_ids_release (free(3) of .ids also). */
typedef struct {
    int32_t *ids;
    size_t n;
    size_t cap;
} dm_token_ids;
#define DM_TOKEN_IDS_INIT {NULL, 0, 0}

void dm_token_ids_push(dm_token_ids *t, int32_t id);
void dm_token_ids_release(dm_token_ids *t); /* leaves an empty array */

/*
 * Loads a tokenizer from dir:
 *   - dir/vocab.json and dir/merges.txt when the folder has both (a Hugging
 *     Face GPT-2 folder has them, and a tokenizer.json that says the same);
 *   - else dir/tokenizer.json (a Gemma folder has only that);
 *   - dir may also name a tokenizer.json file itself.
 * NULL on error, with a message naming the file and the line (merges.txt) or
 * the key (tokenizer.json: "model.merges[12]", "normalizer.type"). A folder
 * with none of the files reports dir/vocab.json missing. Free with
 * dm_tokenizer_free (accepts NULL).
 */
dm_tokenizer *dm_tokenizer_load(const char *dir);
void dm_tokenizer_free(dm_tokenizer *tok);

/* One past the largest id of the vocabulary and the added tokens (50257 for
 * GPT-2, 256000 for Gemma). */
int32_t dm_tokenizer_vocab_size(const dm_tokenizer *tok);
/* The id of `<|endoftext|>` (50256 for GPT-2), -1 if the vocabulary lacks it. */
int32_t dm_tokenizer_eot(const dm_tokenizer *tok);
/*
 * The id that starts a sequence: the special token of tokenizer.json's
 * TemplateProcessing post-processor ("<bos> $A": Gemma's <bos>, 2), else
 * `<|endoftext|>` (GPT-2's BOS, 50256) when the vocabulary has it and no
 * template says otherwise; -1 when there is none ("$A" alone, or neither).
 */
int32_t dm_tokenizer_bos(const dm_tokenizer *tok);
/*
 * 1 when a text may be cut after a '\n' that has printable ASCII on both
 * sides ("x\ny") and its parts encoded apart give the ids of the whole: true
 * of GPT-2's pipeline (its regex never puts such a newline into a word with
 * its neighbours), false where a normalizer, another pre-tokenizer or no
 * pre-tokenizer (Gemma: a piece of text is one BPE word) could join them.
 */
int dm_tokenizer_cut_is_safe(const dm_tokenizer *tok);

/*
 * Appends the ids of text[0, len) to out. Any bytes are accepted (NUL too).
 * Returns 0, or -1 only if the regex engine fails (message set); out then
 * holds the ids of a prefix of the text.
 */
int dm_tokenizer_encode_append(dm_tokenizer *tok, const char *text, size_t len,
                               dm_token_ids *out);
/* As encode_append, but appends only the first max_new ids of the text, and
 * stops work there: what `truncate` windows need from a long document. */
int dm_tokenizer_encode_prefix(dm_tokenizer *tok, const char *text, size_t len, size_t max_new,
                               dm_token_ids *out);
/* As encode_append into a fresh array: *ids (yours, free(3)) gets *n ids.
 * On error *ids is NULL and *n 0. */
int dm_tokenizer_encode(dm_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n);

/*
 * The bytes that ids[0, n) stand for, concatenated: each token's bytes (see
 * dm_tokenizer_token_bytes); may be invalid UTF-8 when a multi-byte character
 * is split across a cut. Returns a
 * malloc'd buffer, NUL-terminated, that you own (free(3)); *len (if not NULL)
 * gets its length without the NUL. NULL if an id is not in the vocabulary.
 */
char *dm_tokenizer_decode(const dm_tokenizer *tok, const int32_t *ids, size_t n, size_t *len);

/* One token as a string, the way Hugging Face `tokenizers` decodes it alone
 * (TransformerLens's to_str_tokens, delphi's str_tokens): its bytes with each
 * maximal invalid UTF-8 subpart replaced by U+FFFD, as Rust's
 * String::from_utf8_lossy (the ByteLevel decoder) and Python's
 * bytes.decode("utf-8", "replace") do. malloc'd and NUL-terminated (free(3));
 * *len (if not NULL) gets its length. NULL if id is not in the vocabulary. */
char *dm_tokenizer_decode_token(const dm_tokenizer *tok, int32_t id, size_t *len);

/* The bytes one token stands for (not NUL-terminated; *len gets the length),
 * owned by the tokenizer. NULL if id is not in the vocabulary. Byte-level
 * vocabularies (GPT-2) map symbols back to bytes; for tokenizer.json the
 * decoder's per-token steps apply (Replace "▁" -> " ", <0xNN> -> the byte),
 * not its whole-text ones (Strip, Metaspace's first space). */
const char *dm_tokenizer_token_bytes(const dm_tokenizer *tok, int32_t id, size_t *len);
/* The token as the vocabulary spells it ("Ġworld"; an added token's content),
 * NUL-terminated, owned by the tokenizer. NULL if id is not in the vocabulary. */
const char *dm_tokenizer_token_text(const dm_tokenizer *tok, int32_t id);

#endif
