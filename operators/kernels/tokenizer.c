/*
 * tokenizer.c: GPT-2's byte-level BPE, exact to the Hugging Face reference.
 *
 * Encoding a text runs four stages:
 *   1. Invalid UTF-8 becomes U+FFFD, one per maximal invalid subsequence
 *      (Unicode 3.9 "best practice", what Python's decode(errors="replace")
 *      does). Valid text, the usual case, is used in place without a copy.
 *   2. The text is cut at each literal `<|endoftext|>`, which becomes one id;
 *      the pieces between are tokenized independently (HF's added-token
 *      split: so the regex's `\s+(?!\S)` sees the end of a piece there).
 *   3. Pre-tokenisation: GPT-2's regex (openai/gpt-2 src/encoder.py), PCRE2 with UTF and UCP,
 *      JIT-compiled, cuts each piece into words.
 *   4. Each word's bytes map to their vocabulary symbols (bytes_to_unicode)
 *      and BPE merges adjacent pairs, lowest merge rank first, leftmost first
 *      among equal ranks (HF's order; same result as GPT-2's encoder.py).
 *
 * Natural text repeats a small set of words, so stage 4 is memoised in a hash
 * map from word bytes to ids; the map is emptied when full, which keeps memory
 * bounded on adversarial input. The BPE itself is a heap over candidate pairs
 * with lazy invalidation, O(n log n) in the word length, because a "word" can
 * be megabytes of punctuation.
 *
 * Loading reads vocab.json (token -> id) and merges.txt (one "A B" pair per
 * line by priority, after a "#version" line) and checks that every symbol of
 * every merge, and every merge result, is in the vocabulary.
 */
#include "fs.h"
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pcre2.h>
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

static const char dm_eot_text[] = "<|endoftext|>";
#define DM_EOT_LEN (sizeof dm_eot_text - 1)

#define DM_MAX_VOCAB (1 << 24)
#define DM_BYTE_CP_END 0x144 /* bytes_to_unicode maps onto U+0021..U+0143 */

/* Word cache sizes: slots a power of two, at most half full. */
#define DM_CACHE_SLOTS (1u << 16)
#define DM_CACHE_MAX_ENTRIES (DM_CACHE_SLOTS / 2)
#define DM_CACHE_MAX_WORD 128 /* longer words are not memoised */
#define DM_CACHE_KEY_BYTES (1u << 20)
#define DM_CACHE_ID_COUNT (1u << 18)

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
    uint32_t *bytes_off;          /* (vocab_size+1) into token_bytes */
    char *token_bytes;            /* the bytes each token stands for */
    uint32_t *text_off;           /* (vocab_size) into token_text; UINT32_MAX: no such id */
    char *token_text;             /* tokens as vocab.json spells them */
    int32_t byte_id[256];         /* id of each single byte's symbol */

    /* merges: (id_left, id_right) -> rank and merged id, open addressing */
    uint64_t *pair_key;           /* (pair_mask+1); UINT64_MAX empty */
    int32_t *pair_rank, *pair_merged;
    uint64_t pair_mask;

    pcre2_code *re;
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
};

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

static void dm_bytes_to_unicode(uint32_t byte_cp[256], int16_t cp_byte[DM_BYTE_CP_END])
{
    uint32_t next = 0x100;
    for (int c = 0; c < DM_BYTE_CP_END; c++)
        cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        byte_cp[b] = dm_byte_is_printable(b) ? (uint32_t)b : next++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

static size_t dm_utf8_put(char *out, uint32_t cp)
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
static int dm_utf8_step(const unsigned char *s, size_t n)
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

/* ---- files ------------------------------------------------------------- */


/* ---- loading ----------------------------------------------------------- */

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

/* A later duplicate of a merge replaces the earlier one, as in the reference
 * (both encoder.py and tokenizers build a map from the list). */
static void dm_pair_put(dm_tokenizer *tok, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t i = dm_pair_hash(key) & tok->pair_mask;
    while (tok->pair_key[i] != UINT64_MAX && tok->pair_key[i] != key)
        i = (i + 1) & tok->pair_mask;
    tok->pair_key[i] = key;
    tok->pair_rank[i] = rank;
    tok->pair_merged[i] = merged;
}

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

    uint32_t byte_cp[256];
    int16_t cp_byte[DM_BYTE_CP_END];
    dm_bytes_to_unicode(byte_cp, cp_byte);

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
        /* Symbols outside the byte alphabet stand for their own UTF-8 (the
         * reference's ByteLevel decoder does the same); jansson keys are valid
         * UTF-8. */
        const unsigned char *k = (const unsigned char *)by_id[id];
        for (size_t i = 0; i < kl;) {
            int step = dm_utf8_step(k + i, kl - i);
            if (step < 0)
                step = -step;
            uint32_t cp = k[i];
            if (step == 2)
                cp = (k[i] & 0x1fu) << 6 | (k[i + 1] & 0x3fu);
            if (step <= 2 && cp < DM_BYTE_CP_END && cp_byte[cp] >= 0)
                tok->token_bytes[bo++] = (char)cp_byte[cp];
            else {
                memcpy(tok->token_bytes + bo, k + i, (size_t)step);
                bo += (uint32_t)step;
            }
            i += (size_t)step;
        }
    }
    tok->bytes_off[nv] = bo;

    for (int b = 0; b < 256; b++) {
        char sym[4];
        size_t sl = dm_utf8_put(sym, byte_cp[b]);
        tok->byte_id[b] = dm_vocab_id(vocab, sym, sl);
        if (tok->byte_id[b] < 0) {
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
    uint64_t slots = 16;
    while (slots < 2 * lines)
        slots *= 2;
    tok->pair_mask = slots - 1;
    tok->pair_key = dm_xmalloc(slots * sizeof *tok->pair_key);
    memset(tok->pair_key, 0xff, slots * sizeof *tok->pair_key);
    tok->pair_rank = dm_xmalloc(slots * sizeof *tok->pair_rank);
    tok->pair_merged = dm_xmalloc(slots * sizeof *tok->pair_merged);

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
        dm_pair_put(tok, a, b, rank++, merged);
    }
    if (rc == 0 && lineno == 0)
        rc = dm_fail("%s: empty file; expected \"#version: 0.2\" and merges", path);
    free(joined);
    free(text);
    return rc;
}

static int dm_compile_regex(dm_tokenizer *tok)
{
    int err;
    PCRE2_SIZE erroff;
    tok->re = pcre2_compile((PCRE2_SPTR)dm_gpt2_pattern, PCRE2_ZERO_TERMINATED,
                            PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    if (!tok->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dm_fail("tokenizer regex: %s at offset %zu (PCRE2 built without Unicode "
                       "support?)",
                       (const char *)msg, (size_t)erroff);
    }
    /* Without JIT (not built in, or no executable memory) pcre2_match
     * interprets the pattern: 5 times slower, same result. The pattern's
     * repeats are of single characters, so matching needs the same small
     * stack for a run of 20 MB as for a word (measured); 1 MiB is headroom. */
    if (pcre2_jit_compile(tok->re, PCRE2_JIT_COMPLETE) == 0) {
        tok->jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
        tok->mctx = pcre2_match_context_create(NULL);
        if (!tok->jit_stack || !tok->mctx)
            return dm_fail("tokenizer regex: out of memory");
        pcre2_jit_stack_assign(tok->mctx, NULL, tok->jit_stack);
    }
    tok->match = pcre2_match_data_create_from_pattern(tok->re, NULL);
    if (!tok->match)
        return dm_fail("tokenizer regex: out of memory");
    return 0;
}

dm_tokenizer *dm_tokenizer_load(const char *dir)
{
    dm_tokenizer *tok = dm_xcalloc(1, sizeof *tok);
    json_t *vocab = NULL;
    char *vocab_path = dm_xasprintf("%s/vocab.json", dir);
    char *merges_path = dm_xasprintf("%s/merges.txt", dir);
    int rc = dm_load_vocab(tok, vocab_path, &vocab);
    if (rc == 0)
        rc = dm_load_merges(tok, merges_path, vocab);
    if (rc == 0)
        rc = dm_compile_regex(tok);
    json_decref(vocab);
    free(vocab_path);
    free(merges_path);
    if (rc != 0) {
        dm_tokenizer_free(tok);
        return NULL;
    }
    tok->cache = dm_xcalloc(DM_CACHE_SLOTS, sizeof *tok->cache);
    tok->cache_keys = dm_xmalloc(DM_CACHE_KEY_BYTES);
    tok->cache_ids = dm_xmalloc(DM_CACHE_ID_COUNT * sizeof *tok->cache_ids);
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
    free(tok->bytes_off);
    free(tok->token_bytes);
    free(tok->text_off);
    free(tok->token_text);
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
    free(tok);
}

int32_t dm_tokenizer_vocab_size(const dm_tokenizer *tok) { return tok->vocab_size; }
int32_t dm_tokenizer_eot(const dm_tokenizer *tok) { return tok->eot; }

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

/*
 * BPE of one word: symbols start as single bytes in a linked list; the pair
 * of lowest (rank, position) merges first. A popped pair is stale when its
 * left symbol was merged away or either symbol changed since the push: ids
 * only grow longer, so comparing ids detects it.
 */
static void dm_bpe_word(dm_tokenizer *tok, const unsigned char *w, size_t n, dm_token_ids *out)
{
    if (n > tok->sym_cap) {
        tok->sym_cap = n > 2 * tok->sym_cap ? n : 2 * tok->sym_cap;
        tok->sym_id = dm_xrealloc(tok->sym_id, tok->sym_cap * sizeof *tok->sym_id);
        tok->sym_prev = dm_xrealloc(tok->sym_prev, tok->sym_cap * sizeof *tok->sym_prev);
        tok->sym_next = dm_xrealloc(tok->sym_next, tok->sym_cap * sizeof *tok->sym_next);
    }
    int32_t *id = tok->sym_id, *prev = tok->sym_prev, *next = tok->sym_next;
    for (size_t i = 0; i < n; i++) {
        id[i] = tok->byte_id[w[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
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
    if (n == 1) {
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
    memcpy(tok->cache_ids + s->ids_off, out->ids + first, k * sizeof *out->ids);
    tok->cache_keys_used += (uint32_t)n;
    tok->cache_ids_used += (uint32_t)k;
    tok->cache_entries++;
}

/* ---- encoding ---------------------------------------------------------- */

/* Pre-tokenises s[0, n) (valid UTF-8, no <|endoftext|>) and encodes each
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
}

/*
 * Words are encoded left to right and each depends only on the text up to
 * one character past its end, so stopping once max_new ids are out gives
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
    int rc = 0;
    size_t at = 0;
    while (at < n && out->n < stop) {
        const char *hit = tok->eot >= 0 ? memmem(s + at, n - at, dm_eot_text, DM_EOT_LEN) : NULL;
        size_t end = hit ? (size_t)(hit - s) : n;
        rc = dm_encode_piece(tok, s + at, end - at, stop, out);
        if (rc != 0 || !hit || out->n >= stop)
            break;
        dm_token_ids_push(out, tok->eot);
        at = end + DM_EOT_LEN;
    }
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
