/*
 * test_fs.c: io/fs.c, the one gate to the disk.
 *
 * What must hold: writes either complete or fail with a message naming the file
 * (also when the disk fills up: DMICA_FAULT_ENOSPC_AFTER makes that happen on
 * demand), atomic writes leave the old file or the new one and never a
 * temporary, folder publication replaces a folder whole, rm -rf never follows a
 * link out of the tree, and content identities are XXH3-128 (checked against
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

START_TEST(copy_file_link_and_copy)
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
    ck_assert_int_eq(dm_copy_file(src, dst), 0); /* dst is already src's link */
    ck_assert_int_eq(dm_test_count_entries(dir), 2);
    ck_assert_int_eq(dm_copy_file("/no/such/file", dst), -1);
    assert_error_has("/no/such/file");

    /* Another file system (tmpfs) forces the copying path. */
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
        unlink(other);
        free(back), free(other), free(data), free(big);
    }
    dm_rm_rf(dir);
    free(src), free(dst), free(dir);
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
    tcase_add_test(tc, copy_file_link_and_copy);
    tcase_add_test(tc, identity_vectors_and_memo);
    suite_add_tcase(s, tc);
    return dm_test_run(s, NULL);
}
