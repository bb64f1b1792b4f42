/*
 * test_tokenizer.c: operators/tokenizer.c, GPT-2's byte-level BPE.
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
 * The real vocabulary is tests/data/gpt2-tokenizer, a copy of GPT-2's (from the repository root,
 * where the tests run), or the folder in DMICA_GPT2_TOKENIZER.
 */
#include "commands.h"
#include "tokenizer.h"

#include "dm.h"
#include "test.h"

#include <dirent.h>
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
    tcase_add_test(tc, known_gpt2_ids);
    tcase_add_test(tc, encode_appends);
    tcase_add_test(tc, prefix_is_exact);
    tcase_add_test(tc, merges_by_rank_then_position);
    tcase_add_test(tc, cache_never_changes_results);
    tcase_add_test(tc, pathological_text_finishes);
    tcase_add_test(tc, bad_vocab_refused);
    tcase_add_test(tc, bad_merges_refused);
    tcase_add_test(tc, tokenize_command);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
