/*
 * tokenizer.c: byte-pair encoding exact to Hugging Face tokenizers, with
 * GPT-2's vocab.json and merges.txt as one way in (this file) and
 * tokenizer.json as the other (tokenizer_json.c). tokenizer_impl.h lists the
 * pipeline; encoding a text runs it in order:
 *   1. Invalid UTF-8 becomes U+FFFD, one per maximal invalid subsequence
 *      (Unicode 3.9 "best practice", what Python's decode(errors="replace")
 *      does). Valid text, the usual case, is used in place without a copy.
 *   2. Added tokens (`<|endoftext|>` for GPT-2; `<bos>`, `<eos>`, ... for
 *      Gemma) are cut out of the text, leftmost first and longest first where
 *      several start at one place (the library's Aho-Corasick automaton with
 *      MatchKind::LeftmostLongest), each becoming its id; the pieces between
 *      are tokenized independently, so that nothing spans an added token.
 *   3. The normalizer rewrites each piece; added tokens with normalized true
 *      are then cut out of the normalized pieces.
 *   4. Pre-tokenisation cuts each piece into words. ByteLevel (GPT-2) uses
 *      GPT-2's regex (openai/gpt-2 src/encoder.py), PCRE2 with UTF and UCP,
 *      JIT-compiled, and hands the model bytes; Split and Metaspace cut at a
 *      string or a regex.
 *   5. Each word's characters (after ByteLevel: its bytes' symbols,
 *      bytes_to_unicode) are looked up in the vocabulary, unknown ones becoming
 *      <0xNN> byte tokens (byte_fallback) or the unk token, and BPE merges
 *      adjacent pairs, lowest merge rank first, leftmost first among equal
 *      ranks (the library's order, tokenizers/src/models/bpe/word.rs; the same
 *      result as GPT-2's encoder.py).
 *
 * Natural text repeats a small set of words, so stage 5 is memoised in a hash
 * map from word bytes to ids; the map is emptied when full, which keeps memory
 * bounded on adversarial input. The BPE itself is a heap over candidate pairs
 * with lazy invalidation, O(n log n) in the word length, because a "word" can
 * be megabytes of punctuation (or, with Gemma's tokenizer, which has no
 * pre-tokenizer, a whole document).
 *
 * Loading GPT-2's files reads vocab.json (token -> id) and merges.txt (one "A
 * B" pair per line by priority, after a "#version" line) and checks that every
 * symbol of every merge, and every merge result, is in the vocabulary.
 */
#include "fs.h"
#include "tokenizer_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/*
 * GPT-2's pre-tokenisation regex (openai/gpt-2 src/encoder.py, `self.pat`)
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with its classes spelled out so that they agree with the reference for every
 * code point, whatever Unicode version the system's PCRE2 has:
 *   - \s is the Unicode White_Space property (stable since Unicode 6.3), which
 *     the reference (Oniguruma, in tokenizers) uses. PCRE2 10.42's \s also
 *     holds U+180E MONGOLIAN VOWEL SEPARATOR, which is punctuation there.
 *   - The reference knows Unicode 16.0; PCRE2 10.42 knows 14.0, so the letters
 *     and digits added in 15.0-16.0 are listed. The lists came from comparing
 *     both implementations on every code point (tests/golden/
 *     make_tokenizer_golden.py --exhaustive); a newer PCRE2 only repeats them.
 */
#define DM_RE_SPACE                                                                             \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}" \
    "\\x{205F}\\x{3000}"
#define DM_RE_NEW_LETTERS                                                                       \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"            \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"      \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"        \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"       \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                 \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"                  \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"       \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define DM_RE_NEW_DIGITS                                                                        \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"      \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"      \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"

static const char dm_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d"
    "| ?[\\p{L}" DM_RE_NEW_LETTERS "]+"
    "| ?[\\p{N}" DM_RE_NEW_DIGITS "]+"
    "| ?[^" DM_RE_SPACE "\\p{L}\\p{N}" DM_RE_NEW_LETTERS DM_RE_NEW_DIGITS "]+"
    "|[" DM_RE_SPACE "]+(?![^" DM_RE_SPACE "])"
    "|[" DM_RE_SPACE "]+";


/* GPT-2's pattern as tokenizers spells it (ByteLevel's regex, and a Split
 * pre-tokenizer may give the same); dm_gpt2_pattern is its exact PCRE2 form. */
static const char dm_gpt2_pattern_hf[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* The Unicode White_Space property, as code points (DM_RE_SPACE's list). */
static int dm_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static const char dm_eot_text[] = "<|endoftext|>";
#define DM_EOT_LEN (sizeof dm_eot_text - 1)

/* Word cache sizes: slots a power of two, at most half full. */
#define DM_CACHE_SLOTS (1u << 16)
#define DM_CACHE_MAX_ENTRIES (DM_CACHE_SLOTS / 2)
#define DM_CACHE_MAX_WORD 128 /* longer words are not memoised */
#define DM_CACHE_KEY_BYTES (1u << 20)
#define DM_CACHE_ID_COUNT (1u << 18)

/* ---- id arrays --------------------------------------------------------- */

void dm_token_ids_push(dm_token_ids *t, int32_t id)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->ids = dm_xrealloc(t->ids, t->cap * sizeof *t->ids);
    }
    t->ids[t->n++] = id;
}

void dm_token_ids_release(dm_token_ids *t)
{
    free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static void dm_token_ids_reserve(dm_token_ids *t, size_t more)
{
    if (t->n + more <= t->cap)
        return;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->n + more)
        cap *= 2;
    t->ids = dm_xrealloc(t->ids, cap * sizeof *t->ids);
    t->cap = cap;
}

/* ---- bytes and UTF-8 --------------------------------------------------- */

/*
 * GPT-2's bytes_to_unicode (encoder.py): the 188 printable bytes '!'..'~',
 * '¡'..'¬', '®'..'ÿ' stand for themselves, the other 68 for U+0100 onwards in
 * byte order.
 */
static int dm_byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

void dm_bytes_to_unicode(uint32_t byte_cp[256], int16_t cp_byte[DM_BYTE_CP_END])
{
    uint32_t next = 0x100;
    for (int c = 0; c < DM_BYTE_CP_END; c++)
        cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        byte_cp[b] = dm_byte_is_printable(b) ? (uint32_t)b : next++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

size_t dm_utf8_put(char *out, uint32_t cp)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/*
 * Length of the well-formed UTF-8 sequence at s[0, n) (1..4), or minus the
 * length of its maximal invalid subpart: the lead byte plus the continuation
 * bytes that could still have completed it (Unicode 3.9 table 3-7 ranges).
 */
int dm_utf8_step(const unsigned char *s, size_t n)
{
    unsigned b = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xbf;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
        need = 2;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 3;
        if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f; /* nothing past U+10FFFF */
    } else
        return -1; /* 80..C1 (stray continuation, overlong lead), F5..FF */
    int k = 0;
    while (k < need && (size_t)k + 1 < n) {
        unsigned c = s[k + 1];
        if (c < lo || c > hi)
            break;
        lo = 0x80, hi = 0xbf;
        k++;
    }
    return k == need ? need + 1 : -(k + 1);
}

/* Offset of the first ill-formed byte of s[0, n), or n if it is all valid. */
static size_t dm_utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int step = dm_utf8_step(s + i, n - i);
        if (step < 0)
            return i;
        i += (size_t)step;
    }
    return n;
}

/* Writes s[0, n) with each maximal invalid subpart replaced by U+FFFD into
 * out (when not NULL); returns the output length. */
static size_t dm_utf8_repair(const unsigned char *s, size_t n, char *out)
{
    size_t i = 0, o = 0;
    while (i < n) {
        int step = dm_utf8_step(s + i, n - i);
        if (step > 0) {
            if (out)
                memcpy(out + o, s + i, (size_t)step);
            o += (size_t)step;
            i += (size_t)step;
        } else {
            if (out)
                memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i += (size_t)-step;
        }
    }
    return o;
}


/* The code point of the valid UTF-8 character at s (len bytes, 1..4). */
static uint32_t dm_utf8_cp(const unsigned char *s, size_t len)
{
    switch (len) {
    case 1:
        return s[0];
    case 2:
        return (s[0] & 0x1fu) << 6 | (s[1] & 0x3fu);
    case 3:
        return (s[0] & 0x0fu) << 12 | (s[1] & 0x3fu) << 6 | (s[2] & 0x3fu);
    default:
        return (s[0] & 0x07u) << 18 | (s[1] & 0x3fu) << 12 | (s[2] & 0x3fu) << 6 | (s[3] & 0x3fu);
    }
}

/* Length of the character that ends at s[n) (valid UTF-8, n > 0). */
static size_t dm_utf8_last_len(const unsigned char *s, size_t n)
{
    size_t k = 1;
    while (k < n && k < 4 && (s[n - k] & 0xc0) == 0x80)
        k++;
    return k;
}

/* Length of the character at s (valid UTF-8, n > 0). */
static size_t dm_utf8_len(const unsigned char *s, size_t n)
{
    int step = dm_utf8_step(s, n);
    return (size_t)(step < 0 ? -step : step);
}

/* ---- tables shared by the loaders -------------------------------------- */

static uint64_t dm_pair_hash(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return key;
}

static int64_t dm_pair_find(const dm_tokenizer *tok, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t i = dm_pair_hash(key) & tok->pair_mask;; i = (i + 1) & tok->pair_mask) {
        if (tok->pair_key[i] == key)
            return (int64_t)i;
        if (tok->pair_key[i] == UINT64_MAX)
            return -1;
    }
}

void dm_tok_pairs_init(dm_tokenizer *tok, size_t n)
{
    uint64_t slots = 16;
    while (slots < 2 * (uint64_t)n)
        slots *= 2;
    tok->pair_mask = slots - 1;
    tok->pair_key = dm_xmalloc(slots * sizeof *tok->pair_key);
    memset(tok->pair_key, 0xff, slots * sizeof *tok->pair_key);
    tok->pair_rank = dm_xmalloc(slots * sizeof *tok->pair_rank);
    tok->pair_merged = dm_xmalloc(slots * sizeof *tok->pair_merged);
}

/* A later duplicate of a merge replaces the earlier one, as in the reference
 * (both encoder.py and tokenizers build a map from the list). */
void dm_tok_pair_put(dm_tokenizer *tok, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t i = dm_pair_hash(key) & tok->pair_mask;
    while (tok->pair_key[i] != UINT64_MAX && tok->pair_key[i] != key)
        i = (i + 1) & tok->pair_mask;
    tok->pair_key[i] = key;
    tok->pair_rank[i] = rank;
    tok->pair_merged[i] = merged;
}

static uint64_t dm_text_hash(const char *s, size_t n) { return XXH3_64bits(s, n); }

int32_t dm_tok_vocab_find(const dm_tokenizer *tok, const char *s, size_t n)
{
    if (!tok->vocab_slot)
        return -1;
    for (uint64_t i = dm_text_hash(s, n) & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
        int32_t id = tok->vocab_slot[i];
        if (id < 0)
            return -1;
        const char *t = tok->token_text + tok->text_off[id];
        if (strnlen(t, n + 1) == n && memcmp(t, s, n) == 0)
            return id;
    }
}

void dm_tok_vocab_index(dm_tokenizer *tok)
{
    uint64_t slots = 16;
    while (slots < 2 * (uint64_t)tok->vocab_size)
        slots *= 2;
    tok->vocab_mask = slots - 1;
    tok->vocab_slot = dm_xmalloc(slots * sizeof *tok->vocab_slot);
    memset(tok->vocab_slot, 0xff, slots * sizeof *tok->vocab_slot);
    for (int32_t id = 0; id < tok->vocab_size; id++) {
        if (tok->text_off[id] == UINT32_MAX)
            continue;
        const char *t = tok->token_text + tok->text_off[id];
        uint64_t i = dm_text_hash(t, strlen(t)) & tok->vocab_mask;
        while (tok->vocab_slot[i] >= 0)
            i = (i + 1) & tok->vocab_mask;
        tok->vocab_slot[i] = id;
    }
}

void dm_tok_trie_init(dm_trie *t)
{
    t->cap = 64;
    t->node = dm_xmalloc(t->cap * sizeof *t->node);
    t->node[0] = (dm_trie_node){-1, -1, -1, 0};
    t->n = 1;
    memset(t->first, 0, sizeof t->first);
    t->empty = 1;
    t->only_first = -1;
}

void dm_tok_trie_add(dm_trie *t, const char *s, size_t n, int32_t token)
{
    int32_t at = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = t->node[at].child;
        while (c >= 0 && t->node[c].byte != b)
            c = t->node[c].sibling;
        if (c < 0) {
            if (t->n == t->cap) {
                t->cap *= 2;
                t->node = dm_xrealloc(t->node, t->cap * sizeof *t->node);
            }
            c = (int32_t)t->n++;
            t->node[c] = (dm_trie_node){-1, t->node[at].child, -1, b};
            t->node[at].child = c;
        }
        at = c;
    }
    if (n > 0) {
        t->node[at].token = token;
        uint8_t b = (uint8_t)s[0];
        t->only_first = t->empty || t->only_first == b ? b : -1;
        t->first[b] = 1;
        t->empty = 0;
    }
}

/*
 * The next added token in s[from, n): the leftmost start, and of the contents
 * starting there the longest (MatchKind::LeftmostLongest). 1 with [*b, *e)
 * and the token's index, or 0.
 */
static int dm_trie_next(const dm_trie *t, const char *s, size_t n, size_t from, size_t *b,
                        size_t *e, int32_t *token)
{
    if (t->empty)
        return 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t p = from; p < n; p++) {
        if (t->only_first >= 0) {
            /* one byte starts every content (GPT-2: '<'): memchr finds it fast */
            const unsigned char *hit = memchr(u + p, t->only_first, n - p);
            if (!hit)
                return 0;
            p = (size_t)(hit - u);
        } else if (!t->first[u[p]])
            continue;
        int32_t at = 0, best = -1;
        size_t best_end = 0;
        for (size_t q = p; q < n; q++) {
            int32_t c = t->node[at].child;
            while (c >= 0 && t->node[c].byte != u[q])
                c = t->node[c].sibling;
            if (c < 0)
                break;
            at = c;
            if (t->node[at].token >= 0)
                best = t->node[at].token, best_end = q + 1;
        }
        if (best >= 0) {
            *b = p, *e = best_end, *token = best;
            return 1;
        }
    }
    return 0;
}

int dm_tok_compile(pcre2_code **re, const char *pattern, size_t len, const char *what)
{
    int err;
    PCRE2_SIZE erroff;
    *re = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    if (!*re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dm_fail("%s: %s at offset %zu (PCRE2 built without Unicode support?)", what,
                       (const char *)msg, (size_t)erroff);
    }
    /* Without JIT (not built in, or no executable memory) pcre2_match
     * interprets the pattern: 5 times slower, same result. */
    pcre2_jit_compile(*re, PCRE2_JIT_COMPLETE);
    return 0;
}

/* GPT-2's pattern for the tokenizers spelling of it, else pattern itself. */
const char *dm_tok_regex_for(const char *pattern)
{
    return strcmp(pattern, dm_gpt2_pattern_hf) == 0 ? dm_gpt2_pattern : pattern;
}

int dm_tok_match_init(dm_tokenizer *tok)
{
    if (tok->match)
        return 0;
    /* GPT-2's pattern repeats single characters, so matching needs the same
     * small stack for a run of 20 MB as for a word (measured); 1 MiB is
     * headroom, also for the patterns of a tokenizer.json. */
    tok->jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    tok->mctx = pcre2_match_context_create(NULL);
    tok->match = pcre2_match_data_create(1, NULL);
    if (!tok->jit_stack || !tok->mctx || !tok->match)
        return dm_fail("tokenizer regex: out of memory");
    pcre2_jit_stack_assign(tok->mctx, NULL, tok->jit_stack);
    return 0;
}

int dm_tok_finish(dm_tokenizer *tok)
{
    int need_gpt2 = 0;
    for (size_t i = 0; i < tok->n_pre; i++)
        need_gpt2 |= tok->pre[i].kind == DM_PRE_BYTELEVEL && tok->pre[i].use_regex;
    if (need_gpt2 && dm_tok_compile(&tok->re, dm_gpt2_pattern, PCRE2_ZERO_TERMINATED,
                                    "tokenizer regex"))
        return -1;
    int need_word = 0;
    for (size_t i = 0; i < tok->n_added; i++)
        need_word |= tok->added[i].single_word;
    /* the regex crate's \w (Unicode): what single_word tests around a match */
    static const char word_class[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
    if (need_word &&
        dm_tok_compile(&tok->word_re, word_class, PCRE2_ZERO_TERMINATED, "tokenizer regex"))
        return -1;
    if (dm_tok_match_init(tok))
        return -1;

    if (tok->byte_level) {
        uint32_t byte_cp[256];
        int16_t cp_byte[DM_BYTE_CP_END];
        dm_bytes_to_unicode(byte_cp, cp_byte);
        tok->all_bytes = 1;
        for (int b = 0; b < 256; b++) {
            tok->byte_sym_len[b] = (uint8_t)dm_utf8_put(tok->byte_sym[b], byte_cp[b]);
            tok->byte_id[b] = dm_tok_vocab_find(tok, tok->byte_sym[b], tok->byte_sym_len[b]);
            tok->all_bytes &= tok->byte_id[b] >= 0;
        }
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->fallback_id[b] = tok->byte_fallback ? dm_tok_vocab_find(tok, name, 6) : -1;
    }
    tok->cache = dm_xcalloc(DM_CACHE_SLOTS, sizeof *tok->cache);
    tok->cache_keys = dm_xmalloc(DM_CACHE_KEY_BYTES);
    tok->cache_ids = dm_xmalloc(DM_CACHE_ID_COUNT * sizeof *tok->cache_ids);
    return 0;
}

/*
 * Maps a byte-level token's text to the bytes it stands for: characters of the
 * byte alphabet become their byte, others stay their own UTF-8 (the
 * reference's ByteLevel decoder does the same). Returns the output length (at
 * most len).
 */
size_t dm_tok_byte_decode(const char *text, size_t len, char *out)
{
    static int16_t cp_byte[DM_BYTE_CP_END];
    static int ready;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        uint32_t byte_cp[256];
        int16_t tmp[DM_BYTE_CP_END];
        dm_bytes_to_unicode(byte_cp, tmp);
        memcpy(cp_byte, tmp, sizeof tmp);
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    const unsigned char *k = (const unsigned char *)text;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        int step = dm_utf8_step(k + i, len - i);
        if (step < 0)
            step = -step;
        uint32_t cp = k[i];
        if (step == 2)
            cp = (k[i] & 0x1fu) << 6 | (k[i + 1] & 0x3fu);
        if (step <= 2 && cp < DM_BYTE_CP_END && cp_byte[cp] >= 0)
            out[o++] = (char)cp_byte[cp];
        else {
            memcpy(out + o, k + i, (size_t)step);
            o += (size_t)step;
        }
        i += (size_t)step;
    }
    return o;
}

/* ---- GPT-2's vocab.json and merges.txt ---------------------------------- */

/* The id of token s[0, n) in vocab, or -1. */
static int32_t dm_vocab_id(json_t *vocab, const char *s, size_t n)
{
    json_t *v = json_object_getn(vocab, s, n);
    return v ? (int32_t)json_integer_value(v) : -1;
}

static int dm_load_vocab(dm_tokenizer *tok, const char *path, json_t **vocab_out)
{
    size_t len;
    char *text = dm_read_text(path, &len);
    if (!text)
        return -1;
    json_error_t jerr;
    json_t *vocab = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!vocab)
        return dm_fail("%s: not valid JSON: %s (line %d, column %d)", path, jerr.text, jerr.line,
                       jerr.column);

    int rc = 0;
    const char **by_id = NULL;
    const char *key;
    size_t key_len;
    json_t *value;
    int64_t max_id = -1;
    size_t text_bytes = 0;
    if (!json_is_object(vocab)) {
        rc = dm_fail("%s: expected a JSON object mapping tokens to ids", path);
        goto end;
    }
    json_object_keylen_foreach(vocab, key, key_len, value) {
        json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
        if (id < 0 || id >= DM_MAX_VOCAB) {
            rc = dm_fail("%s: token \"%.80s\": the id must be an integer in [0, %d)", path, key,
                         DM_MAX_VOCAB);
            goto end;
        }
        if (memchr(key, 0, key_len)) {
            rc = dm_fail("%s: token with id %lld contains a NUL character", path, (long long)id);
            goto end;
        }
        if (id > max_id)
            max_id = id;
        text_bytes += key_len + 1;
    }
    if (max_id < 0) {
        rc = dm_fail("%s: the vocabulary is empty", path);
        goto end;
    }
    if (text_bytes > UINT32_MAX / 2) {
        rc = dm_fail("%s: the vocabulary is too large", path);
        goto end;
    }

    int32_t nv = (int32_t)max_id + 1;
    tok->vocab_size = nv;
    by_id = dm_xcalloc((size_t)nv, sizeof *by_id);
    json_object_keylen_foreach(vocab, key, key_len, value) {
        json_int_t id = json_integer_value(value);
        if (by_id[id]) {
            rc = dm_fail("%s: id %lld is given to both \"%.80s\" and \"%.80s\"", path,
                         (long long)id, by_id[id], key);
            goto end;
        }
        by_id[id] = key;
    }

    /* A token's bytes are never longer than its text. */
    tok->token_text = dm_xmalloc(text_bytes);
    tok->token_bytes = dm_xmalloc(text_bytes);
    tok->text_off = dm_xmalloc((size_t)nv * sizeof *tok->text_off);
    tok->bytes_off = dm_xmalloc(((size_t)nv + 1) * sizeof *tok->bytes_off);
    uint32_t to = 0, bo = 0;
    for (int32_t id = 0; id < nv; id++) {
        tok->bytes_off[id] = bo;
        if (!by_id[id]) {
            tok->text_off[id] = UINT32_MAX; /* a gap in the ids */
            continue;
        }
        size_t kl = strlen(by_id[id]);
        tok->text_off[id] = to;
        memcpy(tok->token_text + to, by_id[id], kl + 1);
        to += (uint32_t)kl + 1;
        bo += (uint32_t)dm_tok_byte_decode(by_id[id], kl, tok->token_bytes + bo);
    }
    tok->bytes_off[nv] = bo;

    uint32_t byte_cp[256];
    int16_t cp_byte[DM_BYTE_CP_END];
    dm_bytes_to_unicode(byte_cp, cp_byte);
    for (int b = 0; b < 256; b++) {
        char sym[4];
        size_t sl = dm_utf8_put(sym, byte_cp[b]);
        if (dm_vocab_id(vocab, sym, sl) < 0) {
            rc = dm_fail("%s: no token \"%.*s\" for byte 0x%02x: not a byte-level BPE "
                         "vocabulary (GPT-2's vocab.json has all 256)",
                         path, (int)sl, sym, b);
            goto end;
        }
    }
    tok->eot = dm_vocab_id(vocab, dm_eot_text, DM_EOT_LEN);
end:
    free(by_id);
    if (rc != 0)
        json_decref(vocab);
    else
        *vocab_out = vocab;
    return rc;
}

static int dm_load_merges(dm_tokenizer *tok, const char *path, json_t *vocab)
{
    size_t len;
    char *text = dm_read_text(path, &len);
    if (!text)
        return -1;

    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    dm_tok_pairs_init(tok, lines);

    int rc = 0;
    char *joined = NULL;
    size_t joined_cap = 0;
    int32_t rank = 0;
    size_t lineno = 0;
    for (char *p = text, *end = text + len; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line = p, *eol = nl ? nl : end;
        p = nl ? nl + 1 : end;
        lineno++;
        if (eol > line && eol[-1] == '\r')
            eol--;
        size_t ll = (size_t)(eol - line);
        if (lineno == 1) {
            if (ll < 8 || memcmp(line, "#version", 8) != 0) {
                rc = dm_fail("%s:1: expected the header \"#version: 0.2\", found \"%.*s\"", path,
                             (int)(ll < 60 ? ll : 60), line);
                break;
            }
            continue;
        }
        if (ll == 0) {
            /* blank lines may end the file; anywhere else they are an error */
            char *q = p;
            while (q < end && (*q == '\n' || *q == '\r'))
                q++;
            if (q == end)
                break;
            rc = dm_fail("%s:%zu: empty line; expected two tokens separated by one space", path,
                         lineno);
            break;
        }
        if (ll >= 8 && memcmp(line, "#version", 8) == 0)
            continue; /* the reference skips any #version line */
        char *sp = memchr(line, ' ', ll);
        if (!sp || sp == line || sp + 1 == eol || memchr(sp + 1, ' ', (size_t)(eol - sp - 1))) {
            rc = dm_fail("%s:%zu: expected two tokens separated by one space, found \"%.*s\"",
                         path, lineno, (int)(ll < 60 ? ll : 60), line);
            break;
        }
        size_t la = (size_t)(sp - line), lb = (size_t)(eol - sp - 1);
        int32_t a = dm_vocab_id(vocab, line, la);
        int32_t b = dm_vocab_id(vocab, sp + 1, lb);
        if (a < 0 || b < 0) {
            rc = dm_fail("%s:%zu: token \"%.*s\" is not in vocab.json", path, lineno,
                         (int)(a < 0 ? la : lb), a < 0 ? line : sp + 1);
            break;
        }
        if (joined_cap < la + lb) {
            joined_cap = 2 * (la + lb);
            joined = dm_xrealloc(joined, joined_cap);
        }
        memcpy(joined, line, la);
        memcpy(joined + la, sp + 1, lb);
        int32_t merged = dm_vocab_id(vocab, joined, la + lb);
        if (merged < 0) {
            rc = dm_fail("%s:%zu: the merge result \"%.*s\" is not in vocab.json", path, lineno,
                         (int)(la + lb), joined);
            break;
        }
        dm_tok_pair_put(tok, a, b, rank++, merged);
    }
    if (rc == 0 && lineno == 0)
        rc = dm_fail("%s: empty file; expected \"#version: 0.2\" and merges", path);
    free(joined);
    free(text);
    return rc;
}

/* GPT2TokenizerFast's pipeline: <|endoftext|> added (when the vocabulary has
 * it), ByteLevel without a prefix space, BPE over bytes, <|endoftext|> as BOS. */
static void dm_gpt2_pipeline(dm_tokenizer *tok)
{
    tok->byte_level = 1;
    tok->unk = -1;
    tok->bos = tok->eot;
    tok->cut_safe = 1;
    tok->pre = dm_xcalloc(1, sizeof *tok->pre);
    tok->pre[0].kind = DM_PRE_BYTELEVEL;
    tok->pre[0].use_regex = 1;
    tok->n_pre = 1;
    dm_tok_trie_init(&tok->raw_trie);
    dm_tok_trie_init(&tok->norm_trie);
    if (tok->eot >= 0) {
        tok->added = dm_xcalloc(1, sizeof *tok->added);
        tok->added_text = dm_xstrdup(dm_eot_text);
        tok->added[0] = (dm_added){0, (uint32_t)DM_EOT_LEN, tok->eot, 0, 0, 0, 0, 1};
        tok->n_added = 1;
        dm_tok_trie_add(&tok->raw_trie, dm_eot_text, DM_EOT_LEN, 0);
    }
}

static int dm_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

dm_tokenizer *dm_tokenizer_load(const char *dir)
{
    if (dm_is_file(dir))
        return dm_tokenizer_load_json(dir);
    char *vocab_path = dm_xasprintf("%s/vocab.json", dir);
    char *merges_path = dm_xasprintf("%s/merges.txt", dir);
    char *json_path = dm_xasprintf("%s/tokenizer.json", dir);
    if (!(dm_file_exists(vocab_path) && dm_file_exists(merges_path)) && dm_file_exists(json_path)) {
        free(vocab_path), free(merges_path);
        dm_tokenizer *tok = dm_tokenizer_load_json(json_path);
        free(json_path);
        return tok;
    }
    free(json_path);
    dm_tokenizer *tok = dm_xcalloc(1, sizeof *tok);
    json_t *vocab = NULL;
    int rc = dm_load_vocab(tok, vocab_path, &vocab);
    if (rc == 0)
        rc = dm_load_merges(tok, merges_path, vocab);
    json_decref(vocab);
    free(vocab_path);
    free(merges_path);
    if (rc == 0) {
        dm_gpt2_pipeline(tok);
        dm_tok_vocab_index(tok);
        rc = dm_tok_finish(tok);
    }
    if (rc != 0) {
        dm_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void dm_tokenizer_free(dm_tokenizer *tok)
{
    if (!tok)
        return;
    pcre2_match_data_free(tok->match);
    pcre2_match_context_free(tok->mctx);
    pcre2_jit_stack_free(tok->jit_stack);
    pcre2_code_free(tok->re);
    pcre2_code_free(tok->word_re);
    for (size_t i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].find);
        free(tok->norm[i].text);
        pcre2_code_free(tok->norm[i].re);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++) {
        free(tok->pre[i].find);
        pcre2_code_free(tok->pre[i].re);
        free(tok->pre[i].buf);
        free(tok->pre[i].span);
    }
    free(tok->pre);
    free(tok->added);
    free(tok->added_text);
    free(tok->raw_trie.node);
    free(tok->norm_trie.node);
    free(tok->bytes_off);
    free(tok->token_bytes);
    free(tok->text_off);
    free(tok->token_text);
    free(tok->vocab_slot);
    free(tok->pair_key);
    free(tok->pair_rank);
    free(tok->pair_merged);
    free(tok->cache);
    free(tok->cache_keys);
    free(tok->cache_ids);
    free(tok->sym_id);
    free(tok->sym_prev);
    free(tok->sym_next);
    free(tok->heap);
    free(tok->clean);
    free(tok->norm_buf[0]);
    free(tok->norm_buf[1]);
    free(tok->mapped);
    free(tok);
}

int32_t dm_tokenizer_vocab_size(const dm_tokenizer *tok) { return tok->vocab_size; }
int32_t dm_tokenizer_eot(const dm_tokenizer *tok) { return tok->eot; }
int32_t dm_tokenizer_bos(const dm_tokenizer *tok) { return tok->bos; }
int dm_tokenizer_cut_is_safe(const dm_tokenizer *tok) { return tok->cut_safe; }

/* ---- BPE --------------------------------------------------------------- */

static int dm_pair_less(const dm_bpe_pair *x, const dm_bpe_pair *y)
{
    return x->rank != y->rank ? x->rank < y->rank : x->left < y->left;
}

static void dm_heap_push(dm_tokenizer *tok, size_t *n, dm_bpe_pair e)
{
    if (*n == tok->heap_cap) {
        tok->heap_cap = tok->heap_cap ? 2 * tok->heap_cap : 64;
        tok->heap = dm_xrealloc(tok->heap, tok->heap_cap * sizeof *tok->heap);
    }
    dm_bpe_pair *h = tok->heap;
    size_t i = (*n)++;
    while (i > 0 && dm_pair_less(&e, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static dm_bpe_pair dm_heap_pop(dm_tokenizer *tok, size_t *n)
{
    dm_bpe_pair *h = tok->heap, top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && dm_pair_less(&h[c + 1], &h[c]))
            c++;
        if (!dm_pair_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

/* Pushes the merge of symbol left with its right neighbour, if there is one. */
static void dm_bpe_candidate(dm_tokenizer *tok, size_t *heap_n, int32_t left)
{
    if (left < 0 || tok->sym_next[left] < 0)
        return;
    int32_t a = tok->sym_id[left], b = tok->sym_id[tok->sym_next[left]];
    int64_t slot = dm_pair_find(tok, a, b);
    if (slot < 0)
        return;
    dm_bpe_pair e = {tok->pair_rank[slot], left, a, b, tok->pair_merged[slot]};
    dm_heap_push(tok, heap_n, e);
}

static void dm_sym_reserve(dm_tokenizer *tok, size_t n)
{
    if (n <= tok->sym_cap)
        return;
    tok->sym_cap = n > 2 * tok->sym_cap ? n : 2 * tok->sym_cap;
    tok->sym_id = dm_xrealloc(tok->sym_id, tok->sym_cap * sizeof *tok->sym_id);
    tok->sym_prev = dm_xrealloc(tok->sym_prev, tok->sym_cap * sizeof *tok->sym_prev);
    tok->sym_next = dm_xrealloc(tok->sym_next, tok->sym_cap * sizeof *tok->sym_next);
}

/*
 * The first symbols of word w[0, n) into sym_id; returns their count. Each
 * character (after ByteLevel: each byte's symbol) is its vocabulary id; one
 * that is not in the vocabulary becomes the <0xNN> tokens of its bytes when
 * all exist (byte_fallback), else the unk token, consecutive unks fused into
 * one with fuse_unk, else nothing. A pending unk waits for the next known
 * character, so byte fallback tokens can come before it: the library's
 * BPE::merge_word (tokenizers/src/models/bpe/model.rs) does the same.
 */
static size_t dm_bpe_symbols(dm_tokenizer *tok, const unsigned char *w, size_t n)
{
    int32_t *sym = tok->sym_id;
    size_t k = 0;
    if (tok->byte_level && tok->all_bytes) {
        for (size_t i = 0; i < n; i++)
            sym[k++] = tok->byte_id[w[i]];
        return k;
    }
    int32_t pending = -1;
    for (size_t i = 0; i < n;) {
        const unsigned char *u;
        size_t ul;
        int32_t id;
        if (tok->byte_level) {
            u = (const unsigned char *)tok->byte_sym[w[i]];
            ul = tok->byte_sym_len[w[i]];
            id = tok->byte_id[w[i]];
            i++;
        } else {
            u = w + i;
            ul = dm_utf8_len(w + i, n - i);
            id = dm_tok_vocab_find(tok, (const char *)u, ul);
            i += ul;
        }
        if (id >= 0) {
            if (pending >= 0)
                sym[k++] = pending, pending = -1;
            sym[k++] = id;
            continue;
        }
        if (tok->byte_fallback) {
            size_t j = 0;
            while (j < ul && tok->fallback_id[u[j]] >= 0)
                j++;
            if (j == ul) {
                for (j = 0; j < ul; j++)
                    sym[k++] = tok->fallback_id[u[j]];
                continue;
            }
        }
        if (tok->unk >= 0) {
            if (pending >= 0 && !tok->fuse_unk)
                sym[k++] = pending;
            pending = tok->unk;
        }
    }
    if (pending >= 0)
        sym[k++] = pending;
    return k;
}

/*
 * BPE of one word: the symbols in a linked list; the pair of lowest (rank,
 * position) merges first. A popped pair is stale when its left symbol was
 * merged away or either symbol changed since the push: symbols only grow by
 * taking in their right neighbour, so comparing ids detects it. The library
 * (Word::merge_all, tokenizers/src/models/bpe/word.rs) asks instead whether
 * the pair now there merges into the same token; as a merged token's text is
 * its pair's texts joined, and a grown symbol's pair spells more text, the
 * two tests agree, also when several merges make one token (SentencePiece
 * conversions such as Gemma's).
 */
static void dm_bpe_word(dm_tokenizer *tok, const unsigned char *w, size_t n, dm_token_ids *out)
{
    if (tok->ignore_merges) {
        /* a word that is a token is that token, merges or not */
        const char *s = (const char *)w;
        size_t sl = n;
        if (tok->byte_level) {
            if (tok->mapped_cap < 2 * n) {
                tok->mapped_cap = 2 * n;
                tok->mapped = dm_xrealloc(tok->mapped, tok->mapped_cap);
            }
            sl = 0;
            for (size_t i = 0; i < n; i++) {
                memcpy(tok->mapped + sl, tok->byte_sym[w[i]], tok->byte_sym_len[w[i]]);
                sl += tok->byte_sym_len[w[i]];
            }
            s = tok->mapped;
        }
        int32_t id = dm_tok_vocab_find(tok, s, sl);
        if (id >= 0) {
            dm_token_ids_push(out, id);
            return;
        }
    }
    dm_sym_reserve(tok, tok->byte_level ? 2 * n : n);
    size_t k = dm_bpe_symbols(tok, w, n);
    if (k == 0)
        return;
    int32_t *id = tok->sym_id, *prev = tok->sym_prev, *next = tok->sym_next;
    for (size_t i = 0; i < k; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < k ? (int32_t)i + 1 : -1;
    }
    size_t heap_n = 0;
    for (size_t i = 0; i + 1 < k; i++)
        dm_bpe_candidate(tok, &heap_n, (int32_t)i);
    while (heap_n > 0) {
        dm_bpe_pair e = dm_heap_pop(tok, &heap_n);
        int32_t l = e.left, r = next[l];
        if (id[l] != e.id_left || r < 0 || id[r] != e.id_right)
            continue;
        id[l] = e.merged;
        id[r] = -1;
        next[l] = next[r];
        if (next[r] >= 0)
            prev[next[r]] = l;
        dm_bpe_candidate(tok, &heap_n, prev[l]);
        dm_bpe_candidate(tok, &heap_n, l);
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        dm_token_ids_push(out, id[i]);
}

/* ---- word cache -------------------------------------------------------- */

static void dm_cache_clear(dm_tokenizer *tok)
{
    memset(tok->cache, 0, DM_CACHE_SLOTS * sizeof *tok->cache);
    tok->cache_entries = tok->cache_keys_used = tok->cache_ids_used = 0;
}

static void dm_encode_word(dm_tokenizer *tok, const char *w, size_t n, dm_token_ids *out)
{
    if (n == 0)
        return;
    if (n == 1 && tok->byte_level && tok->byte_id[(unsigned char)w[0]] >= 0) {
        dm_token_ids_push(out, tok->byte_id[(unsigned char)w[0]]);
        return;
    }
    if (n > DM_CACHE_MAX_WORD) {
        dm_bpe_word(tok, (const unsigned char *)w, n, out);
        return;
    }
    uint64_t h = XXH3_64bits(w, n);
    uint32_t i = (uint32_t)h & (DM_CACHE_SLOTS - 1);
    for (;; i = (i + 1) & (DM_CACHE_SLOTS - 1)) {
        dm_cache_slot *s = &tok->cache[i];
        if (s->key_len == 0)
            break;
        if (s->hash == h && s->key_len == n && memcmp(tok->cache_keys + s->key_off, w, n) == 0) {
            dm_token_ids_reserve(out, s->n_ids);
            memcpy(out->ids + out->n, tok->cache_ids + s->ids_off, s->n_ids * sizeof *out->ids);
            out->n += s->n_ids;
            return;
        }
    }
    size_t first = out->n;
    dm_bpe_word(tok, (const unsigned char *)w, n, out);
    size_t k = out->n - first;
    if (tok->cache_entries >= DM_CACHE_MAX_ENTRIES ||
        tok->cache_keys_used + n > DM_CACHE_KEY_BYTES ||
        tok->cache_ids_used + k > DM_CACHE_ID_COUNT) {
        dm_cache_clear(tok);
        i = (uint32_t)h & (DM_CACHE_SLOTS - 1);
    }
    dm_cache_slot *s = &tok->cache[i];
    s->hash = h;
    s->key_off = tok->cache_keys_used;
    s->key_len = (uint32_t)n;
    s->ids_off = tok->cache_ids_used;
    s->n_ids = (uint32_t)k;
    memcpy(tok->cache_keys + s->key_off, w, n);
    if (k)
        memcpy(tok->cache_ids + s->ids_off, out->ids + first, k * sizeof *out->ids);
    tok->cache_keys_used += (uint32_t)n;
    tok->cache_ids_used += (uint32_t)k;
    tok->cache_entries++;
}

/* ---- splitting at patterns ---------------------------------------------- */

typedef struct {
    size_t *v; /* (start, end, is_match) triples */
    size_t n, cap;
} dm_spans;

static void dm_span_push(dm_spans *sp, size_t b, size_t e, size_t is_match)
{
    if (3 * sp->n + 3 > sp->cap) {
        sp->cap = sp->cap ? 2 * sp->cap : 48;
        sp->v = dm_xrealloc(sp->v, sp->cap * sizeof *sp->v);
    }
    sp->v[3 * sp->n] = b, sp->v[3 * sp->n + 1] = e, sp->v[3 * sp->n + 2] = is_match;
    sp->n++;
}

/*
 * s[0, n) (not empty) as spans that cover it, matches of the pattern and the
 * gaps between them: the library's Pattern::find_matches. A String pattern
 * (find, not empty) matches where it occurs, left to right without overlap;
 * a Regex pattern matches as onig's find_iter does, which takes an empty
 * match unless it sits where the previous match ended, then steps one
 * character on (the onig crate, FindMatches::next).
 */
static int dm_find_spans(dm_tokenizer *tok, const char *find, size_t find_len, pcre2_code *re,
                         const char *s, size_t n, dm_spans *sp)
{
    sp->n = 0;
    size_t prev = 0;
    if (find) {
        for (size_t at = 0; at < n;) {
            const char *hit = memmem(s + at, n - at, find, find_len);
            if (!hit)
                break;
            size_t b = (size_t)(hit - s);
            if (b > prev)
                dm_span_push(sp, prev, b, 0);
            dm_span_push(sp, b, b + find_len, 1);
            prev = at = b + find_len;
        }
    } else {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(tok->match);
        size_t last_end = 0, last_match_end = SIZE_MAX;
        while (last_end <= n) {
            int rc = pcre2_match(re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, tok->match,
                                 tok->mctx);
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return dm_fail("tokenizer: regex match failed at byte %zu: %s", last_end,
                               (const char *)msg);
            }
            size_t b = ov[0], e = ov[1];
            if (b == e && last_match_end == e) {
                last_end += last_end < n ? dm_utf8_len((const unsigned char *)s + last_end,
                                                       n - last_end)
                                         : 1;
                continue;
            }
            last_end = last_match_end = e;
            if (b != prev)
                dm_span_push(sp, prev, b, 0);
            dm_span_push(sp, b, e, 1);
            prev = e;
        }
    }
    if (prev != n)
        dm_span_push(sp, prev, n, 0);
    return 0;
}

/*
 * Groups spans by a SplitDelimiterBehavior, in place (NormalizedString::split,
 * tokenizers/src/tokenizer/normalizer.rs): the third field becomes 1 for a
 * span to drop. Isolated keeps each span; Removed drops the matches;
 * MergedWithPrevious joins a match to the span before it, MergedWithNext to
 * the span after it (unless that is a match too); Contiguous joins runs of
 * spans of one kind.
 */
static void dm_group_spans(dm_spans *sp, int behavior)
{
    size_t *v = sp->v, k = 0;
    int prev_match = 0;
    switch (behavior) {
    case DM_SPLIT_ISOLATED:
        for (size_t i = 0; i < sp->n; i++)
            v[3 * i + 2] = 0;
        return;
    case DM_SPLIT_REMOVED:
        return;
    case DM_SPLIT_CONTIGUOUS:
    case DM_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < sp->n; i++) {
            int m = (int)v[3 * i + 2];
            int join = behavior == DM_SPLIT_CONTIGUOUS ? m == prev_match : m && !prev_match;
            if (join && k > 0)
                v[3 * (k - 1) + 1] = v[3 * i + 1];
            else {
                v[3 * k] = v[3 * i], v[3 * k + 1] = v[3 * i + 1], v[3 * k + 2] = 0;
                k++;
            }
            prev_match = m;
        }
        sp->n = k;
        return;
    case DM_SPLIT_MERGED_NEXT:
        /* right to left, packing the groups at the end of the array */
        k = sp->n;
        for (size_t i = sp->n; i-- > 0;) {
            int m = (int)v[3 * i + 2];
            if (m && !prev_match && k < sp->n)
                v[3 * k] = v[3 * i];
            else {
                k--;
                size_t b = v[3 * i], e = v[3 * i + 1];
                v[3 * k] = b, v[3 * k + 1] = e, v[3 * k + 2] = 0;
            }
            prev_match = m;
        }
        memmove(v, v + 3 * k, 3 * (sp->n - k) * sizeof *v);
        sp->n -= k;
        return;
    }
}

/* ---- normalizers -------------------------------------------------------- */

static char *dm_norm_out(dm_tokenizer *tok, int which, size_t need)
{
    if (need > tok->norm_cap[which]) {
        free(tok->norm_buf[which]);
        tok->norm_cap[which] = need > 2 * tok->norm_cap[which] ? need : 2 * tok->norm_cap[which];
        tok->norm_buf[which] = dm_xmalloc(tok->norm_cap[which]);
    }
    return tok->norm_buf[which];
}

const char *dm_tok_normalize(dm_tokenizer *tok, const char *s, size_t n, size_t *out_len)
{
    dm_spans sp = {0};
    int which = 0;
    for (size_t k = 0; k < tok->n_norm; k++) {
        const dm_norm_step *st = &tok->norm[k];
        char *o;
        size_t m = 0;
        if (st->kind == DM_NORM_PREPEND) {
            if (n == 0)
                continue;
            o = dm_norm_out(tok, which, n + st->text_len + 1);
            memcpy(o, st->text, st->text_len);
            memcpy(o + st->text_len, s, n);
            m = n + st->text_len;
        } else if (st->kind == DM_NORM_STRIP) {
            const unsigned char *u = (const unsigned char *)s;
            size_t b = 0, e = n;
            while (st->left && b < e) {
                size_t l = dm_utf8_len(u + b, e - b);
                if (!dm_is_space(dm_utf8_cp(u + b, l)))
                    break;
                b += l;
            }
            while (st->right && e > b) {
                size_t l = dm_utf8_last_len(u + b, e - b);
                if (!dm_is_space(dm_utf8_cp(u + e - l, l)))
                    break;
                e -= l;
            }
            o = dm_norm_out(tok, which, e - b + 1);
            memcpy(o, s + b, e - b);
            m = e - b;
        } else {
            if (n == 0)
                continue;
            if (dm_find_spans(tok, st->find, st->find_len, st->re, s, n, &sp) != 0) {
                free(sp.v);
                return NULL;
            }
            size_t need = 1;
            for (size_t i = 0; i < sp.n; i++)
                need += sp.v[3 * i + 2] ? st->text_len : sp.v[3 * i + 1] - sp.v[3 * i];
            o = dm_norm_out(tok, which, need);
            for (size_t i = 0; i < sp.n; i++) {
                if (sp.v[3 * i + 2]) {
                    memcpy(o + m, st->text, st->text_len);
                    m += st->text_len;
                } else {
                    memcpy(o + m, s + sp.v[3 * i], sp.v[3 * i + 1] - sp.v[3 * i]);
                    m += sp.v[3 * i + 1] - sp.v[3 * i];
                }
            }
        }
        s = o;
        n = m;
        which ^= 1;
    }
    free(sp.v);
    *out_len = n;
    return s;
}

/* ---- the pipeline ------------------------------------------------------- */

/* Pre-tokenises s[0, n) (valid UTF-8) with GPT-2's regex and encodes each
 * word, until out holds stop ids or more. */
static int dm_encode_piece(dm_tokenizer *tok, const char *s, size_t n, size_t stop,
                           dm_token_ids *out)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(tok->match);
    size_t at = 0;
    while (at < n && out->n < stop) {
        int rc = pcre2_match(tok->re, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, tok->match,
                             tok->mctx);
        size_t b, e;
        if (rc == PCRE2_ERROR_NOMATCH) {
            b = e = n; /* cannot happen: the alternatives cover every character */
        } else if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return dm_fail("tokenizer: regex match failed at byte %zu: %s", at,
                           (const char *)msg);
        } else {
            b = ov[0];
            e = ov[1];
        }
        /* Text the regex skips is a word of its own (HF's Split keeps gaps). */
        if (b > at)
            dm_encode_word(tok, s + at, b - at, out);
        if (e > b)
            dm_encode_word(tok, s + b, e - b, out);
        else if (b < n) {
            /* an empty match (impossible with this pattern): step one character */
            e = b + 1;
            while (e < n && ((unsigned char)s[e] & 0xc0) == 0x80)
                e++;
            dm_encode_word(tok, s + b, e - b, out);
        }
        at = e;
    }
    return 0;
}

static char *dm_pre_buf(dm_pre_step *p, size_t need)
{
    if (need > p->buf_cap) {
        free(p->buf);
        p->buf_cap = need > 2 * p->buf_cap ? need : 2 * p->buf_cap;
        p->buf = dm_xmalloc(p->buf_cap);
    }
    return p->buf;
}

/*
 * Runs pre-tokenizers [k, n_pre) on s[0, n) (not empty), then the model on
 * each word. first: s begins at the start of the text (Metaspace's "first").
 */
static int dm_pretokenize(dm_tokenizer *tok, size_t k, const char *s, size_t n, int first,
                          size_t stop, dm_token_ids *out)
{
    if (out->n >= stop)
        return 0;
    if (k == tok->n_pre) {
        dm_encode_word(tok, s, n, out);
        return 0;
    }
    dm_pre_step *p = &tok->pre[k];
    if (p->kind == DM_PRE_BYTELEVEL) {
        /* ByteLevel::pre_tokenize: a space first unless there is one, then
         * GPT-2's regex with the Isolated behaviour (the last pre-tokenizer) */
        if (p->add_prefix_space && s[0] != ' ') {
            char *b = dm_pre_buf(p, n + 1);
            b[0] = ' ';
            memcpy(b + 1, s, n);
            s = b, n++;
        }
        if (p->use_regex)
            return dm_encode_piece(tok, s, n, stop, out);
        return dm_pretokenize(tok, k + 1, s, n, first, stop, out);
    }
    dm_spans sp = {p->span, 0, p->span_cap};
    int rc;
    if (p->kind == DM_PRE_METASPACE) {
        /* Metaspace::pre_tokenize: spaces become the replacement, which goes
         * first too unless there already (always; first: at the start of the
         * text only), then a split before each replacement (MergedWithNext) */
        size_t spaces = 0;
        for (size_t i = 0; i < n; i++)
            spaces += s[i] == ' ';
        char *b = dm_pre_buf(p, n + (spaces + 1) * p->rep_len);
        size_t m = 0;
        int starts = s[0] == ' ' || (n >= p->rep_len && memcmp(s, p->rep, p->rep_len) == 0);
        if (!starts && (p->prepend_scheme == DM_PREPEND_ALWAYS ||
                        (p->prepend_scheme == DM_PREPEND_FIRST && first))) {
            memcpy(b, p->rep, p->rep_len);
            m = p->rep_len;
        }
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') {
                memcpy(b + m, p->rep, p->rep_len);
                m += p->rep_len;
            } else
                b[m++] = s[i];
        }
        s = b, n = m;
        if (!p->split)
            return dm_pretokenize(tok, k + 1, s, n, first, stop, out);
        rc = dm_find_spans(tok, p->rep, p->rep_len, NULL, s, n, &sp);
        if (rc == 0)
            dm_group_spans(&sp, DM_SPLIT_MERGED_NEXT);
    } else {
        rc = dm_find_spans(tok, p->find, p->find_len, p->re, s, n, &sp);
        if (rc == 0) {
            if (p->invert)
                for (size_t i = 0; i < sp.n; i++)
                    sp.v[3 * i + 2] ^= 1;
            dm_group_spans(&sp, p->behavior);
        }
    }
    p->span = sp.v, p->span_cap = sp.cap;
    for (size_t i = 0; rc == 0 && i < sp.n && out->n < stop; i++) {
        size_t b = p->span[3 * i], e = p->span[3 * i + 1];
        if (p->span[3 * i + 2] || e == b)
            continue;
        rc = dm_pretokenize(tok, k + 1, s + b, e - b, first && b == 0, stop, out);
    }
    return rc;
}

/* Whether the character before s[at] (at > 0) / at s[at] (at < n) is a word
 * character, as the regex crate's \w (added_vocabulary.rs, single_word). */
static int dm_is_word_char(dm_tokenizer *tok, const char *s, size_t len)
{
    if (len == 1) {
        unsigned char c = (unsigned char)s[0];
        return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
               c == '_';
    }
    return pcre2_match(tok->word_re, (PCRE2_SPTR)s, len, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED,
                       tok->match, tok->mctx) >= 0;
}

static int dm_normalized_piece(dm_tokenizer *tok, const char *s, size_t n, int first,
                               size_t stop, dm_token_ids *out);

/*
 * Cuts the added tokens of trie t out of s[0, n) (AddedVocabulary::find_matches,
 * tokenizers/src/tokenizer/added_vocabulary.rs): a single_word token only
 * where no word character touches it; lstrip and rstrip take the white space
 * beside it into the token. The pieces between go on to the normalizer
 * (normalized 0) or to pre-tokenisation (normalized 1); empty ones are dropped.
 */
static int dm_split_added(dm_tokenizer *tok, const dm_trie *t, int normalized, const char *s,
                          size_t n, int first, size_t stop, dm_token_ids *out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t scan = 0, start_offset = 0, b, e;
    int32_t ti;
    int rc = 0;
    while (rc == 0 && out->n < stop && dm_trie_next(t, s, n, scan, &b, &e, &ti)) {
        scan = e;
        const dm_added *a = &tok->added[ti];
        if (a->single_word) {
            int word_before = b > 0 && dm_is_word_char(tok, s + b - dm_utf8_last_len(u, b),
                                                        dm_utf8_last_len(u, b));
            int word_after = e < n && dm_is_word_char(tok, s + e, dm_utf8_len(u + e, n - e));
            if (word_before || word_after)
                continue;
        }
        size_t start = b, end = e;
        if (a->lstrip) {
            while (start > 0) {
                size_t l = dm_utf8_last_len(u, start);
                if (!dm_is_space(dm_utf8_cp(u + start - l, l)))
                    break;
                start -= l;
            }
            if (start < start_offset)
                start = start_offset;
        }
        if (a->rstrip) {
            while (end < n) {
                size_t l = dm_utf8_len(u + end, n - end);
                if (!dm_is_space(dm_utf8_cp(u + end, l)))
                    break;
                end += l;
            }
        }
        if (start_offset < start) {
            const char *p = s + start_offset;
            size_t pl = start - start_offset;
            int f = first && start_offset == 0;
            rc = normalized ? dm_pretokenize(tok, 0, p, pl, f, stop, out)
                            : dm_normalized_piece(tok, p, pl, f, stop, out);
            if (rc != 0 || out->n >= stop)
                break;
        }
        dm_token_ids_push(out, a->id);
        start_offset = end;
    }
    if (rc == 0 && out->n < stop && start_offset < n) {
        const char *p = s + start_offset;
        size_t pl = n - start_offset;
        int f = first && start_offset == 0;
        rc = normalized ? dm_pretokenize(tok, 0, p, pl, f, stop, out)
                        : dm_normalized_piece(tok, p, pl, f, stop, out);
    }
    return rc;
}

/* A piece between raw added tokens: normalized, then split at the normalized
 * added tokens. */
static int dm_normalized_piece(dm_tokenizer *tok, const char *s, size_t n, int first,
                               size_t stop, dm_token_ids *out)
{
    if (tok->n_norm > 0) {
        s = dm_tok_normalize(tok, s, n, &n);
        if (!s)
            return -1;
        if (n == 0)
            return 0;
    }
    return dm_split_added(tok, &tok->norm_trie, 1, s, n, first, stop, out);
}

/* ---- encoding ---------------------------------------------------------- */

/* Scratch grown for a pathological word or text goes back to the system. */
static void dm_trim_scratch(dm_tokenizer *tok)
{
    if (tok->sym_cap > (1u << 16)) {
        free(tok->sym_id), free(tok->sym_prev), free(tok->sym_next), free(tok->heap);
        tok->sym_id = tok->sym_prev = tok->sym_next = NULL;
        tok->heap = NULL;
        tok->sym_cap = tok->heap_cap = 0;
    }
    if (tok->clean_cap > (1u << 24)) {
        free(tok->clean);
        tok->clean = NULL;
        tok->clean_cap = 0;
    }
    for (int i = 0; i < 2; i++)
        if (tok->norm_cap[i] > (1u << 24)) {
            free(tok->norm_buf[i]);
            tok->norm_buf[i] = NULL;
            tok->norm_cap[i] = 0;
        }
    if (tok->mapped_cap > (1u << 24)) {
        free(tok->mapped);
        tok->mapped = NULL;
        tok->mapped_cap = 0;
    }
    for (size_t k = 0; k < tok->n_pre; k++) {
        dm_pre_step *p = &tok->pre[k];
        if (p->buf_cap > (1u << 24)) {
            free(p->buf);
            p->buf = NULL;
            p->buf_cap = 0;
        }
        if (p->span_cap > (1u << 20)) {
            free(p->span);
            p->span = NULL;
            p->span_cap = 0;
        }
    }
}

/*
 * Words are encoded left to right and each depends only on the text up to
 * one character past its end (or, with a pre-tokenizer that sees a whole
 * piece first, on its piece), so stopping once max_new ids are out gives
 * exactly the first max_new ids of the whole text.
 */
static int dm_encode(dm_tokenizer *tok, const char *text, size_t len, size_t max_new,
                     dm_token_ids *out)
{
    const char *s = text;
    size_t n = len;
    size_t stop = max_new > SIZE_MAX - out->n ? SIZE_MAX : out->n + max_new;
    if (dm_utf8_valid_prefix((const unsigned char *)text, len) < len) {
        n = dm_utf8_repair((const unsigned char *)text, len, NULL);
        if (n + 1 > tok->clean_cap) {
            free(tok->clean);
            tok->clean_cap = n + 1;
            tok->clean = dm_xmalloc(tok->clean_cap);
        }
        dm_utf8_repair((const unsigned char *)text, len, tok->clean);
        s = tok->clean;
    }
    /* a rough guess of 1 id per 4 bytes saves most regrowth */
    dm_token_ids_reserve(out, n / 4 + 1 < max_new ? n / 4 + 1 : max_new);
    int rc = dm_split_added(tok, &tok->raw_trie, 0, s, n, 1, stop, out);
    if (out->n > stop)
        out->n = stop;
    dm_trim_scratch(tok);
    return rc;
}

int dm_tokenizer_encode_append(dm_tokenizer *tok, const char *text, size_t len,
                               dm_token_ids *out)
{
    return dm_encode(tok, text, len, SIZE_MAX, out);
}

int dm_tokenizer_encode_prefix(dm_tokenizer *tok, const char *text, size_t len, size_t max_new,
                               dm_token_ids *out)
{
    return dm_encode(tok, text, len, max_new, out);
}

int dm_tokenizer_encode(dm_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n)
{
    dm_token_ids t = DM_TOKEN_IDS_INIT;
    *ids = NULL;
    *n = 0;
    if (dm_tokenizer_encode_append(tok, text, len, &t) != 0) {
        dm_token_ids_release(&t);
        return -1;
    }
    if (!t.ids)
        t.ids = dm_xmalloc(sizeof *t.ids);
    *ids = t.ids;
    *n = t.n;
    return 0;
}

/* ---- decoding ---------------------------------------------------------- */

static int dm_token_exists(const dm_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->vocab_size && tok->text_off[id] != UINT32_MAX;
}

const char *dm_tokenizer_token_bytes(const dm_tokenizer *tok, int32_t id, size_t *len)
{
    if (!dm_token_exists(tok, id)) {
        dm_fail("token id %d is not in the vocabulary (size %d)", (int)id, (int)tok->vocab_size);
        return NULL;
    }
    *len = tok->bytes_off[id + 1] - tok->bytes_off[id];
    return tok->token_bytes + tok->bytes_off[id];
}

const char *dm_tokenizer_token_text(const dm_tokenizer *tok, int32_t id)
{
    if (!dm_token_exists(tok, id)) {
        dm_fail("token id %d is not in the vocabulary (size %d)", (int)id, (int)tok->vocab_size);
        return NULL;
    }
    return tok->token_text + tok->text_off[id];
}

char *dm_tokenizer_decode(const dm_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!dm_token_exists(tok, ids[i])) {
            dm_fail("token id %d at position %zu is not in the vocabulary (size %d)", (int)ids[i],
                    i, (int)tok->vocab_size);
            return NULL;
        }
        total += tok->bytes_off[ids[i] + 1] - tok->bytes_off[ids[i]];
    }
    char *buf = dm_xmalloc(total + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = tok->bytes_off[ids[i] + 1] - tok->bytes_off[ids[i]];
        memcpy(buf + o, tok->token_bytes + tok->bytes_off[ids[i]], l);
        o += l;
    }
    buf[o] = 0;
    if (len)
        *len = o;
    return buf;
}

char *dm_tokenizer_decode_token(const dm_tokenizer *tok, int32_t id, size_t *len)
{
    size_t n;
    const char *b = dm_tokenizer_token_bytes(tok, id, &n);
    if (!b)
        return NULL;
    char *out = dm_xmalloc(dm_utf8_repair((const unsigned char *)b, n, NULL) + 1);
    size_t o = dm_utf8_repair((const unsigned char *)b, n, out);
    out[o] = 0;
    if (len)
        *len = o;
    return out;
}
