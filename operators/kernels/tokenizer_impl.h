/*
 * tokenizer_impl.h: private to operators/kernels/tokenizer*.c. The tokenizer's
 * state, shared by the encoder (tokenizer.c, which also loads GPT-2's
 * vocab.json and merges.txt) and the loader of Hugging Face tokenizers'
 * tokenizer.json (tokenizer_json.c). Callers use tokenizer.h.
 *
 * A tokenizer is the pipeline of Hugging Face tokenizers (tokenizers/src/
 * tokenizer/mod.rs, encode_single_sequence):
 *   added tokens   split out of the raw text (those with normalized false)
 *   normalizer     each piece between them rewritten (Replace, Prepend, Strip)
 *   added tokens   split out of the normalized pieces (normalized true)
 *   pre-tokenizer  each piece cut into words (ByteLevel, Split, Metaspace)
 *   model          BPE of each word: its characters (or, after ByteLevel, its
 *                  bytes) are the first symbols, merged by rank
 *   post-processor a BOS id before the text (TemplateProcessing), added by the
 *                  caller through dm_tokenizer_bos
 * GPT-2's vocab.json and merges.txt give the pipeline of GPT2TokenizerFast:
 * `<|endoftext|>` as the one added token and ByteLevel as the pre-tokenizer.
 */
#ifndef DM_TOKENIZER_IMPL_H
#define DM_TOKENIZER_IMPL_H

#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#define DM_MAX_VOCAB (1 << 24)
#define DM_BYTE_CP_END 0x144 /* bytes_to_unicode maps onto U+0021..U+0143 */

/* Normalizers (tokenizers/src/normalizers/). */
enum { DM_NORM_REPLACE, DM_NORM_PREPEND, DM_NORM_STRIP };
typedef struct {
    int kind;
    char *find;       /* Replace with a String pattern (NULL with a Regex one) */
    size_t find_len;
    pcre2_code *re;   /* Replace with a Regex pattern */
    char *text;       /* Replace's content, Prepend's prefix */
    size_t text_len;
    int left, right;  /* Strip */
} dm_norm_step;

/* Pre-tokenizers (tokenizers/src/pre_tokenizers/). */
enum { DM_PRE_BYTELEVEL, DM_PRE_SPLIT, DM_PRE_METASPACE };
/* SplitDelimiterBehavior (tokenizers/src/tokenizer/normalizer.rs) */
enum { DM_SPLIT_REMOVED, DM_SPLIT_ISOLATED, DM_SPLIT_MERGED_PREV, DM_SPLIT_MERGED_NEXT,
       DM_SPLIT_CONTIGUOUS };
enum { DM_PREPEND_ALWAYS, DM_PREPEND_FIRST, DM_PREPEND_NEVER };
typedef struct {
    int kind;
    int add_prefix_space, use_regex; /* ByteLevel */
    char *find;                      /* Split with a String pattern */
    size_t find_len;
    pcre2_code *re;                  /* Split with a Regex pattern */
    int behavior, invert;            /* Split */
    char rep[8];                     /* Metaspace's replacement character, UTF-8 */
    size_t rep_len;
    int prepend_scheme, split;       /* Metaspace */
    /* scratch, reused word after word */
    char *buf;
    size_t buf_cap;
    size_t *span;                    /* (start, end, is_match) triples */
    size_t span_cap;
} dm_pre_step;

/* An added token (tokenizers/src/tokenizer/added_vocabulary.rs). */
typedef struct {
    uint32_t off, len;               /* content, in added_text */
    int32_t id;
    uint8_t single_word, lstrip, rstrip, normalized, special;
} dm_added;

/* A byte trie of added tokens' contents, for leftmost-longest matching. */
typedef struct {
    int32_t child, sibling;          /* -1: none */
    int32_t token;                   /* index in added[] ending here, or -1 */
    uint8_t byte;
} dm_trie_node;
typedef struct {
    dm_trie_node *node;              /* node[0] is the root */
    size_t n, cap;
    uint8_t first[256];              /* 1 for bytes some content starts with */
    int only_first;                  /* the one byte all contents start with, or -1 */
    int empty;                       /* no contents */
} dm_trie;

typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len; /* key_len 0: empty slot */
    uint32_t ids_off, n_ids;
} dm_cache_slot;

/* A candidate merge of the symbols at left and its right neighbour. */
typedef struct {
    int32_t rank, left;
    int32_t id_left, id_right; /* the pair as it was when pushed */
    int32_t merged;
} dm_bpe_pair;

struct dm_tokenizer {
    int32_t vocab_size;
    int32_t eot;                  /* id of <|endoftext|>, or -1 */
    int32_t bos;                  /* the id the post-processor puts first, or -1 */
    uint32_t *bytes_off;          /* (vocab_size+1) into token_bytes */
    char *token_bytes;            /* the bytes each token stands for */
    uint32_t *text_off;           /* (vocab_size) into token_text; UINT32_MAX: no such id */
    char *token_text;             /* tokens as the vocabulary spells them */

    /* the model's vocabulary: token text -> id, open addressing on token_text */
    int32_t *vocab_slot;          /* (vocab_mask+1); -1 empty */
    uint64_t vocab_mask;

    /* the model's first symbols */
    int byte_level;               /* words are bytes, each the symbol bytes_to_unicode names */
    int all_bytes;                /* every byte's symbol is in the vocabulary */
    int32_t byte_id[256];         /* id of each single byte's symbol (byte_level), or -1 */
    char byte_sym[256][4];        /* each byte's symbol, UTF-8 (byte_level) */
    uint8_t byte_sym_len[256];
    int byte_fallback;            /* unknown characters become <0xNN> tokens */
    int32_t fallback_id[256];     /* id of <0xNN>, or -1 */
    int32_t unk;                  /* id of the model's unk_token, or -1 */
    int fuse_unk, ignore_merges;

    /* merges: (id_left, id_right) -> rank and merged id, open addressing */
    uint64_t *pair_key;           /* (pair_mask+1); UINT64_MAX empty */
    int32_t *pair_rank, *pair_merged;
    uint64_t pair_mask;

    /* the pipeline before the model */
    dm_added *added;
    size_t n_added;
    char *added_text;
    dm_trie raw_trie, norm_trie;  /* added tokens with normalized false / true */
    dm_norm_step *norm;
    size_t n_norm;
    dm_pre_step *pre;
    size_t n_pre;
    int cut_safe;                 /* see dm_tokenizer_cut_is_safe */

    pcre2_code *re;               /* GPT-2's pre-tokenisation regex (ByteLevel) */
    pcre2_code *word_re;          /* one \w character (single_word added tokens) */
    pcre2_match_data *match;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;

    dm_cache_slot *cache;         /* (DM_CACHE_SLOTS) */
    uint32_t cache_entries;
    char *cache_keys;             /* (DM_CACHE_KEY_BYTES) */
    uint32_t cache_keys_used;
    int32_t *cache_ids;           /* (DM_CACHE_ID_COUNT) */
    uint32_t cache_ids_used;

    /* BPE scratch, grown to the longest word seen */
    size_t sym_cap;
    int32_t *sym_id, *sym_prev, *sym_next;
    dm_bpe_pair *heap;
    size_t heap_cap;

    char *clean;                  /* UTF-8-repaired copy of the text being encoded */
    size_t clean_cap;
    char *norm_buf[2];            /* normalizer output, ping-pong */
    size_t norm_cap[2];
    char *mapped;                 /* a byte-level word's symbols, for ignore_merges */
    size_t mapped_cap;
};

/* Shared by the loaders (tokenizer.c). */
void dm_bytes_to_unicode(uint32_t byte_cp[256], int16_t cp_byte[DM_BYTE_CP_END]);
size_t dm_utf8_put(char *out, uint32_t cp);
int dm_utf8_step(const unsigned char *s, size_t n);
int dm_tok_compile(pcre2_code **re, const char *pattern, size_t len, const char *what);
/* Allocates the merge table for up to n merges. */
void dm_tok_pairs_init(dm_tokenizer *tok, size_t n);
void dm_tok_pair_put(dm_tokenizer *tok, int32_t a, int32_t b, int32_t rank, int32_t merged);
/* Builds vocab_slot from token_text for ids [0, n_model) that are set. */
void dm_tok_vocab_index(dm_tokenizer *tok);
/* The model vocabulary's id of s[0, n), or -1. */
int32_t dm_tok_vocab_find(const dm_tokenizer *tok, const char *s, size_t n);
/* An empty trie; adding s[0, n) (copied) makes it match added[token]. */
void dm_tok_trie_init(dm_trie *t);
void dm_tok_trie_add(dm_trie *t, const char *s, size_t n, int32_t token);
/* Applies the normalizer to s[0, n); returns its output (s itself when there
 * is no normalizer), *out_len its length. The result lives until the next call. */
const char *dm_tok_normalize(dm_tokenizer *tok, const char *s, size_t n, size_t *out_len);
/* GPT-2's regex in its exact PCRE2 form when pattern is tokenizers' spelling
 * of it, else pattern. */
const char *dm_tok_regex_for(const char *pattern);
/* The bytes a byte-level token's text stands for, into out (at most len
 * bytes); returns their count. */
size_t dm_tok_byte_decode(const char *text, size_t len, char *out);
/* Creates the match data and JIT stack every regex match uses (once). */
int dm_tok_match_init(dm_tokenizer *tok);
/* The final set-up common to both loaders: regexes, caches, byte tables. */
int dm_tok_finish(dm_tokenizer *tok);
/* dm_tokenizer_load's second half for tokenizer.json (tokenizer_json.c). */
dm_tokenizer *dm_tokenizer_load_json(const char *path);

#endif
