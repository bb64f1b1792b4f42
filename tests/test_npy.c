/*
 * test_npy.c: io/npy.c against files numpy wrote (tests/golden/npy/, from
 * make_npy_golden.py) and against numpy reading ours.
 *
 * - Every supported dtype reads back with the values the script used, and
 *   dm_npy_save of those values is byte-identical to np.save (same header text,
 *   same padding): the strongest evidence numpy reads what we write.
 * - The streaming writer (a header reserved for 20-digit row counts) is checked
 *   by numpy itself when /usr/bin/python3 or python3 has numpy; otherwise that
 *   one check is skipped with a note.
 * - Every refusal names the file and the problem: truncated data, a truncated
 *   header, bad magic, Fortran order, big-endian, complex and structured dtypes,
 *   more than 4 dimensions, float rows from a non-2-D or integer array.
 * - Hand-written headers in the styles other writers use (double quotes, any
 *   key order, no trailing comma, Python 2 "3L") parse.
 * - Conversions: the F16C fast path equals dm.c's scalar functions bit for bit
 *   on every half value and on a spread of floats, including rounding ties,
 *   subnormals, overflow, infinities and NaN.
 * - Streaming a 32 MiB file through dm_npy_read_rows_f32 keeps the file pages
 *   mapped into the process below 8 MiB (MADV_DONTNEED behind the reader).
 *
 * Tolerances: f16 and bf16 round to nearest even, so a stored value differs
 * from the float32 by at most 2^-11 (f16) or 2^-8 (bf16) relative for normal
 * numbers; we assert the exact value dm_f32_to_f16 / dm_f32_to_bf16 gives, which
 * implies the bound. Golden values are exact in every dtype, so compared exactly.
 */
#include "npy.h"

#include "conv.h"
#include "dm.h"
#include "fs.h"
#include "test.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GOLDEN "tests/golden/npy/"

/* Writes a .npy file by hand: magic, version 1.0, the header text padded with
 * spaces to a multiple of 16 plus '\n', then data. */
static void write_raw_npy(const char *path, const char *dict, const void *data, size_t n)
{
    size_t len = strlen(dict), total = (10 + len + 1 + 15) / 16 * 16, hlen = total - 10;
    char *buf = dm_xcalloc(1, total + n);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (char)(hlen & 0xff), buf[9] = (char)(hlen >> 8);
    memset(buf + 10, ' ', hlen);
    memcpy(buf + 10, dict, len);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, n);
    ck_assert_int_eq(dm_write_file_atomic(path, buf, total + n), 0);
    free(buf);
}

/* ---- golden files ------------------------------------------------------- */

static const struct {
    const char *file;
    dm_dtype dtype;
} golden_2x3[] = {
    {"f4_2x3.npy", DM_F32}, {"f8_2x3.npy", DM_F64}, {"f2_2x3.npy", DM_F16},
    {"i4_2x3.npy", DM_I32}, {"i8_2x3.npy", DM_I64}, {"u2_2x3.npy", DM_U16},
    {"u1_2x3.npy", DM_U8},  {"bf16_2x3.npy", DM_BF16},
};

/* The value make_npy_golden.py stored at flat index i, for dtype t. */
static double golden_value(dm_dtype t, int i)
{
    switch (t) {
    case DM_I32: case DM_I64: return (i - 2) * 7;
    case DM_U16: return i * 1000;
    case DM_U8: return i * 40;
    default: return (i - 2) * 0.5;
    }
}

static double element(dm_dtype t, const void *data, int i)
{
    const char *p = (const char *)data + (size_t)i * dm_dtype_size(t);
    float f;
    double d;
    int32_t i32;
    int64_t i64;
    uint16_t u16;
    switch (t) {
    case DM_F32: memcpy(&f, p, 4); return f;
    case DM_F64: memcpy(&d, p, 8); return d;
    case DM_F16: memcpy(&u16, p, 2); return dm_f16_to_f32(u16);
    case DM_BF16: memcpy(&u16, p, 2); return dm_bf16_to_f32(u16);
    case DM_I32: memcpy(&i32, p, 4); return i32;
    case DM_I64: memcpy(&i64, p, 8); return (double)i64;
    case DM_U16: memcpy(&u16, p, 2); return u16;
    case DM_U8: return (unsigned char)*p;
    default: return NAN;
    }
}

START_TEST(golden_dtypes_read)
{
    const char *file = golden_2x3[_i].file;
    dm_dtype t = golden_2x3[_i].dtype;
    char *path = dm_xasprintf(GOLDEN "%s", file);
    dm_npy_map *m = dm_npy_open(path);
    ck_assert_msg(m != NULL, "%s", dm_error());
    const dm_npy_header *h = dm_npy_hdr(m);
    ck_assert_int_eq(h->dtype, t);
    ck_assert_int_eq(h->ndim, 2);
    ck_assert_int_eq(h->shape[0], 2);
    ck_assert_int_eq(h->shape[1], 3);
    for (int i = 0; i < 6; i++)
        ck_assert_double_eq(element(t, dm_npy_data(m), i), golden_value(t, i));
    float rows[6];
    if (t == DM_F32 || t == DM_F64 || t == DM_F16 || t == DM_BF16) {
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 1, 1, rows), 0);
        for (int i = 0; i < 3; i++)
            ck_assert_float_eq(rows[i], (float)golden_value(t, 3 + i));
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 2, rows), 0);
        for (int i = 0; i < 6; i++)
            ck_assert_float_eq(rows[i], (float)golden_value(t, i));
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 1, 2, rows), -1);
        assert_error_has("rows 1..2 are out of range (the array has 2 rows)");
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 2, 0, rows), 0);
    } else {
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 1, rows), -1);
        assert_error_has(path);
        assert_error_has("cannot be read as float rows");
    }
    dm_npy_close(m);

    dm_tensor tl;
    ck_assert_int_eq(dm_npy_load(path, &tl), 0);
    ck_assert_int_eq(tl.dtype, t);
    ck_assert_int_eq(tl.ndim, 2);
    dm_tensor_free(&tl);
    free(path);
}
END_TEST

START_TEST(save_matches_numpy_bytes)
{
    dm_dtype t = golden_2x3[_i].dtype;
    if (t == DM_BF16) /* numpy writes '|V2', we write '<V2' like ml_dtypes */
        return;
    char *gpath = dm_xasprintf(GOLDEN "%s", golden_2x3[_i].file);
    dm_tensor x;
    int64_t shape[2] = {2, 3};
    dm_tensor_init(&x, t, 2, shape);
    for (int i = 0; i < 6; i++) {
        double v = golden_value(t, i);
        char *p = (char *)x.data + (size_t)i * dm_dtype_size(t);
        float f = (float)v;
        int32_t i32 = (int32_t)v;
        int64_t i64 = (int64_t)v;
        uint16_t u16 = t == DM_F16 ? dm_f32_to_f16(f) : (uint16_t)v;
        switch (t) {
        case DM_F32: memcpy(p, &f, 4); break;
        case DM_F64: memcpy(p, &v, 8); break;
        case DM_I32: memcpy(p, &i32, 4); break;
        case DM_I64: memcpy(p, &i64, 8); break;
        case DM_F16: case DM_U16: memcpy(p, &u16, 2); break;
        default: *p = (char)(unsigned char)v;
        }
    }
    char *dir = dm_test_tmpdir("npy"), *path = dm_xasprintf("%s/x.npy", dir);
    ck_assert_int_eq(dm_npy_save(path, &x), 0);
    size_t a, b;
    char *ours = dm_read_file(path, &a), *theirs = dm_read_file(gpath, &b);
    ck_assert_uint_eq(a, b);
    ck_assert_msg(memcmp(ours, theirs, a) == 0, "%s differs from np.save's bytes", golden_2x3[_i].file);
    ck_assert_int_eq(dm_test_count_entries(dir), 1);
    dm_rm_rf(dir);
    dm_tensor_free(&x);
    free(ours), free(theirs), free(path), free(dir), free(gpath);
}
END_TEST

START_TEST(golden_shapes_and_versions)
{
    dm_tensor t;
    float rows[8];
    ck_assert_int_eq(dm_npy_load(GOLDEN "f4_3d.npy", &t), 0);
    ck_assert_int_eq(t.ndim, 3);
    ck_assert_int_eq(t.shape[0], 2);
    ck_assert_int_eq(t.shape[1], 3);
    ck_assert_int_eq(t.shape[2], 4);
    for (int i = 0; i < 24; i++)
        ck_assert_float_eq(((float *)t.data)[i], (float)i);
    dm_tensor_free(&t);
    dm_npy_map *m = dm_npy_open(GOLDEN "f4_3d.npy");
    ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 1, rows), -1);
    ck_assert_str_eq(dm_error(), GOLDEN "f4_3d.npy: expected a 2-D array (rows x cols), found 2 x 3 x 4 f32");
    dm_npy_close(m);

    ck_assert_int_eq(dm_npy_load(GOLDEN "f4_1d.npy", &t), 0);
    ck_assert_int_eq(t.ndim, 1);
    ck_assert_int_eq(t.shape[0], 5);
    ck_assert_float_eq(((float *)t.data)[4], 4.25f);
    dm_tensor_free(&t);
    m = dm_npy_open(GOLDEN "f4_1d.npy");
    ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 1, rows), -1);
    assert_error_has("expected a 2-D array");
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_npy_close(m);

    ck_assert_int_eq(dm_npy_load(GOLDEN "f4_scalar.npy", &t), 0);
    ck_assert_int_eq(t.ndim, 0);
    ck_assert_float_eq(((float *)t.data)[0], 3.5f);
    dm_tensor_free(&t);

    m = dm_npy_open(GOLDEN "f4_empty.npy");
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(dm_npy_hdr(m)->shape[0], 0);
    ck_assert_int_eq(dm_npy_hdr(m)->shape[1], 3);
    ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 0, rows), 0);
    dm_npy_close(m);

    for (int v = 2; v <= 3; v++) {
        char *p = dm_xasprintf(GOLDEN "f4_v%d.npy", v);
        m = dm_npy_open(p);
        ck_assert_msg(m != NULL, "%s", dm_error());
        ck_assert_int_eq(dm_npy_hdr(m)->data_offset % 64, 0);
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 2, rows), 0);
        for (int i = 0; i < 6; i++)
            ck_assert_float_eq(rows[i], (i - 2) * 0.5f);
        dm_npy_close(m);
        free(p);
    }
}
END_TEST

START_TEST(golden_refusals)
{
    static const struct {
        const char *file, *error;
    } cases[] = {
        {"f4_fortran.npy", "f4_fortran.npy: fortran_order arrays are not supported"},
        {"f4_bigendian.npy", "f4_bigendian.npy: big-endian dtype '>f4' is not supported"},
        {"c8_2x3.npy", "c8_2x3.npy: unsupported dtype '<c8'"},
        {"f4_5d.npy", "f4_5d.npy: 5-dimensional arrays are not supported (at most 4 dimensions)"},
        {"structured.npy", "structured.npy: unsupported dtype: structured arrays"},
        {"no-such-file.npy", "no-such-file.npy: cannot open: No such file or directory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *p = dm_xasprintf(GOLDEN "%s", cases[i].file);
        dm_error_clear();
        ck_assert_ptr_null(dm_npy_open(p));
        assert_error_has(cases[i].error);
        dm_tensor t = {0};
        ck_assert_int_eq(dm_npy_load(p, &t), -1);
        ck_assert_ptr_null(t.data);
        free(p);
    }
}
END_TEST

START_TEST(truncated_and_bad_magic)
{
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/t.npy", dir);
    size_t len;
    char *good = dm_read_file(GOLDEN "f4_2x3.npy", &len);

    ck_assert_int_eq(dm_write_file_atomic(p, good, len - 4), 0);
    ck_assert_ptr_null(dm_npy_open(p));
    char *want = dm_xasprintf("%s: truncated: header says 2 x 3 f32 = 24 bytes, file has 20", p);
    ck_assert_str_eq(dm_error(), want);
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    free(want);

    ck_assert_int_eq(dm_write_file_atomic(p, good, 40), 0); /* inside the header */
    ck_assert_ptr_null(dm_npy_open(p));
    assert_error_has("truncated: the header says it is 128 bytes long, the file has 40");

    ck_assert_int_eq(dm_write_file_atomic(p, good, 8), 0);
    ck_assert_ptr_null(dm_npy_open(p));
    assert_error_has("truncated: the file ends inside the .npy header");

    ck_assert_int_eq(dm_write_file_atomic(p, "PK\3\4 this is a zip, not an array", 33), 0);
    ck_assert_ptr_null(dm_npy_open(p));
    assert_error_has(p);
    assert_error_has("not a .npy file");
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);

    ck_assert_int_eq(dm_write_file_atomic(p, "", 0), 0);
    ck_assert_ptr_null(dm_npy_open(p));
    assert_error_has("not a .npy file");

    good[6] = 4; /* format version 4.0 */
    ck_assert_int_eq(dm_write_file_atomic(p, good, len), 0);
    ck_assert_ptr_null(dm_npy_open(p));
    assert_error_has("unsupported .npy format version 4.0");

    ck_assert_ptr_null(dm_npy_open(dir));
    assert_error_has("not a regular file");
    dm_rm_rf(dir);
    free(good), free(p), free(dir);
}
END_TEST

START_TEST(handwritten_headers)
{
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/h.npy", dir);
    float data[6] = {1, 2, 3, 4, 5, 6};
    static const char *ok[] = {
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3, 2)}",
        "{'shape': (3L, 2L), 'fortran_order': False, 'descr': '<f4'}",
        "{ 'descr' : '=f4' ,'fortran_order':False,'shape':( 3 ,2 , ) , }",
        "{'descr': 'f4', 'fortran_order': False, 'shape': (3,2),}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        write_raw_npy(p, ok[i], data, sizeof data);
        dm_npy_map *m = dm_npy_open(p);
        ck_assert_msg(m != NULL, "header %zu: %s", i, dm_error());
        ck_assert_int_eq(dm_npy_hdr(m)->dtype, DM_F32);
        ck_assert_int_eq(dm_npy_hdr(m)->shape[0], 3);
        ck_assert_int_eq(dm_npy_hdr(m)->shape[1], 2);
        float out[6];
        ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, 3, out), 0);
        ck_assert_mem_eq(out, data, sizeof data);
        dm_npy_close(m);
    }
    static const struct {
        const char *dict, *error;
    } bad[] = {
        {"{'descr': '<f4', 'shape': (3, 2)}", "missing key 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
        {"{'fortran_order': False, 'shape': (3, 2)}", "missing key 'descr'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, -2)}", "expected a non-negative integer"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [3, 2]}", "'shape' is not a tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (3 2)}", "expected ',' or ')'"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (3, 2)}", "neither True nor False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), 'extra': 1}", "unexpected key 'extra'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2)} junk", "text after the dict"},
        {"{'descr' '<f4', 'fortran_order': False, 'shape': (3, 2)}", "expected ':'"},
        {"{'descr': '<f4, 'fortran_order': False, 'shape': (3, 2)}", "unsupported dtype '<f4, '"},
        {"'descr': '<f4'", "expected '{'"},
        {"{'descr': '|f4', 'fortran_order': False, 'shape': (3, 2)}", "unsupported dtype '|f4'"},
        {"{'descr': '<i2', 'fortran_order': False, 'shape': (3, 2)}", "unsupported dtype '<i2'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2)}", "overflows"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}",
         "truncated: header says 4611686018427387904 x 4 f32"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_raw_npy(p, bad[i].dict, data, sizeof data);
        ck_assert_ptr_null(dm_npy_open(p));
        assert_error_has(p);
        assert_error_has(bad[i].error);
    }
    /* Single-byte and void types may say '|' or '>': byte order means nothing. */
    write_raw_npy(p, "{'descr': '>u1', 'fortran_order': False, 'shape': (6,)}", data, 6);
    dm_npy_map *m = dm_npy_open(p);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(dm_npy_hdr(m)->dtype, DM_U8);
    dm_npy_close(m);
    dm_rm_rf(dir);
    free(p), free(dir);
}
END_TEST

/* ---- writing ------------------------------------------------------------ */

static float test_value(int64_t r, int64_t c)
{
    /* Varied magnitudes and signs, including values that round in f16/bf16. */
    return (float)(sin((double)(r * 131 + c * 7)) * pow(10.0, (double)((r + c) % 7) - 3.0));
}

static float stored_as(dm_dtype t, float x)
{
    switch (t) {
    case DM_F16: return dm_f16_to_f32(dm_f32_to_f16(x));
    case DM_BF16: return dm_bf16_to_f32(dm_f32_to_bf16(x));
    default: return x;
    }
}

START_TEST(writer_round_trip)
{
    static const dm_dtype types[] = {DM_F32, DM_F16, DM_BF16, DM_F64};
    dm_dtype t = types[_i];
    const int64_t cols = 13, pieces[] = {1, 7, 0, 100, 3};
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/w.npy", dir);
    dm_npy_writer *w = dm_npy_writer_open(p, t, cols);
    ck_assert_ptr_nonnull(w);
    ck_assert(!dm_file_exists(p)); /* not before commit */
    int64_t row = 0;
    float *buf = dm_xmalloc(100 * cols * sizeof(float));
    for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++) {
        for (int64_t r = 0; r < pieces[k]; r++)
            for (int64_t c = 0; c < cols; c++)
                buf[r * cols + c] = test_value(row + r, c);
        ck_assert_int_eq(dm_npy_writer_append_f32(w, buf, pieces[k]), 0);
        row += pieces[k];
    }
    ck_assert_int_eq(dm_npy_writer_commit(w), 0);
    ck_assert_int_eq(dm_test_count_entries(dir), 1);

    dm_npy_map *m = dm_npy_open(p);
    ck_assert_msg(m != NULL, "%s", dm_error());
    const dm_npy_header *h = dm_npy_hdr(m);
    ck_assert_int_eq(h->dtype, t);
    ck_assert_int_eq(h->ndim, 2);
    ck_assert_int_eq(h->shape[0], row);
    ck_assert_int_eq(h->shape[1], cols);
    ck_assert_int_eq(h->data_offset % 64, 0);
    float *out = dm_xmalloc((size_t)(row * cols) * sizeof(float));
    ck_assert_int_eq(dm_npy_read_rows_f32(m, 0, row, out), 0);
    /* One assertion at the end: in a forked test each costs a system call. */
    int64_t bad = 0, first = -1;
    for (int64_t r = 0; r < row; r++)
        for (int64_t c = 0; c < cols; c++) {
            float x = test_value(r, c), want = stored_as(t, x), got = out[r * cols + c];
            /* The bound the exact comparison implies, stated for the reader. */
            double tol = t == DM_F16 ? ldexp(1, -11) : t == DM_BF16 ? ldexp(1, -8) : 0;
            int ok = got == want && (fabsf(x) < 6.2e-5f || fabs(got - x) <= tol * fabs(x));
            if (!ok && first < 0)
                first = r * cols + c;
            bad += !ok;
        }
    ck_assert_msg(bad == 0, "%ld values wrong, first at flat index %ld", (long)bad, (long)first);
    dm_npy_close(m);
    dm_rm_rf(dir);
    free(out), free(buf), free(p), free(dir);
}
END_TEST

START_TEST(writer_raw_append_and_empty)
{
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/ids.npy", dir);
    dm_npy_writer *w = dm_npy_writer_open(p, DM_I64, 2);
    int64_t ids[6] = {1, -2, 3, 1LL << 40, 5, 6};
    ck_assert_int_eq(dm_npy_writer_append(w, ids, 3), 0);
    ck_assert_int_eq(dm_npy_writer_append_f32(w, (float[]){1, 2}, 1), -1);
    assert_error_has("cannot convert float32 rows to i64");
    ck_assert_int_eq(dm_npy_writer_commit(w), 0);
    dm_tensor t;
    ck_assert_int_eq(dm_npy_load(p, &t), 0);
    ck_assert_int_eq(t.dtype, DM_I64);
    ck_assert_int_eq(t.shape[0], 3);
    ck_assert_mem_eq(t.data, ids, sizeof ids);
    dm_tensor_free(&t);

    /* No rows at all is a valid (0, cols) array. */
    w = dm_npy_writer_open(p, DM_F32, 5);
    ck_assert_int_eq(dm_npy_writer_commit(w), 0);
    dm_npy_map *m = dm_npy_open(p);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(dm_npy_hdr(m)->shape[0], 0);
    ck_assert_int_eq(dm_npy_hdr(m)->shape[1], 5);
    dm_npy_close(m);
    dm_rm_rf(dir);
    free(p), free(dir);
}
END_TEST

START_TEST(writer_abort_and_enospc)
{
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/a.npy", dir);
    float row[4] = {1, 2, 3, 4};
    dm_npy_writer *w = dm_npy_writer_open(p, DM_F32, 4);
    ck_assert_int_eq(dm_npy_writer_append_f32(w, row, 1), 0);
    ck_assert_int_eq(dm_test_count_entries(dir), 1); /* the temporary */
    dm_npy_writer_abort(w);
    ck_assert_int_eq(dm_test_count_entries(dir), 0);
    dm_npy_writer_abort(NULL);

    /* An existing file survives an aborted rewrite. */
    dm_tensor t;
    int64_t shape[1] = {4};
    dm_tensor_init(&t, DM_F32, 1, shape);
    ck_assert_int_eq(dm_npy_save(p, &t), 0);
    dm_tensor_free(&t);
    w = dm_npy_writer_open(p, DM_F32, 4);
    dm_npy_writer_abort(w);
    ck_assert_int_eq(dm_npy_load(p, &t), 0);
    ck_assert_int_eq(t.shape[0], 4);
    dm_tensor_free(&t);

    if (dm_test_forked()) {
        setenv("DMICA_FAULT_ENOSPC_AFTER", "200", 1);
        w = dm_npy_writer_open(p, DM_F16, 4);
        ck_assert_ptr_nonnull(w);
        int rc = 0;
        for (int i = 0; i < 100 && rc == 0; i++)
            rc = dm_npy_writer_append_f32(w, row, 1);
        ck_assert_int_eq(rc, -1);
        assert_error_has("a.npy.tmp.");
        assert_error_has("write failed: No space left on device (injected)");
        ck_assert_int_eq(dm_npy_writer_commit(w), -1);
        assert_error_has("an earlier write failed");
        ck_assert_int_eq(dm_test_count_entries(dir), 1); /* the old a.npy only */
        unsetenv("DMICA_FAULT_ENOSPC_AFTER");
        ck_assert_int_eq(dm_npy_load(p, &t), 0);
        ck_assert_int_eq(t.dtype, DM_F32);
        dm_tensor_free(&t);

        setenv("DMICA_FAULT_ENOSPC_AFTER", "10", 1);
        dm_tensor_init(&t, DM_F32, 1, shape);
        ck_assert_int_eq(dm_npy_save(p, &t), -1);
        dm_tensor_free(&t);
        ck_assert_int_eq(dm_test_count_entries(dir), 1);
        unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    }
    dm_rm_rf(dir);
    free(p), free(dir);
}
END_TEST

START_TEST(save_load_all_ndims)
{
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/s.npy", dir);
    static const int64_t shapes[5][4] = {{0}, {5}, {2, 3}, {2, 1, 3}, {2, 2, 1, 3}};
    for (int nd = 0; nd <= 4; nd++)
        for (int dt = 0; dt < DM_DTYPE_COUNT; dt++) {
            dm_tensor t, back;
            dm_tensor_init(&t, (dm_dtype)dt, nd, shapes[nd]);
            size_t bytes = (size_t)dm_tensor_numel(&t) * dm_dtype_size(t.dtype);
            for (size_t i = 0; i < bytes; i++)
                ((unsigned char *)t.data)[i] = (unsigned char)(i * 37 + dt);
            ck_assert_int_eq(dm_npy_save(p, &t), 0);
            ck_assert_int_eq(dm_npy_load(p, &back), 0);
            ck_assert_int_eq(back.dtype, dt);
            ck_assert_int_eq(back.ndim, nd);
            for (int k = 0; k < nd; k++)
                ck_assert_int_eq(back.shape[k], shapes[nd][k]);
            ck_assert_mem_eq(back.data, t.data, bytes);
            dm_npy_map *m = dm_npy_open(p);
            ck_assert_int_eq(dm_npy_hdr(m)->data_offset % 64, 0);
            dm_npy_close(m);
            dm_tensor_free(&t);
            dm_tensor_free(&back);
        }
    dm_rm_rf(dir);
    free(p), free(dir);
}
END_TEST

/* numpy itself reads what the streaming writer wrote (header rewritten at commit). */
START_TEST(numpy_reads_writer_output)
{
    const char *find_py = "for p in /usr/bin/python3 python3; do "
                          "$p -c 'import numpy' >/dev/null 2>&1 && echo $p && break; done";
    FILE *f = popen(find_py, "r");
    char py[256] = "";
    if (!fgets(py, sizeof py, f))
        py[0] = 0;
    pclose(f);
    py[strcspn(py, "\n")] = 0;
    if (!py[0]) {
        fprintf(stderr, "test_npy: numpy_reads_writer_output skipped: no python3 with numpy\n");
        return;
    }
    char *dir = dm_test_tmpdir("npy");
    static const dm_dtype types[] = {DM_F32, DM_F16, DM_F64};
    static const char *names[] = {"float32", "float16", "float64"};
    for (int k = 0; k < 3; k++) {
        char *p = dm_xasprintf("%s/%s.npy", dir, names[k]);
        dm_npy_writer *w = dm_npy_writer_open(p, types[k], 3);
        float rows[3 * 1000];
        for (int i = 0; i < 3 * 1000; i++)
            rows[i] = (float)(i % 512) * 0.25f; /* exact in float16 */
        ck_assert_int_eq(dm_npy_writer_append_f32(w, rows, 1000), 0);
        ck_assert_int_eq(dm_npy_writer_append_f32(w, rows, 234), 0);
        ck_assert_int_eq(dm_npy_writer_commit(w), 0);
        char *cmd = dm_xasprintf(
            "%s -c 'import numpy as np, sys; a = np.load(sys.argv[1]); "
            "assert a.dtype == np.%s and a.shape == (1234, 3), (a.dtype, a.shape); "
            "assert (a[:1000].ravel() == np.arange(3000) %% 512 * 0.25).all(); "
            "assert (a[1000:].ravel() == np.arange(702) %% 512 * 0.25).all()' '%s'",
            py, names[k], p);
        ck_assert_msg(system(cmd) == 0, "numpy rejected %s", p);
        free(cmd), free(p);
    }
    dm_rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- conversions and memory --------------------------------------------- */

static int same_bits_or_both_nan(float a, float b)
{
    return (isnan(a) && isnan(b)) || !memcmp(&a, &b, 4);
}

START_TEST(conversions_match_scalar)
{
    /* Every half value, widened. */
    uint16_t *h = dm_xmalloc(65536 * 2);
    float *f = dm_xmalloc(65536 * 4);
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    dm_conv_f16_to_f32(h, f, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++)
        bad += !same_bits_or_both_nan(f[i], dm_f16_to_f32((uint16_t)i));
    ck_assert_int_eq(bad, 0);

    /* Narrowing: random bit patterns, every half value and the ties between
     * neighbours (round to even), just above and below each. */
    size_t n = 65536 * 4 + 200000, k = 0;
    float *x = dm_xmalloc(n * 4);
    uint16_t *out = dm_xmalloc(n * 2), *out_bf = dm_xmalloc(n * 2);
    for (int i = 0; i < 65536; i++) {
        float a = dm_f16_to_f32((uint16_t)i), b = dm_f16_to_f32((uint16_t)(i + 1));
        x[k++] = a;
        x[k++] = (a + b) / 2;
        x[k++] = nextafterf((a + b) / 2, INFINITY);
        x[k++] = nextafterf((a + b) / 2, -INFINITY);
    }
    uint64_t s = 12345;
    while (k < n) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t bits = (uint32_t)(s >> 32);
        memcpy(&x[k++], &bits, 4);
    }
    dm_conv_f32_to_f16(x, out, n);
    dm_conv_f32_to_bf16(x, out_bf, n);
    size_t bad16 = 0, badbf = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t want = dm_f32_to_f16(x[i]);
        /* NaN payloads may differ; NaN must stay NaN. */
        int ok = out[i] == want || (isnan(x[i]) && (out[i] & 0x7c00) == 0x7c00 && (out[i] & 0x3ff));
        if (!ok && !bad16)
            first = i;
        bad16 += !ok;
        badbf += out_bf[i] != dm_f32_to_bf16(x[i]);
    }
    ck_assert_msg(bad16 == 0, "%zu f16 conversions differ, first of %a: 0x%04x, want 0x%04x", bad16,
                  (double)x[first], out[first], dm_f32_to_f16(x[first]));
    ck_assert_uint_eq(badbf, 0);
    free(h), free(f), free(x), free(out), free(out_bf);
}
END_TEST

/* Resident file-backed memory of this process, in KiB (RssFile). */
static long rss_file_kib(void)
{
    char *text = dm_read_file("/proc/self/status", NULL);
    char *line = text ? strstr(text, "RssFile:") : NULL;
    long v = line ? strtol(line + 8, NULL, 10) : -1;
    free(text);
    return v;
}

START_TEST(streaming_keeps_rss_bounded)
{
    if (rss_file_kib() < 0)
        return;
    char *dir = dm_test_tmpdir("npy"), *p = dm_xasprintf("%s/big.npy", dir);
    const int64_t cols = 1024, rows = 8192; /* 32 MiB of f32 */
    float *block = dm_xmalloc(256 * cols * sizeof(float));
    dm_npy_writer *w = dm_npy_writer_open(p, DM_F32, cols);
    for (int64_t r = 0; r < rows; r += 256) {
        for (int64_t i = 0; i < 256 * cols; i++)
            block[i] = (float)(r * cols + i);
        ck_assert_int_eq(dm_npy_writer_append_f32(w, block, 256), 0);
    }
    ck_assert_int_eq(dm_npy_writer_commit(w), 0);
    dm_npy_map *m = dm_npy_open(p);
    long base = rss_file_kib(), peak = 0;
    for (int64_t r = 0; r < rows; r += 100) { /* 100 rows: not page-aligned steps */
        int64_t k = rows - r < 100 ? rows - r : 100;
        ck_assert_int_eq(dm_npy_read_rows_f32(m, r, k, block), 0);
        ck_assert_float_eq(block[0], (float)(r * cols));
        ck_assert_float_eq(block[k * cols - 1], (float)((r + k) * cols - 1));
        long now = rss_file_kib() - base;
        if (now > peak)
            peak = now;
    }
    ck_assert_msg(peak < 8192, "mapped file pages grew to %ld KiB while streaming 32 MiB", peak);
    dm_npy_close(m);
    dm_rm_rf(dir);
    free(block), free(p), free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("npy");
    TCase *tc = tcase_create("read");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, golden_dtypes_read, 0, (int)(sizeof golden_2x3 / sizeof *golden_2x3));
    tcase_add_loop_test(tc, save_matches_numpy_bytes, 0, (int)(sizeof golden_2x3 / sizeof *golden_2x3));
    tcase_add_test(tc, golden_shapes_and_versions);
    tcase_add_test(tc, golden_refusals);
    tcase_add_test(tc, truncated_and_bad_magic);
    tcase_add_test(tc, handwritten_headers);
    suite_add_tcase(s, tc);
    tc = tcase_create("write");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, writer_round_trip, 0, 4);
    tcase_add_test(tc, writer_raw_append_and_empty);
    tcase_add_test(tc, writer_abort_and_enospc);
    tcase_add_test(tc, save_load_all_ndims);
    tcase_add_test(tc, numpy_reads_writer_output);
    suite_add_tcase(s, tc);
    tc = tcase_create("memory");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, conversions_match_scalar);
    tcase_add_test(tc, streaming_keeps_rss_bounded);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
