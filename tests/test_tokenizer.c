/*
 * test_tokenizer.c: operators/kernels/tokenizer.c and tokenizer_json.c, BPE
 * exact to Hugging Face tokenizers.
 *
 * What must hold: the ids of every file in tests/golden/tokenizer_corpus/ are
 * exactly those of Hugging Face `tokenizers` (tests/golden/
 * make_tokenizer_golden.py wrote them into tests/golden/tokenizer/), invalid
 * UTF-8 included; decoding gives back the text (repaired, for invalid UTF-8);
 * merges apply by rank, then position; the word cache never changes a result,
 * also once it has been emptied; pathological words finish; broken vocab.json
 * and merges.txt files are refused with the file and line named; and
 * `dmica tokenize` prints what the golden files hold.
 *
 * For tokenizer.json: on each file tests/golden/make_tokenizer_json_golden.py
 * built with the library (Gemma's structure, four more, GPT-2's), every text of
 * tests/golden/tokenizer_json/cases.json gives the library's ids, with and
 * without the BOS, and every prefix of them; broken or unsupported files are
 * refused naming the file and the key; the folder rule picks the right file.
 *
 * The real vocabulary is tests/data/gpt2-tokenizer, a copy of GPT-2's (from the repository root,
 * where the tests run), or the folder in DMICA_GPT2_TOKENIZER.
 */
#include "commands.h"
#include "tokenizer.h"

#include "dm.h"
#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <zstd.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CORPUS "tests/golden/tokenizer_corpus"
#define GOLDEN "tests/golden/tokenizer"

/* ---- helpers ------------------------------------------------------------ */

static const char *gpt2_dir(void)
{
    const char *d = getenv("DMICA_GPT2_TOKENIZER");
    return d && *d ? d : "tests/data/gpt2-tokenizer";
}

static dm_tokenizer *load_gpt2(void)
{
    dm_tokenizer *tok = dm_tokenizer_load(gpt2_dir());
    ck_assert_msg(tok != NULL, "%s (set DMICA_GPT2_TOKENIZER to the folder with GPT-2's "
                  "vocab.json and merges.txt)", dm_error());
    return tok;
}

static void put(const char *path, const char *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void put_str(const char *dir, const char *name, const char *text)
{
    char *p = dm_xasprintf("%s/%s", dir, name);
    put(p, text, strlen(text));
    free(p);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = dm_xmalloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2)
            buf = dm_xrealloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void parse_ids(const char *text, dm_token_ids *out)
{
    const char *p = text;
    char *end;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p)
            break;
        dm_token_ids_push(out, (int32_t)v);
        p = end;
    }
}

static void assert_ids(dm_tokenizer *tok, const char *text, const int32_t *want, size_t n)
{
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(dm_tokenizer_encode(tok, text, strlen(text), &ids, &k), 0);
    ck_assert_msg(k == n, "\"%s\": %zu ids, expected %zu", text, k, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids[i] == want[i], "\"%s\": id %zu is %d, expected %d", text, i, ids[i],
                      want[i]);
    free(ids);
}

#define ASSERT_IDS(tok, text, ...)                                                  \
    do {                                                                            \
        const int32_t want_[] = {__VA_ARGS__};                                      \
        assert_ids(tok, text, want_, sizeof want_ / sizeof want_[0]);               \
    } while (0)

/* GPT-2's bytes_to_unicode, independently of the library's copy. */
static unsigned byte_cp(int b)
{
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
        if (c == b)
            return printable ? (unsigned)c : 256u + (unsigned)n;
        n += !printable;
    }
    return 0;
}

/*
 * A tiny byte-level vocabulary: byte b has id b, then "aa" 256, "ab" 257,
 * "aaa" 258, plus the tokens in extra (a JSON fragment, may be ""). Written
 * as dir/vocab.json.
 */
static void put_tiny_vocab(const char *dir, const char *extra)
{
    size_t cap = 16384, n = 0;
    char *j = dm_xmalloc(cap);
    n += (size_t)snprintf(j + n, cap - n, "{");
    for (int b = 0; b < 256; b++)
        n += (size_t)snprintf(j + n, cap - n, "\"\\u%04x\": %d, ", byte_cp(b), b);
    n += (size_t)snprintf(j + n, cap - n, "\"aa\": 256, \"ab\": 257, \"aaa\": 258%s}", extra);
    put_str(dir, "vocab.json", j);
    free(j);
}

/* Runs dm_cmd_tokenize with stdout and stderr captured; returns its status. */
static int run_tokenize(int argc, char **argv, char **out, char **err)
{
    char *dir = dm_test_tmpdir("tok");
    char *po = dm_xasprintf("%s/out", dir), *pe = dm_xasprintf("%s/err", dir);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert(so >= 0 && se >= 0 && fo >= 0 && fe >= 0);
    dup2(fo, 1);
    dup2(fe, 2);
    int rc = dm_cmd_tokenize(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so), close(se), close(fo), close(fe);
    size_t n;
    *out = slurp(po, &n);
    *err = slurp(pe, &n);
    dm_test_rm_tree(dir);
    free(po), free(pe), free(dir);
    return rc;
}

/* ---- the corpus against the reference ------------------------------------ */

START_TEST(corpus_matches_reference)
{
    dm_tokenizer *tok = load_gpt2();
    DIR *d = opendir(CORPUS);
    ck_assert_msg(d != NULL, "cannot open %s (run the tests from the repository root)", CORPUS);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *path = dm_xasprintf("%s/%s", CORPUS, e->d_name);
        char *gold = dm_xasprintf("%s/%s.ids", GOLDEN, e->d_name);
        size_t len, glen;
        char *text = slurp(path, &len), *gtext = slurp(gold, &glen);
        ck_assert_msg(text && gtext, "%s or %s is missing (run make_tokenizer_golden.py)", path,
                      gold);
        dm_token_ids want = DM_TOKEN_IDS_INIT;
        parse_ids(gtext, &want);

        int32_t *ids;
        size_t n;
        ck_assert_int_eq(dm_tokenizer_encode(tok, text, len, &ids, &n), 0);
        size_t i = 0;
        while (i < n && i < want.n && ids[i] == want.ids[i])
            i++;
        ck_assert_msg(i == n && n == want.n,
                      "%s: %zu ids, reference %zu; first difference at id %zu: %d, reference %d",
                      e->d_name, n, want.n, i, i < n ? ids[i] : -1,
                      i < want.n ? want.ids[i] : -1);
        files++;
        free(ids);
        dm_token_ids_release(&want);
        free(text), free(gtext), free(path), free(gold);
    }
    closedir(d);
    ck_assert_int_ge(files, 18);
    dm_tokenizer_free(tok);
}
END_TEST

START_TEST(decode_gives_back_the_text)
{
    dm_tokenizer *tok = load_gpt2();
    DIR *d = opendir(CORPUS);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *path = dm_xasprintf("%s/%s", CORPUS, e->d_name);
        char *repaired_path = dm_xasprintf("%s/%s.repaired", GOLDEN, e->d_name);
        size_t len, rlen;
        char *text = slurp(path, &len), *repaired = slurp(repaired_path, &rlen);
        const char *want = repaired ? repaired : text;
        size_t want_len = repaired ? rlen : len;

        int32_t *ids;
        size_t n, back_len;
        ck_assert_int_eq(dm_tokenizer_encode(tok, text, len, &ids, &n), 0);
        char *back = dm_tokenizer_decode(tok, ids, n, &back_len);
        ck_assert_ptr_nonnull(back);
        ck_assert_msg(back_len == want_len && memcmp(back, want, want_len) == 0,
                      "%s: decode(encode(text)) differs from the %s text", e->d_name,
                      repaired ? "repaired" : "original");
        ck_assert_int_eq(back[back_len], 0);
        /* Token by token, the bytes add up to the same. */
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            size_t tl;
            const char *tb = dm_tokenizer_token_bytes(tok, ids[i], &tl);
            ck_assert_ptr_nonnull(tb);
            ck_assert(at + tl <= back_len && memcmp(back + at, tb, tl) == 0);
            at += tl;
        }
        ck_assert_uint_eq(at, back_len);
        free(back), free(ids), free(text), free(repaired), free(path), free(repaired_path);
    }
    closedir(d);
    dm_tokenizer_free(tok);
}
END_TEST

/* ---- tokenizer.json against the reference -------------------------------- */

#define JSON_GOLDEN "tests/golden/tokenizer_json"

/* make_tokenizer_json_golden.py's variants (its docstring says what each covers) */
static const char *const json_variants[] = {"gemma", "gemma_nopre", "llama", "metaspace", "splits",
                                            "gpt2"};
#define N_JSON_VARIANTS (int)(sizeof json_variants / sizeof *json_variants)

/* A folder holding GPT-2's tokenizer.json, decompressed from the golden .zst
 * (committed compressed: 1.4 MB as text). Remove it with dm_test_rm_tree. */
static char *gpt2_json_dir(void)
{
    size_t zlen;
    char *z = slurp(JSON_GOLDEN "/gpt2/tokenizer.json.zst", &zlen);
    ck_assert_msg(z != NULL, "cannot read %s/gpt2/tokenizer.json.zst", JSON_GOLDEN);
    unsigned long long n = ZSTD_getFrameContentSize(z, zlen);
    ck_assert(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN);
    char *text = dm_xmalloc((size_t)n);
    ck_assert(ZSTD_decompress(text, (size_t)n, z, zlen) == n);
    char *dir = dm_test_tmpdir("tokjson");
    char *path = dm_xasprintf("%s/tokenizer.json", dir);
    put(path, text, (size_t)n);
    free(path), free(text), free(z);
    return dir;
}

static json_t *load_json(const char *path)
{
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    ck_assert_msg(j != NULL, "%s: %s (run tests/golden/make_tokenizer_json_golden.py)", path,
                  err.text);
    return j;
}

/* The bytes of a hex string (yours, free(3)). */
static char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    char *b = dm_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        ck_assert(sscanf(hex + 2 * i, "%2x", &v) == 1);
        b[i] = (char)v;
    }
    *len = n;
    return b;
}

/* ids equals the JSON array want; otherwise fails naming the first difference. */
static void assert_ids_json(const char *variant, const char *what, const int32_t *ids, size_t n,
                            json_t *want)
{
    size_t wn = json_array_size(want), i = 0;
    while (i < n && i < wn && ids[i] == json_integer_value(json_array_get(want, i)))
        i++;
    ck_assert_msg(i == n && n == wn,
                  "%s: %s: %zu ids, reference %zu; first difference at id %zu: %d, reference %d",
                  variant, what, n, wn, i, i < n ? ids[i] : -1,
                  i < wn ? (int)json_integer_value(json_array_get(want, i)) : -1);
}

START_TEST(json_matches_reference)
{
    const char *variant = json_variants[_i];
    json_t *cases = load_json(JSON_GOLDEN "/cases.json");
    char *exp_path = dm_xasprintf("%s/%s/expected.json", JSON_GOLDEN, variant);
    json_t *exp = load_json(exp_path);
    int gpt2 = strcmp(variant, "gpt2") == 0;
    char *dir = gpt2 ? gpt2_json_dir() : dm_xasprintf("%s/%s", JSON_GOLDEN, variant);
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok != NULL, "%s: %s", variant, dm_error());
    ck_assert_int_eq(dm_tokenizer_vocab_size(tok),
                     json_integer_value(json_object_get(exp, "vocab_size")));
    /* the post-processor's BOS; without one, <|endoftext|> when there is one */
    int32_t lib_bos = (int32_t)json_integer_value(json_object_get(exp, "bos"));
    ck_assert_int_eq(dm_tokenizer_bos(tok), lib_bos >= 0 ? lib_bos : dm_tokenizer_eot(tok));
    if (gpt2)
        ck_assert_int_eq(dm_tokenizer_bos(tok), 50256);

    const char *name;
    json_t *want;
    int checked = 0;
    json_object_foreach(json_object_get(exp, "ids"), name, want) {
        json_t *hex = json_object_get(cases, name);
        ck_assert_msg(hex != NULL, "%s: no case %s in cases.json", variant, name);
        size_t len;
        char *text = unhex(json_string_value(hex), &len);
        int32_t *ids;
        size_t n;
        ck_assert_int_eq(dm_tokenizer_encode(tok, text, len, &ids, &n), 0);
        assert_ids_json(variant, name, ids, n, want);

        /* add_special_tokens=True is the BOS, then the same */
        json_t *special = json_object_get(json_object_get(exp, "ids_special"), name);
        if (special) {
            dm_token_ids t = DM_TOKEN_IDS_INIT;
            if (lib_bos >= 0)
                dm_token_ids_push(&t, dm_tokenizer_bos(tok));
            ck_assert_int_eq(dm_tokenizer_encode_append(tok, text, len, &t), 0);
            assert_ids_json(variant, name, t.ids, t.n, special);
            dm_token_ids_release(&t);
        }
        /* prefixes are exact */
        for (size_t k = 1; k < n; k = k * 2 + 1) {
            dm_token_ids t = DM_TOKEN_IDS_INIT;
            ck_assert_int_eq(dm_tokenizer_encode_prefix(tok, text, len, k, &t), 0);
            ck_assert_msg(t.n == k && memcmp(t.ids, ids, k * sizeof *ids) == 0,
                          "%s: %s: prefix of %zu ids differs", variant, name, k);
            dm_token_ids_release(&t);
        }
        free(ids), free(text);
        checked++;
    }
    ck_assert_int_ge(checked, 30);

    if (gpt2) {
        /* the whole GPT-2 corpus, and the same ids as from vocab.json and merges.txt */
        dm_tokenizer *files = load_gpt2();
        ck_assert_int_eq(dm_tokenizer_cut_is_safe(tok), 1);
        ck_assert_int_eq(dm_tokenizer_cut_is_safe(files), 1);
        DIR *d = opendir(CORPUS);
        ck_assert_ptr_nonnull(d);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char *path = dm_xasprintf("%s/%s", CORPUS, e->d_name);
            char *gold = dm_xasprintf("%s/%s.ids", GOLDEN, e->d_name);
            size_t len, glen;
            char *text = slurp(path, &len), *gtext = slurp(gold, &glen);
            dm_token_ids want_ids = DM_TOKEN_IDS_INIT, a = DM_TOKEN_IDS_INIT,
                         b = DM_TOKEN_IDS_INIT;
            parse_ids(gtext, &want_ids);
            ck_assert_int_eq(dm_tokenizer_encode_append(tok, text, len, &a), 0);
            ck_assert_int_eq(dm_tokenizer_encode_append(files, text, len, &b), 0);
            ck_assert_msg(a.n == want_ids.n &&
                              (a.n == 0 || memcmp(a.ids, want_ids.ids, a.n * sizeof *a.ids) == 0),
                          "gpt2 tokenizer.json: %s differs from the reference", e->d_name);
            ck_assert(b.n == a.n && (a.n == 0 || memcmp(a.ids, b.ids, a.n * sizeof *a.ids) == 0));
            char *back = dm_tokenizer_decode(tok, a.ids, a.n, &glen);
            char *back2 = dm_tokenizer_decode(files, a.ids, a.n, &len);
            ck_assert(back && back2 && glen == len && memcmp(back, back2, len) == 0);
            free(back), free(back2);
            dm_token_ids_release(&want_ids), dm_token_ids_release(&a), dm_token_ids_release(&b);
            free(text), free(gtext), free(path), free(gold);
        }
        closedir(d);
        dm_tokenizer_free(files);
        dm_test_rm_tree(dir);
    } else
        ck_assert_int_eq(dm_tokenizer_cut_is_safe(tok), 0);
    dm_tokenizer_free(tok);
    json_decref(cases), json_decref(exp);
    free(dir), free(exp_path);
}
END_TEST

/* ---- known ids and the API ----------------------------------------------- */

START_TEST(known_gpt2_ids)
{
    dm_tokenizer *tok = load_gpt2();
    ck_assert_int_eq(dm_tokenizer_vocab_size(tok), 50257);
    ck_assert_int_eq(dm_tokenizer_eot(tok), 50256);
    ASSERT_IDS(tok, "Hello world", 15496, 995);
    ASSERT_IDS(tok, " Hello world", 18435, 995);
    ASSERT_IDS(tok, "<|endoftext|>", 50256);
    ASSERT_IDS(tok, " <|endoftext|>", 220, 50256);
    ASSERT_IDS(tok, "<|endoftext|><|endoftext|>", 50256, 50256);
    ASSERT_IDS(tok, "a<|endoftext|>b", 64, 50256, 65);
    ASSERT_IDS(tok, "I'm", 40, 1101);
    ASSERT_IDS(tok, "I'M DON'T you'll", 40, 6, 44, 23917, 6, 51, 345, 1183);
    ASSERT_IDS(tok, "a   b\n\n  c   ", 64, 220, 220, 275, 628, 220, 269, 220, 220, 220);
    /* U+00A0 and U+202F are white space; bytes c2 a0 are one token */
    ASSERT_IDS(tok, "\xc2\xa0" "a \xe2\x80\xaf" "b", 1849, 64, 220, 447, 107, 65);
    /* a lone 0xff is U+FFFD, as Python's decode(errors="replace") makes it */
    ASSERT_IDS(tok, "\xff", 4210);
    ASSERT_IDS(tok, "\xef\xbf\xbd", 4210);

    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    ck_assert_int_eq(dm_tokenizer_encode(tok, "", 0, &ids, &n), 0);
    ck_assert_uint_eq(n, 0);
    free(ids);

    size_t len;
    const char *b = dm_tokenizer_token_bytes(tok, 995, &len);
    ck_assert_uint_eq(len, 6);
    ck_assert(memcmp(b, " world", 6) == 0);
    ck_assert_str_eq(dm_tokenizer_token_text(tok, 995), "\xc4\xa0world"); /* "Ġworld" */
    ck_assert_str_eq(dm_tokenizer_token_text(tok, 50256), "<|endoftext|>");
    b = dm_tokenizer_token_bytes(tok, 50256, &len);
    ck_assert(len == 13 && memcmp(b, "<|endoftext|>", 13) == 0);
    /* byte tokens: id 188 is the byte 0x00 */
    b = dm_tokenizer_token_bytes(tok, 188, &len);
    ck_assert(len == 1 && b[0] == 0);

    ck_assert_ptr_null(dm_tokenizer_token_bytes(tok, 50257, &len));
    assert_error_has("50257");
    ck_assert_ptr_null(dm_tokenizer_token_text(tok, -1));
    const int32_t bad[] = {15496, 995, 60000};
    ck_assert_ptr_null(dm_tokenizer_decode(tok, bad, 3, &len));
    assert_error_has("60000");
    assert_error_has("position 2");
    char *empty = dm_tokenizer_decode(tok, bad, 0, &len);
    ck_assert(empty && len == 0 && empty[0] == 0);
    free(empty);
    /* one token alone, as tokenizers' ByteLevel decoder gives it (from_utf8_lossy):
     * a split character is one U+FFFD per maximal invalid subpart, not one per
     * byte (447: e2 80 -> one; 12520: " " f0 9f -> " " and one); byte 0x00 stays */
    static const struct {
        int32_t id;
        const char *want;
        size_t len;
    } tokens[] = {{15496, "Hello", 5}, {995, " world", 6}, {50256, "<|endoftext|>", 13}, {447, "\xef\xbf\xbd", 3},
                  {12520, " \xef\xbf\xbd", 4}, {164, "\xef\xbf\xbd", 3}, {188, "\0", 1}};
    for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++) {
        char *s = dm_tokenizer_decode_token(tok, tokens[i].id, &len);
        ck_assert_msg(s && len == tokens[i].len && !memcmp(s, tokens[i].want, len) && !s[len], "token %d",
                      (int)tokens[i].id);
        free(s);
    }
    ck_assert_ptr_null(dm_tokenizer_decode_token(tok, 50257, &len));
    assert_error_has("50257");
    dm_tokenizer_free(tok);
    dm_tokenizer_free(NULL);
}
END_TEST

START_TEST(encode_appends)
{
    dm_tokenizer *tok = load_gpt2();
    dm_token_ids t = DM_TOKEN_IDS_INIT;
    dm_token_ids_push(&t, 50256);
    ck_assert_int_eq(dm_tokenizer_encode_append(tok, "Hello", 5, &t), 0);
    ck_assert_int_eq(dm_tokenizer_encode_append(tok, " world", 6, &t), 0);
    ck_assert_uint_eq(t.n, 3);
    ck_assert(t.ids[0] == 50256 && t.ids[1] == 15496 && t.ids[2] == 995);
    /* text with NUL bytes is taken by length */
    ck_assert_int_eq(dm_tokenizer_encode_append(tok, "a\0b", 3, &t), 0);
    ck_assert_uint_eq(t.n, 6);
    ck_assert(t.ids[3] == 64 && t.ids[4] == 188 && t.ids[5] == 65);
    dm_token_ids_release(&t);
    ck_assert(t.ids == NULL && t.n == 0 && t.cap == 0);
    dm_tokenizer_free(tok);
}
END_TEST

START_TEST(prefix_is_exact)
{
    dm_tokenizer *tok = load_gpt2();
    DIR *d = opendir(CORPUS);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *path = dm_xasprintf("%s/%s", CORPUS, e->d_name);
        size_t len;
        char *text = slurp(path, &len);
        int32_t *all;
        size_t n;
        ck_assert_int_eq(dm_tokenizer_encode(tok, text, len, &all, &n), 0);
        for (size_t k = 0; k <= n + 2; k = k < 8 ? k + 1 : k * 3 / 2) {
            dm_token_ids t = DM_TOKEN_IDS_INIT;
            dm_token_ids_push(&t, -7); /* appends after what is there */
            ck_assert_int_eq(dm_tokenizer_encode_prefix(tok, text, len, k, &t), 0);
            size_t want = k < n ? k : n;
            ck_assert_msg(t.n == want + 1, "%s: prefix %zu gave %zu ids", e->d_name, k, t.n - 1);
            ck_assert(t.ids[0] == -7 && memcmp(t.ids + 1, all, want * sizeof *all) == 0);
            dm_token_ids_release(&t);
        }
        free(all), free(text), free(path);
    }
    closedir(d);
    dm_tokenizer_free(tok);
}
END_TEST

/* ---- BPE order and the cache --------------------------------------------- */

START_TEST(merges_by_rank_then_position)
{
    char *dir = dm_test_tmpdir("tok");
    put_tiny_vocab(dir, "");
    put_str(dir, "merges.txt", "#version: 0.2\na a\na b\naa a\n");
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_tokenizer_eot(tok), -1);
    /* a a merges everywhere first (left to right), then aa a */
    ASSERT_IDS(tok, "aaaaa", 256, 258);
    ASSERT_IDS(tok, "aaa", 258);
    /* rank beats position: a b (rank 1) before aa a (rank 2) */
    ASSERT_IDS(tok, "aaab", 256, 257);
    ASSERT_IDS(tok, "aab", 256, 'b');
    ASSERT_IDS(tok, "ba", 'b', 'a');
    /* without the token in the vocabulary, <|endoftext|> is plain text */
    int32_t *ids;
    size_t n;
    ck_assert_int_eq(dm_tokenizer_encode(tok, "<|endoftext|>", 13, &ids, &n), 0);
    ck_assert_uint_eq(n, 13);
    free(ids);
    dm_tokenizer_free(tok);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

/* "w" followed by i in base 26 (letters), one word per line. */
static char *many_words(int count, size_t *len)
{
    size_t cap = (size_t)count * 12 + 1, n = 0;
    char *s = dm_xmalloc(cap);
    for (int i = 0; i < count; i++) {
        s[n++] = 'w';
        for (int v = i; v; v /= 26)
            s[n++] = (char)('a' + v % 26);
        s[n++] = i % 7 ? ' ' : '\n';
    }
    s[n] = 0;
    *len = n;
    return s;
}

START_TEST(cache_never_changes_results)
{
    /* 100000 distinct words: the cache (32768 words) is emptied several times */
    size_t len;
    char *text = many_words(100000, &len);
    dm_tokenizer *a = load_gpt2(), *b = load_gpt2();
    int32_t *first, *again, *tail;
    size_t n1, n2, nt;
    ck_assert_int_eq(dm_tokenizer_encode(a, text, len, &first, &n1), 0);
    ck_assert_int_eq(dm_tokenizer_encode(a, text, len, &again, &n2), 0);
    ck_assert_uint_eq(n1, n2);
    ck_assert(memcmp(first, again, n1 * sizeof *first) == 0);

    /* b sees the second half first, so its cache holds other words */
    size_t cut = len / 2;
    while (text[cut - 1] != '\n')
        cut++;
    dm_token_ids t = DM_TOKEN_IDS_INIT;
    ck_assert_int_eq(dm_tokenizer_encode(b, text + cut, len - cut, &tail, &nt), 0);
    ck_assert_int_eq(dm_tokenizer_encode_append(b, text, cut, &t), 0);
    ck_assert_uint_eq(t.n + nt, n1);
    ck_assert(memcmp(first, t.ids, t.n * sizeof *first) == 0);
    ck_assert(memcmp(first + t.n, tail, nt * sizeof *first) == 0);
    dm_token_ids_release(&t);
    free(first), free(again), free(tail), free(text);
    dm_tokenizer_free(a);
    dm_tokenizer_free(b);
}
END_TEST

START_TEST(pathological_text_finishes)
{
    dm_tokenizer *tok = load_gpt2();
    size_t n = 1 << 20;
    char *s = dm_xmalloc(n + 1);
    const char fill[] = {' ', '=', 'a', '\n', '\xff'};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(s, fill[k], n);
        s[n] = 'x';
        int32_t *ids;
        size_t m, back_len;
        double t0 = dm_now();
        ck_assert_int_eq(dm_tokenizer_encode(tok, s, n + 1, &ids, &m), 0);
        ck_assert_msg(dm_now() - t0 < 20, "1 MiB of 0x%02x took %.1f s",
                      (unsigned char)fill[k], dm_now() - t0);
        char *back = dm_tokenizer_decode(tok, ids, m, &back_len);
        if (fill[k] == '\xff') {
            ck_assert_uint_eq(back_len, 3 * n + 1); /* each byte one U+FFFD */
        } else {
            ck_assert_uint_eq(back_len, n + 1);
            ck_assert(memcmp(back, s, n + 1) == 0);
        }
        free(back);
        free(ids);
    }
    free(s);
    dm_tokenizer_free(tok);
}
END_TEST

/* ---- broken files -------------------------------------------------------- */

/* Loads a folder holding vocab (tiny vocabulary plus extra, or the literal
 * text in vocab_text when not NULL) and merges; expects failure naming what. */
static void expect_load_error(const char *vocab_text, const char *merges, const char *what,
                              const char *what2)
{
    char *dir = dm_test_tmpdir("tok");
    if (vocab_text)
        put_str(dir, "vocab.json", vocab_text);
    else
        put_tiny_vocab(dir, "");
    if (merges)
        put_str(dir, "merges.txt", merges);
    dm_error_clear();
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok == NULL, "loaded despite: %s", what);
    assert_error_has(what);
    if (what2)
        assert_error_has(what2);
    dm_test_rm_tree(dir);
    free(dir);
}

START_TEST(bad_vocab_refused)
{
    const char *ok_merges = "#version: 0.2\na a\n";
    dm_tokenizer *tok = dm_tokenizer_load("/nonexistent/dmica-tokenizer");
    ck_assert_ptr_null(tok);
    assert_error_has("/nonexistent/dmica-tokenizer/vocab.json: cannot open");
    expect_load_error("{\"a\": 0,", ok_merges, "vocab.json: not valid JSON", "line 1");
    expect_load_error("[1, 2]", ok_merges, "vocab.json: expected a JSON object", NULL);
    expect_load_error("{\"a\": \"zero\"}", ok_merges, "token \"a\": the id must be an integer",
                      NULL);
    expect_load_error("{\"a\": -1}", ok_merges, "the id must be an integer", NULL);
    expect_load_error("{\"a\": 0, \"b\": 0}", ok_merges, "id 0 is given to both", NULL);
    expect_load_error("{\"a\": 0, \"a\": 1}", ok_merges, "vocab.json: not valid JSON",
                      "duplicate");
    expect_load_error("{}", ok_merges, "vocabulary is empty", NULL);
    expect_load_error("{\"a\": 0}", ok_merges, "no token", "byte 0x00");
}
END_TEST

START_TEST(bad_merges_refused)
{
    expect_load_error(NULL, NULL, "merges.txt: cannot open", NULL);
    expect_load_error(NULL, "", "merges.txt: empty file", NULL);
    expect_load_error(NULL, "a a\n", "merges.txt:1: expected the header", NULL);
    expect_load_error(NULL, "#version: 0.2\na a\na b c\n", "merges.txt:3: expected two tokens",
                      NULL);
    expect_load_error(NULL, "#version: 0.2\naa\n", "merges.txt:2: expected two tokens", NULL);
    expect_load_error(NULL, "#version: 0.2\na  a\n", "merges.txt:2: expected two tokens", NULL);
    expect_load_error(NULL, "#version: 0.2\na \n", "merges.txt:2: expected two tokens", NULL);
    expect_load_error(NULL, "#version: 0.2\na a\n\na b\n", "merges.txt:3: empty line", NULL);
    expect_load_error(NULL, "#version: 0.2\na a\na zz\n",
                      "merges.txt:3: token \"zz\" is not in vocab.json", NULL);
    expect_load_error(NULL, "#version: 0.2\nb b\n",
                      "merges.txt:2: the merge result \"bb\" is not in vocab.json", NULL);

    /* CRLF line ends and blank lines at the end are fine */
    char *dir = dm_test_tmpdir("tok");
    put_tiny_vocab(dir, "");
    put_str(dir, "merges.txt", "#version: 0.2\r\na a\r\naa a\r\n\r\n\n");
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok != NULL, "%s", dm_error());
    ASSERT_IDS(tok, "aaa", 258);
    dm_tokenizer_free(tok);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

/* ---- broken tokenizer.json files ------------------------------------------ */

/* gemma's tokenizer.json with edit applied (a JSON Pointer-ish key path and a
 * JSON value, or NULL to delete), written into a fresh folder; loading must
 * fail with a message holding "tokenizer.json" and each of what. */
static void expect_json_error(const char *const *path, const char *value, const char *what,
                              const char *what2)
{
    json_t *root = load_json(JSON_GOLDEN "/gemma/tokenizer.json");
    json_t *obj = root;
    int k = 0;
    while (path[k + 1]) {
        json_t *next = json_is_array(obj) ? json_array_get(obj, (size_t)atoi(path[k]))
                                          : json_object_get(obj, path[k]);
        ck_assert_msg(next != NULL, "no %s in gemma's tokenizer.json", path[k]);
        obj = next;
        k++;
    }
    json_t *v = NULL;
    if (value) {
        json_error_t err;
        v = json_loads(value, JSON_DECODE_ANY, &err);
        ck_assert_msg(v != NULL, "bad test value %s", value);
    }
    if (json_is_array(obj)) {
        if (v)
            json_array_set_new(obj, (size_t)atoi(path[k]), v);
        else
            json_array_remove(obj, (size_t)atoi(path[k]));
    } else if (v)
        json_object_set_new(obj, path[k], v);
    else
        json_object_del(obj, path[k]);
    char *dir = dm_test_tmpdir("tokjson");
    char *file = dm_xasprintf("%s/tokenizer.json", dir);
    ck_assert_int_eq(json_dump_file(root, file, JSON_COMPACT), 0);
    json_decref(root);
    dm_error_clear();
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok == NULL, "loaded despite: %s", what);
    assert_error_has("tokenizer.json: ");
    assert_error_has(what);
    if (what2)
        assert_error_has(what2);
    dm_test_rm_tree(dir);
    free(file), free(dir);
}

#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})

START_TEST(bad_json_refused)
{
    /* not JSON, or cut short */
    char *dir = dm_test_tmpdir("tokjson");
    size_t len;
    char *text = slurp(JSON_GOLDEN "/gemma/tokenizer.json", &len);
    ck_assert_ptr_nonnull(text);
    put_str(dir, "tokenizer.json", "{\"model\": ");
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("tokenizer.json: not valid JSON");
    char *file = dm_xasprintf("%s/tokenizer.json", dir);
    put(file, text, len / 2);
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("tokenizer.json: not valid JSON");
    assert_error_has("line 1");
    put_str(dir, "tokenizer.json", "[]");
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("expected a JSON object");
    put_str(dir, "tokenizer.json", "{}");
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("tokenizer.json: no \"model\" object");
    free(file), free(text);
    dm_test_rm_tree(dir);
    free(dir);

    expect_json_error(KEYS("model"), NULL, "no \"model\" object", NULL);
    expect_json_error(KEYS("version"), "\"2.0\"", "version \"2.0\" is not supported", NULL);
    expect_json_error(KEYS("truncation"), "{\"max_length\": 8}", "truncation is set", NULL);
    expect_json_error(KEYS("padding"), "{}", "padding is set", NULL);
    expect_json_error(KEYS("model", "type"), "\"Unigram\"", "model.type \"Unigram\" is not supported",
                      NULL);
    expect_json_error(KEYS("model", "dropout"), "0.1", "model.dropout must be null", NULL);
    expect_json_error(KEYS("model", "continuing_subword_prefix"), "\"##\"",
                      "model.continuing_subword_prefix \"##\" is not supported", NULL);
    expect_json_error(KEYS("model", "byte_fallback"), "\"yes\"", "model.byte_fallback must be true "
                      "or false", NULL);
    expect_json_error(KEYS("model", "vocab"), "[1]", "model.vocab must be an object", NULL);
    expect_json_error(KEYS("model", "vocab"), "{}", "model.vocab is empty", NULL);
    expect_json_error(KEYS("model", "vocab", "<pad>"), "-3", "model.vocab: token \"<pad>\": the id "
                      "must be an integer", NULL);
    expect_json_error(KEYS("model", "vocab", "<pad>"), "1", "id 1 is given to both", NULL);
    expect_json_error(KEYS("model", "merges"), NULL, "model.merges must be an array", NULL);
    expect_json_error(KEYS("model", "merges", "0"), "\"zzz▁ q\"", "model.merges[0]: token", "is not in "
                      "model.vocab");
    expect_json_error(KEYS("model", "merges", "1"), "\"<pad> <eos>\"", "model.merges[1]: the merge result "
                      "\"<pad><eos>\" is not in model.vocab", NULL);
    expect_json_error(KEYS("model", "merges", "2"), "\"a b c\"", "model.merges[2]: expected two tokens",
                      NULL);
    expect_json_error(KEYS("model", "merges", "2"), "[\"a\"]", "model.merges[2]: expected", NULL);
    expect_json_error(KEYS("model", "unk_token"), "\"<nope>\"", "model.unk_token \"<nope>\" is not in "
                      "model.vocab", NULL);
    expect_json_error(KEYS("added_tokens", "2", "id"), "7", "added_tokens[2]: \"<bos>\" has id 7, "
                      "but tokenizers gives it 2", NULL);
    expect_json_error(KEYS("added_tokens", "2", "content"), "\"\"", "added_tokens[2]: expected an "
                      "object with a non-empty \"content\"", NULL);
    expect_json_error(KEYS("added_tokens", "2", "lstrip"), "1", "added_tokens[2].lstrip must be true "
                      "or false", NULL);
    expect_json_error(KEYS("normalizer"), "{\"type\": \"NFKC\"}", "normalizer.type \"NFKC\" is not "
                      "supported", NULL);
    expect_json_error(KEYS("normalizer"),
                      "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
                      "\"x\"}, {\"type\": \"Lowercase\"}]}",
                      "normalizer.normalizers[1].type \"Lowercase\" is not supported", NULL);
    expect_json_error(KEYS("normalizer", "pattern"), "{\"String\": \"\"}",
                      "normalizer.pattern.String is empty", NULL);
    expect_json_error(KEYS("normalizer", "pattern"), "{\"Regex\": \"(\"}", "normalizer.pattern.Regex",
                      NULL);
    expect_json_error(KEYS("normalizer", "pattern"), "7", "normalizer.pattern must be", NULL);
    expect_json_error(KEYS("normalizer"), "{\"pattern\": 1}", "normalizer has no \"type\"", NULL);
    expect_json_error(KEYS("pre_tokenizer"), "{\"type\": \"Whitespace\"}",
                      "pre_tokenizer.type \"Whitespace\" is not supported", NULL);
    expect_json_error(KEYS("pre_tokenizer", "behavior"), "\"Sideways\"", "pre_tokenizer.behavior must "
                      "be", NULL);
    expect_json_error(KEYS("pre_tokenizer"),
                      "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}, "
                      "{\"type\": \"Metaspace\", \"replacement\": \"_\"}]}",
                      "pre_tokenizer.pretokenizers[1] follows a ByteLevel pre-tokenizer", NULL);
    expect_json_error(KEYS("pre_tokenizer"), "{\"type\": \"Metaspace\", \"replacement\": \"ab\"}",
                      "pre_tokenizer.replacement must be one character", NULL);
    expect_json_error(KEYS("post_processor"), "{\"type\": \"BertProcessing\"}",
                      "post_processor.type \"BertProcessing\" is not supported", NULL);
    expect_json_error(KEYS("post_processor", "single"),
                      "[{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": "
                      "\"<eos>\", \"type_id\": 0}}]",
                      "post_processor.single: dmica supports", NULL);
    expect_json_error(KEYS("post_processor", "special_tokens", "<bos>", "ids"), "[2, 2]",
                      "post_processor.special_tokens has no single id for \"<bos>\"", NULL);
}
END_TEST

START_TEST(json_load_rules)
{
    /* a folder with vocab.json and merges.txt uses them, whatever tokenizer.json says */
    char *dir = dm_test_tmpdir("tokjson");
    put_tiny_vocab(dir, "");
    put_str(dir, "merges.txt", "#version: 0.2\na a\n");
    put_str(dir, "tokenizer.json", "not json");
    dm_tokenizer *tok = dm_tokenizer_load(dir);
    ck_assert_msg(tok != NULL, "%s", dm_error());
    ASSERT_IDS(tok, "aa", 256);
    dm_tokenizer_free(tok);
    /* with only one of them, tokenizer.json */
    char *merges = dm_xasprintf("%s/merges.txt", dir);
    ck_assert_int_eq(unlink(merges), 0);
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("tokenizer.json: not valid JSON");
    /* a tokenizer.json file may be named directly */
    tok = dm_tokenizer_load(JSON_GOLDEN "/gemma/tokenizer.json");
    ck_assert_msg(tok != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_tokenizer_bos(tok), 2);
    ck_assert_str_eq(dm_tokenizer_token_text(tok, 2), "<bos>");
    /* Gemma's decoder: "▁" is a space, <0xNN> its byte */
    size_t len;
    const char *b = dm_tokenizer_token_bytes(tok, 7 + 3 + 2 + 0x41, &len); /* <0x41> */
    ck_assert_str_eq(dm_tokenizer_token_text(tok, 7 + 3 + 2 + 0x41), "<0x41>");
    ck_assert(len == 1 && b[0] == 'A');
    int32_t *ids;
    size_t n;
    const char text[] = "Hello world <start_of_turn>日本 \xff";
    ck_assert_int_eq(dm_tokenizer_encode(tok, text, sizeof text - 1, &ids, &n), 0);
    char *back = dm_tokenizer_decode(tok, ids, n, &len);
    ck_assert_str_eq(back, "Hello world <start_of_turn>日本 \xef\xbf\xbd");
    free(back), free(ids);
    dm_tokenizer_free(tok);
    /* a folder with none of the files names vocab.json, as before */
    char *vocab = dm_xasprintf("%s/vocab.json", dir), *json = dm_xasprintf("%s/tokenizer.json", dir);
    unlink(vocab), unlink(json);
    ck_assert_ptr_null(dm_tokenizer_load(dir));
    assert_error_has("vocab.json: cannot open");
    dm_test_rm_tree(dir);
    free(merges), free(vocab), free(json), free(dir);
}
END_TEST

/* ---- the command --------------------------------------------------------- */

START_TEST(tokenize_command)
{
    char *dir = dm_test_tmpdir("tok");
    char *hello = dm_xasprintf("%s/hello.txt", dir), *empty = dm_xasprintf("%s/empty.txt", dir);
    char *missing = dm_xasprintf("%s/missing.txt", dir);
    put_str(dir, "hello.txt", "Hello world");
    put_str(dir, "empty.txt", "");
    char *tdir = (char *)gpt2_dir(), *out, *err;

    char *a1[] = {"tokenize", "--tokenizer", tdir, hello};
    ck_assert_int_eq(run_tokenize(4, a1, &out, &err), 0);
    ck_assert_str_eq(out, "15496 995\n");
    ck_assert_str_eq(err, "");
    free(out), free(err);

    char *a2[] = {"tokenize", hello, "--bos", "--tokenizer", tdir};
    ck_assert_int_eq(run_tokenize(5, a2, &out, &err), 0);
    ck_assert_str_eq(out, "50256 15496 995\n");
    free(out), free(err);

    char *a3[] = {"tokenize", "--tokenizer", tdir, empty};
    ck_assert_int_eq(run_tokenize(4, a3, &out, &err), 0);
    ck_assert_str_eq(out, "\n");
    free(out), free(err);

    /* the golden files hold exactly what the command prints */
    char *corpus = dm_xasprintf("%s/invalid_utf8.txt", CORPUS);
    size_t glen;
    char *gold = slurp(GOLDEN "/invalid_utf8.txt.ids", &glen);
    ck_assert_ptr_nonnull(gold);
    char *a4[] = {"tokenize", "--tokenizer", tdir, corpus};
    ck_assert_int_eq(run_tokenize(4, a4, &out, &err), 0);
    ck_assert_str_eq(out, gold);
    free(out), free(err), free(gold), free(corpus);

    char *a5[] = {"tokenize", "--tokenizer", tdir, missing};
    ck_assert_int_eq(run_tokenize(4, a5, &out, &err), 1);
    ck_assert_str_eq(out, "");
    ck_assert_msg(strstr(err, "missing.txt: cannot open") != NULL, "stderr: %s", err);
    free(out), free(err);

    char *a6[] = {"tokenize", "--tokenizer", dir, hello};
    ck_assert_int_eq(run_tokenize(4, a6, &out, &err), 1);
    ck_assert_msg(strstr(err, "vocab.json") != NULL, "stderr: %s", err);
    free(out), free(err);

    char *a7[] = {"tokenize", hello};
    ck_assert_int_eq(run_tokenize(2, a7, &out, &err), 2);
    ck_assert_msg(strstr(err, "--tokenizer DIR is required") != NULL, "stderr: %s", err);
    free(out), free(err);

    char *a8[] = {"tokenize", "--tokenizer", tdir, "--frobnicate", hello};
    ck_assert_int_eq(run_tokenize(5, a8, &out, &err), 2);
    ck_assert_msg(strstr(err, "unknown option --frobnicate") != NULL, "stderr: %s", err);
    free(out), free(err);

    /* a tokenizer.json folder, with its BOS: what the library's
     * encode("Hello world", add_special_tokens=True) gives */
    json_t *exp = load_json(JSON_GOLDEN "/gemma/expected.json");
    json_t *want = json_object_get(json_object_get(exp, "ids_special"), "hello");
    char *line = dm_xstrdup("");
    for (size_t i = 0; i < json_array_size(want); i++) {
        char *l = dm_xasprintf("%s%s%lld", line, i ? " " : "",
                               (long long)json_integer_value(json_array_get(want, i)));
        free(line);
        line = l;
    }
    char *wline = dm_xasprintf("%s\n", line);
    char *a10[] = {"tokenize", "--tokenizer", JSON_GOLDEN "/gemma", "--bos", hello};
    ck_assert_int_eq(run_tokenize(5, a10, &out, &err), 0);
    ck_assert_str_eq(out, wline);
    ck_assert(strncmp(out, "2 ", 2) == 0);
    free(out), free(err), free(line), free(wline);
    json_decref(exp);
    /* without a BOS (the splits variant has one; a "$A" template has none) */
    json_t *root = load_json(JSON_GOLDEN "/metaspace/tokenizer.json");
    json_object_set_new(root, "post_processor", json_null());
    char *nobos = dm_xasprintf("%s/nobos.json", dir);
    ck_assert_int_eq(json_dump_file(root, nobos, 0), 0);
    json_decref(root);
    char *a11[] = {"tokenize", "--tokenizer", nobos, "--bos", hello};
    ck_assert_int_eq(run_tokenize(5, a11, &out, &err), 1);
    ck_assert_msg(strstr(err, "nobos.json: the tokenizer has no BOS token for --bos") != NULL,
                  "stderr: %s", err);
    free(out), free(err), free(nobos);

    char *a9[] = {"tokenize", "--help"};
    ck_assert_int_eq(run_tokenize(2, a9, &out, &err), 0);
    ck_assert_msg(strstr(out, "usage: dmica tokenize") != NULL, "stdout: %s", out);
    free(out), free(err);

    dm_test_rm_tree(dir);
    free(hello), free(empty), free(missing), free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, corpus_matches_reference);
    tcase_add_test(tc, decode_gives_back_the_text);
    tcase_add_loop_test(tc, json_matches_reference, 0, N_JSON_VARIANTS);
    tcase_add_test(tc, known_gpt2_ids);
    tcase_add_test(tc, encode_appends);
    tcase_add_test(tc, prefix_is_exact);
    tcase_add_test(tc, merges_by_rank_then_position);
    tcase_add_test(tc, cache_never_changes_results);
    tcase_add_test(tc, pathological_text_finishes);
    tcase_add_test(tc, bad_vocab_refused);
    tcase_add_test(tc, bad_merges_refused);
    tcase_add_test(tc, bad_json_refused);
    tcase_add_test(tc, json_load_rules);
    tcase_add_test(tc, tokenize_command);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
