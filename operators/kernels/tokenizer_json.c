/*
 * tokenizer_json.c: loads Hugging Face tokenizers' tokenizer.json (the
 * serialisation of tokenizers.Tokenizer, format version 1.0) into the pipeline
 * tokenizer.c encodes with.
 *
 * What is read, and what each part becomes (tokenizer_impl.h):
 *   model           BPE only: vocab, merges ("a b" strings as tokenizers 0.19
 *                   writes them, or [a, b] pairs as 0.20 does), unk_token,
 *                   fuse_unk, byte_fallback, ignore_merges; dropout null or 0;
 *                   continuing_subword_prefix and end_of_word_suffix null
 *   added_tokens    special or not, with single_word, lstrip, rstrip and
 *                   normalized; each id must be the one the library gives the
 *                   token on loading (its model vocab id, else the next free one)
 *   normalizer      Replace, Prepend, Strip, Sequence of these, or null
 *   pre_tokenizer   ByteLevel (last), Split, Metaspace, Sequence, or null
 *   post_processor  TemplateProcessing whose single template is "$A" or
 *                   "<tok> $A" (<tok> is the BOS: Gemma's <bos>), ByteLevel,
 *                   Sequence of these, or null
 *   decoder         only for dm_tokenizer_token_bytes: ByteLevel maps symbols
 *                   back to bytes; Replace, ByteFallback and Metaspace are
 *                   applied to each token alone; anything else leaves tokens
 *                   as spelled
 *   truncation, padding   must be null: they change a text's ids
 * Anything else is refused with the file and the key named: a tokenizer that
 * loads encodes exactly as the library does.
 */
#include "fs.h"
#include "tokenizer_impl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *path;
    dm_tokenizer *tok;
    json_t *vocab; /* model.vocab */
    /* the decoder, as dm_tokenizer_token_bytes applies it */
    int dec_byte_level, dec_byte_fallback;
    const char *dec_find[8], *dec_text[8];
    size_t n_dec;
} dm_json_ctx;

/* ---- typed fields ------------------------------------------------------- */

/* obj.key as a boolean: def when absent or null. */
static int dm_jbool(const dm_json_ctx *c, json_t *obj, const char *where, const char *key,
                    int def, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return dm_fail("%s: %s.%s must be true or false", c->path, where, key);
    *out = json_is_true(v);
    return 0;
}

/* obj.key as a string: NULL (and 0) when absent or null, -1 on another type. */
static int dm_jstr(const dm_json_ctx *c, json_t *obj, const char *where, const char *key,
                   const char **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return dm_fail("%s: %s.%s must be a string", c->path, where, key);
    *out = json_string_value(v);
    return 0;
}

static int dm_jtype(const dm_json_ctx *c, json_t *obj, const char *where, const char **type)
{
    if (!json_is_object(obj))
        return dm_fail("%s: %s must be an object or null", c->path, where);
    if (dm_jstr(c, obj, where, "type", type))
        return -1;
    if (!*type)
        return dm_fail("%s: %s has no \"type\"", c->path, where);
    return 0;
}

/* A pattern {"String": s} or {"Regex": r}: *find (String) or *re (Regex). */
static int dm_jpattern(const dm_json_ctx *c, json_t *obj, const char *where, char **find,
                       size_t *find_len, pcre2_code **re)
{
    json_t *p = json_object_get(obj, "pattern");
    json_t *s = json_is_object(p) ? json_object_get(p, "String") : NULL;
    json_t *r = json_is_object(p) ? json_object_get(p, "Regex") : NULL;
    if (json_is_string(s)) {
        if (json_string_length(s) == 0)
            return dm_fail("%s: %s.pattern.String is empty", c->path, where);
        *find_len = json_string_length(s);
        *find = dm_xmalloc(*find_len + 1);
        memcpy(*find, json_string_value(s), *find_len + 1);
        return 0;
    }
    if (json_is_string(r)) {
        char *what = dm_xasprintf("%s: %s.pattern.Regex", c->path, where);
        const char *pat = dm_tok_regex_for(json_string_value(r));
        int rc = dm_tok_compile(re, pat, pat == json_string_value(r) ? json_string_length(r)
                                                                        : strlen(pat),
                                what);
        free(what);
        return rc;
    }
    return dm_fail("%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", c->path,
                   where);
}

/* ---- model -------------------------------------------------------------- */

static int dm_json_model(dm_json_ctx *c, json_t *model, json_t *added, json_t *merges_out[1])
{
    dm_tokenizer *tok = c->tok;
    if (!json_is_object(model))
        return dm_fail("%s: no \"model\" object: not a tokenizers tokenizer.json", c->path);
    const char *type, *s;
    if (dm_jstr(c, model, "model", "type", &type))
        return -1;
    if (type && strcmp(type, "BPE") != 0)
        return dm_fail("%s: model.type \"%s\" is not supported (only BPE)", c->path, type);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0))
        return dm_fail("%s: model.dropout must be null: dropout makes encoding random",
                       c->path);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        if (dm_jstr(c, model, "model", affixes[i], &s))
            return -1;
        if (s && *s)
            return dm_fail("%s: model.%s \"%s\" is not supported (only null)", c->path,
                           affixes[i], s);
    }
    if (dm_jbool(c, model, "model", "fuse_unk", 0, &tok->fuse_unk) ||
        dm_jbool(c, model, "model", "byte_fallback", 0, &tok->byte_fallback) ||
        dm_jbool(c, model, "model", "ignore_merges", 0, &tok->ignore_merges))
        return -1;

    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return dm_fail("%s: model.vocab must be an object mapping tokens to ids", c->path);
    c->vocab = vocab;
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges))
        return dm_fail("%s: model.merges must be an array", c->path);
    merges_out[0] = merges;

    /* the model's ids */
    const char *key;
    size_t key_len;
    json_t *value;
    int64_t max_id = -1;
    size_t text_bytes = 0, n_model = 0;
    json_object_keylen_foreach(vocab, key, key_len, value) {
        json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
        if (id < 0 || id >= DM_MAX_VOCAB)
            return dm_fail("%s: model.vocab: token \"%.80s\": the id must be an integer in "
                           "[0, %d)",
                           c->path, key, DM_MAX_VOCAB);
        if (memchr(key, 0, key_len))
            return dm_fail("%s: model.vocab: token with id %lld contains a NUL character",
                           c->path, (long long)id);
        if (id > max_id)
            max_id = id;
        text_bytes += key_len + 1;
        n_model++;
    }
    if (n_model == 0)
        return dm_fail("%s: model.vocab is empty", c->path);
    const char **by_id = dm_xcalloc((size_t)max_id + 1, sizeof *by_id);
    json_object_keylen_foreach(vocab, key, key_len, value) {
        json_int_t id = json_integer_value(value);
        if (by_id[id]) {
            dm_fail("%s: model.vocab: id %lld is given to both \"%.80s\" and \"%.80s\"", c->path,
                    (long long)id, by_id[id], key);
            free(by_id);
            return -1;
        }
        by_id[id] = key;
    }
    free(by_id);

    /* added tokens: ids as the library gives them on loading
     * (AddedVocabulary::add_tokens, one token at a time in file order) */
    size_t n_added = json_array_size(added);
    tok->added = dm_xcalloc(n_added ? n_added : 1, sizeof *tok->added);
    size_t added_bytes = 1;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        json_t *ct = json_object_get(a, "content");
        if (!json_is_object(a) || !json_is_string(ct) || json_string_length(ct) == 0)
            return dm_fail("%s: added_tokens[%zu]: expected an object with a non-empty "
                           "\"content\"",
                           c->path, i);
        added_bytes += json_string_length(ct) + 1;
    }
    tok->added_text = dm_xmalloc(added_bytes);
    uint32_t ao = 0;
    int64_t added_max = -1;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        json_t *ct = json_object_get(a, "content"), *jid = json_object_get(a, "id");
        const char *content = json_string_value(ct);
        size_t cl = json_string_length(ct);
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        int sw = 0, ls = 0, rs = 0, norm = 0, special = 0;
        if (dm_jbool(c, a, where, "special", 0, &special) ||
            dm_jbool(c, a, where, "single_word", 0, &sw) ||
            dm_jbool(c, a, where, "lstrip", 0, &ls) || dm_jbool(c, a, where, "rstrip", 0, &rs) ||
            dm_jbool(c, a, where, "normalized", !special, &norm))
            return -1;
        if (!json_is_integer(jid))
            return dm_fail("%s: %s.id must be an integer", c->path, where);
        for (size_t j = 0; j < i; j++)
            if (tok->added[j].len == cl &&
                memcmp(tok->added_text + tok->added[j].off, content, cl) == 0)
                return dm_fail("%s: %s: \"%.80s\" is already added_tokens[%zu]", c->path,
                               where, content, j);
        json_t *mv = json_object_getn(vocab, content, cl);
        int64_t id;
        if (mv)
            id = json_integer_value(mv);
        else
            id = added_max >= (int64_t)n_model ? added_max + 1 : (int64_t)n_model;
        if (id != json_integer_value(jid))
            return dm_fail("%s: %s: \"%.80s\" has id %lld, but tokenizers gives it %lld (%s)",
                           c->path, where, content, (long long)json_integer_value(jid),
                           (long long)id,
                           mv ? "its id in model.vocab" : "the next id after the vocabulary");
        if (id >= DM_MAX_VOCAB)
            return dm_fail("%s: %s.id %lld is too large", c->path, where, (long long)id);
        if (id > added_max)
            added_max = id;
        if (id > max_id)
            max_id = id;
        memcpy(tok->added_text + ao, content, cl + 1);
        tok->added[i] = (dm_added){ao, (uint32_t)cl, (int32_t)id, (uint8_t)sw, (uint8_t)ls,
                                   (uint8_t)rs, (uint8_t)norm, (uint8_t)special};
        ao += (uint32_t)cl + 1;
        if (!mv)
            text_bytes += cl + 1;
    }
    tok->n_added = n_added;
    if (text_bytes > UINT32_MAX / 8)
        return dm_fail("%s: model.vocab is too large", c->path);

    /* the text of every id: the model's token, else the added token's content */
    int32_t nv = (int32_t)max_id + 1;
    tok->vocab_size = nv;
    tok->text_off = dm_xmalloc((size_t)nv * sizeof *tok->text_off);
    memset(tok->text_off, 0xff, (size_t)nv * sizeof *tok->text_off);
    tok->token_text = dm_xmalloc(text_bytes);
    uint32_t to = 0;
    json_object_keylen_foreach(vocab, key, key_len, value) {
        json_int_t id = json_integer_value(value);
        tok->text_off[id] = to;
        memcpy(tok->token_text + to, key, key_len + 1);
        to += (uint32_t)key_len + 1;
    }
    /* the model's vocabulary alone is what BPE looks words up in */
    dm_tok_vocab_index(tok);
    for (size_t i = 0; i < n_added; i++) {
        dm_added *a = &tok->added[i];
        const char *content = tok->added_text + a->off;
        if (json_object_getn(vocab, content, a->len))
            continue;
        if (tok->text_off[a->id] != UINT32_MAX)
            return dm_fail("%s: added_tokens[%zu]: \"%.80s\" gets id %d, which model.vocab "
                           "gives to \"%.80s\"",
                           c->path, i, content, (int)a->id, tok->token_text + tok->text_off[a->id]);
        tok->text_off[a->id] = to;
        memcpy(tok->token_text + to, content, a->len + 1);
        to += a->len + 1;
    }

    const char *unk;
    if (dm_jstr(c, model, "model", "unk_token", &unk))
        return -1;
    tok->unk = -1;
    if (unk) {
        tok->unk = dm_tok_vocab_find(tok, unk, strlen(unk));
        if (tok->unk < 0)
            return dm_fail("%s: model.unk_token \"%.80s\" is not in model.vocab", c->path, unk);
    }
    return 0;
}

/* model.merges: "a b" strings (a "#version" one skipped, as the library's
 * convert_merges_to_hashmap does) or [a, b] pairs. */
static int dm_json_merges(dm_json_ctx *c, json_t *merges)
{
    dm_tokenizer *tok = c->tok;
    size_t n = json_array_size(merges);
    dm_tok_pairs_init(tok, n);
    char *joined = NULL;
    size_t joined_cap = 0;
    int32_t rank = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t l = json_string_length(m);
            if (l >= 8 && memcmp(s, "#version", 8) == 0)
                continue;
            const char *sp = memchr(s, ' ', l);
            if (!sp || memchr(sp + 1, ' ', (size_t)(s + l - sp - 1))) {
                rc = dm_fail("%s: model.merges[%zu]: expected two tokens separated by one "
                             "space, found \"%.60s\"",
                             c->path, i, s);
                break;
            }
            a = s, la = (size_t)(sp - s), b = sp + 1, lb = (size_t)(s + l - sp - 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            la = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            lb = json_string_length(json_array_get(m, 1));
        } else {
            rc = dm_fail("%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", c->path, i);
            break;
        }
        json_t *ja = json_object_getn(c->vocab, a, la), *jb = json_object_getn(c->vocab, b, lb);
        if (!ja || !jb) {
            rc = dm_fail("%s: model.merges[%zu]: token \"%.*s\" is not in model.vocab", c->path,
                         i, (int)(ja ? lb : la), ja ? b : a);
            break;
        }
        if (joined_cap < la + lb) {
            joined_cap = 2 * (la + lb);
            joined = dm_xrealloc(joined, joined_cap);
        }
        memcpy(joined, a, la);
        memcpy(joined + la, b, lb);
        json_t *jm = json_object_getn(c->vocab, joined, la + lb);
        if (!jm) {
            rc = dm_fail("%s: model.merges[%zu]: the merge result \"%.*s\" is not in "
                         "model.vocab",
                         c->path, i, (int)(la + lb), joined);
            break;
        }
        dm_tok_pair_put(tok, (int32_t)json_integer_value(ja), (int32_t)json_integer_value(jb),
                        rank++, (int32_t)json_integer_value(jm));
    }
    free(joined);
    return rc;
}

/* ---- normalizer, pre-tokenizer, post-processor, decoder ------------------ */

static int dm_json_normalizer(dm_json_ctx *c, json_t *n, const char *where)
{
    dm_tokenizer *tok = c->tok;
    if (!n || json_is_null(n))
        return 0;
    const char *type;
    if (dm_jtype(c, n, where, &type))
        return -1;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return dm_fail("%s: %s.normalizers must be an array", c->path, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char *w = dm_xasprintf("%s.normalizers[%zu]", where, i);
            int rc = dm_json_normalizer(c, json_array_get(list, i), w);
            free(w);
            if (rc)
                return -1;
        }
        return 0;
    }
    tok->norm = dm_xrealloc(tok->norm, (tok->n_norm + 1) * sizeof *tok->norm);
    dm_norm_step *st = &tok->norm[tok->n_norm++];
    memset(st, 0, sizeof *st);
    const char *text;
    if (strcmp(type, "Replace") == 0) {
        st->kind = DM_NORM_REPLACE;
        if (dm_jpattern(c, n, where, &st->find, &st->find_len, &st->re) ||
            dm_jstr(c, n, where, "content", &text))
            return -1;
        if (!text)
            return dm_fail("%s: %s.content must be a string", c->path, where);
    } else if (strcmp(type, "Prepend") == 0) {
        st->kind = DM_NORM_PREPEND;
        if (dm_jstr(c, n, where, "prepend", &text))
            return -1;
        if (!text)
            return dm_fail("%s: %s.prepend must be a string", c->path, where);
    } else if (strcmp(type, "Strip") == 0) {
        st->kind = DM_NORM_STRIP;
        text = "";
        if (dm_jbool(c, n, where, "strip_left", 0, &st->left) ||
            dm_jbool(c, n, where, "strip_right", 0, &st->right))
            return -1;
    } else
        return dm_fail("%s: %s.type \"%s\" is not supported (dmica knows Replace, Prepend, "
                       "Strip and Sequence)",
                       c->path, where, type);
    st->text_len = strlen(text);
    st->text = dm_xstrdup(text);
    return 0;
}

static int dm_json_pre_tokenizer(dm_json_ctx *c, json_t *p, const char *where)
{
    dm_tokenizer *tok = c->tok;
    if (!p || json_is_null(p))
        return 0;
    const char *type, *s;
    if (dm_jtype(c, p, where, &type))
        return -1;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list))
            return dm_fail("%s: %s.pretokenizers must be an array", c->path, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char *w = dm_xasprintf("%s.pretokenizers[%zu]", where, i);
            int rc = dm_json_pre_tokenizer(c, json_array_get(list, i), w);
            free(w);
            if (rc)
                return -1;
        }
        return 0;
    }
    if (tok->byte_level)
        return dm_fail("%s: %s follows a ByteLevel pre-tokenizer: dmica supports ByteLevel "
                       "only as the last one",
                       c->path, where);
    tok->pre = dm_xrealloc(tok->pre, (tok->n_pre + 1) * sizeof *tok->pre);
    dm_pre_step *st = &tok->pre[tok->n_pre++];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = DM_PRE_BYTELEVEL;
        tok->byte_level = 1;
        return dm_jbool(c, p, where, "add_prefix_space", 1, &st->add_prefix_space) ||
                       dm_jbool(c, p, where, "use_regex", 1, &st->use_regex)
                   ? -1
                   : 0;
    }
    if (strcmp(type, "Split") == 0) {
        st->kind = DM_PRE_SPLIT;
        if (dm_jpattern(c, p, where, &st->find, &st->find_len, &st->re) ||
            dm_jbool(c, p, where, "invert", 0, &st->invert) ||
            dm_jstr(c, p, where, "behavior", &s))
            return -1;
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        static const int kinds[] = {DM_SPLIT_REMOVED, DM_SPLIT_ISOLATED, DM_SPLIT_MERGED_PREV,
                                    DM_SPLIT_MERGED_NEXT, DM_SPLIT_CONTIGUOUS};
        for (int i = 0; s && i < 5; i++)
            if (strcmp(s, names[i]) == 0) {
                st->behavior = kinds[i];
                return 0;
            }
        return dm_fail("%s: %s.behavior must be Removed, Isolated, MergedWithPrevious, "
                       "MergedWithNext or Contiguous",
                       c->path, where);
    }
    if (strcmp(type, "Metaspace") == 0) {
        st->kind = DM_PRE_METASPACE;
        if (dm_jstr(c, p, where, "replacement", &s))
            return -1;
        if (!s || !*s || dm_utf8_step((const unsigned char *)s, strlen(s)) != (int)strlen(s))
            return dm_fail("%s: %s.replacement must be one character", c->path, where);
        st->rep_len = strlen(s);
        memcpy(st->rep, s, st->rep_len);
        if (dm_jbool(c, p, where, "split", 1, &st->split) || dm_jstr(c, p, where, "prepend_scheme", &s))
            return -1;
        if (!s) {
            /* files from tokenizers before 0.19 say add_prefix_space */
            int aps = 1;
            if (dm_jbool(c, p, where, "add_prefix_space", 1, &aps))
                return -1;
            st->prepend_scheme = aps ? DM_PREPEND_ALWAYS : DM_PREPEND_NEVER;
        } else if (strcmp(s, "always") == 0)
            st->prepend_scheme = DM_PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0)
            st->prepend_scheme = DM_PREPEND_FIRST;
        else if (strcmp(s, "never") == 0)
            st->prepend_scheme = DM_PREPEND_NEVER;
        else
            return dm_fail("%s: %s.prepend_scheme must be always, first or never", c->path,
                           where);
        return 0;
    }
    return dm_fail("%s: %s.type \"%s\" is not supported (dmica knows ByteLevel, Split, "
                   "Metaspace and Sequence)",
                   c->path, where, type);
}

/* TemplateProcessing's single template: "$A", or one special token then "$A". */
static int dm_json_template(dm_json_ctx *c, json_t *p, const char *where)
{
    json_t *single = json_object_get(p, "single");
    size_t n = json_array_size(single);
    json_t *last = n ? json_object_get(json_array_get(single, n - 1), "Sequence") : NULL;
    json_t *first = n == 2 ? json_object_get(json_array_get(single, 0), "SpecialToken") : NULL;
    if (!json_is_array(single) || !last || (n == 2 && !first) || n > 2)
        return dm_fail("%s: %s.single: dmica supports the templates \"$A\" and \"<token> $A\" "
                       "(a BOS token only)",
                       c->path, where);
    c->tok->bos = -1; /* "$A": nothing goes first */
    if (!first)
        return 0;
    const char *name;
    if (dm_jstr(c, first, where, "id", &name))
        return -1;
    json_t *sp = json_object_get(json_object_get(p, "special_tokens"), name ? name : "");
    json_t *ids = json_object_get(sp, "ids");
    if (!name || !json_is_array(ids) || json_array_size(ids) != 1 ||
        !json_is_integer(json_array_get(ids, 0)))
        return dm_fail("%s: %s.special_tokens has no single id for \"%s\"", c->path, where,
                       name ? name : "");
    json_int_t id = json_integer_value(json_array_get(ids, 0));
    if (id < 0 || id >= c->tok->vocab_size || c->tok->text_off[id] == UINT32_MAX)
        return dm_fail("%s: %s.special_tokens: \"%s\" has id %lld, not in the vocabulary",
                       c->path, where, name, (long long)id);
    c->tok->bos = (int32_t)id;
    return 0;
}

static int dm_json_post_processor(dm_json_ctx *c, json_t *p, const char *where)
{
    if (!p || json_is_null(p))
        return 0;
    const char *type;
    if (dm_jtype(c, p, where, &type))
        return -1;
    if (strcmp(type, "ByteLevel") == 0)
        return 0; /* it moves offsets only */
    if (strcmp(type, "TemplateProcessing") == 0)
        return dm_json_template(c, p, where);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(p, "processors");
        if (!json_is_array(list))
            return dm_fail("%s: %s.processors must be an array", c->path, where);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char *w = dm_xasprintf("%s.processors[%zu]", where, i);
            int rc = dm_json_post_processor(c, json_array_get(list, i), w);
            free(w);
            if (rc)
                return -1;
        }
        return 0;
    }
    return dm_fail("%s: %s.type \"%s\" is not supported (dmica knows TemplateProcessing, "
                   "ByteLevel and Sequence)",
                   c->path, where, type);
}

/* The decoder's steps that apply to one token alone; the rest is ignored. */
static void dm_json_decoder(dm_json_ctx *c, json_t *d)
{
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type)
        return;
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(d, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++)
            dm_json_decoder(c, json_array_get(list, i));
    } else if (strcmp(type, "ByteLevel") == 0)
        c->dec_byte_level = 1;
    else if (strcmp(type, "ByteFallback") == 0)
        c->dec_byte_fallback = 1;
    else if (strcmp(type, "Replace") == 0 || strcmp(type, "Metaspace") == 0) {
        const char *find = strcmp(type, "Replace") == 0
                               ? json_string_value(json_object_get(
                                     json_object_get(d, "pattern"), "String"))
                               : json_string_value(json_object_get(d, "replacement"));
        const char *text = strcmp(type, "Replace") == 0
                               ? json_string_value(json_object_get(d, "content"))
                               : " ";
        if (find && *find && text && c->n_dec < 8) {
            c->dec_find[c->n_dec] = find;
            c->dec_text[c->n_dec++] = text;
        }
    }
}

static int dm_hex(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0'
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                    : -1;
}

/* token_bytes: each token through the decoder's per-token steps. */
static void dm_json_token_bytes(dm_json_ctx *c)
{
    dm_tokenizer *tok = c->tok;
    int32_t nv = tok->vocab_size;
    tok->bytes_off = dm_xmalloc(((size_t)nv + 1) * sizeof *tok->bytes_off);
    size_t cap = 1024, used = 0;
    tok->token_bytes = dm_xmalloc(cap);
    char *a = NULL, *b = NULL;
    size_t acap = 0, bcap = 0;
    for (int32_t id = 0; id < nv; id++) {
        tok->bytes_off[id] = (uint32_t)used;
        if (tok->text_off[id] == UINT32_MAX)
            continue;
        const char *t = tok->token_text + tok->text_off[id];
        size_t tl = strlen(t);
        const char *out = t;
        size_t ol = tl;
        char byte;
        if (c->dec_byte_fallback && tl == 6 && memcmp(t, "<0x", 3) == 0 && t[5] == '>' &&
            dm_hex(t[3]) >= 0 && dm_hex(t[4]) >= 0) {
            byte = (char)(dm_hex(t[3]) << 4 | dm_hex(t[4]));
            out = &byte, ol = 1;
        } else if (c->dec_byte_level) {
            if (acap < tl + 1)
                a = dm_xrealloc(a, acap = tl + 1);
            ol = dm_tok_byte_decode(t, tl, a);
            out = a;
        } else {
            for (size_t k = 0; k < c->n_dec; k++) {
                size_t fl = strlen(c->dec_find[k]), rl = strlen(c->dec_text[k]);
                size_t need = ol * (rl > fl ? rl : 1) + 1;
                if (bcap < need)
                    b = dm_xrealloc(b, bcap = need);
                size_t m = 0;
                for (size_t i = 0; i < ol;) {
                    if (i + fl <= ol && memcmp(out + i, c->dec_find[k], fl) == 0) {
                        memcpy(b + m, c->dec_text[k], rl);
                        m += rl, i += fl;
                    } else
                        b[m++] = out[i++];
                }
                char *tmp = a;
                size_t tcap = acap;
                a = b, acap = bcap, b = tmp, bcap = tcap;
                out = a, ol = m;
            }
        }
        if (used + ol > cap) {
            while (used + ol > cap)
                cap *= 2;
            tok->token_bytes = dm_xrealloc(tok->token_bytes, cap);
        }
        memcpy(tok->token_bytes + used, out, ol);
        used += ol;
    }
    tok->bytes_off[nv] = (uint32_t)used;
    free(a);
    free(b);
}

/* ---- the file ----------------------------------------------------------- */

static int dm_json_load(dm_json_ctx *c, json_t *root)
{
    dm_tokenizer *tok = c->tok;
    if (!json_is_object(root))
        return dm_fail("%s: expected a JSON object (a tokenizers tokenizer.json)", c->path);
    const char *version;
    if (dm_jstr(c, root, "tokenizer", "version", &version))
        return -1;
    if (version && strcmp(version, "1.0") != 0)
        return dm_fail("%s: version \"%s\" is not supported (only 1.0)", c->path, version);
    static const char *const unsupported[] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(root, unsupported[i]);
        if (v && !json_is_null(v))
            return dm_fail("%s: %s is set; dmica encodes whole texts, so it must be null",
                           c->path, unsupported[i]);
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added))
        return dm_fail("%s: added_tokens must be an array", c->path);
    json_t *merges = NULL;
    if (dm_json_model(c, json_object_get(root, "model"), added, &merges) ||
        dm_json_merges(c, merges) ||
        dm_json_normalizer(c, json_object_get(root, "normalizer"), "normalizer") ||
        dm_json_pre_tokenizer(c, json_object_get(root, "pre_tokenizer"), "pre_tokenizer") ||
        dm_tok_match_init(tok))
        return -1;
    tok->eot = dm_tok_vocab_find(tok, "<|endoftext|>", 13);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == 13 &&
            memcmp(tok->added_text + tok->added[i].off, "<|endoftext|>", 13) == 0)
            tok->eot = tok->added[i].id;
    tok->bos = tok->eot;
    if (dm_json_post_processor(c, json_object_get(root, "post_processor"), "post_processor"))
        return -1;

    /* the added tokens' tries; a normalized token matches its normalized
     * content (AddedVocabulary::refresh_added_tokens) */
    dm_tok_trie_init(&tok->raw_trie);
    dm_tok_trie_init(&tok->norm_trie);
    int newline_token = 0;
    for (size_t i = 0; i < tok->n_added; i++) {
        const dm_added *a = &tok->added[i];
        const char *s = tok->added_text + a->off;
        size_t n = a->len;
        if (a->normalized) {
            s = dm_tok_normalize(tok, s, n, &n);
            if (!s)
                return -1;
        }
        newline_token |= memchr(s, '\n', n) != NULL;
        dm_tok_trie_add(a->normalized ? &tok->norm_trie : &tok->raw_trie, s, n, (int32_t)i);
    }
    tok->cut_safe = tok->n_norm == 0 && tok->n_pre == 1 && tok->pre[0].kind == DM_PRE_BYTELEVEL &&
                    !tok->pre[0].add_prefix_space && tok->pre[0].use_regex && !newline_token;

    json_t *decoder = json_object_get(root, "decoder");
    if (json_is_object(decoder))
        dm_json_decoder(c, decoder);
    dm_json_token_bytes(c);
    return dm_tok_finish(tok);
}

dm_tokenizer *dm_tokenizer_load_json(const char *path)
{
    size_t len;
    char *text = dm_read_text(path, &len);
    if (!text)
        return NULL;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        dm_fail("%s: not valid JSON: %s (line %d, column %d)", path, jerr.text, jerr.line,
                jerr.column);
        return NULL;
    }
    dm_json_ctx c = {.path = path, .tok = dm_xcalloc(1, sizeof(dm_tokenizer))};
    c.tok->eot = c.tok->bos = c.tok->unk = -1;
    int rc = dm_json_load(&c, root);
    json_decref(root);
    if (rc != 0) {
        dm_tokenizer_free(c.tok);
        return NULL;
    }
    return c.tok;
}
