/*
 * test_fs.c: io/fs.c, the one gate to the disk.
 *
 * What must hold: writes either complete or fail with a message naming the file
 * (also when the disk fills up: DMICA_FAULT_ENOSPC_AFTER makes that happen on
 * demand), atomic writes leave the old file or the new one and never a
 * temporary, folder publication replaces a folder whole, rm -rf never follows a
 * link out of the tree, copies are copies (never hard links) checked against a
 * recorded size and XXH3 when asked, and content identities are XXH3-128 (checked against
 * the published test vector for empty input) memoised per file version.
 *
 * Fault-injection tests set the variable in the test body, so they rely on Check
 * running each test in its own process (CK_FORK, the default); they skip
 * themselves under CK_FORK=no.
 */
#include "fs.h"

#include "dm.h"
#include "test.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- helpers ------------------------------------------------------------ */

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static int64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* ---- reads and writes --------------------------------------------------- */

START_TEST(write_pwrite_pread)
{
    char *dir = dm_test_tmpdir("fs"), *p = dm_xasprintf("%s/a.bin", dir);
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0666);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(dm_write_all(fd, "hello ", 6, p), 0);
    ck_assert_int_eq(dm_write_all(fd, "world", 5, p), 0);
    ck_assert_int_eq(dm_pwrite_all(fd, "W", 1, 6, p), 0);
    char buf[16] = {0};
    ck_assert_int_eq(dm_pread_all(fd, buf, 11, 0, p), 0);
    ck_assert_str_eq(buf, "hello World");
    /* Reading past the end is an error naming the file, not a short read. */
    ck_assert_int_eq(dm_pread_all(fd, buf, 4, 9, p), -1);
    assert_error_has(p);
    assert_error_has("unexpected end of file");
    ck_assert_int_eq(dm_pwrite_all(fd, "x", 1, -1, p), -1);
    close(fd);
    /* A bad descriptor is reported with the path. */
    ck_assert_int_eq(dm_write_all(-1, "x", 1, p), -1);
    assert_error_has("write failed: Bad file descriptor");
    dm_rm_rf(dir);
    free(p), free(dir);
}
END_TEST

START_TEST(injected_enospc)
{
    if (!dm_test_forked())
        return;
    char *dir = dm_test_tmpdir("fs"), *p = dm_xasprintf("%s/full.bin", dir);
    setenv("DMICA_FAULT_ENOSPC_AFTER", "100", 1);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    char buf[60];
    memset(buf, 'x', sizeof buf);
    ck_assert_int_eq(dm_write_all(fd, buf, 60, p), 0);
    /* This one crosses the limit: what fits is written, then ENOSPC. */
    ck_assert_int_eq(dm_write_all(fd, buf, 60, p), -1);
    char *want = dm_xasprintf("%s: write failed: No space left on device (injected)", p);
    ck_assert_str_eq(dm_error(), want);
    ck_assert_int_eq(file_size(p), 100);
    /* Every later write fails too, including accounted io_uring writes. */
    ck_assert_int_eq(dm_pwrite_all(fd, buf, 1, 0, p), -1);
    ck_assert_int_eq(dm_fault_check(1, "other.spill"), -1);
    assert_error_has("other.spill: write failed: No space left on device (injected)");
    ck_assert_int_eq(dm_error_code(), DM_E_IO);
    close(fd);
    /* An atomic write under a full disk leaves the old file and no temporary. */
    char *q = dm_xasprintf("%s/keep.txt", dir);
    unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    ck_assert_int_eq(dm_write_file_atomic(q, "old", 3), 0);
    setenv("DMICA_FAULT_ENOSPC_AFTER", "0", 1);
    ck_assert_int_eq(dm_write_file_atomic(q, "new contents", 12), -1);
    assert_error_has("No space left on device (injected)");
    size_t len;
    char *text = dm_read_file(q, &len);
    ck_assert_str_eq(text, "old");
    ck_assert_int_eq(dm_test_count_entries(dir), 2); /* full.bin, keep.txt */
    unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    dm_rm_rf(dir);
    free(text), free(q), free(want), free(p), free(dir);
}
END_TEST

START_TEST(no_limit_without_variable)
{
    unsetenv("DMICA_FAULT_ENOSPC_AFTER");
    ck_assert_int_eq(dm_fault_check((size_t)1 << 40, "x"), 0);
}
END_TEST

/* ---- folders ------------------------------------------------------------ */

START_TEST(mkdir_p_and_rm_rf)
{
    char *dir = dm_test_tmpdir("fs");
    char *deep = dm_xasprintf("%s/a/b/c/d", dir);
    ck_assert_int_eq(dm_mkdir_p(deep), 0);
    ck_assert_int_eq(dm_mkdir_p(deep), 0); /* exists: fine */
    char *trail = dm_xasprintf("%s/a/x/", dir);
    ck_assert_int_eq(dm_mkdir_p(trail), 0);
    char *f = dm_xasprintf("%s/a/b/file", dir);
    put(f, "data");
    char *under_file = dm_xasprintf("%s/a/b/file/sub", dir);
    ck_assert_int_eq(dm_mkdir_p(under_file), -1);
    assert_error_has("cannot create folder");
    ck_assert_int_eq(dm_mkdir_p(f), -1);
    assert_error_has("a file of that name exists");

    /* rm -rf must remove a link, never what it points to. */
    char *outside = dm_test_tmpdir("fs"), *precious = dm_xasprintf("%s/precious", outside);
    put(precious, "keep me");
    char *link = dm_xasprintf("%s/a/b/c/link", dir);
    ck_assert_int_eq(symlink(outside, link), 0);
    char *a = dm_xasprintf("%s/a", dir);
    ck_assert_int_eq(dm_rm_rf(a), 0);
    ck_assert(!dm_file_exists(a));
    ck_assert(dm_file_exists(precious));
    ck_assert_int_eq(dm_rm_rf(a), 0); /* missing: fine */
    free(f);
    put(f = dm_xasprintf("%s/plain", dir), "x");
    ck_assert_int_eq(dm_rm_rf(f), 0); /* a plain file */
    ck_assert(!dm_file_exists(f));

    ck_assert_int_eq(dm_fsync_path(dir), 0);
    ck_assert_int_eq(dm_fsync_path(precious), 0);
    ck_assert_int_eq(dm_fsync_path(f), -1);
    assert_error_has(f);
    dm_rm_rf(dir), dm_rm_rf(outside);
    free(deep), free(trail), free(f), free(under_file), free(outside), free(precious), free(link);
    free(a), free(dir);
}
END_TEST

START_TEST(dir_publish_new_and_replace)
{
    char *dir = dm_test_tmpdir("fs");
    char *tmp = dm_xasprintf("%s/out.tmp", dir), *final = dm_xasprintf("%s/out", dir);
    char *tf = dm_xasprintf("%s/v", tmp), *ff = dm_xasprintf("%s/v", final);
    char *old_only = dm_xasprintf("%s/only-in-old", final);
    ck_assert_int_eq(dm_mkdir_p(tmp), 0);
    put(tf, "one");
    ck_assert_int_eq(dm_dir_publish(tmp, final), 0);
    ck_assert(!dm_file_exists(tmp));
    char *text = dm_read_file(ff, NULL);
    ck_assert_str_eq(text, "one");
    free(text);
    put(old_only, "stale");

    ck_assert_int_eq(dm_mkdir_p(tmp), 0);
    put(tf, "two");
    ck_assert_int_eq(dm_dir_publish(tmp, final), 0);
    text = dm_read_file(ff, NULL);
    ck_assert_str_eq(text, "two");
    free(text);
    ck_assert(!dm_file_exists(old_only)); /* replaced whole, not merged */
    ck_assert_int_eq(dm_test_count_entries(dir), 1); /* no tmp, no aside copy */

    ck_assert_int_eq(dm_dir_publish(tmp, final), -1); /* tmp is gone */
    assert_error_has("not a folder");
    dm_rm_rf(dir);
    free(tmp), free(final), free(tf), free(ff), free(old_only), free(dir);
}
END_TEST

/* ---- whole files -------------------------------------------------------- */

START_TEST(read_write_atomic)
{
    char *dir = dm_test_tmpdir("fs"), *p = dm_xasprintf("%s/f.txt", dir);
    size_t len = 99;
    ck_assert_ptr_null(dm_read_file(p, &len));
    assert_error_has(p);
    assert_error_has("No such file");
    ck_assert_int_eq(dm_error_code(), DM_E_IO);
    ck_assert_int_eq(dm_write_file_atomic(p, "abc\0def", 7), 0);
    char *text = dm_read_file(p, &len);
    ck_assert_uint_eq(len, 7);
    ck_assert_mem_eq(text, "abc\0def", 8); /* and NUL-terminated */
    free(text);
    ck_assert_int_eq(dm_write_file_atomic(p, "", 0), 0);
    text = dm_read_file(p, &len);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(text, "");
    free(text);
    ck_assert_int_eq(dm_test_count_entries(dir), 1);
    ck_assert_ptr_null(dm_read_file(dir, &len));
    assert_error_has("is a folder");
    char *missing = dm_xasprintf("%s/no/such/dir/f", dir);
    ck_assert_int_eq(dm_write_file_atomic(missing, "x", 1), -1);
    assert_error_has("cannot create");
    /* Sizes the stat does not know (procfs says 0) are read to the end. */
    text = dm_read_file("/proc/self/status", &len);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_eq(strlen(text), len);
    free(text);
    dm_rm_rf(dir);
    free(missing), free(p), free(dir);
}
END_TEST

static ino_t inode_of(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_ino;
}

/* Copies never share a name with their source (the results folder is the
 * user's: an edit there must not reach the cache), are atomic, and replace an
 * old dst, also one that was a hard link to src (results of older versions). */
START_TEST(copy_file_is_a_copy)
{
    char *dir = dm_test_tmpdir("fs");
    char *src = dm_xasprintf("%s/src", dir), *dst = dm_xasprintf("%s/dst", dir);
    put(src, "payload");
    put(dst, "old");
    ck_assert_int_eq(dm_copy_file(src, dst), 0);
    char *text = dm_read_file(dst, NULL);
    ck_assert_str_eq(text, "payload");
    free(text);
    ck_assert_int_eq(dm_test_count_entries(dir), 2);
    ck_assert(inode_of(src) != inode_of(dst));
    put(dst, "edited"); /* writing the copy leaves the source as it was */
    text = dm_read_file(src, NULL);
    ck_assert_str_eq(text, "payload");
    free(text);
    unlink(dst);
    ck_assert_int_eq(link(src, dst), 0); /* an old hard link is replaced by a copy */
    ck_assert_int_eq(dm_copy_file(src, dst), 0);
    ck_assert(inode_of(src) != inode_of(dst));
    ck_assert_int_eq(dm_test_count_entries(dir), 2);
    ck_assert_int_eq(dm_copy_file("/no/such/file", dst), -1);
    assert_error_has("/no/such/file");
    /* empty files */
    put(src, "");
    ck_assert_int_eq(dm_copy_file(src, dst), 0);
    ck_assert_int_eq(file_size(dst), 0);

    /* Another file system (tmpfs) forces copy_file_range or read/write. */
    struct stat a, b;
    if (stat("/dev/shm", &b) == 0 && stat(dir, &a) == 0 && a.st_dev != b.st_dev &&
        access("/dev/shm", W_OK) == 0) {
        char *big = dm_xasprintf("%s/big", dir);
        size_t n = (size_t)9 << 20; /* more than one copy buffer */
        unsigned char *data = dm_xmalloc(n);
        for (size_t i = 0; i < n; i++)
            data[i] = (unsigned char)(i * 2654435761u >> 13);
        ck_assert_int_eq(dm_write_file_atomic(big, data, n), 0);
        char *other = dm_xasprintf("/dev/shm/dmica-test-copy-%ld", (long)getpid());
        ck_assert_int_eq(dm_copy_file(big, other), 0);
        size_t len;
        char *back = dm_read_file(other, &len);
        ck_assert_uint_eq(len, n);
        ck_assert(memcmp(back, data, n) == 0);
        free(back);
        /* and a move across file systems copies, then removes the source */
        char *moved = dm_xasprintf("%s/moved", dir);
        ck_assert_int_eq(dm_move_file(other, moved), 0);
        ck_assert(!dm_file_exists(other));
        back = dm_read_file(moved, &len);
        ck_assert_uint_eq(len, n);
        ck_assert(memcmp(back, data, n) == 0);
        free(back), free(moved), free(other), free(data), free(big);
    }
    dm_rm_rf(dir);
    free(src), free(dst), free(dir);
}
END_TEST

/* Sums are XXH3-64 of the bytes (xxhash's own function on the same bytes), and
 * a checked copy refuses a source whose size or sum differs from the record,
 * leaving dst as it was and naming the source. */
START_TEST(file_sums_and_checked_copies)
{
    char *dir = dm_test_tmpdir("fs");
    char *src = dm_xasprintf("%s/src", dir), *dst = dm_xasprintf("%s/dst", dir);
    size_t n = (size_t)5 << 20; /* more than one buffer */
    unsigned char *data = dm_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (unsigned char)(i * 2654435761u >> 11);
    ck_assert_int_eq(dm_write_file_atomic(src, data, n), 0);
    dm_file_sum s, e;
    ck_assert_int_eq(dm_file_sum_of(src, &s), 0);
    ck_assert_int_eq(s.size, (int64_t)n);
    ck_assert(s.xxh3 == XXH3_64bits(data, n));
    put(dst, "");
    ck_assert_int_eq(dm_file_sum_of(dst, &e), 0);
    ck_assert_int_eq(e.size, 0);
    ck_assert(e.xxh3 == XXH3_64bits(NULL, 0));
    ck_assert_int_eq(dm_file_sum_check(src, &s, &s), 0);
    ck_assert_int_eq(dm_file_sum_of("/no/such/file", &e), -1);
    assert_error_code(DM_E_IO);

    put(dst, "old");
    ck_assert_int_eq(dm_copy_file_checked(src, dst, &s), 0);
    ck_assert_int_eq(file_size(dst), (int64_t)n);
    dm_file_sum wrong = s;
    wrong.xxh3 ^= 1;
    put(dst, "old");
    ck_assert_int_eq(dm_copy_file_checked(src, dst, &wrong), -1);
    assert_error_code(DM_E_CORRUPT);
    assert_error_has("checksum mismatch");
    assert_error_has(src);
    wrong = s;
    wrong.size++;
    ck_assert_int_eq(dm_copy_file_checked(src, dst, &wrong), -1);
    assert_error_code(DM_E_CORRUPT);
    assert_error_has("bytes");
    char *text = dm_read_file(dst, NULL);
    ck_assert_str_eq(text, "old"); /* untouched, and no temporary left */
    free(text);
    ck_assert_int_eq(dm_test_count_entries(dir), 2);

    /* hard links only for sources about to go; moves rename */
    char *lnk = dm_xasprintf("%s/lnk", dir), *mv = dm_xasprintf("%s/mv", dir);
    ck_assert_int_eq(dm_link_file(src, lnk), 0);
    ck_assert(inode_of(src) == inode_of(lnk));
    ck_assert_int_eq(dm_link_file(src, lnk), 0); /* already its link */
    ck_assert_int_eq(dm_test_count_entries(dir), 3);
    ino_t before = inode_of(lnk);
    ck_assert_int_eq(dm_move_file(lnk, mv), 0);
    ck_assert(!dm_file_exists(lnk));
    ck_assert(inode_of(mv) == before);
    ck_assert_int_eq(dm_move_file(lnk, mv), -1);
    assert_error_has(lnk);
    dm_rm_rf(dir);
    free(lnk), free(mv), free(data), free(src), free(dst), free(dir);
}
END_TEST

/* ---- identity ----------------------------------------------------------- */

START_TEST(identity_vectors_and_memo)
{
    char *dir = dm_test_tmpdir("fs"), *cache = dm_xasprintf("%s/cache", dir);
    char *memo_dir = dm_xasprintf("%s/filehash", cache); /* made by the first memo */
    char *empty = dm_xasprintf("%s/empty", dir), *f = dm_xasprintf("%s/data", dir);
    char id[33];
    put(empty, "");
    ck_assert_int_eq(dm_file_identity(empty, NULL, id), 0);
    /* XXH3-128 of no bytes, as xxh128sum prints it. */
    ck_assert_str_eq(id, "99aa06d3014798d86001c324468d497f");

    /* Larger than the hashing buffer: the streamed hash equals the one-shot one. */
    size_t n = ((size_t)8 << 20) + 12345;
    unsigned char *data = dm_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (unsigned char)(i * 2654435761u >> 11);
    ck_assert_int_eq(dm_write_file_atomic(f, data, n), 0);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, n));
    char want[33];
    for (int i = 0; i < 16; i++)
        sprintf(want + 2 * i, "%02x", c.digest[i]);
    ck_assert_int_eq(dm_file_identity(f, memo_dir, id), 0);
    ck_assert_str_eq(id, want);

    /* The memo exists and is used: a planted value comes back. */
    ck_assert_int_eq(dm_test_count_entries(memo_dir), 1);
    char *cmd = dm_xasprintf("for m in '%s'/*; do printf '%s\\n' > \"$m\"; done", memo_dir,
                             "0123456789abcdef0123456789abcdef");
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(dm_file_identity(f, memo_dir, id), 0);
    ck_assert_str_eq(id, "0123456789abcdef0123456789abcdef");
    /* A damaged memo is ignored and rewritten. */
    free(cmd);
    cmd = dm_xasprintf("for m in '%s'/*; do printf 'garbage' > \"$m\"; done", memo_dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_eq(dm_file_identity(f, memo_dir, id), 0);
    ck_assert_str_eq(id, want);

    /* A new version of the file (other size and mtime) gets a new hash. */
    data[0] ^= 1;
    ck_assert_int_eq(dm_write_file_atomic(f, data, n - 1), 0);
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, n - 1));
    for (int i = 0; i < 16; i++)
        sprintf(want + 2 * i, "%02x", c.digest[i]);
    ck_assert_int_eq(dm_file_identity(f, memo_dir, id), 0);
    ck_assert_str_eq(id, want);
    ck_assert_int_eq(dm_test_count_entries(memo_dir), 2);

    ck_assert_int_eq(dm_file_identity(dir, memo_dir, id), -1);
    assert_error_has("is a folder");
    char *missing = dm_xasprintf("%s/missing", dir);
    ck_assert_int_eq(dm_file_identity(missing, memo_dir, id), -1);
    assert_error_has(missing);
    dm_rm_rf(dir);
    free(missing), free(cmd), free(memo_dir), free(data), free(f), free(empty), free(cache), free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fs");
    TCase *tc = tcase_create("fs");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, write_pwrite_pread);
    tcase_add_test(tc, injected_enospc);
    tcase_add_test(tc, no_limit_without_variable);
    tcase_add_test(tc, mkdir_p_and_rm_rf);
    tcase_add_test(tc, dir_publish_new_and_replace);
    tcase_add_test(tc, read_write_atomic);
    tcase_add_test(tc, copy_file_is_a_copy);
    tcase_add_test(tc, file_sums_and_checked_copies);
    tcase_add_test(tc, identity_vectors_and_memo);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
