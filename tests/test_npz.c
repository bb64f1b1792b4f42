/*
 * test_npz.c: the .npz reader (io/npz.c) on archives written by numpy and
 * Python's zipfile (tests/golden/npz/, tests/golden/make_npz_golden.py):
 *   - numpy.savez (stored members, ZIP64 local headers), numpy.savez_compressed
 *     (deflated), an archive with ZIP64 sizes, offsets and end records and a
 *     comment: the same names, headers and values (exactly: float32 copies and
 *     conversions of exactly representable values);
 *   - members that are not .npy ignored; a bzip2 member, an integer array read
 *     as floats, refused by name;
 *   - damage: every truncation of an archive, a flipped data byte (CRC-32), a
 *     .npy header inside claiming more data than the member holds, a central
 *     directory pointing at no local header, a .npy given for an .npz, a file
 *     that does not exist: each an error naming the file (and the member), with
 *     its code (npz.h).
 * Runs from the repository root.
 */
#include "npz.h"

#include "dm.h"
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN "tests/golden/npz/"

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f, "%s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    ck_assert(fread(b, 1, *n, f) == *n);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    ck_assert(fwrite(b, 1, n, f) == n);
    fclose(f);
}

/* The five arrays make_npz_golden.py writes, checked. */
static void check_arrays(const char *path)
{
    dm_npz *z = dm_npz_open(path);
    ck_assert_msg(z, "%s: %s", path, dm_error());
    ck_assert_int_eq(dm_npz_count(z), 5);
    static const char *names[] = {"a", "b", "c", "h", "s"};
    for (int i = 0; i < 5; i++)
        ck_assert_str_eq(dm_npz_name(z, i), names[i]);
    ck_assert_int_eq(dm_npz_find(z, "h"), 3);
    ck_assert_int_eq(dm_npz_find(z, "nope"), -1);
    dm_npy_header h;
    ck_assert_msg(dm_npz_header(z, 0, &h) == 0, "%s", dm_error());
    ck_assert_int_eq(h.dtype, DM_F32);
    ck_assert_int_eq(h.ndim, 2);
    ck_assert_int_eq(h.shape[0], 2);
    ck_assert_int_eq(h.shape[1], 3);
    float v[6];
    ck_assert_msg(dm_npz_read_f32(z, 0, v) == 0, "%s", dm_error());
    for (int k = 0; k < 6; k++)
        ck_assert(v[k] == (float)k / 4 - 0.5f);
    ck_assert_int_eq(dm_npz_header(z, 1, &h), 0);
    ck_assert_int_eq(h.dtype, DM_F64);
    ck_assert_int_eq(dm_npz_read_f32(z, 1, v), 0);
    ck_assert(isinf(v[0]) && v[0] > 0 && v[1] == -2.5f && v[2] == 0 && v[3] == 7);
    ck_assert_int_eq(dm_npz_header(z, 2, &h), 0);
    ck_assert_int_eq(h.dtype, DM_I32);
    ck_assert_int_eq(dm_npz_read_f32(z, 2, v), -1);
    assert_error_has("(member c.npy): dtype i32 where a float array");
    ck_assert_int_eq(dm_npz_read_f32(z, 3, v), 0);
    ck_assert(v[0] == 0.5f && v[1] == -1 && v[2] == 65504);
    ck_assert_int_eq(dm_npz_header(z, 4, &h), 0);
    ck_assert_int_eq(h.ndim, 0);
    ck_assert_int_eq(dm_npz_read_f32(z, 4, v), 0);
    ck_assert(v[0] == 3.25f);
    dm_npz_close(z);
}

START_TEST(numpy_archives)
{
    check_arrays(GOLDEN "stored.npz");
    check_arrays(GOLDEN "zip64.npz");
    if (dm_npz_deflate_supported())
        check_arrays(GOLDEN "deflated.npz");
    else {
        dm_npz *z = dm_npz_open(GOLDEN "deflated.npz");
        ck_assert_ptr_nonnull(z);
        dm_npy_header h;
        ck_assert_int_eq(dm_npz_header(z, 0, &h), -1);
        assert_error_has("built without zlib");
        assert_error_code(DM_E_INPUT);
        dm_npz_close(z);
    }
    /* a member that is not an array is left out */
    dm_npz *z = dm_npz_open(GOLDEN "notes.npz");
    ck_assert_ptr_nonnull(z);
    ck_assert_int_eq(dm_npz_count(z), 1);
    ck_assert_str_eq(dm_npz_name(z, 0), "a");
    dm_npz_close(z);
    /* bzip2: the archive opens, the member is refused by name */
    z = dm_npz_open(GOLDEN "bzip2.npz");
    ck_assert_ptr_nonnull(z);
    dm_npy_header h;
    ck_assert_int_eq(dm_npz_header(z, 0, &h), -1);
    assert_error_has("bzip2.npz (member a.npy): compression method 12 (bzip2) is not supported");
    assert_error_code(DM_E_INPUT);
    dm_npz_close(z);
}
END_TEST

/* Every prefix of an archive is refused (its end record is gone), naming the file. */
START_TEST(truncated)
{
    char *dir = dm_test_tmpdir("npz");
    char *path = dm_xasprintf("%s/cut.npz", dir);
    static const char *files[] = {GOLDEN "stored.npz", GOLDEN "deflated.npz", GOLDEN "zip64.npz"};
    for (int f = 0; f < 3; f++) {
        size_t n;
        unsigned char *b = slurp(files[f], &n);
        for (size_t len = 0; len < n; len++) {
            spit(path, b, len);
            dm_npz *z = dm_npz_open(path);
            ck_assert_msg(!z, "%s cut to %zu bytes opened", files[f], len);
            ck_assert_msg(strstr(dm_error(), path), "%s", dm_error());
            assert_error_code(DM_E_CORRUPT);
            if (len >= 4)
                assert_error_has("truncated: it begins as a zip archive (.npz), but its end-of-central-directory "
                                 "record is missing");
        }
        free(b);
    }
    free(path);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

/* Offset of the first occurrence of needle in b, or abort. */
static size_t find(const unsigned char *b, size_t n, const void *needle, size_t k, size_t from)
{
    for (size_t i = from; i + k <= n; i++)
        if (!memcmp(b + i, needle, k))
            return i;
    ck_abort_msg("pattern not found");
    return 0;
}

START_TEST(damaged)
{
    char *dir = dm_test_tmpdir("npz");
    char *path = dm_xasprintf("%s/bad.npz", dir);
    size_t n;
    unsigned char *b = slurp(GOLDEN "stored.npz", &n), *c = malloc(n);
    dm_npy_header h;
    float v[64];

    /* a data byte flipped: the CRC-32 (zlib) */
    memcpy(c, b, n);
    size_t a0 = find(c, n, "\x93NUMPY", 6, 0);
    c[a0 + 128 + 5] ^= 0x40; /* inside a's data (its 1.0 header is 118 bytes + 10) */
    spit(path, c, n);
    dm_npz *z = dm_npz_open(path);
    ck_assert_ptr_nonnull(z);
    if (dm_npz_deflate_supported()) {
        ck_assert_int_eq(dm_npz_read_f32(z, 0, v), -1);
        assert_error_has("bad.npz (member a.npy): damaged: CRC-32");
        assert_error_code(DM_E_CORRUPT);
    }
    dm_npz_close(z);

    /* the .npy header of member a claims 9 rows: more than the member holds */
    memcpy(c, b, n);
    c[find(c, n, "(2, 3)", 6, 0) + 1] = '9';
    spit(path, c, n);
    z = dm_npz_open(path);
    ck_assert_ptr_nonnull(z);
    ck_assert_int_eq(dm_npz_header(z, 0, &h), -1);
    assert_error_has("bad.npz (member a.npy): truncated: header says 9 x 3 f32");
    assert_error_code(DM_E_CORRUPT);
    dm_npz_close(z);

    /* the central directory's first entry points past every local header */
    memcpy(c, b, n);
    size_t cd = find(c, n, "PK\1\2", 4, 0);
    c[cd + 42] = 0x33, c[cd + 43] = 0x01;
    spit(path, c, n);
    ck_assert_ptr_null(dm_npz_open(path));
    assert_error_has("bad.npz (member a.npy): damaged: no zip local header where the central directory says");

    /* a local header naming another member */
    memcpy(c, b, n);
    c[30] = 'x';
    spit(path, c, n);
    ck_assert_ptr_null(dm_npz_open(path));
    assert_error_has("its local header does not name it as the central directory does");

    /* the end record pointing the directory past the end */
    memcpy(c, b, n);
    size_t end = find(c, n, "PK\5\6", 4, 0);
    c[end + 16] = 0xff, c[end + 17] = 0xff;
    spit(path, c, n);
    ck_assert_ptr_null(dm_npz_open(path));
    assert_error_has("bad.npz: damaged or truncated zip: its central directory");
    assert_error_code(DM_E_CORRUPT);

    /* deflated data damaged */
    if (dm_npz_deflate_supported()) {
        free(b), free(c);
        b = slurp(GOLDEN "deflated.npz", &n), c = malloc(n);
        memcpy(c, b, n);
        for (size_t i = 40; i < 60; i++)
            c[i] ^= 0x5a;
        spit(path, c, n);
        z = dm_npz_open(path);
        ck_assert_ptr_nonnull(z);
        int rc = dm_npz_header(z, 0, &h);
        if (rc == 0)
            rc = dm_npz_read_f32(z, 0, v);
        ck_assert_int_eq(rc, -1);
        assert_error_has("bad.npz (member a.npy): ");
        assert_error_code(DM_E_CORRUPT);
        dm_npz_close(z);
    }

    /* not an archive */
    ck_assert_ptr_null(dm_npz_open("tests/golden/npy/f4_2x3.npy"));
    assert_error_has("f4_2x3.npy: a .npy file, not an .npz archive");
    spit(path, "hello", 5);
    ck_assert_ptr_null(dm_npz_open(path));
    assert_error_has("bad.npz: not an .npz file");
    spit(path, "", 0);
    ck_assert_ptr_null(dm_npz_open(path));
    assert_error_has("bad.npz: empty file");
    ck_assert_ptr_null(dm_npz_open(GOLDEN "missing.npz"));
    assert_error_has("missing.npz: cannot open");
    assert_error_code(DM_E_IO);
    free(b), free(c);
    free(path);
    dm_test_rm_tree(dir);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("npz");
    TCase *tc = tcase_create("npz");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, numpy_archives);
    tcase_add_test(tc, truncated);
    tcase_add_test(tc, damaged);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
