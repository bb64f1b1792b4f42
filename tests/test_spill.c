/*
 * test_spill.c: io/spill.c, the engine's on-disk streams.
 *
 * - Round trips for every stored dtype (f32, f16, bf16) x codec (none, zstd) x
 *   path (io_uring, and pwrite/pread with DMICA_NO_URING=1): odd chunk sizes,
 *   many chunks (buffer rings wrap), replayed twice (rewind), read at random by
 *   row ranges that cross chunk borders, and verified. Both paths must write
 *   byte-identical files, also when every io_uring transfer comes back short
 *   (DMICA_SPILL_MAX_IO) and has to be resubmitted.
 * - Edge cases: a spill with no rows, zero-row chunks, chunks out of row order,
 *   a wrong column count, a spill starting at a row other than 0.
 * - Damage: one flipped byte in chunk 3 (codec none and zstd) is a checksum
 *   error naming file, chunk and rows, on replay, on random access and on
 *   verify, while chunks before it replay fine; a truncated or extended data
 *   file, a missing or malformed manifest (bad JSON, missing keys, inconsistent
 *   chunks) are errors naming the file.
 * - A full disk (DMICA_FAULT_ENOSPC_AFTER, in forked tests), hit while writing
 *   chunks or while writing the manifest, fails with the file in the message
 *   and leaves no files behind, as does abort.
 *
 * Tolerances: f16 and bf16 round to nearest even, relative error at most 2^-11
 * (f16, normal range) and 2^-8 (bf16); we assert the exact values
 * dm_f32_to_f16 / dm_f32_to_bf16 produce, which implies those bounds, and check
 * the bound itself too. f32 round trips are exact.
 */
#include "spill.h"

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

/* ---- helpers ------------------------------------------------------------ */

static void set_uring(int on)
{
    if (on)
        unsetenv("DMICA_NO_URING");
    else
        setenv("DMICA_NO_URING", "1", 1);
}

/* Values of every magnitude from 1e-6 to 1e4, both signs, so f16 sees
 * subnormals and bf16 and f16 both round. */
static float value_at(int64_t row, int64_t col)
{
    double s = sin((double)(row * 1009 + col * 31) * 0.37);
    return (float)(s * pow(10.0, (double)((row * 7 + col) % 11) - 6.0));
}

static float stored_as(dm_dtype t, float x)
{
    switch (t) {
    case DM_F16: return dm_f16_to_f32(dm_f32_to_f16(x));
    case DM_BF16: return dm_bf16_to_f32(dm_f32_to_bf16(x));
    default: return x;
    }
}

/* Writes rows [row0, row0 + sum(sizes)) in chunks of the given sizes. */
static int write_spill(const char *dir, const char *name, int64_t cols, dm_dtype t, dm_codec codec,
                       int64_t row0, const int64_t *sizes, int n)
{
    dm_spill_writer *w = dm_spill_writer_open(dir, name, cols, t, codec);
    if (!w)
        return -1;
    int64_t row = row0, maxr = 0;
    for (int i = 0; i < n; i++)
        if (sizes[i] > maxr)
            maxr = sizes[i];
    float *buf = dm_xmalloc((size_t)(maxr * cols + 1) * sizeof(float));
    for (int i = 0; i < n; i++) {
        for (int64_t r = 0; r < sizes[i]; r++)
            for (int64_t c = 0; c < cols; c++)
                buf[r * cols + c] = value_at(row + r, c);
        dm_chunk ch = {.row0 = row, .rows = sizes[i], .cols = cols, .data = buf};
        /* The caller may reuse its buffer at once: scribble over it. */
        if (dm_spill_write(w, &ch) < 0) {
            free(buf);
            dm_spill_writer_close(w); /* reports the first error again */
            return -1;
        }
        memset(buf, 0xff, (size_t)(sizes[i] * cols) * sizeof(float));
        row += sizes[i];
    }
    free(buf);
    return dm_spill_writer_close(w);
}

/* 1 when got is what the spill must return for (r, c); else 0, with the first
 * mismatch kept in bad_value for the failure message. (Assertions are not made
 * per value: in a forked Check test each one costs a system call.) */
static char bad_value[256];

static int value_ok(dm_dtype t, int64_t r, int64_t c, float got)
{
    float x = value_at(r, c), want = stored_as(t, x);
    double u = t == DM_F16 ? ldexp(1, -11) : t == DM_BF16 ? ldexp(1, -8) : 0;
    double smallest_normal = t == DM_F16 ? ldexp(1, -14) : ldexp(1, -126);
    int ok = got == want;
    if (ok && fabsf(x) >= smallest_normal && fabsf(x) < 65504)
        ok = fabs((double)got - x) <= u * fabs(x);
    if (!ok && !bad_value[0])
        snprintf(bad_value, sizeof bad_value, "row %ld col %ld: got %a, want %a", (long)r, (long)c,
                 (double)got, (double)want);
    return ok;
}

/* Checks n values of rows starting at row0 (cols wide). */
static void check_rows(dm_dtype t, int64_t row0, int64_t n, int64_t cols, const float *v)
{
    int64_t bad = 0;
    bad_value[0] = 0;
    for (int64_t k = 0; k < n * cols; k++)
        bad += !value_ok(t, row0 + k / cols, k % cols, v[k]);
    ck_assert_msg(bad == 0, "%ld wrong values, first %s", (long)bad, bad_value);
}

/* ---- round trips -------------------------------------------------------- */

static const int64_t odd_sizes[] = {1, 37, 1000, 3, 513, 64, 2, 999, 1, 250, 7, 7, 4096, 5};
#define N_ODD ((int)(sizeof odd_sizes / sizeof *odd_sizes))

START_TEST(round_trip)
{
    /* _i: bit 0 uring, bit 1 zstd, bits 2-3 dtype */
    static const dm_dtype types[] = {DM_F32, DM_F16, DM_BF16};
    int uring = _i & 1;
    dm_codec codec = (_i >> 1) & 1 ? DM_CODEC_ZSTD : DM_CODEC_NONE;
    dm_dtype t = types[_i >> 2];
    const int64_t cols = 19;
    set_uring(uring);
    char *dir = dm_test_tmpdir("spill");
    int64_t total = 0;
    for (int i = 0; i < N_ODD; i++)
        total += odd_sizes[i];
    ck_assert_msg(write_spill(dir, "s", cols, t, codec, 0, odd_sizes, N_ODD) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_test_count_entries(dir), 2);

    dm_spill_reader *r = dm_spill_reader_open(dir, "s");
    ck_assert_msg(r != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_spill_rows(r), total);
    ck_assert_int_eq(dm_spill_cols(r), cols);
    ck_assert_int_eq(dm_spill_nchunks(r), N_ODD);
    ck_assert_int_eq(dm_spill_max_chunk_rows(r), 4096);
    float *data = dm_xmalloc((size_t)(4096 * cols) * sizeof(float));
    for (int pass = 0; pass < 2; pass++) {
        int64_t row = 0;
        for (int i = 0;; i++) {
            dm_chunk c = {.data = data};
            ck_assert_msg(dm_spill_next(r, &c) == 0, "%s", dm_error());
            if (c.rows == 0)
                break;
            ck_assert_int_eq(c.row0, row);
            ck_assert_int_eq(c.rows, odd_sizes[i]);
            ck_assert_int_eq(c.cols, cols);
            check_rows(t, row, c.rows, cols, data);
            row += c.rows;
        }
        ck_assert_int_eq(row, total);
        dm_chunk c = {.data = data};
        ck_assert_int_eq(dm_spill_next(r, &c), 0); /* the end stays the end */
        ck_assert_int_eq(c.rows, 0);
        ck_assert_int_eq(dm_spill_rewind(r), 0);
    }
    /* A rewind in the middle of a replay, with reads in flight. */
    dm_chunk c = {.data = data};
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(dm_spill_rewind(r), 0);
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(c.row0, 0);
    ck_assert_int_eq(c.rows, 1);

    /* Random access across chunk borders. */
    static const int64_t ranges[][2] = {{0, 1}, {0, 38}, {36, 1003}, {1040, 600},
                                        {0, 0}, {2000, 4500}, {6900, 85}};
    float *out = dm_xmalloc((size_t)(4600 * cols) * sizeof(float));
    for (size_t k = 0; k < sizeof ranges / sizeof *ranges; k++) {
        int64_t a = ranges[k][0], n = ranges[k][1];
        if (a + n > total)
            n = total - a;
        ck_assert_msg(dm_spill_read_rows(r, a, n, out) == 0, "%s", dm_error());
        check_rows(t, a, n, cols, out);
    }
    ck_assert_int_eq(dm_spill_read_rows(r, total - 1, 2, out), -1);
    assert_error_has("out of range");
    ck_assert_int_eq(dm_spill_read_rows(r, -1, 1, out), -1);
    dm_spill_reader_close(r);
    ck_assert_msg(dm_spill_verify(dir, "s") == 0, "%s", dm_error());
    dm_rm_rf(dir);
    free(out), free(data), free(dir);
}
END_TEST

/* io_uring and pwrite write the same bytes, and each path reads the other's. */
START_TEST(paths_write_identical_files)
{
    char *dir = dm_test_tmpdir("spill");
    for (int codec = 0; codec < 2; codec++) {
        set_uring(1);
        /* io_uring transfers cut at 4093 bytes: every chunk completes in short
         * writes (and, for zstd, short reads) that must be resubmitted. */
        setenv("DMICA_SPILL_MAX_IO", "4093", 1);
        ck_assert_int_eq(write_spill(dir, "a", 33, DM_F16, (dm_codec)codec, 0, odd_sizes, N_ODD), 0);
        dm_spill_reader *r = dm_spill_reader_open(dir, "a");
        float *data = dm_xmalloc(4096 * 33 * sizeof(float));
        dm_chunk c = {.data = data};
        int64_t row = 0;
        do {
            ck_assert_msg(dm_spill_next(r, &c) == 0, "%s", dm_error());
            check_rows(DM_F16, row, c.rows, 33, data);
            row += c.rows;
        } while (c.rows);
        ck_assert_int_eq(row, 6985);
        dm_spill_reader_close(r);
        free(data);
        unsetenv("DMICA_SPILL_MAX_IO");
        set_uring(0);
        ck_assert_int_eq(write_spill(dir, "b", 33, DM_F16, (dm_codec)codec, 0, odd_sizes, N_ODD), 0);
        const char *ext[] = {"spill", "json"};
        for (int e = 0; e < 2; e++) {
            char *pa = dm_xasprintf("%s/a.%s", dir, ext[e]), *pb = dm_xasprintf("%s/b.%s", dir, ext[e]);
            size_t la, lb;
            char *a = dm_read_file(pa, &la), *b = dm_read_file(pb, &lb);
            ck_assert_uint_eq(la, lb);
            ck_assert_msg(memcmp(a, b, la) == 0, "%s and %s differ", pa, pb);
            free(a), free(b), free(pa), free(pb);
        }
    }
    dm_rm_rf(dir);
    free(dir);
}
END_TEST

START_TEST(empty_and_edge_chunks)
{
    set_uring(_i);
    char *dir = dm_test_tmpdir("spill");
    /* No rows at all: a valid, empty spill. */
    dm_spill_writer *w = dm_spill_writer_open(dir, "empty", 8, DM_F32, DM_CODEC_ZSTD);
    ck_assert_ptr_nonnull(w);
    float x[8] = {0};
    dm_chunk none = {.row0 = 0, .rows = 0, .cols = 8, .data = x};
    ck_assert_int_eq(dm_spill_write(w, &none), 0);
    ck_assert_int_eq(dm_spill_writer_bytes(w), 0);
    ck_assert_int_eq(dm_spill_writer_close(w), 0);
    dm_spill_reader *r = dm_spill_reader_open(dir, "empty");
    ck_assert_msg(r != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_spill_rows(r), 0);
    ck_assert_int_eq(dm_spill_nchunks(r), 0);
    ck_assert_int_eq(dm_spill_max_chunk_rows(r), 0);
    dm_chunk c = {.data = x};
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(c.rows, 0);
    ck_assert_int_eq(dm_spill_read_rows(r, 0, 0, x), 0);
    ck_assert_int_eq(dm_spill_rewind(r), 0);
    dm_spill_reader_close(r);
    ck_assert_int_eq(dm_spill_verify(dir, "empty"), 0);

    /* A spill that starts at row 1000 keeps its row numbers. */
    static const int64_t sizes[] = {10, 0, 5};
    ck_assert_int_eq(write_spill(dir, "late", 3, DM_BF16, DM_CODEC_NONE, 1000, sizes, 3), 0);
    r = dm_spill_reader_open(dir, "late");
    ck_assert_int_eq(dm_spill_rows(r), 15);
    ck_assert_int_eq(dm_spill_nchunks(r), 2);
    float buf[45];
    ck_assert_int_eq(dm_spill_next(r, &(dm_chunk){.data = buf}), 0);
    c.data = buf;
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(c.row0, 1010);
    ck_assert_int_eq(c.rows, 5);
    ck_assert_int_eq(dm_spill_read_rows(r, 1008, 4, buf), 0);
    check_rows(DM_BF16, 1008, 4, 3, buf);
    ck_assert_int_eq(dm_spill_read_rows(r, 0, 1, buf), -1);
    assert_error_has("the spill holds rows 1000..1014");
    dm_spill_reader_close(r);

    /* Out of order and wrong width are refused, and poison the writer. */
    w = dm_spill_writer_open(dir, "bad", 2, DM_F32, DM_CODEC_NONE);
    float y[4] = {1, 2, 3, 4};
    ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = 0, .rows = 2, .cols = 2, .data = y}), 0);
    ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = 5, .rows = 2, .cols = 2, .data = y}), -1);
    assert_error_has("bad.spill: chunk starts at row 5, expected 2 (chunks must arrive in row order)");
    ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = 2, .rows = 2, .cols = 2, .data = y}), -1);
    assert_error_has("an earlier write failed");
    ck_assert_int_eq(dm_spill_writer_close(w), -1);
    assert_error_has("chunks must arrive in row order");
    w = dm_spill_writer_open(dir, "bad", 2, DM_F32, DM_CODEC_NONE);
    ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = 0, .rows = 1, .cols = 4, .data = y}), -1);
    assert_error_has("chunk has 4 columns, the spill 2");
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_spill_writer_abort(w);
    ck_assert_int_eq(dm_test_count_entries(dir), 4); /* empty and late, two files each */

    ck_assert_ptr_null(dm_spill_writer_open(dir, "x", 2, DM_F64, DM_CODEC_NONE));
    assert_error_has("spills store f32, f16, bf16, i32 or i64, not f64");
    ck_assert_ptr_null(dm_spill_writer_open(dir, "x", 0, DM_F32, DM_CODEC_NONE));
    dm_codec cd;
    ck_assert_int_eq(dm_codec_parse("zstd", &cd), 0);
    ck_assert_int_eq(cd, DM_CODEC_ZSTD);
    ck_assert_int_eq(dm_codec_parse("lz4", &cd), -1);
    assert_error_has("unknown spill codec 'lz4'");
    ck_assert_str_eq(dm_codec_name(DM_CODEC_NONE), "none");
    dm_rm_rf(dir);
    free(dir);
}
END_TEST

/* Rewriting a spill: the old manifest disappears at once, so a crash midway
 * cannot pair the old manifest with new data. */
START_TEST(rewrite_drops_old_manifest)
{
    char *dir = dm_test_tmpdir("spill");
    static const int64_t sizes[] = {10};
    ck_assert_int_eq(write_spill(dir, "s", 4, DM_F32, DM_CODEC_NONE, 0, sizes, 1), 0);
    dm_spill_writer *w = dm_spill_writer_open(dir, "s", 4, DM_F32, DM_CODEC_NONE);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "s"));
    assert_error_has("spill manifest missing");
    dm_spill_writer_abort(w);
    ck_assert_int_eq(dm_test_count_entries(dir), 0);
    dm_rm_rf(dir);
    free(dir);
}
END_TEST

/* ---- damage ------------------------------------------------------------- */

/* 6 chunks of 4096 rows x 4 columns, f32. */
static const int64_t six_chunks[] = {4096, 4096, 4096, 4096, 4096, 4096};

static void flip_byte(const char *path, int64_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, off), 1);
    b ^= 0x10;
    ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

START_TEST(corrupt_chunk_is_detected)
{
    int uring = _i & 1;
    dm_codec codec = (_i >> 1) ? DM_CODEC_ZSTD : DM_CODEC_NONE;
    set_uring(uring);
    char *dir = dm_test_tmpdir("spill"), *data = dm_xasprintf("%s/c.spill", dir);
    ck_assert_int_eq(write_spill(dir, "c", 4, DM_F32, codec, 0, six_chunks, 6), 0);
    /* Flip a byte in the middle of chunk 3, found from the manifest. */
    dm_spill_reader *r = dm_spill_reader_open(dir, "c");
    int64_t chunk3 = 0, chunk3_bytes = 0, row = 0;
    float *out = dm_xmalloc(4096 * 4 * sizeof(float) * 2);
    for (int i = 0; i < 4; i++) { /* offsets via replay: the chunk after 3 full chunks */
        dm_chunk c = {.data = out};
        ck_assert_int_eq(dm_spill_next(r, &c), 0);
        row += c.rows;
    }
    dm_spill_reader_close(r);
    {
        char *mp = dm_xasprintf("%s/c.json", dir);
        char *text = dm_read_file(mp, NULL);
        /* the 4th "offset" value in the chunk list */
        const char *p = text;
        for (int i = 0; i < 4; i++)
            p = strstr(p, "\"offset\"") + 1;
        chunk3 = strtoll(strchr(p, ':') + 1, NULL, 10);
        chunk3_bytes = strtoll(strchr(strstr(p, "\"bytes\""), ':') + 1, NULL, 10);
        free(text), free(mp);
    }
    ck_assert_int_gt(chunk3, 0);
    flip_byte(data, chunk3 + chunk3_bytes / 2);

    r = dm_spill_reader_open(dir, "c");
    ck_assert_ptr_nonnull(r);
    dm_chunk c = {.data = out};
    for (int i = 0; i < 3; i++)
        ck_assert_msg(dm_spill_next(r, &c) == 0, "%s", dm_error());
    ck_assert_int_eq(dm_spill_next(r, &c), -1);
    char *want = dm_xasprintf("%s: chunk 3 (rows 12288..16383): checksum mismatch (stored 0x", data);
    ck_assert_msg(strncmp(dm_error(), want, strlen(want)) == 0, "error: %s", dm_error());
    assert_error_has(", computed 0x");
    assert_error_has("): the spill is corrupt");
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    ck_assert_int_eq(c.rows, 0);
    ck_assert_int_eq(dm_spill_next(r, &c), -1); /* stays failed */
    assert_error_has("replay stopped by an earlier error");
    ck_assert_int_eq(dm_spill_rewind(r), 0);
    ck_assert_int_eq(dm_spill_next(r, &c), 0); /* chunk 0 again */
    ck_assert_int_eq(c.rows, 4096);

    ck_assert_int_eq(dm_spill_read_rows(r, 0, 4096, out), 0);
    ck_assert_int_eq(dm_spill_read_rows(r, 12000, 1000, out), -1);
    assert_error_has("chunk 3 (rows 12288..16383): checksum mismatch");
    ck_assert_int_eq(dm_spill_read_rows(r, 16384, 10, out), 0);
    dm_spill_reader_close(r);

    ck_assert_int_eq(dm_spill_verify(dir, "c"), -1);
    assert_error_has("chunk 3 (rows 12288..16383): checksum mismatch");
    dm_rm_rf(dir);
    free(want), free(out), free(data), free(dir);
}
END_TEST

START_TEST(data_file_size_checked)
{
    char *dir = dm_test_tmpdir("spill"), *data = dm_xasprintf("%s/t.spill", dir);
    static const int64_t sizes[] = {100, 100};
    ck_assert_int_eq(write_spill(dir, "t", 5, DM_F32, DM_CODEC_NONE, 0, sizes, 2), 0);
    ck_assert_int_eq(truncate(data, 3999), 0);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "t"));
    char *want = dm_xasprintf("%s: truncated: the manifest says 4000 bytes, the file has 3999", data);
    ck_assert_str_eq(dm_error(), want);
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    ck_assert_int_eq(dm_spill_verify(dir, "t"), -1);
    ck_assert_int_eq(truncate(data, 4001), 0);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "t"));
    assert_error_has("they do not belong together");
    /* Shrunk after the reader checked it: replay fails at the missing bytes. */
    for (int k = 0; k < 4; k++) {
        set_uring(k & 1);
        ck_assert_int_eq(write_spill(dir, "t", 5, DM_F32, (dm_codec)(k >> 1), 0, sizes, 2), 0);
        dm_spill_reader *r = dm_spill_reader_open(dir, "t");
        ck_assert_ptr_nonnull(r);
        ck_assert_int_eq(truncate(data, 10), 0);
        float out[500];
        dm_chunk c = {.data = out};
        ck_assert_int_eq(dm_spill_next(r, &c), -1);
        assert_error_has(data);
        assert_error_has("unexpected end of file");
        dm_spill_reader_close(r);
    }
    unlink(data);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "t"));
    assert_error_has("t.spill: cannot open: No such file or directory");
    ck_assert_int_eq(dm_error_code(), DM_E_IO);
    dm_rm_rf(dir);
    free(want), free(data), free(dir);
}
END_TEST

START_TEST(manifest_errors)
{
    char *dir = dm_test_tmpdir("spill"), *mp = dm_xasprintf("%s/m.json", dir);
    static const int64_t sizes[] = {3, 4};
    ck_assert_int_eq(write_spill(dir, "m", 2, DM_F16, DM_CODEC_NONE, 0, sizes, 2), 0);
    size_t len;
    char *good = dm_read_file(mp, &len);

    unlink(mp);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "m"));
    char *want = dm_xasprintf("%s: spill manifest missing", mp);
    assert_error_has(want);
    free(want);

    static const struct {
        const char *from, *to, *error;
    } edits[] = {
        {"{", "[", "malformed spill manifest: "},
        {"\"cols\"", "\"kols\"", "missing key 'cols'"},
        {"\"rows\": 7", "\"rows\": \"7\"", "non-integer or negative key 'rows'"},
        {"\"rows\": 7", "\"rows\": 8", "the chunks hold 7 rows and 28 bytes, the header says 8 rows"},
        {"\"dtype\": \"f16\"", "\"dtype\": \"f64\"", "dtype 'f64' (f32, f16, bf16, i32 or i64 expected)"},
        {"\"codec\": \"none\"", "\"codec\": \"lz4\"", "unknown spill codec 'lz4'"},
        {"\"format\": \"dmica-spill\"", "\"format\": \"other\"", "not a spill manifest"},
        {"\"version\": 1", "\"version\": 9", "spill format version 9 is not supported"},
        {"\"chunks\"", "\"chunkz\"", "missing key 'chunks'"},
        {"\"xxh64\"", "\"xxh32\"", "chunk 0: missing key 'xxh64'"},
        {"\"xxh64\": \"0x", "\"xxh64\": \"zz", "is not a hex number"},
        {"\"offset\": 12", "\"offset\": 13", "chunk 1 (row0 3, offset 13, 16 bytes) does not follow"},
        {"\"raw_bytes\": 12", "\"raw_bytes\": 11", "chunk 0: 3 rows of 2 f16 columns cannot be 11 raw bytes"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
        char *at = strstr(good, edits[i].from);
        ck_assert_msg(at != NULL, "manifest lacks %s:\n%s", edits[i].from, good);
        char *text = dm_xasprintf("%.*s%s%s", (int)(at - good), good, edits[i].to,
                                  at + strlen(edits[i].from));
        ck_assert_int_eq(dm_write_file_atomic(mp, text, strlen(text)), 0);
        ck_assert_ptr_null(dm_spill_reader_open(dir, "m"));
        assert_error_has(mp);
        assert_error_has(edits[i].error);
        free(text);
    }
    ck_assert_int_eq(dm_write_file_atomic(mp, "not json", 8), 0);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "m"));
    assert_error_has("malformed spill manifest");
    assert_error_has("line 1");
    ck_assert_int_eq(dm_write_file_atomic(mp, good, len), 0); /* and back to good */
    dm_spill_reader *r = dm_spill_reader_open(dir, "m");
    ck_assert_msg(r != NULL, "%s", dm_error());
    dm_spill_reader_close(r);
    dm_rm_rf(dir);
    free(good), free(mp), free(dir);
}
END_TEST

/* ---- full disk, abort --------------------------------------------------- */

START_TEST(enospc_leaves_nothing)
{
    if (!dm_test_forked())
        return;
    int uring = _i & 1, in_manifest = _i >> 1;
    set_uring(uring);
    char *dir = dm_test_tmpdir("spill");
    /* 14 chunks of ~10 KiB: fails midway, or (budget = data + 10) at the manifest. */
    static const int64_t sizes[] = {100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100};
    setenv("DMICA_FAULT_ENOSPC_AFTER", in_manifest ? "140010" : "50000", 1);
    int rc = write_spill(dir, "full", 25, DM_F32, DM_CODEC_NONE, 0, sizes, 14);
    unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    ck_assert_int_eq(rc, -1);
    assert_error_has("write failed: No space left on device (injected)");
    assert_error_has(in_manifest ? "full.json.tmp." : "full.spill");
    ck_assert_int_eq(dm_error_code(), DM_E_IO); /* kept through the writer's repeat of its first error */
    ck_assert_int_eq(dm_test_count_entries(dir), 0);
    ck_assert_ptr_null(dm_spill_reader_open(dir, "full"));
    assert_error_has("spill manifest missing");
    ck_assert_int_eq(dm_error_code(), DM_E_CORRUPT);
    dm_rm_rf(dir);
    free(dir);
}
END_TEST

START_TEST(abort_removes_files)
{
    set_uring(_i);
    char *dir = dm_test_tmpdir("spill");
    dm_spill_writer *w = dm_spill_writer_open(dir, "a", 16, DM_F16, DM_CODEC_ZSTD);
    float *x = dm_xcalloc(1000 * 16, sizeof(float));
    for (int i = 0; i < 10; i++) /* more chunks than write buffers: some in flight */
        ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = i * 1000, .rows = 1000, .cols = 16,
                                                       .data = x}), 0);
    ck_assert_int_gt(dm_spill_writer_bytes(w), 0);
    dm_spill_writer_abort(w);
    ck_assert_int_eq(dm_test_count_entries(dir), 0);
    dm_spill_writer_abort(NULL);
    dm_spill_reader_close(NULL);
    dm_rm_rf(dir);
    free(x), free(dir);
}
END_TEST

/* Many chunks, each much larger than a page, through both paths: the buffer
 * rings wrap many times and reads ahead overlap with use. */
START_TEST(many_chunks_stream)
{
    set_uring(_i);
    char *dir = dm_test_tmpdir("spill");
    const int64_t cols = 768, rows = 512, n = 40; /* 40 x 1.5 MiB */
    dm_spill_writer *w = dm_spill_writer_open(dir, "m", cols, DM_F32, DM_CODEC_NONE);
    float *x = dm_xmalloc((size_t)(rows * cols) * sizeof(float));
    for (int64_t k = 0; k < n; k++) {
        for (int64_t i = 0; i < rows * cols; i++)
            x[i] = (float)(k * rows * cols + i);
        ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = k * rows, .rows = rows, .cols = cols,
                                                       .data = x}), 0);
    }
    ck_assert_int_eq(dm_spill_writer_bytes(w), n * rows * cols * 4);
    ck_assert_int_eq(dm_spill_writer_close(w), 0);
    dm_spill_reader *r = dm_spill_reader_open(dir, "m");
    dm_chunk c = {.data = x};
    for (int64_t k = 0; k < n; k++) {
        ck_assert_int_eq(dm_spill_next(r, &c), 0);
        ck_assert_int_eq(c.rows, rows);
        ck_assert_float_eq(x[0], (float)(k * rows * cols));
        ck_assert_float_eq(x[rows * cols - 1], (float)((k + 1) * rows * cols - 1));
    }
    ck_assert_int_eq(dm_spill_next(r, &c), 0);
    ck_assert_int_eq(c.rows, 0);
    dm_spill_reader_close(r);
    dm_rm_rf(dir);
    free(x), free(dir);
}
END_TEST

/* Integer streams (token ids, row indices) are stored exactly, with either
 * codec and either I/O path: values beyond 2^24, which float32 cannot hold,
 * come back bit for bit, by sequential replay and by row. _i: bit 0 io_uring,
 * bit 1 zstd, bit 2 i64 (else i32). */
START_TEST(integer_streams_exact)
{
    set_uring(_i & 1);
    dm_codec codec = (_i & 2) ? DM_CODEC_ZSTD : DM_CODEC_NONE;
    dm_dtype t = (_i & 4) ? DM_I64 : DM_I32;
    size_t isz = dm_dtype_size(t);
    char *dir = dm_test_tmpdir("spill");
    const int64_t cols = 3, per = 700, nchunks = 4, rows = per * nchunks;
    unsigned char *x = dm_xmalloc((size_t)(rows * cols) * isz), *y = dm_xcalloc((size_t)(rows * cols), isz);
    for (int64_t i = 0; i < rows * cols; i++) {
        int64_t v = (int64_t)16777217 + i * 7919 - (i % 5 == 0 ? 2 * i : 0);
        if (t == DM_I64) {
            v += (int64_t)1 << 40; /* beyond double's exact integers too */
            memcpy(x + (size_t)i * 8, &v, 8);
        } else {
            int32_t w = (int32_t)v;
            memcpy(x + (size_t)i * 4, &w, 4);
        }
    }
    dm_spill_writer *w = dm_spill_writer_open(dir, "ids", cols, t, codec);
    ck_assert_ptr_nonnull(w);
    /* a chunk of floats is not the stream's dtype */
    float f[3] = {0};
    ck_assert_int_eq(dm_spill_write(w, &(dm_chunk){.row0 = 0, .rows = 1, .cols = cols, .data = f}), -1);
    assert_error_has("a chunk of f32 values, but the spill stores a stream of");
    ck_assert_int_eq(dm_error_code(), DM_E_SHAPE);
    dm_spill_writer_abort(w);
    w = dm_spill_writer_open(dir, "ids", cols, t, codec);
    for (int64_t c = 0; c < nchunks; c++)
        ck_assert_msg(dm_spill_write(w, &(dm_chunk){.row0 = c * per, .rows = per, .cols = cols,
                                                    .ptr = x + (size_t)(c * per * cols) * isz, .dtype = t}) == 0,
                      "%s", dm_error());
    ck_assert_int_eq(dm_spill_writer_close(w), 0);

    dm_spill_reader *r = dm_spill_reader_open(dir, "ids");
    ck_assert_msg(r != NULL, "%s", dm_error());
    ck_assert_int_eq(dm_spill_dtype(r), t);
    dm_chunk c = {.ptr = y};
    int64_t got = 0;
    for (;;) {
        ck_assert_int_eq(dm_spill_next(r, &c), 0);
        ck_assert_int_eq(c.dtype, t);
        if (!c.rows)
            break;
        ck_assert_int_eq(memcmp(y, x + (size_t)(c.row0 * cols) * isz, (size_t)(c.rows * cols) * isz), 0);
        got += c.rows;
    }
    ck_assert_int_eq(got, rows);
    memset(y, 0, (size_t)(rows * cols) * isz);
    ck_assert_int_eq(dm_spill_read_rows(r, 650, 1500, y), 0); /* across three chunks */
    ck_assert_int_eq(memcmp(y, x + (size_t)(650 * cols) * isz, (size_t)(1500 * cols) * isz), 0);
    dm_spill_reader_close(r);
    dm_rm_rf(dir);
    free(x), free(y), free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("spill");
    TCase *tc = tcase_create("round trip");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, round_trip, 0, 12);
    tcase_add_test(tc, paths_write_identical_files);
    tcase_add_loop_test(tc, integer_streams_exact, 0, 8);
    tcase_add_loop_test(tc, empty_and_edge_chunks, 0, 2);
    tcase_add_test(tc, rewrite_drops_old_manifest);
    tcase_add_loop_test(tc, many_chunks_stream, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("damage");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, corrupt_chunk_is_detected, 0, 4);
    tcase_add_test(tc, data_file_size_checked);
    tcase_add_test(tc, manifest_errors);
    tcase_add_loop_test(tc, enospc_leaves_nothing, 0, 4);
    tcase_add_loop_test(tc, abort_removes_files, 0, 2);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
