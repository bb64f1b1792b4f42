/*
 * test_safetensors.c: io/safetensors.c on files written here byte by byte (every
 * validation the reader promises, and exact F32/F16/BF16 conversion) and on the
 * golden GPT-2 folders written by tools/make-gpt2 (the HF layout: padded header,
 * __metadata__, a "transformer." prefix in c48h4).
 *
 * Runs from the repository root (make test-unit does) so tests/golden is found.
 */
#include "safetensors.h"

#include "dm.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/dmica-test-st-XXXXXX";

/* Writes a safetensors file: the 8-byte length, header text, then data bytes. */
static char *write_st(const char *name, const char *header, const void *data, size_t n)
{
    char *path = dm_xasprintf("%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    uint64_t len = strlen(header);
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 8; i++)
        fputc((int)(len >> (8 * i)) & 0xff, f);
    fwrite(header, 1, len, f);
    if (n)
        fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

/* Opens a file that must fail, and checks the message contains want. */
static void expect_open_error(const char *header, const void *data, size_t n, const char *want)
{
    char *path = write_st("bad.safetensors", header, data, n);
    dm_error_clear();
    dm_safetensors *st = dm_st_open(path);
    ck_assert_msg(st == NULL, "opened a bad file: %s", header);
    ck_assert_msg(strstr(dm_error(), want) != NULL, "error '%s' lacks '%s'", dm_error(), want);
    ck_assert_msg(strstr(dm_error(), path) != NULL, "error '%s' does not name the file",
                  dm_error());
    dm_st_close(st);
    free(path);
}

START_TEST(reads_each_float_dtype_exactly)
{
    /* 1.5, -2, 65504 (largest half), 2^-24 (smallest half subnormal) in each dtype */
    float f32[4] = {1.5f, -2.0f, 65504.0f, 5.9604645e-8f};
    uint16_t f16[4] = {0x3e00, 0xc000, 0x7bff, 0x0001};
    uint16_t bf16[4] = {0x3fc0, 0xc000, 0x477f, 0x3380}; /* bf16 65280 for 65504 */
    float want_bf16[4] = {1.5f, -2.0f, 65280.0f, 5.9604645e-8f};
    uint8_t data[16 + 8 + 8 + 8];
    memcpy(data, f32, 16);
    memcpy(data + 16, f16, 8);
    memcpy(data + 24, bf16, 8);
    memset(data + 32, 0, 8);
    char *path = write_st(
        "ok.safetensors",
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
        "\"transformer.b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[16,24]},"
        "\"c\":{\"dtype\":\"BF16\",\"shape\":[1,4],\"data_offsets\":[24,32]},"
        "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]}}    ",
        data, sizeof data);
    dm_safetensors *st = dm_st_open(path);
    ck_assert_msg(st != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_st_count(st), 4);
    ck_assert_str_eq(dm_st_metadata(st, "format"), "pt");
    ck_assert_ptr_null(dm_st_metadata(st, "nope"));
    ck_assert_str_eq(dm_st_at(st, 1)->name, "b"); /* prefix stripped, sorted */
    ck_assert_ptr_nonnull(dm_st_find(st, "transformer.b"));
    ck_assert_ptr_null(dm_st_find(st, "d"));
    const dm_st_tensor *a = dm_st_find(st, "a"), *b = dm_st_find(st, "b"),
                       *c = dm_st_find(st, "c"), *n = dm_st_find(st, "n");
    ck_assert_int_eq(a->ndim, 2);
    ck_assert_int_eq(a->shape[1], 2);
    ck_assert_int_eq(n->ndim, 0);
    ck_assert_int_eq(n->numel, 1);
    float out[4];
    ck_assert_int_eq(dm_st_read_f32(st, a, out), 0);
    ck_assert_mem_eq(out, f32, sizeof out);
    ck_assert_int_eq(dm_st_read_f32(st, b, out), 0);
    ck_assert_mem_eq(out, f32, sizeof out);
    ck_assert_int_eq(dm_st_read_f32(st, c, out), 0);
    ck_assert_mem_eq(out, want_bf16, sizeof out);
    ck_assert_int_eq(dm_st_is_float(n), 0);
    ck_assert_int_eq(dm_st_read_f32(st, n, out), -1);
    ck_assert_msg(strstr(dm_error(), "tensor n has dtype I64") != NULL, "%s", dm_error());
    dm_st_close(st);
    free(path);
}
END_TEST

START_TEST(rejects_bad_files)
{
    uint8_t data[64] = {0};
    const char *t = "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":";
    char h[512];
    snprintf(h, sizeof h, "{%s[0,16]}}", t);
    expect_open_error(h, data, 12, "truncated"); /* data cut short */
    snprintf(h, sizeof h, "{%s[8,24]}}", t);
    expect_open_error(h, data, 16, "end past the data");
    snprintf(h, sizeof h, "{%s[0,12]}}", t);
    expect_open_error(h, data, 16, "needs 16 bytes");
    snprintf(h, sizeof h, "{%s[16,0]}}", t);
    expect_open_error(h, data, 16, "bad data_offsets");
    snprintf(h, sizeof h, "{%s[-4,12]}}", t);
    expect_open_error(h, data, 16, "bad data_offsets");
    snprintf(h, sizeof h, "{%s[0]}}", t);
    expect_open_error(h, data, 16, "data_offsets must be");
    expect_open_error("{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", data, 2,
                      "unknown dtype 'Q4'");
    expect_open_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", data,
                      8, "shape entry 0");
    expect_open_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", data, 0,
                      "shape entry 0");
    expect_open_error("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4, "missing dtype");
    expect_open_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                      "\"data_offsets\":[0,4]}}",
                      data, 4, "overflows");
    expect_open_error("{\"w\": {\"dtype\": \"F32\"", data, 0, "not valid JSON");
    expect_open_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                      data, 4, "not valid JSON"); /* duplicate key */
    expect_open_error("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"transformer.w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                      data, 4, "appears twice");
    expect_open_error("[1, 2]", data, 0, "not a safetensors file");
    expect_open_error("", data, 0, "not a safetensors file");

    /* a header length beyond the file, and a file too short for one */
    char *path = dm_xasprintf("%s/short.safetensors", tmpdir);
    FILE *f = fopen(path, "wb");
    uint8_t len[8] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    fwrite(len, 1, 8, f);
    fputs("{}", f);
    fclose(f);
    ck_assert_ptr_null(dm_st_open(path));
    ck_assert_msg(strstr(dm_error(), "header length 65535 exceeds the file (10 bytes)"), "%s",
                  dm_error());
    f = fopen(path, "wb");
    fwrite(len, 1, 5, f);
    fclose(f);
    ck_assert_ptr_null(dm_st_open(path));
    ck_assert_msg(strstr(dm_error(), "truncated: 5 bytes"), "%s", dm_error());
    ck_assert_ptr_null(dm_st_open("/nonexistent/x.safetensors"));
    ck_assert_msg(strstr(dm_error(), "/nonexistent/x.safetensors: cannot open"), "%s",
                  dm_error());
    free(path);
}
END_TEST

START_TEST(reads_hf_layout_from_make_gpt2)
{
    dm_safetensors *st = dm_st_open("tests/golden/gpt2/c48h4/model.safetensors");
    ck_assert_msg(st != NULL, "%s", dm_error());
    /* 4 model tensors + 3 blocks of 12, names stored as "transformer.*" */
    ck_assert_int_eq(dm_st_count(st), 4 + 3 * 12);
    ck_assert_str_eq(dm_st_metadata(st, "format"), "pt");
    const dm_st_tensor *w = dm_st_find(st, "h.2.attn.c_attn.weight");
    ck_assert_ptr_nonnull(w);
    ck_assert_str_eq(w->dtype, "BF16");
    ck_assert_int_eq(w->shape[0], 48);
    ck_assert_int_eq(w->shape[1], 144);
    float *v = dm_xmalloc(sizeof(float) * w->numel);
    ck_assert_int_eq(dm_st_read_f32(st, w, v), 0);
    double ss = 0;
    for (int64_t i = 0; i < w->numel; i++)
        ss += (double)v[i] * v[i];
    /* make-gpt2 draws c_attn with std 1/sqrt(n_embd) */
    ck_assert_double_eq_tol(sqrt(ss / w->numel) * sqrt(48.0), 1.0, 0.05);
    free(v);
    dm_st_close(st);
    dm_st_close(NULL);
}
END_TEST

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("reader");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, reads_each_float_dtype_exactly);
    tcase_add_test(tc, rejects_bad_files);
    tcase_add_test(tc, reads_hf_layout_from_make_gpt2);
    suite_add_tcase(s, tc);
    return dm_test_run(s, tmpdir);
}
